/*
 * fuzz_reqsign.c — request-signing canonicalisation (proto/request-signing.md):
 * the query parser and the canonical string a VerifyRequestSignature call
 * rebuilds from a caller's fields. Input: fields separated by '\n' —
 * method, path, raw query, body, timestamp, nonce, key id (missing fields
 * are empty). The canonical query must be a fixed point: canonicalising it
 * again gives it back (when it is still within the size limit).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "cf_buf.h"
#include "cf_reqsign.h"
#include "cf_status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NFIELDS 7

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *copy = malloc(size + 1), *f[NFIELDS];
	size_t flen[NFIELDS];
	cf_buf *q = cf_buf_new(CF_REQSIGN_QUERY_MAX * 3 + 16);
	cf_buf *q2 = cf_buf_new(CF_REQSIGN_QUERY_MAX * 3 + 16);
	cf_buf *s = cf_buf_new(CF_REQSIGN_STRING_MAX + 1);
	struct cf_http_request r;
	char *p;
	int i;

	if (copy == NULL || q == NULL || q2 == NULL || s == NULL)
		goto out;
	memcpy(copy, data, size);
	copy[size] = '\0';
	p = copy;
	for (i = 0; i < NFIELDS; i++) {
		char *nl = (i < NFIELDS - 1) ? strchr(p, '\n') : NULL;

		f[i] = p;
		if (nl != NULL) {
			*nl = '\0';
			p = nl + 1;
		} else {
			p += strlen(p);
		}
		flen[i] = strlen(f[i]);
	}
	if (cf_reqsign_canonical_query(f[2], q) == CF_OK) {
		/* NUL-terminate the canonical form and canonicalise it again. */
		char *c = malloc(cf_buf_len(q) + 1);

		if (c == NULL)
			goto out;
		memcpy(c, cf_buf_peek(q), cf_buf_len(q));
		c[cf_buf_len(q)] = '\0';
		if (cf_buf_len(q) <= CF_REQSIGN_QUERY_MAX &&
		    (cf_reqsign_canonical_query(c, q2) != CF_OK || cf_buf_len(q2) != cf_buf_len(q) ||
		     memcmp(cf_buf_peek(q2), c, cf_buf_len(q)) != 0))
			abort();
		memset(&r, 0, sizeof(r));
		r.method = f[0];
		r.path = f[1];
		r.canonical_query = c;
		SHA256((const unsigned char *)f[3], flen[3], r.body_sha256);
		r.timestamp = strtoll(f[4], NULL, 10);
		r.nonce = f[5];
		r.key_id = f[6];
		(void)cf_reqsign_http_string(&r, s);
		free(c);
	}
out:
	cf_buf_free(q);
	cf_buf_free(q2);
	cf_buf_free(s);
	free(copy);
	cf_error_clear();
	return 0;
}
