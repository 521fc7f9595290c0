/*
 * cf_test_token.h — a throw-away SoftHSM2 token for one test process.
 *
 * cf_test_token_create() makes a temporary directory with a softhsm2.conf,
 * points SOFTHSM2_CONF at it, initialises a token with softhsm2-util, and
 * writes a 0600 PIN file. cf_test_token_destroy() removes it all.
 *
 * cf_test_token_create_any() honours COFFER_TEST_TOKEN: "tpm" makes a TPM 2.0
 * token instead (deploy/init-tpm-token.sh in the temporary directory; its
 * environment set in this process; swtpm and tpm2-abrmd stopped by
 * cf_test_token_destroy).
 */
#ifndef COFFER_CF_TEST_TOKEN_H
#define COFFER_CF_TEST_TOKEN_H

#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#define CRYPTOKI_COMPAT
#include <p11-kit/pkcs11.h>

#include "cf_p11.h"
#include "cf_status.h"

#define CF_TEST_PIN "coffer-test-pin"
#define CF_TEST_SO_PIN "coffer-test-so-pin"

struct cf_test_token {
	char dir[256];
	char conf[300];
	char pin_file[300];
	char uri[128];
	char label[32];
	struct cf_p11_config cfg;   /* ready to pass to cf_p11_open */
	int tpm;                    /* a TPM 2.0 token (cf_test_tpm.c) */
	char tpm_dir[264];          /* init-tpm-token.sh's DIR: dir + "/tpm" */
	char module[256];           /* its module, as the script found it */
};

/* Module path: $COFFER_TEST_MODULE or the configured SoftHSM2 module. */
const char *cf_test_module(void);
/* 0 on success; prints why and returns -1 otherwise. */
int cf_test_token_create(struct cf_test_token *t, const char *label);
/* Add a second initialised token with another label to the same directory. */
int cf_test_token_add(struct cf_test_token *t, const char *label);
void cf_test_token_destroy(struct cf_test_token *t);

/* 1 when COFFER_TEST_TOKEN=tpm, 0 when unset or softhsm (exits 2 otherwise). */
int cf_test_token_is_tpm(void);
/* For main() of a program whose suite honours COFFER_TEST_TOKEN: on tpm
 * without swtpm, tpm2-abrmd or tpm2-pkcs11, print why and exit 77 (CTest's
 * SKIP_RETURN_CODE), or 1 when COFFER_REQUIRE_TPM=1 (CI). */
void cf_test_tpm_gate(void);
/* The token COFFER_TEST_TOKEN names: cf_test_token_create's, or a TPM's. */
int cf_test_token_create_any(struct cf_test_token *t, const char *label);
int cf_test_tpm_token_create(struct cf_test_token *t, const char *label);
/* init-tpm-token.sh --stop (the state stays). */
void cf_test_tpm_stop(const struct cf_test_token *t);
/* The fixture of most unit suites: a token created and opened (*p11);
 * 0 on success. Undone by cf_test_p11_teardown. */
int cf_test_p11_setup(struct cf_test_token *t, const char *label, cf_p11 **p11);
void cf_test_p11_teardown(struct cf_test_token *t, cf_p11 *p11);
/* Write a file with `mode`; 0 on success. */
int cf_test_write_file(const char *path, const char *content, unsigned mode);


/* Independent raw Cryptoki access to the test token (for attribute checks
 * and for breaking sessions under the layer): dlopen the module, initialise
 * it if needed, open a R/W session on the token with the test's label.
 * Returns 0 on success. */
int cf_test_raw_open(const struct cf_test_token *t, CK_FUNCTION_LIST **f, CK_SLOT_ID *slot,
		     CK_SESSION_HANDLE *s);
/* Find the object of `cls` labelled `label` ("coffer/<name>/<version>"). */
int cf_test_raw_find(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
		     const char *label, CK_OBJECT_HANDLE *o);
/* Path of a helper program built next to the tests. */
const char *cf_test_tool(const char *name, char *buf, size_t len);
/* Run argv as a child process; returns its exit status or -1. */
int cf_test_run(char *const argv[]);

/* A cofferd started on the test token (sockets and state in the token dir). */
struct cf_test_daemon {
	pid_t pid;
	char service[300];
	char admin[300];
	char state[300];
	char log[300];
};

/* Path of build/daemon/cofferd ($COFFER_BUILD_DIR or next to the tests). */
const char *cf_test_cofferd(char *buf, size_t len);
/* Start cofferd with the token's settings plus extra NULL-terminated args;
 * waits until it logs "ready" (10 s), then gives this process's uid the
 * principal CF_TEST_PRINCIPAL. 0 on success. */
int cf_test_daemon_start(const struct cf_test_token *t, struct cf_test_daemon *d,
			 const char *const *extra);
/* The principal cf_test_daemon_start gives this process's uid, with every
 * operation on every key (cofferd denies by default). */
#define CF_TEST_PRINCIPAL "tester"
int cf_test_daemon_grant_all(const struct cf_test_daemon *d);
/* SIGTERM, wait; returns the exit status (or -1 if it did not exit cleanly). */
int cf_test_daemon_stop(struct cf_test_daemon *d);
/* 1 if the daemon's log contains `needle`. */
int cf_test_daemon_log_has(const struct cf_test_daemon *d, const char *needle);

/* Assert that a libcoffer call returned COFFER_OK (0); print its message when
 * it did not. For files that include coffer.h. */
#define CHECK_COFFER(expr) do {                                               \
	int r_ = (expr);                                                      \
	if (r_ != 0)                                                          \
		fprintf(stderr, "\n  %s:%d %s -> %d: %s\n", __FILE__, __LINE__, \
			#expr, r_, coffer_error_message());                   \
	CU_ASSERT_EQUAL_FATAL(r_, 0);                                         \
} while (0)

/* Assert a CF_OK result; print the status and detail when it is not. */
#define CHECK_OK(expr) do {                                                   \
	int r_ = (expr);                                                      \
	if (r_ != CF_OK)                                                      \
		fprintf(stderr, "%s:%d %s -> %s: %s\n", __FILE__, __LINE__,   \
			#expr, cf_status_name(r_), cf_error_detail());        \
	CU_ASSERT_EQUAL_FATAL(r_, CF_OK);                                     \
} while (0)

/* Assert that expr fails with `status` and that the failure's text
 * (cf_error_message) contains `text` ("" accepts any); print both when not. */
#define CHECK_ERR(expr, status, text) do {                                    \
	int r_ = (expr);                                                      \
	const char *m_ = cf_error_message(r_);                                \
	if (r_ != (status) || strstr(m_, (text)) == NULL)                     \
		fprintf(stderr, "\n  %s:%d %s -> %s \"%s\"; expected %s \"%s\"\n", \
			__FILE__, __LINE__, #expr, cf_status_name(r_), m_,    \
			cf_status_name(status), (text));                      \
	CU_ASSERT_EQUAL(r_, (status));                                        \
	CU_ASSERT_PTR_NOT_NULL(strstr(m_, (text)));                           \
} while (0)

/* Verify sig over msg with OpenSSL alone, from a DER SubjectPublicKeyInfo:
 * `hash` for ECDSA/RSA (ignored for Ed25519), PKCS#1 v1.5 padding for RSA
 * when rsa_pkcs1, else PSS with salt = hash length. 1 if valid. */
int cf_test_openssl_verify(const uint8_t *spki, size_t spkilen, enum cf_hash hash,
			   int rsa_pkcs1, const uint8_t *msg, size_t msglen,
			   const uint8_t *sig, size_t siglen);

/* One CUnit suite run the same way by every test program. */
struct cf_test_case {
	const char *name;
	void (*fn)(void);
};
/* Run `cases` (terminated by { NULL, NULL }) as suite `suite` with verbose
 * output; returns the process exit status: 0 if every test passed. */
int cf_test_main(const char *suite, int (*init)(void), int (*clean)(void),
		 const struct cf_test_case *cases);

#endif
