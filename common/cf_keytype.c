#include "cf_keytype.h"

#include <string.h>

#include "cf_count.h"
#include "cf_status.h"

static const char *const cf_key_type_names[CF_KEY__COUNT] = {
	[CF_KEY_NONE] = "none",
	[CF_KEY_EC_P256] = "ec-p256",
	[CF_KEY_EC_P384] = "ec-p384",
	[CF_KEY_ED25519] = "ed25519",
	[CF_KEY_RSA_2048] = "rsa-2048",
	[CF_KEY_RSA_3072] = "rsa-3072",
	[CF_KEY_RSA_4096] = "rsa-4096",
	[CF_KEY_HMAC_SHA256] = "hmac-sha256",
	[CF_KEY_HMAC_SHA384] = "hmac-sha384",
	[CF_KEY_HMAC_SHA512] = "hmac-sha512",
	[CF_KEY_AES_256] = "aes-256",
};

const char *
cf_key_type_name(enum cf_key_type t)
{
	if ((int)t < 0 || t >= CF_KEY__COUNT)
		return "unknown";
	return cf_key_type_names[t];
}

int
cf_key_type_parse(const char *name, enum cf_key_type *out)
{
	for (int t = CF_KEY_NONE + 1; t < CF_KEY__COUNT; t++) {
		if (strcmp(name, cf_key_type_names[t]) == 0) {
			*out = (enum cf_key_type)t;
			return CF_OK;
		}
	}
	return cf_error(CF_E_INVALID_ARG, "unknown key type; use one of ec-p256, ec-p384, "
			"ed25519, rsa-2048, rsa-3072, rsa-4096, hmac-sha256, hmac-sha384, "
			"hmac-sha512, aes-256");
}

int
cf_key_type_is_ec(enum cf_key_type t)
{
	return t == CF_KEY_EC_P256 || t == CF_KEY_EC_P384;
}

int
cf_key_type_is_rsa(enum cf_key_type t)
{
	return t == CF_KEY_RSA_2048 || t == CF_KEY_RSA_3072 || t == CF_KEY_RSA_4096;
}

int
cf_key_type_is_hmac(enum cf_key_type t)
{
	return t == CF_KEY_HMAC_SHA256 || t == CF_KEY_HMAC_SHA384 || t == CF_KEY_HMAC_SHA512;
}

int
cf_key_type_is_asymmetric(enum cf_key_type t)
{
	return cf_key_type_is_ec(t) || cf_key_type_is_rsa(t) || t == CF_KEY_ED25519;
}

enum cf_hash
cf_key_default_hash(enum cf_key_type t)
{
	switch (t) {
	case CF_KEY_EC_P256:
	case CF_KEY_RSA_2048:
	case CF_KEY_RSA_3072:
	case CF_KEY_RSA_4096:
	case CF_KEY_HMAC_SHA256:
		return CF_HASH_SHA256;
	case CF_KEY_EC_P384:
	case CF_KEY_HMAC_SHA384:
		return CF_HASH_SHA384;
	case CF_KEY_HMAC_SHA512:
		return CF_HASH_SHA512;
	default:
		return CF_HASH_NONE;
	}
}

enum cf_sig_scheme
cf_key_default_scheme(enum cf_key_type t)
{
	if (cf_key_type_is_ec(t))
		return CF_SIG_ECDSA;
	if (cf_key_type_is_rsa(t))
		return CF_SIG_RSA_PSS;
	if (t == CF_KEY_ED25519)
		return CF_SIG_EDDSA;
	return CF_SIG_DEFAULT;
}

size_t
cf_hash_len(enum cf_hash h)
{
	switch (h) {
	case CF_HASH_SHA256: return 32;
	case CF_HASH_SHA384: return 48;
	case CF_HASH_SHA512: return 64;
	default: return 0;
	}
}

const char *
cf_hash_name(enum cf_hash h)
{
	switch (h) {
	case CF_HASH_SHA256: return "sha256";
	case CF_HASH_SHA384: return "sha384";
	case CF_HASH_SHA512: return "sha512";
	default: return "none";
	}
}

int
cf_hash_parse(const char *name, enum cf_hash *out)
{
	for (int h = CF_HASH_SHA256; h <= CF_HASH_SHA512; h++) {
		if (strcmp(name, cf_hash_name((enum cf_hash)h)) == 0) {
			*out = (enum cf_hash)h;
			return CF_OK;
		}
	}
	return cf_error(CF_E_INVALID_ARG, "unknown hash; use sha256, sha384 or sha512");
}

int
cf_key_name_check(const char *name)
{
	size_t n;

	cf_count(CF_COUNT_KEY_NAME_CHECK);
	if (name == NULL || name[0] == '\0')
		return cf_error(CF_E_INVALID_ARG, "key name is empty");
	n = strnlen(name, CF_KEY_NAME_MAX + 1);
	if (n > CF_KEY_NAME_MAX)
		return cf_error(CF_E_INVALID_ARG, "key name longer than %d characters",
				CF_KEY_NAME_MAX);
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		int alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');

		if (i == 0 && !alnum)
			return cf_error(CF_E_INVALID_ARG,
					"key name must start with a lower-case letter or digit");
		if (!alnum && c != '.' && c != '_' && c != '-')
			return cf_error(CF_E_INVALID_ARG, "key name character %zu is not one of "
					"a-z 0-9 . _ -", i + 1);
	}
	return CF_OK;
}
