/*
 * test_store — the state store (daemon/store.h) on both backends: every case
 * that is not about one engine's nature runs on SQLite and on a real,
 * throw-away PostgreSQL server (tests/support/pg_server.sh). Round trips of
 * every record, idempotency claims (a race of two connections: exactly one
 * wins) and takeovers, intents' owners, per-replica audit outbox and anchor,
 * refusal of a newer schema; on SQLite the migration of a schema-8 file; on
 * PostgreSQL change notifications (LISTEN on a second connection) and
 * reconnection after the server was stopped and started again.
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <libpq-fe.h>
#include <sqlite3.h>

#include "cf_audit_verify.h"
#include "cf_secret_file.h"
#include "cf_status.h"
#include "cf_test_token.h"
#include "config.h"
#include "sqldb.h"
#include "sqldb_pg.h"
#include "store.h"

static char base[64];          /* this run's temporary directory */
static char pgdir[128];        /* the server's directory (pg_server.sh DIR) */
static int pg_up;
static unsigned nstores;

static int
pg_server(const char *cmd)
{
	char *const argv[] = { (char *)COFFER_PG_SERVER, (char *)cmd, pgdir, NULL };

	return cf_test_run(argv);
}

static int
suite_init(void)
{
	snprintf(base, sizeof(base), "/tmp/coffer-store-XXXXXX");
	if (mkdtemp(base) == NULL || chmod(base, 0755) != 0)
		return -1;
	snprintf(pgdir, sizeof(pgdir), "%s/pg", base);
	if (pg_server("start") != 0) {
		fprintf(stderr, "test_store: cannot start a PostgreSQL server in %s\n", pgdir);
		return -1;
	}
	pg_up = 1;
	return 0;
}

static int
suite_clean(void)
{
	char *const rm[] = { "/bin/rm", "-rf", base, NULL };

	if (pg_up)
		(void)pg_server("stop");
	return cf_test_run(rm) == 0 ? 0 : -1;
}

/* Where a store's state is: SQLite, a directory; PostgreSQL, a conninfo. */
struct where {
	enum store_backend b;
	char at[300];
};

static PGconn *
pg_admin(const char *dbname)
{
	char dsn[300];
	PGconn *c;

	snprintf(dsn, sizeof(dsn), "host=%s/sock dbname=%s", pgdir, dbname);
	c = PQconnectdb(dsn);
	CU_ASSERT_FATAL(PQstatus(c) == CONNECTION_OK);
	return c;
}

/* Somewhere new for a store of backend b. */
static void
fresh_where(enum store_backend b, struct where *w)
{
	unsigned n = ++nstores;

	w->b = b;
	if (b == STORE_SQLITE) {
		snprintf(w->at, sizeof(w->at), "%s/s%u", base, n);
		CU_ASSERT_FATAL(mkdir(w->at, 0700) == 0);
	} else {
		PGconn *c = pg_admin("postgres");
		char sql[64];
		PGresult *res;

		snprintf(sql, sizeof(sql), "CREATE DATABASE store_%u", n);
		res = PQexec(c, sql);
		CU_ASSERT_FATAL(PQresultStatus(res) == PGRES_COMMAND_OK);
		PQclear(res);
		PQfinish(c);
		snprintf(w->at, sizeof(w->at), "host=%s/sock dbname=store_%u", pgdir, n);
	}
}

static int
open_at(const struct where *w, const char *replica, const char *owner, store **out)
{
	struct store_options o = { .backend = w->b, .replica = replica, .owner = owner };

	if (w->b == STORE_SQLITE)
		o.dir = w->at;
	else
		o.dsn = w->at;
	return store_open_with(&o, out);
}

/* SQL run behind the store's back. */
static void
raw_sql(const struct where *w, const char *sql)
{
	if (w->b == STORE_SQLITE) {
		char db[400];
		sqlite3 *h = NULL;
		char *err = NULL;

		snprintf(db, sizeof(db), "%s/coffer.db", w->at);
		CU_ASSERT_FATAL(sqlite3_open(db, &h) == SQLITE_OK);
		if (sqlite3_exec(h, sql, NULL, NULL, &err) != SQLITE_OK)
			fprintf(stderr, "raw_sql: %s\n", err);
		CU_ASSERT_FATAL(err == NULL);
		sqlite3_close(h);
	} else {
		PGconn *c = PQconnectdb(w->at);
		PGresult *res = PQexec(c, sql);

		if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
			fprintf(stderr, "raw_sql: %s\n", PQerrorMessage(c));
		CU_ASSERT_FATAL(PQresultStatus(res) == PGRES_COMMAND_OK ||
				PQresultStatus(res) == PGRES_TUPLES_OK);
		PQclear(res);
		PQfinish(c);
	}
}

/* The first value of the first row of sql on a PostgreSQL store ("" if none). */
static void
pg_value(const struct where *w, const char *sql, char *out, size_t len)
{
	PGconn *c = PQconnectdb(w->at);
	PGresult *res = PQexec(c, sql);

	CU_ASSERT_FATAL(PQresultStatus(res) == PGRES_TUPLES_OK);
	snprintf(out, len, "%s", PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "");
	PQclear(res);
	PQfinish(c);
}

#define STR_(x) #x
#define STR(x) STR_(x)

/* ---- round trips ---- */

static int
copy_key(const struct store_key *k, void *arg)
{
	struct store_key *out = arg;

	*out = *k;
	out->versions = malloc(k->nversions * sizeof(*k->versions));
	memcpy(out->versions, k->versions, k->nversions * sizeof(*k->versions));
	return CF_OK;
}

static int
copy_principal(const struct store_principal *p, void *arg)
{
	struct store_principal *out = arg;

	*out = *p;
	out->grants = malloc(p->ngrants * sizeof(*p->grants) + 1);
	memcpy(out->grants, p->grants, p->ngrants * sizeof(*p->grants));
	out->limits = malloc(p->nlimits * sizeof(*p->limits) + 1);
	memcpy(out->limits, p->limits, p->nlimits * sizeof(*p->limits));
	return CF_OK;
}

static int
copy_apikey(const struct store_apikey *k, void *arg)
{
	*(struct store_apikey *)arg = *k;
	return CF_OK;
}

static int
collect_names(const char *name, void *arg)
{
	strcat(arg, name);
	strcat(arg, ";");
	return CF_OK;
}

static void
roundtrip(enum store_backend b)
{
	struct where w;
	store *s = NULL;
	struct store_key k = { .name = "alpha", .type = CF_KEY_EC_P256, .allowed_ops = 6,
			       .created = 100, .rotation_period = 10, .next_rotation = 110 };
	struct store_key got = { 0 };
	uint8_t id1[STORE_CKAID_LEN] = { 1, 2, 3 }, id2[STORE_CKAID_LEN] = { 9, 8, 7 };
	uint32_t uid = 1000, gid = 50;
	struct store_grant g = { .pattern = "alpha*", .ops = 3 };
	struct store_limit l = { .op = 0, .rate = 2.5, .burst = 10 };
	struct store_principal p = { .name = "svc", .created = 5, .nuids = 1, .ngids = 1,
				     .grants = &g, .ngrants = 1, .limits = &l, .nlimits = 1 };
	struct store_principal pgot = { 0 };
	struct store_apikey ak = { .id = "ak_000000000000000000000001", .principal = "svc",
				   .created = 7, .next_generation = 2, .nsecrets = 1,
				   .secrets = { { .generation = 1, .created = 7 } } };
	struct store_apikey akgot = { 0 };
	struct store_dropped dropped;
	static const uint8_t resp[] = { 0, 1, 2, 0, 255 };
	struct store_idem r = { .key = "idem-1", .uid = 42, .method = "/m", .done = 1,
				.status = CF_E_EXISTS, .message = "m", .created = 1,
				.request_id = "rid", .owner = "inc-1" };
	struct store_idem rg;
	char names[256] = "";

	p.uids[0] = uid;
	p.gids[0] = gid;
	fresh_where(b, &w);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "r1", NULL, &s), CF_OK);
	CU_ASSERT_EQUAL(store_backend(s), b);
	CU_ASSERT(store_healthy(s));

	/* Keys, versions, lifecycle. */
	CU_ASSERT_EQUAL(store_key_create(s, &k, id1, 0), CF_OK);
	CU_ASSERT_EQUAL(store_key_create(s, &k, id1, 0), CF_E_EXISTS);
	CU_ASSERT_EQUAL(store_version_add(s, "alpha", 2, id2, 200, 300, 0), CF_OK);
	CU_ASSERT_EQUAL(store_key_get(s, "alpha", copy_key, &got), CF_OK);
	CU_ASSERT(got.primary == 2 && got.nversions == 2 && got.next_rotation == 300 &&
		  got.allowed_ops == 6 && got.rotation_period == 10 && got.created == 100);
	CU_ASSERT(got.nversions == 2 && memcmp(got.versions[1].ckaid, id2, sizeof(id2)) == 0 &&
		  got.versions[1].created == 200 && got.versions[0].state == STORE_ENABLED);
	CU_ASSERT_EQUAL(store_key_get(s, "nope", copy_key, &got), CF_E_NOT_FOUND);
	got.versions[0].state = STORE_DISABLED;
	got.versions[0].prior = STORE_ENABLED;
	got.versions[0].destroy_time = 77;
	got.min_verify = 2;
	CU_ASSERT_EQUAL(store_key_save(s, &got, 1, 0), CF_OK);
	free(got.versions);
	memset(&got, 0, sizeof(got));
	CU_ASSERT_EQUAL(store_load(s, copy_key, &got), CF_OK);
	CU_ASSERT(got.nversions == 2 && got.versions[0].state == STORE_DISABLED &&
		  got.versions[0].destroy_time == 77 && got.min_verify == 2);
	free(got.versions);

	/* Principals: ids, grants, limits (a double). */
	CU_ASSERT_EQUAL(store_principal_put(s, &p, 1), CF_OK);
	CU_ASSERT_EQUAL(store_principal_put(s, &p, 1), CF_E_EXISTS);
	snprintf(p.name, sizeof(p.name), "other");
	CU_ASSERT_EQUAL(store_principal_put(s, &p, 1), CF_E_EXISTS);   /* uid 1000 is taken */
	snprintf(p.name, sizeof(p.name), "svc");
	CU_ASSERT_EQUAL(store_principals_load(s, copy_principal, &pgot), CF_OK);
	CU_ASSERT(strcmp(pgot.name, "svc") == 0 && pgot.nuids == 1 && pgot.uids[0] == 1000 &&
		  pgot.ngids == 1 && pgot.gids[0] == 50 && pgot.ngrants == 1 &&
		  strcmp(pgot.grants[0].pattern, "alpha*") == 0 && pgot.grants[0].ops == 3 &&
		  pgot.nlimits == 1 && pgot.limits[0].rate == 2.5 && pgot.limits[0].burst == 10);
	free(pgot.grants);
	free(pgot.limits);

	/* API keys and the principals that must sign. */
	CU_ASSERT_EQUAL(store_apikey_put(s, &ak, 1, 1, 0), CF_OK);
	CU_ASSERT_EQUAL(store_apikey_put(s, &ak, 1, 1, 0), CF_E_EXISTS);
	CU_ASSERT_EQUAL(store_apikeys_load(s, copy_apikey, &akgot), CF_OK);
	CU_ASSERT(strcmp(akgot.id, ak.id) == 0 && akgot.nsecrets == 1 &&
		  akgot.secrets[0].generation == 1 && akgot.next_generation == 2);
	CU_ASSERT_EQUAL(store_signed_load(s, collect_names, names), CF_OK);
	CU_ASSERT_STRING_EQUAL(names, "svc;");
	CU_ASSERT_EQUAL(store_signed_set(s, "svc", 0), CF_OK);
	names[0] = '\0';
	CU_ASSERT_EQUAL(store_signed_load(s, collect_names, names), CF_OK);
	CU_ASSERT_STRING_EQUAL(names, "");
	/* Its deletion lists the secrets that went, for their objects. */
	CU_ASSERT_EQUAL(store_principal_delete(s, "svc", 9, &dropped), CF_OK);
	CU_ASSERT(dropped.n == 1 && dropped.total == 1 &&
		  strcmp(dropped.s[0].id, ak.id) == 0 && dropped.s[0].generation == 1);
	CU_ASSERT_EQUAL(store_principal_delete(s, "svc", 0, NULL), CF_E_NOT_FOUND);
	/* A change read from memory before the deletion writes nothing back:
	 * the key stays revoked, without secrets; nor is a flag set for a
	 * principal gone. */
	ak.next_generation = 3;
	CU_ASSERT_EQUAL(store_apikey_put(s, &ak, 0, 2, 0), CF_E_PRECONDITION);
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), "API key ak_000000000000000000000001 was "
			       "revoked; create a new one");
	memset(&akgot, 0, sizeof(akgot));
	CU_ASSERT_EQUAL(store_apikeys_load(s, copy_apikey, &akgot), CF_OK);
	CU_ASSERT(akgot.revoked == 9 && akgot.nsecrets == 0 && akgot.next_generation == 2);
	CU_ASSERT_EQUAL(store_signed_set(s, "svc", 1), CF_E_NOT_FOUND);
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), "no principal svc");

	/* Idempotency records: binary response with NUL bytes, owner. */
	memset(r.fingerprint, 0xab, sizeof(r.fingerprint));
	r.response = (uint8_t *)resp;
	r.response_len = sizeof(resp);
	CU_ASSERT_EQUAL(store_idem_put(s, &r), CF_OK);
	CU_ASSERT_EQUAL(store_idem_get(s, "idem-1", 42, &rg), CF_OK);
	CU_ASSERT(rg.response_len == sizeof(resp) && rg.response != NULL &&
		  memcmp(rg.response, resp, sizeof(resp)) == 0);
	CU_ASSERT(rg.done == 1 && rg.status == CF_E_EXISTS && strcmp(rg.owner, "inc-1") == 0 &&
		  strcmp(rg.request_id, "rid") == 0 && rg.fingerprint[31] == 0xab);
	free(rg.response);
	r.response = NULL;
	r.response_len = 0;
	CU_ASSERT_EQUAL(store_idem_put(s, &r), CF_OK);            /* replaces */
	CU_ASSERT_EQUAL(store_idem_get(s, "idem-1", 42, &rg), CF_OK);
	CU_ASSERT(rg.response == NULL && rg.response_len == 0);
	CU_ASSERT_EQUAL(store_idem_get(s, "idem-1", 43, &rg), CF_E_NOT_FOUND);
	CU_ASSERT_EQUAL(store_idem_expire(s, 2), CF_OK);          /* done, created 1 < 2 */
	CU_ASSERT_EQUAL(store_idem_get(s, "idem-1", 42, &rg), CF_E_NOT_FOUND);
	/* Settling and releasing a pending record: only by its owner, only
	 * while pending (a release also only while nothing was committed). */
	r.done = 0;
	CU_ASSERT_EQUAL(store_idem_put(s, &r), CF_OK);
	CU_ASSERT_EQUAL(store_idem_release(s, "idem-1", 42, "inc-2"), CF_E_EXISTS);
	CU_ASSERT(strstr(cf_error_detail(), "no longer a pending one of inc-2") != NULL);
	r.done = 1;
	r.status = CF_E_PRECONDITION;
	CU_ASSERT_EQUAL(store_idem_settle(s, &r, "inc-2"), CF_E_EXISTS);
	CU_ASSERT_EQUAL(store_idem_settle(s, &r, "inc-1"), CF_OK);
	CU_ASSERT_EQUAL(store_idem_get(s, "idem-1", 42, &rg), CF_OK);
	CU_ASSERT(rg.done == 1 && rg.status == CF_E_PRECONDITION);
	free(rg.response);
	CU_ASSERT_EQUAL(store_idem_settle(s, &r, "inc-1"), CF_E_EXISTS);   /* done already */
	CU_ASSERT_EQUAL(store_idem_release(s, "idem-1", 42, "inc-1"), CF_E_EXISTS);
	r.done = 0;
	CU_ASSERT_EQUAL(store_idem_put(s, &r), CF_OK);
	CU_ASSERT_EQUAL(store_idem_release(s, "idem-1", 42, "inc-1"), CF_OK);
	CU_ASSERT_EQUAL(store_idem_get(s, "idem-1", 42, &rg), CF_E_NOT_FOUND);
	/* Adopting a dead owner's record (committed, never answered): only
	 * from that owner, only while not done; the new owner then settles it. */
	r.done = 0;
	r.committed = 1;
	CU_ASSERT_EQUAL(store_idem_put(s, &r), CF_OK);
	CU_ASSERT_EQUAL(store_idem_adopt(s, "idem-1", 42, "inc-2", "inc-3"), CF_E_EXISTS);
	CU_ASSERT_EQUAL(store_idem_adopt(s, "idem-1", 42, "inc-1", "inc-3"), CF_OK);
	CU_ASSERT_EQUAL(store_idem_get(s, "idem-1", 42, &rg), CF_OK);
	CU_ASSERT(strcmp(rg.owner, "inc-3") == 0 && rg.committed == 1 && rg.done == 0);
	free(rg.response);
	CU_ASSERT_EQUAL(store_idem_release(s, "idem-1", 42, "inc-3"), CF_E_EXISTS); /* committed */
	r.done = 1;
	CU_ASSERT_EQUAL(store_idem_settle(s, &r, "inc-1"), CF_E_EXISTS);
	CU_ASSERT_EQUAL(store_idem_settle(s, &r, "inc-3"), CF_OK);
	CU_ASSERT_EQUAL(store_idem_adopt(s, "idem-1", 42, "inc-3", "inc-4"), CF_E_EXISTS); /* done */
	store_close(s);
}

/* ---- idempotency claims and takeovers ---- */

static void
idem_rec(struct store_idem *r, const char *key, const char *owner)
{
	memset(r, 0, sizeof(*r));
	snprintf(r->key, sizeof(r->key), "%s", key);
	r->uid = 7;
	snprintf(r->method, sizeof(r->method), "/coffer.v1.Admin/RotateKey");
	memset(r->fingerprint, 0x11, sizeof(r->fingerprint));
	r->created = time(NULL);
	snprintf(r->owner, sizeof(r->owner), "%s", owner);
}

static void
claim_takeover(enum store_backend b)
{
	struct where w;
	store *s = NULL;
	struct store_idem a, bb, ex, got;

	fresh_where(b, &w);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "r1", NULL, &s), CF_OK);
	idem_rec(&a, "k1", "inc-A");
	idem_rec(&bb, "k1", "inc-B");
	memset(bb.fingerprint, 0x22, sizeof(bb.fingerprint));
	CU_ASSERT_EQUAL(store_idem_claim(s, &a, NULL), CF_OK);
	memset(&ex, 0, sizeof(ex));
	CU_ASSERT_EQUAL(store_idem_claim(s, &bb, &ex), CF_E_EXISTS);
	CU_ASSERT(strcmp(ex.owner, "inc-A") == 0 && ex.fingerprint[0] == 0x11 && !ex.done);
	free(ex.response);
	CU_ASSERT_EQUAL(store_idem_claim(s, &bb, NULL), CF_E_EXISTS);

	/* Only the owner named, and only while pending. */
	CU_ASSERT_EQUAL(store_idem_takeover(s, &bb, "inc-X"), CF_E_EXISTS);
	CU_ASSERT_EQUAL(store_idem_takeover(s, &bb, "inc-A"), CF_OK);
	CU_ASSERT_EQUAL(store_idem_get(s, "k1", 7, &got), CF_OK);
	CU_ASSERT(strcmp(got.owner, "inc-B") == 0 && got.fingerprint[0] == 0x22);
	free(got.response);
	CU_ASSERT_EQUAL(store_idem_takeover(s, &a, "inc-A"), CF_E_EXISTS);   /* moved on */
	bb.committed = 1;
	CU_ASSERT_EQUAL(store_idem_put(s, &bb), CF_OK);
	CU_ASSERT_EQUAL(store_idem_takeover(s, &a, "inc-B"), CF_E_EXISTS);   /* committed */
	bb.committed = 0;
	bb.done = 1;
	CU_ASSERT_EQUAL(store_idem_put(s, &bb), CF_OK);
	CU_ASSERT_EQUAL(store_idem_takeover(s, &a, "inc-B"), CF_E_EXISTS);   /* done */
	idem_rec(&a, "absent", "inc-A");
	CU_ASSERT_EQUAL(store_idem_takeover(s, &a, "inc-A"), CF_E_EXISTS);   /* none */
	CU_ASSERT_EQUAL(store_idem_get(s, "absent", 7, &got), CF_E_NOT_FOUND);
	store_close(s);
}

/* Two connections claim the same key at the same moment, many times over. */
#define RACE_ROUNDS 40

struct racer {
	store *s;
	const char *owner;
	pthread_barrier_t *bar;
	int status[RACE_ROUNDS];
	char seen[RACE_ROUNDS][STORE_OWNER_MAX + 1];
};

static void *
race(void *arg)
{
	struct racer *rc = arg;
	struct store_idem r, ex;
	char key[32];

	for (int i = 0; i < RACE_ROUNDS; i++) {
		snprintf(key, sizeof(key), "race-%d", i);
		idem_rec(&r, key, rc->owner);
		memset(&ex, 0, sizeof(ex));
		pthread_barrier_wait(rc->bar);
		rc->status[i] = store_idem_claim(rc->s, &r, &ex);
		snprintf(rc->seen[i], sizeof(rc->seen[i]), "%s", ex.owner);
		free(ex.response);
	}
	return NULL;
}

static void
claim_race(enum store_backend b)
{
	struct where w;
	pthread_barrier_t bar;
	struct racer r[2] = { { .owner = "inc-1", .bar = &bar }, { .owner = "inc-2", .bar = &bar } };
	pthread_t t[2];
	int wins[2] = { 0, 0 };

	fresh_where(b, &w);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "r1", NULL, &r[0].s), CF_OK);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "r2", NULL, &r[1].s), CF_OK);
	pthread_barrier_init(&bar, NULL, 2);
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, race, &r[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	pthread_barrier_destroy(&bar);
	for (int i = 0; i < RACE_ROUNDS; i++) {
		int a = r[0].status[i], c = r[1].status[i];

		/* Exactly one wins; the other sees the winner's record. */
		CU_ASSERT((a == CF_OK && c == CF_E_EXISTS) || (a == CF_E_EXISTS && c == CF_OK));
		if (a == CF_OK && c == CF_E_EXISTS)
			CU_ASSERT_STRING_EQUAL(r[1].seen[i], "inc-1");
		if (c == CF_OK && a == CF_E_EXISTS)
			CU_ASSERT_STRING_EQUAL(r[0].seen[i], "inc-2");
		wins[0] += a == CF_OK;
		wins[1] += c == CF_OK;
	}
	printf("[%s: %d/%d claims won by each connection] ", b == STORE_SQLITE ? "sqlite" :
	       "postgresql", wins[0], wins[1]);
	store_close(r[0].s);
	store_close(r[1].s);
}

/* ---- intents' owners ---- */

static int
collect_intent(const struct store_intent *in, void *arg)
{
	char *out = arg;

	sprintf(out + strlen(out), "%s/%u/%s;", in->name, in->version, in->owner);
	return CF_OK;
}

static void
intent_owners(enum store_backend b)
{
	struct where w;
	store *s1 = NULL, *s2 = NULL;
	uint8_t id[STORE_CKAID_LEN] = { 4 };
	int64_t n1 = 0, n2 = 0;
	char got[256] = "";

	fresh_where(b, &w);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "r1", NULL, &s1), CF_OK);       /* owner: r1 */
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "r2", "inc-9", &s2), CF_OK);
	CU_ASSERT_EQUAL(store_intent_add(s1, STORE_INTENT_MAKE, "k", 3, id, &n1), CF_OK);
	CU_ASSERT_EQUAL(store_intent_add(s2, STORE_INTENT_MAKE, "k", 4, id, &n2), CF_OK);
	CU_ASSERT(n1 > 0 && n2 > n1);
	CU_ASSERT_EQUAL(store_intents_load(s2, collect_intent, got), CF_OK);
	CU_ASSERT_STRING_EQUAL(got, "k/3/r1;k/4/inc-9;");
	CU_ASSERT_EQUAL(store_intents_clear_owner(s2, "r1"), CF_OK);
	got[0] = '\0';
	CU_ASSERT_EQUAL(store_intents_load(s1, collect_intent, got), CF_OK);
	CU_ASSERT_STRING_EQUAL(got, "k/4/inc-9;");
	CU_ASSERT_EQUAL(store_intent_drop(s1, n2), CF_OK);
	got[0] = '\0';
	CU_ASSERT_EQUAL(store_intents_load(s1, collect_intent, got), CF_OK);
	CU_ASSERT_STRING_EQUAL(got, "");
	CU_ASSERT_EQUAL(store_intent_add(s1, STORE_INTENT_MAKE, "k", 5, id, &n1), CF_OK);
	CU_ASSERT_EQUAL(store_intents_clear(s2), CF_OK);
	got[0] = '\0';
	CU_ASSERT_EQUAL(store_intents_load(s1, collect_intent, got), CF_OK);
	CU_ASSERT_STRING_EQUAL(got, "");
	store_close(s1);
	store_close(s2);
}

/* ---- the audit outbox and anchor, per replica; what a change commits ---- */

static int
record_line(const struct store_call *c, const char *name, uint32_t version, char *buf,
	    size_t len)
{
	return snprintf(buf, len, "{\"by\":\"%s\",\"name\":\"%s\",\"version\":%u}",
			(const char *)c->arg, name, version);
}

struct outbox {
	char lines[512];
	int64_t last;
};

static int
collect_outbox(int64_t id, const char *line, void *arg)
{
	struct outbox *o = arg;

	strcat(o->lines, line);
	strcat(o->lines, ";");
	o->last = id;
	return CF_OK;
}

static void
replicas(enum store_backend b)
{
	struct where w;
	store *sa = NULL, *sb = NULL;
	struct store_call ca = { .idem_key = "idem-a", .idem_owner = "inc-a", .uid = 3,
				 .record = record_line, .arg = "a" };
	struct store_call cb = { .record = record_line, .arg = "b" };
	struct store_key k = { .name = "kk", .type = CF_KEY_HMAC_SHA256, .created = 1 };
	struct store_principal p = { .name = "pb", .created = 1 };
	struct store_audit_anchor an = { .seq = 5, .clean = 1, .time = 10 }, got;
	struct store_idem r, rg;
	struct outbox oa = { "", 0 }, ob = { "", 0 };
	uint8_t id[STORE_CKAID_LEN] = { 5 };

	fresh_where(b, &w);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "a", NULL, &sa), CF_OK);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "b", NULL, &sb), CF_OK);
	idem_rec(&r, "idem-a", "inc-a");
	r.uid = 3;
	CU_ASSERT_EQUAL(store_idem_claim(sa, &r, NULL), CF_OK);
	store_call_set(&ca);
	CU_ASSERT_EQUAL(store_key_create(sa, &k, id, 0), CF_OK);
	store_call_set(&cb);
	CU_ASSERT_EQUAL(store_principal_put(sb, &p, 1), CF_OK);
	CU_ASSERT_EQUAL(store_principal_put(sb, &p, 1), CF_E_EXISTS);     /* nothing recorded */
	store_call_set(NULL);
	CU_ASSERT(ca.effects == 1 && cb.effects == 1);
	/* Fencing: a call whose record another owner now holds (taken over)
	 * commits nothing. */
	{
		struct store_call cf = { .idem_key = "idem-f", .idem_owner = "inc-old", .uid = 3 };
		struct store_key kf = { .name = "kf", .type = CF_KEY_HMAC_SHA256, .created = 1 };
		struct store_idem rf;

		idem_rec(&rf, "idem-f", "inc-new");
		rf.uid = 3;
		CU_ASSERT_EQUAL(store_idem_claim(sa, &rf, NULL), CF_OK);
		store_call_set(&cf);
		CU_ASSERT_EQUAL(store_key_create(sa, &kf, id, 0), CF_E_UNAVAILABLE);
		CU_ASSERT(strstr(cf_error_detail(), "taken over by another replica") != NULL);
		store_call_set(NULL);
		CU_ASSERT_EQUAL(cf.effects, 0);
		CU_ASSERT_EQUAL(store_key_get(sa, "kf", NULL, NULL), CF_E_NOT_FOUND);
	}
	/* The idempotency record says the change is durable, and what it was. */
	CU_ASSERT_EQUAL(store_idem_get(sb, "idem-a", 3, &rg), CF_OK);
	CU_ASSERT(rg.committed == 1 && !rg.done && strcmp(rg.effect_name, "kk") == 0 &&
		  rg.effect_version == 1);
	free(rg.response);
	CU_ASSERT_EQUAL(store_outbox_load(sa, collect_outbox, &oa), CF_OK);
	CU_ASSERT_STRING_EQUAL(oa.lines, "{\"by\":\"a\",\"name\":\"kk\",\"version\":1};");
	CU_ASSERT_EQUAL(store_outbox_load(sb, collect_outbox, &ob), CF_OK);
	CU_ASSERT_STRING_EQUAL(ob.lines, "{\"by\":\"b\",\"name\":\"pb\",\"version\":0};");

	memset(an.chain, 0x5a, sizeof(an.chain));
	CU_ASSERT_EQUAL(store_audit_anchor_get(sa, &got), CF_E_NOT_FOUND);
	CU_ASSERT_EQUAL(store_audit_anchor_put(sa, &an, oa.last), CF_OK);
	CU_ASSERT_EQUAL(store_audit_anchor_get(sb, &got), CF_E_NOT_FOUND);
	an.seq = 9;
	an.chain[0] = 1;
	CU_ASSERT_EQUAL(store_audit_anchor_put(sb, &an, 0), CF_OK);
	CU_ASSERT_EQUAL(store_audit_anchor_get(sa, &got), CF_OK);
	CU_ASSERT(got.seq == 5 && got.clean == 1 && got.time == 10 && got.chain[0] == 0x5a);
	CU_ASSERT_EQUAL(store_audit_anchor_get(sb, &got), CF_OK);
	CU_ASSERT(got.seq == 9 && got.chain[0] == 1);
	/* a's outbox was emptied up to what it anchored; b's is untouched. */
	memset(&oa, 0, sizeof(oa));
	memset(&ob, 0, sizeof(ob));
	CU_ASSERT_EQUAL(store_outbox_load(sa, collect_outbox, &oa), CF_OK);
	CU_ASSERT_STRING_EQUAL(oa.lines, "");
	CU_ASSERT_EQUAL(store_outbox_load(sb, collect_outbox, &ob), CF_OK);
	CU_ASSERT(strstr(ob.lines, "\"pb\"") != NULL);
	store_close(sa);
	store_close(sb);
}

/* ---- schema versions ---- */

static void
newer_schema(enum store_backend b)
{
	struct where w;
	store *s = NULL;

	fresh_where(b, &w);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "r1", NULL, &s), CF_OK);
	store_close(s);
	s = NULL;
	raw_sql(&w, "UPDATE meta SET v = '99' WHERE k = 'schema_version'");
	CU_ASSERT_EQUAL(open_at(&w, "r1", NULL, &s), CF_E_CONFIG);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "newer than this cofferd"));
	CU_ASSERT_PTR_NULL(s);
	/* The current version opens again (and twice at once). */
	raw_sql(&w, "UPDATE meta SET v = '" STR(STORE_SCHEMA_VERSION) "' "
		"WHERE k = 'schema_version'");
	CU_ASSERT_EQUAL(open_at(&w, "r1", NULL, &s), CF_OK);
	store_close(s);
}

/* A schema-8 SQLite file (one daemon, before replicas) becomes schema 9: its
 * anchor, outbox and intents are the opening replica's; the offline reader
 * still finds the anchor. */
static void
sqlite_from_v8(void)
{
	struct where w;
	store *s = NULL;
	struct store_audit_anchor an;
	struct cf_audit_anchor off;
	struct outbox ob = { "", 0 };
	char got[128] = "", db[400], sql[1024];

	fresh_where(STORE_SQLITE, &w);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, NULL, NULL, &s), CF_OK);
	store_close(s);
	s = NULL;
	snprintf(sql, sizeof(sql),
		 "ALTER TABLE idempotency DROP COLUMN owner;"
		 "ALTER TABLE intents DROP COLUMN owner;"
		 "DROP INDEX audit_outbox_replica;"
		 "ALTER TABLE audit_outbox DROP COLUMN replica;"
		 "DROP TABLE audit_anchor;"
		 "CREATE TABLE audit_anchor (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER "
		 "NOT NULL, chain TEXT NOT NULL, clean INTEGER NOT NULL, time INTEGER NOT NULL);"
		 "INSERT INTO audit_anchor VALUES (1, 7, '%064d', 1, 123);"
		 "INSERT INTO audit_outbox (line) VALUES ('{\"old\":1}');"
		 "INSERT INTO intents (kind, name, version, ckaid, created) VALUES (1, 'k', 2, "
		 "'%032d', 5);"
		 "UPDATE meta SET v = '8' WHERE k = 'schema_version';", 0, 0);
	raw_sql(&w, sql);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "host-1", NULL, &s), CF_OK);
	CU_ASSERT_EQUAL(store_audit_anchor_get(s, &an), CF_OK);
	CU_ASSERT(an.seq == 7 && an.clean == 1 && an.time == 123);
	CU_ASSERT_EQUAL(store_outbox_load(s, collect_outbox, &ob), CF_OK);
	CU_ASSERT_STRING_EQUAL(ob.lines, "{\"old\":1};");
	CU_ASSERT_EQUAL(store_intents_load(s, collect_intent, got), CF_OK);
	CU_ASSERT_STRING_EQUAL(got, "k/2/host-1;");
	store_close(s);
	snprintf(db, sizeof(db), "%s/coffer.db", w.at);
	CU_ASSERT_EQUAL(cf_audit_anchor_read(db, &off), CF_OK);
	CU_ASSERT_EQUAL(off.seq, 7);
	/* Another replica name in the same file: a second anchor, which the
	 * offline reader cannot tell from the first. */
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "renamed", NULL, &s), CF_OK);
	CU_ASSERT_EQUAL(store_audit_anchor_get(s, &an), CF_E_NOT_FOUND);
	an.seq = 8;
	CU_ASSERT_EQUAL(store_audit_anchor_put(s, &an, 0), CF_OK);
	store_close(s);
	CU_ASSERT_EQUAL(cf_audit_anchor_read(db, &off), CF_E_INVALID_ARG);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "several replica"));
	/* A malformed anchor says so, not SQLite's "another row available". */
	raw_sql(&w, "DELETE FROM audit_anchor WHERE replica = 'renamed';"
		"UPDATE audit_anchor SET chain = 'xyz';");
	CU_ASSERT_EQUAL(cf_audit_anchor_read(db, &off), CF_E_IO);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "is malformed (its record number"));
	CU_ASSERT_PTR_NULL(strstr(cf_error_detail(), "row"));
}

/* ---- PostgreSQL: the change lock's fence ---- */

/* A change lock that is always granted: which replica holds the fleet's
 * lock is fleet.c's; here two stores take it in turn on one thread, as two
 * replicas do when the first one's lock connection was cut. */
static int
lock_granted(void *arg)
{
	(*(int *)arg)++;
	return CF_OK;
}

static void
lock_released(void *arg)
{
	(*(int *)arg)--;
}

static void
pg_fence(void)
{
	struct where w;
	store *a = NULL, *b = NULL;
	struct store_key k = { .name = "f1", .type = CF_KEY_EC_P256, .created = 1 };
	uint8_t id[STORE_CKAID_LEN] = { 8 };
	int held_a = 0, held_b = 0, shared = 0;
	int64_t intent = 0;
	char v[32], got[128] = "";

	fresh_where(STORE_POSTGRESQL, &w);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "r1", NULL, &a), CF_OK);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "r2", NULL, &b), CF_OK);
	store_set_change_lock(a, lock_granted, lock_released, NULL, NULL, &held_a);
	store_set_change_lock(b, lock_granted, lock_released, NULL, NULL, &held_b);
	CU_ASSERT_EQUAL(store_change_begin(a, &shared), CF_OK);
	CU_ASSERT(shared == 1 && held_a == 1);
	CU_ASSERT_EQUAL(store_key_create(a, &k, id, 0), CF_OK);
	/* b takes the lock a lost: a's next write commits nothing. */
	CU_ASSERT_EQUAL(store_change_begin(b, &shared), CF_OK);
	CU_ASSERT_EQUAL(store_version_add(a, "f1", 2, id, 2, 0, 0), CF_E_UNAVAILABLE);
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), "fleet: this replica lost the registry change "
			       "lock while the change ran (the lock's PostgreSQL connection was "
			       "cut) and another replica has taken it since; not committing a "
			       "change made from what may be stale; retry");
	CU_ASSERT_EQUAL(store_change_lost(a), 1);
	CU_ASSERT_EQUAL(store_change_lost(b), 0);
	/* Its reads too (intents it would undo may be b's), and its check. */
	CU_ASSERT_EQUAL(store_intents_load(a, collect_intent, got), CF_E_UNAVAILABLE);
	CU_ASSERT_EQUAL(store_change_check(a), CF_E_UNAVAILABLE);
	CU_ASSERT_EQUAL(store_change_check(b), CF_OK);
	/* Its own intent (its objects destroyed) still goes. */
	CU_ASSERT_EQUAL(store_intent_add(b, STORE_INTENT_MAKE, "f1", 3, id, &intent), CF_OK);
	CU_ASSERT_EQUAL(store_intent_drop(a, intent), CF_E_UNAVAILABLE);
	CU_ASSERT_EQUAL(store_intent_drop_own(a, intent), CF_OK);
	CU_ASSERT_EQUAL(store_version_add(b, "f1", 2, id, 2, 0, 0), CF_OK);
	CU_ASSERT_EQUAL(store_intents_load(b, collect_intent, got), CF_OK);
	CU_ASSERT_STRING_EQUAL(got, "");
	store_change_end(b);
	store_change_end(a);
	CU_ASSERT_EQUAL(store_change_lost(a), 0);
	CU_ASSERT(held_a == 0 && held_b == 0);
	pg_value(&w, "SELECT string_agg(version::text, ',' ORDER BY version) FROM versions",
		 v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, "1,2");
	/* Taken again, a's changes commit; writes outside a change are not fenced. */
	CU_ASSERT_EQUAL(store_change_begin(a, &shared), CF_OK);
	CU_ASSERT_EQUAL(store_version_add(a, "f1", 3, id, 3, 0, 0), CF_OK);
	store_change_end(a);
	CU_ASSERT_EQUAL(store_change_begin(b, &shared), CF_OK);
	store_change_end(b);
	CU_ASSERT_EQUAL(store_version_add(a, "f1", 4, id, 4, 0, 0), CF_OK);
	pg_value(&w, "SELECT epoch FROM change_fence", v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, "4");
	/* The row deleted behind the change's back: refused, saying so; the
	 * next change makes it again. */
	CU_ASSERT_EQUAL(store_change_begin(a, &shared), CF_OK);
	raw_sql(&w, "DELETE FROM change_fence");
	CU_ASSERT_EQUAL(store_version_add(a, "f1", 5, id, 5, 0, 0), CF_E_UNAVAILABLE);
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), "fleet: the registry change lock's epoch (table "
			       "change_fence) is gone from PostgreSQL (deleted, or a backup "
			       "restored) while the change ran; not committing it; retry");
	store_change_end(a);
	CU_ASSERT_EQUAL(store_change_begin(a, &shared), CF_OK);
	CU_ASSERT_EQUAL(store_version_add(a, "f1", 5, id, 5, 0, 0), CF_OK);
	store_change_end(a);
	pg_value(&w, "SELECT epoch FROM change_fence", v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, "1");
	store_close(a);
	store_close(b);
}

/* A schema-9 database (before the fence) gets its table, and changes under
 * the lock work at once. */
static void
pg_from_v9(void)
{
	struct where w;
	store *s = NULL;
	struct store_key k = { .name = "m1", .type = CF_KEY_EC_P256, .created = 1 };
	uint8_t id[STORE_CKAID_LEN] = { 9 };
	int held = 0, shared = 0;
	char v[32];

	fresh_where(STORE_POSTGRESQL, &w);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "r1", NULL, &s), CF_OK);
	store_close(s);
	s = NULL;
	raw_sql(&w, "DROP TABLE change_fence; UPDATE meta SET v = '9' WHERE k = 'schema_version'");
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "r1", NULL, &s), CF_OK);
	pg_value(&w, "SELECT v FROM meta WHERE k = 'schema_version'", v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, STR(STORE_SCHEMA_VERSION));
	store_set_change_lock(s, lock_granted, lock_released, NULL, NULL, &held);
	CU_ASSERT_EQUAL(store_change_begin(s, &shared), CF_OK);
	CU_ASSERT_EQUAL(store_key_create(s, &k, id, 0), CF_OK);
	store_change_end(s);
	pg_value(&w, "SELECT epoch FROM change_fence", v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, "1");
	store_close(s);
}

/* ---- PostgreSQL: notifications ---- */

/* The next notification on c within ms milliseconds into buf; 0 if none. */
static int
next_note(PGconn *c, char *buf, size_t len, int ms)
{
	struct pollfd pfd = { .fd = PQsocket(c), .events = POLLIN };
	PGnotify *n;

	for (;;) {
		CU_ASSERT_FATAL(PQconsumeInput(c) == 1);
		if ((n = PQnotifies(c)) != NULL) {
			CU_ASSERT_STRING_EQUAL(n->relname, STORE_NOTIFY_CHANNEL);
			snprintf(buf, len, "%s", n->extra);
			PQfreemem(n);
			return 1;
		}
		if (poll(&pfd, 1, ms) <= 0)
			return 0;
	}
}

static void
pg_notify(void)
{
	struct where w;
	store *s = NULL;
	PGconn *l;
	PGresult *res;
	char note[128], dbname[64];
	struct store_key k = { .name = "n1", .type = CF_KEY_EC_P256, .created = 1 };
	struct store_principal p = { .name = "p1", .created = 1 };
	struct store_apikey ak = { .id = "ak_000000000000000000000009", .principal = "p1",
				   .created = 1, .next_generation = 2 };
	uint8_t id[STORE_CKAID_LEN] = { 6 };

	fresh_where(STORE_POSTGRESQL, &w);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "r1", NULL, &s), CF_OK);
	snprintf(dbname, sizeof(dbname), "%s", strstr(w.at, "dbname=") + 7);
	l = pg_admin(dbname);
	res = PQexec(l, "LISTEN " STORE_NOTIFY_CHANNEL);
	CU_ASSERT_FATAL(PQresultStatus(res) == PGRES_COMMAND_OK);
	PQclear(res);

	CU_ASSERT_EQUAL(store_key_create(s, &k, id, 0), CF_OK);
	CU_ASSERT(next_note(l, note, sizeof(note), 2000) && strcmp(note, "key n1") == 0);
	CU_ASSERT_EQUAL(store_version_add(s, "n1", 2, id, 2, 0, 0), CF_OK);
	CU_ASSERT(next_note(l, note, sizeof(note), 2000) && strcmp(note, "key n1") == 0);
	CU_ASSERT_EQUAL(store_principal_put(s, &p, 1), CF_OK);
	CU_ASSERT(next_note(l, note, sizeof(note), 2000) && strcmp(note, "principal p1") == 0);
	/* The first key of a principal also makes it sign its calls. */
	CU_ASSERT_EQUAL(store_apikey_put(s, &ak, 1, 1, 0), CF_OK);
	CU_ASSERT(next_note(l, note, sizeof(note), 2000) && strcmp(note, "signed p1") == 0);
	CU_ASSERT(next_note(l, note, sizeof(note), 2000) &&
		  strcmp(note, "apikey ak_000000000000000000000009") == 0);
	CU_ASSERT_EQUAL(store_signed_set(s, "p1", 0), CF_OK);
	CU_ASSERT(next_note(l, note, sizeof(note), 2000) && strcmp(note, "signed p1") == 0);
	/* A change that is not made says nothing. */
	CU_ASSERT_EQUAL(store_key_create(s, &k, id, 0), CF_E_EXISTS);
	CU_ASSERT_EQUAL(store_principal_delete(s, "nobody", 0, NULL), CF_E_NOT_FOUND);
	CU_ASSERT_FALSE(next_note(l, note, sizeof(note), 300));
	CU_ASSERT_EQUAL(store_principal_delete(s, "p1", 0, NULL), CF_OK);
	CU_ASSERT(next_note(l, note, sizeof(note), 2000) && strcmp(note, "signed p1") == 0);
	CU_ASSERT(next_note(l, note, sizeof(note), 2000) && strcmp(note, "principal p1") == 0);
	PQfinish(l);
	store_close(s);
}

/* ---- PostgreSQL: the server goes away and comes back ---- */

static int
count_keys(const struct store_key *k, void *arg)
{
	(void)k;
	(*(int *)arg)++;
	return CF_OK;
}

static void
pg_reconnect(void)
{
	struct where w;
	store *s = NULL;
	struct store_key k = { .name = "r1", .type = CF_KEY_EC_P256, .created = 1 };
	uint8_t id[STORE_CKAID_LEN] = { 7 };
	struct store_idem rg;
	int n = 0;

	fresh_where(STORE_POSTGRESQL, &w);
	CU_ASSERT_EQUAL_FATAL(open_at(&w, "r1", NULL, &s), CF_OK);
	CU_ASSERT_EQUAL(store_key_create(s, &k, id, 0), CF_OK);
	CU_ASSERT_EQUAL_FATAL(pg_server("stop"), 0);
	/* Reads and changes alike: UNAVAILABLE, naming PostgreSQL and libpq's words. */
	CU_ASSERT_EQUAL(store_load(s, count_keys, &n), CF_E_UNAVAILABLE);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "state store: PostgreSQL unreachable: "));
	printf("[%s] ", cf_error_detail());
	CU_ASSERT_EQUAL(store_idem_get(s, "x", 1, &rg), CF_E_UNAVAILABLE);
	k.name[1] = '2';
	CU_ASSERT_EQUAL(store_key_create(s, &k, id, 0), CF_E_UNAVAILABLE);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "PostgreSQL unreachable"));
	CU_ASSERT_FALSE(store_healthy(s));
	CU_ASSERT_EQUAL_FATAL(pg_server("start"), 0);
	/* The same handle: the next call reconnects. */
	n = 0;
	CU_ASSERT_EQUAL(store_load(s, count_keys, &n), CF_OK);
	CU_ASSERT_EQUAL(n, 1);
	CU_ASSERT_EQUAL(store_key_create(s, &k, id, 0), CF_OK);
	sleep(1);   /* health asks the server at most once a second */
	CU_ASSERT(store_healthy(s));
	/* Restarted between two calls: the dead connection is found at the
	 * next call's start and replaced; that call succeeds. */
	CU_ASSERT_EQUAL_FATAL(pg_server("stop"), 0);
	CU_ASSERT_EQUAL_FATAL(pg_server("start"), 0);
	n = 0;
	CU_ASSERT_EQUAL(store_load(s, count_keys, &n), CF_OK);
	CU_ASSERT_EQUAL(n, 2);
	k.name[1] = '3';
	CU_ASSERT_EQUAL(store_key_create(s, &k, id, 0), CF_OK);
	store_close(s);
	/* No server at all: opening says so. */
	{
		struct store_options o = { .backend = STORE_POSTGRESQL,
					   .dsn = "host=/nonexistent dbname=x" };

		s = NULL;
		CU_ASSERT_EQUAL(store_open_with(&o, &s), CF_E_UNAVAILABLE);
		CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "PostgreSQL unreachable"));
		CU_ASSERT_PTR_NULL(s);
	}
	/* A server that answers and says no is not called unreachable: waiting
	 * does not mend a role or a database it does not have. */
	{
		static const char *const refused[][2] = {
			{ "dbname=no_such_db", "database \"no_such_db\" does not exist" },
			{ "dbname=postgres user=no_such_role", "role \"no_such_role\" does not exist" },
		};

		for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
			char dsn[300];
			struct store_options o = { .backend = STORE_POSTGRESQL, .dsn = dsn };

			snprintf(dsn, sizeof(dsn), "host=%s/sock %s", pgdir, refused[i][0]);
			s = NULL;
			CU_ASSERT_EQUAL(store_open_with(&o, &s), CF_E_UNAVAILABLE);
			printf("[%s] ", cf_error_detail());
			CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(),
						      "state store: PostgreSQL refused the connection: "));
			CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), refused[i][1]));
			CU_ASSERT_PTR_NULL(strstr(cf_error_detail(), "unreachable"));
			CU_ASSERT_PTR_NULL(s);
		}
	}
}

/* A COMMIT after a statement failed in the transaction is no commit: the
 * server answers it "ROLLBACK" without an error. */
static void
pg_commit_after_failure(void)
{
	struct where w;
	sqldb *db = NULL;
	sqldb_stmt *st = NULL;

	fresh_where(STORE_POSTGRESQL, &w);
	CU_ASSERT_EQUAL_FATAL(sqldb_open_pg(w.at, 5000, &db), CF_OK);
	CU_ASSERT_EQUAL(sqldb_exec(db, "CREATE TABLE t (v int)"), SQLDB_OK);
	CU_ASSERT_EQUAL(sqldb_begin(db, 1, SQLDB_WAIT_OWN), SQLDB_OK);
	CU_ASSERT_EQUAL(sqldb_exec(db, "INSERT INTO t VALUES (1)"), SQLDB_OK);
	CU_ASSERT_EQUAL(sqldb_exec(db, "SELECT 1 / 0"), SQLDB_ERROR);
	CU_ASSERT_NOT_EQUAL(sqldb_commit(db), SQLDB_OK);
	CU_ASSERT_STRING_EQUAL(sqldb_errmsg(db), "the transaction was aborted by a statement that "
			       "failed in it; nothing was committed");
	sqldb_rollback(db);
	CU_ASSERT_EQUAL(sqldb_query(db, &st, "SELECT count(*) FROM t", ""), SQLDB_OK);
	CU_ASSERT(sqldb_step(st) == SQLDB_ROW && sqldb_int64(st, 0) == 0);
	sqldb_finalize(st);
	/* The connection serves on. */
	CU_ASSERT_EQUAL(sqldb_begin(db, 1, SQLDB_WAIT_OWN), SQLDB_OK);
	CU_ASSERT_EQUAL(sqldb_exec(db, "INSERT INTO t VALUES (2)"), SQLDB_OK);
	CU_ASSERT_EQUAL(sqldb_commit(db), SQLDB_OK);
	sqldb_close(db);
}

/* ---- configuration ---- */

static int
load_conf(const char *text, struct cofferd_config *c)
{
	config_defaults(c);
	if (config_load_string(c, "test.conf", text) != CF_OK)
		return CF_E_CONFIG;
	return config_finish(c);
}

static void
state_config(void)
{
	struct cofferd_config c;
	char path[200];
	cf_secret *sec = NULL;

	CU_ASSERT_EQUAL(load_conf("", &c), CF_OK);
	CU_ASSERT(c.state_backend == STORE_SQLITE && c.replica[0] != '\0');
	CU_ASSERT_EQUAL(load_conf("[state]\nbackend = postgresql\ndsn = host=/x dbname=y\n"
				  "replica = web-1.eu_2\n", &c), CF_OK);
	CU_ASSERT(c.state_backend == STORE_POSTGRESQL && strcmp(c.replica, "web-1.eu_2") == 0 &&
		  strcmp(c.state_dsn, "host=/x dbname=y") == 0);
	CU_ASSERT_EQUAL(load_conf("[state]\nbackend = postgresql\n", &c), CF_E_CONFIG);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "dsn or dsn_file"));
	CU_ASSERT_EQUAL(load_conf("[state]\ndsn = a=b\ndsn_file = /x\n", &c), CF_E_CONFIG);
	CU_ASSERT_EQUAL(load_conf("[state]\nbackend = mysql\n", &c), CF_E_CONFIG);
	CU_ASSERT_EQUAL(load_conf("[state]\nreplica = a b\n", &c), CF_E_CONFIG);
	CU_ASSERT_EQUAL(load_conf("[state]\nreplica = "
				  "a123456789012345678901234567890123456789012345678901234567890123"
				  "\n", &c), CF_E_CONFIG);
	CU_ASSERT_EQUAL(load_conf("[state]\nnope = 1\n", &c), CF_E_CONFIG);

	/* dsn_file: the PIN file's rules. */
	snprintf(path, sizeof(path), "%s/state.dsn", base);
	CU_ASSERT_FATAL(cf_test_write_file(path, "host=/x dbname=y password=s3cret\n", 0640) == 0);
	CU_ASSERT_EQUAL(cf_secret_file_read(path, "[state] dsn_file", CF_E_CONFIG, 4096, &sec),
			CF_E_CONFIG);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "chmod 600"));
	CU_ASSERT_PTR_NULL(strstr(cf_error_detail(), "s3cret"));
	/* A connection string libpq cannot read: refused before any connection,
	 * without libpq's reason, which quotes the password (a stray '%' in it,
	 * a missing ']'). */
	{
		static const char *const bad[] = {
			"postgresql://coffer:S3cr%zzet@localhost/coffer",
			"postgresql://coffer:S3cr3t@[::1/coffer",
			"host=/x password='S3cr3t",
		};

		struct store_options named = { .backend = STORE_POSTGRESQL, .dsn = "coffer" };
		store *ns = NULL;

		/* A bare name is a database's, as libpq takes it: no such server
		 * here, but not refused as unreadable. */
		CU_ASSERT_EQUAL(store_open_with(&named, &ns), CF_E_UNAVAILABLE);
		CU_ASSERT_PTR_NULL(ns);
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			struct store_options o = { .backend = STORE_POSTGRESQL, .dsn = bad[i] };
			store *s = NULL;

			CU_ASSERT_EQUAL(store_open_with(&o, &s), CF_E_CONFIG);
			CU_ASSERT_PTR_NULL(s);
			CU_ASSERT_PTR_NULL(strstr(cf_error_detail(), "S3cr"));
			CU_ASSERT_STRING_EQUAL(cf_error_detail(), "[state] dsn is not a connection "
					       "string libpq can read (its reason is not shown: it "
					       "may quote the password); check the quoting, and in a "
					       "URI the %-escapes and brackets");
		}
	}
	CU_ASSERT_FATAL(chmod(path, 0600) == 0);
	CU_ASSERT_EQUAL_FATAL(cf_secret_file_read(path, "[state] dsn_file", CF_E_CONFIG, 4096,
						  &sec), CF_OK);
	CU_ASSERT(cf_secret_len(sec) == strlen("host=/x dbname=y password=s3cret") &&
		  memcmp(cf_secret_cptr(sec), "host=/x dbname=y password=s3cret",
			 cf_secret_len(sec)) == 0);
	cf_secret_free(sec);
}

#define BOTH(fn)                                                                         \
	static void fn##_sqlite(void) { fn(STORE_SQLITE); }                              \
	static void fn##_pg(void) { fn(STORE_POSTGRESQL); }
BOTH(roundtrip)
BOTH(claim_takeover)
BOTH(claim_race)
BOTH(intent_owners)
BOTH(replicas)
BOTH(newer_schema)

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "sqlite: every record round-trips", roundtrip_sqlite },
		{ "postgresql: every record round-trips", roundtrip_pg },
		{ "sqlite: idempotency claim and takeover rules", claim_takeover_sqlite },
		{ "postgresql: idempotency claim and takeover rules", claim_takeover_pg },
		{ "sqlite: two connections claim one key: exactly one wins", claim_race_sqlite },
		{ "postgresql: two connections claim one key: exactly one wins", claim_race_pg },
		{ "sqlite: intents carry their owner", intent_owners_sqlite },
		{ "postgresql: intents carry their owner", intent_owners_pg },
		{ "sqlite: audit outbox and anchor per replica; a change's commitments",
		  replicas_sqlite },
		{ "postgresql: audit outbox and anchor per replica; a change's commitments",
		  replicas_pg },
		{ "sqlite: a newer schema is refused", newer_schema_sqlite },
		{ "postgresql: a newer schema is refused", newer_schema_pg },
		{ "sqlite: a schema-8 file migrates to 9", sqlite_from_v8 },
		{ "postgresql: a change whose lock another store took since commits nothing",
		  pg_fence },
		{ "postgresql: a schema-9 database gets the change lock's fence", pg_from_v9 },
		{ "postgresql: changes are announced with NOTIFY on commit", pg_notify },
		{ "[state] configuration and dsn_file permissions", state_config },
		{ "postgresql: a COMMIT after a failed statement commits nothing",
		  pg_commit_after_failure },
		/* Last: it stops and starts the server. */
		{ "postgresql: unreachable server, then reconnection without reopening",
		  pg_reconnect },
		{ NULL, NULL },
	};

	return cf_test_main("store", suite_init, suite_clean, cases);
}
