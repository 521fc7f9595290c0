#include "keyring.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "cf_count.h"
#include "cf_crashpoint.h"
#include "cf_log.h"
#include "cf_status.h"
#include "cf_time.h"
#include "change_mu.h"
#include "metrics.h"
#include "recovery.h"
#include "sorted.h"

struct kr_version {
	struct store_version meta;
	cf_p11_key *k;          /* NULL if the token lacks it */
};

struct kr_key {
	/* What the store records, versions aside (m.versions is NULL: each
	 * version's record is v[i].meta, beside its token handle). */
	struct store_key m;
	int64_t destroy_retry_at;   /* after a failed destruction: not before then */
	int64_t rotate_retry_at;    /* after a failed scheduled rotation */
	struct kr_version *v;   /* ascending by version */
	uint32_t nv, capv;
};

struct keyring {
	cf_p11 *p11;
	store *st;
	struct keyring_cfg cfg;
	pthread_rwlock_t lock;
	struct change_mu write_mu;  /* one change (create, rotate, lifecycle, tick) at a time */
	struct kr_key **keys;      /* sorted by name */
	size_t n, cap;
	keyring_record_fn record;  /* audit records of the daemon's own changes */
	int shared;                /* the store is shared by replicas (store_change_begin) */
	cf_p11_key **retired;      /* handles of versions destroyed elsewhere (kr_retire) */
	size_t nretired;
	void *record_arg;
	char tick_after[CF_KEY_NAME_MAX + 1]; /* the last key a budgeted tick rotated */
};

enum key_purpose
keyring_purpose(enum cf_key_type t)
{
	if (cf_key_type_is_hmac(t))
		return PURPOSE_MAC;
	if (t == CF_KEY_AES_256)
		return PURPOSE_WRAP;
	return PURPOSE_SIGN;
}

void
keyring_cfg_defaults(struct keyring_cfg *c)
{
	c->destroy_grace = 7 * 86400;
	c->min_destroy_grace = 86400;
	c->min_rotation_period = 3600;
}

const char *
keyring_purpose_name(enum key_purpose p)
{
	return p == PURPOSE_MAC ? "mac" : p == PURPOSE_WRAP ? "wrap" : "sign";
}

void
keyring_info_free(struct store_key *info)
{
	if (info == NULL)
		return;
	free(info->versions);
	info->versions = NULL;
	info->nversions = 0;
}

static const char *
kr_name_at(const void *kr, size_t i)
{
	return ((const keyring *)kr)->keys[i]->m.name;
}

/* The index where `name` is or would be. */
static size_t
kr_find(const keyring *kr, const char *name, int *found)
{
	cf_count(CF_COUNT_KEY_LOOKUP);
	return sorted_find(kr, kr->n, kr_name_at, name, found);
}

static int
not_found(const struct keyring_ref *ref)
{
	return cf_error(CF_E_NOT_FOUND, "key %s does not exist", ref->name);
}

/* Room for one more key (write lock held). A change makes it before the
 * store has the key, so that installing it then cannot fail. */
static int
kr_keys_room(keyring *kr)
{
	if (kr->n == kr->cap) {
		size_t nc = kr->cap ? kr->cap * 2 : 64;
		struct kr_key **nk = realloc(kr->keys, nc * sizeof(*nk));

		if (nk == NULL)
			return cf_nomem();
		kr->keys = nk;
		kr->cap = nc;
	}
	return CF_OK;
}

static int
kr_insert(keyring *kr, struct kr_key *k)
{
	int found, r;
	size_t at = kr_find(kr, k->m.name, &found);

	if (found)
		return cf_error(CF_E_EXISTS, "key %s already exists", k->m.name);
	if ((r = kr_keys_room(kr)) != CF_OK)
		return r;
	memmove(&kr->keys[at + 1], &kr->keys[at], (kr->n - at) * sizeof(*kr->keys));
	kr->keys[at] = k;
	kr->n++;
	return CF_OK;
}

/* Room for one more version of k (write lock held if k is in the table);
 * made, as kr_keys_room, before the store has the version. */
static int
kr_versions_room(struct kr_key *k)
{
	if (k->nv == k->capv) {
		uint32_t nc = k->capv ? k->capv * 2 : 4;
		struct kr_version *nv = realloc(k->v, nc * sizeof(*nv));

		if (nv == NULL)
			return cf_nomem();
		k->v = nv;
		k->capv = nc;
	}
	return CF_OK;
}

static int
kr_add_version(struct kr_key *k, const struct store_version *meta, cf_p11_key *h)
{
	int r;

	if ((r = kr_versions_room(k)) != CF_OK)
		return r;
	k->v[k->nv].meta = *meta;
	k->v[k->nv].k = h;
	k->nv++;
	return CF_OK;
}

/* Keep a handle another replica's destruction made useless until close
 * (under the write lock): a call may still hold it, borrowed. */
static int
kr_retire(keyring *kr, cf_p11_key *h)
{
	cf_p11_key **nr = realloc(kr->retired, (kr->nretired + 1) * sizeof(*nr));

	if (nr == NULL)
		return cf_nomem();   /* it stays where it was, unused (destroyed state) */
	kr->retired = nr;
	kr->retired[kr->nretired++] = h;
	return CF_OK;
}

static void
kr_key_free(struct kr_key *k)
{
	if (k == NULL)
		return;
	for (uint32_t i = 0; i < k->nv; i++)
		cf_p11_key_free(k->v[i].k);
	free(k->v);
	free(k);
}

/* The key's own record from sk (its versions are kept apart, in k->v). */
static void
kr_set_meta(struct kr_key *k, const struct store_key *sk)
{
	k->m = *sk;
	k->m.versions = NULL;
	k->m.nversions = 0;
}

/* Room for a copy of a key of nv versions. A change makes it before its
 * store write, so that once committed it is answered without an allocation
 * that could fail (a retry without an idempotency key would change twice). */
static int
kr_info_room(uint32_t nv, struct store_key *sk)
{
	memset(sk, 0, sizeof(*sk));
	if ((sk->versions = calloc(nv ? nv : 1, sizeof(*sk->versions))) == NULL)
		return cf_nomem();
	return CF_OK;
}

/* k into sk, which has room for k's versions (kr_info_room). */
static void
kr_fill_info(const struct kr_key *k, struct store_key *sk)
{
	struct store_version *v = sk->versions;

	*sk = k->m;
	sk->versions = v;
	for (uint32_t i = 0; i < k->nv; i++)
		v[i] = k->v[i].meta;
	sk->nversions = k->nv;
}

/* A copy of a key's metadata (versions malloc'ed): for callers, and for a
 * change to be checked and recorded before it is applied. */
static int
kr_copy_info(const struct kr_key *k, struct store_key *sk)
{
	int r;

	if ((r = kr_info_room(k->nv, sk)) == CF_OK)
		kr_fill_info(k, sk);
	return r;
}

struct load_ctx {
	keyring *kr;
	void (*report)(const char *msg);
	unsigned mismatches;
	struct cf_p11_object *objs;   /* the token's listing at start-up (sorted), or NULL */
	size_t nobjs;
};

static void
kr_report(struct load_ctx *lc, const char *msg)
{
	lc->mismatches++;
	if (lc->report != NULL)
		lc->report(msg);
}

/* The token handle of a version of sk (NULL: destroyed, missing from the
 * token, or of another type, reported). */
static cf_p11_key *
open_version(struct load_ctx *lc, const struct store_key *sk, const struct store_version *sv)
{
	cf_p11_key *h = NULL;
	char msg[512];
	int r;

	/* Missing, incomplete or extra objects were reported by recovery
	 * (recovery.h); a version without its objects is not served. */
	if (sv->state == STORE_DESTROYED)
		return NULL;
	r = cf_p11_key_open_listed(lc->kr->p11, lc->objs, lc->nobjs, sk->name, sv->version,
				   sv->ckaid, &h);
	if (r == CF_OK && cf_p11_key_type(h) != sk->type) {
		snprintf(msg, sizeof(msg), "key %s version %u: the token object is %s, the registry "
			 "says %s; version unusable", sk->name, sv->version,
			 cf_key_type_name(cf_p11_key_type(h)), cf_key_type_name(sk->type));
		kr_report(lc, msg);
		cf_p11_key_free(h);
		h = NULL;
	} else if (r != CF_OK) {
		if (r != CF_E_NOT_FOUND)
			cf_log_warn("key %s version %u: cannot open it in the token (tried again at "
				    "the next reload): %s", sk->name, sv->version, cf_error_detail());
		cf_error_clear();
		h = NULL;
	}
	return h;
}

/* A key as the store records it, with its versions opened in the token. */
static int
build_key(struct load_ctx *lc, const struct store_key *sk, struct kr_key **out)
{
	struct kr_key *k;
	int r;

	if ((k = calloc(1, sizeof(*k))) == NULL)
		return cf_nomem();
	kr_set_meta(k, sk);
	for (uint32_t i = 0; i < sk->nversions; i++) {
		cf_p11_key *h = open_version(lc, sk, &sk->versions[i]);

		if ((r = kr_add_version(k, &sk->versions[i], h)) != CF_OK) {
			cf_p11_key_free(h);
			kr_key_free(k);
			return r;
		}
	}
	*out = k;
	return CF_OK;
}

static int
load_one(const struct store_key *sk, void *arg)
{
	struct load_ctx *lc = arg;
	struct kr_key *k;
	int r;

	if ((r = build_key(lc, sk, &k)) != CF_OK)
		return r;
	if ((r = kr_insert(lc->kr, k)) != CF_OK)
		kr_key_free(k);
	return r;
}

/*
 * Make the registry's record of a key (changed by another replica) this
 * keyring's state: a new key is added, new versions opened, states and the
 * key's fields replaced; a version destroyed elsewhere lets its handle go.
 * Under write_mu (so only this thread changes keys); readers are kept out by
 * the write lock while anything they read changes.
 */
static int
sync_one(const struct store_key *sk, void *arg)
{
	struct load_ctx *lc = arg;
	keyring *kr = lc->kr;
	struct kr_key *k;
	size_t at;
	int found, r = CF_OK;

	at = kr_find(kr, sk->name, &found);
	if (!found) {
		if ((r = build_key(lc, sk, &k)) != CF_OK)
			return r;
		pthread_rwlock_wrlock(&kr->lock);
		r = kr_insert(kr, k);
		pthread_rwlock_unlock(&kr->lock);
		if (r != CF_OK)
			kr_key_free(k);
		return r;
	}
	k = kr->keys[at];
	for (uint32_t i = 0; i < sk->nversions && r == CF_OK; i++) {
		const struct store_version *sv = &sk->versions[i];
		cf_p11_key *h;

		if (i < k->nv) {
			/* A version that could not be opened before (a transient
			 * token error) is tried again. */
			h = k->v[i].k == NULL && sv->state != STORE_DESTROYED ?
			    open_version(lc, sk, sv) : NULL;
			pthread_rwlock_wrlock(&kr->lock);
			k->v[i].meta = *sv;
			if (h != NULL && k->v[i].k == NULL) {
				k->v[i].k = h;
				h = NULL;
			}
			/* Borrowed handles live as long as the keyring: kept aside,
			 * freed at close (out of memory: left in place, unused in
			 * the destroyed state). */
			if (sv->state == STORE_DESTROYED && k->v[i].k != NULL) {
				/* Its session copies are this process's to drop. */
				cf_p11_key_retire(k->v[i].k);
				if (kr_retire(kr, k->v[i].k) == CF_OK)
					k->v[i].k = NULL;
			}
			pthread_rwlock_unlock(&kr->lock);
			cf_p11_key_free(h);
			continue;
		}
		h = open_version(lc, sk, sv);
		pthread_rwlock_wrlock(&kr->lock);
		if ((r = kr_add_version(k, sv, h)) != CF_OK)
			cf_p11_key_free(h);
		pthread_rwlock_unlock(&kr->lock);
	}
	pthread_rwlock_wrlock(&kr->lock);
	kr_set_meta(k, sk);
	pthread_rwlock_unlock(&kr->lock);
	return r;
}

/* Keys as the store has them, copied out of its read. */
struct key_copies {
	struct store_key *v;
	size_t n, cap;
};

static int
copy_key(const struct store_key *sk, void *arg)
{
	struct key_copies *c = arg;
	struct store_key *d;

	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 8;
		struct store_key *v = realloc(c->v, cap * sizeof(*v));

		if (v == NULL)
			return cf_nomem();
		c->v = v;
		c->cap = cap;
	}
	d = &c->v[c->n];
	*d = *sk;
	d->versions = NULL;
	if (sk->nversions > 0) {
		if ((d->versions = malloc(sk->nversions * sizeof(*d->versions))) == NULL)
			return cf_nomem();
		memcpy(d->versions, sk->versions, sk->nversions * sizeof(*d->versions));
	}
	c->n++;
	return CF_OK;
}

/* Re-read one key (name) or every key (NULL) from the store. Under write_mu.
 * The versions are opened in the token after the read, not inside it: a
 * token slow to answer held the store's connection, and every call that
 * needs it, for as long (found by a review). */
static int
kr_sync(keyring *kr, const char *name)
{
	struct load_ctx lc = { kr, NULL, 0, NULL, 0 };
	struct key_copies c = { NULL, 0, 0 };
	int r;

	r = name == NULL ? store_load(kr->st, copy_key, &c)
			 : store_key_get(kr->st, name, copy_key, &c);
	if (r == CF_E_NOT_FOUND) {
		cf_error_clear();
		r = CF_OK;
	}
	for (size_t i = 0; i < c.n && r == CF_OK; i++)
		r = sync_one(&c.v[i], &lc);
	for (size_t i = 0; i < c.n; i++)
		free(c.v[i].versions);
	free(c.v);
	return r;
}

static void
log_recovered(const char *msg)
{
	cf_log_warn("fleet: %s", msg);
}

/*
 * Begin a change to `name` (NULL: to any key): this process's writer lock,
 * then the fleet's (store_change_begin). With a shared state the key is
 * re-read under it, and intents left in the store are undone first: while
 * the fleet's lock is held no other change is running anywhere, so an
 * intent found now belongs to a call that died (a replica killed mid-change)
 * and its objects would otherwise collide with the next version's label.
 */
static int
kr_write_begin(keyring *kr, const char *name)
{
	int shared, r;

	change_mu_lock(&kr->write_mu);
	if ((r = store_change_begin(kr->st, &shared)) != CF_OK) {
		change_mu_unlock(&kr->write_mu);
		return r;
	}
	kr->shared = shared;
	if (shared && ((r = recovery_undo_intents(kr->p11, kr->st, log_recovered, NULL)) != CF_OK ||
		       (r = kr_sync(kr, name)) != CF_OK)) {
		store_change_end(kr->st);
		change_mu_unlock(&kr->write_mu);
	}
	return r;
}

static void
kr_write_end(keyring *kr)
{
	store_change_end(kr->st);
	change_mu_unlock(&kr->write_mu);
}

int
keyring_refresh(keyring *kr, const char *name)
{
	int r;

	/* Never waits for a change in progress (the notification thread calls
	 * it; a change may wait long for the fleet's lock): CF_E_BUSY, and the
	 * caller tries again. */
	if (change_mu_try(&kr->write_mu) != 0)
		return cf_error(CF_E_BUSY, "keys: a change is in progress; reload later");
	r = kr_sync(kr, name);
	change_mu_unlock(&kr->write_mu);
	return r;
}

int
keyring_open(cf_p11 *p11, store *st, const struct keyring_cfg *cfg,
	     void (*report)(const char *msg), unsigned *mismatches, keyring **out)
{
	struct load_ctx lc = { NULL, report, 0, NULL, 0 };
	keyring *kr;
	int shared, r;

	if ((kr = calloc(1, sizeof(*kr))) == NULL)
		return cf_nomem();
	kr->p11 = p11;
	kr->st = st;
	if (cfg != NULL)
		kr->cfg = *cfg;
	else
		keyring_cfg_defaults(&kr->cfg);
	pthread_rwlock_init(&kr->lock, NULL);
	change_mu_init(&kr->write_mu);
	lc.kr = kr;
	/* Replicas sharing the state: no other change runs meanwhile (intents
	 * found are then a dead call's, never a live replica's). */
	if ((r = store_change_begin(st, &shared)) != CF_OK) {
		keyring_close(kr);
		return r;
	}
	r = recovery_run(p11, st, report, &lc.mismatches);
	/* Loading runs without it: what another replica changes meanwhile is
	 * in the store by the time it is read, or arrives as a notification.
	 * Versions are opened from one listing of the token, taken before the
	 * registry is read (a version made since is searched for). */
	store_change_end(st);
	if (r == CF_OK && cf_p11_objects(p11, &lc.objs, &lc.nobjs) != CF_OK)
		cf_error_clear();     /* each version is searched for instead */
	else if (lc.nobjs > 0)        /* an empty listing is NULL: no qsort */
		qsort(lc.objs, lc.nobjs, sizeof(*lc.objs), cf_p11_object_cmp);
	if (r == CF_OK)
		r = store_load(st, load_one, &lc);
	free(lc.objs);
	if (r != CF_OK) {
		keyring_close(kr);
		return r;
	}
	if (mismatches != NULL)
		*mismatches = lc.mismatches;
	*out = kr;
	return CF_OK;
}

void
keyring_close(keyring *kr)
{
	if (kr == NULL)
		return;
	for (size_t i = 0; i < kr->n; i++)
		kr_key_free(kr->keys[i]);
	free(kr->keys);
	for (size_t i = 0; i < kr->nretired; i++)
		cf_p11_key_free(kr->retired[i]);
	free(kr->retired);
	pthread_rwlock_destroy(&kr->lock);
	change_mu_destroy(&kr->write_mu);
	free(kr);
}

static int64_t
now_unix(void)
{
	return (int64_t)time(NULL);
}

/* A new version in the token, crash-safe (daemon/CRASH-SAFETY.md): a fresh
 * CKA_ID, the intent to make name/version with it recorded first, then the
 * objects. The caller records the version with *intent (retiring it in the
 * same transaction), or calls unmake() if it cannot. */
static int
make_version(keyring *kr, const char *name, uint32_t version, enum cf_key_type type,
	     const cf_secret *material, uint8_t id[STORE_CKAID_LEN],
	     int64_t *intent, cf_p11_key **h)
{
	int r;

	*intent = 0;
	if (RAND_bytes(id, STORE_CKAID_LEN) != 1)
		return cf_error(CF_E_INTERNAL, "random number generator failed");
	if ((r = store_intent_add(kr->st, STORE_INTENT_MAKE, name, version, id, intent)) != CF_OK)
		return r;
	r = material ? cf_p11_key_import_id(kr->p11, name, version, type, material, 0, id, h)
		     : cf_p11_key_generate_id(kr->p11, name, version, type, 0, id, h);
	if (r == CF_E_EXISTS)
		r = cf_error(CF_E_EXISTS, "the token already holds objects labelled %s version %u "
			     "that no version record claims: left by an attempt the token failed "
			     "(cofferd removes those at its next start) or made outside Coffer "
			     "(see cofferd's reconciliation report)", name, version);
	if (r != CF_OK) {
		char why[CF_ERROR_DETAIL_MAX];

		/* A token error may leave part of it behind: only ours (our id) go.
		 * The intent goes only with them: it is what removes them at the
		 * next start, and without it every later attempt at this version
		 * would find the label taken. */
		snprintf(why, sizeof(why), "%s", cf_error_detail());
		if (cf_p11_objects_destroy(kr->p11, name, version, id, NULL) == CF_OK &&
		    store_intent_drop_own(kr->st, *intent) == CF_OK)
			*intent = 0;
		return cf_error(r, "%s", why);
	}
	return CF_OK;
}

/* The version make_version made could not be recorded (status r): take it
 * out again. Unless the shared store lost PostgreSQL: then the commit may
 * have happened all the same, and the objects must stay; the intent decides
 * under the next change lock (still there: not committed, the sweep removes
 * them; gone with the commit: a version every replica serves). A change the
 * fence refused committed nothing: its objects go, even if the next holder
 * already dropped its intent (made before the objects were). */
static void
unmake(keyring *kr, int r, const char *name, uint32_t version,
       const uint8_t id[STORE_CKAID_LEN], int64_t intent, cf_p11_key *h)
{
	cf_p11_key_free(h);
	if (r == CF_E_UNAVAILABLE && kr->shared && !store_change_lost(kr->st)) {
		cf_log_warn("key %s version %u: the state store lost PostgreSQL while recording "
			    "it; whether it committed is settled at the next change", name,
			    version);
		return;
	}
	if (cf_p11_objects_destroy(kr->p11, name, version, id, NULL) == CF_OK && intent != 0)
		(void)store_intent_drop_own(kr->st, intent);
	/* Else the intent stays: the next start removes the objects. */
}

/* CF_OK if period is 0 or a rotation period this daemon accepts. */
static int
check_period(const keyring *kr, int64_t period)
{
	if (period != 0 && (period < (int64_t)kr->cfg.min_rotation_period ||
			    period > KEYRING_MAX_ROTATION_PERIOD))
		return cf_error(CF_E_INVALID_ARG, "rotation period %lld s is outside %u s .. %lld s "
				"([keys] min_rotation_period .. 10 years)", (long long)period,
				kr->cfg.min_rotation_period, KEYRING_MAX_ROTATION_PERIOD);
	return CF_OK;
}

static int
kr_make(keyring *kr, const char *name, enum cf_key_type type, uint32_t allowed_ops,
	int64_t period, const cf_secret *material, struct store_key *out)
{
	struct store_version meta = { .version = 1, .state = STORE_ENABLED, .created = now_unix() };
	int64_t intent = 0;
	struct store_key sk, ans = { .versions = NULL };
	struct kr_key *k = NULL;
	cf_p11_key *h = NULL;
	int found, r;

	if ((r = cf_key_name_check(name)) != CF_OK)
		return r;
	if (strncmp(name, KEYRING_RESERVED_PREFIX, strlen(KEYRING_RESERVED_PREFIX)) == 0)
		return cf_error(CF_E_INVALID_ARG, "key names starting with \"%s\" are reserved "
				"for Coffer's own keys", KEYRING_RESERVED_PREFIX);
	if (type <= CF_KEY_NONE || type >= CF_KEY__COUNT)
		return cf_error(CF_E_INVALID_ARG, "key type is missing or unknown");
	if ((r = check_period(kr, period)) != CF_OK)
		return r;
	memset(&sk, 0, sizeof(sk));
	snprintf(sk.name, sizeof(sk.name), "%s", name);
	sk.type = type;
	sk.exportable = 0; /* key material never leaves the token */
	sk.allowed_ops = allowed_ops;
	sk.created = meta.created;
	sk.primary = 1;
	sk.rotation_period = period;
	sk.next_rotation = period ? meta.created + period : 0;
	if ((r = kr_write_begin(kr, name)) != CF_OK)
		return r;
	pthread_rwlock_rdlock(&kr->lock);
	kr_find(kr, name, &found);
	pthread_rwlock_unlock(&kr->lock);
	if (found) {
		r = cf_error(CF_E_EXISTS, "key %s already exists", name);
		goto out;
	}
	/* What memory needs, first: once the store has the key, it is
	 * installed here without an allocation that could fail. */
	if ((k = calloc(1, sizeof(*k))) == NULL) {
		r = cf_nomem();
		goto out;
	}
	kr_set_meta(k, &sk);
	if ((r = kr_versions_room(k)) != CF_OK || (r = kr_info_room(1, &ans)) != CF_OK)
		goto out;
	pthread_rwlock_wrlock(&kr->lock);
	r = kr_keys_room(kr);
	pthread_rwlock_unlock(&kr->lock);
	if (r != CF_OK)
		goto out;
	if ((r = make_version(kr, name, 1, type, material, meta.ckaid, &intent, &h)) !=
	    CF_OK)
		goto out;
	if ((r = store_key_create(kr->st, &sk, meta.ckaid, intent)) != CF_OK) {
		unmake(kr, r, name, 1, meta.ckaid, intent, h);
		h = NULL;
		goto out;
	}
	(void)kr_add_version(k, &meta, h);   /* room made above */
	h = NULL;
	pthread_rwlock_wrlock(&kr->lock);
	(void)kr_insert(kr, k);   /* room made above */
	kr_fill_info(k, &ans);
	pthread_rwlock_unlock(&kr->lock);
	k = NULL;   /* the table's now */
	*out = ans;
	ans.versions = NULL;
out:
	kr_write_end(kr);
	kr_key_free(k);
	cf_p11_key_free(h);
	free(ans.versions);
	return r;
}

int
keyring_create(keyring *kr, const char *name, enum cf_key_type type, uint32_t allowed_ops,
	       int64_t rotation_period, struct store_key *out)
{
	return kr_make(kr, name, type, allowed_ops, rotation_period, NULL, out);
}

int
keyring_import(keyring *kr, const char *name, enum cf_key_type type,
	       const cf_secret *material, uint32_t allowed_ops, struct store_key *out)
{
	if (cf_key_type_is_asymmetric(type))
		return cf_error(CF_E_INVALID_ARG, "only HMAC and AES keys can be imported");
	return kr_make(kr, name, type, allowed_ops, 0, material, out);
}

static void kr_apply(struct kr_key *k, const struct store_key *sk);

/* A new version, made primary. due_by (scheduled rotations): only if the
 * key's next rotation is due by then (a manual rotation may have come
 * first); *skipped says it was not. */
static int
kr_rotate(keyring *kr, const char *name, int64_t due_by, int *skipped, struct store_key *out)
{
	struct store_version meta = { .state = STORE_ENABLED };
	struct store_key ans = { .versions = NULL };
	struct kr_key *k;
	cf_p11_key *h = NULL;
	int64_t next = 0, intent = 0;
	int found, r;
	size_t at;

	if ((r = cf_key_name_check(name)) != CF_OK)
		return r;
	if ((r = kr_write_begin(kr, name)) != CF_OK)
		return r;
	meta.created = now_unix();   /* after the lock: the rotation's own time */
	pthread_rwlock_rdlock(&kr->lock);
	at = kr_find(kr, name, &found);
	k = found ? kr->keys[at] : NULL;
	/* Safe to read after unlock: only writers (we hold write_mu) change it. */
	if (k != NULL) {
		meta.version = k->v[k->nv - 1].meta.version + 1;
		next = k->m.rotation_period ? meta.created + k->m.rotation_period : 0;
	}
	pthread_rwlock_unlock(&kr->lock);
	if (k == NULL) {
		r = cf_error(CF_E_NOT_FOUND, "key %s does not exist", name);
		goto out;
	}
	if (due_by != 0 && (k->m.next_rotation == 0 || k->m.next_rotation > due_by)) {
		*skipped = 1;
		goto out;
	}
	if (meta.version > CF_KEY_VERSION_MAX) {
		r = cf_error(CF_E_EXHAUSTED, "key %s has reached the version limit", name);
		goto out;
	}
	/* Room for the version first: once the store has it, it is
	 * installed here without an allocation that could fail. */
	pthread_rwlock_wrlock(&kr->lock);
	r = kr_versions_room(k);
	pthread_rwlock_unlock(&kr->lock);
	if (r != CF_OK || (out != NULL && (r = kr_info_room(k->nv + 1, &ans)) != CF_OK))
		goto out;
	/* Never extractable, even for a key an earlier release made exportable. */
	if ((r = make_version(kr, name, meta.version, k->m.type, NULL, meta.ckaid, &intent, &h)) != CF_OK)
		goto out;
	if ((r = store_version_add(kr->st, name, meta.version, meta.ckaid, meta.created, next,
				   intent)) != CF_OK) {
		unmake(kr, r, name, meta.version, meta.ckaid, intent, h);
		h = NULL;
		goto out;
	}
	pthread_rwlock_wrlock(&kr->lock);
	(void)kr_add_version(k, &meta, h);   /* room made above */
	h = NULL;
	k->m.primary = meta.version;
	k->m.next_rotation = next;
	k->m.pending_rotation = 0;
	k->rotate_retry_at = 0;
	if (out != NULL) {
		kr_fill_info(k, &ans);
		*out = ans;
		ans.versions = NULL;
	}
	pthread_rwlock_unlock(&kr->lock);
out:
	kr_write_end(kr);
	cf_p11_key_free(h);
	free(ans.versions);
	return r;
}

int
keyring_rotate(keyring *kr, const char *name, struct store_key *out)
{
	return kr_rotate(kr, name, 0, NULL, out);
}

int
keyring_find(keyring *kr, const char *name, struct keyring_ref *ref)
{
	int found;
	size_t at;

	ref->name = name;
	pthread_rwlock_rdlock(&kr->lock);
	at = kr_find(kr, name, &found);
	ref->k = found ? kr->keys[at] : NULL;
	pthread_rwlock_unlock(&kr->lock);
	return found ? CF_OK : not_found(ref);
}

uint32_t
keyring_ref_allowed_ops(keyring *kr, const struct keyring_ref *ref)
{
	uint32_t ops = 0;

	if (ref->k == NULL)
		return 0;
	pthread_rwlock_rdlock(&kr->lock);
	ops = ref->k->m.allowed_ops;
	pthread_rwlock_unlock(&kr->lock);
	return ops;
}

int
keyring_ref_describe(keyring *kr, const struct keyring_ref *ref, struct store_key *out)
{
	int r;

	if (ref->k == NULL)
		return not_found(ref);
	pthread_rwlock_rdlock(&kr->lock);
	r = kr_copy_info(ref->k, out);
	pthread_rwlock_unlock(&kr->lock);
	return r;
}

int
keyring_describe(keyring *kr, const char *name, struct store_key *out)
{
	struct keyring_ref ref;
	int r;

	if ((r = keyring_find(kr, name, &ref)) != CF_OK)
		return r;
	return keyring_ref_describe(kr, &ref, out);
}

int
keyring_list(keyring *kr, const char *after, uint32_t max, struct store_key **out, uint32_t *n,
	     int *more)
{
	struct store_key *infos = NULL;
	uint32_t count = 0;
	int found, r = CF_OK;
	size_t at;

	pthread_rwlock_rdlock(&kr->lock);
	at = kr_find(kr, after, &found);
	if (found)
		at++;
	if (max > 0 && (infos = calloc(max, sizeof(*infos))) == NULL) {
		r = cf_nomem();
		goto out;
	}
	for (; at < kr->n && count < max; at++)
		if ((r = kr_copy_info(kr->keys[at], &infos[count++])) != CF_OK)
			goto out;
	*more = at < kr->n;
out:
	pthread_rwlock_unlock(&kr->lock);
	if (r != CF_OK) {
		for (uint32_t i = 0; i < count; i++)
			keyring_info_free(&infos[i]);
		free(infos);
		return r;
	}
	*out = infos;
	*n = count;
	return CF_OK;
}

static const char *
state_name(enum store_state st)
{
	switch (st) {
	case STORE_ENABLED: return "enabled";
	case STORE_DISABLED: return "disabled";
	case STORE_DESTROY_SCHEDULED: return "scheduled for destruction";
	case STORE_DESTROYED: return "destroyed";
	}
	return "in an unknown state";
}

int
keyring_ref_use(keyring *kr, const struct keyring_ref *ref, uint32_t version,
		enum key_purpose purpose, enum key_use use, cf_p11_key **key,
		uint32_t *used_version)
{
	const struct kr_key *k = ref->k;
	const char *name = ref->name;
	const struct kr_version *v = NULL;
	uint32_t min;
	int r = CF_OK;

	if (k == NULL)
		return not_found(ref);
	pthread_rwlock_rdlock(&kr->lock);
	if (keyring_purpose(k->m.type) != purpose) {
		r = cf_error(CF_E_WRONG_KEY_TYPE, "key %s is a %s key (%s); this operation needs "
			     "a %s key", name, keyring_purpose_name(keyring_purpose(k->m.type)),
			     cf_key_type_name(k->m.type), keyring_purpose_name(purpose));
		goto out;
	}
	if (version == 0)
		version = k->m.primary;
	for (uint32_t i = 0; i < k->nv; i++)
		if (k->v[i].meta.version == version)
			v = &k->v[i];
	if (v == NULL) {
		r = cf_error(CF_E_NOT_FOUND, "key %s has no version %u", name, version);
		goto out;
	}
	if (v->meta.state != STORE_ENABLED) {
		r = cf_error(CF_E_PRECONDITION, "key %s version %u is %s", name, version,
			     state_name(v->meta.state));
		goto out;
	}
	if (v->k == NULL) {
		r = cf_error(CF_E_PRECONDITION, "key %s version %u is missing from the token",
			     name, version);
		goto out;
	}
	min = use == USE_NEW ? k->m.min_version : k->m.min_verify;
	if (version < min) {
		r = cf_error(CF_E_PRECONDITION, "key %s version %u is below the key's minimum "
			     "version %u for %s", name, version, min,
			     use == USE_NEW ? "new operations" : "verify and unwrap");
		goto out;
	}
	*key = v->k;
	*used_version = version;
out:
	pthread_rwlock_unlock(&kr->lock);
	return r;
}

int
keyring_use(keyring *kr, const char *name, uint32_t version, enum key_purpose purpose,
	    enum key_use use, cf_p11_key **key, uint32_t *used_version)
{
	struct keyring_ref ref;
	int r;

	if ((r = keyring_find(kr, name, &ref)) != CF_OK)
		return r;
	return keyring_ref_use(kr, &ref, version, purpose, use, key, used_version);
}

/* ---- lifecycle ---- */

/* "2026-11-28T10:00:00Z" */
static const char *
fmt_time(int64_t t, char buf[32])
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (gmtime_r(&tt, &tm) == NULL || strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, 32, "%lld", (long long)t);
	return buf;
}

/* Under the write lock: make the recorded snapshot the key's state. */
static void
kr_apply(struct kr_key *k, const struct store_key *sk)
{
	kr_set_meta(k, sk);
	for (uint32_t i = 0; i < k->nv; i++)
		k->v[i].meta = sk->versions[i];
}

static struct store_version *
sk_version(struct store_key *sk, uint32_t version)
{
	for (uint32_t i = 0; i < sk->nversions; i++)
		if (sk->versions[i].version == version)
			return &sk->versions[i];
	return NULL;
}

/* Refuse to take away the primary or the last enabled version without force. */
static int
check_force(const struct store_key *sk, const struct store_version *v, int force,
	    const char *doing)
{
	unsigned enabled = 0;

	if (force)
		return CF_OK;
	for (uint32_t i = 0; i < sk->nversions; i++)
		enabled += sk->versions[i].state == STORE_ENABLED;
	if (v->version == sk->primary)
		return cf_error(CF_E_PRECONDITION, "key %s version %u is the primary version; make "
				"another version primary first, or pass force (--force) to %s "
				"it anyway (new operations then fail)", sk->name, v->version, doing);
	if (v->state == STORE_ENABLED && enabled == 1)
		return cf_error(CF_E_PRECONDITION, "key %s version %u is the last enabled version; "
				"enable another first, or pass force (--force) to %s it anyway",
				sk->name, v->version, doing);
	return CF_OK;
}

static int
schedule_destroy(const keyring *kr, struct store_version *v, int64_t grace, int64_t now)
{
	v->prior = v->state;
	v->state = STORE_DESTROY_SCHEDULED;
	v->destroy_time = now + (grace ? grace : (int64_t)kr->cfg.destroy_grace);
	return CF_OK;
}

static int
check_grace(const keyring *kr, int64_t grace)
{
	if (grace != 0 && (grace < (int64_t)kr->cfg.min_destroy_grace || grace > KEYRING_MAX_GRACE))
		return cf_error(CF_E_INVALID_ARG, "grace period %lld s is outside %u s .. %d s "
				"([keys] min_destroy_grace .. 365 days)", (long long)grace,
				kr->cfg.min_destroy_grace, KEYRING_MAX_GRACE);
	return CF_OK;
}

static int
set_minimums(struct store_key *sk, const struct key_change_args *a)
{
	uint32_t latest = sk->versions[sk->nversions - 1].version;
	uint32_t mn = a->min_version ? a->min_version : sk->min_version;
	uint32_t mv = a->min_verify ? a->min_verify : sk->min_verify;

	if (a->keep_last != 0) {
		if (a->min_verify != 0)
			return cf_error(CF_E_INVALID_ARG, "give keep_last or min_verify_version, "
					"not both");
		mv = latest >= a->keep_last ? latest - a->keep_last + 1 : 1;
		if (mn < mv)
			mn = mv;
	}
	if (mn > sk->primary)
		return cf_error(CF_E_PRECONDITION, "key %s: min_version %u would exceed the primary "
				"version %u; make a newer version primary (or rotate) first",
				sk->name, mn, sk->primary);
	if ((mv > 1 ? mv : 1) > (mn > 1 ? mn : 1))
		return cf_error(CF_E_PRECONDITION, "key %s: min_verify_version %u would exceed "
				"min_version %u; raise min_version too", sk->name, mv,
				mn > 1 ? mn : 1);
	sk->min_version = mn;
	sk->min_verify = mv;
	return CF_OK;
}

/* Check `what` against the snapshot and make the change in it. */
static int
change(const keyring *kr, struct store_key *sk, enum key_change what,
       const struct key_change_args *a, int64_t now)
{
	struct store_version *v = NULL;
	char t[32];
	int r;

	if (what <= KC_CANCEL_DESTROY) {
		if (a->version == 0)
			return cf_error(CF_E_INVALID_ARG, "version is required: the key version to "
					"change (GetKey lists them)");
		if ((v = sk_version(sk, a->version)) == NULL)
			return cf_error(CF_E_NOT_FOUND, "key %s has no version %u", sk->name,
					a->version);
	}
	switch (what) {
	case KC_SET_PRIMARY:
		if (v->state != STORE_ENABLED)
			return cf_error(CF_E_PRECONDITION, "key %s version %u is %s; only an enabled "
					"version can be primary", sk->name, v->version,
					state_name(v->state));
		if (v->version < sk->min_version)
			return cf_error(CF_E_PRECONDITION, "key %s version %u is below the key's "
					"min_version %u", sk->name, v->version, sk->min_version);
		sk->primary = v->version;
		return CF_OK;
	case KC_ENABLE:
		if (v->state == STORE_DISABLED)
			v->state = STORE_ENABLED;
		else if (v->state == STORE_DESTROY_SCHEDULED)
			return cf_error(CF_E_PRECONDITION, "key %s version %u is scheduled for "
					"destruction; cancel-destroy restores it", sk->name,
					v->version);
		else if (v->state != STORE_ENABLED)
			return cf_error(CF_E_PRECONDITION, "key %s version %u is destroyed; it cannot "
					"be restored", sk->name, v->version);
		return CF_OK;
	case KC_DISABLE:
		if (v->state == STORE_DISABLED)
			return CF_OK;
		if (v->state != STORE_ENABLED)
			return cf_error(CF_E_PRECONDITION, "key %s version %u is %s", sk->name,
					v->version, state_name(v->state));
		if ((r = check_force(sk, v, a->force, "disable")) != CF_OK)
			return r;
		v->state = STORE_DISABLED;
		return CF_OK;
	case KC_SCHEDULE_DESTROY:
		if ((r = check_grace(kr, a->grace)) != CF_OK)
			return r;
		if (v->state == STORE_DESTROY_SCHEDULED)
			return cf_error(CF_E_PRECONDITION, "key %s version %u is already scheduled for "
					"destruction at %s", sk->name, v->version,
					fmt_time(v->destroy_time, t));
		if (v->state != STORE_ENABLED && v->state != STORE_DISABLED)
			return cf_error(CF_E_PRECONDITION, "key %s version %u is %s", sk->name,
					v->version, state_name(v->state));
		if ((r = check_force(sk, v, a->force, "destroy")) != CF_OK)
			return r;
		return schedule_destroy(kr, v, a->grace, now);
	case KC_CANCEL_DESTROY:
		if (v->state == STORE_DESTROYED)
			return cf_error(CF_E_PRECONDITION, "key %s version %u was destroyed at %s; it "
					"cannot be restored", sk->name, v->version,
					fmt_time(v->destroy_time, t));
		if (v->state != STORE_DESTROY_SCHEDULED)
			return cf_error(CF_E_PRECONDITION, "key %s version %u is not scheduled for "
					"destruction (it is %s)", sk->name, v->version,
					state_name(v->state));
		if (now >= v->destroy_time)
			return cf_error(CF_E_PRECONDITION, "key %s version %u: the grace period ended "
					"at %s; it is being destroyed and cannot be restored",
					sk->name, v->version, fmt_time(v->destroy_time, t));
		v->state = v->prior == STORE_ENABLED ? STORE_ENABLED : STORE_DISABLED;
		v->prior = 0;
		v->destroy_time = 0;
		return CF_OK;
	case KC_SET_MINIMUMS:
		return set_minimums(sk, a);
	case KC_TRIM:
		if ((r = check_grace(kr, a->grace)) != CF_OK)
			return r;
		if (sk->min_verify <= 1)
			return cf_error(CF_E_PRECONDITION, "key %s has no min_verify_version, so no "
					"version is below it; set one first (key set-min "
					"--keep-last N)", sk->name);
		for (uint32_t i = 0; i < sk->nversions; i++) {
			struct store_version *o = &sk->versions[i];

			if (o->version < sk->min_verify &&
			    (o->state == STORE_ENABLED || o->state == STORE_DISABLED))
				schedule_destroy(kr, o, a->grace, now);
		}
		return CF_OK;
	case KC_SET_ROTATION:
		if (a->period < 0 || a->next < 0)
			return cf_error(CF_E_INVALID_ARG, "period and next rotation time cannot be "
					"negative");
		if ((r = check_period(kr, a->period)) != CF_OK)
			return r;
		if (a->next != 0 && (a->next < now || a->next > now + KEYRING_MAX_ROTATION_PERIOD))
			return cf_error(CF_E_INVALID_ARG, "next_rotation_time %lld is in the past or "
					"more than 10 years ahead (0: one period from now)",
					(long long)a->next);
		sk->rotation_period = a->period;
		sk->next_rotation = a->period == 0 ? 0 : a->next ? a->next : now + a->period;
		return CF_OK;
	}
	return cf_error(CF_E_INVALID_ARG, "unknown lifecycle change");
}

int
keyring_change(keyring *kr, const char *name, enum key_change what,
	       const struct key_change_args *a, struct store_key *out)
{
	struct store_key sk;
	struct kr_key *k;
	int found, r;
	size_t at;

	memset(&sk, 0, sizeof(sk));
	if ((r = cf_key_name_check(name)) != CF_OK)
		return r;
	if ((r = kr_write_begin(kr, name)) != CF_OK)
		return r;
	pthread_rwlock_rdlock(&kr->lock);
	at = kr_find(kr, name, &found);
	k = found ? kr->keys[at] : NULL;
	r = k != NULL ? kr_copy_info(k, &sk) : cf_error(CF_E_NOT_FOUND, "key %s does not exist",
							name);
	pthread_rwlock_unlock(&kr->lock);
	CF_HOLD_POINT("keyring.change.read");   /* read under the lock (tests: fencing) */
	if (r != CF_OK || (r = change(kr, &sk, what, a, now_unix())) != CF_OK ||
	    (r = store_key_save(kr->st, &sk, a->version, 0)) != CF_OK)
		goto out;
	pthread_rwlock_wrlock(&kr->lock);
	kr_apply(k, &sk);
	pthread_rwlock_unlock(&kr->lock);
	/* What memory now holds, in sk's own array: nothing to allocate. */
	*out = sk;
	sk.versions = NULL;
out:
	kr_write_end(kr);
	free(sk.versions);
	return r;
}

/* The daemon's own change being recorded (keyring_tick): its audit record. */
struct own_change {
	keyring *kr;
	const char *method;
};

static int
own_record(const struct store_call *c, const char *name, uint32_t version, char *buf,
	   size_t len)
{
	const struct own_change *oc = c->arg;

	return oc->kr->record(oc->method, name, version, buf, len, oc->kr->record_arg);
}

/* Set (method) or clear (NULL) the calling thread's store_call for a change
 * the daemon makes on its own. */
static void
own_change_begin(keyring *kr, struct store_call *c, struct own_change *oc, const char *method)
{
	if (kr->record == NULL)
		return;
	memset(c, 0, sizeof(*c));
	oc->kr = kr;
	oc->method = method;
	c->record = own_record;
	c->arg = oc;
	store_call_set(c);
}

void
keyring_set_recorder(keyring *kr, keyring_record_fn fn, void *arg)
{
	kr->record = fn;
	kr->record_arg = arg;
}

/* Destroy version i of k (grace period over), crash-safe: its state
 * (destroy-scheduled, due) is the durable intent; every token object under
 * its label goes (a half-destroyed pair too), and only then is it recorded
 * destroyed. A crash in between is finished by the next tick. Under
 * write_mu. */
static int
destroy_one(keyring *kr, struct kr_key *k, uint32_t i, int64_t now)
{
	struct store_key sk;
	struct store_version *v;
	cf_p11_key *h;
	int r;

	if ((r = kr_copy_info(k, &sk)) != CF_OK)
		return r;
	v = &sk.versions[i];
	/* Retired first: its session copies go and it serves no more, before
	 * the objects go (a call that resolved it in between would copy them
	 * again, out of the destruction's reach). The handle itself is kept
	 * until close: a call may still hold it, borrowed (keyring_ref_use; a
	 * batch signs with it for a while), and fails cleanly. (Out of memory
	 * to keep it aside: it stays in place, unused in the destroyed state,
	 * and is freed at close all the same.) */
	pthread_rwlock_wrlock(&kr->lock);
	h = k->v[i].k;
	if (h != NULL && kr_retire(kr, h) == CF_OK)
		k->v[i].k = NULL;
	pthread_rwlock_unlock(&kr->lock);
	cf_p11_key_retire(h);
	CF_HOLD_POINT("keyring.destroy.retired");
	if ((r = cf_p11_objects_destroy(kr->p11, k->m.name, v->version, NULL, NULL)) != CF_OK)
		goto out;
	CF_CRASH_POINT("keyring.destroy.objects-gone");
	v->state = STORE_DESTROYED;
	v->destroy_time = now;
	v->prior = 0;
	if ((r = store_key_save(kr->st, &sk, v->version, 0)) != CF_OK)
		goto out;
	pthread_rwlock_wrlock(&kr->lock);
	kr_apply(k, &sk);
	pthread_rwlock_unlock(&kr->lock);
out:
	free(sk.versions);
	return r;
}

/* Destroy the token objects of k's versions whose grace period is over and
 * record them destroyed. Under write_mu. */
static void
destroy_due(keyring *kr, struct kr_key *k, int64_t now, keyring_done_fn done, void *arg)
{
	if (k->destroy_retry_at > now)
		return;
	for (uint32_t i = 0; i < k->nv; i++) {
		const struct store_version *v = &k->v[i].meta;
		struct store_call c;
		struct own_change oc;
		int r;

		if (v->state != STORE_DESTROY_SCHEDULED || v->destroy_time > now)
			continue;
		own_change_begin(kr, &c, &oc, "cofferd/DestroyKeyVersion");
		r = destroy_one(kr, k, i, now);
		store_call_set(NULL);
		if (r != CF_OK)
			k->destroy_retry_at = now + 60;
		metrics_add(r == CF_OK ? M_DESTRUCTIONS : M_DESTRUCTION_FAILURES, 1);
		done(k->m.name, k->v[i].meta.version, "destroy", r, arg);
	}
}

/* Has the tick that began at t0 (ns) used up budget_ms (0: never)? */
static int
over_budget(uint64_t t0, unsigned budget_ms)
{
	return budget_ms != 0 && cf_mono_ns() - t0 >= (uint64_t)budget_ms * 1000000u;
}

void
keyring_tick(keyring *kr, int64_t now, unsigned budget_ms, keyring_done_fn done, void *arg)
{
	char (*due)[CF_KEY_NAME_MAX + 1] = NULL, (*gone)[CF_KEY_NAME_MAX + 1] = NULL;
	size_t ndue = 0, ngone = 0, first = 0;
	uint64_t t0 = cf_mono_ns();

	/* What is due, as this replica knows it (no fleet lock for a look:
	 * the leader ticks every second). Each is then re-read and done under
	 * the writer locks, as every change is. */
	change_mu_lock(&kr->write_mu);
	if (kr->n > 0 && ((due = calloc(kr->n, sizeof(*due))) == NULL ||
			  (gone = calloc(kr->n, sizeof(*gone))) == NULL)) {
		change_mu_unlock(&kr->write_mu);
		free(due);
		return;
	}
	for (size_t i = 0; i < kr->n; i++) {
		struct kr_key *k = kr->keys[i];
		int any = 0;

		for (uint32_t j = 0; j < k->nv && !any; j++)
			any = k->v[j].meta.state == STORE_DESTROY_SCHEDULED &&
			      k->v[j].meta.destroy_time <= now;
		if (any && k->destroy_retry_at <= now)
			memcpy(gone[ngone++], k->m.name, sizeof(*gone));
		if (k->m.next_rotation != 0 && k->m.next_rotation <= now &&
		    k->rotate_retry_at <= now)
			memcpy(due[ndue++], k->m.name, sizeof(*due));
	}
	change_mu_unlock(&kr->write_mu);
	/* Destructions: token writes. */
	for (size_t i = 0; i < ngone && !over_budget(t0, budget_ms); i++) {
		int found;
		size_t at;

		if (kr_write_begin(kr, gone[i]) != CF_OK) {
			cf_log_warn("scheduled destruction of %s postponed: %s", gone[i],
				    cf_error_detail());
			continue;
		}
		at = kr_find(kr, gone[i], &found);
		if (found)
			destroy_due(kr, kr->keys[at], now, done, arg);
		kr_write_end(kr);
	}
	free(gone);
	/* Rotations: each made as a rotation is; in name order, from where the
	 * last tick that ran out of budget stopped. */
	while (first < ndue && strcmp(due[first], kr->tick_after) <= 0)
		first++;
	kr->tick_after[0] = '\0';
	for (size_t n = 0; n < ndue; n++) {
		size_t i = (first + n) % ndue;
		struct store_key info;
		int skipped = 0, r;

		struct store_call c;
		struct own_change oc;

		if (over_budget(t0, budget_ms)) {
			snprintf(kr->tick_after, sizeof(kr->tick_after), "%s",
				 due[(i + ndue - 1) % ndue]);
			break;
		}
		memset(&info, 0, sizeof(info));
		own_change_begin(kr, &c, &oc, "cofferd/ScheduledRotation");
		r = kr_rotate(kr, due[i], now, &skipped, &info);
		store_call_set(NULL);
		if (skipped)
			continue;
		if (r != CF_OK) {
			int found;
			size_t at;

			change_mu_lock(&kr->write_mu);
			at = kr_find(kr, due[i], &found);
			if (found)
				kr->keys[at]->rotate_retry_at = now + 60;
			change_mu_unlock(&kr->write_mu);
		}
		metrics_add(r == CF_OK ? M_ROTATIONS : M_ROTATION_FAILURES, 1);
		done(due[i], r == CF_OK ? info.primary : 0, "rotate", r, arg);
		keyring_info_free(&info);
	}
	free(due);
}
