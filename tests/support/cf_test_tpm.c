/*
 * cf_test_tpm.c — the test token on a TPM 2.0 (tpm2-pkcs11 on swtpm behind
 * tpm2-abrmd), made by deploy/init-tpm-token.sh as daemon_fixture.py makes
 * it: the script's DIR/env is set in this process, so that the cofferd it
 * spawns (and raw Cryptoki here) reach the TPM through the same bus.
 */
#include "cf_test_token.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef COFFER_INIT_TPM_TOKEN
#define COFFER_INIT_TPM_TOKEN "deploy/init-tpm-token.sh"
#endif

static const char *const tpm_programs[] = { "swtpm", "tpm2-abrmd", "dbus-daemon", "tpm2_ptool",
					    "tpm2_dictionarylockout", "tpm2_getcap", NULL };
static const char *const tpm_modules[] = { "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
					   "/usr/lib/aarch64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
					   "/usr/lib/pkcs11/libtpm2_pkcs11.so", NULL };

int
cf_test_token_is_tpm(void)
{
	const char *k = getenv("COFFER_TEST_TOKEN");

	if (k == NULL || k[0] == '\0' || strcmp(k, "softhsm") == 0)
		return 0;
	if (strcmp(k, "tpm") == 0)
		return 1;
	fprintf(stderr, "COFFER_TEST_TOKEN=%s: softhsm or tpm\n", k);
	exit(2);
}

static int
on_path(const char *prog)
{
	const char *path = getenv("PATH");
	char buf[512];

	for (const char *p = path ? path : "/usr/bin:/bin"; *p != '\0';) {
		size_t n = strcspn(p, ":");

		snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, p, prog);
		if (n > 0 && access(buf, X_OK) == 0)
			return 1;
		p += n + (p[n] == ':');
	}
	return 0;
}

void
cf_test_tpm_gate(void)
{
	char gone[400] = "";
	const char *req = getenv("COFFER_REQUIRE_TPM");
	int required = req != NULL && req[0] != '\0' && strcmp(req, "0") != 0, module = 0;

	if (!cf_test_token_is_tpm())
		return;
	for (int i = 0; tpm_programs[i] != NULL; i++)
		if (!on_path(tpm_programs[i]))
			snprintf(gone + strlen(gone), sizeof(gone) - strlen(gone), "%s%s",
				 gone[0] ? ", " : "", tpm_programs[i]);
	for (int i = 0; tpm_modules[i] != NULL; i++)
		module |= access(tpm_modules[i], R_OK) == 0;
	if (!module)
		snprintf(gone + strlen(gone), sizeof(gone) - strlen(gone), "%slibtpm2_pkcs11.so",
			 gone[0] ? ", " : "");
	if (gone[0] == '\0')
		return;
	/* The words of daemon_fixture.tpm_missing(), for one reading in CI logs. */
	printf("%s: no TPM token: not installed: %s (deploy/install-deps.sh: swtpm swtpm-tools "
	       "tpm2-tools tpm2-abrmd libtpm2-pkcs11-1 libtpm2-pkcs11-tools libtss2-tcti-swtpm0 "
	       "libtss2-tcti-tabrmd0 dbus)\n", required ? "FAIL (COFFER_REQUIRE_TPM=1)" : "SKIP",
	       gone);
	fflush(stdout);
	exit(required ? 1 : 77); /* 77: CTest's SKIP_RETURN_CODE for the _tpm tests */
}

/* DIR/env's "NAME=value; export NAME" lines, set in this process. */
static int
load_env(const char *path)
{
	char line[1024];
	FILE *f = fopen(path, "r");
	int n = 0;

	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL) {
		char *eq = strchr(line, '='), *end;

		if (eq == NULL || eq == line)
			continue;
		*eq = '\0';
		end = eq + 1 + strcspn(eq + 1, ";\n");
		*end = '\0';
		setenv(line, eq + 1, 1);
		n++;
	}
	fclose(f);
	return n > 0 ? 0 : -1;
}

/* The value after "key:" on a line of the script's summary, into out. */
static int
summary_field(const char *text, const char *key, char *out, size_t len)
{
	const char *p = strstr(text, key);
	size_t n;

	if (p == NULL)
		return -1;
	p += strlen(key);
	p += strspn(p, " ");
	n = strcspn(p, "\n");
	if (n == 0 || n >= len)
		return -1;
	memcpy(out, p, n);
	out[n] = '\0';
	return 0;
}

int
cf_test_tpm_token_create(struct cf_test_token *t, const char *label)
{
	char cmd[1024], out[4096], envf[320];
	const char *tmp = getenv("TMPDIR");
	size_t n = 0;
	FILE *p;

	memset(t, 0, sizeof(*t));
	t->tpm = 1;
	snprintf(t->dir, sizeof(t->dir), "%s/coffer-test-XXXXXX", tmp ? tmp : "/tmp");
	if (mkdtemp(t->dir) == NULL) {
		perror("mkdtemp");
		return -1;
	}
	snprintf(t->tpm_dir, sizeof(t->tpm_dir), "%s/tpm", t->dir);
	snprintf(t->label, sizeof(t->label), "%s", label);
	snprintf(t->uri, sizeof(t->uri), "pkcs11:token=%s", label);
	snprintf(t->pin_file, sizeof(t->pin_file), "%s/tpm/user.pin", t->dir);
	/* The script's diagnostics go to our stderr; its summary is read here. */
	snprintf(cmd, sizeof(cmd), "/bin/sh '%s' '%s' '%s'", COFFER_INIT_TPM_TOKEN, t->tpm_dir,
		 label);
	if ((p = popen(cmd, "r")) == NULL) {
		perror("popen init-tpm-token.sh");
		return -1;
	}
	n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	if (pclose(p) != 0) {
		fprintf(stderr, "cf_test_token: %s failed:\n%s\n", cmd, out);
		return -1;
	}
	snprintf(envf, sizeof(envf), "%s/env", t->tpm_dir);
	if (summary_field(out, "module:", t->module, sizeof(t->module)) != 0 ||
	    load_env(envf) != 0) {
		fprintf(stderr, "cf_test_token: no module line in %s's output, or no %s:\n%s\n",
			COFFER_INIT_TPM_TOKEN, envf, out);
		return -1;
	}
	t->cfg.module_path = t->module;
	t->cfg.token_uri = t->uri;
	t->cfg.pin_file = t->pin_file;
	return 0;
}

void
cf_test_tpm_stop(const struct cf_test_token *t)
{
	char cmd[700];

	snprintf(cmd, sizeof(cmd), "/bin/sh '%s' --stop '%s' 2>/dev/null", COFFER_INIT_TPM_TOKEN,
		 t->tpm_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cf_test_token: '%s' failed: swtpm or tpm2-abrmd may be left\n",
			cmd);
}

int
cf_test_token_create_any(struct cf_test_token *t, const char *label)
{
	return cf_test_token_is_tpm() ? cf_test_tpm_token_create(t, label) :
					cf_test_token_create(t, label);
}
