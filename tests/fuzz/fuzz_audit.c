/*
 * fuzz_audit.c — the audit trail verifier (common/cf_audit_verify.c)
 * that cofferctl runs on a copy of the trail from anywhere, and the anchor
 * text an auditor types.
 *
 * Input: byte 0 = flags, then the trail. Random bytes rarely get past the
 * hash chain, so the harness can repair what an attacker who rewrote the
 * file would also recompute:
 *   0x01  recompute every record's chain value (",\"chain\":\"...\"}" ends it)
 *   0x02  sign seals whose signature is empty (,"sig":"") with the key the
 *         verifier is given, and put the right HMAC in empty ,"seal":""
 *   0x04  anchor at the last record (with 0x01), or 0x80: the trail's first
 *         line is anchor text for cf_audit_anchor_parse
 *   0x08  exact (the trail must end at the anchor)
 *   0x10  give the verifier the public key (else seals are unchecked)
 *   0x20  give it an HMAC check
 *   0x40  read only the first half of the file (the daemon's limit)
 * The file lives in a memfd: nothing touches the disk per input.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "cf_audit_verify.h"
#include "cf_buf.h"
#include "cf_hex.h"
#include "cf_status.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static EVP_PKEY *seal_key;
static int fd = -1;
static char path[64];
static const uint8_t hmac_key[32] = { 0x5a };

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	if ((seal_key = EVP_EC_gen("P-256")) == NULL || (fd = memfd_create("trail", 0)) < 0)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	return 0;
}

static int
hmac_check(void *arg, const uint8_t in[40], const uint8_t *mac, size_t len)
{
	uint8_t m[32];
	unsigned ml = sizeof(m);

	(void)arg;
	if (HMAC(EVP_sha256(), hmac_key, sizeof(hmac_key), in, 40, m, &ml) == NULL)
		return cf_error(CF_E_INTERNAL, "HMAC failed");
	return len == ml && CRYPTO_memcmp(m, mac, ml) == 0 ? CF_OK : CF_E_BAD_SIGNATURE;
}

static uint64_t
seq_of(const char *s, size_t n)
{
	uint64_t v = 0;
	size_t i = 7;

	if (n < 8 || memcmp(s, "{\"seq\":", 7) != 0)
		return 0;
	for (; i < n && i < 27 && s[i] >= '0' && s[i] <= '9'; i++)
		v = v * 10 + (uint64_t)(s[i] - '0');
	return v;
}

/* The last occurrence of f in s[0..n). */
static const char *
last(const char *s, size_t n, const char *f)
{
	size_t fl = strlen(f);

	for (size_t i = n >= fl ? n - fl + 1 : 0; i-- > 0;)
		if (memcmp(s + i, f, fl) == 0)
			return s + i;
	return NULL;
}

/* Append line s[0..n) to out, repaired as the flags say; prev follows. */
static void
repair(const char *s, size_t n, unsigned flags, uint8_t prev[32], uint64_t *last_seq,
       cf_buf *out)
{
	const char *ch = last(s, n, CF_AUDIT_CHAIN_FIELD);
	cf_buf *body = cf_buf_new(8192);
	char hex[2 * 256 + 1];
	size_t blen;

	if (body == NULL)
		abort();
	if (!(flags & 0x01) || ch == NULL) {
		(void)cf_buf_put(out, s, n);
		goto out;
	}
	blen = (size_t)(ch - s);
	(void)cf_buf_put(body, s, blen);
	if ((flags & 0x02) && blen >= 9 && memcmp(s + blen - 9, ",\"sig\":\"\"", 9) == 0) {
		/* Sign what the verifier checks: prev, seq, the body up to ,"sig":. */
		uint8_t *in = malloc(40 + blen), der[256];
		size_t dl = sizeof(der), il;
		EVP_MD_CTX *md = EVP_MD_CTX_new();

		if (in == NULL || md == NULL)
			abort();
		il = cf_audit_sig_input(prev, seq_of(s, blen), s, blen - 9, in);
		if (EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, seal_key) != 1 ||
		    EVP_DigestSign(md, der, &dl, in, il) != 1)
			abort();
		cf_hex_encode(der, dl, hex);
		cf_buf_reset(body);
		(void)cf_buf_put(body, s, blen - 1);
		(void)cf_buf_put(body, hex, strlen(hex));
		(void)cf_buf_put(body, "\"", 1);
		EVP_MD_CTX_free(md);
		free(in);
	} else if ((flags & 0x02) && blen >= 10 &&
		   memcmp(s + blen - 10, ",\"seal\":\"\"", 10) == 0) {
		uint8_t in[40], m[32];
		unsigned ml = sizeof(m);

		cf_audit_hmac_input(prev, seq_of(s, blen), in);
		HMAC(EVP_sha256(), hmac_key, sizeof(hmac_key), in, 40, m, &ml);
		cf_hex_encode(m, ml, hex);
		cf_buf_reset(body);
		(void)cf_buf_put(body, s, blen - 1);
		(void)cf_buf_put(body, hex, strlen(hex));
		(void)cf_buf_put(body, "\"", 1);
	}
	cf_audit_chain_next(prev, (const char *)cf_buf_peek(body), cf_buf_len(body), prev);
	*last_seq = seq_of(s, blen);
	cf_hex_encode(prev, 32, hex);
	(void)cf_buf_put(out, cf_buf_peek(body), cf_buf_len(body));
	(void)cf_buf_put(out, CF_AUDIT_CHAIN_FIELD, strlen(CF_AUDIT_CHAIN_FIELD));
	(void)cf_buf_put(out, hex, 64);
	(void)cf_buf_put(out, "\"}", 2);
out:
	cf_buf_free(body);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cf_audit_verify_opts o;
	struct cf_audit_report rep;
	struct cf_audit_anchor an;
	uint8_t prev[32] = { 0 };
	uint64_t last_seq = 0;
	const char *s, *end;
	unsigned flags;
	cf_buf *out;

	if (size < 1)
		return 0;
	flags = data[0];
	s = (const char *)data + 1;
	end = (const char *)data + size;
	memset(&o, 0, sizeof(o));
	if ((out = cf_buf_new(4 * size + 4096)) == NULL)
		abort();
	if (flags & 0x80) {
		/* The first line is an anchor, as an auditor would type it. */
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		size_t n = nl ? (size_t)(nl - s) : (size_t)(end - s);
		char *text = malloc(n + 1);

		if (text == NULL)
			abort();
		memcpy(text, s, n);
		text[n] = '\0';
		if (cf_audit_anchor_parse(text, &an) == CF_OK)
			o.anchor = &an;
		free(text);
		s = nl ? nl + 1 : end;
	}
	while (s < end) {
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		size_t n = nl ? (size_t)(nl - s) : (size_t)(end - s);

		repair(s, n, flags, prev, &last_seq, out);
		if (nl != NULL)
			(void)cf_buf_put(out, "\n", 1);
		s += n + (nl != NULL);
	}
	if ((flags & 0x84) == 0x04 && last_seq > 0) {
		memset(&an, 0, sizeof(an));
		an.seq = last_seq;
		memcpy(an.chain, prev, 32);
		o.anchor = &an;
	}
	o.exact = (flags & 0x08) != 0;
	o.pub = (flags & 0x10) ? seal_key : NULL;
	if (flags & 0x20)
		o.hmac_verify = hmac_check;
	o.limit = (flags & 0x40) ? (off_t)(cf_buf_len(out) / 2) : 0;
	if (ftruncate(fd, 0) != 0 ||
	    pwrite(fd, cf_buf_peek(out), cf_buf_len(out), 0) != (ssize_t)cf_buf_len(out))
		abort();
	if (cf_audit_verify_file(path, &o, &rep) == CF_OK && rep.ok &&
	    rep.good_size > (off_t)cf_buf_len(out))
		abort();
	cf_buf_free(out);
	cf_error_clear();
	return 0;
}
