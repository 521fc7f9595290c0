/*
 * fuzz_envelope.c — the Wrap blob (daemon/envelope.c) and its additional
 * data, against an AES-256 key in a real SoftHSM2 token.
 *
 * Input: byte 0 = mode; byte 1 = number of context entries (low 5 bits),
 * then per entry a length byte and key bytes, a length byte and value
 * bytes; the rest is the blob (mode bit 0 clear) or a plaintext (set).
 *   blob:      env_parse, then env_open must fail cleanly or succeed.
 *   plaintext: env_seal it, flip a bit (chosen by byte 2) of the blob when
 *              mode bit 1 is set, env_open: a flipped blob that still names
 *              version 1 must not open, the intact one must give the
 *              plaintext back.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cf_buf.h"
#include "cf_status.h"
#include "envelope.h"
#include "fuzz_token.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KEY_NAME "fuzz-wrap"

static cf_p11_key *key;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	cf_p11 *p11 = fuzz_token_open("coffer-fuzz-env", NULL);

	(void)argc;
	(void)argv;
	if (cf_p11_key_generate(p11, KEY_NAME, 1, CF_KEY_AES_256, 0, &key) != CF_OK)
		abort();
	return 0;
}

/* A length-prefixed string of the input, NUL-terminated into a new buffer. */
static char *
take(const uint8_t **p, const uint8_t *end)
{
	size_t n;
	char *s;

	if (*p >= end)
		return NULL;
	n = **p;
	(*p)++;
	if (n > (size_t)(end - *p))
		n = (size_t)(end - *p);
	if ((s = malloc(n + 1)) == NULL)
		return NULL;
	memcpy(s, *p, n);
	s[n] = '\0';
	*p += n;
	return s;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data, *end = data + size, *iv, *ct;
	struct env_kv kv[32];
	size_t n = 0, nctx, ctlen, len;
	uint32_t version = 0;
	uint8_t mode, flip;
	cf_buf *aad = cf_buf_new(64 * 1024), *blob = cf_buf_new(1 << 20);
	cf_secret *pt = NULL;
	uint8_t *copy = NULL;

	if (size < 3 || aad == NULL || blob == NULL)
		goto out;
	mode = p[0];
	nctx = p[1] & 31;
	flip = p[2];
	p += 3;
	for (; n < nctx && p < end; n++) {
		kv[n].key = take(&p, end);
		kv[n].value = take(&p, end);
		if (kv[n].key == NULL || kv[n].value == NULL) {
			n++;
			goto out;
		}
	}
	(void)env_aad(KEY_NAME, 1, kv, n, aad);
	len = (size_t)(end - p);
	if (!(mode & 1)) {
		/* An exact-size copy: ASan sees any read past the blob. */
		if ((copy = malloc(len ? len : 1)) == NULL)
			goto out;
		memcpy(copy, p, len);
		if (env_parse(copy, len, &version, &iv, &ct, &ctlen) == CF_OK) {
			if (ct + ctlen != copy + len || iv != copy + 5)
				abort();
			if (env_open(key, KEY_NAME, 1, kv, n, copy, len, &pt) == CF_OK &&
			    version != 1)
				abort();   /* opened a blob that names another version */
		}
	} else if (env_seal(key, KEY_NAME, 1, kv, n, p, len, blob) == CF_OK) {
		size_t bl = cf_buf_len(blob);

		if ((copy = malloc(bl)) == NULL)
			goto out;
		memcpy(copy, cf_buf_peek(blob), bl);
		if (mode & 2)
			copy[(flip * 7u) % bl] ^= (uint8_t)(1u << (flip & 7));
		/* As the daemon does: the blob names its version, the key of that
		 * version opens it (a flipped version names a key not here). */
		if (env_parse(copy, bl, &version, &iv, &ct, &ctlen) == CF_OK && version == 1) {
			int r = env_open(key, KEY_NAME, 1, kv, n, copy, bl, &pt);

			if ((mode & 2) ? r == CF_OK
				       : (r != CF_OK || cf_secret_len(pt) != len ||
					  (len > 0 && memcmp(cf_secret_cptr(pt), p, len) != 0)))
				abort();
		} else if (!(mode & 2)) {
			abort();   /* an intact blob must parse */
		}
	}
out:
	cf_secret_free(pt);
	free(copy);
	for (size_t i = 0; i < n; i++) {
		free((char *)kv[i].key);
		free((char *)kv[i].value);
	}
	cf_buf_free(aad);
	cf_buf_free(blob);
	cf_error_clear();
	return 0;
}
