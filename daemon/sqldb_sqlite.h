/* sqldb_sqlite.h — the SQLite engine of sqldb.h. */
#ifndef COFFER_SQLDB_SQLITE_H
#define COFFER_SQLDB_SQLITE_H

#include "sqldb.h"

/* Open (creating) the SQLite database at path: WAL, synchronous=FULL,
 * foreign keys on, a write waiting busy_ms for another process's lock. Its
 * identity (device, inode) is remembered for sqldb_check. CF_E_IO with a
 * detail. */
int sqldb_open_sqlite(const char *path, unsigned busy_ms, sqldb **out);

#endif
