/*
 * p11_libp11_sign — an independent PKCS#11 consumer for interop tests: signs a
 * file with a token key through libp11 and OpenSSL only, no Coffer code.
 * usage: p11_libp11_sign MODULE TOKEN_LABEL PIN_FILE KEY_LABEL IN_FILE OUT_SIG_FILE
 * The private key labelled KEY_LABEL ("coffer/<name>/<version>") signs IN_FILE
 * with SHA-256: PKCS#1 v1.5 for RSA, DER-encoded ECDSA for EC. The signature
 * goes to OUT_SIG_FILE. SoftHSM reads SOFTHSM2_CONF from the environment.
 * Runs in its own process: libp11 0.4.12 may close every session of the slot.
 * Exit: 0 ok, 1 error (message on stderr).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libp11.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#define SIGN_MAX_INPUT (16u << 20)
#define SIGN_MAX_PIN   256

static const char *progname = "p11_libp11_sign";

static void
fail(const char *what, const char *arg)
{
	fprintf(stderr, "%s: %s%s%s\n", progname, what, arg ? ": " : "", arg ? arg : "");
	ERR_print_errors_fp(stderr);
}

/* Read the PIN file into pin (NUL-terminated, trailing newline stripped). */
static int
read_pin(const char *path, char *pin, size_t pinsz)
{
	FILE *fp;
	size_t n;
	int rc = -1;

	if ((fp = fopen(path, "re")) == NULL) {
		fail("cannot open PIN file", path);
		goto out;
	}
	n = fread(pin, 1, pinsz - 1, fp);
	if (ferror(fp) || (n == pinsz - 1 && fgetc(fp) != EOF)) {
		fail("cannot read PIN file (or PIN too long)", path);
		goto out;
	}
	pin[n] = '\0';
	if (memchr(pin, '\0', n) != NULL) {
		fail("PIN file contains a NUL byte", path);
		goto out;
	}
	while (n > 0 && (pin[n - 1] == '\n' || pin[n - 1] == '\r'))
		pin[--n] = '\0';
	if (n == 0) {
		fail("PIN file is empty", path);
		goto out;
	}
	rc = 0;
out:
	if (fp != NULL)
		fclose(fp);
	return rc;
}

/* Read a whole file into a new allocation. */
static int
read_file(const char *path, unsigned char **out, size_t *outlen)
{
	unsigned char *buf = NULL, *nb;
	size_t len = 0, cap = 0, n;
	FILE *fp;
	int rc = -1;

	if ((fp = fopen(path, "rbe")) == NULL) {
		fail("cannot open input", path);
		goto out;
	}
	for (;;) {
		if (len == cap) {
			if (cap >= SIGN_MAX_INPUT) {
				fail("input too large", path);
				goto out;
			}
			cap = cap ? cap * 2 : 4096;
			if ((nb = realloc(buf, cap)) == NULL) {
				fail("out of memory", NULL);
				goto out;
			}
			buf = nb;
		}
		n = fread(buf + len, 1, cap - len, fp);
		len += n;
		if (n == 0)
			break;
	}
	if (ferror(fp)) {
		fail("cannot read input", path);
		goto out;
	}
	*out = buf;
	*outlen = len;
	buf = NULL;
	rc = 0;
out:
	free(buf);
	if (fp != NULL)
		fclose(fp);
	return rc;
}

static int
write_file(const char *path, const unsigned char *data, size_t len)
{
	FILE *fp;
	int rc = -1;

	if ((fp = fopen(path, "wbe")) == NULL) {
		fail("cannot create output", path);
		goto out;
	}
	if (fwrite(data, 1, len, fp) != len) {
		fail("cannot write output", path);
		goto out;
	}
	rc = 0;
out:
	if (fp != NULL && fclose(fp) != 0 && rc == 0) {
		fail("cannot write output", path);
		rc = -1;
	}
	return rc;
}

/* The one initialised token labelled `label`, or NULL. */
static PKCS11_SLOT *
find_token(PKCS11_CTX *ctx, PKCS11_SLOT *slots, unsigned int nslots, const char *label)
{
	PKCS11_SLOT *s, *found = NULL;

	for (s = PKCS11_find_token(ctx, slots, nslots); s != NULL;
	     s = PKCS11_find_next_token(ctx, slots, nslots, s)) {
		if (s->token == NULL || !s->token->initialized || s->token->label == NULL ||
		    strcmp(s->token->label, label) != 0)
			continue;
		if (found != NULL) {
			fail("more than one token has the label", label);
			found = NULL;
			goto out;
		}
		found = s;
	}
	if (found == NULL)
		fail("no initialised token has the label", label);
out:
	return found;
}

int
main(int argc, char **argv)
{
	PKCS11_CTX *ctx = NULL;
	PKCS11_SLOT *slots = NULL, *slot;
	PKCS11_KEY *keys = NULL, *key = NULL;
	unsigned int nslots = 0, nkeys = 0;
	EVP_PKEY *pkey = NULL;
	EVP_MD_CTX *mctx = NULL;
	EVP_PKEY_CTX *pctx = NULL;
	unsigned char *in = NULL, *sig = NULL;
	size_t inlen = 0, siglen = 0;
	char pin[SIGN_MAX_PIN];
	int loaded = 0, type, rc = 1;

	memset(pin, 0, sizeof(pin));
	if (argc != 7) {
		fprintf(stderr, "usage: %s MODULE TOKEN_LABEL PIN_FILE KEY_LABEL IN_FILE "
			"OUT_SIG_FILE\n", argc > 0 ? argv[0] : progname);
		goto out;
	}
	if (read_pin(argv[3], pin, sizeof(pin)) != 0 || read_file(argv[5], &in, &inlen) != 0)
		goto out;

	if ((ctx = PKCS11_CTX_new()) == NULL) {
		fail("PKCS11_CTX_new failed", NULL);
		goto out;
	}
	if (PKCS11_CTX_load(ctx, argv[1]) != 0) {
		fail("cannot load PKCS#11 module", argv[1]);
		goto out;
	}
	loaded = 1;
	if (PKCS11_enumerate_slots(ctx, &slots, &nslots) != 0) {
		fail("cannot enumerate slots", NULL);
		goto out;
	}
	if ((slot = find_token(ctx, slots, nslots, argv[2])) == NULL)
		goto out;
	if (PKCS11_open_session(slot, 0) != 0) {
		fail("cannot open a session on token", argv[2]);
		goto out;
	}
	if (PKCS11_login(slot, 0, pin) != 0) {
		fail("login refused on token", argv[2]);
		goto out;
	}
	OPENSSL_cleanse(pin, sizeof(pin));

	if (PKCS11_enumerate_keys(slot->token, &keys, &nkeys) != 0) {
		fail("cannot enumerate private keys", NULL);
		goto out;
	}
	for (unsigned int i = 0; i < nkeys; i++) {
		if (keys[i].isPrivate && keys[i].label != NULL &&
		    strcmp(keys[i].label, argv[4]) == 0) {
			if (key != NULL) {
				fail("more than one private key has the label", argv[4]);
				goto out;
			}
			key = &keys[i];
		}
	}
	if (key == NULL) {
		fail("no private key has the label", argv[4]);
		goto out;
	}
	if ((pkey = PKCS11_get_private_key(key)) == NULL) {
		fail("cannot get an EVP_PKEY for key", argv[4]);
		goto out;
	}
	type = EVP_PKEY_get_base_id(pkey);
	if (type != EVP_PKEY_RSA && type != EVP_PKEY_EC) {
		fail("key is neither RSA nor EC", argv[4]);
		goto out;
	}

	if ((mctx = EVP_MD_CTX_new()) == NULL ||
	    EVP_DigestSignInit(mctx, &pctx, EVP_sha256(), NULL, pkey) != 1) {
		fail("EVP_DigestSignInit failed", NULL);
		goto out;
	}
	if (type == EVP_PKEY_RSA && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0) {
		fail("cannot select PKCS#1 v1.5 padding", NULL);
		goto out;
	}
	if (EVP_DigestSign(mctx, NULL, &siglen, in, inlen) != 1 || siglen == 0) {
		fail("cannot size the signature", NULL);
		goto out;
	}
	if ((sig = malloc(siglen)) == NULL) {
		fail("out of memory", NULL);
		goto out;
	}
	if (EVP_DigestSign(mctx, sig, &siglen, in, inlen) != 1) {
		fail("signing failed with key", argv[4]);
		goto out;
	}
	if (write_file(argv[6], sig, siglen) != 0)
		goto out;
	rc = 0;
out:
	OPENSSL_cleanse(pin, sizeof(pin));
	EVP_MD_CTX_free(mctx);
	/* The EVP_PKEY refers to the key object: free it before the slots. */
	EVP_PKEY_free(pkey);
	if (slots != NULL)
		PKCS11_release_all_slots(ctx, slots, nslots);
	if (ctx != NULL) {
		if (loaded)
			PKCS11_CTX_unload(ctx);
		PKCS11_CTX_free(ctx);
	}
	free(sig);
	free(in);
	return rc;
}
