/*
 * cf_reqsign.h — HMAC-signed HTTP requests (proto/request-signing.md): the
 * canonical query and the canonical request string, shared by the daemon
 * (VerifyRequestSignature, SignRequest) and libcoffer (which builds them from
 * an HTTP request's parts). Pure functions: no I/O, no keys.
 */
#ifndef COFFER_CF_REQSIGN_H
#define COFFER_CF_REQSIGN_H

#include <stddef.h>
#include <stdint.h>

#include "cf_buf.h"

#define CF_REQSIGN_HTTP_LABEL "COFFER-HMAC-SHA256-HTTP"
#define CF_REQSIGN_METHOD_MAX 16
#define CF_REQSIGN_PATH_MAX 2048
#define CF_REQSIGN_QUERY_MAX 8192
#define CF_REQSIGN_NONCE_MIN 16
#define CF_REQSIGN_NONCE_MAX 64
#define CF_REQSIGN_STRING_MAX (64 + CF_REQSIGN_METHOD_MAX + CF_REQSIGN_PATH_MAX + \
			       CF_REQSIGN_QUERY_MAX + 64 + 24 + CF_REQSIGN_NONCE_MAX + 160)

struct cf_http_request {
	const char *method;          /* "GET", "POST" ... (A-Z, 1..16) */
	const char *path;            /* absolute path as sent, "/..." (no query) */
	const char *canonical_query; /* from cf_reqsign_canonical_query; "" if none */
	uint8_t body_sha256[32];     /* SHA-256 of the body (of "" when empty) */
	int64_t timestamp;           /* Unix seconds */
	const char *nonce;           /* 16..64 of A-Z a-z 0-9 - _ */
	const char *key_id;          /* the HMAC key's name */
};

/* The canonical form of a raw query string ("b=2&a=1&a"): parameters split
 * on '&', each name=value percent-decoded then re-encoded (RFC 3986:
 * A-Z a-z 0-9 - . _ ~ kept, every other byte %XX upper-case; a '+' is a
 * literal plus), a missing '=' giving an empty value, sorted by name then
 * value (bytes), joined with '&'. CF_E_INVALID_ARG for a bad %-escape. */
int cf_reqsign_canonical_query(const char *raw, cf_buf *out);

/* Check the fields of r (sizes and character sets); CF_E_INVALID_ARG names
 * the first bad one. */
int cf_reqsign_check(const struct cf_http_request *r);

/* The string that is signed:
 *   COFFER-HMAC-SHA256-HTTP \n METHOD \n path \n canonical query \n
 *   hex(body SHA-256) \n timestamp \n nonce \n key id
 * (no trailing newline). Runs cf_reqsign_check first. */
int cf_reqsign_http_string(const struct cf_http_request *r, cf_buf *out);

/* ---- call authentication: a principal's API key on every gRPC call
 * (proto/call-authentication.md) ---- */

#define CF_CALLAUTH_LABEL "COFFER-HMAC-SHA256"
#define CF_CALLAUTH_HEADER "authorization"
#define CF_APIKEY_ID_LEN 27          /* "ak_" + 24 lower-case hex digits */
#define CF_CALLAUTH_HEADER_MAX 512
#define CF_CALLAUTH_PATH_MAX 128

struct cf_call_auth {
	char key_id[CF_APIKEY_ID_LEN + 1];
	int64_t timestamp;
	char nonce[CF_REQSIGN_NONCE_MAX + 1];
	uint8_t signature[32];
};

/* CF_OK if id is "ak_" followed by 24 lower-case hex digits. */
int cf_apikey_id_check(const char *id);

/* Parse an authorization value ("COFFER-HMAC-SHA256 keyId=..., timestamp=...,
 * nonce=..., signature=<64 hex>"; fields in any order, each once, spaces
 * after commas optional). CF_E_INVALID_ARG naming what is wrong. */
int cf_callauth_parse(const char *value, size_t len, struct cf_call_auth *out);

/* The string that is signed:
 *   COFFER-HMAC-SHA256 \n method path \n hex(SHA-256 of the request message
 *   bytes) \n timestamp \n nonce \n key id  (no trailing newline) */
int cf_callauth_string(const char *path, const uint8_t *body, size_t bodylen, int64_t timestamp,
		       const char *nonce, const char *key_id, cf_buf *out);

/* The header value for a, into out (CF_CALLAUTH_HEADER_MAX bytes). */
void cf_callauth_format(const struct cf_call_auth *a, char out[CF_CALLAUTH_HEADER_MAX]);

#endif
