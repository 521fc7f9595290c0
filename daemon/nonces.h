/*
 * nonces.h — the replay record of signed requests: every (scope, nonce)
 * accepted within its timestamp window, so that each is accepted once.
 *
 * In memory: an open-addressing table of 16-byte SHA-256 prefixes of
 * scope‖0‖nonce with their expiry and a 64-bit tag of the scope (32 bytes
 * per entry, grown by doubling at 3/4 load, so 43..86 bytes per live nonce). On disk: <state_dir>/nonces.log,
 * an append-only file of 24-byte records written before the nonce counts (in
 * the kernel once write() returns, so a crash or restart of the daemon never
 * forgets one), read back at start and rewritten with only the live records
 * by the expiry sweep once dead ones outnumber them. A record kept in SQLite
 * (<state_dir>/nonces.db, Coffer before 0.5) is carried over at start.
 * Bounded: beyond max_live entries new nonces are refused (CF_E_EXHAUSTED)
 * rather than letting memory grow without limit; and each scope (an API key,
 * a request-signing key) holds at most its share (nonces_set_scope_max), so
 * one busy caller cannot exhaust the record for the others. The log keeps no
 * scope: nonces read back at start count against max_live only. Refusals are
 * logged (warn, at most one line per 10 s).
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
/* Live nonces one scope may hold (0 or above max_live: max_live, the default). */
void nonces_set_scope_max(nonces *n, size_t max);

/* Record (scope, nonce) until `expires` (Unix seconds). CF_E_EXISTS if it is
 * already recorded and unexpired (a replay); CF_E_EXHAUSTED if max_live
 * nonces are live, or the scope's share; CF_E_IO if it cannot be made durable. */
int nonces_use(nonces *n, const char *scope, const char *nonce, int64_t expires, int64_t now);

/* The freshness rule of a signed message (call signatures, signed HTTP
 * requests), written once: its timestamp is at most `window` s old and at
 * most `ahead` s ahead of now (else *v = NONCE_EXPIRED / NONCE_AHEAD and
 * nothing is verified), its signature verifies (verify(arg): CF_OK, or a
 * refusal returned as it is), and its nonce is new in `scope` (else
 * NONCE_REPLAYED). Only a genuine message uses up its nonce, kept until the
 * timestamp has left the window. CF_OK with *v set, verify's refusal, or
 * nonces_use's failure. */
enum nonce_verdict { NONCE_FRESH, NONCE_EXPIRED, NONCE_AHEAD, NONCE_REPLAYED };
struct nonce_claim {
	const char *scope;      /* where a nonce must be unique: the signing key */
	const char *nonce;
	int64_t timestamp;      /* Unix seconds, as signed */
	unsigned window;
	unsigned ahead;
};
int nonces_check(nonces *n, const struct nonce_claim *c, int64_t now, int (*verify)(void *arg),
		 void *arg, enum nonce_verdict *v);

/* Drop expired entries from memory and disk. */
void nonces_expire(nonces *n, int64_t now);

/* Records appended since open, compactions, and the log's size now. */
void nonces_stats(nonces *n, uint64_t *appended, uint64_t *compactions, uint64_t *log_bytes);

size_t nonces_live(nonces *n);
size_t nonces_memory(nonces *n);   /* bytes of the in-memory table */

#endif
