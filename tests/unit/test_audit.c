/*
 * test_audit (ctest: test_audit_units) — the audit trail (daemon/audit.c) on
 * a test token and a real state store, and its verifier (cf_audit_verify.c):
 * records, the chain (recomputed with OpenSSL alone), seals, the anchor; every
 * alteration of a stopped trail, named by record and reason; what a start
 * finds; a trail altered under the writer; fail closed and open under a
 * file-size limit, and the healing; the outbox of committed changes.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "audit.h"
#include "cf_audit_verify.h"
#include "cf_hex.h"
#include "cf_status.h"
#include "cf_test_token.h"
#include "cf_test_trail.h"
#include "store.h"

static struct cf_test_token tok;
static cf_p11 *p11;
static const struct audit_cfg closed = { 0, 2000, 0, 0 }, open_cfg = { 1, 2000, 0, 0 };
static char good[400];   /* a cleanly stopped trail, written by test_write_and_verify */

static int
suite_init(void)
{
	return cf_test_p11_setup(&tok, "coffer-audit", &p11);
}

static int
suite_clean(void)
{
	cf_test_p11_teardown(&tok, p11);
	return 0;
}

static void
make_dir(const char *name, char dir[400])
{
	snprintf(dir, 400, "%s/%s", tok.dir, name);
	CU_ASSERT_FATAL(mkdir(dir, 0700) == 0);
}

static struct audit_event
event(const char *principal, const char *key, const char *request_id)
{
	struct audit_event ev = {
		.principal = principal, .uid = 1000, .pid = 42,
		.method = "/coffer.v1.KeyService/Sign",
		.key = key, .version = 1, .result = "OK", .request_id = request_id,
	};

	return ev;
}


/* Verify t written to <dir>/copy.log with pub and the anchor of <dir>'s
 * store (if use_anchor; exact if it was a clean stop). */
static int
verify_copy(const char *dir, const struct cf_trail *t, int torn, EVP_PKEY *pub, int use_anchor,
	    struct cf_audit_report *rep)
{
	struct cf_audit_verify_opts o = { .pub = pub };
	struct cf_audit_anchor an;
	char path[450], db[450];

	snprintf(path, sizeof(path), "%s/copy.log", dir);
	snprintf(db, sizeof(db), "%s/coffer.db", dir);
	cf_trail_save(path, t, torn);
	if (use_anchor) {
		CHECK_OK(cf_audit_anchor_read(db, &an));
		o.anchor = &an;
		o.exact = an.clean;
	}
	return cf_audit_verify_file(path, &o, rep);
}


static EVP_PKEY *
seal_pub(const char *dir)
{
	char path[450];
	EVP_PKEY *k = NULL;

	snprintf(path, sizeof(path), "%s/" AUDIT_SEAL_PUB, dir);
	CHECK_OK(cf_audit_pubkey_load(path, &k));
	return k;
}

/* ---- tests ---- */

static void
test_format(void)
{
	struct audit_event ev = event("a\"b\\c\x01\xff", "k1", "req-1");
	char buf[1024], small[40];
	const char *rest;
	int n;

	ev.admin = 1;
	ev.sealed = 1;
	ev.version = 3;
	ev.replay_of = "req-0";
	n = audit_format_change(&ev, buf, sizeof(buf));
	CU_ASSERT_FATAL(n > 0 && (size_t)n == strlen(buf));
	CU_ASSERT_NSTRING_EQUAL(buf, "\"time\":\"20", 10);
	rest = strstr(buf, "Z\",");
	CU_ASSERT_PTR_NOT_NULL_FATAL(rest);
	CU_ASSERT_STRING_EQUAL(rest, "Z\",\"principal\":\"a\\\"b\\\\c\\u0001\\\\xff\",\"uid\":1000,"
			       "\"pid\":42,\"socket\":\"admin\",\"sealed\":true,\"method\":"
			       "\"/coffer.v1.KeyService/Sign\",\"key\":\"k1\",\"version\":3,"
			       "\"result\":\"OK\",\"request_id\":\"req-1\","
			       "\"replay_of\":\"req-0\"");
	ev = event(NULL, NULL, NULL);
	CU_ASSERT(audit_format_change(&ev, buf, sizeof(buf)) > 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(buf, "\"principal\":\"\",\"uid\":1000,\"pid\":42,"
				      "\"socket\":\"service\",\"sealed\":false"));
	CU_ASSERT_PTR_NULL(strstr(buf, "replay_of"));
	CU_ASSERT_EQUAL(audit_format_change(&ev, small, sizeof(small)), -1);
	CU_ASSERT_EQUAL(audit_format_change(&ev, small, 0), -1);
	/* Plain runs around escapes, a DEL, UTF-8 kept whole, a bad byte last. */
	ev = event("ab\x7f" "\xc3\xa9" "cd\"\"e\xc3", NULL, NULL);
	n = audit_format_change(&ev, buf, sizeof(buf));
	CU_ASSERT_FATAL(n > 0 && (size_t)n == strlen(buf));
	CU_ASSERT_PTR_NOT_NULL(strstr(buf, "\"principal\":\"ab\\u007f\xc3\xa9" "cd\\\"\\\"e\\\\xc3\","));
	/* Any buffer short of the record and its NUL: refused whole. */
	{
		char cutbuf[1024];

		for (size_t cut = 1; cut <= (size_t)n; cut++)
			CU_ASSERT_EQUAL(audit_format_change(&ev, cutbuf, cut), -1);
		CU_ASSERT_EQUAL(audit_format_change(&ev, cutbuf, (size_t)n + 1), n);
	}
}

static void
test_write_and_verify(void)
{
	char path[450], db[450], big[1000], hex[65];
	struct cf_audit_report rep;
	struct cf_audit_anchor an;
	struct audit_event ev;
	struct cf_trail t = { 0 };
	struct stat sb;
	char **lines = NULL;
	size_t count = 0;
	EVP_PKEY *pub;
	store *st;
	audit *a;

	make_dir("good", good);
	snprintf(path, sizeof(path), "%s/audit.log", good);
	snprintf(db, sizeof(db), "%s/coffer.db", good);
	CHECK_OK(store_open(good, &st));
	CHECK_OK(audit_open(good, p11, st, &closed, &a));
	CHECK_OK(audit_admit(a));
	CU_ASSERT_EQUAL(audit_healthy(a), 1);
	for (int i = 0; i < 4; i++) {
		char rid[16];

		snprintf(rid, sizeof(rid), "req-%d", i);
		ev = event("app", "k", rid);
		CHECK_OK(audit_record(a, &ev));
	}
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	ev = event("app", "k", big);
	ev.replay_of = big;
	CHECK_OK(audit_record(a, &ev));   /* too long to fit: recorded, marked */
	CHECK_OK(audit_verify(a, &rep));
	CU_ASSERT(rep.ok && rep.records >= 6 && rep.seals >= 1 && rep.unchecked == 0);
	/* the last lines: the records, and a seal if the writer was idle meanwhile */
	CHECK_OK(audit_tail(a, 3, &lines, &count));
	CU_ASSERT_EQUAL_FATAL(count, 3);
	CU_ASSERT_PTR_NOT_NULL(strstr(lines[0], "\"request_id\":\"req-2\"") != NULL ? lines[0] :
			       strstr(lines[1], "\"request_id\":\"req-3\""));
	CU_ASSERT_PTR_NOT_NULL(strstr(lines[cf_trail_is_seal(lines[2]) ? 1 : 2],
				      "\"request_id\":\"(too long)\",\"chain\":\""));
	audit_lines_free(lines, count);
	audit_close(a);

	/* the file: numbered lines, the chain as documented, seals at the
	 * start and the stop */
	cf_trail_load(path, &t);
	CU_ASSERT_FATAL(t.n >= 8);
	for (size_t i = 0; i < t.n; i++) {
		char pre[48];

		snprintf(pre, sizeof(pre), "{\"seq\":%zu,\"time\":\"", i + 1);
		CU_ASSERT_NSTRING_EQUAL(t.l[i], pre, strlen(pre));
	}
	{
		struct cf_trail again;

		cf_trail_copy(&t, &again);
		cf_trail_rechain(&again, 0);
		for (size_t i = 0; i < t.n; i++)
			CU_ASSERT_STRING_EQUAL(again.l[i], t.l[i]);
		cf_trail_free(&again);
	}
	CU_ASSERT(cf_trail_is_seal(t.l[0]) && strstr(t.l[0], ",\"event\":\"start\",") != NULL);
	CU_ASSERT_PTR_NOT_NULL(strstr(t.l[0], ",\"anchor\":\"none\""));
	CU_ASSERT(cf_trail_is_seal(t.l[t.n - 1]) &&
		  strstr(t.l[t.n - 1], ",\"event\":\"stop\",") != NULL);
	/* every call record is sealed before the stop */
	CU_ASSERT(cf_trail_is_seal(t.l[t.n - 2]));
	CU_ASSERT_PTR_NOT_NULL(strstr(t.l[1], "\"principal\":\"app\",\"uid\":1000,\"pid\":42,"
				      "\"socket\":\"service\",\"sealed\":false,\"method\":"
				      "\"/coffer.v1.KeyService/Sign\",\"key\":\"k\",\"version\":1,"
				      "\"result\":\"OK\",\"request_id\":\"req-0\","));
	/* the anchor: the last record, a clean stop */
	CHECK_OK(cf_audit_anchor_read(db, &an));
	CU_ASSERT(an.seq == t.n && an.clean == 1 && an.time > 0);
	cf_hex_encode(an.chain, 32, hex);
	CU_ASSERT_PTR_NOT_NULL(strstr(t.l[t.n - 1], hex));
	/* the public key for auditors, and the offline verdict */
	snprintf(path, sizeof(path), "%s/" AUDIT_SEAL_PUB, good);
	CU_ASSERT(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0644);
	pub = seal_pub(good);
	CHECK_OK(verify_copy(good, &t, 0, pub, 1, &rep));
	CU_ASSERT(rep.ok && rep.records == t.n && rep.unsealed == 0 && rep.seals >= 3);
	CU_ASSERT_STRING_EQUAL(rep.reason, "");
	EVP_PKEY_free(pub);
	cf_trail_free(&t);
	store_close(st);
}

/* Each alteration of a stopped trail, named by record and reason. */
static void
test_tampered(void)
{
	char path[450], why[300], *s;
	struct cf_audit_report rep;
	struct cf_trail g = { 0 }, t = { 0 };
	EVP_PKEY *pub, *other;
	size_t n, seal = 0;

	snprintf(path, sizeof(path), "%s/audit.log", good);
	cf_trail_load(path, &g);
	CU_ASSERT_FATAL(g.n >= 8);
	n = g.n;
	for (size_t i = 3; i < n && seal == 0; i++)
		if (cf_trail_is_seal(g.l[i]))
			seal = i + 1;   /* the first seal after record 3 (1-based) */
	CU_ASSERT_FATAL(seal > 3);
	pub = seal_pub(good);
	other = EVP_EC_gen("P-256");

	/* a modified record */
	cf_trail_copy(&g, &t);
	CU_ASSERT_FATAL((s = strstr(t.l[2], "\"app\"")) != NULL);
	s[1] = 'b';
	CHECK_OK(verify_copy(good, &t, 0, pub, 1, &rep));
	CHECK_TRAIL_BAD(rep, 3, "record 3: its chain value does not follow from its content and "
		  "the record before it: it was altered");
	/* ... with the chain recomputed: the next seal gives it away */
	cf_trail_rechain(&t, 2);
	CHECK_OK(verify_copy(good, &t, 0, pub, 1, &rep));
	snprintf(why, sizeof(why), "record %zu: its seal does not verify with the audit seal key: "
		 "it, or one of records 2..%zu since the last good seal, was altered (the chain "
		 "values were recomputed)", seal, seal - 1);
	CHECK_TRAIL_BAD(rep, seal, why);
	cf_trail_free(&t);
	/* a deleted record */
	cf_trail_copy(&g, &t);
	cf_trail_drop(&t, 2);
	CHECK_OK(verify_copy(good, &t, 0, pub, 1, &rep));
	CHECK_TRAIL_BAD(rep, 3, "record 3: missing: the record here is number 4, so records 3..3 "
		  "were deleted (or moved: records reordered)");
	cf_trail_free(&t);
	/* two records swapped */
	cf_trail_copy(&g, &t);
	s = t.l[2];
	t.l[2] = t.l[3];
	t.l[3] = s;
	CHECK_OK(verify_copy(good, &t, 0, pub, 1, &rep));
	CHECK_TRAIL_BAD(rep, 3, "record 3: missing: the record here is number 4");
	cf_trail_free(&t);
	/* a record inserted (a copy of record 3 after it) */
	cf_trail_copy(&g, &t);
	memmove(&t.l[4], &t.l[3], (t.n - 3) * sizeof(t.l[0]));
	t.l[3] = strdup(t.l[2]);
	t.n++;
	CHECK_OK(verify_copy(good, &t, 0, pub, 1, &rep));
	CHECK_TRAIL_BAD(rep, 4, "record 4: the record here is number 3: a record was inserted, or "
		  "records were reordered");
	cf_trail_free(&t);
	/* the tail cut: only the anchor knows */
	cf_trail_copy(&g, &t);
	cf_trail_drop(&t, t.n - 1);
	CHECK_OK(verify_copy(good, &t, 0, pub, 0, &rep));
	CU_ASSERT(rep.ok && rep.records == n - 1);
	CHECK_OK(verify_copy(good, &t, 0, pub, 1, &rep));
	snprintf(why, sizeof(why), "record %zu: missing: the trail ends at record %zu, before "
		 "record %zu anchored in the state store: records %zu..%zu were removed, or the "
		 "file is an older copy", n, n - 1, n, n, n);
	CHECK_TRAIL_BAD(rep, n, why);
	cf_trail_free(&t);
	/* the last line cut in half */
	cf_trail_copy(&g, &t);
	t.l[t.n - 1][strlen(t.l[t.n - 1]) / 2] = '\0';
	CHECK_OK(verify_copy(good, &t, 1, pub, 1, &rep));
	snprintf(why, sizeof(why), "record %zu: cut short: the file ends inside it, after the "
		 "daemon's last complete record", n);
	CHECK_TRAIL_BAD(rep, n, why);
	CU_ASSERT(rep.torn > 0);
	cf_trail_free(&t);
	/* a record added after the clean stop (its chain made to fit) */
	cf_trail_copy(&g, &t);
	t.l[t.n++] = cf_trail_renumbered(g.l[1], n + 1);
	cf_trail_rechain(&t, t.n - 1);
	CHECK_OK(verify_copy(good, &t, 0, pub, 1, &rep));
	snprintf(why, sizeof(why), "record %zu: it follows record %zu, the last one the daemon "
		 "wrote and anchored: it was added to the trail afterwards", n + 1, n);
	CHECK_TRAIL_BAD(rep, n + 1, why);
	cf_trail_free(&t);
	/* a forged seal: a signature digit changed, the chain recomputed */
	cf_trail_copy(&g, &t);
	s = strstr(t.l[0], CF_AUDIT_SIG_FIELD) + strlen(CF_AUDIT_SIG_FIELD) + 20;
	*s = *s == '0' ? '1' : '0';
	cf_trail_rechain(&t, 0);
	CHECK_OK(verify_copy(good, &t, 0, pub, 1, &rep));
	CHECK_TRAIL_BAD(rep, 1, "record 1: its seal does not verify with the audit seal key: it "
		  "was altered");
	cf_trail_free(&t);
	/* the right trail, the wrong key; no key at all: seals unchecked */
	CHECK_OK(verify_copy(good, &g, 0, other, 1, &rep));
	CHECK_TRAIL_BAD(rep, 1, "record 1: its seal does not verify with the audit seal key");
	CHECK_OK(verify_copy(good, &g, 0, NULL, 1, &rep));
	CU_ASSERT(rep.ok && rep.seals == 0 && rep.unchecked >= 3);
	/* garbage: a line appended, a line replaced, an upper-case chain, a long line */
	cf_trail_copy(&g, &t);
	t.l[t.n++] = strdup("hello");
	CHECK_OK(verify_copy(good, &t, 0, pub, 0, &rep));
	snprintf(why, sizeof(why), "record %zu: malformed: no sequence number or chain value "
		 "where it belongs (altered or cut)", n + 1);
	CHECK_TRAIL_BAD(rep, n + 1, why);
	free(t.l[3]);
	t.l[3] = strdup("{\"seq\":4,\"chain\":\"\"}");
	CHECK_OK(verify_copy(good, &t, 0, pub, 1, &rep));
	CHECK_TRAIL_BAD(rep, 4, "record 4: malformed");
	cf_trail_free(&t);
	cf_trail_copy(&g, &t);
	for (s = cf_trail_chain_field(t.l[1]) + strlen(CF_AUDIT_CHAIN_FIELD); *s != '"'; s++)
		if (*s >= 'a' && *s <= 'f')
			*s = (char)(*s - 'a' + 'A');
	CHECK_OK(verify_copy(good, &t, 0, pub, 1, &rep));
	CHECK_TRAIL_BAD(rep, 2, "record 2: malformed");
	free(t.l[1]);
	CU_ASSERT_FATAL((t.l[1] = calloc(1, CF_AUDIT_LINE_MAX + 2)) != NULL);
	memset(t.l[1], 'x', CF_AUDIT_LINE_MAX + 1);
	CHECK_OK(verify_copy(good, &t, 0, pub, 1, &rep));
	CHECK_TRAIL_BAD(rep, 2, "record 2: longer than any record the daemon writes: altered");
	cf_trail_free(&t);
	/* an empty trail: fine alone, not against the anchor */
	CHECK_OK(verify_copy(good, &t, 0, pub, 0, &rep));
	CU_ASSERT(rep.ok && rep.records == 0);
	CHECK_OK(verify_copy(good, &t, 0, pub, 1, &rep));
	snprintf(why, sizeof(why), "record 1: missing: the trail ends at record 0, before record "
		 "%zu anchored", n);
	CHECK_TRAIL_BAD(rep, 1, why);
	/* read only up to a limit (the daemon's own end) */
	{
		struct cf_audit_verify_opts o = { .pub = pub };

		o.limit = (off_t)(strlen(g.l[0]) + strlen(g.l[1]) + 2);
		CHECK_OK(cf_audit_verify_file(path, &o, &rep));
		CU_ASSERT(rep.ok && rep.records == 2 && rep.good_size == o.limit);
		snprintf(path, sizeof(path), "%s/nothing.log", good);
		CHECK_ERR(cf_audit_verify_file(path, &o, &rep), CF_E_NOT_FOUND,
			  "nothing.log: No such file or directory");
	}
	cf_trail_free(&g);
	EVP_PKEY_free(other);
	EVP_PKEY_free(pub);
}

/* What an auditor hands the offline verifier: keys and anchors. */
static void
test_verify_inputs(void)
{
	struct cf_audit_anchor an;
	char db[450], pem[4096], path[450], dir[400];
	EVP_PKEY *k = NULL, *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	BIO *b = BIO_new(BIO_s_mem());
	store *st;
	long len;
	char *p;

	CHECK_ERR(cf_audit_pubkey_parse("hello", 5, &k), CF_E_INVALID_ARG, "not a PEM public key");
	CU_ASSERT_FATAL(ed != NULL && b != NULL && PEM_write_bio_PUBKEY(b, ed) == 1);
	len = BIO_get_mem_data(b, &p);
	CU_ASSERT_FATAL(len > 0 && (size_t)len < sizeof(pem));
	memcpy(pem, p, (size_t)len);
	CHECK_ERR(cf_audit_pubkey_parse(pem, (size_t)len, &k), CF_E_WRONG_KEY_TYPE,
		  "the audit seal key is an EC P-256 key; this one is not");
	snprintf(path, sizeof(path), "%s/ed.pem", tok.dir);
	pem[len] = '\0';
	CU_ASSERT_FATAL(cf_test_write_file(path, pem, 0644) == 0);
	CHECK_ERR(cf_audit_pubkey_load(path, &k), CF_E_WRONG_KEY_TYPE,
		  "ed.pem: not a PEM EC P-256 public key");
	CHECK_ERR(cf_audit_pubkey_load("/nonexistent/x.pem", &k), CF_E_IO,
		  "cannot read /nonexistent/x.pem");
	CU_ASSERT_PTR_NULL(k);
	BIO_free(b);
	EVP_PKEY_free(ed);
	/* anchors */
	CHECK_OK(cf_audit_anchor_parse("12:00112233445566778899aabbccddeeff00112233445566778899"
				       "aabbccddeeff", &an));
	CU_ASSERT(an.seq == 12 && an.chain[1] == 0x11 && an.chain[31] == 0xff && an.clean == 0);
	CHECK_ERR(cf_audit_anchor_parse("0:00112233445566778899aabbccddeeff00112233445566778899"
					"aabbccddeeff", &an), CF_E_INVALID_ARG,
		  "an anchor is SEQ:CHAIN (the record's number and its 64 lower-case hex chain "
		  "value)");
	CHECK_ERR(cf_audit_anchor_parse("12:00112233445566778899AABBCCDDEEFF001122334455667788"
					"99aabbccddeeff", &an), CF_E_INVALID_ARG, "SEQ:CHAIN");
	CHECK_ERR(cf_audit_anchor_parse("12:0011", &an), CF_E_INVALID_ARG, "SEQ:CHAIN");
	CHECK_ERR(cf_audit_anchor_parse("-1:00112233445566778899aabbccddeeff0011223344556677889"
					"9aabbccddeeff", &an), CF_E_INVALID_ARG, "SEQ:CHAIN");
	make_dir("noanchor", dir);
	CHECK_OK(store_open(dir, &st));
	store_close(st);
	snprintf(db, sizeof(db), "%s/coffer.db", dir);
	CHECK_ERR(cf_audit_anchor_read(db, &an), CF_E_NOT_FOUND,
		  "holds no audit anchor (the trail was never anchored)");
	CHECK_ERR(cf_audit_anchor_read("/nonexistent/coffer.db", &an), CF_E_IO,
		  "cannot read the audit anchor in /nonexistent/coffer.db");
}

/* A line of 64 MiB (newline-terminated, then one unterminated) is named
 * altered without being held in memory: the verifier's peak memory grows
 * by far less than the line (before, getline held it whole: a file with a
 * line of gigabytes stalled or killed the daemon at its start). */
static void
test_huge_line(void)
{
	struct cf_audit_verify_opts o = { 0 };
	struct cf_audit_report rep;
	struct rusage before, after;
	char path[450], *chunk = malloc(1 << 20);
	FILE *f;

	CU_ASSERT_FATAL(chunk != NULL);
	memset(chunk, 'a', 1 << 20);
	snprintf(path, sizeof(path), "%s/huge.log", tok.dir);
	CU_ASSERT_FATAL((f = fopen(path, "w")) != NULL);
	for (int pass = 0; pass < 2; pass++) {
		for (int i = 0; i < 64; i++)
			CU_ASSERT_FATAL(fwrite(chunk, 1, 1 << 20, f) == 1 << 20);
		if (pass == 0)
			fputc('\n', f);
	}
	fclose(f);
	free(chunk);
	CU_ASSERT_FATAL(getrusage(RUSAGE_SELF, &before) == 0);
	CHECK_OK(cf_audit_verify_file(path, &o, &rep));
	CU_ASSERT_FATAL(getrusage(RUSAGE_SELF, &after) == 0);
	CU_ASSERT(!rep.ok && rep.first_bad == 1);
	CU_ASSERT_STRING_EQUAL(rep.reason, "record 1: longer than any record the daemon writes: "
			       "altered");
	CU_ASSERT_EQUAL(rep.good_size, (off_t)(64 << 20) + 1);
	CU_ASSERT_EQUAL(rep.torn, (off_t)(64 << 20));    /* the unterminated one */
	CU_ASSERT(after.ru_maxrss - before.ru_maxrss < 16 * 1024);   /* KiB */
	unlink(path);
}

/* A start checks the trail: tampering goes into the start record; after a
 * crash, records past the anchor are adopted and a torn line is cut. */
static void
test_start_findings(void)
{
	char dir[400], path[450], *s, why[200];
	struct store_audit_anchor sa;
	struct cf_audit_report rep;
	struct cf_trail t = { 0 };
	struct audit_event ev = event("app", "k", "r");
	store *st;
	audit *a;
	size_t n;

	make_dir("start", dir);
	snprintf(path, sizeof(path), "%s/audit.log", dir);
	CHECK_OK(store_open(dir, &st));
	CHECK_OK(audit_open(dir, p11, st, &closed, &a));
	CHECK_OK(audit_record(a, &ev));
	CHECK_OK(audit_record(a, &ev));
	audit_close(a);
	/* record 2 altered while stopped */
	cf_trail_load(path, &t);
	n = t.n;
	CU_ASSERT_FATAL((s = strstr(t.l[1], "\"app\"")) != NULL);
	s[1] = 'x';
	cf_trail_save(path, &t, 0);
	cf_trail_free(&t);
	CHECK_OK(audit_open(dir, p11, st, &closed, &a));   /* the daemon still starts */
	CHECK_OK(audit_verify(a, &rep));
	CHECK_TRAIL_BAD(rep, 2, "record 2: its chain value does not follow");
	audit_close(a);
	cf_trail_load(path, &t);
	CU_ASSERT_FATAL(t.n > n);
	CU_ASSERT_PTR_NOT_NULL(strstr(t.l[n], ",\"event\":\"start\","));
	CU_ASSERT_PTR_NOT_NULL(strstr(t.l[n], ",\"anchor\":\"clean\""));
	CU_ASSERT_PTR_NOT_NULL(strstr(t.l[n], ",\"tamper_at\":2,\"tampered\":\"its chain value "
				      "does not follow"));
	/* put record 2 back: the start record still reports what it found */
	s = strstr(t.l[1], "\"xpp\"");
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	s[1] = 'a';
	cf_trail_save(path, &t, 0);
	{
		struct cf_audit_verify_opts o = { .pub = NULL };

		CHECK_OK(cf_audit_verify_file(path, &o, &rep));
		snprintf(why, sizeof(why), "record 2: altered while the daemon was stopped "
			 "(found at its start, record %zu): its chain value does not follow",
			 n + 1);
		CHECK_TRAIL_BAD(rep, 2, why);
	}
	cf_trail_free(&t);
	store_close(st);

	/* a crash: the anchor not clean, one record written after it, a torn line */
	make_dir("crash", dir);
	snprintf(path, sizeof(path), "%s/audit.log", dir);
	CHECK_OK(store_open(dir, &st));
	CHECK_OK(audit_open(dir, p11, st, &closed, &a));
	CHECK_OK(audit_record(a, &ev));
	audit_close(a);
	CHECK_OK(store_audit_anchor_get(st, &sa));
	sa.clean = 0;
	CHECK_OK(store_audit_anchor_put(st, &sa, 0));
	cf_trail_load(path, &t);
	n = t.n;
	t.l[t.n++] = cf_trail_renumbered(t.l[1], n + 1);
	cf_trail_rechain(&t, n);
	t.l[t.n++] = strdup("{\"seq\":99,\"time\":\"2");
	cf_trail_save(path, &t, 1);
	cf_trail_free(&t);
	CHECK_OK(audit_open(dir, p11, st, &closed, &a));
	CHECK_OK(audit_verify(a, &rep));
	CU_ASSERT(rep.ok && rep.torn == 0);
	audit_close(a);
	cf_trail_load(path, &t);
	CU_ASSERT_FATAL(t.n > n + 1);
	snprintf(why, sizeof(why), ",\"event\":\"start\",\"pid\":%d,\"anchor\":\"crash\","
		 "\"anchored\":%zu,\"adopted\":1,\"cut_bytes\":19,", (int)getpid(), n);
	CU_ASSERT_PTR_NOT_NULL(strstr(t.l[n + 1], why));
	cf_trail_free(&t);
	store_close(st);
}

/* The running writer's own verify: the file replaced or cut under it. */
static void
test_altered_while_running(void)
{
	char dir[400], path[450], tmp[450];
	struct audit_event ev = event("app", "k", "r");
	struct cf_audit_report rep;
	struct cf_trail t = { 0 }, orig = { 0 };
	audit *a;
	char *s;
	int i;

	make_dir("live", dir);
	snprintf(path, sizeof(path), "%s/audit.log", dir);
	snprintf(tmp, sizeof(tmp), "%s/audit.new", dir);
	CHECK_OK(audit_open(dir, p11, NULL, &closed, &a));   /* no store: no anchor */
	for (i = 0; i < 3; i++)
		CHECK_OK(audit_record(a, &ev));
	/* the writer seals once idle (20 ms); audit_verify reads what it has
	 * accounted for */
	for (i = 0; i < 100; i++) {
		CHECK_OK(audit_verify(a, &rep));
		if (rep.records == 5)
			break;
		usleep(20000);
	}
	CU_ASSERT_FATAL(i < 100);
	CU_ASSERT(rep.ok && rep.seals == 2 && rep.unsealed == 0);
	cf_trail_load(path, &orig);
	CU_ASSERT_FATAL(orig.n == 5 && cf_trail_is_seal(orig.l[4]));
	/* a copy with record 3 changed and the chain recomputed, renamed over it */
	cf_trail_copy(&orig, &t);
	s = strstr(t.l[2], "\"app\"");
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	s[1] = 'e';
	cf_trail_rechain(&t, 2);
	cf_trail_save(tmp, &t, 0);
	CU_ASSERT_FATAL(rename(tmp, path) == 0);
	CHECK_OK(audit_verify(a, &rep));
	CHECK_TRAIL_BAD(rep, 5, "record 5: its seal does not verify with the audit seal key: "
		  "it, or one of records 2..4 since the last good seal, was altered");
	/* the same bytes as written verify, whatever file holds them */
	cf_trail_save(path, &orig, 0);
	CHECK_OK(audit_verify(a, &rep));
	CU_ASSERT(rep.ok);
	/* the last record (the seal) cut off */
	cf_trail_drop(&orig, 4);
	cf_trail_save(path, &orig, 0);
	CHECK_OK(audit_verify(a, &rep));
	CHECK_TRAIL_BAD(rep, 2, "record 2: not authenticated: the trail ends at record 4, before "
		  "its anchored record 5, and no good seal covers records 2..4");
	cf_trail_free(&t);
	cf_trail_free(&orig);
	audit_close(a);
}

/* Hold the trail at its present size (RLIMIT_FSIZE: writes past it fail
 * with EFBIG; audit_open ignores SIGXFSZ), or lift the hold. */
static void
hold_size(off_t size, struct rlimit *saved)
{
	struct rlimit r;

	if (size < 0) {
		CU_ASSERT_FATAL(setrlimit(RLIMIT_FSIZE, saved) == 0);
		return;
	}
	CU_ASSERT_FATAL(getrlimit(RLIMIT_FSIZE, saved) == 0);
	r = *saved;
	r.rlim_cur = (rlim_t)size;
	CU_ASSERT_FATAL(setrlimit(RLIMIT_FSIZE, &r) == 0);
}

static off_t
file_size(const char *path)
{
	struct stat sb;

	return stat(path, &sb) == 0 ? sb.st_size : -1;
}

/* A trail of its own (no store) in <token dir>/<name>; its path into path. */
static audit *
open_alone(const char *name, const struct audit_cfg *cfg, char path[450])
{
	char dir[400];
	audit *a = NULL;

	make_dir(name, dir);
	snprintf(path, 450, "%s/audit.log", dir);
	CHECK_OK(audit_open(dir, p11, NULL, cfg, &a));
	CU_ASSERT_FATAL(file_size(path) > 0);
	return a;
}

/* Wait (up to 5 s: the writer retries every second) for a line with `what`. */
static int
wait_for_line(audit *a, const char *what)
{
	for (int i = 0; i < 100; i++) {
		char **lines = NULL;
		size_t count = 0;
		int found = 0;

		if (audit_tail(a, 4, &lines, &count) == CF_OK)
			for (size_t k = 0; k < count; k++)
				found |= strstr(lines[k], what) != NULL;
		audit_lines_free(lines, count);
		if (found)
			return 1;
		usleep(50000);
	}
	return 0;
}

static void
test_fail_closed(void)
{
	struct audit_event ev = event("app", "k", "r");
	struct cf_audit_report rep;
	struct rlimit saved;
	char path[450];
	audit *a = open_alone("closed", &closed, path);
	off_t size = file_size(path);

	/* room for 10 more bytes: a partial line is written, then cut back */
	hold_size(size + 10, &saved);
	CHECK_ERR(audit_record(a, &ev), CF_E_UNAVAILABLE, "the audit trail cannot be written "
		  "(writing ");
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "File too large"));
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "this call's record is not written, "
				      "so its result is withheld"));
	CU_ASSERT_EQUAL(file_size(path), size);
	CHECK_ERR(audit_admit(a), CF_E_UNAVAILABLE, "calls are refused until it can; this daemon "
		  "fails closed (audit.failure = closed)");
	CU_ASSERT_EQUAL(audit_healthy(a), 0);
	CHECK_ERR(audit_record(a, &ev), CF_E_UNAVAILABLE, "the audit trail cannot be written");
	hold_size(-1, &saved);
	/* the writer heals it: a resumed record counts the two lost ones */
	for (int i = 0; i < 100 && !audit_healthy(a); i++)
		usleep(50000);
	CU_ASSERT_EQUAL(audit_healthy(a), 1);
	CU_ASSERT(wait_for_line(a, ",\"event\":\"resumed\",\"lost\":2,\"sig\":\""));
	CHECK_OK(audit_admit(a));
	CHECK_OK(audit_record(a, &ev));
	CHECK_OK(audit_verify(a, &rep));
	CU_ASSERT(rep.ok);
	audit_close(a);
}

static void
test_fail_open(void)
{
	struct audit_event ev = event("app", "k", "r");
	struct cf_audit_report rep;
	struct rlimit saved;
	char path[450];
	audit *a = open_alone("open", &open_cfg, path);
	off_t size = file_size(path);

	hold_size(size, &saved);
	for (int i = 0; i < 3; i++) {
		CHECK_OK(audit_admit(a));
		CHECK_OK(audit_record(a, &ev));   /* calls go on */
	}
	usleep(200000);
	CU_ASSERT_EQUAL(audit_healthy(a), 1);
	CHECK_OK(audit_admit(a));
	CU_ASSERT_EQUAL(file_size(path), size);
	hold_size(-1, &saved);
	CU_ASSERT(wait_for_line(a, ",\"event\":\"resumed\",\"lost\":3,"));
	CHECK_OK(audit_verify(a, &rep));
	CU_ASSERT(rep.ok);
	audit_close(a);
}

/* The record of a change, as a dispatcher formats it for the outbox. */
static int
change_record(const struct store_call *c, const char *name, uint32_t version, char *buf,
	      size_t len)
{
	struct audit_event ev = event("admin", name, c->arg);

	ev.method = "/coffer.v1.AdminService/CreatePrincipal";
	ev.version = version;
	return audit_format_change(&ev, buf, len);
}

static int
count_outbox(int64_t id, const char *line, void *arg)
{
	(void)id;
	(void)line;
	(*(int *)arg)++;
	return CF_OK;
}

static void
change(store *st, const char *name, char *request_id)
{
	struct store_call sc = { .record = change_record, .arg = request_id };
	struct store_principal p = { .nuids = 1 };

	snprintf(p.name, sizeof(p.name), "%s", name);
	p.uids[0] = (uint32_t)(8000 + name[1]);
	store_call_set(&sc);
	CHECK_OK(store_principal_put(st, &p, 1));
	store_call_set(NULL);
	CU_ASSERT_EQUAL(sc.effects, 1);
}

static void
test_outbox(void)
{
	struct cf_audit_report rep;
	char dir[400], path[450], db[450], ra[] = "req-a", rb[] = "req-b";
	struct cf_audit_verify_opts o = { .pub = NULL };
	struct cf_audit_anchor an;
	struct cf_trail t = { 0 };
	int pending = 0;
	store *st;
	audit *a;
	size_t i, j;

	make_dir("outbox", dir);
	snprintf(path, sizeof(path), "%s/audit.log", dir);
	snprintf(db, sizeof(db), "%s/coffer.db", dir);
	CHECK_OK(store_open(dir, &st));
	CHECK_OK(audit_open(dir, p11, st, &closed, &a));
	change(st, "pa", ra);
	CHECK_OK(store_outbox_load(st, count_outbox, &pending));
	CU_ASSERT_EQUAL(pending, 1);
	CHECK_OK(audit_flush_outbox(a));
	/* In the file, then anchored and dropped by the anchorer thread, which
	 * the flush does not wait for. */
	for (i = 0; i < 200; i++) {
		pending = 0;
		CHECK_OK(store_outbox_load(st, count_outbox, &pending));
		if (pending == 0)
			break;
		usleep(10000);
	}
	CU_ASSERT_EQUAL(pending, 0);
	CHECK_OK(audit_flush_outbox(a));   /* nothing left: nothing written twice */
	audit_close(a);
	/* a change committed while the trail is closed: moved in at the start */
	change(st, "pb", rb);
	CHECK_OK(audit_open(dir, p11, st, &closed, &a));
	audit_close(a);
	cf_trail_load(path, &t);
	for (i = 0; i < t.n && strstr(t.l[i], "\"request_id\":\"req-a\"") == NULL; i++)
		;
	CU_ASSERT_FATAL(i < t.n);
	CU_ASSERT_PTR_NOT_NULL(strstr(t.l[i], ",\"outbox\":1,\"time\":\""));
	CU_ASSERT_PTR_NOT_NULL(strstr(t.l[i], "\"key\":\"pa\""));
	for (j = i; j < t.n && strstr(t.l[j], "\"request_id\":\"req-b\"") == NULL; j++)
		;
	CU_ASSERT_FATAL(j + 1 < t.n);
	CU_ASSERT_PTR_NOT_NULL(strstr(t.l[j], ",\"outbox\":2,"));
	/* before the start record of the trail it was moved in by */
	CU_ASSERT_PTR_NOT_NULL(strstr(t.l[j + 1], ",\"event\":\"start\","));
	CU_ASSERT_PTR_NOT_NULL(strstr(t.l[j - 1], ",\"event\":\"stop\","));
	for (size_t k = 0; k < t.n; k++)   /* each exactly once */
		CU_ASSERT(k == i || (strstr(t.l[k], "\"request_id\":\"req-a\"") == NULL &&
				     strstr(t.l[k], ",\"outbox\":1,") == NULL));
	CHECK_OK(cf_audit_anchor_read(db, &an));
	o.anchor = &an;
	o.exact = 1;
	CHECK_OK(cf_audit_verify_file(path, &o, &rep));
	CU_ASSERT(rep.ok && rep.records == t.n);
	cf_trail_free(&t);
	store_close(st);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "record format and escaping", test_format },
		{ "a trail written, chained, sealed, anchored and verified",
		  test_write_and_verify },
		{ "every alteration of a stopped trail is named", test_tampered },
		{ "public keys and anchors given to the verifier", test_verify_inputs },
		{ "a line of 64 MiB: altered, never held in memory", test_huge_line },
		{ "a start reports tampering; adopts a crash's records, cuts a torn line",
		  test_start_findings },
		{ "a trail replaced or cut under the running writer", test_altered_while_running },
		{ "fail closed: refused while unwritable, healed after", test_fail_closed },
		{ "fail open: calls go on, the loss is recorded", test_fail_open },
		{ "the outbox of committed changes, exactly once", test_outbox },
		{ NULL, NULL },
	};

	return cf_test_main("audit", suite_init, suite_clean, cases);
}
