/* SQLite implementation of the state store. */
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/sha.h>
#include <sqlite3.h>

#include "cf_crashpoint.h"
#include "cf_hex.h"
#include "cf_log.h"
#include "cf_status.h"

struct store {
	sqlite3 *db;
	pthread_mutex_t mu;
	char path[4096];
	dev_t dev;               /* the database file's identity at open */
	ino_t ino;
	atomic_int broken;       /* the path no longer names that file */
	int (*change_lock)(void *arg);     /* store_set_change_lock */
	void (*change_unlock)(void *arg);
	void *change_arg;
};

static const char *const schema_v1 =
	"CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS keys ("
	" name TEXT PRIMARY KEY, type TEXT NOT NULL, exportable INTEGER NOT NULL,"
	" primary_version INTEGER NOT NULL, created INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS versions ("
	" name TEXT NOT NULL REFERENCES keys(name), version INTEGER NOT NULL,"
	" state INTEGER NOT NULL, created INTEGER NOT NULL, PRIMARY KEY (name, version));";

/* Version 2: principals. Created on any older store too (IF NOT EXISTS). */
static const char *const schema_v2 =
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
static const char *const schema_v4 =
	"CREATE TABLE IF NOT EXISTS api_keys ("
	" id TEXT PRIMARY KEY, principal TEXT NOT NULL, created INTEGER NOT NULL,"
	" revoked INTEGER NOT NULL, next_generation INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS api_secrets ("
	" id TEXT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,"
	" generation INTEGER NOT NULL, created INTEGER NOT NULL, expires INTEGER NOT NULL,"
	" PRIMARY KEY (id, generation));";

/* Version 5: idempotency records of mutating calls. */
static const char *const schema_v5 =
	"CREATE TABLE IF NOT EXISTS idempotency ("
	" key TEXT NOT NULL, uid INTEGER NOT NULL, method TEXT NOT NULL,"
	" fingerprint BLOB NOT NULL, done INTEGER NOT NULL, status INTEGER NOT NULL,"
	" message TEXT NOT NULL, response BLOB, created INTEGER NOT NULL,"
	" PRIMARY KEY (key, uid));"
	"CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created);";

/* Version 7: crash safety. Intents of calls between touching the token and
 * recording the outcome; audit records committed with their change, until
 * the trail has them; where the trail ended when last anchored. */
static const char *const schema_v7 =
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
static const char *const schema_v8 =
	"CREATE TABLE IF NOT EXISTS signed_principals (principal TEXT PRIMARY KEY);";

/* Columns added to older tables, with the schema version that added them. */
static const struct {
	int since;
	const char *sql;
} columns[] = {
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
};

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

static int
db_err(store *s, const char *what)
{
	return cf_error(CF_E_IO, "state store: %s: %s", what, sqlite3_errmsg(s->db));
}

/* Undo an open transaction after a failure, keeping that failure's text:
 * SQLite may already have rolled back itself (SQLITE_FULL, SQLITE_IOERR),
 * and "cannot rollback - no transaction is active" would replace the cause. */
static void
rollback(store *s)
{
	if (!sqlite3_get_autocommit(s->db))
		(void)sqlite3_exec(s->db, "ROLLBACK;", NULL, NULL, NULL);
}

/* Before each change (under s->mu): the path must still name the file we
 * opened. A database removed or replaced under a running daemon would take
 * every later change with it at the next start. One stat() (~5 us measured
 * here) is nothing beside a change's fsync'd commit or a token operation. */
static int
check_identity(store *s)
{
	struct stat sb;
	int e = 0;

	if (!atomic_load(&s->broken)) {
		if (stat(s->path, &sb) != 0)
			e = errno;
		else if (sb.st_dev == s->dev && sb.st_ino == s->ino)
			return CF_OK;
		atomic_store(&s->broken, 1);
		cf_log_error("state store: the state database %s was %s while cofferd ran; "
			     "refusing every change until cofferd is restarted with it restored",
			     s->path, e == ENOENT ? "removed" : e != 0 ? "made unreadable" :
			     "replaced");
	}
	return cf_error(CF_E_UNAVAILABLE, "the state database %s was removed or replaced "
			"while cofferd ran; restart cofferd after restoring it; refusing changes",
			s->path);
}

int
store_healthy(store *s)
{
	return s != NULL && !atomic_load(&s->broken);
}

static int
exec(store *s, const char *sql)
{
	char *msg = NULL;
	int r = CF_OK;

	if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK)
		r = cf_error(CF_E_IO, "state store: %s", msg ? msg : "error");
	sqlite3_free(msg);
	return r;
}

int
store_open(const char *dir, store **out)
{
	char path[4096];
	sqlite3_stmt *st = NULL;
	store *s = NULL;
	int r, ver = 0;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		return cf_nomem();
	pthread_mutex_init(&s->mu, NULL);
	snprintf(path, sizeof(path), "%s/coffer.db", dir);
	snprintf(s->path, sizeof(s->path), "%s", path);
	if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
			    SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
		r = cf_error(CF_E_IO, "cannot open state store %s: %s", path,
			     s->db ? sqlite3_errmsg(s->db) : "out of memory");
		goto out;
	}
	sqlite3_busy_timeout(s->db, 5000);
	if ((r = exec(s, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
		      "PRAGMA foreign_keys=ON;")) != CF_OK)
		goto out;
	if ((r = exec(s, "BEGIN IMMEDIATE;")) != CF_OK)
		goto out;
	if ((r = exec(s, schema_v1)) != CF_OK || (r = exec(s, schema_v2)) != CF_OK ||
	    (r = exec(s, schema_v4)) != CF_OK || (r = exec(s, schema_v5)) != CF_OK ||
	    (r = exec(s, schema_v7)) != CF_OK || (r = exec(s, schema_v8)) != CF_OK)
		goto rollback;
	if (sqlite3_prepare_v2(s->db, "SELECT v FROM meta WHERE k = 'schema_version'", -1, &st,
			       NULL) != SQLITE_OK) {
		r = db_err(s, "reading the schema version");
		goto rollback;
	}
	if (sqlite3_step(st) == SQLITE_ROW)
		ver = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	st = NULL;
	if (ver > STORE_SCHEMA_VERSION) {
		r = cf_error(CF_E_CONFIG, "state store %s has schema %d, newer than this cofferd "
			     "(%d); upgrade cofferd", path, ver, STORE_SCHEMA_VERSION);
		goto rollback;
	}
	/* Tables are created above (IF NOT EXISTS); columns added since
	 * version 1 are added here to stores older than them (0: a new one). */
	for (size_t i = 0; i < sizeof(columns) / sizeof(columns[0]); i++)
		if (ver < columns[i].since && (r = exec(s, columns[i].sql)) != CF_OK)
			goto rollback;
	if (ver < STORE_SCHEMA_VERSION) {
		char sql[160];

		snprintf(sql, sizeof(sql), "INSERT OR REPLACE INTO meta VALUES ('schema_version', "
			 "'%d');", STORE_SCHEMA_VERSION);
		if ((r = exec(s, sql)) != CF_OK)
			goto rollback;
	}
	if ((r = exec(s, "COMMIT;")) != CF_OK)
		goto rollback;
	{
		struct stat sb;

		if (stat(path, &sb) != 0) {
			r = cf_error(CF_E_IO, "state store %s: %s", path, strerror(errno));
			goto out;
		}
		s->dev = sb.st_dev;
		s->ino = sb.st_ino;
	}
	*out = s;
	s = NULL;
	goto out;
rollback:
	rollback(s);
out:
	store_close(s);
	return r;
}

void
store_close(store *s)
{
	if (s == NULL)
		return;
	sqlite3_close(s->db);
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

int
store_load(store *s, int (*cb)(const struct store_key *k, void *arg), void *arg)
{
	sqlite3_stmt *ks = NULL, *vs = NULL;
	struct store_key k;
	int r = CF_OK, rc;

	pthread_mutex_lock(&s->mu);
	memset(&k, 0, sizeof(k));
	if (sqlite3_prepare_v2(s->db, "SELECT name, type, exportable, primary_version, created, "
			       "allowed_ops, min_version, min_verify, rotation_period, "
			       "next_rotation, pending_rotation FROM keys ORDER BY name", -1, &ks, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(s->db, "SELECT version, state, created, destroy_time, prior_state, "
			       "ckaid FROM versions WHERE name = ? ORDER BY version", -1, &vs,
			       NULL) != SQLITE_OK) {
		r = db_err(s, "loading keys");
		goto out;
	}
	while ((rc = sqlite3_step(ks)) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(ks, 0);
		const char *type = (const char *)sqlite3_column_text(ks, 1);
		size_t cap = 0;

		if (name == NULL || type == NULL || cf_key_name_check(name) != CF_OK ||
		    cf_key_type_parse(type, &k.type) != CF_OK) {
			r = cf_error(CF_E_IO, "state store holds a malformed key record");
			goto out;
		}
		snprintf(k.name, sizeof(k.name), "%s", name);
		k.exportable = sqlite3_column_int(ks, 2);
		k.allowed_ops = (uint32_t)sqlite3_column_int64(ks, 5);
		k.primary = (uint32_t)sqlite3_column_int64(ks, 3);
		k.created = sqlite3_column_int64(ks, 4);
		k.min_version = (uint32_t)sqlite3_column_int64(ks, 6);
		k.min_verify = (uint32_t)sqlite3_column_int64(ks, 7);
		k.rotation_period = sqlite3_column_int64(ks, 8);
		k.next_rotation = sqlite3_column_int64(ks, 9);
		k.pending_rotation = (uint32_t)sqlite3_column_int64(ks, 10);
		k.nversions = 0;
		sqlite3_reset(vs);
		sqlite3_bind_text(vs, 1, name, -1, SQLITE_TRANSIENT);
		while (sqlite3_step(vs) == SQLITE_ROW) {
			if ((r = room_for(&k.versions, k.nversions, &cap, 8,
					  sizeof(*k.versions))) != CF_OK)
				goto out;
			k.versions[k.nversions].version = (uint32_t)sqlite3_column_int64(vs, 0);
			k.versions[k.nversions].state = (enum store_state)sqlite3_column_int(vs, 1);
			k.versions[k.nversions].created = sqlite3_column_int64(vs, 2);
			k.versions[k.nversions].destroy_time = sqlite3_column_int64(vs, 3);
			k.versions[k.nversions].prior = (enum store_state)sqlite3_column_int(vs, 4);
			store_ckaid_parse((const char *)sqlite3_column_text(vs, 5), name,
					  k.versions[k.nversions].version,
					  k.versions[k.nversions].ckaid);
			k.nversions++;
		}
		if ((r = cb(&k, arg)) != CF_OK)
			goto out;
	}
	if (rc != SQLITE_DONE)
		r = db_err(s, "loading keys");
out:
	free(k.versions);
	sqlite3_finalize(ks);
	sqlite3_finalize(vs);
	pthread_mutex_unlock(&s->mu);
	return r;
}

/* Run one INSERT/UPDATE/DELETE with bound text, int64 and double parameters
 * ("t", "i", "d"). */
static int
run(store *s, const char *sql, const char *types, ...)
{
	sqlite3_stmt *st = NULL;
	va_list ap;
	int rc;

	if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
		return SQLITE_ERROR;
	va_start(ap, types);
	for (int i = 0; types[i]; i++) {
		if (types[i] == 't')
			sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1, SQLITE_TRANSIENT);
		else if (types[i] == 'd')
			sqlite3_bind_double(st, i + 1, va_arg(ap, double));
		else
			sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
	}
	va_end(ap);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

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

/* A transaction that records a change: what it changed (for the call's
 * audit record and idempotency mark), the intent it retires, and the crash
 * points just before and just after its commit. */
struct effect {
	const char *name;
	uint32_t version;
	int64_t intent;
	const struct cf_crashpoint *before, *after;
};
#define EFFECT_POINTS(nm)                                                                      \
	CF_CRASHPOINT_DEF(cp_before, nm ".before-commit");                                     \
	CF_CRASHPOINT_DEF(cp_after, nm ".committed")

/* What a change commits with it (store_call in store.h). */
static int
effect_rows(store *s, const struct effect *e)
{
	struct store_call *c = current_call;
	char line[2048];

	if (e->intent != 0 &&
	    run(s, "DELETE FROM intents WHERE id = ?", "i", e->intent) != SQLITE_OK)
		return db_err(s, "retiring the intent");
	if (c == NULL)
		return CF_OK;
	if (c->record != NULL) {
		if (c->record(c, e->name, e->version, line, sizeof(line)) < 0)
			return cf_error(CF_E_INTERNAL, "cannot format the audit record of the change");
		if (run(s, "INSERT INTO audit_outbox (line) VALUES (?)", "t", line) != SQLITE_OK)
			return db_err(s, "recording the change's audit record");
	}
	if (c->idem_key != NULL &&
	    run(s, "UPDATE idempotency SET committed = 1, effect_name = ?, effect_version = ? "
		"WHERE key = ? AND uid = ? AND done = 0 AND committed = 0", "titi", e->name,
		(int64_t)e->version, c->idem_key, (int64_t)c->uid) != SQLITE_OK)
		return db_err(s, "marking the idempotency record");
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

	pthread_mutex_lock(&s->mu);
	if ((r = check_identity(s)) == CF_OK && (r = exec(s, "BEGIN IMMEDIATE;")) == CF_OK) {
		if ((r = body(s, arg)) == CF_OK && e != NULL)
			r = effect_rows(s, e);
		if (r == CF_OK && e != NULL)
			cf_crashpoint_hit(e->before);
		if (r == CF_OK && sqlite3_exec(s->db, "COMMIT;", NULL, NULL, NULL) != SQLITE_OK)
			r = db_err(s, "committing the change");
		if (r != CF_OK)
			rollback(s);
	}
	pthread_mutex_unlock(&s->mu);
	if (r == CF_OK && e != NULL) {
		if (current_call != NULL)
			current_call->effects++;
		cf_crashpoint_hit(e->after);
	}
	return r;
}

static int
txn(store *s, int (*body)(store *s, const void *arg), const void *arg)
{
	return txn_effect(s, body, arg, NULL);
}

static void
hex_id(const uint8_t id[STORE_CKAID_LEN], char out[2 * STORE_CKAID_LEN + 1])
{
	cf_hex_encode(id, STORE_CKAID_LEN, out);
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

	rc = run(s, "INSERT INTO keys (name, type, exportable, primary_version, created, "
		 "allowed_ops, rotation_period, next_rotation) VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
		 "ttiiiii", k->name, cf_key_type_name(k->type), (int64_t)k->exportable,
		 k->created, (int64_t)k->allowed_ops, k->rotation_period, k->next_rotation);
	if (rc == SQLITE_CONSTRAINT)
		return cf_error(CF_E_EXISTS, "key %s already exists", k->name);
	if (rc != SQLITE_OK ||
	    run(s, "INSERT INTO versions (name, version, state, created, ckaid) "
		"VALUES (?, 1, ?, ?, ?)", "tiit", k->name, (int64_t)STORE_ENABLED, k->created,
		kc->ckaid) != SQLITE_OK)
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
	struct effect e = { k->name, 1, intent, &cp_before, &cp_after };

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

	if (run(s, "INSERT INTO versions (name, version, state, created, ckaid) "
		"VALUES (?, ?, ?, ?, ?)", "tiiit", v->name, (int64_t)v->version,
		(int64_t)STORE_ENABLED, v->now, v->ckaid) != SQLITE_OK ||
	    run(s, "UPDATE keys SET primary_version = ?, next_rotation = ?, pending_rotation = 0 "
		"WHERE name = ?", "iit",
		(int64_t)v->version, v->next_rotation, v->name) != SQLITE_OK)
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
	struct effect e = { name, version, intent, &cp_before, &cp_after };

	hex_id(ckaid, hex);
	return txn_effect(s, version_add_body, &v, &e);
}

static int
key_save_body(store *s, const void *arg)
{
	const struct store_key *k = arg;

	if (run(s, "UPDATE keys SET primary_version = ?, min_version = ?, min_verify = ?, "
		"rotation_period = ?, next_rotation = ?, pending_rotation = ? WHERE name = ?",
		"iiiiiit", (int64_t)k->primary, (int64_t)k->min_version, (int64_t)k->min_verify,
		k->rotation_period, k->next_rotation, (int64_t)k->pending_rotation, k->name) !=
	    SQLITE_OK ||
	    sqlite3_changes(s->db) != 1)
		return db_err(s, "recording the key's change");
	for (uint32_t i = 0; i < k->nversions; i++) {
		const struct store_version *v = &k->versions[i];

		if (run(s, "UPDATE versions SET state = ?, destroy_time = ?, prior_state = ? "
			"WHERE name = ? AND version = ?", "iiiti", (int64_t)v->state,
			v->destroy_time, (int64_t)v->prior, k->name, (int64_t)v->version) !=
		    SQLITE_OK)
			return db_err(s, "recording a version's state");
	}
	return CF_OK;
}

int
store_key_save(store *s, const struct store_key *k, uint32_t version, int64_t intent)
{
	EFFECT_POINTS("store.key-save");
	struct effect e = { k->name, version, intent, &cp_before, &cp_after };

	return txn_effect(s, key_save_body, k, &e);
}

/* ---- principals ---- */

int
store_principals_load(store *s, int (*cb)(const struct store_principal *p, void *arg), void *arg)
{
	sqlite3_stmt *ps = NULL, *is = NULL, *gs = NULL, *ls = NULL;
	struct store_principal p;
	int r = CF_OK, rc;

	pthread_mutex_lock(&s->mu);
	memset(&p, 0, sizeof(p));
	if (sqlite3_prepare_v2(s->db, "SELECT name, created FROM principals ORDER BY name", -1,
			       &ps, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(s->db, "SELECT kind, id FROM principal_ids WHERE principal = ? "
			       "ORDER BY kind, id", -1, &is, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(s->db, "SELECT pattern, ops FROM grants WHERE principal = ? "
			       "ORDER BY pattern", -1, &gs, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(s->db, "SELECT op, rate, burst FROM limits WHERE principal = ? "
			       "ORDER BY op", -1, &ls, NULL) != SQLITE_OK) {
		r = db_err(s, "loading principals");
		goto out;
	}
	while ((rc = sqlite3_step(ps)) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(ps, 0);
		size_t gcap = 0, lcap = 0;

		if (name == NULL || strlen(name) > STORE_PRINCIPAL_NAME_MAX) {
			r = cf_error(CF_E_IO, "state store holds a malformed principal record");
			goto out;
		}
		snprintf(p.name, sizeof(p.name), "%s", name);
		p.created = sqlite3_column_int64(ps, 1);
		p.nuids = p.ngids = p.ngrants = p.nlimits = 0;
		sqlite3_reset(is);
		sqlite3_bind_text(is, 1, name, -1, SQLITE_TRANSIENT);
		while (sqlite3_step(is) == SQLITE_ROW) {
			uint32_t id = (uint32_t)sqlite3_column_int64(is, 1);

			if (sqlite3_column_int(is, 0) == 0 && p.nuids < STORE_PRINCIPAL_IDS_MAX)
				p.uids[p.nuids++] = id;
			else if (p.ngids < STORE_PRINCIPAL_IDS_MAX)
				p.gids[p.ngids++] = id;
		}
		sqlite3_reset(gs);
		sqlite3_bind_text(gs, 1, name, -1, SQLITE_TRANSIENT);
		while (sqlite3_step(gs) == SQLITE_ROW) {
			const char *pat = (const char *)sqlite3_column_text(gs, 0);

			if ((r = room_for(&p.grants, p.ngrants, &gcap, 8, sizeof(*p.grants))) != CF_OK)
				goto out;
			snprintf(p.grants[p.ngrants].pattern, sizeof(p.grants[0].pattern), "%s",
				 pat ? pat : "");
			p.grants[p.ngrants++].ops = (uint32_t)sqlite3_column_int64(gs, 1);
		}
		sqlite3_reset(ls);
		sqlite3_bind_text(ls, 1, name, -1, SQLITE_TRANSIENT);
		while (sqlite3_step(ls) == SQLITE_ROW) {
			if ((r = room_for(&p.limits, p.nlimits, &lcap, 4, sizeof(*p.limits))) != CF_OK)
				goto out;
			p.limits[p.nlimits].op = (uint32_t)sqlite3_column_int(ls, 0);
			p.limits[p.nlimits].rate = sqlite3_column_double(ls, 1);
			p.limits[p.nlimits++].burst = (uint32_t)sqlite3_column_int64(ls, 2);
		}
		if ((r = cb(&p, arg)) != CF_OK)
			goto out;
	}
	if (rc != SQLITE_DONE)
		r = db_err(s, "loading principals");
out:
	free(p.grants);
	free(p.limits);
	sqlite3_finalize(ps);
	sqlite3_finalize(is);
	sqlite3_finalize(gs);
	sqlite3_finalize(ls);
	pthread_mutex_unlock(&s->mu);
	return r;
}

static int
put_rows(store *s, const struct store_principal *p)
{
	int rc = SQLITE_OK;

	for (uint32_t i = 0; i < p->nuids + p->ngids && rc == SQLITE_OK; i++)
		rc = run(s, "INSERT INTO principal_ids (principal, kind, id) VALUES (?, ?, ?)",
			 "tii", p->name, (int64_t)(i < p->nuids ? 0 : 1),
			 (int64_t)(i < p->nuids ? p->uids[i] : p->gids[i - p->nuids]));
	for (uint32_t i = 0; i < p->ngrants && rc == SQLITE_OK; i++)
		rc = run(s, "INSERT INTO grants VALUES (?, ?, ?)", "tti", p->name,
			 p->grants[i].pattern, (int64_t)p->grants[i].ops);
	for (uint32_t i = 0; i < p->nlimits && rc == SQLITE_OK; i++)
		rc = run(s, "INSERT INTO limits VALUES (?, ?, ?, ?)", "tidi", p->name,
			 (int64_t)p->limits[i].op, p->limits[i].rate, (int64_t)p->limits[i].burst);
	return rc;
}

static int
principal_create_body(store *s, const void *arg)
{
	const struct store_principal *p = arg;
	int rc = run(s, "INSERT INTO principals VALUES (?, ?)", "ti", p->name, p->created);

	if (rc == SQLITE_CONSTRAINT)
		return cf_error(CF_E_EXISTS, "principal %s already exists", p->name);
	if (rc == SQLITE_OK)
		rc = put_rows(s, p);
	if (rc == SQLITE_CONSTRAINT)
		return cf_error(CF_E_EXISTS, "a uid or gid of %s belongs to another principal",
				p->name);
	return rc == SQLITE_OK ? CF_OK : db_err(s, "recording the principal");
}

static int
principal_replace_body(store *s, const void *arg)
{
	const struct store_principal *p = arg;
	int rc = run(s, "DELETE FROM principal_ids WHERE principal = ?", "t", p->name);

	if (rc == SQLITE_OK)
		rc = run(s, "DELETE FROM grants WHERE principal = ?", "t", p->name);
	if (rc == SQLITE_OK)
		rc = run(s, "DELETE FROM limits WHERE principal = ?", "t", p->name);
	if (rc == SQLITE_OK)
		rc = put_rows(s, p);
	if (rc == SQLITE_CONSTRAINT)
		return cf_error(CF_E_EXISTS, "a uid or gid of %s belongs to another principal",
				p->name);
	return rc == SQLITE_OK ? CF_OK : db_err(s, "recording the principal");
}

int
store_principal_put(store *s, const struct store_principal *p, int create)
{
	EFFECT_POINTS("store.principal-put");
	struct effect e = { p->name, 0, 0, &cp_before, &cp_after };

	return txn_effect(s, create ? principal_create_body : principal_replace_body, p, &e);
}

static int
principal_delete_body(store *s, const void *arg)
{
	const char *name = arg;

	if (run(s, "DELETE FROM principals WHERE name = ?", "t", name) != SQLITE_OK)
		return db_err(s, "deleting the principal");
	if (sqlite3_changes(s->db) == 0)
		return cf_error(CF_E_NOT_FOUND, "no principal %s", name);
	/* A principal made later under the name starts without the signed-calls
	 * flag; cleared in this transaction, so the deletion stays one change
	 * with one audit record. */
	if (run(s, "DELETE FROM signed_principals WHERE principal = ?", "t", name) != SQLITE_OK)
		return db_err(s, "deleting the principal's signed-calls flag");
	return CF_OK;
}

int
store_principal_delete(store *s, const char *name)
{
	EFFECT_POINTS("store.principal-delete");
	struct effect e = { name, 0, 0, &cp_before, &cp_after };

	return txn_effect(s, principal_delete_body, name, &e);
}

/* ---- API keys ---- */

int
store_apikeys_load(store *s, int (*cb)(const struct store_apikey *k, void *arg), void *arg)
{
	sqlite3_stmt *ks = NULL, *ss = NULL;
	struct store_apikey k;
	int r = CF_OK, rc;

	pthread_mutex_lock(&s->mu);
	if (sqlite3_prepare_v2(s->db, "SELECT id, principal, created, revoked, next_generation "
			       "FROM api_keys ORDER BY id", -1, &ks, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(s->db, "SELECT generation, created, expires FROM api_secrets "
			       "WHERE id = ? ORDER BY generation DESC", -1, &ss, NULL) != SQLITE_OK) {
		r = db_err(s, "loading API keys");
		goto out;
	}
	while ((rc = sqlite3_step(ks)) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(ks, 0);
		const char *pr = (const char *)sqlite3_column_text(ks, 1);

		memset(&k, 0, sizeof(k));
		if (id == NULL || pr == NULL || strlen(id) > STORE_APIKEY_ID_MAX ||
		    strlen(pr) > STORE_PRINCIPAL_NAME_MAX) {
			r = cf_error(CF_E_IO, "state store holds a malformed API key record");
			goto out;
		}
		snprintf(k.id, sizeof(k.id), "%s", id);
		snprintf(k.principal, sizeof(k.principal), "%s", pr);
		k.created = sqlite3_column_int64(ks, 2);
		k.revoked = sqlite3_column_int64(ks, 3);
		k.next_generation = (uint32_t)sqlite3_column_int64(ks, 4);
		sqlite3_reset(ss);
		sqlite3_bind_text(ss, 1, id, -1, SQLITE_TRANSIENT);
		while ((rc = sqlite3_step(ss)) == SQLITE_ROW) {
			if (k.nsecrets == STORE_APIKEY_SECRETS_MAX) {
				r = cf_error(CF_E_IO, "state store: API key %s has more than %d "
					     "secrets", k.id, STORE_APIKEY_SECRETS_MAX);
				goto out;
			}
			k.secrets[k.nsecrets].generation = (uint32_t)sqlite3_column_int64(ss, 0);
			k.secrets[k.nsecrets].created = sqlite3_column_int64(ss, 1);
			k.secrets[k.nsecrets++].expires = sqlite3_column_int64(ss, 2);
		}
		/* A key read only in part must not look like one with fewer secrets. */
		if (rc != SQLITE_DONE) {
			r = db_err(s, "loading API key secrets");
			goto out;
		}
		if ((r = cb(&k, arg)) != CF_OK)
			goto out;
	}
	if (rc != SQLITE_DONE)
		r = db_err(s, "loading API keys");
out:
	sqlite3_finalize(ks);
	sqlite3_finalize(ss);
	pthread_mutex_unlock(&s->mu);
	return r;
}

static int
apikey_rows(store *s, const struct store_apikey *k, int rc)
{
	if (rc == SQLITE_OK)
		rc = run(s, "DELETE FROM api_secrets WHERE id = ?", "t", k->id);
	for (uint32_t i = 0; i < k->nsecrets && rc == SQLITE_OK; i++)
		rc = run(s, "INSERT INTO api_secrets VALUES (?, ?, ?, ?)", "tiii", k->id,
			 (int64_t)k->secrets[i].generation, k->secrets[i].created,
			 k->secrets[i].expires);
	return rc == SQLITE_OK ? CF_OK : db_err(s, "recording the API key");
}

static int
apikey_create_body(store *s, const void *arg)
{
	const struct store_apikey *k = arg;
	int rc = run(s, "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?)", "ttiii", k->id,
		     k->principal, k->created, k->revoked, (int64_t)k->next_generation);

	if (rc == SQLITE_CONSTRAINT)
		return cf_error(CF_E_EXISTS, "API key %s already exists", k->id);
	/* From its first key on, the principal's calls must be signed. */
	if (rc == SQLITE_OK &&
	    run(s, "INSERT OR IGNORE INTO signed_principals VALUES (?)", "t", k->principal) !=
	    SQLITE_OK)
		return db_err(s, "recording that the principal signs its calls");
	return apikey_rows(s, k, rc);
}

static int
apikey_update_body(store *s, const void *arg)
{
	const struct store_apikey *k = arg;

	return apikey_rows(s, k, run(s, "UPDATE api_keys SET revoked = ?, next_generation = ? "
				     "WHERE id = ?", "iit", k->revoked,
				     (int64_t)k->next_generation, k->id));
}

int
store_apikey_put(store *s, const struct store_apikey *k, int create, uint32_t generation,
		 int64_t intent)
{
	EFFECT_POINTS("store.apikey-put");
	struct effect e = { k->id, generation, intent, &cp_before, &cp_after };

	return txn_effect(s, create ? apikey_create_body : apikey_update_body, k, &e);
}

int
store_signed_load(store *s, int (*cb)(const char *principal, void *arg), void *arg)
{
	sqlite3_stmt *st = NULL;
	int r = CF_OK, rc;

	pthread_mutex_lock(&s->mu);
	if (sqlite3_prepare_v2(s->db, "SELECT principal FROM signed_principals", -1, &st, NULL) !=
	    SQLITE_OK) {
		r = db_err(s, "loading the principals that sign their calls");
		goto out;
	}
	while (r == CF_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *pr = (const char *)sqlite3_column_text(st, 0);

		if (pr == NULL || strlen(pr) > STORE_PRINCIPAL_NAME_MAX)
			r = cf_error(CF_E_IO, "state store holds a malformed principal name");
		else
			r = cb(pr, arg);
	}
	if (r == CF_OK && rc != SQLITE_DONE)
		r = db_err(s, "loading the principals that sign their calls");
out:
	sqlite3_finalize(st);
	pthread_mutex_unlock(&s->mu);
	return r;
}

struct signed_set {
	const char *principal;
	int on;
};

static int
signed_set_body(store *s, const void *arg)
{
	const struct signed_set *a = arg;
	int rc = a->on ? run(s, "INSERT OR IGNORE INTO signed_principals VALUES (?)", "t",
			     a->principal)
		       : run(s, "DELETE FROM signed_principals WHERE principal = ?", "t",
			     a->principal);

	if (rc != SQLITE_OK)
		return db_err(s, "recording whether the principal signs its calls");
	return CF_OK;
}

int
store_signed_set(store *s, const char *principal, int on)
{
	EFFECT_POINTS("store.signed-set");
	struct effect e = { principal, 0, 0, &cp_before, &cp_after };
	struct signed_set a = { principal, on };

	/* Its audit record is committed with it, as for every principal change. */
	return txn_effect(s, signed_set_body, &a, &e);
}

/* ---- idempotency records ---- */

int
store_idem_get(store *s, const char *key, uint32_t uid, struct store_idem *out)
{
	sqlite3_stmt *st = NULL;
	int r = CF_OK, rc;

	pthread_mutex_lock(&s->mu);
	if (sqlite3_prepare_v2(s->db, "SELECT method, fingerprint, done, status, message, "
			       "response, created, request_id, committed, effect_name, "
			       "effect_version FROM idempotency WHERE key = ? AND uid = ?", -1,
			       &st, NULL) != SQLITE_OK) {
		r = db_err(s, "reading an idempotency record");
		goto out;
	}
	sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, uid);
	if ((rc = sqlite3_step(st)) == SQLITE_DONE) {
		r = cf_error(CF_E_NOT_FOUND, "no idempotency record for key %s", key);
		goto out;
	}
	if (rc != SQLITE_ROW || sqlite3_column_bytes(st, 1) != 32) {
		r = db_err(s, "reading an idempotency record");
		goto out;
	}
	memset(out, 0, sizeof(*out));
	snprintf(out->key, sizeof(out->key), "%s", key);
	out->uid = uid;
	snprintf(out->method, sizeof(out->method), "%s",
		 (const char *)sqlite3_column_text(st, 0) ?: "");
	memcpy(out->fingerprint, sqlite3_column_blob(st, 1), 32);
	out->done = sqlite3_column_int(st, 2);
	out->status = sqlite3_column_int(st, 3);
	snprintf(out->message, sizeof(out->message), "%s",
		 (const char *)sqlite3_column_text(st, 4) ?: "");
	out->response_len = (size_t)sqlite3_column_bytes(st, 5);
	if (out->response_len > 0) {
		if ((out->response = malloc(out->response_len)) == NULL) {
			r = cf_nomem();
			goto out;
		}
		memcpy(out->response, sqlite3_column_blob(st, 5), out->response_len);
	}
	out->created = sqlite3_column_int64(st, 6);
	snprintf(out->request_id, sizeof(out->request_id), "%s",
		 (const char *)sqlite3_column_text(st, 7) ?: "");
	out->committed = sqlite3_column_int(st, 8);
	snprintf(out->effect_name, sizeof(out->effect_name), "%s",
		 (const char *)sqlite3_column_text(st, 9) ?: "");
	out->effect_version = (uint32_t)sqlite3_column_int64(st, 10);
out:
	sqlite3_finalize(st);
	pthread_mutex_unlock(&s->mu);
	return r;
}

int
store_idem_put(store *s, const struct store_idem *r)
{
	sqlite3_stmt *st = NULL;
	int ret = CF_OK;

	pthread_mutex_lock(&s->mu);
	if ((ret = check_identity(s)) != CF_OK)
		goto out;
	if (sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO idempotency (key, uid, "
			       "method, fingerprint, done, status, message, response, created, "
			       "request_id, committed, effect_name, effect_version) VALUES "
			       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", -1, &st, NULL) != SQLITE_OK) {
		ret = db_err(s, "recording an idempotency key");
		goto out;
	}
	sqlite3_bind_text(st, 1, r->key, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, r->uid);
	sqlite3_bind_text(st, 3, r->method, -1, SQLITE_TRANSIENT);
	sqlite3_bind_blob(st, 4, r->fingerprint, 32, SQLITE_TRANSIENT);
	sqlite3_bind_int(st, 5, r->done);
	sqlite3_bind_int(st, 6, r->status);
	sqlite3_bind_text(st, 7, r->message, -1, SQLITE_TRANSIENT);
	sqlite3_bind_blob(st, 8, r->response ? (const void *)r->response : (const void *)"",
			  (int)r->response_len, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 9, r->created);
	sqlite3_bind_text(st, 10, r->request_id, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int(st, 11, r->committed);
	sqlite3_bind_text(st, 12, r->effect_name, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 13, r->effect_version);
	if (sqlite3_step(st) != SQLITE_DONE)
		ret = db_err(s, "recording an idempotency key");
out:
	sqlite3_finalize(st);
	pthread_mutex_unlock(&s->mu);
	return ret;
}

int
store_idem_delete(store *s, const char *key, uint32_t uid)
{
	int r;

	pthread_mutex_lock(&s->mu);
	if ((r = check_identity(s)) == CF_OK)
		r = run(s, "DELETE FROM idempotency WHERE key = ? AND uid = ?", "ti", key,
			(int64_t)uid) == SQLITE_OK ? CF_OK :
			db_err(s, "deleting an idempotency record");
	pthread_mutex_unlock(&s->mu);
	return r;
}

int
store_idem_expire(store *s, int64_t before)
{
	int r;

	/* Housekeeping: once the database is gone, nothing to do and nothing
	 * more to say every 5 s (check_identity logged it once). */
	if (!store_healthy(s))
		return CF_OK;
	pthread_mutex_lock(&s->mu);
	if ((r = check_identity(s)) == CF_OK)
		r = run(s, "DELETE FROM idempotency WHERE done = 1 AND created < ?", "i",
			before) == SQLITE_OK ? CF_OK : db_err(s, "expiring idempotency records");
	pthread_mutex_unlock(&s->mu);
	return r;
}

/* ---- intents ---- */

int
store_intent_add(store *s, enum store_intent_kind kind, const char *name, uint32_t version,
		 const uint8_t ckaid[STORE_CKAID_LEN], int64_t *id)
{
	char hex[2 * STORE_CKAID_LEN + 1];
	int r = CF_OK;

	hex_id(ckaid, hex);
	pthread_mutex_lock(&s->mu);
	if ((r = check_identity(s)) == CF_OK) {
		if (run(s, "INSERT INTO intents (kind, name, version, ckaid, created) VALUES "
			"(?, ?, ?, ?, strftime('%s', 'now'))", "itit", (int64_t)kind, name,
			(int64_t)version, hex) != SQLITE_OK)
			r = db_err(s, "recording the intent");
		else
			*id = sqlite3_last_insert_rowid(s->db);
	}
	pthread_mutex_unlock(&s->mu);
	if (r == CF_OK)
		CF_CRASH_POINT("store.intent-add.committed");
	return r;
}

int
store_intent_drop(store *s, int64_t id)
{
	int r = CF_OK;

	pthread_mutex_lock(&s->mu);
	if ((r = check_identity(s)) == CF_OK &&
	    run(s, "DELETE FROM intents WHERE id = ?", "i", id) != SQLITE_OK)
		r = db_err(s, "retiring the intent");
	pthread_mutex_unlock(&s->mu);
	return r;
}

int
store_intents_clear(store *s)
{
	int r = CF_OK;

	pthread_mutex_lock(&s->mu);
	if ((r = check_identity(s)) == CF_OK && run(s, "DELETE FROM intents", "") != SQLITE_OK)
		r = db_err(s, "clearing intents");
	pthread_mutex_unlock(&s->mu);
	return r;
}

int
store_intents_load(store *s, int (*cb)(const struct store_intent *in, void *arg), void *arg)
{
	sqlite3_stmt *st = NULL;
	struct store_intent in;
	int r = CF_OK, rc;
	struct store_intent *all = NULL;
	size_t n = 0, cap = 0;

	/* Collected first: callbacks use the store. */
	pthread_mutex_lock(&s->mu);
	if (sqlite3_prepare_v2(s->db, "SELECT id, kind, name, version, ckaid, created FROM intents "
			       "ORDER BY id", -1, &st, NULL) != SQLITE_OK) {
		r = db_err(s, "loading intents");
		goto unlock;
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(st, 2);
		const char *hex = (const char *)sqlite3_column_text(st, 4);

		memset(&in, 0, sizeof(in));
		in.id = sqlite3_column_int64(st, 0);
		in.kind = (enum store_intent_kind)sqlite3_column_int(st, 1);
		in.version = (uint32_t)sqlite3_column_int64(st, 3);
		in.created = sqlite3_column_int64(st, 5);
		if (name == NULL || strlen(name) >= sizeof(in.name) || hex == NULL ||
		    strlen(hex) != 2 * STORE_CKAID_LEN ||
		    cf_hex_decode(hex, in.ckaid, STORE_CKAID_LEN) != 0) {
			r = cf_error(CF_E_IO, "state store holds a malformed intent (%lld)",
				     (long long)in.id);
			goto unlock;
		}
		snprintf(in.name, sizeof(in.name), "%s", name);
		if ((r = room_for(&all, n, &cap, 8, sizeof(*all))) != CF_OK)
			goto unlock;
		all[n++] = in;
	}
	if (rc != SQLITE_DONE)
		r = db_err(s, "loading intents");
unlock:
	sqlite3_finalize(st);
	pthread_mutex_unlock(&s->mu);
	for (size_t i = 0; i < n && r == CF_OK; i++)
		r = cb(&all[i], arg);
	free(all);
	return r;
}

/* ---- the audit outbox and anchor ---- */

int
store_outbox_load(store *s, int (*cb)(int64_t id, const char *line, void *arg), void *arg)
{
	sqlite3_stmt *st = NULL;
	int r = CF_OK, rc;

	pthread_mutex_lock(&s->mu);
	if (sqlite3_prepare_v2(s->db, "SELECT id, line FROM audit_outbox ORDER BY id", -1, &st,
			       NULL) != SQLITE_OK) {
		r = db_err(s, "reading the audit outbox");
		goto out;
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		if ((r = cb(sqlite3_column_int64(st, 0),
			    (const char *)sqlite3_column_text(st, 1) ?: "", arg)) != CF_OK)
			goto out;
	if (rc != SQLITE_DONE)
		r = db_err(s, "reading the audit outbox");
out:
	sqlite3_finalize(st);
	pthread_mutex_unlock(&s->mu);
	return r;
}

static int
anchor_row(sqlite3 *db, struct store_audit_anchor *out)
{
	sqlite3_stmt *st = NULL;
	const char *hex;
	int r;

	if (sqlite3_prepare_v2(db, "SELECT seq, chain, clean, time FROM audit_anchor WHERE id = 1",
			       -1, &st, NULL) != SQLITE_OK)
		return cf_error(CF_E_IO, "state store: reading the audit anchor: %s",
				sqlite3_errmsg(db));
	if (sqlite3_step(st) == SQLITE_ROW) {
		memset(out, 0, sizeof(*out));
		out->seq = (uint64_t)sqlite3_column_int64(st, 0);
		hex = (const char *)sqlite3_column_text(st, 1);
		out->clean = sqlite3_column_int(st, 2);
		out->time = sqlite3_column_int64(st, 3);
		r = hex != NULL && strlen(hex) == 64 && cf_hex_decode(hex, out->chain, 32) == 0 ?
			    CF_OK : cf_error(CF_E_IO, "state store: the audit anchor is malformed");
	} else {
		r = cf_error(CF_E_NOT_FOUND, "state store: no audit anchor recorded yet");
	}
	sqlite3_finalize(st);
	return r;
}

int
store_audit_anchor_get(store *s, struct store_audit_anchor *out)
{
	int r;

	pthread_mutex_lock(&s->mu);
	r = anchor_row(s->db, out);
	pthread_mutex_unlock(&s->mu);
	return r;
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
	if (run(s, "INSERT OR REPLACE INTO audit_anchor (id, seq, chain, clean, time) "
		"VALUES (1, ?, ?, ?, ?)", "itii", (int64_t)ap->a->seq, hex, (int64_t)ap->a->clean,
		ap->a->time) != SQLITE_OK ||
	    (ap->outbox_done > 0 &&
	     run(s, "DELETE FROM audit_outbox WHERE id <= ?", "i", ap->outbox_done) != SQLITE_OK))
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
store_set_change_lock(store *s, int (*lock)(void *arg), void (*unlock)(void *arg), void *arg)
{
	s->change_lock = lock;
	s->change_unlock = unlock;
	s->change_arg = arg;
}

int
store_change_begin(store *s, int *shared)
{
	*shared = s->change_lock != NULL;
	return *shared ? s->change_lock(s->change_arg) : CF_OK;
}

void
store_change_end(store *s)
{
	if (s->change_unlock != NULL)
		s->change_unlock(s->change_arg);
}

/* (Until the PostgreSQL store lands its own: the one key out of store_load.) */
struct key_get {
	const char *name;
	int (*cb)(const struct store_key *k, void *arg);
	void *arg;
	int found;
};

static int
key_get_one(const struct store_key *k, void *arg)
{
	struct key_get *g = arg;

	if (strcmp(k->name, g->name) != 0)
		return CF_OK;
	g->found = 1;
	return g->cb(k, g->arg);
}

int
store_key_get(store *s, const char *name, int (*cb)(const struct store_key *k, void *arg),
	      void *arg)
{
	struct key_get g = { name, cb, arg, 0 };
	int r = store_load(s, key_get_one, &g);

	if (r == CF_OK && !g.found)
		r = cf_error(CF_E_NOT_FOUND, "key %s does not exist", name);
	return r;
}
