/*
 * session_vectors — the test vectors of proto/session-protocol.md, computed
 * by cf_session (the code the daemon and libcoffer run) from fixed inputs.
 *
 *   session_vectors             print the vector block
 *   session_vectors --check F   compare F's block with a fresh computation:
 *                               every line must match except `signature`,
 *                               which is ECDSA (randomised) and must verify
 *                               under the block's identity key instead.
 *
 * The identity key below is a fixed test key made for these vectors only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "cf_buf.h"
#include "cf_session.h"
#include "cf_status.h"

static const char identity_pem[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgl07xZOa1JuBxsaYm\n"
	"95YIF2pktii1sN8iuIinpd8bAguhRANCAAQlAeZHcAUdhxkHYrvcKCYKgenicade\n"
	"uOhxrQ9OtzQKXAhFOfSEfeTJ1Q6zvorBJcgZrrS84CwZQR8GaLIpTF4e\n"
	"-----END PRIVATE KEY-----\n";

#define BLOCK_BEGIN "<!-- vectors:begin -->"
#define BLOCK_END "<!-- vectors:end -->"
#define OUT_MAX 16384

struct record_vec {
	enum cf_session_dir dir;
	uint64_t seq;
	const char *method;
	const char *plaintext;
};

static const struct record_vec records[] = {
	{ CF_SESSION_C2S, 0, "/coffer.v1.KeyService/Unwrap", "request: the inner request bytes" },
	{ CF_SESSION_S2C, 0, "/coffer.v1.KeyService/Unwrap", "reply: the SealedResult bytes" },
	{ CF_SESSION_C2S, 1, "/coffer.v1.KeyService/Wrap", "" },
};

static void
fill(uint8_t *p, size_t n, uint8_t start)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(start + i);
}

static int
hexline(char **o, size_t *left, const char *name, const uint8_t *p, size_t n)
{
	int w = snprintf(*o, *left, "%s: ", name);

	if (w < 0 || (size_t)w >= *left)
		return -1;
	*o += w;
	*left -= (size_t)w;
	for (size_t i = 0; i < n; i++) {
		if (*left < 3)
			return -1;
		snprintf(*o, *left, "%02x", p[i]);
		*o += 2;
		*left -= 2;
	}
	if (*left < 2)
		return -1;
	*(*o)++ = '\n';
	**o = '\0';
	(*left)--;
	return 0;
}

/* A text line, or a decimal one when s is NULL. */
static int
textline(char **o, size_t *left, const char *name, unsigned long long v, const char *s)
{
	int w = s ? snprintf(*o, *left, "%s: %s\n", name, s)
		  : snprintf(*o, *left, "%s: %llu\n", name, v);

	if (w < 0 || (size_t)w >= *left)
		return -1;
	*o += w;
	*left -= (size_t)w;
	return 0;
}

/* Compute the block into out; the signature over the transcript is made
 * with the fixed identity key. */
static int
compute(char *out, size_t outlen)
{
	uint8_t cpriv[32], spriv[32], th[CF_SESSION_TH_LEN], *spki = NULL;
	struct cf_session_hello h;
	cf_session_eph *ce = NULL, *se = NULL;
	cf_session_keys *ck = NULL;
	cf_secret *shared = NULL;
	cf_buf *t = cf_buf_new(2048), *msg = cf_buf_new(128), *tmp = cf_buf_new(4096);
	BIO *bio = BIO_new_mem_buf(identity_pem, -1);
	EVP_PKEY *id = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8_t sig[128];
	size_t siglen = sizeof(sig);
	char *o = out;
	size_t left = outlen;
	int spki_len, rc = -1;

	memset(&h, 0, sizeof(h));
	if (t == NULL || msg == NULL || tmp == NULL || id == NULL || md == NULL ||
	    (spki_len = i2d_PUBKEY(id, &spki)) <= 0)
		goto out;
	fill(cpriv, 32, 0x10);
	fill(spriv, 32, 0x50);
	if (cf_session_eph_new(cpriv, &ce) != CF_OK || cf_session_eph_new(spriv, &se) != CF_OK)
		goto out;
	h.version = CF_SESSION_VERSION;
	cf_session_eph_pub(ce, h.client_pub);
	fill(h.client_random, 32, 0x30);
	h.principal = "billing";
	fill(h.session_id, 16, 0xa0);
	cf_session_eph_pub(se, h.server_pub);
	fill(h.server_random, 32, 0x70);
	h.uid = 1000;
	h.gid = 1000;
	h.spki = spki;
	h.spki_len = (size_t)spki_len;
	h.lifetime = 3600;
	h.max_records = 1000000;
	h.max_bytes = 1073741824;
	if (cf_session_transcript(&h, t) != CF_OK || cf_session_transcript_hash(&h, th) != CF_OK ||
	    cf_session_signed_message(th, msg) != CF_OK ||
	    EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, id) != 1 ||
	    EVP_DigestSign(md, sig, &siglen, cf_buf_peek(msg), cf_buf_len(msg)) != 1 ||
	    cf_session_verify_server(spki, (size_t)spki_len, th, sig, siglen) != CF_OK ||
	    cf_session_shared(ce, h.server_pub, &shared) != CF_OK ||
	    cf_session_keys_derive(ce, h.server_pub, th, h.session_id, &ck) != CF_OK)
		goto out;
	if (hexline(&o, &left, "client_ephemeral_private", cpriv, 32) ||
	    hexline(&o, &left, "client_ephemeral", h.client_pub, 32) ||
	    hexline(&o, &left, "client_random", h.client_random, 32) ||
	    textline(&o, &left, "principal", 0, h.principal) ||
	    hexline(&o, &left, "server_ephemeral_private", spriv, 32) ||
	    hexline(&o, &left, "server_ephemeral", h.server_pub, 32) ||
	    hexline(&o, &left, "server_random", h.server_random, 32) ||
	    hexline(&o, &left, "session_id", h.session_id, 16) ||
	    textline(&o, &left, "caller_uid", h.uid, NULL) ||
	    textline(&o, &left, "caller_gid", h.gid, NULL) ||
	    hexline(&o, &left, "identity_public_key", spki, (size_t)spki_len) ||
	    textline(&o, &left, "lifetime_seconds", h.lifetime, NULL) ||
	    textline(&o, &left, "max_records", h.max_records, NULL) ||
	    textline(&o, &left, "max_bytes", h.max_bytes, NULL) ||
	    hexline(&o, &left, "transcript", cf_buf_peek(t), cf_buf_len(t)) ||
	    hexline(&o, &left, "transcript_hash", th, sizeof(th)) ||
	    hexline(&o, &left, "signed_message", cf_buf_peek(msg), cf_buf_len(msg)) ||
	    hexline(&o, &left, "signature", sig, siglen) ||
	    hexline(&o, &left, "shared_secret", cf_secret_cptr(shared), 32))
		goto out;
	for (int d = CF_SESSION_C2S; d <= CF_SESSION_S2C; d++) {
		const uint8_t *iv, *key = cf_session_keys_peek(ck, (enum cf_session_dir)d, &iv);

		if (hexline(&o, &left, d == CF_SESSION_C2S ? "c2s_key" : "s2c_key", key, 32) ||
		    hexline(&o, &left, d == CF_SESSION_C2S ? "c2s_iv" : "s2c_iv", iv, 12))
			goto out;
	}
	for (size_t i = 0; i < sizeof(records) / sizeof(records[0]); i++) {
		const struct record_vec *rv = &records[i];
		uint8_t nonce[CF_SESSION_IV_LEN];
		char name[32];

		snprintf(name, sizeof(name), "record%zu_", i + 1);
#define RNAME(s) (snprintf(name + 8, sizeof(name) - 8, "%s", s), name)
		cf_session_nonce(ck, rv->dir, rv->seq, nonce);
		if (textline(&o, &left, RNAME("direction"), rv->dir, NULL) ||
		    textline(&o, &left, RNAME("sequence"), rv->seq, NULL) ||
		    textline(&o, &left, RNAME("method"), 0, rv->method) ||
		    hexline(&o, &left, RNAME("plaintext"), (const uint8_t *)rv->plaintext,
			    strlen(rv->plaintext)))
			goto out;
		cf_buf_reset(tmp);
		if (cf_session_aad(h.session_id, rv->dir, rv->seq, rv->method, tmp) != CF_OK ||
		    hexline(&o, &left, RNAME("aad"), cf_buf_peek(tmp), cf_buf_len(tmp)) ||
		    hexline(&o, &left, RNAME("nonce"), nonce, sizeof(nonce)))
			goto out;
		cf_buf_reset(tmp);
		if (cf_session_seal(ck, rv->dir, rv->seq, rv->method,
				    (const uint8_t *)rv->plaintext, strlen(rv->plaintext),
				    tmp) != CF_OK ||
		    hexline(&o, &left, RNAME("record"), cf_buf_peek(tmp), cf_buf_len(tmp)))
			goto out;
#undef RNAME
	}
	rc = 0;
out:
	if (rc != 0)
		fprintf(stderr, "session_vectors: computing the vectors failed: %s\n",
			cf_error_detail());
	OPENSSL_free(spki);
	EVP_MD_CTX_free(md);
	EVP_PKEY_free(id);
	BIO_free(bio);
	cf_secret_free(shared);
	cf_session_keys_free(ck);
	cf_session_eph_free(ce);
	cf_session_eph_free(se);
	cf_buf_free(t);
	cf_buf_free(msg);
	cf_buf_free(tmp);
	return rc;
}

/* The value of `name:` in a block, or NULL. Borrowed up to the newline. */
static const char *
field(const char *block, const char *name, size_t *len)
{
	size_t n = strlen(name);

	for (const char *p = block; p != NULL && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
		if (strncmp(p, name, n) == 0 && p[n] == ':' && p[n + 1] == ' ') {
			const char *v = p + n + 2, *e = strchr(v, '\n');

			*len = e ? (size_t)(e - v) : strlen(v);
			return v;
		}
	return NULL;
}

static size_t
unhex(const char *s, size_t len, uint8_t *out, size_t max)
{
	size_t n = 0;

	if (len % 2 != 0)
		return 0;
	for (size_t i = 0; i < len; i += 2) {
		unsigned v;

		if (n == max || sscanf(s + i, "%2x", &v) != 1)
			return 0;
		out[n++] = (uint8_t)v;
	}
	return n;
}

static int
check(const char *path)
{
	static char fresh[OUT_MAX], doc[1 << 16];
	FILE *f = fopen(path, "r");
	size_t n = f ? fread(doc, 1, sizeof(doc) - 1, f) : 0;
	char *b, *e;
	int bad = 0;

	if (f != NULL)
		fclose(f);
	doc[n] = '\0';
	if ((b = strstr(doc, BLOCK_BEGIN)) == NULL || (e = strstr(b, BLOCK_END)) == NULL) {
		fprintf(stderr, "%s: no vector block (%s ... %s)\n", path, BLOCK_BEGIN, BLOCK_END);
		return 1;
	}
	*e = '\0';
	b += strlen(BLOCK_BEGIN);
	if (compute(fresh, sizeof(fresh)) != 0)
		return 1;
	/* Every computed line except the signature must appear verbatim. */
	for (char *line = fresh, *next; line && *line; line = next) {
		size_t ll;
		const char *v;
		char name[64];

		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		ll = strcspn(line, ":");
		snprintf(name, sizeof(name), "%.*s", (int)ll, line);
		if (strcmp(name, "signature") == 0)
			continue;
		if ((v = field(b, name, &n)) == NULL || n != strlen(line + ll + 2) ||
		    memcmp(v, line + ll + 2, n) != 0) {
			fprintf(stderr, "%s: vector %s differs from the code's value\n", path, name);
			bad = 1;
		}
	}
	{
		const char *sv = field(b, "signature", &n), *kv, *tv;
		size_t kn, tn;
		uint8_t sig[128], spki[CF_SESSION_MAX_SPKI], th[CF_SESSION_TH_LEN];
		size_t sl, kl;

		kv = field(b, "identity_public_key", &kn);
		tv = field(b, "transcript_hash", &tn);
		if (sv == NULL || kv == NULL || tv == NULL ||
		    (sl = unhex(sv, n, sig, sizeof(sig))) == 0 ||
		    (kl = unhex(kv, kn, spki, sizeof(spki))) == 0 ||
		    unhex(tv, tn, th, sizeof(th)) != sizeof(th) ||
		    cf_session_verify_server(spki, kl, th, sig, sl) != CF_OK) {
			fprintf(stderr, "%s: the vector signature does not verify\n", path);
			bad = 1;
		}
	}
	if (!bad)
		printf("%s: vectors match the code\n", path);
	return bad;
}

int
main(int argc, char **argv)
{
	static char out[OUT_MAX];

	if (argc == 3 && strcmp(argv[1], "--check") == 0)
		return check(argv[2]);
	if (argc != 1) {
		fprintf(stderr, "usage: session_vectors [--check FILE]\n");
		return 2;
	}
	if (compute(out, sizeof(out)) != 0)
		return 1;
	printf("```\n%s```\n", out);
	return 0;
}
