/* sqldb_pg.h — the PostgreSQL (libpq) engine of sqldb.h. */
#ifndef COFFER_SQLDB_PG_H
#define COFFER_SQLDB_PG_H

#include <libpq-fe.h>

#include "sqldb.h"

/* Connect to PostgreSQL with a libpq connection string. CF_E_UNAVAILABLE
 * ("state store: PostgreSQL unreachable: <libpq text>", or "... refused the
 * connection: ..." when it answered no: sqldb_pg_connect_failed) if it
 * cannot connect. The string is not kept (a reconnection reuses libpq's
 * copy). Every statement waits at most wait_ms for the server's answer, then
 * fails SQLDB_LOST ("PostgreSQL did not answer in N ms") and the connection
 * is reset before its next use. */
int sqldb_open_pg(const char *conninfo, unsigned wait_ms, sqldb **out);

/* PQconnectdb with Coffer's defaults, which the configured string (expanded
 * last) may override: a server that stops answering must fail a call in
 * seconds, not hold it for minutes (connect_timeout 5 s, tcp_user_timeout
 * 10 s, keepalives), and each connection names its use (application_name
 * "cofferd <what>"). NULL only when out of memory; check PQstatus. */
PGconn *sqldb_pg_connect(const char *conninfo, const char *what);

/* How to name a failed connection, before libpq's reason: "PostgreSQL
 * refused the connection" when the server answered and said no (a login,
 * database or pg_hba rule it refuses, or a server starting or full), which
 * waiting does not mend; "PostgreSQL does not answer" when connect_timeout
 * ran out; "PostgreSQL unreachable" otherwise. */
const char *sqldb_pg_connect_failed(PGconn *c);

/* A statement bounded by `bound` ms waits this long for a lock another
 * session holds (lock_timeout), so that the server says so (55P03) before
 * the bound, after which it would count as hung. */
unsigned sqldb_pg_lock_ms(unsigned bound);
/* 1 if res is that refusal, its text in out: "waited MS ms for a lock
 * another PostgreSQL session holds (...): <the server's primary message>"
 * (not its CONTEXT lines: the statement, the index would push the rest out
 * of a caller's error detail). */
int sqldb_pg_lock_refusal(const PGresult *res, unsigned ms, char *out, size_t len);

/* What iowatch.h names for every operation on the server (the store's and
 * the nonce record's alike: any of them answering means it answers). */
#define SQLDB_PG_WATCH "PostgreSQL"

/* Wait at most ms until PQgetResult(c) will not block: 1, or 0 when the time
 * ran out. A server that is alive but does not answer (stopped, or its disk
 * hangs) trips none of the timeouts above: the kernel keeps acknowledging
 * for it. After 0 the connection is mid-statement: drop it. */
int sqldb_pg_await(PGconn *c, unsigned ms);

/* What PQexec does after a PQsend* (`sent` its return): every result
 * collected, the last one returned, all within ms; with `watch`, watched as
 * a remote operation (iowatch.h: not for statements that may wait on a lock
 * for long, which would read as a server that hangs). NULL when nothing was
 * sent (libpq's message in PQerrorMessage) or, *timed_out set, when the
 * server did not answer in time: the connection is then mid-statement, to be
 * dropped or reset. */
PGresult *sqldb_pg_collect(PGconn *c, int sent, unsigned ms, int watch, int *timed_out);

#endif
