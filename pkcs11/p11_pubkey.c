/* Public keys: curve parameters, SubjectPublicKeyInfo export, peer point checks. */
#include "p11_internal.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "cf_status.h"

/* DER OBJECT IDENTIFIERs as used in CKA_EC_PARAMS. */
static const unsigned char oid_p256[] = {
	0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07
};
static const unsigned char oid_p384[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22 };
static const unsigned char oid_ed25519[] = { 0x06, 0x03, 0x2b, 0x65, 0x70 };

const unsigned char *
p11_ec_params(enum cf_key_type t, size_t *len)
{
	switch (t) {
	case CF_KEY_EC_P384:
		*len = sizeof(oid_p384);
		return oid_p384;
	case CF_KEY_ED25519:
		*len = sizeof(oid_ed25519);
		return oid_ed25519;
	default:
		*len = sizeof(oid_p256);
		return oid_p256;
	}
}

struct pub_arg {
	enum cf_key_type type;
	unsigned char *a, *b;   /* EC point (DER OCTET STRING) | RSA modulus, exponent */
	unsigned long alen, blen;
};

static CK_RV
pub_op(cf_p11 *p, CK_SESSION_HANDLE s, const struct p11_handles *h, void *arg)
{
	struct pub_arg *pa = arg;
	CK_RV rv;

	/* Run again after a recovery: what the last attempt read is let go. */
	free(pa->a);
	free(pa->b);
	pa->a = pa->b = NULL;
	pa->alen = pa->blen = 0;
	if (cf_key_type_is_rsa(pa->type)) {
		if ((rv = p11_get_attr(p, s, h->pub, CKA_MODULUS, &pa->a, &pa->alen)) != CKR_OK)
			return rv;
		return p11_get_attr(p, s, h->pub, CKA_PUBLIC_EXPONENT, &pa->b, &pa->blen);
	}
	return p11_get_attr(p, s, h->pub, CKA_EC_POINT, &pa->a, &pa->alen);
}

/* Build an EVP_PKEY from a curve type and a raw public point. */
static int
p11_ec_pkey(enum cf_key_type t, const unsigned char *pt, size_t len, EVP_PKEY **out)
{
	OSSL_PARAM params[3];
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *pk = NULL;
	int r = CF_E_INVALID_ARG;

	if (t == CF_KEY_ED25519) {
		if (len != 32)
			return cf_error(CF_E_INVALID_ARG, "an Ed25519 public key is 32 bytes");
		if ((pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pt, len)) == NULL)
			return cf_error(CF_E_INVALID_ARG, "Ed25519 public key rejected");
		*out = pk;
		return CF_OK;
	}
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME,
		t == CF_KEY_EC_P384 ? "P-384" : "P-256", 0);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)pt, len);
	params[2] = OSSL_PARAM_construct_end();
	if ((ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) == NULL ||
	    EVP_PKEY_fromdata_init(ctx) <= 0 ||
	    EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) <= 0) {
		r = cf_error(CF_E_INVALID_ARG, "EC public point is not on %s",
			     cf_key_type_name(t));
		goto out;
	}
	*out = pk;
	pk = NULL;
	r = CF_OK;
out:
	EVP_PKEY_free(pk);
	EVP_PKEY_CTX_free(ctx);
	return r;
}

static int
p11_rsa_pkey(const unsigned char *n, size_t nlen, const unsigned char *e, size_t elen,
	     EVP_PKEY **out)
{
	OSSL_PARAM_BLD *bld = NULL;
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	BIGNUM *bn = NULL, *be = NULL;
	EVP_PKEY *pk = NULL;
	int r = CF_E_INTERNAL;

	if ((bn = BN_bin2bn(n, (int)nlen, NULL)) == NULL ||
	    (be = BN_bin2bn(e, (int)elen, NULL)) == NULL || (bld = OSSL_PARAM_BLD_new()) == NULL ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) ||
	    (params = OSSL_PARAM_BLD_to_param(bld)) == NULL ||
	    (ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) == NULL ||
	    EVP_PKEY_fromdata_init(ctx) <= 0 ||
	    EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) <= 0) {
		r = cf_error(CF_E_INTERNAL, "cannot build an RSA public key");
		goto out;
	}
	*out = pk;
	r = CF_OK;
out:
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	BN_free(bn);
	BN_free(be);
	return r;
}

static int
p11_pubkey_evp(cf_p11_key *k, EVP_PKEY **out)
{
	struct pub_arg pa = { k->type, NULL, NULL, 0, 0 };
	const unsigned char *q;
	ASN1_OCTET_STRING *os = NULL;
	int r;

	if (!cf_key_type_is_asymmetric(k->type))
		return cf_error(CF_E_WRONG_KEY_TYPE, "%s is a %s key: it has no public key",
				k->name, cf_key_type_name(k->type));
	if ((r = p11_status(p11_run(k->p, k, pub_op, &pa), "reading the public key")) != CF_OK)
		goto out;
	if (cf_key_type_is_rsa(k->type)) {
		r = p11_rsa_pkey(pa.a, pa.alen, pa.b, pa.blen, out);
		goto out;
	}
	/* CKA_EC_POINT is a DER OCTET STRING around the raw point. */
	q = pa.a;
	if ((os = d2i_ASN1_OCTET_STRING(NULL, &q, (long)pa.alen)) == NULL) {
		r = cf_error(CF_E_TOKEN, "token returned a malformed CKA_EC_POINT");
		goto out;
	}
	r = p11_ec_pkey(k->type, ASN1_STRING_get0_data(os), (size_t)ASN1_STRING_length(os), out);
out:
	ASN1_OCTET_STRING_free(os);
	free(pa.a);
	free(pa.b);
	return r;
}

int
cf_p11_pubkey_der(cf_p11_key *k, cf_buf *out)
{
	EVP_PKEY *pk = NULL;
	unsigned char *der = NULL;
	int len, r;

	if ((r = p11_pubkey_evp(k, &pk)) != CF_OK)
		return r;
	if ((len = i2d_PUBKEY(pk, &der)) <= 0)
		r = cf_error(CF_E_INTERNAL, "cannot encode SubjectPublicKeyInfo");
	else
		r = cf_buf_put(out, der, (size_t)len);
	OPENSSL_free(der);
	EVP_PKEY_free(pk);
	return r;
}

int
cf_p11_pubkey_pem(cf_p11_key *k, cf_buf *out)
{
	EVP_PKEY *pk = NULL;
	BIO *bio = NULL;
	char *data;
	long len;
	int r;

	if ((r = p11_pubkey_evp(k, &pk)) != CF_OK)
		return r;
	if ((bio = BIO_new(BIO_s_mem())) == NULL || !PEM_write_bio_PUBKEY(bio, pk)) {
		r = cf_error(CF_E_INTERNAL, "cannot encode the public key as PEM");
		goto out;
	}
	len = BIO_get_mem_data(bio, &data);
	r = cf_buf_put(out, data, (size_t)len);
out:
	BIO_free(bio);
	EVP_PKEY_free(pk);
	return r;
}

int
p11_ec_point_check(enum cf_key_type t, const uint8_t *pt, size_t len)
{
	EVP_PKEY *pk = NULL;
	int r = p11_ec_pkey(t, pt, len, &pk);

	EVP_PKEY_free(pk);
	return r;
}
