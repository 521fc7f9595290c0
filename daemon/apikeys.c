#include "apikeys.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "cf_crashpoint.h"
#include "cf_log.h"
#include "cf_reqsign.h"
#include "cf_status.h"
#include "change_mu.h"

/* A key's record and the open token handle of each of its secrets
 * (k[i] belongs to rec.secrets[i]; NULL when the token lacks the object, or
 * could not be asked when the table was read: then retry[i], and the first
 * call that needs it opens it). */
struct entry {
	struct store_apikey rec;
	cf_p11_key *k[STORE_APIKEY_SECRETS_MAX];
	int retry[STORE_APIKEY_SECRETS_MAX];
};

struct apikeys {
	cf_p11 *p11;
	store *st;
	struct change_mu admin;       /* one change at a time (token, then store, then memory) */
	int shared;                  /* the store is shared by replicas (store_change_begin) */
	pthread_rwlock_t lk;         /* the arrays below */
	struct entry **e;            /* by id */
	size_t n, cap;
	char (*signers)[STORE_PRINCIPAL_NAME_MAX + 1];   /* principals with a live key, sorted */
	size_t nsigners;
	/* Principals that must sign even with no live key (store_signed_*),
	 * sorted: once signing, a principal stays signing until an operator
	 * says otherwise, so revoking its last key never opens uid-only calls. */
	char (*sticky)[STORE_PRINCIPAL_NAME_MAX + 1];
	size_t nsticky, capsticky;
};

static void
object_name(const char *id, char out[CF_KEY_NAME_MAX + 1])
{
	snprintf(out, CF_KEY_NAME_MAX + 1, "%s%s", APIKEYS_OBJECT_PREFIX, id);
}

/* Not revoked: its principal must sign, even if no secret of it could be
 * opened (then its calls fail closed). */
static int
live(const struct entry *e)
{
	return e->rec.revoked == 0;
}

static int
entry_cmp(const void *a, const void *b)
{
	return strcmp((*(const struct entry *const *)a)->rec.id,
		      (*(const struct entry *const *)b)->rec.id);
}

static int
id_cmp(const void *key, const void *elem)
{
	return strcmp(key, (*(const struct entry *const *)elem)->rec.id);
}

static int
name_cmp(const void *a, const void *b)
{
	return strcmp(a, b);
}

static struct entry *
find(apikeys *a, const char *id)
{
	struct entry **p = a->n ? bsearch(id, a->e, a->n, sizeof(*a->e), id_cmp) : NULL;

	return p != NULL ? *p : NULL;
}

/* Rebuild the sorted list of principals that must sign (write lock held). */
static int
index_signers(apikeys *a, char (*s)[STORE_PRINCIPAL_NAME_MAX + 1])
{
	size_t n = 0;

	if (s == NULL && (s = calloc(a->n ? a->n : 1, sizeof(*s))) == NULL)
		return cf_nomem();
	for (size_t i = 0; i < a->n; i++)
		if (live(a->e[i]))
			memcpy(s[n++], a->e[i]->rec.principal, sizeof(s[0]));
	qsort(s, n, sizeof(*s), name_cmp);
	free(a->signers);
	a->signers = s;
	a->nsigners = n;
	return CF_OK;
}

/* Room for one more principal in the sticky list (write lock held): made
 * before the store marks one, so that memory then follows without fail. */
static int
sticky_room_locked(apikeys *a)
{
	if (a->nsticky == a->capsticky) {
		size_t cap = a->capsticky ? 2 * a->capsticky : 16;
		void *np = realloc(a->sticky, cap * sizeof(*a->sticky));

		if (np == NULL)
			return cf_nomem();
		a->sticky = np;
		a->capsticky = cap;
	}
	return CF_OK;
}

/* Add principal to, or drop it from, the sticky list (write lock held). */
static int
sticky_set_locked(apikeys *a, const char *principal, int on)
{
	char (*p)[STORE_PRINCIPAL_NAME_MAX + 1] =
		a->nsticky ? bsearch(principal, a->sticky, a->nsticky, sizeof(*a->sticky),
				     name_cmp) : NULL;
	size_t at;
	int r;

	if (!on) {
		if (p != NULL) {
			at = (size_t)(p - a->sticky);
			memmove(p, p + 1, (a->nsticky - at - 1) * sizeof(*p));
			a->nsticky--;
		}
		return CF_OK;
	}
	if (p != NULL)
		return CF_OK;
	if ((r = sticky_room_locked(a)) != CF_OK)
		return r;
	for (at = 0; at < a->nsticky && strcmp(a->sticky[at], principal) < 0; at++)
		;
	memmove(a->sticky + at + 1, a->sticky + at, (a->nsticky - at) * sizeof(*a->sticky));
	snprintf(a->sticky[at], sizeof(a->sticky[at]), "%s", principal);
	a->nsticky++;
	return CF_OK;
}

static int
load_sticky(const char *principal, void *arg)
{
	return sticky_set_locked(arg, principal, 1);
}

/* Room for one more entry (write lock held). */
static int
reserve(apikeys *a)
{
	if (a->n == a->cap) {
		size_t cap = a->cap ? 2 * a->cap : 16;
		struct entry **ne = realloc(a->e, cap * sizeof(*ne));

		if (ne == NULL)
			return cf_nomem();
		a->e = ne;
		a->cap = cap;
	}
	return CF_OK;
}

/* Add e to the table (write lock held). */
static int
insert(apikeys *a, struct entry *e)
{
	int r;

	if ((r = reserve(a)) != CF_OK)
		return r;
	a->e[a->n++] = e;
	qsort(a->e, a->n, sizeof(*a->e), entry_cmp);
	return CF_OK;
}

static void
destroy_handles(cf_p11_key **k, size_t n, const char *why)
{
	for (size_t i = 0; i < n; i++) {
		if (k[i] == NULL)
			continue;
		/* A failure (or a crash here) leaves an object no record
		 * claims: the next start finds and destroys it. */
		CF_CRASH_POINT("apikeys.retired.before-destroy");
		if (cf_p11_key_destroy(k[i]) != CF_OK)
			cf_log_error("API key %s secret %u (%s): %s", cf_p11_key_name(k[i]),
				     cf_p11_key_version(k[i]), why, cf_error_detail());
		cf_p11_key_free(k[i]);
	}
}

/* A new secret's object whose record failed with status r: destroyed,
 * unless the shared store lost PostgreSQL, when the record may have
 * committed all the same; then it stays (an object no record claims is
 * removed by the reconciliation of the next start). */
static void
not_recorded(apikeys *a, int r, cf_p11_key **k)
{
	/* Refused by the fence (the lock was lost): surely not committed. */
	if (r == CF_E_UNAVAILABLE && a->shared && !store_change_lost(a->st)) {
		cf_log_warn("API key secret %s/%u: the state store lost PostgreSQL while recording "
			    "it; its object is kept", cf_p11_key_name(*k), cf_p11_key_version(*k));
		cf_p11_key_free(*k);
		*k = NULL;
		return;
	}
	destroy_handles(k, 1, "not recorded");
}

/* An attempt whose outcome is unknown keeps its new secret's object (a
 * token write that may have happened; in a fleet, a commit lost with
 * PostgreSQL: not_recorded), which the next start would remove. The record,
 * read under the change lock, did not take generation gen: nothing claims
 * an object there, and it would refuse every rotation until that start. */
static int
drop_leftover(apikeys *a, const char *id, uint32_t gen)
{
	char name[CF_KEY_NAME_MAX + 1];
	cf_p11_key *k = NULL;
	int r;

	object_name(id, name);
	/* Found by label, then the lock checked, then destroyed by handle:
	 * the object found is one made while the lock was still this change's,
	 * so never one the next holder made again (it takes the lock, which
	 * fails the check, before it makes anything). Checked first, the lock
	 * could go between the check and the search. */
	if (cf_p11_key_open(a->p11, name, gen, &k) != CF_OK) {
		cf_error_clear();
		return CF_OK;
	}
	CF_HOLD_POINT("apikeys.leftover.between");
	/* A lock lost (or unknown) ends the rotation: it could not commit. */
	if ((r = store_change_check(a->st)) != CF_OK) {
		cf_p11_key_free(k);
		return r;
	}
	cf_log_warn("API key %s secret %u: an object no record claims (left by an attempt "
		    "that did not complete) is destroyed before the rotation makes it again",
		    id, gen);
	destroy_handles(&k, 1, "left by an attempt that did not commit");
	return CF_OK;
}

/* ---- loading and reconciliation ---- */

struct load_ctx {
	apikeys *a;
	void (*report)(const char *msg);
	unsigned *mismatches;
};

/* Report a mismatch about secret gen of key id. */
static void
mismatch(struct load_ctx *c, const char *id, uint32_t gen, const char *what)
{
	char msg[256];

	snprintf(msg, sizeof(msg), "API key %s secret %u %s", id, gen, what);
	if (c->report != NULL)
		c->report(msg);
	if (c->mismatches != NULL)
		(*c->mismatches)++;
}

static int
load_one(const struct store_apikey *rec, void *arg)
{
	struct load_ctx *c = arg;
	char name[CF_KEY_NAME_MAX + 1];
	struct entry *e = calloc(1, sizeof(*e));
	int r;

	if (e == NULL)
		return cf_nomem();
	e->rec = *rec;
	object_name(rec->id, name);
	for (uint32_t i = 0; i < rec->nsecrets; i++) {
		r = cf_p11_key_open(c->a->p11, name, rec->secrets[i].generation, &e->k[i]);
		if (r == CF_E_NOT_FOUND)
			mismatch(c, rec->id, rec->secrets[i].generation,
				 "is recorded but not in the token (unusable)");
		else if (r != CF_OK)
			goto fail;
	}
	if ((r = insert(c->a, e)) == CF_OK)
		return CF_OK;
fail:
	for (uint32_t i = 0; i < rec->nsecrets; i++)
		cf_p11_key_free(e->k[i]);
	free(e);
	return r;
}

/* A token object of an API key secret no record claims. */
static int
reconcile_one(const char *name, uint32_t version, enum cf_key_type type, void *arg)
{
	struct load_ctx *c = arg;
	const char *id;
	struct entry *e;
	cf_p11_key *k;

	(void)type;
	if (strncmp(name, APIKEYS_OBJECT_PREFIX, strlen(APIKEYS_OBJECT_PREFIX)) != 0)
		return 0;
	id = name + strlen(APIKEYS_OBJECT_PREFIX);
	if ((e = find(c->a, id)) != NULL)
		for (uint32_t i = 0; i < e->rec.nsecrets; i++)
			if (e->rec.secrets[i].generation == version)
				return 0;
	/* Retired (its record went first) or never handed out (the daemon
	 * stopped before recording it): either way nobody may use it. */
	mismatch(c, id, version, "is in the token but not recorded: destroyed");
	if (cf_p11_key_open(c->a->p11, name, version, &k) == CF_OK) {
		(void)cf_p11_key_destroy(k);
		cf_p11_key_free(k);
	}
	return 0;
}

int
apikeys_open(cf_p11 *p11, store *st, void (*report)(const char *msg), unsigned *mismatches,
	     apikeys **out)
{
	apikeys *a = calloc(1, sizeof(*a));
	struct load_ctx c = { a, report, mismatches };
	int shared, r;

	if (a == NULL)
		return cf_nomem();
	a->p11 = p11;
	a->st = st;
	change_mu_init(&a->admin);
	{
		pthread_rwlockattr_t at;

		/* Signed calls hold the read lock through a token MAC each: let a
		 * change (and the sweep) in instead of waiting for a lull. */
		pthread_rwlockattr_init(&at);
		pthread_rwlockattr_setkind_np(&at, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
		pthread_rwlock_init(&a->lk, &at);
		pthread_rwlockattr_destroy(&at);
	}
	/* Under the fleet's change lock: an object no record claims is then
	 * not another replica's secret on its way to being recorded. */
	if ((r = store_change_begin(st, &shared)) != CF_OK) {
		apikeys_close(a);
		return r;
	}
	if ((r = store_apikeys_load(st, load_one, &c)) != CF_OK ||
	    (r = store_signed_load(st, load_sticky, a)) != CF_OK ||
	    (r = cf_p11_key_list(p11, reconcile_one, &c)) != CF_OK ||
	    (r = index_signers(a, NULL)) != CF_OK) {
		store_change_end(st);
		apikeys_close(a);
		return r;
	}
	store_change_end(st);
	*out = a;
	return CF_OK;
}

void
apikeys_close(apikeys *a)
{
	if (a == NULL)
		return;
	for (size_t i = 0; i < a->n; i++) {
		for (uint32_t j = 0; j < a->e[i]->rec.nsecrets; j++)
			cf_p11_key_free(a->e[i]->k[j]);
		free(a->e[i]);
	}
	free(a->e);
	free(a->signers);
	free(a->sticky);
	pthread_rwlock_destroy(&a->lk);
	change_mu_destroy(&a->admin);
	free(a);
}

/* ---- another replica's changes (fleet.h) ---- */

/* A record as read back, without handles yet. */
static int
collect_one(const struct store_apikey *rec, void *arg)
{
	apikeys *fresh = arg;
	struct entry *e = calloc(1, sizeof(*e));
	int r;

	if (e == NULL)
		return cf_nomem();
	e->rec = *rec;
	if ((r = reserve(fresh)) != CF_OK) {
		free(e);
		return r;
	}
	fresh->e[fresh->n++] = e;   /* the store returns them by id */
	return CF_OK;
}

static void
drop_table(apikeys *t, int close_handles)
{
	for (size_t i = 0; i < t->n; i++) {
		for (uint32_t j = 0; close_handles && j < t->e[i]->rec.nsecrets; j++)
			cf_p11_key_free(t->e[i]->k[j]);
		free(t->e[i]);
	}
	free(t->e);
	free(t->signers);
	free(t->sticky);
}

/* Replace the table with the store's (admin mutex held): a secret this
 * replica already had open keeps its handle, a new one is opened, one that
 * is gone is let go (the replica that retired it destroyed its object). */
static int
refresh_locked(apikeys *a)
{
	apikeys fresh;
	char name[CF_KEY_NAME_MAX + 1];
	char (*signers)[STORE_PRINCIPAL_NAME_MAX + 1];
	int r;

	memset(&fresh, 0, sizeof(fresh));
	if ((r = store_apikeys_load(a->st, collect_one, &fresh)) != CF_OK ||
	    (r = store_signed_load(a->st, load_sticky, &fresh)) != CF_OK)
		goto fail;
	if (fresh.n > 1)   /* (qsort with no array is undefined) */
		qsort(fresh.e, fresh.n, sizeof(*fresh.e), entry_cmp);
	/* The new index too, before the swap, and before any handle is shared
	 * with the old table: past this, nothing fails (a failure after the
	 * sharing would free handles the old table still serves with). */
	if ((signers = calloc(fresh.n ? fresh.n : 1, sizeof(*signers))) == NULL) {
		r = cf_nomem();
		goto fail;
	}
	for (size_t i = 0; i < fresh.n; i++) {
		struct entry *ne = fresh.e[i], *old = find(a, ne->rec.id);

		object_name(ne->rec.id, name);
		for (uint32_t j = 0; j < ne->rec.nsecrets; j++) {
			uint32_t gen = ne->rec.secrets[j].generation;

			/* Shared, not moved: calls use the old table until the swap. */
			for (uint32_t m = 0; old != NULL && m < old->rec.nsecrets; m++)
				if (old->rec.secrets[m].generation == gen &&
				    __atomic_load_n(&old->k[m], __ATOMIC_ACQUIRE) != NULL)
					ne->k[j] = old->k[m];   /* (set once: secret_handle) */
			if (ne->k[j] == NULL &&
			    (r = cf_p11_key_open(a->p11, name, gen, &ne->k[j])) != CF_OK) {
				/* Not the table's failure: a revocation read with it
				 * must apply. A token that did not answer is asked
				 * again by the first call that needs the secret. */
				ne->retry[j] = r != CF_E_NOT_FOUND;
				cf_log_warn("API key %s secret %u: %s: %s", ne->rec.id, gen,
					    ne->retry[j] ? "the token did not answer (opened when "
					    "a call needs it)" : "not in the token (unusable)",
					    cf_error_detail());
				ne->k[j] = NULL;
			}
		}
	}
	pthread_rwlock_wrlock(&a->lk);
	{
		apikeys old = *a;

		a->e = fresh.e;
		a->n = fresh.n;
		a->cap = fresh.cap;
		a->sticky = fresh.sticky;
		a->nsticky = fresh.nsticky;
		a->capsticky = fresh.capsticky;
		a->signers = NULL;
		(void)index_signers(a, signers);   /* allocates nothing */
		fresh = old;   /* what the table held before: closed below */
	}
	pthread_rwlock_unlock(&a->lk);
	/* The old table's handles the new one does not hold are let go. */
	for (size_t i = 0; i < fresh.n; i++) {
		struct entry *oe = fresh.e[i], *ne = find(a, oe->rec.id);

		for (uint32_t m = 0; m < oe->rec.nsecrets; m++)
			for (uint32_t j = 0; ne != NULL && oe->k[m] != NULL && j < ne->rec.nsecrets;
			     j++)
				if (ne->k[j] == oe->k[m])
					oe->k[m] = NULL;   /* kept by the new table */
	}
	drop_table(&fresh, 1);
	return CF_OK;
fail:
	drop_table(&fresh, 1);
	return r;
}

int
apikeys_refresh(apikeys *a)
{
	int r;

	/* Never waits for a change in progress: CF_E_BUSY, tried again. */
	if (change_mu_try(&a->admin) != 0)
		return cf_error(CF_E_BUSY, "API keys: a change is in progress; reload later");
	r = refresh_locked(a);
	change_mu_unlock(&a->admin);
	return r;
}

/* One change at a time: this process's admin mutex, then the fleet's change
 * lock; with a shared state, the table re-read under it. */
static int
admin_begin(apikeys *a)
{
	int shared, r;

	change_mu_lock(&a->admin);
	if ((r = store_change_begin(a->st, &shared)) != CF_OK) {
		change_mu_unlock(&a->admin);
		return r;
	}
	a->shared = shared;
	if (shared && (r = refresh_locked(a)) != CF_OK) {
		store_change_end(a->st);
		change_mu_unlock(&a->admin);
	}
	return r;
}

static void
admin_end(apikeys *a)
{
	store_change_end(a->st);
	change_mu_unlock(&a->admin);
}

/* ---- changes ---- */

int
apikeys_available(cf_p11 *p11)
{
	if (cf_p11_can_create(p11, CF_KEY_HMAC_SHA256, 1) == CF_OK)
		return CF_OK;
	return cf_error(CF_E_PRECONDITION, "API keys are not available on this token: each "
			"secret is an HMAC-SHA256 key inside it, and %s", cf_error_detail());
}

/* A new secret object at generation gen: imported, or generated from the
 * token's RNG and returned in *secret. */
static int
new_secret(apikeys *a, const char *id, uint32_t gen, const cf_secret *import,
	   cf_p11_key **k, cf_secret **secret)
{
	char name[CF_KEY_NAME_MAX + 1];
	cf_secret *s = NULL;
	int r;

	*secret = NULL;
	if (import != NULL && (cf_secret_len(import) < APIKEYS_IMPORT_MIN ||
			       cf_secret_len(import) > APIKEYS_IMPORT_MAX))
		return cf_error(CF_E_INVALID_ARG, "an imported API secret must be %d..%d bytes, "
				"got %zu", APIKEYS_IMPORT_MIN, APIKEYS_IMPORT_MAX,
				cf_secret_len(import));
	if (import == NULL && ((r = cf_secret_new(APIKEYS_SECRET_LEN, &s)) != CF_OK ||
			       (r = cf_p11_random(a->p11, s)) != CF_OK))
		goto out;
	object_name(id, name);
	/* Non-extractable: after this call only the token computes with it. */
	r = cf_p11_key_import(a->p11, name, gen, CF_KEY_HMAC_SHA256, import ? import : s, 0, k);
out:
	if (r == CF_OK)
		*secret = s;
	else
		cf_secret_free(s);
	return r;
}

/* What publish needs, allocated before the record is written: once the
 * store has it, memory must follow, or a revoked key would still verify
 * here and a new one be missing (admin mutex held from here to publish,
 * so the table cannot grow in between). */
struct room {
	struct entry *ne;   /* a new key's entry; NULL for a change */
	char (*signers)[STORE_PRINCIPAL_NAME_MAX + 1];   /* the rebuilt index */
};

static int
room_get(apikeys *a, int new_key, struct room *rm)
{
	int r = CF_OK;
	size_t n;

	memset(rm, 0, sizeof(*rm));
	if (new_key && (rm->ne = calloc(1, sizeof(*rm->ne))) == NULL)
		return cf_nomem();
	pthread_rwlock_wrlock(&a->lk);
	/* A new key also marks its principal as one that must sign. */
	if (new_key && (r = reserve(a)) == CF_OK)
		r = sticky_room_locked(a);
	n = a->n + 1;
	pthread_rwlock_unlock(&a->lk);
	if (r != CF_OK || (rm->signers = calloc(n, sizeof(*rm->signers))) == NULL) {
		free(rm->ne);
		rm->ne = NULL;
		return cf_nomem();
	}
	return CF_OK;
}

static void
room_free(struct room *rm)
{
	free(rm->ne);
	free(rm->signers);
}

/* Publish rec (already stored) for e, or rm's new entry when e is NULL, and
 * hand back the handles it no longer holds (to destroy after unlocking).
 * Allocates nothing: it uses rm (room_get, before the record was written). */
static void
publish(apikeys *a, struct entry *e, const struct store_apikey *rec, cf_p11_key *const *k,
	cf_p11_key **gone, size_t *ngone, struct room *rm)
{
	cf_p11_key *nk[STORE_APIKEY_SECRETS_MAX];
	int nr[STORE_APIKEY_SECRETS_MAX];

	*ngone = 0;
	pthread_rwlock_wrlock(&a->lk);
	if (e == NULL) {
		e = rm->ne;
		rm->ne = NULL;
		e->rec = *rec;   /* inserted by id (room_get reserved its place) */
		(void)insert(a, e);
	}
	/* Each kept secret by its generation: a call may have opened a handle
	 * the caller's copy of the table did not hold yet (secret_handle),
	 * and with it goes whether to open it still. */
	for (uint32_t j = 0; j < rec->nsecrets; j++) {
		nk[j] = k != NULL ? k[j] : NULL;
		nr[j] = 0;
		for (uint32_t i = 0; i < e->rec.nsecrets; i++)
			if (e->rec.secrets[i].generation == rec->secrets[j].generation) {
				if (nk[j] == NULL)
					nk[j] = e->k[i];
				nr[j] = nk[j] == NULL && e->retry[i];
			}
	}
	for (uint32_t i = 0; i < e->rec.nsecrets; i++) {
		int kept = 0;

		for (uint32_t j = 0; j < rec->nsecrets; j++)
			kept |= nk[j] == e->k[i];
		if (!kept && e->k[i] != NULL)
			gone[(*ngone)++] = e->k[i];
	}
	e->rec = *rec;
	memset(e->k, 0, sizeof(e->k));
	memset(e->retry, 0, sizeof(e->retry));
	for (uint32_t i = 0; i < rec->nsecrets; i++) {
		e->k[i] = nk[i];
		e->retry[i] = nr[i];
	}
	(void)index_signers(a, rm->signers);
	rm->signers = NULL;   /* the index's now */
	pthread_rwlock_unlock(&a->lk);
}

static int
live_keys_of(apikeys *a, const char *principal)
{
	int n = 0;

	for (size_t i = 0; i < a->n; i++)
		n += live(a->e[i]) && strcmp(a->e[i]->rec.principal, principal) == 0;
	return n;
}

int
apikeys_create(apikeys *a, const char *principal, const cf_secret *import, int64_t now,
	       struct store_apikey *out, cf_secret **secret)
{
	struct store_apikey rec;
	cf_p11_key *k = NULL, *gone[STORE_APIKEY_SECRETS_MAX];
	uint8_t rnd[12];
	size_t ngone;
	struct room rm = { NULL, NULL };
	int r;

	*secret = NULL;
	if (strlen(principal) > STORE_PRINCIPAL_NAME_MAX)
		return cf_error(CF_E_INVALID_ARG, "principal name too long");
	if ((r = apikeys_available(a->p11)) != CF_OK)
		return r;
	memset(&rec, 0, sizeof(rec));
	if ((r = admin_begin(a)) != CF_OK)
		return r;
	if (live_keys_of(a, principal) >= APIKEYS_PER_PRINCIPAL) {
		r = cf_error(CF_E_PRECONDITION, "principal %s already has %d live API keys; "
			     "revoke one first", principal, APIKEYS_PER_PRINCIPAL);
		goto out;
	}
	do {
		if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
			r = cf_error(CF_E_INTERNAL, "random number generator failed");
			goto out;
		}
		memcpy(rec.id, "ak_", 3);
		for (size_t i = 0; i < sizeof(rnd); i++)
			snprintf(rec.id + 3 + 2 * i, 3, "%02x", rnd[i]);
	} while (find(a, rec.id) != NULL);
	snprintf(rec.principal, sizeof(rec.principal), "%s", principal);
	rec.created = now;
	rec.next_generation = 2;
	rec.nsecrets = 1;
	rec.secrets[0].generation = 1;
	rec.secrets[0].created = now;
	if ((r = new_secret(a, rec.id, 1, import, &k, secret)) != CF_OK)
		goto out;
	/* A principal's deletion waits for this change (apikeys_principal_delete);
	 * should it not, the store refuses a key for a principal gone. */
	CF_CRASH_POINT("apikeys.create.secret-made");
	if ((r = room_get(a, 1, &rm)) != CF_OK ||
	    (r = store_apikey_put(a->st, &rec, 1, 1, 0)) != CF_OK) {
		not_recorded(a, r, &k);
		cf_secret_free(*secret);
		*secret = NULL;
		goto out;
	}
	publish(a, NULL, &rec, &k, gone, &ngone, &rm);
	/* The store marked the principal with the key; memory follows (room_get
	 * made the room). */
	pthread_rwlock_wrlock(&a->lk);
	(void)sticky_set_locked(a, principal, 1);
	pthread_rwlock_unlock(&a->lk);
	*out = rec;
out:
	room_free(&rm);
	admin_end(a);
	return r;
}

int
apikeys_rotate(apikeys *a, const char *id, uint32_t overlap, const cf_secret *import,
	       int64_t now, struct store_apikey *out, cf_secret **secret)
{
	struct store_apikey rec;
	cf_p11_key *k[STORE_APIKEY_SECRETS_MAX], *gone[STORE_APIKEY_SECRETS_MAX];
	struct entry *e;
	size_t ngone = 0;
	struct room rm = { NULL, NULL };
	uint32_t gen;
	int r;

	*secret = NULL;
	if ((r = apikeys_available(a->p11)) != CF_OK)
		return r;
	if ((r = admin_begin(a)) != CF_OK)
		return r;
	if ((e = find(a, id)) == NULL) {
		r = cf_error(CF_E_NOT_FOUND, "no API key %s", id);
		goto out;
	}
	if (e->rec.revoked != 0) {
		r = cf_error(CF_E_PRECONDITION, "API key %s was revoked; create a new one", id);
		goto out;
	}
	rec = e->rec;
	gen = rec.next_generation;
	/* The new secret first, then the old ones that still verify. */
	memset(k, 0, sizeof(k));
	rec.nsecrets = 0;
	for (uint32_t i = 0; overlap > 0 && i < e->rec.nsecrets; i++) {
		struct store_apikey_secret s = e->rec.secrets[i];

		if (s.expires != 0 && s.expires <= now)
			continue;
		if (rec.nsecrets + 1 == STORE_APIKEY_SECRETS_MAX) {
			r = cf_error(CF_E_PRECONDITION, "API key %s already has %d secrets that "
				     "verify; rotate with no overlap or wait for a deadline", id,
				     STORE_APIKEY_SECRETS_MAX);
			goto out;
		}
		if (s.expires == 0 || s.expires > now + (int64_t)overlap)
			s.expires = now + (int64_t)overlap;
		k[rec.nsecrets + 1] = __atomic_load_n(&e->k[i], __ATOMIC_ACQUIRE);
		rec.secrets[1 + rec.nsecrets++] = s;
	}
	rec.nsecrets++;
	rec.secrets[0].generation = gen;
	rec.secrets[0].created = now;
	rec.secrets[0].expires = 0;
	rec.next_generation = gen + 1;
	if ((r = drop_leftover(a, id, gen)) != CF_OK ||
	    (r = new_secret(a, id, gen, import, &k[0], secret)) != CF_OK)
		goto out;
	CF_CRASH_POINT("apikeys.rotate.secret-made");
	if ((r = room_get(a, 0, &rm)) != CF_OK ||
	    (r = store_apikey_put(a->st, &rec, 0, gen, 0)) != CF_OK) {
		not_recorded(a, r, k);
		cf_secret_free(*secret);
		*secret = NULL;
		goto out;
	}
	publish(a, e, &rec, k, gone, &ngone, &rm);
	destroy_handles(gone, ngone, "retired by a rotation without overlap");
	*out = rec;
out:
	room_free(&rm);
	admin_end(a);
	return r;
}

/* Revoke e (admin mutex held). */
static int
revoke_locked(apikeys *a, struct entry *e, int64_t now)
{
	struct store_apikey rec = e->rec;
	cf_p11_key *gone[STORE_APIKEY_SECRETS_MAX];
	size_t ngone;
	struct room rm;
	int r;

	rec.revoked = now;
	rec.nsecrets = 0;
	if ((r = room_get(a, 0, &rm)) != CF_OK)
		return r;
	if ((r = store_apikey_put(a->st, &rec, 0, 0, 0)) == CF_OK)
		publish(a, e, &rec, NULL, gone, &ngone, &rm);
	room_free(&rm);
	if (r != CF_OK)
		return r;
	destroy_handles(gone, ngone, "revoked");
	return CF_OK;
}

int
apikeys_revoke(apikeys *a, const char *id, int64_t now, struct store_apikey *out)
{
	struct entry *e;
	int r;

	if ((r = admin_begin(a)) != CF_OK)
		return r;
	if ((e = find(a, id)) == NULL)
		r = cf_error(CF_E_NOT_FOUND, "no API key %s", id);
	else if (e->rec.revoked != 0)
		r = CF_OK;   /* revoking twice is the same as once */
	else
		r = revoke_locked(a, e, now);
	if (r == CF_OK)
		*out = e->rec;
	admin_end(a);
	return r;
}

/* Take principal's next live key out of service as the store has it
 * (revoked at now, no secrets), its handles into gone; the signers index
 * loses the principal when none is left. 0: none left (write lock held). */
static int
drop_next_locked(apikeys *a, const char *principal, int64_t now, cf_p11_key **gone,
		 size_t *ngone)
{
	size_t i, k;

	*ngone = 0;
	for (i = 0; i < a->n; i++)
		if (live(a->e[i]) && strcmp(a->e[i]->rec.principal, principal) == 0)
			break;
	if (i == a->n) {
		/* In place: the index only shrinks. */
		for (k = i = 0; i < a->nsigners; i++)
			if (strcmp(a->signers[i], principal) != 0)
				memmove(a->signers[k++], a->signers[i], sizeof(a->signers[0]));
		a->nsigners = k;
		return 0;
	}
	for (k = 0; k < a->e[i]->rec.nsecrets; k++)
		if (a->e[i]->k[k] != NULL)
			gone[(*ngone)++] = a->e[i]->k[k];
	memset(a->e[i]->k, 0, sizeof(a->e[i]->k));
	a->e[i]->rec.revoked = now;
	a->e[i]->rec.nsecrets = 0;
	return 1;
}

/* Whether the table holds a handle to secret gen of key id (a lock held). */
static int
holds_locked(apikeys *a, const char *id, uint32_t gen)
{
	struct entry *e = find(a, id);

	for (uint32_t i = 0; e != NULL && i < e->rec.nsecrets; i++)
		if (e->rec.secrets[i].generation == gen && e->k[i] != NULL)
			return 1;
	return 0;
}

int
apikeys_principal_delete(apikeys *a, const char *principal,
			 int (*commit)(void *arg, int64_t now, struct store_dropped *dropped),
			 void *arg)
{
	cf_p11_key *gone[STORE_APIKEY_SECRETS_MAX];
	char name[CF_KEY_NAME_MAX + 1];
	struct store_dropped dropped;
	size_t ngone;
	int64_t now;
	int more, r;

	/* The admin mutex before the change: the order apikeys_create and the
	 * others take it in (then the fleet's change lock). Without it, a
	 * rotation that read the key live could commit it back after the
	 * deletion, and a reload let handles go before their destruction. */
	change_mu_lock(&a->admin);
	/* The revocation's time is when the change could begin (its record's). */
	now = (int64_t)time(NULL);
	if ((r = commit(arg, now, &dropped)) != CF_OK) {
		change_mu_unlock(&a->admin);
		return r;
	}
	/* A secret the store dropped and this table holds no handle to:
	 * another replica made the key and this one has not read it yet. Found
	 * by name, or it would outlive the principal until the next start. */
	for (size_t i = 0; i < dropped.n; i++) {
		cf_p11_key *k = NULL;
		int held;

		pthread_rwlock_rdlock(&a->lk);
		held = holds_locked(a, dropped.s[i].id, dropped.s[i].generation);
		pthread_rwlock_unlock(&a->lk);
		object_name(dropped.s[i].id, name);
		if (!held && cf_p11_key_open(a->p11, name, dropped.s[i].generation, &k) == CF_OK)
			destroy_handles(&k, 1, "its principal was deleted");
	}
	if (dropped.total > dropped.n)
		cf_log_warn("principal %s: %zu of its API key secrets are left to the next start "
			    "to destroy (more than %d at once)", principal,
			    dropped.total - dropped.n, STORE_DROPPED_MAX);
	do {
		pthread_rwlock_wrlock(&a->lk);
		more = drop_next_locked(a, principal, now, gone, &ngone);
		if (!more)
			(void)sticky_set_locked(a, principal, 0);   /* a removal */
		pthread_rwlock_unlock(&a->lk);
		destroy_handles(gone, ngone, "its principal was deleted");
	} while (more);
	change_mu_unlock(&a->admin);
	return CF_OK;
}

int
apikeys_set_required(apikeys *a, const char *principal, int on)
{
	int r;

	if (strlen(principal) > STORE_PRINCIPAL_NAME_MAX)
		return cf_error(CF_E_INVALID_ARG, "principal name too long");
	if ((r = admin_begin(a)) != CF_OK)
		return r;
	/* The room first: once the store has the mark, memory follows. */
	pthread_rwlock_wrlock(&a->lk);
	r = sticky_room_locked(a);
	pthread_rwlock_unlock(&a->lk);
	if (r == CF_OK && (r = store_signed_set(a->st, principal, on)) == CF_OK) {
		pthread_rwlock_wrlock(&a->lk);
		r = sticky_set_locked(a, principal, on);
		pthread_rwlock_unlock(&a->lk);
	}
	admin_end(a);
	return r;
}

int
apikeys_list(apikeys *a, const char *principal, struct store_apikey **out, size_t *n)
{
	struct store_apikey *l;
	size_t m = 0;

	pthread_rwlock_rdlock(&a->lk);
	if ((l = calloc(a->n ? a->n : 1, sizeof(*l))) == NULL) {
		pthread_rwlock_unlock(&a->lk);
		return cf_nomem();
	}
	for (size_t i = 0; i < a->n; i++)
		if (principal == NULL || principal[0] == '\0' ||
		    strcmp(a->e[i]->rec.principal, principal) == 0)
			l[m++] = a->e[i]->rec;
	pthread_rwlock_unlock(&a->lk);
	*out = l;
	*n = m;
	return CF_OK;
}

int
apikeys_get(apikeys *a, const char *id, struct store_apikey *out)
{
	struct entry *e;
	int r = CF_OK;

	pthread_rwlock_rdlock(&a->lk);
	if ((e = find(a, id)) != NULL)
		*out = e->rec;
	else
		r = cf_error(CF_E_NOT_FOUND, "no API key %s", id);
	pthread_rwlock_unlock(&a->lk);
	return r;
}

void
apikeys_expire(apikeys *a, int64_t now)
{
	if (admin_begin(a) != CF_OK) {
		cf_log_warn("API keys: expiry postponed: %s", cf_error_detail());
		return;
	}
	for (size_t i = 0; i < a->n; i++) {
		struct entry *e = a->e[i];
		struct store_apikey rec = e->rec;
		cf_p11_key *k[STORE_APIKEY_SECRETS_MAX], *gone[STORE_APIKEY_SECRETS_MAX];
		size_t ngone;
		struct room rm;

		rec.nsecrets = 0;
		for (uint32_t j = 0; j < e->rec.nsecrets; j++)
			if (e->rec.secrets[j].expires == 0 || e->rec.secrets[j].expires > now) {
				k[rec.nsecrets] = __atomic_load_n(&e->k[j], __ATOMIC_ACQUIRE);
				rec.secrets[rec.nsecrets++] = e->rec.secrets[j];
			}
		if (rec.nsecrets == e->rec.nsecrets)
			continue;
		/* The record goes first: a crash before the token object is
		 * destroyed leaves an unclaimed object, destroyed at start. */
		if (room_get(a, 0, &rm) != CF_OK ||
		    store_apikey_put(a->st, &rec, 0, 0, 0) != CF_OK) {
			cf_log_error("API key %s: retiring expired secrets: %s", rec.id,
				     cf_error_detail());
			room_free(&rm);
			continue;
		}
		publish(a, e, &rec, k, gone, &ngone, &rm);
		room_free(&rm);
		destroy_handles(gone, ngone, "past its rotation deadline");
		cf_log_info("API key %s: %zu old secret(s) past the rotation deadline destroyed",
			    rec.id, ngone);
	}
	admin_end(a);
}

/* ---- the data path ---- */

int
apikeys_required(apikeys *a, const char *principal)
{
	int r;

	pthread_rwlock_rdlock(&a->lk);
	if (a->nsigners > 0 &&
	    bsearch(principal, a->signers, a->nsigners, sizeof(*a->signers), name_cmp) != NULL)
		r = APIKEYS_LIVE;
	else if (a->nsticky > 0 &&
		 bsearch(principal, a->sticky, a->nsticky, sizeof(*a->sticky), name_cmp) != NULL)
		r = APIKEYS_STICKY;
	else
		r = APIKEYS_NONE;
	pthread_rwlock_unlock(&a->lk);
	return r;
}

/* Secret i's handle (read lock held), opened now if the table could not
 * (retry[i]); NULL with *unasked set to the token's error. Two callers
 * opening it at once keep the first handle. */
static cf_p11_key *
secret_handle(apikeys *a, struct entry *e, uint32_t i, int *unasked, char *why, size_t len)
{
	char name[CF_KEY_NAME_MAX + 1];
	cf_p11_key *k = __atomic_load_n(&e->k[i], __ATOMIC_ACQUIRE), *none = NULL;
	int r;

	if (k != NULL || !__atomic_load_n(&e->retry[i], __ATOMIC_RELAXED))
		return k;
	object_name(e->rec.id, name);
	if ((r = cf_p11_key_open(a->p11, name, e->rec.secrets[i].generation, &k)) != CF_OK) {
		if (r == CF_E_NOT_FOUND) {
			__atomic_store_n(&e->retry[i], 0, __ATOMIC_RELAXED);
		} else {
			*unasked = r;
			snprintf(why, len, "%s", cf_error_detail());
		}
		return NULL;
	}
	if (!__atomic_compare_exchange_n(&e->k[i], &none, k, 0, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE)) {
		cf_p11_key_free(k);
		k = none;
	}
	return k;
}

int
apikeys_secret_live(apikeys *a, const char *principal, const char *id, uint32_t generation,
		    int64_t now)
{
	struct entry *e;
	int r = APIKEYS_KEY_GONE;

	pthread_rwlock_rdlock(&a->lk);
	if ((e = find(a, id)) != NULL && e->rec.revoked == 0 &&
	    strcmp(e->rec.principal, principal) == 0) {
		r = APIKEYS_SECRET_GONE;
		for (uint32_t i = 0; i < e->rec.nsecrets && r != APIKEYS_SECRET_LIVE; i++)
			if (e->rec.secrets[i].generation == generation &&
			    (e->rec.secrets[i].expires == 0 || e->rec.secrets[i].expires > now))
				r = APIKEYS_SECRET_LIVE;
	}
	pthread_rwlock_unlock(&a->lk);
	return r;
}

int
apikeys_verify(apikeys *a, const char *principal, const char *id, const uint8_t *msg,
	       size_t len, const uint8_t mac[32], int64_t now, uint32_t *generation)
{
	struct entry *e;
	int r = CF_E_BAD_SIGNATURE;

	pthread_rwlock_rdlock(&a->lk);
	if ((e = find(a, id)) == NULL) {
		r = cf_error(CF_E_UNAUTHENTICATED, "unknown API key %s", id);
	} else if (e->rec.revoked != 0) {
		r = cf_error(CF_E_UNAUTHENTICATED, "API key %s was revoked", id);
	} else if (strcmp(e->rec.principal, principal) != 0) {
		r = cf_error(CF_E_UNAUTHENTICATED, "API key %s is not a key of principal %s (the "
			     "caller's uid/gid)", id, principal);
	} else {
		int unasked = CF_OK;
		char why[200] = "";

		for (uint32_t i = 0; i < e->rec.nsecrets && r == CF_E_BAD_SIGNATURE; i++) {
			cf_p11_key *k;

			if (e->rec.secrets[i].expires != 0 && e->rec.secrets[i].expires <= now)
				continue;
			if ((k = secret_handle(a, e, i, &unasked, why, sizeof(why))) != NULL &&
			    (r = cf_p11_mac_verify(k, msg, len, mac, 32)) == CF_OK &&
			    generation != NULL)
				*generation = e->rec.secrets[i].generation;
		}
		/* A secret the token could not be asked about is no verdict. */
		if (r == CF_E_BAD_SIGNATURE && unasked != CF_OK)
			r = cf_error(unasked, "API key %s: the token cannot check the signature now "
				     "(%s); retry", id, why);
		else if (r == CF_E_BAD_SIGNATURE)
			r = cf_error(CF_E_UNAUTHENTICATED, "bad signature: it matches no live secret "
				     "of API key %s (a rotated-out secret stops at its deadline); "
				     "check the secret and the canonical string", id);
	}
	pthread_rwlock_unlock(&a->lk);
	return r;
}
