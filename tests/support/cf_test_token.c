#include "cf_test_token.h"

#include <dlfcn.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <CUnit/Basic.h>
#include <signal.h>
#include <time.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef COFFER_SOFTHSM_MODULE
#define COFFER_SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#endif

const char *
cf_test_module(void)
{
	const char *m = getenv("COFFER_TEST_MODULE");

	return m != NULL && m[0] != '\0' ? m : COFFER_SOFTHSM_MODULE;
}

int
cf_test_write_file(const char *path, const char *content, unsigned mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	size_t n = strlen(content);

	if (fd < 0)
		return -1;
	if (write(fd, content, n) != (ssize_t)n || fchmod(fd, mode) != 0) {
		close(fd);
		return -1;
	}
	return close(fd);
}

int
cf_test_token_add(struct cf_test_token *t, const char *label)
{
	char cmd[1024];

	(void)t; /* the token lands in the directory SOFTHSM2_CONF names */
	snprintf(cmd, sizeof(cmd),
		 "softhsm2-util --init-token --free --label '%s' --so-pin %s --pin %s >/dev/null",
		 label, CF_TEST_SO_PIN, CF_TEST_PIN);
	if (system(cmd) != 0) {
		fprintf(stderr, "cf_test_token: '%s' failed\n", cmd);
		return -1;
	}
	return 0;
}

int
cf_test_token_create(struct cf_test_token *t, const char *label)
{
	char tokens[300], conf[700];
	const char *tmp = getenv("TMPDIR");

	memset(t, 0, sizeof(*t));
	snprintf(t->dir, sizeof(t->dir), "%s/coffer-test-XXXXXX", tmp ? tmp : "/tmp");
	if (mkdtemp(t->dir) == NULL) {
		perror("mkdtemp");
		return -1;
	}
	snprintf(tokens, sizeof(tokens), "%s/tokens", t->dir);
	snprintf(t->conf, sizeof(t->conf), "%s/softhsm2.conf", t->dir);
	snprintf(t->pin_file, sizeof(t->pin_file), "%s/user.pin", t->dir);
	snprintf(t->label, sizeof(t->label), "%s", label);
	snprintf(t->uri, sizeof(t->uri), "pkcs11:token=%s", label);
	if (mkdir(tokens, 0700) != 0) {
		perror("mkdir tokens");
		return -1;
	}
	snprintf(conf, sizeof(conf),
		 "directories.tokendir = %s\nobjectstore.backend = file\n"
		 "log.level = ERROR\nslots.removable = false\n", tokens);
	if (cf_test_write_file(t->conf, conf, 0600) != 0 ||
	    cf_test_write_file(t->pin_file, CF_TEST_PIN "\n", 0600) != 0) {
		perror("write test token files");
		return -1;
	}
	setenv("SOFTHSM2_CONF", t->conf, 1);
	if (cf_test_token_add(t, label) != 0)
		return -1;
	t->cfg.module_path = cf_test_module();
	t->cfg.token_uri = t->uri;
	t->cfg.pin_file = t->pin_file;
	return 0;
}

/* The state backend under test: 1 for PostgreSQL (COFFER_TEST_BACKEND=
 * postgresql, COFFER_TEST_PG_HOST the socket directory of a running server, as
 * tests/run-on-postgresql.sh sets them), 0 for SQLite, -1 (printed) when the
 * variables do not make sense. */
static int
test_backend_pg(void)
{
	const char *b = getenv("COFFER_TEST_BACKEND");
	const char *h = getenv("COFFER_TEST_PG_HOST");

	if (b == NULL || b[0] == '\0' || strcmp(b, "sqlite") == 0)
		return 0;
	if (strcmp(b, "postgresql") != 0) {
		fprintf(stderr, "COFFER_TEST_BACKEND=%s: expected sqlite or postgresql\n", b);
		return -1;
	}
	if (h == NULL || h[0] == '\0' || strchr(h, '\'') != NULL) {
		fprintf(stderr, "COFFER_TEST_BACKEND=postgresql needs COFFER_TEST_PG_HOST (the socket "
			"directory of a running server, no quote): use tests/run-on-postgresql.sh\n");
		return -1;
	}
	return 1;
}

/* The database of the daemon whose state dir is `state`: "coffer_" and the
 * first 16 hex digits of SHA-256 of the path (daemon_fixture.py's pg_dbname). */
static void
pg_dbname(const char *state, char out[24])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;

	EVP_Digest(state, strlen(state), md, &mdlen, EVP_sha256(), NULL);
	memcpy(out, "coffer_", 7);
	for (int i = 0; i < 8; i++)
		snprintf(out + 7 + 2 * i, 3, "%02x", md[i]);
}

/* psql -c `sql` on the test server's database postgres, its stderr in
 * `err`; 0 on success, or when the error text contains `ok_text`. */
static int
pg_admin(const char *sql, const char *err, const char *ok_text)
{
	char cmd[1200], text[1024];
	FILE *f;
	size_t n = 0;

	snprintf(cmd, sizeof(cmd),
		 "psql -X -q -v ON_ERROR_STOP=1 -h '%s' -d postgres -c '%s' >/dev/null 2>'%s'",
		 getenv("COFFER_TEST_PG_HOST"), sql, err);
	if (system(cmd) == 0)
		return 0;
	if ((f = fopen(err, "r")) != NULL) {
		n = fread(text, 1, sizeof(text) - 1, f);
		fclose(f);
	}
	text[n] = '\0';
	if (ok_text != NULL && strstr(text, ok_text) != NULL)
		return 0;
	fprintf(stderr, "cf_test_token: %s on the test PostgreSQL server %s failed: %s\n", sql,
		getenv("COFFER_TEST_PG_HOST"), text);
	return -1;
}

void
cf_test_token_destroy(struct cf_test_token *t)
{
	char cmd[400], state[300], err[320], db[24], sql[96];

	if (t->dir[0] != '\0' && t->tpm)
		cf_test_tpm_stop(t); /* kept or not, no swtpm outlives its test */
	if (t->dir[0] == '\0' || getenv("COFFER_TEST_KEEP") != NULL)
		return;
	/* The database of a daemon started on this token (cf_test_daemon_start). */
	if (test_backend_pg() == 1) {
		snprintf(state, sizeof(state), "%s/state", t->dir);
		pg_dbname(state, db);
		snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", db);
		snprintf(err, sizeof(err), "%s/dropdb.err", t->dir);
		(void)pg_admin(sql, err, NULL);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cf_test_token: could not remove %s\n", t->dir);
	t->dir[0] = '\0';
}

int
cf_test_raw_open(const struct cf_test_token *t, CK_FUNCTION_LIST **f, CK_SLOT_ID *slot,
		 CK_SESSION_HANDLE *s)
{
	CK_C_INITIALIZE_ARGS args = { .flags = CKF_OS_LOCKING_OK };
	CK_C_GetFunctionList getfl;
	CK_SLOT_ID slots[16];
	CK_ULONG n = 16;
	CK_TOKEN_INFO ti;
	CK_RV rv;
	void *dl;

	/* RTLD_NOLOAD-free: the layer already holds the module, so this shares it. */
	if ((dl = dlopen(t->cfg.module_path, RTLD_NOW | RTLD_LOCAL)) == NULL)
		return -1;
	if ((getfl = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList")) == NULL ||
	    getfl(f) != CKR_OK)
		return -1;
	rv = (*f)->C_Initialize(&args);
	if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
		return -1;
	if ((*f)->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
		return -1;
	for (CK_ULONG i = 0; i < n; i++) {
		size_t ll = strlen(t->label);

		if ((*f)->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
			continue;
		if (memcmp(ti.label, t->label, ll) == 0 && (ll == 32 || ti.label[ll] == ' ')) {
			*slot = slots[i];
			return (*f)->C_OpenSession(slots[i], CKF_SERIAL_SESSION | CKF_RW_SESSION,
						   NULL, NULL, s) == CKR_OK ? 0 : -1;
		}
	}
	return -1;
}

int
cf_test_raw_find(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
		 const char *label, CK_OBJECT_HANDLE *o)
{
	CK_ATTRIBUTE q[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_LABEL, (void *)label, strlen(label) },
	};
	CK_ULONG n = 0;

	if (f->C_FindObjectsInit(s, q, 2) != CKR_OK)
		return -1;
	if (f->C_FindObjects(s, o, 1, &n) != CKR_OK)
		n = 0;
	f->C_FindObjectsFinal(s);
	return n == 1 ? 0 : -1;
}

const char *
cf_test_tool(const char *name, char *buf, size_t len)
{
	const char *dir = getenv("COFFER_TEST_BINDIR");
	char self[400];
	ssize_t n;

	if (dir == NULL && (n = readlink("/proc/self/exe", self, sizeof(self) - 1)) > 0) {
		/* Helpers are built next to the test binaries. */
		self[n] = '\0';
		*strrchr(self, '/') = '\0';
		dir = self;
	}
	snprintf(buf, len, "%s/%s", dir ? dir : ".", name);
	return buf;
}

int
cf_test_run(char *const argv[])
{
	extern char **environ;
	pid_t pid;
	int st;

	if (posix_spawn(&pid, argv[0], NULL, NULL, argv, environ) != 0)
		return -1;
	if (waitpid(pid, &st, 0) != pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

const char *
cf_test_cofferd(char *buf, size_t len)
{
	const char *dir = getenv("COFFER_BUILD_DIR");
	char tools[400];

	if (dir != NULL) {
		snprintf(buf, len, "%s/daemon/cofferd", dir);
		return buf;
	}
	cf_test_tool("../daemon/cofferd", tools, sizeof(tools));
	snprintf(buf, len, "%s", tools);
	return buf;
}

int
cf_test_daemon_log_has(const struct cf_test_daemon *d, const char *needle)
{
	char buf[65536];
	FILE *f = fopen(d->log, "r");
	size_t n;

	if (f == NULL)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return strstr(buf, needle) != NULL;
}

/* cofferctl of this build, quietly; its exit status. */
static int
ctl_quiet(const struct cf_test_daemon *d, const char *const *args)
{
	extern char **environ;
	char bin[400], *p;
	const char *argv[16];
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int n = 0, st, r = -1;

	cf_test_cofferd(bin, sizeof(bin));
	if ((p = strstr(bin, "daemon/cofferd")) == NULL)
		return -1;
	snprintf(p, sizeof(bin) - (size_t)(p - bin), "cofferctl");
	argv[n++] = bin;
	argv[n++] = "--admin-socket";
	argv[n++] = d->admin;
	for (int i = 0; args[i] != NULL && n < 15; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	posix_spawn_file_actions_init(&fa);
	/* Quiet: the exit status says enough ("exists" after a restart is fine). */
	posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
	if (posix_spawn(&pid, bin, &fa, NULL, (char *const *)argv, environ) == 0 &&
	    waitpid(pid, &st, 0) == pid)
		r = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	posix_spawn_file_actions_destroy(&fa);
	return r;
}

int
cf_test_daemon_grant_all(const struct cf_test_daemon *d)
{
	char uid[16];
	const char *create[] = { "principal", "create", CF_TEST_PRINCIPAL, "--uid", uid, NULL };
	const char *grant[] = { "principal", "grant", CF_TEST_PRINCIPAL, "--key", "*", "--op",
				"all", NULL };
	int r;

	snprintf(uid, sizeof(uid), "%u", (unsigned)geteuid());
	r = ctl_quiet(d, create);
	/* 6: it exists already (a restart on the same state). */
	if ((r != 0 && r != 6) || ctl_quiet(d, grant) != 0) {
		fprintf(stderr, "cannot make principal %s; log %s\n", CF_TEST_PRINCIPAL, d->log);
		return -1;
	}
	return 0;
}

/* The start's log (the first 4 KiB) on stderr: why it did not start. */
static void
print_log(const struct cf_test_daemon *d)
{
	char buf[4096];
	FILE *f = fopen(d->log, "r");
	size_t n;

	if (f == NULL)
		return;
	n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	fwrite(buf, 1, n, stderr);
}

/* The -c/--config FILE among a start's extra arguments, or NULL. */
static const char *
extra_config(const char *const *extra)
{
	for (int i = 0; extra != NULL && extra[i] != NULL; i++) {
		if ((strcmp(extra[i], "-c") == 0 || strcmp(extra[i], "--config") == 0) &&
		    extra[i + 1] != NULL)
			return extra[i + 1];
		if (strncmp(extra[i], "--config=", 9) == 0)
			return extra[i] + 9;
	}
	return NULL;
}

/* On PostgreSQL, [state] naming the database of d->state (created unless it
 * exists). cofferd reads one -c FILE: the test's own gets the section
 * appended (unless it has a [state] of its own; returns 0), else `conf` is a
 * file of only [state] for -c (returns 1; flags add the rest). 0 on SQLite,
 * -1 (printed) on failure. */
static int
pg_state_config(const struct cf_test_token *t, const struct cf_test_daemon *d,
		const char *const *extra, char *conf, size_t len)
{
	char db[24], sql[64], err[320], text[512], old[8192];
	const char *own = extra_config(extra);
	int pg = test_backend_pg();
	size_t n = 0;
	FILE *f;

	if (pg != 1)
		return pg;
	if (own != NULL && (f = fopen(own, "r")) != NULL) {
		n = fread(old, 1, sizeof(old) - 1, f);
		fclose(f);
	}
	old[n] = '\0';
	if (strncmp(old, "[state]", 7) == 0 || strstr(old, "\n[state]") != NULL)
		return 0;   /* the test chose its state itself */
	pg_dbname(d->state, db);
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s", db);
	snprintf(err, sizeof(err), "%s/createdb.err", t->dir);
	/* A restart on the same state dir finds its database. */
	if (pg_admin(sql, err, "already exists") != 0)
		return -1;
	snprintf(text, sizeof(text), "\n[state]\nbackend = postgresql\ndsn = host=%s dbname=%s\n",
		 getenv("COFFER_TEST_PG_HOST"), db);
	if (own != NULL) {
		int bad = (f = fopen(own, "a")) == NULL;

		if (!bad)
			bad = (fputs(text, f) < 0) | (fclose(f) != 0);
		if (bad) {
			fprintf(stderr, "cf_test_token: cannot add [state] to %s\n", own);
			return -1;
		}
		return 0;
	}
	snprintf(conf, len, "%s/cofferd-state.conf", t->dir);
	if (cf_test_write_file(conf, text + 1, 0600) != 0) {
		fprintf(stderr, "cf_test_token: cannot write %s\n", conf);
		return -1;
	}
	return 1;
}

int
cf_test_daemon_start(const struct cf_test_token *t, struct cf_test_daemon *d,
		     const char *const *extra)
{
	char bin[400], conf[320];
	const char *argv[32];
	static int starts;
	int n = 0, fd, pg;

	memset(d, 0, sizeof(*d));
	snprintf(d->service, sizeof(d->service), "%s/service.sock", t->dir);
	snprintf(d->admin, sizeof(d->admin), "%s/admin.sock", t->dir);
	snprintf(d->state, sizeof(d->state), "%s/state", t->dir);
	/* A fresh log per start: readiness is judged by this start's lines only. */
	snprintf(d->log, sizeof(d->log), "%s/cofferd-%d.log", t->dir, ++starts);
	cf_test_cofferd(bin, sizeof(bin));
	if ((pg = pg_state_config(t, d, extra, conf, sizeof(conf))) < 0)
		return -1;
	argv[n++] = bin;
	if (pg == 1) {
		argv[n++] = "-c";
		argv[n++] = conf;
	}
	argv[n++] = "--module";
	argv[n++] = t->cfg.module_path;
	argv[n++] = "--token-uri";
	argv[n++] = t->uri;
	argv[n++] = "--pin-file";
	argv[n++] = t->pin_file;
	argv[n++] = "--state-dir";
	argv[n++] = d->state;
	argv[n++] = "--service-socket";
	argv[n++] = d->service;
	argv[n++] = "--admin-socket";
	argv[n++] = d->admin;
	for (int i = 0; extra != NULL && extra[i] != NULL && n < 31; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	if ((d->pid = fork()) < 0)
		return -1;
	if (d->pid == 0) {
		if ((fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0600)) >= 0) {
			dup2(fd, STDERR_FILENO);
			dup2(fd, STDOUT_FILENO);
		}
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 1000; i++) {
		struct timespec ts = { 0, 10 * 1000000L };
		int st;

		if (cf_test_daemon_log_has(d, "ready:"))
			return cf_test_daemon_grant_all(d);
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			fprintf(stderr, "cofferd exited early; log %s:\n", d->log);
			print_log(d);
			d->pid = 0;
			return -1;
		}
		nanosleep(&ts, NULL);
	}
	fprintf(stderr, "cofferd not ready after 10 s; log %s\n", d->log);
	return -1;
}

int
cf_test_daemon_stop(struct cf_test_daemon *d)
{
	int st;

	if (d->pid <= 0)
		return -1;
	kill(d->pid, SIGTERM);
	if (waitpid(d->pid, &st, 0) != d->pid)
		return -1;
	d->pid = 0;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int
cf_test_p11_setup(struct cf_test_token *t, const char *label, cf_p11 **p11)
{
	int r;

	if (cf_test_token_create(t, label) != 0)
		return -1;
	if ((r = cf_p11_open(&t->cfg, p11)) != CF_OK) {
		fprintf(stderr, "cf_p11_open: %s: %s\n", cf_status_name(r), cf_error_detail());
		return -1;
	}
	return 0;
}

void
cf_test_p11_teardown(struct cf_test_token *t, cf_p11 *p11)
{
	cf_p11_close(p11);
	cf_test_token_destroy(t);
}

int
cf_test_main(const char *suite, int (*init)(void), int (*clean)(void),
	     const struct cf_test_case *cases)
{
	CU_pSuite s;
	unsigned failures;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	if ((s = CU_add_suite(suite, init, clean)) == NULL)
		return 2;
	for (const struct cf_test_case *t = cases; t->name != NULL; t++)
		if (CU_add_test(s, t->name, t->fn) == NULL)
			return 2;
	CU_basic_set_mode(CU_BRM_VERBOSE);
	CU_basic_run_tests();
	failures = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
	CU_cleanup_registry();
	return failures == 0 ? 0 : 1;
}

int
cf_test_openssl_verify(const uint8_t *spki, size_t spkilen, enum cf_hash hash, int rsa_pkcs1,
		       const uint8_t *msg, size_t msglen, const uint8_t *sig, size_t siglen)
{
	const unsigned char *q = spki;
	EVP_PKEY *pk = d2i_PUBKEY(NULL, &q, (long)spkilen);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pctx = NULL;
	const EVP_MD *md = NULL;
	int ok = 0;

	if (pk == NULL || ctx == NULL)
		goto out;
	if (EVP_PKEY_get_id(pk) != EVP_PKEY_ED25519)
		md = hash == CF_HASH_SHA384 ? EVP_sha384() : hash == CF_HASH_SHA512 ? EVP_sha512() :
		     EVP_sha256();
	if (EVP_DigestVerifyInit(ctx, &pctx, md, NULL, pk) != 1)
		goto out;
	if (EVP_PKEY_get_id(pk) == EVP_PKEY_RSA) {
		if (rsa_pkcs1) {
			EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING);
		} else {
			EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
			EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST);
		}
	}
	ok = EVP_DigestVerify(ctx, sig, siglen, msg, msglen) == 1;
out:
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(pk);
	return ok;
}
