/*
 * cf_buf.h — bounds-checked byte buffer with a hard size cap.
 *
 * Every untrusted byte Coffer handles goes through a cf_buf. Writes past the
 * cap fail with CF_E_TOO_LARGE; reads past the end fail with CF_E_INVALID_ARG
 * and consume nothing. Contents are wiped when the buffer is freed or reset.
 * A cf_buf is not thread-safe; give each thread its own.
 */
#ifndef COFFER_CF_BUF_H
#define COFFER_CF_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct cf_buf cf_buf;

/* New empty buffer that refuses to grow beyond `max` bytes (max > 0).
 * Returns NULL on allocation failure. */
cf_buf *cf_buf_new(size_t max);
/* Wipe and free; accepts NULL. */
void cf_buf_free(cf_buf *b);
/* Wipe contents, keep the allocation, rewind the read offset. */
void cf_buf_reset(cf_buf *b);

/* Unread bytes (from the read offset to the end). Borrowed pointer, valid
 * until the next write. */
const uint8_t *cf_buf_peek(const cf_buf *b);
size_t cf_buf_len(const cf_buf *b);
size_t cf_buf_max(const cf_buf *b);

/* Append. CF_E_TOO_LARGE if the result would exceed the cap. */
int cf_buf_put(cf_buf *b, const void *data, size_t len);
int cf_buf_put_u8(cf_buf *b, uint8_t v);
int cf_buf_put_u32(cf_buf *b, uint32_t v);          /* big-endian */

/* Make room for `len` bytes at the end and return where to write them in
 * *out; the length does not change until cf_buf_commit(b, n) with n <= len. */
int cf_buf_reserve(cf_buf *b, size_t len, uint8_t **out);
int cf_buf_commit(cf_buf *b, size_t len);

/* Consume from the front. On error nothing is consumed. */
int cf_buf_get(cf_buf *b, void *out, size_t len);
int cf_buf_get_u8(cf_buf *b, uint8_t *out);
int cf_buf_get_u32(cf_buf *b, uint32_t *out);       /* big-endian */
/* Borrow `len` bytes in place and consume them. */
int cf_buf_get_ptr(cf_buf *b, size_t len, const uint8_t **out);

#endif
