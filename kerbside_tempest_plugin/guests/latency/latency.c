/*
 * The kerbside latency guest: a tiny UEFI application for the keypress-to-
 * screen loadtest.
 *
 * On start it prints a banner on the serial port (COM1, written straight to
 * the UART so nothing is drawn on screen), sets a GOP mode near 1024x768,
 * clears the screen once and paints a small box. Then, forever, it sleeps
 * in BootServices->WaitForEvent on ConIn->WaitForKey and, for every key it
 * reads, repaints the box in the other of two colours. Nothing else is ever
 * drawn: no text console, no cursor, no timer. No key leads anywhere: there
 * is no irreversible state, so a loadtest can press keys for as long as it
 * likes. Each key is also logged on serial ("key N ...").
 *
 * It waits on the firmware's key event rather than polling on a timer of
 * its own, so the guest adds as little as the firmware allows to the time
 * between a keypress and the draw.
 */

#include <efi.h>
#include <efilib.h>

#define BANNER "Hello from the kerbside latency guest"

#define WANT_WIDTH 1024
#define WANT_HEIGHT 768
#define BOX_SIZE 96

#define COM1 0x3F8

static const EFI_GRAPHICS_OUTPUT_BLT_PIXEL background = {0x20, 0x10, 0x10, 0};
static const EFI_GRAPHICS_OUTPUT_BLT_PIXEL box_colour[2] = {
    {0x00, 0xC0, 0xFF, 0},  /* amber (B, G, R) */
    {0xFF, 0x80, 0x00, 0},  /* blue */
};

static inline void outb(UINT16 port, UINT8 value)
{
    __asm__ __volatile__("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline UINT8 inb(UINT16 port)
{
    UINT8 value;
    __asm__ __volatile__("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static void serial_putc(char c)
{
    /* Wait (bounded) for the transmit holding register to empty. */
    for (int i = 0; i < 100000; i++) {
        if (inb(COM1 + 5) & 0x20)
            break;
    }
    outb(COM1, (UINT8)c);
}

static void serial_puts(const char *s)
{
    for (; *s; s++) {
        if (*s == '\n')
            serial_putc('\r');
        serial_putc(*s);
    }
}

static void serial_putu(UINT64 value)
{
    char buf[21];
    int i = 20;

    buf[i] = '\0';
    do {
        buf[--i] = (char)('0' + value % 10);
        value /= 10;
    } while (value && i > 0);
    serial_puts(&buf[i]);
}

static void serial_puthex(UINT64 value, int digits)
{
    static const char hex[] = "0123456789abcdef";
    char buf[17];
    int i;

    if (digits > 16)
        digits = 16;
    for (i = digits - 1; i >= 0; i--) {
        buf[i] = hex[value & 0xF];
        value >>= 4;
    }
    buf[digits] = '\0';
    serial_puts(buf);
}

static void serial_status(const char *what, EFI_STATUS status)
{
    serial_puts(what);
    serial_puts(" failed: status 0x");
    serial_puthex((UINT64)status, 16);
    serial_puts("\n");
}

/* Choose the mode nearest WANT_WIDTH x WANT_HEIGHT; keep the current one
 * when it is already that size or nothing better exists. */
static void set_mode(EFI_GRAPHICS_OUTPUT_PROTOCOL *gop)
{
    UINT32 best = gop->Mode->Mode;
    UINT64 best_score = (UINT64)-1;

    for (UINT32 m = 0; m < gop->Mode->MaxMode; m++) {
        EFI_GRAPHICS_OUTPUT_MODE_INFORMATION *info;
        UINTN size;
        EFI_STATUS st = uefi_call_wrapper(gop->QueryMode, 4, gop, m,
                                          &size, &info);
        if (EFI_ERROR(st))
            continue;
        INT64 dw = (INT64)info->HorizontalResolution - WANT_WIDTH;
        INT64 dh = (INT64)info->VerticalResolution - WANT_HEIGHT;
        UINT64 score = (UINT64)(dw * dw + dh * dh);
        if (score < best_score) {
            best_score = score;
            best = m;
        }
        uefi_call_wrapper(BS->FreePool, 1, info);
    }
    if (best != gop->Mode->Mode) {
        EFI_STATUS st = uefi_call_wrapper(gop->SetMode, 2, gop, best);
        if (EFI_ERROR(st))
            serial_status("GOP SetMode", st);
    }
}

static void fill(EFI_GRAPHICS_OUTPUT_PROTOCOL *gop,
                 const EFI_GRAPHICS_OUTPUT_BLT_PIXEL *colour,
                 UINTN x, UINTN y, UINTN w, UINTN h)
{
    EFI_GRAPHICS_OUTPUT_BLT_PIXEL px = *colour;

    uefi_call_wrapper(gop->Blt, 10, gop, &px, EfiBltVideoFill,
                      0, 0, x, y, w, h, 0);
}

EFI_STATUS EFIAPI efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *systab)
{
    EFI_GUID gop_guid = EFI_GRAPHICS_OUTPUT_PROTOCOL_GUID;
    EFI_GRAPHICS_OUTPUT_PROTOCOL *gop = NULL;
    EFI_STATUS st;
    UINTN width, height, box_x, box_y;
    UINT64 keys = 0;
    unsigned int shade = 0;

    InitializeLib(image, systab);

    /* The firmware arms a 5 minute watchdog before starting a boot
     * option; a loadtest guest must outlive it. */
    uefi_call_wrapper(BS->SetWatchdogTimer, 4, 0, 0, 0, NULL);

    /* Hide the text cursor before anything is drawn; the text console is
     * never written again. */
    uefi_call_wrapper(ST->ConOut->EnableCursor, 2, ST->ConOut, FALSE);

    serial_puts("\n" BANNER "\n");

    st = uefi_call_wrapper(BS->LocateProtocol, 3, &gop_guid, NULL,
                           (void **)&gop);
    if (EFI_ERROR(st) || gop == NULL) {
        serial_status("LocateProtocol(GOP)", st);
        serial_puts("no graphics output: waiting for keys anyway\n");
    } else {
        set_mode(gop);
    }

    width = gop ? gop->Mode->Info->HorizontalResolution : 0;
    height = gop ? gop->Mode->Info->VerticalResolution : 0;
    box_x = width > BOX_SIZE ? (width - BOX_SIZE) / 2 : 0;
    box_y = height > BOX_SIZE ? (height - BOX_SIZE) / 2 : 0;

    serial_puts("mode ");
    serial_putu(width);
    serial_puts("x");
    serial_putu(height);
    serial_puts(" box ");
    serial_putu(BOX_SIZE);
    serial_puts(" at ");
    serial_putu(box_x);
    serial_puts(",");
    serial_putu(box_y);
    serial_puts("\n");

    if (gop) {
        fill(gop, &background, 0, 0, width, height);
        fill(gop, &box_colour[shade], box_x, box_y, BOX_SIZE, BOX_SIZE);
    }

    /* Drain whatever was typed before we started, without drawing. */
    for (;;) {
        EFI_INPUT_KEY key;
        st = uefi_call_wrapper(ST->ConIn->ReadKeyStroke, 2, ST->ConIn, &key);
        if (EFI_ERROR(st))
            break;
    }

    serial_puts("ready: waiting for keys\n");

    for (;;) {
        EFI_INPUT_KEY key;
        UINTN index;

        st = uefi_call_wrapper(BS->WaitForEvent, 3, 1,
                               &ST->ConIn->WaitForKey, &index);
        if (EFI_ERROR(st)) {
            serial_status("WaitForEvent", st);
            /* Never spin hot: stall 10 ms before trying again. */
            uefi_call_wrapper(BS->Stall, 1, 10000);
            continue;
        }
        st = uefi_call_wrapper(ST->ConIn->ReadKeyStroke, 2, ST->ConIn, &key);
        if (EFI_ERROR(st))
            continue;  /* signalled but nothing to read (a spurious wake) */

        keys++;
        shade ^= 1;
        if (gop)
            fill(gop, &box_colour[shade], box_x, box_y, BOX_SIZE, BOX_SIZE);

        serial_puts("key ");
        serial_putu(keys);
        serial_puts(" scan 0x");
        serial_puthex(key.ScanCode, 4);
        serial_puts(" char 0x");
        serial_puthex(key.UnicodeChar, 4);
        serial_puts("\n");
    }

    return EFI_SUCCESS;
}
