"""A synthetic serial log of the canonical walk (contract §4.3)."""

SECRET = 'sextant{HELLO_OPERATOR}'


def canonical_lines(stream_exercise=False, gop=True):
    lines = ['Hello from Uncalibrated Sextant']
    if gop:
        lines.append('available GOP modes: 640x480 800x600 1024x768 '
                     '1280x720 1920x1080 2560x1600')
    lines.append('t=2000 type=keypress unicode=000d scancode=0000')
    if stream_exercise:
        lines += ['t=2000 type=transition from=awaiting to=stream_exercise',
                  't=3000 type=transition from=stream_exercise to=booting']
    else:
        lines.append('t=2000 type=transition from=awaiting to=booting')
    lines += ['t=%d type=line row=%d' % (4000 + 200 * i, i)
              for i in range(22)]
    lines += ['t=9000 type=keypress unicode=0069 scancode=0000',
              't=9000 type=bootloader_decision choice=ignore attempt=1',
              't=9000 type=line row=21', 't=9000 type=line row=23',
              't=9000 type=line row=25']
    lines += ['t=%d type=keypress unicode=%04x scancode=0000'
              % (9050 + 50 * i, ord(c)) for i, c in enumerate(SECRET)]
    lines += ['t=10250 type=keypress unicode=000d scancode=0000',
              't=10250 type=paste len=23 correct=true',
              't=10250 type=line row=21',
              't=10850 type=line row=22',
              't=11050 type=transition from=booting to=parked',
              't=12000 type=keypress unicode=000d scancode=0000',
              't=12000 type=transition from=parked to=parked',
              'type=refresh_stats count=66 total_ms=396 mean_us=6012 '
              'max_us=9871 p99_us=9310']
    return lines


def canonical_log(newline='\r\n', **kwargs):
    return newline.join(canonical_lines(**kwargs)) + newline


# Every record type once, with a line of firmware noise in between.
ALL_TYPES_LOG = '\r\n'.join([
    '\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001 "UEFI QEMU HARDDISK"',
    'Hello from Uncalibrated Sextant',
    't=1 type=keypress unicode=0041 scancode=0000',
    't=2 type=line row=7',
    't=3 type=transition from=awaiting to=booting',
    'some firmware text with a = sign',
    't=4 type=bootloader_decision choice=retry attempt=3',
    't=5 type=paste len=28 correct=false',
    't=6 type=bootloader_timeout',
    't=7 type=mode_switch requested=1024x768 applied=800x600',
    't=8 type=mode_cycle count=30 interrupted=true',
    't=9 type=keypress unicode=0000 scancode=0017',
    'type=refresh_stats count=5 total_ms=30 mean_us=6000 max_us=7000 '
    'p99_us=6900',
    't=10 type=line row=1',
]) + '\r\n'
