/* Events, the eight CRC32C channel chains, the 256-entry ring, the digest
 * payload (schema v2), the QR refresh with its timing statistics and the
 * serial drain.  §1, §2.5, §4. */
#include "sx.h"
#include "qr.h"

/* ---- CRC-32C (Castagnoli), slicing-by-8 --------------------------------- */

static uint32_t crc_tab[8][256];

void crc32c_init(void)
{
	uint32_t i, j, c;
	for (i = 0; i < 256; i++) {
		c = i;
		for (j = 0; j < 8; j++)
			c = (c >> 1) ^ ((c & 1) ? 0x82F63B78u : 0);
		crc_tab[0][i] = c;
	}
	for (i = 0; i < 256; i++) {
		c = crc_tab[0][i];
		for (j = 1; j < 8; j++) {
			c = (c >> 8) ^ crc_tab[0][c & 0xff];
			crc_tab[j][i] = c;
		}
	}
}

/* Continues a finalized CRC-32C: crc32c(a + b) == update(crc32c(a), b). */
uint32_t crc32c_update(uint32_t prev, const void *data, UINTN n)
{
	const uint8_t *p = data;
	uint32_t c = ~prev;
	while (n && ((UINTN)p & 7)) {
		c = (c >> 8) ^ crc_tab[0][(c ^ *p++) & 0xff];
		n--;
	}
	while (n >= 8) {
		uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 |
				   (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
		uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 |
			(uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
		c = crc_tab[7][lo & 0xff] ^ crc_tab[6][(lo >> 8) & 0xff] ^
			crc_tab[5][(lo >> 16) & 0xff] ^ crc_tab[4][lo >> 24] ^
			crc_tab[3][hi & 0xff] ^ crc_tab[2][(hi >> 8) & 0xff] ^
			crc_tab[1][(hi >> 16) & 0xff] ^ crc_tab[0][hi >> 24];
		p += 8;
		n -= 8;
	}
	while (n--)
		c = (c >> 8) ^ crc_tab[0][(c ^ *p++) & 0xff];
	return ~c;
}

/* ---- events, chains, ring -------------------------------------------------- */

struct event {
	uint8_t tag;
	uint64_t t;
	uint32_t a, b, c, d;
};

#define RING 256
static struct event ring[RING];
static uint32_t ring_len, ring_head;   /* head = index of the next write */
static uint32_t chains[8];              /* tags 0x11..0x18, seeded 0 */

static uint8_t *put16(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	return p + 2;
}

static uint8_t *put32(uint8_t *p, uint32_t v)
{
	p = put16(p, v & 0xffff);
	return put16(p, v >> 16);
}

/* The TLV record of one event (§1.5); returns its size. */
static int tlv(const struct event *e, uint8_t *out)
{
	uint8_t *p = out + 2;
	p = put32(p, (uint32_t)e->t);
	p = put32(p, (uint32_t)(e->t >> 32));
	switch (e->tag) {
	case EV_KEYPRESS:
		p = put16(p, e->a);
		p = put16(p, e->b);
		break;
	case EV_LINE:
		p = put16(p, e->a);
		break;
	case EV_TRANSITION:
		*p++ = (uint8_t)e->a;
		*p++ = (uint8_t)e->b;
		break;
	case EV_DECISION:
		*p++ = (uint8_t)e->a;
		p = put32(p, e->b);
		break;
	case EV_PASTE:
		p = put16(p, e->a);
		*p++ = (uint8_t)(e->b ? 1 : 0);
		break;
	case EV_TIMEOUT:
		break;
	case EV_MODE_SWITCH:
		p = put16(p, e->a);
		p = put16(p, e->b);
		p = put16(p, e->c);
		p = put16(p, e->d);
		break;
	case EV_MODE_CYCLE:
		p = put32(p, e->a);
		*p++ = (uint8_t)(e->b ? 1 : 0);
		break;
	}
	out[0] = e->tag;
	out[1] = (uint8_t)(p - out - 2);
	return (int)(p - out);
}

static void push(uint8_t tag, uint32_t a, uint32_t b, uint32_t c, uint32_t d)
{
	struct event e;
	uint8_t buf[32];
	int n;
	e.tag = tag;
	e.t = sx_t;
	e.a = a;
	e.b = b;
	e.c = c;
	e.d = d;
	/* The channel hash is updated first, then the event enters the ring. */
	n = tlv(&e, buf);
	chains[tag - 1] = crc32c_update(chains[tag - 1], buf, (UINTN)n);
	ring[ring_head] = e;
	ring_head = (ring_head + 1) % RING;
	if (ring_len < RING)
		ring_len++;
}

void ev_keypress(uint16_t u, uint16_t s) { push(EV_KEYPRESS, u, s, 0, 0); }
void ev_line(uint32_t row) { push(EV_LINE, row & 0xffff, 0, 0, 0); }
void ev_transition(int f, int t) { push(EV_TRANSITION, (uint32_t)f, (uint32_t)t, 0, 0); }
void ev_decision(int ch, uint32_t att) { push(EV_DECISION, (uint32_t)ch, att, 0, 0); }
void ev_paste(uint32_t len, int ok) { push(EV_PASTE, len & 0xffff, ok ? 1 : 0, 0, 0); }
void ev_timeout(void) { push(EV_TIMEOUT, 0, 0, 0, 0); }
void ev_mode_switch(uint32_t rw, uint32_t rh, uint32_t aw, uint32_t ah)
{
	push(EV_MODE_SWITCH, rw & 0xffff, rh & 0xffff, aw & 0xffff, ah & 0xffff);
}
void ev_mode_cycle(uint32_t n, int intr) { push(EV_MODE_CYCLE, n, intr ? 1 : 0, 0, 0); }

static const struct event *ring_at(uint32_t i)  /* 0 = oldest */
{
	return &ring[(ring_head + RING - ring_len + i) % RING];
}

/* ---- payload (§1.1 - §1.6) ----------------------------------------------- */

#define RAW_BUDGET 44

static int encode(uint8_t *out, uint32_t frame, uint32_t fbhash)
{
	uint8_t *p = out;
	uint32_t i, used = 0, take = 0;
	uint8_t tmp[32];

	/* Newest to oldest; stop at the first record that does not fit. */
	while (take < ring_len && take < 255) {
		int n = tlv(ring_at(ring_len - 1 - take), tmp);
		if (used + (uint32_t)n > RAW_BUDGET)
			break;
		used += (uint32_t)n;
		take++;
	}
	*p++ = 'S'; *p++ = 'X'; *p++ = 'D'; *p++ = 'G';
	*p++ = 0x02;
	p = put32(p, frame);
	*p++ = (uint8_t)(8 + take);
	for (i = 0; i < 8; i++) {
		*p++ = (uint8_t)(0x11 + i);
		*p++ = 4;
		p = put32(p, chains[i]);
	}
	for (i = ring_len - take; i < ring_len; i++)   /* oldest to newest */
		p += tlv(ring_at(i), p);
	p = put32(p, fbhash);
	return (int)(p - out);
}

/* ---- refresh and its statistics ------------------------------------------ */

static uint32_t frame;
static uint64_t ticks_per_ms;
static uint64_t stat_sum, stat_max, stat_samples[256];

void digest_calibrate(void)
{
	uint64_t a = sx_rdtsc();
	uefi_call_wrapper(BS->Stall, 1, 100000);   /* not counted in sx_t */
	ticks_per_ms = (sx_rdtsc() - a) / 100;
}

void digest_refresh(void)
{
	static uint8_t payload[128];
	static uint8_t modules[QR_SIZE][QR_SIZE];
	uint64_t t0 = sx_rdtsc(), dt;
	uint32_t fb;
	int len;

	frame++;   /* u32, wraps */
	fb = gfx_framebuffer_hash();
	len = encode(payload, frame, fb);
	qr_encode_v5l(payload, len, modules);
	gfx_qr(modules);

	dt = sx_rdtsc() - t0;
	stat_sum += dt;
	if (dt > stat_max)
		stat_max = dt;
	stat_samples[(frame - 1) % 256] = dt;
}

/* ---- drain (§4.2) ----------------------------------------------------------- */

static const char *phase_name(uint32_t p)
{
	switch (p) {
	case PHASE_AWAITING: return "awaiting";
	case PHASE_BOOTING: return "booting";
	case PHASE_PARKED: return "parked";
	default: return "stream_exercise";
	}
}

static void drain_event(const struct event *e)
{
	char line[160], *p = line;
	p = sx_cat(p, "t=");
	p = sx_dec(p, e->t);
	switch (e->tag) {
	case EV_KEYPRESS:
		p = sx_cat(p, " type=keypress unicode=");
		p = sx_hex(p, e->a, 4);
		p = sx_cat(p, " scancode=");
		p = sx_hex(p, e->b, 4);
		break;
	case EV_LINE:
		p = sx_cat(p, " type=line row=");
		p = sx_dec(p, e->a);
		break;
	case EV_TRANSITION:
		p = sx_cat(p, " type=transition from=");
		p = sx_cat(p, phase_name(e->a));
		p = sx_cat(p, " to=");
		p = sx_cat(p, phase_name(e->b));
		break;
	case EV_DECISION:
		p = sx_cat(p, " type=bootloader_decision choice=");
		p = sx_cat(p, e->a == CHOICE_RETRY ? "retry" :
			   e->a == CHOICE_IGNORE ? "ignore" : "abort");
		p = sx_cat(p, " attempt=");
		p = sx_dec(p, e->b);
		break;
	case EV_PASTE:
		p = sx_cat(p, " type=paste len=");
		p = sx_dec(p, e->a);
		p = sx_cat(p, e->b ? " correct=true" : " correct=false");
		break;
	case EV_TIMEOUT:
		p = sx_cat(p, " type=bootloader_timeout");
		break;
	case EV_MODE_SWITCH:
		p = sx_cat(p, " type=mode_switch requested=");
		p = sx_size(p, e->a, e->b);
		p = sx_cat(p, " applied=");
		p = sx_size(p, e->c, e->d);
		break;
	case EV_MODE_CYCLE:
		p = sx_cat(p, " type=mode_cycle count=");
		p = sx_dec(p, e->a);
		p = sx_cat(p, e->b ? " interrupted=true" : " interrupted=false");
		break;
	}
	sx_cat(p, "\r\n");
	sx_serial_write(line);
}

void digest_drain(void)
{
	char line[200], *p = line;
	uint64_t total_ms = 0, mean_us = 0, max_us = 0, p99_us = 0;
	uint32_t i;

	for (i = 0; i < ring_len; i++)
		drain_event(ring_at(i));

	if (frame && ticks_per_ms) {
		static uint64_t sorted[256];
		uint32_t valid = frame < 256 ? frame : 256, j, idx;
		/* the last `valid` samples, in any order, then sorted */
		for (j = 0; j < valid; j++)
			sorted[j] = stat_samples[(frame - 1 - j) % 256];
		for (j = 1; j < valid; j++) {   /* insertion sort, n <= 256 */
			uint64_t v = sorted[j];
			uint32_t k = j;
			while (k && sorted[k - 1] > v) {
				sorted[k] = sorted[k - 1];
				k--;
			}
			sorted[k] = v;
		}
		idx = valid * 99 / 100;
		idx = idx ? idx - 1 : 0;
		total_ms = stat_sum / ticks_per_ms;
		mean_us = stat_sum * 1000 / (ticks_per_ms * frame);
		max_us = stat_max * 1000 / ticks_per_ms;
		p99_us = sorted[idx] * 1000 / ticks_per_ms;
	}
	{
		static const char *const key[5] = {
			"type=refresh_stats count=", " total_ms=", " mean_us=",
			" max_us=", " p99_us=",
		};
		const uint64_t val[5] = { frame, total_ms, mean_us, max_us,
					  p99_us };
		for (i = 0; i < 5; i++) {
			p = sx_cat(p, key[i]);
			p = sx_dec(p, val[i]);
		}
	}
	sx_cat(p, "\r\n");
	sx_serial_write(line);
}
