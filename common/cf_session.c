#include "cf_session.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "cf_status.h"
#include "cf_time.h"

#define LABEL_HANDSHAKE "coffer/v1 handshake"
#define LABEL_SIGNATURE "coffer/v1 server signature"
#define LABEL_RECORD "coffer/v1 record"

struct cf_session_eph {
	EVP_PKEY *pkey;
	uint8_t pub[CF_SESSION_PUB_LEN];
};

/* key_c2s | iv_c2s | key_s2c | iv_s2c in one locked, wiped buffer. */
#define KEYS_LEN (2 * (CF_SESSION_KEY_LEN + CF_SESSION_IV_LEN))
/* Each direction keeps an AES-GCM context keyed once (the key schedule and
 * GHASH table are not redone per record; only the nonce is set), behind its
 * own lock, since a daemon may be handed two records of one session at once. */
struct cf_session_keys {
	cf_secret *m;
	uint8_t session_id[CF_SESSION_ID_LEN];
	EVP_CIPHER_CTX *ctx[2];
	pthread_mutex_t mu[2];
};

/* OpenSSL 3 looks a cipher up in its provider tables (under a lock) each
 * time EVP_aes_256_gcm() is used to initialise a context; fetch it once. */
static pthread_once_t gcm_once = PTHREAD_ONCE_INIT;
static EVP_CIPHER *gcm_cipher;

static EVP_KDF *hkdf_kdf;

static void
gcm_fetch(void)
{
	gcm_cipher = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
	hkdf_kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
}

static const char *const labels[2][2] = {
	{ "coffer/v1 c2s key", "coffer/v1 c2s iv" },
	{ "coffer/v1 s2c key", "coffer/v1 s2c iv" },
};

int64_t
cf_session_now(void)
{
	struct timespec ts;

	/* CLOCK_BOOTTIME: a session's lifetime counts while the machine is
	 * suspended (CLOCK_MONOTONIC stops then, so a one-hour session lived
	 * on across days of a laptop's or a VM's pause; found by a review). */
	if (clock_gettime(CLOCK_BOOTTIME, &ts) != 0)
		return (int64_t)cf_mono_ms();
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- ephemeral X25519 ---- */

int
cf_session_eph_new(const uint8_t *fixed_priv, cf_session_eph **out)
{
	cf_session_eph *e = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	size_t len = CF_SESSION_PUB_LEN;
	int r = CF_E_INTERNAL;

	if ((e = OPENSSL_zalloc(sizeof(*e))) == NULL)
		return cf_nomem();
	if (fixed_priv != NULL) {
		e->pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, fixed_priv, 32);
	} else {
		if ((ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_X25519, NULL)) == NULL ||
		    EVP_PKEY_keygen_init(ctx) != 1 || EVP_PKEY_keygen(ctx, &e->pkey) != 1)
			e->pkey = NULL;
	}
	if (e->pkey == NULL || EVP_PKEY_get_raw_public_key(e->pkey, e->pub, &len) != 1 ||
	    len != CF_SESSION_PUB_LEN) {
		r = cf_error(CF_E_INTERNAL, "X25519 key generation failed");
		goto out;
	}
	*out = e;
	e = NULL;
	r = CF_OK;
out:
	EVP_PKEY_CTX_free(ctx);
	cf_session_eph_free(e);
	return r;
}

void
cf_session_eph_pub(const cf_session_eph *e, uint8_t pub[CF_SESSION_PUB_LEN])
{
	memcpy(pub, e->pub, CF_SESSION_PUB_LEN);
}

void
cf_session_eph_free(cf_session_eph *e)
{
	if (e == NULL)
		return;
	EVP_PKEY_free(e->pkey);   /* OpenSSL wipes the private key */
	OPENSSL_clear_free(e, sizeof(*e));
}

/* ---- transcript ---- */

static int
put_item(cf_buf *b, const void *data, size_t len)
{
	int r;

	if (len > 0xffff)
		return cf_error(CF_E_TOO_LARGE, "session transcript field of %zu bytes: at most 65535", len);
	if ((r = cf_buf_put_u8(b, (uint8_t)(len >> 8))) != CF_OK ||
	    (r = cf_buf_put_u8(b, (uint8_t)len)) != CF_OK)
		return r;
	return len ? cf_buf_put(b, data, len) : CF_OK;
}

static void
be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (uint8_t)v;
		v >>= 8;
	}
}

static void
be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

int
cf_session_transcript(const struct cf_session_hello *h, cf_buf *out)
{
	uint8_t ver[4], ids[8], lim[20];
	size_t plen = h->principal ? strlen(h->principal) : 0;
	int r;

	if (plen > CF_SESSION_MAX_PRINCIPAL)
		return cf_error(CF_E_INVALID_ARG, "principal longer than %d bytes",
				CF_SESSION_MAX_PRINCIPAL);
	if (h->spki == NULL || h->spki_len == 0 || h->spki_len > CF_SESSION_MAX_SPKI)
		return cf_error(CF_E_INVALID_ARG, "identity key missing or too long");
	be32(ver, h->version);
	be32(ids, h->uid);
	be32(ids + 4, h->gid);
	be32(lim, h->lifetime);
	be64(lim + 4, h->max_records);
	be64(lim + 12, h->max_bytes);
	if ((r = put_item(out, LABEL_HANDSHAKE, strlen(LABEL_HANDSHAKE))) != CF_OK ||
	    (r = put_item(out, ver, sizeof(ver))) != CF_OK ||
	    (r = put_item(out, h->client_pub, CF_SESSION_PUB_LEN)) != CF_OK ||
	    (r = put_item(out, h->client_random, CF_SESSION_RANDOM_LEN)) != CF_OK ||
	    (r = put_item(out, h->principal, plen)) != CF_OK ||
	    (r = put_item(out, h->session_id, CF_SESSION_ID_LEN)) != CF_OK ||
	    (r = put_item(out, h->server_pub, CF_SESSION_PUB_LEN)) != CF_OK ||
	    (r = put_item(out, h->server_random, CF_SESSION_RANDOM_LEN)) != CF_OK ||
	    (r = put_item(out, ids, sizeof(ids))) != CF_OK ||
	    (r = put_item(out, h->spki, h->spki_len)) != CF_OK ||
	    (r = put_item(out, lim, sizeof(lim))) != CF_OK)
		return r;
	return CF_OK;
}

int
cf_session_transcript_hash(const struct cf_session_hello *h, uint8_t th[CF_SESSION_TH_LEN])
{
	cf_buf *t = cf_buf_new(1024);
	int r;

	if (t == NULL)
		return cf_nomem();
	if ((r = cf_session_transcript(h, t)) == CF_OK &&
	    EVP_Digest(cf_buf_peek(t), cf_buf_len(t), th, NULL, EVP_sha256(), NULL) != 1)
		r = cf_error(CF_E_INTERNAL, "SHA-256 failed");
	cf_buf_free(t);
	return r;
}

int
cf_session_signed_message(const uint8_t th[CF_SESSION_TH_LEN], cf_buf *out)
{
	int r;

	if ((r = cf_buf_put(out, LABEL_SIGNATURE, strlen(LABEL_SIGNATURE) + 1)) != CF_OK)
		return r;
	return cf_buf_put(out, th, CF_SESSION_TH_LEN);
}

struct cf_session_pin {
	EVP_PKEY *pk;
};

int
cf_session_pin_new(const uint8_t *spki, size_t spki_len, cf_session_pin **out)
{
	const unsigned char *p = spki;
	cf_session_pin *pin;
	EVP_PKEY *pk = NULL;
	char group[32] = "";

	/* P-256 by name: other 256-bit curves (secp256k1, brainpoolP256r1)
	 * are not what the protocol signs with. */
	if (spki_len == 0 || spki_len > CF_SESSION_MAX_SPKI ||
	    (pk = d2i_PUBKEY(NULL, &p, (long)spki_len)) == NULL || p != spki + spki_len ||
	    !EVP_PKEY_is_a(pk, "EC") ||
	    EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
					   NULL) != 1 ||
	    strcmp(group, "prime256v1") != 0) {
		EVP_PKEY_free(pk);
		return cf_error(CF_E_INVALID_ARG, "the identity is not an EC P-256 public key "
				"(SubjectPublicKeyInfo)");
	}
	if ((pin = calloc(1, sizeof(*pin))) == NULL) {
		EVP_PKEY_free(pk);
		return cf_nomem();
	}
	pin->pk = pk;
	*out = pin;
	return CF_OK;
}

void
cf_session_pin_free(cf_session_pin *pin)
{
	if (pin == NULL)
		return;
	EVP_PKEY_free(pin->pk);
	free(pin);
}

int
cf_session_verify_pinned(const cf_session_pin *pin, const uint8_t th[CF_SESSION_TH_LEN],
			 const uint8_t *sig, size_t siglen)
{
	EVP_MD_CTX *md = NULL;
	cf_buf *m = cf_buf_new(128);
	int r;

	if (m == NULL)
		return cf_nomem();
	if ((r = cf_session_signed_message(th, m)) != CF_OK)
		goto out;
	if ((md = EVP_MD_CTX_new()) == NULL ||
	    EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pin->pk) != 1 ||
	    EVP_DigestVerify(md, sig, siglen, cf_buf_peek(m), cf_buf_len(m)) != 1)
		r = cf_error(CF_E_BAD_SIGNATURE, "the daemon's handshake signature does not verify");
out:
	EVP_MD_CTX_free(md);
	cf_buf_free(m);
	return r;
}

int
cf_session_verify_server(const uint8_t *spki, size_t spki_len,
			 const uint8_t th[CF_SESSION_TH_LEN], const uint8_t *sig, size_t siglen)
{
	cf_session_pin *pin = NULL;
	int r;

	if (cf_session_pin_new(spki, spki_len, &pin) != CF_OK)
		return cf_error(CF_E_BAD_SIGNATURE, "the daemon's identity is not an EC P-256 key");
	r = cf_session_verify_pinned(pin, th, sig, siglen);
	cf_session_pin_free(pin);
	return r;
}

int
cf_session_fingerprint(const uint8_t *spki, size_t spki_len, char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";
	uint8_t d[32];

	if (outlen < CF_SESSION_FPR_LEN + 1)
		return cf_error(CF_E_INVALID_ARG, "fingerprint buffer of %zu bytes: needs %d", outlen,
				CF_SESSION_FPR_LEN + 1);
	if (EVP_Digest(spki, spki_len, d, NULL, EVP_sha256(), NULL) != 1)
		return cf_error(CF_E_INTERNAL, "SHA-256 failed");
	memcpy(out, "sha256:", 7);
	for (size_t i = 0; i < sizeof(d); i++) {
		out[7 + 2 * i] = hex[d[i] >> 4];
		out[8 + 2 * i] = hex[d[i] & 15];
	}
	out[CF_SESSION_FPR_LEN] = '\0';
	return CF_OK;
}

int
cf_spki_pem(const uint8_t *der, size_t len, char **pem)
{
	const unsigned char *p = der;
	EVP_PKEY *k = len <= LONG_MAX ? d2i_PUBKEY(NULL, &p, (long)len) : NULL;
	BIO *b = NULL;
	char *data;
	long n;
	int r = CF_OK;

	if (k == NULL || p != der + len) {
		r = cf_error(CF_E_INVALID_ARG, "not a SubjectPublicKeyInfo");
	} else if ((b = BIO_new(BIO_s_mem())) == NULL || PEM_write_bio_PUBKEY(b, k) != 1 ||
		   (n = BIO_get_mem_data(b, &data)) <= 0 || (*pem = malloc((size_t)n + 1)) == NULL) {
		r = cf_nomem();
	} else {
		/* (the BIO's bytes are not NUL-terminated) */
		memcpy(*pem, data, (size_t)n);
		(*pem)[n] = '\0';
	}
	ERR_clear_error();
	BIO_free(b);
	EVP_PKEY_free(k);
	return r;
}

/* ---- key schedule ---- */

/* Whether OpenSSL's error queue says it ran out of memory (and empty it). */
static int
openssl_nomem(void)
{
	unsigned long e;
	int nomem = 0;

	while ((e = ERR_get_error()) != 0)
		nomem |= ERR_GET_REASON(e) == ERR_R_MALLOC_FAILURE;
	return nomem;
}

/* X25519 into out[32]; CF_E_INVALID_ARG for an unusable (low-order) peer. */
static int
x25519(const cf_session_eph *mine, const uint8_t peer_pub[CF_SESSION_PUB_LEN], uint8_t out[32])
{
	EVP_PKEY *peer = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	size_t len = 32;
	uint8_t zero[32] = { 0 };
	int r = CF_OK;

	/* Any 32 bytes make an X25519 public key: only memory fails these. */
	if ((peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer_pub,
						CF_SESSION_PUB_LEN)) == NULL ||
	    (ctx = EVP_PKEY_CTX_new(mine->pkey, NULL)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	/* OpenSSL refuses an all-zero X25519 result (a low-order peer key);
	 * the comparison is a second line of defence. Its own allocations
	 * (the derivation's context, the peer's copy) fail as memory does,
	 * not as the peer's fault. */
	ERR_clear_error();
	if (EVP_PKEY_derive_init(ctx) != 1 || EVP_PKEY_derive_set_peer(ctx, peer) != 1 ||
	    EVP_PKEY_derive(ctx, out, &len) != 1 || len != 32 ||
	    CRYPTO_memcmp(out, zero, sizeof(zero)) == 0) {
		OPENSSL_cleanse(out, 32);
		r = openssl_nomem() ? cf_nomem() :
		    cf_error(CF_E_INVALID_ARG, "the peer's ephemeral key is not a usable X25519 key");
	}
out:
	EVP_PKEY_CTX_free(ctx);
	EVP_PKEY_free(peer);
	return r;
}

int
cf_session_shared(const cf_session_eph *mine, const uint8_t peer_pub[CF_SESSION_PUB_LEN],
		  cf_secret **out)
{
	uint8_t sh[32];
	int r;

	if ((r = x25519(mine, peer_pub, sh)) != CF_OK)
		return r;
	r = cf_secret_from(sh, sizeof(sh), out);
	OPENSSL_cleanse(sh, sizeof(sh));
	return r;
}

static int
hkdf(const uint8_t *ikm, size_t ikmlen, const uint8_t th[CF_SESSION_TH_LEN], const char *info,
     uint8_t *out, size_t outlen)
{
	EVP_KDF_CTX *ctx;
	OSSL_PARAM p[5];
	int ok;

	pthread_once(&gcm_once, gcm_fetch);
	ctx = hkdf_kdf ? EVP_KDF_CTX_new(hkdf_kdf) : NULL;
	p[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	p[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikmlen);
	p[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)th,
						 CF_SESSION_TH_LEN);
	p[3] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info,
						 strlen(info));
	p[4] = OSSL_PARAM_construct_end();
	ok = ctx != NULL && EVP_KDF_derive(ctx, out, outlen, p) == 1;
	EVP_KDF_CTX_free(ctx);
	return ok ? CF_OK : cf_error(CF_E_INTERNAL, "HKDF failed");
}

int
cf_session_keys_derive(const cf_session_eph *mine, const uint8_t peer_pub[CF_SESSION_PUB_LEN],
		       const uint8_t th[CF_SESSION_TH_LEN],
		       const uint8_t session_id[CF_SESSION_ID_LEN], cf_session_keys **out)
{
	cf_session_keys *k = NULL;
	uint8_t shared[32], *m;
	int r;

	/* The shared secret lives on the stack for microseconds and is wiped:
	 * a locked mapping per handshake would cost more than the X25519. */
	if ((r = x25519(mine, peer_pub, shared)) != CF_OK)
		return r;
	if ((k = calloc(1, sizeof(*k))) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = cf_secret_new(KEYS_LEN, &k->m)) != CF_OK)
		goto out;
	m = cf_secret_ptr(k->m);
	for (int d = 0; d < 2; d++) {
		uint8_t *base = m + d * (CF_SESSION_KEY_LEN + CF_SESSION_IV_LEN);

		if ((r = hkdf(shared, sizeof(shared), th, labels[d][0], base,
			      CF_SESSION_KEY_LEN)) != CF_OK ||
		    (r = hkdf(shared, sizeof(shared), th, labels[d][1], base + CF_SESSION_KEY_LEN,
			      CF_SESSION_IV_LEN)) != CF_OK)
			goto out;
	}
	memcpy(k->session_id, session_id, CF_SESSION_ID_LEN);
	pthread_once(&gcm_once, gcm_fetch);
	for (int d = 0; d < 2; d++) {
		pthread_mutex_init(&k->mu[d], NULL);
		if (gcm_cipher == NULL || (k->ctx[d] = EVP_CIPHER_CTX_new()) == NULL ||
		    EVP_CipherInit_ex(k->ctx[d], gcm_cipher, NULL,
				      m + d * (CF_SESSION_KEY_LEN + CF_SESSION_IV_LEN), NULL,
				      1) != 1) {
			r = cf_error(CF_E_INTERNAL, "AES-GCM initialisation failed");
			goto out;
		}
	}
	*out = k;
	k = NULL;
	r = CF_OK;
out:
	OPENSSL_cleanse(shared, sizeof(shared));
	cf_session_keys_free(k);
	return r;
}

void
cf_session_keys_free(cf_session_keys *k)
{
	if (k == NULL)
		return;
	for (int d = 0; d < 2; d++) {
		if (k->ctx[d] == NULL)
			continue;
		EVP_CIPHER_CTX_free(k->ctx[d]);   /* OpenSSL wipes the key schedule */
		pthread_mutex_destroy(&k->mu[d]);
	}
	cf_secret_free(k->m);
	free(k);
}

const uint8_t *
cf_session_keys_peek(const cf_session_keys *k, enum cf_session_dir d, const uint8_t **iv)
{
	const uint8_t *base = cf_secret_cptr(k->m) +
		(d == CF_SESSION_C2S ? 0 : CF_SESSION_KEY_LEN + CF_SESSION_IV_LEN);

	if (iv != NULL)
		*iv = base + CF_SESSION_KEY_LEN;
	return base;
}

/* ---- records ---- */

#define AAD_MAX (16 + CF_SESSION_ID_LEN + 1 + 8 + 2 + CF_SESSION_MAX_METHOD)

/* The record AAD into a[AAD_MAX]; its length, or 0 for a bad method or
 * direction. */
static size_t
aad_encode(uint8_t *a, const uint8_t session_id[CF_SESSION_ID_LEN], enum cf_session_dir d,
	   uint64_t seq, const char *method)
{
	size_t mlen = method ? strlen(method) : 0, n = 0;

	if (mlen == 0 || mlen > CF_SESSION_MAX_METHOD ||
	    (d != CF_SESSION_C2S && d != CF_SESSION_S2C))
		return 0;
	memcpy(a, LABEL_RECORD, 16);
	n += 16;
	memcpy(a + n, session_id, CF_SESSION_ID_LEN);
	n += CF_SESSION_ID_LEN;
	a[n++] = (uint8_t)d;
	be64(a + n, seq);
	n += 8;
	a[n++] = (uint8_t)(mlen >> 8);
	a[n++] = (uint8_t)mlen;
	memcpy(a + n, method, mlen);
	return n + mlen;
}

int
cf_session_aad(const uint8_t session_id[CF_SESSION_ID_LEN], enum cf_session_dir d, uint64_t seq,
	       const char *method, cf_buf *out)
{
	uint8_t a[AAD_MAX];
	size_t n = aad_encode(a, session_id, d, seq, method);

	if (n == 0)
		return cf_error(CF_E_INVALID_ARG, "method path empty or longer than %d bytes, "
				"or no direction", CF_SESSION_MAX_METHOD);
	return cf_buf_put(out, a, n);
}

void
cf_session_nonce(const cf_session_keys *k, enum cf_session_dir d, uint64_t seq,
		 uint8_t nonce[CF_SESSION_IV_LEN])
{
	const uint8_t *iv;
	uint8_t s[8];

	(void)cf_session_keys_peek(k, d, &iv);
	be64(s, seq);
	memcpy(nonce, iv, CF_SESSION_IV_LEN);
	for (int i = 0; i < 8; i++)
		nonce[4 + i] ^= s[i];
}

/* One AES-256-GCM pass; enc selects the direction of the cipher. */
static int
gcm(const cf_session_keys *k, enum cf_session_dir d, uint64_t seq, const char *method, int enc,
    const uint8_t *in, size_t inlen, uint8_t *out, uint8_t tag[CF_SESSION_TAG_LEN])
{
	uint8_t nonce[CF_SESSION_IV_LEN], aad[AAD_MAX];
	size_t alen = aad_encode(aad, k->session_id, d, seq, method);
	EVP_CIPHER_CTX *c = k->ctx[d - 1];
	pthread_mutex_t *mu = (pthread_mutex_t *)&k->mu[d - 1];
	int n, ok;

	if (alen == 0)
		return cf_error(CF_E_INVALID_ARG, "method path empty or longer than %d bytes",
				CF_SESSION_MAX_METHOD);
	cf_session_nonce(k, d, seq, nonce);
	pthread_mutex_lock(mu);
	ok = EVP_CipherInit_ex(c, NULL, NULL, NULL, nonce, enc) == 1 &&
	     EVP_CipherUpdate(c, NULL, &n, aad, (int)alen) == 1 &&
	     (inlen == 0 || EVP_CipherUpdate(c, out, &n, in, (int)inlen) == 1) &&
	     (enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, CF_SESSION_TAG_LEN, tag) == 1) &&
	     EVP_CipherFinal_ex(c, out + inlen, &n) == 1 &&
	     (!enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, CF_SESSION_TAG_LEN, tag) == 1);
	pthread_mutex_unlock(mu);
	OPENSSL_cleanse(nonce, sizeof(nonce));
	if (ok)
		return CF_OK;
	return enc ? cf_error(CF_E_INTERNAL, "AES-GCM encryption failed")
		   : cf_error(CF_E_DECRYPT, "sealed record failed authentication");
}

int
cf_session_seal_to(const cf_session_keys *k, enum cf_session_dir d, uint64_t seq,
		   const char *method, const uint8_t *pt, size_t ptlen, uint8_t *out)
{
	if (ptlen > CF_SECRET_MAX)
		return cf_error(CF_E_TOO_LARGE, "sealed payload above %u bytes", CF_SECRET_MAX);
	return gcm(k, d, seq, method, 1, pt, ptlen, out, out + ptlen);
}

int
cf_session_seal(const cf_session_keys *k, enum cf_session_dir d, uint64_t seq,
		const char *method, const uint8_t *pt, size_t ptlen, cf_buf *out)
{
	uint8_t *dst;
	int r;

	if (ptlen > CF_SECRET_MAX)
		return cf_error(CF_E_TOO_LARGE, "sealed payload above %u bytes", CF_SECRET_MAX);
	if ((r = cf_buf_reserve(out, ptlen + CF_SESSION_TAG_LEN, &dst)) != CF_OK ||
	    (r = cf_session_seal_to(k, d, seq, method, pt, ptlen, dst)) != CF_OK)
		return r;
	return cf_buf_commit(out, ptlen + CF_SESSION_TAG_LEN);
}

/* The plaintext length of a record of reclen bytes. */
static int
record_len(size_t reclen, size_t *len)
{
	if (reclen < CF_SESSION_TAG_LEN)
		return cf_error(CF_E_DECRYPT, "sealed record shorter than its tag");
	*len = reclen - CF_SESSION_TAG_LEN;
	if (*len > CF_SECRET_MAX)
		return cf_error(CF_E_TOO_LARGE, "sealed payload above %u bytes", CF_SECRET_MAX);
	return CF_OK;
}

int
cf_session_open_in_place(const cf_session_keys *k, enum cf_session_dir d, uint64_t seq,
			 const char *method, uint8_t *rec, size_t reclen, size_t *ptlen)
{
	uint8_t tag[CF_SESSION_TAG_LEN];
	size_t len = 0;
	int r;

	if ((r = record_len(reclen, &len)) != CF_OK)
		return r;
	memcpy(tag, rec + len, sizeof(tag));
	if ((r = gcm(k, d, seq, method, 0, rec, len, rec, tag)) != CF_OK) {
		OPENSSL_cleanse(rec, len);   /* whatever was decrypted */
		return r;
	}
	*ptlen = len;
	return CF_OK;
}

int
cf_session_open(const cf_session_keys *k, enum cf_session_dir d, uint64_t seq,
		const char *method, const uint8_t *rec, size_t reclen, uint8_t **pt, size_t *ptlen)
{
	uint8_t tag[CF_SESSION_TAG_LEN], *buf;
	size_t len = 0;
	int r;

	if ((r = record_len(reclen, &len)) != CF_OK)
		return r;
	memcpy(tag, rec + len, sizeof(tag));
	/* +1: GCM's final step may write nothing but wants a valid pointer. */
	if ((buf = malloc(len + 1)) == NULL)
		return cf_nomem();
	if ((r = gcm(k, d, seq, method, 0, rec, len, buf, tag)) != CF_OK) {
		cf_session_plain_free(buf, len + 1);   /* whatever was decrypted */
		return r;
	}
	*pt = buf;
	*ptlen = len;
	return CF_OK;
}

void
cf_session_plain_free(uint8_t *pt, size_t len)
{
	if (pt != NULL)
		OPENSSL_clear_free(pt, len);
}
