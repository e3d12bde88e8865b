/* Shared declarations of the Sextant-compatible test guest.
 * The contract is docs/contracts/sextant.md; section numbers below
 * (§) refer to it. */
#ifndef SX_H
#define SX_H

#include <efi.h>
#include <efilib.h>
#include <stdint.h>

/* ---- platform (main.c) ---------------------------------------------------- */
extern uint64_t sx_t;              /* synthetic clock: the sum of stalls (§4.2) */
void sx_stall(uint32_t ms);        /* stalls and advances sx_t */
void sx_serial_write(const char *s);
void sx_shutdown(void);            /* ACPI power-off via ResetSystem */
void sx_cold_reset(void);
void *sx_alloc(UINTN bytes);
static inline uint64_t sx_rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/* tiny string helpers (ASCII) */
int sx_strlen(const char *s);
char *sx_cat(char *dst, const char *src);   /* returns the new end */
char *sx_dec(char *dst, uint64_t v);
char *sx_hex(char *dst, uint64_t v, int min_digits);
char *sx_size(char *dst, uint32_t w, uint32_t h);   /* "WxH" */

/* ---- screen (gfx.c) ------------------------------------------------------- */
#define SX_MARGIN 16
#define SX_REGION 180                 /* 45 modules x 4 px */
#define SX_HASH_MAX_WIDTH 1920
#define SX_MODEL_ROWS 100
#define SX_MODEL_COLS 320

extern uint32_t sx_w, sx_h, sx_cols, sx_rows;

int gfx_init(void);                   /* locate GOP; 1 on success */
void gfx_log_modes(void);             /* "available GOP modes: ..." */
int gfx_mode_count(void);
void gfx_mode_size(int i, uint32_t *w, uint32_t *h);
void gfx_set_mode_index(int i);
void gfx_set_mode_nearest(uint32_t w, uint32_t h); /* §2.4 */
void gfx_clear(void);                 /* black screen, model kept */
void gfx_logo(void);
void gfx_text(uint32_t col, uint32_t row, const char *s);   /* + model */
void gfx_clear_row(uint32_t row);                           /* + model */
void gfx_model_clear(void);
void gfx_replay_model(void);
void gfx_toast(const char *s);        /* bottom row, not in the model */
void gfx_cursor(uint32_t col, uint32_t row, int glyph);  /* 0 = off */
void gfx_qr(const uint8_t modules[37][37]);
uint32_t gfx_framebuffer_hash(void);  /* §1.6 */

/* ---- digest (digest.c) ---------------------------------------------------- */
enum {
	EV_KEYPRESS = 0x01, EV_LINE = 0x02, EV_TRANSITION = 0x03,
	EV_DECISION = 0x04, EV_PASTE = 0x05, EV_TIMEOUT = 0x06,
	EV_MODE_SWITCH = 0x07, EV_MODE_CYCLE = 0x08,
};
enum { PHASE_AWAITING = 0, PHASE_BOOTING = 1, PHASE_PARKED = 2 };
enum { CHOICE_RETRY = 0, CHOICE_IGNORE = 1, CHOICE_ABORT = 2 };

uint32_t crc32c_update(uint32_t crc_finalized, const void *data, UINTN n);
void crc32c_init(void);

void ev_keypress(uint16_t unicode, uint16_t scancode);
void ev_line(uint32_t row);
void ev_transition(int from, int to);
void ev_decision(int choice, uint32_t attempt);
void ev_paste(uint32_t len, int correct);
void ev_timeout(void);
void ev_mode_switch(uint32_t rw, uint32_t rh, uint32_t aw, uint32_t ah);
void ev_mode_cycle(uint32_t count, int interrupted);

void digest_calibrate(void);          /* 100 ms TSC calibration, not in t */
void digest_refresh(void);            /* §2.5: one QR refresh */
void digest_drain(void);              /* §4.2 */

#endif
