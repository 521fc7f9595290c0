/* sqldb on PostgreSQL (libpq): the state a fleet of replicas shares. One
 * connection; a lost one is re-established by the next call (sqldb_ready,
 * sqldb_begin), never by a restart. */
#include "sqldb_pg.h"
#include "cf_time.h"
#include "sqldb_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <openssl/crypto.h>

#include "cf_log.h"
#include "cf_status.h"
#include "iowatch.h"

/* Type OIDs of the parameters we send (pg_type.h). */
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_TEXT 25
#define OID_FLOAT8 701

struct pg {
	struct sqldb base;
	PGconn *c;
	int64_t changes;
	int need_reset;          /* the connection failed: reconnect before the next use */
	unsigned wait_ms;        /* the longest a statement waits for the server */
	int hung;                /* the last statement was not answered in time */
	int yielding;            /* this transaction's lock waits: SQLDB_YIELD_LOCK_MS */
	uint64_t tried_ms;       /* when the last reconnection attempt ended */
	int up;                  /* sqldb_healthy's last answer */
	struct timespec checked; /* when sqldb_healthy last asked the server */
};

struct pg_stmt {
	struct sqldb_stmt base;
	PGresult *res;
	int row, nrows;
	unsigned char *blob;     /* the last bytea column read (PQunescapeBytea) */
};

/* Notices ("relation already exists, skipping") are not ours to print. */
static void pg_lost(struct pg *q, const char *why);

static void
pg_quiet(void *arg, const char *message)
{
	(void)arg, (void)message;
}

static unsigned lock_ms(const struct pg *q);
static void pg_lost(struct pg *q, const char *why);

/* The outcome of a statement; a failure's text recorded. Takes res. */
static int
pg_outcome(struct pg *q, PGresult *res)
{
	ExecStatusType es = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? PQresultErrorMessage(res) : "";
	char text[sizeof(q->base.err)];
	int rc;

	if (es == PGRES_COMMAND_OK || es == PGRES_TUPLES_OK) {
		const char *n = PQcmdTuples(res);

		q->changes = n[0] ? strtoll(n, NULL, 10) : 0;
		PQclear(res);
		return SQLDB_OK;
	}
	if (msg == NULL || msg[0] == '\0')
		msg = PQerrorMessage(q->c);
	/* A lock another session holds, not granted in lock_timeout
	 * (lock_timeout_set): the server answers, it does not hang. */
	if (sqldb_pg_lock_refusal(res, q->yielding ? SQLDB_YIELD_LOCK_MS : lock_ms(q), text,
				  sizeof(text))) {
		rc = sqldb_fail(&q->base, SQLDB_LOCKED, "%s", text);
		PQclear(res);
		return rc;
	}
	/* Class 08: connection exceptions; 57P01..57P03: the server shut down. */
	if (PQstatus(q->c) != CONNECTION_OK ||
	    (state != NULL && (strncmp(state, "08", 2) == 0 || strncmp(state, "57P0", 4) == 0)))
		rc = SQLDB_LOST;
	else if (state != NULL && strncmp(state, "23", 2) == 0)
		rc = SQLDB_CONSTRAINT;
	else
		rc = SQLDB_ERROR;
	if (rc == SQLDB_LOST)
		pg_lost(q, msg);
	else
		rc = sqldb_fail(&q->base, rc, "%s", msg);
	PQclear(res);
	return rc;
}

/* A statement waits this long for a lock another session holds, then the
 * server says so (55P03): less than the statement's own bound, after which
 * the server counts as hung and calls that need it are refused at once
 * (before, a lock held by an operator's session looked like a dead server;
 * found by a review). */
static unsigned
lock_ms(const struct pg *q)
{
	return sqldb_pg_lock_ms(q->wait_ms);
}

unsigned
sqldb_pg_lock_ms(unsigned bound)
{
	return bound > 3 ? bound * 2 / 3 : 1;
}

int
sqldb_pg_lock_refusal(const PGresult *res, unsigned ms, char *out, size_t len)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *primary;

	if (state == NULL || strcmp(state, "55P03") != 0)
		return 0;
	primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	snprintf(out, len, "waited %u ms for a lock another PostgreSQL session holds (an "
		 "operator's transaction, a VACUUM FULL...): %s", ms,
		 primary != NULL ? primary : PQresultErrorMessage(res));
	cf_oneline(out);
	return 1;
}

static PGresult *bounded(struct pg *q, int sent);
static void pg_rollback(sqldb *db);

/* The session's lock_timeout (after each connection and reset). */
static int
lock_timeout_set(struct pg *q)
{
	char sql[64];
	PGresult *res;

	snprintf(sql, sizeof(sql), "SET lock_timeout = %u", lock_ms(q));
	res = bounded(q, PQsendQuery(q->c, sql));
	return res == NULL ? SQLDB_LOST : pg_outcome(q, res);
}

/* The connection is of no more use (why): the failure recorded, and a reset
 * before the next statement. */
static void
pg_lost(struct pg *q, const char *why)
{
	sqldb_fail(&q->base, SQLDB_LOST, "%s", why);
	if (!q->need_reset)
		cf_log_warn("state store: lost the connection to PostgreSQL: %s", q->base.err);
	q->need_reset = 1;
}

static void
pg_close(sqldb *db)
{
	struct pg *q = (struct pg *)db;

	PQfinish(q->c);
	free(q);
}

/* The statement sent (`sent`, a PQsend*'s return), its last result within
 * q->wait_ms; NULL with the failure recorded (SQLDB_LOST) when it could not
 * be sent or was not answered in time, the connection then to be reset. */
static PGresult *
bounded(struct pg *q, int sent)
{
	PGresult *res;
	int late;

	if ((res = sqldb_pg_collect(q->c, sent, q->wait_ms, 1, &late)) == NULL) {
		char why[128];

		if (late)
			snprintf(why, sizeof(why), "PostgreSQL did not answer in %u ms (a server "
				 "that hangs: stopped, or its disk)", q->wait_ms);
		pg_lost(q, late ? why : PQerrorMessage(q->c));
		q->hung = late;
	}
	return res;
}

static int
pg_exec(sqldb *db, const char *sql)
{
	struct pg *q = (struct pg *)db;
	PGresult *res;

	/* A connection lost (a statement not answered in time, mid-statement
	 * still) takes nothing more before its reset: its failure stands. */
	if (q->need_reset)
		return SQLDB_LOST;
	res = bounded(q, PQsendQuery(q->c, sql));
	return res == NULL ? SQLDB_LOST : pg_outcome(q, res);
}

/* `?` -> $1, $2 ... outside quoted strings and identifiers. */
static char *
pg_numbered(const char *sql, int np, int *found)
{
	size_t len = strlen(sql);
	char *out = malloc(len + 4 * (size_t)np + 1), *o = out;
	char quote = 0;
	int n = 0;

	if (out == NULL)
		return NULL;
	for (const char *p = sql; *p; p++) {
		if (quote != 0) {
			if (*p == quote)
				quote = 0;
		} else if (*p == '\'' || *p == '"') {
			quote = *p;
		} else if (*p == '?' && n < np) {
			o += sprintf(o, "$%d", ++n);
			continue;
		} else if (*p == '?') {
			n++;
		}
		*o++ = *p;
	}
	*o = '\0';
	*found = n;
	return out;
}

static int
pg_query(sqldb *db, const char *sql, const struct sqldb_param *p, int np, sqldb_stmt **out)
{
	struct pg *q = (struct pg *)db;
	char num[SQLDB_MAX_PARAMS][32];
	const char *values[SQLDB_MAX_PARAMS];
	int lengths[SQLDB_MAX_PARAMS], formats[SQLDB_MAX_PARAMS];
	Oid types[SQLDB_MAX_PARAMS];
	struct pg_stmt *s = NULL;
	PGresult *res;
	char *text;
	int n = 0, rc;

	if (q->need_reset)
		return SQLDB_LOST;   /* as in pg_exec */
	if ((text = pg_numbered(sql, np, &n)) == NULL)
		return sqldb_fail(db, SQLDB_ERROR, "out of memory");
	if (n != np) {
		free(text);
		return sqldb_fail(db, SQLDB_ERROR, "%d placeholders for %d parameters", n, np);
	}
	for (int i = 0; i < np; i++) {
		lengths[i] = 0;
		formats[i] = 0;
		switch (p[i].type) {
		case 'i':
			snprintf(num[i], sizeof(num[i]), "%" PRId64, p[i].i);
			values[i] = num[i];
			types[i] = OID_INT8;
			break;
		case 'd':
			snprintf(num[i], sizeof(num[i]), "%.17g", p[i].d);
			values[i] = num[i];
			types[i] = OID_FLOAT8;
			break;
		case 't':
			values[i] = p[i].t;
			types[i] = OID_TEXT;
			break;
		default:
			/* A NULL value would be SQL NULL, not the empty blob. */
			values[i] = p[i].b ? (const char *)p[i].b : "";
			lengths[i] = (int)p[i].blen;
			formats[i] = 1;
			types[i] = OID_BYTEA;
		}
	}
	res = bounded(q, PQsendQueryParams(q->c, text, np, types, values, lengths, formats, 0));
	free(text);
	if (res == NULL)
		return SQLDB_LOST;
	if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK) {
		if ((s = calloc(1, sizeof(*s))) == NULL) {
			PQclear(res);
			return sqldb_fail(db, SQLDB_ERROR, "out of memory");
		}
		s->base.db = db;
		s->res = res;
		s->row = -1;
		s->nrows = PQntuples(res);
		q->changes = s->nrows;
		*out = &s->base;
		return SQLDB_OK;
	}
	if ((rc = pg_outcome(q, res)) != SQLDB_OK)
		return rc;
	/* A statement without rows: an empty result to step through. */
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return sqldb_fail(db, SQLDB_ERROR, "out of memory");
	s->base.db = db;
	s->row = -1;
	*out = &s->base;
	return SQLDB_OK;
}

static int
pg_step(sqldb_stmt *st)
{
	struct pg_stmt *s = (struct pg_stmt *)st;

	if (s->row + 1 >= s->nrows) {
		s->row = s->nrows;
		return SQLDB_DONE;
	}
	s->row++;
	return SQLDB_ROW;
}

static const char *
pg_col_text(sqldb_stmt *st, int col)
{
	struct pg_stmt *s = (struct pg_stmt *)st;

	if (s->res == NULL || s->row < 0 || s->row >= s->nrows || col >= PQnfields(s->res) ||
	    PQgetisnull(s->res, s->row, col))
		return NULL;
	return PQgetvalue(s->res, s->row, col);
}

static int64_t
pg_col_int64(sqldb_stmt *st, int col)
{
	const char *v = pg_col_text(st, col);

	return v ? strtoll(v, NULL, 10) : 0;
}

static double
pg_col_double(sqldb_stmt *st, int col)
{
	const char *v = pg_col_text(st, col);

	return v ? strtod(v, NULL) : 0;
}

static const void *
pg_col_blob(sqldb_stmt *st, int col, size_t *len)
{
	struct pg_stmt *s = (struct pg_stmt *)st;
	const char *v = pg_col_text(st, col);

	PQfreemem(s->blob);
	s->blob = NULL;
	*len = 0;
	if (v == NULL || (s->blob = PQunescapeBytea((const unsigned char *)v, len)) == NULL) {
		*len = 0;
		return NULL;
	}
	return s->blob;
}

static void
pg_finalize(sqldb_stmt *st)
{
	struct pg_stmt *s = (struct pg_stmt *)st;

	PQfreemem(s->blob);
	PQclear(s->res);
	free(s);
}

static int64_t
pg_changes(sqldb *db)
{
	return ((struct pg *)db)->changes;
}

static int
pg_ready(sqldb *db)
{
	struct pg *q = (struct pg *)db;
	int slot;

	if (PQstatus(q->c) == CONNECTION_OK && !q->need_reset)
		return CF_OK;
	/* A server known not to answer: one attempt a second, not a
	 * connect_timeout for every call queued on the store. The second
	 * counts from the end of the last attempt: one that took the whole
	 * connect_timeout must not let each caller queued behind it in for
	 * another. */
	if (iowatch_given_up(SQLDB_PG_WATCH) && q->tried_ms != 0 &&
	    cf_mono_ms() - q->tried_ms < 1000)
		return cf_error(CF_E_UNAVAILABLE, "state store: PostgreSQL does not answer (a "
				"statement was given up after its bound): %s", db->err);
	slot = iowatch_begin_remote(SQLDB_PG_WATCH);
	PQreset(q->c);
	iowatch_end(slot, PQstatus(q->c) == CONNECTION_OK ? IOWATCH_OK : IOWATCH_FAILED);
	q->tried_ms = cf_mono_ms();
	atomic_store(&db->session_pid, PQstatus(q->c) == CONNECTION_OK ? PQbackendPID(q->c) : 0);
	if (PQstatus(q->c) != CONNECTION_OK) {
		q->need_reset = 1;
		sqldb_fail(db, SQLDB_LOST, "%s", PQerrorMessage(q->c));
		return cf_error(CF_E_UNAVAILABLE, "state store: %s: %s",
				sqldb_pg_connect_failed(q->c), db->err);
	}
	q->need_reset = 0;
	q->hung = 0;
	if (lock_timeout_set(q) != SQLDB_OK) {
		q->need_reset = 1;   /* not used without its lock_timeout: reset again */
		return cf_error(CF_E_UNAVAILABLE, "state store: PostgreSQL: %s", db->err);
	}
	cf_log_info("state store: reconnected to PostgreSQL");
	return CF_OK;
}

static int
pg_begin(sqldb *db, int write, int wait_ms)
{
	struct pg *q = (struct pg *)db;
	const char *sql = SQLDB_WRITES(write) ? "BEGIN"
					      : "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
	unsigned lock = SQLDB_YIELDS(write) ? SQLDB_YIELD_LOCK_MS : lock_ms(q);
	int rc = pg_exec(db, sql);

	/* A connection that died while idle (the server restarted between two
	 * calls) is only found here; nothing of this call was sent yet. */
	if (rc == SQLDB_LOST && !q->hung && pg_ready(db) == CF_OK)
		rc = pg_exec(db, sql);
	q->yielding = 0;
	/* 0 would be no timeout at all: what is left is at least 1 ms. */
	if (wait_ms >= 0 && (unsigned)wait_ms < lock)
		lock = wait_ms > 0 ? (unsigned)wait_ms : 1;
	if (rc == SQLDB_OK && lock != lock_ms(q)) {
		char set[48];

		/* SET LOCAL: the session's own lock_timeout again after it. The
		 * refusal's text says the reload's short wait, or the call's whole
		 * one (lock_ms: the connection's turn included). */
		snprintf(set, sizeof(set), "SET LOCAL lock_timeout = %u", lock);
		if ((rc = pg_exec(db, set)) == SQLDB_OK)
			q->yielding = SQLDB_YIELDS(write);
		else
			pg_rollback(db);   /* no transaction left open on a failed begin */
	}
	return rc;
}

static int
pg_commit(sqldb *db)
{
	struct pg *q = (struct pg *)db;
	int rc;

	/* COMMIT of a transaction an earlier statement aborted answers
	 * "ROLLBACK", with no error: no commit, whoever went on after the
	 * failure. */
	if (!q->need_reset && PQstatus(q->c) == CONNECTION_OK &&
	    PQtransactionStatus(q->c) == PQTRANS_INERROR)
		return sqldb_fail(db, SQLDB_ERROR, "the transaction was aborted by a statement "
				  "that failed in it; nothing was committed");
	rc = pg_exec(db, "COMMIT");
	if (rc == SQLDB_LOST)
		atomic_store(&db->commit_unknown, 1);
	return rc;
}

static void
pg_rollback(sqldb *db)
{
	struct pg *q = (struct pg *)db;

	if (!q->need_reset && PQstatus(q->c) == CONNECTION_OK &&
	    PQtransactionStatus(q->c) != PQTRANS_IDLE)
		PQclear(bounded(q, PQsendQuery(q->c, "ROLLBACK")));
}

static int
pg_notify(sqldb *db, const char *channel, const char *payload)
{
	return sqldb_run(db, "SELECT pg_notify(?, ?)", "tt", channel, payload);
}

static int
pg_check(sqldb *db)
{
	(void)db;
	return CF_OK;
}

/* SELECT 1 within the state's bound: health must not hang with the server.
 * A server that did not answer leaves the connection to be reset. */
static int
probe(struct pg *q)
{
	PGresult *res;
	int late;

	if (q->need_reset)
		return 0;
	res = sqldb_pg_collect(q->c, PQsendQuery(q->c, "SELECT 1"), iowatch_limit(), 1,
			       &late);
	if (res == NULL) {
		pg_lost(q, late ? "PostgreSQL did not answer a health probe in time" :
			PQerrorMessage(q->c));
		return 0;
	}
	return pg_outcome(q, res) == SQLDB_OK;
}

static int
pg_healthy(sqldb *db)
{
	struct pg *q = (struct pg *)db;
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (now.tv_sec - q->checked.tv_sec < 1 && q->checked.tv_sec != 0)
		return q->up;
	q->checked = now;
	q->up = pg_ready(db) == CF_OK && probe(q);
	return q->up;
}

static const struct sqldb_ops pg_ops = {
	.close = pg_close,
	.exec = pg_exec,
	.query = pg_query,
	.step = pg_step,
	.col_int64 = pg_col_int64,
	.col_double = pg_col_double,
	.col_text = pg_col_text,
	.col_blob = pg_col_blob,
	.finalize = pg_finalize,
	.changes = pg_changes,
	.begin = pg_begin,
	.commit = pg_commit,
	.rollback = pg_rollback,
	.notify = pg_notify,
	.ready = pg_ready,
	.check = pg_check,
	.healthy = pg_healthy,
};

int
sqldb_pg_await(PGconn *c, unsigned ms)
{
	uint64_t t0 = cf_mono_ns();   /* ns: whole ms of two readings overstate by up to 1 */
	int64_t left;

	while (PQisBusy(c)) {
		struct pollfd p = { .fd = PQsocket(c), .events = POLLIN };
		int n;

		left = (int64_t)ms - (int64_t)((cf_mono_ns() - t0) / 1000000u);
		if (p.fd < 0)
			return 1;       /* PQgetResult reports the broken connection */
		if (left <= 0)
			return 0;
		if ((n = poll(&p, 1, (int)left)) < 0 && errno != EINTR)
			return 1;
		if (n > 0 && PQconsumeInput(c) == 0)
			return 1;       /* likewise */
	}
	return 1;
}

PGresult *
sqldb_pg_collect(PGconn *c, int sent, unsigned ms, int watch, int *timed_out)
{
	PGresult *last = NULL, *res;
	uint64_t t0;
	int slot;

	*timed_out = 0;
	if (sent != 1)
		return NULL;
	t0 = cf_mono_ns();
	slot = watch ? iowatch_begin_remote_within(SQLDB_PG_WATCH, ms) : -1;
	for (;;) {
		int64_t spent = (int64_t)((cf_mono_ns() - t0) / 1000000u);

		if (spent >= (int64_t)ms || !sqldb_pg_await(c, ms - (unsigned)spent)) {
			PQclear(last);
			*timed_out = 1;
			iowatch_end(slot, IOWATCH_FAILED);
			return NULL;
		}
		if ((res = PQgetResult(c)) == NULL)
			break;
		PQclear(last);
		last = res;
	}
	/* Answered, even with an error: the server is not the one hanging. */
	iowatch_end(slot, PQstatus(c) == CONNECTION_OK ? IOWATCH_OK : IOWATCH_FAILED);
	return last;
}

PGconn *
sqldb_pg_connect(const char *conninfo, const char *what)
{
	static const char *const keys[] = {
		"connect_timeout", "tcp_user_timeout", "keepalives_idle", "keepalives_interval",
		"keepalives_count", "options", "application_name", "dbname", NULL,
	};
	/* The server's side of a TCP connection too: a replica whose host
	 * vanished (power, partition) must lose its advisory locks (the lease,
	 * its incarnation) in seconds, not after the kernel's two hours of
	 * silence. Ignored on a Unix socket; a dsn's own options win. */
	static const char server_side[] = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=3 "
					  "-c tcp_keepalives_count=3 -c tcp_user_timeout=10000";
	char app[64];
	const char *vals[] = { "5", "10000", "10", "3", "3", server_side, app, conninfo, NULL };

	snprintf(app, sizeof(app), "cofferd %s", what);
	return PQconnectdbParams(keys, vals, 1);
}

const char *
sqldb_pg_connect_failed(PGconn *c)
{
	const char *why = PQerrorMessage(c);

	/* A password asked for means the server answered; so does an error
	 * it sent, which libpq quotes with its severity (in the server's
	 * language: a translated one reads as unreachable, the reason follows). */
	if (PQconnectionNeedsPassword(c) || PQconnectionUsedPassword(c) ||
	    (why != NULL && strstr(why, "FATAL:") != NULL))
		return "PostgreSQL refused the connection";
	/* connect_timeout ran out: a server that took the connection (a Unix
	 * socket's backlog) and never answered is the one that hangs, as a
	 * host that drops every packet is (the same wording as a statement's). */
	if (why != NULL && strstr(why, "timeout expired") != NULL)
		return "PostgreSQL does not answer";
	return "PostgreSQL unreachable";
}

int
sqldb_open_pg(const char *conninfo, unsigned wait_ms, sqldb **out)
{
	PQconninfoOption *opts = NULL;
	struct pg *q;
	char *why = NULL;
	int r;

	/* libpq's reason quotes the part it could not read, which may be the
	 * password (a stray '%' in it, a missing ']'): not repeated into the
	 * log. Read once here, before anything connects with it. */
	/* (A value that is no connection string, libpq takes as a database
	 * name: nothing to read.) */
	if ((strchr(conninfo, '=') != NULL || strncmp(conninfo, "postgres://", 11) == 0 ||
	     strncmp(conninfo, "postgresql://", 13) == 0) &&
	    (opts = PQconninfoParse(conninfo, &why)) == NULL) {
		if (why == NULL)
			return cf_nomem();
		OPENSSL_cleanse(why, strlen(why));   /* it may quote the password */
		PQfreemem(why);
		return cf_error(CF_E_CONFIG, "[state] dsn is not a connection string libpq can "
				"read (its reason is not shown: it may quote the password); check "
				"the quoting, and in a URI the %%-escapes and brackets");
	}
	if (opts != NULL) {
		/* The parsed values hold the password: wiped, not just freed. */
		for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
			if (o->val != NULL)
				OPENSSL_cleanse(o->val, strlen(o->val));
		PQconninfoFree(opts);
	}
	if ((q = calloc(1, sizeof(*q))) == NULL)
		return cf_nomem();
	q->base.ops = &pg_ops;
	q->base.backend = SQLDB_POSTGRESQL;
	q->up = 1;
	q->wait_ms = wait_ms;
	q->base.lock_wait_ms = lock_ms(q);
	if ((q->c = sqldb_pg_connect(conninfo, "store")) == NULL) {
		free(q);
		return cf_nomem();
	}
	PQsetNoticeProcessor(q->c, pg_quiet, NULL);
	if (PQstatus(q->c) != CONNECTION_OK) {
		sqldb_fail(&q->base, SQLDB_LOST, "%s", PQerrorMessage(q->c));
		r = cf_error(CF_E_UNAVAILABLE, "state store: %s: %s",
			     sqldb_pg_connect_failed(q->c), q->base.err);
		pg_close(&q->base);
		return r;
	}
	if (lock_timeout_set(q) != SQLDB_OK) {
		r = cf_error(CF_E_UNAVAILABLE, "state store: PostgreSQL: %s", q->base.err);
		pg_close(&q->base);
		return r;
	}
	atomic_store(&q->base.session_pid, PQbackendPID(q->c));
	*out = &q->base;
	return CF_OK;
}
