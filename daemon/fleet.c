/* Coordination of replicas through PostgreSQL (fleet.h). */
#include "fleet.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "cf_hex.h"
#include "cf_log.h"
#include "cf_status.h"
#include "cf_time.h"
#include "change_mu.h"
#include "sqldb.h"
#include "sqldb_pg.h"
#include "store.h"

/* Two-key advisory locks in Coffer's own class ("Coff"); incarnations use
 * the one-key form (a hash of the id), which PostgreSQL keeps apart. */
#define LOCK_CLASS "1131374182"
#define LOCK_REGISTRY LOCK_CLASS ", 1"
#define LOCK_LEASE LOCK_CLASS ", 2"
/* How often every replica asks for the lease. Well under a restart's time
 * (about 0.5 s): a killed holder that comes back at once must not find the
 * lease still free, as if nobody else could take it. */
#define LEASE_TRY_MS 200

struct fleet {
	char dsn[4096];
	char incarnation[160];
	struct fleet_hooks hooks;
	int started;

	PGconn *listen;                 /* the thread's: LISTEN, liveness, lease */
	pthread_t thread;
	int thread_up;
	atomic_int stop, healthy, leader;
	atomic_ulong notes;

	unsigned resync_ms;             /* FLEET_RESYNC_S (fleet_set_bounds) */
	unsigned lock_wait_ms;          /* FLEET_LOCK_WAIT_S (fleet_set_bounds) */

	pthread_mutex_t lock_mu;        /* held from fleet_lock to fleet_unlock */
	PGconn *lock;
	_Atomic uint64_t lock_since;    /* taken, or a change committed under it (ms); 0: free */

	pthread_mutex_t query_mu;       /* fleet_alive */
	PGconn *query;
};

/* libpq's multi-line text on one line, for messages and logs. */
static const char *
oneline(const char *s, char *buf, size_t len)
{
	snprintf(buf, len, "%s", s != NULL ? s : "");
	cf_oneline(buf);
	return buf;
}

/* A new connection in *out; CF_E_UNAVAILABLE with libpq's reason. */
static int
connect_db(const char *dsn, PGconn **out)
{
	PGconn *c = sqldb_pg_connect(dsn, "fleet");
	char msg[512];
	int r;

	*out = NULL;
	if (c == NULL)
		return cf_nomem();
	if (PQstatus(c) != CONNECTION_OK) {
		r = cf_error(CF_E_UNAVAILABLE, "fleet: %s: %s", sqldb_pg_connect_failed(c),
			     oneline(PQerrorMessage(c), msg, sizeof(msg)));
		PQfinish(c);
		return r;
	}
	*out = c;
	return CF_OK;
}

/* A statement waits at most this for the server: longer than the lock wait
 * statement_timeout bounds, which a server that hangs never enforces. */
#define FLEET_WAIT_MS ((FLEET_LOCK_WAIT_S + 5) * 1000)

/* A connection whose statement was not answered in time: closed under
 * libpq, which then sees it lost, so that the usual reconnection follows. */
static void
drop(PGconn *c)
{
	if (PQsocket(c) >= 0)
		(void)shutdown(PQsocket(c), SHUT_RDWR);
	(void)PQconsumeInput(c);
}

/* The change lock not had within its wait. UNAVAILABLE, which clients
 * retry (DEADLINE_EXCEEDED before: a caller's own deadline to them), naming
 * every kind of holder: an operator's session takes it for backups
 * (deploy/fleet/README.md). */
static int
lock_not_had(const fleet *f)
{
	return cf_error(CF_E_UNAVAILABLE, "fleet: waited %u s for the registry's change lock, "
			"which another change holds (on this or another replica, or an operator's "
			"session: pg_advisory_lock(" LOCK_REGISTRY ")); retry", f->lock_wait_ms / 1000);
}

/* One statement; CF_OK, or CF_E_UNAVAILABLE with the server's text. With
 * `value`, the first column of the first row ("t"/"f" for booleans). */
static int
run(PGconn *c, const char *sql, const char *param, char *value, size_t len)
{
	const char *params[1] = { param };
	int late;
	PGresult *res = sqldb_pg_collect(c, PQsendQueryParams(c, sql, param ? 1 : 0, NULL,
							      param ? params : NULL, NULL, NULL,
							      0), FLEET_WAIT_MS, 0, &late);
	ExecStatusType st = PQresultStatus(res);
	char msg[512];
	int r = CF_OK;

	if (late) {
		drop(c);
		return cf_error(CF_E_UNAVAILABLE, "fleet: PostgreSQL did not answer in %d ms (a "
				"server that hangs: stopped, or its disk)", FLEET_WAIT_MS);
	}
	if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
		const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		/* 57014: the statement timed out (fleet_lock's wait: its text). */
		r = code && strcmp(code, "57014") == 0 ?
			cf_error(CF_E_TIMEOUT, "fleet: PostgreSQL: statement timeout") :
			cf_error(CF_E_UNAVAILABLE, "fleet: PostgreSQL: %s",
				 oneline(PQerrorMessage(c), msg, sizeof(msg)));
	} else if (value != NULL) {
		snprintf(value, len, "%s", PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "");
	}
	PQclear(res);
	return r;
}

/* The thread's connection: listening, holding this incarnation's lock. */
static int
listen_connect(fleet *f)
{
	int r;

	if ((r = connect_db(f->dsn, &f->listen)) != CF_OK)
		return r;
	if ((r = run(f->listen, "LISTEN " STORE_NOTIFY_CHANNEL, NULL, NULL, 0)) != CF_OK)
		goto fail;
	/* Tried, not waited for: after a lost connection the server may hold
	 * the old session's lock until it notices that session is gone. */
	for (;;) {
		char v[8];

		if ((r = run(f->listen, "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
			     f->incarnation, v, sizeof(v))) != CF_OK)
			goto fail;
		if (strcmp(v, "t") == 0)
			break;
		if (atomic_load(&f->stop)) {
			r = cf_error(CF_E_UNAVAILABLE, "fleet: stopping");
			goto fail;
		}
		usleep(100 * 1000);
	}
	atomic_store(&f->healthy, 1);
	return CF_OK;
fail:
	PQfinish(f->listen);
	f->listen = NULL;
	return r;
}

static void
listen_lost(fleet *f, const char *why)
{
	if (atomic_load(&f->leader))
		cf_log_warn("fleet: lost PostgreSQL (%s); no longer doing the scheduled work", why);
	else
		cf_log_warn("fleet: lost PostgreSQL (%s); reconnecting", why);
	atomic_store(&f->leader, 0);
	atomic_store(&f->healthy, 0);
	PQfinish(f->listen);
	f->listen = NULL;
}

static void
deliver(fleet *f)
{
	PGnotify *n;

	while ((n = PQnotifies(f->listen)) != NULL) {
		char kind[16] = "", *sp = strchr(n->extra, ' ');

		if (sp != NULL && (size_t)(sp - n->extra) < sizeof(kind)) {
			memcpy(kind, n->extra, (size_t)(sp - n->extra));
			atomic_fetch_add(&f->notes, 1);
			if (f->hooks.changed != NULL)
				(void)f->hooks.changed(kind, sp + 1, n->be_pid, f->hooks.arg);
			cf_error_clear();
		}
		PQfreemem(n);
	}
}

/* Take the lease if nobody holds it. */
static void
try_lead(fleet *f)
{
	const char *why = f->hooks.unfit != NULL ? f->hooks.unfit(f->hooks.arg) : NULL;
	char v[8];

	/* The leader asks too (a statement that changes nothing): a connection
	 * gone dead without a word is noticed here, and the lease let go. */
	if (atomic_load(&f->leader)) {
		/* Holding the lease without doing the work would stop it for the
		 * whole fleet: let it go (a failed unlock loses the connection,
		 * which lets it go too). */
		if (why != NULL) {
			atomic_store(&f->leader, 0);
			cf_log_warn("fleet: this replica (%s) leaves the scheduled work to another: "
				    "%s", f->incarnation, why);
			if (run(f->listen, "SELECT pg_advisory_unlock(" LOCK_LEASE ")", NULL, NULL,
				0) != CF_OK)
				listen_lost(f, cf_error_detail());
			return;
		}
		if (run(f->listen, "SELECT 1", NULL, NULL, 0) != CF_OK)
			listen_lost(f, cf_error_detail());
		return;
	}
	if (why != NULL)
		return;
	if (run(f->listen, "SELECT pg_try_advisory_lock(" LOCK_LEASE ")", NULL, v, sizeof(v)) !=
	    CF_OK)
		return;
	if (strcmp(v, "t") == 0) {
		atomic_store(&f->leader, 1);
		cf_log_info("fleet: this replica (%s) now does the scheduled work", f->incarnation);
	}
}

static void *
listen_thread(void *arg)
{
	fleet *f = arg;
	uint64_t next_resync = cf_mono_ms() + f->resync_ms, last_try = 0;
	uint64_t retry_at = 0;   /* a failed reload: not tried again before */
	int all = 0;             /* reload everything on the next try */
	unsigned failed = 0;     /* reloads failed in a row */
	char failure[CF_ERROR_DETAIL_MAX] = "";   /* the last one's text, logged once */

	while (!atomic_load(&f->stop)) {
		struct pollfd p;
		uint64_t now_ms;

		if (f->listen == NULL) {
			if (listen_connect(f) != CF_OK) {
				cf_error_clear();
				usleep(250 * 1000);
				continue;
			}
			cf_log_info("fleet: PostgreSQL reachable again; reloading the registry");
			all = 1;
		}
		if ((now_ms = cf_mono_ms()) - last_try >= LEASE_TRY_MS) {
			last_try = now_ms;
			try_lead(f);
			cf_error_clear();
			if (f->listen == NULL)
				continue;
		}
		if (now_ms >= next_resync) {
			next_resync = now_ms + f->resync_ms;
			all = 1;
		}
		/* Listening before reloading: a change committed in between is
		 * both read and announced, never neither. What the hooks could
		 * not reload they keep and are asked for again; a reload that
		 * failed (not one that met a change in progress) only a second
		 * later, the periodic one included: each try takes the store's
		 * connection. */
		if (now_ms >= retry_at && f->hooks.resync != NULL) {
			int r = f->hooks.resync(all, f->hooks.arg);

			all = 0;
			if (r == CF_OK) {
				if (failed > 0)
					cf_log_info("fleet: reloaded the registry after %u failed "
						    "tries", failed);
				failed = 0;
				failure[0] = '\0';
			} else if (r != CF_E_BUSY) {
				failed++;
				retry_at = cf_mono_ms() + FLEET_RETRY_MS;
				if (strcmp(failure, cf_error_detail()) != 0) {
					snprintf(failure, sizeof(failure), "%s", cf_error_detail());
					cf_log_warn("fleet: reloading the registry: %s; trying again "
						    "every %d ms", failure, FLEET_RETRY_MS);
				}
			}
			cf_error_clear();
		}
		p.fd = PQsocket(f->listen);
		p.events = POLLIN;
		p.revents = 0;
		if (p.fd < 0) {
			listen_lost(f, "no socket");
			continue;
		}
		if (poll(&p, 1, 200) > 0 && PQconsumeInput(f->listen) == 0) {
			char msg[512];

			listen_lost(f, oneline(PQerrorMessage(f->listen), msg, sizeof(msg)));
			continue;
		}
		if (PQstatus(f->listen) != CONNECTION_OK) {
			listen_lost(f, "connection closed");
			continue;
		}
		deliver(f);
	}
	return NULL;
}

int
fleet_open(const char *dsn, const char *replica, fleet **out)
{
	uint8_t rnd[8];
	char hex[17];
	fleet *f;
	int r;

	if ((f = calloc(1, sizeof(*f))) == NULL)
		return cf_nomem();
	pthread_mutex_init(&f->lock_mu, NULL);
	pthread_mutex_init(&f->query_mu, NULL);
	f->resync_ms = FLEET_RESYNC_S * 1000u;
	f->lock_wait_ms = FLEET_LOCK_WAIT_S * 1000u;
	snprintf(f->dsn, sizeof(f->dsn), "%s", dsn);
	if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
		fleet_close(f);
		return cf_error(CF_E_INTERNAL, "random number generator failed");
	}
	cf_hex_encode(rnd, sizeof(rnd), hex);
	snprintf(f->incarnation, sizeof(f->incarnation), "%s/%ld/%s", replica, (long)getpid(),
		 hex);
	if ((r = listen_connect(f)) != CF_OK) {
		fleet_close(f);
		return r;
	}
	*out = f;
	return CF_OK;
}

void
fleet_set_bounds(fleet *f, unsigned resync_ms, unsigned lock_wait_ms)
{
	f->resync_ms = resync_ms;
	f->lock_wait_ms = lock_wait_ms;
}

int
fleet_start(fleet *f, const struct fleet_hooks *hooks)
{
	int e;

	if (hooks != NULL)
		f->hooks = *hooks;
	if ((e = pthread_create(&f->thread, NULL, listen_thread, f)) != 0)
		return cf_error(CF_E_INTERNAL, "fleet: cannot start the notification thread: %s",
				strerror(e));
	f->thread_up = 1;
	return CF_OK;
}

void
fleet_close(fleet *f)
{
	if (f == NULL)
		return;
	atomic_store(&f->stop, 1);
	if (f->thread_up)
		pthread_join(f->thread, NULL);
	/* Closing the connections releases the lease and the incarnation lock. */
	PQfinish(f->listen);
	PQfinish(f->lock);
	PQfinish(f->query);
	pthread_mutex_destroy(&f->lock_mu);
	pthread_mutex_destroy(&f->query_mu);
	/* The connection string may hold a password ([state] dsn_file). */
	OPENSSL_cleanse(f->dsn, sizeof(f->dsn));
	free(f);
}

const char *
fleet_incarnation(const fleet *f)
{
	return f->incarnation;
}

int
fleet_leader(fleet *f)
{
	return f != NULL && atomic_load(&f->leader);
}

int
fleet_healthy(fleet *f)
{
	return f != NULL && atomic_load(&f->healthy);
}

int
fleet_healthy_cb(void *f)
{
	return fleet_healthy(f);
}

unsigned long
fleet_notifications(fleet *f)
{
	return atomic_load(&f->notes);
}

/* A working connection in *c (made or remade), for the lock or query use. */
static int
ready(fleet *f, PGconn **c)
{
	char sql[64];
	int r;

	if (*c != NULL && PQstatus(*c) == CONNECTION_OK)
		return CF_OK;
	PQfinish(*c);
	if ((r = connect_db(f->dsn, c)) != CF_OK)
		return r;
	snprintf(sql, sizeof(sql), "SET statement_timeout = %u", f->lock_wait_ms);
	/* Without it a lock wait could last for ever: no connection then. */
	if ((r = run(*c, sql, NULL, NULL, 0)) != CF_OK) {
		PQfinish(*c);
		*c = NULL;
	}
	return r;
}

/* run() on *c made ready; once more on a fresh connection when the one it
 * had was lost (a PostgreSQL restart cuts every idle connection, and the
 * first statement after it is the one that finds out). Only for statements
 * safe to send twice. */
static int
run_ready(fleet *f, PGconn **c, const char *sql, const char *param, char *value, size_t len)
{
	int r = ready(f, c);

	if (r == CF_OK)
		r = run(*c, sql, param, value, len);
	if (r != CF_OK && *c != NULL && PQstatus(*c) != CONNECTION_OK &&
	    (r = ready(f, c)) == CF_OK)
		r = run(*c, sql, param, value, len);
	return r;
}

int
fleet_lock(void *arg)
{
	fleet *f = arg;
	uint64_t t0 = cf_mono_ms(), waited = change_mu_waited_ms();
	struct timespec until;
	char sql[64];
	int r;

	/* One bound for the whole wait, this process's turns included: another
	 * change here (the scheduled work's) may itself be waiting for the
	 * lock, and the change waited for its module's change mutex or in the
	 * queue of changes first (change_mu.h). Before, a change waited for
	 * those, then 30 s of its own (58.5 and 59.9 s measured from outside). */
	if (waited + 100 >= f->lock_wait_ms)
		return lock_not_had(f);
	cf_deadline_in(&until, (unsigned)(f->lock_wait_ms - waited));
	if (cf_mutex_lock_until(&f->lock_mu, &until) != 0)
		return lock_not_had(f);
	waited += cf_mono_ms() - t0;
	if (waited + 100 >= f->lock_wait_ms) {
		r = lock_not_had(f);
	} else {
		/* What is left of the bound bounds the lock's statement, set each
		 * time (only the lock and its release run on this connection; the
		 * SET also finds a connection a restart cut, and makes a new one). */
		snprintf(sql, sizeof(sql), "SET statement_timeout = %llu",
			 (unsigned long long)(f->lock_wait_ms - waited));
		if ((r = run_ready(f, &f->lock, sql, NULL, NULL, 0)) == CF_OK)
			r = run(f->lock, "SELECT pg_advisory_lock(" LOCK_REGISTRY ")", NULL, NULL, 0);
		if (r == CF_E_TIMEOUT)   /* that statement_timeout */
			r = lock_not_had(f);
	}
	if (r != CF_OK) {
		pthread_mutex_unlock(&f->lock_mu);
	} else {
		atomic_store(&f->lock_since, cf_mono_ms());
		change_mu_waited(cf_mono_ms() - t0);   /* the store's transactions count it */
	}
	return r;
}

void
fleet_lock_touch(void *arg)
{
	fleet *f = arg;

	/* Only the lock's holder commits under it: no race with the unlock. */
	if (atomic_load(&f->lock_since) != 0)
		atomic_store(&f->lock_since, cf_mono_ms());
}

uint64_t
fleet_lock_held_ms(fleet *f)
{
	uint64_t since = f != NULL ? atomic_load(&f->lock_since) : 0;

	return since != 0 ? cf_mono_ms() - since : 0;
}

void
fleet_unlock(void *arg)
{
	fleet *f = arg;
	int late;

	atomic_store(&f->lock_since, 0);
	/* On a lost connection the lock went with it. Not through run(): the
	 * thread's error detail is the change's own outcome, kept for its
	 * caller. */
	PQclear(sqldb_pg_collect(f->lock, PQsendQuery(f->lock, "SELECT pg_advisory_unlock("
						      LOCK_REGISTRY ")"), FLEET_WAIT_MS, 0, &late));
	if (late)
		drop(f->lock);
	pthread_mutex_unlock(&f->lock_mu);
}

int
fleet_alive(fleet *f, const char *incarnation, int *alive)
{
	char v[8];
	int r;

	if (strcmp(incarnation, f->incarnation) == 0) {
		*alive = 1;
		return CF_OK;
	}
	pthread_mutex_lock(&f->query_mu);
	/* Taken (and let go at the statement's end) only if nobody holds it. */
	r = run_ready(f, &f->query, "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))",
		      incarnation, v, sizeof(v));
	pthread_mutex_unlock(&f->query_mu);
	if (r == CF_OK)
		*alive = strcmp(v, "t") != 0;
	return r;
}
