/*
 * test_dispatch — the dispatcher in process, on a throw-away SoftHSM2 token
 * (no gRPC): the method table against the .proto and the handlers, the
 * socket rules, the sealed-only rules, the refusals before a handler runs
 * (each with its gRPC code and exact text), one key-name check, one key
 * lookup and one authorization decision per call, the order of that
 * decision, and the freshness rule of signed messages.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/crypto.h>

#include "cf_count.h"
#include "cf_methods.h"
#include "cf_status.h"
#include "cf_test_session.h"
#include "cf_test_token.h"
#include "coffer/v1/coffer.pb-c.h"
#include "dispatch.h"
#include "grpc/health/v1/health.pb-c.h"
#include "handlers_common.h"
#include "handlers_table.h"
#include "policy.h"

#define PRINCIPAL "tester"
#define STRANGER 4000000u
#define SEALED_HINT ", so it must be sealed in a session (SessionService/OpenSession, then " \
	"SessionService/Call; libcoffer and cofferctl do this for you)"

enum { OK = 0, INVALID_ARGUMENT = 3, PERMISSION_DENIED = 7, RESOURCE_EXHAUSTED = 8,
       FAILED_PRECONDITION = 9, UNIMPLEMENTED = 12, UNAUTHENTICATED = 16 };

static struct cf_test_token tok;
static cf_p11 *p11;
static store *st;
static struct hservices sv;
static struct dcall base = { .sv = &sv };
static dispatch *dsp;

static int
suite_init(void)
{
	struct session_cfg scfg = { .lifetime = 3600, .max_records = 1000, .max_bytes = 1 << 20,
				    .max_per_caller = 4, .max_sessions = 8, .max_pending = 2 };
	struct dispatch_cfg dcfg = { .require_sealed = 0 };
	struct store_key info;
	uint32_t uid = (uint32_t)getuid();
	char dir[400];
	int r;

	if (cf_test_token_create(&tok, "coffer-dispatch") != 0 ||
	    cf_p11_open(&tok.cfg, &p11) != CF_OK)
		return -1;
	snprintf(dir, sizeof(dir), "%s/state", tok.dir);
	base.uid = getuid();
	base.gid = getgid();
	base.pid = getpid();
	sv.window = 300;
	if (mkdir(dir, 0700) != 0 || store_open(dir, &st) != CF_OK ||
	    keyring_open(p11, st, NULL, NULL, NULL, &sv.kr) != CF_OK ||
	    policy_open(st, &sv.pol) != CF_OK || idem_open(st, 3600, NULL, &base.idm) != CF_OK ||
	    nonces_open(dir, 1000, &sv.nn) != CF_OK ||
	    session_mgr_open(p11, &scfg, &sv.sm) != CF_OK || dispatch_new(&dcfg, &dsp) != CF_OK)
		return -1;
	/* sk: any use; verify-only: its own limit refuses Sign; wk: wrapping. */
	if ((r = keyring_create(sv.kr, "sk", CF_KEY_EC_P256, 0, 0, &info)) == CF_OK) {
		keyring_info_free(&info);
		r = keyring_create(sv.kr, "verify-only", CF_KEY_EC_P256,
				   CF_OP_BIT(CF_OP_VERIFY), 0, &info);
	}
	if (r == CF_OK) {
		keyring_info_free(&info);
		r = keyring_create(sv.kr, "wk", CF_KEY_AES_256, 0, 0, &info);
	}
	if (r == CF_OK) {
		keyring_info_free(&info);
		r = policy_create(sv.pol, PRINCIPAL, &uid, 1, NULL, 0, NULL);
	}
	if (r == CF_OK)
		r = policy_grant(sv.pol, PRINCIPAL, "*", CF_OPS_ALL, NULL);
	return r == CF_OK ? 0 : -1;
}

static int
suite_clean(void)
{
	dispatch_free(dsp);
	session_mgr_close(sv.sm);
	nonces_close(sv.nn);
	idem_close(base.idm);
	policy_close(sv.pol);
	keyring_close(sv.kr);
	store_close(st);
	cf_p11_close(p11);
	cf_test_token_destroy(&tok);
	return 0;
}

/* Method id with request bytes `in` through dispatcher d as caller h: the
 * gRPC code, the message in text; the response (wiped) is dropped. */
static unsigned
call_raw(const dispatch *d, const struct dcall *h, enum cf_method_id id, const uint8_t *in,
	 size_t inlen, char *text, size_t textlen)
{
	uint8_t *out = NULL;
	size_t outlen = 0;
	uint32_t retry;
	unsigned code = dispatch_call(d, (size_t)id, h, in, inlen, &out, &outlen, text, textlen,
				      &retry);

	if (out != NULL)
		OPENSSL_cleanse(out, outlen);
	free(out);
	return code;
}

static unsigned
call(const struct dcall *h, enum cf_method_id id, const ProtobufCMessage *req, char *text,
     size_t textlen)
{
	size_t len = protobuf_c_message_get_packed_size(req);
	uint8_t *in = malloc(len ? len : 1);
	unsigned code;

	CU_ASSERT_PTR_NOT_NULL_FATAL(in);
	protobuf_c_message_pack(req, in);
	code = call_raw(dsp, h, id, in, len, text, textlen);
	free(in);
	return code;
}

/* The call is refused with `code` and exactly `text`. */
#define REFUSED(h, id, req, want_code, want_text)                                              \
	do {                                                                                   \
		char t_[512];                                                                  \
		CU_ASSERT_EQUAL(call((h), (id), &(req).base, t_, sizeof(t_)), (want_code));    \
		CU_ASSERT_STRING_EQUAL(t_, (want_text));                                       \
	} while (0)

static Coffer__V1__SignRequest
sign_req(const char *key)
{
	Coffer__V1__SignRequest r = COFFER__V1__SIGN_REQUEST__INIT;

	r.key = (char *)key;
	r.message.data = (uint8_t *)"m";
	r.message.len = 1;
	return r;
}

/* ---- the method table ---- */

static const ProtobufCServiceDescriptor *const services[] = {
	&coffer__v1__key_service__descriptor, &coffer__v1__admin_service__descriptor,
	&coffer__v1__session_service__descriptor, &grpc__health__v1__health__descriptor,
};

/* A single bytes field of d named `name`? */
static int
has_bytes(const ProtobufCMessageDescriptor *d, const char *name)
{
	const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(d,
											 name);

	return f != NULL && f->type == PROTOBUF_C_TYPE_BYTES;
}

/* Every method of the .proto has its entry, its secrets flagged. */
static void
test_table_covers_proto(void)
{
	static const char *const secret_names[] = { "plaintext", "material", "secret" };
	unsigned n = 0;
	char path[200];

	for (size_t s = 0; s < sizeof(services) / sizeof(services[0]); s++)
		for (unsigned i = 0; i < services[s]->n_methods; i++) {
			const ProtobufCMethodDescriptor *md = &services[s]->methods[i];
			const struct cf_method *m;

			n++;
			snprintf(path, sizeof(path), "/%s/%s", services[s]->name, md->name);
			m = cf_method_by_path(path);
			CU_ASSERT_PTR_NOT_NULL(m);
			if (m == NULL) {
				fprintf(stderr, "no method table entry for %s\n", path);
				continue;
			}
			CU_ASSERT_STRING_EQUAL(m->service, services[s]->name);
			CU_ASSERT_STRING_EQUAL(m->name, md->name);
			/* A request or response field holding a secret makes
			 * the method sealed-only, and is named as such. */
			for (size_t k = 0; k < 3; k++) {
				if (has_bytes(md->input, secret_names[k])) {
					CU_ASSERT(m->flags & CF_MF_SECRET);
					CU_ASSERT(m->secret_in != NULL &&
						  strcmp(m->secret_in, secret_names[k]) == 0);
				}
				if (has_bytes(md->output, secret_names[k])) {
					CU_ASSERT(m->flags & CF_MF_SECRET);
					CU_ASSERT(m->secret_out != NULL &&
						  strcmp(m->secret_out, secret_names[k]) == 0);
				}
			}
		}
	CU_ASSERT_EQUAL(n, CF_METHOD__COUNT);
}

/* Every entry is a method of the .proto, once, and has a handler. */
static void
test_table_entries(void)
{
	char path[200];

	for (int id = 0; id < CF_METHOD__COUNT; id++) {
		const struct cf_method *m = &cf_methods[id];
		const ProtobufCMethodDescriptor *md = NULL;
		int bound = 0;

		CU_ASSERT_PTR_NOT_NULL_FATAL(m->path);
		for (size_t s = 0; s < sizeof(services) / sizeof(services[0]); s++)
			if (strcmp(services[s]->name, m->service) == 0)
				md = protobuf_c_service_descriptor_get_method_by_name(services[s],
										     m->name);
		CU_ASSERT_PTR_NOT_NULL(md);
		if (md == NULL)
			fprintf(stderr, "method table entry %s is no method\n", m->path);
		snprintf(path, sizeof(path), "/%s/%s", m->service, m->name);
		CU_ASSERT_STRING_EQUAL(m->path, path);
		CU_ASSERT_PTR_EQUAL(cf_method_by_path(m->path), m);   /* paths are unique */
		CU_ASSERT(m->socket >= CF_SOCK_SERVICE && m->socket <= CF_SOCK_BOTH);
		/* Exactly one handler file binds it; SessionService/Call is dispatch's. */
		for (const struct hservice *const *s = handlers_services; *s != NULL; s++)
			bound += (*s)->fns[id] != NULL;
		CU_ASSERT_EQUAL(bound, id == CF_SS_CALL ? 0 : 1);
		if (bound != (id == CF_SS_CALL ? 0 : 1))
			fprintf(stderr, "%s has %d handlers\n", m->path, bound);
		CU_ASSERT_EQUAL(dispatch_path(dsp, (size_t)id), m->path);
	}
	CU_ASSERT_EQUAL(dispatch_count(dsp), CF_METHOD__COUNT);
	/* The operation numbering is coffer.v1.Operation's. */
	CU_ASSERT_EQUAL(CF_OP_SIGN, COFFER__V1__OPERATION__OP_SIGN);
	CU_ASSERT_EQUAL(CF_OP_VERIFY_MAC, COFFER__V1__OPERATION__OP_VERIFY_MAC);
	CU_ASSERT_EQUAL(CF_OP_GET_PUBLIC_KEY, COFFER__V1__OPERATION__OP_GET_PUBLIC_KEY);
	CU_ASSERT_EQUAL(CF_OP__COUNT, coffer__v1__operation__descriptor.n_values);
}

/* ---- refusals before any handler runs ---- */

static void
test_socket_rules(void)
{
	Coffer__V1__ListPrincipalsRequest lp = COFFER__V1__LIST_PRINCIPALS_REQUEST__INIT;
	Coffer__V1__SignRequest sr = sign_req("sk");
	struct dcall h = base;

	REFUSED(&h, CF_AS_LIST_PRINCIPALS, lp, UNIMPLEMENTED,
		"/coffer.v1.AdminService/ListPrincipals is not served on the service socket");
	h.admin = 1;
	REFUSED(&h, CF_KS_SIGN, sr, UNIMPLEMENTED,
		"/coffer.v1.KeyService/Sign is not served on the admin socket");
	CU_ASSERT_FALSE(cf_service_served("coffer.v1.KeyService", CF_SOCK_ADMIN));
	CU_ASSERT(cf_service_served("coffer.v1.SessionService", CF_SOCK_ADMIN));
	CU_ASSERT(cf_service_served("grpc.health.v1.Health", CF_SOCK_SERVICE));
}

static void
test_sealed_only_unsealed(void)
{
	Coffer__V1__WrapRequest w = COFFER__V1__WRAP_REQUEST__INIT;
	Coffer__V1__UnwrapRequest u = COFFER__V1__UNWRAP_REQUEST__INIT;
	Coffer__V1__GenerateDataKeyRequest g = COFFER__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	Coffer__V1__ImportKeyRequest ik = COFFER__V1__IMPORT_KEY_REQUEST__INIT;
	Coffer__V1__CloseSessionRequest cs = COFFER__V1__CLOSE_SESSION_REQUEST__INIT;
	struct dcall h = base;
	char t[512];

	w.key = u.key = g.key = "wk";
	w.plaintext.data = (uint8_t *)"pt";
	w.plaintext.len = 2;
	REFUSED(&h, CF_KS_WRAP, w, FAILED_PRECONDITION, "Wrap takes plaintext" SEALED_HINT);
	REFUSED(&h, CF_KS_UNWRAP, u, FAILED_PRECONDITION, "Unwrap returns plaintext" SEALED_HINT);
	g.include_plaintext = 1;
	REFUSED(&h, CF_KS_GENERATE_DATA_KEY, g, FAILED_PRECONDITION,
		"GenerateDataKey with include_plaintext returns the data key" SEALED_HINT);
	/* Without the plaintext it carries no secret. */
	g.include_plaintext = 0;
	CU_ASSERT_EQUAL(call(&h, CF_KS_GENERATE_DATA_KEY, &g.base, t, sizeof(t)), OK);
	REFUSED(&h, CF_SS_CLOSE_SESSION, cs, FAILED_PRECONDITION,
		"/coffer.v1.SessionService/CloseSession is only valid inside a session");
	/* session.unsealed_secrets lets them through. */
	h.unsealed_secrets = 1;
	CU_ASSERT_EQUAL(call(&h, CF_KS_WRAP, &w.base, t, sizeof(t)), OK);
	h.unsealed_secrets = 0;
	h.admin = 1;
	ik.name = "imported";
	ik.type = COFFER__V1__KEY_TYPE__AES_256;
	REFUSED(&h, CF_AS_IMPORT_KEY, ik, FAILED_PRECONDITION,
		"ImportKey carries key material" SEALED_HINT);
}

/* inner through SessionService/Call in a new session of the caller: the
 * inner code and message. */
static unsigned
sealed_call(const struct dcall *h, enum cf_method_id inner, const ProtobufCMessage *req,
	    char *text, size_t textlen)
{
	Coffer__V1__SealedCall c = COFFER__V1__SEALED_CALL__INIT;
	Coffer__V1__SealedReply *reply;
	Coffer__V1__SealedResult *res;
	cf_session_keys *keys = NULL;
	uint8_t id[CF_SESSION_ID_LEN], *in = NULL, *out = NULL, *pt = NULL;
	size_t len = protobuf_c_message_get_packed_size(req), inlen, outlen = 0, ptlen = 0;
	cf_buf *rec = cf_buf_new(len + CF_SESSION_TAG_LEN);
	uint8_t *body = malloc(len ? len : 1);
	const char *path = cf_methods[inner].path;
	uint32_t retry;
	unsigned code = 99;

	CU_ASSERT_FATAL(rec != NULL && body != NULL);
	protobuf_c_message_pack(req, body);
	CU_ASSERT_EQUAL_FATAL(cf_test_session_up(h->sv->sm, h->uid, h->gid, id, &keys), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_session_seal(keys, CF_SESSION_C2S, 0, path, body, len, rec),
			      CF_OK);
	c.session_id.data = id;
	c.session_id.len = sizeof(id);
	c.method = (char *)path;
	c.record.data = (uint8_t *)cf_buf_peek(rec);
	c.record.len = cf_buf_len(rec);
	inlen = protobuf_c_message_get_packed_size(&c.base);
	CU_ASSERT_FATAL((in = malloc(inlen)) != NULL);
	protobuf_c_message_pack(&c.base, in);
	CU_ASSERT_EQUAL_FATAL(dispatch_call(dsp, CF_SS_CALL, h, in, inlen, &out, &outlen, text,
					    textlen, &retry), OK);
	reply = coffer__v1__sealed_reply__unpack(NULL, outlen, out);
	CU_ASSERT_PTR_NOT_NULL_FATAL(reply);
	CU_ASSERT_EQUAL_FATAL(cf_session_open(keys, CF_SESSION_S2C, 0, path, reply->record.data,
					      reply->record.len, &pt, &ptlen), CF_OK);
	if ((res = coffer__v1__sealed_result__unpack(NULL, ptlen, pt)) != NULL) {
		code = res->code;
		snprintf(text, textlen, "%s", res->message);
		coffer__v1__sealed_result__free_unpacked(res, NULL);
	}
	cf_session_plain_free(pt, ptlen);
	coffer__v1__sealed_reply__free_unpacked(reply, NULL);
	OPENSSL_cleanse(out, outlen);
	free(out);
	free(in);
	free(body);
	cf_buf_free(rec);
	cf_session_keys_free(keys);
	return code;
}

static void
test_sealed_rules(void)
{
	Coffer__V1__OpenSessionRequest os = COFFER__V1__OPEN_SESSION_REQUEST__INIT;
	Coffer__V1__WrapRequest w = COFFER__V1__WRAP_REQUEST__INIT;
	Coffer__V1__CloseSessionRequest cs = COFFER__V1__CLOSE_SESSION_REQUEST__INIT;
	struct dcall h = base;
	char t[512];

	CU_ASSERT_EQUAL(sealed_call(&h, CF_SS_OPEN_SESSION, &os.base, t, sizeof(t)),
			FAILED_PRECONDITION);
	CU_ASSERT_STRING_EQUAL(t, "/coffer.v1.SessionService/OpenSession cannot be called "
			       "inside a session");
	w.key = "wk";
	w.plaintext.data = (uint8_t *)"pt";
	w.plaintext.len = 2;
	CU_ASSERT_EQUAL(sealed_call(&h, CF_KS_WRAP, &w.base, t, sizeof(t)), OK);
	CU_ASSERT_EQUAL(sealed_call(&h, CF_SS_CLOSE_SESSION, &cs.base, t, sizeof(t)), OK);
}

static void
test_refusals(void)
{
	Coffer__V1__RotateKeyRequest rk = COFFER__V1__ROTATE_KEY_REQUEST__INIT;
	Coffer__V1__SignRequest sr = sign_req("sk");
	struct dispatch_cfg strict = { .require_sealed = 1 };
	static const uint8_t wrong_wire[] = { 0x08, 0x01 };   /* the key (a string) as a varint */
	dispatch *sealed_only = NULL;
	struct dcall h = base;
	char t[512];

	/* A malformed idempotency key. */
	h.admin = 1;
	h.idem_bad = 1;
	rk.name = "sk";
	REFUSED(&h, CF_AS_ROTATE_KEY, rk, INVALID_ARGUMENT,
		"idempotency-key must be 8..128 characters of A-Z a-z 0-9 . _ : -");
	/* An unknown principal. */
	h = base;
	h.uid = h.gid = STRANGER;
	REFUSED(&h, CF_KS_SIGN, sr, UNAUTHENTICATED,
		"no principal for uid 4000000 gid 4000000; an administrator adds one with "
		"`cofferctl principal create NAME --uid 4000000`");
	/* A request that is not a valid message. */
	h = base;
	CU_ASSERT_EQUAL(call_raw(dsp, &h, CF_KS_SIGN, wrong_wire, sizeof(wrong_wire), t,
				 sizeof(t)), INVALID_ARGUMENT);
	CU_ASSERT_STRING_EQUAL(t, "request is not a valid coffer.v1.SignRequest message");
	/* session.require_sealed: KeyService only inside a session. */
	CU_ASSERT_EQUAL_FATAL(dispatch_new(&strict, &sealed_only), CF_OK);
	CU_ASSERT_EQUAL(call_raw(sealed_only, &h, CF_KS_SIGN, (const uint8_t *)"", 0, t,
				 sizeof(t)), FAILED_PRECONDITION);
	CU_ASSERT_STRING_EQUAL(t, "this daemon requires every KeyService call to be sealed in a "
			       "session (session.require_sealed)");
	dispatch_free(sealed_only);
	/* Key names: each socket's words. */
	sr.key = "";
	REFUSED(&h, CF_KS_SIGN, sr, INVALID_ARGUMENT, "key name is empty");
	sr.key = "Bad";
	REFUSED(&h, CF_KS_SIGN, sr, INVALID_ARGUMENT,
		"key name must start with a lower-case letter or digit");
	sr.key = "nokey";
	REFUSED(&h, CF_KS_SIGN, sr, 5, "key nokey does not exist");
}

/* ---- one Sign: one name check, one key lookup, one authorization ---- */

static void
test_sign_counts(void)
{
	Coffer__V1__SignRequest sr = sign_req("sk");
	unsigned long before[CF_COUNT__N];
	struct dcall h = base;
	char t[512];

	memcpy(before, cf_counts, sizeof(before));
	CU_ASSERT_EQUAL(call(&h, CF_KS_SIGN, &sr.base, t, sizeof(t)), OK);
	CU_ASSERT_EQUAL(cf_counts[CF_COUNT_KEY_NAME_CHECK] - before[CF_COUNT_KEY_NAME_CHECK], 1);
	CU_ASSERT_EQUAL(cf_counts[CF_COUNT_KEY_LOOKUP] - before[CF_COUNT_KEY_LOOKUP], 1);
	CU_ASSERT_EQUAL(cf_counts[CF_COUNT_AUTHORIZE] - before[CF_COUNT_AUTHORIZE], 1);
	/* Sealed, the same: the envelope is not authorized on its own. */
	memcpy(before, cf_counts, sizeof(before));
	CU_ASSERT_EQUAL(sealed_call(&h, CF_KS_SIGN, &sr.base, t, sizeof(t)), OK);
	CU_ASSERT_EQUAL(cf_counts[CF_COUNT_KEY_NAME_CHECK] - before[CF_COUNT_KEY_NAME_CHECK], 1);
	CU_ASSERT_EQUAL(cf_counts[CF_COUNT_KEY_LOOKUP] - before[CF_COUNT_KEY_LOOKUP], 1);
	CU_ASSERT_EQUAL(cf_counts[CF_COUNT_AUTHORIZE] - before[CF_COUNT_AUTHORIZE], 1);
}

/* Grants, the key's own limit, then the rate limit: a call the key refuses
 * takes no token. */
static void
test_authorization_order(void)
{
	Coffer__V1__SignRequest sr = sign_req("verify-only");
	uint32_t uid = STRANGER + 1;
	struct dcall h = base;

	CU_ASSERT_EQUAL_FATAL(policy_create(sv.pol, "limited", &uid, 1, NULL, 0, NULL), CF_OK);
	CU_ASSERT_EQUAL_FATAL(policy_grant(sv.pol, "limited", "verify-only", CF_OPS_ALL, NULL),
			      CF_OK);
	/* One token, refilled every 1000 s. */
	CU_ASSERT_EQUAL_FATAL(policy_set_limit(sv.pol, "limited", CF_OP_NONE, 0.001, 1, NULL),
			      CF_OK);
	h.uid = h.gid = uid;
	/* No grant for sk: refused before the key's limit and the rate limit. */
	sr.key = "sk";
	REFUSED(&h, CF_KS_SIGN, sr, PERMISSION_DENIED,
		"principal limited may not sign with key sk (no grant)");
	/* Granted, but the key's own limit refuses: twice, and no token is spent. */
	sr.key = "verify-only";
	REFUSED(&h, CF_KS_SIGN, sr, PERMISSION_DENIED,
		"key verify-only does not allow sign (its own limit)");
	REFUSED(&h, CF_KS_SIGN, sr, PERMISSION_DENIED,
		"key verify-only does not allow sign (its own limit)");
	CU_ASSERT_EQUAL_FATAL(policy_grant(sv.pol, "limited", "sk", CF_OPS_ALL, NULL), CF_OK);
	{
		char t[512];

		/* The one token is still there for a call that is allowed. */
		sr.key = "sk";
		CU_ASSERT_EQUAL(call(&h, CF_KS_SIGN, &sr.base, t, sizeof(t)), OK);
		CU_ASSERT_EQUAL(call(&h, CF_KS_SIGN, &sr.base, t, sizeof(t)), RESOURCE_EXHAUSTED);
		/* (its limit is of all operations: the refusal names none) */
		CU_ASSERT_PTR_NOT_NULL(strstr(t, "rate limit of principal limited exceeded"));
	}
	CU_ASSERT_EQUAL(policy_delete(sv.pol, "limited", 0, NULL), CF_OK);
}

/* ---- the freshness rule of signed messages ---- */

static int verified;

static int
verify_ok(void *arg)
{
	(void)arg;
	verified++;
	return CF_OK;
}

static int
verify_bad(void *arg)
{
	(void)arg;
	verified++;
	return cf_error(CF_E_BAD_SIGNATURE, "forged");
}

static void
test_freshness(void)
{
	struct nonce_claim c = { .scope = "k", .nonce = "n1", .window = 300, .ahead = 1 };
	enum nonce_verdict v;
	int64_t now = 1800000000;

	verified = 0;
	c.timestamp = now - 301;
	CU_ASSERT_EQUAL(nonces_check(sv.nn, &c, now, verify_ok, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_EXPIRED);
	c.timestamp = now + 2;
	CU_ASSERT_EQUAL(nonces_check(sv.nn, &c, now, verify_ok, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_AHEAD);
	CU_ASSERT_EQUAL(verified, 0);   /* stale or early: nothing verified */
	/* A forged message does not use up its nonce. */
	c.timestamp = now - 300;
	CU_ASSERT_EQUAL(nonces_check(sv.nn, &c, now, verify_bad, NULL, &v), CF_E_BAD_SIGNATURE);
	c.timestamp = now + 1;
	CU_ASSERT_EQUAL(nonces_check(sv.nn, &c, now, verify_ok, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_FRESH);
	CU_ASSERT_EQUAL(nonces_check(sv.nn, &c, now, verify_ok, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_REPLAYED);
	/* Another scope has its own nonces. */
	c.scope = "other";
	CU_ASSERT_EQUAL(nonces_check(sv.nn, &c, now, verify_ok, NULL, &v), CF_OK);
	CU_ASSERT_EQUAL(v, NONCE_FRESH);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "every .proto method has a table entry", test_table_covers_proto },
		{ "every table entry is a method with one handler", test_table_entries },
		{ "socket rules", test_socket_rules },
		{ "secrets only sealed; CloseSession only sealed", test_sealed_only_unsealed },
		{ "inside a session: OpenSession refused, Wrap and CloseSession run",
		  test_sealed_rules },
		{ "idempotency key, principal, message, require_sealed, key names",
		  test_refusals },
		{ "one Sign: one name check, one key lookup, one authorization",
		  test_sign_counts },
		{ "grants, the key's own limit, then the rate limit", test_authorization_order },
		{ "time window and nonce, written once", test_freshness },
		{ NULL, NULL },
	};

	return cf_test_main("dispatch", suite_init, suite_clean, cases);
}
