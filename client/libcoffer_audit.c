/*
 * libcoffer_audit.c — the AdminService calls of the audit trail (its last
 * records, and a check of its chain and seals) and of the token's
 * capabilities.
 */
#include "libcoffer_rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_audit_verify.h"
#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"

#define AS "/coffer.v1.AdminService/"

void
coffer_audit_lines_free(char **lines, size_t n)
{
	cf_audit_lines_free(lines, n);
}

int
coffer_audit_tail(coffer_client *c, uint32_t count, char ***lines, size_t *n)
{
	Coffer__V1__TailAuditRequest req = COFFER__V1__TAIL_AUDIT_REQUEST__INIT;
	Coffer__V1__TailAuditResponse *resp;
	ProtobufCMessage *m = NULL;
	char **out;
	int r;

	cf_error_clear();
	if (c == NULL || lines == NULL || n == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	req.count = count;
	if ((r = lc_rpc(c, AS "TailAudit", &req.base,
	    &coffer__v1__tail_audit_response__descriptor, 0, &m)) != CF_OK)
		return r;
	resp = (Coffer__V1__TailAuditResponse *)m;
	if ((out = calloc(resp->n_records ? resp->n_records : 1, sizeof(*out))) == NULL) {
		protobuf_c_message_free_unpacked(m, NULL);
		return cf_nomem();
	}
	for (size_t i = 0; i < resp->n_records; i++)
		if ((out[i] = strdup(resp->records[i])) == NULL) {
			coffer_audit_lines_free(out, i);
			protobuf_c_message_free_unpacked(m, NULL);
			return cf_nomem();
		}
	*lines = out;
	*n = resp->n_records;
	protobuf_c_message_free_unpacked(m, NULL);
	return CF_OK;
}

int
coffer_audit_verify(coffer_client *c, struct coffer_audit_report *rep)
{
	Coffer__V1__VerifyAuditRequest req = COFFER__V1__VERIFY_AUDIT_REQUEST__INIT;
	Coffer__V1__VerifyAuditResponse *resp;
	ProtobufCMessage *m = NULL;
	int r;

	cf_error_clear();
	if (c == NULL || rep == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	if ((r = lc_rpc(c, AS "VerifyAudit", &req.base,
	    &coffer__v1__verify_audit_response__descriptor, 0, &m)) != CF_OK)
		return r;
	resp = (Coffer__V1__VerifyAuditResponse *)m;
	memset(rep, 0, sizeof(*rep));
	rep->ok = resp->ok;
	rep->records = resp->records;
	rep->seals = resp->seals;
	rep->first_bad = resp->first_bad;
	snprintf(rep->reason, sizeof(rep->reason), "%s", resp->reason);
	protobuf_c_message_free_unpacked(m, NULL);
	return CF_OK;
}

int
coffer_token_info(coffer_client *c, struct coffer_token_info *out)
{
	Coffer__V1__GetTokenInfoRequest req = COFFER__V1__GET_TOKEN_INFO_REQUEST__INIT;
	Coffer__V1__GetTokenInfoResponse *resp;
	ProtobufCMessage *m = NULL;
	int r;

	cf_error_clear();
	if (c == NULL || out == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	if ((r = lc_rpc(c, AS "GetTokenInfo", &req.base,
	    &coffer__v1__get_token_info_response__descriptor, 0, &m)) != CF_OK)
		return r;
	resp = (Coffer__V1__GetTokenInfoResponse *)m;
	memset(out, 0, sizeof(*out));
	snprintf(out->label, sizeof(out->label), "%s", resp->label);
	snprintf(out->manufacturer, sizeof(out->manufacturer), "%s", resp->manufacturer);
	snprintf(out->model, sizeof(out->model), "%s", resp->model);
	snprintf(out->module, sizeof(out->module), "%s", resp->module);
	out->mechanisms = resp->mechanisms;
	out->rng = resp->rng;
	out->session_copies = resp->session_copies;
	for (size_t i = 0; i < resp->n_key_types &&
	     out->n_key_types < sizeof(out->key_types) / sizeof(out->key_types[0]); i++) {
		struct coffer_key_type_support *ks = &out->key_types[out->n_key_types++];

		ks->type = (enum coffer_key_type)resp->key_types[i]->type;
		ks->can_generate = resp->key_types[i]->can_generate;
		ks->can_import = resp->key_types[i]->can_import;
		ks->can_use = resp->key_types[i]->can_use;
		snprintf(ks->missing, sizeof(ks->missing), "%s", resp->key_types[i]->missing);
	}
	for (size_t i = 0; i < resp->n_unavailable && i < COFFER_TOKEN_UNAVAILABLE_MAX; i++)
		snprintf(out->unavailable[out->n_unavailable++], sizeof(out->unavailable[0]), "%s",
			 resp->unavailable[i]);
	protobuf_c_message_free_unpacked(m, NULL);
	return CF_OK;
}
