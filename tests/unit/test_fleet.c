/*
 * The fleet's coordination (daemon/fleet.h) against a real throw-away
 * PostgreSQL server: the registry change lock excludes another replica and
 * is released when its holder goes; exactly one replica holds the lease and
 * it moves when the holder goes; liveness of an incarnation; notifications;
 * PostgreSQL stopped and started again.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

#include <CUnit/Basic.h>
#include <libpq-fe.h>

#include "cf_status.h"
#include "cf_test_pg.h"
#include "change_mu.h"
#include "fleet.h"

static struct cf_test_pg pg;

static double
now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + t.tv_nsec / 1e9;
}

/* Wait up to `secs` for *flag (read by fn) to become want. */
static int
wait_for(int (*fn)(fleet *), fleet *f, int want, double secs)
{
	double until = now_s() + secs;

	while (now_s() < until) {
		if (fn(f) == want)
			return 1;
		usleep(20 * 1000);
	}
	return fn(f) == want;
}

struct locker {
	fleet *f;
	unsigned turn_ms;       /* waited for its turn before (change_mu_waited) */
	atomic_int got;
	int r;
	double took;            /* s */
	char why[300];
};

static void *
take_lock(void *arg)
{
	struct locker *l = arg;
	double t0 = now_s();

	change_mu_waited(l->turn_ms);
	l->r = fleet_lock(l->f);
	change_mu_wait_over();
	l->took = now_s() - t0;
	snprintf(l->why, sizeof(l->why), "%s", l->r == CF_OK ? "" : cf_error_detail());
	atomic_store(&l->got, 1);
	if (l->r == CF_OK)
		fleet_unlock(l->f);
	return NULL;
}

static void
test_lock_excludes_other_replica(void)
{
	fleet *a = NULL, *b = NULL;
	struct locker l;
	pthread_t t;

	CU_ASSERT_FATAL(fleet_open(pg.dsn, "a", &a) == CF_OK);
	CU_ASSERT_FATAL(fleet_open(pg.dsn, "b", &b) == CF_OK);
	CU_ASSERT_FATAL(fleet_lock(a) == CF_OK);
	memset(&l, 0, sizeof(l));
	l.f = b;
	pthread_create(&t, NULL, take_lock, &l);
	usleep(300 * 1000);
	CU_ASSERT_EQUAL(atomic_load(&l.got), 0);   /* b waits while a holds it */
	fleet_unlock(a);
	pthread_join(t, NULL);
	CU_ASSERT_EQUAL(l.r, CF_OK);

	fleet_close(a);

	/* A replica killed while holding it (its process gone without
	 * unlocking) releases it with its connection. */
	{
		int fds[2];
		char c;
		pid_t pid;

		CU_ASSERT_FATAL(pipe(fds) == 0);
		if ((pid = fork()) == 0) {
			fleet *k = NULL;

			if (fleet_open(pg.dsn, "killed", &k) == CF_OK && fleet_lock(k) == CF_OK)
				(void)!write(fds[1], "L", 1);
			pause();
			_exit(0);
		}
		CU_ASSERT_FATAL(read(fds[0], &c, 1) == 1);
		memset(&l, 0, sizeof(l));
		l.f = b;
		pthread_create(&t, NULL, take_lock, &l);
		usleep(300 * 1000);
		CU_ASSERT_EQUAL(atomic_load(&l.got), 0);   /* held by the child */
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		pthread_join(t, NULL);
		CU_ASSERT_EQUAL(l.r, CF_OK);
		close(fds[0]);
		close(fds[1]);
	}
	fleet_close(b);
}

static void
test_one_leader_and_it_moves(void)
{
	fleet *a = NULL, *b = NULL;

	CU_ASSERT_FATAL(fleet_open(pg.dsn, "a", &a) == CF_OK);
	CU_ASSERT_FATAL(fleet_open(pg.dsn, "b", &b) == CF_OK);
	CU_ASSERT_FATAL(fleet_start(a, NULL) == CF_OK);
	CU_ASSERT_FATAL(wait_for(fleet_leader, a, 1, 3));
	CU_ASSERT_FATAL(fleet_start(b, NULL) == CF_OK);
	sleep(2);   /* b tried at least once */
	CU_ASSERT_EQUAL(fleet_leader(a) + fleet_leader(b), 1);
	CU_ASSERT_EQUAL(fleet_leader(b), 0);
	fleet_close(a);
	CU_ASSERT(wait_for(fleet_leader, b, 1, 3));
	fleet_close(b);
}

static void
test_alive(void)
{
	fleet *a = NULL, *b = NULL;
	char inc[200];
	int alive = -1;

	CU_ASSERT_FATAL(fleet_open(pg.dsn, "a", &a) == CF_OK);
	CU_ASSERT_FATAL(fleet_open(pg.dsn, "b", &b) == CF_OK);
	snprintf(inc, sizeof(inc), "%s", fleet_incarnation(b));
	CU_ASSERT(strncmp(inc, "b/", 2) == 0);
	CU_ASSERT(fleet_alive(a, inc, &alive) == CF_OK && alive == 1);
	/* Asking does not take it away: still alive on a second look. */
	CU_ASSERT(fleet_alive(a, inc, &alive) == CF_OK && alive == 1);
	CU_ASSERT(fleet_alive(a, fleet_incarnation(a), &alive) == CF_OK && alive == 1);
	fleet_close(b);
	/* The server lets the lock go once its backend has seen the close. */
	for (int i = 0; i < 100 && fleet_alive(a, inc, &alive) == CF_OK && alive; i++)
		usleep(10 * 1000);
	CU_ASSERT(fleet_alive(a, inc, &alive) == CF_OK && alive == 0);
	CU_ASSERT(fleet_alive(a, "never/1/00", &alive) == CF_OK && alive == 0);
	fleet_close(a);
}

/* A replica's hooks, as cofferd's (replica_changed, replica_resync): what a
 * notification could not reload is left stale for the next resync. */
struct heard {
	pthread_mutex_t mu;
	char kind[16], name[128];
	int n, sender;
	int busy;       /* answer the next notification CF_E_BUSY */
	int stale;      /* left to resync */
	int fail;       /* resyncs of something stale fail (a held table) */
	int retries;    /* resyncs of what a notification left */
	int fulls;      /* resyncs of everything */
	int failures;   /* resyncs that failed */
};

static int
on_change(const char *kind, const char *name, int sender, void *arg)
{
	struct heard *h = arg;

	pthread_mutex_lock(&h->mu);
	snprintf(h->kind, sizeof(h->kind), "%s", kind);
	snprintf(h->name, sizeof(h->name), "%s", name);
	h->sender = sender;
	h->n++;
	if (h->busy) {
		h->busy = 0;
		h->stale = 1;
		pthread_mutex_unlock(&h->mu);
		return cf_error(CF_E_BUSY, "busy (test)");
	}
	pthread_mutex_unlock(&h->mu);
	return CF_OK;
}

static int
on_resync(int all, void *arg)
{
	struct heard *h = arg;
	int r = CF_OK;

	pthread_mutex_lock(&h->mu);
	if (all) {
		h->fulls++;
		h->stale = 1;
	} else if (h->stale) {
		h->retries++;
	}
	if (h->stale && h->fail) {
		h->failures++;
		r = cf_error(CF_E_UNAVAILABLE, "held (test)");
	} else {
		h->stale = 0;
	}
	pthread_mutex_unlock(&h->mu);
	return r;
}

static int
heard_n(struct heard *h, int *retries, int *fulls)
{
	int n;

	pthread_mutex_lock(&h->mu);
	n = h->n;
	if (retries != NULL)
		*retries = h->retries;
	if (fulls != NULL)
		*fulls = h->fulls;
	pthread_mutex_unlock(&h->mu);
	return n;
}

static void
notify(const char *payload)
{
	PGconn *c = PQconnectdb(pg.dsn);
	const char *p[1] = { payload };
	PGresult *r = PQexecParams(c, "SELECT pg_notify('coffer', $1)", 1, NULL, p, NULL, NULL,
				   0);

	CU_ASSERT(PQresultStatus(r) == PGRES_TUPLES_OK);
	PQclear(r);
	PQfinish(c);
}

static void
test_notifications_and_outage(void)
{
	struct heard h;
	struct fleet_hooks hooks = { on_change, on_resync, NULL, &h };
	fleet *a = NULL;
	double t0, until;
	int rs = 0, full = 0, r;

	memset(&h, 0, sizeof(h));
	pthread_mutex_init(&h.mu, NULL);
	CU_ASSERT_FATAL(fleet_open(pg.dsn, "a", &a) == CF_OK);
	CU_ASSERT_FATAL(fleet_start(a, &hooks) == CF_OK);
	t0 = now_s();
	notify("key payments.v1");
	while (heard_n(&h, NULL, NULL) == 0 && now_s() < t0 + 2)
		usleep(1000);
	printf("\n    notification delivered in %.1f ms\n", (now_s() - t0) * 1e3);
	CU_ASSERT_EQUAL(heard_n(&h, NULL, NULL), 1);
	CU_ASSERT_STRING_EQUAL(h.kind, "key");
	CU_ASSERT_STRING_EQUAL(h.name, "payments.v1");
	CU_ASSERT(h.sender > 0);   /* the backend that sent it (a replica's own: skipped) */
	notify("malformed-without-a-space");   /* ignored, not a crash */
	usleep(300 * 1000);
	CU_ASSERT_EQUAL(heard_n(&h, NULL, NULL), 1);
	/* A hook that could not apply a change (busy): what it left is
	 * reloaded within the thread's next passes, not 30 s later, and only
	 * that (before, everything). */
	pthread_mutex_lock(&h.mu);
	h.busy = 1;
	pthread_mutex_unlock(&h.mu);
	t0 = now_s();
	notify("apikey ak_0123");
	until = t0 + 2;
	while (now_s() < until && (heard_n(&h, &rs, NULL), rs == 0))
		usleep(5 * 1000);
	printf("    a failed hook was followed by a reload in %.0f ms\n", (now_s() - t0) * 1e3);
	heard_n(&h, &rs, &full);
	CU_ASSERT_EQUAL(rs, 1);
	CU_ASSERT_EQUAL(full, 0);
	CU_ASSERT(now_s() - t0 < 1.0);
	pthread_mutex_lock(&h.mu);
	h.retries = h.fulls = 0;
	pthread_mutex_unlock(&h.mu);
	rs = full = 0;

	/* PostgreSQL goes away: health says so, the lock is refused by name. */
	CU_ASSERT_FATAL(cf_test_pg_stop(&pg) == 0);
	CU_ASSERT(wait_for(fleet_healthy, a, 0, 3));
	CU_ASSERT_EQUAL(fleet_leader(a), 0);
	r = fleet_lock(a);
	CU_ASSERT_EQUAL(r, CF_E_UNAVAILABLE);
	CU_ASSERT(strstr(cf_error_detail(), "PostgreSQL") != NULL);
	printf("    lock while PostgreSQL is down: %s\n", cf_error_detail());
	if (r == CF_OK)
		fleet_unlock(a);
	/* Back: reconnected and reloaded without reopening anything. */
	CU_ASSERT_FATAL(cf_test_pg_start(&pg) == 0);
	CU_ASSERT(wait_for(fleet_healthy, a, 1, 5));
	until = now_s() + 3;
	while (now_s() < until && (heard_n(&h, NULL, &full), full == 0))
		usleep(20 * 1000);
	CU_ASSERT(full >= 1);
	CU_ASSERT(wait_for(fleet_leader, a, 1, 3));
	CU_ASSERT_EQUAL(fleet_lock(a), CF_OK);
	fleet_unlock(a);
	fleet_close(a);
	pthread_mutex_destroy(&h.mu);
}

/* The periodic reload and the change lock's wait, shortened for the test
 * (fleet_set_bounds: 4 s and 3 s, not 30 s each) and run side by side:
 *  - a reload that fails (a table another session holds) is tried again
 *    once a second, the periodic reload of everything included: before,
 *    once that was due it was tried on every pass, five times a second
 *    (found by a review: 13 tries in 4 s), each taking the store's
 *    connection for its lock wait;
 *  - a change waits the lock's wait in all, its turn behind another change
 *    of its own process included (an operator holds the lock): before,
 *    that turn came first, then the whole wait of its own (58.5 s measured
 *    by a client written from the documents alone). */
#define RESYNC_MS 4000
#define LOCK_WAIT_MS 3000
static void
test_long_waits_bounded(void)
{
	struct heard h;
	struct fleet_hooks hooks = { on_change, on_resync, NULL, &h };
	fleet *a = NULL;
	struct locker first, second;
	pthread_t t1, t2;
	PGconn *op = PQconnectdb(pg.dsn);
	PGresult *res;
	double t0;
	int failures, full;

	memset(&h, 0, sizeof(h));
	pthread_mutex_init(&h.mu, NULL);
	h.fail = 1;
	CU_ASSERT_FATAL(fleet_open(pg.dsn, "a", &a) == CF_OK);
	fleet_set_bounds(a, RESYNC_MS, LOCK_WAIT_MS);
	CU_ASSERT_FATAL(fleet_start(a, &hooks) == CF_OK);
	t0 = now_s();
	/* An operator's session holds the change lock (a backup). */
	res = PQexec(op, "SELECT pg_advisory_lock(1131374182, 1)");
	CU_ASSERT_FATAL(PQresultStatus(res) == PGRES_TUPLES_OK);
	PQclear(res);
	memset(&first, 0, sizeof(first));
	memset(&second, 0, sizeof(second));
	first.f = second.f = a;
	pthread_create(&t1, NULL, take_lock, &first);
	/* A notification's reload left to resync, failing: once a second. */
	pthread_mutex_lock(&h.mu);
	h.busy = 1;
	pthread_mutex_unlock(&h.mu);
	notify("principal tester");
	usleep(1000 * 1000);
	pthread_create(&t2, NULL, take_lock, &second);
	usleep(1500 * 1000);
	pthread_mutex_lock(&h.mu);
	failures = h.failures;
	pthread_mutex_unlock(&h.mu);
	printf("\n    a failing reload: %d tries in 2.5 s\n", failures);
	CU_ASSERT(failures >= 2 && failures <= 3);
	/* Past the periodic reload's time, still failing. */
	while (now_s() < t0 + RESYNC_MS / 1e3 + 0.3)
		usleep(50 * 1000);
	pthread_mutex_lock(&h.mu);
	failures = h.failures;
	pthread_mutex_unlock(&h.mu);
	sleep(3);
	pthread_mutex_lock(&h.mu);
	failures = h.failures - failures;
	full = h.fulls;
	h.fail = 0;
	pthread_mutex_unlock(&h.mu);
	printf("    past the periodic reload: %d tries in 3 s (%d of everything)\n", failures,
	       full);
	CU_ASSERT(full == 1);
	CU_ASSERT(failures >= 2 && failures <= 4);

	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	printf("    the change lock held elsewhere: refused after %.1f s and, waiting behind "
	       "that, %.1f s: %s\n", first.took, second.took, second.why);
	CU_ASSERT_EQUAL(first.r, CF_E_UNAVAILABLE);
	CU_ASSERT_EQUAL(second.r, CF_E_UNAVAILABLE);
	CU_ASSERT(first.took >= LOCK_WAIT_MS / 1e3 - 0.1 && first.took < LOCK_WAIT_MS / 1e3 + 1);
	CU_ASSERT(second.took >= LOCK_WAIT_MS / 1e3 - 0.3 && second.took < LOCK_WAIT_MS / 1e3 + 1);
	CU_ASSERT_STRING_EQUAL(second.why, "fleet: waited 3 s for the registry's change lock, "
			       "which another change holds (on this or another replica, or an "
			       "operator's session: pg_advisory_lock(1131374182, 1)); retry");
	CU_ASSERT_STRING_EQUAL(first.why, second.why);
	/* A change that waited 2 s for its turn (its module's change mutex, the
	 * queue of changes) waits what is left of the bound: 1 s (before, 3 s
	 * more: 59.9 s in all measured from outside). */
	memset(&first, 0, sizeof(first));
	first.f = a;
	first.turn_ms = LOCK_WAIT_MS - 1000;
	take_lock(&first);
	printf("    after a turn of %.1f s: refused after %.1f s more\n", first.turn_ms / 1e3,
	       first.took);
	CU_ASSERT_EQUAL(first.r, CF_E_UNAVAILABLE);
	CU_ASSERT(first.took >= 0.9 && first.took < 1.5);
	CU_ASSERT_STRING_EQUAL(first.why, second.why);
	PQfinish(op);   /* the operator lets it go: the next change has it at once */
	t0 = now_s();
	CU_ASSERT(fleet_lock(a) == CF_OK);
	CU_ASSERT(now_s() - t0 < 1.0);
	fleet_unlock(a);
	fleet_close(a);
	pthread_mutex_destroy(&h.mu);
}

/* PostgreSQL restarts while the replica is idle: each connection it had is
 * cut, and learns it only at its next statement. The first liveness query
 * and the first lock after the restart still answer (one retry on a fresh
 * connection: both are safe to repeat). */
static void
test_first_calls_after_restart(void)
{
	fleet *a = NULL;
	int alive = -1;

	CU_ASSERT_FATAL(fleet_open(pg.dsn, "a", &a) == CF_OK);
	/* Each connection in use once (an incarnation nobody holds: not alive). */
	CU_ASSERT(fleet_alive(a, "never/1/00", &alive) == CF_OK && alive == 0);
	CU_ASSERT_EQUAL_FATAL(fleet_lock(a), CF_OK);
	fleet_unlock(a);
	CU_ASSERT_FATAL(cf_test_pg_stop(&pg) == 0);
	CU_ASSERT_FATAL(cf_test_pg_start(&pg) == 0);
	alive = -1;
	CU_ASSERT_EQUAL(fleet_alive(a, "never/1/00", &alive), CF_OK);
	if (alive != 0)
		printf("\n    liveness after the restart: %s\n", cf_error_detail());
	CU_ASSERT_EQUAL(alive, 0);
	CU_ASSERT_EQUAL(fleet_lock(a), CF_OK);
	fleet_unlock(a);
	fleet_close(a);
}

int
main(void)
{
	CU_pSuite s;
	unsigned failed;

	if (cf_test_pg_create(&pg, 0) != 0) {
		fprintf(stderr, "cannot start a PostgreSQL server for the test\n");
		return 1;
	}
	if (CU_initialize_registry() != CUE_SUCCESS)
		return 1;
	s = CU_add_suite("fleet", NULL, NULL);
	CU_add_test(s, "lock excludes another replica", test_lock_excludes_other_replica);
	CU_add_test(s, "one leader, and it moves", test_one_leader_and_it_moves);
	CU_add_test(s, "liveness of an incarnation", test_alive);
	CU_add_test(s, "notifications and an outage", test_notifications_and_outage);
	CU_add_test(s, "the first calls after a restart answer", test_first_calls_after_restart);
	CU_add_test(s, "the periodic reload, and the change lock's bound",
		    test_long_waits_bounded);
	CU_basic_set_mode(CU_BRM_VERBOSE);
	CU_basic_run_tests();
	failed = CU_get_number_of_failures();
	CU_cleanup_registry();
	cf_test_pg_destroy(&pg);
	return failed ? 1 : 0;
}
