#include "envelope.h"

#include <stdlib.h>
#include <string.h>

#include "cf_status.h"

static const char env_label[] = "coffer.v1.wrap";

static int
kv_cmp(const void *a, const void *b)
{
	return strcmp(((const struct env_kv *)a)->key, ((const struct env_kv *)b)->key);
}

static int
put_str(cf_buf *b, const char *s)
{
	size_t n = strlen(s);
	int r;

	if ((r = cf_buf_put_u32(b, (uint32_t)n)) != CF_OK)
		return r;
	return cf_buf_put(b, s, n);
}

int
env_aad(const char *name, uint32_t version, const struct env_kv *ctx, size_t n, cf_buf *aad)
{
	struct env_kv sorted[ENV_MAX_CONTEXT];
	int r;

	if (n > ENV_MAX_CONTEXT)
		return cf_error(CF_E_TOO_LARGE, "context has %zu entries; the limit is %d", n,
				ENV_MAX_CONTEXT);
	for (size_t i = 0; i < n; i++) {
		if (ctx[i].key == NULL || ctx[i].key[0] == '\0' || ctx[i].value == NULL)
			return cf_error(CF_E_INVALID_ARG, "context keys must not be empty");
		if (strlen(ctx[i].key) > ENV_MAX_CONTEXT_KEY)
			return cf_error(CF_E_TOO_LARGE, "a context key is longer than %d bytes",
					ENV_MAX_CONTEXT_KEY);
		if (strlen(ctx[i].value) > ENV_MAX_CONTEXT_VALUE)
			return cf_error(CF_E_TOO_LARGE, "a context value is longer than %d bytes",
					ENV_MAX_CONTEXT_VALUE);
		sorted[i] = ctx[i];
	}
	if (n > 0)
		qsort(sorted, n, sizeof(sorted[0]), kv_cmp);
	for (size_t i = 1; i < n; i++)
		if (strcmp(sorted[i - 1].key, sorted[i].key) == 0)
			return cf_error(CF_E_INVALID_ARG, "context key \"%s\" appears twice",
					sorted[i].key);
	if ((r = cf_buf_put(aad, env_label, sizeof(env_label))) != CF_OK ||
	    (r = put_str(aad, name)) != CF_OK || (r = cf_buf_put_u32(aad, version)) != CF_OK ||
	    (r = cf_buf_put_u32(aad, (uint32_t)n)) != CF_OK)
		return r;
	for (size_t i = 0; i < n; i++)
		if ((r = put_str(aad, sorted[i].key)) != CF_OK ||
		    (r = put_str(aad, sorted[i].value)) != CF_OK)
			return r;
	return CF_OK;
}

int
env_parse(const uint8_t *blob, size_t len, uint32_t *version, const uint8_t **iv,
	  const uint8_t **ct, size_t *ctlen)
{
	if (len < ENV_HEADER_LEN + CF_GCM_TAG_LEN)
		return cf_error(CF_E_INVALID_ARG, "ciphertext of %zu bytes is too short to be a "
				"Coffer wrap blob", len);
	if (blob[0] != ENV_FORMAT)
		return cf_error(CF_E_INVALID_ARG, "ciphertext has unknown format 0x%02x", blob[0]);
	*version = (uint32_t)blob[1] << 24 | (uint32_t)blob[2] << 16 | (uint32_t)blob[3] << 8 |
		   blob[4];
	if (*version == 0)
		return cf_error(CF_E_INVALID_ARG, "ciphertext names key version 0");
	*iv = blob + 5;
	*ct = blob + ENV_HEADER_LEN;
	*ctlen = len - ENV_HEADER_LEN;
	return CF_OK;
}

int
env_seal(cf_p11_key *k, const char *name, uint32_t version, const struct env_kv *ctx, size_t n,
	 const uint8_t *pt, size_t ptlen, cf_buf *blob)
{
	cf_buf *aad = cf_buf_new(64 * 1024);
	uint8_t iv[CF_GCM_IV_LEN], *hdr;
	int r;

	if (aad == NULL)
		return cf_nomem();
	if ((r = env_aad(name, version, ctx, n, aad)) != CF_OK)
		goto out;
	/* Reserve the header first, fill it once the token chose the IV. */
	if ((r = cf_buf_reserve(blob, ENV_HEADER_LEN, &hdr)) != CF_OK ||
	    (r = cf_buf_commit(blob, ENV_HEADER_LEN)) != CF_OK)
		goto out;
	if ((r = cf_p11_gcm_encrypt(k, cf_buf_peek(aad), cf_buf_len(aad), pt, ptlen, iv, blob)) !=
	    CF_OK)
		goto out;
	hdr = (uint8_t *)cf_buf_peek(blob);
	hdr[0] = ENV_FORMAT;
	hdr[1] = (uint8_t)(version >> 24);
	hdr[2] = (uint8_t)(version >> 16);
	hdr[3] = (uint8_t)(version >> 8);
	hdr[4] = (uint8_t)version;
	memcpy(hdr + 5, iv, sizeof(iv));
out:
	cf_buf_free(aad);
	return r;
}

int
env_open(cf_p11_key *k, const char *name, uint32_t version, const struct env_kv *ctx, size_t n,
	 const uint8_t *blob, size_t len, cf_secret **pt)
{
	cf_buf *aad = cf_buf_new(64 * 1024);
	const uint8_t *iv, *ct;
	uint32_t v;
	size_t ctlen;
	int r;

	if (aad == NULL)
		return cf_nomem();
	if ((r = env_parse(blob, len, &v, &iv, &ct, &ctlen)) != CF_OK ||
	    (r = env_aad(name, version, ctx, n, aad)) != CF_OK)
		goto out;
	r = cf_p11_gcm_decrypt(k, cf_buf_peek(aad), cf_buf_len(aad), iv, ct, ctlen, pt);
	if (r == CF_E_DECRYPT)
		r = cf_error(CF_E_DECRYPT, "ciphertext does not decrypt under key %s version %u "
			     "with this context: it was altered, or the context differs", name,
			     version);
out:
	cf_buf_free(aad);
	return r;
}
