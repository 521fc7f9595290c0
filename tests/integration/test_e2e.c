/*
 * test_e2e — cofferd end to end through libcoffer on a throw-away token:
 * every KeyService and AdminService call and every key type, rotation,
 * envelope context binding, Rewrap, GenerateDataKey, independent OpenSSL
 * checks, health on both sockets, restart persistence and the single-instance
 * lock.
 *
 * On the token COFFER_TEST_TOKEN names (test_e2e: SoftHSM2; test_e2e_tpm: a
 * TPM 2.0 through tpm2-pkcs11). What needs a capability the token lacks (a
 * key type, an import) is skipped by capability after its refusal is checked
 * (cf_test_caps.h); the run ends with the list of skips.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "coffer.h"
#include "cf_test_caps.h"
#include "cf_test_client.h"
#include "cf_test_token.h"

static struct cf_test_token tok;
static struct cf_test_daemon dmn;
static coffer_client *svc, *adm;
static const uint8_t msg[] = "end to end through libcoffer";
static size_t nkeys; /* keys the cases made: what ListKeys must show */

static int
suite_init(void)
{
	if (cf_test_suite_up(&tok, "coffer-e2e", &dmn, &svc, &adm) != 0)
		return -1;
	return cf_test_caps_load(adm);
}

static int
suite_clean(void)
{
	cf_test_suite_down(&tok, &dmn, &svc, &adm);
	cf_test_caps_summary();
	return 0;
}

static int
openssl_verify(const struct coffer_public_key *pk, const struct coffer_sign_opts *o,
	       const uint8_t *sig, size_t siglen)
{
	return cf_test_openssl_verify(pk->der.data, pk->der.len,
				      pk->type == COFFER_KEY_EC_P384 ? CF_HASH_SHA384 : CF_HASH_SHA256,
				      o != NULL && o->scheme == COFFER_SCHEME_RSA_PKCS1, msg,
				      sizeof(msg), sig, siglen);
}

static void
test_health(void)
{
	enum coffer_serving_status st = COFFER_SERVING_UNKNOWN;

	CHECK_COFFER(coffer_health(svc, NULL, &st));
	CU_ASSERT_EQUAL(st, COFFER_SERVING);
	CHECK_COFFER(coffer_health(adm, "coffer.v1.AdminService", &st));
	CU_ASSERT_EQUAL(st, COFFER_SERVING);
	CU_ASSERT_EQUAL(coffer_health(svc, "no.such.Service", &st), COFFER_E_NOT_FOUND);
}

static void
test_every_signing_type(void)
{
	static const struct { const char *name; enum coffer_key_type t; } keys[] = {
		{ "e2e-p256", COFFER_KEY_EC_P256 }, { "e2e-p384", COFFER_KEY_EC_P384 },
		{ "e2e-ed25519", COFFER_KEY_ED25519 }, { "e2e-rsa2048", COFFER_KEY_RSA_2048 },
		{ "e2e-rsa3072", COFFER_KEY_RSA_3072 }, { "e2e-rsa4096", COFFER_KEY_RSA_4096 },
	};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		struct coffer_key_info *ki = NULL;
		struct coffer_public_key *pk = NULL;
		struct coffer_bytes sig = { NULL, 0 };
		struct coffer_sign_opts pk1 = { COFFER_HASH_SHA256, COFFER_SCHEME_RSA_PKCS1, 0, 0 };
		uint32_t ver = 0;
		int valid = -1;

		if (!cf_test_can_generate(adm, "every signing type", keys[i].t))
			continue;
		CHECK_COFFER(coffer_create_key(adm, keys[i].name, keys[i].t, 0, &ki));
		nkeys++;
		CU_ASSERT_EQUAL(ki->type, keys[i].t);
		CU_ASSERT_EQUAL(ki->purpose, COFFER_PURPOSE_SIGN);
		CU_ASSERT_EQUAL(ki->primary_version, 1);
		CHECK_COFFER(coffer_sign(svc, keys[i].name, 0, msg, sizeof(msg), NULL, &sig, &ver));
		CU_ASSERT_EQUAL(ver, 1);
		CHECK_COFFER(coffer_verify(svc, keys[i].name, ver, msg, sizeof(msg), NULL, sig.data, sig.len,
				 &valid));
		CU_ASSERT_EQUAL(valid, 1);
		CHECK_COFFER(coffer_get_public_key(svc, keys[i].name, 0, &pk));
		CU_ASSERT_EQUAL(pk->type, keys[i].t);
		CU_ASSERT(strncmp(pk->pem, "-----BEGIN PUBLIC KEY-----", 26) == 0);
		CU_ASSERT(openssl_verify(pk, NULL, sig.data, sig.len));
		/* a tampered signature is reported invalid, not as an error */
		sig.data[sig.len - 1] ^= 1;
		CHECK_COFFER(coffer_verify(svc, keys[i].name, ver, msg, sizeof(msg), NULL, sig.data, sig.len,
				 &valid));
		CU_ASSERT_EQUAL(valid, 0);
		coffer_bytes_free(&sig);
		if (keys[i].t >= COFFER_KEY_RSA_2048 && keys[i].t <= COFFER_KEY_RSA_4096) {
			char what[64];

			/* The mechanism list cannot tell: the first refusal
			 * (tpm2-pkcs11: CKM_RSA_PKCS, CKR_MECHANISM_INVALID) is
			 * checked, and GetTokenInfo lists it from then on. */
			snprintf(what, sizeof(what), "every signing type: %s", keys[i].name);
			if (cf_test_refused_by_token(coffer_sign(svc, keys[i].name, 0, msg,
								 sizeof(msg), &pk1, &sig, &ver),
						     what, "RSA PKCS#1 v1.5 signatures")) {
				CU_ASSERT(openssl_verify(pk, &pk1, sig.data, sig.len));
				coffer_bytes_free(&sig);
			}
		}
		coffer_public_key_free(pk);
		coffer_key_info_free(ki);
	}
}

static void
test_sign_digest_and_raw(void)
{
	struct coffer_sign_opts pre = { COFFER_HASH_SHA256, COFFER_SCHEME_DEFAULT, 1, 0 };
	struct coffer_sign_opts raw = { COFFER_HASH_DEFAULT, COFFER_SCHEME_DEFAULT, 0, 1 };
	struct coffer_bytes sig = { NULL, 0 };
	uint8_t digest[32];
	int valid = 0;

	SHA256(msg, sizeof(msg), digest);
	CHECK_COFFER(coffer_sign(svc, "e2e-p256", 0, digest, sizeof(digest), &pre, &sig, NULL));
	CHECK_COFFER(coffer_verify(svc, "e2e-p256", 1, msg, sizeof(msg), NULL, sig.data, sig.len, &valid));
	CU_ASSERT_EQUAL(valid, 1);
	coffer_bytes_free(&sig);
	CHECK_COFFER(coffer_sign(svc, "e2e-p256", 0, msg, sizeof(msg), &raw, &sig, NULL));
	CU_ASSERT_EQUAL(sig.len, 64);
	coffer_bytes_free(&sig);
	/* a digest of the wrong length, and Ed25519 with a digest */
	CU_ASSERT_EQUAL(coffer_sign(svc, "e2e-p256", 0, digest, 20, &pre, &sig, NULL),
			COFFER_E_INVALID_ARG);
	if (cf_test_can_generate(adm, "digests and raw ECDSA: Ed25519 with a digest",
				 COFFER_KEY_ED25519))
		CU_ASSERT_EQUAL(coffer_sign(svc, "e2e-ed25519", 0, digest, 32, &pre, &sig, NULL),
				COFFER_E_PRECONDITION);
}

static void
test_every_mac_type(void)
{
	static const enum coffer_key_type types[] = { COFFER_KEY_HMAC_SHA256,
		COFFER_KEY_HMAC_SHA384, COFFER_KEY_HMAC_SHA512 };
	static const char *names[] = { "e2e-mac256", "e2e-mac384", "e2e-mac512" };

	for (int i = 0; i < 3; i++) {
		struct coffer_bytes mac = { NULL, 0 };
		uint32_t ver = 0;
		int valid = -1;

		if (!cf_test_can_generate(adm, "every MAC type", types[i]))
			continue;
		CHECK_COFFER(coffer_create_key(adm, names[i], types[i], 0, NULL));
		nkeys++;
		CHECK_COFFER(coffer_mac(svc, names[i], 0, msg, sizeof(msg), &mac, &ver));
		CU_ASSERT_EQUAL(mac.len, (size_t)(32 + 16 * i));
		CHECK_COFFER(coffer_verify_mac(svc, names[i], ver, msg, sizeof(msg), mac.data, mac.len, &valid));
		CU_ASSERT_EQUAL(valid, 1);
		CHECK_COFFER(coffer_verify_mac(svc, names[i], ver, msg, sizeof(msg) - 1, mac.data, mac.len,
				     &valid));
		CU_ASSERT_EQUAL(valid, 0);
		coffer_bytes_free(&mac);
	}
}

static void
test_import_hmac_matches_openssl(void)
{
	uint8_t secret[48], expect[32];
	unsigned int elen = 0;
	struct coffer_bytes mac = { NULL, 0 };

	RAND_bytes(secret, sizeof(secret));
	/* asymmetric types cannot be imported, whatever the token */
	CU_ASSERT_EQUAL(coffer_import_key(adm, "e2e-ecimp", COFFER_KEY_EC_P256, secret, 32, 0,
					  NULL), COFFER_E_INVALID_ARG);
	if (!cf_test_can_import(adm, "imported HMAC secret matches OpenSSL",
				COFFER_KEY_HMAC_SHA256))
		return;
	CHECK_COFFER(coffer_import_key(adm, "e2e-imported", COFFER_KEY_HMAC_SHA256, secret, sizeof(secret), 0,
			     NULL));
	nkeys++;
	CHECK_COFFER(coffer_mac(svc, "e2e-imported", 0, msg, sizeof(msg), &mac, NULL));
	HMAC(EVP_sha256(), secret, sizeof(secret), msg, sizeof(msg), expect, &elen);
	CU_ASSERT(mac.len == 32 && memcmp(mac.data, expect, 32) == 0);
	coffer_bytes_free(&mac);
	/* too short for HMAC-SHA256 */
	CU_ASSERT_EQUAL(coffer_import_key(adm, "e2e-short", COFFER_KEY_HMAC_SHA256, secret, 16, 0,
					  NULL), COFFER_E_INVALID_ARG);
}

static void
test_wrap_unwrap_context(void)
{
	static const struct coffer_kv ctx[] = { { "tenant", "blue" }, { "table", "users" } };
	static const struct coffer_kv swapped[] = { { "table", "users" }, { "tenant", "blue" } };
	static const struct coffer_kv wrong[] = { { "tenant", "red" }, { "table", "users" } };
	uint8_t secret[200];
	struct coffer_bytes ct = { NULL, 0 }, pt = { NULL, 0 };
	uint32_t ver = 0;

	RAND_bytes(secret, sizeof(secret));
	if (!cf_test_can_generate(adm, "wrap/unwrap bound to the context", COFFER_KEY_AES_256))
		return;
	CHECK_COFFER(coffer_create_key(adm, "e2e-aes", COFFER_KEY_AES_256, 0, NULL));
	nkeys++;
	CHECK_COFFER(coffer_wrap(svc, "e2e-aes", secret, sizeof(secret), ctx, 2, &ct, &ver));
	CU_ASSERT_EQUAL(ver, 1);
	CU_ASSERT_EQUAL(ct.len, 1 + 4 + 12 + sizeof(secret) + 16);
	CU_ASSERT_EQUAL(ct.data[0], 0x01);
	CHECK_COFFER(coffer_unwrap(svc, "e2e-aes", ct.data, ct.len, ctx, 2, &pt, &ver));
	CU_ASSERT(pt.len == sizeof(secret) && memcmp(pt.data, secret, pt.len) == 0);
	coffer_bytes_free(&pt);
	/* the order of the context entries does not matter, their content does */
	CHECK_COFFER(coffer_unwrap(svc, "e2e-aes", ct.data, ct.len, swapped, 2, &pt, NULL));
	coffer_bytes_free(&pt);
	CU_ASSERT_EQUAL(coffer_unwrap(svc, "e2e-aes", ct.data, ct.len, wrong, 2, &pt, NULL),
			COFFER_E_INVALID_ARG);
	CU_ASSERT_EQUAL(coffer_unwrap(svc, "e2e-aes", ct.data, ct.len, ctx, 1, &pt, NULL),
			COFFER_E_INVALID_ARG);
	CU_ASSERT_EQUAL(coffer_unwrap(svc, "e2e-aes", ct.data, ct.len, NULL, 0, &pt, NULL),
			COFFER_E_INVALID_ARG);
	/* a flipped ciphertext byte */
	ct.data[30] ^= 1;
	CU_ASSERT_EQUAL(coffer_unwrap(svc, "e2e-aes", ct.data, ct.len, ctx, 2, &pt, NULL),
			COFFER_E_INVALID_ARG);
	CU_ASSERT_PTR_NULL(pt.data);
	coffer_bytes_free(&ct);
}

static void
test_rotation_rewrap_data_keys(void)
{
	static const struct coffer_kv ctx[] = { { "purpose", "rotation" } };
	struct coffer_bytes sig1 = { NULL, 0 }, sig2 = { NULL, 0 }, ct1 = { NULL, 0 },
			    ct2 = { NULL, 0 }, pt = { NULL, 0 }, dk = { NULL, 0 }, dkct = { NULL, 0 };
	struct coffer_key_info *ki = NULL;
	uint32_t v = 0, prev = 0;
	int valid = 0;

	/* signing: old versions keep verifying, new signatures use the new one */
	CHECK_COFFER(coffer_sign(svc, "e2e-p256", 0, msg, sizeof(msg), NULL, &sig1, &v));
	CU_ASSERT_EQUAL(v, 1);
	CHECK_COFFER(coffer_rotate_key(adm, "e2e-p256", &ki));
	CU_ASSERT_EQUAL(ki->primary_version, 2);
	CU_ASSERT_EQUAL(ki->nversions, 2);
	coffer_key_info_free(ki);
	CHECK_COFFER(coffer_sign(svc, "e2e-p256", 0, msg, sizeof(msg), NULL, &sig2, &v));
	CU_ASSERT_EQUAL(v, 2);
	CHECK_COFFER(coffer_verify(svc, "e2e-p256", 1, msg, sizeof(msg), NULL, sig1.data, sig1.len, &valid));
	CU_ASSERT_EQUAL(valid, 1);
	CHECK_COFFER(coffer_verify(svc, "e2e-p256", 2, msg, sizeof(msg), NULL, sig2.data, sig2.len, &valid));
	CU_ASSERT_EQUAL(valid, 1);
	CHECK_COFFER(coffer_verify(svc, "e2e-p256", 2, msg, sizeof(msg), NULL, sig1.data, sig1.len, &valid));
	CU_ASSERT_EQUAL(valid, 0);
	CU_ASSERT_EQUAL(coffer_verify(svc, "e2e-p256", 3, msg, sizeof(msg), NULL, sig1.data,
				      sig1.len, &valid), COFFER_E_NOT_FOUND);
	coffer_bytes_free(&sig1);
	coffer_bytes_free(&sig2);
	if (!cf_test_can_generate(adm, "rotation, rewrap, data keys: the envelope part",
				  COFFER_KEY_AES_256))
		return;
	/* envelope: v1 blobs still open; Rewrap moves them to v2 */
	CHECK_COFFER(coffer_wrap(svc, "e2e-aes", msg, sizeof(msg), ctx, 1, &ct1, &v));
	CHECK_COFFER(coffer_rotate_key(adm, "e2e-aes", NULL));
	CHECK_COFFER(coffer_unwrap(svc, "e2e-aes", ct1.data, ct1.len, ctx, 1, &pt, &v));
	CU_ASSERT_EQUAL(v, 1);
	coffer_bytes_free(&pt);
	CHECK_COFFER(coffer_rewrap(svc, "e2e-aes", ct1.data, ct1.len, ctx, 1, &ct2, &v, &prev));
	CU_ASSERT_EQUAL(v, 2);
	CU_ASSERT_EQUAL(prev, 1);
	CHECK_COFFER(coffer_unwrap(svc, "e2e-aes", ct2.data, ct2.len, ctx, 1, &pt, &v));
	CU_ASSERT_EQUAL(v, 2);
	CU_ASSERT(pt.len == sizeof(msg) && memcmp(pt.data, msg, pt.len) == 0);
	coffer_bytes_free(&pt);
	/* data keys: wrapped under v2, plaintext on request, unwraps to the same */
	CHECK_COFFER(coffer_generate_data_key(svc, "e2e-aes", 32, ctx, 1, &dkct, &dk, &v));
	CU_ASSERT_EQUAL(v, 2);
	CU_ASSERT_EQUAL(dk.len, 32);
	CHECK_COFFER(coffer_unwrap(svc, "e2e-aes", dkct.data, dkct.len, ctx, 1, &pt, NULL));
	CU_ASSERT(pt.len == 32 && memcmp(pt.data, dk.data, 32) == 0);
	coffer_bytes_free(&pt);
	coffer_bytes_free(&dk);
	coffer_bytes_free(&dkct);
	CHECK_COFFER(coffer_generate_data_key(svc, "e2e-aes", 16, NULL, 0, &dkct, NULL, NULL));
	CU_ASSERT_EQUAL(dkct.len, 1 + 4 + 12 + 16 + 16);
	CU_ASSERT_EQUAL(coffer_generate_data_key(svc, "e2e-aes", 17, NULL, 0, &dk, NULL, NULL),
			COFFER_E_INVALID_ARG);
	coffer_bytes_free(&dkct);
	coffer_bytes_free(&ct1);
	coffer_bytes_free(&ct2);
}

static void
test_metadata_and_errors(void)
{
	struct coffer_key_list *l = NULL;
	struct coffer_key_info *ki = NULL;
	struct coffer_bytes out = { NULL, 0 };
	int seen = 0;

	CHECK_COFFER(coffer_list_keys(svc, &l));
	CU_ASSERT_EQUAL(l->nkeys, nkeys);
	for (size_t i = 0; i < l->nkeys; i++) {
		if (i > 0)
			CU_ASSERT(strcmp(l->keys[i - 1].name, l->keys[i].name) < 0);
		seen += strcmp(l->keys[i].name, "e2e-rsa3072") == 0;
	}
	CU_ASSERT_EQUAL(seen, 1);
	coffer_key_list_free(l);
	CU_ASSERT_EQUAL(coffer_get_key(svc, "missing", &ki), COFFER_E_NOT_FOUND);
	CU_ASSERT_EQUAL(coffer_sign(svc, "missing", 0, msg, 1, NULL, &out, NULL), COFFER_E_NOT_FOUND);
	/* wrong purpose */
	CU_ASSERT_EQUAL(coffer_wrap(svc, "e2e-p384", msg, 1, NULL, 0, &out, NULL),
			COFFER_E_PRECONDITION);
	/* duplicate names and bad names */
	CU_ASSERT_EQUAL(coffer_create_key(adm, "e2e-p384", COFFER_KEY_EC_P384, 0, NULL),
			COFFER_E_EXISTS);
	CU_ASSERT_EQUAL(coffer_create_key(adm, "Bad Name", COFFER_KEY_EC_P256, 0, NULL),
			COFFER_E_INVALID_ARG);
	CU_ASSERT_EQUAL(coffer_create_key(adm, "x", COFFER_KEY_UNSPECIFIED, 0, NULL),
			COFFER_E_INVALID_ARG);
	/* admin calls on the service socket are not there */
	CU_ASSERT_EQUAL(coffer_create_key(svc, "e2e-nope", COFFER_KEY_AES_256, 0, NULL),
			COFFER_E_UNIMPLEMENTED);
	CU_ASSERT_EQUAL(coffer_sign(adm, "e2e-p256", 0, msg, 1, NULL, &out, NULL),
			COFFER_E_UNIMPLEMENTED);
	CU_ASSERT_PTR_NULL(out.data);
	if (cf_test_can_generate(adm, "metadata and error statuses: MAC key to sign",
				 COFFER_KEY_HMAC_SHA256)) {
		CU_ASSERT_EQUAL(coffer_sign(svc, "e2e-mac256", 0, msg, 1, NULL, &out, NULL),
				COFFER_E_PRECONDITION);
		CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "mac key"));
	}
	if (!cf_test_can_generate(adm, "metadata and error statuses: the AES key's",
				  COFFER_KEY_AES_256))
		return;
	CHECK_COFFER(coffer_get_key(adm, "e2e-aes", &ki));
	CU_ASSERT_EQUAL(ki->purpose, COFFER_PURPOSE_WRAP);
	CU_ASSERT_EQUAL(ki->nversions, 2);
	coffer_key_info_free(ki);
	CU_ASSERT_EQUAL(coffer_get_public_key(svc, "e2e-aes", 0, NULL), COFFER_E_INVALID_ARG);
	CU_ASSERT_EQUAL(coffer_create_key(adm, "e2e-aes", COFFER_KEY_AES_256, 0, NULL),
			COFFER_E_EXISTS);
}

/* Keys and versions survive a restart; a second daemon is refused. */
/* HMAC-signed HTTP requests through libcoffer; the signature checked with
 * OpenSSL over the canonical request as proto/request-signing.md writes it. */
static void
test_http_request_signing(void)
{
	static const uint8_t secret[32] = { 7, 7, 7, 1, 2, 3 };
	static const uint8_t body[] = "{\"amount\":42}";
	struct coffer_http_request rq = { "e2e-rest-api", "POST", "/v1/pay", "b=2&a=%7e1",
					  body, sizeof(body) - 1, 0, NULL };
	struct coffer_http_signature *hs = NULL;
	enum coffer_request_verdict v = 0;
	char *cq = NULL, *reason = NULL, expect[1024], hex[65], sha_hex[65];
	uint8_t sha[32], mac[32];
	unsigned maclen = 0;
	uint32_t ver = 0;

	CHECK_COFFER(coffer_canonical_query("b=2&a=%7e1", &cq));
	CU_ASSERT_STRING_EQUAL(cq, "a=~1&b=2");
	if (!cf_test_can_import(adm, "HMAC-signed HTTP requests", COFFER_KEY_HMAC_SHA256)) {
		free(cq);
		return;
	}
	CHECK_COFFER(coffer_import_key(adm, "e2e-rest-api", COFFER_KEY_HMAC_SHA256, secret,
				       sizeof(secret), 0, NULL));
	CHECK_COFFER(coffer_sign_http_request(svc, &rq, &hs));
	EVP_Digest(body, sizeof(body) - 1, sha, NULL, EVP_sha256(), NULL);
	for (int i = 0; i < 32; i++)
		snprintf(sha_hex + 2 * i, 3, "%02x", sha[i]);
	snprintf(expect, sizeof(expect), "COFFER-HMAC-SHA256-HTTP\nPOST\n/v1/pay\n%s\n%s\n%lld\n%s\n"
		 "e2e-rest-api", cq, sha_hex, (long long)hs->timestamp, hs->nonce);
	HMAC(EVP_sha256(), secret, sizeof(secret), (const uint8_t *)expect, strlen(expect), mac,
	     &maclen);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", mac[i]);
	CU_ASSERT_STRING_EQUAL(hs->signature, hex);
	CU_ASSERT_PTR_NOT_NULL(strstr(hs->authorization, hex));
	rq.timestamp = hs->timestamp;
	rq.nonce = hs->nonce;
	CHECK_COFFER(coffer_verify_http_request(svc, &rq, hs->signature, &v, &reason, &ver));
	CU_ASSERT_EQUAL(v, COFFER_REQUEST_VALID);
	CU_ASSERT_EQUAL(ver, 1);
	free(reason);
	reason = NULL;
	CHECK_COFFER(coffer_verify_http_request(svc, &rq, hs->signature, &v, &reason, NULL));
	CU_ASSERT_EQUAL(v, COFFER_REQUEST_REPLAYED_NONCE);
	free(reason);
	reason = NULL;
	rq.path = "/v1/refund";
	rq.nonce = "another-nonce-123";
	CHECK_COFFER(coffer_verify_http_request(svc, &rq, hs->signature, &v, NULL, NULL));
	CU_ASSERT_EQUAL(v, COFFER_REQUEST_BAD_SIGNATURE);
	rq.raw_query = "a=%zz";
	CU_ASSERT_EQUAL(coffer_verify_http_request(svc, &rq, hs->signature, &v, NULL, NULL),
			COFFER_E_INVALID_ARG);
	coffer_http_signature_free(hs);
	free(cq);
}

static void
test_restart_and_single_instance(void)
{
	struct cf_test_daemon second;
	struct coffer_key_info *ki = NULL;
	struct coffer_bytes sig = { NULL, 0 };
	/* an Ed25519 signature where the token makes such keys, else a P-384 one */
	const char *key = cf_test_can_generate(adm, "restart keeps keys: an Ed25519 signature",
					       COFFER_KEY_ED25519) ? "e2e-ed25519" : "e2e-p384";
	uint32_t v = 0;
	int valid = 0;

	CHECK_COFFER(coffer_sign(svc, key, 0, msg, sizeof(msg), NULL, &sig, &v));
	/* a second daemon on the same sockets exits at once */
	{
		struct cf_test_token other = tok;

		CU_ASSERT_NOT_EQUAL(cf_test_daemon_start(&other, &second, NULL), 0);
		CU_ASSERT(cf_test_daemon_log_has(&second, "another cofferd is serving"));
	}
	CU_ASSERT_EQUAL_FATAL(cf_test_suite_restart(&tok, &dmn, &svc, &adm), 0);
	CHECK_COFFER(coffer_get_key(svc, "e2e-p256", &ki));
	CU_ASSERT_EQUAL(ki->primary_version, 2);
	CU_ASSERT_EQUAL(ki->nversions, 2);
	coffer_key_info_free(ki);
	CHECK_COFFER(coffer_verify(svc, key, v, msg, sizeof(msg), NULL, sig.data, sig.len, &valid));
	CU_ASSERT_EQUAL(valid, 1);
	CU_ASSERT_FALSE(cf_test_daemon_log_has(&dmn, "reconcile:"));
	coffer_bytes_free(&sig);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "health on both sockets", test_health },
		{ "every signing type: create, sign, verify, OpenSSL", test_every_signing_type },
		{ "digests and raw ECDSA", test_sign_digest_and_raw },
		{ "every MAC type", test_every_mac_type },
		{ "imported HMAC secret matches OpenSSL", test_import_hmac_matches_openssl },
		{ "wrap/unwrap bound to the context", test_wrap_unwrap_context },
		{ "rotation, rewrap, data keys", test_rotation_rewrap_data_keys },
		{ "metadata and error statuses", test_metadata_and_errors },
		{ "HMAC-signed HTTP requests", test_http_request_signing },
		{ "restart keeps keys; second daemon refused", test_restart_and_single_instance },
		{ NULL, NULL },
	};

	cf_test_tpm_gate();
	return cf_test_main("e2e", suite_init, suite_clean, cases);
}
