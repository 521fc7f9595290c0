/*
 * The state store (store.h), written once over sqldb.h for both SQLite and
 * PostgreSQL. Only the schema differs per engine.
 */
#include "store.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/sha.h>

#include "cf_crashpoint.h"
#include "cf_hex.h"
#include "cf_log.h"
#include "cf_status.h"
#include "cf_time.h"
#include "change_mu.h"
#include "sqldb.h"
#include "sqldb_pg.h"
#include "sqldb_sqlite.h"

struct store {
	sqldb *db;
	pthread_mutex_t mu;
	atomic_int healthy;
	char replica[STORE_REPLICA_MAX + 1];
	char owner[STORE_OWNER_MAX + 1];
	char where[4200];        /* the store in messages: its file, or "PostgreSQL" */
	int (*change_lock)(void *arg);     /* store_set_change_lock */
	void (*change_unlock)(void *arg);
	int (*change_healthy)(void *arg);
	void (*change_touch)(void *arg);
	void *change_arg;
	void (*committed)(void *arg);      /* store_set_committed_hook */
	void *committed_arg;
	/* The change lock's epoch (fence_take), under mu: the thread whose
	 * change holds the lock, and the epoch it set when it took it. */
	int fenced;
	int fence_lost;          /* the epoch moved on: the change lost the lock */
	int64_t fence_epoch;
	pthread_t fence_owner;
};

/* Set around a transaction that needs no fence (store_intent_drop_own). */
static __thread int fence_skip;
/* The calling thread gives way to locks held elsewhere (store_yield). */
static __thread int yields;

/* ---- SQLite schema: tables as each version added them ---- */

static const char *const sqlite_v1 =
	"CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS keys ("
	" name TEXT PRIMARY KEY, type TEXT NOT NULL, exportable INTEGER NOT NULL,"
	" primary_version INTEGER NOT NULL, created INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS versions ("
	" name TEXT NOT NULL REFERENCES keys(name), version INTEGER NOT NULL,"
	" state INTEGER NOT NULL, created INTEGER NOT NULL, PRIMARY KEY (name, version));";

/* Version 2: principals. Created on any older store too (IF NOT EXISTS). */
static const char *const sqlite_v2 =
	"CREATE TABLE IF NOT EXISTS principals (name TEXT PRIMARY KEY, created INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS principal_ids ("
	" kind INTEGER NOT NULL, id INTEGER NOT NULL,"
	" principal TEXT NOT NULL REFERENCES principals(name) ON DELETE CASCADE,"
	" PRIMARY KEY (kind, id));"
	"CREATE TABLE IF NOT EXISTS grants ("
	" principal TEXT NOT NULL REFERENCES principals(name) ON DELETE CASCADE,"
	" pattern TEXT NOT NULL, ops INTEGER NOT NULL, PRIMARY KEY (principal, pattern));"
	"CREATE TABLE IF NOT EXISTS limits ("
	" principal TEXT NOT NULL REFERENCES principals(name) ON DELETE CASCADE,"
	" op INTEGER NOT NULL, rate REAL NOT NULL, burst INTEGER NOT NULL,"
	" PRIMARY KEY (principal, op));";

/* Version 4: API keys. A revoked key keeps its row (so that it is reported
 * as revoked, not unknown) and loses its secrets. */
static const char *const sqlite_v4 =
	"CREATE TABLE IF NOT EXISTS api_keys ("
	" id TEXT PRIMARY KEY, principal TEXT NOT NULL, created INTEGER NOT NULL,"
	" revoked INTEGER NOT NULL, next_generation INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS api_secrets ("
	" id TEXT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,"
	" generation INTEGER NOT NULL, created INTEGER NOT NULL, expires INTEGER NOT NULL,"
	" PRIMARY KEY (id, generation));";

/* Version 5: idempotency records of mutating calls. */
static const char *const sqlite_v5 =
	"CREATE TABLE IF NOT EXISTS idempotency ("
	" key TEXT NOT NULL, uid INTEGER NOT NULL, method TEXT NOT NULL,"
	" fingerprint BLOB NOT NULL, done INTEGER NOT NULL, status INTEGER NOT NULL,"
	" message TEXT NOT NULL, response BLOB, created INTEGER NOT NULL,"
	" PRIMARY KEY (key, uid));"
	"CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created);";

/* Version 7: crash safety. Intents of calls between touching the token and
 * recording the outcome; audit records committed with their change, until
 * the trail has them; where the trail ended when last anchored. */
static const char *const sqlite_v7 =
	"CREATE TABLE IF NOT EXISTS intents ("
	" id INTEGER PRIMARY KEY AUTOINCREMENT, kind INTEGER NOT NULL, name TEXT NOT NULL,"
	" version INTEGER NOT NULL, ckaid TEXT NOT NULL, created INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS audit_outbox ("
	" id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS audit_anchor ("
	" id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, chain TEXT NOT NULL,"
	" clean INTEGER NOT NULL, time INTEGER NOT NULL);";

/* Version 8: principals whose calls must be signed even with no live API
 * key: set with the first key, kept when the last is revoked, cleared by an
 * operator (SetPrincipalAuth) or when the principal is deleted. */
static const char *const sqlite_v8 =
	"CREATE TABLE IF NOT EXISTS signed_principals (principal TEXT PRIMARY KEY);";

/* Columns added to older tables (and tables rebuilt), with the schema
 * version that added them. */
static const struct {
	int since;
	const char *sql;
} sqlite_columns[] = {
	{ 3, "ALTER TABLE keys ADD COLUMN allowed_ops INTEGER NOT NULL DEFAULT 0;" },
	{ 6, "ALTER TABLE keys ADD COLUMN min_version INTEGER NOT NULL DEFAULT 0;"
	     "ALTER TABLE keys ADD COLUMN min_verify INTEGER NOT NULL DEFAULT 0;"
	     "ALTER TABLE keys ADD COLUMN rotation_period INTEGER NOT NULL DEFAULT 0;"
	     "ALTER TABLE keys ADD COLUMN next_rotation INTEGER NOT NULL DEFAULT 0;"
	     "ALTER TABLE keys ADD COLUMN pending_rotation INTEGER NOT NULL DEFAULT 0;"
	     "ALTER TABLE versions ADD COLUMN destroy_time INTEGER NOT NULL DEFAULT 0;"
	     "ALTER TABLE versions ADD COLUMN prior_state INTEGER NOT NULL DEFAULT 0;" },
	{ 7, "ALTER TABLE versions ADD COLUMN ckaid TEXT;"
	     "ALTER TABLE idempotency ADD COLUMN request_id TEXT NOT NULL DEFAULT '';"
	     "ALTER TABLE idempotency ADD COLUMN committed INTEGER NOT NULL DEFAULT 0;"
	     "ALTER TABLE idempotency ADD COLUMN effect_name TEXT NOT NULL DEFAULT '';"
	     "ALTER TABLE idempotency ADD COLUMN effect_version INTEGER NOT NULL DEFAULT 0;" },
	/* Every principal that ever had an API key (revoked ones too) keeps
	 * requiring signed calls: the fail-safe reading of the old state. */
	{ 8, "INSERT OR IGNORE INTO signed_principals SELECT DISTINCT principal FROM api_keys"
	     " WHERE principal IN (SELECT name FROM principals);" },
	/* Owners and replicas. The anchor was one row (id 1); it becomes one row
	 * per replica, the first keeping id 1 (what offline readers look for). */
	{ 9, "ALTER TABLE idempotency ADD COLUMN owner TEXT NOT NULL DEFAULT '';"
	     "ALTER TABLE intents ADD COLUMN owner TEXT NOT NULL DEFAULT '';"
	     "ALTER TABLE audit_outbox ADD COLUMN replica TEXT NOT NULL DEFAULT '';"
	     "CREATE INDEX audit_outbox_replica ON audit_outbox (replica, id);"
	     "CREATE TABLE audit_anchor_v9 (id INTEGER PRIMARY KEY, replica TEXT NOT NULL UNIQUE,"
	     " seq INTEGER NOT NULL, chain TEXT NOT NULL, clean INTEGER NOT NULL,"
	     " time INTEGER NOT NULL);"
	     "INSERT INTO audit_anchor_v9 (id, replica, seq, chain, clean, time)"
	     " SELECT id, '', seq, chain, clean, time FROM audit_anchor;"
	     "DROP TABLE audit_anchor;"
	     "ALTER TABLE audit_anchor_v9 RENAME TO audit_anchor;" },
};

/* ---- PostgreSQL schema: starts at version 8 ---- */

/* Byte order for names (as SQLite sorts them), whatever the database's locale. */
static const char *const pg_v8 =
	"CREATE TABLE keys ("
	" name TEXT COLLATE \"C\" PRIMARY KEY, type TEXT NOT NULL, exportable BIGINT NOT NULL,"
	" primary_version BIGINT NOT NULL, created BIGINT NOT NULL,"
	" allowed_ops BIGINT NOT NULL DEFAULT 0, min_version BIGINT NOT NULL DEFAULT 0,"
	" min_verify BIGINT NOT NULL DEFAULT 0, rotation_period BIGINT NOT NULL DEFAULT 0,"
	" next_rotation BIGINT NOT NULL DEFAULT 0, pending_rotation BIGINT NOT NULL DEFAULT 0);"
	"CREATE TABLE versions ("
	" name TEXT COLLATE \"C\" NOT NULL REFERENCES keys(name), version BIGINT NOT NULL,"
	" state BIGINT NOT NULL, created BIGINT NOT NULL, destroy_time BIGINT NOT NULL DEFAULT 0,"
	" prior_state BIGINT NOT NULL DEFAULT 0, ckaid TEXT, PRIMARY KEY (name, version));"
	"CREATE TABLE principals (name TEXT COLLATE \"C\" PRIMARY KEY, created BIGINT NOT NULL);"
	"CREATE TABLE principal_ids ("
	" kind BIGINT NOT NULL, id BIGINT NOT NULL,"
	" principal TEXT COLLATE \"C\" NOT NULL REFERENCES principals(name) ON DELETE CASCADE,"
	" PRIMARY KEY (kind, id));"
	"CREATE INDEX principal_ids_principal ON principal_ids (principal);"
	"CREATE TABLE grants ("
	" principal TEXT COLLATE \"C\" NOT NULL REFERENCES principals(name) ON DELETE CASCADE,"
	" pattern TEXT COLLATE \"C\" NOT NULL, ops BIGINT NOT NULL,"
	" PRIMARY KEY (principal, pattern));"
	"CREATE TABLE limits ("
	" principal TEXT COLLATE \"C\" NOT NULL REFERENCES principals(name) ON DELETE CASCADE,"
	" op BIGINT NOT NULL, rate DOUBLE PRECISION NOT NULL, burst BIGINT NOT NULL,"
	" PRIMARY KEY (principal, op));"
	"CREATE TABLE api_keys ("
	" id TEXT COLLATE \"C\" PRIMARY KEY, principal TEXT COLLATE \"C\" NOT NULL,"
	" created BIGINT NOT NULL, revoked BIGINT NOT NULL, next_generation BIGINT NOT NULL);"
	"CREATE TABLE api_secrets ("
	" id TEXT COLLATE \"C\" NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,"
	" generation BIGINT NOT NULL, created BIGINT NOT NULL, expires BIGINT NOT NULL,"
	" PRIMARY KEY (id, generation));"
	"CREATE TABLE idempotency ("
	" key TEXT NOT NULL, uid BIGINT NOT NULL, method TEXT NOT NULL,"
	" fingerprint BYTEA NOT NULL, done BIGINT NOT NULL, status BIGINT NOT NULL,"
	" message TEXT NOT NULL, response BYTEA, created BIGINT NOT NULL,"
	" request_id TEXT NOT NULL DEFAULT '', committed BIGINT NOT NULL DEFAULT 0,"
	" effect_name TEXT NOT NULL DEFAULT '', effect_version BIGINT NOT NULL DEFAULT 0,"
	" PRIMARY KEY (key, uid));"
	"CREATE INDEX idempotency_created ON idempotency (created);"
	"CREATE TABLE intents ("
	" id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, kind BIGINT NOT NULL,"
	" name TEXT NOT NULL, version BIGINT NOT NULL, ckaid TEXT NOT NULL,"
	" created BIGINT NOT NULL);"
	"CREATE TABLE audit_outbox ("
	" id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, line TEXT NOT NULL);"
	"CREATE TABLE audit_anchor ("
	" id BIGINT PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, chain TEXT NOT NULL,"
	" clean BIGINT NOT NULL, time BIGINT NOT NULL);"
	"CREATE TABLE signed_principals (principal TEXT COLLATE \"C\" PRIMARY KEY);";

static const struct {
	int since;
	const char *sql;
} pg_steps[] = {
	{ 9, "ALTER TABLE idempotency ADD COLUMN owner TEXT NOT NULL DEFAULT '';"
	     "ALTER TABLE intents ADD COLUMN owner TEXT NOT NULL DEFAULT '';"
	     "ALTER TABLE audit_outbox ADD COLUMN replica TEXT NOT NULL DEFAULT '';"
	     "CREATE INDEX audit_outbox_replica ON audit_outbox (replica, id);"
	     "ALTER TABLE audit_anchor DROP COLUMN id;"
	     "ALTER TABLE audit_anchor ADD COLUMN replica TEXT NOT NULL DEFAULT '' PRIMARY KEY;" },
	/* The registry change lock's epoch (fence_take); its one row is made
	 * by the first change. SQLite has no change lock: one daemon a file. */
	{ 10, "CREATE TABLE change_fence (one BOOLEAN PRIMARY KEY CHECK (one),"
	      " epoch BIGINT NOT NULL);" },
};

/* Schema changes of replicas starting together wait for each other. */
#define PG_SCHEMA_LOCK 0x436f66666572 /* "Coffer" */

/* Room for element n of the array at *pv (a pointer to a pointer; capacity
 * *cap elements of `size` bytes, doubled from `first` when full). */
static int
room_for(void *pv, size_t n, size_t *cap, size_t first, size_t size)
{
	void *v, *nv;
	size_t nc;

	if (n < *cap)
		return CF_OK;
	nc = *cap ? 2 * *cap : first;
	memcpy(&v, pv, sizeof(v));
	if ((nv = realloc(v, nc * size)) == NULL)
		return cf_nomem();
	memcpy(pv, &nv, sizeof(nv));
	*cap = nc;
	return CF_OK;
}

/* The Coffer status of the last failure: a lost server is UNAVAILABLE (the
 * call may be retried once it is back), anything else an I/O error. */
static int
db_err(store *s, const char *what)
{
	if (sqldb_lost(s->db))
		return cf_error(CF_E_UNAVAILABLE, "state store: %s unreachable: %s (%s)",
				sqldb_engine(s->db), sqldb_errmsg(s->db), what);
	/* Another session's lock: the server answered, and a retry may pass
	 * (INTERNAL before, which clients do not retry; found from outside). */
	return cf_error(sqldb_locked(s->db) ? CF_E_UNAVAILABLE : CF_E_IO, "state store: %s: %s",
			what, sqldb_errmsg(s->db));
}

/* In a transaction of the change that holds the fleet's change lock: the
 * epoch is still the one this replica set when it took the lock. A replica
 * whose lock connection alone was cut loses the lock while its change runs;
 * another takes it and moves the epoch on, and this change, made from what
 * it read before, must not commit over the other's. A write reads the row
 * FOR SHARE, which keeps it until the commit: a replica taking the lock
 * meanwhile waits in fence_take for this commit, so it reads the change
 * before making its own. A read (one snapshot) sees nothing the next
 * holder recorded unless it also sees its epoch: intents it loads are then
 * only those of dead calls. */
static int
fence_check(store *s, int write)
{
	sqldb_stmt *st = NULL;
	int rc, same;

	if (sqldb_query(s->db, &st, write ? "SELECT epoch FROM change_fence WHERE one FOR SHARE"
					  : "SELECT epoch FROM change_fence WHERE one", "") != SQLDB_OK)
		return db_err(s, "checking the registry change lock");
	rc = sqldb_step(st);
	same = rc == SQLDB_ROW && sqldb_int64(st, 0) == s->fence_epoch;
	sqldb_finalize(st);
	if (rc != SQLDB_ROW && rc != SQLDB_DONE)
		return db_err(s, "checking the registry change lock");
	if (same)
		return CF_OK;
	s->fence_lost = 1;
	if (rc == SQLDB_DONE)
		return cf_error(CF_E_UNAVAILABLE, "fleet: the registry change lock's epoch "
				"(table change_fence) is gone from PostgreSQL (deleted, or a backup "
				"restored) while the change ran; not committing it; retry");
	return cf_error(CF_E_UNAVAILABLE, "fleet: this replica lost the registry change lock "
			"while the change ran (the lock's PostgreSQL connection was cut) and "
			"another replica has taken it since; not committing a change made from "
			"what may be stale; retry");
}

/* Take the store's lock and open a transaction (write: a change, checked
 * first with sqldb_check), fenced when its thread holds the fleet's change
 * lock. On failure the lock is released. A call that waited for its turns
 * (this lock, its module's change mutex, the fleet's change lock: behind
 * another that waited out another process's hold of the database) waits
 * for that hold only what is left of one bound (change_mu.h). */
static int
enter(store *s, int write)
{
	uint64_t waited, bound = sqldb_lock_wait_ms(s->db);
	int r, mode, left = SQLDB_WAIT_OWN;

	if (pthread_mutex_trylock(&s->mu) != 0) {
		uint64_t t0 = cf_mono_ms();

		pthread_mutex_lock(&s->mu);
		change_mu_waited(cf_mono_ms() - t0);
	}
	/* A short turn changes nothing (and costs PostgreSQL a SET). */
	if ((waited = change_mu_waited_ms()) >= CHANGE_MU_WAIT_SLACK_MS)
		left = waited < bound ? (int)(bound - waited) : 0;
	change_mu_wait_over();
	if ((r = sqldb_ready(s->db)) != CF_OK || (write && (r = sqldb_check(s->db)) != CF_OK))
		goto fail;
	mode = write ? (yields ? SQLDB_WRITE_YIELD : 1) : (yields ? SQLDB_READ_YIELD : 0);
	if (sqldb_begin(s->db, mode, left) != SQLDB_OK) {
		r = db_err(s, "starting a transaction");
		goto fail;
	}
	if (s->fenced && !fence_skip && pthread_equal(s->fence_owner, pthread_self()) &&
	    (r = fence_check(s, write)) != CF_OK) {
		sqldb_rollback(s->db);
		goto fail;
	}
	return CF_OK;
fail:
	pthread_mutex_unlock(&s->mu);
	return r;
}

/* Commit (r == CF_OK) or roll back, and release the lock. */
static int
leave(store *s, int r, const char *what)
{
	if (r == CF_OK && sqldb_commit(s->db) != SQLDB_OK)
		r = db_err(s, what);
	if (r != CF_OK)
		sqldb_rollback(s->db);
	pthread_mutex_unlock(&s->mu);
	return r;
}

void
store_yield(int on)
{
	yields = on;
}

int
store_session_pid(store *s)
{
	return sqldb_session_pid(s->db);
}

int
store_take_commit_unknown(store *s)
{
	return sqldb_take_commit_unknown(s->db);
}

int
store_healthy(store *s)
{
	if (s == NULL)
		return 0;
	/* A busy store answers with what it last found. */
	if (pthread_mutex_trylock(&s->mu) == 0) {
		atomic_store(&s->healthy, sqldb_healthy(s->db));
		pthread_mutex_unlock(&s->mu);
	}
	return atomic_load(&s->healthy) &&
	       (s->change_healthy == NULL || s->change_healthy(s->change_arg));
}

enum store_backend
store_backend(store *s)
{
	return sqldb_backend(s->db) == SQLDB_POSTGRESQL ? STORE_POSTGRESQL : STORE_SQLITE;
}

/* ---- opening: schema creation and migration ---- */

static int
schema_exec(store *s, const char *sql)
{
	return sqldb_exec(s->db, sql) == SQLDB_OK ? CF_OK : db_err(s, "creating the schema");
}

static int
schema_sqlite(store *s, int ver)
{
	const char *const tables[] = { sqlite_v1, sqlite_v2, sqlite_v4, sqlite_v5, sqlite_v7,
				       sqlite_v8 };
	int r;

	for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++)
		if ((r = schema_exec(s, tables[i])) != CF_OK)
			return r;
	/* Tables are created above (IF NOT EXISTS); columns added since
	 * version 1 are added here to stores older than them (0: a new one). */
	for (size_t i = 0; i < sizeof(sqlite_columns) / sizeof(sqlite_columns[0]); i++)
		if (ver < sqlite_columns[i].since &&
		    (r = schema_exec(s, sqlite_columns[i].sql)) != CF_OK)
			return r;
	return CF_OK;
}

static int
schema_pg(store *s, int ver)
{
	int r;

	if (ver != 0 && ver < 8)
		return cf_error(CF_E_CONFIG, "state store (%s) has schema %d, which no Coffer "
				"wrote on PostgreSQL; is it another program's database?", s->where,
				ver);
	if (ver == 0 && (r = schema_exec(s, pg_v8)) != CF_OK)
		return r;
	for (size_t i = 0; i < sizeof(pg_steps) / sizeof(pg_steps[0]); i++)
		if (ver < pg_steps[i].since && (r = schema_exec(s, pg_steps[i].sql)) != CF_OK)
			return r;
	return CF_OK;
}

static int
schema(store *s)
{
	sqldb_stmt *st = NULL;
	char v[16];
	int r, ver = 0, pg = sqldb_backend(s->db) == SQLDB_POSTGRESQL;

	if ((r = enter(s, 1)) != CF_OK)
		return r;
	if (pg && sqldb_run(s->db, "SELECT pg_advisory_xact_lock(?)", "i",
			    (int64_t)PG_SCHEMA_LOCK) != SQLDB_OK) {
		r = db_err(s, "locking the schema");
		goto out;
	}
	if ((r = schema_exec(s, "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, "
			     "v TEXT NOT NULL);")) != CF_OK)
		goto out;
	if (sqldb_query(s->db, &st, "SELECT v FROM meta WHERE k = 'schema_version'", "") !=
	    SQLDB_OK) {
		r = db_err(s, "reading the schema version");
		goto out;
	}
	if ((r = sqldb_step(st)) == SQLDB_ROW)
		ver = (int)sqldb_int64(st, 0);
	else if (r != SQLDB_DONE) {
		r = db_err(s, "reading the schema version");
		goto out;
	}
	/* A statement left open would lock its tables against the DDL below. */
	sqldb_finalize(st);
	st = NULL;
	r = CF_OK;
	if (ver > STORE_SCHEMA_VERSION) {
		r = cf_error(CF_E_CONFIG, "state store %s has schema %d, newer than this cofferd "
			     "(%d); upgrade cofferd", s->where, ver, STORE_SCHEMA_VERSION);
		goto out;
	}
	if (ver == STORE_SCHEMA_VERSION)
		goto out;
	if ((r = pg ? schema_pg(s, ver) : schema_sqlite(s, ver)) != CF_OK)
		goto out;
	/* Rows from before replicas belonged to the one daemon of the store. */
	snprintf(v, sizeof(v), "%d", STORE_SCHEMA_VERSION);
	if (ver < 9 &&
	    (sqldb_run(s->db, "UPDATE audit_outbox SET replica = ?", "t", s->replica) != SQLDB_OK ||
	     sqldb_run(s->db, "UPDATE audit_anchor SET replica = ?", "t", s->replica) != SQLDB_OK ||
	     sqldb_run(s->db, "UPDATE intents SET owner = ?", "t", s->owner) != SQLDB_OK)) {
		r = db_err(s, "giving older rows their replica");
		goto out;
	}
	if (sqldb_run(s->db, "INSERT INTO meta (k, v) VALUES ('schema_version', ?) "
		      "ON CONFLICT (k) DO UPDATE SET v = excluded.v", "t", v) != SQLDB_OK)
		r = db_err(s, "recording the schema version");
out:
	sqldb_finalize(st);
	return leave(s, r, "committing the schema");
}

static int
name_ok(const char *v, size_t max, int replica)
{
	size_t n = strlen(v);

	if (n > max)
		return 0;
	for (size_t i = 0; replica && i < n; i++)
		if (!((v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z') ||
		      (v[i] >= '0' && v[i] <= '9') || v[i] == '.' || v[i] == '_' || v[i] == '-'))
			return 0;
	return 1;
}

int
store_open_with(const struct store_options *o, store **out)
{
	const char *replica = o->replica ? o->replica : "";
	const char *owner = o->owner ? o->owner : replica;
	char path[4096];
	store *s = NULL;
	int r;

	if (!name_ok(replica, STORE_REPLICA_MAX, 1))
		return cf_error(CF_E_INVALID_ARG, "replica name \"%.80s\" is not 0..%d of "
				"[A-Za-z0-9._-]", replica, STORE_REPLICA_MAX);
	if (!name_ok(owner, STORE_OWNER_MAX, 0))
		return cf_error(CF_E_INVALID_ARG, "owner is longer than %d bytes",
				STORE_OWNER_MAX);
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return cf_nomem();
	pthread_mutex_init(&s->mu, NULL);
	atomic_init(&s->healthy, 1);
	snprintf(s->replica, sizeof(s->replica), "%s", replica);
	snprintf(s->owner, sizeof(s->owner), "%s", owner);
	if (o->backend == STORE_POSTGRESQL) {
		snprintf(s->where, sizeof(s->where), "(PostgreSQL)");
		if (o->dsn == NULL || o->dsn[0] == '\0') {
			r = cf_error(CF_E_CONFIG, "the PostgreSQL state store needs a connection "
				     "string ([state] dsn or dsn_file)");
			goto out;
		}
		r = sqldb_open_pg(o->dsn, o->wait_ms ? o->wait_ms : 30000, &s->db);
	} else {
		if (o->dir == NULL) {
			r = cf_error(CF_E_CONFIG, "the SQLite state store needs a directory");
			goto out;
		}
		snprintf(path, sizeof(path), "%s/coffer.db", o->dir);
		snprintf(s->where, sizeof(s->where), "%s", path);
		r = sqldb_open_sqlite(path, o->busy_ms ? o->busy_ms : 5000, &s->db);
	}
	if (r != CF_OK || (r = schema(s)) != CF_OK)
		goto out;
	*out = s;
	s = NULL;
out:
	store_close(s);
	return r;
}

int
store_open(const char *dir, store **out)
{
	struct store_options o = { .backend = STORE_SQLITE, .dir = dir };

	return store_open_with(&o, out);
}

void
store_close(store *s)
{
	if (s == NULL)
		return;
	sqldb_close(s->db);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

void
store_ckaid_legacy(const char *name, uint32_t version, uint8_t out[STORE_CKAID_LEN])
{
	char label[CF_KEY_NAME_MAX + 48];
	uint8_t md[SHA256_DIGEST_LENGTH];

	snprintf(label, sizeof(label), "coffer/%s/%u", name, version);
	SHA256((const unsigned char *)label, strlen(label), md);
	memcpy(out, md, STORE_CKAID_LEN);
}

/* A recorded CKA_ID; NULL (a version older than schema 7): the legacy one. */
static void
store_ckaid_parse(const char *hex, const char *name, uint32_t version,
		  uint8_t out[STORE_CKAID_LEN])
{
	if (hex == NULL || strlen(hex) != 2 * STORE_CKAID_LEN ||
	    cf_hex_decode(hex, out, STORE_CKAID_LEN) != 0)
		store_ckaid_legacy(name, version, out);
}

static void
hex_id(const uint8_t id[STORE_CKAID_LEN], char out[2 * STORE_CKAID_LEN + 1])
{
	cf_hex_encode(id, STORE_CKAID_LEN, out);
}

/* ---- keys ---- */

#define KEY_COLUMNS                                                                        \
	"SELECT name, type, exportable, primary_version, created, allowed_ops, min_version, " \
	"min_verify, rotation_period, next_rotation, pending_rotation FROM keys "

/* Every key (name NULL) or one; CF_E_NOT_FOUND if that one is not there. */
static int
load_keys(store *s, const char *one, int (*cb)(const struct store_key *k, void *arg), void *arg)
{
	sqldb_stmt *ks = NULL, *vs = NULL;
	struct store_key k;
	int r, rc, n = 0;

	if ((r = enter(s, 0)) != CF_OK)
		return r;
	memset(&k, 0, sizeof(k));
	if ((one != NULL ? sqldb_query(s->db, &ks, KEY_COLUMNS "WHERE name = ?", "t", one)
			 : sqldb_query(s->db, &ks, KEY_COLUMNS "ORDER BY name", "")) != SQLDB_OK) {
		r = db_err(s, "loading keys");
		goto out;
	}
	while ((rc = sqldb_step(ks)) == SQLDB_ROW) {
		const char *name = sqldb_text(ks, 0);
		const char *type = sqldb_text(ks, 1);
		size_t cap = 0;

		if (name == NULL || type == NULL || cf_key_name_check(name) != CF_OK ||
		    cf_key_type_parse(type, &k.type) != CF_OK) {
			r = cf_error(CF_E_IO, "state store holds a malformed key record");
			goto out;
		}
		snprintf(k.name, sizeof(k.name), "%s", name);
		k.exportable = (int)sqldb_int64(ks, 2);
		k.primary = (uint32_t)sqldb_int64(ks, 3);
		k.created = sqldb_int64(ks, 4);
		k.allowed_ops = (uint32_t)sqldb_int64(ks, 5);
		k.min_version = (uint32_t)sqldb_int64(ks, 6);
		k.min_verify = (uint32_t)sqldb_int64(ks, 7);
		k.rotation_period = sqldb_int64(ks, 8);
		k.next_rotation = sqldb_int64(ks, 9);
		k.pending_rotation = (uint32_t)sqldb_int64(ks, 10);
		k.nversions = 0;
		free(k.versions);
		k.versions = NULL;
		if (sqldb_query(s->db, &vs, "SELECT version, state, created, destroy_time, "
				"prior_state, ckaid FROM versions WHERE name = ? ORDER BY version",
				"t", k.name) != SQLDB_OK) {
			r = db_err(s, "loading key versions");
			goto out;
		}
		while ((rc = sqldb_step(vs)) == SQLDB_ROW) {
			struct store_version *v;

			if ((r = room_for(&k.versions, k.nversions, &cap, 8,
					  sizeof(*k.versions))) != CF_OK)
				goto out;
			v = &k.versions[k.nversions++];
			v->version = (uint32_t)sqldb_int64(vs, 0);
			v->state = (enum store_state)sqldb_int64(vs, 1);
			v->created = sqldb_int64(vs, 2);
			v->destroy_time = sqldb_int64(vs, 3);
			v->prior = (enum store_state)sqldb_int64(vs, 4);
			store_ckaid_parse(sqldb_text(vs, 5), k.name, v->version, v->ckaid);
		}
		sqldb_finalize(vs);
		vs = NULL;
		/* A key read only in part must not look like one with fewer versions. */
		if (rc != SQLDB_DONE) {
			r = db_err(s, "loading key versions");
			goto out;
		}
		n++;
		if ((r = cb(&k, arg)) != CF_OK)
			goto out;
	}
	if (rc != SQLDB_DONE)
		r = db_err(s, "loading keys");
	else if (one != NULL && n == 0)
		r = cf_error(CF_E_NOT_FOUND, "no key %s in the state store", one);
out:
	free(k.versions);
	sqldb_finalize(ks);
	sqldb_finalize(vs);
	return leave(s, r, "loading keys");
}

int
store_load(store *s, int (*cb)(const struct store_key *k, void *arg), void *arg)
{
	return load_keys(s, NULL, cb, arg);
}

int
store_key_get(store *s, const char *name, int (*cb)(const struct store_key *k, void *arg),
	      void *arg)
{
	return load_keys(s, name, cb, arg);
}

/* ---- changes ---- */

static __thread struct store_call *current_call;

void
store_call_set(struct store_call *c)
{
	current_call = c;
}

struct store_call *
store_call_get(void)
{
	return current_call;
}

/* A transaction that records a change: what it changed (its kind for the
 * change notification; its name and version for the call's audit record and
 * idempotency mark), the intent it retires, and the crash points just
 * before and just after its commit. */
struct effect {
	const char *kind;
	const char *name;
	uint32_t version;
	int64_t intent;
	const struct cf_crashpoint *before, *after;
};
#define EFFECT_POINTS(nm)                                                                      \
	CF_CRASHPOINT_DEF(cp_before, nm ".before-commit");                                     \
	CF_CRASHPOINT_DEF(cp_after, nm ".committed")

/* Tell other replicas, on commit, that `kind` `name` changed (store.h). */
static int
announce(store *s, const char *kind, const char *name)
{
	char note[16 + CF_KEY_NAME_MAX + 32];

	snprintf(note, sizeof(note), "%s %s", kind, name);
	return sqldb_notify(s->db, STORE_NOTIFY_CHANNEL, note) == SQLDB_OK ? CF_OK :
	       db_err(s, "announcing the change");
}

/* What a change commits with it (store_call in store.h). */
static int
effect_rows(store *s, const struct effect *e)
{
	struct store_call *c = current_call;
	char line[2048];
	int r;

	if (e->intent != 0 &&
	    sqldb_run(s->db, "DELETE FROM intents WHERE id = ?", "i", e->intent) != SQLDB_OK)
		return db_err(s, "retiring the intent");
	if ((r = announce(s, e->kind, e->name)) != CF_OK)
		return r;
	if (c == NULL)
		return CF_OK;
	if (c->record != NULL) {
		if (c->record(c, e->name, e->version, line, sizeof(line)) < 0)
			return cf_error(CF_E_INTERNAL, "cannot format the audit record of the change");
		if (sqldb_run(s->db, "INSERT INTO audit_outbox (line, replica) VALUES (?, ?)", "tt",
			      line, s->replica) != SQLDB_OK)
			return db_err(s, "recording the change's audit record");
	}
	if (c->idem_key == NULL)
		return CF_OK;
	if (sqldb_run(s->db, "UPDATE idempotency SET committed = 1, effect_name = ?, "
		      "effect_version = ? WHERE key = ? AND uid = ? AND done = 0 AND committed = 0 "
		      "AND owner = ?", "titit", e->name, (int64_t)e->version, c->idem_key,
		      (int64_t)c->uid, c->idem_owner ? c->idem_owner : "") != SQLDB_OK)
		return db_err(s, "marking the idempotency record");
	/* Fencing: the record must still be this call's (marked now, or by an
	 * earlier change of the same call). A replica that was taken for dead
	 * (its PostgreSQL connection lost) and whose record another replica
	 * took over must not commit the change a second time. */
	if (sqldb_changes(s->db) == 0) {
		sqldb_stmt *st = NULL;
		int mine = 0;

		if (sqldb_query(s->db, &st, "SELECT 1 FROM idempotency WHERE key = ? AND uid = ? "
				"AND done = 0 AND committed = 1 AND owner = ?", "tit", c->idem_key,
				(int64_t)c->uid, c->idem_owner ? c->idem_owner : "") != SQLDB_OK)
			return db_err(s, "reading the idempotency record");
		r = sqldb_step(st);
		mine = r == SQLDB_ROW;
		sqldb_finalize(st);
		if (r != SQLDB_ROW && r != SQLDB_DONE)
			return db_err(s, "reading the idempotency record");
		if (!mine)
			return cf_error(CF_E_UNAVAILABLE, "idempotency key %s was taken over by "
					"another replica while this call ran (this replica lost "
					"PostgreSQL); not committing it twice; retry", c->idem_key);
	}
	return CF_OK;
}

/* Run body(s, arg) in one write transaction under the store's lock:
 * committed if it returns CF_OK, rolled back otherwise. e: the change it
 * records (NULL: none). */
static int
txn_effect(store *s, int (*body)(store *s, const void *arg), const void *arg,
	   const struct effect *e)
{
	int r;

	if ((r = enter(s, 1)) != CF_OK)
		return r;
	if ((r = body(s, arg)) == CF_OK && e != NULL)
		r = effect_rows(s, e);
	if (r == CF_OK && e != NULL)
		cf_crashpoint_hit(e->before);
	if ((r = leave(s, r, "committing the change")) == CF_OK && e != NULL) {
		if (current_call != NULL)
			current_call->effects++;
		cf_crashpoint_hit(e->after);
		if (s->change_touch != NULL)
			s->change_touch(s->change_arg);
		if (current_call != NULL && current_call->record != NULL && s->committed != NULL)
			s->committed(s->committed_arg);
	}
	return r;
}

static int
txn(store *s, int (*body)(store *s, const void *arg), const void *arg)
{
	return txn_effect(s, body, arg, NULL);
}

struct key_create {
	const struct store_key *k;
	const char *ckaid;
};

static int
key_create_body(store *s, const void *arg)
{
	const struct key_create *kc = arg;
	const struct store_key *k = kc->k;
	int rc;

	rc = sqldb_run(s->db, "INSERT INTO keys (name, type, exportable, primary_version, "
		       "created, allowed_ops, rotation_period, next_rotation) "
		       "VALUES (?, ?, ?, 1, ?, ?, ?, ?)", "ttiiiii", k->name,
		       cf_key_type_name(k->type), (int64_t)k->exportable, k->created,
		       (int64_t)k->allowed_ops, k->rotation_period, k->next_rotation);
	if (rc == SQLDB_CONSTRAINT)
		return cf_error(CF_E_EXISTS, "key %s already exists", k->name);
	if (rc != SQLDB_OK ||
	    sqldb_run(s->db, "INSERT INTO versions (name, version, state, created, ckaid) "
		      "VALUES (?, 1, ?, ?, ?)", "tiit", k->name, (int64_t)STORE_ENABLED,
		      k->created, kc->ckaid) != SQLDB_OK)
		return db_err(s, "recording the key");
	return CF_OK;
}

int
store_key_create(store *s, const struct store_key *k, const uint8_t ckaid[STORE_CKAID_LEN],
		 int64_t intent)
{
	EFFECT_POINTS("store.key-create");
	char hex[2 * STORE_CKAID_LEN + 1];
	struct key_create kc = { k, hex };
	struct effect e = { "key", k->name, 1, intent, &cp_before, &cp_after };

	hex_id(ckaid, hex);
	return txn_effect(s, key_create_body, &kc, &e);
}

struct version_add {
	const char *name;
	uint32_t version;
	int64_t now, next_rotation;
	const char *ckaid;
};

static int
version_add_body(store *s, const void *arg)
{
	const struct version_add *v = arg;

	if (sqldb_run(s->db, "INSERT INTO versions (name, version, state, created, ckaid) "
		      "VALUES (?, ?, ?, ?, ?)", "tiiit", v->name, (int64_t)v->version,
		      (int64_t)STORE_ENABLED, v->now, v->ckaid) != SQLDB_OK ||
	    sqldb_run(s->db, "UPDATE keys SET primary_version = ?, next_rotation = ?, "
		      "pending_rotation = 0 WHERE name = ?", "iit", (int64_t)v->version,
		      v->next_rotation, v->name) != SQLDB_OK)
		return db_err(s, "recording the new version");
	return CF_OK;
}

int
store_version_add(store *s, const char *name, uint32_t version,
		  const uint8_t ckaid[STORE_CKAID_LEN], int64_t now, int64_t next_rotation,
		  int64_t intent)
{
	EFFECT_POINTS("store.version-add");
	char hex[2 * STORE_CKAID_LEN + 1];
	struct version_add v = { name, version, now, next_rotation, hex };
	struct effect e = { "key", name, version, intent, &cp_before, &cp_after };

	hex_id(ckaid, hex);
	return txn_effect(s, version_add_body, &v, &e);
}

static int
key_save_body(store *s, const void *arg)
{
	const struct store_key *k = arg;

	if (sqldb_run(s->db, "UPDATE keys SET primary_version = ?, min_version = ?, "
		      "min_verify = ?, rotation_period = ?, next_rotation = ?, "
		      "pending_rotation = ? WHERE name = ?", "iiiiiit", (int64_t)k->primary,
		      (int64_t)k->min_version, (int64_t)k->min_verify, k->rotation_period,
		      k->next_rotation, (int64_t)k->pending_rotation, k->name) != SQLDB_OK)
		return db_err(s, "recording the key's change");
	if (sqldb_changes(s->db) != 1)
		return cf_error(CF_E_IO, "state store: recording the key's change: no key %s",
				k->name);
	for (uint32_t i = 0; i < k->nversions; i++) {
		const struct store_version *v = &k->versions[i];

		if (sqldb_run(s->db, "UPDATE versions SET state = ?, destroy_time = ?, "
			      "prior_state = ? WHERE name = ? AND version = ?", "iiiti",
			      (int64_t)v->state, v->destroy_time, (int64_t)v->prior, k->name,
			      (int64_t)v->version) != SQLDB_OK)
			return db_err(s, "recording a version's state");
	}
	return CF_OK;
}

int
store_key_save(store *s, const struct store_key *k, uint32_t version, int64_t intent)
{
	EFFECT_POINTS("store.key-save");
	struct effect e = { "key", k->name, version, intent, &cp_before, &cp_after };

	return txn_effect(s, key_save_body, k, &e);
}

/* ---- principals ---- */

int
store_principals_load(store *s, int (*cb)(const struct store_principal *p, void *arg), void *arg)
{
	sqldb_stmt *ps = NULL, *q = NULL;
	struct store_principal p;
	int r, rc;

	if ((r = enter(s, 0)) != CF_OK)
		return r;
	memset(&p, 0, sizeof(p));
	if (sqldb_query(s->db, &ps, "SELECT name, created FROM principals ORDER BY name", "") !=
	    SQLDB_OK) {
		r = db_err(s, "loading principals");
		goto out;
	}
	while ((rc = sqldb_step(ps)) == SQLDB_ROW) {
		const char *name = sqldb_text(ps, 0);
		size_t gcap = 0, lcap = 0;

		if (name == NULL || strlen(name) > STORE_PRINCIPAL_NAME_MAX) {
			r = cf_error(CF_E_IO, "state store holds a malformed principal record");
			goto out;
		}
		snprintf(p.name, sizeof(p.name), "%s", name);
		p.created = sqldb_int64(ps, 1);
		p.nuids = p.ngids = p.ngrants = p.nlimits = 0;
		if (sqldb_query(s->db, &q, "SELECT kind, id FROM principal_ids WHERE principal = ? "
				"ORDER BY kind, id", "t", p.name) != SQLDB_OK)
			goto failed;
		while ((rc = sqldb_step(q)) == SQLDB_ROW) {
			uint32_t id = (uint32_t)sqldb_int64(q, 1);

			if (sqldb_int64(q, 0) == 0 && p.nuids < STORE_PRINCIPAL_IDS_MAX)
				p.uids[p.nuids++] = id;
			else if (p.ngids < STORE_PRINCIPAL_IDS_MAX)
				p.gids[p.ngids++] = id;
		}
		sqldb_finalize(q);
		q = NULL;
		if (rc != SQLDB_DONE ||
		    sqldb_query(s->db, &q, "SELECT pattern, ops FROM grants WHERE principal = ? "
				"ORDER BY pattern", "t", p.name) != SQLDB_OK)
			goto failed;
		while ((rc = sqldb_step(q)) == SQLDB_ROW) {
			const char *pat = sqldb_text(q, 0);

			if ((r = room_for(&p.grants, p.ngrants, &gcap, 8, sizeof(*p.grants))) != CF_OK)
				goto out;
			snprintf(p.grants[p.ngrants].pattern, sizeof(p.grants[0].pattern), "%s",
				 pat ? pat : "");
			p.grants[p.ngrants++].ops = (uint32_t)sqldb_int64(q, 1);
		}
		sqldb_finalize(q);
		q = NULL;
		if (rc != SQLDB_DONE ||
		    sqldb_query(s->db, &q, "SELECT op, rate, burst FROM limits WHERE principal = ? "
				"ORDER BY op", "t", p.name) != SQLDB_OK)
			goto failed;
		while ((rc = sqldb_step(q)) == SQLDB_ROW) {
			if ((r = room_for(&p.limits, p.nlimits, &lcap, 4, sizeof(*p.limits))) != CF_OK)
				goto out;
			p.limits[p.nlimits].op = (uint32_t)sqldb_int64(q, 0);
			p.limits[p.nlimits].rate = sqldb_double(q, 1);
			p.limits[p.nlimits++].burst = (uint32_t)sqldb_int64(q, 2);
		}
		sqldb_finalize(q);
		q = NULL;
		if (rc != SQLDB_DONE)
			goto failed;
		if ((r = cb(&p, arg)) != CF_OK)
			goto out;
	}
	if (rc != SQLDB_DONE)
		r = db_err(s, "loading principals");
	goto out;
failed:
	/* A principal read only in part must not look like one with less. */
	r = db_err(s, "loading a principal's ids, grants and limits");
out:
	free(p.grants);
	free(p.limits);
	sqldb_finalize(ps);
	sqldb_finalize(q);
	return leave(s, r, "loading principals");
}

static int
put_rows(store *s, const struct store_principal *p)
{
	int rc = SQLDB_OK;

	for (uint32_t i = 0; i < p->nuids + p->ngids && rc == SQLDB_OK; i++)
		rc = sqldb_run(s->db, "INSERT INTO principal_ids (principal, kind, id) "
			       "VALUES (?, ?, ?)", "tii", p->name, (int64_t)(i < p->nuids ? 0 : 1),
			       (int64_t)(i < p->nuids ? p->uids[i] : p->gids[i - p->nuids]));
	for (uint32_t i = 0; i < p->ngrants && rc == SQLDB_OK; i++)
		rc = sqldb_run(s->db, "INSERT INTO grants (principal, pattern, ops) "
			       "VALUES (?, ?, ?)", "tti", p->name, p->grants[i].pattern,
			       (int64_t)p->grants[i].ops);
	for (uint32_t i = 0; i < p->nlimits && rc == SQLDB_OK; i++)
		rc = sqldb_run(s->db, "INSERT INTO limits (principal, op, rate, burst) "
			       "VALUES (?, ?, ?, ?)", "tidi", p->name, (int64_t)p->limits[i].op,
			       p->limits[i].rate, (int64_t)p->limits[i].burst);
	return rc;
}

static int
principal_create_body(store *s, const void *arg)
{
	const struct store_principal *p = arg;
	int rc = sqldb_run(s->db, "INSERT INTO principals (name, created) VALUES (?, ?)", "ti",
			   p->name, p->created);

	if (rc == SQLDB_CONSTRAINT)
		return cf_error(CF_E_EXISTS, "principal %s already exists", p->name);
	if (rc == SQLDB_OK)
		rc = put_rows(s, p);
	if (rc == SQLDB_CONSTRAINT)
		return cf_error(CF_E_EXISTS, "a uid or gid of %s belongs to another principal",
				p->name);
	return rc == SQLDB_OK ? CF_OK : db_err(s, "recording the principal");
}

static int
principal_replace_body(store *s, const void *arg)
{
	const struct store_principal *p = arg;
	int rc = sqldb_run(s->db, "DELETE FROM principal_ids WHERE principal = ?", "t", p->name);

	if (rc == SQLDB_OK)
		rc = sqldb_run(s->db, "DELETE FROM grants WHERE principal = ?", "t", p->name);
	if (rc == SQLDB_OK)
		rc = sqldb_run(s->db, "DELETE FROM limits WHERE principal = ?", "t", p->name);
	if (rc == SQLDB_OK)
		rc = put_rows(s, p);
	if (rc == SQLDB_CONSTRAINT)
		return cf_error(CF_E_EXISTS, "a uid or gid of %s belongs to another principal",
				p->name);
	return rc == SQLDB_OK ? CF_OK : db_err(s, "recording the principal");
}

int
store_principal_put(store *s, const struct store_principal *p, int create)
{
	EFFECT_POINTS("store.principal-put");
	struct effect e = { "principal", p->name, 0, 0, &cp_before, &cp_after };

	return txn_effect(s, create ? principal_create_body : principal_replace_body, p, &e);
}

struct principal_delete {
	const char *name;
	int64_t now;
	struct store_dropped *dropped;
};

/* The secrets of name's API keys, into d (before they go). */
static int
list_secrets(store *s, const char *name, struct store_dropped *d)
{
	sqldb_stmt *st = NULL;
	int rc;

	d->n = d->total = 0;
	if (sqldb_query(s->db, &st, "SELECT s.id, s.generation FROM api_secrets s JOIN api_keys "
			"k ON k.id = s.id WHERE k.principal = ? ORDER BY s.id, s.generation", "t",
			name) != SQLDB_OK)
		return db_err(s, "listing the principal's API key secrets");
	while ((rc = sqldb_step(st)) == SQLDB_ROW) {
		const char *id = sqldb_text(st, 0);

		if (id == NULL || strlen(id) > STORE_APIKEY_ID_MAX) {
			sqldb_finalize(st);
			return cf_error(CF_E_IO, "state store holds a malformed API key record");
		}
		if (d->n < STORE_DROPPED_MAX) {
			snprintf(d->s[d->n].id, sizeof(d->s[d->n].id), "%s", id);
			d->s[d->n++].generation = (uint32_t)sqldb_int64(st, 1);
		}
		d->total++;
	}
	sqldb_finalize(st);
	return rc == SQLDB_DONE ? CF_OK : db_err(s, "listing the principal's API key secrets");
}

static int
principal_delete_body(store *s, const void *arg)
{
	const struct principal_delete *d = arg;
	const char *name = d->name;
	int rc;

	if (sqldb_run(s->db, "DELETE FROM principals WHERE name = ?", "t", name) != SQLDB_OK)
		return db_err(s, "deleting the principal");
	if (sqldb_changes(s->db) == 0)
		return cf_error(CF_E_NOT_FOUND, "no principal %s", name);
	if (d->dropped != NULL && (rc = list_secrets(s, name, d->dropped)) != CF_OK)
		return rc;
	if (sqldb_run(s->db, "UPDATE api_keys SET revoked = ? WHERE principal = ? AND revoked = 0",
		      "it", d->now, name) != SQLDB_OK ||
	    sqldb_run(s->db, "DELETE FROM api_secrets WHERE id IN (SELECT id FROM api_keys "
		      "WHERE principal = ?)", "t", name) != SQLDB_OK)
		return db_err(s, "revoking the principal's API keys");
	/* A principal made later under the name starts without the signed-calls
	 * flag; cleared in this transaction, so the deletion stays one change
	 * with one audit record. "signed" has the replicas re-read their API
	 * keys too. */
	if (sqldb_run(s->db, "DELETE FROM signed_principals WHERE principal = ?", "t", name) !=
	    SQLDB_OK)
		return db_err(s, "deleting the principal's signed-calls flag");
	return announce(s, "signed", name);
}

int
store_principal_delete(store *s, const char *name, int64_t now, struct store_dropped *dropped)
{
	EFFECT_POINTS("store.principal-delete");
	struct effect e = { "principal", name, 0, 0, &cp_before, &cp_after };
	struct principal_delete d = { name, now, dropped };

	return txn_effect(s, principal_delete_body, &d, &e);
}

/* ---- API keys ---- */

int
store_apikeys_load(store *s, int (*cb)(const struct store_apikey *k, void *arg), void *arg)
{
	sqldb_stmt *ks = NULL, *ss = NULL;
	struct store_apikey k;
	int r, rc;

	if ((r = enter(s, 0)) != CF_OK)
		return r;
	if (sqldb_query(s->db, &ks, "SELECT id, principal, created, revoked, next_generation "
			"FROM api_keys ORDER BY id", "") != SQLDB_OK) {
		r = db_err(s, "loading API keys");
		goto out;
	}
	while ((rc = sqldb_step(ks)) == SQLDB_ROW) {
		const char *id = sqldb_text(ks, 0);
		const char *pr = sqldb_text(ks, 1);

		memset(&k, 0, sizeof(k));
		if (id == NULL || pr == NULL || strlen(id) > STORE_APIKEY_ID_MAX ||
		    strlen(pr) > STORE_PRINCIPAL_NAME_MAX) {
			r = cf_error(CF_E_IO, "state store holds a malformed API key record");
			goto out;
		}
		snprintf(k.id, sizeof(k.id), "%s", id);
		snprintf(k.principal, sizeof(k.principal), "%s", pr);
		k.created = sqldb_int64(ks, 2);
		k.revoked = sqldb_int64(ks, 3);
		k.next_generation = (uint32_t)sqldb_int64(ks, 4);
		if (sqldb_query(s->db, &ss, "SELECT generation, created, expires FROM api_secrets "
				"WHERE id = ? ORDER BY generation DESC", "t", k.id) != SQLDB_OK) {
			r = db_err(s, "loading API key secrets");
			goto out;
		}
		while ((rc = sqldb_step(ss)) == SQLDB_ROW) {
			if (k.nsecrets == STORE_APIKEY_SECRETS_MAX) {
				r = cf_error(CF_E_IO, "state store: API key %s has more than %d "
					     "secrets", k.id, STORE_APIKEY_SECRETS_MAX);
				goto out;
			}
			k.secrets[k.nsecrets].generation = (uint32_t)sqldb_int64(ss, 0);
			k.secrets[k.nsecrets].created = sqldb_int64(ss, 1);
			k.secrets[k.nsecrets++].expires = sqldb_int64(ss, 2);
		}
		sqldb_finalize(ss);
		ss = NULL;
		/* A key read only in part must not look like one with fewer secrets. */
		if (rc != SQLDB_DONE) {
			r = db_err(s, "loading API key secrets");
			goto out;
		}
		if ((r = cb(&k, arg)) != CF_OK)
			goto out;
	}
	if (rc != SQLDB_DONE)
		r = db_err(s, "loading API keys");
out:
	sqldb_finalize(ks);
	sqldb_finalize(ss);
	return leave(s, r, "loading API keys");
}

static int
apikey_rows(store *s, const struct store_apikey *k, int rc)
{
	if (rc == SQLDB_OK)
		rc = sqldb_run(s->db, "DELETE FROM api_secrets WHERE id = ?", "t", k->id);
	for (uint32_t i = 0; i < k->nsecrets && rc == SQLDB_OK; i++)
		rc = sqldb_run(s->db, "INSERT INTO api_secrets (id, generation, created, expires) "
			       "VALUES (?, ?, ?, ?)", "tiii", k->id,
			       (int64_t)k->secrets[i].generation, k->secrets[i].created,
			       k->secrets[i].expires);
	return rc == SQLDB_OK ? CF_OK : db_err(s, "recording the API key");
}

static int
apikey_create_body(store *s, const void *arg)
{
	const struct store_apikey *k = arg;
	/* Only for a principal that exists as this commits: one deleted
	 * meanwhile revoked every key it had (principal_delete_body), and a
	 * key made after that would outlive it. */
	int rc = sqldb_run(s->db, "INSERT INTO api_keys (id, principal, created, revoked, "
			   "next_generation) SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM "
			   "principals WHERE name = ?)", "ttiiit", k->id, k->principal, k->created,
			   k->revoked, (int64_t)k->next_generation, k->principal);

	if (rc == SQLDB_CONSTRAINT)
		return cf_error(CF_E_EXISTS, "API key %s already exists", k->id);
	if (rc == SQLDB_OK && sqldb_changes(s->db) == 0)
		return cf_error(CF_E_NOT_FOUND, "no principal %s", k->principal);
	/* From its first key on, the principal's calls must be signed. */
	if (rc == SQLDB_OK) {
		if (sqldb_run(s->db, "INSERT INTO signed_principals (principal) VALUES (?) "
			      "ON CONFLICT DO NOTHING", "t", k->principal) != SQLDB_OK)
			return db_err(s, "recording that the principal signs its calls");
		if (sqldb_changes(s->db) == 1 && (rc = announce(s, "signed", k->principal)) != CF_OK)
			return rc;
	}
	return apikey_rows(s, k, rc);
}

static int
apikey_update_body(store *s, const void *arg)
{
	const struct store_apikey *k = arg;
	/* Only a key still live in the store: a change read from memory must
	 * not write back one its principal's deletion revoked meanwhile. */
	int rc = sqldb_run(s->db, "UPDATE api_keys SET revoked = ?, next_generation = ? WHERE "
			   "id = ? AND revoked = 0", "iit", k->revoked,
			   (int64_t)k->next_generation, k->id);

	if (rc == SQLDB_OK && sqldb_changes(s->db) == 0)
		return cf_error(CF_E_PRECONDITION, "API key %s was revoked; create a new one",
				k->id);
	return apikey_rows(s, k, rc);
}

int
store_apikey_put(store *s, const struct store_apikey *k, int create, uint32_t generation,
		 int64_t intent)
{
	EFFECT_POINTS("store.apikey-put");
	struct effect e = { "apikey", k->id, generation, intent, &cp_before, &cp_after };

	return txn_effect(s, create ? apikey_create_body : apikey_update_body, k, &e);
}

int
store_signed_load(store *s, int (*cb)(const char *principal, void *arg), void *arg)
{
	sqldb_stmt *st = NULL;
	int r, rc = SQLDB_DONE;

	if ((r = enter(s, 0)) != CF_OK)
		return r;
	if (sqldb_query(s->db, &st, "SELECT principal FROM signed_principals", "") != SQLDB_OK) {
		r = db_err(s, "loading the principals that sign their calls");
		goto out;
	}
	while (r == CF_OK && (rc = sqldb_step(st)) == SQLDB_ROW) {
		const char *pr = sqldb_text(st, 0);

		if (pr == NULL || strlen(pr) > STORE_PRINCIPAL_NAME_MAX)
			r = cf_error(CF_E_IO, "state store holds a malformed principal name");
		else
			r = cb(pr, arg);
	}
	if (r == CF_OK && rc != SQLDB_DONE)
		r = db_err(s, "loading the principals that sign their calls");
out:
	sqldb_finalize(st);
	return leave(s, r, "loading the principals that sign their calls");
}

struct signed_set {
	const char *principal;
	int on;
};

static int
signed_set_body(store *s, const void *arg)
{
	const struct signed_set *a = arg;
	/* As an API key (apikey_create_body): only for a principal that exists
	 * as this commits, or the flag would outlive a deletion meanwhile. */
	int rc = a->on ? sqldb_run(s->db, "INSERT INTO signed_principals (principal) SELECT ? "
				   "WHERE EXISTS (SELECT 1 FROM principals WHERE name = ?) "
				   "ON CONFLICT DO NOTHING", "tt", a->principal, a->principal)
		       : sqldb_run(s->db, "DELETE FROM signed_principals WHERE principal = ?", "t",
				   a->principal);
	sqldb_stmt *st = NULL;

	if (rc != SQLDB_OK)
		return db_err(s, "recording whether the principal signs its calls");
	if (!a->on || sqldb_changes(s->db) == 1)
		return CF_OK;
	/* Nothing inserted: already set, or no such principal. */
	if (sqldb_query(s->db, &st, "SELECT 1 FROM principals WHERE name = ?", "t",
			a->principal) != SQLDB_OK)
		return db_err(s, "reading the principal");
	rc = sqldb_step(st);
	sqldb_finalize(st);
	if (rc == SQLDB_DONE)
		return cf_error(CF_E_NOT_FOUND, "no principal %s", a->principal);
	return rc == SQLDB_ROW ? CF_OK : db_err(s, "reading the principal");
}

int
store_signed_set(store *s, const char *principal, int on)
{
	EFFECT_POINTS("store.signed-set");
	struct effect e = { "signed", principal, 0, 0, &cp_before, &cp_after };
	struct signed_set a = { principal, on };

	/* Its audit record is committed with it, as for every principal change. */
	return txn_effect(s, signed_set_body, &a, &e);
}

/* ---- idempotency records ---- */

#define IDEM_COLUMNS                                                                         \
	"key, uid, method, fingerprint, done, status, message, response, created, request_id, " \
	"committed, effect_name, effect_version, owner"
#define IDEM_INSERT                                                                          \
	"INSERT INTO idempotency (" IDEM_COLUMNS ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, " \
	"?, ?) "
#define IDEM_TYPES "titbiitbititit"
#define IDEM_ARGS(r)                                                                          \
	(r)->key, (int64_t)(r)->uid, (r)->method, (const void *)(r)->fingerprint, (size_t)32,   \
		(int64_t)(r)->done, (int64_t)(r)->status, (r)->message,                         \
		(const void *)((r)->response ? (r)->response : (const uint8_t *)""),            \
		(r)->response_len, (r)->created, (r)->request_id, (int64_t)(r)->committed,      \
		(r)->effect_name, (int64_t)(r)->effect_version, (r)->owner

/* The record of (key, uid) into *out (CF_E_NOT_FOUND), inside a transaction. */
static int
idem_read(store *s, const char *key, uint32_t uid, struct store_idem *out)
{
	sqldb_stmt *st = NULL;
	const void *b;
	size_t n;
	int r = CF_OK, rc;

	if (sqldb_query(s->db, &st, "SELECT " IDEM_COLUMNS " FROM idempotency WHERE key = ? "
			"AND uid = ?", "ti", key, (int64_t)uid) != SQLDB_OK)
		return db_err(s, "reading an idempotency record");
	if ((rc = sqldb_step(st)) == SQLDB_DONE) {
		r = cf_error(CF_E_NOT_FOUND, "no idempotency record for key %s", key);
		goto out;
	}
	if (rc != SQLDB_ROW || (b = sqldb_blob(st, 3, &n)) == NULL || n != 32) {
		r = rc != SQLDB_ROW ? db_err(s, "reading an idempotency record")
				    : cf_error(CF_E_IO, "state store holds a malformed idempotency "
					       "record for key %s", key);
		goto out;
	}
	memset(out, 0, sizeof(*out));
	snprintf(out->key, sizeof(out->key), "%s", key);
	out->uid = uid;
	memcpy(out->fingerprint, b, 32);
	snprintf(out->method, sizeof(out->method), "%s", sqldb_text(st, 2) ?: "");
	out->done = (int)sqldb_int64(st, 4);
	out->status = (int)sqldb_int64(st, 5);
	snprintf(out->message, sizeof(out->message), "%s", sqldb_text(st, 6) ?: "");
	out->created = sqldb_int64(st, 8);
	snprintf(out->request_id, sizeof(out->request_id), "%s", sqldb_text(st, 9) ?: "");
	out->committed = (int)sqldb_int64(st, 10);
	snprintf(out->effect_name, sizeof(out->effect_name), "%s", sqldb_text(st, 11) ?: "");
	out->effect_version = (uint32_t)sqldb_int64(st, 12);
	snprintf(out->owner, sizeof(out->owner), "%s", sqldb_text(st, 13) ?: "");
	if ((b = sqldb_blob(st, 7, &n)) != NULL && n > 0) {
		if ((out->response = malloc(n)) == NULL) {
			r = cf_nomem();
			goto out;
		}
		memcpy(out->response, b, n);
		out->response_len = n;
	}
out:
	sqldb_finalize(st);
	return r;
}

int
store_idem_get(store *s, const char *key, uint32_t uid, struct store_idem *out)
{
	int r;

	if ((r = enter(s, 0)) != CF_OK)
		return r;
	return leave(s, idem_read(s, key, uid, out), "reading an idempotency record");
}

static int
idem_put_body(store *s, const void *arg)
{
	const struct store_idem *r = arg;

	if (sqldb_run(s->db, IDEM_INSERT "ON CONFLICT (key, uid) DO UPDATE SET "
		      "method = excluded.method, fingerprint = excluded.fingerprint, "
		      "done = excluded.done, status = excluded.status, message = excluded.message, "
		      "response = excluded.response, created = excluded.created, "
		      "request_id = excluded.request_id, committed = excluded.committed, "
		      "effect_name = excluded.effect_name, effect_version = excluded.effect_version, "
		      "owner = excluded.owner", IDEM_TYPES, IDEM_ARGS(r)) != SQLDB_OK)
		return db_err(s, "recording an idempotency key");
	return CF_OK;
}

int
store_idem_put(store *s, const struct store_idem *r)
{
	return txn(s, idem_put_body, r);
}

struct idem_claim {
	const struct store_idem *r;
	struct store_idem *existing;
};

static int
idem_claim_body(store *s, const void *arg)
{
	const struct idem_claim *c = arg;
	struct store_idem found;
	int r;

	/* Read committed (PostgreSQL): a record deleted between the insert that
	 * met it and the read reads as gone; the insert is then tried again. */
	for (int tries = 1;; tries++) {
		if (sqldb_run(s->db, IDEM_INSERT "ON CONFLICT (key, uid) DO NOTHING", IDEM_TYPES,
			      IDEM_ARGS(c->r)) != SQLDB_OK)
			return db_err(s, "claiming an idempotency key");
		if (sqldb_changes(s->db) == 1)
			return CF_OK;
		if ((r = idem_read(s, c->r->key, c->r->uid, &found)) != CF_E_NOT_FOUND)
			break;
		if (tries == 3)
			return cf_error(CF_E_BUSY, "the idempotency record for key %s keeps changing "
					"while it is claimed; try again", c->r->key);
	}
	if (r != CF_OK)
		return r;
	if (c->existing != NULL)
		*c->existing = found;
	else
		free(found.response);
	return cf_error(CF_E_EXISTS, "idempotency key %s is already recorded", c->r->key);
}

int
store_idem_claim(store *s, const struct store_idem *r, struct store_idem *existing)
{
	struct idem_claim c = { r, existing };

	return txn(s, idem_claim_body, &c);
}

struct idem_takeover {
	const struct store_idem *r;
	const char *old_owner;
};

static int
idem_takeover_body(store *s, const void *arg)
{
	const struct idem_takeover *t = arg;
	const struct store_idem *r = t->r;

	if (sqldb_run(s->db, "UPDATE idempotency SET method = ?, fingerprint = ?, done = ?, "
		      "status = ?, message = ?, response = ?, created = ?, request_id = ?, "
		      "committed = ?, effect_name = ?, effect_version = ?, owner = ? "
		      "WHERE key = ? AND uid = ? AND done = 0 AND committed = 0 AND owner = ?",
		      "tbiitbititittit", r->method, (const void *)r->fingerprint, (size_t)32,
		      (int64_t)r->done, (int64_t)r->status, r->message,
		      (const void *)(r->response ? r->response : (const uint8_t *)""),
		      r->response_len, r->created, r->request_id, (int64_t)r->committed,
		      r->effect_name, (int64_t)r->effect_version, r->owner, r->key,
		      (int64_t)r->uid, t->old_owner) != SQLDB_OK)
		return db_err(s, "taking over an idempotency record");
	if (sqldb_changes(s->db) != 1)
		return cf_error(CF_E_EXISTS, "the idempotency record for key %s is no longer a "
				"pending one of %.64s", r->key, t->old_owner);
	return CF_OK;
}

int
store_idem_takeover(store *s, const struct store_idem *r, const char *old_owner)
{
	struct idem_takeover t = { r, old_owner };

	return txn(s, idem_takeover_body, &t);
}

struct idem_key {
	const char *key;
	uint32_t uid;
};

/* An outcome for (key, uid), or none (r NULL: release), written only while
 * the record is still the pending one of `owner`: a replica another took for
 * dead (and took the record from) cannot overwrite the new owner's. */
struct idem_settle {
	const char *key;
	uint32_t uid;
	const char *owner;
	const struct store_idem *r;
};

static int
idem_settle_body(store *s, const void *arg)
{
	const struct idem_settle *t = arg;
	const struct store_idem *r = t->r;
	int rc;

	if (r == NULL)
		rc = sqldb_run(s->db, "DELETE FROM idempotency WHERE key = ? AND uid = ? AND "
			       "done = 0 AND committed = 0 AND owner = ?", "tit", t->key,
			       (int64_t)t->uid, t->owner);
	else
		rc = sqldb_run(s->db, "UPDATE idempotency SET method = ?, fingerprint = ?, "
			       "done = ?, status = ?, message = ?, response = ?, created = ?, "
			       "request_id = ?, committed = ?, effect_name = ?, effect_version = ? "
			       "WHERE key = ? AND uid = ? AND done = 0 AND owner = ?",
			       "tbiitbitititit", r->method, (const void *)r->fingerprint,
			       (size_t)32, (int64_t)r->done, (int64_t)r->status, r->message,
			       (const void *)(r->response ? r->response : (const uint8_t *)""),
			       r->response_len, r->created, r->request_id, (int64_t)r->committed,
			       r->effect_name, (int64_t)r->effect_version, t->key, (int64_t)t->uid,
			       t->owner);
	if (rc != SQLDB_OK)
		return db_err(s, "settling an idempotency record");
	if (sqldb_changes(s->db) != 1)
		return cf_error(CF_E_EXISTS, "the idempotency record for key %s is no longer a "
				"pending one of %.64s", t->key, t->owner);
	return CF_OK;
}

int
store_idem_settle(store *s, const struct store_idem *r, const char *owner)
{
	struct idem_settle t = { r->key, r->uid, owner, r };

	return txn(s, idem_settle_body, &t);
}

struct idem_adopt {
	const char *key;
	uint32_t uid;
	const char *old_owner, *new_owner;
};

static int
idem_adopt_body(store *s, const void *arg)
{
	const struct idem_adopt *t = arg;

	if (sqldb_run(s->db, "UPDATE idempotency SET owner = ? WHERE key = ? AND uid = ? AND "
		      "done = 0 AND owner = ?", "ttit", t->new_owner, t->key, (int64_t)t->uid,
		      t->old_owner) != SQLDB_OK)
		return db_err(s, "adopting an idempotency record");
	if (sqldb_changes(s->db) != 1)
		return cf_error(CF_E_EXISTS, "the idempotency record for key %s is no longer a "
				"pending one of %.64s", t->key, t->old_owner);
	return CF_OK;
}

int
store_idem_adopt(store *s, const char *key, uint32_t uid, const char *old_owner,
		 const char *new_owner)
{
	struct idem_adopt t = { key, uid, old_owner, new_owner };

	return txn(s, idem_adopt_body, &t);
}

int
store_idem_release(store *s, const char *key, uint32_t uid, const char *owner)
{
	struct idem_settle t = { key, uid, owner, NULL };

	return txn(s, idem_settle_body, &t);
}

static int
idem_expire_body(store *s, const void *arg)
{
	if (sqldb_run(s->db, "DELETE FROM idempotency WHERE done = 1 AND created < ?", "i",
		      *(const int64_t *)arg) != SQLDB_OK)
		return db_err(s, "expiring idempotency records");
	return CF_OK;
}

int
store_idem_expire(store *s, int64_t before)
{
	/* Housekeeping: once the database is gone, nothing to do and nothing
	 * more to say every 5 s (the check logged it once). */
	if (!store_healthy(s))
		return CF_OK;
	return txn(s, idem_expire_body, &before);
}

/* ---- intents ---- */

struct intent_add {
	enum store_intent_kind kind;
	const char *name;
	uint32_t version;
	const char *ckaid;
	int64_t *id;
};

static int
intent_add_body(store *s, const void *arg)
{
	const struct intent_add *a = arg;
	sqldb_stmt *st = NULL;
	int r = CF_OK;

	if (sqldb_query(s->db, &st, "INSERT INTO intents (kind, name, version, ckaid, created, "
			"owner) VALUES (?, ?, ?, ?, ?, ?) RETURNING id", "ititit", (int64_t)a->kind,
			a->name, (int64_t)a->version, a->ckaid, (int64_t)time(NULL),
			s->owner) != SQLDB_OK || sqldb_step(st) != SQLDB_ROW)
		r = db_err(s, "recording the intent");
	else
		*a->id = sqldb_int64(st, 0);
	sqldb_finalize(st);
	return r;
}

int
store_intent_add(store *s, enum store_intent_kind kind, const char *name, uint32_t version,
		 const uint8_t ckaid[STORE_CKAID_LEN], int64_t *id)
{
	char hex[2 * STORE_CKAID_LEN + 1];
	struct intent_add a = { kind, name, version, hex, id };
	int r;

	hex_id(ckaid, hex);
	if ((r = txn(s, intent_add_body, &a)) == CF_OK)
		CF_CRASH_POINT("store.intent-add.committed");
	return r;
}

static int
intent_drop_body(store *s, const void *arg)
{
	if (sqldb_run(s->db, "DELETE FROM intents WHERE id = ?", "i", *(const int64_t *)arg) !=
	    SQLDB_OK)
		return db_err(s, "retiring the intent");
	return CF_OK;
}

int
store_intent_drop(store *s, int64_t id)
{
	return txn(s, intent_drop_body, &id);
}

int
store_intent_drop_own(store *s, int64_t id)
{
	int r;

	fence_skip = 1;
	r = txn(s, intent_drop_body, &id);
	fence_skip = 0;
	return r;
}

/* owner NULL: every owner's. */
static int
intents_clear_body(store *s, const void *arg)
{
	const char *owner = arg;

	if ((owner != NULL ? sqldb_run(s->db, "DELETE FROM intents WHERE owner = ?", "t", owner)
			   : sqldb_run(s->db, "DELETE FROM intents", "")) != SQLDB_OK)
		return db_err(s, "clearing intents");
	return CF_OK;
}

int
store_intents_clear(store *s)
{
	return txn(s, intents_clear_body, NULL);
}

int
store_intents_clear_owner(store *s, const char *owner)
{
	return txn(s, intents_clear_body, owner);
}

int
store_intents_load(store *s, int (*cb)(const struct store_intent *in, void *arg), void *arg)
{
	sqldb_stmt *st = NULL;
	struct store_intent in;
	struct store_intent *all = NULL;
	size_t n = 0, cap = 0;
	int r, rc;

	/* Collected first: callbacks use the store. */
	if ((r = enter(s, 0)) != CF_OK)
		return r;
	if (sqldb_query(s->db, &st, "SELECT id, kind, name, version, ckaid, created, owner "
			"FROM intents ORDER BY id", "") != SQLDB_OK) {
		r = db_err(s, "loading intents");
		goto unlock;
	}
	while ((rc = sqldb_step(st)) == SQLDB_ROW) {
		const char *name = sqldb_text(st, 2);
		const char *hex = sqldb_text(st, 4);
		const char *owner = sqldb_text(st, 6);

		memset(&in, 0, sizeof(in));
		in.id = sqldb_int64(st, 0);
		in.kind = (enum store_intent_kind)sqldb_int64(st, 1);
		in.version = (uint32_t)sqldb_int64(st, 3);
		in.created = sqldb_int64(st, 5);
		if (name == NULL || strlen(name) >= sizeof(in.name) || hex == NULL ||
		    strlen(hex) != 2 * STORE_CKAID_LEN ||
		    cf_hex_decode(hex, in.ckaid, STORE_CKAID_LEN) != 0 ||
		    (owner != NULL && strlen(owner) > STORE_OWNER_MAX)) {
			r = cf_error(CF_E_IO, "state store holds a malformed intent (%lld)",
				     (long long)in.id);
			goto unlock;
		}
		snprintf(in.name, sizeof(in.name), "%s", name);
		snprintf(in.owner, sizeof(in.owner), "%s", owner ? owner : "");
		if ((r = room_for(&all, n, &cap, 8, sizeof(*all))) != CF_OK)
			goto unlock;
		all[n++] = in;
	}
	if (rc != SQLDB_DONE)
		r = db_err(s, "loading intents");
unlock:
	sqldb_finalize(st);
	r = leave(s, r, "loading intents");
	for (size_t i = 0; i < n && r == CF_OK; i++)
		r = cb(&all[i], arg);
	free(all);
	return r;
}

/* ---- the audit outbox and anchor (this replica's) ---- */

int
store_outbox_load(store *s, int (*cb)(int64_t id, const char *line, void *arg), void *arg)
{
	sqldb_stmt *st = NULL;
	int r, rc;

	if ((r = enter(s, 0)) != CF_OK)
		return r;
	if (sqldb_query(s->db, &st, "SELECT id, line FROM audit_outbox WHERE replica = ? "
			"ORDER BY id", "t", s->replica) != SQLDB_OK) {
		r = db_err(s, "reading the audit outbox");
		goto out;
	}
	while ((rc = sqldb_step(st)) == SQLDB_ROW)
		if ((r = cb(sqldb_int64(st, 0), sqldb_text(st, 1) ?: "", arg)) != CF_OK)
			goto out;
	if (rc != SQLDB_DONE)
		r = db_err(s, "reading the audit outbox");
out:
	sqldb_finalize(st);
	return leave(s, r, "reading the audit outbox");
}

static int
anchor_row(store *s, struct store_audit_anchor *out)
{
	sqldb_stmt *st = NULL;
	const char *hex;
	int r, rc;

	if (sqldb_query(s->db, &st, "SELECT seq, chain, clean, time FROM audit_anchor "
			"WHERE replica = ?", "t", s->replica) != SQLDB_OK)
		return db_err(s, "reading the audit anchor");
	if ((rc = sqldb_step(st)) == SQLDB_ROW) {
		memset(out, 0, sizeof(*out));
		out->seq = (uint64_t)sqldb_int64(st, 0);
		hex = sqldb_text(st, 1);
		out->clean = (int)sqldb_int64(st, 2);
		out->time = sqldb_int64(st, 3);
		r = hex != NULL && strlen(hex) == 64 && cf_hex_decode(hex, out->chain, 32) == 0 ?
			    CF_OK : cf_error(CF_E_IO, "state store: the audit anchor is malformed");
	} else if (rc == SQLDB_DONE) {
		r = cf_error(CF_E_NOT_FOUND, "state store: no audit anchor recorded yet");
	} else {
		r = db_err(s, "reading the audit anchor");
	}
	sqldb_finalize(st);
	return r;
}

int
store_audit_anchor_get(store *s, struct store_audit_anchor *out)
{
	int r;

	if ((r = enter(s, 0)) != CF_OK)
		return r;
	return leave(s, anchor_row(s, out), "reading the audit anchor");
}

struct anchor_put {
	const struct store_audit_anchor *a;
	int64_t outbox_done;
};

static int
anchor_put_body(store *s, const void *arg)
{
	const struct anchor_put *ap = arg;
	char hex[65];

	cf_hex_encode(ap->a->chain, 32, hex);
	if (sqldb_run(s->db, "INSERT INTO audit_anchor (replica, seq, chain, clean, time) "
		      "VALUES (?, ?, ?, ?, ?) ON CONFLICT (replica) DO UPDATE SET "
		      "seq = excluded.seq, chain = excluded.chain, clean = excluded.clean, "
		      "time = excluded.time", "titii", s->replica, (int64_t)ap->a->seq, hex,
		      (int64_t)ap->a->clean, ap->a->time) != SQLDB_OK ||
	    (ap->outbox_done > 0 &&
	     sqldb_run(s->db, "DELETE FROM audit_outbox WHERE replica = ? AND id <= ?", "ti",
		       s->replica, ap->outbox_done) != SQLDB_OK))
		return db_err(s, "anchoring the audit trail");
	return CF_OK;
}

int
store_audit_anchor_put(store *s, const struct store_audit_anchor *a, int64_t outbox_done)
{
	struct anchor_put ap = { a, outbox_done };

	return txn(s, anchor_put_body, &ap);
}

void
store_set_committed_hook(store *s, void (*fn)(void *arg), void *arg)
{
	s->committed = fn;
	s->committed_arg = arg;
}

void
store_set_change_lock(store *s, int (*lock)(void *arg), void (*unlock)(void *arg),
		      int (*healthy)(void *arg), void (*touch)(void *arg), void *arg)
{
	s->change_lock = lock;
	s->change_unlock = unlock;
	s->change_healthy = healthy;
	s->change_touch = touch;
	s->change_arg = arg;
}

/* Just after taking the fleet's change lock: a new epoch, which every write
 * of this thread checks until store_change_end (fence_check). The UPDATE
 * waits for a change that still checked the old epoch to commit. */
static int
fence_take(store *s)
{
	sqldb_stmt *st = NULL;
	int64_t epoch = 0;
	int r;

	if ((r = enter(s, 1)) != CF_OK)
		return r;
	/* The wait, for a transaction of a replica that lost the lock, is
	 * bounded by the connection's lock_timeout (sqldb_pg.c), as any lock
	 * of the store is: its text says how long. */
	if (sqldb_query(s->db, &st, "INSERT INTO change_fence (one, epoch) VALUES (true, 1) "
			"ON CONFLICT (one) DO UPDATE SET epoch = change_fence.epoch + 1 "
			"RETURNING epoch", "") != SQLDB_OK || sqldb_step(st) != SQLDB_ROW) {
		r = sqldb_lost(s->db) ? db_err(s, "moving the registry change lock's epoch on") :
		    cf_error(CF_E_UNAVAILABLE, "fleet: a replica that lost the registry change "
			     "lock may still be committing a change; retry (%s)",
			     sqldb_errmsg(s->db));
	} else {
		epoch = sqldb_int64(st, 0);
	}
	sqldb_finalize(st);
	if ((r = leave(s, r, "moving the registry change lock's epoch on")) != CF_OK)
		return r;
	pthread_mutex_lock(&s->mu);
	s->fence_epoch = epoch;
	s->fence_owner = pthread_self();
	s->fence_lost = 0;
	s->fenced = 1;
	pthread_mutex_unlock(&s->mu);
	return CF_OK;
}

int
store_change_begin(store *s, int *shared)
{
	int r;

	*shared = s->change_lock != NULL;
	if (!*shared)
		return CF_OK;
	if ((r = s->change_lock(s->change_arg)) != CF_OK)
		return r;
	if (sqldb_backend(s->db) == SQLDB_POSTGRESQL && (r = fence_take(s)) != CF_OK) {
		s->change_unlock(s->change_arg);
		return r;
	}
	return CF_OK;
}

int
store_change_lost(store *s)
{
	int lost;

	pthread_mutex_lock(&s->mu);
	lost = s->fenced && s->fence_lost && pthread_equal(s->fence_owner, pthread_self());
	pthread_mutex_unlock(&s->mu);
	return lost;
}

int
store_change_check(store *s)
{
	int r;

	if ((r = enter(s, 0)) != CF_OK)
		return r;
	return leave(s, CF_OK, "checking the registry change lock");
}

void
store_change_end(store *s)
{
	pthread_mutex_lock(&s->mu);
	s->fenced = 0;
	s->fence_lost = 0;
	pthread_mutex_unlock(&s->mu);
	if (s->change_unlock != NULL)
		s->change_unlock(s->change_arg);
}
