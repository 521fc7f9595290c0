/* callauth.c — the API-key signature of a call (callauth.h). */
#include "callauth.h"

#include <stdio.h>
#include <time.h>

#include "cf_buf.h"
#include "cf_reqsign.h"
#include "cf_status.h"
#include "cf_time.h"

#define CALLAUTH_AHEAD_MAX 1   /* seconds a call's timestamp may be ahead of the daemon */

/* A call's signature over its method and request (nonces_check's verify). */
struct call_sig {
	apikeys *ak;
	const struct callauth_call *c;
	const char *who;
	const struct cf_call_auth *a;
	int64_t now;
	uint32_t generation;     /* out: the secret's that verified */
};

static int
call_check(void *arg)
{
	struct call_sig *c = arg;
	cf_buf *str;
	int r;

	if ((str = cf_buf_new(CF_CALLAUTH_PATH_MAX + 3 * CF_REQSIGN_NONCE_MAX + 160)) == NULL)
		return cf_nomem();
	if ((r = cf_callauth_string(c->c->path, c->c->body, c->c->body_len, c->a->timestamp,
				    c->a->nonce, c->a->key_id, str)) == CF_OK)
		r = apikeys_verify(c->ak, c->who, c->a->key_id, cf_buf_peek(str),
				   cf_buf_len(str), c->a->signature, c->now, &c->generation);
	cf_buf_free(str);
	return r;
}

int
callauth_check(apikeys *ak, nonces *nn, unsigned window, const struct callauth_call *c,
	       const char *who, uint32_t *generation)
{
	struct cf_call_auth a;
	char scope[sizeof(APIKEYS_OBJECT_PREFIX) + CF_APIKEY_ID_LEN];
	int64_t now = cf_wall_s();
	struct call_sig cc = { .ak = ak, .c = c, .who = who, .a = &a, .now = now };
	struct nonce_claim claim;
	enum nonce_verdict v;
	int r;

	if (ak == NULL)
		return CF_OK;
	/* Credentials a caller presents are always checked, needed or not: a
	 * revoked or forged key is refused, never ignored. */
	if (c->authz_n == 0 && !apikeys_required(ak, who)) {
		if (!c->require_api_key)
			return CF_OK;
		return cf_error(CF_E_UNAUTHENTICATED, "this daemon requires every caller to sign "
				"its calls with an API key (requests.require_api_key) and principal "
				"%s has none: cofferctl principal add-key %s", who, who);
	}
	if (c->authz_n == 0 && apikeys_required(ak, who) == APIKEYS_STICKY)
		return cf_error(CF_E_UNAUTHENTICATED, "principal %s requires signed calls (it had "
				"API keys; the last was revoked): create a key with cofferctl "
				"principal add-key %s, or allow uid-only calls with cofferctl "
				"principal set-auth %s --uid-only", who, who, who);
	if (c->authz_n == 0)
		return cf_error(CF_E_UNAUTHENTICATED, "principal %s has an API key, so every call "
				"must carry \"authorization: %s keyId=..., timestamp=..., nonce=..., "
				"signature=...\" (libcoffer: coffer_set_api_key; cofferctl: "
				"--api-key FILE)", who, CF_CALLAUTH_LABEL);
	if (c->authz_n > 1)
		return cf_error(CF_E_UNAUTHENTICATED, "malformed authorization: the call carries "
				"%u authorization entries; send exactly one", c->authz_n);
	if (cf_callauth_parse(c->authz, c->authz_len, &a) != CF_OK)
		return cf_error(CF_E_UNAUTHENTICATED, "malformed %s", cf_error_detail());
	snprintf(scope, sizeof(scope), "%s%s", APIKEYS_OBJECT_PREFIX, a.key_id);
	/* The caller signs on this host, with this clock: a timestamp ahead of
	 * it would only keep its nonce recorded longer (up to twice the window),
	 * so at most 1 s (a second boundary between two reads) is accepted and
	 * no nonce outlives now + window + 2. */
	claim = (struct nonce_claim){ .scope = scope, .nonce = a.nonce, .timestamp = a.timestamp,
				      .window = window, .ahead = CALLAUTH_AHEAD_MAX };
	if ((r = nonces_check(nn, &claim, now, call_check, &cc, &v)) != CF_OK)
		return r;
	switch (v) {
	case NONCE_EXPIRED:
		return cf_error(CF_E_UNAUTHENTICATED, "expired: the timestamp is %lld s old and "
				"the window is %u s; sign each call when it is sent",
				(long long)(now - a.timestamp), window);
	case NONCE_BEFORE_RAISE:
		return cf_error(CF_E_UNAUTHENTICATED, "expired: the timestamp is %lld s old, from "
				"before [requests] window was raised (%u s now), and its nonce may "
				"be forgotten; sign each call when it is sent",
				(long long)(now - a.timestamp), window);
	case NONCE_AHEAD:
		return cf_error(CF_E_UNAUTHENTICATED, "clock skew: the timestamp is %lld s ahead "
				"of the daemon's clock (at most %d s is accepted); check the "
				"caller's clock", (long long)(a.timestamp - now),
				CALLAUTH_AHEAD_MAX);
	case NONCE_REPLAYED:
		return cf_error(CF_E_UNAUTHENTICATED, "replayed nonce: nonce %s was already used "
				"with API key %s; sign every call with a fresh nonce", a.nonce,
				a.key_id);
	case NONCE_FRESH:
		break;
	}
	*generation = cc.generation;
	return CF_OK;
}
