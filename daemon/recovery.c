/* Start-up recovery and reconciliation: see recovery.h. */
#include "recovery.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_crashpoint.h"
#include "cf_hex.h"
#include "cf_status.h"

struct rec_ctx {
	cf_p11 *p11;
	store *st;
	void (*report)(const char *msg);
	unsigned findings;
	struct store_key *keys;         /* the registry, loaded */
	size_t nkeys, cap;
};

static void
finding(struct rec_ctx *c, const char *msg)
{
	c->findings++;
	if (c->report != NULL)
		c->report(msg);
}

/* An intent outlived its call: remove what that call made (only objects
 * with its CKA_ID: nothing else is proven to be its). */
static int
undo_intent(const struct store_intent *in, void *arg)
{
	struct rec_ctx *c = arg;
	char msg[512];
	unsigned n = 0;
	int r;

	if ((r = cf_p11_objects_destroy(c->p11, in->name, in->version, in->ckaid, &n)) != CF_OK)
		return r;
	/* A crash from here on finds the intent again: its objects are gone. */
	CF_CRASH_POINT("recovery.intent-undone");
	/* Only this intent, once its objects are gone: one recorded meanwhile
	 * (a replica that lost the fleet's lock unawares) stays for its call. */
	if ((r = store_intent_drop(c->st, in->id)) != CF_OK)
		return r;
	snprintf(msg, sizeof(msg), "recovered: the interrupted creation of %s version %u was "
		 "undone (%u token object%s removed)", in->name, in->version, n,
		 n == 1 ? "" : "s");
	finding(c, msg);
	return CF_OK;
}

static int
keep_key(const struct store_key *k, void *arg)
{
	struct rec_ctx *c = arg;
	struct store_key copy = *k;

	if (c->nkeys == c->cap) {
		size_t nc = c->cap ? 2 * c->cap : 16;
		struct store_key *nk = realloc(c->keys, nc * sizeof(*nk));

		if (nk == NULL)
			return cf_nomem();
		c->keys = nk;
		c->cap = nc;
	}
	copy.versions = NULL;
	if (k->nversions > 0) {
		if ((copy.versions = calloc(k->nversions, sizeof(*copy.versions))) == NULL)
			return cf_nomem();
		memcpy(copy.versions, k->versions, k->nversions * sizeof(*copy.versions));
	}
	c->keys[c->nkeys++] = copy;
	return CF_OK;
}

static const struct store_version *
find_version(const struct rec_ctx *c, const char *name, uint32_t version,
	     const struct store_key **key)
{
	for (size_t i = 0; i < c->nkeys; i++) {
		if (strcmp(c->keys[i].name, name) != 0)
			continue;
		*key = &c->keys[i];
		for (uint32_t j = 0; j < c->keys[i].nversions; j++)
			if (c->keys[i].versions[j].version == version)
				return &c->keys[i].versions[j];
		return NULL;
	}
	*key = NULL;
	return NULL;
}

/* Compare the objects of one label (o[0..n)) with the registry. */
static int
check_label(struct rec_ctx *c, const struct cf_p11_object *o, size_t n)
{
	const struct store_key *k;
	const struct store_version *v = find_version(c, o[0].name, o[0].version, &k);
	unsigned own[4] = { 0 }, other = 0, removed = 0, noid = 0;
	char msg[600], hex[2 * STORE_CKAID_LEN + 1];
	int complete, r = CF_OK;

	if (v == NULL) {
		snprintf(msg, sizeof(msg), "token objects of %s version %u (%zu) have no registry "
			 "record; they are not served (left by a Coffer older than intents, or put "
			 "there by someone else): remove them, e.g. with p11tool", o[0].name,
			 o[0].version, n);
		finding(c, msg);
		return CF_OK;
	}
	if (v->state == STORE_DESTROYED) {
		if ((r = cf_p11_objects_destroy(c->p11, o[0].name, o[0].version, NULL,
						&removed)) != CF_OK)
			return r;
		snprintf(msg, sizeof(msg), "repaired: %u token object%s of %s version %u, which "
			 "the registry says was destroyed, removed", removed, removed == 1 ? "" : "s",
			 o[0].name, o[0].version);
		finding(c, msg);
		return CF_OK;
	}
	for (size_t i = 0; i < n; i++) {
		if (o[i].id_len && memcmp(o[i].id, v->ckaid, STORE_CKAID_LEN) == 0)
			own[o[i].cls]++;
		else
			other++;
	}
	complete = cf_key_type_is_asymmetric(k->type) ?
		   own[CF_P11_PRIVATE] == 1 && own[CF_P11_PUBLIC] == 1 && own[CF_P11_SECRET] == 0 :
		   own[CF_P11_SECRET] == 1 && own[CF_P11_PRIVATE] + own[CF_P11_PUBLIC] == 0;
	cf_hex_encode(v->ckaid, STORE_CKAID_LEN, hex);
	if (!complete) {
		/* A destruction cut short leaves half a pair: the sweeper finishes it. */
		if (v->state == STORE_DESTROY_SCHEDULED && v->destroy_time <= time(NULL))
			return CF_OK;
		snprintf(msg, sizeof(msg), "key %s version %u is unusable: the token holds %u "
			 "private, %u public and %u secret object%s with its CKA_ID %s (and %u with "
			 "another id)", o[0].name, o[0].version, own[CF_P11_PRIVATE],
			 own[CF_P11_PUBLIC], own[CF_P11_SECRET],
			 own[1] + own[2] + own[3] == 1 ? "" : "s", hex, other);
		finding(c, msg);
		return CF_OK;
	}
	if (other == 0)
		return CF_OK;
	/* The version's own objects are whole: the others under its label are
	 * not it (their id says so), and would make lookups by label ambiguous.
	 * Removed by their id only: one without a usable id cannot be told
	 * apart from the version's own by anything a destruction can name (by
	 * label alone, it took the live key with it). */
	for (size_t i = 0; i < n && r == CF_OK; i++) {
		unsigned one = 0;

		if (o[i].id_len && memcmp(o[i].id, v->ckaid, STORE_CKAID_LEN) == 0)
			continue;
		if (!o[i].id_len) {
			noid++;
			continue;
		}
		r = cf_p11_objects_destroy(c->p11, o[i].name, o[i].version, o[i].id, &one);
		removed += one;
	}
	if (removed > 0) {
		snprintf(msg, sizeof(msg), "repaired: %u token object%s under the label of %s "
			 "version %u with a CKA_ID other than its own (%s) removed", removed,
			 removed == 1 ? "" : "s", o[0].name, o[0].version, hex);
		finding(c, msg);
	}
	if (noid > 0) {
		snprintf(msg, sizeof(msg), "%u token object%s under the label of %s version %u "
			 "without a CKA_ID of 16 bytes (the version's own is %s): left in place; "
			 "remove %s by hand, e.g. with p11tool", noid, noid == 1 ? "" : "s",
			 o[0].name, o[0].version, hex, noid == 1 ? "it" : "them");
		finding(c, msg);
	}
	return r;
}

/* Served versions without a single object in the token. */
static void
check_missing(struct rec_ctx *c, const struct cf_p11_object *o, size_t n)
{
	char msg[400];

	for (size_t i = 0; i < c->nkeys; i++)
		for (uint32_t j = 0; j < c->keys[i].nversions; j++) {
			const struct store_version *v = &c->keys[i].versions[j];
			struct cf_p11_object want;

			if (v->state == STORE_DESTROYED ||
			    (v->state == STORE_DESTROY_SCHEDULED && v->destroy_time <= time(NULL)))
				continue;
			memset(&want, 0, sizeof(want));
			snprintf(want.name, sizeof(want.name), "%s", c->keys[i].name);
			want.version = v->version;
			if (n > 0 && bsearch(&want, o, n, sizeof(*o), cf_p11_object_cmp) != NULL)
				continue;
			snprintf(msg, sizeof(msg), "key %s version %u is in the registry but missing "
				 "from the token", c->keys[i].name, v->version);
			finding(c, msg);
		}
}

int
recovery_undo_intents(cf_p11 *p11, store *st, void (*report)(const char *msg), unsigned *findings)
{
	struct rec_ctx c;
	int r;

	memset(&c, 0, sizeof(c));
	c.p11 = p11;
	c.st = st;
	c.report = report;
	r = store_intents_load(st, undo_intent, &c);
	if (findings != NULL)
		*findings += c.findings;
	return r;
}

int
recovery_run(cf_p11 *p11, store *st, void (*report)(const char *msg), unsigned *findings)
{
	struct rec_ctx c;
	struct cf_p11_object *o = NULL;
	size_t n = 0, i, j;
	int r;

	memset(&c, 0, sizeof(c));
	c.p11 = p11;
	c.report = report;
	if ((r = recovery_undo_intents(p11, st, report, &c.findings)) != CF_OK ||
	    (r = store_load(st, keep_key, &c)) != CF_OK ||
	    (r = cf_p11_objects(p11, &o, &n)) != CF_OK)
		goto out;
	if (n > 0)
		qsort(o, n, sizeof(*o), cf_p11_object_cmp);
	for (i = 0; i < n && r == CF_OK; i = j) {
		for (j = i + 1; j < n && cf_p11_object_cmp(&o[i], &o[j]) == 0; j++)
			;
		if (strncmp(o[i].name, STORE_RESERVED_PREFIX,
			    strlen(STORE_RESERVED_PREFIX)) != 0)
			r = check_label(&c, &o[i], j - i);
	}
	if (r == CF_OK)
		check_missing(&c, o, n);
out:
	if (findings != NULL)
		*findings += c.findings;
	for (i = 0; i < c.nkeys; i++)
		free(c.keys[i].versions);
	free(c.keys);
	free(o);
	return r;
}
