/*
 * test_session — sealed sessions end to end through libcoffer, and the
 * shared record crypto (cf_session) on its own:
 *
 *   - the identity the daemon serves is the EC P-256 key inside its token;
 *   - Wrap/Unwrap/GenerateDataKey/ImportKey through a pinned client;
 *   - a daemon with another identity than the pinned one is refused, and
 *     nothing is released; no pin at all is a clear precondition error;
 *   - sessions are replaced before their record limit and lifetime, and a
 *     session lost in a daemon restart is replaced transparently;
 *   - require_sealed with COFFER_CONNECT_SEAL_ALL;
 *   - records: tampered, truncated, reflected (other direction), replayed
 *     under another sequence number, moved to another session or method —
 *     each fails to open and releases nothing; sealed and opened in place
 *     the same, a failed in-place open leaves no plaintext.
 *
 * Attacks on the wire protocol against the daemon itself are in
 * test_session_grpc.py (an independent Python caller).
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "cf_p11.h"
#include "cf_session.h"
#include "cf_test_token.h"
#include "cf_time.h"
#include "coffer.h"

static struct cf_test_token tok_a, tok_b;
static struct cf_test_daemon dmn_a, dmn_b;
static struct coffer_bytes id_a;

static int
start_on(struct cf_test_token *t, struct cf_test_daemon *d, const char *const *extra)
{
	setenv("SOFTHSM2_CONF", t->conf, 1);
	return cf_test_daemon_start(t, d, extra);
}

static int
suite_init(void)
{
	/* B: tight limits and every KeyService call sealed. */
	static char conf[400];
	const char *b_args[] = { "--config", conf, NULL };
	FILE *f;

	if (cf_test_token_create(&tok_a, "coffer-sess-a") != 0 ||
	    start_on(&tok_a, &dmn_a, NULL) != 0 ||
	    cf_test_token_create(&tok_b, "coffer-sess-b") != 0)
		return -1;
	snprintf(conf, sizeof(conf), "%s/b.conf", tok_b.dir);
	if ((f = fopen(conf, "w")) == NULL)
		return -1;
	fprintf(f, "[session]\nmax_records = 3\nlifetime = 2\nrequire_sealed = true\n");
	fclose(f);
	return start_on(&tok_b, &dmn_b, b_args);
}

static int
suite_clean(void)
{
	coffer_bytes_free(&id_a);
	if (dmn_a.pid > 0 && cf_test_daemon_stop(&dmn_a) != 0)
		fprintf(stderr, "cofferd A did not exit 0\n");
	if (dmn_b.pid > 0 && cf_test_daemon_stop(&dmn_b) != 0)
		fprintf(stderr, "cofferd B did not exit 0\n");
	cf_test_token_destroy(&tok_a);
	cf_test_token_destroy(&tok_b);
	return 0;
}

static coffer_client *
client(const struct cf_test_daemon *d, int admin, unsigned flags, const struct coffer_bytes *pin)
{
	coffer_client *c = NULL;

	if (coffer_connect(admin ? d->admin : d->service, flags | (admin ? COFFER_CONNECT_ADMIN : 0),
			   &c) != COFFER_OK)
		return NULL;
	if (pin != NULL && coffer_pin_identity(c, pin->data, pin->len) != COFFER_OK) {
		coffer_close(c);
		return NULL;
	}
	return c;
}

static void
test_identity_is_the_token_key(void)
{
	coffer_client *c = client(&dmn_a, 1, 0, NULL);
	struct coffer_bytes svc_id = { NULL, 0 };
	char fpr[80], fpr2[80], want[80];
	cf_p11 *p11 = NULL;
	cf_p11_key *k = NULL;
	cf_buf *der = cf_buf_new(512);

	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	CHECK_COFFER(coffer_get_identity(c, &id_a, fpr, sizeof(fpr)));
	coffer_close(c);
	/* The same answer on the service socket. */
	CU_ASSERT_PTR_NOT_NULL_FATAL(c = client(&dmn_a, 0, 0, NULL));
	CHECK_COFFER(coffer_get_identity(c, &svc_id, fpr2, sizeof(fpr2)));
	CU_ASSERT_STRING_EQUAL(fpr, fpr2);
	CU_ASSERT(svc_id.len == id_a.len && memcmp(svc_id.data, id_a.data, id_a.len) == 0);
	coffer_bytes_free(&svc_id);
	coffer_close(c);
	/* Read the token directly: the daemon's identity is its token object. */
	setenv("SOFTHSM2_CONF", tok_a.conf, 1);
	CU_ASSERT_EQUAL_FATAL(cf_p11_open(&tok_a.cfg, &p11), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_p11_key_open(p11, "coffer.identity", 1, &k), CF_OK);
	CU_ASSERT_EQUAL(cf_p11_key_type(k), CF_KEY_EC_P256);
	CU_ASSERT_EQUAL(cf_p11_pubkey_der(k, der), CF_OK);
	CU_ASSERT(cf_buf_len(der) == id_a.len &&
		  memcmp(cf_buf_peek(der), id_a.data, id_a.len) == 0);
	CU_ASSERT_EQUAL(cf_session_fingerprint(id_a.data, id_a.len, want, sizeof(want)), CF_OK);
	CU_ASSERT_STRING_EQUAL(fpr, want);
	cf_p11_key_free(k);
	cf_p11_close(p11);
	cf_buf_free(der);
	/* Callers cannot take the reserved name. */
	CU_ASSERT_PTR_NOT_NULL_FATAL(c = client(&dmn_a, 1, 0, NULL));
	CU_ASSERT_EQUAL(coffer_create_key(c, "coffer.identity", COFFER_KEY_EC_P256, 0, NULL),
			COFFER_E_INVALID_ARG);
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "reserved"));
	coffer_close(c);
}

static void
test_sealed_calls(void)
{
	static const struct coffer_kv ctx[] = { { "app", "session-test" } };
	coffer_client *adm = client(&dmn_a, 1, 0, &id_a), *svc = client(&dmn_a, 0, 0, &id_a);
	struct coffer_bytes ct = { NULL, 0 }, pt = { NULL, 0 }, dk = { NULL, 0 },
			    dct = { NULL, 0 }, mac = { NULL, 0 };
	struct coffer_key_info *info = NULL;
	uint8_t secret[48], hkey[32];
	uint32_t ver = 0;

	CU_ASSERT_PTR_NOT_NULL_FATAL(adm);
	CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
	RAND_bytes(secret, sizeof(secret));
	RAND_bytes(hkey, sizeof(hkey));
	CHECK_COFFER(coffer_create_key(adm, "sess-aes", COFFER_KEY_AES_256, 0, &info));
	coffer_key_info_free(info);
	CHECK_COFFER(coffer_wrap(svc, "sess-aes", secret, sizeof(secret), ctx, 1, &ct, &ver));
	CU_ASSERT_EQUAL(ver, 1);
	CHECK_COFFER(coffer_unwrap(svc, "sess-aes", ct.data, ct.len, ctx, 1, &pt, &ver));
	CU_ASSERT(pt.len == sizeof(secret) && memcmp(pt.data, secret, sizeof(secret)) == 0);
	coffer_bytes_free(&pt);
	/* An inner error travels sealed and arrives as the call's own status. */
	CU_ASSERT_EQUAL(coffer_unwrap(svc, "sess-aes", ct.data, ct.len, NULL, 0, &pt, NULL),
			COFFER_E_INVALID_ARG);
	CU_ASSERT_PTR_NULL(pt.data);
	CU_ASSERT_EQUAL(coffer_unwrap(svc, "no-such-key", ct.data, ct.len, ctx, 1, &pt, NULL),
			COFFER_E_NOT_FOUND);
	CHECK_COFFER(coffer_generate_data_key(svc, "sess-aes", 32, ctx, 1, &dct, &dk, NULL));
	CHECK_COFFER(coffer_unwrap(svc, "sess-aes", dct.data, dct.len, ctx, 1, &pt, NULL));
	CU_ASSERT(pt.len == 32 && dk.len == 32 && memcmp(pt.data, dk.data, 32) == 0);
	coffer_bytes_free(&pt);
	/* Key import goes sealed on the admin socket. */
	CHECK_COFFER(coffer_import_key(adm, "sess-hmac", COFFER_KEY_HMAC_SHA256, hkey, sizeof(hkey), 0,
			     &info));
	coffer_key_info_free(info);
	CHECK_COFFER(coffer_mac(svc, "sess-hmac", 0, secret, sizeof(secret), &mac, NULL));
	{
		uint8_t want[32];
		size_t wl = 0;

		EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, hkey, sizeof(hkey), secret,
			  sizeof(secret), want, sizeof(want), &wl);
		CU_ASSERT(mac.len == 32 && memcmp(mac.data, want, 32) == 0);
	}
	coffer_bytes_free(&mac);
	coffer_bytes_free(&ct);
	coffer_bytes_free(&dct);
	coffer_bytes_free(&dk);
	coffer_close(svc);
	coffer_close(adm);
}

static void
test_wrong_identity_refused(void)
{
	static const uint8_t secret[] = "must never leave";
	coffer_client *nopin = client(&dmn_a, 0, 0, NULL), *wrong = client(&dmn_b, 0, 0, &id_a);
	struct coffer_bytes ct = { NULL, 0 };
	EVP_PKEY *other = EVP_EC_gen("P-256");
	unsigned char *der = NULL;
	int len = i2d_PUBKEY(other, &der);
	coffer_client *forged = client(&dmn_a, 0, 0, NULL);

	CU_ASSERT_PTR_NOT_NULL_FATAL(nopin);
	CU_ASSERT_PTR_NOT_NULL_FATAL(wrong);
	CU_ASSERT_PTR_NOT_NULL_FATAL(forged);
	/* No pin: a precondition, said plainly. */
	CU_ASSERT_EQUAL(coffer_wrap(nopin, "sess-aes", secret, sizeof(secret), NULL, 0, &ct, NULL),
			COFFER_E_PRECONDITION);
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "pinned"));
	/* Daemon B presents its own identity while A's is pinned. */
	CU_ASSERT_EQUAL(coffer_wrap(wrong, "sess-aes", secret, sizeof(secret), NULL, 0, &ct, NULL),
			COFFER_E_UNAUTHENTICATED);
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "is pinned: refusing"));
	CU_ASSERT_PTR_NULL(ct.data);
	/* A pinned key the daemon does not hold. */
	CU_ASSERT_FATAL(len > 0);
	CHECK_COFFER(coffer_pin_identity(forged, der, (size_t)len));
	CU_ASSERT_EQUAL(coffer_wrap(forged, "sess-aes", secret, sizeof(secret), NULL, 0, &ct,
				    NULL), COFFER_E_UNAUTHENTICATED);
	CU_ASSERT_PTR_NULL(ct.data);
	/* Not a P-256 SPKI: refused at pinning. */
	CU_ASSERT_EQUAL(coffer_pin_identity(forged, der, (size_t)len - 1), COFFER_E_INVALID_ARG);
	OPENSSL_free(der);
	EVP_PKEY_free(other);
	/* Nor another 256-bit curve (before, any 256-bit EC key was taken;
	 * found by a review). */
	for (int i = 0; i < 2; i++) {
		other = EVP_EC_gen(i == 0 ? "secp256k1" : "brainpoolP256r1");
		der = NULL;
		CU_ASSERT_FATAL(other != NULL && (len = i2d_PUBKEY(other, &der)) > 0);
		CU_ASSERT_EQUAL(coffer_pin_identity(forged, der, (size_t)len),
				COFFER_E_INVALID_ARG);
		CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "not an EC P-256"));
		OPENSSL_free(der);
		EVP_PKEY_free(other);
	}
	coffer_close(nopin);
	coffer_close(wrong);
	coffer_close(forged);
}

static void
test_renewal_and_require_sealed(void)
{
	coffer_client *adm, *svc, *plain;
	struct coffer_bytes id_b = { NULL, 0 }, ct = { NULL, 0 }, sig = { NULL, 0 };
	struct coffer_key_info *info = NULL;
	char fpr[80];
	uint8_t data[64];

	CU_ASSERT_PTR_NOT_NULL_FATAL(adm = client(&dmn_b, 1, 0, NULL));
	CHECK_COFFER(coffer_get_identity(adm, &id_b, fpr, sizeof(fpr)));
	CU_ASSERT_FATAL(!(id_b.len == id_a.len && memcmp(id_b.data, id_a.data, id_a.len) == 0));
	CHECK_COFFER(coffer_create_key(adm, "b-aes", COFFER_KEY_AES_256, 0, &info));
	coffer_key_info_free(info);
	CHECK_COFFER(coffer_create_key(adm, "b-sign", COFFER_KEY_EC_P256, 0, &info));
	coffer_key_info_free(info);
	CU_ASSERT_PTR_NOT_NULL_FATAL(svc = client(&dmn_b, 0, COFFER_CONNECT_SEAL_ALL, &id_b));
	CU_ASSERT_PTR_NOT_NULL_FATAL(plain = client(&dmn_b, 0, 0, &id_b));
	RAND_bytes(data, sizeof(data));
	/* require_sealed: an unsealed Sign is refused, a sealed one served. */
	CU_ASSERT_EQUAL(coffer_sign(plain, "b-sign", 0, data, sizeof(data), NULL, &sig, NULL),
			COFFER_E_PRECONDITION);
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "require_sealed"));
	CHECK_COFFER(coffer_sign(svc, "b-sign", 0, data, sizeof(data), NULL, &sig, NULL));
	coffer_bytes_free(&sig);
	/* max_records = 3: ten calls need at least four sessions. */
	for (int i = 0; i < 10; i++) {
		CHECK_COFFER(coffer_wrap(svc, "b-aes", data, sizeof(data), NULL, 0, &ct, NULL));
		coffer_bytes_free(&ct);
	}
	/* lifetime = 2 s: the pooled session expires; the next call renews. */
	sleep(3);
	CHECK_COFFER(coffer_wrap(svc, "b-aes", data, sizeof(data), NULL, 0, &ct, NULL));
	coffer_bytes_free(&ct);
	coffer_close(svc);
	coffer_close(plain);
	coffer_close(adm);
	coffer_bytes_free(&id_b);
}

/* Sealed calls from several threads at once: the client's pool ends up
 * holding several idle sessions. */
static void *
wrap_loop(void *arg)
{
	coffer_client *svc = arg;
	struct coffer_bytes ct = { NULL, 0 };
	long bad = 0;

	for (int i = 0; i < 20; i++) {
		bad += coffer_wrap(svc, "sess-aes", (const uint8_t *)"x", 1, NULL, 0, &ct, NULL) !=
		       COFFER_OK;
		coffer_bytes_free(&ct);
	}
	return (void *)bad;
}

/* n threads of wrap_loop at once on svc, each without a failure. */
static void
wrap_together(coffer_client *svc, int n)
{
	pthread_t th[8];

	for (int i = 0; i < n && i < 8; i++)
		CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, wrap_loop, svc), 0);
	for (int i = 0; i < n && i < 8; i++) {
		void *bad;

		pthread_join(th[i], &bad);
		CU_ASSERT_PTR_NULL(bad);
	}
}

static void
test_session_lost_in_restart(void)
{
	static const struct coffer_kv ctx[] = { { "k", "v" } };
	coffer_client *svc = client(&dmn_a, 0, 0, &id_a);
	struct coffer_bytes ct = { NULL, 0 }, pt = { NULL, 0 };
	uint8_t data[16] = { 1, 2, 3 };

	CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
	CHECK_COFFER(coffer_wrap(svc, "sess-aes", data, sizeof(data), ctx, 1, &ct, NULL));
	wrap_together(svc, 4);
	/* The daemon forgets every session; the client's pooled ones are
	 * refused (UNAUTHENTICATED: not run) and the call is retried once on a
	 * new session -- not on another pooled one, just as dead -- without the
	 * caller noticing, call after call. */
	CU_ASSERT_EQUAL_FATAL(cf_test_daemon_stop(&dmn_a), 0);
	CU_ASSERT_EQUAL_FATAL(start_on(&tok_a, &dmn_a, NULL), 0);
	for (int i = 0; i < 4; i++) {
		CHECK_COFFER(coffer_unwrap(svc, "sess-aes", ct.data, ct.len, ctx, 1, &pt, NULL));
		CU_ASSERT(pt.len == sizeof(data) && memcmp(pt.data, data, sizeof(data)) == 0);
		coffer_bytes_free(&pt);
	}
	/* The identity survived the restart: same token key. */
	coffer_bytes_free(&pt);
	coffer_bytes_free(&ct);
	coffer_close(svc);
}

/* coffer_close ends the client's idle sessions at the daemon (CloseSession,
 * seen by test_metrics); against a daemon that does not answer (SIGSTOP) it
 * gives up after one second for all of them, and the caller's last error is
 * still the last call's, not the close's. */
static void
test_close_keeps_last_error(void)
{
	coffer_client *svc = client(&dmn_a, 0, 0, &id_a);
	struct coffer_bytes ct = { NULL, 0 };
	uint8_t data[16] = { 4 };
	char last[256];
	uint64_t t0, took;

	CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
	wrap_together(svc, 3);   /* sessions in the pool: several, from calls at once */
	CU_ASSERT_EQUAL(coffer_wrap(svc, "sess-none", data, sizeof(data), NULL, 0, &ct, NULL),
			COFFER_E_NOT_FOUND);
	snprintf(last, sizeof(last), "%s", coffer_error_message());
	CU_ASSERT_STRING_EQUAL(last, "key sess-none does not exist");
	CU_ASSERT_EQUAL_FATAL(kill(dmn_a.pid, SIGSTOP), 0);
	t0 = cf_mono_ms();
	coffer_close(svc);
	took = cf_mono_ms() - t0;
	CU_ASSERT_EQUAL_FATAL(kill(dmn_a.pid, SIGCONT), 0);
	CU_ASSERT(took >= 900 && took < 1500);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), last);
}

/* ---- the record crypto on its own ---- */

struct pair {
	cf_session_keys *c, *s, *other;
};

static void
make_pair(struct pair *p)
{
	struct cf_session_hello h;
	cf_session_eph *ce = NULL, *se = NULL, *xe = NULL;
	uint8_t th[32], spki[91] = { 0x30 };

	memset(&h, 0, sizeof(h));
	h.version = 1;
	h.spki = spki;
	h.spki_len = sizeof(spki);
	CU_ASSERT_EQUAL_FATAL(cf_session_eph_new(NULL, &ce), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_session_eph_new(NULL, &se), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_session_eph_new(NULL, &xe), CF_OK);
	cf_session_eph_pub(ce, h.client_pub);
	cf_session_eph_pub(se, h.server_pub);
	RAND_bytes(h.session_id, sizeof(h.session_id));
	CU_ASSERT_EQUAL_FATAL(cf_session_transcript_hash(&h, th), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_session_keys_derive(ce, h.server_pub, th, h.session_id, &p->c),
			      CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_session_keys_derive(se, h.client_pub, th, h.session_id, &p->s),
			      CF_OK);
	/* Another session between the same caller key and another server. */
	h.session_id[0] ^= 1;
	CU_ASSERT_EQUAL_FATAL(cf_session_transcript_hash(&h, th), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_session_keys_derive(xe, h.client_pub, th, h.session_id,
						     &p->other), CF_OK);
	cf_session_eph_free(ce);
	cf_session_eph_free(se);
	cf_session_eph_free(xe);
}

static void
test_records(void)
{
	static const char m[] = "/coffer.v1.KeyService/Unwrap";
	static const uint8_t msg[] = "sealed payload";
	struct pair p;
	cf_buf *rec = cf_buf_new(256);
	uint8_t *pt = NULL;
	size_t ptlen = 0;
	uint8_t bad[256], low[32] = { 0 };
	size_t n;

	make_pair(&p);
	CU_ASSERT_EQUAL(cf_session_seal(p.c, CF_SESSION_C2S, 7, m, msg, sizeof(msg), rec), CF_OK);
	n = cf_buf_len(rec);
	CU_ASSERT_EQUAL(n, sizeof(msg) + CF_SESSION_TAG_LEN);
	CU_ASSERT(memmem(cf_buf_peek(rec), n, msg, sizeof(msg) - 1) == NULL);
	/* The right key, direction, sequence number and method open it. */
	CU_ASSERT_EQUAL(cf_session_open(p.s, CF_SESSION_C2S, 7, m, cf_buf_peek(rec), n, &pt,
					&ptlen), CF_OK);
	CU_ASSERT(pt != NULL && ptlen == sizeof(msg) && memcmp(pt, msg, sizeof(msg)) == 0);
	cf_session_plain_free(pt, ptlen);
	pt = NULL;
#define REFUSED(expr) do { CU_ASSERT_EQUAL((expr), CF_E_DECRYPT); CU_ASSERT_PTR_NULL(pt); } while (0)
	/* Reflected: opened as the other direction. */
	REFUSED(cf_session_open(p.s, CF_SESSION_S2C, 7, m, cf_buf_peek(rec), n, &pt, &ptlen));
	REFUSED(cf_session_open(p.c, CF_SESSION_S2C, 7, m, cf_buf_peek(rec), n, &pt, &ptlen));
	/* Replayed or reordered: under another sequence number. */
	REFUSED(cf_session_open(p.s, CF_SESSION_C2S, 8, m, cf_buf_peek(rec), n, &pt, &ptlen));
	REFUSED(cf_session_open(p.s, CF_SESSION_C2S, 6, m, cf_buf_peek(rec), n, &pt, &ptlen));
	/* Moved to another session, or to another method. */
	REFUSED(cf_session_open(p.other, CF_SESSION_C2S, 7, m, cf_buf_peek(rec), n, &pt, &ptlen));
	REFUSED(cf_session_open(p.s, CF_SESSION_C2S, 7, "/coffer.v1.KeyService/Wrap",
				cf_buf_peek(rec), n, &pt, &ptlen));
	/* Tampered anywhere, or truncated. */
	for (size_t i = 0; i < n; i++) {
		memcpy(bad, cf_buf_peek(rec), n);
		bad[i] ^= 0x40;
		REFUSED(cf_session_open(p.s, CF_SESSION_C2S, 7, m, bad, n, &pt, &ptlen));
	}
	for (size_t cut = 0; cut < n; cut++)
		REFUSED(cf_session_open(p.s, CF_SESSION_C2S, 7, m, cf_buf_peek(rec), cut, &pt, &ptlen));
#undef REFUSED
	/* In place: sealing over the plaintext gives the same record, which
	 * opens where it lies; a tampered one leaves no plaintext behind. */
	{
		uint8_t buf[sizeof(msg) + CF_SESSION_TAG_LEN], zero[sizeof(msg)] = { 0 };
		size_t len = 0;

		memcpy(buf, msg, sizeof(msg));
		CU_ASSERT_EQUAL(cf_session_seal_to(p.c, CF_SESSION_C2S, 7, m, buf, sizeof(msg), buf),
				CF_OK);
		CU_ASSERT(memcmp(buf, cf_buf_peek(rec), n) == 0);
		CU_ASSERT_EQUAL(cf_session_open_in_place(p.s, CF_SESSION_C2S, 7, m, buf, n, &len),
				CF_OK);
		CU_ASSERT(len == sizeof(msg) && memcmp(buf, msg, sizeof(msg)) == 0);
		memcpy(buf, cf_buf_peek(rec), n);
		buf[n - 1] ^= 1;   /* the tag */
		len = 0;
		CU_ASSERT_EQUAL(cf_session_open_in_place(p.s, CF_SESSION_C2S, 7, m, buf, n, &len),
				CF_E_DECRYPT);
		CU_ASSERT(len == 0 && memcmp(buf, zero, sizeof(zero)) == 0);
		/* An empty payload: a record that is only its tag. */
		CU_ASSERT_EQUAL(cf_session_seal_to(p.c, CF_SESSION_S2C, 9, m, buf, 0, buf), CF_OK);
		len = 1;
		CU_ASSERT_EQUAL(cf_session_open_in_place(p.s, CF_SESSION_S2C, 9, m, buf,
							 CF_SESSION_TAG_LEN, &len), CF_OK);
		CU_ASSERT_EQUAL(len, 0);
		CU_ASSERT_EQUAL(cf_session_open_in_place(p.s, CF_SESSION_S2C, 9, m, buf,
							 CF_SESSION_TAG_LEN - 1, &len),
				CF_E_DECRYPT);
	}
	/* A low-order peer key gives no session keys. */
	{
		cf_session_eph *e = NULL;
		cf_session_keys *k = NULL;
		uint8_t th[32] = { 0 }, id[16] = { 0 };

		CU_ASSERT_EQUAL_FATAL(cf_session_eph_new(NULL, &e), CF_OK);
		CU_ASSERT_EQUAL(cf_session_keys_derive(e, low, th, id, &k), CF_E_INVALID_ARG);
		CU_ASSERT_PTR_NULL(k);
		cf_session_eph_free(e);
	}
	cf_buf_free(rec);
	cf_session_keys_free(p.c);
	cf_session_keys_free(p.s);
	cf_session_keys_free(p.other);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "the served identity is the token's key", test_identity_is_the_token_key },
		{ "sealed wrap, unwrap, data key, import", test_sealed_calls },
		{ "wrong or missing identity refused", test_wrong_identity_refused },
		{ "renewal at limits; require_sealed", test_renewal_and_require_sealed },
		{ "session lost in a restart is replaced", test_session_lost_in_restart },
		{ "close keeps the caller's last error", test_close_keeps_last_error },
		{ "records: tamper, reflect, replay, move", test_records },
		{ NULL, NULL },
	};

	return cf_test_main("session", suite_init, suite_clean, cases);
}
