/*
 * idempotency.h — mutating calls that carry an idempotency key (gRPC
 * metadata "idempotency-key") happen once: the daemon records the key, the
 * caller (uid), the method, a fingerprint of the request and, when the call
 * is done, its outcome, in the state store for `retention` seconds.
 *
 * The same key with the same request returns the first outcome without
 * acting again; with another request it is refused; concurrent duplicates
 * wait for the first. A record is written (pending) before the call acts.
 * The store marks it committed in the very transaction that records the
 * call's change (store_call in store.h), so a retry after a crash knows
 * which side of that commit the first attempt died on: before, nothing
 * happened (start-up recovery removed what it made in the token) and the
 * call runs again; after, the change is answered, read back, never made
 * twice. Outcomes a retry may change (unavailable, busy, timeouts, internal
 * errors) are not kept unless a change was committed. Secrets (a response's
 * "secret" or "plaintext" bytes) are never stored: a replay returns the
 * response without them.
 */
#ifndef COFFER_IDEMPOTENCY_H
#define COFFER_IDEMPOTENCY_H

#include <stddef.h>
#include <stdint.h>

#include "cf_p11.h"
#include "store.h"

#define IDEM_KEY_MIN 8
#define IDEM_WAIT_MS 30000   /* longest wait for a concurrent duplicate */
/* The token's HMAC-SHA256 key (version 1) that fingerprints are made with. */
#define IDEM_FINGERPRINT_KEY "coffer.idempotency-fingerprint"

typedef struct idem idem;

/* p11: the token whose HMAC key (IDEM_FINGERPRINT_KEY, made if missing) keys
 * the fingerprints, so that the database holds no digest a guess at a
 * request's secret can be tested against. NULL, or a token that cannot keep
 * HMAC keys: unkeyed SHA-256, and a request that carries a secret is refused
 * its idempotency key (idem_begin). */
int idem_open(store *st, unsigned retention_s, cf_p11 *p11, idem **out);
void idem_close(idem *i);   /* accepts NULL */

/* CF_OK if key is IDEM_KEY_MIN..STORE_IDEM_KEY_MAX of A-Z a-z 0-9 . _ : - */
/* Who runs this process's calls (self: the incarnation id recorded with a
 * pending record) and how to tell whether another owner still runs (a
 * replica of the fleet, fleet_alive). Without it: a random id of this
 * process, and every other owner is taken for dead. */
void idem_set_owner(idem *i, const char *self,
		    int (*alive)(void *arg, const char *owner, int *alive), void *arg);

/* This process's owner id (store_call.idem_owner). */
const char *idem_owner(const idem *i);

int idem_key_check(const char *key);

enum idem_start {
	IDEM_RUN = 1,        /* run it, then idem_finish (always) */
	IDEM_REPLAY,         /* *first holds the first outcome (free its response) */
	IDEM_COMMITTED,      /* a first attempt committed its change and never answered:
				*first names it (effect_name/version, request_id); answer
				it without acting, then idem_finish */
};
/* Start a mutating call (request_id: this attempt's, kept as the first's;
 * carries_secret: req holds a secret, cf_method.secret_in).
 * Errors: CF_E_PRECONDITION (the key was used for another request; or a
 * secret without a fingerprint key), CF_E_TIMEOUT (a duplicate still
 * running), CF_E_IO, the token's (the fingerprint is its MAC). */
int idem_begin(idem *i, const char *key, uint32_t uid, const char *method, const uint8_t *req,
	       size_t len, int carries_secret, const char *request_id, struct store_idem *first,
	       enum idem_start *start);
/* Record the outcome, with the fingerprint idem_begin made (so only after
 * an idem_begin that answered CF_OK). request_id: the first attempt's;
 * committed: a change of this call is durable (then even a transient
 * failure is kept, as pending and committed, so that a retry answers
 * instead of acting). */
void idem_finish(idem *i, const char *key, uint32_t uid, const char *method,
		 const char *request_id, int committed, int status, const char *message,
		 const uint8_t *resp, size_t resp_len);
/* Forget finished records older than the retention. */
void idem_expire(idem *i, int64_t now);
/* Release the records idem_finish could not (the store was unreachable);
 * called about once a second. */
void idem_retry(idem *i);

#endif
