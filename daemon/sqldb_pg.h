/* sqldb_pg.h — the PostgreSQL (libpq) engine of sqldb.h. */
#ifndef COFFER_SQLDB_PG_H
#define COFFER_SQLDB_PG_H

#include "sqldb.h"

/* Connect to PostgreSQL with a libpq connection string. CF_E_UNAVAILABLE
 * ("state store: PostgreSQL unreachable: <libpq text>") if the server
 * cannot be reached. The string is not kept (a reconnection reuses libpq's
 * copy). */
int sqldb_open_pg(const char *conninfo, sqldb **out);

#endif
