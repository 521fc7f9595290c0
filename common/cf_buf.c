#include "cf_buf.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "cf_status.h"

struct cf_buf {
	uint8_t *data;
	size_t off;   /* read offset */
	size_t len;   /* bytes written, including already-read ones */
	size_t alloc;
	size_t max;
};

cf_buf *
cf_buf_new(size_t max)
{
	cf_buf *b;

	if (max == 0)
		return NULL;
	if ((b = calloc(1, sizeof(*b))) == NULL)
		return NULL;
	b->max = max;
	return b;
}

void
cf_buf_free(cf_buf *b)
{
	if (b == NULL)
		return;
	if (b->data != NULL) {
		OPENSSL_cleanse(b->data, b->alloc);
		free(b->data);
	}
	free(b);
}

void
cf_buf_reset(cf_buf *b)
{
	if (b->data != NULL)
		OPENSSL_cleanse(b->data, b->alloc);
	b->off = b->len = 0;
}

const uint8_t *
cf_buf_peek(const cf_buf *b)
{
	return b->data == NULL ? (const uint8_t *)"" : b->data + b->off;
}

size_t
cf_buf_len(const cf_buf *b)
{
	return b->len - b->off;
}

size_t
cf_buf_max(const cf_buf *b)
{
	return b->max;
}

int
cf_buf_reserve(cf_buf *b, size_t len, uint8_t **out)
{
	size_t need, nalloc;
	uint8_t *n;

	if (len > b->max || b->len > b->max - len)
		return cf_error(CF_E_TOO_LARGE, "buffer limit of %zu bytes exceeded", b->max);
	need = b->len + len;
	if (need > b->alloc) {
		nalloc = b->alloc ? b->alloc : 64;
		while (nalloc < need)
			nalloc = nalloc > b->max / 2 ? b->max : nalloc * 2;
		/* Grow by copy so the old block can be wiped, not left by realloc. */
		if ((n = malloc(nalloc)) == NULL)
			return cf_nomem();
		if (b->data != NULL) {
			memcpy(n, b->data, b->len);
			OPENSSL_cleanse(b->data, b->alloc);
			free(b->data);
		}
		b->data = n;
		b->alloc = nalloc;
	}
	*out = b->data + b->len;
	return CF_OK;
}

int
cf_buf_commit(cf_buf *b, size_t len)
{
	if (len > b->alloc - b->len)
		return cf_error(CF_E_INTERNAL, "cf_buf_commit beyond reservation");
	b->len += len;
	return CF_OK;
}

int
cf_buf_put(cf_buf *b, const void *data, size_t len)
{
	uint8_t *p;
	int r;

	if (len == 0)
		return CF_OK;
	if ((r = cf_buf_reserve(b, len, &p)) != CF_OK)
		return r;
	memcpy(p, data, len);
	return cf_buf_commit(b, len);
}

int
cf_buf_put_u8(cf_buf *b, uint8_t v)
{
	return cf_buf_put(b, &v, 1);
}

int
cf_buf_put_u32(cf_buf *b, uint32_t v)
{
	uint8_t be[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };

	return cf_buf_put(b, be, sizeof(be));
}

int
cf_buf_get_ptr(cf_buf *b, size_t len, const uint8_t **out)
{
	if (len > cf_buf_len(b))
		return cf_error(CF_E_INVALID_ARG, "truncated input: need %zu bytes, have %zu",
				len, cf_buf_len(b));
	*out = b->data == NULL ? (const uint8_t *)"" : b->data + b->off;
	b->off += len;
	return CF_OK;
}

int
cf_buf_get(cf_buf *b, void *out, size_t len)
{
	const uint8_t *p;
	int r;

	if (len == 0)
		return CF_OK;
	if ((r = cf_buf_get_ptr(b, len, &p)) != CF_OK)
		return r;
	memcpy(out, p, len);
	return CF_OK;
}

int
cf_buf_get_u8(cf_buf *b, uint8_t *out)
{
	return cf_buf_get(b, out, 1);
}

int
cf_buf_get_u32(cf_buf *b, uint32_t *out)
{
	uint8_t be[4];
	int r;

	if ((r = cf_buf_get(b, be, sizeof(be))) != CF_OK)
		return r;
	*out = (uint32_t)be[0] << 24 | (uint32_t)be[1] << 16 | (uint32_t)be[2] << 8 | be[3];
	return CF_OK;
}
