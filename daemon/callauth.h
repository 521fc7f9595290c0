/*
 * callauth.h — the API-key signature of a call (proto/call-authentication.md):
 * required once the principal has an API key (or had one: sticky) or the
 * daemon says every principal needs one, and checked whenever present; the
 * freshness rule (window, at most 1 s ahead, nonce not seen) is nonces_check's.
 */
#ifndef COFFER_CALLAUTH_H
#define COFFER_CALLAUTH_H

#include <stddef.h>
#include <stdint.h>

#include "apikeys.h"
#include "nonces.h"

/* What a call brings to be checked. */
struct callauth_call {
	const char *path;               /* "/coffer.v1.KeyService/Sign": signed */
	const uint8_t *body;            /* the request bytes as received: signed */
	size_t body_len;
	const char *authz;              /* the first authorization entry, or NULL */
	size_t authz_len;
	unsigned authz_n;               /* authorization entries the call carried */
	int require_api_key;            /* requests.require_api_key */
};

/* CF_OK when principal `who` may make the call as signed (or unsigned, when
 * nothing requires a signature); CF_E_UNAUTHENTICATED with the reason
 * otherwise. Only a call whose signature is valid uses up its nonce. ak
 * NULL: no API keys, nothing to check. *generation: the generation of the
 * secret that signed it (left as it is for an unsigned call). */
int callauth_check(apikeys *ak, nonces *nn, unsigned window, const struct callauth_call *c,
		   const char *who, uint32_t *generation);

#endif
