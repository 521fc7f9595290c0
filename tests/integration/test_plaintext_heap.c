/*
 * test_plaintext_heap — sealed Wrap, Unwrap and GenerateDataKey keep their
 * plaintext in locked memory, in cofferd and in libcoffer (issue 15).
 *
 * The program runs itself again with heapscan_shim preloaded, which makes
 * every process of the run (this client, cofferd, the token tools) copy
 * each block of ordinary memory it frees or wipes into a dump file. The
 * client wraps and unwraps a random marker held in locked memory and asks
 * for data keys with their plaintext; afterwards no dump may contain the
 * marker or any of the data keys. A control secret freed from the heap on
 * purpose must be found, or the scan proves nothing.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/rand.h>

#include "cf_secret.h"
#include "cf_test_client.h"
#include "cf_test_token.h"
#include "coffer.h"

#define ROUNDS 8
#define SECRET_LEN 32

static struct cf_test_token tok;
static struct cf_test_daemon dmn;
static coffer_client *svc, *adm;
static char scan_dir[256];
static int daemon_pid;
/* The marker, each data key, and the control: all in locked memory. */
static cf_secret *secrets;
enum { MARKER = 0, CONTROL = 1, DATA_KEYS = 2, NSECRETS = DATA_KEYS + ROUNDS };

static uint8_t *
secret_at(int i)
{
	return cf_secret_ptr(secrets) + (size_t)i * SECRET_LEN;
}

static int
suite_init(void)
{
	if (cf_secret_new((size_t)NSECRETS * SECRET_LEN, &secrets) != CF_OK ||
	    RAND_bytes(secret_at(MARKER), 2 * SECRET_LEN) != 1)
		return -1;
	if (cf_test_suite_up(&tok, "coffer-heap", &dmn, &svc, &adm) != 0)
		return -1;
	daemon_pid = (int)dmn.pid;
	return 0;
}

static int
suite_clean(void)
{
	cf_test_suite_down(&tok, &dmn, &svc, &adm);
	cf_secret_free(secrets);
	return 0;
}

/* Occurrences of needle[0..n) in the file at path. */
static size_t
count_in_file(const char *path, const uint8_t *needle, size_t n)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	size_t len = 0, cap = 0, got, hits = 0;

	if (f == NULL)
		return 0;
	do {
		if (len + 65536 > cap) {
			cap = (cap + 65536) * 2;
			buf = realloc(buf, cap);
			CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
		}
		got = fread(buf + len, 1, cap - len, f);
		len += got;
	} while (got > 0);
	fclose(f);
	for (const uint8_t *p = buf; p != NULL && p + n <= buf + len; p++) {
		p = memmem(p, (size_t)(buf + len - p), needle, n);
		if (p == NULL)
			break;
		hits++;
	}
	free(buf);
	return hits;
}

/* Occurrences of secret i in every dump; each one with hits is named. */
static size_t
count_everywhere(int i, const char *what)
{
	DIR *d = opendir(scan_dir);
	struct dirent *e;
	char path[600];
	size_t total = 0, n;

	CU_ASSERT_PTR_NOT_NULL_FATAL(d);
	while ((e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, "heap.", 5) != 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", scan_dir, e->d_name);
		if ((n = count_in_file(path, secret_at(i), SECRET_LEN)) > 0) {
			printf("\n    %s: %zu time(s) in ordinary memory of pid %s%s", what, n,
			       e->d_name + 5, atoi(e->d_name + 5) == daemon_pid ? " (cofferd)" :
			       atoi(e->d_name + 5) == getpid() ? " (libcoffer client)" : "");
			total += n;
		}
	}
	closedir(d);
	return total;
}

static void
test_sealed_calls(void)
{
	struct coffer_kv ctx[] = { { "purpose", "heapscan" } };
	struct coffer_bytes ct = { NULL, 0 }, pt = { NULL, 0 }, dk = { NULL, 0 };
	/* Called through volatile pointers: a malloc/free pair may be elided. */
	void *(*volatile alloc)(size_t) = malloc;
	void (*volatile release)(void *) = free;
	uint8_t *control;

	CHECK_COFFER(coffer_create_key(adm, "heap-aes", COFFER_KEY_AES_256, 0, NULL));
	for (int i = 0; i < ROUNDS; i++) {
		CHECK_COFFER(coffer_wrap(svc, "heap-aes", secret_at(MARKER), SECRET_LEN, ctx, 1,
					 &ct, NULL));
		CHECK_COFFER(coffer_unwrap(svc, "heap-aes", ct.data, ct.len, ctx, 1, &pt, NULL));
		CU_ASSERT_EQUAL_FATAL(pt.len, SECRET_LEN);
		CU_ASSERT_EQUAL(memcmp(pt.data, secret_at(MARKER), SECRET_LEN), 0);
		coffer_bytes_free(&pt);
		coffer_bytes_free(&ct);
		CHECK_COFFER(coffer_generate_data_key(svc, "heap-aes", SECRET_LEN, ctx, 1, &ct,
						      &dk, NULL));
		CU_ASSERT_EQUAL_FATAL(dk.len, SECRET_LEN);
		memcpy(secret_at(DATA_KEYS + i), dk.data, SECRET_LEN);
		coffer_bytes_free(&dk);
		coffer_bytes_free(&ct);
	}
	/* The control: a secret that does pass through the heap. */
	control = alloc(SECRET_LEN);
	CU_ASSERT_PTR_NOT_NULL_FATAL(control);
	memcpy(control, secret_at(CONTROL), SECRET_LEN);
	release(control);
}

static void
test_no_plaintext_in_heap(void)
{
	void (*stop)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "cf_heapscan_stop");
	size_t found = 0;
	char what[64];

	CU_ASSERT_PTR_NOT_NULL_FATAL(stop);
	coffer_close(svc);
	coffer_close(adm);
	svc = adm = NULL;
	CU_ASSERT_EQUAL(cf_test_daemon_stop(&dmn), 0);
	stop();
	CU_ASSERT(count_everywhere(CONTROL, "control") > 0);
	found += count_everywhere(MARKER, "Wrap/Unwrap marker");
	for (int i = 0; i < ROUNDS; i++) {
		snprintf(what, sizeof(what), "data key %d", i);
		found += count_everywhere(DATA_KEYS + i, what);
	}
	printf("\n    plaintext copies in ordinary memory: %zu ", found);
	CU_ASSERT_EQUAL(found, 0);
}

/* Remove the dumps (they hold the secrets) and the directory. */
static void
remove_dumps(void)
{
	DIR *d = opendir(scan_dir);
	struct dirent *e;
	char path[600];

	while (d != NULL && (e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", scan_dir, e->d_name);
		unlink(path);
	}
	if (d != NULL)
		closedir(d);
	rmdir(scan_dir);
}

int
main(int argc, char **argv)
{
	static const struct cf_test_case cases[] = {
		{ "sealed Wrap, Unwrap, GenerateDataKey", test_sealed_calls },
		{ "no plaintext in ordinary memory", test_no_plaintext_in_heap },
		{ NULL, NULL },
	};
	const char *dir = getenv("COFFER_HEAPSCAN_DIR");
	const char *tmp = getenv("TMPDIR");
	int st;

	(void)argc;
	if (dir == NULL) {
		snprintf(scan_dir, sizeof(scan_dir), "%s/coffer-heapscan-XXXXXX",
			 tmp != NULL ? tmp : "/tmp");
		if (mkdtemp(scan_dir) == NULL || setenv("COFFER_HEAPSCAN_DIR", scan_dir, 1) != 0 ||
		    setenv("LD_PRELOAD", HEAPSCAN_SHIM, 1) != 0) {
			perror("test_plaintext_heap");
			return 1;
		}
		execv("/proc/self/exe", argv);
		perror("test_plaintext_heap: re-exec");
		return 1;
	}
	snprintf(scan_dir, sizeof(scan_dir), "%s", dir);
	st = cf_test_main("plaintext_heap", suite_init, suite_clean, cases);
	if (getenv("COFFER_KEEP_TMP") == NULL)
		remove_dumps();
	return st;
}
