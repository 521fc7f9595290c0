/*
 * fuzz_dispatch.c — raw request bytes into the daemon's dispatcher for every
 * method (daemon/dispatch.c: decode, policy, handlers, audit, encode), in
 * process, against a real SoftHSM2 token with keys of every family, a real
 * state store, audit trail, session manager, API keys, idempotency records
 * and nonce log, wired as cofferd wires them (daemon/cofferd.c).
 *
 * Input: byte 0 = method index (mod dispatch_count()); byte 1 = flags:
 *   0x01  the call arrives on the admin socket (else the service socket)
 *   0x02  sealed: the body is sealed in a live session and sent through
 *         SessionService/Call as the inner call to the chosen method
 *   0x04  an authorization header follows: a length byte, then its bytes
 *   0x08  an idempotency key follows: a length byte, then its bytes
 *   0x10  the principal must sign its calls (requests.require_api_key)
 *   0x20  session.unsealed_secrets
 *   0x40  the caller is a uid no principal holds
 * the rest is the request message.
 *
 * State grows on disk (keys, audit records, nonces, idempotency records:
 * what a real daemon keeps); the caller's principal is recreated with every
 * grant every 256 inputs, since admin calls may revoke or delete it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "coffer/v1/coffer.pb-c.h"

#include "apikeys.h"
#include "audit.h"
#include "cf_log.h"
#include "cf_session.h"
#include "cf_status.h"
#include "cf_test_session.h"
#include "dispatch.h"
#include "fuzz_token.h"
#include "handlers.h"
#include "idempotency.h"
#include "keyring.h"
#include "nonces.h"
#include "policy.h"
#include "session.h"
#include "store.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define PRINCIPAL "fuzzer"
#define STRANGER_UID 4000000u

static struct hservices sv;
static struct dcall base = { .sv = &sv };
static dispatch *dsp;
static policy *pol;
static size_t call_idx = (size_t)-1;
static uint32_t uid, gid;

/* The live session of sealed inputs (client side). */
static struct {
	int up;
	uint8_t id[CF_SESSION_ID_LEN];
	uint64_t seq;
	cf_session_keys *keys;
} sess;

static void
die(const char *what, int r)
{
	fprintf(stderr, "fuzz_dispatch: %s: %s: %s\n", what, cf_status_name(r), cf_error_detail());
	exit(1);
}

static void
principal_reset(void)
{
	int r;

	(void)policy_delete(pol, PRINCIPAL, 0, NULL);
	if ((r = policy_create(pol, PRINCIPAL, &uid, 1, NULL, 0, NULL)) != CF_OK)
		die("policy_create", r);
	if ((r = policy_grant(pol, PRINCIPAL, "*", CF_OPS_ALL, NULL)) != CF_OK)
		die("policy_grant", r);
}

static void
session_drop(void)
{
	cf_session_keys_free(sess.keys);
	memset(&sess, 0, sizeof(sess));
}

static int
session_up(void)
{
	int r;

	session_drop();
	if ((r = cf_test_session_up(sv.sm, uid, gid, sess.id, &sess.keys)) == CF_OK)
		sess.up = 1;
	return r;
}

static cf_p11 *p11;
static store *st;

/* At exit, before the token module's own destructors (registered earlier,
 * so they run later): stop the audit writer thread, which would otherwise
 * still use the module while it is torn down, then close the rest as
 * cofferd does. */
static void
teardown(void)
{
	session_drop();
	dispatch_free(dsp);
	session_mgr_close(sv.sm);
	audit_close(sv.au);
	policy_close(pol);
	apikeys_close(sv.ak);
	idem_close(base.idm);
	nonces_close(sv.nn);
	keyring_close(sv.kr);
	store_close(st);
	cf_p11_close(p11);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const struct {
		const char *name;
		enum cf_key_type type;
	} keys[] = {
		{ "fz-ec256", CF_KEY_EC_P256 },     { "fz-ec384", CF_KEY_EC_P384 },
		{ "fz-ed25519", CF_KEY_ED25519 },   { "fz-rsa2048", CF_KEY_RSA_2048 },
		{ "fz-hmac256", CF_KEY_HMAC_SHA256 }, { "fz-hmac384", CF_KEY_HMAC_SHA384 },
		{ "fz-hmac512", CF_KEY_HMAC_SHA512 }, { "fz-aes", CF_KEY_AES_256 },
	};
	struct session_cfg scfg = { .lifetime = 3600, .max_records = 1u << 20,
				    .max_bytes = 1u << 30, .max_per_caller = 8,
				    .max_sessions = 64, .max_pending = 4 };
	struct audit_cfg acfg = { .fail_open = 0, .max_wait_ms = 5000, .durability_os = 1 };
	struct dispatch_cfg dcfg = { .require_sealed = 0 };
	struct cf_test_token *tok;
	struct store_key info;
	char state[400];
	int r;

	(void)argc;
	(void)argv;
	/* Refusals and failures are logged: thousands a second would be noise. */
	cf_log_init("fuzz_dispatch", getenv("FUZZ_LOG") ? CF_LOG_DEBUG : CF_LOG_ERROR);
	p11 = fuzz_token_open("coffer-fuzz-dispatch", &tok);
	snprintf(state, sizeof(state), "%s/state", tok->dir);
	if (mkdir(state, 0700) != 0)
		die("mkdir state", CF_E_IO);
	uid = (uint32_t)getuid();
	gid = (uint32_t)getgid();
	base.uid = uid;
	base.gid = gid;
	base.pid = getpid();
	sv.window = 300;
	if ((r = store_open(state, &st)) != CF_OK)
		die("store_open", r);
	if ((r = keyring_open(p11, st, NULL, NULL, NULL, &sv.kr)) != CF_OK)
		die("keyring_open", r);
	if ((r = policy_open(st, &pol)) != CF_OK)
		die("policy_open", r);
	sv.pol = pol;
	if ((r = apikeys_open(p11, st, NULL, NULL, &sv.ak)) != CF_OK)
		die("apikeys_open", r);
	if ((r = idem_open(st, 3600, p11, &base.idm)) != CF_OK)
		die("idem_open", r);
	if ((r = nonces_open(state, 100000, &sv.nn)) != CF_OK)
		die("nonces_open", r);
	if ((r = session_mgr_open(p11, &scfg, &sv.sm)) != CF_OK)
		die("session_mgr_open", r);
	if ((r = audit_open(state, p11, st, &acfg, &sv.au)) != CF_OK)
		die("audit_open", r);
	if ((r = dispatch_new(&dcfg, &dsp)) != CF_OK)
		die("dispatch_new", r);
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		if ((r = keyring_create(sv.kr, keys[i].name, keys[i].type, 0, 0,
					&info)) != CF_OK)
			die(keys[i].name, r);
		keyring_info_free(&info);
	}
	principal_reset();
	for (size_t i = 0; i < dispatch_count(dsp); i++)
		if (strcmp(dispatch_path(dsp, i), "/coffer.v1.SessionService/Call") == 0)
			call_idx = i;
	if (call_idx == (size_t)-1)
		die("no SessionService/Call in the method table", CF_E_INTERNAL);
	atexit(teardown);
	return 0;
}

/* Wipe and free a response. */
static void
drop(uint8_t *out, size_t len)
{
	if (out != NULL)
		OPENSSL_cleanse(out, len);
	free(out);
}

/* The body sealed for method i, sent as SessionService/Call. */
static void
sealed(const struct dcall *h, size_t i, const uint8_t *body, size_t len)
{
	Coffer__V1__SealedCall c = COFFER__V1__SEALED_CALL__INIT;
	const char *path = dispatch_path(dsp, i);
	cf_buf *rec = cf_buf_new(len + CF_SESSION_TAG_LEN + 16);
	uint8_t *packed = NULL, *out = NULL;
	size_t plen, outlen = 0;
	uint32_t retry = 0;
	char msg[512];
	unsigned code;

	if (rec == NULL)
		abort();
	if (!sess.up && session_up() != CF_OK)
		goto out;
	if (cf_session_seal(sess.keys, CF_SESSION_C2S, sess.seq, path, body, len, rec) != CF_OK)
		goto out;
	c.session_id.data = sess.id;
	c.session_id.len = sizeof(sess.id);
	c.sequence = sess.seq++;
	c.method = (char *)path;
	c.record.data = (uint8_t *)cf_buf_peek(rec);
	c.record.len = cf_buf_len(rec);
	plen = coffer__v1__sealed_call__get_packed_size(&c);
	if ((packed = malloc(plen ? plen : 1)) == NULL)
		abort();
	coffer__v1__sealed_call__pack(&c, packed);
	code = dispatch_call(dsp, call_idx, h, packed, plen, &out, &outlen, msg, sizeof(msg),
			     &retry);
	/* The session may have ended (an inner CloseSession, eviction by
	 * fuzzed OpenSession calls): start a new one next time. */
	if (code != 0)
		session_drop();
out:
	drop(out, outlen);
	free(packed);
	cf_buf_free(rec);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned long n;
	struct dcall h = base;
	const uint8_t *p = data, *end = data + size;
	uint8_t *out = NULL, *body;
	char authz[256];
	size_t i, outlen = 0, blen;
	uint32_t retry = 0;
	char msg[512];
	uint8_t flags;

	if (size < 2)
		return 0;
	if (++n % 256 == 0)
		principal_reset();
	i = p[0] % dispatch_count(dsp);
	flags = p[1];
	p += 2;
	h.admin = (flags & 0x01) != 0;
	if (flags & 0x04 && p < end) {
		size_t k = *p++;

		if (k > (size_t)(end - p))
			k = (size_t)(end - p);
		memcpy(authz, p, k);
		h.authz = authz;
		h.authz_len = k;
		h.authz_n = 1;
		p += k;
	}
	if (flags & 0x08 && p < end) {
		size_t k = *p++;

		if (k > (size_t)(end - p))
			k = (size_t)(end - p);
		h.idem_bad = k > STORE_IDEM_KEY_MAX;
		if (!h.idem_bad) {
			memcpy(h.idem_key, p, k);
			h.idem_key[k] = '\0';
			h.idem_bad = idem_key_check(h.idem_key) != CF_OK;
		}
		p += k;
	}
	h.require_api_key = (flags & 0x10) != 0;
	h.unsealed_secrets = (flags & 0x20) != 0;
	if (flags & 0x40)
		h.uid = h.gid = STRANGER_UID;
	snprintf(h.request_id, sizeof(h.request_id), "fuzz-%lx", n);
	/* An exact-size copy: ASan sees any read past the request. */
	blen = (size_t)(end - p);
	if ((body = malloc(blen ? blen : 1)) == NULL)
		abort();
	memcpy(body, p, blen);
	if ((flags & 0x02) && !h.admin) {
		sealed(&h, i, body, blen);
	} else {
		(void)dispatch_call(dsp, i, &h, body, blen, &out, &outlen, msg, sizeof(msg),
				    &retry);
		drop(out, outlen);
	}
	free(body);
	return 0;
}
