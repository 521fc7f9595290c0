/* sqldb_pg.h — the PostgreSQL (libpq) engine of sqldb.h. */
#ifndef COFFER_SQLDB_PG_H
#define COFFER_SQLDB_PG_H

#include <libpq-fe.h>

#include "sqldb.h"

/* Connect to PostgreSQL with a libpq connection string. CF_E_UNAVAILABLE
 * ("state store: PostgreSQL unreachable: <libpq text>") if the server
 * cannot be reached. The string is not kept (a reconnection reuses libpq's
 * copy). */
int sqldb_open_pg(const char *conninfo, sqldb **out);

/* PQconnectdb with Coffer's defaults, which the configured string (expanded
 * last) may override: a server that stops answering must fail a call in
 * seconds, not hold it for minutes (connect_timeout 5 s, tcp_user_timeout
 * 10 s, keepalives), and each connection names its use (application_name
 * "cofferd <what>"). NULL only when out of memory; check PQstatus. */
PGconn *sqldb_pg_connect(const char *conninfo, const char *what);

#endif
