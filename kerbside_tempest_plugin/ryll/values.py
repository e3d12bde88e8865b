"""What the control-socket client hands back: events, screenshots, the
result of a subscribe.
"""

from dataclasses import dataclass, field


@dataclass(eq=False)
class Event:
    """One event from ryll, stamped when the reader thread received it.

    ``received`` is ``time.monotonic()`` and ``received_wall_us`` the Unix
    time in microseconds at receipt; ``wallclock_us`` is ryll's own stamp
    (present on ``latency`` and ``surface_drawn``), so ``delay_us`` is the
    socket delivery delay.
    """

    name: str
    data: dict
    received: float
    received_wall_us: int
    seq: int = 0

    @property
    def wallclock_us(self):
        value = self.data.get('wallclock_us')
        return value if isinstance(value, int) else None

    @property
    def delay_us(self):
        if self.wallclock_us is None:
            return None
        return self.received_wall_us - self.wallclock_us


@dataclass
class Screenshot:
    width: int
    height: int
    format: str
    data: bytes = field(repr=False)
    elapsed: float = 0.0

    @property
    def png(self):
        if self.format != 'png':
            raise ValueError('screenshot is %s, not png' % self.format)
        return self.data

    def save(self, path):
        with open(path, 'wb') as f:
            f.write(self.data)
        return path


class SubscribeResult(list):
    """The names ryll accepted; ``dropped`` lists the ones it ignored."""

    def __init__(self, accepted, dropped):
        super().__init__(accepted)
        self.dropped = list(dropped)
