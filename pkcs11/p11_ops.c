/* Cryptographic operations on key versions: sign/verify, HMAC, AES-GCM,
 * and ECDH. Hashing for signatures happens on the host. */
#include "p11_internal.h"

#include <pthread.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "cf_status.h"

/* DER DigestInfo prefixes for PKCS#1 v1.5 (RFC 8017 section 9.2, note 1). */
static const unsigned char di_sha256[] = { 0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86,
	0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20 };
static const unsigned char di_sha384[] = { 0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86,
	0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30 };
static const unsigned char di_sha512[] = { 0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86,
	0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40 };

#define MAX_TBS (sizeof(di_sha512) + 64)

/* A resolved signing request: mechanism and the bytes the token sees. */
struct sig_req {
	CK_MECHANISM mech;
	CK_RSA_PKCS_PSS_PARAMS pss;
	const uint8_t *tbs;          /* to be signed: digest, DigestInfo or message */
	size_t tbslen;
	uint8_t buf[MAX_TBS];        /* digest / DigestInfo storage */
	size_t field;                /* ECDSA scalar length */
	int ecdsa_der;
};

/* Fetched once: EVP_sha256() and friends make OpenSSL 3 look the
 * implementation up again on every digest (about 1 us per signature). */
static EVP_MD *md_sha256, *md_sha384, *md_sha512;
static pthread_once_t md_once = PTHREAD_ONCE_INIT;

static void
md_fetch(void)
{
	md_sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL);
	md_sha384 = EVP_MD_fetch(NULL, "SHA2-384", NULL);
	md_sha512 = EVP_MD_fetch(NULL, "SHA2-512", NULL);
}

static const EVP_MD *
hash_md(enum cf_hash h)
{
	const EVP_MD *md;

	pthread_once(&md_once, md_fetch);
	md = h == CF_HASH_SHA384 ? md_sha384 : h == CF_HASH_SHA512 ? md_sha512 : md_sha256;
	if (md != NULL)
		return md;
	return h == CF_HASH_SHA384 ? EVP_sha384() : h == CF_HASH_SHA512 ? EVP_sha512() :
	       EVP_sha256();
}

static CK_MECHANISM_TYPE
hash_mech(enum cf_hash h)
{
	return h == CF_HASH_SHA384 ? CKM_SHA384 : h == CF_HASH_SHA512 ? CKM_SHA512 : CKM_SHA256;
}

static CK_RSA_PKCS_MGF_TYPE
hash_mgf(enum cf_hash h)
{
	return h == CF_HASH_SHA384 ? CKG_MGF1_SHA384 : h == CF_HASH_SHA512 ? CKG_MGF1_SHA512 :
	       CKG_MGF1_SHA256;
}

static int
check_data(size_t len)
{
	if (len > CF_P11_MAX_DATA)
		return cf_error(CF_E_TOO_LARGE, "input of %zu bytes exceeds the %u-byte limit", len,
				CF_P11_MAX_DATA);
	return CF_OK;
}

/* What params ask of the key, whatever the data: the scheme and hash
 * they come to (defaults filled in) if the key can do them. */
static int
sig_check(const cf_p11_key *k, const struct cf_sign_params *sp, enum cf_sig_scheme *sch,
	  enum cf_hash *hsh)
{
	enum cf_sig_scheme scheme = sp->scheme;
	enum cf_hash hash = sp->hash;

	if (!cf_key_type_is_asymmetric(k->type))
		return cf_error(CF_E_WRONG_KEY_TYPE, "key %s is %s: it cannot make signatures",
				k->name, cf_key_type_name(k->type));
	if (scheme == CF_SIG_DEFAULT)
		scheme = cf_key_default_scheme(k->type);
	if ((scheme == CF_SIG_ECDSA && !cf_key_type_is_ec(k->type)) ||
	    (scheme == CF_SIG_EDDSA && k->type != CF_KEY_ED25519) ||
	    ((scheme == CF_SIG_RSA_PSS || scheme == CF_SIG_RSA_PKCS1) &&
	     !cf_key_type_is_rsa(k->type)) || scheme > CF_SIG_RSA_PKCS1)
		return cf_error(CF_E_WRONG_KEY_TYPE, "key %s (%s) does not support that "
				"signature scheme", k->name, cf_key_type_name(k->type));
	if (sp->ecdsa_raw && scheme != CF_SIG_ECDSA)
		return cf_error(CF_E_INVALID_ARG, "raw signature encoding applies to ECDSA only");
	if (scheme == CF_SIG_EDDSA) {
		if (sp->prehashed)
			return cf_error(CF_E_UNSUPPORTED, "Ed25519 signs the message itself; "
					"digests are not accepted");
		if (hash != CF_HASH_NONE)
			return cf_error(CF_E_UNSUPPORTED, "Ed25519 has no hash choice; leave the "
					"hash unset");
	} else {
		if (hash == CF_HASH_NONE)
			hash = cf_key_default_hash(k->type);
		if (hash < CF_HASH_SHA256 || hash > CF_HASH_SHA512)
			return cf_error(CF_E_INVALID_ARG, "unknown hash algorithm %d", (int)hash);
	}
	*sch = scheme;
	*hsh = hash;
	return CF_OK;
}

int
cf_p11_sign_check(const cf_p11_key *k, const struct cf_sign_params *params)
{
	enum cf_sig_scheme scheme;
	enum cf_hash hash;

	return sig_check(k, params, &scheme, &hash);
}

/* Validate params against the key and prepare what the token signs. */
static int
sig_prepare(const cf_p11_key *k, const struct cf_sign_params *params, const uint8_t *in,
	    size_t inlen, struct sig_req *req)
{
	struct cf_sign_params d = { CF_SIG_DEFAULT, CF_HASH_NONE, 0, 0 };
	const struct cf_sign_params *sp = params ? params : &d;
	enum cf_sig_scheme scheme;
	enum cf_hash hash;
	const uint8_t *digest = in;
	unsigned int mdlen;
	size_t hlen;
	int r;

	memset(req, 0, sizeof(*req));
	if ((r = check_data(inlen)) != CF_OK || (r = sig_check(k, sp, &scheme, &hash)) != CF_OK)
		return r;
	if (scheme == CF_SIG_EDDSA) {
		req->mech.mechanism = CKM_EDDSA;
		req->tbs = in;
		req->tbslen = inlen;
		return CF_OK;
	}
	hlen = cf_hash_len(hash);
	if (sp->prehashed) {
		if (inlen != hlen)
			return cf_error(CF_E_INVALID_ARG, "a %s digest is %zu bytes, got %zu",
					cf_hash_name(hash), hlen, inlen);
	} else {
		if (!EVP_Digest(in, inlen, req->buf + sizeof(di_sha512), &mdlen, hash_md(hash), NULL))
			return cf_error(CF_E_INTERNAL, "hashing the message failed");
		digest = req->buf + sizeof(di_sha512);
	}
	switch (scheme) {
	case CF_SIG_ECDSA:
		req->mech.mechanism = CKM_ECDSA;
		req->field = k->type == CF_KEY_EC_P384 ? 48 : 32;
		req->ecdsa_der = !sp->ecdsa_raw;
		memmove(req->buf, digest, hlen);
		req->tbs = req->buf;
		req->tbslen = hlen;
		break;
	case CF_SIG_RSA_PSS:
		req->mech.mechanism = CKM_RSA_PKCS_PSS;
		req->pss.hashAlg = hash_mech(hash);
		req->pss.mgf = hash_mgf(hash);
		req->pss.sLen = hlen;
		req->mech.pParameter = &req->pss;
		req->mech.ulParameterLen = sizeof(req->pss);
		memmove(req->buf, digest, hlen);
		req->tbs = req->buf;
		req->tbslen = hlen;
		break;
	default: { /* PKCS#1 v1.5: DigestInfo || digest */
		const unsigned char *pre = hash == CF_HASH_SHA384 ? di_sha384 :
					   hash == CF_HASH_SHA512 ? di_sha512 : di_sha256;

		req->mech.mechanism = CKM_RSA_PKCS;
		memmove(req->buf + sizeof(di_sha256), digest, hlen);
		memcpy(req->buf, pre, sizeof(di_sha256));
		req->tbs = req->buf;
		req->tbslen = sizeof(di_sha256) + hlen;
		break;
	}
	}
	return CF_OK;
}

struct sign_arg {
	struct sig_req *req;
	const uint8_t *sig;          /* verify: signature the token checks */
	CK_ULONG siglen;
	uint8_t out[CF_P11_MAX_SIG]; /* sign: raw token output */
	CK_ULONG outlen;
	int use_pub;
};

static CK_RV
sign_op(cf_p11 *p, CK_SESSION_HANDLE s, const struct p11_handles *h, void *arg)
{
	struct sign_arg *a = arg;
	CK_RV rv;

	a->outlen = sizeof(a->out);
	if ((rv = p->f->C_SignInit(s, &a->req->mech, h->priv)) != CKR_OK)
		return rv;
	return p->f->C_Sign(s, P11_DATA(a->req->tbs), a->req->tbslen, a->out, &a->outlen);
}

static CK_RV
verify_op(cf_p11 *p, CK_SESSION_HANDLE s, const struct p11_handles *h, void *arg)
{
	struct sign_arg *a = arg;
	CK_RV rv;

	/* HMAC verifies with the secret itself, signatures with the public key. */
	if ((rv = p->f->C_VerifyInit(s, &a->req->mech, a->use_pub ? h->pub : h->priv)) != CKR_OK)
		return rv;
	return p->f->C_Verify(s, P11_DATA(a->req->tbs), a->req->tbslen, P11_DATA(a->sig),
			      a->siglen);
}

/* One DER INTEGER from a big-endian unsigned scalar. */
static size_t
der_uint(const uint8_t *v, size_t len, uint8_t *out)
{
	size_t n;

	while (len > 1 && v[0] == 0) {
		v++;
		len--;
	}
	n = len + (v[0] & 0x80 ? 1 : 0);
	out[0] = 0x02;
	out[1] = (uint8_t)n;
	out[2] = 0;
	memcpy(out + 2 + (n - len), v, len);
	return 2 + n;
}

/* raw r||s -> DER ECDSA-Sig-Value, written directly: the scalars are at
 * most 48 bytes, so every length fits one byte (no OpenSSL BN round trip). */
static int
ecdsa_to_der(const uint8_t *raw, size_t rawlen, cf_buf *out)
{
	uint8_t der[2 + 2 * (2 + 1 + 48)];
	size_t n;

	if (rawlen == 0 || rawlen % 2 != 0 || rawlen > 96)
		return cf_error(CF_E_TOKEN, "token returned a %zu-byte ECDSA signature", rawlen);
	n = der_uint(raw, rawlen / 2, der + 2);
	n += der_uint(raw + rawlen / 2, rawlen / 2, der + 2 + n);
	der[0] = 0x30;
	der[1] = (uint8_t)n;
	return cf_buf_put(out, der, n + 2);
}

/* DER ECDSA-Sig-Value -> raw r||s of 2*field bytes; CF_E_BAD_SIGNATURE if malformed. */
static int
ecdsa_from_der(const uint8_t *der, size_t len, size_t field, uint8_t *raw)
{
	const unsigned char *q = der;
	ECDSA_SIG *es = NULL;
	unsigned char *re = NULL;
	int relen, st = CF_E_BAD_SIGNATURE;

	if (len > 2 * field + 16 || (es = d2i_ECDSA_SIG(NULL, &q, (long)len)) == NULL ||
	    q != der + len)
		goto out;
	/* Re-encode: only the canonical (strict DER) encoding is accepted. */
	if ((relen = i2d_ECDSA_SIG(es, &re)) != (int)len || memcmp(re, der, len) != 0)
		goto out;
	if (BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, (int)field) < 0 ||
	    BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + field, (int)field) < 0)
		goto out;
	st = CF_OK;
out:
	OPENSSL_free(re);
	ECDSA_SIG_free(es);
	return st;
}

int
cf_p11_sign(cf_p11_key *k, const struct cf_sign_params *params, const uint8_t *in,
	    size_t inlen, cf_buf *sig)
{
	struct sig_req req;
	struct sign_arg a;
	CK_RV rv;
	int r;

	if ((r = sig_prepare(k, params, in, inlen, &req)) != CF_OK)
		return r;
	memset(&a, 0, sizeof(a));
	a.req = &req;
	rv = p11_run(k->p, k, sign_op, &a);
	if (req.mech.mechanism == CKM_RSA_PKCS &&
	    (rv == CKR_MECHANISM_INVALID || rv == CKR_KEY_FUNCTION_NOT_PERMITTED ||
	     rv == CKR_KEY_TYPE_INCONSISTENT)) {
		char why[200];

		/* Listed for signing, refused with our keys: say so, and let
		 * GetTokenInfo say it from now on. */
		__atomic_store_n(&k->p->pkcs1_refused, rv, __ATOMIC_RELAXED);
		p11_pkcs1_why(rv, why, sizeof(why));
		r = cf_error(CF_E_PRECONDITION, "this token cannot make RSA PKCS#1 v1.5 "
			     "signatures: %s", why);
		goto out;
	}
	if ((r = p11_status(rv, "signing")) != CF_OK)
		goto out;
	if (req.mech.mechanism == CKM_ECDSA && req.ecdsa_der)
		r = ecdsa_to_der(a.out, a.outlen, sig);
	else
		r = cf_buf_put(sig, a.out, a.outlen);
out:
	OPENSSL_cleanse(&req, sizeof(req));
	return r;
}

int
cf_p11_verify(cf_p11_key *k, const struct cf_sign_params *params, const uint8_t *in,
	      size_t inlen, const uint8_t *sig, size_t siglen)
{
	struct sig_req req;
	struct sign_arg a;
	uint8_t raw[2 * 66];
	int r;

	if ((r = sig_prepare(k, params, in, inlen, &req)) != CF_OK)
		return r;
	memset(&a, 0, sizeof(a));
	a.req = &req;
	a.use_pub = 1;
	a.sig = sig;
	a.siglen = siglen;
	if (siglen > CF_P11_MAX_SIG)
		return cf_error(CF_E_BAD_SIGNATURE, "signature of %zu bytes is longer than any "
				"Coffer signature", siglen);
	if (req.mech.mechanism == CKM_ECDSA) {
		if (req.ecdsa_der) {
			if (ecdsa_from_der(sig, siglen, req.field, raw) != CF_OK)
				return cf_error(CF_E_BAD_SIGNATURE, "signature is not a valid DER "
						"ECDSA signature");
			a.sig = raw;
			a.siglen = 2 * req.field;
		} else if (siglen != 2 * req.field) {
			return cf_error(CF_E_BAD_SIGNATURE, "a raw %s signature is %zu bytes, got %zu",
					cf_key_type_name(k->type), 2 * req.field, siglen);
		}
	}
	return p11_status(p11_run(k->p, k, verify_op, &a), "verifying the signature");
}

/* ---- randomness ---- */

struct random_arg {
	uint8_t *out;
	size_t len;
};

static CK_RV
random_op(cf_p11 *p, CK_SESSION_HANDLE s, const struct p11_handles *h, void *arg)
{
	struct random_arg *a = arg;

	(void)h;
	return p->f->C_GenerateRandom(s, a->out, (CK_ULONG)a->len);
}

int
cf_p11_random(cf_p11 *p, cf_secret *out)
{
	struct random_arg a = { cf_secret_ptr(out), cf_secret_len(out) };

	if (a.len == 0 || a.len > CF_P11_MAX_SECRET)
		return cf_error(CF_E_INVALID_ARG, "random length must be 1..%d bytes, got %zu",
				CF_P11_MAX_SECRET, a.len);
	return p11_status(p11_run(p, NULL, random_op, &a), "generating random bytes");
}

/* ---- HMAC ---- */

static int
mac_prepare(const cf_p11_key *k, const uint8_t *in, size_t inlen, struct sig_req *req)
{
	int r;

	memset(req, 0, sizeof(*req));
	if ((r = check_data(inlen)) != CF_OK)
		return r;
	if (!cf_key_type_is_hmac(k->type))
		return cf_error(CF_E_WRONG_KEY_TYPE, "key %s is %s, not an HMAC key", k->name,
				cf_key_type_name(k->type));
	req->mech.mechanism = k->type == CF_KEY_HMAC_SHA384 ? CKM_SHA384_HMAC :
			      k->type == CF_KEY_HMAC_SHA512 ? CKM_SHA512_HMAC : CKM_SHA256_HMAC;
	req->tbs = in;
	req->tbslen = inlen;
	return CF_OK;
}

int
cf_p11_mac(cf_p11_key *k, const uint8_t *in, size_t inlen, cf_buf *mac)
{
	struct sig_req req;
	struct sign_arg a;
	int r;

	if ((r = mac_prepare(k, in, inlen, &req)) != CF_OK)
		return r;
	memset(&a, 0, sizeof(a));
	a.req = &req;
	if ((r = p11_status(p11_run(k->p, k, sign_op, &a), "computing the MAC")) != CF_OK)
		return r;
	return cf_buf_put(mac, a.out, a.outlen);
}

int
cf_p11_mac_verify(cf_p11_key *k, const uint8_t *in, size_t inlen, const uint8_t *mac,
		  size_t maclen)
{
	struct sig_req req;
	struct sign_arg a;
	int r;

	if ((r = mac_prepare(k, in, inlen, &req)) != CF_OK)
		return r;
	if (maclen != cf_hash_len(cf_key_default_hash(k->type)))
		return cf_error(CF_E_BAD_SIGNATURE, "a %s MAC is %zu bytes, got %zu",
				cf_key_type_name(k->type), cf_hash_len(cf_key_default_hash(k->type)),
				maclen);
	memset(&a, 0, sizeof(a));
	a.req = &req;
	a.sig = mac;
	a.siglen = maclen;
	return p11_status(p11_run(k->p, k, verify_op, &a), "verifying the MAC");
}

/* ---- AES-256-GCM ---- */

struct gcm_arg {
	CK_MECHANISM mech;
	CK_GCM_PARAMS gp;
	const uint8_t *in;
	CK_ULONG inlen;
	uint8_t *out;
	CK_ULONG outlen;
	CK_ULONG cap;            /* out's size: outlen again on every attempt */
	int decrypt;
};

static CK_RV
gcm_op(cf_p11 *p, CK_SESSION_HANDLE s, const struct p11_handles *h, void *arg)
{
	struct gcm_arg *g = arg;
	CK_ULONG cap = g->cap;
	CK_RV rv;

	/* An attempt that failed after the token set the length must not
	 * shrink the next one's buffer (p11_run retries after a recovery). */
	g->outlen = cap;
	if (g->decrypt) {
		if ((rv = p->f->C_DecryptInit(s, &g->mech, h->priv)) != CKR_OK)
			return rv;
		rv = p->f->C_Decrypt(s, P11_DATA(g->in), g->inlen, g->out, &g->outlen);
		/* SoftHSM reports a failed tag check as CKR_GENERAL_ERROR. */
		if (rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED ||
		    rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_ENCRYPTED_DATA_LEN_RANGE)
			return P11_RV_DECRYPT_FAILED;
	} else {
		if ((rv = p->f->C_EncryptInit(s, &g->mech, h->priv)) != CKR_OK)
			return rv;
		rv = p->f->C_Encrypt(s, P11_DATA(g->in), g->inlen, g->out, &g->outlen);
	}
	if (rv == CKR_BUFFER_TOO_SMALL) {
		/* Cannot happen with our sizing; end the active operation anyway. */
		g->outlen = cap;
		rv = P11_RV_BAD_OUTPUT;
	}
	return rv;
}

static int
gcm_prepare(const cf_p11_key *k, const uint8_t *aad, size_t aadlen, const uint8_t *iv,
	    size_t datalen, struct gcm_arg *g)
{
	int r;

	memset(g, 0, sizeof(*g));
	if (k->type != CF_KEY_AES_256)
		return cf_error(CF_E_WRONG_KEY_TYPE, "key %s is %s, not an aes-256 key", k->name,
				cf_key_type_name(k->type));
	if ((r = check_data(datalen)) != CF_OK)
		return r;
	if (aadlen > CF_P11_MAX_AAD)
		return cf_error(CF_E_TOO_LARGE, "additional data of %zu bytes exceeds %u", aadlen,
				CF_P11_MAX_AAD);
	g->gp.pIv = (CK_BYTE_PTR)iv;
	g->gp.ulIvLen = CF_GCM_IV_LEN;
	g->gp.ulIvBits = CF_GCM_IV_LEN * 8;
	g->gp.pAAD = aadlen ? (CK_BYTE_PTR)aad : NULL;
	g->gp.ulAADLen = aadlen;
	g->gp.ulTagBits = CF_GCM_TAG_LEN * 8;
	g->mech.mechanism = CKM_AES_GCM;
	g->mech.pParameter = &g->gp;
	g->mech.ulParameterLen = sizeof(g->gp);
	return CF_OK;
}

int
cf_p11_gcm_encrypt(cf_p11_key *k, const uint8_t *aad, size_t aadlen, const uint8_t *pt,
		   size_t ptlen, uint8_t iv[CF_GCM_IV_LEN], cf_buf *out)
{
	uint8_t fresh[CF_GCM_IV_LEN];
	struct gcm_arg g;
	int r;

	/* Random 96-bit IVs: safe for well under 2^32 messages per key version. */
	if (RAND_bytes(fresh, sizeof(fresh)) != 1)
		return cf_error(CF_E_INTERNAL, "random number generator failed");
	if ((r = gcm_prepare(k, aad, aadlen, fresh, ptlen, &g)) != CF_OK)
		return r;
	if ((r = cf_buf_reserve(out, ptlen + CF_GCM_TAG_LEN, &g.out)) != CF_OK)
		return r;
	g.in = pt;
	g.inlen = ptlen;
	g.cap = ptlen + CF_GCM_TAG_LEN;
	if ((r = p11_status(p11_run(k->p, k, gcm_op, &g), "encrypting")) != CF_OK)
		return r;
	memcpy(iv, fresh, sizeof(fresh));
	return cf_buf_commit(out, g.outlen);
}

int
cf_p11_gcm_decrypt(cf_p11_key *k, const uint8_t *aad, size_t aadlen,
		   const uint8_t iv[CF_GCM_IV_LEN], const uint8_t *ct, size_t ctlen,
		   cf_secret **pt)
{
	cf_secret *plain = NULL;
	struct gcm_arg g;
	CK_RV rv;
	int r;

	if ((r = gcm_prepare(k, aad, aadlen, iv, ctlen, &g)) != CF_OK)
		return r;
	if (ctlen < CF_GCM_TAG_LEN)
		return cf_error(CF_E_DECRYPT, "ciphertext of %zu bytes is shorter than the tag",
				ctlen);
	if ((r = cf_secret_new(ctlen, &plain)) != CF_OK)
		return r;
	g.decrypt = 1;
	g.in = ct;
	g.inlen = ctlen;
	g.out = cf_secret_ptr(plain);
	g.cap = ctlen;
	rv = p11_run(k->p, k, gcm_op, &g);
	if (rv == P11_RV_DECRYPT_FAILED) {
		r = cf_error(CF_E_DECRYPT, "decryption failed: ciphertext, tag, IV or additional "
			     "data do not match");
		goto out;
	}
	if ((r = p11_status(rv, "decrypting")) != CF_OK)
		goto out;
	if (g.outlen != ctlen - CF_GCM_TAG_LEN) {
		r = cf_error(CF_E_TOKEN, "token returned %lu plaintext bytes for %zu", g.outlen,
			     ctlen);
		goto out;
	}
	cf_secret_truncate(plain, g.outlen);
	*pt = plain;
	plain = NULL;
out:
	cf_secret_free(plain);
	return r;
}

/* ---- ECDH ---- */

struct ecdh_arg {
	CK_ECDH1_DERIVE_PARAMS dp;
	CK_ULONG len;
	cf_secret *shared;
};

static CK_RV
ecdh_op(cf_p11 *p, CK_SESSION_HANDLE s, const struct p11_handles *h, void *arg)
{
	struct ecdh_arg *e = arg;
	CK_MECHANISM mech = { CKM_ECDH1_DERIVE, &e->dp, sizeof(e->dp) };
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
	CK_BBOOL f = CK_FALSE, t = CK_TRUE;
	/* A short-lived session object whose value we read once, then destroy. */
	CK_ATTRIBUTE tpl[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_TOKEN, &f, sizeof(f) },
		{ CKA_SENSITIVE, &f, sizeof(f) },
		{ CKA_EXTRACTABLE, &t, sizeof(t) },
		{ CKA_VALUE_LEN, &e->len, sizeof(e->len) },
	};
	CK_ATTRIBUTE val = { CKA_VALUE, NULL, e->len };
	CK_OBJECT_HANDLE obj;
	CK_RV rv;

	if ((rv = p->f->C_DeriveKey(s, &mech, h->priv, tpl, 6, &obj)) != CKR_OK)
		return rv;
	val.pValue = cf_secret_ptr(e->shared);
	rv = p->f->C_GetAttributeValue(s, obj, &val, 1);
	(void)p->f->C_DestroyObject(s, obj);
	if (rv == CKR_OK && val.ulValueLen != e->len)
		rv = P11_RV_BAD_OUTPUT;
	return rv;
}

int
cf_p11_ecdh(cf_p11_key *k, const uint8_t *peer, size_t peerlen, cf_secret **shared)
{
	struct ecdh_arg e;
	int r;

	memset(&e, 0, sizeof(e));
	if (!cf_key_type_is_ec(k->type))
		return cf_error(CF_E_WRONG_KEY_TYPE, "key %s is %s: ECDH needs an EC key", k->name,
				cf_key_type_name(k->type));
	e.len = k->type == CF_KEY_EC_P384 ? 48 : 32;
	if (peerlen != 2 * e.len + 1 || peer[0] != 0x04)
		return cf_error(CF_E_INVALID_ARG, "peer key must be an uncompressed %s point of "
				"%lu bytes", cf_key_type_name(k->type), 2 * e.len + 1);
	if ((r = p11_ec_point_check(k->type, peer, peerlen)) != CF_OK)
		return r;
	e.dp.kdf = CKD_NULL;
	e.dp.pPublicData = (CK_BYTE_PTR)peer;
	e.dp.ulPublicDataLen = peerlen;
	if ((r = cf_secret_new(e.len, &e.shared)) != CF_OK)
		return r;
	if ((r = p11_status(p11_run(k->p, k, ecdh_op, &e), "deriving the ECDH secret")) != CF_OK) {
		cf_secret_free(e.shared);
		return r;
	}
	*shared = e.shared;
	return CF_OK;
}
