/*
 * test_pipeline_client — libcoffer's pipelined stream (proto/pipeline.md)
 * against a real cofferd: 8 threads sharing one client, always on the
 * stream and chosen automatically, every signature checked by OpenSSL
 * against its own message (an answer given to the wrong caller fails);
 * MACs and verifications equal to the unary calls'; errors with exactly the
 * unary call's status and text; a lone caller kept unary; the opening
 * signed with an API key (a wrong one refused with the unary text); the
 * audit trail's per-request ids "<stream id>.<n>"; cofferd restarted under
 * load: calls succeed again or fail UNAVAILABLE, none hangs. Frames: the 8
 * threads' requests reach cofferd several to a message (its metrics count
 * messages and requests), and a wave of callers that do not come back does
 * not hold the one that does. Calls kept in flight (coffer_*_start, then
 * coffer_wait): 8 threads each with 8 in flight, every signature its own;
 * waited for in any order by another thread; the daemon's errors from
 * coffer_wait with the unary call's status and text, local ones from the
 * start; the same answers with the stream off and on a client that seals
 * every call; a deadline counted from the start; a cofferd killed with
 * calls in flight: each repeated as a unary call on the new one.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/sha.h>

#include "cf_keytype.h"
#include "cf_test_client.h"
#include "cf_test_token.h"
#include "coffer.h"

static struct cf_test_token tok;
static struct cf_test_daemon dmn;
static coffer_client *svc, *adm;
static struct coffer_public_key *sig_pk;

#define THREADS 8
#define CALLS 200

/* cofferd runs with its metrics on a Unix socket (frames are counted there). */
static char conf[400], metrics_sock[100];
static const char *const with_metrics[] = { "-c", conf, NULL };

static int
suite_init(void)
{
	FILE *f;

	if (cf_test_token_create_any(&tok, "coffer-pipeclient") != 0)
		return -1;
	snprintf(conf, sizeof(conf), "%s/metrics.conf", tok.dir);
	/* A socket's path fits sun_path. */
	if ((size_t)snprintf(metrics_sock, sizeof(metrics_sock), "%s/metrics.sock", tok.dir) >=
	    sizeof(metrics_sock) || (f = fopen(conf, "w")) == NULL)
		return -1;
	fprintf(f, "[metrics]\nlisten = unix:%s\n", metrics_sock);
	if (fclose(f) != 0 || cf_test_daemon_start(&tok, &dmn, with_metrics) != 0 ||
	    cf_test_clients(&dmn, &svc, &adm) != 0)
		return -1;
	return coffer_create_key(adm, "sig", COFFER_KEY_EC_P256, 0, NULL) == COFFER_OK &&
	       coffer_create_key(adm, "mac", COFFER_KEY_HMAC_SHA256, 0, NULL) == COFFER_OK &&
	       coffer_get_public_key(svc, "sig", 1, &sig_pk) == COFFER_OK ? 0 : -1;
}

static int
suite_clean(void)
{
	coffer_public_key_free(sig_pk);
	cf_test_suite_down(&tok, &dmn, &svc, &adm);
	return 0;
}

/* A service client in pipeline mode `mode`. */
static coffer_client *
client(int mode)
{
	coffer_client *c = NULL;

	if (coffer_connect(dmn.service, 0, &c) != COFFER_OK ||
	    coffer_set_pipeline(c, mode) != COFFER_OK) {
		fprintf(stderr, "\n  client: %s\n", coffer_error_message());
		coffer_close(c);
		return NULL;
	}
	return c;
}

/* ---- the audit trail ---- */

/* The request id of an audit line, into id (empty when it has none). */
static void
request_id(const char *line, char *id, size_t len)
{
	const char *p = strstr(line, "\"request_id\":\"");
	size_t n = 0;

	if (p != NULL) {
		p += strlen("\"request_id\":\"");
		n = strcspn(p, "\"");
	}
	snprintf(id, len, "%.*s", (int)n, p != NULL ? p : "");
}

/* A stream request's id: "<stream id>.<n>", the stream id into stream. */
static int
stream_request_id(const char *id, char *stream, size_t len)
{
	const char *dot = strrchr(id, '.');

	if (dot == NULL || dot == id || dot[1] == '\0' || strspn(dot + 1, "0123456789") !=
	    strlen(dot + 1))
		return 0;
	snprintf(stream, len, "%.*s", (int)(dot - id), id);
	return 1;
}

/* Of the last `n` records since cofferd last started, those of `method`:
 * how many came on a stream (*streams: on how many different streams), how
 * many as unary calls. */
static void
count_records(size_t n, const char *method, unsigned *on_stream, unsigned *unary,
	      unsigned *streams)
{
	char **lines = NULL, id[128], sid[128], seen[8][128];
	size_t got = 0, from = 0;

	*on_stream = *unary = *streams = 0;
	CHECK_COFFER(coffer_audit_tail(adm, n, &lines, &got));
	for (size_t i = 0; i < got; i++)
		if (strstr(lines[i], "\"event\":\"start\"") != NULL)
			from = i;
	for (size_t i = from; i < got; i++) {
		if (strstr(lines[i], method) == NULL)
			continue;
		request_id(lines[i], id, sizeof(id));
		if (!stream_request_id(id, sid, sizeof(sid))) {
			(*unary)++;
			continue;
		}
		(*on_stream)++;
		{
			unsigned k;

			for (k = 0; k < *streams && strcmp(seen[k], sid) != 0; k++)
				;
			if (k == *streams && k < 8)
				snprintf(seen[(*streams)++], sizeof(seen[0]), "%s", sid);
		}
	}
	coffer_audit_lines_free(lines, got);
}

/* ---- the daemon's metrics ---- */

/* coffer_pipeline_messages_total and _requests_total, scraped now. */
static void
pipeline_counts(uint64_t *msgs, uint64_t *reqs)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	static const char get[] = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
	char buf[1 << 16];
	const char *m, *q;
	size_t n = 0;
	ssize_t k;
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	*msgs = *reqs = 0;
	memcpy(sa.sun_path, metrics_sock, sizeof(metrics_sock));
	CU_ASSERT_FATAL(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	CU_ASSERT_FATAL(write(fd, get, strlen(get)) == (ssize_t)strlen(get));
	while (n < sizeof(buf) - 1 && (k = read(fd, buf + n, sizeof(buf) - 1 - n)) > 0)
		n += (size_t)k;
	close(fd);
	buf[n] = '\0';
	m = strstr(buf, "\ncoffer_pipeline_messages_total ");
	q = strstr(buf, "\ncoffer_pipeline_requests_total ");
	CU_ASSERT_FATAL(m != NULL && q != NULL);
	*msgs = strtoull(strchr(m + 1, ' ') + 1, NULL, 10);
	*reqs = strtoull(strchr(q + 1, ' ') + 1, NULL, 10);
}

/* ---- 8 threads, one client ---- */

struct worker {
	pthread_t t;
	coffer_client *c;
	unsigned id;
	unsigned ok, bad_sig, failed;
	char why[256];
};

static void *
sign_many(void *arg)
{
	struct worker *w = arg;

	for (unsigned i = 0; i < CALLS; i++) {
		struct coffer_bytes sig = { NULL, 0 };
		char msg[64];
		uint32_t ver = 0;
		int r;

		snprintf(msg, sizeof(msg), "thread %u call %u", w->id, i);
		r = coffer_sign(w->c, "sig", 0, (const uint8_t *)msg, strlen(msg), NULL, &sig, &ver);
		if (r != COFFER_OK) {
			if (w->failed++ == 0)
				snprintf(w->why, sizeof(w->why), "%s", coffer_error_message());
		} else if (ver != 1 ||
			   !cf_test_openssl_verify(sig_pk->der.data, sig_pk->der.len, CF_HASH_SHA256,
						   0, (const uint8_t *)msg, strlen(msg), sig.data,
						   sig.len)) {
			w->bad_sig++;
		} else {
			w->ok++;
		}
		coffer_bytes_free(&sig);
	}
	return NULL;
}

/* THREADS workers on client c running fn, joined: none failed, no bad
 * signature; the calls that succeeded. */
static unsigned
run_workers(struct worker *w, coffer_client *c, void *(*fn)(void *))
{
	unsigned ok = 0;

	for (unsigned i = 0; i < THREADS; i++) {
		w[i].c = c;
		w[i].id = i;
		CU_ASSERT_EQUAL_FATAL(pthread_create(&w[i].t, NULL, fn, &w[i]), 0);
	}
	for (unsigned i = 0; i < THREADS; i++) {
		pthread_join(w[i].t, NULL);
		if (w[i].failed > 0 || w[i].bad_sig > 0)
			fprintf(stderr, "\n  thread %u: %u failed (%s), %u bad signatures\n", i,
				w[i].failed, w[i].why, w[i].bad_sig);
		CU_ASSERT_EQUAL(w[i].failed, 0);
		CU_ASSERT_EQUAL(w[i].bad_sig, 0);
		ok += w[i].ok;
	}
	return ok;
}

static void
threads_sign(int mode)
{
	struct worker w[THREADS];
	coffer_client *c = client(mode);
	unsigned ok, on_stream, unary, streams;

	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	memset(w, 0, sizeof(w));
	ok = run_workers(w, c, sign_many);
	CU_ASSERT_EQUAL(ok, THREADS * CALLS);
	/* One audit record each, on one stream (the trail's seal records
	 * interleave); OFF: unary calls only. */
	count_records(1000, "KeyService/Sign\"", &on_stream, &unary, &streams);
	printf("\n    last 1000 records: %u Signs on %u stream(s), %u unary\n", on_stream,
	       streams, unary);
	if (mode == COFFER_PIPELINE_OFF) {
		CU_ASSERT_EQUAL(on_stream, 0);
		CU_ASSERT(unary >= 900);
	} else {
		CU_ASSERT_EQUAL(streams, 1);
		CU_ASSERT(on_stream >= 900);
		/* AUTO: a thread's first call may go unary, before the stream opens. */
		CU_ASSERT(unary <= (mode == COFFER_PIPELINE_AUTO ? THREADS : 0));
	}
	coffer_close(c);
}

static void
test_threads_always(void)
{
	uint64_t m0, r0, m1, r1;

	pipeline_counts(&m0, &r0);
	threads_sign(COFFER_PIPELINE_ALWAYS);
	pipeline_counts(&m1, &r1);
	/* Every call on the stream, several to a message: frames. */
	printf("    %llu requests in %llu messages on the stream (%.2f per message)\n",
	       (unsigned long long)(r1 - r0), (unsigned long long)(m1 - m0),
	       m1 > m0 ? (double)(r1 - r0) / (double)(m1 - m0) : 0.0);
	CU_ASSERT_EQUAL(r1 - r0, THREADS * CALLS);
	CU_ASSERT(m1 - m0 < r1 - r0);
}

/* ---- a wave that does not come back ---- */

static pthread_barrier_t wave_start;

struct wave_call {
	pthread_t t;
	coffer_client *c;
	int r;
};

static void *
one_call(void *arg)
{
	struct wave_call *w = arg;
	struct coffer_bytes out = { NULL, 0 };

	pthread_barrier_wait(&wave_start);
	w->r = coffer_mac(w->c, "mac", 0, (const uint8_t *)"wave", 4, &out, NULL);
	coffer_bytes_free(&out);
	return NULL;
}

/* A wave on c: this thread and THREADS - 1 others call at once, answered
 * together; the others then exit, so they never come back. */
static void
wave_that_leaves(coffer_client *c)
{
	struct wave_call w[THREADS - 1];
	struct coffer_bytes out = { NULL, 0 };

	CU_ASSERT_EQUAL_FATAL(pthread_barrier_init(&wave_start, NULL, THREADS), 0);
	for (unsigned i = 0; i < THREADS - 1; i++) {
		w[i].c = c;
		CU_ASSERT_EQUAL_FATAL(pthread_create(&w[i].t, NULL, one_call, &w[i]), 0);
	}
	pthread_barrier_wait(&wave_start);
	CHECK_COFFER(coffer_mac(c, "mac", 0, (const uint8_t *)"wave", 4, &out, NULL));
	coffer_bytes_free(&out);
	for (unsigned i = 0; i < THREADS - 1; i++) {
		pthread_join(w[i].t, NULL);
		CU_ASSERT_EQUAL(w[i].r, COFFER_OK);
	}
	pthread_barrier_destroy(&wave_start);
}

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Callers answered together are expected back together (their requests are
 * held to go as one frame); when all but one leave for good, the one that
 * comes back is held at most the linger (200 us), never until its timeout. */
static void
test_wave_that_does_not_come_back(void)
{
	struct coffer_bytes out = { NULL, 0 };
	double worst = 0, t0 = now_ms();

	CHECK_COFFER(coffer_set_pipeline(svc, COFFER_PIPELINE_ALWAYS));
	coffer_set_timeout(svc, 30000);
	for (int round = 0; round < 20; round++) {
		wave_that_leaves(svc);
		/* The others have exited: this thread's next calls go alone. */
		for (int k = 0; k < 5; k++) {
			double c0 = now_ms();

			CHECK_COFFER(coffer_mac(svc, "mac", 0, (const uint8_t *)"back", 4, &out,
						NULL));
			coffer_bytes_free(&out);
			if (now_ms() - c0 > worst)
				worst = now_ms() - c0;
		}
	}
	printf("\n    20 waves of 8, then 5 calls by the one that came back: slowest %.1f ms, "
	       "all %.0f ms\n", worst, now_ms() - t0);
	CU_ASSERT(worst < 1000.0);
	CHECK_COFFER(coffer_set_pipeline(svc, COFFER_PIPELINE_AUTO));
}

static void
test_threads_auto(void)
{
	threads_sign(COFFER_PIPELINE_AUTO);
}

static void
test_threads_off(void)
{
	threads_sign(COFFER_PIPELINE_OFF);
}

/* AUTO with one caller: plain unary calls. */
static void
test_lone_caller_unary(void)
{
	coffer_client *c = client(COFFER_PIPELINE_AUTO);
	struct coffer_bytes out = { NULL, 0 };
	unsigned on_stream, unary, streams;

	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	for (int i = 0; i < 5; i++) {
		CHECK_COFFER(coffer_mac(c, "mac", 0, (const uint8_t *)"lone", 4, &out, NULL));
		coffer_bytes_free(&out);
	}
	/* (The trail also holds its seal records: look a little further.) */
	count_records(20, "KeyService/Mac\"", &on_stream, &unary, &streams);
	CU_ASSERT_EQUAL(unary, 5);
	CU_ASSERT_EQUAL(on_stream, 0);
	coffer_close(c);
	/* The knob refuses what it does not know. */
	CU_ASSERT_EQUAL(coffer_set_pipeline(svc, 7), COFFER_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), "unknown pipeline mode 7: use "
			       "COFFER_PIPELINE_AUTO, COFFER_PIPELINE_OFF or COFFER_PIPELINE_ALWAYS");
	CU_ASSERT_EQUAL(coffer_set_pipeline(NULL, COFFER_PIPELINE_OFF), COFFER_E_INVALID_ARG);
}

/* MACs and verifications on the stream equal the unary calls'. */
static void
test_mac_equal(void)
{
	coffer_client *s = client(COFFER_PIPELINE_ALWAYS), *u = client(COFFER_PIPELINE_OFF);
	unsigned on_stream, unary, streams;

	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	CU_ASSERT_PTR_NOT_NULL_FATAL(u);
	for (int i = 0; i < 20; i++) {
		struct coffer_bytes a = { NULL, 0 }, b = { NULL, 0 };
		char msg[32];
		uint32_t va = 0, vb = 0;
		int valid = -1;

		snprintf(msg, sizeof(msg), "mac message %d", i);
		CHECK_COFFER(coffer_mac(s, "mac", 0, (const uint8_t *)msg, strlen(msg), &a, &va));
		CHECK_COFFER(coffer_mac(u, "mac", 0, (const uint8_t *)msg, strlen(msg), &b, &vb));
		CU_ASSERT(a.len == 32 && b.len == 32 && memcmp(a.data, b.data, 32) == 0);
		CU_ASSERT(va == 1 && vb == 1);
		CHECK_COFFER(coffer_verify_mac(s, "mac", 1, (const uint8_t *)msg, strlen(msg),
					       a.data, a.len, &valid));
		CU_ASSERT_EQUAL(valid, 1);
		a.data[i % 32] ^= 1;
		CHECK_COFFER(coffer_verify_mac(s, "mac", 1, (const uint8_t *)msg, strlen(msg),
					       a.data, a.len, &valid));
		CU_ASSERT_EQUAL(valid, 0);
		coffer_bytes_free(&a);
		coffer_bytes_free(&b);
	}
	count_records(80, "KeyService/VerifyMac\"", &on_stream, &unary, &streams);
	CU_ASSERT_EQUAL(on_stream, 40);
	coffer_close(s);
	coffer_close(u);
}

/* ---- errors: the unary call's status and text ---- */

static int
sign_with(coffer_client *c, const char *key, const struct coffer_sign_opts *o, const void *data,
	  size_t len)
{
	struct coffer_bytes sig = { NULL, 0 };
	int r = coffer_sign(c, key, 0, data, len, o, &sig, NULL);

	coffer_bytes_free(&sig);
	return r;
}

/* The same call on the stream and as a unary call: the same status and
 * text, the one given; the stream's came on the stream. */
static void
same_error(coffer_client *s, coffer_client *u, const char *key, const struct coffer_sign_opts *o,
	   const void *data, size_t len, int want, const char *text)
{
	char on_stream_text[512];
	unsigned on_stream, unary, streams;
	int r;

	r = sign_with(s, key, o, data, len);
	snprintf(on_stream_text, sizeof(on_stream_text), "%s", coffer_error_message());
	count_records(2, "KeyService/Sign\"", &on_stream, &unary, &streams);
	CU_ASSERT_EQUAL(on_stream, 1);
	CU_ASSERT_EQUAL(r, want);
	CU_ASSERT_STRING_EQUAL(on_stream_text, text);
	CU_ASSERT_EQUAL(sign_with(u, key, o, data, len), want);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), text);
}

static void
test_errors(void)
{
	coffer_client *s = client(COFFER_PIPELINE_ALWAYS), *u = client(COFFER_PIPELINE_OFF);
	struct coffer_sign_opts digest = { .hash = COFFER_HASH_SHA256, .prehashed = 1 };
	uint8_t d[SHA256_DIGEST_LENGTH];

	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	CU_ASSERT_PTR_NOT_NULL_FATAL(u);
	SHA256((const uint8_t *)"m", 1, d);
	same_error(s, u, "nokey", NULL, "m", 1, COFFER_E_NOT_FOUND, "key nokey does not exist");
	same_error(s, u, "mac", NULL, "m", 1, COFFER_E_PRECONDITION,
		   "key mac is a mac key (hmac-sha256); this operation needs a sign key");
	same_error(s, u, "sig", &digest, d, 20, COFFER_E_INVALID_ARG,
		   "a sha256 digest is 32 bytes, got 20");
	/* The stream goes on after them. */
	CHECK_COFFER(sign_with(s, "sig", &digest, d, sizeof(d)));
	coffer_close(s);
	coffer_close(u);
	/* A daemon socket without the stream (the admin socket answers its
	 * opening UNIMPLEMENTED, as an older cofferd would): the calls go
	 * unary, and get the unary call's answer, every time. */
	{
		coffer_client *a = NULL, *au = NULL;
		char unary_text[512];

		CHECK_COFFER(coffer_connect(dmn.admin, 0, &a));
		CHECK_COFFER(coffer_connect(dmn.admin, 0, &au));
		CHECK_COFFER(coffer_set_pipeline(a, COFFER_PIPELINE_ALWAYS));
		CHECK_COFFER(coffer_set_pipeline(au, COFFER_PIPELINE_OFF));
		CU_ASSERT_EQUAL(sign_with(au, "sig", NULL, "m", 1), COFFER_E_UNIMPLEMENTED);
		snprintf(unary_text, sizeof(unary_text), "%s", coffer_error_message());
		CU_ASSERT_PTR_NOT_NULL(strstr(unary_text, "KeyService"));
		for (int i = 0; i < 2; i++) {
			CU_ASSERT_EQUAL(sign_with(a, "sig", NULL, "m", 1), COFFER_E_UNIMPLEMENTED);
			CU_ASSERT_STRING_EQUAL(coffer_error_message(), unary_text);
		}
		coffer_close(a);
		coffer_close(au);
	}
}

/* ---- API keys ---- */

static void
test_api_key(void)
{
	struct coffer_api_key k, gone;
	struct coffer_bytes secret = { NULL, 0 };
	coffer_client *s = client(COFFER_PIPELINE_ALWAYS), *u = client(COFFER_PIPELINE_OFF);
	unsigned on_stream, unary, streams;
	uint8_t wrong[32];
	char unary_text[512];
	int live = -1;

	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	CU_ASSERT_PTR_NOT_NULL_FATAL(u);
	CU_ASSERT_EQUAL_FATAL(coffer_api_key_create(adm, CF_TEST_PRINCIPAL, NULL, 0, &k, &secret),
			      COFFER_OK);
	/* The stream opens signed; its requests are not signed again. */
	CHECK_COFFER(coffer_set_api_key(s, k.id, secret.data, secret.len));
	for (int i = 0; i < 10; i++)
		CHECK_COFFER(sign_with(s, "sig", NULL, "signed", 6));
	count_records(10, "KeyService/Sign\"", &on_stream, &unary, &streams);
	CU_ASSERT(on_stream >= 8 && unary == 0 && streams == 1);   /* seals may interleave */
	/* A wrong secret: the opening is refused with the unary call's text. */
	memset(wrong, 0x5a, sizeof(wrong));
	CHECK_COFFER(coffer_set_api_key(s, k.id, wrong, sizeof(wrong)));
	CHECK_COFFER(coffer_set_api_key(u, k.id, wrong, sizeof(wrong)));
	CU_ASSERT_EQUAL(sign_with(u, "sig", NULL, "m", 1), COFFER_E_UNAUTHENTICATED);
	snprintf(unary_text, sizeof(unary_text), "%s", coffer_error_message());
	CU_ASSERT_PTR_NOT_NULL(strstr(unary_text, "bad signature: it matches no live secret of "
				      "API key"));
	CU_ASSERT_EQUAL(sign_with(s, "sig", NULL, "m", 1), COFFER_E_UNAUTHENTICATED);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), unary_text);
	/* It was the stream's opening that was refused, and audited. */
	{
		char **lines = NULL;
		size_t got = 0;
		const char *last = NULL;

		/* The chain's signed checkpoints come on their own timer: the
		 * last record of a call is the one to look at. */
		CHECK_COFFER(coffer_audit_tail(adm, 4, &lines, &got));
		for (size_t i = 0; i < got; i++)
			if (strstr(lines[i], "\"method\":") != NULL)
				last = lines[i];
		CU_ASSERT(last != NULL && strstr(last, "Pipeline/Stream\"") != NULL &&
			  strstr(last, "\"result\":\"UNAUTHENTICATED\"") != NULL);
		coffer_audit_lines_free(lines, got);
	}
	/* No key at all: the text that says what to do. */
	{
		coffer_client *n = client(COFFER_PIPELINE_ALWAYS);

		CU_ASSERT_PTR_NOT_NULL_FATAL(n);
		CU_ASSERT_EQUAL(sign_with(n, "sig", NULL, "m", 1), COFFER_E_UNAUTHENTICATED);
		CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "has an API key, so every "
					      "call must carry"));
		coffer_close(n);
	}
	/* The right key again: a new stream, signed with it. */
	CHECK_COFFER(coffer_set_api_key(s, k.id, secret.data, secret.len));
	CHECK_COFFER(sign_with(s, "sig", NULL, "again", 5));
	/* Revoked while the stream is open: its next request is refused. */
	CHECK_COFFER(coffer_api_key_revoke(adm, k.id, &gone));
	CU_ASSERT_EQUAL(sign_with(s, "sig", NULL, "late", 4), COFFER_E_UNAUTHENTICATED);
	CU_ASSERT_PTR_NOT_NULL(strstr(coffer_error_message(), "that opened this stream was "
				      "revoked"));
	CHECK_COFFER(coffer_principal_set_auth(adm, CF_TEST_PRINCIPAL, 0, &live));
	coffer_bytes_free(&secret);
	coffer_close(s);
	coffer_close(u);
}

/* A fork while the stream is open: the child may close its copy of the
 * client (the reader thread is the parent's: not joined there), and the
 * parent's stream goes on. */
static void
test_fork(void)
{
	coffer_client *c = client(COFFER_PIPELINE_ALWAYS);
	int st = -1;
	pid_t pid, done = 0;

	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	CHECK_COFFER(sign_with(c, "sig", NULL, "before", 6));
	fflush(NULL);
	if ((pid = fork()) == 0) {
		coffer_close(c);
		_exit(0);
	}
	CU_ASSERT_FATAL(pid > 0);
	for (int i = 0; i < 100 && done == 0; i++) {
		done = waitpid(pid, &st, WNOHANG);
		if (done == 0)
			usleep(100 * 1000);
	}
	if (done == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
	}
	CU_ASSERT_EQUAL(done, pid);
	CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	CHECK_COFFER(sign_with(c, "sig", NULL, "after", 5));
	coffer_close(c);
}

/* ---- a restart under load ---- */

static atomic_int stop;

struct loader {
	pthread_t t;
	coffer_client *c;
	unsigned ok, ok_after, unavailable, other;
	char why[256];
};

static atomic_int restarted;

static void *
sign_until_stopped(void *arg)
{
	struct loader *l = arg;

	while (!atomic_load(&stop)) {
		int r = sign_with(l->c, "sig", NULL, "under load", 10);

		if (r == COFFER_OK) {
			l->ok++;
			l->ok_after += atomic_load(&restarted);
		} else if (r == COFFER_E_UNAVAILABLE) {
			l->unavailable++;
			usleep(20 * 1000);
		} else if (l->other++ == 0) {
			snprintf(l->why, sizeof(l->why), "%s: %s", coffer_strerror(r),
				 coffer_error_message());
		}
	}
	return NULL;
}

static void
test_restart_under_load(void)
{
	struct loader l[THREADS];
	coffer_client *c = client(COFFER_PIPELINE_ALWAYS);
	unsigned ok_after = 0, unavailable = 0;

	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	/* Nothing may hang: a call that did would end at this deadline as an
	 * error other than UNAVAILABLE. */
	coffer_set_timeout(c, 10000);
	memset(l, 0, sizeof(l));
	atomic_store(&stop, 0);
	atomic_store(&restarted, 0);
	for (unsigned i = 0; i < THREADS; i++) {
		l[i].c = c;
		CU_ASSERT_EQUAL_FATAL(pthread_create(&l[i].t, NULL, sign_until_stopped, &l[i]), 0);
	}
	sleep(1);
	CU_ASSERT_EQUAL_FATAL(cf_test_daemon_stop(&dmn), 0);
	CU_ASSERT_EQUAL_FATAL(cf_test_daemon_start(&tok, &dmn, with_metrics), 0);
	atomic_store(&restarted, 1);
	sleep(2);
	atomic_store(&stop, 1);
	for (unsigned i = 0; i < THREADS; i++) {
		pthread_join(l[i].t, NULL);
		if (l[i].other > 0)
			fprintf(stderr, "\n  thread %u: %u calls failed otherwise, first: %s\n", i,
				l[i].other, l[i].why);
		CU_ASSERT_EQUAL(l[i].other, 0);
		CU_ASSERT(l[i].ok_after > 0);
		ok_after += l[i].ok_after;
		unavailable += l[i].unavailable;
	}
	printf("\n    restart under load: %u calls UNAVAILABLE, %u succeeded after it\n",
	       unavailable, ok_after);
	coffer_close(c);
}


/* ---- calls kept in flight: coffer_*_start, then coffer_wait ---- */

#define IN_FLIGHT 8
#define TURNS 25

static void *
sign_in_flight(void *arg)
{
	struct worker *w = arg;

	for (unsigned t = 0; t < TURNS; t++) {
		coffer_call *calls[IN_FLIGHT];
		char msg[IN_FLIGHT][64];
		unsigned n = 0;
		int r = COFFER_OK;

		for (; n < IN_FLIGHT; n++) {
			snprintf(msg[n], sizeof(msg[n]), "thread %u turn %u call %u", w->id, t, n);
			r = coffer_sign_start(w->c, "sig", 0, (const uint8_t *)msg[n],
					      strlen(msg[n]), NULL, &calls[n]);
			if (r != COFFER_OK)
				break;
		}
		if (r != COFFER_OK && w->failed++ == 0)
			snprintf(w->why, sizeof(w->why), "start: %s", coffer_error_message());
		/* Each answer checked against its own message: one handed to
		 * another call would not verify. */
		for (unsigned k = 0; k < n; k++) {
			struct coffer_result res;

			memset(&res, 0, sizeof(res));
			r = coffer_wait(calls[k], &res);
			if (r != COFFER_OK) {
				if (w->failed++ == 0)
					snprintf(w->why, sizeof(w->why), "%s", coffer_error_message());
			} else if (res.version != 1 ||
				   !cf_test_openssl_verify(sig_pk->der.data, sig_pk->der.len,
							   CF_HASH_SHA256, 0,
							   (const uint8_t *)msg[k], strlen(msg[k]),
							   res.out.data, res.out.len)) {
				w->bad_sig++;
			} else {
				w->ok++;
			}
			coffer_bytes_free(&res.out);
		}
	}
	return NULL;
}

static void
test_in_flight_threads(void)
{
	struct worker w[THREADS];
	coffer_client *c = client(COFFER_PIPELINE_AUTO);
	unsigned ok, on_stream, unary, streams;
	uint64_t m0, r0, m1, r1;

	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	memset(w, 0, sizeof(w));
	pipeline_counts(&m0, &r0);
	ok = run_workers(w, c, sign_in_flight);
	pipeline_counts(&m1, &r1);
	CU_ASSERT_EQUAL(ok, THREADS * TURNS * IN_FLIGHT);
	/* Started calls take the stream even in AUTO, from the first: all of
	 * them on it, one audit record each, and several to a message. */
	CU_ASSERT_EQUAL(r1 - r0, THREADS * TURNS * IN_FLIGHT);
	printf("\n    %u threads x %u turns x %u in flight: %llu requests in %llu messages "
	       "(%.2f per message)\n", THREADS, TURNS, IN_FLIGHT, (unsigned long long)(r1 - r0),
	       (unsigned long long)(m1 - m0),
	       m1 > m0 ? (double)(r1 - r0) / (double)(m1 - m0) : 0.0);
	CU_ASSERT(2 * (m1 - m0) < r1 - r0);
	count_records(1000, "KeyService/Sign\"", &on_stream, &unary, &streams);
	CU_ASSERT_EQUAL(streams, 1);
	CU_ASSERT_EQUAL(unary, 0);
	CU_ASSERT(on_stream >= 900);
	coffer_close(c);
}

/* Started by one thread, waited for by another. */
struct waits {
	coffer_call *calls[40];
	struct coffer_result res[40];
	int r[40];
	unsigned n;
};

static void *
wait_backwards(void *arg)
{
	struct waits *ws = arg;

	for (unsigned k = ws->n; k-- > 0;)
		ws->r[k] = coffer_wait(ws->calls[k], &ws->res[k]);
	return NULL;
}

static void
test_in_flight_any_order(void)
{
	coffer_client *s = client(COFFER_PIPELINE_ALWAYS), *u = client(COFFER_PIPELINE_OFF);
	static struct waits ws;
	uint8_t macs[16][32], sigbuf[16][256];
	size_t siglen[16];
	char msg[16][32];
	pthread_t t;

	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	CU_ASSERT_PTR_NOT_NULL_FATAL(u);
	memset(&ws, 0, sizeof(ws));
	/* The expected answers, from unary calls. */
	for (unsigned i = 0; i < 16; i++) {
		struct coffer_bytes m = { NULL, 0 }, g = { NULL, 0 };

		snprintf(msg[i], sizeof(msg[i]), "in flight %u", i);
		CHECK_COFFER(coffer_mac(u, "mac", 0, (const uint8_t *)msg[i], strlen(msg[i]), &m,
					NULL));
		CHECK_COFFER(coffer_sign(u, "sig", 0, (const uint8_t *)msg[i], strlen(msg[i]),
					 NULL, &g, NULL));
		CU_ASSERT_FATAL(m.len == 32 && g.len <= sizeof(sigbuf[i]));
		memcpy(macs[i], m.data, 32);
		memcpy(sigbuf[i], g.data, g.len);
		siglen[i] = g.len;
		coffer_bytes_free(&m);
		coffer_bytes_free(&g);
	}
	/* 16 MACs, then each MAC and signature checked, every other one
	 * tampered with: 40 calls in flight at once. */
	for (unsigned i = 0; i < 16; i++)
		CHECK_COFFER(coffer_mac_start(s, "mac", 0, (const uint8_t *)msg[i], strlen(msg[i]),
					      &ws.calls[ws.n++]));
	for (unsigned i = 0; i < 12; i++) {
		uint8_t bad[32];

		memcpy(bad, macs[i], 32);
		bad[0] ^= (uint8_t)(i % 2);
		CHECK_COFFER(coffer_verify_mac_start(s, "mac", 1, (const uint8_t *)msg[i],
						     strlen(msg[i]), bad, 32, &ws.calls[ws.n++]));
	}
	for (unsigned i = 0; i < 12; i++) {
		/* The request is packed at the start: the caller's buffer may
		 * change at once. */
		sigbuf[i][siglen[i] - 1] ^= (uint8_t)(i % 2);
		CHECK_COFFER(coffer_verify_start(s, "sig", 1, (const uint8_t *)msg[i],
						 strlen(msg[i]), NULL, sigbuf[i], siglen[i],
						 &ws.calls[ws.n++]));
		memset(sigbuf[i], 0, siglen[i]);
	}
	CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, wait_backwards, &ws), 0);
	pthread_join(t, NULL);
	for (unsigned k = 0; k < ws.n; k++) {
		CU_ASSERT_EQUAL(ws.r[k], COFFER_OK);
		if (k < 16) {
			CU_ASSERT(ws.res[k].out.len == 32 &&
				  memcmp(ws.res[k].out.data, macs[k], 32) == 0);
			CU_ASSERT_EQUAL(ws.res[k].version, 1);
		} else {
			unsigned i = (k - 16) % 12;

			CU_ASSERT_EQUAL(ws.res[k].valid, i % 2 == 0);
			CU_ASSERT_PTR_NULL(ws.res[k].out.data);
		}
		coffer_bytes_free(&ws.res[k].out);
	}
	coffer_close(s);
	coffer_close(u);
}

/* Start a Sign of `data` with `key` and options o, wait for it: the status,
 * the text into text. */
static int
sign_started(coffer_client *c, const char *key, const struct coffer_sign_opts *o,
	     const void *data, size_t len, char *text, size_t textlen)
{
	struct coffer_result res;
	coffer_call *call = NULL;
	int r;

	memset(&res, 0, sizeof(res));
	if ((r = coffer_sign_start(c, key, 0, data, len, o, &call)) == COFFER_OK)
		r = coffer_wait(call, &res);
	snprintf(text, textlen, "%s", coffer_error_message());
	coffer_bytes_free(&res.out);
	return r;
}

static void
test_in_flight_errors(void)
{
	coffer_client *cs[3] = { client(COFFER_PIPELINE_ALWAYS), client(COFFER_PIPELINE_OFF),
				 NULL };
	struct coffer_sign_opts digest = { .hash = COFFER_HASH_SHA256, .prehashed = 1 };
	struct coffer_result res;
	coffer_call *calls[5];
	struct coffer_bytes spki = { NULL, 0 };
	char text[512], fpr[128];
	uint8_t d[SHA256_DIGEST_LENGTH], sentinel[7];

	/* A client that seals every call: nothing of it takes the stream. */
	CHECK_COFFER(coffer_get_identity(adm, &spki, fpr, sizeof(fpr)));
	CHECK_COFFER(coffer_connect(dmn.service, COFFER_CONNECT_SEAL_ALL, &cs[2]));
	CHECK_COFFER(coffer_pin_identity(cs[2], spki.data, spki.len));
	coffer_bytes_free(&spki);
	SHA256((const uint8_t *)"m", 1, d);
	/* On the stream, the stream off, sealed: the unary call's status and
	 * text, from coffer_wait. */
	for (int k = 0; k < 3; k++) {
		CU_ASSERT_PTR_NOT_NULL_FATAL(cs[k]);
		CU_ASSERT_EQUAL(sign_started(cs[k], "nokey", NULL, "m", 1, text, sizeof(text)),
				COFFER_E_NOT_FOUND);
		CU_ASSERT_STRING_EQUAL(text, "key nokey does not exist");
		CU_ASSERT_EQUAL(sign_started(cs[k], "mac", NULL, "m", 1, text, sizeof(text)),
				COFFER_E_PRECONDITION);
		CU_ASSERT_STRING_EQUAL(text, "key mac is a mac key (hmac-sha256); this operation "
				       "needs a sign key");
		CU_ASSERT_EQUAL(sign_started(cs[k], "sig", &digest, d, 20, text, sizeof(text)),
				COFFER_E_INVALID_ARG);
		CU_ASSERT_STRING_EQUAL(text, "a sha256 digest is 32 bytes, got 20");
		CU_ASSERT_EQUAL(sign_started(cs[k], "sig", &digest, d, sizeof(d), text,
					     sizeof(text)), COFFER_OK);
	}
	/* Failures and successes in flight together: each its own. */
	CHECK_COFFER(coffer_sign_start(cs[0], "sig", 0, d, sizeof(d), &digest, &calls[0]));
	CHECK_COFFER(coffer_sign_start(cs[0], "nokey", 0, d, sizeof(d), &digest, &calls[1]));
	CHECK_COFFER(coffer_mac_start(cs[0], "sig", 0, d, sizeof(d), &calls[2]));
	CHECK_COFFER(coffer_verify_mac_start(cs[0], "mac", 0, d, sizeof(d), d, sizeof(d),
					     &calls[3]));
	CHECK_COFFER(coffer_mac_start(cs[0], "mac", 0, d, sizeof(d), &calls[4]));
	memset(&res, 0, sizeof(res));
	CHECK_COFFER(coffer_wait(calls[0], &res));
	CU_ASSERT(res.out.len > 0 && res.version == 1);
	coffer_bytes_free(&res.out);
	/* Outputs untouched on failure. */
	res.out.data = sentinel;
	res.out.len = sizeof(sentinel);
	res.version = 77;
	res.valid = 5;
	CU_ASSERT_EQUAL(coffer_wait(calls[1], &res), COFFER_E_NOT_FOUND);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), "key nokey does not exist");
	CU_ASSERT_EQUAL(coffer_wait(calls[2], &res), COFFER_E_PRECONDITION);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), "key sig is a sign key (ec-p256); this "
			       "operation needs a mac key");
	CU_ASSERT_EQUAL(coffer_wait(calls[3], &res), COFFER_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), "version is required: pass the version "
			       "that Mac returned");
	CU_ASSERT(res.out.data == sentinel && res.out.len == sizeof(sentinel) &&
		  res.version == 77 && res.valid == 5);
	memset(&res, 0, sizeof(res));
	/* A result not wanted: waited for and dropped. */
	CHECK_COFFER(coffer_wait(calls[4], NULL));
	/* Local failures: at the start, nothing sent. */
	CU_ASSERT_EQUAL(coffer_sign_start(cs[0], "sig", 0, d, sizeof(d), NULL, NULL),
			COFFER_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), "NULL message or output");
	CU_ASSERT_EQUAL(coffer_verify_start(cs[0], "sig", 1, d, sizeof(d), NULL, NULL, 3,
					    &calls[0]), COFFER_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), "NULL message, signature or output");
	CU_ASSERT_EQUAL(coffer_mac_start(NULL, "mac", 0, d, 1, &calls[0]), COFFER_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), "NULL client or key name");
	CU_ASSERT_EQUAL(coffer_wait(NULL, &res), COFFER_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), "NULL call");
	for (int k = 0; k < 3; k++)
		coffer_close(cs[k]);
}

/* Stop cofferd (SIGSTOP) and wait until it is: no request sent after this
 * runs before SIGCONT. */
static void
freeze(void)
{
	char path[64], buf[512];
	const char *st;
	FILE *f;

	CU_ASSERT_EQUAL_FATAL(kill(dmn.pid, SIGSTOP), 0);
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)dmn.pid);
	for (int i = 0; i < 1000; i++) {
		if ((f = fopen(path, "r")) == NULL)
			break;
		buf[0] = '\0';
		if (fgets(buf, sizeof(buf), f) == NULL)
			buf[0] = '\0';
		fclose(f);
		/* "pid (comm) T ...": the state after the command's parenthesis. */
		if ((st = strrchr(buf, ')')) != NULL && st[1] == ' ' && st[2] == 'T')
			return;
		usleep(1000);
	}
	CU_FAIL_FATAL("cofferd did not stop");
}

/* A deadline counts from the call's start: calls started on a frozen cofferd
 * and waited for after it end at once, with the unary call's text. */
static void
test_in_flight_deadline(void)
{
	coffer_client *s = client(COFFER_PIPELINE_ALWAYS), *u = client(COFFER_PIPELINE_OFF);
	coffer_call *calls[4];
	struct coffer_result res;
	char text[512], unary_text[512];
	double t0;

	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	CU_ASSERT_PTR_NOT_NULL_FATAL(u);
	coffer_set_timeout(s, 300);
	coffer_set_timeout(u, 300);
	CU_ASSERT_EQUAL(sign_started(s, "sig", NULL, "m", 1, text, sizeof(text)), COFFER_OK);
	freeze();
	CU_ASSERT_EQUAL(sign_with(u, "sig", NULL, "m", 1), COFFER_E_TIMEOUT);
	snprintf(unary_text, sizeof(unary_text), "%s", coffer_error_message());
	for (int k = 0; k < 4; k++)
		CHECK_COFFER(coffer_sign_start(s, "sig", 0, (const uint8_t *)"m", 1, NULL,
					       &calls[k]));
	usleep(400 * 1000);
	t0 = now_ms();
	for (int k = 0; k < 4; k++) {
		memset(&res, 0, sizeof(res));
		CU_ASSERT_EQUAL(coffer_wait(calls[k], &res), COFFER_E_TIMEOUT);
		CU_ASSERT_STRING_EQUAL(coffer_error_message(), unary_text);
		CU_ASSERT_PTR_NULL(res.out.data);
	}
	printf("\n    frozen cofferd: \"%s\"; 4 started calls past their deadline waited "
	       "%.1f ms in all\n", unary_text, now_ms() - t0);
	CU_ASSERT(now_ms() - t0 < 100.0);
	CU_ASSERT_EQUAL(kill(dmn.pid, SIGCONT), 0);
	/* Their late answers are dropped; the stream goes on. */
	for (int k = 0; k < 3; k++)
		CU_ASSERT_EQUAL(sign_started(s, "sig", NULL, "m", 1, text, sizeof(text)),
				COFFER_OK);
	coffer_close(s);
	coffer_close(u);
}

/* cofferd killed with calls in flight on its stream, then started again:
 * the calls are repeated as unary calls on the new one (Sign records no
 * nonce), each answered with its own signature. */
static void
test_in_flight_daemon_killed(void)
{
	coffer_client *s = client(COFFER_PIPELINE_ALWAYS);
	coffer_call *calls[8];
	char msg[8][32], text[512];
	unsigned on_stream, unary, streams;
	int status;

	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	coffer_set_timeout(s, 10000);
	CU_ASSERT_EQUAL(sign_started(s, "sig", NULL, "m", 1, text, sizeof(text)), COFFER_OK);
	/* Frozen, so that none of them runs before the kill. */
	freeze();
	for (int k = 0; k < 8; k++) {
		snprintf(msg[k], sizeof(msg[k]), "killed under call %d", k);
		CHECK_COFFER(coffer_sign_start(s, "sig", 0, (const uint8_t *)msg[k],
					       strlen(msg[k]), NULL, &calls[k]));
	}
	CU_ASSERT_EQUAL_FATAL(kill(dmn.pid, SIGKILL), 0);
	CU_ASSERT_EQUAL_FATAL(waitpid(dmn.pid, &status, 0), dmn.pid);
	CU_ASSERT_EQUAL_FATAL(cf_test_daemon_start(&tok, &dmn, with_metrics), 0);
	for (int k = 0; k < 8; k++) {
		struct coffer_result res;
		int r;

		memset(&res, 0, sizeof(res));
		r = coffer_wait(calls[k], &res);
		if (r != COFFER_OK)
			fprintf(stderr, "\n  call %d: %s: %s\n", k, coffer_strerror(r),
				coffer_error_message());
		CU_ASSERT_EQUAL(r, COFFER_OK);
		CU_ASSERT(r != COFFER_OK ||
			  cf_test_openssl_verify(sig_pk->der.data, sig_pk->der.len, CF_HASH_SHA256,
						 0, (const uint8_t *)msg[k], strlen(msg[k]),
						 res.out.data, res.out.len));
		coffer_bytes_free(&res.out);
	}
	/* The new cofferd's records: the 8 Signs, as unary calls. */
	count_records(30, "KeyService/Sign\"", &on_stream, &unary, &streams);
	CU_ASSERT_EQUAL(on_stream, 0);
	CU_ASSERT_EQUAL(unary, 8);
	coffer_close(s);
}

/* A call started and not waited for has nobody to time a hold for its wave:
 * it goes out at once. A wave of callers that exit leaves the stream
 * expecting them back; a call started then reaches cofferd (its metrics
 * count it) before anyone waits for it. */
static void
test_started_call_goes_out(void)
{
	struct coffer_result res;
	coffer_call *c1 = NULL;
	coffer_client *c = client(COFFER_PIPELINE_ALWAYS);
	uint64_t m0, r0, m1 = 0, r1 = 0;
	double t0;

	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	wave_that_leaves(c);
	pipeline_counts(&m0, &r0);
	CHECK_COFFER(coffer_mac_start(c, "mac", 0, (const uint8_t *)"started", 7, &c1));
	t0 = now_ms();
	while (now_ms() - t0 < 1000.0) {
		pipeline_counts(&m1, &r1);
		if (r1 > r0)
			break;
		usleep(1000);
	}
	printf("\n    a call started after a wave reached cofferd in %.1f ms, not waited for\n",
	       now_ms() - t0);
	CU_ASSERT_EQUAL(r1, r0 + 1);
	memset(&res, 0, sizeof(res));
	CHECK_COFFER(coffer_wait(c1, &res));
	CU_ASSERT_EQUAL(res.out.len, 32);
	coffer_bytes_free(&res.out);
	coffer_close(c);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "8 threads x 200 Signs, one client, always on the stream", test_threads_always },
		{ "8 threads x 200 Signs, one client, the stream chosen automatically",
		  test_threads_auto },
		{ "8 threads x 200 Signs, one client, the stream off", test_threads_off },
		{ "a lone caller stays unary; the knob's refusal", test_lone_caller_unary },
		{ "a wave whose callers do not come back holds nobody",
		  test_wave_that_does_not_come_back },
		{ "MACs and verifications equal the unary calls'", test_mac_equal },
		{ "errors: the unary call's status and text; no stream served: unary",
		  test_errors },
		{ "an API key signs the opening; a wrong one is refused there", test_api_key },
		{ "a fork while the stream is open: the child closes its copy", test_fork },
		{ "cofferd restarted under load: success again or UNAVAILABLE",
		  test_restart_under_load },
		{ "8 threads x 8 calls in flight: each answer its own, several to a message",
		  test_in_flight_threads },
		{ "40 calls in flight, waited for backwards by another thread", test_in_flight_any_order },
		{ "calls in flight: errors from coffer_wait with the unary text, on the stream, "
		  "off it and sealed; local ones at the start", test_in_flight_errors },
		{ "calls in flight on a frozen cofferd: the deadline counts from the start",
		  test_in_flight_deadline },
		{ "cofferd killed with calls in flight: each repeated as a unary call",
		  test_in_flight_daemon_killed },
		{ "a call started after a wave goes out before anyone waits for it",
		  test_started_call_goes_out },
		{ NULL, NULL },
	};

	return cf_test_main("pipeline_client", suite_init, suite_clean, cases);
}
