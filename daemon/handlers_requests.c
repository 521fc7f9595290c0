/* KeyService: HMAC-signed HTTP requests (VerifyRequestSignature,
 * SignHttpRequest; cf_reqsign.h has the format). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "cf_reqsign.h"
#include "cf_status.h"
#include "cf_time.h"
#include "coffer/v1/coffer.pb-c.h"
#include "handlers_common.h"

/* The request parts as cf_reqsign wants them; CF_E_INVALID_ARG if malformed. */
static int
http_parts(const Coffer__V1__HttpRequestParts *p, struct cf_http_request *r)
{
	if (p == NULL)
		return cf_error(CF_E_INVALID_ARG, "request is required");
	if (p->body_sha256.len != 32)
		return cf_error(CF_E_INVALID_ARG, "body_sha256 must be 32 bytes, not %zu",
				p->body_sha256.len);
	memset(r, 0, sizeof(*r));
	r->key_id = p->key;
	r->method = p->method;
	r->path = p->path;
	r->canonical_query = p->canonical_query;
	memcpy(r->body_sha256, p->body_sha256.data, 32);
	r->timestamp = p->timestamp;
	r->nonce = p->nonce;
	return cf_reqsign_check(r);
}

/* Only HMAC-SHA256 keys sign requests (the scheme names its hash). */
static int
request_key(const struct hcall *c, uint32_t version, enum key_use use, cf_p11_key **k,
	    uint32_t *used)
{
	int r;

	if ((r = keyring_ref_use(c->sv->kr, c->key, version, PURPOSE_MAC, use, k, used)) != CF_OK)
		return r;
	if (cf_p11_key_type(*k) != CF_KEY_HMAC_SHA256)
		return cf_error(CF_E_WRONG_KEY_TYPE, "key %s is not an hmac-sha256 key",
				c->key->name);
	return CF_OK;
}

static int
verdict(Coffer__V1__VerifyRequestSignatureResponse *out, Coffer__V1__RequestVerdict v,
	uint32_t version, const char *reason)
{
	out->verdict = v;
	out->valid = v == COFFER__V1__REQUEST_VERDICT__VALID;
	out->version = version;
	return (out->reason = strdup(reason)) == NULL ? cf_nomem() : CF_OK;
}

/* A signed HTTP request's signature, checked under any enabled version of
 * its key: clients keep the old secret until they rotate (nonces_check's
 * verify). */
struct http_check {
	const struct hcall *c;
	const struct store_key *info;
	const struct cf_http_request *hr;
	const char *signature;
	cf_buf *str;
	uint32_t good;          /* the version it verified under */
	const char *why;        /* CF_E_BAD_SIGNATURE: the verdict's reason */
};

static int
http_check(void *arg)
{
	struct http_check *a = arg;
	uint8_t sig[32];
	int r;

	if (strlen(a->signature) != 64 ||
	    OPENSSL_hexstr2buf_ex(sig, sizeof(sig), NULL, a->signature, '\0') != 1) {
		a->why = "signature is not 64 hex characters";
		return cf_error(CF_E_BAD_SIGNATURE, "%s", a->why);
	}
	if ((r = cf_reqsign_http_string(a->hr, a->str)) != CF_OK)
		return r;
	for (uint32_t i = a->info->nversions; i-- > 0 && a->good == 0;) {
		cf_p11_key *k;
		uint32_t v;

		if (a->info->versions[i].state != STORE_ENABLED)
			continue;
		/* A version that cannot check (gone, below the minimum) is not a
		 * match; a token that cannot answer is no verdict at all: the
		 * caller must not take a genuine request for a forgery. */
		if ((r = request_key(a->c, a->info->versions[i].version, USE_CHECK, &k, &v)) ==
		    CF_OK)
			r = cf_p11_mac_verify(k, cf_buf_peek(a->str), cf_buf_len(a->str), sig, 32);
		if (r == CF_OK)
			a->good = v;
		else if (r != CF_E_BAD_SIGNATURE && r != CF_E_PRECONDITION && r != CF_E_NOT_FOUND)
			return r;
		cf_error_clear();
	}
	if (a->good == 0) {
		a->why = "signature does not match the canonical request under any enabled "
			 "version of the key";
		return cf_error(CF_E_BAD_SIGNATURE, "%s", a->why);
	}
	return CF_OK;
}

static int
h_verify_request(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__VerifyRequestSignatureRequest *req = (const void *)m;
	Coffer__V1__VerifyRequestSignatureResponse *out = NULL;
	struct cf_http_request hr;
	struct store_key info;
	struct http_check chk = { .c = c, .info = &info, .hr = &hr, .signature = req->signature };
	struct nonce_claim claim;
	enum nonce_verdict v;
	int64_t now = cf_wall_s();
	char why[160];
	int r;

	memset(&info, 0, sizeof(info));
	if ((r = http_parts(req->request, &hr)) != CF_OK)
		return r;
	/* The key, not its primary: any enabled version at or above the minimum
	 * verifies (the primary may be disabled). */
	if ((r = keyring_ref_describe(c->sv->kr, c->key, &info)) != CF_OK)
		return r;
	if (info.type != CF_KEY_HMAC_SHA256) {
		keyring_info_free(&info);
		return cf_error(CF_E_WRONG_KEY_TYPE, "key %s is not an hmac-sha256 key", hr.key_id);
	}
	if ((out = h_new_msg(&coffer__v1__verify_request_signature_response__descriptor)) == NULL ||
	    (chk.str = cf_buf_new(CF_REQSIGN_STRING_MAX)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	claim = (struct nonce_claim){ .scope = hr.key_id, .nonce = hr.nonce,
				      .timestamp = hr.timestamp, .window = c->sv->window,
				      .ahead = c->sv->window };
	r = nonces_check(c->sv->nn, &claim, now, http_check, &chk, &v);
	if (r == CF_E_BAD_SIGNATURE) {
		r = verdict(out, COFFER__V1__REQUEST_VERDICT__BAD_SIGNATURE, 0, chk.why);
	} else if (r != CF_OK) {
		goto out;
	} else if (v == NONCE_EXPIRED) {
		snprintf(why, sizeof(why), "timestamp is %lld s old; the window is %u s: sign the "
			 "request again", (long long)(now - hr.timestamp), c->sv->window);
		r = verdict(out, COFFER__V1__REQUEST_VERDICT__EXPIRED, 0, why);
	} else if (v == NONCE_BEFORE_RAISE) {
		snprintf(why, sizeof(why), "timestamp is %lld s old, from before the window was "
			 "raised to %u s, and its nonce may be forgotten: sign the request again",
			 (long long)(now - hr.timestamp), c->sv->window);
		r = verdict(out, COFFER__V1__REQUEST_VERDICT__EXPIRED, 0, why);
	} else if (v == NONCE_AHEAD) {
		snprintf(why, sizeof(why), "timestamp is %lld s ahead of the daemon's clock; the "
			 "window is %u s: check the client's clock",
			 (long long)(hr.timestamp - now), c->sv->window);
		r = verdict(out, COFFER__V1__REQUEST_VERDICT__CLOCK_SKEW, 0, why);
	} else if (v == NONCE_REPLAYED) {
		r = verdict(out, COFFER__V1__REQUEST_VERDICT__REPLAYED_NONCE, chk.good,
			    "nonce was already used with this key: a replayed request");
	} else {
		r = verdict(out, COFFER__V1__REQUEST_VERDICT__VALID, chk.good, "valid");
	}
out:
	keyring_info_free(&info);
	cf_buf_free(chk.str);
	return h_reply(r, out, resp);
}

static int
h_sign_request(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__SignHttpRequestRequest *req = (const void *)m;
	Coffer__V1__SignHttpRequestResponse *out = NULL;
	Coffer__V1__HttpRequestParts parts;
	struct cf_http_request hr;
	cf_buf *str = NULL, *mac = NULL;
	cf_p11_key *k;
	uint8_t rnd[16];
	char nonce[CF_REQSIGN_NONCE_MAX + 1], hex[65], *auth = NULL;
	uint32_t v;
	int r;

	if (req->request == NULL)
		return cf_error(CF_E_INVALID_ARG, "request is required");
	parts = *req->request;
	if (parts.timestamp == 0)
		parts.timestamp = cf_wall_s();
	if (parts.nonce[0] == '\0') {
		if (RAND_bytes(rnd, sizeof(rnd)) != 1)
			return cf_error(CF_E_INTERNAL, "random number generator failed");
		for (size_t i = 0; i < sizeof(rnd); i++)
			snprintf(nonce + 2 * i, 3, "%02x", rnd[i]);
		parts.nonce = nonce;
	}
	if ((r = http_parts(&parts, &hr)) != CF_OK ||
	    (r = request_key(c, 0, USE_NEW, &k, &v)) != CF_OK)
		return r;
	if ((str = cf_buf_new(CF_REQSIGN_STRING_MAX)) == NULL || (mac = cf_buf_new(64)) == NULL ||
	    (out = h_new_msg(&coffer__v1__sign_http_request_response__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = cf_reqsign_http_string(&hr, str)) != CF_OK ||
	    (r = cf_p11_mac(k, cf_buf_peek(str), cf_buf_len(str), mac)) != CF_OK)
		goto out;
	for (size_t i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", cf_buf_peek(mac)[i]);
	if (asprintf(&auth, "%s keyId=%s, version=%u, timestamp=%lld, nonce=%s, signature=%s",
		     CF_REQSIGN_HTTP_LABEL, hr.key_id, v, (long long)hr.timestamp, hr.nonce,
		     hex) < 0) {
		auth = NULL;
		r = cf_nomem();
		goto out;
	}
	out->authorization = auth;
	out->version = v;
	out->timestamp = hr.timestamp;
	if ((out->signature = strdup(hex)) == NULL || (out->nonce = strdup(hr.nonce)) == NULL) {
		r = cf_nomem();
		goto out;
	}
out:
	cf_buf_free(str);
	cf_buf_free(mac);
	return h_reply(r, out, resp);
}


static const handler_fn fns[CF_METHOD__COUNT] = {
	[CF_KS_VERIFY_REQUEST_SIGNATURE] = h_verify_request,
	[CF_KS_SIGN_HTTP_REQUEST] = h_sign_request,
};

const struct hservice handlers_requests = { .fns = fns };
