/*
 * test_policy — daemon/policy.c over a real state store: principals and
 * their ids, grants (names and globs) and revocation, deny by default,
 * policy_may against policy_authorize, token-bucket rate limits (per principal
 * and per operation, refill, retry-after, removal, bounds), a principal
 * deleted under a caller, what survives a reopen, what a reload keeps, and
 * the key's own limit
 * (keyring_ref_allowed_ops) on a key in the test token. Every refusal is checked
 * for its status and its text.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <sqlite3.h>

#include "cf_status.h"
#include "cf_test_token.h"
#include "keyring.h"
#include "policy.h"
#include "store.h"

#define B(op) CF_OP_BIT(CF_OP_##op)

static struct cf_test_token tok;
static cf_p11 *p11;

static int
suite_init(void)
{
	return cf_test_p11_setup(&tok, "coffer-policy", &p11);
}

static int
suite_clean(void)
{
	cf_test_p11_teardown(&tok, p11);
	return 0;
}

/* A fresh state directory <token dir>/<name> with its store and policy. */
static void
open_fresh(const char *name, char dir[400], store **st, policy **p)
{
	snprintf(dir, 400, "%s/%s", tok.dir, name);
	CU_ASSERT_FATAL(mkdir(dir, 0700) == 0);
	CHECK_OK(store_open(dir, st));
	CHECK_OK(policy_open(*st, p));
}

/* Principal "app" (uid) with a grant of ops on pattern. */
static void
app_granted(policy *p, uint32_t uid, const char *pattern, uint32_t ops)
{
	CHECK_OK(policy_create(p, "app", &uid, 1, NULL, 0, NULL));
	CHECK_OK(policy_grant(p, "app", pattern, ops, NULL));
}

static void
sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) != 0)
		;
}

/* policy_authorize for a key without its own limit. */
static int
authorize(policy *p, const char *who, enum cf_op op, const char *key, uint32_t *ra)
{
	int own = -1;
	int r = policy_authorize(p, who, op, key, 0, ra, &own);

	CU_ASSERT_EQUAL(own, 0);
	return r;
}

/* n calls of "app" (op on key) that must be granted, then one more: its
 * status, for the caller to check as the refusal it expects. */
static int
then_next(policy *p, enum cf_op op, const char *key, unsigned n, uint32_t *ra)
{
	for (unsigned i = 0; i < n; i++)
		CU_ASSERT_EQUAL(authorize(p, "app", op, key, ra), CF_OK);
	return authorize(p, "app", op, key, ra);
}

static void
test_op_names(void)
{
	CU_ASSERT_STRING_EQUAL(policy_op_name(CF_OP_NONE), "all");
	CU_ASSERT_STRING_EQUAL(policy_op_name(CF_OP_SIGN), "sign");
	CU_ASSERT_STRING_EQUAL(policy_op_name(CF_OP_VERIFY_MAC), "verify-mac");
	CU_ASSERT_STRING_EQUAL(policy_op_name(CF_OP_GET_PUBLIC_KEY), "get-public-key");
	CU_ASSERT_STRING_EQUAL(policy_op_name(CF_OP__COUNT), "?");
	CU_ASSERT_EQUAL(CF_OPS_ALL & 1u, 0);   /* "all" is no grantable operation */
}

static void
test_create(void)
{
	uint32_t ids[STORE_PRINCIPAL_IDS_MAX + 1], u1000 = 1000, u1001 = 1001, g50 = 50;
	char dir[400], n65[66], n129[130];
	struct store_principal sp, *list = NULL;
	store *st;
	policy *p;
	size_t n;

	open_fresh("create", dir, &st, &p);
	for (unsigned i = 0; i <= STORE_PRINCIPAL_IDS_MAX; i++)
		ids[i] = 20000 + i;
	memset(n65, 'a', 65);
	n65[65] = '\0';
	memset(n129, 'a', 129);
	n129[129] = '\0';
	/* bad names */
	CHECK_ERR(policy_create(p, "", &u1000, 1, NULL, 0, NULL), CF_E_INVALID_ARG,
		  "principal name must be 1..64 of a-z 0-9 . _ -, starting with a letter or digit");
	CHECK_ERR(policy_create(p, "App", &u1000, 1, NULL, 0, NULL), CF_E_INVALID_ARG,
		  "principal name must be 1..64 of a-z 0-9 . _ -");
	CHECK_ERR(policy_create(p, "-app", &u1000, 1, NULL, 0, NULL), CF_E_INVALID_ARG,
		  "starting with a letter or digit");
	CHECK_ERR(policy_create(p, "a/b", &u1000, 1, NULL, 0, NULL), CF_E_INVALID_ARG,
		  "principal name must be");
	CHECK_ERR(policy_create(p, n65, &u1000, 1, NULL, 0, NULL), CF_E_INVALID_ARG,
		  "principal name longer than 64 characters");
	CHECK_ERR(policy_create(p, n129, &u1000, 1, NULL, 0, NULL), CF_E_INVALID_ARG,
		  "principal name must be 1..64");
	n65[64] = '\0';   /* 64 is the limit, not over it */
	CHECK_OK(policy_create(p, n65, &u1001, 1, NULL, 0, NULL));
	/* ids: none, too many */
	CHECK_ERR(policy_create(p, "app", NULL, 0, NULL, 0, NULL), CF_E_INVALID_ARG,
		  "a principal needs at least one uid or gid");
	CHECK_ERR(policy_create(p, "app", ids, STORE_PRINCIPAL_IDS_MAX + 1, NULL, 0, NULL),
		  CF_E_INVALID_ARG, "at most 64 uids and 64 gids per principal");
	CHECK_ERR(policy_create(p, "app", &u1000, 1, ids, STORE_PRINCIPAL_IDS_MAX + 1, NULL),
		  CF_E_INVALID_ARG, "at most 64 uids and 64 gids per principal");
	CHECK_OK(policy_create(p, "many", ids, STORE_PRINCIPAL_IDS_MAX, NULL, 0, &sp));
	CU_ASSERT_EQUAL(sp.nuids, STORE_PRINCIPAL_IDS_MAX);
	CU_ASSERT_EQUAL(sp.uids[63], 20063);
	policy_principal_free(&sp);
	/* the one that works, and its copy */
	CHECK_OK(policy_create(p, "app", &u1000, 1, &g50, 1, &sp));
	CU_ASSERT_STRING_EQUAL(sp.name, "app");
	CU_ASSERT(sp.nuids == 1 && sp.uids[0] == 1000 && sp.ngids == 1 && sp.gids[0] == 50);
	CU_ASSERT(sp.ngrants == 0 && sp.nlimits == 0 && sp.created > 0);
	policy_principal_free(&sp);
	/* taken: the name, a uid, a gid */
	CHECK_ERR(policy_create(p, "app", &u1001, 1, NULL, 0, NULL), CF_E_EXISTS,
		  "principal app already exists");
	CHECK_ERR(policy_create(p, "other", &u1000, 1, NULL, 0, NULL), CF_E_EXISTS,
		  "uid 1000 belongs to principal app (a uid or gid names one principal)");
	CHECK_ERR(policy_create(p, "other", NULL, 0, &g50, 1, NULL), CF_E_EXISTS,
		  "gid 50 belongs to principal app (a uid or gid names one principal)");
	CHECK_ERR(policy_create(p, "other", &ids[5], 1, NULL, 0, NULL), CF_E_EXISTS,
		  "uid 20005 belongs to principal many (a uid or gid names one principal)");
	/* a refused create leaves nothing, in memory or in the store */
	CHECK_ERR(policy_get(p, "other", NULL), CF_E_NOT_FOUND, "no principal other");
	/* uids and gids are separate spaces: uid 50 is free */
	CHECK_OK(policy_create(p, "uid50", &g50, 1, NULL, 0, NULL));
	CHECK_OK(policy_list(p, &list, &n));
	CU_ASSERT_EQUAL_FATAL(n, 4);   /* by name */
	CU_ASSERT_STRING_EQUAL(list[0].name, n65);
	CU_ASSERT_STRING_EQUAL(list[1].name, "app");
	CU_ASSERT_STRING_EQUAL(list[2].name, "many");
	CU_ASSERT_STRING_EQUAL(list[3].name, "uid50");
	policy_list_free(list, n);
	policy_close(p);
	CHECK_OK(policy_open(st, &p));
	CHECK_ERR(policy_get(p, "other", NULL), CF_E_NOT_FOUND, "no principal other");
	CHECK_OK(policy_get(p, "app", NULL));
	CHECK_OK(policy_list(p, &list, &n));
	CU_ASSERT_EQUAL(n, 4);
	policy_list_free(list, n);
	policy_close(p);
	store_close(st);
}

static void
test_identify(void)
{
	uint32_t g50 = 50, g60 = 60, u1000 = 1000, u2000 = 2000;
	char dir[400], who[STORE_PRINCIPAL_NAME_MAX + 1];
	store *st;
	policy *p;

	open_fresh("identify", dir, &st, &p);
	/* "aaa" sorts first and holds the gid; "zzz" holds the uid */
	CHECK_OK(policy_create(p, "aaa", NULL, 0, &g50, 1, NULL));
	CHECK_OK(policy_create(p, "zzz", &u1000, 1, NULL, 0, NULL));
	CHECK_OK(policy_create(p, "both", &u2000, 1, &g60, 1, NULL));
	CHECK_OK(policy_identify(p, 1000, 50, who));
	CU_ASSERT_STRING_EQUAL(who, "zzz");   /* the uid wins over an earlier gid match */
	CHECK_OK(policy_identify(p, 7, 50, who));
	CU_ASSERT_STRING_EQUAL(who, "aaa");
	CHECK_OK(policy_identify(p, 2000, 50, who));
	CU_ASSERT_STRING_EQUAL(who, "both");
	CHECK_OK(policy_identify(p, 7, 60, who));
	CU_ASSERT_STRING_EQUAL(who, "both");
	CHECK_ERR(policy_identify(p, 7, 8, who), CF_E_UNAUTHENTICATED,
		  "no principal for uid 7 gid 8; an administrator adds one with `cofferctl "
		  "principal create NAME --uid 7`");
	/* a uid is not looked up among gids, nor a gid among uids */
	CHECK_ERR(policy_identify(p, 50, 1000, who), CF_E_UNAUTHENTICATED,
		  "no principal for uid 50 gid 1000");
	policy_close(p);
	store_close(st);
}

static void
test_grants(void)
{
	uint32_t u = 3000, u2 = 3001;
	struct store_principal sp;
	char dir[400];
	store *st;
	policy *p;

	open_fresh("grants", dir, &st, &p);
	CHECK_OK(policy_create(p, "app", &u, 1, NULL, 0, NULL));
	CHECK_OK(policy_create(p, "nobody", &u2, 1, NULL, 0, NULL));
	/* deny by default */
	CHECK_ERR(policy_may(p, "app", CF_OP_SIGN, "db-main"), CF_E_DENIED,
		  "principal app may not sign with key db-main (no grant)");
	/* refused grants */
	CHECK_ERR(policy_grant(p, "app", "DB-*", B(SIGN), NULL), CF_E_INVALID_ARG,
		  "key pattern character 1 is not one of a-z 0-9 . _ - * ?");
	CHECK_ERR(policy_grant(p, "app", "db[ab]", B(SIGN), NULL), CF_E_INVALID_ARG,
		  "key pattern character 3 is not one of");
	CHECK_ERR(policy_grant(p, "app", "", B(SIGN), NULL), CF_E_INVALID_ARG,
		  "key pattern must be 1..128 characters");
	CHECK_ERR(policy_grant(p, "app", "db-*", 0, NULL), CF_E_INVALID_ARG,
		  "operations missing or unknown");
	CHECK_ERR(policy_grant(p, "app", "db-*", CF_OP_BIT(CF_OP_NONE), NULL),
		  CF_E_INVALID_ARG, "operations missing or unknown");
	CHECK_ERR(policy_grant(p, "app", "db-*", CF_OP_BIT(CF_OP__COUNT), NULL),
		  CF_E_INVALID_ARG, "operations missing or unknown");
	CHECK_ERR(policy_grant(p, "ghost", "db-*", B(SIGN), NULL), CF_E_NOT_FOUND,
		  "no principal ghost");
	/* an exact name, a * glob, a ? glob */
	CHECK_OK(policy_grant(p, "app", "db-*", B(SIGN), NULL));
	CHECK_OK(policy_grant(p, "app", "exact-key", B(SIGN) | B(VERIFY), NULL));
	CHECK_OK(policy_grant(p, "app", "k?", B(MAC), &sp));
	CU_ASSERT_EQUAL(sp.ngrants, 3);
	policy_principal_free(&sp);
	CHECK_OK(policy_may(p, "app", CF_OP_SIGN, "db-main"));
	CHECK_OK(policy_may(p, "app", CF_OP_SIGN, "db-"));   /* * matches nothing too */
	CHECK_OK(policy_may(p, "app", CF_OP_SIGN, "db-a.b_c"));
	CHECK_ERR(policy_may(p, "app", CF_OP_VERIFY, "db-main"), CF_E_DENIED,
		  "principal app may not verify with key db-main (no grant)");
	CHECK_ERR(policy_may(p, "app", CF_OP_SIGN, "dbx-main"), CF_E_DENIED,
		  "principal app may not sign with key dbx-main (no grant)");
	CHECK_ERR(policy_may(p, "app", CF_OP_SIGN, "xdb-main"), CF_E_DENIED, "(no grant)");
	CHECK_OK(policy_may(p, "app", CF_OP_VERIFY, "exact-key"));
	CHECK_ERR(policy_may(p, "app", CF_OP_VERIFY, "exact-keys"), CF_E_DENIED,
		  "principal app may not verify with key exact-keys (no grant)");
	CHECK_ERR(policy_may(p, "app", CF_OP_VERIFY, "exact-ke"), CF_E_DENIED, "(no grant)");
	CHECK_OK(policy_may(p, "app", CF_OP_MAC, "k1"));
	CHECK_ERR(policy_may(p, "app", CF_OP_MAC, "k"), CF_E_DENIED,
		  "principal app may not mac with key k (no grant)");
	CHECK_ERR(policy_may(p, "app", CF_OP_MAC, "k12"), CF_E_DENIED, "(no grant)");
	CHECK_ERR(policy_may(p, "app", CF_OP_WRAP, "k1"), CF_E_DENIED,
		  "principal app may not wrap with key k1 (no grant)");
	/* grants are the principal's own */
	CHECK_ERR(policy_may(p, "nobody", CF_OP_SIGN, "db-main"), CF_E_DENIED,
		  "principal nobody may not sign with key db-main (no grant)");
	/* a second grant on the same pattern adds operations */
	CHECK_OK(policy_grant(p, "app", "db-*", B(VERIFY) | B(GET_PUBLIC_KEY), &sp));
	CU_ASSERT_EQUAL(sp.ngrants, 3);
	CU_ASSERT_STRING_EQUAL(sp.grants[0].pattern, "db-*");
	CU_ASSERT_EQUAL(sp.grants[0].ops, B(SIGN) | B(VERIFY) | B(GET_PUBLIC_KEY));
	policy_principal_free(&sp);
	CHECK_OK(policy_may(p, "app", CF_OP_VERIFY, "db-main"));
	/* key names no key can have, and unknown principals */
	CHECK_ERR(policy_may(p, "app", CF_OP_SIGN, "DB-main"), CF_E_INVALID_ARG,
		  "key name: key name must start with a lower-case letter or digit");
	CHECK_ERR(policy_may(p, "app", CF_OP_SIGN, ""), CF_E_INVALID_ARG,
		  "key name: key name is empty");
	CHECK_ERR(policy_may(p, "ghost", CF_OP_SIGN, "db-main"), CF_E_UNAUTHENTICATED,
		  "principal ghost no longer exists");

	/* revoke some operations */
	CHECK_OK(policy_revoke(p, "app", "exact-key", B(SIGN), &sp));
	CU_ASSERT_EQUAL(sp.ngrants, 3);
	policy_principal_free(&sp);
	CHECK_ERR(policy_may(p, "app", CF_OP_SIGN, "exact-key"), CF_E_DENIED,
		  "principal app may not sign with key exact-key (no grant)");
	CHECK_OK(policy_may(p, "app", CF_OP_VERIFY, "exact-key"));
	/* revoking the last operation removes the grant */
	CHECK_OK(policy_revoke(p, "app", "exact-key", B(VERIFY), &sp));
	CU_ASSERT_EQUAL(sp.ngrants, 2);
	policy_principal_free(&sp);
	CHECK_ERR(policy_revoke(p, "app", "exact-key", B(VERIFY), NULL), CF_E_NOT_FOUND,
		  "principal app has no grant for exact-key");
	/* revoke all of a pattern's operations (0) */
	CHECK_OK(policy_revoke(p, "app", "k?", 0, &sp));
	CU_ASSERT_EQUAL(sp.ngrants, 1);
	policy_principal_free(&sp);
	CHECK_ERR(policy_may(p, "app", CF_OP_MAC, "k1"), CF_E_DENIED, "(no grant)");
	/* a pattern is revoked as written, not by what it matches */
	CHECK_ERR(policy_revoke(p, "app", "db-main", 0, NULL), CF_E_NOT_FOUND,
		  "principal app has no grant for db-main");
	CHECK_OK(policy_may(p, "app", CF_OP_SIGN, "db-main"));
	CHECK_ERR(policy_revoke(p, "app", "nothing-*", B(SIGN), NULL), CF_E_NOT_FOUND,
		  "principal app has no grant for nothing-*");
	CHECK_ERR(policy_revoke(p, "app", "Bad", 0, NULL), CF_E_INVALID_ARG,
		  "key pattern character 1 is not one of");
	CHECK_ERR(policy_revoke(p, "app", "db-*", CF_OP_BIT(CF_OP__COUNT), NULL),
		  CF_E_INVALID_ARG, "operations missing or unknown");
	CHECK_ERR(policy_revoke(p, "ghost", "db-*", 0, NULL), CF_E_NOT_FOUND,
		  "no principal ghost");
	/* a grant for everything */
	CHECK_OK(policy_grant(p, "nobody", "*", CF_OPS_ALL, NULL));
	for (int op = CF_OP_SIGN; op < CF_OP__COUNT; op++)
		CHECK_OK(policy_may(p, "nobody", (enum cf_op)op, "any.key_1-x"));
	policy_close(p);
	store_close(st);
}

/* policy_may takes no token; policy_authorize does, and only for a granted call. */
static void
test_may_and_check(void)
{
	uint32_t u = 4000, ra = 99;
	char dir[400];
	store *st;
	policy *p;

	open_fresh("may", dir, &st, &p);
	app_granted(p, u, "k", B(SIGN));
	CHECK_OK(policy_set_limit(p, "app", CF_OP_NONE, 0.01, 2, NULL));
	for (int i = 0; i < 20; i++)
		CHECK_OK(policy_may(p, "app", CF_OP_SIGN, "k"));
	/* refusals before the limits take nothing either */
	CHECK_ERR(authorize(p, "app", CF_OP_VERIFY, "k", &ra), CF_E_DENIED,
		  "principal app may not verify with key k (no grant)");
	CU_ASSERT_EQUAL(ra, 0);
	/* names are checked once, by dispatch, before policy_authorize; policy_may
	 * (ListKeys filtering) checks its own */
	CHECK_ERR(policy_may(p, "app", CF_OP_SIGN, "K"), CF_E_INVALID_ARG,
		  "key name must start with a lower-case letter or digit");
	CHECK_ERR(authorize(p, "ghost", CF_OP_SIGN, "k", &ra), CF_E_UNAUTHENTICATED,
		  "principal ghost no longer exists");
	CHECK_OK(authorize(p, "app", CF_OP_SIGN, "k", &ra));
	CU_ASSERT_EQUAL(ra, 0);
	CHECK_OK(authorize(p, "app", CF_OP_SIGN, "k", &ra));
	/* (its only limit is of all operations: the refusal names none) */
	CHECK_ERR(authorize(p, "app", CF_OP_SIGN, "k", &ra), CF_E_EXHAUSTED,
		  "rate limit of principal app exceeded; retry after ");
	CU_ASSERT(ra > 0);
	/* exhausted, policy_may still answers */
	CHECK_OK(policy_may(p, "app", CF_OP_SIGN, "k"));
	policy_close(p);
	store_close(st);
}

static void
test_rate_limits(void)
{
	uint32_t u[3] = { 5000, 5001, 5002 }, ra = 0;
	struct store_principal sp;
	char dir[400], want[200];
	store *st;
	policy *p;

	open_fresh("rates", dir, &st, &p);
	CHECK_OK(policy_create(p, "fast", &u[0], 1, NULL, 0, NULL));
	CHECK_OK(policy_create(p, "perop", &u[1], 1, NULL, 0, NULL));
	CHECK_OK(policy_create(p, "slow", &u[2], 1, NULL, 0, NULL));
	CHECK_OK(policy_grant(p, "fast", "*", CF_OPS_ALL, NULL));
	CHECK_OK(policy_grant(p, "perop", "*", CF_OPS_ALL, NULL));
	CHECK_OK(policy_grant(p, "slow", "*", CF_OPS_ALL, NULL));

	/* bounds */
	CHECK_ERR(policy_set_limit(p, "fast", CF_OP__COUNT, 1, 1, NULL), CF_E_INVALID_ARG,
		  "unknown operation 10");
	CHECK_ERR(policy_set_limit(p, "fast", CF_OP_NONE, -1, 1, NULL), CF_E_INVALID_ARG,
		  "rate must be 0 (remove) .. 1000000 per second");
	CHECK_ERR(policy_set_limit(p, "fast", CF_OP_NONE, POLICY_RATE_MAX * 1.001, 1, NULL),
		  CF_E_INVALID_ARG, "rate must be 0 (remove) .. 1000000 per second");
	CHECK_ERR(policy_set_limit(p, "fast", CF_OP_NONE, NAN, 1, NULL), CF_E_INVALID_ARG,
		  "rate must be 0 (remove)");
	CHECK_ERR(policy_set_limit(p, "fast", CF_OP_NONE, INFINITY, 1, NULL),
		  CF_E_INVALID_ARG, "rate must be 0 (remove)");
	/* Slower than one a day: the retry-after would not fit its 32 bits. */
	CHECK_ERR(policy_set_limit(p, "fast", CF_OP_NONE, 1e-7, 1, NULL), CF_E_INVALID_ARG,
		  "rate must be at least one a day (0.0000116 per second), or 0 to remove the "
		  "limit");
	CHECK_ERR(policy_set_limit(p, "fast", CF_OP_NONE, 5e-324, 1, NULL), CF_E_INVALID_ARG,
		  "rate must be at least one a day");
	CHECK_ERR(policy_set_limit(p, "fast", CF_OP_NONE, 1, 0, NULL), CF_E_INVALID_ARG,
		  "burst must be 1 .. 1000000");
	CHECK_ERR(policy_set_limit(p, "fast", CF_OP_NONE, 1, 1000001, NULL),
		  CF_E_INVALID_ARG, "burst must be 1 .. 1000000");
	CHECK_ERR(policy_set_limit(p, "ghost", CF_OP_NONE, 1, 1, NULL), CF_E_NOT_FOUND,
		  "no principal ghost");
	CHECK_OK(policy_set_limit(p, "fast", CF_OP_NONE, POLICY_RATE_MAX, 1000000, NULL));
	CHECK_OK(policy_set_limit(p, "fast", CF_OP_SIGN, 0, 0, NULL)); /* none to remove */

	/* a principal's limit: burst 3, 10 per second */
	CHECK_OK(policy_set_limit(p, "fast", CF_OP_NONE, 10, 3, &sp));
	CU_ASSERT_EQUAL(sp.nlimits, 1);
	CU_ASSERT(sp.limits[0].op == CF_OP_NONE && sp.limits[0].rate == 10 &&
		  sp.limits[0].burst == 3);
	policy_principal_free(&sp);
	for (int i = 0; i < 3; i++)
		CHECK_OK(authorize(p, "fast", i == 2 ? CF_OP_VERIFY : CF_OP_SIGN, "k",
				      &ra));
	ra = 0;
	CHECK_ERR(authorize(p, "fast", CF_OP_MAC, "k", &ra), CF_E_EXHAUSTED,
		  "rate limit of principal fast exceeded; retry after ");
	/* one token at 10/s: at most 100 ms away */
	CU_ASSERT(ra >= 1 && ra <= 100);
	snprintf(want, sizeof(want), "rate limit of principal fast exceeded; retry after "
		 "%u ms", (unsigned)ra);
	CU_ASSERT_STRING_EQUAL(cf_error_message(CF_E_EXHAUSTED), want);
	/* the overall limit alone (op NONE needs no key) */
	CHECK_ERR(authorize(p, "fast", CF_OP_NONE, "", &ra), CF_E_EXHAUSTED,
		  "rate limit of principal fast exceeded; retry after ");
	sleep_ms(ra + 10);
	CHECK_OK(authorize(p, "fast", CF_OP_SIGN, "k", &ra));
	CU_ASSERT_EQUAL(ra, 0);
	/* refill stops at the burst: after 500 ms (5 tokens' worth) only 3 */
	sleep_ms(500);
	for (int i = 0; i < 3; i++)
		CHECK_OK(authorize(p, "fast", CF_OP_SIGN, "k", &ra));
	CHECK_ERR(authorize(p, "fast", CF_OP_SIGN, "k", &ra), CF_E_EXHAUSTED,
		  "rate limit of principal fast exceeded");
	/* rate 0 removes it */
	CHECK_OK(policy_set_limit(p, "fast", CF_OP_NONE, 0, 0, &sp));
	CU_ASSERT_EQUAL(sp.nlimits, 0);
	policy_principal_free(&sp);
	for (int i = 0; i < 50; i++)
		CHECK_OK(authorize(p, "fast", CF_OP_SIGN, "k", &ra));

	/* per operation: sign has its own bucket, verify has none */
	CHECK_OK(policy_set_limit(p, "perop", CF_OP_SIGN, 2, 1, NULL));
	CHECK_OK(authorize(p, "perop", CF_OP_SIGN, "k", &ra));
	CHECK_ERR(authorize(p, "perop", CF_OP_SIGN, "k", &ra), CF_E_EXHAUSTED,
		  "rate limit of principal perop for sign exceeded; retry after ");
	CU_ASSERT(ra >= 400 && ra <= 500);   /* one token at 2/s */
	for (int i = 0; i < 10; i++)
		CHECK_OK(authorize(p, "perop", CF_OP_VERIFY, "k", &ra));

	/* both: a refused sign takes nothing from the principal's bucket */
	CHECK_OK(policy_set_limit(p, "slow", CF_OP_NONE, 0.01, 2, NULL));
	CHECK_OK(policy_set_limit(p, "slow", CF_OP_SIGN, 0.01, 1, NULL));
	CHECK_OK(authorize(p, "slow", CF_OP_SIGN, "k", &ra));
	for (int i = 0; i < 3; i++)
		CHECK_ERR(authorize(p, "slow", CF_OP_SIGN, "k", &ra), CF_E_EXHAUSTED,
			  "rate limit of principal slow for sign exceeded");
	CU_ASSERT(ra > 90000 && ra <= 100000);   /* 1 token at 0.01/s: 100 s */
	CHECK_OK(authorize(p, "slow", CF_OP_VERIFY, "k", &ra));
	/* verify has no bucket of its own: the principal's all-operations one refuses */
	CHECK_ERR(authorize(p, "slow", CF_OP_VERIFY, "k", &ra), CF_E_EXHAUSTED,
		  "rate limit of principal slow exceeded");
	policy_close(p);
	store_close(st);
}

struct racer {
	policy *p;
	int ok;
};

static void *
race(void *arg)
{
	struct racer *r = arg;
	uint32_t ra;

	for (int i = 0; i < 200; i++)
		if (authorize(r->p, "app", CF_OP_SIGN, "k", &ra) == CF_OK)
			r->ok++;
	return NULL;
}

/* Concurrent callers share the bucket: exactly the burst gets through. */
static void
test_rate_concurrent(void)
{
	struct racer r[4];
	pthread_t t[4];
	uint32_t u = 5500;
	char dir[400];
	store *st;
	policy *p;
	int total = 0;

	open_fresh("race", dir, &st, &p);
	app_granted(p, u, "k", B(SIGN));
	CHECK_OK(policy_set_limit(p, "app", CF_OP_SIGN, 0.001, 100, NULL));
	for (int i = 0; i < 4; i++) {
		r[i] = (struct racer){ p, 0 };
		CU_ASSERT_FATAL(pthread_create(&t[i], NULL, race, &r[i]) == 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		total += r[i].ok;
	}
	CU_ASSERT_EQUAL(total, 100);
	policy_close(p);
	store_close(st);
}

/* The principal is deleted between identify and check. */
static void
test_deleted_midway(void)
{
	char dir[400], who[STORE_PRINCIPAL_NAME_MAX + 1];
	uint32_t u = 6000, ra;
	store *st;
	policy *p;

	open_fresh("deleted", dir, &st, &p);
	app_granted(p, u, "k", B(SIGN));
	CHECK_OK(policy_set_limit(p, "app", CF_OP_NONE, 1, 5, NULL));
	CHECK_OK(policy_identify(p, 6000, 6000, who));
	CHECK_OK(policy_delete(p, who, 0, NULL));
	CHECK_ERR(authorize(p, who, CF_OP_SIGN, "k", &ra), CF_E_UNAUTHENTICATED,
		  "principal app no longer exists");
	CHECK_ERR(authorize(p, who, CF_OP_NONE, "", &ra), CF_E_UNAUTHENTICATED,
		  "principal app no longer exists");
	CHECK_ERR(policy_may(p, who, CF_OP_SIGN, "k"), CF_E_UNAUTHENTICATED,
		  "principal app no longer exists");
	CHECK_ERR(policy_identify(p, 6000, 6000, who), CF_E_UNAUTHENTICATED,
		  "no principal for uid 6000 gid 6000");
	CHECK_ERR(policy_delete(p, "app", 0, NULL), CF_E_NOT_FOUND, "no principal app");
	CHECK_ERR(policy_grant(p, "app", "k", B(SIGN), NULL), CF_E_NOT_FOUND,
		  "no principal app");
	/* the uid is free again; a new principal of the name inherits nothing */
	CHECK_OK(policy_create(p, "app", &u, 1, NULL, 0, NULL));
	CHECK_ERR(policy_may(p, "app", CF_OP_SIGN, "k"), CF_E_DENIED,
		  "principal app may not sign with key k (no grant)");
	policy_close(p);
	CHECK_OK(policy_open(st, &p));   /* ... nor from the store */
	CHECK_ERR(policy_may(p, "app", CF_OP_SIGN, "k"), CF_E_DENIED, "(no grant)");
	for (int i = 0; i < 10; i++)
		CHECK_OK(authorize(p, "app", CF_OP_NONE, "", &ra));
	policy_close(p);
	store_close(st);
}

/* A reload from the store (each replica's, after any change to principals)
 * keeps every bucket's level, whatever order its limits were set in; a
 * limit changed elsewhere keeps it too, capped at its new burst (no change
 * hands out a fresh burst, a tightened one takes effect at once); only a
 * new limit starts full. */
static void
test_refresh_keeps_levels(void)
{
	char dir[400];
	uint32_t u = 6100, ra;
	store *st;
	policy *p, *other;

	open_fresh("refresh", dir, &st, &p);
	app_granted(p, u, "*", CF_OPS_ALL);
	/* per op first: the store returns them by op, the other way round */
	CHECK_OK(policy_set_limit(p, "app", CF_OP_SIGN, 0.001, 1, NULL));
	CHECK_OK(policy_set_limit(p, "app", CF_OP_NONE, 0.001, 4, NULL));
	CHECK_ERR(then_next(p, CF_OP_SIGN, "k", 1, &ra), CF_E_EXHAUSTED,
		  "rate limit of principal app for sign exceeded; retry after ");
	for (int i = 0; i < 3; i++)
		CHECK_OK(policy_refresh(p));
	CHECK_ERR(authorize(p, "app", CF_OP_SIGN, "k", &ra), CF_E_EXHAUSTED,
		  "rate limit of principal app for sign exceeded; retry after ");
	/* all operations: 3 of 4 left, 1 after two verifications */
	CHECK_OK(authorize(p, "app", CF_OP_VERIFY, "k", &ra));
	CHECK_OK(authorize(p, "app", CF_OP_VERIFY, "k", &ra));
	/* a change to another principal is no reason to refill */
	CHECK_OK(policy_create(p, "bystander", &(uint32_t){ 6101 }, 1, NULL, 0, NULL));
	CHECK_OK(policy_refresh(p));
	CHECK_ERR(authorize(p, "app", CF_OP_SIGN, "k", &ra), CF_E_EXHAUSTED, "for sign");
	/* another writer (a replica) raises the sign limit and tightens the
	 * all-operations one above its level: sign stays empty, all keeps 1 */
	CHECK_OK(policy_open(st, &other));
	CHECK_OK(policy_set_limit(other, "app", CF_OP_SIGN, 0.001, 2, NULL));
	CHECK_OK(policy_set_limit(other, "app", CF_OP_NONE, 0.001, 3, NULL));
	policy_close(other);
	CHECK_OK(policy_refresh(p));
	CHECK_ERR(authorize(p, "app", CF_OP_SIGN, "k", &ra), CF_E_EXHAUSTED, "for sign");
	CHECK_ERR(then_next(p, CF_OP_VERIFY, "k", 1, &ra), CF_E_EXHAUSTED,
		  "rate limit of principal app exceeded; retry after ");
	/* a new limit set here starts full, and refills nothing else: verify's
	 * own bucket has 1, the empty all-operations one still refuses */
	CHECK_OK(policy_set_limit(p, "app", CF_OP_VERIFY, 0.001, 1, NULL));
	CHECK_ERR(authorize(p, "app", CF_OP_VERIFY, "k", &ra), CF_E_EXHAUSTED,
		  "rate limit of principal app exceeded; retry after ");
	CHECK_OK(policy_set_limit(p, "app", CF_OP_NONE, 0, 0, NULL));
	CHECK_ERR(then_next(p, CF_OP_VERIFY, "k", 1, &ra), CF_E_EXHAUSTED,
		  "rate limit of principal app for verify exceeded; retry after ");
	/* tightened below its level, on a reload: down to the new burst at once */
	CHECK_OK(policy_set_limit(p, "app", CF_OP_MAC, 0.001, 5, NULL));
	CHECK_OK(policy_open(st, &other));
	CHECK_OK(policy_set_limit(other, "app", CF_OP_MAC, 0.001, 2, NULL));
	policy_close(other);
	CHECK_OK(policy_refresh(p));
	CHECK_ERR(then_next(p, CF_OP_MAC, "k", 2, &ra), CF_E_EXHAUSTED,
		  "rate limit of principal app for mac exceeded; retry after ");
	policy_close(p);
	store_close(st);
}

/* Grants, ids and limits come back from the store; buckets start full. */
static void
test_persistence(void)
{
	uint32_t uids[2] = { 7000, 7001 }, g = 70, ra;
	struct store_principal sp;
	char dir[400], db[450];
	store *st;
	policy *p;
	sqlite3 *h;

	open_fresh("persist", dir, &st, &p);
	CHECK_OK(policy_create(p, "app", uids, 2, &g, 1, NULL));
	CHECK_OK(policy_grant(p, "app", "db-*", B(SIGN) | B(VERIFY), NULL));
	CHECK_OK(policy_grant(p, "app", "k?", B(MAC), NULL));
	CHECK_OK(policy_revoke(p, "app", "db-*", B(VERIFY), NULL));
	CHECK_OK(policy_set_limit(p, "app", CF_OP_NONE, 0.5, 4, NULL));
	CHECK_OK(policy_set_limit(p, "app", CF_OP_SIGN, 0.25, 2, NULL));
	CHECK_OK(authorize(p, "app", CF_OP_SIGN, "db-1", &ra));
	CHECK_OK(authorize(p, "app", CF_OP_SIGN, "db-1", &ra));
	policy_close(p);
	store_close(st);

	CHECK_OK(store_open(dir, &st));
	CHECK_OK(policy_open(st, &p));
	CHECK_OK(policy_get(p, "app", &sp));
	CU_ASSERT(sp.nuids == 2 && sp.uids[0] == 7000 && sp.uids[1] == 7001);
	CU_ASSERT(sp.ngids == 1 && sp.gids[0] == 70);
	CU_ASSERT_EQUAL_FATAL(sp.ngrants, 2);
	CU_ASSERT_STRING_EQUAL(sp.grants[0].pattern, "db-*");
	CU_ASSERT_EQUAL(sp.grants[0].ops, B(SIGN));
	CU_ASSERT_STRING_EQUAL(sp.grants[1].pattern, "k?");
	CU_ASSERT_EQUAL(sp.grants[1].ops, B(MAC));
	CU_ASSERT_EQUAL_FATAL(sp.nlimits, 2);
	CU_ASSERT(sp.limits[0].op == CF_OP_NONE && sp.limits[0].rate == 0.5 &&
		  sp.limits[0].burst == 4);
	CU_ASSERT(sp.limits[1].op == CF_OP_SIGN && sp.limits[1].rate == 0.25 &&
		  sp.limits[1].burst == 2);
	policy_principal_free(&sp);
	CHECK_ERR(policy_may(p, "app", CF_OP_VERIFY, "db-1"), CF_E_DENIED, "(no grant)");
	CHECK_OK(policy_may(p, "app", CF_OP_MAC, "k1"));
	/* the sign limit is back: a full burst of 2, then refused */
	CHECK_ERR(then_next(p, CF_OP_SIGN, "db-1", 2, &ra), CF_E_EXHAUSTED,
		  "rate limit of principal app for sign exceeded");
	CU_ASSERT(ra > 3000 && ra <= 4000);
	/* and the overall one: 2 of its 4 left */
	CHECK_ERR(then_next(p, CF_OP_MAC, "k1", 2, &ra), CF_E_EXHAUSTED,
		  "rate limit of principal app exceeded;");
	policy_close(p);
	store_close(st);

	/* a store holding a limit no bucket could run is refused, not trusted */
	snprintf(db, sizeof(db), "%s/coffer.db", dir);
	CU_ASSERT_FATAL(sqlite3_open(db, &h) == SQLITE_OK);
	CU_ASSERT(sqlite3_exec(h, "UPDATE limits SET rate = 0 WHERE op = 1", NULL, NULL, NULL) ==
		  SQLITE_OK);
	sqlite3_close(h);
	CHECK_OK(store_open(dir, &st));
	p = NULL;
	CHECK_ERR(policy_open(st, &p), CF_E_IO,
		  "state store holds a malformed rate limit for principal app");
	CU_ASSERT_PTR_NULL(p);
	store_close(st);
}

/* The key's own limit (keyring_ref_allowed_ops) caps what any grant allows,
 * and a call it refuses takes no rate-limit token. */
static uint32_t
own_ops(keyring *kr, const char *name, int want)
{
	struct keyring_ref ref;

	CU_ASSERT_EQUAL(keyring_find(kr, name, &ref), want);
	return keyring_ref_allowed_ops(kr, &ref);
}

static void
test_key_own_limit(void)
{
	char dir[400];
	struct store_key info;
	unsigned mismatches = 0;
	keyring *kr = NULL;
	uint32_t ops, ra = 0;
	int own = 0;
	store *st;
	policy *p;

	open_fresh("keylimit", dir, &st, &p);
	CHECK_OK(keyring_open(p11, st, NULL, NULL, &mismatches, &kr));
	CHECK_OK(keyring_create(kr, "limited", CF_KEY_EC_P256, B(VERIFY) | B(GET_PUBLIC_KEY), 0,
				&info));
	CU_ASSERT_EQUAL(info.allowed_ops, B(VERIFY) | B(GET_PUBLIC_KEY));
	keyring_info_free(&info);
	CHECK_OK(keyring_create(kr, "open", CF_KEY_EC_P256, 0, 0, &info));
	keyring_info_free(&info);
	ops = own_ops(kr, "limited", CF_OK);
	CU_ASSERT_EQUAL(ops, B(VERIFY) | B(GET_PUBLIC_KEY));
	CU_ASSERT_EQUAL(own_ops(kr, "open", CF_OK), 0);   /* 0: everything its purpose has */
	CU_ASSERT_EQUAL(own_ops(kr, "ghost", CF_E_NOT_FOUND), 0);
	/* a grant for everything, one token: the key's limit refuses sign
	 * without taking it, and the one sign allowed takes it */
	app_granted(p, 4100, "*", CF_OPS_ALL);
	CHECK_OK(policy_set_limit(p, "app", CF_OP_NONE, 0.01, 1, NULL));
	for (int i = 0; i < 3; i++) {
		CHECK_ERR(policy_authorize(p, "app", CF_OP_SIGN, "limited", ops, &ra, &own),
			  CF_E_DENIED, "key limited does not allow sign (its own limit)");
		CU_ASSERT_EQUAL(own, 1);
		CU_ASSERT_EQUAL(ra, 0);
	}
	CHECK_OK(policy_authorize(p, "app", CF_OP_SIGN, "open", 0, &ra, &own));
	CU_ASSERT_EQUAL(own, 0);
	CHECK_ERR(policy_authorize(p, "app", CF_OP_VERIFY, "limited", ops, &ra, &own),
		  CF_E_EXHAUSTED, "rate limit of principal app");
	keyring_close(kr);
	/* the limit is kept with the key */
	CHECK_OK(keyring_open(p11, st, NULL, NULL, &mismatches, &kr));
	CU_ASSERT_EQUAL(mismatches, 0);
	CU_ASSERT_EQUAL(own_ops(kr, "limited", CF_OK), B(VERIFY) | B(GET_PUBLIC_KEY));
	keyring_close(kr);
	policy_close(p);
	store_close(st);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "operation names", test_op_names },
		{ "principals: names, ids, taken ids, list", test_create },
		{ "identify: uid before gid, unknown callers", test_identify },
		{ "grants: names and globs, operations, revoke, deny by default", test_grants },
		{ "policy_may takes no token, policy_authorize does", test_may_and_check },
		{ "rate limits: burst, refill, retry-after, removal, bounds", test_rate_limits },
		{ "rate limits under concurrent callers", test_rate_concurrent },
		{ "a principal deleted between identify and check", test_deleted_midway },
		{ "grants and limits survive a reopen; a malformed limit is refused",
		  test_persistence },
		{ "a key's own limit", test_key_own_limit },
		{ "a reload and a change keep bucket levels", test_refresh_keeps_levels },
		{ NULL, NULL },
	};

	return cf_test_main("policy", suite_init, suite_clean, cases);
}
