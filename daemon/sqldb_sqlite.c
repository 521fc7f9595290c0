/* sqldb on SQLite: the embedded default, one file under the state directory. */
#include "sqldb_sqlite.h"
#include "sqldb_internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sqlite3.h>

#include "cf_log.h"
#include "cf_status.h"
#include "iowatch.h"

struct sq {
	struct sqldb base;
	sqlite3 *h;
	char path[4096];
	dev_t dev;               /* the database file's identity at open */
	ino_t ino;
	unsigned busy_ms;        /* the busy timeout between transactions */
	atomic_int broken;       /* the path no longer names that file */
};

struct sq_stmt {
	struct sqldb_stmt base;
	sqlite3_stmt *st;
};

/* SQLite's result code as sqldb's. */
static int
sq_rc(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_CONSTRAINT:
		return SQLDB_CONSTRAINT;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return SQLDB_LOCKED;
	default:
		return SQLDB_ERROR;
	}
}

static int
sq_fail(struct sq *q, int rc)
{
	return sqldb_fail(&q->base, sq_rc(rc), "%s", sqlite3_errmsg(q->h));
}

static void
sq_close(sqldb *db)
{
	struct sq *q = (struct sq *)db;

	sqlite3_close(q->h);
	free(q);
}

static int
sq_exec(sqldb *db, const char *sql)
{
	struct sq *q = (struct sq *)db;
	char *msg = NULL;
	int rc = sqlite3_exec(q->h, sql, NULL, NULL, &msg);

	if (rc != SQLITE_OK) {
		rc = sqldb_fail(db, sq_rc(rc), "%s", msg ? msg : sqlite3_errmsg(q->h));
		sqlite3_free(msg);
		return rc;
	}
	return SQLDB_OK;
}

static int
sq_query(sqldb *db, const char *sql, const struct sqldb_param *p, int np, sqldb_stmt **out)
{
	struct sq *q = (struct sq *)db;
	struct sq_stmt *s;
	int rc = SQLITE_OK;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		return sqldb_fail(db, SQLDB_ERROR, "out of memory");
	s->base.db = db;
	if (sqlite3_prepare_v2(q->h, sql, -1, &s->st, NULL) != SQLITE_OK) {
		free(s);
		return sq_fail(q, SQLITE_ERROR);
	}
	for (int i = 0; i < np && rc == SQLITE_OK; i++) {
		switch (p[i].type) {
		case 'i': rc = sqlite3_bind_int64(s->st, i + 1, p[i].i); break;
		case 'd': rc = sqlite3_bind_double(s->st, i + 1, p[i].d); break;
		case 't': rc = sqlite3_bind_text(s->st, i + 1, p[i].t, -1, SQLITE_TRANSIENT); break;
		default:
			rc = sqlite3_bind_blob(s->st, i + 1, p[i].b ? p[i].b : (const void *)"",
					       (int)p[i].blen, SQLITE_TRANSIENT);
		}
	}
	if (rc != SQLITE_OK) {
		sqlite3_finalize(s->st);
		free(s);
		return sq_fail(q, rc);
	}
	*out = &s->base;
	return SQLDB_OK;
}

static int
sq_step(sqldb_stmt *st)
{
	struct sq_stmt *s = (struct sq_stmt *)st;
	int rc = sqlite3_step(s->st);

	if (rc == SQLITE_ROW)
		return SQLDB_ROW;
	if (rc == SQLITE_DONE)
		return SQLDB_DONE;
	return sq_fail((struct sq *)st->db, rc);
}

static int64_t
sq_int64(sqldb_stmt *st, int col)
{
	return sqlite3_column_int64(((struct sq_stmt *)st)->st, col);
}

static double
sq_double(sqldb_stmt *st, int col)
{
	return sqlite3_column_double(((struct sq_stmt *)st)->st, col);
}

static const char *
sq_text(sqldb_stmt *st, int col)
{
	return (const char *)sqlite3_column_text(((struct sq_stmt *)st)->st, col);
}

static const void *
sq_blob(sqldb_stmt *st, int col, size_t *len)
{
	sqlite3_stmt *s = ((struct sq_stmt *)st)->st;
	const void *b = sqlite3_column_blob(s, col);

	*len = (size_t)sqlite3_column_bytes(s, col);
	return b;
}

static void
sq_finalize(sqldb_stmt *st)
{
	sqlite3_finalize(((struct sq_stmt *)st)->st);
	free(st);
}

static int64_t
sq_changes(sqldb *db)
{
	return sqlite3_changes(((struct sq *)db)->h);
}

static int
sq_begin(sqldb *db, int write, int wait_ms)
{
	struct sq *q = (struct sq *)db;
	unsigned bound = SQLDB_YIELDS(write) && q->busy_ms > SQLDB_YIELD_LOCK_MS
				 ? SQLDB_YIELD_LOCK_MS : q->busy_ms;
	unsigned waits = wait_ms >= 0 && (unsigned)wait_ms < bound ? (unsigned)wait_ms : bound;
	int rc;

	if (waits != q->busy_ms)
		sqlite3_busy_timeout(q->h, (int)waits);
	rc = sq_exec(db, SQLDB_WRITES(write) ? "BEGIN IMMEDIATE;" : "BEGIN;");
	if (waits != q->busy_ms)
		sqlite3_busy_timeout(q->h, (int)q->busy_ms);
	/* SQLite's "database is locked" names neither the file nor the wait. */
	if (rc == SQLDB_LOCKED) {
		char why[sizeof(db->err)];

		snprintf(why, sizeof(why), "%s", db->err);
		rc = sqldb_fail(db, rc, "%s: another process holds the write lock of %s; waited "
				"%u ms for it (an sqlite3 shell, a backup, cofferctl on the state "
				"directory?)", why, q->path, bound);
	}
	return rc;
}

/* The commit is where a transaction meets the disk (its write lock was taken
 * at BEGIN IMMEDIATE, so no busy wait is counted as a disk that hangs). */
static int
sq_commit(sqldb *db)
{
	int slot = iowatch_begin(((struct sq *)db)->path), r = sq_exec(db, "COMMIT;");

	iowatch_end(slot, r == SQLDB_OK ? IOWATCH_OK : IOWATCH_FAILED);
	return r;
}

/* SQLite may already have rolled back by itself (SQLITE_FULL, SQLITE_IOERR),
 * and "cannot rollback - no transaction is active" would replace the cause. */
static void
sq_rollback(sqldb *db)
{
	struct sq *q = (struct sq *)db;

	if (!sqlite3_get_autocommit(q->h))
		(void)sqlite3_exec(q->h, "ROLLBACK;", NULL, NULL, NULL);
}

static int
sq_notify(sqldb *db, const char *channel, const char *payload)
{
	(void)db, (void)channel, (void)payload;
	return SQLDB_OK;
}

static int
sq_ready(sqldb *db)
{
	(void)db;
	return CF_OK;
}

/* Before each change: the path must still name the file we opened. A
 * database removed or replaced under a running daemon would take every later
 * change with it at the next start. One stat() (~5 us measured here) is
 * nothing beside a change's fsync'd commit or a token operation. */
static int
sq_check(sqldb *db)
{
	struct sq *q = (struct sq *)db;
	struct stat sb;
	int e = 0;

	if (!atomic_load(&q->broken)) {
		if (stat(q->path, &sb) != 0)
			e = errno;
		else if (sb.st_dev == q->dev && sb.st_ino == q->ino)
			return CF_OK;
		atomic_store(&q->broken, 1);
		cf_log_error("state store: the state database %s was %s while cofferd ran; "
			     "refusing every change until cofferd is restarted with it restored",
			     q->path, e == ENOENT ? "removed" : e != 0 ? "made unreadable" :
			     "replaced");
	}
	return cf_error(CF_E_UNAVAILABLE, "the state database %s was removed or replaced "
			"while cofferd ran; restart cofferd after restoring it; refusing changes",
			q->path);
}

static int
sq_healthy(sqldb *db)
{
	return !atomic_load(&((struct sq *)db)->broken);
}

static const struct sqldb_ops sq_ops = {
	.close = sq_close,
	.exec = sq_exec,
	.query = sq_query,
	.step = sq_step,
	.col_int64 = sq_int64,
	.col_double = sq_double,
	.col_text = sq_text,
	.col_blob = sq_blob,
	.finalize = sq_finalize,
	.changes = sq_changes,
	.begin = sq_begin,
	.commit = sq_commit,
	.rollback = sq_rollback,
	.notify = sq_notify,
	.ready = sq_ready,
	.check = sq_check,
	.healthy = sq_healthy,
};

int
sqldb_open_sqlite(const char *path, unsigned busy_ms, sqldb **out)
{
	struct sq *q;
	struct stat sb;
	int r;

	if ((q = calloc(1, sizeof(*q))) == NULL)
		return cf_nomem();
	q->base.ops = &sq_ops;
	q->base.backend = SQLDB_SQLITE;
	snprintf(q->path, sizeof(q->path), "%s", path);
	if (sqlite3_open_v2(path, &q->h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
			    SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
		r = cf_error(CF_E_IO, "cannot open state store %s: %s", path,
			     q->h ? sqlite3_errmsg(q->h) : "out of memory");
		goto fail;
	}
	q->busy_ms = busy_ms;
	q->base.lock_wait_ms = busy_ms;
	sqlite3_busy_timeout(q->h, (int)busy_ms);
	if (sq_exec(&q->base, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
		    "PRAGMA foreign_keys=ON;") != SQLDB_OK) {
		r = cf_error(CF_E_IO, "state store %s: %s", path, q->base.err);
		goto fail;
	}
	if (stat(path, &sb) != 0) {
		r = cf_error(CF_E_IO, "state store %s: %s", path, strerror(errno));
		goto fail;
	}
	q->dev = sb.st_dev;
	q->ino = sb.st_ino;
	*out = &q->base;
	return CF_OK;
fail:
	sq_close(&q->base);
	return r;
}
