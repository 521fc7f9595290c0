/* The engine-independent half of sqldb.h: parameter lists and dispatch. */
#include "sqldb_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cf_status.h"

int
sqldb_fail(sqldb *db, int rc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(db->err, sizeof(db->err), fmt, ap);
	va_end(ap);
	cf_oneline(db->err);
	db->failed = rc;
	return rc;
}

static int
params(sqldb *db, const char *types, va_list ap, struct sqldb_param *p, int *np)
{
	int n = 0;

	for (; *types; types++, n++) {
		if (n == SQLDB_MAX_PARAMS)
			return sqldb_fail(db, SQLDB_ERROR, "more than %d parameters",
					  SQLDB_MAX_PARAMS);
		memset(&p[n], 0, sizeof(p[n]));
		p[n].type = *types;
		switch (*types) {
		case 'i': p[n].i = va_arg(ap, int64_t); break;
		case 'd': p[n].d = va_arg(ap, double); break;
		case 't': p[n].t = va_arg(ap, const char *); break;
		case 'b':
			p[n].b = va_arg(ap, const void *);
			p[n].blen = va_arg(ap, size_t);
			break;
		default:
			return sqldb_fail(db, SQLDB_ERROR, "bad parameter type '%c'", *types);
		}
	}
	*np = n;
	return SQLDB_OK;
}

int
sqldb_query(sqldb *db, sqldb_stmt **out, const char *sql, const char *types, ...)
{
	struct sqldb_param p[SQLDB_MAX_PARAMS];
	va_list ap;
	int np = 0, rc;

	*out = NULL;
	va_start(ap, types);
	rc = params(db, types, ap, p, &np);
	va_end(ap);
	return rc != SQLDB_OK ? rc : db->ops->query(db, sql, p, np, out);
}

int
sqldb_run(sqldb *db, const char *sql, const char *types, ...)
{
	struct sqldb_param p[SQLDB_MAX_PARAMS];
	sqldb_stmt *st = NULL;
	va_list ap;
	int np = 0, rc;

	va_start(ap, types);
	rc = params(db, types, ap, p, &np);
	va_end(ap);
	if (rc == SQLDB_OK && (rc = db->ops->query(db, sql, p, np, &st)) == SQLDB_OK) {
		rc = db->ops->step(st);
		if (rc == SQLDB_ROW || rc == SQLDB_DONE)
			rc = SQLDB_OK;
	}
	if (st != NULL)
		db->ops->finalize(st);
	return rc;
}

void
sqldb_close(sqldb *db)
{
	if (db != NULL)
		db->ops->close(db);
}

enum sqldb_backend
sqldb_backend(const sqldb *db)
{
	return db->backend;
}

const char *
sqldb_engine(const sqldb *db)
{
	return db->backend == SQLDB_POSTGRESQL ? "PostgreSQL" : "SQLite";
}

const char *
sqldb_errmsg(const sqldb *db)
{
	return db->err;
}

int
sqldb_lost(const sqldb *db)
{
	return db->failed == SQLDB_LOST;
}

int
sqldb_locked(const sqldb *db)
{
	return db->failed == SQLDB_LOCKED;
}

unsigned
sqldb_lock_wait_ms(sqldb *db)
{
	return db->lock_wait_ms;
}

int
sqldb_session_pid(sqldb *db)
{
	return atomic_load(&db->session_pid);
}

int
sqldb_take_commit_unknown(sqldb *db)
{
	return atomic_exchange(&db->commit_unknown, 0);
}

int sqldb_ready(sqldb *db) { return db->ops->ready(db); }
int sqldb_check(sqldb *db) { return db->ops->check(db); }
int sqldb_healthy(sqldb *db) { return db->ops->healthy(db); }
int sqldb_exec(sqldb *db, const char *sql) { return db->ops->exec(db, sql); }
int sqldb_step(sqldb_stmt *st) { return st->db->ops->step(st); }
int64_t sqldb_int64(sqldb_stmt *st, int col) { return st->db->ops->col_int64(st, col); }
double sqldb_double(sqldb_stmt *st, int col) { return st->db->ops->col_double(st, col); }
const char *sqldb_text(sqldb_stmt *st, int col) { return st->db->ops->col_text(st, col); }
int64_t sqldb_changes(sqldb *db) { return db->ops->changes(db); }
int
sqldb_begin(sqldb *db, int write, int wait_ms)
{
	return db->ops->begin(db, write, wait_ms);
}
int sqldb_commit(sqldb *db) { return db->ops->commit(db); }
void sqldb_rollback(sqldb *db) { db->ops->rollback(db); }

const void *
sqldb_blob(sqldb_stmt *st, int col, size_t *len)
{
	return st->db->ops->col_blob(st, col, len);
}

void
sqldb_finalize(sqldb_stmt *st)
{
	if (st != NULL)
		st->db->ops->finalize(st);
}

int
sqldb_notify(sqldb *db, const char *channel, const char *payload)
{
	return db->ops->notify(db, channel, payload);
}
