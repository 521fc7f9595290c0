#include "cf_reqsign.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pthread.h>

#include <openssl/evp.h>

#include "cf_hex.h"
#include "cf_keytype.h"
#include "cf_status.h"

#define MAX_PARAMS 256

static int
unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_' || c == '~';
}

/* parts joined by single newlines (no trailing one). */
static int
join_lines(const char *const *parts, size_t n, cf_buf *out)
{
	int rc = CF_OK;

	for (size_t i = 0; i < n && rc == CF_OK; i++)
		if (i == 0 || (rc = cf_buf_put_u8(out, '\n')) == CF_OK)
			rc = cf_buf_put(out, parts[i], strlen(parts[i]));
	return rc;
}

/* Decode s[0..n) then encode it canonically onto out. */
static int
recode(const char *s, size_t n, cf_buf *out)
{
	static const char hex[] = "0123456789ABCDEF";
	int r = CF_OK;

	for (size_t i = 0; i < n && r == CF_OK; i++) {
		unsigned char c = (unsigned char)s[i];
		char e[3];

		if (c == '%') {
			int hi, lo;

			if (i + 2 >= n)
				return cf_error(CF_E_INVALID_ARG, "query has a truncated %%-escape");
			if ((hi = cf_hex_digit(s[i + 1])) < 0 || (lo = cf_hex_digit(s[i + 2])) < 0)
				return cf_error(CF_E_INVALID_ARG, "query has a bad %%-escape");
			c = (unsigned char)(hi << 4 | lo);
			i += 2;
		}
		if (unreserved(c)) {
			r = cf_buf_put_u8(out, c);
		} else {
			e[0] = '%';
			e[1] = hex[c >> 4];
			e[2] = hex[c & 15];
			r = cf_buf_put(out, e, 3);
		}
	}
	return r;
}

struct param {
	char *name, *value;
};

static int
param_cmp(const void *a, const void *b)
{
	const struct param *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	return c != 0 ? c : strcmp(x->value, y->value);
}

/* The canonical encoding of s[0..n) as a new string. */
static char *
recode_str(const char *s, size_t n, int *r)
{
	cf_buf *b = cf_buf_new(3 * n + 1);
	char *out = NULL;

	if (b == NULL) {
		*r = cf_nomem();
		return NULL;
	}
	if ((*r = recode(s, n, b)) == CF_OK && (out = malloc(cf_buf_len(b) + 1)) != NULL) {
		memcpy(out, cf_buf_peek(b), cf_buf_len(b));
		out[cf_buf_len(b)] = '\0';
	} else if (*r == CF_OK) {
		*r = cf_nomem();
	}
	cf_buf_free(b);
	return out;
}

int
cf_reqsign_canonical_query(const char *raw, cf_buf *out)
{
	struct param *p = NULL;
	size_t n = 0, len = raw ? strlen(raw) : 0;
	int r = CF_OK;

	if (len > CF_REQSIGN_QUERY_MAX)
		return cf_error(CF_E_TOO_LARGE, "query longer than %d bytes", CF_REQSIGN_QUERY_MAX);
	if (len == 0)
		return CF_OK;
	if ((p = calloc(MAX_PARAMS, sizeof(*p))) == NULL)
		return cf_nomem();
	for (const char *s = raw; r == CF_OK && s <= raw + len;) {
		const char *amp = strchr(s, '&'), *end = amp ? amp : raw + len, *eq;

		if (end > s) {
			if (n == MAX_PARAMS) {
				r = cf_error(CF_E_TOO_LARGE, "query has more than %d parameters",
					     MAX_PARAMS);
				break;
			}
			eq = memchr(s, '=', (size_t)(end - s));
			p[n].name = recode_str(s, (size_t)((eq ? eq : end) - s), &r);
			if (r == CF_OK)
				p[n].value = eq ? recode_str(eq + 1, (size_t)(end - eq - 1), &r)
						: recode_str("", 0, &r);
			n++;
		}
		s = end + 1;
	}
	if (r == CF_OK) {
		qsort(p, n, sizeof(*p), param_cmp);
		for (size_t i = 0; i < n && r == CF_OK; i++)
			if ((i > 0 && (r = cf_buf_put_u8(out, '&')) != CF_OK) ||
			    (r = cf_buf_put(out, p[i].name, strlen(p[i].name))) != CF_OK ||
			    (r = cf_buf_put_u8(out, '=')) != CF_OK ||
			    (r = cf_buf_put(out, p[i].value, strlen(p[i].value))) != CF_OK)
				break;
	}
	for (size_t i = 0; i < n; i++) {
		free(p[i].name);
		free(p[i].value);
	}
	free(p);
	return r;
}

static int
charset(const char *s, const char *what, size_t min, size_t max, const char *extra, int upper_only)
{
	size_t n = s ? strlen(s) : 0;

	if (n < min || n > max)
		return cf_error(CF_E_INVALID_ARG, "%s must be %zu..%zu characters", what, min, max);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		int ok = (c >= 'A' && c <= 'Z') ||
			 (!upper_only && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) ||
			 (extra != NULL && c != '\0' && strchr(extra, c) != NULL);

		if (!ok)
			return cf_error(CF_E_INVALID_ARG, "%s character %zu is not allowed", what,
					i + 1);
	}
	return CF_OK;
}

int
cf_reqsign_check(const struct cf_http_request *r)
{
	int rc;

	if ((rc = charset(r->method, "method", 1, CF_REQSIGN_METHOD_MAX, NULL, 1)) != CF_OK ||
	    (rc = charset(r->nonce, "nonce", CF_REQSIGN_NONCE_MIN, CF_REQSIGN_NONCE_MAX, "-_",
			  0)) != CF_OK ||
	    (rc = cf_key_name_check(r->key_id)) != CF_OK)
		return rc;
	if (r->path == NULL || r->path[0] != '/' || strlen(r->path) > CF_REQSIGN_PATH_MAX)
		return cf_error(CF_E_INVALID_ARG, "path must start with / and be at most %d bytes",
				CF_REQSIGN_PATH_MAX);
	for (const char *s = r->path; *s; s++)
		if ((unsigned char)*s <= 0x20 || *s == 0x7f || *s == '?' || *s == '#')
			return cf_error(CF_E_INVALID_ARG, "path holds a space, control character, "
					"? or #");
	if (r->canonical_query == NULL || strlen(r->canonical_query) > 3 * CF_REQSIGN_QUERY_MAX)
		return cf_error(CF_E_INVALID_ARG, "canonical query missing or too long");
	for (const char *s = r->canonical_query; *s; s++)
		if ((unsigned char)*s <= 0x20 || *s == 0x7f || *s == '\n')
			return cf_error(CF_E_INVALID_ARG, "canonical query holds a space or control "
					"character");
	if (r->timestamp < 0 || r->timestamp > 99999999999LL)
		return cf_error(CF_E_INVALID_ARG, "timestamp out of range");
	return CF_OK;
}

int
cf_reqsign_http_string(const struct cf_http_request *r, cf_buf *out)
{
	char body[65], ts[24];
	int rc;

	if ((rc = cf_reqsign_check(r)) != CF_OK)
		return rc;
	cf_hex_encode(r->body_sha256, 32, body);
	snprintf(ts, sizeof(ts), "%lld", (long long)r->timestamp);
	{
		const char *parts[] = { CF_REQSIGN_HTTP_LABEL, r->method, r->path, r->canonical_query,
					body, ts, r->nonce, r->key_id };

		return join_lines(parts, sizeof(parts) / sizeof(parts[0]), out);
	}
}

/* ---- call authentication ---- */

static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void
sha256_fetch(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

/* SHA-256 fetched once: every signed call hashes its body, and OpenSSL 3
 * looks an algorithm up on each use otherwise. */
static const EVP_MD *
sha256(void)
{
	pthread_once(&sha256_once, sha256_fetch);
	return sha256_md != NULL ? sha256_md : EVP_sha256();
}

int
cf_apikey_id_check(const char *id)
{
	if (id == NULL || strlen(id) != CF_APIKEY_ID_LEN || strncmp(id, "ak_", 3) != 0)
		return cf_error(CF_E_INVALID_ARG, "an API key id is \"ak_\" and 24 lower-case hex "
				"digits");
	for (const char *s = id + 3; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
			return cf_error(CF_E_INVALID_ARG, "an API key id is \"ak_\" and 24 "
					"lower-case hex digits");
	return CF_OK;
}

/* One "name=value" field of the header into a (value is v[0..n)). */
static int
callauth_field(struct cf_call_auth *a, const char *name, size_t nlen, const char *v, size_t n,
	       unsigned *seen)
{
	char buf[80];

	if (n >= sizeof(buf))
		return cf_error(CF_E_INVALID_ARG, "authorization: %.*s is too long", (int)nlen,
				name);
	/* The checks below read C strings: a NUL inside would hide the rest. */
	if (memchr(v, '\0', n) != NULL || memchr(name, '\0', nlen) != NULL)
		return cf_error(CF_E_INVALID_ARG, "authorization holds a NUL byte");
	/* Named as what it is, not as a bad value of the field before it. */
	if (memchr(v, ' ', n) != NULL || memchr(name, ' ', nlen) != NULL)
		return cf_error(CF_E_INVALID_ARG, "authorization: a space inside or before a comma "
				"(spaces are allowed after a comma only)");
	memcpy(buf, v, n);
	buf[n] = '\0';
	if (nlen == 5 && memcmp(name, "keyId", 5) == 0 && !(*seen & 1)) {
		*seen |= 1;
		if (cf_apikey_id_check(buf) != CF_OK)
			return cf_error(CF_E_INVALID_ARG, "authorization: keyId is not an API key id "
					"(\"ak_\" and 24 lower-case hex digits)");
		memcpy(a->key_id, buf, n + 1);
	} else if (nlen == 9 && memcmp(name, "timestamp", 9) == 0 && !(*seen & 2)) {
		*seen |= 2;
		a->timestamp = 0;
		if (n == 0 || n > 11 || (n > 1 && buf[0] == '0'))
			return cf_error(CF_E_INVALID_ARG, "authorization: timestamp must be Unix "
					"seconds in decimal");
		for (size_t i = 0; i < n; i++) {
			if (buf[i] < '0' || buf[i] > '9')
				return cf_error(CF_E_INVALID_ARG, "authorization: timestamp must be "
						"Unix seconds in decimal");
			a->timestamp = a->timestamp * 10 + (buf[i] - '0');
		}
	} else if (nlen == 5 && memcmp(name, "nonce", 5) == 0 && !(*seen & 4)) {
		*seen |= 4;
		int rc = charset(buf, "authorization: nonce", CF_REQSIGN_NONCE_MIN,
				 CF_REQSIGN_NONCE_MAX, "-_", 0);

		if (rc != CF_OK)
			return rc;
		memcpy(a->nonce, buf, n + 1);
	} else if (nlen == 9 && memcmp(name, "signature", 9) == 0 && !(*seen & 8)) {
		*seen |= 8;
		if (n != 64)
			return cf_error(CF_E_INVALID_ARG, "authorization: signature must be 64 hex "
					"digits");
		if (cf_hex_decode(buf, a->signature, 32) != 0)
			return cf_error(CF_E_INVALID_ARG, "authorization: signature must be 64 hex "
					"digits");
	} else {
		return cf_error(CF_E_INVALID_ARG, "authorization: unexpected or repeated field "
				"\"%.*s\" (expected keyId, timestamp, nonce, signature once each)",
				(int)(nlen > 32 ? 32 : nlen), name);
	}
	return CF_OK;
}

int
cf_callauth_parse(const char *value, size_t len, struct cf_call_auth *a)
{
	const size_t ll = sizeof(CF_CALLAUTH_LABEL) - 1;
	const char *s, *end = value + len;
	unsigned seen = 0;
	int r;

	memset(a, 0, sizeof(*a));
	if (len > CF_CALLAUTH_HEADER_MAX)
		return cf_error(CF_E_INVALID_ARG, "authorization: longer than %d bytes",
				CF_CALLAUTH_HEADER_MAX);
	if (len <= ll + 1 || memcmp(value, CF_CALLAUTH_LABEL, ll) != 0 || value[ll] != ' ' ||
	    value[ll + 1] == ' ')
		return cf_error(CF_E_INVALID_ARG, "authorization: must start with \"%s \" (one "
				"space)", CF_CALLAUTH_LABEL);
	if (value[len - 1] == ',' || value[len - 1] == ' ')
		return cf_error(CF_E_INVALID_ARG, "authorization: ends with a comma or a space");
	for (s = value + ll + 1; s < end;) {
		const char *comma, *eq;

		/* Spaces are allowed after a comma only. */
		if (s > value + ll + 1)
			while (s < end && *s == ' ')
				s++;
		comma = memchr(s, ',', (size_t)(end - s));
		if (comma == NULL)
			comma = end;
		if ((eq = memchr(s, '=', (size_t)(comma - s))) == NULL)
			return cf_error(CF_E_INVALID_ARG, "authorization: a field without '=' (the "
					"form is name=value, comma-separated)");
		if ((r = callauth_field(a, s, (size_t)(eq - s), eq + 1, (size_t)(comma - eq - 1),
					&seen)) != CF_OK)
			return r;
		s = comma + 1;
	}
	if (seen != 15)
		return cf_error(CF_E_INVALID_ARG, "authorization: lacks %s", !(seen & 1) ? "keyId" :
				!(seen & 2) ? "timestamp" : !(seen & 4) ? "nonce" : "signature");
	return CF_OK;
}

int
cf_callauth_string(const char *path, const uint8_t *body, size_t bodylen, int64_t timestamp,
		   const char *nonce, const char *key_id, cf_buf *out)
{
	uint8_t digest[32];
	char hex[65], ts[24];
	int rc;

	if (path == NULL || path[0] != '/' || strlen(path) > CF_CALLAUTH_PATH_MAX)
		return cf_error(CF_E_INVALID_ARG, "method path must start with / and be at most %d "
				"bytes", CF_CALLAUTH_PATH_MAX);
	if ((rc = charset(nonce, "nonce", CF_REQSIGN_NONCE_MIN, CF_REQSIGN_NONCE_MAX, "-_", 0)) !=
		    CF_OK ||
	    (rc = cf_apikey_id_check(key_id)) != CF_OK)
		return rc;
	if (timestamp < 0 || timestamp > 99999999999LL)
		return cf_error(CF_E_INVALID_ARG, "timestamp out of range");
	if (EVP_Digest(body != NULL ? body : (const uint8_t *)"", bodylen, digest, NULL, sha256(),
		       NULL) != 1)
		return cf_error(CF_E_INTERNAL, "SHA-256 failed");
	cf_hex_encode(digest, sizeof(digest), hex);
	snprintf(ts, sizeof(ts), "%lld", (long long)timestamp);
	{
		const char *parts[] = { CF_CALLAUTH_LABEL, path, hex, ts, nonce, key_id };

		return join_lines(parts, sizeof(parts) / sizeof(parts[0]), out);
	}
}

void
cf_callauth_format(const struct cf_call_auth *a, char out[CF_CALLAUTH_HEADER_MAX])
{
	char sig[65];

	cf_hex_encode(a->signature, sizeof(a->signature), sig);
	snprintf(out, CF_CALLAUTH_HEADER_MAX, "%s keyId=%s, timestamp=%lld, nonce=%s, signature=%s",
		 CF_CALLAUTH_LABEL, a->key_id, (long long)a->timestamp, a->nonce, sig);
}
