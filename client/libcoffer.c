/*
 * libcoffer.c — the Coffer client library's public calls: plain C calls over
 * the RPC layer (libcoffer_rpc.h).
 *
 * Each public call builds a protobuf-c request that borrows the caller's
 * memory and hands it to lc_rpc, which packs it, seals or signs it, runs one
 * gRPC call (libcoffer_transport.c) and unpacks the response (with a wiping
 * allocator when the response carries secrets).
 */
#include "cf_arena.h"
#include "coffer.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "cf_keytype.h"
#include "cf_session.h"
#include "cf_status.h"
#include "libcoffer.h"
#include "libcoffer_session.h"
#include "coffer/v1/coffer.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"

/* The public codes are the internal ones. */
_Static_assert((int)COFFER_OK == (int)CF_OK, "status");
_Static_assert((int)COFFER_E_INTERNAL == (int)CF_E_INTERNAL, "status");
_Static_assert((int)COFFER_E_NOMEM == (int)CF_E_NOMEM, "status");
_Static_assert((int)COFFER_E_IO == (int)CF_E_IO, "status");
_Static_assert((int)COFFER_E_INVALID_ARG == (int)CF_E_INVALID_ARG, "status");
_Static_assert((int)COFFER_E_TOO_LARGE == (int)CF_E_TOO_LARGE, "status");
_Static_assert((int)COFFER_E_NOT_FOUND == (int)CF_E_NOT_FOUND, "status");
_Static_assert((int)COFFER_E_EXISTS == (int)CF_E_EXISTS, "status");
_Static_assert((int)COFFER_E_BUSY == (int)CF_E_BUSY, "status");
_Static_assert((int)COFFER_E_UNAVAILABLE == (int)CF_E_UNAVAILABLE, "status");
_Static_assert((int)COFFER_E_DENIED == (int)CF_E_DENIED, "status");
_Static_assert((int)COFFER_E_UNAUTHENTICATED == (int)CF_E_UNAUTHENTICATED, "status");
_Static_assert((int)COFFER_E_PRECONDITION == (int)CF_E_PRECONDITION, "status");
_Static_assert((int)COFFER_E_TIMEOUT == (int)CF_E_TIMEOUT, "status");
_Static_assert((int)COFFER_E_CANCELLED == (int)CF_E_CANCELLED, "status");
_Static_assert((int)COFFER_E_UNIMPLEMENTED == (int)CF_E_UNIMPLEMENTED, "status");

/* Public enums share the wire numbering and the internal model's. */
_Static_assert(COFFER_KEY_EC_P256 == (int)CF_KEY_EC_P256 &&
	       COFFER_KEY_AES_256 == (int)CF_KEY_AES_256 &&
	       COFFER_KEY_AES_256 + 1 == (int)CF_KEY__COUNT, "key type");
_Static_assert(COFFER_KEY_EC_P256 == (int)COFFER__V1__KEY_TYPE__EC_P256 &&
	       COFFER_KEY_EC_P384 == (int)COFFER__V1__KEY_TYPE__EC_P384 &&
	       COFFER_KEY_ED25519 == (int)COFFER__V1__KEY_TYPE__ED25519 &&
	       COFFER_KEY_RSA_2048 == (int)COFFER__V1__KEY_TYPE__RSA_2048 &&
	       COFFER_KEY_RSA_3072 == (int)COFFER__V1__KEY_TYPE__RSA_3072 &&
	       COFFER_KEY_RSA_4096 == (int)COFFER__V1__KEY_TYPE__RSA_4096 &&
	       COFFER_KEY_HMAC_SHA256 == (int)COFFER__V1__KEY_TYPE__HMAC_SHA256 &&
	       COFFER_KEY_HMAC_SHA384 == (int)COFFER__V1__KEY_TYPE__HMAC_SHA384 &&
	       COFFER_KEY_HMAC_SHA512 == (int)COFFER__V1__KEY_TYPE__HMAC_SHA512 &&
	       COFFER_KEY_AES_256 == (int)COFFER__V1__KEY_TYPE__AES_256, "key type");
_Static_assert(COFFER_HASH_SHA256 == (int)COFFER__V1__HASH__SHA256 &&
	       COFFER_HASH_SHA384 == (int)COFFER__V1__HASH__SHA384 &&
	       COFFER_HASH_SHA512 == (int)COFFER__V1__HASH__SHA512 &&
	       COFFER_HASH_SHA256 == (int)CF_HASH_SHA256 &&
	       COFFER_HASH_SHA512 == (int)CF_HASH_SHA512, "hash");
_Static_assert(COFFER_SCHEME_ECDSA == (int)COFFER__V1__SIGNATURE_SCHEME__ECDSA &&
	       COFFER_SCHEME_EDDSA == (int)COFFER__V1__SIGNATURE_SCHEME__EDDSA &&
	       COFFER_SCHEME_RSA_PSS == (int)COFFER__V1__SIGNATURE_SCHEME__RSA_PSS &&
	       COFFER_SCHEME_RSA_PKCS1 == (int)COFFER__V1__SIGNATURE_SCHEME__RSA_PKCS1 &&
	       COFFER_SCHEME_RSA_PKCS1 == (int)CF_SIG_RSA_PKCS1, "scheme");
_Static_assert(COFFER_PURPOSE_WRAP == (int)COFFER__V1__PURPOSE__WRAP, "purpose");
_Static_assert(COFFER_VERSION_DESTROYED == (int)COFFER__V1__VERSION_STATE__DESTROYED, "state");
_Static_assert(COFFER_SERVICE_UNKNOWN ==
	       (int)GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN,
	       "serving status");

#define KS "/coffer.v1.KeyService/"
#define AS "/coffer.v1.AdminService/"
#define HEALTH_CHECK "/grpc.health.v1.Health/Check"

/* Longest page token we carry from one ListKeys page to the next. */
#define PAGE_TOKEN_MAX 1024
#define LIST_PAGE_SIZE 100
/* Versions a listing may hold in all (24 bytes each): a hostile server's
 * pages of empty versions cost it 2 bytes on the wire apiece. */
#define LIST_MAX_VERSIONS 4000000u

/* A copy of in; `secret`: in locked memory (cf_arena.h). */
static int
bytes_copy(struct coffer_bytes *out, const ProtobufCBinaryData *in, int secret)
{
	size_t n = in->len ? in->len : 1;
	uint8_t *p = secret ? cf_locked_allocator.alloc(NULL, n) : malloc(n);

	if (p == NULL)
		return cf_nomem();
	if (in->len > 0)
		memcpy(p, in->data, in->len);
	out->data = p;
	out->len = in->len;
	return CF_OK;
}

static int
bytes_set(struct coffer_bytes *out, const ProtobufCBinaryData *in)
{
	return bytes_copy(out, in, 0);
}

/* Secrets handed to the caller (unwrapped plaintext, data keys) stay in
 * locked memory; coffer_bytes_free tells the two kinds apart. */
static int
secret_bytes_set(struct coffer_bytes *out, const ProtobufCBinaryData *in)
{
	return bytes_copy(out, in, 1);
}

void
coffer_bytes_free(struct coffer_bytes *b)
{
	if (b == NULL)
		return;
	cf_secure_free(b->data, b->len);
	b->data = NULL;
	b->len = 0;
}

/* ---- names ---- */

const char *
coffer_error_message(void)
{
	return cf_error_detail();
}

const char *
coffer_strerror(int status)
{
	/* The shared text speaks of the token; a client also sees this code
	 * when the daemon itself cannot be reached. */
	if (status == CF_E_UNAVAILABLE)
		return "cofferd or its token unavailable";
	return cf_strerror(status);
}

const char *
coffer_key_type_name(enum coffer_key_type t)
{
	if (t <= COFFER_KEY_UNSPECIFIED || t > COFFER_KEY_AES_256)
		return "unknown";
	return cf_key_type_name((enum cf_key_type)t);
}

int
coffer_key_type_parse(const char *name, enum coffer_key_type *out)
{
	enum cf_key_type t;
	int r;

	cf_error_clear();
	if (name == NULL || out == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	if ((r = cf_key_type_parse(name, &t)) != CF_OK)
		return r;
	*out = (enum coffer_key_type)t;
	return CF_OK;
}

const char *
coffer_hash_name(enum coffer_hash h)
{
	if (h <= COFFER_HASH_DEFAULT || h > COFFER_HASH_SHA512)
		return "unknown";
	return cf_hash_name((enum cf_hash)h);
}

int
coffer_hash_parse(const char *name, enum coffer_hash *out)
{
	enum cf_hash h;
	int r;

	cf_error_clear();
	if (name == NULL || out == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	if ((r = cf_hash_parse(name, &h)) != CF_OK)
		return r;
	*out = (enum coffer_hash)h;
	return CF_OK;
}

static const char *const scheme_names[] = {
	[COFFER_SCHEME_ECDSA] = "ecdsa",
	[COFFER_SCHEME_EDDSA] = "eddsa",
	[COFFER_SCHEME_RSA_PSS] = "rsa-pss",
	[COFFER_SCHEME_RSA_PKCS1] = "rsa-pkcs1",
};

const char *
coffer_scheme_name(enum coffer_sig_scheme s)
{
	if (s <= COFFER_SCHEME_DEFAULT || s > COFFER_SCHEME_RSA_PKCS1)
		return "unknown";
	return scheme_names[s];
}

int
coffer_scheme_parse(const char *name, enum coffer_sig_scheme *out)
{
	cf_error_clear();
	if (name == NULL || out == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	for (int s = COFFER_SCHEME_ECDSA; s <= COFFER_SCHEME_RSA_PKCS1; s++) {
		if (strcmp(name, scheme_names[s]) == 0) {
			*out = (enum coffer_sig_scheme)s;
			return CF_OK;
		}
	}
	return cf_error(CF_E_INVALID_ARG,
	    "unknown signature scheme; use ecdsa, eddsa, rsa-pss or rsa-pkcs1");
}

const char *
coffer_purpose_name(enum coffer_purpose p)
{
	switch (p) {
	case COFFER_PURPOSE_SIGN: return "sign";
	case COFFER_PURPOSE_MAC: return "mac";
	case COFFER_PURPOSE_WRAP: return "wrap";
	default: return "unknown";
	}
}

const char *
coffer_version_state_name(enum coffer_version_state s)
{
	switch (s) {
	case COFFER_VERSION_ENABLED: return "enabled";
	case COFFER_VERSION_DISABLED: return "disabled";
	case COFFER_VERSION_DESTROY_SCHEDULED: return "destroy-scheduled";
	case COFFER_VERSION_DESTROYED: return "destroyed";
	default: return "unknown";
	}
}

const char *
coffer_serving_status_name(enum coffer_serving_status s)
{
	switch (s) {
	case COFFER_SERVING_UNKNOWN: return "UNKNOWN";
	case COFFER_SERVING: return "SERVING";
	case COFFER_NOT_SERVING: return "NOT_SERVING";
	case COFFER_SERVICE_UNKNOWN: return "SERVICE_UNKNOWN";
	default: return "unknown";
	}
}

/* ---- request helpers ---- */

static ProtobufCBinaryData
bin(const uint8_t *p, size_t len)
{
	ProtobufCBinaryData b = { len, (uint8_t *)p };

	return b;
}

/* A context map as protobuf-c entries of the request's own entry type. The
 * entries borrow the caller's strings. */
struct ctx_entries {
	ProtobufCMessage **ptrs;
	uint8_t *mem;
	size_t n;
};

static void
ctx_free(struct ctx_entries *e)
{
	free(e->ptrs);
	free(e->mem);
	e->ptrs = NULL;
	e->mem = NULL;
	e->n = 0;
}

static int
ctx_build(const ProtobufCMessageDescriptor *d, const struct coffer_kv *kv, size_t n,
    struct ctx_entries *e)
{
	const ProtobufCFieldDescriptor *fk, *fv;
	size_t sz = d->sizeof_message;

	e->ptrs = NULL;
	e->mem = NULL;
	e->n = 0;
	if (n == 0)
		return CF_OK;
	if (kv == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL context with %zu entries", n);
	if (n > COFFER_MAX_MESSAGE / 2)
		return cf_error(CF_E_TOO_LARGE, "too many context entries");
	for (size_t i = 0; i < n; i++) {
		if (kv[i].key == NULL || kv[i].value == NULL)
			return cf_error(CF_E_INVALID_ARG, "context entry %zu has a NULL "
			    "key or value", i);
		for (size_t j = 0; j < i; j++)
			if (strcmp(kv[i].key, kv[j].key) == 0)
				return cf_error(CF_E_INVALID_ARG, "context key \"%.64s\" "
				    "given twice", kv[i].key);
	}
	fk = protobuf_c_message_descriptor_get_field_by_name(d, "key");
	fv = protobuf_c_message_descriptor_get_field_by_name(d, "value");
	if (fk == NULL || fv == NULL)
		return cf_error(CF_E_INTERNAL, "context entry descriptor");
	if ((e->ptrs = calloc(n, sizeof(*e->ptrs))) == NULL ||
	    (e->mem = calloc(n, sz)) == NULL) {
		ctx_free(e);
		return cf_nomem();
	}
	for (size_t i = 0; i < n; i++) {
		uint8_t *m = e->mem + i * sz;
		const char *k = kv[i].key, *v = kv[i].value;

		protobuf_c_message_init(d, m);
		memcpy(m + fk->offset, &k, sizeof(k));
		memcpy(m + fv->offset, &v, sizeof(v));
		e->ptrs[i] = (ProtobufCMessage *)(void *)m;
	}
	e->n = n;
	return CF_OK;
}

/* check_client, then the call's own argument check: `bad` fails with `why`. */
static int
check_call(const coffer_client *c, const char *name, int bad, const char *why)
{
	int r;

	if ((r = lc_check_client(c, name)) != CF_OK)
		return r;
	if (bad)
		return cf_error(CF_E_INVALID_ARG, "%s", why);
	return CF_OK;
}

/* Copy a response's bytes to *out; empty ones (`what`) are a server error. */
static int
bytes_out(struct coffer_bytes *out, const ProtobufCBinaryData *in, const char *what)
{
	if (in->len == 0)
		return cf_error(CF_E_INTERNAL, "the server returned an empty %s", what);
	return bytes_set(out, in);
}

/*
 * lc_rpc for a request with a context map: the request's "context" field
 * borrows entries built from `ctx` for the duration of the call. With no
 * entries it is lc_rpc itself, so requests without a context field pass too.
 */
static int
ctx_rpc(coffer_client *c, const char *method, ProtobufCMessage *req,
    const struct coffer_kv *ctx, size_t nctx, const ProtobufCMessageDescriptor *rdesc,
    int secret, ProtobufCMessage **out)
{
	const ProtobufCFieldDescriptor *f;
	struct ctx_entries e = { NULL, NULL, 0 };
	uint8_t *base = (uint8_t *)(void *)req;
	int r;

	if (nctx == 0)
		return lc_rpc(c, method, req, rdesc, secret, out);
	f = protobuf_c_message_descriptor_get_field_by_name(req->descriptor, "context");
	if (f == NULL || f->label != PROTOBUF_C_LABEL_REPEATED ||
	    f->type != PROTOBUF_C_TYPE_MESSAGE)
		return cf_error(CF_E_INTERNAL, "context entry descriptor");
	if ((r = ctx_build(f->descriptor, ctx, nctx, &e)) != CF_OK)
		return r;
	memcpy(base + f->quantifier_offset, &e.n, sizeof(e.n));
	memcpy(base + f->offset, &e.ptrs, sizeof(e.ptrs));
	r = lc_rpc(c, method, req, rdesc, secret, out);
	ctx_free(&e);
	memcpy(base + f->quantifier_offset, &e.n, sizeof(e.n));
	memcpy(base + f->offset, &e.ptrs, sizeof(e.ptrs));
	return r;
}

/* ---- KeyService ---- */

/*
 * What Sign, Mac, Wrap, Unwrap and Rewrap answer: bytes and the key version
 * that made them (Rewrap: also the version it replaced), as offsets into the
 * response, so that one function hands out all five.
 */
struct bytes_reply {
	const ProtobufCMessageDescriptor *desc;
	size_t data, version, previous;	/* previous 0: the reply has none */
	const char *what;		/* the bytes' name; NULL: a secret, may be empty */
};

static const struct bytes_reply sign_reply = { &coffer__v1__sign_response__descriptor,
	offsetof(Coffer__V1__SignResponse, signature), offsetof(Coffer__V1__SignResponse, version),
	0, "signature" };
static const struct bytes_reply mac_reply = { &coffer__v1__mac_response__descriptor,
	offsetof(Coffer__V1__MacResponse, mac), offsetof(Coffer__V1__MacResponse, version), 0,
	"MAC" };
static const struct bytes_reply wrap_reply = { &coffer__v1__wrap_response__descriptor,
	offsetof(Coffer__V1__WrapResponse, ciphertext), offsetof(Coffer__V1__WrapResponse, version),
	0, "ciphertext" };
static const struct bytes_reply unwrap_reply = { &coffer__v1__unwrap_response__descriptor,
	offsetof(Coffer__V1__UnwrapResponse, plaintext),
	offsetof(Coffer__V1__UnwrapResponse, version), 0, NULL };
static const struct bytes_reply rewrap_reply = { &coffer__v1__rewrap_response__descriptor,
	offsetof(Coffer__V1__RewrapResponse, ciphertext),
	offsetof(Coffer__V1__RewrapResponse, version),
	offsetof(Coffer__V1__RewrapResponse, previous_version), "ciphertext" };

/* A bytes_reply's bytes from the response m into *out (a secret in locked
 * memory), its versions into those asked for. */
static int
bytes_from(const ProtobufCMessage *m, const struct bytes_reply *how, struct coffer_bytes *out,
    uint32_t *version, uint32_t *previous)
{
	const uint8_t *resp = (const uint8_t *)(const void *)m;
	const ProtobufCBinaryData *data = (const ProtobufCBinaryData *)(const void *)(resp +
	    how->data);
	int r;

	r = how->what == NULL ? secret_bytes_set(out, data) : bytes_out(out, data, how->what);
	if (r != CF_OK)
		return r;
	if (version != NULL)
		memcpy(version, resp + how->version, sizeof(*version));
	if (previous != NULL && how->previous != 0)
		memcpy(previous, resp + how->previous, sizeof(*previous));
	return CF_OK;
}

/*
 * Run a call that answers a bytes_reply: the bytes go to *out (a secret in
 * locked memory, the response wiped), the versions to those asked for.
 */
static int
bytes_call(coffer_client *c, const char *method, ProtobufCMessage *req,
    const struct coffer_kv *ctx, size_t nctx, const struct bytes_reply *how,
    struct coffer_bytes *out, uint32_t *version, uint32_t *previous)
{
	ProtobufCAllocator *alloc = how->what == NULL ? &cf_locked_allocator : NULL;
	ProtobufCMessage *m = NULL;
	int r;

	if ((r = ctx_rpc(c, method, req, ctx, nctx, how->desc, how->what == NULL, &m)) == CF_OK)
		r = bytes_from(m, how, out, version, previous);
	protobuf_c_message_free_unpacked(m, alloc);
	return r;
}

/* A verification's verdict: the response's `valid` field at offset `at`. */
static int
verdict(const ProtobufCMessage *m, size_t at)
{
	protobuf_c_boolean v;

	memcpy(&v, (const uint8_t *)(const void *)m + at, sizeof(v));
	return v ? 1 : 0;
}

/* A verification's call: *valid from its response's `valid` (offset at). */
static int
verify_call(coffer_client *c, const char *method, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *rdesc, size_t at, int *valid)
{
	ProtobufCMessage *m = NULL;
	int r;

	if ((r = lc_rpc(c, method, req, rdesc, 0, &m)) != CF_OK)
		return r;
	*valid = verdict(m, at);
	protobuf_c_message_free_unpacked(m, NULL);
	return CF_OK;
}

/* The data and options shared by Sign and Verify requests. */
static void
sign_fields(const uint8_t *msg, size_t len, const struct coffer_sign_opts *opts,
    ProtobufCBinaryData *message, ProtobufCBinaryData *digest, Coffer__V1__Hash *hash,
    Coffer__V1__SignatureScheme *scheme, protobuf_c_boolean *ecdsa_raw)
{
	if (opts != NULL && opts->prehashed)
		*digest = bin(msg, len);
	else
		*message = bin(msg, len);
	if (opts != NULL) {
		*hash = (Coffer__V1__Hash)opts->hash;
		*scheme = (Coffer__V1__SignatureScheme)opts->scheme;
		*ecdsa_raw = opts->ecdsa_raw != 0;
	}
}

/*
 * The requests of Sign, Verify, Mac and VerifyMac, borrowing the caller's
 * memory, after the arguments' checks (`no_out`: the caller gave nowhere
 * for the answer). Shared by the calls that wait and those that start.
 */
static int
sign_req(const coffer_client *c, Coffer__V1__SignRequest *req, const char *key,
    uint32_t version, const uint8_t *msg, size_t len, const struct coffer_sign_opts *opts,
    int no_out)
{
	int r;

	coffer__v1__sign_request__init(req);
	if ((r = check_call(c, key, no_out || (msg == NULL && len > 0),
	    "NULL message or output")) != CF_OK)
		return r;
	req->key = (char *)key;
	req->version = version;
	sign_fields(msg, len, opts, &req->message, &req->digest, &req->hash, &req->scheme,
	    &req->ecdsa_raw);
	return CF_OK;
}

static int
verify_req(const coffer_client *c, Coffer__V1__VerifyRequest *req, const char *key,
    uint32_t version, const uint8_t *msg, size_t len, const struct coffer_sign_opts *opts,
    const uint8_t *sig, size_t siglen, int no_out)
{
	int r;

	coffer__v1__verify_request__init(req);
	if ((r = check_call(c, key,
	    no_out || (msg == NULL && len > 0) || (sig == NULL && siglen > 0),
	    "NULL message, signature or output")) != CF_OK)
		return r;
	req->key = (char *)key;
	req->version = version;
	sign_fields(msg, len, opts, &req->message, &req->digest, &req->hash, &req->scheme,
	    &req->ecdsa_raw);
	req->signature = bin(sig, siglen);
	return CF_OK;
}

static int
mac_req(const coffer_client *c, Coffer__V1__MacRequest *req, const char *key,
    uint32_t version, const uint8_t *data, size_t len, int no_out)
{
	int r;

	coffer__v1__mac_request__init(req);
	if ((r = check_call(c, key, no_out || (data == NULL && len > 0),
	    "NULL data or output")) != CF_OK)
		return r;
	req->key = (char *)key;
	req->version = version;
	req->data = bin(data, len);
	return CF_OK;
}

static int
verify_mac_req(const coffer_client *c, Coffer__V1__VerifyMacRequest *req, const char *key,
    uint32_t version, const uint8_t *data, size_t len, const uint8_t *mac, size_t maclen,
    int no_out)
{
	int r;

	coffer__v1__verify_mac_request__init(req);
	if ((r = check_call(c, key,
	    no_out || (data == NULL && len > 0) || (mac == NULL && maclen > 0),
	    "NULL data, MAC or output")) != CF_OK)
		return r;
	req->key = (char *)key;
	req->version = version;
	req->data = bin(data, len);
	req->mac = bin(mac, maclen);
	return CF_OK;
}

#define VERIFY_VALID offsetof(Coffer__V1__VerifyResponse, valid)
#define VERIFY_MAC_VALID offsetof(Coffer__V1__VerifyMacResponse, valid)

int
coffer_sign(coffer_client *c, const char *key, uint32_t version, const uint8_t *msg,
    size_t len, const struct coffer_sign_opts *opts, struct coffer_bytes *sig,
    uint32_t *used_version)
{
	Coffer__V1__SignRequest req;
	int r;

	if ((r = sign_req(c, &req, key, version, msg, len, opts, sig == NULL)) != CF_OK)
		return r;
	return bytes_call(c, KS "Sign", &req.base, NULL, 0, &sign_reply, sig, used_version, NULL);
}

int
coffer_verify(coffer_client *c, const char *key, uint32_t version, const uint8_t *msg,
    size_t len, const struct coffer_sign_opts *opts, const uint8_t *sig, size_t siglen,
    int *valid)
{
	Coffer__V1__VerifyRequest req;
	int r;

	if ((r = verify_req(c, &req, key, version, msg, len, opts, sig, siglen,
	    valid == NULL)) != CF_OK)
		return r;
	return verify_call(c, KS "Verify", &req.base, &coffer__v1__verify_response__descriptor,
	    VERIFY_VALID, valid);
}

int
coffer_mac(coffer_client *c, const char *key, uint32_t version, const uint8_t *data,
    size_t len, struct coffer_bytes *mac, uint32_t *used_version)
{
	Coffer__V1__MacRequest req;
	int r;

	if ((r = mac_req(c, &req, key, version, data, len, mac == NULL)) != CF_OK)
		return r;
	return bytes_call(c, KS "Mac", &req.base, NULL, 0, &mac_reply, mac, used_version, NULL);
}

int
coffer_verify_mac(coffer_client *c, const char *key, uint32_t version, const uint8_t *data,
    size_t len, const uint8_t *mac, size_t maclen, int *valid)
{
	Coffer__V1__VerifyMacRequest req;
	int r;

	if ((r = verify_mac_req(c, &req, key, version, data, len, mac, maclen,
	    valid == NULL)) != CF_OK)
		return r;
	return verify_call(c, KS "VerifyMac", &req.base,
	    &coffer__v1__verify_mac_response__descriptor, VERIFY_MAC_VALID, valid);
}

/* ---- calls kept in flight: started, then waited for ---- */

struct coffer_call {
	struct lc_call *call;
	const ProtobufCMessageDescriptor *desc;
	const struct bytes_reply *how;  /* Sign, Mac; NULL: a verification */
	size_t valid;                   /* a verification: its response's `valid` */
};

static int
start(coffer_client *c, const char *method, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *desc, const struct bytes_reply *how, size_t valid,
    coffer_call **out)
{
	coffer_call *h;
	int r;

	if ((h = calloc(1, sizeof(*h))) == NULL)
		return cf_nomem();
	h->desc = desc;
	h->how = how;
	h->valid = valid;
	if ((r = lc_rpc_start(c, method, req, &h->call)) != CF_OK) {
		free(h);
		return r;
	}
	*out = h;
	return CF_OK;
}

int
coffer_sign_start(coffer_client *c, const char *key, uint32_t version, const uint8_t *msg,
    size_t len, const struct coffer_sign_opts *opts, coffer_call **call)
{
	Coffer__V1__SignRequest req;
	int r;

	if ((r = sign_req(c, &req, key, version, msg, len, opts, call == NULL)) != CF_OK)
		return r;
	return start(c, KS "Sign", &req.base, sign_reply.desc, &sign_reply, 0, call);
}

int
coffer_verify_start(coffer_client *c, const char *key, uint32_t version, const uint8_t *msg,
    size_t len, const struct coffer_sign_opts *opts, const uint8_t *sig, size_t siglen,
    coffer_call **call)
{
	Coffer__V1__VerifyRequest req;
	int r;

	if ((r = verify_req(c, &req, key, version, msg, len, opts, sig, siglen,
	    call == NULL)) != CF_OK)
		return r;
	return start(c, KS "Verify", &req.base, &coffer__v1__verify_response__descriptor, NULL,
	    VERIFY_VALID, call);
}

int
coffer_mac_start(coffer_client *c, const char *key, uint32_t version, const uint8_t *data,
    size_t len, coffer_call **call)
{
	Coffer__V1__MacRequest req;
	int r;

	if ((r = mac_req(c, &req, key, version, data, len, call == NULL)) != CF_OK)
		return r;
	return start(c, KS "Mac", &req.base, mac_reply.desc, &mac_reply, 0, call);
}

int
coffer_verify_mac_start(coffer_client *c, const char *key, uint32_t version,
    const uint8_t *data, size_t len, const uint8_t *mac, size_t maclen, coffer_call **call)
{
	Coffer__V1__VerifyMacRequest req;
	int r;

	if ((r = verify_mac_req(c, &req, key, version, data, len, mac, maclen,
	    call == NULL)) != CF_OK)
		return r;
	return start(c, KS "VerifyMac", &req.base, &coffer__v1__verify_mac_response__descriptor,
	    NULL, VERIFY_MAC_VALID, call);
}

int
coffer_wait(coffer_call *call, struct coffer_result *res)
{
	ProtobufCMessage *m = NULL;
	int r;

	cf_error_clear();
	if (call == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL call");
	r = lc_rpc_wait(call->call, call->desc, &m);
	if (r == CF_OK && res != NULL) {
		if (call->how != NULL)
			r = bytes_from(m, call->how, &res->out, &res->version, NULL);
		else
			res->valid = verdict(m, call->valid);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	free(call);
	return r;
}

int
coffer_wrap(coffer_client *c, const char *key, const uint8_t *plaintext, size_t len,
    const struct coffer_kv *ctx, size_t nctx, struct coffer_bytes *ciphertext,
    uint32_t *used_version)
{
	Coffer__V1__WrapRequest req = COFFER__V1__WRAP_REQUEST__INIT;
	int r;

	if ((r = check_call(c, key, ciphertext == NULL || (plaintext == NULL && len > 0),
	    "NULL plaintext or output")) != CF_OK)
		return r;
	req.key = (char *)key;
	req.plaintext = bin(plaintext, len);
	return bytes_call(c, KS "Wrap", &req.base, ctx, nctx, &wrap_reply, ciphertext,
	    used_version, NULL);
}

int
coffer_unwrap(coffer_client *c, const char *key, const uint8_t *ciphertext, size_t len,
    const struct coffer_kv *ctx, size_t nctx, struct coffer_bytes *plaintext,
    uint32_t *used_version)
{
	Coffer__V1__UnwrapRequest req = COFFER__V1__UNWRAP_REQUEST__INIT;
	int r;

	if ((r = check_call(c, key, plaintext == NULL || (ciphertext == NULL && len > 0),
	    "NULL ciphertext or output")) != CF_OK)
		return r;
	req.key = (char *)key;
	req.ciphertext = bin(ciphertext, len);
	return bytes_call(c, KS "Unwrap", &req.base, ctx, nctx, &unwrap_reply, plaintext,
	    used_version, NULL);
}

int
coffer_rewrap(coffer_client *c, const char *key, const uint8_t *ciphertext, size_t len,
    const struct coffer_kv *ctx, size_t nctx, struct coffer_bytes *new_ciphertext,
    uint32_t *new_version, uint32_t *previous_version)
{
	Coffer__V1__RewrapRequest req = COFFER__V1__REWRAP_REQUEST__INIT;
	int r;

	if ((r = check_call(c, key, new_ciphertext == NULL || (ciphertext == NULL && len > 0),
	    "NULL ciphertext or output")) != CF_OK)
		return r;
	req.key = (char *)key;
	req.ciphertext = bin(ciphertext, len);
	return bytes_call(c, KS "Rewrap", &req.base, ctx, nctx, &rewrap_reply, new_ciphertext,
	    new_version, previous_version);
}

int
coffer_generate_data_key(coffer_client *c, const char *key, uint32_t length,
    const struct coffer_kv *ctx, size_t nctx, struct coffer_bytes *ciphertext,
    struct coffer_bytes *plaintext, uint32_t *used_version)
{
	Coffer__V1__GenerateDataKeyRequest req = COFFER__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	Coffer__V1__GenerateDataKeyResponse *resp;
	ProtobufCMessage *m = NULL;
	struct coffer_bytes ct = { NULL, 0 }, pt = { NULL, 0 };
	int r;

	if ((r = check_call(c, key, ciphertext == NULL, "NULL output")) != CF_OK)
		return r;
	req.key = (char *)key;
	req.length = length;
	req.include_plaintext = plaintext != NULL;
	if ((r = ctx_rpc(c, KS "GenerateDataKey", &req.base, ctx, nctx,
	    &coffer__v1__generate_data_key_response__descriptor, 1, &m)) != CF_OK)
		goto out;
	resp = (Coffer__V1__GenerateDataKeyResponse *)m;
	if (resp->ciphertext.len == 0 || (plaintext != NULL && resp->plaintext.len == 0)) {
		r = cf_error(CF_E_INTERNAL, "the server returned an empty data key");
		goto out;
	}
	if ((r = bytes_set(&ct, &resp->ciphertext)) != CF_OK)
		goto out;
	if (plaintext != NULL && (r = secret_bytes_set(&pt, &resp->plaintext)) != CF_OK)
		goto out;
	*ciphertext = ct;
	ct.data = NULL;
	if (plaintext != NULL) {
		*plaintext = pt;
		pt.data = NULL;
	}
	if (used_version != NULL)
		*used_version = resp->version;
 out:
	coffer_bytes_free(&ct);
	coffer_bytes_free(&pt);
	protobuf_c_message_free_unpacked(m, &cf_locked_allocator);
	return r;
}

void
coffer_public_key_free(struct coffer_public_key *pk)
{
	if (pk == NULL)
		return;
	coffer_bytes_free(&pk->der);
	free(pk->pem);
	free(pk);
}

int
coffer_get_public_key(coffer_client *c, const char *key, uint32_t version,
    struct coffer_public_key **out)
{
	Coffer__V1__GetPublicKeyRequest req = COFFER__V1__GET_PUBLIC_KEY_REQUEST__INIT;
	Coffer__V1__GetPublicKeyResponse *resp;
	ProtobufCMessage *m = NULL;
	struct coffer_public_key *pk = NULL;
	int r;

	if ((r = lc_check_client(c, key)) != CF_OK)
		goto out;
	if (out == NULL) {
		r = cf_error(CF_E_INVALID_ARG, "NULL output");
		goto out;
	}
	req.key = (char *)key;
	req.version = version;
	if ((r = lc_rpc(c, KS "GetPublicKey", &req.base,
	    &coffer__v1__get_public_key_response__descriptor, 0, &m)) != CF_OK)
		goto out;
	resp = (Coffer__V1__GetPublicKeyResponse *)m;
	if (resp->der.len == 0 || resp->pem == NULL || resp->pem[0] == '\0') {
		r = cf_error(CF_E_INTERNAL, "the server returned an empty public key");
		goto out;
	}
	if ((pk = calloc(1, sizeof(*pk))) == NULL) {
		r = cf_nomem();
		goto out;
	}
	/* Made here: the server's own PEM text is not taken on trust to say
	 * what its DER says, nor to be safe to print. */
	if ((r = cf_spki_pem(resp->der.data, resp->der.len, &pk->pem)) == CF_E_INVALID_ARG)
		r = cf_error(CF_E_INTERNAL, "the server returned a public key that is not a "
			     "SubjectPublicKeyInfo");
	if (r != CF_OK)
		goto out;
	if ((r = bytes_set(&pk->der, &resp->der)) != CF_OK)
		goto out;
	pk->type = (enum coffer_key_type)resp->type;
	pk->version = resp->version;
	*out = pk;
	pk = NULL;
 out:
	coffer_public_key_free(pk);
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

/* ---- key metadata ---- */

static void
key_info_clear(struct coffer_key_info *k)
{
	free(k->name);
	free(k->versions);
	memset(k, 0, sizeof(*k));
}

void
coffer_key_info_free(struct coffer_key_info *k)
{
	if (k == NULL)
		return;
	key_info_clear(k);
	free(k);
}

void
coffer_key_list_free(struct coffer_key_list *l)
{
	if (l == NULL)
		return;
	for (size_t i = 0; i < l->nkeys; i++)
		key_info_clear(&l->keys[i]);
	free(l->keys);
	free(l);
}

static int
key_from_pb(const Coffer__V1__Key *k, struct coffer_key_info *out)
{
	struct coffer_key_info tmp;

	memset(&tmp, 0, sizeof(tmp));
	if (k->name == NULL || k->name[0] == '\0')
		return cf_error(CF_E_INTERNAL, "the server returned a key without a name");
	if ((tmp.name = strdup(k->name)) == NULL)
		goto nomem;
	if (k->n_versions > 0) {
		if ((tmp.versions = calloc(k->n_versions, sizeof(*tmp.versions))) == NULL)
			goto nomem;
		for (size_t i = 0; i < k->n_versions; i++) {
			tmp.versions[i].version = k->versions[i]->version;
			tmp.versions[i].state = (enum coffer_version_state)k->versions[i]->state;
			tmp.versions[i].create_time = k->versions[i]->create_time;
			tmp.versions[i].destroy_time = k->versions[i]->destroy_time;
		}
		tmp.nversions = k->n_versions;
	}
	tmp.type = (enum coffer_key_type)k->type;
	tmp.purpose = (enum coffer_purpose)k->purpose;
	tmp.primary_version = k->primary_version;
	tmp.create_time = k->create_time;
	tmp.exportable = k->exportable ? 1 : 0;
	tmp.min_version = k->min_version;
	tmp.min_verify_version = k->min_verify_version;
	tmp.rotation_period = k->rotation_period;
	tmp.next_rotation_time = k->next_rotation_time;
	for (size_t i = 0; i < k->n_allowed_operations; i++)
		if ((unsigned)k->allowed_operations[i] < 32)
			tmp.allowed_operations |= 1u << k->allowed_operations[i];
	*out = tmp;
	return CF_OK;
 nomem:
	key_info_clear(&tmp);
	return cf_nomem();
}

int
lc_key_call(coffer_client *c, const char *method, const ProtobufCMessage *req,
    struct coffer_key_info **out)
{
	ProtobufCMessage *m = NULL;
	struct coffer_key_info *k = NULL;
	int r;

	if ((r = lc_rpc(c, method, req, &coffer__v1__key__descriptor, 0, &m)) != CF_OK)
		goto out;
	if (out == NULL)
		goto out;
	if ((k = calloc(1, sizeof(*k))) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = key_from_pb((Coffer__V1__Key *)m, k)) != CF_OK)
		goto out;
	*out = k;
	k = NULL;
 out:
	coffer_key_info_free(k);
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

int
coffer_get_key(coffer_client *c, const char *name, struct coffer_key_info **out)
{
	Coffer__V1__GetKeyRequest req = COFFER__V1__GET_KEY_REQUEST__INIT;
	int r;

	if ((r = lc_check_client(c, name)) != CF_OK)
		return r;
	if (out == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL output");
	req.name = (char *)name;
	return lc_key_call(c,
	    (lc_client_flags(c) & COFFER_CONNECT_ADMIN) ? AS "GetKey" : KS "GetKey",
	    &req.base, out);
}

int
coffer_list_keys(coffer_client *c, struct coffer_key_list **out)
{
	Coffer__V1__ListKeysRequest req = COFFER__V1__LIST_KEYS_REQUEST__INIT;
	Coffer__V1__ListKeysResponse *resp;
	ProtobufCMessage *m = NULL;
	struct coffer_key_list *l = NULL;
	struct coffer_key_info *nk;
	const char *method;
	char token[PAGE_TOKEN_MAX + 1] = "";
	size_t cap = 0, n, nversions = 0;
	int r;

	cf_error_clear();
	if (c == NULL || out == NULL) {
		r = cf_error(CF_E_INVALID_ARG, "NULL argument");
		goto out;
	}
	method = (lc_client_flags(c) & COFFER_CONNECT_ADMIN) ? AS "ListKeys" : KS "ListKeys";
	if ((l = calloc(1, sizeof(*l))) == NULL) {
		r = cf_nomem();
		goto out;
	}
	for (;;) {
		req.page_size = LIST_PAGE_SIZE;
		req.page_token = token;
		if ((r = lc_rpc(c, method, &req.base, &coffer__v1__list_keys_response__descriptor,
		    0, &m)) != CF_OK)
			goto out;
		resp = (Coffer__V1__ListKeysResponse *)m;
		n = resp->n_keys;
		if (n > COFFER_LIST_MAX_KEYS - l->nkeys) {
			r = cf_error(CF_E_TOO_LARGE, "more than %u keys", COFFER_LIST_MAX_KEYS);
			goto out;
		}
		if (l->nkeys + n > cap) {
			size_t ncap = cap ? cap : 64;

			while (ncap < l->nkeys + n)
				ncap *= 2;
			if ((nk = reallocarray(l->keys, ncap, sizeof(*nk))) == NULL) {
				r = cf_nomem();
				goto out;
			}
			l->keys = nk;
			cap = ncap;
		}
		for (size_t i = 0; i < n; i++) {
			const Coffer__V1__Key *k = resp->keys[i];

			/* In name order (coffer.proto), so no page can come twice. */
			if (l->nkeys > 0 && k->name != NULL &&
			    strcmp(k->name, l->keys[l->nkeys - 1].name) <= 0) {
				r = cf_error(CF_E_INTERNAL, "the server's key listing is not in name "
				    "order");
				goto out;
			}
			if (k->n_versions > LIST_MAX_VERSIONS - nversions) {
				r = cf_error(CF_E_TOO_LARGE, "more than %u key versions",
				    LIST_MAX_VERSIONS);
				goto out;
			}
			nversions += k->n_versions;
			if ((r = key_from_pb(k, &l->keys[l->nkeys])) != CF_OK)
				goto out;
			l->nkeys++;
		}
		if (resp->next_page_token == NULL || resp->next_page_token[0] == '\0')
			break;
		if (strlen(resp->next_page_token) > PAGE_TOKEN_MAX) {
			r = cf_error(CF_E_INTERNAL, "the server returned an overlong page token");
			goto out;
		}
		/* A page that adds nothing, or the same token again, would loop. */
		if (n == 0 || strcmp(resp->next_page_token, token) == 0) {
			r = cf_error(CF_E_INTERNAL, "the server's key listing does not advance");
			goto out;
		}
		strcpy(token, resp->next_page_token);
		protobuf_c_message_free_unpacked(m, NULL);
		m = NULL;
	}
	*out = l;
	l = NULL;
 out:
	protobuf_c_message_free_unpacked(m, NULL);
	coffer_key_list_free(l);
	return r;
}

/* ---- AdminService ---- */

int
coffer_create_key(coffer_client *c, const char *name, enum coffer_key_type type,
    int exportable, struct coffer_key_info **out)
{
	return coffer_create_key_limited(c, name, type, exportable, 0, out);
}

int
coffer_create_key_limited(coffer_client *c, const char *name, enum coffer_key_type type,
    int exportable, unsigned int operations, struct coffer_key_info **out)
{
	struct coffer_create_opts o = { type, exportable, operations, 0 };

	return coffer_create_key_opts(c, name, &o, out);
}

int
coffer_create_key_opts(coffer_client *c, const char *name, const struct coffer_create_opts *o,
    struct coffer_key_info **out)
{
	Coffer__V1__CreateKeyRequest req = COFFER__V1__CREATE_KEY_REQUEST__INIT;
	Coffer__V1__Operation ops[32];
	int r;

	if ((r = lc_check_client(c, name)) != CF_OK)
		return r;
	if (o == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL options");
	req.name = (char *)name;
	req.type = (Coffer__V1__KeyType)o->type;
	req.exportable = o->exportable != 0;
	for (unsigned i = 1; i < 32; i++)
		if (o->operations & (1u << i))
			ops[req.n_allowed_operations++] = (Coffer__V1__Operation)i;
	req.allowed_operations = ops;
	req.rotation_period = o->rotation_period;
	return lc_key_call(c, AS "CreateKey", &req.base, out);
}

int
coffer_import_key(coffer_client *c, const char *name, enum coffer_key_type type,
    const uint8_t *material, size_t len, int exportable, struct coffer_key_info **out)
{
	Coffer__V1__ImportKeyRequest req = COFFER__V1__IMPORT_KEY_REQUEST__INIT;
	int r;

	if ((r = lc_check_client(c, name)) != CF_OK)
		return r;
	if (material == NULL && len > 0)
		return cf_error(CF_E_INVALID_ARG, "NULL key material");
	req.name = (char *)name;
	req.type = (Coffer__V1__KeyType)type;
	req.material = bin(material, len);
	req.exportable = exportable != 0;
	/* The packed request (with the material) is wiped by slice_wipe_free. */
	return lc_key_call(c, AS "ImportKey", &req.base, out);
}

int
coffer_rotate_key(coffer_client *c, const char *name, struct coffer_key_info **out)
{
	Coffer__V1__RotateKeyRequest req = COFFER__V1__ROTATE_KEY_REQUEST__INIT;
	int r;

	if ((r = lc_check_client(c, name)) != CF_OK)
		return r;
	req.name = (char *)name;
	return lc_key_call(c, AS "RotateKey", &req.base, out);
}

int
coffer_pin_identity(coffer_client *c, const uint8_t *spki, size_t len)
{
	cf_error_clear();
	if (c == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL client");
	return lc_sessions_pin(lc_client_sessions(c), spki, len);
}

void
coffer_set_session_peer_check(coffer_client *c, int check)
{
	if (c != NULL)
		lc_sessions_set_peer_check(lc_client_sessions(c), check);
}

int
coffer_pin_identity_file(coffer_client *c, const char *path)
{
	uint8_t *der = NULL;
	size_t len = 0;
	int r;

	cf_error_clear();
	if (c == NULL || path == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL client or path");
	if ((r = lc_spki_from_pem_file(path, &der, &len)) != CF_OK)
		return r;
	r = lc_sessions_pin(lc_client_sessions(c), der, len);
	OPENSSL_free(der);
	return r;
}

int
coffer_get_identity(coffer_client *c, struct coffer_bytes *spki, char *fpr, size_t fprlen)
{
	Coffer__V1__GetIdentityRequest req = COFFER__V1__GET_IDENTITY_REQUEST__INIT;
	Coffer__V1__GetIdentityResponse *resp;
	ProtobufCMessage *m = NULL;
	struct coffer_bytes key = { NULL, 0 };
	int r;

	cf_error_clear();
	if (c == NULL || spki == NULL || fpr == NULL || fprlen < CF_SESSION_FPR_LEN + 1)
		return cf_error(CF_E_INVALID_ARG, "NULL argument or fingerprint buffer too short");
	if ((r = lc_rpc(c, "/coffer.v1.SessionService/GetIdentity", &req.base,
	    &coffer__v1__get_identity_response__descriptor, 0, &m)) != CF_OK)
		return r;
	resp = (Coffer__V1__GetIdentityResponse *)m;
	/* Computed here, not taken from the daemon's text. */
	if ((r = bytes_out(&key, &resp->public_key, "identity key")) == CF_OK &&
	    (r = cf_session_fingerprint(key.data, key.len, fpr, fprlen)) != CF_OK)
		coffer_bytes_free(&key);
	if (r == CF_OK)
		*spki = key;
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

int
coffer_health(coffer_client *c, const char *service, enum coffer_serving_status *status)
{
	Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int r;

	cf_error_clear();
	if (c == NULL || status == NULL) {
		r = cf_error(CF_E_INVALID_ARG, "NULL argument");
		goto out;
	}
	req.service = (char *)(service != NULL ? service : "");
	if ((r = lc_rpc(c, HEALTH_CHECK, &req.base,
	    &grpc__health__v1__health_check_response__descriptor, 0, &m)) != CF_OK)
		goto out;
	*status = (enum coffer_serving_status)
	    ((Grpc__Health__V1__HealthCheckResponse *)m)->status;
 out:
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}
