/* QR Code encoder, version 5 / ECC L / byte mode only.
 *
 * Implemented from the published symbology (ISO/IEC 18004): bit stream,
 * Reed-Solomon over GF(2^8) with the 0x11d field polynomial, function
 * patterns, zig-zag module placement, the eight data masks scored by the four
 * penalty rules (lowest score wins, the lowest mask number on a tie), and the
 * BCH-protected format information. */
#include "qr.h"

#define N QR_SIZE

/* ---- GF(256) and Reed-Solomon ------------------------------------------ */

static uint8_t gf_mul(uint8_t a, uint8_t b)
{
	uint8_t r = 0;
	while (b) {
		if (b & 1)
			r ^= a;
		a = (uint8_t)((a << 1) ^ ((a & 0x80) ? 0x1d : 0));
		b >>= 1;
	}
	return r;
}

/* Generator polynomial g(x) = (x - a^0)(x - a^1)...(x - a^25), stored
 * without its leading 1 coefficient, highest power first. */
static void rs_generator(uint8_t gen[QR_EC_CW])
{
	uint8_t root = 1;
	int i, j;

	for (i = 0; i < QR_EC_CW; i++)
		gen[i] = 0;
	gen[QR_EC_CW - 1] = 1;   /* the polynomial "1" */
	for (i = 0; i < QR_EC_CW; i++) {
		/* multiply the current polynomial by (x - root) */
		for (j = 0; j < QR_EC_CW; j++) {
			gen[j] = gf_mul(gen[j], root);
			if (j + 1 < QR_EC_CW)
				gen[j] ^= gen[j + 1];
		}
		root = gf_mul(root, 2);
	}
}

static void rs_remainder(const uint8_t *data, int n, uint8_t ec[QR_EC_CW])
{
	uint8_t gen[QR_EC_CW];
	int i, j;

	rs_generator(gen);
	for (i = 0; i < QR_EC_CW; i++)
		ec[i] = 0;
	for (i = 0; i < n; i++) {
		uint8_t factor = data[i] ^ ec[0];
		for (j = 0; j < QR_EC_CW - 1; j++)
			ec[j] = ec[j + 1];
		ec[QR_EC_CW - 1] = 0;
		for (j = 0; j < QR_EC_CW; j++)
			ec[j] ^= gf_mul(gen[j], factor);
	}
}

/* ---- function patterns --------------------------------------------------- */

static uint8_t fn[N][N];  /* 1 where the module belongs to a function pattern */

static void set_fn(uint8_t m[N][N], int x, int y, int dark)
{
	m[y][x] = (uint8_t)(dark ? 1 : 0);
	fn[y][x] = 1;
}

static void draw_finder(uint8_t m[N][N], int cx, int cy)
{
	int dx, dy;
	for (dy = -4; dy <= 4; dy++) {
		for (dx = -4; dx <= 4; dx++) {
			int x = cx + dx, y = cy + dy;
			int adx = dx < 0 ? -dx : dx, ady = dy < 0 ? -dy : dy;
			int d = adx > ady ? adx : ady;  /* Chebyshev distance */
			if (x < 0 || y < 0 || x >= N || y >= N)
				continue;
			set_fn(m, x, y, d != 2 && d != 4);
		}
	}
}

static void draw_alignment(uint8_t m[N][N], int cx, int cy)
{
	int dx, dy;
	for (dy = -2; dy <= 2; dy++)
		for (dx = -2; dx <= 2; dx++) {
			int adx = dx < 0 ? -dx : dx, ady = dy < 0 ? -dy : dy;
			set_fn(m, cx + dx, cy + dy, (adx > ady ? adx : ady) != 1);
		}
}

static void draw_format(uint8_t m[N][N], int mask)
{
	/* ECC level L has the two format bits 01. */
	int data = (1 << 3) | mask;
	int rem = data, i, bits;

	for (i = 0; i < 10; i++)
		rem = (rem << 1) ^ (((rem >> 9) & 1) * 0x537);
	bits = ((data << 10) | (rem & 0x3ff)) ^ 0x5412;

	/* First copy, around the top-left finder. */
	for (i = 0; i <= 5; i++)
		set_fn(m, 8, i, (bits >> i) & 1);
	set_fn(m, 8, 7, (bits >> 6) & 1);
	set_fn(m, 8, 8, (bits >> 7) & 1);
	set_fn(m, 7, 8, (bits >> 8) & 1);
	for (i = 9; i < 15; i++)
		set_fn(m, 14 - i, 8, (bits >> i) & 1);
	/* Second copy, split between the other two finders. */
	for (i = 0; i < 8; i++)
		set_fn(m, N - 1 - i, 8, (bits >> i) & 1);
	for (i = 8; i < 15; i++)
		set_fn(m, 8, N - 15 + i, (bits >> i) & 1);
	set_fn(m, 8, N - 8, 1);  /* the dark module */
}

static void draw_function_patterns(uint8_t m[N][N])
{
	int i;
	for (i = 0; i < N; i++) {
		set_fn(m, 6, i, i % 2 == 0);
		set_fn(m, i, 6, i % 2 == 0);
	}
	draw_finder(m, 3, 3);
	draw_finder(m, N - 4, 3);
	draw_finder(m, 3, N - 4);
	/* Version 5 alignment centres are 6 and 30; only (30,30) is free. */
	draw_alignment(m, 30, 30);
	draw_format(m, 0);  /* reserves the format area; rewritten later */
}

/* ---- data placement and masks ------------------------------------------- */

static void place_codewords(uint8_t m[N][N], const uint8_t *cw, int ncw)
{
	int bit = 0, total = ncw * 8;
	int right, vert, j;

	for (right = N - 1; right >= 1; right -= 2) {
		if (right == 6)
			right = 5;  /* skip the vertical timing column */
		for (vert = 0; vert < N; vert++) {
			for (j = 0; j < 2; j++) {
				int x = right - j;
				int upward = ((right + 1) & 2) == 0;
				int y = upward ? N - 1 - vert : vert;
				if (fn[y][x])
					continue;
				if (bit < total) {
					m[y][x] = (cw[bit >> 3] >> (7 - (bit & 7))) & 1;
					bit++;
				} else {
					m[y][x] = 0;  /* remainder bits */
				}
			}
		}
	}
}

static int mask_bit(int mask, int x, int y)
{
	switch (mask) {
	case 0: return (x + y) % 2 == 0;
	case 1: return y % 2 == 0;
	case 2: return x % 3 == 0;
	case 3: return (x + y) % 3 == 0;
	case 4: return (x / 3 + y / 2) % 2 == 0;
	case 5: return x * y % 2 + x * y % 3 == 0;
	case 6: return (x * y % 2 + x * y % 3) % 2 == 0;
	default: return ((x + y) % 2 + x * y % 3) % 2 == 0;
	}
}

static void apply_mask(uint8_t m[N][N], int mask)
{
	int x, y;
	for (y = 0; y < N; y++)
		for (x = 0; x < N; x++)
			if (!fn[y][x] && mask_bit(mask, x, y))
				m[y][x] ^= 1;
}

/* Penalty for one line (row or column) of modules: rule 1 (runs of five or
 * more of one colour) and rule 3 (a 1:1:3:1:1 dark/light/dark/light/dark
 * core with four light modules on one side, the symbol's outside counting
 * as light). */
static long line_penalty(const uint8_t *line)
{
	int runs[N + 2], colour[N + 2];
	int nr = 0, i;
	long p = 0;

	/* Runs with a light margin of N modules on each side. */
	runs[0] = N;
	colour[0] = 0;
	nr = 1;
	for (i = 0; i < N; i++) {
		if (line[i] == colour[nr - 1]) {
			runs[nr - 1]++;
		} else {
			runs[nr] = 1;
			colour[nr] = line[i];
			nr++;
		}
	}
	if (colour[nr - 1] == 0) {
		runs[nr - 1] += N;
	} else {
		runs[nr] = N;
		colour[nr] = 0;
		nr++;
	}

	/* Rule 1: the margin is not part of the symbol. */
	for (i = 0; i < nr; i++) {
		int len = runs[i];
		if (i == 0 || i == nr - 1)
			len -= N;
		if (len >= 5)
			p += 3 + (len - 5);
	}

	/* Rule 3: dark runs at odd positions i (runs alternate, light first). */
	for (i = 3; i + 3 < nr; i++) {
		int n = runs[i - 2];
		int before = runs[i - 3], after = runs[i + 3];
		if (!colour[i] || n <= 0)
			continue;
		if (runs[i - 1] != n || runs[i] != 3 * n || runs[i + 1] != n ||
		    runs[i + 2] != n)
			continue;
		if (before >= 4 * n && after >= n)
			p += 40;
		if (after >= 4 * n && before >= n)
			p += 40;
	}
	return p;
}

static long penalty(uint8_t m[N][N])
{
	uint8_t line[N];
	long p = 0;
	int x, y, dark = 0, total = N * N, k;

	for (y = 0; y < N; y++)
		p += line_penalty(m[y]);
	for (x = 0; x < N; x++) {
		for (y = 0; y < N; y++)
			line[y] = m[y][x];
		p += line_penalty(line);
	}
	/* Rule 2: 2x2 blocks of one colour. */
	for (y = 0; y + 1 < N; y++)
		for (x = 0; x + 1 < N; x++) {
			int c = m[y][x];
			if (c == m[y][x + 1] && c == m[y + 1][x] &&
			    c == m[y + 1][x + 1])
				p += 3;
		}
	/* Rule 4: balance of dark modules, 10 points per 5 % step off 50 %. */
	for (y = 0; y < N; y++)
		for (x = 0; x < N; x++)
			dark += m[y][x];
	k = dark * 20 - total * 10;
	if (k < 0)
		k = -k;
	k = (k + total - 1) / total - 1;
	p += (long)k * 10;
	return p;
}

/* ---- top level ----------------------------------------------------------- */

int qr_encode_v5l(const uint8_t *data, int len, uint8_t out[N][N])
{
	uint8_t cw[QR_DATA_CW + QR_EC_CW];
	static uint8_t base[N][N], trial[N][N];
	int bit = 0, i, mask, best = 0;
	long best_p = -1;

	if (len < 0 || len > QR_MAX_BYTES)
		return -1;

	/* Bit stream: mode 0100, 8-bit count, data, terminator, byte pad. */
	for (i = 0; i < QR_DATA_CW; i++)
		cw[i] = 0;
#define PUT(v, nbits) do { int _b; for (_b = (nbits) - 1; _b >= 0; _b--) { \
		if (((v) >> _b) & 1) cw[bit >> 3] |= (uint8_t)(0x80 >> (bit & 7)); \
		bit++; } } while (0)
	PUT(4, 4);
	PUT(len, 8);
	for (i = 0; i < len; i++)
		PUT(data[i], 8);
#undef PUT
	{
		int cap = QR_DATA_CW * 8;
		int term = cap - bit < 4 ? cap - bit : 4;
		bit += term;
		bit = (bit + 7) & ~7;
		for (i = bit / 8; i < QR_DATA_CW; i++)
			cw[i] = ((i - bit / 8) % 2 == 0) ? 0xec : 0x11;
	}
	rs_remainder(cw, QR_DATA_CW, cw + QR_DATA_CW);

	for (i = 0; i < N; i++) {
		int j;
		for (j = 0; j < N; j++) {
			base[i][j] = 0;
			fn[i][j] = 0;
		}
	}
	draw_function_patterns(base);
	place_codewords(base, cw, QR_DATA_CW + QR_EC_CW);

	for (mask = 0; mask < 8; mask++) {
		long p;
		int y, x;
		for (y = 0; y < N; y++)
			for (x = 0; x < N; x++)
				trial[y][x] = base[y][x];
		apply_mask(trial, mask);
		draw_format(trial, mask);
		p = penalty(trial);
		if (best_p < 0 || p < best_p) {
			best_p = p;
			best = mask;
		}
	}
	for (i = 0; i < N; i++) {
		int j;
		for (j = 0; j < N; j++)
			out[i][j] = base[i][j];
	}
	apply_mask(out, best);
	draw_format(out, best);
	return best;
}
