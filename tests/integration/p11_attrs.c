/*
 * test_p11_attrs — every key type the PKCS#11 layer makes (generated,
 * imported, the daemon's own identity and audit seal keys), read back with raw
 * Cryptoki: every usage attribute is set, TRUE only for what Coffer does with
 * the key; CKA_ALLOWED_MECHANISMS is exactly the set Coffer uses; secrets are
 * sensitive, never extractable, unmodifiable. Then the token itself refuses
 * what the attributes forbid (an RSA signing key cannot decrypt, a key cannot
 * run a mechanism outside its list), while session copies, the layer's
 * operations and destruction keep working.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <CUnit/Basic.h>
#include <openssl/rand.h>

#include "apikeys.h"
#include "cf_status.h"
#include "cf_test_token.h"
#include "keyring.h"
#include "store.h"

static struct cf_test_token tok;
static cf_p11 *p11;
static CK_FUNCTION_LIST *f;
static CK_SLOT_ID rslot;
static CK_SESSION_HANDLE rs;

static const uint8_t msg[] = "attributes decide what a key can do";

#define U_SIGN    0x001u
#define U_VERIFY  0x002u
#define U_ENCRYPT 0x004u
#define U_DECRYPT 0x008u
#define U_WRAP    0x010u
#define U_UNWRAP  0x020u
#define U_SIGNREC 0x040u
#define U_VERREC  0x080u
#define U_DERIVE  0x100u

static const struct { CK_ATTRIBUTE_TYPE a; unsigned bit; const char *name; } usage[] = {
	{ CKA_SIGN, U_SIGN, "CKA_SIGN" }, { CKA_VERIFY, U_VERIFY, "CKA_VERIFY" },
	{ CKA_ENCRYPT, U_ENCRYPT, "CKA_ENCRYPT" }, { CKA_DECRYPT, U_DECRYPT, "CKA_DECRYPT" },
	{ CKA_WRAP, U_WRAP, "CKA_WRAP" }, { CKA_UNWRAP, U_UNWRAP, "CKA_UNWRAP" },
	{ CKA_SIGN_RECOVER, U_SIGNREC, "CKA_SIGN_RECOVER" },
	{ CKA_VERIFY_RECOVER, U_VERREC, "CKA_VERIFY_RECOVER" },
	{ CKA_DERIVE, U_DERIVE, "CKA_DERIVE" },
};

/* The usage attributes each class has (PKCS#11 2.40 sections 4.8-4.10). */
static unsigned
class_has(CK_OBJECT_CLASS cls)
{
	return cls == CKO_PRIVATE_KEY ? U_SIGN | U_DECRYPT | U_UNWRAP | U_SIGNREC | U_DERIVE :
	       cls == CKO_PUBLIC_KEY ? U_VERIFY | U_ENCRYPT | U_WRAP | U_VERREC | U_DERIVE :
	       U_SIGN | U_VERIFY | U_ENCRYPT | U_DECRYPT | U_WRAP | U_UNWRAP | U_DERIVE;
}

struct expect {
	unsigned on;                  /* usage attributes that must be TRUE */
	CK_MECHANISM_TYPE mech[2];    /* CKA_ALLOWED_MECHANISMS, exactly */
	size_t nmech;
};

/* What Coffer does with each key (p11_ops.c), written out independently of
 * the layer's tables. */
static struct expect
expected(CK_OBJECT_CLASS cls, enum cf_key_type t, int derive)
{
	struct expect e = { 0, { 0, 0 }, 1 };

	if (cls == CKO_SECRET_KEY) {
		e.on = t == CF_KEY_AES_256 ? U_ENCRYPT | U_DECRYPT : U_SIGN | U_VERIFY;
		e.mech[0] = t == CF_KEY_AES_256 ? CKM_AES_GCM :
			    t == CF_KEY_HMAC_SHA384 ? CKM_SHA384_HMAC :
			    t == CF_KEY_HMAC_SHA512 ? CKM_SHA512_HMAC : CKM_SHA256_HMAC;
		return e;
	}
	e.on = cls == CKO_PRIVATE_KEY ? U_SIGN : U_VERIFY;
	if (cf_key_type_is_rsa(t)) {
		e.mech[0] = CKM_RSA_PKCS;
		e.mech[1] = CKM_RSA_PKCS_PSS;
		e.nmech = 2;
	} else if (t == CF_KEY_ED25519) {
		e.mech[0] = CKM_EDDSA;
	} else {
		e.mech[0] = CKM_ECDSA;
		if (derive && cls == CKO_PRIVATE_KEY) {
			e.on |= U_DERIVE;
			e.mech[1] = CKM_ECDH1_DERIVE;
			e.nmech = 2;
		}
	}
	return e;
}

/* CK_TRUE/CK_FALSE, or -1 with *rv set when the token refused. */
static int
read_bool(CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t, CK_RV *rv)
{
	CK_BBOOL v = 2;
	CK_ATTRIBUTE a = { t, &v, sizeof(v) };

	if ((*rv = f->C_GetAttributeValue(rs, o, &a, 1)) != CKR_OK)
		return -1;
	return v;
}

static int
mech_cmp(const void *a, const void *b)
{
	CK_MECHANISM_TYPE x = *(const CK_MECHANISM_TYPE *)a, y = *(const CK_MECHANISM_TYPE *)b;

	return x < y ? -1 : x > y;
}

/* Check one object; 0 if all is as expected (failures are printed). */
static int
check_object(const char *label, CK_OBJECT_CLASS cls, enum cf_key_type t, int derive)
{
	struct expect e = expected(cls, t, derive);
	CK_MECHANISM_TYPE got[16], want[2];
	CK_ATTRIBUTE ma = { CKA_ALLOWED_MECHANISMS, got, sizeof(got) };
	CK_OBJECT_HANDLE o;
	unsigned has = class_has(cls);
	const char *what = cls == CKO_PRIVATE_KEY ? "private" : cls == CKO_PUBLIC_KEY ? "public" :
			   "secret";
	size_t n;
	int bad = 0, v;
	CK_RV rv;

	if (cf_test_raw_find(f, rs, cls, label, &o) != 0) {
		fprintf(stderr, "\n  %s: no %s object\n", label, what);
		return 1;
	}
	for (size_t i = 0; i < sizeof(usage) / sizeof(usage[0]); i++) {
		v = read_bool(o, usage[i].a, &rv);
		if (has & usage[i].bit) {
			if (v != ((e.on & usage[i].bit) ? CK_TRUE : CK_FALSE)) {
				fprintf(stderr, "\n  %s (%s): %s is %d, expected %d", label, what,
					usage[i].name, v, (e.on & usage[i].bit) != 0);
				bad++;
			}
		} else if (v == CK_TRUE) {
			/* Not an attribute of the class: absent or FALSE, never TRUE. */
			fprintf(stderr, "\n  %s (%s): %s is TRUE", label, what, usage[i].name);
			bad++;
		}
	}
	rv = f->C_GetAttributeValue(rs, o, &ma, 1);
	n = rv == CKR_OK ? ma.ulValueLen / sizeof(CK_MECHANISM_TYPE) : 0;
	memcpy(want, e.mech, sizeof(want));
	qsort(got, n, sizeof(got[0]), mech_cmp);
	qsort(want, e.nmech, sizeof(want[0]), mech_cmp);
	if (rv != CKR_OK || n != e.nmech || memcmp(got, want, n * sizeof(got[0])) != 0) {
		fprintf(stderr, "\n  %s (%s): CKA_ALLOWED_MECHANISMS has %zu entries (rv 0x%lx)"
			", expected %zu", label, what, n, (unsigned long)rv, e.nmech);
		for (size_t i = 0; i < n; i++)
			fprintf(stderr, " 0x%lx", (unsigned long)got[i]);
		bad++;
	}
	/* Token objects stay modifiable: SoftHSM cannot copy them otherwise
	 * (test_unmodifiable); the layer's session copies are not. */
	if (read_bool(o, CKA_MODIFIABLE, &rv) != CK_TRUE) {
		fprintf(stderr, "\n  %s (%s): CKA_MODIFIABLE is not TRUE", label, what);
		bad++;
	}
	if (cls != CKO_PUBLIC_KEY &&
	    (read_bool(o, CKA_SENSITIVE, &rv) != CK_TRUE ||
	     read_bool(o, CKA_EXTRACTABLE, &rv) != CK_FALSE ||
	     read_bool(o, CKA_PRIVATE, &rv) != CK_TRUE || read_bool(o, CKA_TOKEN, &rv) != CK_TRUE)) {
		fprintf(stderr, "\n  %s (%s): not token, private, sensitive and unextractable",
			label, what);
		bad++;
	}
	return bad;
}

/* Every object of a key version. */
static int
check_keyv(const char *name, uint32_t version, enum cf_key_type t, int derive)
{
	char label[200];

	snprintf(label, sizeof(label), "coffer/%s/%u", name, version);
	if (cf_key_type_is_asymmetric(t))
		return check_object(label, CKO_PRIVATE_KEY, t, derive) +
		       check_object(label, CKO_PUBLIC_KEY, t, derive);
	return check_object(label, CKO_SECRET_KEY, t, derive);
}

static int
check_key(const char *name, enum cf_key_type t, int derive)
{
	return check_keyv(name, 1, t, derive);
}

static int
suite_init(void)
{
	if (cf_test_token_create(&tok, "coffer-attrs") != 0)
		return -1;
	if (cf_p11_open(&tok.cfg, &p11) != CF_OK) {
		fprintf(stderr, "cf_p11_open: %s\n", cf_error_detail());
		return -1;
	}
	/* The layer logged in; a raw session of the same process shares it. */
	if (cf_test_raw_open(&tok, &f, &rslot, &rs) != 0)
		return -1;
	return 0;
}

static int
suite_clean(void)
{
	f->C_CloseSession(rs);
	cf_p11_close(p11);
	cf_test_token_destroy(&tok);
	return 0;
}

static const struct {
	const char *name;
	enum cf_key_type type;
	unsigned flags;
} gens[] = {
	{ "ec-p256", CF_KEY_EC_P256, 0 }, { "ec-p384", CF_KEY_EC_P384, 0 },
	{ "ecdh-p256", CF_KEY_EC_P256, CF_P11_DERIVE }, { "ecdh-p384", CF_KEY_EC_P384, CF_P11_DERIVE },
	{ "ed25519", CF_KEY_ED25519, 0 }, { "rsa-2048", CF_KEY_RSA_2048, 0 },
	{ "rsa-3072", CF_KEY_RSA_3072, 0 }, { "rsa-4096", CF_KEY_RSA_4096, 0 },
	{ "hmac-256", CF_KEY_HMAC_SHA256, 0 }, { "hmac-384", CF_KEY_HMAC_SHA384, 0 },
	{ "hmac-512", CF_KEY_HMAC_SHA512, 0 }, { "aes-256", CF_KEY_AES_256, 0 },
};

static const struct {
	const char *name;
	enum cf_key_type type;
	size_t len;
} imports[] = {
	/* API-key secrets are imported exactly like imp-hmac-256 (apikeys.c). */
	{ "imp-hmac-256", CF_KEY_HMAC_SHA256, 32 }, { "imp-hmac-384", CF_KEY_HMAC_SHA384, 64 },
	{ "imp-hmac-512", CF_KEY_HMAC_SHA512, 100 }, { "imp-aes-256", CF_KEY_AES_256, 32 },
};

static void
test_generated(void)
{
	for (size_t i = 0; i < sizeof(gens) / sizeof(gens[0]); i++) {
		cf_p11_key *k = NULL;

		CHECK_OK(cf_p11_key_generate(p11, gens[i].name, 1, gens[i].type, gens[i].flags, &k));
		CU_ASSERT_EQUAL(check_key(gens[i].name, gens[i].type,
					  (gens[i].flags & CF_P11_DERIVE) != 0), 0);
		cf_p11_key_free(k);
	}
}

static void
test_imported(void)
{
	for (size_t i = 0; i < sizeof(imports) / sizeof(imports[0]); i++) {
		cf_secret *m = NULL;
		cf_p11_key *k = NULL;

		CHECK_OK(cf_secret_new(imports[i].len, &m));
		CU_ASSERT_FATAL(RAND_bytes(cf_secret_ptr(m), (int)imports[i].len) == 1);
		CHECK_OK(cf_p11_key_import(p11, imports[i].name, 1, imports[i].type, m, 0, &k));
		CU_ASSERT_EQUAL(check_key(imports[i].name, imports[i].type, 0), 0);
		cf_p11_key_free(k);
		cf_secret_free(m);
	}
}

static CK_OBJECT_HANDLE
raw(const char *name, CK_OBJECT_CLASS cls)
{
	char label[200];
	CK_OBJECT_HANDLE o = CK_INVALID_HANDLE;

	snprintf(label, sizeof(label), "coffer/%s/1", name);
	CU_ASSERT_FATAL(cf_test_raw_find(f, rs, cls, label, &o) == 0);
	return o;
}

/* A refused C_*Init starts nothing; one that wrongly succeeds leaves an
 * operation active: start afresh so the next check still means something. */
static CK_RV
refused(CK_RV rv)
{
	if (rv == CKR_OK) {
		f->C_CloseSession(rs);
		CU_ASSERT_FATAL(f->C_OpenSession(rslot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
						 NULL, &rs) == CKR_OK);
	}
	return rv;
}

/* The token refuses what the attributes forbid. */
static void
test_token_refuses(void)
{
	CK_RSA_PKCS_PSS_PARAMS pss = { CKM_SHA256, CKG_MGF1_SHA256, 32 };
	CK_MECHANISM rsa_pkcs = { CKM_RSA_PKCS, NULL, 0 };
	CK_MECHANISM rsa_pss = { CKM_RSA_PKCS_PSS, &pss, sizeof(pss) };
	CK_MECHANISM sha256_rsa = { CKM_SHA256_RSA_PKCS, NULL, 0 };
	CK_MECHANISM oaep_m = { CKM_RSA_PKCS_OAEP, NULL, 0 };
	CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 };
	CK_MECHANISM eddsa = { CKM_EDDSA, NULL, 0 };
	CK_MECHANISM sha512_hmac = { CKM_SHA512_HMAC, NULL, 0 };
	CK_MECHANISM sha256_hmac = { CKM_SHA256_HMAC, NULL, 0 };
	CK_BYTE iv[16] = { 0 };
	CK_MECHANISM aes_cbc = { CKM_AES_CBC_PAD, iv, sizeof(iv) };
	CK_MECHANISM aes_wrap = { CKM_AES_KEY_WRAP_PAD, NULL, 0 };
	CK_BYTE peer[65] = { 0x04 };
	CK_ECDH1_DERIVE_PARAMS dp = { CKD_NULL, 0, NULL, sizeof(peer), peer };
	CK_MECHANISM ecdh = { CKM_ECDH1_DERIVE, &dp, sizeof(dp) };
	CK_OBJECT_CLASS sc = CKO_SECRET_KEY;
	CK_KEY_TYPE gk = CKK_GENERIC_SECRET;
	CK_ULONG len = 32;
	CK_ATTRIBUTE dt[] = {
		{ CKA_CLASS, &sc, sizeof(sc) }, { CKA_KEY_TYPE, &gk, sizeof(gk) },
		{ CKA_VALUE_LEN, &len, sizeof(len) },
	};
	CK_BYTE digest[32] = { 1 }, out[1024];
	CK_ULONG outlen = sizeof(out);
	CK_OBJECT_HANDLE rsa = raw("rsa-2048", CKO_PRIVATE_KEY);
	CK_OBJECT_HANDLE rsapub = raw("rsa-2048", CKO_PUBLIC_KEY);
	CK_OBJECT_HANDLE ec = raw("ec-p256", CKO_PRIVATE_KEY), ed = raw("ed25519", CKO_PRIVATE_KEY);
	CK_OBJECT_HANDLE mac = raw("hmac-256", CKO_SECRET_KEY);
	CK_OBJECT_HANDLE aes = raw("aes-256", CKO_SECRET_KEY), dk;

	/* An RSA signing key cannot decrypt (nor its public half encrypt). */
	CU_ASSERT_EQUAL(refused(f->C_DecryptInit(rs, &rsa_pkcs, rsa)), CKR_KEY_FUNCTION_NOT_PERMITTED);
	CU_ASSERT_EQUAL(refused(f->C_DecryptInit(rs, &oaep_m, rsa)), CKR_KEY_FUNCTION_NOT_PERMITTED);
	CU_ASSERT_EQUAL(refused(f->C_EncryptInit(rs, &rsa_pkcs, rsapub)), CKR_KEY_FUNCTION_NOT_PERMITTED);
	/* ... nor sign with a mechanism outside its list ... */
	CU_ASSERT_EQUAL(refused(f->C_SignInit(rs, &sha256_rsa, rsa)), CKR_MECHANISM_INVALID);
	/* ... while both of its own still start. */
	CU_ASSERT_EQUAL(f->C_SignInit(rs, &rsa_pss, rsa), CKR_OK);
	CU_ASSERT_EQUAL(f->C_Sign(rs, digest, sizeof(digest), out, &outlen), CKR_OK);
	outlen = sizeof(out);
	CU_ASSERT_EQUAL(f->C_SignInit(rs, &rsa_pkcs, rsa), CKR_OK);
	CU_ASSERT_EQUAL(f->C_Sign(rs, digest, sizeof(digest), out, &outlen), CKR_OK);
	/* An ECDSA key: no mechanism but CKM_ECDSA, no ECDH. */
	CU_ASSERT_EQUAL(refused(f->C_SignInit(rs, &rsa_pkcs, ec)), CKR_MECHANISM_INVALID);
	CU_ASSERT_EQUAL(refused(f->C_SignInit(rs, &eddsa, ec)), CKR_MECHANISM_INVALID);
	CU_ASSERT_EQUAL(f->C_DeriveKey(rs, &ecdh, ec, dt, 3, &dk), CKR_KEY_FUNCTION_NOT_PERMITTED);
	CU_ASSERT_EQUAL(refused(f->C_DecryptInit(rs, &ecdsa, ec)), CKR_KEY_FUNCTION_NOT_PERMITTED);
	CU_ASSERT_EQUAL(refused(f->C_SignInit(rs, &ecdsa, ed)), CKR_MECHANISM_INVALID);
	/* HMAC: its one hash only; no encryption. */
	CU_ASSERT_EQUAL(refused(f->C_SignInit(rs, &sha512_hmac, mac)), CKR_MECHANISM_INVALID);
	CU_ASSERT_EQUAL(refused(f->C_EncryptInit(rs, &aes_cbc, mac)), CKR_KEY_FUNCTION_NOT_PERMITTED);
	/* AES: GCM only; no MAC, no key wrapping. */
	CU_ASSERT_EQUAL(refused(f->C_EncryptInit(rs, &aes_cbc, aes)), CKR_MECHANISM_INVALID);
	CU_ASSERT_EQUAL(refused(f->C_SignInit(rs, &sha256_hmac, aes)), CKR_KEY_FUNCTION_NOT_PERMITTED);
	outlen = sizeof(out);
	CU_ASSERT_EQUAL(f->C_WrapKey(rs, &aes_wrap, aes, mac, out, &outlen),
			CKR_KEY_FUNCTION_NOT_PERMITTED);
}

/* The layer's session copy of a key (CKA_TOKEN=FALSE, same label). */
static int
find_copy(const char *name, CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *o)
{
	char label[200];
	CK_BBOOL no = CK_FALSE;
	CK_ATTRIBUTE q[] = {
		{ CKA_CLASS, &cls, sizeof(cls) }, { CKA_TOKEN, &no, sizeof(no) },
		{ CKA_LABEL, label, 0 },
	};
	CK_ULONG n = 0;

	snprintf(label, sizeof(label), "coffer/%s/1", name);
	q[2].ulValueLen = strlen(label);
	if (f->C_FindObjectsInit(rs, q, 3) != CKR_OK)
		return -1;
	if (f->C_FindObjects(rs, o, 1, &n) != CKR_OK)
		n = 0;
	f->C_FindObjectsFinal(rs);
	return n == 1 ? 0 : -1;
}

/* SoftHSM refuses to copy an unmodifiable object into the session (so token
 * objects stay modifiable); copies made unmodifiable refuse every change, and
 * the layer's own copies are such. Every key type still works through the
 * layer with exactly its allowed mechanisms, and can be destroyed. */
static void
test_unmodifiable(void)
{
	CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
	CK_ATTRIBUTE tok_false = { CKA_TOKEN, &no, sizeof(no) };
	CK_ATTRIBUTE frozen[] = {
		{ CKA_TOKEN, &no, sizeof(no) }, { CKA_MODIFIABLE, &no, sizeof(no) },
	};
	CK_ATTRIBUTE dec_true = { CKA_DECRYPT, &yes, sizeof(yes) };
	CK_ATTRIBUTE relabel = { CKA_LABEL, "coffer/other/1", 14 };
	CK_OBJECT_HANDLE ec = raw("ec-p384", CKO_PRIVATE_KEY), mac = raw("hmac-384", CKO_SECRET_KEY);
	CK_OBJECT_HANDLE cp = CK_INVALID_HANDLE, cp2 = CK_INVALID_HANDLE;
	cf_p11_key *k = NULL;
	cf_buf *out = cf_buf_new(CF_P11_MAX_SIG);
	const char *names[] = { "ec-p384", "ed25519", "rsa-3072", "hmac-384", "imp-aes-256",
				"ecdh-p256" };
	CK_RV rv;

	CU_ASSERT_EQUAL(f->C_CopyObject(rs, ec, frozen, 2, &cp), CKR_OK);
	CU_ASSERT_EQUAL(read_bool(cp, CKA_MODIFIABLE, &rv), CK_FALSE);
	CU_ASSERT_EQUAL(f->C_SetAttributeValue(rs, cp, &dec_true, 1), CKR_ACTION_PROHIBITED);
	CU_ASSERT_EQUAL(f->C_SetAttributeValue(rs, cp, &relabel, 1), CKR_ACTION_PROHIBITED);
	/* measured: why the token objects cannot be unmodifiable */
	CU_ASSERT_EQUAL(f->C_CopyObject(rs, cp, &tok_false, 1, &cp2), CKR_ATTRIBUTE_READ_ONLY);
	CU_ASSERT_EQUAL(f->C_DestroyObject(rs, cp), CKR_OK);
	CU_ASSERT_EQUAL(f->C_CopyObject(rs, mac, frozen, 2, &cp), CKR_OK);
	CU_ASSERT_EQUAL(f->C_SetAttributeValue(rs, cp, &dec_true, 1), CKR_ACTION_PROHIBITED);
	CU_ASSERT_EQUAL(f->C_DestroyObject(rs, cp), CKR_OK);
	/* The layer still runs every key type's operation with its mechanisms. */
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		uint8_t iv[CF_GCM_IV_LEN];

		CHECK_OK(cf_p11_key_open(p11, names[i], 1, &k));
		cf_buf_reset(out);
		switch (cf_p11_key_type(k)) {
		case CF_KEY_HMAC_SHA384:
			CHECK_OK(cf_p11_mac(k, msg, sizeof(msg), out));
			CHECK_OK(cf_p11_mac_verify(k, msg, sizeof(msg), cf_buf_peek(out),
						   cf_buf_len(out)));
			break;
		case CF_KEY_AES_256:
			CHECK_OK(cf_p11_gcm_encrypt(k, NULL, 0, msg, sizeof(msg), iv, out));
			break;
		case CF_KEY_RSA_3072: {
			struct cf_sign_params pkcs1 = { CF_SIG_RSA_PKCS1, CF_HASH_SHA512, 0, 0 };

			/* PKCS#1 v1.5 here, PSS (the default) below */
			CHECK_OK(cf_p11_sign(k, &pkcs1, msg, sizeof(msg), out));
			CHECK_OK(cf_p11_verify(k, &pkcs1, msg, sizeof(msg), cf_buf_peek(out),
					       cf_buf_len(out)));
			cf_buf_reset(out);
			CHECK_OK(cf_p11_sign(k, NULL, msg, sizeof(msg), out));
			CHECK_OK(cf_p11_verify(k, NULL, msg, sizeof(msg), cf_buf_peek(out),
					       cf_buf_len(out)));
			break;
		}
		default:
			CHECK_OK(cf_p11_sign(k, NULL, msg, sizeof(msg), out));
			CHECK_OK(cf_p11_verify(k, NULL, msg, sizeof(msg), cf_buf_peek(out),
					       cf_buf_len(out)));
			break;
		}
		/* the layer's session copy of the key it just used is unmodifiable */
		CU_ASSERT_EQUAL(find_copy(names[i], cf_key_type_is_asymmetric(cf_p11_key_type(k)) ?
					  CKO_PRIVATE_KEY : CKO_SECRET_KEY, &cp), 0);
		CU_ASSERT_EQUAL(read_bool(cp, CKA_MODIFIABLE, &rv), CK_FALSE);
		CU_ASSERT_EQUAL(read_bool(cp, CKA_DECRYPT, &rv),
				cf_p11_key_type(k) == CF_KEY_AES_256 ? CK_TRUE : CK_FALSE);
		cf_p11_key_free(k);
		k = NULL;
	}
	/* ECDH on the key made for it. */
	{
		cf_secret *shared = NULL;
		uint8_t point[65];
		cf_buf *der = cf_buf_new(512);

		CHECK_OK(cf_p11_key_open(p11, "ec-p256", 1, &k));
		CHECK_OK(cf_p11_pubkey_der(k, der));
		/* the uncompressed point ends the P-256 SPKI */
		memcpy(point, cf_buf_peek(der) + cf_buf_len(der) - 65, 65);
		cf_p11_key_free(k);
		CHECK_OK(cf_p11_key_open(p11, "ecdh-p256", 1, &k));
		CHECK_OK(cf_p11_ecdh(k, point, sizeof(point), &shared));
		cf_secret_free(shared);
		cf_p11_key_free(k);
		cf_buf_free(der);
	}
	/* Unmodifiable objects are still destroyed by the layer. */
	CHECK_OK(cf_p11_key_open(p11, "rsa-4096", 1, &k));
	CHECK_OK(cf_p11_key_destroy(k));
	cf_p11_key_free(k);
	CU_ASSERT_EQUAL(cf_p11_key_open(p11, "rsa-4096", 1, &k), CF_E_NOT_FOUND);
	cf_buf_free(out);
}

/* Reconciliation reports the keys the earlier cases made through the layer
 * alone (no registry record): expected here, so not printed. */
static void
report(const char *text)
{
	(void)text;
}

/* The daemon's own paths: CreateKey, ImportKey and RotateKey go through the
 * keyring; API-key secrets through apikeys. */
static void
test_keyring_and_api_keys(void)
{
	static const struct { const char *name; enum cf_key_type type; } made[] = {
		{ "kr-ec", CF_KEY_EC_P384 }, { "kr-ed", CF_KEY_ED25519 },
		{ "kr-rsa", CF_KEY_RSA_2048 }, { "kr-mac", CF_KEY_HMAC_SHA512 },
		{ "kr-aes", CF_KEY_AES_256 },
	};
	char dir[400], label[200];
	struct store_key info;
	struct store_apikey ak;
	store *st = NULL;
	keyring *kr = NULL;
	apikeys *aks = NULL;
	cf_secret *m = NULL, *secret = NULL;
	unsigned mismatches = 0;

	snprintf(dir, sizeof(dir), "%s/units", tok.dir);
	CU_ASSERT_FATAL(mkdir(dir, 0700) == 0);
	CHECK_OK(store_open(dir, &st));
	CHECK_OK(keyring_open(p11, st, NULL, report, NULL, &kr));
	for (size_t i = 0; i < sizeof(made) / sizeof(made[0]); i++) {
		CHECK_OK(keyring_create(kr, made[i].name, made[i].type, 0, 0, &info));
		keyring_info_free(&info);
		CU_ASSERT_EQUAL(check_key(made[i].name, made[i].type, 0), 0);
	}
	CHECK_OK(keyring_rotate(kr, "kr-aes", &info));
	keyring_info_free(&info);
	CU_ASSERT_EQUAL(check_keyv("kr-aes", 2, CF_KEY_AES_256, 0), 0);
	CHECK_OK(cf_secret_new(48, &m));
	CU_ASSERT_FATAL(RAND_bytes(cf_secret_ptr(m), 48) == 1);
	CHECK_OK(keyring_import(kr, "kr-imp", CF_KEY_HMAC_SHA384, m, 0, &info));
	keyring_info_free(&info);
	CU_ASSERT_EQUAL(check_key("kr-imp", CF_KEY_HMAC_SHA384, 0), 0);
	CHECK_OK(apikeys_open(p11, st, report, &mismatches, &aks));
	{
		/* A key is recorded only for a principal the store holds. */
		struct store_principal p = { .name = "someone", .uids = { 4711 }, .nuids = 1 };

		CHECK_OK(store_principal_put(st, &p, 1));
	}
	CHECK_OK(apikeys_create(aks, "someone", NULL, (int64_t)time(NULL), &ak, &secret));
	CU_ASSERT_EQUAL_FATAL(ak.nsecrets, 1);
	snprintf(label, sizeof(label), "%s%s", APIKEYS_OBJECT_PREFIX, ak.id);
	CU_ASSERT_EQUAL(check_keyv(label, ak.secrets[0].generation, CF_KEY_HMAC_SHA256, 0), 0);
	cf_secret_free(secret);
	cf_secret_free(m);
	apikeys_close(aks);
	keyring_close(kr);
	store_close(st);
}

/* The keys cofferd makes for itself at start: the session identity key, the
 * audit seal key and the idempotency fingerprint key (sensitive, never
 * extractable, like any other). */
static void
test_daemon_keys(void)
{
	struct cf_test_daemon d;

	CU_ASSERT_FATAL(cf_test_daemon_start(&tok, &d, NULL) == 0);
	CU_ASSERT(cf_test_daemon_log_has(&d, "created the identity key"));
	CU_ASSERT_EQUAL(cf_test_daemon_stop(&d), 0);
	CU_ASSERT_EQUAL(check_key("coffer.identity", CF_KEY_EC_P256, 0), 0);
	CU_ASSERT_EQUAL(check_key("coffer.audit-seal", CF_KEY_EC_P256, 0), 0);
	CU_ASSERT_EQUAL(check_key("coffer.idempotency-fingerprint", CF_KEY_HMAC_SHA256, 0), 0);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "generated keys: usage, allowed mechanisms, sensitivity", test_generated },
		{ "imported keys: usage, allowed mechanisms, sensitivity", test_imported },
		{ "the token refuses what the attributes forbid", test_token_refuses },
		{ "unmodifiable keys copy, work and get destroyed", test_unmodifiable },
		{ "keys made by the daemon's keyring and API-key secrets", test_keyring_and_api_keys },
		{ "the daemon's identity, audit seal and fingerprint keys", test_daemon_keys },
		{ NULL, NULL },
	};

	return cf_test_main("p11_attrs", suite_init, suite_clean, cases);
}
