/*
 * test_nonces_pg — the replay record in PostgreSQL mode against a real
 * throw-away server (tests/support/cf_test_pg.c): two handles are two
 * replicas (each its own connections); a nonce accepted by one is refused by
 * the other, racing threads on both accept each nonce once, expired rows are
 * taken over and swept, a stopped server gives UNAVAILABLE (with its text)
 * and a restarted one works again through the same handles, and concurrent
 * calls share commits (the batch statistics).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <CUnit/CUnit.h>
#include <libpq-fe.h>

#include "cf_status.h"
#include "cf_test_pg.h"
#include "cf_test_token.h"
#include "nonces.h"

static struct cf_test_pg pg;
static nonces *ra, *rb;   /* replica A, replica B */

static void
cleanup(void)
{
	nonces_close(ra);
	nonces_close(rb);
	ra = rb = NULL;
	cf_test_pg_destroy(&pg);
}

static int
suite_init(void)
{
	atexit(cleanup);
	if (cf_test_pg_create(&pg, 0) != 0) {
		fprintf(stderr, "cannot start a PostgreSQL server (see /tmp/cfpg.*)\n");
		return -1;
	}
	if (nonces_open_pg(pg.dsn, 100000, &ra) != CF_OK ||
	    nonces_open_pg(pg.dsn, 100000, &rb) != CF_OK) {
		fprintf(stderr, "nonces_open_pg: %s\n", cf_error_detail());
		return -1;
	}
	return 0;
}

static int
suite_clean(void)
{
	cleanup();
	return 0;
}

/* One value from the server through a connection of the test's own. */
static long
sql_long(const char *q)
{
	PGconn *c = PQconnectdb(pg.dsn);
	PGresult *res = PQexec(c, q);
	long v = -1;

	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
		v = strtol(PQgetvalue(res, 0, 0), NULL, 10);
	else
		fprintf(stderr, "%s: %s", q, PQerrorMessage(c));
	PQclear(res);
	PQfinish(c);
	return v;
}

static void
test_two_replicas(void)
{
	uint64_t b0, i0, b1, i1;

	CU_ASSERT_EQUAL(nonces_use(ra, "key-1", "two-replicas-0001", 4000000000LL, 1000), CF_OK);
	CU_ASSERT_EQUAL(nonces_use(rb, "key-1", "two-replicas-0001", 4000000000LL, 1000),
			CF_E_EXISTS);
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), "nonce already used: every call needs a new one");
	CU_ASSERT_EQUAL(nonces_use(rb, "key-1", "two-replicas-0002", 4000000000LL, 1000), CF_OK);
	CU_ASSERT_EQUAL(nonces_use(ra, "key-1", "two-replicas-0002", 4000000000LL, 1000),
			CF_E_EXISTS);
	/* The same nonce in another scope is another nonce. */
	CU_ASSERT_EQUAL(nonces_use(rb, "key-2", "two-replicas-0001", 4000000000LL, 1000), CF_OK);
	/* A replay to the replica that accepted it is refused from its memory,
	 * without a round trip. */
	nonces_batch_stats(ra, &b0, &i0);
	CU_ASSERT_EQUAL(nonces_use(ra, "key-1", "two-replicas-0001", 4000000000LL, 1000),
			CF_E_EXISTS);
	nonces_batch_stats(ra, &b1, &i1);
	CU_ASSERT_EQUAL(b1, b0);
	CU_ASSERT_EQUAL(sql_long("SELECT count(*) FROM coffer_nonces"), 3);
	/* Each replica counts what it accepted. */
	CU_ASSERT_EQUAL(nonces_live(ra), 1);
	CU_ASSERT_EQUAL(nonces_live(rb), 2);
}

static int
accept_all(void *arg)
{
	(void)arg;
	return CF_OK;
}

static int
refuse_all(void *arg)
{
	(void)arg;
	return cf_error(CF_E_UNAUTHENTICATED, "bad signature (test)");
}

/* The freshness rule is nonces.c's, whatever the record. */
static void
test_check_rule(void)
{
	/* Real time: the record reads the clock again once it holds the claim. */
	int64_t t0 = (int64_t)time(NULL) - 10;
	struct nonce_claim c = { "key-3", "check-rule-00001", t0, 300, 30 };
	enum nonce_verdict v;

	CU_ASSERT_EQUAL(nonces_check(ra, &c, t0 + 400, accept_all, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_EXPIRED);
	CU_ASSERT_EQUAL(nonces_check(ra, &c, t0 - 100, accept_all, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_AHEAD);
	/* Not genuine: the nonce is not used up. */
	CU_ASSERT_EQUAL(nonces_check(rb, &c, t0 + 10, refuse_all, NULL, &v), CF_E_UNAUTHENTICATED);
	CU_ASSERT_EQUAL(nonces_check(rb, &c, t0 + 10, accept_all, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_FRESH);
	CU_ASSERT_EQUAL(nonces_check(ra, &c, t0 + 10, accept_all, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_REPLAYED);
	/* Kept until the timestamp has left the window: t0 + 300 + 1. */
	CU_ASSERT_EQUAL(sql_long("SELECT expires FROM coffer_nonces WHERE h = "
				 "substr(sha256('key-3'::bytea || '\\x00'::bytea || "
				 "'check-rule-00001'::bytea), 1, 16)"), t0 + 301);
}

#define RACE_NONCES 400
#define RACE_THREADS 8

struct racer {
	nonces *n;
	int id;
	int fresh[RACE_NONCES];
	int other;   /* results neither CF_OK nor CF_E_EXISTS */
};

static void *
race(void *arg)
{
	struct racer *w = arg;
	char nonce[40];

	for (int k = 0; k < RACE_NONCES; k++) {
		/* Each thread walks the nonces from its own starting point, so
		 * that both replicas' batches hold the same nonces in different
		 * orders. */
		int i = (k + w->id * 37) % RACE_NONCES;
		int r;

		snprintf(nonce, sizeof(nonce), "race-%05d", i);
		r = nonces_use(w->n, "race-key", nonce, 4000000000LL, 1000);
		if (r == CF_OK)
			w->fresh[i]++;
		else if (r != CF_E_EXISTS)
			w->other++;
	}
	return NULL;
}

static void
test_race(void)
{
	static struct racer w[2 * RACE_THREADS];
	pthread_t t[2 * RACE_THREADS];
	uint64_t ba0, ia0, bb0, ib0, ba, ia, bb, ib;
	int twice = 0, never = 0, other = 0;

	nonces_batch_stats(ra, &ba0, &ia0);
	nonces_batch_stats(rb, &bb0, &ib0);
	memset(w, 0, sizeof(w));
	for (int i = 0; i < 2 * RACE_THREADS; i++) {
		w[i].n = i % 2 ? rb : ra;
		w[i].id = i;
		CU_ASSERT_FATAL(pthread_create(&t[i], NULL, race, &w[i]) == 0);
	}
	for (int i = 0; i < 2 * RACE_THREADS; i++)
		pthread_join(t[i], NULL);
	for (int k = 0; k < RACE_NONCES; k++) {
		int sum = 0;

		for (int i = 0; i < 2 * RACE_THREADS; i++)
			sum += w[i].fresh[k];
		twice += sum > 1;
		never += sum == 0;
	}
	for (int i = 0; i < 2 * RACE_THREADS; i++)
		other += w[i].other;
	CU_ASSERT_EQUAL(twice, 0);
	CU_ASSERT_EQUAL(never, 0);
	CU_ASSERT_EQUAL(other, 0);
	CU_ASSERT_EQUAL(sql_long("SELECT count(*) FROM coffer_nonces WHERE expires = 4000000000"),
			3 + RACE_NONCES);
	/* Group commit: concurrent calls shared transactions. Only calls that
	 * reached the database count (a replica's own replays do not). */
	nonces_batch_stats(ra, &ba, &ia);
	nonces_batch_stats(rb, &bb, &ib);
	fprintf(stderr, "\n  race: A %llu calls in %llu batches, B %llu in %llu\n",
		(unsigned long long)(ia - ia0), (unsigned long long)(ba - ba0),
		(unsigned long long)(ib - ib0), (unsigned long long)(bb - bb0));
	CU_ASSERT(ba > ba0 && bb > bb0);
	CU_ASSERT(ia - ia0 > ba - ba0);
	CU_ASSERT(ib - ib0 > bb - bb0);
	CU_ASSERT((ia - ia0) + (ib - ib0) >= RACE_NONCES);
}

static void
test_expiry(void)
{
	CU_ASSERT_EQUAL(nonces_use(ra, "key-4", "short-lived-00001", 2000, 1000), CF_OK);
	CU_ASSERT_EQUAL(nonces_use(rb, "key-4", "short-lived-00001", 2000, 1999), CF_E_EXISTS);
	/* Expired (expires <= now): taken over, by either replica, once. */
	CU_ASSERT_EQUAL(nonces_use(rb, "key-4", "short-lived-00001", 3000, 2000), CF_OK);
	CU_ASSERT_EQUAL(nonces_use(ra, "key-4", "short-lived-00001", 3000, 2000), CF_E_EXISTS);
	CU_ASSERT_EQUAL(sql_long("SELECT expires FROM coffer_nonces WHERE h = "
				 "substr(sha256('key-4'::bytea || '\\x00'::bytea || "
				 "'short-lived-00001'::bytea), 1, 16)"), 3000);
	/* The sweep deletes expired rows only, in batches of 5,000. */
	for (int i = 0; i < 12000; i++) {
		char nonce[40];

		snprintf(nonce, sizeof(nonce), "sweep-%05d", i);
		if (nonces_use(i % 2 ? ra : rb, "key-5", nonce, 2500, 2000) != CF_OK) {
			CU_FAIL("a sweep nonce was refused");
			break;
		}
	}
	CU_ASSERT_EQUAL(sql_long("SELECT count(*) FROM coffer_nonces WHERE expires = 2500"), 12000);
	CU_ASSERT(nonces_live(ra) >= 6000);
	/* Not before 300 s past their expiry: a replica whose clock is up to
	 * that far behind the sweeper's still accepts their timestamps. */
	nonces_expire(ra, 2600);
	CU_ASSERT_EQUAL(sql_long("SELECT count(*) FROM coffer_nonces WHERE expires = 2500"), 12000);
	CU_ASSERT_EQUAL(nonces_use(rb, "key-5", "sweep-00007", 2500, 2000), CF_E_EXISTS);
	nonces_expire(ra, 2800);
	CU_ASSERT_EQUAL(sql_long("SELECT count(*) FROM coffer_nonces WHERE expires <= 2600"), 0);
	CU_ASSERT_EQUAL(sql_long("SELECT count(*) FROM coffer_nonces WHERE expires = 3000"), 1);
	CU_ASSERT_EQUAL(sql_long("SELECT count(*) FROM coffer_nonces WHERE expires = 4000000000"),
			3 + RACE_NONCES);
	/* A's memory let go of its expired ones too. */
	CU_ASSERT(nonces_live(ra) > 0 && nonces_live(ra) < 1000);
}

/* max_live and the scope's share are each replica's. */
static void
test_limits(void)
{
	nonces *small = NULL;

	CU_ASSERT_EQUAL_FATAL(nonces_open_pg(pg.dsn, 100, &small), CF_OK);
	nonces_set_scope_max(small, 3);
	for (int i = 0; i < 3; i++) {
		char nonce[40];

		snprintf(nonce, sizeof(nonce), "share-%05d", i);
		CU_ASSERT_EQUAL(nonces_use(small, "busy-key", nonce, 5000, 4000), CF_OK);
	}
	CU_ASSERT_EQUAL(nonces_use(small, "busy-key", "share-99999", 5000, 4000), CF_E_EXHAUSTED);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "requests.max_nonces_per_key = 3"));
	/* Another replica's share of the key is its own. */
	CU_ASSERT_EQUAL(nonces_use(ra, "busy-key", "share-99999", 5000, 4000), CF_OK);
	CU_ASSERT_EQUAL(nonces_use(small, "quiet-key", "share-99999", 5000, 4000), CF_OK);
	/* Once they expire the share is free again. */
	CU_ASSERT_EQUAL(nonces_use(small, "busy-key", "share-00004", 6000, 5000), CF_OK);
	nonces_close(small);
}

/* The window raised (nonces_set_window): the fleet keeps every row as long
 * as its largest window accepts the row's timestamp, lengthens the live
 * rows by the raise, and refuses timestamps whose rows may be swept. */
static long
row_of(const char *scope, const char *nonce)
{
	char q[300];

	snprintf(q, sizeof(q), "SELECT expires FROM coffer_nonces WHERE h = substr(sha256("
		 "'%s'::bytea || '\\x00'::bytea || '%s'::bytea), 1, 16)", scope, nonce);
	return sql_long(q);
}

static void
test_window_raised(void)
{
	int64_t t0 = (int64_t)time(NULL);
	struct nonce_claim c = { "key-7", "window-raise-0001", t0 - 4, 5, 1 };
	struct nonce_claim later = { "key-7", "window-raise-0002", t0, 600, 1 };
	struct nonce_claim old = { "key-7", "window-raise-0003", t0 - 400, 600, 1 };
	enum nonce_verdict v;

	CU_ASSERT_EQUAL_FATAL(nonces_set_window(ra, 5, t0), CF_OK);
	CU_ASSERT_EQUAL(nonces_check(ra, &c, t0, accept_all, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_FRESH);
	CU_ASSERT_EQUAL(row_of("key-7", "window-raise-0001"), t0 + 2);
	/* Raised to 600 s: the row kept until its timestamp leaves 600 s. */
	CU_ASSERT_EQUAL_FATAL(nonces_set_window(ra, 600, t0), CF_OK);
	CU_ASSERT_EQUAL(row_of("key-7", "window-raise-0001"), t0 + 597);
	CU_ASSERT_EQUAL_FATAL(nonces_set_window(rb, 600, t0), CF_OK);
	c.window = 600;
	CU_ASSERT_EQUAL(nonces_check(rb, &c, t0, accept_all, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_REPLAYED);
	/* Older than the old window was when it was raised: refused. */
	CU_ASSERT_EQUAL(nonces_check(rb, &old, t0, accept_all, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_BEFORE_RAISE);
	/* One replica back at 5 s: what it records is still kept for 600 s,
	 * the fleet's largest (the other may accept it). */
	CU_ASSERT_EQUAL_FATAL(nonces_set_window(ra, 5, t0), CF_OK);
	later.window = 5;
	CU_ASSERT_EQUAL(nonces_check(ra, &later, t0, accept_all, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_FRESH);
	CU_ASSERT_EQUAL(row_of("key-7", "window-raise-0002"), t0 + 601);
	later.window = 600;
	CU_ASSERT_EQUAL(nonces_check(rb, &later, t0, accept_all, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_REPLAYED);
}

static void
test_server_down(void)
{
	int64_t t0 = (int64_t)time(NULL);
	struct nonce_claim c = { "key-6", "down-check-00001", t0, 300, 30 };
	enum nonce_verdict v = NONCE_FRESH;
	const char *want = "nonce record: PostgreSQL unreachable: ";

	CU_ASSERT_EQUAL(nonces_use(ra, "key-6", "before-the-stop-1", 8000, 7000), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_test_pg_stop(&pg), 0);
	/* The first call after the stop finds its connection closed, the next
	 * ones find no server: UNAVAILABLE every time, with libpq's reason. */
	for (int i = 0; i < 3; i++) {
		CU_ASSERT_EQUAL(nonces_use(rb, "key-6", "during-the-stop-1", 8000, 7000),
				CF_E_UNAVAILABLE);
		CU_ASSERT_EQUAL(strncmp(cf_error_detail(), want, strlen(want)), 0);
		CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "/sock"));
		fprintf(stderr, "\n  %s", cf_error_detail());
	}
	CU_ASSERT_EQUAL(nonces_use(ra, "key-6", "during-the-stop-2", 8000, 7000), CF_E_UNAVAILABLE);
	CU_ASSERT_EQUAL(strncmp(cf_error_detail(), want, strlen(want)), 0);
	/* Neither fresh nor replayed: the rule passes the failure on. */
	CU_ASSERT_EQUAL(nonces_check(ra, &c, t0 + 10, accept_all, NULL, &v), CF_E_UNAVAILABLE);
	(void)v;   /* the status is the answer: no verdict */
	/* A nonce this replica accepted before is still refused from memory. */
	CU_ASSERT_EQUAL(nonces_use(ra, "key-6", "before-the-stop-1", 8000, 7000), CF_E_EXISTS);
	nonces_expire(rb, 7000);   /* logs, does not block or crash */
	/* A window that cannot be recorded is not taken: the caller keeps the
	 * old one (cofferd: SIGHUP keeps it, a start stops). */
	{
		static const char text[] = "nonce record: the window: PostgreSQL unreachable: ";

		CU_ASSERT_EQUAL(nonces_set_window(ra, 900, t0), CF_E_UNAVAILABLE);
		CU_ASSERT_EQUAL(strncmp(cf_error_detail(), text, sizeof(text) - 1), 0);
		fprintf(stderr, "\n  %s", cf_error_detail());
	}
	/* Back: the same handles reconnect by themselves. */
	CU_ASSERT_EQUAL_FATAL(cf_test_pg_start(&pg), 0);
	CU_ASSERT_EQUAL(nonces_use(rb, "key-6", "during-the-stop-1", 8000, 7000), CF_OK);
	CU_ASSERT_EQUAL(nonces_use(ra, "key-6", "during-the-stop-1", 8000, 7000), CF_E_EXISTS);
	CU_ASSERT_EQUAL(nonces_use(rb, "key-6", "before-the-stop-1", 8000, 7000), CF_E_EXISTS);
	CU_ASSERT_EQUAL(nonces_check(ra, &c, t0 + 10, accept_all, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_FRESH);
	nonces_expire(rb, 7000);
}

/* The record survives a crash of the server (a logged table): a nonce
 * accepted just before is refused after the recovery. */
static void
test_server_crash(void)
{
	CU_ASSERT_EQUAL(nonces_use(ra, "key-8", "before-a-crash-01", 9000, 8000), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_test_pg_crash(&pg), 0);
	CU_ASSERT_EQUAL_FATAL(cf_test_pg_start(&pg), 0);
	CU_ASSERT_EQUAL(sql_long("SELECT count(*) FROM pg_class WHERE relname = 'coffer_nonces' "
				 "AND relpersistence = 'p'"), 1);
	CU_ASSERT_EQUAL(nonces_use(rb, "key-8", "before-a-crash-01", 9000, 8000), CF_E_EXISTS);
	CU_ASSERT_EQUAL(nonces_use(rb, "key-8", "after-a-crash-001", 9000, 8000), CF_OK);
}

/* A server that is not there: the open says so. A URI is a connection
 * string too. */
static void
test_open_unreachable(void)
{
	char dsn[200];
	nonces *n = NULL;

	snprintf(dsn, sizeof(dsn), "postgresql:///postgres?host=%s/sock&connect_timeout=2", pg.dir);
	CU_ASSERT_EQUAL_FATAL(nonces_open_pg(dsn, 100, &n), CF_OK);
	CU_ASSERT_EQUAL(nonces_use(n, "key-7", "through-a-uri-001", 8000, 7000), CF_OK);
	CU_ASSERT_EQUAL(nonces_use(ra, "key-7", "through-a-uri-001", 8000, 7000), CF_E_EXISTS);
	nonces_close(n);
	n = NULL;

	snprintf(dsn, sizeof(dsn), "host=%s/nowhere dbname=postgres", pg.dir);
	CU_ASSERT_EQUAL(nonces_open_pg(dsn, 100, &n), CF_E_UNAVAILABLE);
	CU_ASSERT_PTR_NULL(n);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "nonce record: PostgreSQL unreachable: "));
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "nowhere"));

	/* Reached, and refused: said as such. */
	snprintf(dsn, sizeof(dsn), "host=%s/sock dbname=no_such_db", pg.dir);
	CU_ASSERT_EQUAL(nonces_open_pg(dsn, 100, &n), CF_E_UNAVAILABLE);
	CU_ASSERT_PTR_NULL(n);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(),
				      "nonce record: PostgreSQL refused the connection: "));
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "\"no_such_db\" does not exist"));
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "two replicas: accepted by one, refused by the other", test_two_replicas },
		{ "the freshness rule on the shared record", test_check_rule },
		{ "8 threads x 2 replicas race: each nonce once, batched", test_race },
		{ "expired rows taken over, swept in batches", test_expiry },
		{ "limits per replica", test_limits },
		{ "the window raised: rows kept longer, older timestamps refused",
		  test_window_raised },
		{ "server stopped: UNAVAILABLE; started: works again", test_server_down },
		{ "the record survives a crash of the server", test_server_crash },
		{ "open: a URI; no server: UNAVAILABLE", test_open_unreachable },
		{ NULL, NULL },
	};

	return cf_test_main("nonces_pg", suite_init, suite_clean, cases);
}
