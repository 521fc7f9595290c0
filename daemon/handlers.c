/* The RPC handlers of KeyService, AdminService and Health. */
#include "handlers.h"
#include "handlers_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "cf_log.h"
#include "cf_pbwipe.h"
#include "cf_reqsign.h"
#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"
#include "envelope.h"
#include "grpc/health/v1/health.pb-c.h"

/* ---- helpers ---- */

/* Responses come from cf_pbwipe_allocator: in a sealed call, the call's
 * locked arena (cf_arena.h). */
void *
h_new_msg(const ProtobufCMessageDescriptor *d)
{
	ProtobufCMessage *m = cf_pbwipe_allocator.alloc(NULL, d->sizeof_message);

	if (m != NULL)
		protobuf_c_message_init(d, m);
	return m;
}

int
h_set_bytes(ProtobufCBinaryData *dst, const uint8_t *src, size_t len)
{
	dst->len = 0;
	if ((dst->data = cf_pbwipe_allocator.alloc(NULL, len ? len : 1)) == NULL)
		return cf_nomem();
	if (len > 0)
		memcpy(dst->data, src, len);
	dst->len = len;
	return CF_OK;
}

int
handlers_check_key_name(const char *name)
{
	if (name[0] == '\0')
		return cf_error(CF_E_INVALID_ARG, "the key name is required");
	return cf_key_name_check(name);
}

static int
check_data(size_t len, size_t max, const char *what)
{
	if (len > max)
		return cf_error(CF_E_TOO_LARGE, "%s of %zu bytes exceeds the limit of %zu bytes",
				what, len, max);
	return CF_OK;
}

static uint32_t ops_mask(size_t n, const Coffer__V1__Operation *ops);

/* The operations a key of this type can do at all. */
static uint32_t
purpose_ops(enum cf_key_type t)
{
	switch (keyring_purpose(t)) {
	case PURPOSE_SIGN:
		return CF_OP_BIT(CF_OP_SIGN) | CF_OP_BIT(CF_OP_VERIFY) |
		       CF_OP_BIT(CF_OP_GET_PUBLIC_KEY);
	case PURPOSE_MAC:
		return CF_OP_BIT(CF_OP_MAC) | CF_OP_BIT(CF_OP_VERIFY_MAC);
	default:
		return CF_OP_BIT(CF_OP_WRAP) | CF_OP_BIT(CF_OP_UNWRAP) |
		       CF_OP_BIT(CF_OP_REWRAP) |
		       CF_OP_BIT(CF_OP_GENERATE_DATA_KEY);
	}
}

/* A new key's own operation limit from the request; it must fit the type. */
static int
key_limit(Coffer__V1__KeyType type, size_t n, const Coffer__V1__Operation *ops, uint32_t *out)
{
	uint32_t m = ops_mask(n, ops);

	if (m & ~purpose_ops((enum cf_key_type)type))
		return cf_error(CF_E_INVALID_ARG, "allowed_operations holds an operation that an %s "
				"key cannot do", cf_key_type_name((enum cf_key_type)type));
	*out = m;
	return CF_OK;
}

/* The context map of any request as env_kv entries (borrowed strings).
 * protobuf-c map entries are messages with key = field 1, value = field 2. */
static int
ctx_entries(size_t n, void *const *entries, struct env_kv *kv)
{
	if (n > ENV_MAX_CONTEXT)
		return cf_error(CF_E_TOO_LARGE, "context has %zu entries; the limit is %d", n,
				ENV_MAX_CONTEXT);
	for (size_t i = 0; i < n; i++) {
		const ProtobufCMessage *e = entries[i];
		const ProtobufCFieldDescriptor *k = protobuf_c_message_descriptor_get_field(
			e->descriptor, 1);
		const ProtobufCFieldDescriptor *v = protobuf_c_message_descriptor_get_field(
			e->descriptor, 2);

		kv[i].key = *(char *const *)(const void *)((const char *)e + k->offset);
		kv[i].value = *(char *const *)(const void *)((const char *)e + v->offset);
	}
	return CF_OK;
}

static int
sign_params(const struct hctx *c, Coffer__V1__Hash hash, Coffer__V1__SignatureScheme scheme,
	    protobuf_c_boolean raw, ProtobufCBinaryData msg, ProtobufCBinaryData digest,
	    struct cf_sign_params *sp, const uint8_t **in, size_t *inlen)
{
	(void)c;
	if ((int)hash < 0 || hash > COFFER__V1__HASH__SHA512)
		return cf_error(CF_E_INVALID_ARG, "unknown hash %d", (int)hash);
	if ((int)scheme < 0 || scheme > COFFER__V1__SIGNATURE_SCHEME__RSA_PKCS1)
		return cf_error(CF_E_INVALID_ARG, "unknown signature scheme %d", (int)scheme);
	if (msg.len > 0 && digest.len > 0)
		return cf_error(CF_E_INVALID_ARG, "give either message or digest, not both");
	memset(sp, 0, sizeof(*sp));
	sp->hash = (enum cf_hash)hash;
	sp->scheme = (enum cf_sig_scheme)scheme;
	sp->ecdsa_raw = raw;
	if (digest.len > 0) {
		sp->prehashed = 1;
		*in = digest.data;
		*inlen = digest.len;
	} else {
		*in = msg.data;
		*inlen = msg.len;
	}
	return check_data(*inlen, CF_P11_MAX_DATA, "message");
}

/* A digest with HASH_UNSPECIFIED is of the key's default hash (SHA-256,
 * SHA-384 for P-384), as the proto says; cf_p11_sign fills it in. Ed25519
 * hashes inside the signature, so it has no digest to take. */
static int
digest_check(const struct cf_sign_params *sp, const cf_p11_key *k, const char *name)
{
	if (sp->prehashed && cf_p11_key_type(k) == CF_KEY_ED25519)
		return cf_error(CF_E_UNSUPPORTED, "key %s is ed25519, which signs the message "
				"itself (no prehash): send the message, not a digest", name);
	return CF_OK;
}

static int
fill_key(const struct store_key *ki, Coffer__V1__Key *k)
{
	k->name = strdup(ki->name);
	k->type = (Coffer__V1__KeyType)ki->type;
	k->purpose = (Coffer__V1__Purpose)keyring_purpose(ki->type);
	k->primary_version = ki->primary;
	k->create_time = ki->created;
	k->exportable = ki->exportable;
	k->min_version = ki->min_version;
	k->min_verify_version = ki->min_verify;
	k->rotation_period = ki->rotation_period;
	k->next_rotation_time = ki->next_rotation;
	if (k->name == NULL)
		return cf_nomem();
	if (ki->allowed_ops != 0) {
		if ((k->allowed_operations = calloc(CF_OP__COUNT,
						    sizeof(*k->allowed_operations))) == NULL)
			return cf_nomem();
		for (unsigned op = 1; op < CF_OP__COUNT; op++)
			if (ki->allowed_ops & CF_OP_BIT(op))
				k->allowed_operations[k->n_allowed_operations++] =
					(Coffer__V1__Operation)op;
	}
	if (ki->nversions == 0)
		return CF_OK;
	if ((k->versions = calloc(ki->nversions, sizeof(*k->versions))) == NULL)
		return cf_nomem();
	for (uint32_t i = 0; i < ki->nversions; i++) {
		Coffer__V1__KeyVersion *v = h_new_msg(&coffer__v1__key_version__descriptor);

		if (v == NULL)
			return cf_nomem();
		v->version = ki->versions[i].version;
		v->state = (Coffer__V1__VersionState)ki->versions[i].state;
		v->create_time = ki->versions[i].created;
		v->destroy_time = ki->versions[i].destroy_time;
		k->versions[k->n_versions++] = v;
	}
	return CF_OK;
}

int
h_key_response(int r, struct store_key *info, ProtobufCMessage **resp)
{
	Coffer__V1__Key *k = NULL;

	if (r != CF_OK)
		goto out;
	if ((k = h_new_msg(&coffer__v1__key__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = fill_key(info, k)) != CF_OK)
		goto out;
	*resp = &k->base;
	k = NULL;
out:
	if (k != NULL)
		protobuf_c_message_free_unpacked(&k->base, &cf_pbwipe_allocator);
	keyring_info_free(info);
	return r;
}

/* ---- KeyService ---- */

static int
h_sign(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__SignRequest *req = (const void *)m;
	Coffer__V1__SignResponse *out = NULL;
	struct cf_sign_params sp;
	cf_buf *sig = NULL;
	cf_p11_key *k;
	const uint8_t *in;
	size_t inlen;
	uint32_t ver;
	int r;

	if ((r = sign_params(c, req->hash, req->scheme, req->ecdsa_raw, req->message, req->digest,
			     &sp, &in, &inlen)) != CF_OK ||
	    (r = keyring_ref_use(c->kr, &c->key, req->version, PURPOSE_SIGN, USE_NEW, &k,
				 &ver)) != CF_OK ||
	    (r = digest_check(&sp, k, req->key)) != CF_OK)
		return r;
	if ((sig = cf_buf_new(CF_P11_MAX_SIG)) == NULL ||
	    (out = h_new_msg(&coffer__v1__sign_response__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = cf_p11_sign(k, &sp, in, inlen, sig)) != CF_OK ||
	    (r = h_set_bytes(&out->signature, cf_buf_peek(sig), cf_buf_len(sig))) != CF_OK)
		goto out;
	out->version = ver;
	out->scheme = (Coffer__V1__SignatureScheme)(sp.scheme ? sp.scheme :
		cf_key_default_scheme(cf_p11_key_type(k)));
	out->hash = (Coffer__V1__Hash)(sp.hash ? sp.hash :
		cf_key_default_hash(cf_p11_key_type(k)));
	*resp = &out->base;
	out = NULL;
out:
	if (out != NULL)
		protobuf_c_message_free_unpacked(&out->base, &cf_pbwipe_allocator);
	cf_buf_free(sig);
	return r;
}

static int
h_verify(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__VerifyRequest *req = (const void *)m;
	Coffer__V1__VerifyResponse *out;
	struct cf_sign_params sp;
	cf_p11_key *k;
	const uint8_t *in;
	size_t inlen;
	uint32_t ver;
	int r;

	if (req->version == 0)
		return cf_error(CF_E_INVALID_ARG, "version is required: pass the version that "
				"Sign returned");
	if ((r = sign_params(c, req->hash, req->scheme, req->ecdsa_raw, req->message, req->digest,
			     &sp, &in, &inlen)) != CF_OK ||
	    (r = check_data(req->signature.len, CF_P11_MAX_SIG, "signature")) != CF_OK ||
	    (r = keyring_ref_use(c->kr, &c->key, req->version, PURPOSE_SIGN, USE_CHECK, &k,
				 &ver)) != CF_OK ||
	    (r = digest_check(&sp, k, req->key)) != CF_OK)
		return r;
	r = cf_p11_verify(k, &sp, in, inlen, req->signature.data, req->signature.len);
	if (r != CF_OK && r != CF_E_BAD_SIGNATURE)
		return r;
	if ((out = h_new_msg(&coffer__v1__verify_response__descriptor)) == NULL)
		return cf_nomem();
	out->valid = r == CF_OK;
	*resp = &out->base;
	return CF_OK;
}

static int
h_mac(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__MacRequest *req = (const void *)m;
	Coffer__V1__MacResponse *out = NULL;
	cf_buf *mac = NULL;
	cf_p11_key *k;
	uint32_t ver;
	int r;

	if ((r = check_data(req->data.len, CF_P11_MAX_DATA, "data")) != CF_OK ||
	    (r = keyring_ref_use(c->kr, &c->key, req->version, PURPOSE_MAC, USE_NEW, &k,
				 &ver)) != CF_OK)
		return r;
	if ((mac = cf_buf_new(64)) == NULL ||
	    (out = h_new_msg(&coffer__v1__mac_response__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = cf_p11_mac(k, req->data.data, req->data.len, mac)) != CF_OK ||
	    (r = h_set_bytes(&out->mac, cf_buf_peek(mac), cf_buf_len(mac))) != CF_OK)
		goto out;
	out->version = ver;
	*resp = &out->base;
	out = NULL;
out:
	if (out != NULL)
		protobuf_c_message_free_unpacked(&out->base, &cf_pbwipe_allocator);
	cf_buf_free(mac);
	return r;
}

static int
h_verify_mac(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__VerifyMacRequest *req = (const void *)m;
	Coffer__V1__VerifyMacResponse *out;
	cf_p11_key *k;
	uint32_t ver;
	int r;

	if (req->version == 0)
		return cf_error(CF_E_INVALID_ARG, "version is required: pass the version that "
				"Mac returned");
	if ((r = check_data(req->data.len, CF_P11_MAX_DATA, "data")) != CF_OK ||
	    (r = check_data(req->mac.len, 64, "mac")) != CF_OK ||
	    (r = keyring_ref_use(c->kr, &c->key, req->version, PURPOSE_MAC, USE_CHECK, &k,
				 &ver)) != CF_OK)
		return r;
	r = cf_p11_mac_verify(k, req->data.data, req->data.len, req->mac.data, req->mac.len);
	if (r != CF_OK && r != CF_E_BAD_SIGNATURE)
		return r;
	if ((out = h_new_msg(&coffer__v1__verify_mac_response__descriptor)) == NULL)
		return cf_nomem();
	out->valid = r == CF_OK;
	*resp = &out->base;
	return CF_OK;
}

/* Seal `pt` under the primary version of the call's key into *ct / *ver. */
static int
wrap_common(const struct hctx *c, const struct env_kv *kv, size_t n, const uint8_t *pt,
	    size_t ptlen, ProtobufCBinaryData *ct, uint32_t *ver)
{
	const char *name = c->key.name;
	cf_buf *blob = NULL;
	cf_p11_key *k;
	int r;

	if ((r = check_data(ptlen, H_MAX_WRAP_PLAINTEXT, "plaintext")) != CF_OK ||
	    (r = keyring_ref_use(c->kr, &c->key, 0, PURPOSE_WRAP, USE_NEW, &k, ver)) != CF_OK)
		return r;
	if ((blob = cf_buf_new(ENV_HEADER_LEN + H_MAX_WRAP_PLAINTEXT + CF_GCM_TAG_LEN)) == NULL)
		return cf_nomem();
	if ((r = env_seal(k, name, *ver, kv, n, pt, ptlen, blob)) == CF_OK)
		r = h_set_bytes(ct, cf_buf_peek(blob), cf_buf_len(blob));
	cf_buf_free(blob);
	return r;
}

/* Open a blob of the call's key into a secret, with the version it names. */
static int
unwrap_common(const struct hctx *c, const struct env_kv *kv, size_t n, ProtobufCBinaryData ct,
	      cf_secret **pt, uint32_t *ver)
{
	const char *name = c->key.name;
	const uint8_t *iv, *body;
	cf_p11_key *k;
	size_t blen;
	int r;

	if ((r = check_data(ct.len, ENV_HEADER_LEN + H_MAX_WRAP_PLAINTEXT + CF_GCM_TAG_LEN,
			    "ciphertext")) != CF_OK ||
	    (r = env_parse(ct.data, ct.len, ver, &iv, &body, &blen)) != CF_OK ||
	    (r = keyring_ref_use(c->kr, &c->key, *ver, PURPOSE_WRAP, USE_CHECK, &k, ver)) != CF_OK)
		return r;
	return env_open(k, name, *ver, kv, n, ct.data, ct.len, pt);
}

static int
h_wrap(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__WrapRequest *req = (const void *)m;
	Coffer__V1__WrapResponse *out;
	struct env_kv kv[ENV_MAX_CONTEXT];
	size_t n;
	int r;

	if ((r = ctx_entries(req->n_context, (void *const *)req->context, kv)) != CF_OK)
		return r;
	n = req->n_context;
	if ((out = h_new_msg(&coffer__v1__wrap_response__descriptor)) == NULL)
		return cf_nomem();
	if ((r = wrap_common(c, kv, n, req->plaintext.data, req->plaintext.len, &out->ciphertext,
			     &out->version)) != CF_OK) {
		protobuf_c_message_free_unpacked(&out->base, &cf_pbwipe_allocator);
		return r;
	}
	*resp = &out->base;
	return CF_OK;
}

static int
h_unwrap(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__UnwrapRequest *req = (const void *)m;
	Coffer__V1__UnwrapResponse *out = NULL;
	struct env_kv kv[ENV_MAX_CONTEXT];
	cf_secret *pt = NULL;
	size_t n;
	uint32_t ver;
	int r;

	if ((r = ctx_entries(req->n_context, (void *const *)req->context, kv)) != CF_OK)
		return r;
	n = req->n_context;
	if ((r = unwrap_common(c, kv, n, req->ciphertext, &pt, &ver)) != CF_OK)
		goto out;
	if ((out = h_new_msg(&coffer__v1__unwrap_response__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	/* The response is freed through the wiping allocator. */
	if ((r = h_set_bytes(&out->plaintext, cf_secret_cptr(pt), cf_secret_len(pt))) != CF_OK)
		goto out;
	out->version = ver;
	*resp = &out->base;
	out = NULL;
out:
	if (out != NULL)
		protobuf_c_message_free_unpacked(&out->base, &cf_pbwipe_allocator);
	cf_secret_free(pt);
	return r;
}

static int
h_rewrap(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__RewrapRequest *req = (const void *)m;
	Coffer__V1__RewrapResponse *out = NULL;
	struct env_kv kv[ENV_MAX_CONTEXT];
	cf_secret *pt = NULL;
	size_t n;
	uint32_t old;
	int r;

	if ((r = ctx_entries(req->n_context, (void *const *)req->context, kv)) != CF_OK)
		return r;
	n = req->n_context;
	if ((r = unwrap_common(c, kv, n, req->ciphertext, &pt, &old)) != CF_OK)
		goto out;
	if ((out = h_new_msg(&coffer__v1__rewrap_response__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = wrap_common(c, kv, n, cf_secret_cptr(pt), cf_secret_len(pt), &out->ciphertext,
			     &out->version)) != CF_OK)
		goto out;
	out->previous_version = old;
	*resp = &out->base;
	out = NULL;
out:
	if (out != NULL)
		protobuf_c_message_free_unpacked(&out->base, &cf_pbwipe_allocator);
	cf_secret_free(pt);
	return r;
}

static int
h_generate_data_key(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__GenerateDataKeyRequest *req = (const void *)m;
	Coffer__V1__GenerateDataKeyResponse *out = NULL;
	struct env_kv kv[ENV_MAX_CONTEXT];
	cf_secret *dk = NULL;
	uint32_t len = req->length ? req->length : 32;
	size_t n;
	int r;

	if (len != 16 && len != 24 && len != 32)
		return cf_error(CF_E_INVALID_ARG, "data key length must be 16, 24 or 32 bytes, "
				"not %u", len);
	if ((r = ctx_entries(req->n_context, (void *const *)req->context, kv)) != CF_OK)
		return r;
	n = req->n_context;
	if ((r = cf_secret_new(len, &dk)) != CF_OK)
		return r;
	if (RAND_priv_bytes(cf_secret_ptr(dk), (int)len) != 1) {
		r = cf_error(CF_E_INTERNAL, "random number generator failed");
		goto out;
	}
	if ((out = h_new_msg(&coffer__v1__generate_data_key_response__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = wrap_common(c, kv, n, cf_secret_cptr(dk), len, &out->ciphertext,
			     &out->version)) != CF_OK)
		goto out;
	if (req->include_plaintext &&
	    (r = h_set_bytes(&out->plaintext, cf_secret_cptr(dk), len)) != CF_OK)
		goto out;
	*resp = &out->base;
	out = NULL;
out:
	if (out != NULL)
		protobuf_c_message_free_unpacked(&out->base, &cf_pbwipe_allocator);
	cf_secret_free(dk);
	return r;
}

/* ---- HMAC-signed HTTP requests ---- */

/* The request parts as cf_reqsign wants them; CF_E_INVALID_ARG if malformed. */
static int
http_parts(const Coffer__V1__HttpRequestParts *p, struct cf_http_request *r)
{
	if (p == NULL)
		return cf_error(CF_E_INVALID_ARG, "request is required");
	if (p->body_sha256.len != 32)
		return cf_error(CF_E_INVALID_ARG, "body_sha256 must be 32 bytes, not %zu",
				p->body_sha256.len);
	memset(r, 0, sizeof(*r));
	r->key_id = p->key;
	r->method = p->method;
	r->path = p->path;
	r->canonical_query = p->canonical_query;
	memcpy(r->body_sha256, p->body_sha256.data, 32);
	r->timestamp = p->timestamp;
	r->nonce = p->nonce;
	return cf_reqsign_check(r);
}

/* Only HMAC-SHA256 keys sign requests (the scheme names its hash). */
static int
request_key(const struct hctx *c, uint32_t version, enum key_use use, cf_p11_key **k,
	    uint32_t *used)
{
	int r;

	if ((r = keyring_ref_use(c->kr, &c->key, version, PURPOSE_MAC, use, k, used)) != CF_OK)
		return r;
	if (cf_p11_key_type(*k) != CF_KEY_HMAC_SHA256)
		return cf_error(CF_E_WRONG_KEY_TYPE, "key %s is not an hmac-sha256 key",
				c->key.name);
	return CF_OK;
}

static int
verdict(Coffer__V1__VerifyRequestSignatureResponse *out, Coffer__V1__RequestVerdict v,
	uint32_t version, const char *reason)
{
	out->verdict = v;
	out->valid = v == COFFER__V1__REQUEST_VERDICT__VALID;
	out->version = version;
	return (out->reason = strdup(reason)) == NULL ? cf_nomem() : CF_OK;
}

/* A signed HTTP request's signature, checked under any enabled version of
 * its key: clients keep the old secret until they rotate (nonces_check's
 * verify). */
struct http_check {
	const struct hctx *c;
	const struct store_key *info;
	const struct cf_http_request *hr;
	const char *signature;
	cf_buf *str;
	uint32_t good;          /* the version it verified under */
	const char *why;        /* CF_E_BAD_SIGNATURE: the verdict's reason */
};

static int
http_check(void *arg)
{
	struct http_check *a = arg;
	uint8_t sig[32];
	int r;

	if (strlen(a->signature) != 64 ||
	    OPENSSL_hexstr2buf_ex(sig, sizeof(sig), NULL, a->signature, '\0') != 1) {
		a->why = "signature is not 64 hex characters";
		return cf_error(CF_E_BAD_SIGNATURE, "%s", a->why);
	}
	if ((r = cf_reqsign_http_string(a->hr, a->str)) != CF_OK)
		return r;
	for (uint32_t i = a->info->nversions; i-- > 0 && a->good == 0;) {
		cf_p11_key *k;
		uint32_t v;

		if (a->info->versions[i].state != STORE_ENABLED ||
		    request_key(a->c, a->info->versions[i].version, USE_CHECK, &k, &v) != CF_OK)
			continue;
		if (cf_p11_mac_verify(k, cf_buf_peek(a->str), cf_buf_len(a->str), sig, 32) == CF_OK)
			a->good = v;
	}
	if (a->good == 0) {
		a->why = "signature does not match the canonical request under any enabled "
			 "version of the key";
		return cf_error(CF_E_BAD_SIGNATURE, "%s", a->why);
	}
	return CF_OK;
}

static int
h_verify_request(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__VerifyRequestSignatureRequest *req = (const void *)m;
	Coffer__V1__VerifyRequestSignatureResponse *out = NULL;
	struct cf_http_request hr;
	struct store_key info;
	struct http_check chk = { .c = c, .info = &info, .hr = &hr, .signature = req->signature };
	struct nonce_claim claim;
	enum nonce_verdict v;
	int64_t now = (int64_t)time(NULL);
	char why[160];
	int r;

	memset(&info, 0, sizeof(info));
	if ((r = http_parts(req->request, &hr)) != CF_OK)
		return r;
	/* The key, not its primary: any enabled version at or above the minimum
	 * verifies (the primary may be disabled). */
	if ((r = keyring_ref_describe(c->kr, &c->key, &info)) != CF_OK)
		return r;
	if (info.type != CF_KEY_HMAC_SHA256) {
		keyring_info_free(&info);
		return cf_error(CF_E_WRONG_KEY_TYPE, "key %s is not an hmac-sha256 key", hr.key_id);
	}
	if ((out = h_new_msg(&coffer__v1__verify_request_signature_response__descriptor)) == NULL ||
	    (chk.str = cf_buf_new(CF_REQSIGN_STRING_MAX)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	claim = (struct nonce_claim){ .scope = hr.key_id, .nonce = hr.nonce,
				      .timestamp = hr.timestamp, .window = c->window,
				      .ahead = c->window };
	r = nonces_check(c->nn, &claim, now, http_check, &chk, &v);
	if (r == CF_E_BAD_SIGNATURE) {
		r = verdict(out, COFFER__V1__REQUEST_VERDICT__BAD_SIGNATURE, 0, chk.why);
	} else if (r != CF_OK) {
		goto out;
	} else if (v == NONCE_EXPIRED) {
		snprintf(why, sizeof(why), "timestamp is %lld s old; the window is %u s: sign the "
			 "request again", (long long)(now - hr.timestamp), c->window);
		r = verdict(out, COFFER__V1__REQUEST_VERDICT__EXPIRED, 0, why);
	} else if (v == NONCE_AHEAD) {
		snprintf(why, sizeof(why), "timestamp is %lld s ahead of the daemon's clock; the "
			 "window is %u s: check the client's clock",
			 (long long)(hr.timestamp - now), c->window);
		r = verdict(out, COFFER__V1__REQUEST_VERDICT__CLOCK_SKEW, 0, why);
	} else if (v == NONCE_REPLAYED) {
		r = verdict(out, COFFER__V1__REQUEST_VERDICT__REPLAYED_NONCE, chk.good,
			    "nonce was already used with this key: a replayed request");
	} else {
		r = verdict(out, COFFER__V1__REQUEST_VERDICT__VALID, chk.good, "valid");
	}
	if (r == CF_OK) {
		*resp = &out->base;
		out = NULL;
	}
out:
	if (out != NULL)
		protobuf_c_message_free_unpacked(&out->base, &cf_pbwipe_allocator);
	keyring_info_free(&info);
	cf_buf_free(chk.str);
	return r;
}

static int
h_sign_request(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__SignHttpRequestRequest *req = (const void *)m;
	Coffer__V1__SignHttpRequestResponse *out = NULL;
	Coffer__V1__HttpRequestParts parts;
	struct cf_http_request hr;
	cf_buf *str = NULL, *mac = NULL;
	cf_p11_key *k;
	uint8_t rnd[16];
	char nonce[CF_REQSIGN_NONCE_MAX + 1], hex[65], *auth = NULL;
	uint32_t v;
	int r;

	if (req->request == NULL)
		return cf_error(CF_E_INVALID_ARG, "request is required");
	parts = *req->request;
	if (parts.timestamp == 0)
		parts.timestamp = (int64_t)time(NULL);
	if (parts.nonce[0] == '\0') {
		if (RAND_bytes(rnd, sizeof(rnd)) != 1)
			return cf_error(CF_E_INTERNAL, "random number generator failed");
		for (size_t i = 0; i < sizeof(rnd); i++)
			snprintf(nonce + 2 * i, 3, "%02x", rnd[i]);
		parts.nonce = nonce;
	}
	if ((r = http_parts(&parts, &hr)) != CF_OK ||
	    (r = request_key(c, 0, USE_NEW, &k, &v)) != CF_OK)
		return r;
	if ((str = cf_buf_new(CF_REQSIGN_STRING_MAX)) == NULL || (mac = cf_buf_new(64)) == NULL ||
	    (out = h_new_msg(&coffer__v1__sign_http_request_response__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = cf_reqsign_http_string(&hr, str)) != CF_OK ||
	    (r = cf_p11_mac(k, cf_buf_peek(str), cf_buf_len(str), mac)) != CF_OK)
		goto out;
	for (size_t i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", cf_buf_peek(mac)[i]);
	if (asprintf(&auth, "%s keyId=%s, version=%u, timestamp=%lld, nonce=%s, signature=%s",
		     CF_REQSIGN_HTTP_LABEL, hr.key_id, v, (long long)hr.timestamp, hr.nonce,
		     hex) < 0) {
		auth = NULL;
		r = cf_nomem();
		goto out;
	}
	out->authorization = auth;
	out->version = v;
	out->timestamp = hr.timestamp;
	if ((out->signature = strdup(hex)) == NULL || (out->nonce = strdup(hr.nonce)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	*resp = &out->base;
	out = NULL;
out:
	if (out != NULL)
		protobuf_c_message_free_unpacked(&out->base, &cf_pbwipe_allocator);
	cf_buf_free(str);
	cf_buf_free(mac);
	return r;
}

static int
h_get_public_key(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__GetPublicKeyRequest *req = (const void *)m;
	Coffer__V1__GetPublicKeyResponse *out = NULL;
	cf_buf *der = NULL, *pem = NULL;
	cf_p11_key *k;
	uint32_t ver;
	int r;

	if ((r = keyring_ref_use(c->kr, &c->key, req->version, PURPOSE_SIGN, USE_CHECK, &k,
				 &ver)) != CF_OK)
		return r;
	if ((der = cf_buf_new(4096)) == NULL || (pem = cf_buf_new(8192)) == NULL ||
	    (out = h_new_msg(&coffer__v1__get_public_key_response__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = cf_p11_pubkey_der(k, der)) != CF_OK || (r = cf_p11_pubkey_pem(k, pem)) != CF_OK ||
	    (r = h_set_bytes(&out->der, cf_buf_peek(der), cf_buf_len(der))) != CF_OK)
		goto out;
	/* cf_buf holds bytes, not a C string: terminate the copy ourselves. */
	if ((out->pem = malloc(cf_buf_len(pem) + 1)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	memcpy(out->pem, cf_buf_peek(pem), cf_buf_len(pem));
	out->pem[cf_buf_len(pem)] = '\0';
	out->type = (Coffer__V1__KeyType)cf_p11_key_type(k);
	out->version = ver;
	*resp = &out->base;
	out = NULL;
out:
	if (out != NULL)
		protobuf_c_message_free_unpacked(&out->base, &cf_pbwipe_allocator);
	cf_buf_free(der);
	cf_buf_free(pem);
	return r;
}

static int
h_get_key(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	struct store_key info;

	(void)m;
	memset(&info, 0, sizeof(info));
	return h_key_response(keyring_ref_describe(c->kr, &c->key, &info), &info, resp);
}

/* May the caller see key k's metadata? Exactly what GetKey needs (a grant
 * of get-public-key the key's own limit allows), so listing never shows a
 * key GetKey would refuse. The admin socket sees every key. */
static int
list_visible(const struct hctx *c, const struct store_key *k)
{
	if (c->admin || c->principal == NULL || c->pol == NULL)
		return 1;
	if (k->allowed_ops != 0 && !(k->allowed_ops & CF_OP_BIT(CF_OP_GET_PUBLIC_KEY)))
		return 0;
	return policy_may(c->pol, c->principal, CF_OP_GET_PUBLIC_KEY, k->name) == CF_OK;
}

static int
h_list_keys(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__ListKeysRequest *req = (const void *)m;
	Coffer__V1__ListKeysResponse *out = NULL;
	struct store_key *infos = NULL;
	uint32_t n = 0, size = req->page_size ? req->page_size : H_DEFAULT_PAGE;
	char *cursor = NULL;
	int more = 1, r = CF_OK;

	if (size > H_MAX_PAGE)
		return cf_error(CF_E_INVALID_ARG, "page_size %u exceeds %d", size, H_MAX_PAGE);
	if (req->page_token[0] != '\0' && cf_key_name_check(req->page_token) != CF_OK)
		return cf_error(CF_E_INVALID_ARG, "page_token is not one this daemon issued");
	if ((out = h_new_msg(&coffer__v1__list_keys_response__descriptor)) == NULL ||
	    (out->keys = calloc(size, sizeof(*out->keys))) == NULL) {
		r = cf_nomem();
		goto out;
	}
	/* Keys the caller may not see are skipped: read on until the page is
	 * full or the keys run out. The next page starts after the last key
	 * shown, so a token never names a hidden key. */
	while (more && out->n_keys < size) {
		uint32_t i;

		for (uint32_t j = 0; j < n; j++)
			keyring_info_free(&infos[j]);
		free(infos);
		infos = NULL;
		n = 0;
		if ((r = keyring_list(c->kr, cursor != NULL ? cursor : req->page_token, size,
				      &infos, &n, &more)) != CF_OK)
			goto out;
		for (i = 0; i < n && out->n_keys < size; i++) {
			Coffer__V1__Key *k;

			if (!list_visible(c, &infos[i]))
				continue;
			if ((k = h_new_msg(&coffer__v1__key__descriptor)) == NULL) {
				r = cf_nomem();
				goto out;
			}
			out->keys[out->n_keys++] = k;
			if ((r = fill_key(&infos[i], k)) != CF_OK)
				goto out;
		}
		if (i < n)
			more = 1;
		else if (n == 0)
			more = 0;
		if (more && out->n_keys < size) {
			free(cursor);
			if ((cursor = strdup(infos[n - 1].name)) == NULL) {
				r = cf_nomem();
				goto out;
			}
		}
	}
	if (more && out->n_keys > 0 &&
	    (out->next_page_token = strdup(out->keys[out->n_keys - 1]->name)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	*resp = &out->base;
	out = NULL;
out:
	if (out != NULL)
		protobuf_c_message_free_unpacked(&out->base, &cf_pbwipe_allocator);
	for (uint32_t i = 0; i < n; i++)
		keyring_info_free(&infos[i]);
	free(infos);
	free(cursor);
	return r;
}

/* ---- AdminService ---- */

static int
check_type(Coffer__V1__KeyType t)
{
	if ((int)t <= 0 || (int)t >= CF_KEY__COUNT)
		return cf_error(CF_E_INVALID_ARG, "type is missing or unknown (%d)", (int)t);
	return CF_OK;
}

/* The exportable field is kept in the proto only to be refused. */
static int
refuse_exportable(int exportable, const char *verb)
{
	if (!exportable)
		return CF_OK;
	return cf_error(CF_E_INVALID_ARG, "exportable keys are not supported: Coffer never "
			"exports key material (use Wrap/GenerateDataKey for data keys); %s the key "
			"without exportable", verb);
}

static int
h_create_key(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__CreateKeyRequest *req = (const void *)m;
	struct store_key info;
	uint32_t ops;
	int r;

	memset(&info, 0, sizeof(info));
	if ((r = handlers_check_key_name(req->name)) != CF_OK ||
	    (r = check_type(req->type)) != CF_OK ||
	    (r = refuse_exportable(req->exportable, "create")) != CF_OK ||
	    (r = key_limit(req->type, req->n_allowed_operations, req->allowed_operations,
			   &ops)) != CF_OK)
		return r;
	return h_key_response(keyring_create(c->kr, req->name, (enum cf_key_type)req->type,
					     ops, req->rotation_period, &info),
				&info, resp);
}

static int
h_import_key(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__ImportKeyRequest *req = (const void *)m;
	struct store_key info;
	cf_secret *mat = NULL;
	uint32_t ops;
	int r;

	memset(&info, 0, sizeof(info));
	if ((r = handlers_check_key_name(req->name)) != CF_OK ||
	    (r = check_type(req->type)) != CF_OK ||
	    (r = refuse_exportable(req->exportable, "import")) != CF_OK ||
	    (r = check_data(req->material.len, CF_P11_MAX_SECRET, "key material")) != CF_OK ||
	    (r = key_limit(req->type, req->n_allowed_operations, req->allowed_operations,
			   &ops)) != CF_OK)
		return r;
	if ((r = cf_secret_from(req->material.data, req->material.len, &mat)) != CF_OK)
		return r;
	r = keyring_import(c->kr, req->name, (enum cf_key_type)req->type, mat, ops, &info);
	cf_secret_free(mat);
	return h_key_response(r, &info, resp);
}

static int
h_rotate_key(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__RotateKeyRequest *req = (const void *)m;
	struct store_key info;
	int r;

	memset(&info, 0, sizeof(info));
	if ((r = handlers_check_key_name(req->name)) != CF_OK)
		return r;
	return h_key_response(keyring_rotate(c->kr, req->name, &info), &info, resp);
}

/* ---- principals (AdminService) ---- */

static uint32_t
ops_mask(size_t n, const Coffer__V1__Operation *ops)
{
	uint32_t m = 0;

	for (size_t i = 0; i < n; i++)
		m |= (unsigned)ops[i] > 0 && (unsigned)ops[i] < CF_OP__COUNT ?
		     CF_OP_BIT(ops[i]) : 0x80000000u;   /* unknown: refused by policy */
	return m;
}

static int
fill_principal(const struct store_principal *sp, Coffer__V1__Principal *p)
{
	p->create_time = sp->created;
	if ((p->name = strdup(sp->name)) == NULL ||
	    (sp->nuids && (p->uids = calloc(sp->nuids, sizeof(*p->uids))) == NULL) ||
	    (sp->ngids && (p->gids = calloc(sp->ngids, sizeof(*p->gids))) == NULL) ||
	    (sp->ngrants && (p->grants = calloc(sp->ngrants, sizeof(*p->grants))) == NULL) ||
	    (sp->nlimits && (p->limits = calloc(sp->nlimits, sizeof(*p->limits))) == NULL))
		return cf_nomem();
	if (sp->nuids > 0)
		memcpy(p->uids, sp->uids, sp->nuids * sizeof(*p->uids));
	p->n_uids = sp->nuids;
	if (sp->ngids > 0)
		memcpy(p->gids, sp->gids, sp->ngids * sizeof(*p->gids));
	p->n_gids = sp->ngids;
	for (uint32_t i = 0; i < sp->ngrants; i++) {
		Coffer__V1__Grant *g = h_new_msg(&coffer__v1__grant__descriptor);

		if (g == NULL)
			return cf_nomem();
		p->grants[p->n_grants++] = g;
		if ((g->key_pattern = strdup(sp->grants[i].pattern)) == NULL ||
		    (g->operations = calloc(CF_OP__COUNT, sizeof(*g->operations))) == NULL)
			return cf_nomem();
		for (unsigned op = 1; op < CF_OP__COUNT; op++)
			if (sp->grants[i].ops & CF_OP_BIT(op))
				g->operations[g->n_operations++] = (Coffer__V1__Operation)op;
	}
	for (uint32_t i = 0; i < sp->nlimits; i++) {
		Coffer__V1__RateLimit *l = h_new_msg(&coffer__v1__rate_limit__descriptor);

		if (l == NULL)
			return cf_nomem();
		l->operation = (Coffer__V1__Operation)sp->limits[i].op;
		l->per_second = sp->limits[i].rate;
		l->burst = sp->limits[i].burst;
		p->limits[p->n_limits++] = l;
	}
	return CF_OK;
}

/* Finish a principal handler: the Principal response of `sp`. */
static int
principal_response(int r, struct store_principal *sp, ProtobufCMessage **resp)
{
	Coffer__V1__Principal *p = NULL;

	if (r == CF_OK && (p = h_new_msg(&coffer__v1__principal__descriptor)) == NULL)
		r = cf_nomem();
	if (r == CF_OK && (r = fill_principal(sp, p)) == CF_OK) {
		*resp = &p->base;
		p = NULL;
	}
	if (p != NULL)
		protobuf_c_message_free_unpacked(&p->base, &cf_pbwipe_allocator);
	policy_principal_free(sp);
	return r;
}

int
handlers_describe(const struct hctx *c, const ProtobufCMessageDescriptor *type, const char *name,
		  ProtobufCMessage **resp)
{
	struct store_key info;
	struct store_principal sp;

	memset(&info, 0, sizeof(info));
	memset(&sp, 0, sizeof(sp));
	if (type == &coffer__v1__key__descriptor)
		return h_key_response(keyring_describe(c->kr, name, &info), &info, resp);
	if (type == &coffer__v1__principal__descriptor)
		return principal_response(policy_get(c->pol, name, &sp), &sp, resp);
	if (type == &coffer__v1__api_key__descriptor ||
	    type == &coffer__v1__api_key_secret_response__descriptor)
		return h_describe_api_key(c, type, name, resp);
	if (type == &coffer__v1__delete_principal_response__descriptor)
		return (*resp = h_new_msg(type)) != NULL ? CF_OK : cf_nomem();
	if (type == &coffer__v1__set_principal_auth_response__descriptor)
		return h_describe_principal_auth(c, name, resp);
	return cf_error(CF_E_UNSUPPORTED, "no description for a %s answer", type->name);
}

static int
h_create_principal(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__CreatePrincipalRequest *req = (const void *)m;
	struct store_principal sp;

	memset(&sp, 0, sizeof(sp));
	return principal_response(policy_create(c->pol, req->name, req->uids, req->n_uids,
						req->gids, req->n_gids, &sp), &sp, resp);
}

static int
h_get_principal(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__GetPrincipalRequest *req = (const void *)m;
	struct store_principal sp;

	memset(&sp, 0, sizeof(sp));
	return principal_response(policy_get(c->pol, req->name, &sp), &sp, resp);
}

static int
h_list_principals(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	Coffer__V1__ListPrincipalsResponse *out = NULL;
	struct store_principal *list = NULL;
	size_t n = 0;
	int r;

	(void)m;
	if ((r = policy_list(c->pol, &list, &n)) != CF_OK)
		return r;
	if ((out = h_new_msg(&coffer__v1__list_principals_response__descriptor)) == NULL ||
	    (n && (out->principals = calloc(n, sizeof(*out->principals))) == NULL)) {
		r = cf_nomem();
		goto out;
	}
	for (size_t i = 0; i < n && r == CF_OK; i++) {
		Coffer__V1__Principal *p = h_new_msg(&coffer__v1__principal__descriptor);

		if (p == NULL) {
			r = cf_nomem();
			break;
		}
		out->principals[out->n_principals++] = p;
		r = fill_principal(&list[i], p);
	}
	if (r == CF_OK) {
		*resp = &out->base;
		out = NULL;
	}
out:
	if (out != NULL)
		protobuf_c_message_free_unpacked(&out->base, &cf_pbwipe_allocator);
	policy_list_free(list, n);
	return r;
}

static int
h_grant_principal(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__GrantRequest *req = (const void *)m;
	struct store_principal sp;

	memset(&sp, 0, sizeof(sp));
	if (req->grant == NULL)
		return cf_error(CF_E_INVALID_ARG, "grant is required");
	return principal_response(policy_grant(c->pol, req->name, req->grant->key_pattern,
					       ops_mask(req->grant->n_operations,
							req->grant->operations), &sp), &sp, resp);
}

static int
h_revoke_principal(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__RevokeRequest *req = (const void *)m;
	struct store_principal sp;

	memset(&sp, 0, sizeof(sp));
	return principal_response(policy_revoke(c->pol, req->name, req->key_pattern,
						ops_mask(req->n_operations, req->operations), &sp),
				  &sp, resp);
}

static int
h_set_rate_limit(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__SetRateLimitRequest *req = (const void *)m;
	struct store_principal sp;

	memset(&sp, 0, sizeof(sp));
	if (req->limit == NULL)
		return cf_error(CF_E_INVALID_ARG, "limit is required");
	return principal_response(policy_set_limit(c->pol, req->name,
						   (enum cf_op)req->limit->operation,
						   req->limit->per_second, req->limit->burst, &sp),
				  &sp, resp);
}

static int
h_delete_principal(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__DeletePrincipalRequest *req = (const void *)m;
	Coffer__V1__DeletePrincipalResponse *out;
	int r;

	/* The principal first (its uids are refused from then on, signed or
	 * not), then its API keys: its secrets must not outlive it. */
	if ((r = policy_delete(c->pol, req->name)) != CF_OK ||
	    (c->ak != NULL && (r = apikeys_revoke_principal(c->ak, req->name, time(NULL))) != CF_OK))
		return r;
	if ((out = h_new_msg(&coffer__v1__delete_principal_response__descriptor)) == NULL)
		return cf_nomem();
	*resp = &out->base;
	return CF_OK;
}

/* ---- SessionService (Call itself is run by the dispatcher) ---- */

static int
h_get_identity(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	Coffer__V1__GetIdentityResponse *out;
	const uint8_t *spki;
	size_t len;
	int r;

	(void)m;
	if ((out = h_new_msg(&coffer__v1__get_identity_response__descriptor)) == NULL)
		return cf_nomem();
	spki = session_identity(c->sm, &len);
	if ((r = h_set_bytes(&out->public_key, spki, len)) != CF_OK ||
	    (out->fingerprint = strdup(session_fingerprint(c->sm))) == NULL) {
		protobuf_c_message_free_unpacked(&out->base, &cf_pbwipe_allocator);
		return r != CF_OK ? r : cf_nomem();
	}
	*resp = &out->base;
	return CF_OK;
}

static int
h_open_session(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__OpenSessionRequest *req = (const void *)m;
	Coffer__V1__OpenSessionResponse *out = NULL;
	struct cf_session_hello h;
	cf_buf *sig = NULL;
	int r;

	memset(&h, 0, sizeof(h));
	if (req->client_ephemeral.len != CF_SESSION_PUB_LEN ||
	    req->client_random.len != CF_SESSION_RANDOM_LEN)
		return cf_error(CF_E_INVALID_ARG, "client_ephemeral and client_random must be %d "
				"and %d bytes", CF_SESSION_PUB_LEN, CF_SESSION_RANDOM_LEN);
	h.version = req->version;
	memcpy(h.client_pub, req->client_ephemeral.data, CF_SESSION_PUB_LEN);
	memcpy(h.client_random, req->client_random.data, CF_SESSION_RANDOM_LEN);
	h.principal = req->principal;
	/* The signed transcript names the claimed principal: only the one this
	 * connection is (from its peer credentials) may be claimed, or a relay
	 * would get a session whose transcript says it is its client. A claim
	 * too long to be valid is left to session_handshake's size check. */
	if (req->principal[0] != '\0' && strlen(req->principal) <= CF_SESSION_MAX_PRINCIPAL &&
	    (c->principal == NULL || strcmp(req->principal, c->principal) != 0)) {
		cf_log_warn("refused: %s%s (uid %u pid %d): OpenSession claims principal \"%.64s\"",
			    c->principal != NULL ? "principal " : "no principal",
			    c->principal != NULL ? c->principal : "", (unsigned)c->uid, (int)c->pid,
			    req->principal);
		if (c->principal == NULL)
			return cf_error(CF_E_DENIED, "this connection (uid %u%s) has no principal, "
					"not %.64s: a session cannot claim one; send an empty principal",
					(unsigned)c->uid, c->admin ? ", admin socket" : "",
					req->principal);
		return cf_error(CF_E_DENIED, "this connection is principal %s (uid %u), not %.64s: "
				"a session cannot claim another principal", c->principal,
				(unsigned)c->uid, req->principal);
	}
	if ((sig = cf_buf_new(CF_P11_MAX_SIG)) == NULL)
		return cf_nomem();
	if ((r = session_handshake(c->sm, c->uid, c->gid, &h, sig)) != CF_OK)
		goto out;
	if ((out = h_new_msg(&coffer__v1__open_session_response__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = h_set_bytes(&out->session_id, h.session_id, CF_SESSION_ID_LEN)) != CF_OK ||
	    (r = h_set_bytes(&out->server_ephemeral, h.server_pub, CF_SESSION_PUB_LEN)) != CF_OK ||
	    (r = h_set_bytes(&out->server_random, h.server_random, CF_SESSION_RANDOM_LEN)) != CF_OK ||
	    (r = h_set_bytes(&out->identity_public_key, h.spki, h.spki_len)) != CF_OK ||
	    (r = h_set_bytes(&out->signature, cf_buf_peek(sig), cf_buf_len(sig))) != CF_OK)
		goto out;
	out->caller_uid = h.uid;
	out->caller_gid = h.gid;
	out->lifetime_seconds = h.lifetime;
	out->max_records = h.max_records;
	out->max_bytes = h.max_bytes;
	*resp = &out->base;
	out = NULL;
out:
	if (out != NULL)
		protobuf_c_message_free_unpacked(&out->base, &cf_pbwipe_allocator);
	cf_buf_free(sig);
	return r;
}

/* Only reachable sealed (the dispatcher refuses it otherwise). */
static int
h_close_session(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	Coffer__V1__CloseSessionResponse *out;

	(void)m;
	if ((out = h_new_msg(&coffer__v1__close_session_response__descriptor)) == NULL)
		return cf_nomem();
	session_end(c->sm, c->sess);
	*resp = &out->base;
	return CF_OK;
}

/* ---- grpc.health.v1 ---- */

static int
h_health(const struct hctx *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Grpc__Health__V1__HealthCheckRequest *req = (const void *)m;
	Grpc__Health__V1__HealthCheckResponse *out;
	const char *s = req->service;

	/* Every service served on this socket. */
	if (s[0] != '\0' && !cf_service_served(s, c->admin ? CF_SOCK_ADMIN : CF_SOCK_SERVICE))
		return cf_error(CF_E_NOT_FOUND, "no service \"%.64s\" on this socket", s);
	if ((out = h_new_msg(&grpc__health__v1__health_check_response__descriptor)) == NULL)
		return cf_nomem();
	/* Failing closed on an unwritable audit trail or a state database
	 * removed under us: say so. */
	out->status = (c->au != NULL && !audit_healthy(c->au)) ||
		      (c->st != NULL && !store_healthy(c->st)) ?
		GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING :
		GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
	*resp = &out->base;
	return CF_OK;
}

const handler_fn handlers_base[CF_METHOD__COUNT] = {
	[CF_KS_SIGN] = h_sign,
	[CF_KS_VERIFY] = h_verify,
	[CF_KS_MAC] = h_mac,
	[CF_KS_VERIFY_MAC] = h_verify_mac,
	[CF_KS_WRAP] = h_wrap,
	[CF_KS_UNWRAP] = h_unwrap,
	[CF_KS_REWRAP] = h_rewrap,
	[CF_KS_GENERATE_DATA_KEY] = h_generate_data_key,
	[CF_KS_GET_PUBLIC_KEY] = h_get_public_key,
	[CF_KS_GET_KEY] = h_get_key,
	[CF_KS_LIST_KEYS] = h_list_keys,
	[CF_KS_VERIFY_REQUEST_SIGNATURE] = h_verify_request,
	[CF_KS_SIGN_HTTP_REQUEST] = h_sign_request,
	[CF_AS_CREATE_KEY] = h_create_key,
	[CF_AS_IMPORT_KEY] = h_import_key,
	[CF_AS_ROTATE_KEY] = h_rotate_key,
	[CF_AS_GET_KEY] = h_get_key,
	[CF_AS_LIST_KEYS] = h_list_keys,
	[CF_AS_CREATE_PRINCIPAL] = h_create_principal,
	[CF_AS_GET_PRINCIPAL] = h_get_principal,
	[CF_AS_LIST_PRINCIPALS] = h_list_principals,
	[CF_AS_GRANT_PRINCIPAL] = h_grant_principal,
	[CF_AS_REVOKE_PRINCIPAL] = h_revoke_principal,
	[CF_AS_SET_RATE_LIMIT] = h_set_rate_limit,
	[CF_AS_DELETE_PRINCIPAL] = h_delete_principal,
	[CF_SS_GET_IDENTITY] = h_get_identity,
	[CF_SS_OPEN_SESSION] = h_open_session,
	[CF_SS_CLOSE_SESSION] = h_close_session,
	[CF_HEALTH_CHECK] = h_health,
};

const handler_fn *const handlers_files[] = {
	handlers_base, handlers_apikeys, handlers_audit, handlers_lifecycle, NULL,
};

handler_fn
handlers_find(enum cf_method_id id)
{
	if ((unsigned)id >= CF_METHOD__COUNT)
		return NULL;
	for (const handler_fn *const *t = handlers_files; *t != NULL; t++)
		if ((*t)[id] != NULL)
			return (*t)[id];
	return NULL;
}
