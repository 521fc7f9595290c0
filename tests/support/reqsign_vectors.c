/*
 * reqsign_vectors — the test vectors of proto/request-signing.md, computed
 * by cf_reqsign (the code cofferd and libcoffer run) and OpenSSL's HMAC with
 * a fixed test secret.
 *
 *   reqsign_vectors             print the vector block
 *   reqsign_vectors --check F   fail unless F's block is exactly that
 *
 * With --calls first: the vectors of signed gRPC calls
 * (proto/call-authentication.md) instead.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "cf_buf.h"
#include "cf_reqsign.h"
#include "cf_status.h"

#define BLOCK_BEGIN "<!-- vectors:begin -->"
#define BLOCK_END "<!-- vectors:end -->"

struct vec {
	const char *method, *path, *raw_query, *body, *nonce, *key;
	long long timestamp;
};

static const struct vec vecs[] = {
	{ "GET", "/v1/orders", "", "", "n0nce-0000000001", "orders-api", 1764300000 },
	{ "POST", "/v1/orders", "b=2&a=1&a=0&c", "{\"amount\":42}", "n0nce-0000000002",
	  "orders-api", 1764300001 },
	{ "PUT", "/v1/items/%C3%A9t%C3%A9", "q=hello%20world&q=a+b&empty=&%7Ex=%41",
	  "payload", "AbCdEf0123456789_-xy", "orders-api", 1764300002 },
	/* The path is signed as sent (no dot segments removed, no escapes
	 * decoded); pairs sort by their encoded bytes: %C3%A9 before a before ~
	 * (decoded, a and ~ would come before the byte C3). */
	{ "DELETE", "/v1/./Items//%7e/../x", "~=2&%c3%a9=1&a%2fb&%C3%A9=0", "",
	  "n0nce-0000000004", "orders-api", 1764300003 },
};

static void
hexline(char **o, size_t *left, const char *name, const uint8_t *p, size_t n)
{
	int w = snprintf(*o, *left, "%s: ", name);

	*o += w;
	*left -= (size_t)w;
	for (size_t i = 0; i < n && *left > 3; i++) {
		snprintf(*o, *left, "%02x", p[i]);
		*o += 2;
		*left -= 2;
	}
	w = snprintf(*o, *left, "\n");
	*o += w;
	*left -= (size_t)w;
}

static void
textline(char **o, size_t *left, const char *name, const char *v)
{
	int w = snprintf(*o, *left, "%s: %s\n", name, v);

	*o += w;
	*left -= (size_t)w;
}

struct call_vec {
	const char *path, *body_hex, *nonce, *key;
	long long timestamp;
};

static const struct call_vec call_vecs[] = {
	{ "/coffer.v1.KeyService/ListKeys", "", "0123456789abcdef0123456789abcdef",
	  "ak_000102030405060708090a0b", 1764300000 },
	/* MacRequest { key: "api-mac", data: "hello" }: field 1 (0a), field 3
	 * (1a); tests/integration/test_call_auth.py sends these bytes to cofferd. */
	{ "/coffer.v1.KeyService/Mac", "0a076170692d6d61631a0568656c6c6f",
	  "n0nce_A-000000000002", "ak_000102030405060708090a0b", 1764300001 },
};

static int
compute_calls(char *out, size_t outlen)
{
	uint8_t secret[32], body[64];
	char *o = out, name[48], ts[24], hdr[CF_CALLAUTH_HEADER_MAX];
	size_t left = outlen;

	for (int i = 0; i < 32; i++)
		secret[i] = (uint8_t)(0xa0 + i);
	hexline(&o, &left, "secret", secret, sizeof(secret));
	for (size_t i = 0; i < sizeof(call_vecs) / sizeof(call_vecs[0]); i++) {
		const struct call_vec *v = &call_vecs[i];
		cf_buf *s = cf_buf_new(512);
		struct cf_call_auth a, back;
		size_t blen = strlen(v->body_hex) / 2;
		unsigned maclen = 0;

		for (size_t j = 0; j < blen; j++)
			sscanf(v->body_hex + 2 * j, "%2hhx", &body[j]);
		memset(&a, 0, sizeof(a));
		snprintf(a.key_id, sizeof(a.key_id), "%s", v->key);
		snprintf(a.nonce, sizeof(a.nonce), "%s", v->nonce);
		a.timestamp = v->timestamp;
		if (s == NULL || cf_callauth_string(v->path, body, blen, v->timestamp, v->nonce,
						    v->key, s) != CF_OK) {
			fprintf(stderr, "reqsign_vectors: %s\n", cf_error_detail());
			return -1;
		}
		HMAC(EVP_sha256(), secret, sizeof(secret), cf_buf_peek(s), cf_buf_len(s),
		     a.signature, &maclen);
		cf_callauth_format(&a, hdr);
		/* The header must read back as what was signed. */
		if (cf_callauth_parse(hdr, strlen(hdr), &back) != CF_OK ||
		    memcmp(&back, &a, sizeof(a)) != 0) {
			fprintf(stderr, "reqsign_vectors: header does not parse back\n");
			return -1;
		}
		snprintf(ts, sizeof(ts), "%lld", v->timestamp);
#define N(f) (snprintf(name, sizeof(name), "call%zu_%s", i + 1, f), name)
		textline(&o, &left, N("path"), v->path);
		textline(&o, &left, N("body"), v->body_hex);
		textline(&o, &left, N("timestamp"), ts);
		textline(&o, &left, N("nonce"), v->nonce);
		textline(&o, &left, N("key_id"), v->key);
		hexline(&o, &left, N("string_to_sign"), cf_buf_peek(s), cf_buf_len(s));
		hexline(&o, &left, N("signature"), a.signature, maclen);
		textline(&o, &left, N("authorization"), hdr);
#undef N
		cf_buf_free(s);
	}
	return 0;
}

static int
compute(char *out, size_t outlen)
{
	uint8_t secret[32], mac[32];
	unsigned maclen = 0;
	char *o = out, name[48], ts[24];
	size_t left = outlen;

	for (int i = 0; i < 32; i++)
		secret[i] = (uint8_t)i;
	hexline(&o, &left, "secret", secret, sizeof(secret));
	for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++) {
		const struct vec *v = &vecs[i];
		cf_buf *q = cf_buf_new(4 * CF_REQSIGN_QUERY_MAX), *s = cf_buf_new(CF_REQSIGN_STRING_MAX);
		struct cf_http_request r;
		char *cq;

		if (q == NULL || s == NULL || cf_reqsign_canonical_query(v->raw_query, q) != CF_OK ||
		    cf_buf_put_u8(q, 0) != CF_OK) {
			fprintf(stderr, "reqsign_vectors: %s\n", cf_error_detail());
			return -1;
		}
		cq = (char *)cf_buf_peek(q);
		memset(&r, 0, sizeof(r));
		r.method = v->method;
		r.path = v->path;
		r.canonical_query = cq;
		EVP_Digest(v->body, strlen(v->body), r.body_sha256, NULL, EVP_sha256(), NULL);
		r.timestamp = v->timestamp;
		r.nonce = v->nonce;
		r.key_id = v->key;
		if (cf_reqsign_http_string(&r, s) != CF_OK) {
			fprintf(stderr, "reqsign_vectors: %s\n", cf_error_detail());
			return -1;
		}
		HMAC(EVP_sha256(), secret, sizeof(secret), cf_buf_peek(s), cf_buf_len(s), mac,
		     &maclen);
		snprintf(ts, sizeof(ts), "%lld", v->timestamp);
#define N(f) (snprintf(name, sizeof(name), "request%zu_%s", i + 1, f), name)
		textline(&o, &left, N("method"), v->method);
		textline(&o, &left, N("path"), v->path);
		textline(&o, &left, N("raw_query"), v->raw_query);
		textline(&o, &left, N("body"), v->body);
		textline(&o, &left, N("timestamp"), ts);
		textline(&o, &left, N("nonce"), v->nonce);
		textline(&o, &left, N("key_id"), v->key);
		textline(&o, &left, N("canonical_query"), cq);
		hexline(&o, &left, N("body_sha256"), r.body_sha256, 32);
		hexline(&o, &left, N("string_to_sign"), cf_buf_peek(s), cf_buf_len(s));
		hexline(&o, &left, N("signature"), mac, maclen);
#undef N
		cf_buf_free(q);
		cf_buf_free(s);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	static char out[32768], doc[1 << 16];
	int calls = argc > 1 && strcmp(argv[1], "--calls") == 0;

	if (calls) {
		argc--;
		argv++;
	}
	if ((calls ? compute_calls(out, sizeof(out)) : compute(out, sizeof(out))) != 0)
		return 1;
	if (argc == 3 && strcmp(argv[1], "--check") == 0) {
		FILE *f = fopen(argv[2], "r");
		size_t n = f ? fread(doc, 1, sizeof(doc) - 1, f) : 0;
		char *b, *e;

		if (f != NULL)
			fclose(f);
		doc[n] = '\0';
		if ((b = strstr(doc, BLOCK_BEGIN)) == NULL || (e = strstr(b, BLOCK_END)) == NULL) {
			fprintf(stderr, "%s: no vector block\n", argv[2]);
			return 1;
		}
		*e = '\0';
		b += strlen(BLOCK_BEGIN);
		if (strstr(b, out) == NULL) {
			fprintf(stderr, "%s: the vectors differ from what the code computes; "
				"regenerate with reqsign_vectors\n", argv[2]);
			return 1;
		}
		printf("%s: vectors match the code\n", argv[2]);
		return 0;
	}
	if (argc != 1) {
		fprintf(stderr, "usage: reqsign_vectors [--calls] [--check FILE]\n");
		return 2;
	}
	printf("```\n%s```\n", out);
	return 0;
}
