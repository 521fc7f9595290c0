/*
 * test_p11_interop — keys Coffer generates are ordinary PKCS#11 objects that
 * other software can use: an independent libp11 + OpenSSL program, run as a
 * separate process (libp11 0.4.12 closes every session of the slot), signs
 * with Coffer's EC P-256 and RSA-2048 keys, and Coffer verifies the results.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "cf_status.h"
#include "cf_test_token.h"

#define TOKEN_LABEL "coffer-interop"

static struct cf_test_token tok;
static cf_p11 *p11;
static char msg_path[512];

static const char msg[] = "Signed by libp11 with a key that Coffer made in the token.\n";

static int
suite_init(void)
{
	if (cf_test_token_create(&tok, TOKEN_LABEL) != 0)
		return -1;
	if (cf_p11_open(&tok.cfg, &p11) != CF_OK) {
		fprintf(stderr, "cf_p11_open: %s\n", cf_error_detail());
		return -1;
	}
	snprintf(msg_path, sizeof(msg_path), "%s/message.txt", tok.dir);
	if (cf_test_write_file(msg_path, msg, 0600) != 0) {
		perror(msg_path);
		return -1;
	}
	return 0;
}

static int
suite_clean(void)
{
	cf_p11_close(p11);
	p11 = NULL;
	cf_test_token_destroy(&tok);
	return 0;
}

/* Run the libp11 helper on KEY_LABEL; its exit status, or -1. */
static int
libp11_sign(const char *key_label, const char *sig_path)
{
	char tool[512];
	char *argv[8];
	int st = -1;

	cf_test_tool("p11_libp11_sign", tool, sizeof(tool));
	if (access(tool, X_OK) != 0) {
		fprintf(stderr, "%s: %s (is COFFER_TEST_BINDIR set?)\n", tool, strerror(errno));
		goto out;
	}
	argv[0] = tool;
	argv[1] = (char *)tok.cfg.module_path;
	argv[2] = tok.label;
	argv[3] = tok.pin_file;
	argv[4] = (char *)key_label;
	argv[5] = msg_path;
	argv[6] = (char *)sig_path;
	argv[7] = NULL;
	st = cf_test_run(argv);
out:
	return st;
}

/* Read a signature file; its length, or -1 if missing or too long. */
static long
read_sig(const char *path, uint8_t *sig, size_t cap)
{
	FILE *fp;
	size_t n;
	long rc = -1;

	if ((fp = fopen(path, "rbe")) == NULL) {
		perror(path);
		goto out;
	}
	n = fread(sig, 1, cap, fp);
	if (ferror(fp) || n == cap) {
		fprintf(stderr, "%s: unreadable or longer than %zu bytes\n", path, cap - 1);
		goto out;
	}
	rc = (long)n;
out:
	if (fp != NULL)
		fclose(fp);
	return rc;
}

/*
 * Generate `name` v1 with Coffer, sign the message file with libp11 in a
 * child process, verify with Coffer under `sp`; `wrong` is a parameter set
 * that must not accept the same signature.
 */
static void
interop(const char *name, enum cf_key_type type, const struct cf_sign_params *sp,
	const struct cf_sign_params *wrong)
{
	cf_p11_key *k = NULL;
	cf_buf *own = cf_buf_new(CF_P11_MAX_SIG);
	char label[CF_KEY_NAME_MAX + 32], sig_path[600];
	uint8_t sig[CF_P11_MAX_SIG + 1], bad[sizeof(msg) - 1];
	const size_t msglen = sizeof(msg) - 1;
	long siglen;
	int st;

	CU_ASSERT_PTR_NOT_NULL_FATAL(own);
	CHECK_OK(cf_p11_key_generate(p11, name, 1, type, 0, &k));
	CU_ASSERT_EQUAL(cf_p11_key_type(k), type);
	snprintf(label, sizeof(label), "coffer/%s/%u", name, 1u);
	snprintf(sig_path, sizeof(sig_path), "%s/%s.sig", tok.dir, name);

	st = libp11_sign(label, sig_path);
	if (st != 0)
		fprintf(stderr, "p11_libp11_sign %s exited with %d\n", label, st);
	CU_ASSERT_EQUAL_FATAL(st, 0);
	siglen = read_sig(sig_path, sig, sizeof(sig));
	CU_ASSERT_FATAL(siglen > 0);
	if (cf_key_type_is_ec(type)) {
		/* DER: SEQUENCE { INTEGER r, INTEGER s }, 8..72 bytes for P-256 */
		CU_ASSERT_EQUAL(sig[0], 0x30);
		CU_ASSERT(siglen >= 8 && siglen <= 72);
	} else {
		CU_ASSERT_EQUAL(siglen, 256);
	}

	/* Coffer accepts libp11's signature ... */
	CHECK_OK(cf_p11_verify(k, sp, (const uint8_t *)msg, msglen, sig, (size_t)siglen));
	/* ... but not for a changed message, */
	memcpy(bad, msg, msglen);
	bad[0] ^= 0x01;
	CU_ASSERT_EQUAL(cf_p11_verify(k, sp, bad, msglen, sig, (size_t)siglen),
			CF_E_BAD_SIGNATURE);
	memcpy(bad, msg, msglen);
	bad[msglen - 1] ^= 0x80;
	CU_ASSERT_EQUAL(cf_p11_verify(k, sp, bad, msglen, sig, (size_t)siglen),
			CF_E_BAD_SIGNATURE);
	/* nor a changed signature, */
	sig[siglen / 2] ^= 0x04;
	CU_ASSERT_EQUAL(cf_p11_verify(k, sp, (const uint8_t *)msg, msglen, sig, (size_t)siglen),
			CF_E_BAD_SIGNATURE);
	sig[siglen / 2] ^= 0x04;
	/* nor under another scheme or encoding. */
	CU_ASSERT_EQUAL(cf_p11_verify(k, wrong, (const uint8_t *)msg, msglen, sig,
				      (size_t)siglen), CF_E_BAD_SIGNATURE);
	CHECK_OK(cf_p11_verify(k, sp, (const uint8_t *)msg, msglen, sig, (size_t)siglen));

	/* The layer still signs after the other process used the token. */
	CHECK_OK(cf_p11_sign(k, sp, (const uint8_t *)msg, msglen, own));
	CHECK_OK(cf_p11_verify(k, sp, (const uint8_t *)msg, msglen, cf_buf_peek(own),
			       cf_buf_len(own)));
	/* PKCS#1 v1.5 is deterministic: both signers produce the same bytes. */
	if (cf_key_type_is_rsa(type)) {
		CU_ASSERT_EQUAL(cf_buf_len(own), (size_t)siglen);
		CU_ASSERT(cf_buf_len(own) == (size_t)siglen &&
			  memcmp(cf_buf_peek(own), sig, (size_t)siglen) == 0);
	}

	cf_p11_key_free(k);
	cf_buf_free(own);
}

static void
test_interop_ec(void)
{
	struct cf_sign_params ecdsa = { .scheme = CF_SIG_ECDSA, .hash = CF_HASH_SHA256 };
	struct cf_sign_params raw = { .scheme = CF_SIG_ECDSA, .hash = CF_HASH_SHA256,
				      .ecdsa_raw = 1 };

	interop("interop-ec", CF_KEY_EC_P256, &ecdsa, &raw);
}

static void
test_interop_rsa(void)
{
	struct cf_sign_params pkcs1 = { .scheme = CF_SIG_RSA_PKCS1, .hash = CF_HASH_SHA256 };
	struct cf_sign_params pss = { .scheme = CF_SIG_RSA_PSS, .hash = CF_HASH_SHA256 };

	interop("interop-rsa", CF_KEY_RSA_2048, &pkcs1, &pss);
}

static void
test_helper_rejects_unknown_key(void)
{
	char sig_path[600], tool[512];
	char *argv[8];
	struct stat sb;

	snprintf(sig_path, sizeof(sig_path), "%s/missing.sig", tok.dir);
	/* The helper must not succeed for a key that is not there ... */
	CU_ASSERT_NOT_EQUAL(libp11_sign("coffer/interop-missing/1", sig_path), 0);
	CU_ASSERT_NOT_EQUAL(stat(sig_path, &sb), 0);
	/* ... nor on a token that is not there, nor with bad usage. */
	argv[0] = (char *)cf_test_tool("p11_libp11_sign", tool, sizeof(tool));
	argv[1] = (char *)tok.cfg.module_path;
	argv[2] = "no-such-token";
	argv[3] = tok.pin_file;
	argv[4] = "coffer/interop-ec/1";
	argv[5] = msg_path;
	argv[6] = sig_path;
	argv[7] = NULL;
	CU_ASSERT_NOT_EQUAL(cf_test_run(argv), 0);
	argv[2] = NULL;
	CU_ASSERT_NOT_EQUAL(cf_test_run(argv), 0);
	CU_ASSERT_NOT_EQUAL(stat(sig_path, &sb), 0);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "libp11 signs with a Coffer EC P-256 key; Coffer verifies", test_interop_ec },
		{ "libp11 signs with a Coffer RSA-2048 key (PKCS#1 v1.5); Coffer verifies", test_interop_rsa },
		{ "the libp11 helper fails for an unknown key or token", test_helper_rejects_unknown_key },
		{ NULL, NULL },
	};

	return cf_test_main("p11_interop", suite_init, suite_clean, cases);
}
