/*
 * idempotency.h — mutating calls that carry an idempotency key (gRPC
 * metadata "idempotency-key") happen once: the daemon records the key, the
 * caller (uid), the method, a fingerprint of the request and, when the call
 * is done, its outcome, in the state store for `retention` seconds.
 *
 * The same key with the same request returns the first outcome without
 * acting again; with another request it is refused; concurrent duplicates
 * wait for the first. A record is written (pending) before the call acts, so
 * a retry after a crash finds it and runs the call again, which then adopts
 * a token object the crashed call made but never recorded (keyring.c).
 * Outcomes a retry may change (unavailable, busy, timeouts, internal
 * errors) are not kept. Secrets (a response's "secret" or "plaintext"
 * bytes) are never stored: a replay returns the response without them.
 */
#ifndef COFFER_IDEMPOTENCY_H
#define COFFER_IDEMPOTENCY_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define IDEM_KEY_MIN 8
#define IDEM_WAIT_MS 30000   /* longest wait for a concurrent duplicate */

typedef struct idem idem;

int idem_open(store *st, unsigned retention_s, idem **out);
void idem_close(idem *i);   /* accepts NULL */

/* CF_OK if key is IDEM_KEY_MIN..STORE_IDEM_KEY_MAX of A-Z a-z 0-9 . _ : - */
int idem_key_check(const char *key);

/* Start a mutating call. *replay = 0: run it, then idem_finish (always);
 * *resumed = 1 if a first attempt started and never finished.
 * *replay = 1: *first holds the first outcome (free its response). Errors:
 * CF_E_PRECONDITION (the key was used for another request), CF_E_TIMEOUT
 * (a duplicate still running), CF_E_IO. */
int idem_begin(idem *i, const char *key, uint32_t uid, const char *method, const uint8_t *req,
	       size_t len, struct store_idem *first, int *replay, int *resumed);
void idem_finish(idem *i, const char *key, uint32_t uid, const char *method,
		 const uint8_t *req, size_t len, int status, const char *message,
		 const uint8_t *resp, size_t resp_len);
/* Forget finished records older than the retention. */
void idem_expire(idem *i, int64_t now);

#endif
