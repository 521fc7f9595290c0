#include "keyring.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_log.h"
#include "cf_status.h"

struct kr_version {
	struct store_version meta;
	cf_p11_key *k;          /* NULL if the token lacks it */
};

struct kr_key {
	char name[CF_KEY_NAME_MAX + 1];
	enum cf_key_type type;
	int exportable;
	uint32_t allowed_ops;
	uint32_t primary;
	int64_t created;
	struct kr_version *v;   /* ascending by version */
	uint32_t nv, capv;
};

struct keyring {
	cf_p11 *p11;
	store *st;
	pthread_rwlock_t lock;
	pthread_mutex_t write_mu;  /* one create/import/rotate at a time */
	struct kr_key **keys;      /* sorted by name */
	size_t n, cap;
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

const char *
keyring_purpose_name(enum key_purpose p)
{
	return p == PURPOSE_MAC ? "mac" : p == PURPOSE_WRAP ? "wrap" : "sign";
}

void
keyring_info_free(struct key_info *info)
{
	if (info == NULL)
		return;
	free(info->versions);
	info->versions = NULL;
	info->nversions = 0;
}

/* Binary search; returns the index where `name` is or would be. */
static size_t
kr_find(const keyring *kr, const char *name, int *found)
{
	size_t lo = 0, hi = kr->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(kr->keys[mid]->name, name);

		if (c == 0) {
			*found = 1;
			return mid;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = 0;
	return lo;
}

static int
kr_insert(keyring *kr, struct kr_key *k)
{
	int found;
	size_t at = kr_find(kr, k->name, &found);

	if (found)
		return cf_error(CF_E_EXISTS, "key %s already exists", k->name);
	if (kr->n == kr->cap) {
		size_t nc = kr->cap ? kr->cap * 2 : 64;
		struct kr_key **nk = realloc(kr->keys, nc * sizeof(*nk));

		if (nk == NULL)
			return CF_E_NOMEM;
		kr->keys = nk;
		kr->cap = nc;
	}
	memmove(&kr->keys[at + 1], &kr->keys[at], (kr->n - at) * sizeof(*kr->keys));
	kr->keys[at] = k;
	kr->n++;
	return CF_OK;
}

static int
kr_add_version(struct kr_key *k, const struct store_version *meta, cf_p11_key *h)
{
	if (k->nv == k->capv) {
		uint32_t nc = k->capv ? k->capv * 2 : 4;
		struct kr_version *nv = realloc(k->v, nc * sizeof(*nv));

		if (nv == NULL)
			return CF_E_NOMEM;
		k->v = nv;
		k->capv = nc;
	}
	k->v[k->nv].meta = *meta;
	k->v[k->nv].k = h;
	k->nv++;
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

static int
kr_copy_info(const struct kr_key *k, struct key_info *out)
{
	memset(out, 0, sizeof(*out));
	memcpy(out->name, k->name, sizeof(out->name));
	out->type = k->type;
	out->exportable = k->exportable;
	out->allowed_ops = k->allowed_ops;
	out->primary = k->primary;
	out->created = k->created;
	if (k->nv > 0) {
		if ((out->versions = calloc(k->nv, sizeof(*out->versions))) == NULL)
			return CF_E_NOMEM;
		for (uint32_t i = 0; i < k->nv; i++)
			out->versions[i] = k->v[i].meta;
	}
	out->nversions = k->nv;
	return CF_OK;
}

struct load_ctx {
	keyring *kr;
	void (*report)(const char *msg);
	unsigned mismatches;
};

static void
kr_report(struct load_ctx *lc, const char *msg)
{
	lc->mismatches++;
	if (lc->report != NULL)
		lc->report(msg);
}

static int
load_one(const struct store_key *sk, void *arg)
{
	struct load_ctx *lc = arg;
	struct kr_key *k;
	char msg[512];
	int r;

	if ((k = calloc(1, sizeof(*k))) == NULL)
		return CF_E_NOMEM;
	memcpy(k->name, sk->name, sizeof(k->name));
	k->type = sk->type;
	k->exportable = sk->exportable;
	k->allowed_ops = sk->allowed_ops;
	k->primary = sk->primary;
	k->created = sk->created;
	for (uint32_t i = 0; i < sk->nversions; i++) {
		cf_p11_key *h = NULL;

		if (sk->versions[i].state != STORE_DESTROYED) {
			r = cf_p11_key_open(lc->kr->p11, sk->name, sk->versions[i].version, &h);
			if (r == CF_OK && cf_p11_key_type(h) != sk->type) {
				snprintf(msg, sizeof(msg), "key %s version %u: the token object "
					 "is %s, the registry says %s; version unusable", sk->name,
					 sk->versions[i].version,
					 cf_key_type_name(cf_p11_key_type(h)),
					 cf_key_type_name(sk->type));
				kr_report(lc, msg);
				cf_p11_key_free(h);
				h = NULL;
			} else if (r == CF_E_NOT_FOUND) {
				snprintf(msg, sizeof(msg), "key %s version %u is in the registry "
					 "but missing from the token", sk->name,
					 sk->versions[i].version);
				kr_report(lc, msg);
			} else if (r != CF_OK) {
				kr_key_free(k);
				return r;
			}
		}
		if ((r = kr_add_version(k, &sk->versions[i], h)) != CF_OK) {
			cf_p11_key_free(h);
			kr_key_free(k);
			return r;
		}
	}
	if ((r = kr_insert(lc->kr, k)) != CF_OK)
		kr_key_free(k);
	return r;
}

static int
orphan_check(const char *name, uint32_t version, enum cf_key_type type, void *arg)
{
	struct load_ctx *lc = arg;
	char msg[512];
	int found;
	size_t at = kr_find(lc->kr, name, &found);

	(void)type;
	if (strncmp(name, KEYRING_RESERVED_PREFIX, strlen(KEYRING_RESERVED_PREFIX)) == 0)
		return 0;   /* the daemon's own keys (identity) */
	if (found) {
		const struct kr_key *k = lc->kr->keys[at];

		for (uint32_t i = 0; i < k->nv; i++)
			if (k->v[i].meta.version == version)
				return 0;
	}
	snprintf(msg, sizeof(msg), "token object %s version %u has no registry record (left "
		 "by an interrupted create?); it is not served", name, version);
	kr_report(lc, msg);
	return 0;
}

int
keyring_open(cf_p11 *p11, store *st, void (*report)(const char *msg), unsigned *mismatches,
	     keyring **out)
{
	struct load_ctx lc = { NULL, report, 0 };
	keyring *kr;
	int r;

	if ((kr = calloc(1, sizeof(*kr))) == NULL)
		return CF_E_NOMEM;
	kr->p11 = p11;
	kr->st = st;
	pthread_rwlock_init(&kr->lock, NULL);
	pthread_mutex_init(&kr->write_mu, NULL);
	lc.kr = kr;
	if ((r = store_load(st, load_one, &lc)) != CF_OK ||
	    (r = cf_p11_key_list(p11, orphan_check, &lc)) != CF_OK) {
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
	pthread_rwlock_destroy(&kr->lock);
	pthread_mutex_destroy(&kr->write_mu);
	free(kr);
}

static int64_t
now_unix(void)
{
	return (int64_t)time(NULL);
}

/* A new version in the token. adopt: the call resumes one that died after
 * making this very version and before recording it (an idempotency record
 * says so), so an unrecorded object there is taken over instead of making
 * a second one; otherwise such an object is a conflict (CF_E_EXISTS). */
static int
generate_or_adopt(keyring *kr, const char *name, uint32_t version, enum cf_key_type type,
		  unsigned flags, int adopt, cf_p11_key **h)
{
	int r = cf_p11_key_generate(kr->p11, name, version, type, flags, h);

	if (r != CF_E_EXISTS || !adopt)
		return r;
	if ((r = cf_p11_key_open(kr->p11, name, version, h)) != CF_OK)
		return r;
	if (cf_p11_key_type(*h) != type) {
		cf_p11_key_free(*h);
		*h = NULL;
		return cf_error(CF_E_EXISTS, "the token holds an unrecorded %s version %u of another "
				"type; remove it or use another name", name, version);
	}
	cf_log_warn("keyring: adopted %s version %u, left in the token by a call that did not "
		    "finish", name, version);
	return CF_OK;
}

static int
kr_make(keyring *kr, const char *name, enum cf_key_type type, int exportable,
	uint32_t allowed_ops, const cf_secret *material, int adopt, struct key_info *out)
{
	struct store_version meta = { 1, STORE_ENABLED, now_unix() };
	unsigned flags = exportable ? CF_P11_EXPORTABLE : 0;
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
	if (exportable && cf_key_type_is_asymmetric(type))
		return cf_error(CF_E_INVALID_ARG, "only HMAC and AES keys can be exportable");
	pthread_mutex_lock(&kr->write_mu);
	pthread_rwlock_rdlock(&kr->lock);
	kr_find(kr, name, &found);
	pthread_rwlock_unlock(&kr->lock);
	if (found) {
		r = cf_error(CF_E_EXISTS, "key %s already exists", name);
		goto out;
	}
	r = material ? cf_p11_key_import(kr->p11, name, 1, type, material, flags, &h) :
		       generate_or_adopt(kr, name, 1, type, flags, adopt, &h);
	if (r != CF_OK)
		goto out;
	if ((r = store_key_create(kr->st, name, type, exportable, allowed_ops, meta.created)) !=
	    CF_OK) {
		/* Not recorded: take the new object out of the token again. */
		(void)cf_p11_key_destroy(h);
		goto out;
	}
	if ((k = calloc(1, sizeof(*k))) == NULL) {
		r = CF_E_NOMEM;
		goto out;
	}
	snprintf(k->name, sizeof(k->name), "%s", name);
	k->type = type;
	k->exportable = exportable;
	k->allowed_ops = allowed_ops;
	k->primary = 1;
	k->created = meta.created;
	if ((r = kr_add_version(k, &meta, h)) != CF_OK)
		goto out;
	h = NULL;
	pthread_rwlock_wrlock(&kr->lock);
	r = kr_insert(kr, k);
	if (r == CF_OK)
		r = kr_copy_info(k, out);
	pthread_rwlock_unlock(&kr->lock);
	if (r == CF_OK)
		k = NULL;
out:
	pthread_mutex_unlock(&kr->write_mu);
	kr_key_free(k);
	cf_p11_key_free(h);
	return r;
}

int
keyring_create(keyring *kr, const char *name, enum cf_key_type type, int exportable,
	       uint32_t allowed_ops, int adopt, struct key_info *out)
{
	return kr_make(kr, name, type, exportable, allowed_ops, NULL, adopt, out);
}

int
keyring_import(keyring *kr, const char *name, enum cf_key_type type,
	       const cf_secret *material, int exportable, uint32_t allowed_ops,
	       struct key_info *out)
{
	if (cf_key_type_is_asymmetric(type))
		return cf_error(CF_E_INVALID_ARG, "only HMAC and AES keys can be imported");
	return kr_make(kr, name, type, exportable, allowed_ops, material, 0, out);
}

int
keyring_allowed_ops(keyring *kr, const char *name, uint32_t *ops)
{
	int found;
	size_t at;

	pthread_rwlock_rdlock(&kr->lock);
	at = kr_find(kr, name, &found);
	if (found)
		*ops = kr->keys[at]->allowed_ops;
	pthread_rwlock_unlock(&kr->lock);
	return found ? CF_OK : CF_E_NOT_FOUND;
}

int
keyring_rotate(keyring *kr, const char *name, int adopt, struct key_info *out)
{
	struct store_version meta = { 0, STORE_ENABLED, now_unix() };
	struct kr_key *k;
	cf_p11_key *h = NULL;
	int found, r;
	size_t at;

	if ((r = cf_key_name_check(name)) != CF_OK)
		return r;
	pthread_mutex_lock(&kr->write_mu);
	pthread_rwlock_rdlock(&kr->lock);
	at = kr_find(kr, name, &found);
	k = found ? kr->keys[at] : NULL;
	/* Safe to read after unlock: only writers (we hold write_mu) change it. */
	if (k != NULL)
		meta.version = k->v[k->nv - 1].meta.version + 1;
	pthread_rwlock_unlock(&kr->lock);
	if (k == NULL) {
		r = cf_error(CF_E_NOT_FOUND, "key %s does not exist", name);
		goto out;
	}
	if (meta.version > CF_KEY_VERSION_MAX) {
		r = cf_error(CF_E_EXHAUSTED, "key %s has reached the version limit", name);
		goto out;
	}
	r = generate_or_adopt(kr, name, meta.version, k->type,
			      k->exportable && !cf_key_type_is_asymmetric(k->type) ?
			      CF_P11_EXPORTABLE : 0, adopt, &h);
	if (r != CF_OK)
		goto out;
	if ((r = store_version_add(kr->st, name, meta.version, meta.created)) != CF_OK) {
		(void)cf_p11_key_destroy(h);
		goto out;
	}
	pthread_rwlock_wrlock(&kr->lock);
	if ((r = kr_add_version(k, &meta, h)) == CF_OK) {
		h = NULL;
		k->primary = meta.version;
		r = kr_copy_info(k, out);
	}
	pthread_rwlock_unlock(&kr->lock);
out:
	pthread_mutex_unlock(&kr->write_mu);
	cf_p11_key_free(h);
	return r;
}

int
keyring_describe(keyring *kr, const char *name, struct key_info *out)
{
	int found, r;
	size_t at;

	pthread_rwlock_rdlock(&kr->lock);
	at = kr_find(kr, name, &found);
	r = found ? kr_copy_info(kr->keys[at], out) :
		    cf_error(CF_E_NOT_FOUND, "key %s does not exist", name);
	pthread_rwlock_unlock(&kr->lock);
	return r;
}

int
keyring_list(keyring *kr, const char *after, uint32_t max, struct key_info **out, uint32_t *n,
	     int *more)
{
	struct key_info *infos = NULL;
	uint32_t count = 0;
	int found, r = CF_OK;
	size_t at;

	pthread_rwlock_rdlock(&kr->lock);
	at = kr_find(kr, after, &found);
	if (found)
		at++;
	if (max > 0 && (infos = calloc(max, sizeof(*infos))) == NULL) {
		r = CF_E_NOMEM;
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

int
keyring_use(keyring *kr, const char *name, uint32_t version, enum key_purpose purpose,
	    cf_p11_key **key, uint32_t *used_version)
{
	const struct kr_key *k;
	const struct kr_version *v = NULL;
	int found, r = CF_OK;
	size_t at;

	pthread_rwlock_rdlock(&kr->lock);
	at = kr_find(kr, name, &found);
	if (!found) {
		r = cf_error(CF_E_NOT_FOUND, "key %s does not exist", name);
		goto out;
	}
	k = kr->keys[at];
	if (keyring_purpose(k->type) != purpose) {
		r = cf_error(CF_E_WRONG_KEY_TYPE, "key %s is a %s key (%s); this operation needs "
			     "a %s key", name, keyring_purpose_name(keyring_purpose(k->type)),
			     cf_key_type_name(k->type), keyring_purpose_name(purpose));
		goto out;
	}
	if (version == 0)
		version = k->primary;
	for (uint32_t i = 0; i < k->nv; i++)
		if (k->v[i].meta.version == version)
			v = &k->v[i];
	if (v == NULL) {
		r = cf_error(CF_E_NOT_FOUND, "key %s has no version %u", name, version);
		goto out;
	}
	if (v->meta.state != STORE_ENABLED || v->k == NULL) {
		r = cf_error(CF_E_PRECONDITION, "key %s version %u is not enabled", name, version);
		goto out;
	}
	*key = v->k;
	*used_version = version;
out:
	pthread_rwlock_unlock(&kr->lock);
	return r;
}
