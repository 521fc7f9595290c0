/*
 * libcoffer_signer.c — the API key every call is signed with
 * (proto/call-authentication.md): its secret, an HMAC keyed once, and the
 * signed call on the transport.
 */
#include "libcoffer_signer.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "cf_buf.h"
#include "cf_reqsign.h"
#include "cf_secret.h"
#include "cf_status.h"

#define AUTHZ_MAX 512

struct lc_apikey {
	char id[CF_APIKEY_ID_LEN + 1];
	cf_secret *secret;
	EVP_MAC_CTX *keyed;     /* HMAC-SHA256 keyed once; each call signs with a copy */
	char prefix[17];        /* random per key setting: nonces never repeat across runs */
	atomic_uint_fast64_t seq;
};

void
lc_apikey_free(struct lc_apikey *k)
{
	if (k == NULL)
		return;
	EVP_MAC_CTX_free(k->keyed);
	cf_secret_free(k->secret);
	free(k);
}

static int
apikey_sign(struct lc_apikey *k, const char *method, const uint8_t *buf, size_t len,
    char *out, size_t outlen)
{
	struct cf_call_auth a;
	size_t maclen = 0;
	EVP_MAC_CTX *mac = NULL;
	cf_buf *str = cf_buf_new(256);
	char hdr[CF_CALLAUTH_HEADER_MAX];
	int r;

	if (str == NULL)
		return cf_nomem();
	memset(&a, 0, sizeof(a));
	memcpy(a.key_id, k->id, sizeof(a.key_id));
	a.timestamp = (int64_t)time(NULL);
	/* Unique, not secret: a random prefix and a counter (no RNG per call). */
	snprintf(a.nonce, sizeof(a.nonce), "%s%016" PRIxFAST64, k->prefix,
	    (uint_fast64_t)atomic_fetch_add(&k->seq, 1));
	if ((r = cf_callauth_string(method, buf, len, a.timestamp, a.nonce, a.key_id, str)) !=
	    CF_OK)
		goto out;
	/* A copy of the keyed context: no key schedule and no algorithm
	 * lookup per call, and threads never share a context. */
	if ((mac = EVP_MAC_CTX_dup(k->keyed)) == NULL ||
	    EVP_MAC_update(mac, cf_buf_peek(str), cf_buf_len(str)) != 1 ||
	    EVP_MAC_final(mac, a.signature, &maclen, sizeof(a.signature)) != 1 || maclen != 32) {
		r = cf_error(CF_E_INTERNAL, "HMAC-SHA256 failed");
		goto out;
	}
	cf_callauth_format(&a, hdr);
	if (strlen(hdr) >= outlen) {
		r = cf_error(CF_E_INTERNAL, "authorization longer than its buffer");
		goto out;
	}
	memcpy(out, hdr, strlen(hdr) + 1);
out:
	EVP_MAC_CTX_free(mac);
	cf_buf_free(str);
	return r;
}

static int
keyed_hmac(struct lc_apikey *k)
{
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
		OSSL_PARAM_construct_end(),
	};
	EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	int ok;

	ok = hmac != NULL && (k->keyed = EVP_MAC_CTX_new(hmac)) != NULL &&
	    EVP_MAC_init(k->keyed, cf_secret_cptr(k->secret), cf_secret_len(k->secret),
	    params) == 1;
	EVP_MAC_free(hmac);
	return ok ? CF_OK : cf_error(CF_E_INTERNAL, "cannot key HMAC-SHA256");
}

int
lc_apikey_new(const char *id, const uint8_t *secret, size_t len, struct lc_apikey **out)
{
	struct lc_apikey *k;
	uint8_t rnd[8];
	int r;

	if ((k = calloc(1, sizeof(*k))) == NULL)
		return cf_nomem();
	memcpy(k->id, id, CF_APIKEY_ID_LEN + 1);
	atomic_init(&k->seq, 0);
	if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
		free(k);
		return cf_error(CF_E_INTERNAL, "random number generator failed");
	}
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(k->prefix + 2 * i, 3, "%02x", rnd[i]);
	if ((r = cf_secret_from(secret, len, &k->secret)) != CF_OK ||
	    (r = keyed_hmac(k)) != CF_OK) {
		lc_apikey_free(k);
		return r;
	}
	*out = k;
	return CF_OK;
}

int
lc_signed_transport(struct lc_conn *t, struct lc_apikey *k, const char *method, uint8_t *buf,
    size_t len, uint8_t **out, size_t *outlen, int flags)
{
	char authz[AUTHZ_MAX];
	int r;

	if (k != NULL && (r = apikey_sign(k, method, buf, len, authz, sizeof(authz))) != CF_OK) {
		OPENSSL_cleanse(buf, len);
		free(buf);
		return r;
	}
	return lc_transport(t, method, buf, len, k != NULL ? authz : NULL, out, outlen, flags);
}

int
lc_signed_stream_open(struct lc_conn *t, struct lc_apikey *k, const char *method,
    struct lc_stream **out)
{
	char authz[AUTHZ_MAX];
	int r;

	/* The opening is signed as a call with an empty body. */
	if (k != NULL && (r = apikey_sign(k, method, (const uint8_t *)"", 0, authz,
	    sizeof(authz))) != CF_OK)
		return r;
	return lc_stream_open(t, method, k != NULL ? authz : NULL, out);
}
