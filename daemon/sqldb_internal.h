/* sqldb_internal.h — what the two sqldb engines implement (sqldb.c dispatches). */
#ifndef COFFER_SQLDB_INTERNAL_H
#define COFFER_SQLDB_INTERNAL_H

#include <stdatomic.h>

#include "sqldb.h"

#define SQLDB_MAX_PARAMS 32

struct sqldb_param {
	char type;               /* 'i', 't', 'd', 'b' */
	int64_t i;
	double d;
	const char *t;
	const void *b;
	size_t blen;
};

struct sqldb_ops {
	void (*close)(sqldb *db);
	int (*exec)(sqldb *db, const char *sql);
	int (*query)(sqldb *db, const char *sql, const struct sqldb_param *p, int np,
		     sqldb_stmt **out);
	int (*step)(sqldb_stmt *st);
	int64_t (*col_int64)(sqldb_stmt *st, int col);
	double (*col_double)(sqldb_stmt *st, int col);
	const char *(*col_text)(sqldb_stmt *st, int col);
	const void *(*col_blob)(sqldb_stmt *st, int col, size_t *len);
	void (*finalize)(sqldb_stmt *st);
	int64_t (*changes)(sqldb *db);
	int (*begin)(sqldb *db, int write, int wait_ms);
	int (*commit)(sqldb *db);
	void (*rollback)(sqldb *db);
	int (*notify)(sqldb *db, const char *channel, const char *payload);
	int (*ready)(sqldb *db);
	int (*check)(sqldb *db);
	int (*healthy)(sqldb *db);
};

/* The first member of each engine's handle and statement. */
struct sqldb {
	const struct sqldb_ops *ops;
	enum sqldb_backend backend;
	int failed;              /* the last failure's SQLDB_* (sqldb_lost, sqldb_locked) */
	unsigned lock_wait_ms;   /* set by the engine at open: sqldb_lock_wait_ms */
	char err[512];
	/* Read by other threads (sqldb_session_pid, sqldb_take_commit_unknown). */
	atomic_int session_pid;
	atomic_int commit_unknown;
};

struct sqldb_stmt {
	sqldb *db;
};

/* Record a failure's text (printf-style); returns rc. */
int sqldb_fail(sqldb *db, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
