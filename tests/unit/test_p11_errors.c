/*
 * test_p11_errors — opening the layer with bad configuration: wrong PIN, a
 * PIN file others can read (or owned by someone else, missing, empty), an
 * unknown or malformed token URI, an ambiguous URI, a missing module, a file
 * that is not a module. Each gets its own status and an actionable detail.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "cf_status.h"
#include "cf_test_token.h"

static struct cf_test_token tok;

static int
suite_init(void)
{
	return cf_test_token_create(&tok, "coffer-errors");
}

static int
suite_clean(void)
{
	cf_test_token_destroy(&tok);
	return 0;
}

/* Open with a modified config; expect `want` and a detail containing `needle`. */
static void
expect_open(const struct cf_p11_config *cfg, int want, const char *needle)
{
	cf_p11 *p = NULL;
	int r = cf_p11_open(cfg, &p);

	if (r != want || strstr(cf_error_detail(), needle) == NULL)
		fprintf(stderr, "\n  got %s: %s (wanted %s with \"%s\")\n", cf_status_name(r),
			cf_error_detail(), cf_status_name(want), needle);
	CU_ASSERT_EQUAL(r, want);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), needle));
	CU_ASSERT_PTR_NULL(p);
	cf_p11_close(p);
}

static void
test_good_config_opens(void)
{
	cf_p11 *p = NULL;

	CU_ASSERT_EQUAL(cf_p11_open(&tok.cfg, &p), CF_OK);
	cf_p11_close(p);
}

static void
test_wrong_pin(void)
{
	struct cf_p11_config cfg = tok.cfg;
	char path[400];

	snprintf(path, sizeof(path), "%s/wrong.pin", tok.dir);
	CU_ASSERT_FATAL(cf_test_write_file(path, "not-the-pin\n", 0600) == 0);
	cfg.pin_file = path;
	expect_open(&cfg, CF_E_PIN_INCORRECT, "refused the PIN");
	/* The wrong PIN itself never appears in the message. */
	CU_ASSERT_PTR_NULL(strstr(cf_error_detail(), "not-the-pin"));
	/* and the right PIN still works afterwards */
	test_good_config_opens();
}

static void
test_pin_file_permissions(void)
{
	struct cf_p11_config cfg = tok.cfg;
	char path[400];

	snprintf(path, sizeof(path), "%s/open.pin", tok.dir);
	cfg.pin_file = path;
	CU_ASSERT_FATAL(cf_test_write_file(path, CF_TEST_PIN "\n", 0644) == 0);
	expect_open(&cfg, CF_E_PIN_FILE, "group or others");
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "chmod 600"));
	CU_ASSERT_FATAL(cf_test_write_file(path, CF_TEST_PIN "\n", 0640) == 0);
	expect_open(&cfg, CF_E_PIN_FILE, "mode 640");
	CU_ASSERT_FATAL(cf_test_write_file(path, CF_TEST_PIN "\n", 0604) == 0);
	expect_open(&cfg, CF_E_PIN_FILE, "group or others");
	/* the same content at 0400 is accepted */
	CU_ASSERT_FATAL(cf_test_write_file(path, CF_TEST_PIN "\n", 0400) == 0);
	{
		cf_p11 *p = NULL;

		CU_ASSERT_EQUAL(cf_p11_open(&cfg, &p), CF_OK);
		cf_p11_close(p);
	}
	CU_ASSERT_FATAL(unlink(path) == 0);
}

static void
test_pin_file_other_owner(void)
{
	struct cf_p11_config cfg = tok.cfg;
	char path[400];

	if (geteuid() != 0) {
		fprintf(stderr, "(skipped owner check: needs root to chown) ");
		return;
	}
	snprintf(path, sizeof(path), "%s/foreign.pin", tok.dir);
	CU_ASSERT_FATAL(cf_test_write_file(path, CF_TEST_PIN "\n", 0600) == 0);
	CU_ASSERT_FATAL(chown(path, 65534, 65534) == 0);
	cfg.pin_file = path;
	expect_open(&cfg, CF_E_PIN_FILE, "owned by uid 65534");
}

static void
test_pin_file_missing_or_empty(void)
{
	struct cf_p11_config cfg = tok.cfg;
	char path[400];

	snprintf(path, sizeof(path), "%s/absent.pin", tok.dir);
	cfg.pin_file = path;
	expect_open(&cfg, CF_E_PIN_FILE, "No such file");
	snprintf(path, sizeof(path), "%s/empty.pin", tok.dir);
	CU_ASSERT_FATAL(cf_test_write_file(path, "\n", 0600) == 0);
	expect_open(&cfg, CF_E_PIN_FILE, "is empty");
	cfg.pin_file = tok.dir; /* a directory */
	expect_open(&cfg, CF_E_PIN_FILE, "not a regular file");
}

static void
test_unknown_token_uri(void)
{
	struct cf_p11_config cfg = tok.cfg;

	cfg.token_uri = "pkcs11:token=no-such-token";
	expect_open(&cfg, CF_E_TOKEN_NOT_FOUND, "no token matches pkcs11:token=no-such-token");
	cfg.token_uri = "https://example.com/";
	expect_open(&cfg, CF_E_CONFIG, "not a valid PKCS#11 URI");
}

static void
test_ambiguous_uri(void)
{
	struct cf_p11_config cfg = tok.cfg;

	CU_ASSERT_FATAL(cf_test_token_add(&tok, "coffer-errors-2") == 0);
	/* a URI without attributes matches every token */
	cfg.token_uri = "pkcs11:";
	expect_open(&cfg, CF_E_CONFIG, "add serial=");
	/* the specific URI still selects one */
	test_good_config_opens();
}

static void
test_missing_module(void)
{
	struct cf_p11_config cfg = tok.cfg;
	char path[400];

	cfg.module_path = "/nonexistent/libpkcs11.so";
	expect_open(&cfg, CF_E_MODULE, "cannot load PKCS#11 module /nonexistent/libpkcs11.so");
	/* a shared library that is not a PKCS#11 module */
	cfg.module_path = "libz.so.1";
	expect_open(&cfg, CF_E_MODULE, "not a PKCS#11 module");
	/* a file that is not a library at all */
	snprintf(path, sizeof(path), "%s/fake.so", tok.dir);
	CU_ASSERT_FATAL(cf_test_write_file(path, "not an ELF file", 0600) == 0);
	cfg.module_path = path;
	expect_open(&cfg, CF_E_MODULE, "cannot load");
}

static void
test_missing_settings(void)
{
	struct cf_p11_config cfg = tok.cfg;

	cfg.pin_file = NULL;
	expect_open(&cfg, CF_E_CONFIG, "required");
	expect_open(NULL, CF_E_CONFIG, "required");
}

struct pool_worker {
	cf_p11_key *k;
	int ok, busy, other;
	char busy_detail[CF_ERROR_DETAIL_MAX];
};

static void *
pool_worker(void *arg)
{
	struct pool_worker *w = arg;
	cf_buf *sig = cf_buf_new(CF_P11_MAX_SIG);

	for (int i = 0; i < 10; i++) {
		int r = cf_p11_sign(w->k, NULL, (const uint8_t *)"x", 1, sig);

		cf_buf_reset(sig);
		if (r == CF_OK)
			w->ok++;
		else if (r == CF_E_BUSY) {
			w->busy++;
			snprintf(w->busy_detail, sizeof(w->busy_detail), "%s", cf_error_detail());
		} else
			w->other++;
	}
	cf_buf_free(sig);
	return NULL;
}

/* One session, a 1 ms wait and four threads of slow RSA signatures: some
 * callers must give up with CF_E_BUSY, the rest succeed, nothing else; the
 * layer's counters (cf_p11_stats, for metrics) say exactly that. */
static void
test_pool_exhausted(void)
{
	struct cf_p11_config cfg = tok.cfg;
	struct pool_worker w[4];
	pthread_t th[4];
	cf_p11 *p = NULL;
	cf_p11_key *k = NULL;
	struct cf_p11_stats s0, s1;
	int ok = 0, busy = 0, other = 0;

	cfg.pool_size = 1;
	cfg.pool_timeout_ms = 1;
	CU_ASSERT_EQUAL_FATAL(cf_p11_open(&cfg, &p), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_p11_key_generate(p, "pool", 1, CF_KEY_RSA_3072, 0, &k), CF_OK);
	memset(w, 0, sizeof(w));
	cf_p11_stats(p, &s0);
	for (int i = 0; i < 4; i++) {
		w[i].k = k;
		pthread_create(&th[i], NULL, pool_worker, &w[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		ok += w[i].ok;
		busy += w[i].busy;
		other += w[i].other;
		if (w[i].busy)
			CU_ASSERT_PTR_NOT_NULL(strstr(w[i].busy_detail, "pool timeout"));
	}
	CU_ASSERT(ok > 0);
	CU_ASSERT(busy > 0);
	CU_ASSERT_EQUAL(other, 0);
	cf_p11_stats(p, &s1);
	CU_ASSERT_EQUAL(s1.operations - s0.operations, (uint64_t)ok);
	CU_ASSERT_EQUAL(s1.pool_timeouts - s0.pool_timeouts, (uint64_t)busy);
	CU_ASSERT(s1.pool_waits - s0.pool_waits >= (uint64_t)busy);
	CU_ASSERT_EQUAL(s1.errors, s0.errors);
	CU_ASSERT_EQUAL(s1.recoveries, s0.recoveries);
	cf_p11_key_free(k);
	cf_p11_close(p);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "good configuration opens", test_good_config_opens },
		{ "wrong PIN", test_wrong_pin },
		{ "PIN file readable by others", test_pin_file_permissions },
		{ "PIN file owned by another user", test_pin_file_other_owner },
		{ "PIN file missing, empty, not a file", test_pin_file_missing_or_empty },
		{ "unknown or malformed token URI", test_unknown_token_uri },
		{ "ambiguous token URI", test_ambiguous_uri },
		{ "missing or invalid module", test_missing_module },
		{ "missing settings", test_missing_settings },
		{ "exhausted session pool times out with CF_E_BUSY", test_pool_exhausted },
		{ NULL, NULL },
	};

	return cf_test_main("p11_errors", suite_init, suite_clean, cases);
}
