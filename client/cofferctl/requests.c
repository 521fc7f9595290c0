/*
 * request sign and request verify: HMAC-signed HTTP requests
 * (proto/request-signing.md) from the command line. libcoffer builds the
 * canonical query and hashes the body here; the daemon signs or checks in
 * the token, and records the nonce of a valid request (a replay is refused,
 * on every replica of a fleet).
 */
#include <inttypes.h>
#include <stdlib.h>

#include "cofferctl.h"

/* The body is hashed here and only its SHA-256 is sent. */
#define REQUEST_BODY_MAX        (64u << 20)

/* The request's parts from the options (body: read from --body, else none). */
static int
request_parts(const struct opts *o, const char *cmd, struct coffer_http_request *r,
    struct coffer_bytes *body)
{
	char need[96];
	int rc;

	if (o->method == NULL || o->path == NULL) {
		snprintf(need, sizeof(need), "%s needs --method M and --path P", cmd);
		return usage_error(need, NULL);
	}
	r->key = o->args[0];
	r->method = o->method;
	r->path = o->path;
	r->raw_query = o->query;
	r->timestamp = o->have_timestamp ? o->timestamp : 0;
	r->nonce = o->nonce;
	if (o->body != NULL) {
		if ((rc = read_input(o->body, REQUEST_BODY_MAX, body)) != EXIT_OK)
			return rc;
		r->body = body->data;
		r->body_len = body->len;
	}
	return EXIT_OK;
}

static int
put_signature(const struct ctl *ctl, const struct coffer_http_signature *s)
{
	if (ctl->json) {
		fputs("{\"authorization\":", stdout);
		put_json_str(stdout, s->authorization);
		fputs(",\"signature\":", stdout);
		put_json_str(stdout, s->signature);
		printf(",\"timestamp\":%" PRId64 ",\"nonce\":", s->timestamp);
		put_json_str(stdout, s->nonce);
		printf(",\"version\":%" PRIu32 "}\n", s->version);
		return flush_stdout();
	}
	fputs("authorization: ", stdout);
	put_safe(stdout, s->authorization);
	printf("\ntimestamp: %" PRId64 "\nnonce: ", s->timestamp);
	put_safe(stdout, s->nonce);
	fputs("\nsignature: ", stdout);
	put_safe(stdout, s->signature);
	printf("\nversion: %" PRIu32 "\n", s->version);
	return flush_stdout();
}

int
cmd_request_sign(struct ctl *ctl, const struct opts *o)
{
	struct coffer_http_request r = { 0 };
	struct coffer_bytes body = { NULL, 0 };
	struct coffer_http_signature *s = NULL;
	coffer_client *c = NULL;
	int rv, rc;

	if ((rc = request_parts(o, "request sign", &r, &body)) != EXIT_OK)
		return rc;
	if ((rc = connect_to(ctl, 0, &c)) != EXIT_OK)
		goto out;
	if ((rv = coffer_sign_http_request(c, &r, &s)) != COFFER_OK)
		rc = fail(rv);
	else
		rc = put_signature(ctl, s);
out:
	coffer_http_signature_free(s);
	coffer_bytes_free(&body);
	coffer_close(c);
	return rc;
}

/* The verdict as one word (--json "verdict", and the text's second word). */
static const char *
verdict_name(enum coffer_request_verdict v)
{
	switch (v) {
	case COFFER_REQUEST_VALID:
		return "valid";
	case COFFER_REQUEST_BAD_SIGNATURE:
		return "bad-signature";
	case COFFER_REQUEST_EXPIRED:
		return "expired";
	case COFFER_REQUEST_CLOCK_SKEW:
		return "clock-skew";
	case COFFER_REQUEST_REPLAYED_NONCE:
		return "replayed";
	default:
		return "unknown";
	}
}

/* "valid", or "invalid: <verdict>: <the daemon's reason>"; exit 0 or 1,
 * as verify and verify-mac. */
static int
put_verdict(const struct ctl *ctl, enum coffer_request_verdict v, const char *reason,
    uint32_t version)
{
	int valid = v == COFFER_REQUEST_VALID, rc;

	if (ctl->json) {
		printf("{\"valid\":%s,\"verdict\":\"%s\",\"reason\":", valid ? "true" : "false",
		    verdict_name(v));
		put_json_str(stdout, reason != NULL ? reason : "");
		printf(",\"version\":%" PRIu32 "}\n", version);
	} else if (valid) {
		printf("valid (key version %" PRIu32 ")\n", version);
	} else {
		printf("invalid: %s: ", verdict_name(v));
		put_safe(stdout, reason != NULL ? reason : "");
		fputc('\n', stdout);
	}
	if ((rc = flush_stdout()) != EXIT_OK)
		return rc;
	return valid ? EXIT_OK : EXIT_FAILED;
}

int
cmd_request_verify(struct ctl *ctl, const struct opts *o)
{
	struct coffer_http_request r = { 0 };
	struct coffer_bytes body = { NULL, 0 };
	enum coffer_request_verdict v = 0;
	coffer_client *c = NULL;
	char *reason = NULL;
	uint32_t version = 0;
	int rv, rc;

	if (!o->have_timestamp || o->nonce == NULL || o->signature == NULL)
		return usage_error("request verify needs --timestamp T, --nonce N and "
		    "--signature S (from the request's Authorization header)", NULL);
	if ((rc = request_parts(o, "request verify", &r, &body)) != EXIT_OK)
		return rc;
	if ((rc = connect_to(ctl, 0, &c)) != EXIT_OK)
		goto out;
	rv = coffer_verify_http_request(c, &r, o->signature, &v, &reason, &version);
	rc = rv != COFFER_OK ? fail(rv) : put_verdict(ctl, v, reason, version);
out:
	free(reason);
	coffer_bytes_free(&body);
	coffer_close(c);
	return rc;
}
