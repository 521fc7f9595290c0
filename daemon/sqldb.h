/*
 * sqldb.h — the SQL driver under the state store: one small interface with
 * two engines, SQLite (a file under the state directory) and PostgreSQL
 * (libpq), so that store.c holds the store's logic once.
 *
 * SQL text is written once for both engines: `?` placeholders (the
 * PostgreSQL driver numbers them $1, $2 ...), upserts as INSERT ... ON
 * CONFLICT, RETURNING. Only the schema (DDL) differs per engine.
 *
 * Parameters are given by a type string, one letter per `?`, followed by
 * the values: 'i' int64_t, 't' const char * (NUL-terminated text),
 * 'd' double, 'b' const void *, size_t (a blob; a non-NULL pointer with
 * length 0 is the empty blob).
 *
 * Statement results (SQLDB_*) are not Coffer statuses: the caller turns a
 * failure into one, with sqldb_errmsg() and sqldb_lost(). Open, check and
 * ready return Coffer statuses with a detail.
 *
 * Not thread-safe: one caller at a time per handle (the store's mutex).
 */
#ifndef COFFER_SQLDB_H
#define COFFER_SQLDB_H

#include <stddef.h>
#include <stdint.h>

enum sqldb_backend { SQLDB_SQLITE = 1, SQLDB_POSTGRESQL };

enum {
	SQLDB_OK = 0,
	SQLDB_ROW,          /* sqldb_step: a row is ready */
	SQLDB_DONE,         /* sqldb_step: no more rows */
	SQLDB_CONSTRAINT,   /* a unique, primary-key or foreign-key constraint refused it */
	SQLDB_LOST,         /* the connection to the server is gone (PostgreSQL) */
	SQLDB_ERROR,        /* anything else (sqldb_errmsg) */
	SQLDB_LOCKED,       /* a lock another session holds was not granted in time (PostgreSQL's
	                       lock_timeout, SQLite's busy timeout): the server answers; retry */
};

typedef struct sqldb sqldb;
typedef struct sqldb_stmt sqldb_stmt;

/* A handle comes from an engine: sqldb_sqlite.h, sqldb_pg.h. */
void sqldb_close(sqldb *db);
enum sqldb_backend sqldb_backend(const sqldb *db);
/* "SQLite" or "PostgreSQL". */
const char *sqldb_engine(const sqldb *db);

/* The text of the last failure (never a password); "" if none. */
const char *sqldb_errmsg(const sqldb *db);
/* 1 if the last failure was the loss of the connection. */
int sqldb_lost(const sqldb *db);
/* 1 if the last failure was SQLDB_LOCKED. */
int sqldb_locked(const sqldb *db);

/* Before every use: reconnect if the connection was found lost (PostgreSQL;
 * may block for the connection timeout). CF_E_UNAVAILABLE if it stays lost. */
int sqldb_ready(sqldb *db);
/* Before every change: SQLite checks that its path still names the file it
 * opened (a database removed or replaced under the daemon would take later
 * changes with it); once not, every later check fails. CF_E_UNAVAILABLE. */
int sqldb_check(sqldb *db);
/* 1 while the database is usable: SQLite, its file was not replaced;
 * PostgreSQL, the connection answers (checked at most once a second, by a
 * round trip that reconnects if needed). */
int sqldb_healthy(sqldb *db);

/* The server process of the connection (PostgreSQL's backend pid; 0: SQLite,
 * or none yet): a notification it sent is this process's own change. Any
 * thread. */
int sqldb_session_pid(sqldb *db);
/* 1 once after a COMMIT whose answer was lost with the connection (it may
 * have committed: what this process holds in memory may be behind the
 * database); then 0 until the next such COMMIT. Any thread. */
int sqldb_take_commit_unknown(sqldb *db);

/* Statements without parameters, separated by ';' (schema). */
int sqldb_exec(sqldb *db, const char *sql);
/* One statement with parameters; its rows, if any, are dropped. */
int sqldb_run(sqldb *db, const char *sql, const char *types, ...);
/* One statement with parameters, for its rows: *out to step through and
 * finalize (also after a failure of sqldb_step; NULL on failure here). */
int sqldb_query(sqldb *db, sqldb_stmt **out, const char *sql, const char *types, ...);
int sqldb_step(sqldb_stmt *st);
/* Columns of the current row (from 0). NULL values read as 0, NULL, (NULL, 0).
 * Text and blobs are valid until the next step or finalize. */
int64_t sqldb_int64(sqldb_stmt *st, int col);
double sqldb_double(sqldb_stmt *st, int col);
const char *sqldb_text(sqldb_stmt *st, int col);
const void *sqldb_blob(sqldb_stmt *st, int col, size_t *len);
void sqldb_finalize(sqldb_stmt *st);
/* Rows changed by the last INSERT, UPDATE or DELETE. */
int64_t sqldb_changes(sqldb *db);

/* Transactions. write: SQLite takes the write lock at once (BEGIN
 * IMMEDIATE); a read (write = 0) is a consistent snapshot on both. A begin
 * on a PostgreSQL connection that turns out to be lost reconnects and tries
 * once more (nothing was sent yet). SQLDB_READ_YIELD, SQLDB_WRITE_YIELD: a
 * read or a write that waits at most SQLDB_YIELD_LOCK_MS for a lock another
 * session holds (background work that is tried again later: a reload, the
 * audit trail's anchor; waiting longer, it kept the one connection from the
 * changes and calls queued behind it). wait_ms >= 0:
 * what is left of the caller's wait for another session's lock, when it
 * already waited for the connection (the wait for both stays one bound, not
 * two: a change queued behind a background write that waited out SQLite's
 * busy timeout waited it twice); SQLDB_WAIT_OWN: the connection's own. */
#define SQLDB_READ_YIELD 2
#define SQLDB_WRITE_YIELD 3
#define SQLDB_WRITES(mode) ((mode) == 1 || (mode) == SQLDB_WRITE_YIELD)
#define SQLDB_YIELDS(mode) ((mode) == SQLDB_READ_YIELD || (mode) == SQLDB_WRITE_YIELD)
#define SQLDB_YIELD_LOCK_MS 100
#define SQLDB_WAIT_OWN (-1)
int sqldb_begin(sqldb *db, int write, int wait_ms);
/* The connection's own wait for another session's lock, in ms (SQLite's
 * busy timeout; PostgreSQL's lock_timeout). */
unsigned sqldb_lock_wait_ms(sqldb *db);
int sqldb_commit(sqldb *db);
/* Undo the open transaction, if any, keeping the last failure's text. */
void sqldb_rollback(sqldb *db);

/* Announce `payload` on `channel` when the open transaction commits
 * (PostgreSQL NOTIFY); SQLite has no listeners: nothing to do. */
int sqldb_notify(sqldb *db, const char *channel, const char *payload);

#endif
