/*
 * libcoffer_reqsign.c — HMAC-signed HTTP requests: the canonical request
 * built from an HTTP request's parts (cf_reqsign, shared with cofferd), and
 * the KeyService calls that verify and sign them in the token.
 */
#include "libcoffer_rpc.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "cf_buf.h"
#include "cf_reqsign.h"
#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"

#define KS "/coffer.v1.KeyService/"

int
coffer_canonical_query(const char *raw_query, char **out)
{
	cf_buf *b = cf_buf_new(3 * CF_REQSIGN_QUERY_MAX + 1);
	int r;

	cf_error_clear();
	if (out == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL output");
	if (b == NULL)
		return cf_nomem();
	if ((r = cf_reqsign_canonical_query(raw_query ? raw_query : "", b)) == CF_OK &&
	    (r = cf_buf_put_u8(b, 0)) == CF_OK &&
	    (*out = strdup((const char *)cf_buf_peek(b))) == NULL)
		r = cf_nomem();
	cf_buf_free(b);
	return r;
}

/* The protobuf parts of r (the canonical query malloc'ed into *cq). */
static int
parts_of(const struct coffer_http_request *r, Coffer__V1__HttpRequestParts *p, uint8_t sha[32],
    char **cq)
{
	int rc;

	if (r == NULL || r->key == NULL || r->method == NULL || r->path == NULL ||
	    (r->body == NULL && r->body_len > 0))
		return cf_error(CF_E_INVALID_ARG, "NULL request part");
	if ((rc = coffer_canonical_query(r->raw_query, cq)) != CF_OK)
		return rc;
	if (EVP_Digest(r->body ? r->body : (const uint8_t *)"", r->body_len, sha, NULL,
	    EVP_sha256(), NULL) != 1)
		return cf_error(CF_E_INTERNAL, "SHA-256 failed");
	p->key = (char *)r->key;
	p->method = (char *)r->method;
	p->path = (char *)r->path;
	p->canonical_query = *cq;
	p->body_sha256.data = sha;
	p->body_sha256.len = 32;
	p->timestamp = r->timestamp;
	p->nonce = (char *)(r->nonce ? r->nonce : "");
	return CF_OK;
}

int
coffer_verify_http_request(coffer_client *c, const struct coffer_http_request *r,
    const char *signature, enum coffer_request_verdict *verdict, char **reason,
    uint32_t *version)
{
	Coffer__V1__VerifyRequestSignatureRequest req =
	    COFFER__V1__VERIFY_REQUEST_SIGNATURE_REQUEST__INIT;
	Coffer__V1__HttpRequestParts parts = COFFER__V1__HTTP_REQUEST_PARTS__INIT;
	Coffer__V1__VerifyRequestSignatureResponse *resp;
	ProtobufCMessage *m = NULL;
	uint8_t sha[32];
	char *cq = NULL, *why = NULL;
	int rc;

	cf_error_clear();
	if (c == NULL || signature == NULL || verdict == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	if ((rc = parts_of(r, &parts, sha, &cq)) != CF_OK)
		goto out;
	req.request = &parts;
	req.signature = (char *)signature;
	if ((rc = lc_rpc(c, KS "VerifyRequestSignature", &req.base,
	    &coffer__v1__verify_request_signature_response__descriptor, 0, &m)) != CF_OK)
		goto out;
	resp = (Coffer__V1__VerifyRequestSignatureResponse *)m;
	if (reason != NULL && (why = strdup(resp->reason)) == NULL) {
		rc = cf_nomem();
		goto out;
	}
	*verdict = (enum coffer_request_verdict)resp->verdict;
	if (version != NULL)
		*version = resp->version;
	if (reason != NULL)
		*reason = why;
out:
	protobuf_c_message_free_unpacked(m, NULL);
	free(cq);
	return rc;
}

void
coffer_http_signature_free(struct coffer_http_signature *s)
{
	if (s == NULL)
		return;
	free(s->signature);
	free(s->nonce);
	free(s->authorization);
	free(s);
}

int
coffer_sign_http_request(coffer_client *c, const struct coffer_http_request *r,
    struct coffer_http_signature **out)
{
	Coffer__V1__SignHttpRequestRequest req = COFFER__V1__SIGN_HTTP_REQUEST_REQUEST__INIT;
	Coffer__V1__HttpRequestParts parts = COFFER__V1__HTTP_REQUEST_PARTS__INIT;
	Coffer__V1__SignHttpRequestResponse *resp;
	struct coffer_http_signature *s = NULL;
	ProtobufCMessage *m = NULL;
	uint8_t sha[32];
	char *cq = NULL;
	int rc;

	cf_error_clear();
	if (c == NULL || out == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	if ((rc = parts_of(r, &parts, sha, &cq)) != CF_OK)
		goto out;
	req.request = &parts;
	if ((rc = lc_rpc(c, KS "SignHttpRequest", &req.base,
	    &coffer__v1__sign_http_request_response__descriptor, 0, &m)) != CF_OK)
		goto out;
	resp = (Coffer__V1__SignHttpRequestResponse *)m;
	if ((s = calloc(1, sizeof(*s))) == NULL || (s->signature = strdup(resp->signature)) == NULL ||
	    (s->nonce = strdup(resp->nonce)) == NULL ||
	    (s->authorization = strdup(resp->authorization)) == NULL) {
		rc = cf_nomem();
		goto out;
	}
	s->timestamp = resp->timestamp;
	s->version = resp->version;
	*out = s;
	s = NULL;
out:
	coffer_http_signature_free(s);
	protobuf_c_message_free_unpacked(m, NULL);
	free(cq);
	return rc;
}
