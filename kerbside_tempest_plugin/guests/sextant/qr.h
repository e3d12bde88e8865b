/* QR Code encoder for exactly one symbol shape: version 5, ECC level L,
 * byte mode, automatic mask by the standard penalty rules.  Written for the
 * Sextant-compatible guest; freestanding (no libc). */
#ifndef SX_QR_H
#define SX_QR_H

#include <stdint.h>

#define QR_SIZE 37          /* version 5: 17 + 4 * 5 modules */
#define QR_DATA_CW 108      /* data codewords, V5-L */
#define QR_EC_CW 26         /* error-correction codewords, V5-L, 1 block */
#define QR_MAX_BYTES 106    /* 4 + 8 + 8 * 106 = 860 <= 864 bits */

/* Encodes len bytes (len <= QR_MAX_BYTES) into out[y][x], 1 = dark.
 * Returns the mask chosen (0..7), or -1 when the payload is too long. */
int qr_encode_v5l(const uint8_t *data, int len, uint8_t out[QR_SIZE][QR_SIZE]);

#endif
