/* Screen: GOP mode selection, the text grid, logo, cursor, toast, the QR
 * region and the framebuffer hash read back from the screen (§1.6, §2). */
#include "sx.h"
#include "font8x16.h"   /* generated into $IMAGES_OUT/build by build.sh */

typedef EFI_GRAPHICS_OUTPUT_BLT_PIXEL px_t;

static EFI_GRAPHICS_OUTPUT_PROTOCOL *gop;
uint32_t sx_w, sx_h, sx_cols, sx_rows;

static const px_t FG = { 51, 150, 51, 0 };  /* B,G,R: RGB (51,150,51) */
static const px_t BG = { 0, 0, 0, 0 };

static px_t *rowbuf;     /* one text row: up to 2560 x 16 px */
static px_t *scanline;   /* framebuffer read-back, SX_HASH_MAX_WIDTH px */
static px_t *qrbuf;      /* 180 x 180 */
static px_t *logobuf;    /* 128 x 128 */
static char model[SX_MODEL_ROWS][SX_MODEL_COLS];

#define ROWBUF_PX (4096 * 16)

static void blt(px_t *buf, EFI_GRAPHICS_OUTPUT_BLT_OPERATION op,
		UINTN sx, UINTN sy, UINTN dx, UINTN dy, UINTN w, UINTN h)
{
	uefi_call_wrapper(gop->Blt, 10, gop, buf, op, sx, sy, dx, dy, w, h, 0);
}

static void fill(px_t c, UINTN x, UINTN y, UINTN w, UINTN h)
{
	if (x >= sx_w || y >= sx_h || !w || !h)
		return;
	if (x + w > sx_w)
		w = sx_w - x;
	if (y + h > sx_h)
		h = sx_h - y;
	blt(&c, EfiBltVideoFill, 0, 0, x, y, w, h);
}

static void update_geometry(void)
{
	sx_w = gop->Mode->Info->HorizontalResolution;
	sx_h = gop->Mode->Info->VerticalResolution;
	sx_cols = sx_w > 2 * SX_MARGIN ? (sx_w - 2 * SX_MARGIN) / 8 : 0;
	sx_rows = sx_h > 2 * SX_MARGIN ? (sx_h - 2 * SX_MARGIN) / 16 : 0;
}

static void build_logo(void)
{
	int x, y;
	/* A plain mark: a ring, a horizon line and an index arm, 128x128. */
	for (y = 0; y < 128; y++) {
		for (x = 0; x < 128; x++) {
			int dx = x - 64, dy = y - 64, on = 0;
			int r2 = dx * dx + dy * dy;
			if (r2 >= 56 * 56 && r2 <= 61 * 61)
				on = 1;                    /* ring */
			if (y >= 62 && y <= 65 && x >= 10 && x <= 117)
				on = 1;                    /* horizon */
			if (r2 <= 56 * 56 && dy <= 0 && dx >= 0 &&
			    (dx - (-dy)) * (dx - (-dy)) <= 4)
				on = 1;                    /* index arm, 45 degrees */
			if (r2 <= 6 * 6)
				on = 1;                    /* pivot */
			logobuf[y * 128 + x] = on ? FG : BG;
		}
	}
}

int gfx_init(void)
{
	EFI_GUID guid = EFI_GRAPHICS_OUTPUT_PROTOCOL_GUID;
	if (uefi_call_wrapper(BS->LocateProtocol, 3, &guid, NULL,
			      (void **)&gop) != EFI_SUCCESS || !gop)
		return 0;
	rowbuf = sx_alloc(ROWBUF_PX * sizeof(px_t));
	scanline = sx_alloc(SX_HASH_MAX_WIDTH * sizeof(px_t));
	qrbuf = sx_alloc(SX_REGION * SX_REGION * sizeof(px_t));
	logobuf = sx_alloc(128 * 128 * sizeof(px_t));
	build_logo();
	update_geometry();
	return 1;
}

int gfx_mode_count(void)
{
	return (int)gop->Mode->MaxMode;
}

void gfx_mode_size(int i, uint32_t *w, uint32_t *h)
{
	EFI_GRAPHICS_OUTPUT_MODE_INFORMATION *info;
	UINTN size;
	*w = *h = 0;
	if (uefi_call_wrapper(gop->QueryMode, 4, gop, (UINT32)i, &size,
			      &info) == EFI_SUCCESS) {
		*w = info->HorizontalResolution;
		*h = info->VerticalResolution;
	}
}

void gfx_log_modes(void)
{
	static char line[4096];
	char *p = line;
	int i, n = gfx_mode_count();
	p = sx_cat(p, "available GOP modes:");
	for (i = 0; i < n && p - line < (long)sizeof(line) - 32; i++) {
		uint32_t w, h;
		gfx_mode_size(i, &w, &h);
		p = sx_cat(p, " ");
		p = sx_size(p, w, h);
	}
	sx_cat(p, "\r\n");
	sx_serial_write(line);
}

void gfx_set_mode_index(int i)
{
	uefi_call_wrapper(gop->SetMode, 2, gop, (UINT32)i);
	update_geometry();
}

void gfx_set_mode_nearest(uint32_t w, uint32_t h)
{
	int i, best = -1, n = gfx_mode_count();
	uint32_t bd = 0, bw = 0, bh = 0;
	for (i = 0; i < n; i++) {
		uint32_t mw, mh, d;
		gfx_mode_size(i, &mw, &mh);
		if (!mw || !mh)
			continue;
		d = (mw > w ? mw - w : w - mw) + (mh > h ? mh - h : h - mh);
		if (best < 0 || d < bd || (d == bd && (mw < bw ||
					   (mw == bw && mh < bh)))) {
			best = i;
			bd = d;
			bw = mw;
			bh = mh;
		}
	}
	if (best >= 0)
		gfx_set_mode_index(best);
	else
		update_geometry();
}

void gfx_clear(void)
{
	fill(BG, 0, 0, sx_w, sx_h);
}

void gfx_logo(void)
{
	uint32_t x, y;
	if (sx_cols < 16)
		return;
	x = SX_MARGIN + 8 * (sx_cols - 16);
	y = SX_MARGIN;
	if (x + 128 > sx_w || y + 128 > sx_h)
		return;
	blt(logobuf, EfiBltBufferToVideo, 0, 0, x, y, 128, 128);
}

/* Draws n glyphs (NUL = blank cell) at a text cell, clipped to the grid. */
static void draw_cells(uint32_t col, uint32_t row, const char *s, uint32_t n)
{
	uint32_t i, gy, gx, w;
	if (row >= sx_rows || col >= sx_cols)
		return;
	if (col + n > sx_cols)
		n = sx_cols - col;
	if (n * 8 * 16 > ROWBUF_PX)
		n = ROWBUF_PX / (8 * 16);
	w = n * 8;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		const unsigned char *g = font8x16[c < 128 ? c : '?'];
		for (gy = 0; gy < 16; gy++)
			for (gx = 0; gx < 8; gx++)
				rowbuf[gy * w + i * 8 + gx] =
					(g[gy] & (0x80 >> gx)) ? FG : BG;
	}
	if (n)
		blt(rowbuf, EfiBltBufferToVideo, 0, 0, SX_MARGIN + 8 * col,
		    SX_MARGIN + 16 * row, w, 16);
}

void gfx_text(uint32_t col, uint32_t row, const char *s)
{
	uint32_t n = (uint32_t)sx_strlen(s), i;
	if (row < SX_MODEL_ROWS)
		for (i = 0; i < n && col + i < SX_MODEL_COLS; i++)
			model[row][col + i] = s[i];
	draw_cells(col, row, s, n);
}

void gfx_clear_row(uint32_t row)
{
	uint32_t i;
	if (row < SX_MODEL_ROWS)
		for (i = 0; i < SX_MODEL_COLS; i++)
			model[row][i] = 0;
	if (row < sx_rows)
		fill(BG, SX_MARGIN, SX_MARGIN + 16 * row, 8 * sx_cols, 16);
}

void gfx_model_clear(void)
{
	uint32_t r, c;
	for (r = 0; r < SX_MODEL_ROWS; r++)
		for (c = 0; c < SX_MODEL_COLS; c++)
			model[r][c] = 0;
}

void gfx_replay_model(void)
{
	uint32_t r, c;
	for (r = 0; r < SX_MODEL_ROWS && r < sx_rows; r++) {
		c = 0;
		while (c < SX_MODEL_COLS && c < sx_cols) {
			uint32_t start;
			if (!model[r][c]) {
				c++;
				continue;
			}
			start = c;
			while (c < SX_MODEL_COLS && model[r][c])
				c++;
			draw_cells(start, r, &model[r][start], c - start);
		}
	}
}

void gfx_toast(const char *s)
{
	if (sx_rows)
		draw_cells(0, sx_rows - 1, s, (uint32_t)sx_strlen(s));
}

/* glyph 0 = off, 1 = solid block, 2..5 = the four "broken" blink-ons:
 * missing pixel, smeared edge, shifted column, phosphor trail. */
void gfx_cursor(uint32_t col, uint32_t row, int glyph)
{
	uint32_t x, y;
	px_t cell[8 * 16];
	if (row >= sx_rows || col >= sx_cols)
		return;
	for (y = 0; y < 16; y++) {
		for (x = 0; x < 8; x++) {
			int on = glyph != 0;
			switch (glyph) {
			case 2: on = !(x == 3 && y == 7) && !(x == 5 && y == 11); break;
			case 3: on = x < 7 || (y % 3) != 0; break;
			case 4: on = x >= 1; break;
			case 5: on = y < 12 || ((x + y) % 2 == 0); break;
			}
			cell[y * 8 + x] = on ? FG : BG;
		}
	}
	blt(cell, EfiBltBufferToVideo, 0, 0, SX_MARGIN + 8 * col,
	    SX_MARGIN + 16 * row, 8, 16);
}

static void region_origin(uint32_t *ox, uint32_t *oy)
{
	*ox = sx_w > SX_MARGIN + SX_REGION ? sx_w - (SX_MARGIN + SX_REGION) : 0;
	*oy = sx_h > 2 * SX_MARGIN + SX_REGION ?
		sx_h - (2 * SX_MARGIN + SX_REGION) : 0;
}

#ifdef SX_QR_BLITS
/* The way a real Sextant paints its digest (docs/contracts/sextant.md
 * §2.2): one 4x4 BufferToVideo per module, quiet zone included (45 x 45 =
 * 2,025 blits, top row first), so ryll sees a flood of small draws and a
 * capture mid-repaint mixes old and new modules. Built as a second image
 * by build.sh (guest sextant_blits). */
void gfx_qr(const uint8_t m[37][37])
{
	static px_t tiles[2][16];
	uint32_t ox, oy, x, y;
	region_origin(&ox, &oy);
	if (ox + SX_REGION > sx_w || oy + SX_REGION > sx_h)
		return;
	for (x = 0; x < 16; x++) {
		tiles[0][x] = BG;
		tiles[1][x] = FG;
	}
	for (y = 0; y < SX_REGION / 4; y++) {
		for (x = 0; x < SX_REGION / 4; x++) {
			int mx = (int)x - 4, my = (int)y - 4;
			int dark = mx >= 0 && my >= 0 && mx < 37 && my < 37 &&
				m[my][mx];
			blt(tiles[dark], EfiBltBufferToVideo, 0, 0,
			    ox + 4 * x, oy + 4 * y, 4, 4);
		}
	}
}
#else
void gfx_qr(const uint8_t m[37][37])
{
	uint32_t ox, oy, x, y;
	region_origin(&ox, &oy);
	for (y = 0; y < SX_REGION; y++) {
		for (x = 0; x < SX_REGION; x++) {
			int mx = (int)(x / 4) - 4, my = (int)(y / 4) - 4;
			int dark = mx >= 0 && my >= 0 && mx < 37 && my < 37 &&
				m[my][mx];
			qrbuf[y * SX_REGION + x] = dark ? FG : BG;
		}
	}
	if (ox + SX_REGION <= sx_w && oy + SX_REGION <= sx_h)
		blt(qrbuf, EfiBltBufferToVideo, 0, 0, ox, oy, SX_REGION,
		    SX_REGION);
}
#endif

uint32_t gfx_framebuffer_hash(void)
{
	uint32_t ox, oy, y, cap = sx_w < SX_HASH_MAX_WIDTH ? sx_w :
		SX_HASH_MAX_WIDTH;
	uint32_t crc = 0;  /* finalized CRC of nothing; continued per span */
	region_origin(&ox, &oy);
	for (y = 0; y < sx_h; y++) {
		blt(scanline, EfiBltVideoToBltBuffer, 0, y, 0, 0, cap, 1);
		if (y >= oy && y < oy + SX_REGION) {
			uint32_t a = ox < cap ? ox : cap;
			uint32_t b = ox + SX_REGION < cap ? ox + SX_REGION : cap;
			crc = crc32c_update(crc, scanline, a * 4);
			crc = crc32c_update(crc, scanline + b, (cap - b) * 4);
		} else {
			crc = crc32c_update(crc, scanline, cap * 4);
		}
	}
	return crc;
}
