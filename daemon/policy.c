#include "policy.h"

#include <fnmatch.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_count.h"
#include "cf_status.h"
#include "cf_time.h"
#include "change_mu.h"
#include "sorted.h"

static const char *const op_names[CF_OP__COUNT] = {
	"all", "sign", "verify", "mac", "verify-mac", "wrap", "unwrap", "rewrap",
	"generate-data-key", "get-public-key",
};

struct bucket {
	double tokens;
	double last;       /* monotonic seconds of the last refill */
};

struct pr {
	struct store_principal sp;
	struct bucket buckets[CF_OP__COUNT];   /* by store_limit.op */
};

struct policy {
	store *st;
	pthread_rwlock_t lock;   /* the array and the definitions */
	pthread_mutex_t bmu;     /* bucket levels (under the read lock) */
	struct change_mu refresh_mu;   /* a reload from the store, or a change */
	struct pr **v;           /* by name */
	size_t n;
};

const char *
policy_op_name(enum cf_op op)
{
	return (unsigned)op < CF_OP__COUNT ? op_names[op] : "?";
}

/* ---- copies ---- */

void
policy_principal_free(struct store_principal *sp)
{
	if (sp == NULL)
		return;
	free(sp->grants);
	free(sp->limits);
	sp->grants = NULL;
	sp->limits = NULL;
	sp->ngrants = sp->nlimits = 0;
}

void
policy_list_free(struct store_principal *list, size_t n)
{
	for (size_t i = 0; list != NULL && i < n; i++)
		policy_principal_free(&list[i]);
	free(list);
}

static int
copy_principal(const struct store_principal *src, struct store_principal *dst)
{
	*dst = *src;
	dst->grants = NULL;
	dst->limits = NULL;
	if (src->ngrants > 0 &&
	    (dst->grants = malloc(src->ngrants * sizeof(*dst->grants))) == NULL)
		return cf_nomem();
	if (src->nlimits > 0 &&
	    (dst->limits = malloc(src->nlimits * sizeof(*dst->limits))) == NULL) {
		policy_principal_free(dst);
		return cf_nomem();
	}
	if (src->ngrants > 0)
		memcpy(dst->grants, src->grants, src->ngrants * sizeof(*dst->grants));
	if (src->nlimits > 0)
		memcpy(dst->limits, src->limits, src->nlimits * sizeof(*dst->limits));
	return CF_OK;
}

static const struct store_principal no_limits;

/* Bucket b of limit l at time t: refilled at l's rate since its last use,
 * up to l's burst. */
static double
level_at(const struct bucket *b, const struct store_limit *l, double t)
{
	return fmin((double)l->burst, b->tokens + (t - b->last) * l->rate);
}

/* The buckets of nsp's limits into nb: a limit old has too (the same op)
 * keeps its level, brought up to now at its old rate and capped at its new
 * burst, so that no change (here or on another replica) hands a principal
 * a fresh burst, and tightening a limit takes effect at once; a limit old
 * does not have starts full. nb may be oldb (each op's bucket is read
 * before it is written). Limits are matched by op, in any order: the store
 * returns them by op, a change appends. */
static void
carry_levels(const struct store_principal *old, const struct bucket *oldb,
	     const struct store_principal *nsp, struct bucket *nb)
{
	double t = (double)cf_mono_ns() / 1e9;

	for (uint32_t i = 0; i < nsp->nlimits; i++) {
		const struct store_limit *l = &nsp->limits[i];
		uint32_t k = 0;

		while (k < old->nlimits && old->limits[k].op != l->op)
			k++;
		if (k < old->nlimits)
			nb[l->op].tokens = fmin(level_at(&oldb[l->op], &old->limits[k], t),
						(double)l->burst);
		else
			nb[l->op].tokens = l->burst;
		nb[l->op].last = t;
	}
}

/* ---- open ---- */

static const char *
pr_name_at(const void *p, size_t i)
{
	return ((const policy *)p)->v[i]->sp.name;
}

static size_t
find_locked(const policy *p, const char *name, int *found)
{
	return sorted_find(p, p->n, pr_name_at, name, found);
}

/* Room for one more principal: made before a new one is written to the
 * store, so that installing it once written cannot fail. */
static int
room_locked(policy *p)
{
	struct pr **nv = realloc(p->v, (p->n + 1) * sizeof(*nv));

	if (nv == NULL)
		return cf_nomem();
	p->v = nv;
	return CF_OK;
}

/* Insert r at its place (the name is not there yet; room_locked made room). */
static void
insert_locked(policy *p, struct pr *r)
{
	int found;
	size_t at = find_locked(p, r->sp.name, &found);

	memmove(&p->v[at + 1], &p->v[at], (p->n - at) * sizeof(p->v[0]));
	p->v[at] = r;
	p->n++;
}

static void
pr_free(struct pr *r)
{
	if (r == NULL)
		return;
	policy_principal_free(&r->sp);
	free(r);
}

static int
load_one(const struct store_principal *sp, void *arg)
{
	policy *p = arg;
	struct pr *r;
	int rc;

	/* The store is trusted no further than its shape: a limit must index a
	 * bucket and have a rate to divide by. */
	for (uint32_t i = 0; i < sp->nlimits; i++)
		if (sp->limits[i].op >= CF_OP__COUNT || !(sp->limits[i].rate > 0.0) ||
		    sp->limits[i].burst < 1)
			return cf_error(CF_E_IO, "state store holds a malformed rate limit for "
					"principal %s", sp->name);
	if ((r = calloc(1, sizeof(*r))) == NULL)
		return cf_nomem();
	if ((rc = copy_principal(sp, &r->sp)) != CF_OK || (rc = room_locked(p)) != CF_OK) {
		pr_free(r);
		return rc;
	}
	insert_locked(p, r);
	carry_levels(&no_limits, r->buckets, &r->sp, r->buckets);   /* all full */
	return CF_OK;
}

int
policy_open(store *st, policy **out)
{
	policy *p = calloc(1, sizeof(*p));
	int r;

	if (p == NULL)
		return cf_nomem();
	p->st = st;
	pthread_rwlock_init(&p->lock, NULL);
	pthread_mutex_init(&p->bmu, NULL);
	change_mu_init(&p->refresh_mu);
	if ((r = store_principals_load(st, load_one, p)) != CF_OK) {
		policy_close(p);
		return r;
	}
	*out = p;
	return CF_OK;
}

/* Re-read under refresh_mu (held by the caller). */
static int
refresh_locked(policy *p)
{
	policy fresh;
	int found, rc;

	memset(&fresh, 0, sizeof(fresh));
	if ((rc = store_principals_load(p->st, load_one, &fresh)) != CF_OK) {
		for (size_t i = 0; i < fresh.n; i++)
			pr_free(fresh.v[i]);
		free(fresh.v);
		return rc;
	}
	pthread_rwlock_wrlock(&p->lock);
	/* A reload must not refill the buckets of limits that did not change. */
	for (size_t i = 0; i < fresh.n; i++) {
		struct pr *nr = fresh.v[i];
		size_t at = find_locked(p, nr->sp.name, &found);

		if (found)
			carry_levels(&p->v[at]->sp, p->v[at]->buckets, &nr->sp, nr->buckets);
	}
	for (size_t i = 0; i < p->n; i++)
		pr_free(p->v[i]);
	free(p->v);
	p->v = fresh.v;
	p->n = fresh.n;
	pthread_rwlock_unlock(&p->lock);
	return CF_OK;
}

int
policy_refresh(policy *p)
{
	int rc;

	/* Never waits for a change in progress (the notification thread calls
	 * it): CF_E_BUSY, and the caller tries again. */
	if (change_mu_try(&p->refresh_mu) != 0)
		return cf_error(CF_E_BUSY, "principals: a change is in progress; reload later");
	rc = refresh_locked(p);
	change_mu_unlock(&p->refresh_mu);
	return rc;
}

/* Begin a change: the fleet's change lock, and with a shared state the
 * principals as the store has them now (another replica may have changed
 * them). refresh_mu is held until change_end, so that a reload read before
 * this change commits cannot be installed after it. It is taken first, as
 * keyring and apikeys take theirs: from then on the notification thread's
 * reloads give way (change_mu.h). Taken after the fleet's lock, the change
 * queued for the store's connection behind them instead, and each reload
 * that a held table made wait lock_timeout was another wait for it. */
static int
change_begin(policy *p)
{
	int shared, rc;

	change_mu_lock(&p->refresh_mu);
	if ((rc = store_change_begin(p->st, &shared)) != CF_OK) {
		change_mu_unlock(&p->refresh_mu);
		return rc;
	}
	if (shared && (rc = refresh_locked(p)) != CF_OK) {
		store_change_end(p->st);
		change_mu_unlock(&p->refresh_mu);
	}
	return rc;
}

static void
change_end(policy *p)
{
	store_change_end(p->st);
	change_mu_unlock(&p->refresh_mu);
}

void
policy_close(policy *p)
{
	if (p == NULL)
		return;
	for (size_t i = 0; i < p->n; i++)
		pr_free(p->v[i]);
	free(p->v);
	pthread_rwlock_destroy(&p->lock);
	pthread_mutex_destroy(&p->bmu);
	change_mu_destroy(&p->refresh_mu);
	free(p);
}

/* ---- administration ---- */

static int
check_name(const char *name)
{
	int r;

	if ((r = cf_key_name_check(name)) != CF_OK)
		return cf_error(CF_E_INVALID_ARG, "principal name must be 1..%d of a-z 0-9 . _ -, "
				"starting with a letter or digit", STORE_PRINCIPAL_NAME_MAX);
	if (strlen(name) > STORE_PRINCIPAL_NAME_MAX)
		return cf_error(CF_E_INVALID_ARG, "principal name longer than %d characters",
				STORE_PRINCIPAL_NAME_MAX);
	return CF_OK;
}

static int
check_pattern(const char *pat)
{
	size_t n = strlen(pat);

	if (n == 0 || n > CF_KEY_NAME_MAX)
		return cf_error(CF_E_INVALID_ARG, "key pattern must be 1..%d characters",
				CF_KEY_NAME_MAX);
	for (size_t i = 0; i < n; i++) {
		char c = pat[i];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
		      c == '-' || c == '*' || c == '?'))
			return cf_error(CF_E_INVALID_ARG, "key pattern character %zu is not one of "
					"a-z 0-9 . _ - * ?", i + 1);
	}
	return CF_OK;
}

static int
check_ops(uint32_t ops)
{
	if (ops == 0 || (ops & ~CF_OPS_ALL) != 0)
		return cf_error(CF_E_INVALID_ARG, "operations missing or unknown");
	return CF_OK;
}

/* Between change_begin and change_end: a uid or gid of a new principal sp
 * that another has, named (the store's constraint said only "another").
 * Ids are set at creation only. */
static int
ids_free(const policy *p, const struct store_principal *sp)
{
	for (size_t k = 0; k < p->n; k++) {
		const struct store_principal *o = &p->v[k]->sp;

		if (strcmp(o->name, sp->name) == 0)
			continue;
		for (uint32_t i = 0; i < sp->nuids; i++)
			for (uint32_t j = 0; j < o->nuids; j++)
				if (sp->uids[i] == o->uids[j])
					return cf_error(CF_E_EXISTS, "uid %u belongs to principal "
							"%s (a uid or gid names one principal)",
							sp->uids[i], o->name);
		for (uint32_t i = 0; i < sp->ngids; i++)
			for (uint32_t j = 0; j < o->ngids; j++)
				if (sp->gids[i] == o->gids[j])
					return cf_error(CF_E_EXISTS, "gid %u belongs to principal "
							"%s (a uid or gid names one principal)",
							sp->gids[i], o->name);
	}
	return CF_OK;
}

/* Apply a change to a copy of `name`, write it, then install it. `edit`
 * works on the copy; it may return an error to abandon the change.
 * Between change_begin and change_end nothing else writes the table (they
 * hold refresh_mu), so a change reads it without the lock and takes the
 * lock only to install what it wrote: calls are not held up while the store
 * writes (over PostgreSQL, a round trip per statement, or a lock another
 * session holds; before, every call on the replica waited that long). */
static int
modify(policy *p, const char *name, int (*edit)(struct store_principal *sp, void *arg),
       void *arg, int limits_changed, struct store_principal *out)
{
	struct store_principal work;
	struct pr *r;
	int found, rc;
	size_t at;

	memset(&work, 0, sizeof(work));
	if ((rc = change_begin(p)) != CF_OK)
		return rc;
	at = find_locked(p, name, &found);
	if (!found) {
		rc = cf_error(CF_E_NOT_FOUND, "no principal %s", name);
		goto out;
	}
	r = p->v[at];
	/* The answer is copied before the store write: once committed, the
	 * change is answered without an allocation that could fail. */
	if ((rc = copy_principal(&r->sp, &work)) != CF_OK || (rc = edit(&work, arg)) != CF_OK ||
	    (out != NULL && (rc = copy_principal(&work, out)) != CF_OK))
		goto out;
	if ((rc = store_principal_put(p->st, &work, 0)) != CF_OK) {
		policy_principal_free(out);
		goto out;
	}
	pthread_rwlock_wrlock(&p->lock);
	if (limits_changed)   /* a new limit starts full; the others keep their levels */
		carry_levels(&r->sp, r->buckets, &work, r->buckets);
	policy_principal_free(&r->sp);
	r->sp = work;
	pthread_rwlock_unlock(&p->lock);
	memset(&work, 0, sizeof(work));
out:
	change_end(p);
	policy_principal_free(&work);
	return rc;
}

int
policy_create(policy *p, const char *name, const uint32_t *uids, size_t nuids,
	      const uint32_t *gids, size_t ngids, struct store_principal *out)
{
	struct pr *r = NULL;
	int found, rc;

	if ((rc = check_name(name)) != CF_OK)
		return rc;
	if (nuids + ngids == 0)
		return cf_error(CF_E_INVALID_ARG, "a principal needs at least one uid or gid");
	if (nuids > STORE_PRINCIPAL_IDS_MAX || ngids > STORE_PRINCIPAL_IDS_MAX)
		return cf_error(CF_E_INVALID_ARG, "at most %d uids and %d gids per principal",
				STORE_PRINCIPAL_IDS_MAX, STORE_PRINCIPAL_IDS_MAX);
	if ((r = calloc(1, sizeof(*r))) == NULL)
		return cf_nomem();
	snprintf(r->sp.name, sizeof(r->sp.name), "%s", name);
	r->sp.created = (int64_t)time(NULL);
	if (nuids > 0)
		memcpy(r->sp.uids, uids, nuids * sizeof(*uids));
	if (ngids > 0)
		memcpy(r->sp.gids, gids, ngids * sizeof(*gids));
	r->sp.nuids = (uint32_t)nuids;
	r->sp.ngids = (uint32_t)ngids;
	if ((rc = change_begin(p)) != CF_OK) {
		pr_free(r);
		return rc;
	}
	/* A new principal has no grants or limits: its copy allocates nothing.
	 * The store write does not hold calls up (modify); the table's growth
	 * (it may move) and the insertion do. */
	/* The name first: "already exists" says more than its ids. */
	(void)find_locked(p, name, &found);
	rc = found ? cf_error(CF_E_EXISTS, "principal %s already exists", name)
		   : ids_free(p, &r->sp);
	if (rc == CF_OK) {
		pthread_rwlock_wrlock(&p->lock);
		rc = room_locked(p);
		pthread_rwlock_unlock(&p->lock);
	}
	if (rc == CF_OK && (rc = store_principal_put(p->st, &r->sp, 1)) == CF_OK) {
		pthread_rwlock_wrlock(&p->lock);
		insert_locked(p, r);
		pthread_rwlock_unlock(&p->lock);
		rc = out != NULL ? copy_principal(&r->sp, out) : CF_OK;
		r = NULL;
	}
	change_end(p);
	pr_free(r);
	return rc;
}

int
policy_get(policy *p, const char *name, struct store_principal *out)
{
	int found, rc;
	size_t at;

	pthread_rwlock_rdlock(&p->lock);
	at = find_locked(p, name, &found);
	rc = found ? (out != NULL ? copy_principal(&p->v[at]->sp, out) : CF_OK)
		   : cf_error(CF_E_NOT_FOUND, "no principal %s", name);
	pthread_rwlock_unlock(&p->lock);
	return rc;
}

int
policy_list(policy *p, struct store_principal **out, size_t *n)
{
	struct store_principal *list;
	size_t i;
	int rc = CF_OK;

	pthread_rwlock_rdlock(&p->lock);
	if ((list = calloc(p->n ? p->n : 1, sizeof(*list))) == NULL) {
		pthread_rwlock_unlock(&p->lock);
		return cf_nomem();
	}
	for (i = 0; i < p->n && rc == CF_OK; i++)
		rc = copy_principal(&p->v[i]->sp, &list[i]);
	pthread_rwlock_unlock(&p->lock);
	if (rc != CF_OK) {
		policy_list_free(list, i);
		return rc;
	}
	*out = list;
	*n = i;
	return CF_OK;
}

struct grant_edit {
	const char *pattern;
	uint32_t ops;
};

static int
edit_grant(struct store_principal *sp, void *arg)
{
	const struct grant_edit *g = arg;
	struct store_grant *ng;

	for (uint32_t i = 0; i < sp->ngrants; i++)
		if (strcmp(sp->grants[i].pattern, g->pattern) == 0) {
			sp->grants[i].ops |= g->ops;
			return CF_OK;
		}
	if ((ng = realloc(sp->grants, (sp->ngrants + 1) * sizeof(*ng))) == NULL)
		return cf_nomem();
	sp->grants = ng;
	snprintf(ng[sp->ngrants].pattern, sizeof(ng[0].pattern), "%s", g->pattern);
	ng[sp->ngrants++].ops = g->ops;
	return CF_OK;
}

static int
edit_revoke(struct store_principal *sp, void *arg)
{
	const struct grant_edit *g = arg;

	for (uint32_t i = 0; i < sp->ngrants; i++) {
		if (strcmp(sp->grants[i].pattern, g->pattern) != 0)
			continue;
		sp->grants[i].ops &= g->ops ? ~g->ops : 0;
		if (sp->grants[i].ops == 0) {
			memmove(&sp->grants[i], &sp->grants[i + 1],
				(sp->ngrants - i - 1) * sizeof(sp->grants[0]));
			sp->ngrants--;
		}
		return CF_OK;
	}
	return cf_error(CF_E_NOT_FOUND, "principal %s has no grant for %s", sp->name, g->pattern);
}

int
policy_grant(policy *p, const char *name, const char *pattern, uint32_t ops,
	     struct store_principal *out)
{
	struct grant_edit g = { pattern, ops };
	int rc;

	if ((rc = check_pattern(pattern)) != CF_OK || (rc = check_ops(ops)) != CF_OK)
		return rc;
	return modify(p, name, edit_grant, &g, 0, out);
}

int
policy_revoke(policy *p, const char *name, const char *pattern, uint32_t ops,
	      struct store_principal *out)
{
	struct grant_edit g = { pattern, ops };
	int rc;

	if ((rc = check_pattern(pattern)) != CF_OK || (ops != 0 && (rc = check_ops(ops)) != CF_OK))
		return rc;
	return modify(p, name, edit_revoke, &g, 0, out);
}

static int
edit_limit(struct store_principal *sp, void *arg)
{
	const struct store_limit *l = arg;
	struct store_limit *nl;

	for (uint32_t i = 0; i < sp->nlimits; i++) {
		if (sp->limits[i].op != l->op)
			continue;
		if (l->rate > 0.0) {
			sp->limits[i] = *l;
		} else {
			memmove(&sp->limits[i], &sp->limits[i + 1],
				(sp->nlimits - i - 1) * sizeof(*nl));
			sp->nlimits--;
		}
		return CF_OK;
	}
	if (l->rate <= 0.0)
		return CF_OK;
	if ((nl = realloc(sp->limits, (sp->nlimits + 1) * sizeof(*nl))) == NULL)
		return cf_nomem();
	sp->limits = nl;
	nl[sp->nlimits++] = *l;
	return CF_OK;
}

int
policy_set_limit(policy *p, const char *name, enum cf_op op, double rate, uint32_t burst,
		 struct store_principal *out)
{
	struct store_limit l = { (uint32_t)op, rate, burst };

	if ((unsigned)op >= CF_OP__COUNT)
		return cf_error(CF_E_INVALID_ARG, "unknown operation %d", (int)op);
	if (!isfinite(rate) || rate < 0.0 || rate > POLICY_RATE_MAX)
		return cf_error(CF_E_INVALID_ARG, "rate must be 0 (remove) .. %.0f per second",
				POLICY_RATE_MAX);
	if (rate > 0.0 && rate < POLICY_RATE_MIN)
		return cf_error(CF_E_INVALID_ARG, "rate must be at least one a day (%.7f per "
				"second), or 0 to remove the limit", POLICY_RATE_MIN);
	if (rate > 0.0 && (burst < 1 || burst > POLICY_RATE_MAX))
		return cf_error(CF_E_INVALID_ARG, "burst must be 1 .. %.0f", POLICY_RATE_MAX);
	return modify(p, name, edit_limit, &l, 1, out);
}

int
policy_delete(policy *p, const char *name, int64_t now, struct store_dropped *dropped)
{
	int found, rc;
	size_t at;

	if ((rc = change_begin(p)) != CF_OK)
		return rc;
	at = find_locked(p, name, &found);   /* (unlocked: see modify) */
	if (!found) {
		rc = cf_error(CF_E_NOT_FOUND, "no principal %s", name);
	} else if ((rc = store_principal_delete(p->st, name, now, dropped)) == CF_OK) {
		pthread_rwlock_wrlock(&p->lock);
		pr_free(p->v[at]);
		memmove(&p->v[at], &p->v[at + 1], (p->n - at - 1) * sizeof(p->v[0]));
		p->n--;
		pthread_rwlock_unlock(&p->lock);
	}
	change_end(p);
	return rc;
}

/* ---- the data path ---- */

int
policy_identify(policy *p, uid_t uid, gid_t gid, char name[STORE_PRINCIPAL_NAME_MAX + 1])
{
	const struct pr *by_gid = NULL;

	pthread_rwlock_rdlock(&p->lock);
	for (size_t i = 0; i < p->n; i++) {
		const struct store_principal *sp = &p->v[i]->sp;

		for (uint32_t k = 0; k < sp->nuids; k++)
			if (sp->uids[k] == (uint32_t)uid) {
				memcpy(name, sp->name, sizeof(sp->name));
				pthread_rwlock_unlock(&p->lock);
				return CF_OK;
			}
		for (uint32_t k = 0; k < sp->ngids && by_gid == NULL; k++)
			if (sp->gids[k] == (uint32_t)gid)
				by_gid = p->v[i];
	}
	if (by_gid != NULL)
		memcpy(name, by_gid->sp.name, sizeof(by_gid->sp.name));
	pthread_rwlock_unlock(&p->lock);
	if (by_gid == NULL)
		return cf_error(CF_E_UNAUTHENTICATED, "no principal for uid %u gid %u; an "
				"administrator adds one with `cofferctl principal create NAME "
				"--uid %u`", (unsigned)uid, (unsigned)gid, (unsigned)uid);
	return CF_OK;
}

/* Seconds until bucket b of limit l has a token (0: it has one now). */
static double
bucket_wait(struct bucket *b, const struct store_limit *l, double t)
{
	b->tokens = level_at(b, l, t);
	b->last = t;
	/* (A rate stored before POLICY_RATE_MIN: its wait capped at a day.) */
	return b->tokens >= 1.0 ? 0.0 : fmin((1.0 - b->tokens) / l->rate, 86400.0);
}

/* Does a grant of r cover op on key? (p->lock held) */
static int
granted_locked(const struct pr *r, enum cf_op op, const char *key)
{
	for (uint32_t i = 0; i < r->sp.ngrants; i++)
		if ((r->sp.grants[i].ops & CF_OP_BIT(op)) != 0 &&
		    fnmatch(r->sp.grants[i].pattern, key, 0) == 0)
			return 1;
	return 0;
}

int
policy_may(policy *p, const char *principal, enum cf_op op, const char *key)
{
	int found, rc = CF_OK;
	size_t at;

	if (cf_key_name_check(key) != CF_OK)
		return cf_error(CF_E_INVALID_ARG, "key name: %s", cf_error_detail());
	pthread_rwlock_rdlock(&p->lock);
	at = find_locked(p, principal, &found);
	if (!found)
		rc = cf_error(CF_E_UNAUTHENTICATED, "principal %s no longer exists", principal);
	else if (!granted_locked(p->v[at], op, key))
		rc = cf_error(CF_E_DENIED, "principal %s may not %s with key %s (no grant)",
			      principal, policy_op_name(op), key);
	pthread_rwlock_unlock(&p->lock);
	return rc;
}

int
policy_authorize(policy *p, const char *principal, enum cf_op op, const char *key,
		 uint32_t key_ops, uint32_t *retry_after_ms, int *own_limit)
{
	uint32_t got;
	int all_ops;

	return policy_authorize_n(p, principal, op, key, key_ops, 1, &got, retry_after_ms,
				  own_limit, &all_ops);
}

void
policy_refund_n(policy *p, const char *principal, enum cf_op op, uint32_t n)
{
	struct pr *r;
	int found;
	size_t at;

	if (n == 0)
		return;
	pthread_rwlock_rdlock(&p->lock);
	at = find_locked(p, principal, &found);
	if (found) {
		r = p->v[at];
		pthread_mutex_lock(&p->bmu);
		for (uint32_t i = 0; i < r->sp.nlimits; i++) {
			const struct store_limit *l = &r->sp.limits[i];
			struct bucket *b = &r->buckets[l->op];

			if (l->op == CF_OP_NONE || l->op == (uint32_t)op)
				b->tokens = fmin((double)l->burst, b->tokens + (double)n);
		}
		pthread_mutex_unlock(&p->bmu);
	}
	pthread_rwlock_unlock(&p->lock);
}

int
policy_authorize_n(policy *p, const char *principal, enum cf_op op, const char *key,
		   uint32_t key_ops, uint32_t want, uint32_t *got, uint32_t *retry_after_ms,
		   int *own_limit, int *by_all_ops)
{
	const struct store_limit *lim[2] = { NULL, NULL };
	struct bucket *bk[2] = { NULL, NULL };
	struct pr *r;
	double wait = 0.0, have = (double)want, t;
	int found, rc = CF_OK;
	size_t at;

	cf_count(CF_COUNT_AUTHORIZE);
	*retry_after_ms = 0;
	*own_limit = 0;
	*by_all_ops = 0;
	*got = 0;
	pthread_rwlock_rdlock(&p->lock);
	at = find_locked(p, principal, &found);
	if (!found) {
		pthread_rwlock_unlock(&p->lock);
		return cf_error(CF_E_UNAUTHENTICATED, "principal %s no longer exists", principal);
	}
	r = p->v[at];
	if (op != CF_OP_NONE && !granted_locked(r, op, key)) {
		pthread_rwlock_unlock(&p->lock);
		return cf_error(CF_E_DENIED, "principal %s may not %s with key %s (no grant)",
				principal, policy_op_name(op), key);
	}
	/* The key's own limit caps every grant. */
	if (op != CF_OP_NONE && key_ops != 0 && !(key_ops & CF_OP_BIT(op))) {
		pthread_rwlock_unlock(&p->lock);
		*own_limit = 1;
		return cf_error(CF_E_DENIED, "key %s does not allow %s (its own limit)", key,
				policy_op_name(op));
	}
	for (uint32_t i = 0; i < r->sp.nlimits; i++) {
		const struct store_limit *l = &r->sp.limits[i];
		int slot = l->op == CF_OP_NONE ? 0 : 1;

		if (l->op == CF_OP_NONE || l->op == (uint32_t)op) {
			lim[slot] = l;
			bk[slot] = &r->buckets[l->op];
		}
	}
	if (lim[0] != NULL || lim[1] != NULL) {
		pthread_mutex_lock(&p->bmu);
		t = (double)cf_mono_ns() / 1e9;
		for (int i = 0; i < 2; i++)
			if (lim[i] != NULL) {
				wait = fmax(wait, bucket_wait(bk[i], lim[i], t));
				/* The bucket that gives fewest names the refusal. */
				if (floor(bk[i]->tokens) < have)
					*by_all_ops = i == 0;
				have = fmin(have, floor(bk[i]->tokens));
			}
		/* Take from every bucket only what all of them have. */
		if (have >= 1.0) {
			for (int i = 0; i < 2; i++)
				if (bk[i] != NULL)
					bk[i]->tokens -= have;
			wait = 0.0;
			/* Some of a batch left out: when the next token comes. */
			if (have < (double)want)
				for (int i = 0; i < 2; i++)
					if (lim[i] != NULL)
						wait = fmax(wait, bucket_wait(bk[i], lim[i], t));
		}
		pthread_mutex_unlock(&p->bmu);
	}
	if (have >= 1.0) {
		*got = (uint32_t)have;
		if (wait > 0.0)
			*retry_after_ms = (uint32_t)ceil(wait * 1000.0);
	} else {
		*retry_after_ms = (uint32_t)ceil(wait * 1000.0);
		/* The principal's limit of all operations says no op. */
		rc = cf_error(CF_E_EXHAUSTED, "rate limit of principal %s%s%s exceeded; retry "
			      "after %u ms", principal, op && !*by_all_ops ? " for " : "",
			      op && !*by_all_ops ? policy_op_name(op) : "", *retry_after_ms);
	}
	pthread_rwlock_unlock(&p->lock);
	return rc;
}
