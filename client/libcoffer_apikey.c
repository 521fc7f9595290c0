/*
 * libcoffer_apikey.c — principals' API keys: the key a client signs its
 * calls with (the signer itself: libcoffer_signer.c), credentials files, and
 * the AdminService calls that create, rotate, revoke and list them.
 */
#include "libcoffer_rpc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "cf_arena.h"
#include "cf_buf.h"
#include "cf_hex.h"
#include "cf_reqsign.h"
#include "cf_secret.h"
#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"
#include "libcoffer_signer.h"

#define AS "/coffer.v1.AdminService/"
#define CRED_MAGIC "COFFER-API-KEY 1"
#define CRED_FILE_MAX 512

int
coffer_set_api_key(coffer_client *c, const char *id, const uint8_t *secret, size_t len)
{
	struct lc_apikey *k;
	int r;

	cf_error_clear();
	if (c == NULL || id == NULL || secret == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	if ((r = cf_apikey_id_check(id)) != CF_OK)
		return r;
	if (len < 32 || len > 64)
		return cf_error(CF_E_INVALID_ARG, "an API secret is 32..64 bytes, got %zu", len);
	if ((r = lc_apikey_new(id, secret, len, &k)) != CF_OK)
		return r;
	lc_client_set_apikey(c, k);
	return CF_OK;
}

/* Parse a credentials file's text (NUL-terminated) and set it on c. */
static int
cred_parse(coffer_client *c, const char *path, char *text)
{
	char *id, *hex, *nl;
	uint8_t secret[64];
	size_t n;
	int r;

	if (strncmp(text, CRED_MAGIC "\nid ", strlen(CRED_MAGIC) + 4) != 0)
		return cf_error(CF_E_INVALID_ARG, "%s is not a Coffer API key file (it must start "
		    "with \"%s\")", path, CRED_MAGIC);
	id = text + strlen(CRED_MAGIC) + 4;
	if ((nl = strchr(id, '\n')) == NULL || strncmp(nl + 1, "secret ", 7) != 0)
		return cf_error(CF_E_INVALID_ARG, "%s: expected an \"id\" line, then a \"secret\" "
		    "line", path);
	*nl = '\0';
	hex = nl + 8;
	if ((nl = strchr(hex, '\n')) != NULL)
		*nl = '\0';
	n = strlen(hex);
	if (n % 2 != 0 || n < 64 || n > 128)
		return cf_error(CF_E_INVALID_ARG, "%s: the secret must be 64..128 hex digits", path);
	if (cf_hex_decode(hex, secret, n / 2) != 0) {
		OPENSSL_cleanse(secret, sizeof(secret));
		return cf_error(CF_E_INVALID_ARG, "%s: the secret must be hex digits", path);
	}
	r = coffer_set_api_key(c, id, secret, n / 2);
	OPENSSL_cleanse(secret, sizeof(secret));
	return r;
}

int
coffer_set_api_key_file(coffer_client *c, const char *path)
{
	cf_secret *buf = NULL;
	struct stat st;
	ssize_t got;
	size_t have = 0;
	int fd, r;

	cf_error_clear();
	if (c == NULL || path == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	if ((fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)) < 0)
		return cf_error(CF_E_IO, "cannot open API key file %s: %s", path, strerror(errno));
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		r = cf_error(CF_E_IO, "API key file %s is not a regular file", path);
		goto out;
	}
	if (st.st_mode & 077) {
		r = cf_error(CF_E_PRECONDITION, "API key file %s can be read by group or others; "
		    "chmod 600 it", path);
		goto out;
	}
	if ((r = cf_secret_new(CRED_FILE_MAX + 1, &buf)) != CF_OK)
		goto out;
	while (have < CRED_FILE_MAX &&
	    (got = read(fd, cf_secret_ptr(buf) + have, CRED_FILE_MAX - have)) > 0)
		have += (size_t)got;
	cf_secret_ptr(buf)[have] = '\0';
	r = cred_parse(c, path, (char *)cf_secret_ptr(buf));
out:
	cf_secret_free(buf);
	close(fd);
	return r;
}

int
coffer_write_api_key_file(const char *path, const char *id, const uint8_t *secret, size_t len)
{
	cf_secret *text = NULL;
	size_t n;
	int fd, r;

	cf_error_clear();
	if (path == NULL || id == NULL || secret == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	if ((r = cf_apikey_id_check(id)) != CF_OK)
		return r;
	if (len < 32 || len > 64)
		return cf_error(CF_E_INVALID_ARG, "an API secret is 32..64 bytes, got %zu", len);
	if ((r = cf_secret_new(CRED_FILE_MAX, &text)) != CF_OK)
		return r;
	n = (size_t)snprintf((char *)cf_secret_ptr(text), CRED_FILE_MAX, "%s\nid %s\nsecret ",
	    CRED_MAGIC, id);
	cf_hex_encode(secret, len, (char *)cf_secret_ptr(text) + n);
	n += 2 * len;
	cf_secret_ptr(text)[n++] = '\n';
	if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600)) < 0) {
		r = cf_error(CF_E_IO, "cannot create API key file %s: %s%s", path, strerror(errno),
		    errno == EEXIST ? " (it is never replaced: choose another name)" : "");
		goto out;
	}
	if (cf_write_all(fd, cf_secret_cptr(text), n) != 0 || fsync(fd) != 0) {
		r = cf_error(CF_E_IO, "cannot write API key file %s: %s", path, strerror(errno));
		close(fd);
		(void)unlink(path);
		goto out;
	}
	close(fd);
out:
	cf_secret_free(text);
	return r;
}

/* ---- AdminService ---- */

static void
from_pb(const Coffer__V1__ApiKey *m, struct coffer_api_key *k)
{
	memset(k, 0, sizeof(*k));
	snprintf(k->id, sizeof(k->id), "%s", m->id);
	snprintf(k->principal, sizeof(k->principal), "%s", m->principal);
	k->create_time = m->create_time;
	k->revoke_time = m->revoke_time;
	for (size_t i = 0; i < m->n_secrets && i < COFFER_API_KEY_SECRETS_MAX; i++) {
		k->secrets[i].generation = m->secrets[i]->generation;
		k->secrets[i].create_time = m->secrets[i]->create_time;
		k->secrets[i].expire_time = m->secrets[i]->expire_time;
		k->nsecrets++;
	}
}

/* Run a call answering ApiKeySecretResponse; the secret stays in locked
 * memory (released with coffer_bytes_free). */
static int
secret_call(coffer_client *c, const char *method, const ProtobufCMessage *req,
    struct coffer_api_key *key, struct coffer_bytes *secret)
{
	Coffer__V1__ApiKeySecretResponse *resp;
	ProtobufCMessage *m = NULL;
	int r;

	if ((r = lc_rpc(c, method, req, &coffer__v1__api_key_secret_response__descriptor, 1, &m)) !=
	    CF_OK)
		return r;
	resp = (Coffer__V1__ApiKeySecretResponse *)m;
	if (resp->key == NULL) {
		r = cf_error(CF_E_INTERNAL, "the daemon answered without the key");
		goto out;
	}
	if (secret != NULL) {
		struct coffer_bytes got = { NULL, 0 };

		if (resp->secret.len > 0) {
			if ((got.data = cf_locked_allocator.alloc(NULL, resp->secret.len)) == NULL) {
				r = cf_nomem();
				goto out;
			}
			memcpy(got.data, resp->secret.data, resp->secret.len);
			got.len = resp->secret.len;
		}
		*secret = got;
	}
	if (key != NULL)
		from_pb(resp->key, key);
out:
	protobuf_c_message_free_unpacked(m, &cf_locked_allocator);   /* wipes */
	return r;
}

int
coffer_api_key_create(coffer_client *c, const char *principal, const uint8_t *import,
    size_t import_len, struct coffer_api_key *key, struct coffer_bytes *secret)
{
	Coffer__V1__CreateApiKeyRequest req = COFFER__V1__CREATE_API_KEY_REQUEST__INIT;

	cf_error_clear();
	if (c == NULL || principal == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL client or principal");
	req.principal = (char *)principal;
	req.secret.data = (uint8_t *)import;
	req.secret.len = import != NULL ? import_len : 0;
	return secret_call(c, AS "CreateApiKey", &req.base, key, secret);
}

int
coffer_api_key_rotate(coffer_client *c, const char *id, uint32_t overlap_seconds,
    const uint8_t *import, size_t import_len, struct coffer_api_key *key,
    struct coffer_bytes *secret)
{
	Coffer__V1__RotateApiKeySecretRequest req = COFFER__V1__ROTATE_API_KEY_SECRET_REQUEST__INIT;

	cf_error_clear();
	if (c == NULL || id == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL client or key id");
	req.id = (char *)id;
	req.overlap_seconds = overlap_seconds;
	req.secret.data = (uint8_t *)import;
	req.secret.len = import != NULL ? import_len : 0;
	return secret_call(c, AS "RotateApiKeySecret", &req.base, key, secret);
}

int
coffer_api_key_revoke(coffer_client *c, const char *id, struct coffer_api_key *key)
{
	Coffer__V1__RevokeApiKeyRequest req = COFFER__V1__REVOKE_API_KEY_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int r;

	cf_error_clear();
	if (c == NULL || id == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL client or key id");
	req.id = (char *)id;
	if ((r = lc_rpc(c, AS "RevokeApiKey", &req.base, &coffer__v1__api_key__descriptor, 0,
	    &m)) != CF_OK)
		return r;
	if (key != NULL)
		from_pb((const Coffer__V1__ApiKey *)m, key);
	protobuf_c_message_free_unpacked(m, NULL);
	return CF_OK;
}

int
coffer_principal_set_auth(coffer_client *c, const char *name, int require_api_key,
    int *has_live_key)
{
	Coffer__V1__SetPrincipalAuthRequest req = COFFER__V1__SET_PRINCIPAL_AUTH_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int r;

	cf_error_clear();
	if (c == NULL || name == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL client or principal name");
	req.name = (char *)name;
	req.require_api_key = require_api_key != 0;
	if ((r = lc_rpc(c, AS "SetPrincipalAuth", &req.base,
	    &coffer__v1__set_principal_auth_response__descriptor, 0, &m)) != CF_OK)
		return r;
	if (has_live_key != NULL)
		*has_live_key = ((const Coffer__V1__SetPrincipalAuthResponse *)m)->has_live_key;
	protobuf_c_message_free_unpacked(m, NULL);
	return CF_OK;
}

int
coffer_api_key_list(coffer_client *c, const char *principal, struct coffer_api_key **keys,
    size_t *n)
{
	Coffer__V1__ListApiKeysRequest req = COFFER__V1__LIST_API_KEYS_REQUEST__INIT;
	Coffer__V1__ListApiKeysResponse *resp;
	ProtobufCMessage *m = NULL;
	struct coffer_api_key *got;
	int r;

	cf_error_clear();
	if (c == NULL || keys == NULL || n == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	req.principal = (char *)(principal != NULL ? principal : "");
	if ((r = lc_rpc(c, AS "ListApiKeys", &req.base,
	    &coffer__v1__list_api_keys_response__descriptor, 0, &m)) != CF_OK)
		return r;
	resp = (Coffer__V1__ListApiKeysResponse *)m;
	if ((got = calloc(resp->n_keys ? resp->n_keys : 1, sizeof(*got))) == NULL) {
		protobuf_c_message_free_unpacked(m, NULL);
		return cf_nomem();
	}
	for (size_t i = 0; i < resp->n_keys; i++)
		from_pb(resp->keys[i], &got[i]);
	*keys = got;
	*n = resp->n_keys;
	protobuf_c_message_free_unpacked(m, NULL);
	return CF_OK;
}
