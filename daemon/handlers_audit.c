/* AdminService: the audit trail (TailAudit, VerifyAudit). */
#include <stdlib.h>
#include <string.h>

#include "cf_pbcheck.h"
#include "cf_pbwipe.h"
#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"
#include "handlers_common.h"

#define TAIL_DEFAULT 20
#define TAIL_MAX 1000

static int
h_tail_audit(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__TailAuditRequest *req = (const void *)m;
	Coffer__V1__TailAuditResponse *out;
	size_t want = req->count ? req->count : TAIL_DEFAULT, n = 0;
	char **lines = NULL;
	int r;

	if (c->sv->au == NULL)
		return cf_error(CF_E_UNAVAILABLE, "this daemon keeps no audit trail");
	if (want > TAIL_MAX)
		return cf_error(CF_E_INVALID_ARG, "count is at most %d", TAIL_MAX);
	if ((r = audit_tail(c->sv->au, want, &lines, &n)) != CF_OK)
		return r;
	/* A line altered in the file may hold bytes that are not UTF-8, which
	 * a proto3 string must not: those are escaped. */
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(lines[i]);
		char *e;

		if (cf_utf8_valid((const uint8_t *)lines[i], len) == len)
			continue;
		if ((e = malloc(4 * len + 1)) == NULL) {
			audit_lines_free(lines, n);
			return cf_nomem();
		}
		cf_text_escape(lines[i], len, e, 4 * len + 1);
		free(lines[i]);
		lines[i] = e;
	}
	if ((out = h_new_msg(&coffer__v1__tail_audit_response__descriptor)) == NULL) {
		audit_lines_free(lines, n);
		return cf_nomem();
	}
	/* The message takes the lines over. */
	out->records = lines;
	out->n_records = n;
	*resp = &out->base;
	return CF_OK;
}

static int
h_verify_audit(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	Coffer__V1__VerifyAuditResponse *out;
	struct cf_audit_report rep;
	int r;

	(void)m;
	if (c->sv->au == NULL)
		return cf_error(CF_E_UNAVAILABLE, "this daemon keeps no audit trail");
	if ((r = audit_verify(c->sv->au, &rep)) != CF_OK)
		return r;
	if ((out = h_new_msg(&coffer__v1__verify_audit_response__descriptor)) == NULL ||
	    (out->reason = strdup(rep.ok ? "" : rep.reason)) == NULL)
		return h_reply(cf_nomem(), out, resp);   /* out may be in a sealed call's arena */
	out->ok = rep.ok;
	out->records = rep.records;
	out->seals = rep.seals;
	out->first_bad = rep.first_bad;
	*resp = &out->base;
	return CF_OK;
}

static const handler_fn fns[CF_METHOD__COUNT] = {
	[CF_AS_TAIL_AUDIT] = h_tail_audit,
	[CF_AS_VERIFY_AUDIT] = h_verify_audit,
};

const struct hservice handlers_audit = { .fns = fns };
