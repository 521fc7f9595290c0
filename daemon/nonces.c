#include "nonces.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <sqlite3.h>

#include "cf_status.h"

#define INITIAL_SLOTS 1024u

struct entry {
	uint8_t h[16];
	int64_t expires;     /* 0: empty slot */
};

struct nonces {
	pthread_mutex_t mu;
	struct entry *t;
	size_t cap;          /* power of two */
	size_t used;         /* non-empty slots (expired ones included) */
	size_t live_max;
	sqlite3 *db;
	sqlite3_stmt *ins;
};

static void
digest(const char *scope, const char *nonce, uint8_t h[16])
{
	uint8_t d[32];
	EVP_MD_CTX *c = EVP_MD_CTX_new();

	memset(d, 0, sizeof(d));
	if (c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
	    EVP_DigestUpdate(c, scope, strlen(scope) + 1) == 1 &&
	    EVP_DigestUpdate(c, nonce, strlen(nonce)) == 1)
		EVP_DigestFinal_ex(c, d, NULL);
	EVP_MD_CTX_free(c);
	memcpy(h, d, 16);
}

static size_t
slot_of(const uint8_t h[16], size_t cap)
{
	uint64_t v;

	memcpy(&v, h, sizeof(v));
	return (size_t)v & (cap - 1);
}

/* Put an entry known to be absent into table t of capacity cap. */
static void
place(struct entry *t, size_t cap, const struct entry *e)
{
	size_t i = slot_of(e->h, cap);

	while (t[i].expires != 0)
		i = (i + 1) & (cap - 1);
	t[i] = *e;
}

/* Rebuild into `cap` slots, keeping only entries alive at `now`. */
static int
rehash_locked(nonces *n, size_t cap, int64_t now)
{
	struct entry *t = calloc(cap, sizeof(*t));
	size_t used = 0;

	if (t == NULL)
		return CF_E_NOMEM;
	for (size_t i = 0; i < n->cap; i++)
		if (n->t[i].expires > now) {
			place(t, cap, &n->t[i]);
			used++;
		}
	free(n->t);
	n->t = t;
	n->cap = cap;
	n->used = used;
	return CF_OK;
}

static int
db_exec(nonces *n, const char *sql)
{
	char *msg = NULL;
	int r = CF_OK;

	if (sqlite3_exec(n->db, sql, NULL, NULL, &msg) != SQLITE_OK)
		r = cf_error(CF_E_IO, "nonce record: %s", msg ? msg : "error");
	sqlite3_free(msg);
	return r;
}

int
nonces_open(const char *state_dir, size_t max_live, nonces **out)
{
	char path[4096];
	sqlite3_stmt *sel = NULL;
	nonces *n = calloc(1, sizeof(*n));
	int64_t now = (int64_t)time(NULL);
	int r;

	if (n == NULL)
		return CF_E_NOMEM;
	pthread_mutex_init(&n->mu, NULL);
	n->live_max = max_live;
	n->cap = INITIAL_SLOTS;
	if ((n->t = calloc(n->cap, sizeof(*n->t))) == NULL) {
		r = CF_E_NOMEM;
		goto fail;
	}
	snprintf(path, sizeof(path), "%s/nonces.db", state_dir);
	if (sqlite3_open_v2(path, &n->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
			    SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
		r = cf_error(CF_E_IO, "cannot open nonce record %s", path);
		goto fail;
	}
	sqlite3_busy_timeout(n->db, 5000);
	if ((r = db_exec(n, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
			 "CREATE TABLE IF NOT EXISTS nonces (h BLOB PRIMARY KEY, "
			 "expires INTEGER NOT NULL) WITHOUT ROWID;")) != CF_OK)
		goto fail;
	if (sqlite3_prepare_v2(n->db, "SELECT h, expires FROM nonces WHERE expires > ?", -1, &sel,
			       NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(n->db, "INSERT OR REPLACE INTO nonces VALUES (?, ?)", -1, &n->ins,
			       NULL) != SQLITE_OK) {
		r = cf_error(CF_E_IO, "nonce record: %s", sqlite3_errmsg(n->db));
		goto fail;
	}
	sqlite3_bind_int64(sel, 1, now);
	while (sqlite3_step(sel) == SQLITE_ROW) {
		struct entry e;

		if (sqlite3_column_bytes(sel, 0) != 16)
			continue;
		memcpy(e.h, sqlite3_column_blob(sel, 0), 16);
		e.expires = sqlite3_column_int64(sel, 1);
		if (4 * (n->used + 1) > 3 * n->cap && (r = rehash_locked(n, 2 * n->cap, now)) != CF_OK)
			goto fail;
		place(n->t, n->cap, &e);
		n->used++;
	}
	sqlite3_finalize(sel);
	*out = n;
	return CF_OK;
fail:
	sqlite3_finalize(sel);
	nonces_close(n);
	return r;
}

void
nonces_close(nonces *n)
{
	if (n == NULL)
		return;
	sqlite3_finalize(n->ins);
	sqlite3_close(n->db);
	free(n->t);
	pthread_mutex_destroy(&n->mu);
	free(n);
}

int
nonces_use(nonces *n, const char *scope, const char *nonce, int64_t expires, int64_t now)
{
	struct entry e;
	size_t i, reuse = SIZE_MAX;
	int r = CF_OK;

	digest(scope, nonce, e.h);
	e.expires = expires;
	pthread_mutex_lock(&n->mu);
	/* Walk the whole chain: a live copy may sit past an expired slot. */
	for (i = slot_of(e.h, n->cap); n->t[i].expires != 0; i = (i + 1) & (n->cap - 1)) {
		if (n->t[i].expires <= now) {
			if (reuse == SIZE_MAX)
				reuse = i;
			continue;
		}
		if (memcmp(n->t[i].h, e.h, 16) == 0) {
			r = CF_E_EXISTS;
			goto out;
		}
	}
	if (reuse == SIZE_MAX) {
		if (n->used >= n->live_max) {
			r = cf_error(CF_E_EXHAUSTED, "the nonce record holds %zu nonces, its limit; "
				     "retry later", n->used);
			goto out;
		}
		if (4 * (n->used + 1) > 3 * n->cap) {
			if ((r = rehash_locked(n, 2 * n->cap, now)) != CF_OK)
				goto out;
			for (i = slot_of(e.h, n->cap); n->t[i].expires != 0;
			     i = (i + 1) & (n->cap - 1))
				;
		}
		n->used++;
	} else {
		i = reuse;
	}
	/* Durable before it counts: a restart must not forget it. */
	sqlite3_reset(n->ins);
	sqlite3_bind_blob(n->ins, 1, e.h, 16, SQLITE_TRANSIENT);
	sqlite3_bind_int64(n->ins, 2, e.expires);
	if (sqlite3_step(n->ins) != SQLITE_DONE) {
		r = cf_error(CF_E_IO, "nonce record: %s", sqlite3_errmsg(n->db));
		if (reuse == SIZE_MAX)
			n->used--;
		goto out;
	}
	n->t[i] = e;
out:
	pthread_mutex_unlock(&n->mu);
	return r;
}

void
nonces_expire(nonces *n, int64_t now)
{
	sqlite3_stmt *del = NULL;
	size_t cap;

	pthread_mutex_lock(&n->mu);
	cap = n->cap;
	(void)rehash_locked(n, cap, now);
	/* Shrink when mostly empty, never below the start size. */
	while (cap > INITIAL_SLOTS && 8 * n->used < cap)
		cap /= 2;
	if (cap != n->cap)
		(void)rehash_locked(n, cap, now);
	if (sqlite3_prepare_v2(n->db, "DELETE FROM nonces WHERE expires <= ?", -1, &del,
			       NULL) == SQLITE_OK) {
		sqlite3_bind_int64(del, 1, now);
		(void)sqlite3_step(del);
	}
	sqlite3_finalize(del);
	pthread_mutex_unlock(&n->mu);
}

size_t
nonces_live(nonces *n)
{
	size_t v;

	pthread_mutex_lock(&n->mu);
	v = n->used;
	pthread_mutex_unlock(&n->mu);
	return v;
}

size_t
nonces_memory(nonces *n)
{
	size_t v;

	pthread_mutex_lock(&n->mu);
	v = n->cap * sizeof(struct entry);
	pthread_mutex_unlock(&n->mu);
	return v;
}
