/*
 * nonces.h — the replay record of signed requests: every (scope, nonce)
 * accepted within its timestamp window, so that each is accepted once.
 *
 * In memory: an open-addressing table of 16-byte SHA-256 prefixes of
 * scope‖0‖nonce with their expiry (24 bytes per entry, grown by doubling at
 * 3/4 load, so 32..64 bytes per live nonce). On disk: <state_dir>/nonces.db (SQLite, WAL,
 * synchronous=NORMAL: a nonce is in the log before the request is answered,
 * so a crash or restart of the daemon never forgets one), loaded at start.
 * Group commit: concurrent callers' nonces share one transaction; the
 * expiry sweep deletes in slices and checkpoints on its own connection.
 * Bounded: beyond max_live entries new nonces are refused (CF_E_EXHAUSTED)
 * rather than letting memory grow without limit.
 *
 * Thread-safe; two concurrent uses of one nonce: exactly one succeeds.
 */
#ifndef COFFER_NONCES_H
#define COFFER_NONCES_H

#include <stddef.h>
#include <stdint.h>

typedef struct nonces nonces;

int nonces_open(const char *state_dir, size_t max_live, nonces **out);
void nonces_close(nonces *n);   /* accepts NULL */

/* Record (scope, nonce) until `expires` (Unix seconds). CF_E_EXISTS if it is
 * already recorded and unexpired (a replay); CF_E_EXHAUSTED if max_live
 * nonces are live; CF_E_IO if it cannot be made durable. */
int nonces_use(nonces *n, const char *scope, const char *nonce, int64_t expires, int64_t now);

/* Drop expired entries from memory and disk. */
void nonces_expire(nonces *n, int64_t now);

/* Transactions written and nonces they made durable (group commit: one
 * transaction carries every nonce that queued while the last was written). */
void nonces_stats(nonces *n, uint64_t *batches, uint64_t *written);

size_t nonces_live(nonces *n);
size_t nonces_memory(nonces *n);   /* bytes of the in-memory table */

#endif
