/*
 * nonces.h — the replay record of signed requests: every (scope, nonce)
 * accepted within its timestamp window, so that each is accepted once.
 *
 * In memory: an open-addressing table of 16-byte SHA-256 prefixes of
 * scope‖0‖nonce with their expiry and a 64-bit tag of the scope (32 bytes
 * per entry, grown by doubling at 3/4 load, so 43..86 bytes per live
 * nonce). On disk: <state_dir>/nonces.log, a 16-byte header (magic, the
 * window the expiries were recorded with, and the floor of timestamps after
 * a raise: nonces_set_window) then an append-only file of 24-byte records
 * written before the nonce counts (in
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
 * PostgreSQL mode (nonces_open_pg, for a fleet of replicas sharing one
 * database): the record is table coffer_nonces (created at open, logged, so
 * it survives a server crash), keyed by the same 16-byte hash, with the
 * expiry; a nonce is accepted by an INSERT under that key, so one accepted
 * by any replica is refused by all the others, and an expired row is taken
 * over. No local file. Concurrent calls share one transaction (group
 * commit: nonces_batch_stats), and "fresh" is only answered after its
 * COMMIT has returned (durable as the server's synchronous_commit makes
 * it). PostgreSQL unreachable or failing: CF_E_UNAVAILABLE "nonce record:
 * PostgreSQL unreachable: <libpq's text>" (or "PostgreSQL error: ..."), never
 * fresh and never replayed; the next call reconnects by itself. A call cut
 * off mid-commit is UNAVAILABLE although its nonce may be recorded: a
 * retry with the same nonce is then refused, never accepted twice.
 * max_live and the scope shares stay, per replica, in memory: they count
 * the nonces this replica accepted that have not expired (the in-memory
 * table keeps their hashes, which also refuses a replay to the same replica
 * without a round trip). They bound what each replica, and each key through
 * each replica, adds to the shared table (at most replicas × max_live live
 * rows), which a fleet-wide count would too, but without a count query on
 * every call. The counts start empty at open (older nonces remain refused
 * by the database), and are checked before the round trip, so concurrent
 * calls may overshoot them by the number of calls in flight.
 *
 * Thread-safe; two concurrent uses of one nonce: exactly one succeeds (in
 * PostgreSQL mode, across every replica).
 */
#ifndef COFFER_NONCES_H
#define COFFER_NONCES_H

#include <stddef.h>
#include <stdint.h>

typedef struct nonces nonces;

int nonces_open(const char *state_dir, size_t max_live, nonces **out);
/* PostgreSQL mode; dsn: a libpq connection string (from the configuration).
 * CF_E_UNAVAILABLE if the server cannot be reached or the table created. */
int nonces_open_pg(const char *dsn, size_t max_live, nonces **out);
void nonces_close(nonces *n);   /* accepts NULL */
/* Live nonces one scope may hold (0 or above max_live: max_live, the default). */
void nonces_set_scope_max(nonces *n, size_t max);

/* Record (scope, nonce) until `expires` (Unix seconds). CF_E_EXISTS if it is
 * already recorded and unexpired (a replay); CF_E_EXHAUSTED if max_live
 * nonces are live, or the scope's share; CF_E_IO if it cannot be made durable. */
int nonces_use(nonces *n, const char *scope, const char *nonce, int64_t expires, int64_t now);

/* The [requests] window calls are now checked with, before they are (at
 * start and on SIGHUP): raised, every recorded nonce is kept longer by as
 * much, so that no timestamp the new window accepts finds its nonce
 * forgotten; the window is kept with the record (the log's header; the
 * fleet's table) for the next start. CF_OK (a log that could not be
 * rewritten is logged: this run keeps the new expiries, and the next start
 * applies the change again from the header), or CF_E_UNAVAILABLE when the
 * record could not take it (a log write that hangs; in a fleet, PostgreSQL
 * not recording it): nothing changed, keep the old window. */
int nonces_set_window(nonces *n, unsigned window, int64_t now);

/* The freshness rule of a signed message (call signatures, signed HTTP
 * requests), written once: its timestamp is at most `window` s old and at
 * most `ahead` s ahead of now (else *v = NONCE_EXPIRED / NONCE_AHEAD, or
 * NONCE_BEFORE_RAISE: older than the window was when it was raised, and
 * nothing is verified), its signature verifies (verify(arg): CF_OK, or a
 * refusal returned as it is), and its nonce is new in `scope` (else
 * NONCE_REPLAYED). Only a genuine message uses up its nonce, kept until the
 * timestamp has left the window. CF_OK with *v set, verify's refusal, or
 * nonces_use's failure. */
enum nonce_verdict { NONCE_FRESH, NONCE_EXPIRED, NONCE_AHEAD, NONCE_REPLAYED,
		     NONCE_BEFORE_RAISE };   /* inside the window, older than its raise */
struct nonce_claim {
	const char *scope;      /* where a nonce must be unique: the signing key */
	const char *nonce;
	int64_t timestamp;      /* Unix seconds, as signed */
	unsigned window;
	unsigned ahead;
};
int nonces_check(nonces *n, const struct nonce_claim *c, int64_t now, int (*verify)(void *arg),
		 void *arg, enum nonce_verdict *v);

/* Drop expired entries from memory and disk (PostgreSQL mode: from the
 * table, in bounded batches; a failure is logged, the next sweep retries). */
void nonces_expire(nonces *n, int64_t now);

/* Records appended since open, compactions, and the log's size now
 * (PostgreSQL mode: nonces accepted through this handle, 0, 0). */
void nonces_stats(nonces *n, uint64_t *appended, uint64_t *compactions, uint64_t *log_bytes);
/* PostgreSQL mode: transactions sent and the uses they answered (items /
 * batches is the group commit's batch size); 0, 0 in file mode. */
void nonces_batch_stats(nonces *n, uint64_t *batches, uint64_t *items);

size_t nonces_live(nonces *n);   /* PostgreSQL mode: this replica's, as counted above */
size_t nonces_memory(nonces *n);   /* bytes of the in-memory table */

#endif
