#include "nonces.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <sqlite3.h>

#include "cf_crashpoint.h"
#include "cf_hex.h"
#include "cf_log.h"
#include "cf_status.h"
#include "cf_time.h"
#include "iowatch.h"
#include "nonces_pg.h"

#define INITIAL_SLOTS 1024u
#define LOG_MAGIC "COFNONC1"
#define LOG_HEADER 16
#define REC 24                    /* h[16], expires (int64, little-endian) */
#define COMPACT_SLACK 65536       /* dead records tolerated beyond the live ones */

struct entry {
	uint8_t h[16];
	int64_t expires;     /* 0: empty slot */
	uint64_t scope;      /* scope_tag() of its scope; 0: unknown (read from the log) */
};

/* How many slots of the table hold a scope's entries (expired ones too,
 * until a rehash drops them). */
struct scount {
	uint64_t tag;        /* 0: empty */
	size_t n;
};

struct nonces {
	pthread_mutex_t mu;
	struct entry *t;
	size_t cap;          /* power of two */
	size_t used;         /* non-empty slots (expired ones included) */
	size_t live_max;
	int fd;              /* <state_dir>/nonces.log, O_APPEND */
	off_t size;          /* bytes of whole records in the log */
	char path[4096];
	uint64_t appended, compactions;
	int broken;          /* a torn record could not be cut off */
	size_t scope_max;    /* entries one scope may hold */
	struct scount *sc;   /* by tag, open addressing */
	struct nonces_pg *pg; /* PostgreSQL mode: the record; t holds this replica's */
	size_t sccap, scused;
	int64_t swept;       /* when a full scope last swept out expired entries */
	int64_t warned;      /* when a refusal was last logged */
	uint64_t unlogged;   /* refusals since then that were not */
	/* The [requests] window that entries are now recorded with (written
	 * under mu, in the log's header; 0: not known, a log from before). An
	 * entry is kept until its timestamp has left it: raised, every entry
	 * is kept longer by as much (nonces_set_window). */
	atomic_uint window;
	/* Timestamps before this are refused (0: none): when the window was
	 * raised, the nonces of older ones may have been dropped already
	 * (expired under the old window), so the new window must not accept
	 * them. In the log's header too. */
	atomic_int_fast64_t floor;
	/* What the metrics read, copied under mu at each change and read
	 * without it: a scrape never waits behind a write to the log or a
	 * compaction that holds mu. */
	struct {
		atomic_size_t used, cap;
		atomic_uint_fast64_t appended, compactions, log_bytes;
	} pub;
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

/* A scope's tag: 64 bits of SHA-256(scope), never 0. */
static uint64_t
scope_tag(const char *scope)
{
	uint8_t d[32];
	uint64_t v;

	memset(d, 0, sizeof(d));
	EVP_Digest(scope, strlen(scope), d, NULL, EVP_sha256(), NULL);
	memcpy(&v, d, sizeof(v));
	return v != 0 ? v : 1;
}

/* The count of tag (added if absent and add is set), or NULL. */
static struct scount *
scount_find(nonces *n, uint64_t tag, int add)
{
	size_t i;

	if (tag == 0)
		return NULL;
	if (add && 2 * (n->scused + 1) > n->sccap) {
		size_t cap = n->sccap ? 2 * n->sccap : 64;
		struct scount *t = calloc(cap, sizeof(*t));

		if (t == NULL)
			return NULL;
		for (size_t k = 0; k < n->sccap; k++)
			if (n->sc[k].tag != 0) {
				for (i = n->sc[k].tag & (cap - 1); t[i].tag != 0; i = (i + 1) & (cap - 1))
					;
				t[i] = n->sc[k];
			}
		free(n->sc);
		n->sc = t;
		n->sccap = cap;
	}
	if (n->sccap == 0)
		return NULL;
	for (i = tag & (n->sccap - 1); n->sc[i].tag != 0; i = (i + 1) & (n->sccap - 1))
		if (n->sc[i].tag == tag)
			return &n->sc[i];
	if (!add)
		return NULL;
	n->sc[i].tag = tag;
	n->sc[i].n = 0;
	n->scused++;
	return &n->sc[i];
}

static void
scount_add(nonces *n, uint64_t tag, int delta)
{
	struct scount *c = scount_find(n, tag, delta > 0);

	/* Out of memory: the scope goes uncounted (max_live still bounds all). */
	if (c != NULL && (delta > 0 || c->n > 0))
		c->n = delta > 0 ? c->n + 1 : c->n - 1;
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

static int compact_locked(nonces *n, int64_t now);

/* Under mu, after a change: the figures nonces_stats and friends read. */
static void
publish_locked(nonces *n)
{
	atomic_store_explicit(&n->pub.used, n->used, memory_order_relaxed);
	atomic_store_explicit(&n->pub.cap, n->cap, memory_order_relaxed);
	atomic_store_explicit(&n->pub.appended, n->appended, memory_order_relaxed);
	atomic_store_explicit(&n->pub.compactions, n->compactions, memory_order_relaxed);
	atomic_store_explicit(&n->pub.log_bytes, (uint64_t)n->size, memory_order_relaxed);
}

/* Rebuild into `cap` slots, keeping only entries alive at `now`. */
static int
rehash_locked(nonces *n, size_t cap, int64_t now)
{
	struct entry *t = calloc(cap, sizeof(*t));
	size_t used = 0;

	if (t == NULL)
		return cf_nomem();
	/* The scope counts are rebuilt with the table (emptied, not freed). */
	if (n->sc != NULL)
		memset(n->sc, 0, n->sccap * sizeof(*n->sc));
	n->scused = 0;
	for (size_t i = 0; i < n->cap; i++)
		if (n->t[i].expires > now) {
			place(t, cap, &n->t[i]);
			scount_add(n, n->t[i].scope, 1);
			used++;
		}
	free(n->t);
	n->t = t;
	n->cap = cap;
	n->used = used;
	publish_locked(n);
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

/* Add a live entry read back from disk (duplicates are harmless). */
static int
load_entry(nonces *n, const struct entry *e, int64_t now)
{
	int r;

	if (e->expires <= now || find_locked(n, e->h, now) != SIZE_MAX)
		return CF_OK;
	if (4 * (n->used + 1) > 3 * n->cap && (r = rehash_locked(n, 2 * n->cap, now)) != CF_OK)
		return r;
	place(n->t, n->cap, e);
	n->used++;
	return CF_OK;
}

static void
encode(const struct entry *e, uint8_t rec[REC])
{
	memcpy(rec, e->h, 16);
	for (int i = 0; i < 8; i++)
		rec[16 + i] = (uint8_t)((uint64_t)e->expires >> (8 * i));
}

static void
decode(const uint8_t rec[REC], struct entry *e)
{
	uint64_t v = 0;

	memcpy(e->h, rec, 16);
	e->scope = 0;   /* the log keeps no scope */
	for (int i = 7; i >= 0; i--)
		v = v << 8 | rec[16 + i];
	e->expires = (int64_t)v;
}

/* Read the log into the table. A torn last record (the daemon died in the
 * middle of a write) is cut off. */
static int
load_log(nonces *n, int64_t now)
{
	uint8_t buf[REC * 4096], hdr[LOG_HEADER];
	size_t have = 0;
	ssize_t got;
	int r = CF_OK;

	got = pread(n->fd, hdr, sizeof(hdr), 0);
	/* Shorter than a header: new, or the daemon died while creating it. */
	if (got >= 0 && got < (ssize_t)sizeof(hdr)) {
		if (got > 0 && ftruncate(n->fd, 0) != 0)
			return cf_error(CF_E_IO, "nonce record %s: %s", n->path, strerror(errno));
		memset(hdr, 0, sizeof(hdr));
		memcpy(hdr, LOG_MAGIC, 8);
		if (cf_write_all(n->fd, hdr, sizeof(hdr)) != 0)
			return cf_error(CF_E_IO, "nonce record %s: %s", n->path, strerror(errno));
		n->size = LOG_HEADER;
		return CF_OK;
	}
	if (got < 0 || memcmp(hdr, LOG_MAGIC, 8) != 0)
		return cf_error(CF_E_IO, "nonce record %s is not a Coffer nonce log", n->path);
	atomic_store(&n->window, (unsigned)hdr[8] | (unsigned)hdr[9] << 8 |
				 (unsigned)hdr[10] << 16 | (unsigned)hdr[11] << 24);
	atomic_store(&n->floor, (int64_t)((uint32_t)hdr[12] | (uint32_t)hdr[13] << 8 |
					  (uint32_t)hdr[14] << 16 | (uint32_t)hdr[15] << 24));
	n->size = LOG_HEADER;
	while ((got = pread(n->fd, buf + have, sizeof(buf) - have, n->size + (off_t)have)) > 0) {
		size_t whole;

		have += (size_t)got;
		whole = have - have % REC;
		for (size_t i = 0; i < whole && r == CF_OK; i += REC) {
			struct entry e;

			decode(buf + i, &e);
			r = load_entry(n, &e, now);
		}
		if (r != CF_OK)
			return r;
		n->size += (off_t)whole;
		memmove(buf, buf + whole, have - whole);
		have -= whole;
	}
	if (got < 0)
		return cf_error(CF_E_IO, "nonce record %s: %s", n->path, strerror(errno));
	if (have > 0 && ftruncate(n->fd, n->size) != 0)
		return cf_error(CF_E_IO, "nonce record %s: %s", n->path, strerror(errno));
	return CF_OK;
}

/* Coffer before 0.5 kept the record in SQLite (<state_dir>/nonces.db): carry
 * its live nonces over, then remove it. */
static int
import_sqlite(nonces *n, const char *dir, int64_t now)
{
	char db[4200];
	sqlite3 *h = NULL;
	sqlite3_stmt *sel = NULL;
	struct stat st;
	int r = CF_OK, rc = SQLITE_DONE;

	snprintf(db, sizeof(db), "%s/nonces.db", dir);
	if (stat(db, &st) != 0)
		return CF_OK;
	if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(h, "SELECT h, expires FROM nonces WHERE expires > ?", -1, &sel,
			       NULL) != SQLITE_OK) {
		r = cf_error(CF_E_IO, "cannot read the old nonce record %s: %s", db,
			     h ? sqlite3_errmsg(h) : "out of memory");
		goto out;
	}
	sqlite3_bind_int64(sel, 1, now);
	while (r == CF_OK && (rc = sqlite3_step(sel)) == SQLITE_ROW) {
		struct entry e;
		uint8_t rec[REC];

		if (sqlite3_column_bytes(sel, 0) != 16)
			continue;
		memcpy(e.h, sqlite3_column_blob(sel, 0), 16);
		e.expires = sqlite3_column_int64(sel, 1);
		e.scope = 0;
		encode(&e, rec);
		if (cf_write_all(n->fd, rec, REC) != 0)
			r = cf_error(CF_E_IO, "nonce record %s: %s", n->path, strerror(errno));
		else if ((r = load_entry(n, &e, now)) == CF_OK)
			n->size += REC;
	}
	/* All of it read, and durable in the log, before the old record goes. */
	if (r == CF_OK && rc != SQLITE_DONE)
		r = cf_error(CF_E_IO, "reading the old nonce record %s: %s", db, sqlite3_errmsg(h));
	if (r == CF_OK && fdatasync(n->fd) != 0)
		r = cf_error(CF_E_IO, "nonce record %s: %s", n->path, strerror(errno));
out:
	sqlite3_finalize(sel);
	sqlite3_close(h);
	if (r == CF_OK) {
		const char *sfx[] = { "", "-wal", "-shm" };

		for (size_t i = 0; i < 3; i++) {
			snprintf(db, sizeof(db), "%s/nonces.db%s", dir, sfx[i]);
			(void)unlink(db);
		}
	}
	return r;
}

/* The parts both modes share. */
static nonces *
alloc_nonces(size_t max_live)
{
	nonces *n = calloc(1, sizeof(*n));

	if (n == NULL)
		return NULL;
	pthread_mutex_init(&n->mu, NULL);
	n->fd = -1;
	n->live_max = max_live;
	n->scope_max = max_live;
	n->cap = INITIAL_SLOTS;
	if ((n->t = calloc(n->cap, sizeof(*n->t))) == NULL) {
		nonces_close(n);
		return NULL;
	}
	return n;
}

int
nonces_open(const char *state_dir, size_t max_live, nonces **out)
{
	nonces *n = alloc_nonces(max_live);
	int64_t now = (int64_t)time(NULL);
	int r;

	if (n == NULL)
		return cf_nomem();
	snprintf(n->path, sizeof(n->path), "%s/nonces.log", state_dir);
	if ((n->fd = open(n->path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) < 0) {
		r = cf_error(CF_E_IO, "cannot open nonce record %s: %s", n->path, strerror(errno));
		goto fail;
	}
	if ((r = load_log(n, now)) != CF_OK || (r = import_sqlite(n, state_dir, now)) != CF_OK)
		goto fail;
	publish_locked(n);   /* not shared yet */
	*out = n;
	return CF_OK;
fail:
	nonces_close(n);
	return r;
}

int
nonces_open_pg(const char *dsn, size_t max_live, nonces **out)
{
	nonces *n = alloc_nonces(max_live);
	int r;

	if (n == NULL)
		return cf_nomem();
	snprintf(n->path, sizeof(n->path), "PostgreSQL table coffer_nonces");
	if ((r = nonces_pg_open(dsn, &n->pg)) != CF_OK) {
		nonces_close(n);
		return r;
	}
	publish_locked(n);   /* not shared yet */
	*out = n;
	return CF_OK;
}

void
nonces_close(nonces *n)
{
	if (n == NULL)
		return;
	nonces_pg_close(n->pg);
	if (n->fd >= 0)
		close(n->fd);
	free(n->t);
	free(n->sc);
	pthread_mutex_destroy(&n->mu);
	free(n);
}

void
nonces_set_scope_max(nonces *n, size_t max)
{
	pthread_mutex_lock(&n->mu);
	n->scope_max = max > 0 && max < n->live_max ? max : n->live_max;
	pthread_mutex_unlock(&n->mu);
}

/* Log a refusal (mu held): at most one line in 10 s, with how many were not
 * logged since, so that a flood of refused calls does not flood the log. */
static void
warn_refused_locked(nonces *n, int64_t now, const char *what)
{
	if (n->warned != 0 && now - n->warned < 10) {
		n->unlogged++;
		return;
	}
	if (n->unlogged > 0)
		cf_log_warn("%s (and %llu more refusals in the last %lld s)", what,
			    (unsigned long long)n->unlogged, (long long)(now - n->warned));
	else
		cf_log_warn("%s", what);
	n->warned = now;
	n->unlogged = 0;
}

/*
 * Where e goes (mu held): *slot, and *grows when that is an empty slot
 * (the table holds one more) rather than an expired entry's. CF_E_EXISTS if
 * e is live here. With `limits`, CF_E_EXHAUSTED beyond the scope's share or
 * max_live (the file mode, and the PostgreSQL mode before it asks the
 * database); without, only the place (the PostgreSQL mode once the
 * database has accepted the nonce).
 */
static int
admit_locked(nonces *n, const struct entry *e, const char *scope, int64_t now, int limits,
	     size_t *slot, int *grows)
{
	size_t i, reuse = SIZE_MAX;
	struct scount *sc;
	int r;

	/* Walk the whole chain: a live copy may sit past an expired slot. */
	for (i = slot_of(e->h, n->cap); n->t[i].expires != 0; i = (i + 1) & (n->cap - 1)) {
		if (n->t[i].expires <= now) {
			if (reuse == SIZE_MAX)
				reuse = i;
			continue;
		}
		if (memcmp(n->t[i].h, e->h, 16) == 0)
			return cf_error(CF_E_EXISTS, "nonce already used: every call needs a "
					"new one");
	}
	if (n->broken)
		return cf_error(CF_E_IO, "nonce record %s could not be repaired after a failed "
				"write; restart cofferd", n->path);
	/* Each scope (an API key; a request-signing key) has its own share,
	 * so one busy or future-dating caller cannot refuse everybody else. */
	sc = limits && n->scope_max < n->live_max ? scount_find(n, e->scope, 0) : NULL;
	if (sc != NULL && sc->n >= n->scope_max && n->swept != now) {
		/* Its count may include expired entries: sweep (once a second). */
		n->swept = now;
		if (rehash_locked(n, n->cap, now) == CF_OK) {
			for (reuse = SIZE_MAX, i = slot_of(e->h, n->cap); n->t[i].expires != 0;
			     i = (i + 1) & (n->cap - 1))
				;
			sc = scount_find(n, e->scope, 0);
		}
	}
	if (sc != NULL && sc->n >= n->scope_max) {
		char what[400];

		snprintf(what, sizeof(what), "refused a signed call: nonce scope %s holds %zu "
			 "unexpired nonces, its share of the nonce record "
			 "(requests.max_nonces_per_key = %zu)", scope, sc->n, n->scope_max);
		warn_refused_locked(n, now, what);
		return cf_error(CF_E_EXHAUSTED, "%s holds %zu unexpired nonces, the limit of one "
				"key (requests.max_nonces_per_key = %zu); retry once older ones "
				"expire (their timestamp plus the window)", scope, sc->n,
				n->scope_max);
	}
	if (reuse != SIZE_MAX) {
		i = reuse;
	} else {
		if (limits && n->used >= n->live_max) {
			char what[400];

			snprintf(what, sizeof(what), "refused a signed call of nonce scope %s: the "
				 "nonce record holds %zu nonces (requests.max_nonces = %zu)",
				 scope, n->used, n->live_max);
			warn_refused_locked(n, now, what);
			return cf_error(CF_E_EXHAUSTED, "the nonce record holds %zu nonces, its "
					"limit (requests.max_nonces); retry later", n->used);
		}
		if (4 * (n->used + 1) > 3 * n->cap) {
			if ((r = rehash_locked(n, 2 * n->cap, now)) != CF_OK)
				return r;
			for (i = slot_of(e->h, n->cap); n->t[i].expires != 0;
			     i = (i + 1) & (n->cap - 1))
				;
		}
	}
	*slot = i;
	*grows = reuse == SIZE_MAX;
	return CF_OK;
}

/* Count e in at the slot admit_locked gave (mu held, nothing changed since). */
static void
record_locked(nonces *n, const struct entry *e, size_t i, int grows, int64_t now)
{
	n->appended++;
	if (grows)
		n->used++;
	else
		scount_add(n, n->t[i].scope, -1);
	scount_add(n, e->scope, 1);
	n->t[i] = *e;
	/* Backstop: never let the table fill, or a probe would not end. */
	if (4 * n->used > 3 * n->cap)
		(void)rehash_locked(n, 2 * n->cap, now);
	publish_locked(n);
}

/* PostgreSQL mode: this replica's table first (a nonce it accepted is
 * refused without a round trip; its limits), then the shared table, whose
 * answer is the verdict; then this replica counts it. The mutex is not
 * held across the round trip, so concurrent calls share one commit. */
static int
use_pg(nonces *n, const char *scope, const struct entry *e, unsigned ew, int64_t now)
{
	size_t i;
	int grows, r;

	pthread_mutex_lock(&n->mu);
	r = admit_locked(n, e, scope, now, 1, &i, &grows);
	pthread_mutex_unlock(&n->mu);
	if (r != CF_OK || (r = nonces_pg_claim(n->pg, e->h, e->expires, ew, now)) != CF_OK)
		return r;
	/* The table may have changed meanwhile: place it again. Failing that
	 * (out of memory) it goes uncounted here, and stays refused by the
	 * database. */
	pthread_mutex_lock(&n->mu);
	if (admit_locked(n, e, scope, now, 0, &i, &grows) == CF_OK)
		record_locked(n, e, i, grows, now);
	pthread_mutex_unlock(&n->mu);
	return CF_OK;
}

/* Kept until `expires`, which the caller computed with window cw: longer
 * if the record's window is larger now (raised while the call ran). *ew:
 * the window the result is computed with (cw UINT_MAX: `expires` is
 * final, taken as the record's). */
static int64_t
kept_until(const nonces *n, int64_t expires, unsigned cw, unsigned *ew)
{
	unsigned w = atomic_load(&((nonces *)n)->window);

	if (cw == UINT_MAX || w <= cw) {
		*ew = cw == UINT_MAX ? w : cw;
		return expires;
	}
	*ew = w;
	return expires + (w - cw);
}

/* The clock read again where the record is looked at: the later of it and
 * the call's start. */
static int64_t
relocked(int64_t now)
{
	int64_t t = cf_wall_s();

	return t > now ? t : now;
}

/* relock: the clock is read again (relocked) once the record is held. */
static int
use(nonces *n, const char *scope, const char *nonce, int64_t expires, unsigned cw, int64_t now,
    int relock)
{
	struct entry e;
	uint8_t rec[REC];
	size_t i;
	unsigned ew;
	int grows, r, slot, wrote;

	digest(scope, nonce, e.h);
	e.scope = scope_tag(scope);
	if (n->pg != NULL) {
		if (relock && (now = relocked(now)) >= expires)
			return cf_error(CF_E_TIMEOUT, "expired while it was checked");
		e.expires = kept_until(n, expires, cw, &ew);
		return use_pg(n, scope, &e, ew, now);
	}
	/* Bounded: behind a write that hangs, this call is refused rather than
	 * stuck with it. */
	if (iowatch_lock(&n->mu) != 0)
		return cf_error(CF_E_UNAVAILABLE, "nonce record %s: a write to it has not returned "
				"in %u ms (the disk does not answer); retry once it does", n->path,
				iowatch_limit());
	/* The clock read under mu: an entry of this nonce that another thread
	 * dropped as expired before then is expired for this claim too. */
	if (relock && (now = relocked(now)) >= expires) {
		r = cf_error(CF_E_TIMEOUT, "expired while it was checked");
		goto out;
	}
	e.expires = kept_until(n, expires, cw, &ew);
	encode(&e, rec);
	if ((r = admit_locked(n, &e, scope, now, 1, &i, &grows)) != CF_OK)
		goto out;
	/* In the log before it counts: the kernel has it once write returns,
	 * so a crash or restart of the daemon never forgets it. */
	slot = iowatch_begin(n->path);
	wrote = cf_write_all(n->fd, rec, REC) == 0;
	iowatch_end(slot, wrote ? IOWATCH_OK : IOWATCH_FAILED);
	if (!wrote) {
		r = cf_error(CF_E_IO, "nonce record %s: %s", n->path, strerror(errno));
		/* Never leave a torn record for the next append to misalign;
		 * if it cannot be cut off, refuse every nonce until a restart. */
		if (ftruncate(n->fd, n->size) != 0)
			n->broken = 1;
		goto out;
	}
	CF_CRASH_POINT("nonces.appended");
	n->size += REC;
	record_locked(n, &e, i, grows, now);
out:
	pthread_mutex_unlock(&n->mu);
	return r;
}

int
nonces_use(nonces *n, const char *scope, const char *nonce, int64_t expires, int64_t now)
{
	return use(n, scope, nonce, expires, UINT_MAX, now, 0);
}

int
nonces_set_window(nonces *n, unsigned window, int64_t now)
{
	unsigned old;
	int r = CF_OK;

	/* Recorded with the fleet first: a window raised here only once its
	 * rows are kept longer. */
	if (n->pg != NULL) {
		int64_t floor;

		if ((r = nonces_pg_set_window(n->pg, window, now, &floor)) == CF_OK) {
			atomic_store(&n->floor, floor);
			atomic_store(&n->window, window);
		}
		return r;
	}
	/* Bounded: behind a log write that hangs, the change is refused (the
	 * caller keeps the old window) rather than the caller stuck with it. */
	if (iowatch_lock(&n->mu) != 0)
		return cf_error(CF_E_UNAVAILABLE, "nonce record %s: a write to it has not returned "
				"in %u ms (the disk does not answer)", n->path, iowatch_limit());
	old = atomic_load(&n->window);
	if (window != old) {
		/* Raised: what is recorded is kept as long as the new window
		 * accepts its timestamp, and what may have been dropped (older
		 * than the old window now; 0, a log from before: anything) is
		 * refused until the new window leaves it behind. */
		if (window > old) {
			for (size_t i = 0; i < n->cap; i++)
				if (n->t[i].expires != 0)
					n->t[i].expires += window - old;
			/* (A log just made has nothing to have dropped.) */
			if ((old > 0 || n->used > 0 || n->size > LOG_HEADER) &&
			    now - old > atomic_load(&n->floor))
				atomic_store(&n->floor, now - old);
		}
		atomic_store(&n->window, window);
		/* The log, rewritten with the header's window: a restart reads
		 * the same expiries. Failing, the table holds them until then,
		 * and the next start applies the raise again from the header. */
		if (n->fd >= 0 && compact_locked(n, now) != CF_OK)
			cf_log_warn("nonce record: the window changed from %u to %u s, and the log "
				    "could not be rewritten (%s); this run keeps the new expiries",
				    old, window, cf_error_detail());
	}
	pthread_mutex_unlock(&n->mu);
	return r;
}

/* Rewrite the log with only the live entries (mu held): a new file, synced,
 * renamed over the old one. */
static int
compact_locked(nonces *n, int64_t now)
{
	char tmp[4200];
	uint8_t buf[REC * 1024], hdr[LOG_HEADER];
	size_t have = 0;
	off_t size = LOG_HEADER;
	int fd, ok;

	snprintf(tmp, sizeof(tmp), "%s.new", n->path);
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600)) < 0)
		return cf_error(CF_E_IO, "nonce record %s: %s", tmp, strerror(errno));
	memset(hdr, 0, sizeof(hdr));
	memcpy(hdr, LOG_MAGIC, 8);
	for (int b = 0; b < 4; b++) {
		hdr[8 + b] = (uint8_t)(atomic_load(&n->window) >> (8 * b));
		hdr[12 + b] = (uint8_t)((uint64_t)atomic_load(&n->floor) >> (8 * b));
	}
	ok = cf_write_all(fd, hdr, sizeof(hdr)) == 0;
	for (size_t i = 0; ok && i <= n->cap; i++) {
		if (have == sizeof(buf) || (i == n->cap && have > 0)) {
			ok = cf_write_all(fd, buf, have) == 0;
			size += (off_t)have;
			have = 0;
		}
		if (i < n->cap && n->t[i].expires > now) {
			encode(&n->t[i], buf + have);
			have += REC;
		}
	}
	if (ok)
		CF_CRASH_POINT("nonces.compact.written");
	ok = ok && fdatasync(fd) == 0 && rename(tmp, n->path) == 0;
	if (!ok) {
		int e = errno;

		close(fd);
		(void)unlink(tmp);
		return cf_error(CF_E_IO, "compacting the nonce record: %s", strerror(e));
	}
	close(n->fd);
	n->fd = fd;
	n->size = size;
	n->compactions++;
	publish_locked(n);
	return CF_OK;
}

void
nonces_expire(nonces *n, int64_t now)
{
	uint64_t deleted;
	size_t cap;

	pthread_mutex_lock(&n->mu);
	cap = n->cap;
	(void)rehash_locked(n, cap, now);
	/* Shrink when mostly empty, never below the start size. */
	while (cap > INITIAL_SLOTS && 8 * n->used < cap)
		cap /= 2;
	if (cap != n->cap)
		(void)rehash_locked(n, cap, now);
	/* The log keeps growing with every nonce; rewrite it once the dead
	 * records outnumber the live ones. A failure keeps the old log. */
	if (n->fd >= 0 && (size_t)(n->size - LOG_HEADER) / REC > 2 * n->used + COMPACT_SLACK)
		(void)compact_locked(n, now);   /* unwatched: a big log may take long */
	pthread_mutex_unlock(&n->mu);
	/* Outside mu: calls go on while the database deletes. */
	if (n->pg != NULL && nonces_pg_expire(n->pg, now, &deleted) != CF_OK)
		cf_log_warn("expiring nonces: %s", cf_error_detail());
}

void
nonces_stats(nonces *n, uint64_t *appended, uint64_t *compactions, uint64_t *log_bytes)
{
	*appended = atomic_load_explicit(&n->pub.appended, memory_order_relaxed);
	*compactions = atomic_load_explicit(&n->pub.compactions, memory_order_relaxed);
	*log_bytes = atomic_load_explicit(&n->pub.log_bytes, memory_order_relaxed);
}

void
nonces_batch_stats(nonces *n, uint64_t *batches, uint64_t *items)
{
	*batches = *items = 0;
	if (n->pg != NULL)
		nonces_pg_stats(n->pg, batches, items);
}

size_t
nonces_live(nonces *n)
{
	return atomic_load_explicit(&n->pub.used, memory_order_relaxed);
}

size_t
nonces_memory(nonces *n)
{
	return atomic_load_explicit(&n->pub.cap, memory_order_relaxed) * sizeof(struct entry);
}

int
nonces_check(nonces *n, const struct nonce_claim *c, int64_t now, int (*verify)(void *arg),
	     void *arg, enum nonce_verdict *v)
{
	int r;

	*v = NONCE_FRESH;
	if (c->timestamp < now - (int64_t)c->window) {
		*v = NONCE_EXPIRED;
		return CF_OK;
	}
	if (c->timestamp < atomic_load(&n->floor)) {
		*v = NONCE_BEFORE_RAISE;
		return CF_OK;
	}
	if (c->timestamp > now + (int64_t)c->ahead) {
		*v = NONCE_AHEAD;
		return CF_OK;
	}
	if ((r = verify(arg)) != CF_OK)
		return r;
	/* Its verification may have taken a while: the clock is read again
	 * where the record is looked at. */
	r = use(n, c->scope, c->nonce, c->timestamp + (int64_t)c->window + 1, c->window, now, 1);
	if (r == CF_E_TIMEOUT) {
		cf_error_clear();
		*v = NONCE_EXPIRED;
		return CF_OK;
	}
	if (r == CF_E_EXISTS) {
		*v = NONCE_REPLAYED;
		return CF_OK;
	}
	return r;
}
