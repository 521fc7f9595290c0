/*
 * cf_keytype.h — the key model shared by daemon, client and PKCS#11 layer:
 * key types, hash algorithms, signature schemes and the key-name rule.
 */
#ifndef COFFER_CF_KEYTYPE_H
#define COFFER_CF_KEYTYPE_H

#include <stddef.h>
#include <stdint.h>

enum cf_key_type {
	CF_KEY_NONE = 0,
	CF_KEY_EC_P256,
	CF_KEY_EC_P384,
	CF_KEY_ED25519,
	CF_KEY_RSA_2048,
	CF_KEY_RSA_3072,
	CF_KEY_RSA_4096,
	CF_KEY_HMAC_SHA256,
	CF_KEY_HMAC_SHA384,
	CF_KEY_HMAC_SHA512,
	CF_KEY_AES_256,
	CF_KEY__COUNT
};

enum cf_hash { CF_HASH_NONE = 0, CF_HASH_SHA256, CF_HASH_SHA384, CF_HASH_SHA512 };

enum cf_sig_scheme {
	CF_SIG_DEFAULT = 0, /* the key type's natural scheme (see cf_key_default_scheme) */
	CF_SIG_ECDSA,
	CF_SIG_EDDSA,
	CF_SIG_RSA_PSS,     /* MGF1 with the same hash, salt length = hash length */
	CF_SIG_RSA_PKCS1    /* PKCS#1 v1.5 with DigestInfo */
};

/* Longest key name; names match [a-z0-9][a-z0-9._-]{0,127}. */
#define CF_KEY_NAME_MAX 128
/* Highest version number. */
#define CF_KEY_VERSION_MAX 1000000u

/* Stable lower-case names used in the CLI, the API and the registry:
 * "ec-p256", "ec-p384", "ed25519", "rsa-2048", "rsa-3072", "rsa-4096",
 * "hmac-sha256", "hmac-sha384", "hmac-sha512", "aes-256". */
const char *cf_key_type_name(enum cf_key_type t);
/* CF_OK or CF_E_INVALID_ARG. */
int cf_key_type_parse(const char *name, enum cf_key_type *out);

int cf_key_type_is_asymmetric(enum cf_key_type t);
int cf_key_type_is_ec(enum cf_key_type t);      /* P-256 or P-384 */
int cf_key_type_is_rsa(enum cf_key_type t);
int cf_key_type_is_hmac(enum cf_key_type t);

/* HMAC hash of an HMAC key type, or the default hash for a signing type;
 * CF_HASH_NONE for Ed25519 and AES. */
enum cf_hash cf_key_default_hash(enum cf_key_type t);
enum cf_sig_scheme cf_key_default_scheme(enum cf_key_type t);

/* Digest length in bytes (32/48/64), 0 for CF_HASH_NONE. */
size_t cf_hash_len(enum cf_hash h);
const char *cf_hash_name(enum cf_hash h);       /* "sha256" ... */
int cf_hash_parse(const char *name, enum cf_hash *out);

/* CF_OK, or CF_E_INVALID_ARG with a detail saying which rule failed. */
int cf_key_name_check(const char *name);

#endif
