/*
 * libcoffer_jwk.c — a public key as a JSON Web Key (RFC 7517, 7518, 8037),
 * for services that publish their verification keys (JWKS endpoints, JWT
 * verifiers). Built from the SubjectPublicKeyInfo with OpenSSL, nothing
 * home-made but the base64url text.
 */
#include "coffer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "cf_status.h"

#define JWK_MAX 4096   /* RSA-4096: n is 683 characters */

/* Append "name":"<base64url of p[0..n), no padding>". */
static int
put_b64url(char *out, size_t *at, const char *name, const uint8_t *p, size_t n)
{
	static const char tab[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t need = strlen(name) + 6 + (n * 4 + 2) / 3;
	uint32_t acc = 0;
	int bits = 0;

	if (*at + need >= JWK_MAX)
		return cf_error(CF_E_INTERNAL, "public key too large for a JWK");
	*at += (size_t)snprintf(out + *at, JWK_MAX - *at, ",\"%s\":\"", name);
	for (size_t i = 0; i < n; i++) {
		acc = acc << 8 | p[i];
		for (bits += 8; bits >= 6; bits -= 6)
			out[(*at)++] = tab[(acc >> (bits - 6)) & 63];
	}
	if (bits > 0)
		out[(*at)++] = tab[(acc << (6 - bits)) & 63];
	out[(*at)++] = '"';
	out[*at] = '\0';
	return CF_OK;
}

/* A big number as exactly len bytes (0: its minimal length). */
static int
put_bn(EVP_PKEY *pk, const char *param, size_t len, char *out, size_t *at, const char *name)
{
	uint8_t buf[512];
	BIGNUM *bn = NULL;
	int n, r;

	if (EVP_PKEY_get_bn_param(pk, param, &bn) != 1)
		return cf_error(CF_E_INTERNAL, "public key lacks %s", param);
	if (len == 0)
		len = (size_t)BN_num_bytes(bn);
	n = len <= sizeof(buf) ? BN_bn2binpad(bn, buf, (int)len) : -1;
	BN_free(bn);
	if (n < 0)
		return cf_error(CF_E_INTERNAL, "public key parameter %s too large", param);
	r = put_b64url(out, at, name, buf, (size_t)n);
	return r;
}

int
coffer_public_key_jwk(const struct coffer_public_key *pk, const char *kid, char **json)
{
	const unsigned char *p;
	EVP_PKEY *key = NULL;
	char *out = NULL, curve[64];
	size_t at = 0;
	int r = CF_OK;

	cf_error_clear();
	if (pk == NULL || json == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL public key or output");
	p = pk->der.data;
	if (pk->der.len == 0 || pk->der.len > 8192 ||
	    (key = d2i_PUBKEY(NULL, &p, (long)pk->der.len)) == NULL ||
	    p != pk->der.data + pk->der.len)
		return cf_error(CF_E_INVALID_ARG, "not a DER SubjectPublicKeyInfo");
	if ((out = malloc(JWK_MAX)) == NULL) {
		r = cf_nomem();
		goto done;
	}
	switch (EVP_PKEY_get_base_id(key)) {
	case EVP_PKEY_EC: {
		size_t len = 0;
		const char *crv = NULL, *alg = NULL;

		if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, curve,
		    sizeof(curve), NULL) == 1) {
			if (strcmp(curve, "prime256v1") == 0)
				crv = "P-256", alg = "ES256", len = 32;
			else if (strcmp(curve, "secp384r1") == 0)
				crv = "P-384", alg = "ES384", len = 48;
		}
		if (crv == NULL) {
			r = cf_error(CF_E_UNSUPPORTED, "EC curve without a JWK name");
			goto done;
		}
		at = (size_t)snprintf(out, JWK_MAX, "{\"kty\":\"EC\",\"crv\":\"%s\",\"alg\":\"%s\"",
		    crv, alg);
		if ((r = put_bn(key, OSSL_PKEY_PARAM_EC_PUB_X, len, out, &at, "x")) != CF_OK ||
		    (r = put_bn(key, OSSL_PKEY_PARAM_EC_PUB_Y, len, out, &at, "y")) != CF_OK)
			goto done;
		break;
	}
	case EVP_PKEY_ED25519: {
		uint8_t raw[32];
		size_t len = sizeof(raw);

		if (EVP_PKEY_get_raw_public_key(key, raw, &len) != 1 || len != sizeof(raw)) {
			r = cf_error(CF_E_INTERNAL, "cannot read the Ed25519 public key");
			goto done;
		}
		at = (size_t)snprintf(out, JWK_MAX,
		    "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"alg\":\"EdDSA\"");
		if ((r = put_b64url(out, &at, "x", raw, len)) != CF_OK)
			goto done;
		break;
	}
	case EVP_PKEY_RSA:
		/* No "alg": the same key signs RSA-PSS and PKCS#1 v1.5. */
		at = (size_t)snprintf(out, JWK_MAX, "{\"kty\":\"RSA\"");
		if ((r = put_bn(key, OSSL_PKEY_PARAM_RSA_N, 0, out, &at, "n")) != CF_OK ||
		    (r = put_bn(key, OSSL_PKEY_PARAM_RSA_E, 0, out, &at, "e")) != CF_OK)
			goto done;
		break;
	default:
		r = cf_error(CF_E_UNSUPPORTED, "no JWK form for this key type");
		goto done;
	}
	if (kid != NULL) {
		/* Key names and versions only: no character needs escaping. */
		for (const char *c = kid; *c; c++)
			if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20) {
				r = cf_error(CF_E_INVALID_ARG, "kid must not need JSON escaping");
				goto done;
			}
		/* Room for it and for the tail below, with its NUL. */
		if (at + sizeof(",\"kid\":\"\"") - 1 + strlen(kid) + sizeof(",\"use\":\"sig\"}") >
		    JWK_MAX) {
			r = cf_error(CF_E_INVALID_ARG, "kid too long");
			goto done;
		}
		at += (size_t)snprintf(out + at, JWK_MAX - at, ",\"kid\":\"%s\"", kid);
	}
	snprintf(out + at, JWK_MAX - at, ",\"use\":\"sig\"}");
	*json = out;
	out = NULL;
done:
	free(out);
	EVP_PKEY_free(key);
	return r;
}
