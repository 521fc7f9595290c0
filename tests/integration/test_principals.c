/*
 * test_principals — who may call the service socket, through libcoffer and
 * a real cofferd: deny by default (no principal for the uid), grants by key
 * pattern and operation, revocation, rate limits per principal and per
 * operation, the admin calls' refusals, persistence across a restart, and
 * sealed calls authorised like plain ones.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "cf_test_client.h"
#include "cf_test_token.h"
#include "coffer.h"

static struct cf_test_token tok;
static struct cf_test_daemon dmn;
static coffer_client *svc, *adm;
static const uint8_t msg[] = "principals";

static int
suite_init(void)
{
	if (cf_test_suite_up(&tok, "coffer-princ", &dmn, &svc, &adm) != 0)
		return -1;
	/* The tests start from a principal with nothing granted. */
	return coffer_principal_revoke(adm, CF_TEST_PRINCIPAL, "*", 0, NULL) == COFFER_OK &&
	       coffer_create_key(adm, "pay-1", COFFER_KEY_EC_P256, 0, NULL) == COFFER_OK &&
	       coffer_create_key(adm, "hr-1", COFFER_KEY_EC_P256, 0, NULL) == COFFER_OK &&
	       coffer_create_key(adm, "vault-1", COFFER_KEY_AES_256, 0, NULL) == COFFER_OK ?
	       0 : -1;
}

static int
suite_clean(void)
{
	cf_test_suite_down(&tok, &dmn, &svc, &adm);
	return 0;
}

static int
sign(const char *key)
{
	struct coffer_bytes sig = { NULL, 0 };
	int r = coffer_sign(svc, key, 0, msg, sizeof(msg), NULL, &sig, NULL);

	coffer_bytes_free(&sig);
	return r;
}

static void
test_grants(void)
{
	struct coffer_principal *p = NULL;
	enum coffer_serving_status st;

	/* Nothing granted: denied, naming the operation and the key. */
	CU_ASSERT_EQUAL(sign("pay-1"), COFFER_E_DENIED);
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "may not sign with key pay-1"));
	CU_ASSERT(cf_test_daemon_log_has(&dmn, "denied: principal tester"));
	/* Health needs no grant. */
	CHECK_COFFER(coffer_health(svc, NULL, &st));
	/* A glob grant for one operation. */
	CHECK_COFFER(coffer_principal_grant(adm, CF_TEST_PRINCIPAL, "pay-*",
					    COFFER_OP_BIT(COFFER_OP_SIGN), &p));
	CU_ASSERT_EQUAL(p->ngrants, 1);
	CU_ASSERT_STRING_EQUAL(p->grants[0].key_pattern, "pay-*");
	CU_ASSERT_EQUAL(p->grants[0].operations, COFFER_OP_BIT(COFFER_OP_SIGN));
	coffer_principal_free(p);
	CHECK_COFFER(sign("pay-1"));
	/* Key not granted. */
	CU_ASSERT_EQUAL(sign("hr-1"), COFFER_E_DENIED);
	/* Operation not granted on a granted key. */
	{
		struct coffer_public_key *pk = NULL;

		CU_ASSERT_EQUAL(coffer_get_public_key(svc, "pay-1", 0, &pk), COFFER_E_DENIED);
		CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "get-public-key"));
		CHECK_COFFER(coffer_principal_grant(adm, CF_TEST_PRINCIPAL, "pay-*",
						    COFFER_OP_BIT(COFFER_OP_GET_PUBLIC_KEY), NULL));
		CHECK_COFFER(coffer_get_public_key(svc, "pay-1", 0, &pk));
		coffer_public_key_free(pk);
	}
	/* Sealed calls are authorised like plain ones (inner status). */
	{
		struct coffer_bytes ct = { NULL, 0 };

		CU_ASSERT_EQUAL(coffer_wrap(svc, "vault-1", msg, sizeof(msg), NULL, 0, &ct, NULL),
				COFFER_E_DENIED);
		CHECK_COFFER(coffer_principal_grant(adm, CF_TEST_PRINCIPAL, "vault-1",
						    COFFER_OP_BIT(COFFER_OP_WRAP), NULL));
		CHECK_COFFER(coffer_wrap(svc, "vault-1", msg, sizeof(msg), NULL, 0, &ct, NULL));
		coffer_bytes_free(&ct);
	}
	/* Revoking one operation keeps the others. */
	CHECK_COFFER(coffer_principal_revoke(adm, CF_TEST_PRINCIPAL, "pay-*",
					     COFFER_OP_BIT(COFFER_OP_SIGN), &p));
	CU_ASSERT_EQUAL(p->grants[0].operations, COFFER_OP_BIT(COFFER_OP_GET_PUBLIC_KEY));
	coffer_principal_free(p);
	CU_ASSERT_EQUAL(sign("pay-1"), COFFER_E_DENIED);
	CU_ASSERT_EQUAL(coffer_principal_revoke(adm, CF_TEST_PRINCIPAL, "no-such-*", 0, NULL),
			COFFER_E_NOT_FOUND);
	/* A hostile key name never reaches a glob (which would backtrack). */
	{
		static char huge[200000];
		struct timespec t0, t1;

		memset(huge, 'a', sizeof(huge) - 1);
		CHECK_COFFER(coffer_principal_grant(adm, CF_TEST_PRINCIPAL, "*a*a*a*a*a*a*a*a*b",
						    COFFER_OP_BIT(COFFER_OP_SIGN), NULL));
		clock_gettime(CLOCK_MONOTONIC, &t0);
		CU_ASSERT_EQUAL(sign(huge), COFFER_E_INVALID_ARG);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		CU_ASSERT(t1.tv_sec - t0.tv_sec < 2);
		CHECK_COFFER(coffer_principal_revoke(adm, CF_TEST_PRINCIPAL, "*a*a*a*a*a*a*a*a*b", 0,
						     NULL));
	}
}

/* A key's own limit caps every grant, survives a restart, and must fit the
 * key's purpose. */
static void
test_key_limits(void)
{
	struct coffer_key_info *ki = NULL;
	struct coffer_public_key *pk = NULL;

	CHECK_COFFER(coffer_principal_grant(adm, CF_TEST_PRINCIPAL, "*", COFFER_OPS_ALL, NULL));
	CHECK_COFFER(coffer_create_key_limited(adm, "sign-only", COFFER_KEY_EC_P256, 0,
					       COFFER_OP_BIT(COFFER_OP_SIGN), &ki));
	CU_ASSERT_EQUAL(ki->allowed_operations, COFFER_OP_BIT(COFFER_OP_SIGN));
	coffer_key_info_free(ki);
	CHECK_COFFER(sign("sign-only"));
	CU_ASSERT_EQUAL(coffer_get_public_key(svc, "sign-only", 0, &pk), COFFER_E_DENIED);
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(),
				      "key sign-only does not allow get-public-key"));
	CU_ASSERT(cf_test_daemon_log_has(&dmn, "the key's own limit"));
	/* An operation the key's purpose cannot do. */
	CU_ASSERT_EQUAL(coffer_create_key_limited(adm, "bad-limit", COFFER_KEY_EC_P256, 0,
						  COFFER_OP_BIT(COFFER_OP_WRAP), NULL),
			COFFER_E_INVALID_ARG);
	/* Kept across a restart. */
	CU_ASSERT_EQUAL_FATAL(cf_test_suite_restart(&tok, &dmn, &svc, &adm), 0);
	CHECK_COFFER(coffer_get_key(adm, "sign-only", &ki));
	CU_ASSERT_EQUAL(ki->allowed_operations, COFFER_OP_BIT(COFFER_OP_SIGN));
	coffer_key_info_free(ki);
	CU_ASSERT_EQUAL(coffer_get_public_key(svc, "sign-only", 0, &pk), COFFER_E_DENIED);
	CHECK_COFFER(sign("sign-only"));
	CHECK_COFFER(coffer_principal_revoke(adm, CF_TEST_PRINCIPAL, "*", 0, NULL));
}

static void
test_no_principal(void)
{
	uint32_t uid = (uint32_t)geteuid();

	CHECK_COFFER(coffer_principal_delete(adm, CF_TEST_PRINCIPAL));
	CU_ASSERT_EQUAL(sign("pay-1"), COFFER_E_UNAUTHENTICATED);
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "no principal for uid"));
	CU_ASSERT(cf_test_daemon_log_has(&dmn, "no principal"));
	/* By gid instead of uid. */
	{
		uint32_t gid = (uint32_t)getegid();

		CHECK_COFFER(coffer_principal_create(adm, "by-group", NULL, 0, &gid, 1, NULL));
		CHECK_COFFER(coffer_principal_grant(adm, "by-group", "*", COFFER_OPS_ALL, NULL));
		CHECK_COFFER(sign("hr-1"));
		CHECK_COFFER(coffer_principal_delete(adm, "by-group"));
	}
	CHECK_COFFER(coffer_principal_create(adm, CF_TEST_PRINCIPAL, &uid, 1, NULL, 0, NULL));
	CHECK_COFFER(coffer_principal_grant(adm, CF_TEST_PRINCIPAL, "*", COFFER_OPS_ALL, NULL));
	CHECK_COFFER(sign("hr-1"));
}

static void
test_admin_refusals(void)
{
	uint32_t uid = (uint32_t)geteuid(), other = 4242;

	CU_ASSERT_EQUAL(coffer_principal_create(adm, "Bad Name", &other, 1, NULL, 0, NULL),
			COFFER_E_INVALID_ARG);
	CU_ASSERT_EQUAL(coffer_principal_create(adm, "no-ids", NULL, 0, NULL, 0, NULL),
			COFFER_E_INVALID_ARG);
	CU_ASSERT_EQUAL(coffer_principal_create(adm, CF_TEST_PRINCIPAL, &other, 1, NULL, 0, NULL),
			COFFER_E_EXISTS);
	/* A uid belongs to one principal. */
	CU_ASSERT_EQUAL(coffer_principal_create(adm, "thief", &uid, 1, NULL, 0, NULL),
			COFFER_E_EXISTS);
	CU_ASSERT_EQUAL(coffer_principal_get(adm, "nobody-here", NULL), COFFER_E_NOT_FOUND);
	CU_ASSERT_EQUAL(coffer_principal_grant(adm, CF_TEST_PRINCIPAL, "BAD", COFFER_OPS_ALL,
					       NULL), COFFER_E_INVALID_ARG);
	CU_ASSERT_EQUAL(coffer_principal_grant(adm, CF_TEST_PRINCIPAL, "x", 0, NULL),
			COFFER_E_INVALID_ARG);
	CU_ASSERT_EQUAL(coffer_principal_set_limit(adm, CF_TEST_PRINCIPAL, COFFER_OP_SIGN, 5.0, 0,
						   NULL), COFFER_E_INVALID_ARG);
	/* Not on the service socket. */
	CU_ASSERT_EQUAL(coffer_principal_get(svc, CF_TEST_PRINCIPAL, NULL), COFFER_E_UNIMPLEMENTED);
}

static void
test_rate_limits(void)
{
	struct coffer_principal *p = NULL;
	int limited = 0;

	/* Sign: 2 per second, burst 2. */
	CHECK_COFFER(coffer_principal_set_limit(adm, CF_TEST_PRINCIPAL, COFFER_OP_SIGN, 2.0, 2, &p));
	CU_ASSERT_EQUAL(p->nlimits, 1);
	coffer_principal_free(p);
	for (int i = 0; i < 4 && !limited; i++)
		limited = sign("hr-1") == COFFER_E_TOO_LARGE;
	CU_ASSERT(limited);
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "rate limit"));
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "retry after"));
	/* Another operation is not limited by sign's bucket. */
	{
		struct coffer_public_key *pk = NULL;

		for (int i = 0; i < 5; i++) {
			CHECK_COFFER(coffer_get_public_key(svc, "hr-1", 0, &pk));
			coffer_public_key_free(pk);
		}
	}
	/* The bucket refills. */
	usleep(1100 * 1000);
	CHECK_COFFER(sign("hr-1"));
	/* An overall limit covers every operation; rate 0 removes limits. */
	CHECK_COFFER(coffer_principal_set_limit(adm, CF_TEST_PRINCIPAL, COFFER_OP_SIGN, 0, 0, NULL));
	CHECK_COFFER(coffer_principal_set_limit(adm, CF_TEST_PRINCIPAL, COFFER_OP_ALL, 1.0, 1, NULL));
	limited = 0;
	for (int i = 0; i < 3 && !limited; i++) {
		struct coffer_public_key *pk = NULL;

		limited = coffer_get_public_key(svc, "hr-1", 0, &pk) == COFFER_E_TOO_LARGE;
		coffer_public_key_free(pk);
	}
	CU_ASSERT(limited);
	CHECK_COFFER(coffer_principal_set_limit(adm, CF_TEST_PRINCIPAL, COFFER_OP_ALL, 0, 0, NULL));
	CHECK_COFFER(sign("hr-1"));
	/* A sealed call counts once: a fresh client's handshake and two sealed
	 * Wraps fit a burst of 3; the third Wrap does not. */
	{
		coffer_client *fresh = NULL, *fresh_adm = NULL;
		struct coffer_bytes ct = { NULL, 0 };

		CU_ASSERT_EQUAL_FATAL(cf_test_clients(&dmn, &fresh, &fresh_adm), 0);
		CHECK_COFFER(coffer_principal_set_limit(adm, CF_TEST_PRINCIPAL, COFFER_OP_ALL, 0.001,
							3, NULL));
		for (int i = 0; i < 2; i++) {
			CHECK_COFFER(coffer_wrap(fresh, "vault-1", msg, sizeof(msg), NULL, 0, &ct,
						 NULL));
			coffer_bytes_free(&ct);
		}
		CU_ASSERT_EQUAL(coffer_wrap(fresh, "vault-1", msg, sizeof(msg), NULL, 0, &ct, NULL),
				COFFER_E_TOO_LARGE);
		CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "rate limit"));
		CHECK_COFFER(coffer_principal_set_limit(adm, CF_TEST_PRINCIPAL, COFFER_OP_ALL, 0, 0,
							NULL));
		coffer_close(fresh);
		coffer_close(fresh_adm);
	}
}

static void
test_restart_keeps_principals(void)
{
	struct coffer_principal *p = NULL;
	struct coffer_principal_list *l = NULL;
	uint32_t ids[2] = { 5001, 5002 };

	CHECK_COFFER(coffer_principal_create(adm, "billing", ids, 2, NULL, 0, NULL));
	CHECK_COFFER(coffer_principal_grant(adm, "billing", "pay-*",
					    COFFER_OP_BIT(COFFER_OP_SIGN) |
					    COFFER_OP_BIT(COFFER_OP_VERIFY), NULL));
	CHECK_COFFER(coffer_principal_set_limit(adm, "billing", COFFER_OP_ALL, 50.0, 100, NULL));
	CU_ASSERT_EQUAL_FATAL(cf_test_suite_restart(&tok, &dmn, &svc, &adm), 0);
	CHECK_COFFER(coffer_principal_get(adm, "billing", &p));
	CU_ASSERT(p->nuids == 2 && p->uids[0] == 5001 && p->uids[1] == 5002);
	CU_ASSERT(p->ngrants == 1 && p->grants[0].operations ==
		  (COFFER_OP_BIT(COFFER_OP_SIGN) | COFFER_OP_BIT(COFFER_OP_VERIFY)));
	CU_ASSERT(p->nlimits == 1 && p->limits[0].per_second == 50.0 && p->limits[0].burst == 100);
	coffer_principal_free(p);
	CHECK_COFFER(coffer_principal_list(adm, &l));
	CU_ASSERT_EQUAL(l->n, 2);
	CU_ASSERT_STRING_EQUAL(l->principals[0].name, "billing");
	CU_ASSERT_STRING_EQUAL(l->principals[1].name, CF_TEST_PRINCIPAL);
	coffer_principal_list_free(l);
	CHECK_COFFER(coffer_principal_delete(adm, "billing"));
	CU_ASSERT_EQUAL(coffer_principal_delete(adm, "billing"), COFFER_E_NOT_FOUND);
}

static int
wrap_once(void)
{
	struct coffer_bytes ct = { NULL, 0 };
	int r = coffer_wrap(svc, "vault-1", msg, sizeof(msg), NULL, 0, &ct, NULL);

	coffer_bytes_free(&ct);
	return r;
}

/* API keys through libcoffer: the secret shown once (sealed), every call
 * signed (sealed ones too), rotation with overlap, credentials files,
 * revocation. test_call_auth.py covers each refusal on the wire. */
static void
test_api_keys(void)
{
	struct coffer_api_key k, k2, *l = NULL;
	struct coffer_bytes secret = { NULL, 0 }, secret2 = { NULL, 0 };
	uint8_t wrong[32];
	char hex[65], path[512];
	size_t n = 0;

	CHECK_COFFER(coffer_principal_grant(adm, CF_TEST_PRINCIPAL, "*", COFFER_OPS_ALL, NULL));
	CU_ASSERT_EQUAL_FATAL(coffer_api_key_create(adm, CF_TEST_PRINCIPAL, NULL, 0, &k, &secret),
			      COFFER_OK);
	CU_ASSERT_EQUAL(secret.len, 32);
	CU_ASSERT(strncmp(k.id, "ak_", 3) == 0 && strlen(k.id) == COFFER_API_KEY_ID_LEN);
	CU_ASSERT(k.nsecrets == 1 && k.secrets[0].generation == 1 && k.secrets[0].expire_time == 0);
	/* From now on tester must sign. */
	CU_ASSERT_EQUAL(sign("pay-1"), COFFER_E_UNAUTHENTICATED);
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "every call must carry"));
	CU_ASSERT_EQUAL(wrap_once(), COFFER_E_UNAUTHENTICATED);
	CHECK_COFFER(coffer_set_api_key(svc, k.id, secret.data, secret.len));
	CHECK_COFFER(sign("pay-1"));
	CHECK_COFFER(wrap_once());   /* sealed: OpenSession and Call signed */
	/* The wrong secret: refused, sealed calls included. */
	memset(wrong, 0x5a, sizeof(wrong));
	CHECK_COFFER(coffer_set_api_key(svc, k.id, wrong, sizeof(wrong)));
	CU_ASSERT_EQUAL(sign("pay-1"), COFFER_E_UNAUTHENTICATED);
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "bad signature"));
	CU_ASSERT_EQUAL(wrap_once(), COFFER_E_UNAUTHENTICATED);
	/* Rotation with an overlap: old and new both work. */
	CU_ASSERT_EQUAL_FATAL(coffer_api_key_rotate(adm, k.id, 600, NULL, 0, &k2, &secret2),
			      COFFER_OK);
	CU_ASSERT(k2.nsecrets == 2 && k2.secrets[0].generation == 2 &&
		  k2.secrets[1].expire_time > time(NULL) + 590);
	CU_ASSERT(secret2.len == 32 && memcmp(secret.data, secret2.data, 32) != 0);
	CHECK_COFFER(coffer_set_api_key(svc, k.id, secret.data, secret.len));
	CHECK_COFFER(sign("pay-1"));
	/* The new secret through a credentials file. */
	snprintf(path, sizeof(path), "%s/tester.key", tok.dir);
	CHECK_COFFER(coffer_write_api_key_file(path, k.id, secret2.data, secret2.len));
	CU_ASSERT_EQUAL(coffer_write_api_key_file(path, k.id, secret2.data, secret2.len),
			COFFER_E_IO);   /* never replaced */
	CHECK_COFFER(coffer_set_api_key_file(svc, path));
	CHECK_COFFER(sign("pay-1"));
	CHECK_COFFER(coffer_api_key_list(adm, CF_TEST_PRINCIPAL, &l, &n));
	CU_ASSERT(n == 1 && strcmp(l[0].id, k.id) == 0 && l[0].nsecrets == 2);
	free(l);
	/* Neither secret reaches the log. */
	for (size_t i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", secret.data[i]);
	CU_ASSERT_FALSE(cf_test_daemon_log_has(&dmn, hex));
	/* Bad arguments are refused before anything is sent. */
	CU_ASSERT_EQUAL(coffer_set_api_key(svc, "ak_zz", wrong, 32), COFFER_E_INVALID_ARG);
	CU_ASSERT_EQUAL(coffer_set_api_key(svc, k.id, wrong, 16), COFFER_E_INVALID_ARG);
	/* Revoked: refused, and tester still has to sign until an operator
	 * allows uid-only calls (coffer_principal_set_auth). */
	CHECK_COFFER(coffer_api_key_revoke(adm, k.id, &k2));
	CU_ASSERT(k2.revoke_time != 0 && k2.nsecrets == 0);
	CU_ASSERT_EQUAL(sign("pay-1"), COFFER_E_UNAUTHENTICATED);
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "was revoked"));
	/* A client without the key. */
	coffer_close(svc);
	coffer_close(adm);
	svc = adm = NULL;
	CU_ASSERT_EQUAL_FATAL(cf_test_clients(&dmn, &svc, &adm), 0);
	CU_ASSERT_EQUAL(sign("pay-1"), COFFER_E_UNAUTHENTICATED);
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "requires signed calls (it had "
				      "API keys; the last was revoked)"));
	{
		int live = -1;

		CHECK_COFFER(coffer_principal_set_auth(adm, CF_TEST_PRINCIPAL, 0, &live));
		CU_ASSERT_EQUAL(live, 0);
	}
	CHECK_COFFER(sign("pay-1"));
	unlink(path);
	coffer_bytes_free(&secret);
	coffer_bytes_free(&secret2);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "grants: key patterns, operations, revoke, sealed", test_grants },
		{ "a key's own limit caps every grant", test_key_limits },
		{ "no principal for the uid; principal by gid", test_no_principal },
		{ "admin refusals", test_admin_refusals },
		{ "rate limits per operation and overall", test_rate_limits },
		{ "principals survive a restart", test_restart_keeps_principals },
		{ "API keys: shown once, every call signed, rotation, revocation", test_api_keys },
		{ NULL, NULL },
	};

	return cf_test_main("principals", suite_init, suite_clean, cases);
}
