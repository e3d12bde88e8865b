/* The Sextant-compatible test guest: platform glue and the scenes (§5).
 *
 * Flow: banner -> GOP 1024x768 -> Awaiting -> Booting (19 script lines,
 * locked bootloader, POST line) -> Parked -> exit key -> drain -> power-off. */
#include "sx.h"

uint64_t sx_t;
static EFI_SERIAL_IO_PROTOCOL *serial;

/* ---- platform -------------------------------------------------------------- */

int sx_strlen(const char *s)
{
	int n = 0;
	while (s[n])
		n++;
	return n;
}

char *sx_cat(char *d, const char *s)
{
	while (*s)
		*d++ = *s++;
	*d = 0;
	return d;
}

char *sx_dec(char *d, uint64_t v)
{
	char tmp[24];
	int n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*d++ = tmp[--n];
	*d = 0;
	return d;
}

char *sx_hex(char *d, uint64_t v, int min_digits)
{
	char tmp[20];
	int n = 0;
	do {
		tmp[n++] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v || n < min_digits);
	while (n)
		*d++ = tmp[--n];
	*d = 0;
	return d;
}

char *sx_size(char *d, uint32_t w, uint32_t h)
{
	d = sx_dec(d, w);
	d = sx_cat(d, "x");
	return sx_dec(d, h);
}

void sx_serial_write(const char *s)
{
	UINTN n = (UINTN)sx_strlen(s);
	if (!serial) {
		EFI_GUID guid = EFI_SERIAL_IO_PROTOCOL_GUID;
		if (uefi_call_wrapper(BS->LocateProtocol, 3, &guid, NULL,
				      (void **)&serial) != EFI_SUCCESS)
			serial = NULL;
	}
	if (serial && n)
		uefi_call_wrapper(serial->Write, 3, serial, &n, (void *)s);
}

void sx_stall(uint32_t ms)
{
	uefi_call_wrapper(BS->Stall, 1, (UINTN)ms * 1000);
	sx_t += ms;
}

void *sx_alloc(UINTN bytes)
{
	void *p = NULL;
	uefi_call_wrapper(BS->AllocatePool, 3, EfiLoaderData, bytes, &p);
	return p;
}

void sx_shutdown(void)
{
	uefi_call_wrapper(RT->ResetSystem, 4, EfiResetShutdown, EFI_SUCCESS, 0,
			  NULL);
	for (;;)
		__asm__ __volatile__("hlt");
}

void sx_cold_reset(void)
{
	uefi_call_wrapper(RT->ResetSystem, 4, EfiResetCold, EFI_SUCCESS, 0,
			  NULL);
	for (;;)
		__asm__ __volatile__("hlt");
}

/* ---- keys ---------------------------------------------------------------- */

#define POLL_MS 50

struct key {
	uint16_t unicode;   /* 0 for special keys */
	uint16_t scancode;  /* 0 for printable keys; EFI scan code otherwise */
};

static int read_key(struct key *k)
{
	EFI_INPUT_KEY in;
	if (uefi_call_wrapper(ST->ConIn->ReadKeyStroke, 2, ST->ConIn, &in) !=
	    EFI_SUCCESS)
		return 0;
	if (in.UnicodeChar) {
		k->unicode = in.UnicodeChar;
		k->scancode = 0;
	} else {
		k->unicode = 0;
		k->scancode = in.ScanCode;
	}
	return 1;
}

static int is_mode_key(const struct key *k)
{
	return k->unicode >= '0' && k->unicode <= '6';
}

/* ---- scene state ----------------------------------------------------------- */

static int cursor_on_screen;          /* a blinking cursor is part of the scene */
static uint32_t cursor_col, cursor_row;
static int cursor_glyph;              /* what is drawn now */
static uint64_t blink_clock;          /* ms of blink loop; carries over */
static uint64_t blink_on_index = (uint64_t)-1;
static uint16_t lfsr = 0xACE1;
static int blink_broken;

static int toast_active;
static uint64_t toast_until;

static void repaint(void)
{
	gfx_clear();
	gfx_logo();
	gfx_replay_model();
	digest_refresh();
	if (cursor_on_screen && cursor_glyph)   /* redrawn without a refresh */
		gfx_cursor(cursor_col, cursor_row, cursor_glyph);
}

static void show_toast(uint32_t rw, uint32_t rh, uint32_t aw, uint32_t ah)
{
	char s[96], *p = s;
	if (rw == aw && rh == ah) {
		p = sx_cat(p, "mode ");
		sx_size(p, aw, ah);
	} else {
		p = sx_cat(p, "requested ");
		p = sx_size(p, rw, rh);
		p = sx_cat(p, " -> using ");
		sx_size(p, aw, ah);
	}
	gfx_toast(s);
	toast_active = 1;
	toast_until = sx_t + 1500;
}

static void toast_tick(void)
{
	if (toast_active && sx_t >= toast_until) {
		toast_active = 0;
		repaint();
	}
}

static void switch_mode(uint32_t rw, uint32_t rh)
{
	gfx_set_mode_nearest(rw, rh);
	ev_mode_switch(rw, rh, sx_w, sx_h);
	repaint();
	show_toast(rw, rh, sx_w, sx_h);
}

/* Key 0: every GOP mode, 1 s each; any key interrupts.  Returns the
 * interrupting key if it was a mode key (the caller applies it). */
static int cycle_modes(struct key *next)
{
	int i, n = gfx_mode_count(), count = 0, interrupted = 0, got = 0;
	struct key k;
	for (i = 0; i < n && !interrupted; i++) {
		uint32_t w, h, s;
		gfx_mode_size(i, &w, &h);
		gfx_set_mode_index(i);
		ev_mode_switch(w, h, sx_w, sx_h);
		count++;
		repaint();
		show_toast(w, h, sx_w, sx_h);
		for (s = 0; s < 1000; s += POLL_MS) {
			sx_stall(POLL_MS);
			if (read_key(&k)) {
				interrupted = 1;
				got = 1;
				break;
			}
		}
	}
	ev_mode_cycle((uint32_t)count, interrupted);
	if (got && is_mode_key(&k)) {
		*next = k;
		return 1;
	}
	return 0;   /* a non-mode interrupting key is discarded */
}

static void mode_key(struct key k)
{
	static const uint32_t sizes[6][2] = {
		{ 640, 480 }, { 800, 600 }, { 1024, 768 },
		{ 1280, 720 }, { 1280, 1024 }, { 1920, 1080 },
	};
	for (;;) {
		ev_keypress(k.unicode, k.scancode);
		if (k.unicode != '0') {
			switch_mode(sizes[k.unicode - '1'][0],
				    sizes[k.unicode - '1'][1]);
			return;
		}
		if (!cycle_modes(&k))
			return;
	}
}

/* A pacing stall polled in 50 ms chunks: mode keys act, others are
 * recorded and discarded (§5.2). */
static void stall_with_keys(uint32_t ms)
{
	uint32_t s;
	struct key k;
	for (s = 0; s < ms; s += POLL_MS) {
		sx_stall(POLL_MS);
		toast_tick();
		if (read_key(&k)) {
			if (is_mode_key(&k))
				mode_key(k);
			else
				ev_keypress(k.unicode, k.scancode);
		}
	}
}

/* ---- cursor blink (Awaiting, Parked) ------------------------------------- */

static int cursor_glyph_now(void)
{
	uint64_t half = blink_clock / 500;
	if (half % 2)
		return 0;
	if (half / 2 != blink_on_index) {
		blink_on_index = half / 2;
		blink_broken = 0;
		if ((blink_on_index + 1) % 6 == 0) {  /* every 6th blink-on */
			uint16_t bit = lfsr & 1;
			lfsr >>= 1;
			if (bit)
				lfsr ^= 0xB400;
			blink_broken = 1 + lfsr % 4;
		}
	}
	return 1 + blink_broken;
}

static struct key blink_until_key(uint32_t col, uint32_t row)
{
	int prev = -1;
	struct key k;
	cursor_on_screen = 1;
	cursor_col = col;
	cursor_row = row;
	for (;;) {
		int g = cursor_glyph_now();
		if (g != prev) {
			cursor_glyph = g;
			gfx_cursor(col, row, g);
			digest_refresh();
			prev = g;
		}
		if (read_key(&k)) {
			if (!is_mode_key(&k))
				return k;
			mode_key(k);
		}
		sx_stall(POLL_MS);
		blink_clock += POLL_MS;
		toast_tick();
	}
}

/* ---- text -------------------------------------------------------------------- */

/* Boot script rows 0-18 (§5.2): {label, status}; a NULL status is a plain
 * line, otherwise a telemetry line with a dot leader to col 40 and the
 * status at col 41.  The two language probes are plain ASCII here. */
static const char *const script[19][2] = {
	{ "Language probe zh-CN", "FAILED" },
	{ "Language probe hi-IN", "FAILED" },
	{ "Soporte de castellano", "FALLO" },
	{ "English language support", "OK" },
	{ "REMOTE LINK", "ESTABLISHED" },
	{ "AWAITING OPERATOR", "[connection confirmed]" },
	{ "VIDEO SUBSYSTEM", "FAILED" },
	{ "  640x480", "key 1" },
	{ "  800x600", "key 2" },
	{ "  1024x768", "key 3" },
	{ "  1280x720", "key 4" },
	{ "  1280x1024", "key 5" },
	{ "POINTER", "OK" },
	{ "KEYBOARD", "OK" },
	{ "AUDIO DAC", "FAILED" },
	{ "CLIPBOARD RELAY", "OK" },
	{ "STORAGE", "NONE" },
	{ "THRUSTER CONTROL", "FAILED" },
	{ "SENSORIUM: nominal", NULL },
};

static void telemetry(char *out, const char *label, const char *status)
{
	char *p = sx_cat(out, label);
	if (!status)
		return;
	*p++ = ' ';
	while (p - out < 40)
		*p++ = '.';
	*p++ = ' ';
	sx_cat(p, status);
}

#define PREAMBLE_1 "Advanced b64 cryptographic coprocessor ... OFFLINE"
#define PREAMBLE_2 "NIST 800-53 SC-28(1) Secret hardening ... DISABLED BY CONFIGURATION"
#define PROMPT "Decryption of next-stage bootloader failed. (R)etry, (I)gnore, or (A)bort?"
#define NUDGE "Continued retry will not change the outcome."
#define INTRO "Cryptographic co-processor offline. Encrypted bootloader payload follows. Decode externally and paste back to continue."
#define BLOB "c2V4dGFudHtIRUxMT19PUEVSQVRPUn0="
#define PASTE_PROMPT "Awaiting decoded payload> "
#define SECRET "sextant{HELLO_OPERATOR}"
#define POST_LINE "EMERGENCY SAFE BOOT COMPLETE. OPERATOR ASSISTANCE REQUIRED."
#define PARKED_LINE "SYSTEM ONLINE. AWAITING INSTRUCTIONS."
#define HALT_LINE "BOOTLOADER UNRECOVERABLE. SHUTTING DOWN."
#define COUNTDOWN "Awaiting decoded payload. Aborting in "

static void line(uint32_t col, uint32_t row, const char *s)
{
	gfx_text(col, row, s);
	ev_line(row);
	digest_refresh();
}

/* ---- bootloader (§5.3) ------------------------------------------------------ */

static uint32_t highest_row;

static void clear_scene_rows(void)
{
	uint32_t r;
	for (r = 19; r <= highest_row; r++)
		gfx_clear_row(r);
}

static void timeout_path(void)
{
	int n;
	char s[8];
	ev_timeout();
	clear_scene_rows();
	digest_refresh();
	gfx_text(0, 21, COUNTDOWN);
	digest_refresh();
	for (n = 30; n >= 0; n--) {
		s[0] = (char)('0' + n / 10);
		s[1] = (char)('0' + n % 10);
		sx_cat(s + 2, "...");
		gfx_text(sizeof(COUNTDOWN) - 1, 21, s);
		digest_refresh();
		sx_stall(1000);
	}
	line(0, 23, HALT_LINE);
	sx_stall(5000);
	sx_shutdown();
}

static uint32_t bootloader(void)
{
	uint32_t attempt = 0, len = 0, idle = 0, wrong = 0;
	char buf[65];
	struct key k;

	gfx_text(0, 19, PREAMBLE_1);
	ev_line(19);
	digest_refresh();
	sx_stall(200);
	gfx_text(0, 20, PREAMBLE_2);
	ev_line(20);
	digest_refresh();
	sx_stall(200);
	highest_row = 21;

	for (;;) {
		char p[128], *q;
		uint16_t c;
		int d;

		attempt++;
		q = sx_cat(p, PROMPT);
		if (attempt >= 2) {
			q = sx_cat(q, " (attempt ");
			q = sx_dec(q, attempt);
			sx_cat(q, ")");
		}
		gfx_clear_row(21);
		line(0, 21, p);
		if (attempt >= 5) {
			line(0, 22, NUDGE);
			highest_row = 22;
		}
		/* No timeout, no refresh while polling; mode keys are inert. */
		for (;;) {
			sx_stall(POLL_MS);
			if (!read_key(&k))
				continue;
			ev_keypress(k.unicode, k.scancode);
			c = k.unicode | 0x20;
			if (c == 'r' || c == 'i' || c == 'a')
				break;
		}
		if (c == 'a') {
			ev_decision(CHOICE_ABORT, attempt);
			sx_cold_reset();
		}
		if (c == 'i') {
			ev_decision(CHOICE_IGNORE, attempt);
			break;
		}
		ev_decision(CHOICE_RETRY, attempt);
		gfx_clear_row(21);
		gfx_text(0, 21, "Retrying decryption");
		for (d = 0; d < 8; d++) {
			sx_stall(200);
			gfx_text(19 + (uint32_t)d, 21, ".");
			digest_refresh();
		}
	}

	/* Blob screen: no stalls between the lines. */
	gfx_clear_row(21);
	line(0, 21, INTRO);
	line(0, 23, BLOB);
	line(0, 25, PASTE_PROMPT);
	highest_row = 25;

	for (;;) {
		int submit = 0;
		sx_stall(POLL_MS);
		if (!read_key(&k)) {
			idle += POLL_MS;
			if (idle >= 60000)
				timeout_path();
			continue;
		}
		idle = 0;
		ev_keypress(k.unicode, k.scancode);
		if (k.unicode == '\r' || k.unicode == '\n') {
			submit = 1;
		} else if (k.unicode >= 0x20 && k.unicode <= 0x7e) {
			char ch[2] = { (char)k.unicode, 0 };
			buf[len++] = (char)k.unicode;
			gfx_text(26 + len - 1, 25, ch);
			digest_refresh();
			if (len == 64)
				submit = 1;
		}
		if (!submit)
			continue;

		if (len > 0 && buf[len - 1] == '\r')
			len--;
		{
			const char *want = SECRET;
			uint32_t i, ok = len == (uint32_t)sx_strlen(want);
			for (i = 0; ok && i < len; i++)
				ok = buf[i] == want[i];
			ev_paste(len, (int)ok);
			digest_refresh();
			if (ok) {
				clear_scene_rows();
				digest_refresh();
				line(0, 21, "Booting...");
				sx_stall(600);
				return 22;
			}
		}
		wrong++;
		if (wrong >= 3)
			timeout_path();
		{
			char s[40], *q = s;
			gfx_clear_row(25);
			gfx_text(0, 25, PASTE_PROMPT);
			ev_line(25);
			q = sx_cat(q, "(wrong, attempt ");
			q = sx_dec(q, wrong);
			sx_cat(q, " of 3)");
			gfx_clear_row(26);
			gfx_text(0, 26, s);
			ev_line(26);
			highest_row = 26;
			digest_refresh();
		}
		len = 0;
	}
}

/* ---- scenes -------------------------------------------------------------- */

static void run_awaiting(void)
{
	struct key k;
	gfx_logo();
	digest_refresh();                       /* frame 1: the logo only */
	k = blink_until_key(0, 0);
	ev_keypress(k.unicode, k.scancode);
	ev_transition(PHASE_AWAITING, PHASE_BOOTING);
	cursor_on_screen = 0;
}

static void run_booting(void)
{
	uint32_t i, row;
	gfx_clear();
	gfx_model_clear();
	gfx_logo();
	for (i = 0; i < 19; i++) {
		char s[96];
		telemetry(s, script[i][0], script[i][1]);
		line(0, i, s);
		stall_with_keys(200);
	}
	row = bootloader();
	line(0, row, POST_LINE);
	stall_with_keys(200);
	ev_transition(PHASE_BOOTING, PHASE_PARKED);
}

static void run_parked(void)
{
	struct key k;
	gfx_text(0, 24, PARKED_LINE);           /* no event, but a refresh */
	digest_refresh();
	k = blink_until_key(sizeof(PARKED_LINE), 24);
	ev_keypress(k.unicode, k.scancode);
	ev_transition(PHASE_PARKED, PHASE_PARKED);
}

EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *systab)
{
	InitializeLib(image, systab);
	uefi_call_wrapper(BS->SetWatchdogTimer, 4, 0, 0, 0, NULL);
	sx_serial_write("Hello from Uncalibrated Sextant\r\n");
	crc32c_init();
	if (!gfx_init()) {
		sx_serial_write("no GOP: halting\r\n");
		sx_shutdown();
	}
	gfx_set_mode_nearest(1024, 768);
	gfx_clear();
	gfx_log_modes();
	digest_calibrate();
	sx_t = 0;

	run_awaiting();
	digest_refresh();
	run_booting();
	digest_refresh();
	run_parked();
	digest_refresh();
	digest_drain();
	sx_shutdown();
	return EFI_SUCCESS;
}
