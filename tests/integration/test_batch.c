/*
 * test_batch — SignBatch, VerifyBatch, MacBatch and VerifyMacBatch through
 * libcoffer and a real cofferd: every item's answer checked against the
 * unary calls and OpenSSL; one item's bad input fails only that item, with
 * its own text; the request-level refusals and their text; one grant check
 * per call and one rate-limit token per item (the items beyond the bucket
 * refused one by one, an empty bucket refusing the call); one audit record
 * per call with its item and failure counts; a batch sealed in a session.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "cf_test_client.h"
#include "cf_test_token.h"
#include "coffer.h"

static struct cf_test_token tok;
static struct cf_test_daemon dmn;
static coffer_client *svc, *adm;

#define N 32

static int
suite_init(void)
{
	if (cf_test_suite_up(&tok, "coffer-batch", &dmn, &svc, &adm) != 0)
		return -1;
	return coffer_create_key(adm, "sig", COFFER_KEY_EC_P256, 0, NULL) == COFFER_OK &&
	       coffer_create_key(adm, "ed", COFFER_KEY_ED25519, 0, NULL) == COFFER_OK &&
	       coffer_create_key(adm, "mac", COFFER_KEY_HMAC_SHA256, 0, NULL) == COFFER_OK ?
	       0 : -1;
}

static int
suite_clean(void)
{
	cf_test_suite_down(&tok, &dmn, &svc, &adm);
	return 0;
}

static char msgs[COFFER_BATCH_MAX + 1][32];
static struct coffer_batch_item items[COFFER_BATCH_MAX + 1];

/* What a call that refuses the batch leaves in its items: untouched. */
#define UNTOUCHED 12345

/* items[0..n) over msgs, outputs cleared, statuses UNTOUCHED. */
static void
fill(size_t n)
{
	for (size_t i = 0; i < n; i++) {
		coffer_bytes_free(&items[i].out);
		memset(&items[i], 0, sizeof(items[i]));
		items[i].status = UNTOUCHED;
		snprintf(msgs[i], sizeof(msgs[i]), "message %zu", i);
		items[i].data = (const uint8_t *)msgs[i];
		items[i].len = strlen(msgs[i]);
	}
}

/* OpenSSL's verdict on an ECDSA (DER) signature of m by the key's SPKI. */
static int
openssl_verifies(const struct coffer_public_key *pk, const char *m, const struct coffer_bytes *sig)
{
	const unsigned char *p = pk->der.data;
	EVP_PKEY *key = d2i_PUBKEY(NULL, &p, (long)pk->der.len);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int ok = key != NULL && ctx != NULL &&
		 EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key) == 1 &&
		 EVP_DigestVerify(ctx, sig->data, sig->len, (const unsigned char *)m, strlen(m)) == 1;

	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(key);
	return ok;
}

static void
test_sign_verify(void)
{
	struct coffer_public_key *pk = NULL;
	uint32_t ver = 0;
	int valid = 0;

	fill(N);
	CHECK_COFFER(coffer_sign_batch(svc, "sig", 0, NULL, items, N, &ver));
	CU_ASSERT_EQUAL(ver, 1);
	CHECK_COFFER(coffer_get_public_key(svc, "sig", 1, &pk));
	for (size_t i = 0; i < N; i++) {
		CU_ASSERT_EQUAL(items[i].status, COFFER_OK);
		CU_ASSERT_STRING_EQUAL(items[i].error, "");
		CU_ASSERT(openssl_verifies(pk, msgs[i], &items[i].out));
		/* The unary Verify agrees. */
		CHECK_COFFER(coffer_verify(svc, "sig", ver, items[i].data, items[i].len, NULL,
					   items[i].out.data, items[i].out.len, &valid));
		CU_ASSERT_EQUAL(valid, 1);
	}
	coffer_public_key_free(pk);
	/* VerifyBatch: every signature, one of them swapped with its neighbour's. */
	for (size_t i = 0; i < N; i++) {
		items[i].tag = items[i == 5 ? 6 : i].out.data;
		items[i].taglen = items[i == 5 ? 6 : i].out.len;
	}
	CHECK_COFFER(coffer_verify_batch(svc, "sig", ver, NULL, items, N));
	for (size_t i = 0; i < N; i++) {
		CU_ASSERT_EQUAL(items[i].status, COFFER_OK);
		CU_ASSERT_EQUAL(items[i].valid, i != 5);
	}
	/* Digests: one of the wrong length fails alone, with its own text. */
	{
		uint8_t d[3][SHA256_DIGEST_LENGTH];
		struct coffer_sign_opts o = { .hash = COFFER_HASH_SHA256, .prehashed = 1 };

		fill(3);
		for (int i = 0; i < 3; i++) {
			SHA256((const uint8_t *)msgs[i], strlen(msgs[i]), d[i]);
			items[i].data = d[i];
			items[i].len = i == 1 ? 20 : sizeof(d[i]);
		}
		CHECK_COFFER(coffer_sign_batch(svc, "sig", 0, &o, items, 3, NULL));
		CU_ASSERT_EQUAL(items[0].status, COFFER_OK);
		CU_ASSERT_EQUAL(items[2].status, COFFER_OK);
		CU_ASSERT_EQUAL(items[1].status, COFFER_E_INVALID_ARG);
		CU_ASSERT_PTR_NULL(items[1].out.data);
		CU_ASSERT_STRING_EQUAL(items[1].error, "a sha256 digest is 32 bytes, got 20");
		CHECK_COFFER(coffer_get_public_key(svc, "sig", 1, &pk));
		/* The good ones are signatures of the messages those digests hash. */
		CU_ASSERT(openssl_verifies(pk, msgs[0], &items[0].out));
		CU_ASSERT(openssl_verifies(pk, msgs[2], &items[2].out));
		coffer_public_key_free(pk);
	}
	/* Ed25519 takes no digest: every item says so, naming the key. */
	{
		struct coffer_sign_opts o = { .prehashed = 1 };

		fill(2);
		CHECK_COFFER(coffer_sign_batch(svc, "ed", 0, &o, items, 2, NULL));
		for (int i = 0; i < 2; i++) {
			CU_ASSERT_EQUAL(items[i].status, COFFER_E_PRECONDITION);
			CU_ASSERT_STRING_EQUAL(items[i].error,
					       "key ed is ed25519, which signs the message itself "
					       "(no prehash): send the message, not a digest");
		}
		fill(2);
		CHECK_COFFER(coffer_sign_batch(svc, "ed", 0, NULL, items, 2, NULL));
		CU_ASSERT(items[0].status == COFFER_OK && items[0].out.len == 64);
	}
	fill(N);
}

static void
test_mac(void)
{
	uint32_t ver = 0;

	fill(N);
	CHECK_COFFER(coffer_mac_batch(svc, "mac", 0, items, N, &ver));
	CU_ASSERT_EQUAL(ver, 1);
	for (size_t i = 0; i < N; i++) {
		struct coffer_bytes one = { NULL, 0 };

		CU_ASSERT_EQUAL(items[i].status, COFFER_OK);
		/* HMAC is deterministic: the unary Mac gives the same bytes. */
		CHECK_COFFER(coffer_mac(svc, "mac", 0, items[i].data, items[i].len, &one, NULL));
		CU_ASSERT(one.len == 32 && items[i].out.len == 32 &&
			  memcmp(one.data, items[i].out.data, 32) == 0);
		coffer_bytes_free(&one);
	}
	/* VerifyMacBatch: a flipped bit, and a MAC longer than any. */
	{
		static uint8_t flipped[32], big[65];

		for (size_t i = 0; i < N; i++) {
			items[i].tag = items[i].out.data;
			items[i].taglen = items[i].out.len;
		}
		memcpy(flipped, items[3].out.data, 32);
		flipped[0] ^= 1;
		items[3].tag = flipped;
		items[4].tag = big;
		items[4].taglen = sizeof(big);
		CHECK_COFFER(coffer_verify_mac_batch(svc, "mac", ver, items, N));
		for (size_t i = 0; i < N; i++)
			if (i != 4) {
				CU_ASSERT_EQUAL(items[i].status, COFFER_OK);
				CU_ASSERT_EQUAL(items[i].valid, i != 3);
			}
		CU_ASSERT_EQUAL(items[4].status, COFFER_E_TOO_LARGE);
		CU_ASSERT_EQUAL(items[4].valid, 0);
		CU_ASSERT_STRING_EQUAL(items[4].error,
				       "mac of 65 bytes exceeds the limit of 64 bytes");
	}
	fill(N);
}

/* The call as a whole: refused as the single call would be, with its text. */
static void
test_request_errors(void)
{
	fill(COFFER_BATCH_MAX + 1);
	CU_ASSERT_EQUAL(coffer_sign_batch(svc, "sig", 0, NULL, items, 0, NULL),
			COFFER_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), "SignBatch has no items: send 1 to 1024");
	CU_ASSERT_EQUAL(coffer_mac_batch(svc, "mac", 0, items, COFFER_BATCH_MAX + 1, NULL),
			COFFER_E_TOO_LARGE);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), "MacBatch has 1025 items; the limit is 1024");
	/* The most items one call carries. */
	CHECK_COFFER(coffer_mac_batch(svc, "mac", 0, items, COFFER_BATCH_MAX, NULL));
	CU_ASSERT_EQUAL(items[COFFER_BATCH_MAX - 1].status, COFFER_OK);
	fill(4);
	CU_ASSERT_EQUAL(coffer_verify_batch(svc, "sig", 0, NULL, items, 4), COFFER_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(),
			       "version is required: pass the version that Sign returned");
	CU_ASSERT_EQUAL(coffer_verify_mac_batch(svc, "mac", 0, items, 4), COFFER_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(),
			       "version is required: pass the version that Mac returned");
	CU_ASSERT_EQUAL(coffer_sign_batch(svc, "nokey", 0, NULL, items, 4, NULL),
			COFFER_E_NOT_FOUND);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), "key nokey does not exist");
	CU_ASSERT_EQUAL(coffer_mac_batch(svc, "sig", 0, items, 4, NULL), COFFER_E_PRECONDITION);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(),
			       "key sig is a sign key (ec-p256); this operation needs a mac key");
	CU_ASSERT_EQUAL(coffer_sign_batch(svc, "sig", 7, NULL, items, 4, NULL),
			COFFER_E_NOT_FOUND);
	{
		struct coffer_sign_opts o = { .hash = (enum coffer_hash)99 };

		CU_ASSERT_EQUAL(coffer_sign_batch(svc, "sig", 0, &o, items, 4, NULL),
				COFFER_E_INVALID_ARG);
		CU_ASSERT_STRING_EQUAL(coffer_error_message(), "unknown hash 99");
	}
	/* Nothing was written into the items of a refused call. */
	CU_ASSERT(items[0].status == UNTOUCHED && items[0].out.data == NULL);
}

/* The last audit record, whose method is `method`, into buf. */
static int
last_record(const char *method, char *buf, size_t len)
{
	char **lines = NULL;
	size_t n = 0;
	int found = 0;

	if (coffer_audit_tail(adm, 20, &lines, &n) != COFFER_OK)
		return 0;
	for (size_t i = n; i-- > 0 && !found;)
		if (strstr(lines[i], method) != NULL) {
			snprintf(buf, len, "%s", lines[i]);
			found = 1;
		}
	coffer_audit_lines_free(lines, n);
	return found;
}

static void
test_grants_limits_audit(void)
{
	char rec[2048];

	/* One grant check for the call: without the grant nothing runs. */
	CHECK_COFFER(coffer_principal_revoke(adm, CF_TEST_PRINCIPAL, "*",
					     COFFER_OP_BIT(COFFER_OP_SIGN), NULL));
	fill(4);
	CU_ASSERT_EQUAL(coffer_sign_batch(svc, "sig", 0, NULL, items, 4, NULL), COFFER_E_DENIED);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(),
			       "principal tester may not sign with key sig (no grant)");
	CU_ASSERT(last_record("SignBatch", rec, sizeof(rec)));
	CU_ASSERT_PTR_NOT_NULL(strstr(rec, "\"result\":\"PERMISSION_DENIED\""));
	CU_ASSERT_PTR_NOT_NULL(strstr(rec, "\"items\":4,\"failed\":4"));
	CHECK_COFFER(coffer_principal_grant(adm, CF_TEST_PRINCIPAL, "*",
					    COFFER_OP_BIT(COFFER_OP_SIGN), NULL));
	/* One token per item: a burst of 5 covers 5 of 8 items. */
	CHECK_COFFER(coffer_principal_set_limit(adm, CF_TEST_PRINCIPAL, COFFER_OP_SIGN, 0.001, 5,
						NULL));
	fill(8);
	CHECK_COFFER(coffer_sign_batch(svc, "sig", 0, NULL, items, 8, NULL));
	for (int i = 0; i < 8; i++)
		CU_ASSERT_EQUAL(items[i].status, i < 5 ? COFFER_OK : COFFER_E_TOO_LARGE);
	CU_ASSERT_PTR_NOT_NULL(strstr(items[5].error, "rate limit of principal tester for sign "
					"exceeded at item 6 of 8 (5 granted); retry after "));
	CU_ASSERT_PTR_NOT_NULL(strstr(items[7].error, "at item 8 of 8"));
	CU_ASSERT(last_record("SignBatch", rec, sizeof(rec)));
	CU_ASSERT_PTR_NOT_NULL(strstr(rec, "\"result\":\"OK\""));
	CU_ASSERT_PTR_NOT_NULL(strstr(rec, "\"items\":8,\"failed\":3"));
	/* An empty bucket refuses the whole call, as it refuses a single one. */
	fill(2);
	CU_ASSERT_EQUAL(coffer_sign_batch(svc, "sig", 0, NULL, items, 2, NULL), COFFER_E_TOO_LARGE);
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(),
				      "rate limit of principal tester for sign exceeded; retry after"));
	CU_ASSERT_EQUAL(items[0].status, UNTOUCHED);
	CHECK_COFFER(coffer_principal_set_limit(adm, CF_TEST_PRINCIPAL, COFFER_OP_SIGN, 0, 0, NULL));
	/* A batch refused as a whole gives its tokens back: a burst of 5, a
	 * VerifyBatch of 5 without its version, then 5 verifications still run. */
	CHECK_COFFER(coffer_principal_set_limit(adm, CF_TEST_PRINCIPAL, COFFER_OP_VERIFY, 0.001, 5,
						NULL));
	fill(5);
	CU_ASSERT_EQUAL(coffer_verify_batch(svc, "sig", 0, NULL, items, 5), COFFER_E_INVALID_ARG);
	CU_ASSERT_EQUAL(coffer_verify_batch(svc, "nokey", 1, NULL, items, 5), COFFER_E_NOT_FOUND);
	fill(5);
	CHECK_COFFER(coffer_verify_batch(svc, "sig", 1, NULL, items, 5));
	for (int i = 0; i < 5; i++) {
		CU_ASSERT_EQUAL(items[i].status, COFFER_OK);
		CU_ASSERT_EQUAL(items[i].valid, 0);   /* no signature given */
	}
	fill(1);
	CU_ASSERT_EQUAL(coffer_verify_batch(svc, "sig", 1, NULL, items, 1), COFFER_E_TOO_LARGE);
	CHECK_COFFER(coffer_principal_set_limit(adm, CF_TEST_PRINCIPAL, COFFER_OP_VERIFY, 0, 0,
						NULL));
	/* A failed item counts in the record of a call that succeeded. */
	{
		static uint8_t big[65];

		fill(3);
		items[1].tag = big;
		items[1].taglen = sizeof(big);
		CHECK_COFFER(coffer_verify_mac_batch(svc, "mac", 1, items, 3));
		CU_ASSERT(last_record("VerifyMacBatch", rec, sizeof(rec)));
		CU_ASSERT_PTR_NOT_NULL(strstr(rec, "\"key\":\"mac\",\"version\":1,\"result\":\"OK\""));
		CU_ASSERT_PTR_NOT_NULL(strstr(rec, "\"items\":3,\"failed\":1"));
	}
	/* A single call's record has no item counts. */
	{
		struct coffer_bytes sig = { NULL, 0 };

		CHECK_COFFER(coffer_sign(svc, "sig", 0, items[0].data, items[0].len, NULL, &sig, NULL));
		coffer_bytes_free(&sig);
		CU_ASSERT(last_record("KeyService/Sign\"", rec, sizeof(rec)));
		CU_ASSERT_PTR_NULL(strstr(rec, "\"items\""));
	}
}

/* A batch stops between items once the caller's deadline has passed: the
 * rest answer DEADLINE_EXCEEDED (the record says how many), and no worker
 * is held signing for a caller who has gone. */
static void
test_deadline(void)
{
	char rec[2048];
	const char *p;
	unsigned long failed = 0;
	int found = 0;

	CHECK_COFFER(coffer_create_key(adm, "rsa", COFFER_KEY_RSA_2048, 0, NULL));
	fill(COFFER_BATCH_MAX);
	coffer_set_timeout(svc, 100);
	/* 1,024 RSA-2048 signatures take about half a second here on two
	 * cores (the batch's items are spread over them). */
	CU_ASSERT_EQUAL(coffer_sign_batch(svc, "rsa", 0, NULL, items, COFFER_BATCH_MAX, NULL),
			COFFER_E_TIMEOUT);
	coffer_set_timeout(svc, COFFER_DEFAULT_TIMEOUT_MS);
	for (int i = 0; i < 100 && !found; i++) {
		found = last_record("SignBatch", rec, sizeof(rec)) &&
			strstr(rec, "\"key\":\"rsa\"") != NULL;
		if (!found)
			usleep(50 * 1000);
	}
	CU_ASSERT_FATAL(found);
	CU_ASSERT_PTR_NOT_NULL(strstr(rec, "\"items\":1024"));
	if ((p = strstr(rec, "\"failed\":")) != NULL)
		failed = strtoul(p + 9, NULL, 10);
	printf("\n    a 100 ms deadline on 1,024 RSA signatures: %lu items not run\n", failed);
	CU_ASSERT(failed > COFFER_BATCH_MAX / 2);
	fill(COFFER_BATCH_MAX);
}

/* A client that seals every call: the batch travels in a session. */
static void
test_sealed(void)
{
	struct coffer_bytes spki = { NULL, 0 };
	coffer_client *sealed = NULL;
	char fpr[80], rec[2048];
	uint32_t ver = 0;

	CHECK_COFFER(coffer_get_identity(adm, &spki, fpr, sizeof(fpr)));
	CHECK_COFFER(coffer_connect(dmn.service, COFFER_CONNECT_SEAL_ALL, &sealed));
	CHECK_COFFER(coffer_pin_identity(sealed, spki.data, spki.len));
	coffer_bytes_free(&spki);
	fill(N);
	CHECK_COFFER(coffer_mac_batch(sealed, "mac", 0, items, N, &ver));
	CU_ASSERT_EQUAL(items[N - 1].status, COFFER_OK);
	CU_ASSERT_EQUAL(items[N - 1].out.len, 32);
	CU_ASSERT(last_record("MacBatch", rec, sizeof(rec)));
	CU_ASSERT_PTR_NOT_NULL(strstr(rec, "\"sealed\":true"));
	CU_ASSERT_PTR_NOT_NULL(strstr(rec, "\"items\":32,\"failed\":0"));
	coffer_close(sealed);
	fill(N);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "SignBatch and VerifyBatch: every item, checked by OpenSSL", test_sign_verify },
		{ "MacBatch and VerifyMacBatch against the unary calls", test_mac },
		{ "request-level refusals and their text", test_request_errors },
		{ "one grant check, a token per item, one audit record", test_grants_limits_audit },
		{ "a batch sealed in a session", test_sealed },
		{ "a batch stops at the caller's deadline", test_deadline },
		{ NULL, NULL },
	};

	return cf_test_main("batch", suite_init, suite_clean, cases);
}
