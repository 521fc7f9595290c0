/*
 * test_p11_keys — the PKCS#11 layer against a real SoftHSM2 token: every key
 * type generated, used and tampered with; independent checks with OpenSSL;
 * RFC 4231 vectors; AES-GCM tamper paths; ECDH; object
 * attributes read back raw; persistence across processes; bad inputs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "cf_status.h"
#include "cf_test_token.h"

static struct cf_test_token tok;
static cf_p11 *p11;

static const uint8_t msg[] = "Coffer keeps keys inside the token.";

static int
suite_init(void)
{
	if (cf_test_token_create(&tok, "coffer-keys") != 0)
		return -1;
	if (cf_p11_open(&tok.cfg, &p11) != CF_OK) {
		fprintf(stderr, "cf_p11_open: %s\n", cf_error_detail());
		return -1;
	}
	return 0;
}

static int
suite_clean(void)
{
	cf_p11_close(p11);
	cf_test_token_destroy(&tok);
	return 0;
}

static cf_p11_key *
gen(const char *name, enum cf_key_type t, unsigned flags)
{
	cf_p11_key *k = NULL;
	int r = cf_p11_key_generate(p11, name, 1, t, flags, &k);

	if (r != CF_OK)
		fprintf(stderr, "generate %s: %s\n", name, cf_error_detail());
	CU_ASSERT_EQUAL_FATAL(r, CF_OK);
	CU_ASSERT_EQUAL(cf_p11_key_type(k), t);
	return k;
}

/* Verify `sig` over `msg` with OpenSSL alone, from the exported SPKI. */
static int
openssl_verify(cf_p11_key *k, const struct cf_sign_params *sp, const uint8_t *sig, size_t siglen)
{
	cf_buf *der = cf_buf_new(4096);
	enum cf_hash h = sp && sp->hash ? sp->hash : cf_key_default_hash(cf_p11_key_type(k));
	int ok = cf_p11_pubkey_der(k, der) == CF_OK &&
		 cf_test_openssl_verify(cf_buf_peek(der), cf_buf_len(der), h,
					sp != NULL && sp->scheme == CF_SIG_RSA_PKCS1, msg,
					sizeof(msg), sig, siglen);

	cf_buf_free(der);
	return ok;
}

static void
sign_round(cf_p11_key *k, const struct cf_sign_params *sp)
{
	cf_buf *sig = cf_buf_new(CF_P11_MAX_SIG);
	uint8_t bad[sizeof(msg)], badsig[CF_P11_MAX_SIG];
	size_t n;

	CHECK_OK(cf_p11_sign(k, sp, msg, sizeof(msg), sig));
	n = cf_buf_len(sig);
	CU_ASSERT(n > 0);
	CHECK_OK(cf_p11_verify(k, sp, msg, sizeof(msg), cf_buf_peek(sig), n));
	CU_ASSERT(openssl_verify(k, sp, cf_buf_peek(sig), n));
	/* a changed message */
	memcpy(bad, msg, sizeof(msg));
	bad[3] ^= 0x01;
	CU_ASSERT_EQUAL(cf_p11_verify(k, sp, bad, sizeof(bad), cf_buf_peek(sig), n),
			CF_E_BAD_SIGNATURE);
	/* a changed signature: last byte, and truncated */
	memcpy(badsig, cf_buf_peek(sig), n);
	badsig[n - 1] ^= 0x80;
	CU_ASSERT_EQUAL(cf_p11_verify(k, sp, msg, sizeof(msg), badsig, n), CF_E_BAD_SIGNATURE);
	CU_ASSERT_EQUAL(cf_p11_verify(k, sp, msg, sizeof(msg), cf_buf_peek(sig), n - 1),
			CF_E_BAD_SIGNATURE);
	CU_ASSERT_FALSE(openssl_verify(k, sp, badsig, n));
	cf_buf_free(sig);
}

static void
test_asymmetric_types(void)
{
	static const struct { const char *name; enum cf_key_type t; } types[] = {
		{ "sig-p256", CF_KEY_EC_P256 }, { "sig-p384", CF_KEY_EC_P384 },
		{ "sig-ed25519", CF_KEY_ED25519 }, { "sig-rsa2048", CF_KEY_RSA_2048 },
		{ "sig-rsa3072", CF_KEY_RSA_3072 }, { "sig-rsa4096", CF_KEY_RSA_4096 },
	};
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		cf_p11_key *k = gen(types[i].name, types[i].t, 0);

		sign_round(k, NULL);
		if (cf_key_type_is_rsa(types[i].t)) {
			struct cf_sign_params pk1 = { CF_SIG_RSA_PKCS1, CF_HASH_SHA256, 0, 0 };
			struct cf_sign_params pss512 = { CF_SIG_RSA_PSS, CF_HASH_SHA512, 0, 0 };

			sign_round(k, &pk1);
			sign_round(k, &pss512);
		}
		cf_p11_key_free(k);
	}
}

static void
test_ecdsa_forms(void)
{
	cf_p11_key *k = NULL;
	struct cf_sign_params raw = { CF_SIG_ECDSA, CF_HASH_SHA256, 0, 1 };
	struct cf_sign_params pre = { CF_SIG_ECDSA, CF_HASH_SHA256, 1, 0 };
	struct cf_sign_params der384 = { CF_SIG_ECDSA, CF_HASH_SHA384, 0, 0 };
	uint8_t digest[32];
	cf_buf *sig = cf_buf_new(CF_P11_MAX_SIG);

	CHECK_OK(cf_p11_key_open(p11, "sig-p256", 1, &k));
	/* raw r||s is exactly 64 bytes and verifies in raw mode only */
	CHECK_OK(cf_p11_sign(k, &raw, msg, sizeof(msg), sig));
	CU_ASSERT_EQUAL(cf_buf_len(sig), 64);
	CHECK_OK(cf_p11_verify(k, &raw, msg, sizeof(msg), cf_buf_peek(sig), 64));
	CU_ASSERT_EQUAL(cf_p11_verify(k, NULL, msg, sizeof(msg), cf_buf_peek(sig), 64),
			CF_E_BAD_SIGNATURE);
	/* a host digest signs the same as the message */
	cf_buf_reset(sig);
	SHA256(msg, sizeof(msg), digest);
	CHECK_OK(cf_p11_sign(k, &pre, digest, sizeof(digest), sig));
	CHECK_OK(cf_p11_verify(k, NULL, msg, sizeof(msg), cf_buf_peek(sig), cf_buf_len(sig)));
	CU_ASSERT(openssl_verify(k, NULL, cf_buf_peek(sig), cf_buf_len(sig)));
	/* a digest of the wrong length is refused */
	CU_ASSERT_EQUAL(cf_p11_sign(k, &pre, digest, 31, sig), CF_E_INVALID_ARG);
	sign_round(k, &der384);
	cf_buf_free(sig);
	cf_p11_key_free(k);
}

static void
test_hmac_types(void)
{
	static const enum cf_key_type types[] = { CF_KEY_HMAC_SHA256, CF_KEY_HMAC_SHA384,
						  CF_KEY_HMAC_SHA512 };
	static const char *names[] = { "mac-256", "mac-384", "mac-512" };

	for (size_t i = 0; i < 3; i++) {
		cf_p11_key *k = gen(names[i], types[i], 0);
		cf_buf *mac = cf_buf_new(64);
		uint8_t bad[64];
		size_t n;

		CHECK_OK(cf_p11_mac(k, msg, sizeof(msg), mac));
		n = cf_buf_len(mac);
		CU_ASSERT_EQUAL(n, cf_hash_len(cf_key_default_hash(types[i])));
		CHECK_OK(cf_p11_mac_verify(k, msg, sizeof(msg), cf_buf_peek(mac), n));
		memcpy(bad, cf_buf_peek(mac), n);
		bad[0] ^= 1;
		CU_ASSERT_EQUAL(cf_p11_mac_verify(k, msg, sizeof(msg), bad, n), CF_E_BAD_SIGNATURE);
		CU_ASSERT_EQUAL(cf_p11_mac_verify(k, msg, sizeof(msg) - 1, cf_buf_peek(mac), n),
				CF_E_BAD_SIGNATURE);
		CU_ASSERT_EQUAL(cf_p11_mac_verify(k, msg, sizeof(msg), bad, n - 1),
				CF_E_BAD_SIGNATURE);
		cf_buf_free(mac);
		cf_p11_key_free(k);
	}
}

static size_t
unhex(const char *hex, uint8_t *out)
{
	size_t n = strlen(hex) / 2;

	for (size_t i = 0; i < n; i++)
		sscanf(hex + 2 * i, "%2hhx", &out[i]);
	return n;
}

/* RFC 4231 test cases 6 and 7 (131-byte key), for SHA-256/384/512. */
static void
test_hmac_rfc4231(void)
{
	static const char *data[] = {
		"Test Using Larger Than Block-Size Key - Hash Key First",
		"This is a test using a larger than block-size key and a larger than block-size "
		"data. The key needs to be hashed before being used by the HMAC algorithm.",
	};
	static const char *expect[2][3] = {
		{ "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
		  "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6"
		  "0c2ef6ab4030fe8296248df163f44952",
		  "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
		  "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598" },
		{ "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
		  "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5"
		  "a678cc31e799176d3860e6110c46523e",
		  "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944"
		  "b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58" },
	};
	static const enum cf_key_type types[] = { CF_KEY_HMAC_SHA256, CF_KEY_HMAC_SHA384,
						  CF_KEY_HMAC_SHA512 };
	cf_secret *key = NULL, *short_key = NULL;
	cf_p11_key *k = NULL;
	char name[32];

	CHECK_OK(cf_secret_new(131, &key));
	memset(cf_secret_ptr(key), 0xaa, 131);
	for (int t = 0; t < 3; t++) {
		snprintf(name, sizeof(name), "rfc4231-%d", t);
		CHECK_OK(cf_p11_key_import(p11, name, 1, types[t], key, 0, &k));
		for (int c = 0; c < 2; c++) {
			cf_buf *mac = cf_buf_new(64);
			uint8_t want[64];
			size_t wl = unhex(expect[c][t], want);

			CHECK_OK(cf_p11_mac(k, (const uint8_t *)data[c], strlen(data[c]), mac));
			CU_ASSERT_EQUAL(cf_buf_len(mac), wl);
			CU_ASSERT(memcmp(cf_buf_peek(mac), want, wl) == 0);
			CHECK_OK(cf_p11_mac_verify(k, (const uint8_t *)data[c], strlen(data[c]),
						   want, wl));
			cf_buf_free(mac);
		}
		cf_p11_key_free(k);
		k = NULL;
	}
	/* RFC 4231 case 3's 20-byte key is below the HMAC-SHA256 minimum of 32. */
	CHECK_OK(cf_secret_new(20, &short_key));
	memset(cf_secret_ptr(short_key), 0xaa, 20);
	CU_ASSERT_EQUAL(cf_p11_key_import(p11, "short", 1, CF_KEY_HMAC_SHA256, short_key, 0, &k),
			CF_E_INVALID_ARG);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "at least 32"));
	cf_secret_free(short_key);
	cf_secret_free(key);
}

static void
test_gcm(void)
{
	cf_p11_key *k = gen("gcm", CF_KEY_AES_256, 0);
	static const uint8_t aad[] = "tenant=blue;purpose=test";
	uint8_t pt[1024], iv[CF_GCM_IV_LEN], iv2[CF_GCM_IV_LEN], bad[1024 + 16], badaad[sizeof(aad)];
	cf_buf *ct = cf_buf_new(2048), *ct2 = cf_buf_new(2048);
	cf_secret *out = NULL;
	struct cf_p11_stats s0, s1;
	size_t n;

	RAND_bytes(pt, sizeof(pt));
	CHECK_OK(cf_p11_gcm_encrypt(k, aad, sizeof(aad), pt, sizeof(pt), iv, ct));
	n = cf_buf_len(ct);
	CU_ASSERT_EQUAL(n, sizeof(pt) + CF_GCM_TAG_LEN);
	CHECK_OK(cf_p11_gcm_decrypt(k, aad, sizeof(aad), iv, cf_buf_peek(ct), n, &out));
	CU_ASSERT(cf_secret_equal_mem(out, pt, sizeof(pt)));
	cf_secret_free(out);
	out = NULL;
	/* a second encryption of the same data uses a fresh IV */
	CHECK_OK(cf_p11_gcm_encrypt(k, aad, sizeof(aad), pt, sizeof(pt), iv2, ct2));
	CU_ASSERT(memcmp(iv, iv2, sizeof(iv)) != 0);
	CU_ASSERT(memcmp(cf_buf_peek(ct), cf_buf_peek(ct2), n) != 0);
	/* any change to ciphertext, tag, IV or AAD is rejected (by the token:
	 * no token error, for metrics) */
	cf_p11_stats(p11, &s0);
	memcpy(bad, cf_buf_peek(ct), n);
	bad[10] ^= 1;
	CU_ASSERT_EQUAL(cf_p11_gcm_decrypt(k, aad, sizeof(aad), iv, bad, n, &out), CF_E_DECRYPT);
	memcpy(bad, cf_buf_peek(ct), n);
	bad[n - 1] ^= 1;
	CU_ASSERT_EQUAL(cf_p11_gcm_decrypt(k, aad, sizeof(aad), iv, bad, n, &out), CF_E_DECRYPT);
	iv2[0] = iv[0] ^ 1;
	memcpy(iv2 + 1, iv + 1, sizeof(iv) - 1);
	CU_ASSERT_EQUAL(cf_p11_gcm_decrypt(k, aad, sizeof(aad), iv2, cf_buf_peek(ct), n, &out),
			CF_E_DECRYPT);
	memcpy(badaad, aad, sizeof(aad));
	badaad[0] ^= 1;
	CU_ASSERT_EQUAL(cf_p11_gcm_decrypt(k, badaad, sizeof(aad), iv, cf_buf_peek(ct), n, &out),
			CF_E_DECRYPT);
	CU_ASSERT_EQUAL(cf_p11_gcm_decrypt(k, aad, sizeof(aad) - 1, iv, cf_buf_peek(ct), n, &out),
			CF_E_DECRYPT);
	CU_ASSERT_EQUAL(cf_p11_gcm_decrypt(k, aad, sizeof(aad), iv, cf_buf_peek(ct), n - 1, &out),
			CF_E_DECRYPT);
	CU_ASSERT_EQUAL(cf_p11_gcm_decrypt(k, aad, sizeof(aad), iv, cf_buf_peek(ct), 8, &out),
			CF_E_DECRYPT);
	CU_ASSERT_PTR_NULL(out);
	cf_p11_stats(p11, &s1);
	CU_ASSERT(s1.operations >= s0.operations + 6);
	CU_ASSERT_EQUAL(s1.errors, s0.errors);
	/* empty plaintext and empty AAD work */
	cf_buf_reset(ct);
	CHECK_OK(cf_p11_gcm_encrypt(k, NULL, 0, NULL, 0, iv, ct));
	CHECK_OK(cf_p11_gcm_decrypt(k, NULL, 0, iv, cf_buf_peek(ct), cf_buf_len(ct), &out));
	CU_ASSERT_EQUAL(cf_secret_len(out), 0);
	cf_secret_free(out);
	cf_buf_free(ct);
	cf_buf_free(ct2);
	cf_p11_key_free(k);
}

static void
test_ecdh(void)
{
	cf_p11_key *k = gen("ecdh", CF_KEY_EC_P256, CF_P11_DERIVE), *nod = NULL;
	EVP_PKEY *eph = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"), *tokpub = NULL;
	EVP_PKEY_CTX *dctx = NULL;
	cf_buf *der = cf_buf_new(512);
	cf_secret *shared = NULL;
	uint8_t point[65], expect[32], bad[65];
	size_t plen = sizeof(point), elen = sizeof(expect);
	const unsigned char *q;

	CU_ASSERT_FATAL(eph != NULL);
	CU_ASSERT_FATAL(EVP_PKEY_get_octet_string_param(eph, "encoded-pub-key", point, plen,
							&plen) == 1);
	CHECK_OK(cf_p11_ecdh(k, point, plen, &shared));
	CHECK_OK(cf_p11_pubkey_der(k, der));
	q = cf_buf_peek(der);
	tokpub = d2i_PUBKEY(NULL, &q, (long)cf_buf_len(der));
	dctx = EVP_PKEY_CTX_new(eph, NULL);
	CU_ASSERT_FATAL(tokpub && dctx && EVP_PKEY_derive_init(dctx) == 1 &&
			EVP_PKEY_derive_set_peer(dctx, tokpub) == 1 &&
			EVP_PKEY_derive(dctx, expect, &elen) == 1);
	CU_ASSERT_EQUAL(elen, 32);
	CU_ASSERT(cf_secret_equal_mem(shared, expect, elen));
	/* a point off the curve, a short point, and a key not made for ECDH */
	memcpy(bad, point, sizeof(bad));
	bad[40] ^= 1;
	CU_ASSERT_EQUAL(cf_p11_ecdh(k, bad, sizeof(bad), &shared), CF_E_INVALID_ARG);
	CU_ASSERT_EQUAL(cf_p11_ecdh(k, point, 33, &shared), CF_E_INVALID_ARG);
	CHECK_OK(cf_p11_key_open(p11, "sig-p256", 1, &nod));
	CU_ASSERT_NOT_EQUAL(cf_p11_ecdh(nod, point, plen, &shared), CF_OK);
	cf_secret_free(shared);
	EVP_PKEY_CTX_free(dctx);
	EVP_PKEY_free(tokpub);
	EVP_PKEY_free(eph);
	cf_buf_free(der);
	cf_p11_key_free(nod);
	cf_p11_key_free(k);
}

static void
test_pubkey_pem(void)
{
	cf_p11_key *k = NULL, *mac = NULL;
	cf_buf *pem = cf_buf_new(4096);
	BIO *bio;
	EVP_PKEY *pk;

	CHECK_OK(cf_p11_key_open(p11, "sig-ed25519", 1, &k));
	CHECK_OK(cf_p11_pubkey_pem(k, pem));
	CU_ASSERT(memcmp(cf_buf_peek(pem), "-----BEGIN PUBLIC KEY-----", 26) == 0);
	bio = BIO_new_mem_buf(cf_buf_peek(pem), (int)cf_buf_len(pem));
	pk = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
	CU_ASSERT_PTR_NOT_NULL(pk);
	CU_ASSERT_EQUAL(EVP_PKEY_get_id(pk), EVP_PKEY_ED25519);
	EVP_PKEY_free(pk);
	BIO_free(bio);
	CHECK_OK(cf_p11_key_open(p11, "mac-256", 1, &mac));
	CU_ASSERT_EQUAL(cf_p11_pubkey_der(mac, pem), CF_E_WRONG_KEY_TYPE);
	cf_p11_key_free(mac);
	cf_p11_key_free(k);
	cf_buf_free(pem);
}

static int
read_bool(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t)
{
	CK_BBOOL v = 2;
	CK_ATTRIBUTE a = { t, &v, sizeof(v) };

	if (f->C_GetAttributeValue(s, o, &a, 1) != CKR_OK)
		return -1;
	return v;
}

/* Every generated private/secret object, read back with raw Cryptoki. */
static void
test_object_attributes(void)
{
	static const struct { const char *label; CK_OBJECT_CLASS cls; } objs[] = {
		{ "coffer/sig-p256/1", CKO_PRIVATE_KEY }, { "coffer/sig-p384/1", CKO_PRIVATE_KEY },
		{ "coffer/sig-ed25519/1", CKO_PRIVATE_KEY },
		{ "coffer/sig-rsa2048/1", CKO_PRIVATE_KEY },
		{ "coffer/sig-rsa3072/1", CKO_PRIVATE_KEY },
		{ "coffer/sig-rsa4096/1", CKO_PRIVATE_KEY }, { "coffer/mac-256/1", CKO_SECRET_KEY },
		{ "coffer/mac-384/1", CKO_SECRET_KEY }, { "coffer/mac-512/1", CKO_SECRET_KEY },
		{ "coffer/gcm/1", CKO_SECRET_KEY },
		{ "coffer/ecdh/1", CKO_PRIVATE_KEY },
	};
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE o;
	uint8_t value[1024];
	CK_ATTRIBUTE va = { CKA_VALUE, value, sizeof(value) };

	CU_ASSERT_FATAL(cf_test_raw_open(&tok, &f, &slot, &s) == 0);
	for (size_t i = 0; i < sizeof(objs) / sizeof(objs[0]); i++) {
		CU_ASSERT_FATAL(cf_test_raw_find(f, s, objs[i].cls, objs[i].label, &o) == 0);
		CU_ASSERT_EQUAL(read_bool(f, s, o, CKA_TOKEN), CK_TRUE);
		CU_ASSERT_EQUAL(read_bool(f, s, o, CKA_PRIVATE), CK_TRUE);
		CU_ASSERT_EQUAL(read_bool(f, s, o, CKA_SENSITIVE), CK_TRUE);
		CU_ASSERT_EQUAL(read_bool(f, s, o, CKA_EXTRACTABLE), CK_FALSE);
		CU_ASSERT_EQUAL(read_bool(f, s, o, CKA_NEVER_EXTRACTABLE), CK_TRUE);
		CU_ASSERT_EQUAL(read_bool(f, s, o, CKA_ALWAYS_SENSITIVE), CK_TRUE);
		/* RSA keep their secret in CKA_PRIVATE_EXPONENT, others in CKA_VALUE */
		va.type = strstr(objs[i].label, "rsa") ? CKA_PRIVATE_EXPONENT : CKA_VALUE;
		va.ulValueLen = sizeof(value);
		CU_ASSERT_EQUAL(f->C_GetAttributeValue(s, o, &va, 1), CKR_ATTRIBUTE_SENSITIVE);
		CU_ASSERT_EQUAL(va.ulValueLen, CK_UNAVAILABLE_INFORMATION);
		if (read_bool(f, s, o, CKA_SENSITIVE) != CK_TRUE)
			fprintf(stderr, "object %s is not sensitive\n", objs[i].label);
	}
	f->C_CloseSession(s);
}

/* Keys made here are found by name and version from a new process. */
static void
test_persistence_other_process(void)
{
	static const char *const keys[][2] = {
		{ "sig-p256", "ec-p256" }, { "sig-ed25519", "ed25519" },
		{ "sig-rsa2048", "rsa-2048" }, { "mac-384", "hmac-sha384" }, { "gcm", "aes-256" },
	};
	char tool[512], out[600];

	cf_test_tool("p11_persist_child", tool, sizeof(tool));
	snprintf(out, sizeof(out), "%s/child.out", tok.dir);
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		char *argv[] = { tool, (char *)tok.cfg.module_path, tok.uri, tok.pin_file,
				 (char *)keys[i][0], "1", (char *)keys[i][1], out, NULL };
		cf_p11_key *k = NULL;
		FILE *fp;
		uint8_t buf[2048];
		size_t n;

		CU_ASSERT_EQUAL_FATAL(cf_test_run(argv), 0);
		/* The child wrote a signature / MAC / IV||ciphertext made with the key. */
		CU_ASSERT_FATAL((fp = fopen(out, "rb")) != NULL);
		n = fread(buf, 1, sizeof(buf), fp);
		fclose(fp);
		CHECK_OK(cf_p11_key_open(p11, keys[i][0], 1, &k));
		if (cf_key_type_is_asymmetric(cf_p11_key_type(k))) {
			CHECK_OK(cf_p11_verify(k, NULL, msg, sizeof(msg), buf, n));
		} else if (cf_key_type_is_hmac(cf_p11_key_type(k))) {
			CHECK_OK(cf_p11_mac_verify(k, msg, sizeof(msg), buf, n));
		} else {
			cf_secret *pt = NULL;

			CHECK_OK(cf_p11_gcm_decrypt(k, NULL, 0, buf, buf + CF_GCM_IV_LEN,
						    n - CF_GCM_IV_LEN, &pt));
			CU_ASSERT(cf_secret_equal_mem(pt, msg, sizeof(msg)));
			cf_secret_free(pt);
		}
		cf_p11_key_free(k);
	}
	/* a key the child is asked for that does not exist: exit code 2 */
	{
		char *argv[] = { tool, (char *)tok.cfg.module_path, tok.uri, tok.pin_file,
				 "no-such-key", "1", "ec-p256", out, NULL };

		CU_ASSERT_EQUAL(cf_test_run(argv), 2);
	}
}

static int
count_cb(const char *name, uint32_t version, enum cf_key_type type, void *arg)
{
	int *found = arg;

	if (strcmp(name, "sig-rsa3072") == 0 && version == 1 && type == CF_KEY_RSA_3072)
		found[0]++;
	if (strcmp(name, "mac-512") == 0 && version == 1 && type == CF_KEY_HMAC_SHA512)
		found[1]++;
	if (strcmp(name, "rfc4231-1") == 0 && type == CF_KEY_HMAC_SHA384)
		found[2]++;
	found[3]++;
	return 0;
}

static void
test_list(void)
{
	int found[4] = { 0, 0, 0, 0 };

	CHECK_OK(cf_p11_key_list(p11, count_cb, found));
	CU_ASSERT_EQUAL(found[0], 1);
	CU_ASSERT_EQUAL(found[1], 1);
	CU_ASSERT_EQUAL(found[2], 1);
	CU_ASSERT(found[3] >= 11);
}

static void
test_versions_and_destroy(void)
{
	cf_p11_key *v1 = gen("rotating", CF_KEY_EC_P256, 0), *v2 = NULL, *again = NULL;
	cf_buf *s1 = cf_buf_new(CF_P11_MAX_SIG);

	CHECK_OK(cf_p11_key_generate(p11, "rotating", 2, CF_KEY_EC_P256, 0, &v2));
	CHECK_OK(cf_p11_sign(v1, NULL, msg, sizeof(msg), s1));
	/* versions are distinct keys */
	CU_ASSERT_EQUAL(cf_p11_verify(v2, NULL, msg, sizeof(msg), cf_buf_peek(s1),
				      cf_buf_len(s1)), CF_E_BAD_SIGNATURE);
	CHECK_OK(cf_p11_verify(v1, NULL, msg, sizeof(msg), cf_buf_peek(s1), cf_buf_len(s1)));
	/* the same name and version cannot be made twice */
	CU_ASSERT_EQUAL(cf_p11_key_generate(p11, "rotating", 2, CF_KEY_EC_P384, 0, &again),
			CF_E_EXISTS);
	CHECK_OK(cf_p11_key_destroy(v1));
	CU_ASSERT_EQUAL(cf_p11_key_open(p11, "rotating", 1, &again), CF_E_NOT_FOUND);
	CU_ASSERT_EQUAL(cf_p11_sign(v1, NULL, msg, sizeof(msg), s1), CF_E_NOT_FOUND);
	CHECK_OK(cf_p11_key_open(p11, "rotating", 2, &again));
	cf_p11_key_free(again);
	cf_p11_key_free(v1);
	cf_p11_key_free(v2);
	cf_buf_free(s1);
}

static void
test_bad_inputs(void)
{
	cf_p11_key *ec = NULL, *mac = NULL, *aes = NULL, *ed = NULL, *k = NULL;
	struct cf_sign_params pre = { CF_SIG_DEFAULT, CF_HASH_SHA256, 1, 0 };
	struct cf_sign_params pss = { CF_SIG_RSA_PSS, CF_HASH_NONE, 0, 0 };
	cf_buf *out = cf_buf_new(1u << 21);
	uint8_t *big = calloc(1, CF_P11_MAX_DATA + 1), iv[CF_GCM_IV_LEN];
	cf_secret *pt = NULL, *aeskey = NULL;

	CHECK_OK(cf_p11_key_open(p11, "sig-p256", 1, &ec));
	CHECK_OK(cf_p11_key_open(p11, "mac-256", 1, &mac));
	CHECK_OK(cf_p11_key_open(p11, "gcm", 1, &aes));
	CHECK_OK(cf_p11_key_open(p11, "sig-ed25519", 1, &ed));
	/* key of the wrong type for the operation */
	CU_ASSERT_EQUAL(cf_p11_sign(mac, NULL, msg, sizeof(msg), out), CF_E_WRONG_KEY_TYPE);
	CU_ASSERT_EQUAL(cf_p11_sign(aes, NULL, msg, sizeof(msg), out), CF_E_WRONG_KEY_TYPE);
	CU_ASSERT_EQUAL(cf_p11_mac(ec, msg, sizeof(msg), out), CF_E_WRONG_KEY_TYPE);
	CU_ASSERT_EQUAL(cf_p11_gcm_encrypt(mac, NULL, 0, msg, sizeof(msg), iv, out),
			CF_E_WRONG_KEY_TYPE);
	CU_ASSERT_EQUAL(cf_p11_sign(ec, &pss, msg, sizeof(msg), out), CF_E_WRONG_KEY_TYPE);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "sig-p256"));
	CU_ASSERT_EQUAL(cf_p11_ecdh(mac, msg, 65, &pt), CF_E_WRONG_KEY_TYPE);
	CU_ASSERT_EQUAL(cf_p11_sign(ed, &pre, msg, 32, out), CF_E_UNSUPPORTED);
	/* 0x1 was CF_P11_EXPORTABLE: no flag makes a key extractable any more */
	CU_ASSERT_EQUAL(cf_p11_key_generate(p11, "x", 1, CF_KEY_HMAC_SHA256, 0x1u, &k),
			CF_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), "unknown key flags 0x1");
	CU_ASSERT_EQUAL(cf_p11_key_generate(p11, "x", 1, CF_KEY_HMAC_SHA256, CF_P11_DERIVE, &k),
			CF_E_WRONG_KEY_TYPE);
	CHECK_OK(cf_secret_new(32, &aeskey));
	CU_ASSERT_EQUAL(cf_p11_key_import(p11, "x", 1, CF_KEY_EC_P256, aeskey, 0, &k),
			CF_E_WRONG_KEY_TYPE);
	CU_ASSERT_EQUAL(cf_p11_key_import(p11, "x", 1, CF_KEY_AES_256, NULL, 0, &k),
			CF_E_INVALID_ARG);
	/* oversized inputs */
	CU_ASSERT_EQUAL(cf_p11_sign(ec, NULL, big, CF_P11_MAX_DATA + 1, out), CF_E_TOO_LARGE);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "1048576"));
	CU_ASSERT_EQUAL(cf_p11_mac(mac, big, CF_P11_MAX_DATA + 1, out), CF_E_TOO_LARGE);
	CU_ASSERT_EQUAL(cf_p11_gcm_encrypt(aes, NULL, 0, big, CF_P11_MAX_DATA + 1, iv, out),
			CF_E_TOO_LARGE);
	CU_ASSERT_EQUAL(cf_p11_gcm_encrypt(aes, big, CF_P11_MAX_AAD + 1, msg, 1, iv, out),
			CF_E_TOO_LARGE);
	CU_ASSERT_EQUAL(cf_p11_verify(ec, NULL, msg, sizeof(msg), big, CF_P11_MAX_SIG + 1),
			CF_E_BAD_SIGNATURE);
	/* the largest allowed message still signs */
	cf_buf_reset(out);
	CHECK_OK(cf_p11_sign(ec, NULL, big, CF_P11_MAX_DATA, out));
	/* malformed names and versions */
	CU_ASSERT_EQUAL(cf_p11_key_generate(p11, "Bad Name", 1, CF_KEY_EC_P256, 0, &k),
			CF_E_INVALID_ARG);
	CU_ASSERT_EQUAL(cf_p11_key_generate(p11, "ok", 0, CF_KEY_EC_P256, 0, &k),
			CF_E_INVALID_ARG);
	CU_ASSERT_EQUAL(cf_p11_key_generate(p11, "ok", 1, (enum cf_key_type)99, 0, &k),
			CF_E_INVALID_ARG);
	CU_ASSERT_EQUAL(cf_p11_key_open(p11, "missing", 7, &k), CF_E_NOT_FOUND);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "missing version 7"));
	CU_ASSERT_PTR_NULL(k);
	cf_secret_free(aeskey);
	free(big);
	cf_buf_free(out);
	cf_p11_key_free(ec);
	cf_p11_key_free(mac);
	cf_p11_key_free(aes);
	cf_p11_key_free(ed);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "every asymmetric type: sign, verify, OpenSSL verify, tamper", test_asymmetric_types },
		{ "ECDSA raw, prehashed and SHA-384 forms", test_ecdsa_forms },
		{ "every HMAC type: mac, verify, tamper", test_hmac_types },
		{ "HMAC matches RFC 4231 vectors", test_hmac_rfc4231 },
		{ "AES-256-GCM round trip and tamper", test_gcm },
		{ "ECDH agrees with OpenSSL", test_ecdh },
		{ "public key PEM export", test_pubkey_pem },
		{ "private objects are sensitive and never extractable", test_object_attributes },
		{ "keys found by name and version from another process", test_persistence_other_process },
		{ "listing", test_list },
		{ "versions, duplicates, destroy", test_versions_and_destroy },
		{ "bad inputs get precise errors", test_bad_inputs },
		{ NULL, NULL },
	};

	return cf_test_main("p11_keys", suite_init, suite_clean, cases);
}
