/*
 * nonces_pg.h — internal to the replay record: its PostgreSQL side, the
 * table every replica shares (nonces.c keeps the interface, the freshness
 * rule and this replica's limits; nothing else includes this).
 *
 * Table coffer_nonces (h bytea primary key: 16 bytes of SHA-256 of
 * scope‖0‖nonce; expires bigint, Unix seconds, indexed), created at open.
 * A claim is one row of an INSERT ... ON CONFLICT under that key, so two
 * replicas claiming one nonce at once get one "fresh" between them. The
 * claims of concurrent callers share one transaction (group commit): a
 * caller that finds one of two connections free, else a batcher thread,
 * sends every claim queued as one multi-row statement on it (two
 * connections, so that one transaction can start while another commits).
 */
#ifndef COFFER_NONCES_PG_H
#define COFFER_NONCES_PG_H

#include <stdint.h>

struct nonces_pg;

/* Connect (three connections: the two claims' and the expiry sweep's),
 * create the table if absent. CF_E_UNAVAILABLE if PostgreSQL cannot be reached. */
int nonces_pg_open(const char *dsn, struct nonces_pg **out);
void nonces_pg_close(struct nonces_pg *p);   /* accepts NULL */

/* Claim h until `expires` (computed with `window`: the fleet keeps it as
 * long as its largest window): CF_OK once the commit that recorded it has
 * returned (durable); CF_E_EXISTS if a live row holds it (expires > now);
 * CF_E_UNAVAILABLE "nonce record: PostgreSQL ..." when the outcome is not
 * known to be either. Blocks until the batch holding it is answered. */
int nonces_pg_claim(struct nonces_pg *p, const uint8_t h[16], int64_t expires, unsigned window,
		    int64_t now);

/* Delete rows expired at `now`, in bounded batches (several replicas may
 * sweep at once: each skips the rows another is deleting). */
int nonces_pg_expire(struct nonces_pg *p, int64_t now, uint64_t *deleted);

/* This replica's [requests] window (nonces_set_window): claims are kept as
 * long as the largest window any replica has used accepts them; raised
 * beyond it, the live rows are kept longer by as much. *floor: timestamps
 * before it are refused (their rows may be gone). CF_E_UNAVAILABLE
 * "nonce record: ..." when PostgreSQL cannot record it. */
int nonces_pg_set_window(struct nonces_pg *p, unsigned window, int64_t now, int64_t *floor);

/* Transactions sent for claims, and the claims they answered. */
void nonces_pg_stats(struct nonces_pg *p, uint64_t *batches, uint64_t *items);

#endif
