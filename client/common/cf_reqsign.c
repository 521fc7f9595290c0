#include "cf_reqsign.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_keytype.h"
#include "cf_status.h"

#define MAX_PARAMS 256

static int
unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_' || c == '~';
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
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
			if ((hi = hexval(s[i + 1])) < 0 || (lo = hexval(s[i + 2])) < 0)
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
		*r = CF_E_NOMEM;
		return NULL;
	}
	if ((*r = recode(s, n, b)) == CF_OK && (out = malloc(cf_buf_len(b) + 1)) != NULL) {
		memcpy(out, cf_buf_peek(b), cf_buf_len(b));
		out[cf_buf_len(b)] = '\0';
	} else if (*r == CF_OK) {
		*r = CF_E_NOMEM;
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
		return CF_E_NOMEM;
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
	static const char hex[] = "0123456789abcdef";
	char body[65], ts[24];
	int rc;

	if ((rc = cf_reqsign_check(r)) != CF_OK)
		return rc;
	for (int i = 0; i < 32; i++) {
		body[2 * i] = hex[r->body_sha256[i] >> 4];
		body[2 * i + 1] = hex[r->body_sha256[i] & 15];
	}
	body[64] = '\0';
	snprintf(ts, sizeof(ts), "%lld", (long long)r->timestamp);
	{
		const char *parts[] = { CF_REQSIGN_HTTP_LABEL, r->method, r->path, r->canonical_query,
					body, ts, r->nonce, r->key_id };

		for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
			if ((i > 0 && (rc = cf_buf_put_u8(out, '\n')) != CF_OK) ||
			    (rc = cf_buf_put(out, parts[i], strlen(parts[i]))) != CF_OK)
				return rc;
	}
	return CF_OK;
}
