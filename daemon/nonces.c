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

/* A caller's nonce waiting to be made durable (on the caller's stack). */
struct pending {
	struct entry e;
	int done;
	int r;
	struct pending *next;
};

struct nonces {
	pthread_mutex_t mu;
	pthread_cond_t cv;   /* a batch was written, or the writer left */
	struct entry *t;
	size_t cap;          /* power of two */
	size_t used;         /* non-empty slots (expired ones included) */
	size_t live_max;
	sqlite3 *db;
	sqlite3_stmt *ins;
	sqlite3 *ckpt;       /* checkpoints, away from the callers' connection */
	struct pending *queue, **tail;
	int writing;         /* the database is in use by a batch or the sweep */
	uint64_t batches, written;
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

/* The slot of a live entry with hash h, or SIZE_MAX. */
static size_t
find_locked(nonces *n, const uint8_t h[16], int64_t now)
{
	/* Walk the whole chain: a live copy may sit past an expired slot. */
	for (size_t i = slot_of(h, n->cap); n->t[i].expires != 0; i = (i + 1) & (n->cap - 1))
		if (n->t[i].expires > now && memcmp(n->t[i].h, h, 16) == 0)
			return i;
	return SIZE_MAX;
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
	pthread_cond_init(&n->cv, NULL);
	n->tail = &n->queue;
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
	/* Rows are appended (rowid order) and found for expiry by their index:
	 * the memory table, not SQLite, answers "seen before?". Checkpoints run
	 * from the sweep on a connection of their own, never on a caller's
	 * commit. Stores of Coffer before 0.5 kept a table keyed by hash. */
	if ((r = db_exec(n, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
			 "PRAGMA wal_autocheckpoint=0;"
			 "CREATE TABLE IF NOT EXISTS seen (h BLOB NOT NULL, "
			 "expires INTEGER NOT NULL);"
			 "CREATE INDEX IF NOT EXISTS seen_expires ON seen (expires);"
			 "BEGIN IMMEDIATE;"
			 "CREATE TABLE IF NOT EXISTS nonces (h BLOB PRIMARY KEY, "
			 "expires INTEGER NOT NULL) WITHOUT ROWID;"
			 "INSERT INTO seen SELECT h, expires FROM nonces;"
			 "DROP TABLE nonces;"
			 "COMMIT;")) != CF_OK)
		goto fail;
	if (sqlite3_open_v2(path, &n->ckpt, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, NULL) !=
	    SQLITE_OK) {
		r = cf_error(CF_E_IO, "cannot open nonce record %s", path);
		goto fail;
	}
	sqlite3_busy_timeout(n->ckpt, 5000);
	if (sqlite3_prepare_v2(n->db, "SELECT h, expires FROM seen WHERE expires > ?", -1, &sel,
			       NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(n->db, "INSERT INTO seen VALUES (?, ?)", -1, &n->ins,
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
		if (find_locked(n, e.h, now) != SIZE_MAX)
			continue;   /* the same nonce written twice: harmless */
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
	sqlite3_close(n->ckpt);
	free(n->t);
	pthread_cond_destroy(&n->cv);
	pthread_mutex_destroy(&n->mu);
	free(n);
}

/* Write a batch in one transaction (the caller holds n->writing, not mu). */
static int
write_batch(nonces *n, const struct pending *b)
{
	int r;

	if ((r = db_exec(n, "BEGIN")) != CF_OK)
		return r;
	for (; b != NULL; b = b->next) {
		sqlite3_reset(n->ins);
		sqlite3_bind_blob(n->ins, 1, b->e.h, 16, SQLITE_TRANSIENT);
		sqlite3_bind_int64(n->ins, 2, b->e.expires);
		if (sqlite3_step(n->ins) != SQLITE_DONE) {
			r = cf_error(CF_E_IO, "nonce record: %s", sqlite3_errmsg(n->db));
			(void)db_exec(n, "ROLLBACK");
			return r;
		}
	}
	if ((r = db_exec(n, "COMMIT")) != CF_OK)
		(void)db_exec(n, "ROLLBACK");
	return r;
}

int
nonces_use(nonces *n, const char *scope, const char *nonce, int64_t expires, int64_t now)
{
	struct pending me;
	size_t i, reuse = SIZE_MAX;
	int r = CF_OK;

	memset(&me, 0, sizeof(me));
	digest(scope, nonce, me.e.h);
	me.e.expires = expires;
	pthread_mutex_lock(&n->mu);
	/* Entries waiting for the disk are in the table already, so a
	 * concurrent copy of this nonce is refused here. */
	for (i = slot_of(me.e.h, n->cap); n->t[i].expires != 0; i = (i + 1) & (n->cap - 1)) {
		if (n->t[i].expires <= now) {
			if (reuse == SIZE_MAX)
				reuse = i;
			continue;
		}
		if (memcmp(n->t[i].h, me.e.h, 16) == 0) {
			pthread_mutex_unlock(&n->mu);
			return CF_E_EXISTS;
		}
	}
	if (reuse == SIZE_MAX) {
		if (n->used >= n->live_max) {
			r = cf_error(CF_E_EXHAUSTED, "the nonce record holds %zu nonces, its limit; "
				     "retry later", n->used);
			pthread_mutex_unlock(&n->mu);
			return r;
		}
		if (4 * (n->used + 1) > 3 * n->cap) {
			if ((r = rehash_locked(n, 2 * n->cap, now)) != CF_OK) {
				pthread_mutex_unlock(&n->mu);
				return r;
			}
			for (i = slot_of(me.e.h, n->cap); n->t[i].expires != 0;
			     i = (i + 1) & (n->cap - 1))
				;
		}
		n->used++;
	} else {
		i = reuse;
	}
	n->t[i] = me.e;
	*n->tail = &me;
	n->tail = &me.next;
	/* Group commit: durable before it counts (a restart must not forget
	 * it), one transaction for every nonce that queued meanwhile. */
	while (!me.done) {
		struct pending *batch, *b;

		if (n->writing) {
			pthread_cond_wait(&n->cv, &n->mu);
			continue;
		}
		batch = n->queue;
		n->queue = NULL;
		n->tail = &n->queue;
		n->writing = 1;
		pthread_mutex_unlock(&n->mu);
		r = write_batch(n, batch);
		pthread_mutex_lock(&n->mu);
		n->writing = 0;
		n->batches++;
		for (b = batch; b != NULL; b = b->next) {
			/* A nonce that could not be recorded does not count as used. */
			if (r != CF_OK && (i = find_locked(n, b->e.h, now)) != SIZE_MAX)
				n->t[i].expires = 1;
			n->written += r == CF_OK;
			b->r = r;
			b->done = 1;
		}
		pthread_cond_broadcast(&n->cv);
	}
	r = me.r;
	if (r != CF_OK)
		cf_error(r, "nonce record: the nonce could not be made durable");
	pthread_mutex_unlock(&n->mu);
	return r;
}

void
nonces_expire(nonces *n, int64_t now)
{
	sqlite3_stmt *del = NULL;
	size_t cap;
	int more = 1;

	pthread_mutex_lock(&n->mu);
	cap = n->cap;
	(void)rehash_locked(n, cap, now);
	/* Shrink when mostly empty, never below the start size. */
	while (cap > INITIAL_SLOTS && 8 * n->used < cap)
		cap /= 2;
	if (cap != n->cap)
		(void)rehash_locked(n, cap, now);
	pthread_mutex_unlock(&n->mu);
	/* Expired rows go in slices, each taking the database from the
	 * callers' batches only briefly. */
	while (more) {
		pthread_mutex_lock(&n->mu);
		while (n->writing)
			pthread_cond_wait(&n->cv, &n->mu);
		n->writing = 1;
		pthread_mutex_unlock(&n->mu);
		more = 0;
		if (del != NULL || sqlite3_prepare_v2(n->db, "DELETE FROM seen WHERE rowid IN "
						      "(SELECT rowid FROM seen WHERE expires <= ? "
						      "LIMIT 2000)", -1, &del, NULL) == SQLITE_OK) {
			sqlite3_reset(del);
			sqlite3_bind_int64(del, 1, now);
			more = sqlite3_step(del) == SQLITE_DONE && sqlite3_changes(n->db) == 2000;
		}
		pthread_mutex_lock(&n->mu);
		n->writing = 0;
		pthread_cond_broadcast(&n->cv);
		pthread_mutex_unlock(&n->mu);
	}
	sqlite3_finalize(del);
	/* Fold the log into the database without holding up any writer. */
	(void)sqlite3_wal_checkpoint_v2(n->ckpt, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
}

void
nonces_stats(nonces *n, uint64_t *batches, uint64_t *written)
{
	pthread_mutex_lock(&n->mu);
	*batches = n->batches;
	*written = n->written;
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
