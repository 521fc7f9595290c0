/*
 * libcoffer_principal.c — the principal calls of the AdminService: who may
 * call the service socket, with which grants and rate limits.
 */
#include "libcoffer_rpc.h"

#include <stdlib.h>
#include <string.h>

#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"

#define AS "/coffer.v1.AdminService/"

_Static_assert(COFFER_OP_GET_PUBLIC_KEY == (int)COFFER__V1__OPERATION__OP_GET_PUBLIC_KEY &&
	       COFFER_OP_SIGN == (int)COFFER__V1__OPERATION__OP_SIGN, "operation");

static const char *const op_names[] = {
	"all", "sign", "verify", "mac", "verify-mac", "wrap", "unwrap", "rewrap",
	"generate-data-key", "get-public-key",
};
#define NOPS (sizeof(op_names) / sizeof(op_names[0]))

const char *
coffer_operation_name(enum coffer_operation op)
{
	return (unsigned)op < NOPS ? op_names[op] : "unknown";
}

int
coffer_operation_parse(const char *name, enum coffer_operation *out)
{
	for (unsigned i = 0; name != NULL && i < NOPS; i++)
		if (strcmp(name, op_names[i]) == 0) {
			*out = (enum coffer_operation)i;
			return CF_OK;
		}
	return cf_error(CF_E_INVALID_ARG, "unknown operation; use sign, verify, mac, verify-mac, "
			"wrap, unwrap, rewrap, generate-data-key, get-public-key or all");
}

static void
principal_clear(struct coffer_principal *p)
{
	free(p->name);
	free(p->uids);
	free(p->gids);
	for (size_t i = 0; i < p->ngrants; i++)
		free(p->grants[i].key_pattern);
	free(p->grants);
	free(p->limits);
	memset(p, 0, sizeof(*p));
}

void
coffer_principal_free(struct coffer_principal *p)
{
	if (p == NULL)
		return;
	principal_clear(p);
	free(p);
}

void
coffer_principal_list_free(struct coffer_principal_list *l)
{
	if (l == NULL)
		return;
	for (size_t i = 0; i < l->n; i++)
		principal_clear(&l->principals[i]);
	free(l->principals);
	free(l);
}

static int
from_pb(const Coffer__V1__Principal *m, struct coffer_principal *p)
{
	if ((p->name = strdup(m->name)) == NULL ||
	    (m->n_uids && (p->uids = calloc(m->n_uids, sizeof(*p->uids))) == NULL) ||
	    (m->n_gids && (p->gids = calloc(m->n_gids, sizeof(*p->gids))) == NULL) ||
	    (m->n_grants && (p->grants = calloc(m->n_grants, sizeof(*p->grants))) == NULL) ||
	    (m->n_limits && (p->limits = calloc(m->n_limits, sizeof(*p->limits))) == NULL))
		return cf_nomem();
	if (m->n_uids)
		memcpy(p->uids, m->uids, m->n_uids * sizeof(*p->uids));
	if (m->n_gids)
		memcpy(p->gids, m->gids, m->n_gids * sizeof(*p->gids));
	p->nuids = m->n_uids;
	p->ngids = m->n_gids;
	p->create_time = m->create_time;
	for (size_t i = 0; i < m->n_grants; i++) {
		struct coffer_grant *g = &p->grants[p->ngrants];

		if ((g->key_pattern = strdup(m->grants[i]->key_pattern)) == NULL)
			return cf_nomem();
		p->ngrants++;
		for (size_t k = 0; k < m->grants[i]->n_operations; k++)
			if ((unsigned)m->grants[i]->operations[k] < NOPS)
				g->operations |= COFFER_OP_BIT(m->grants[i]->operations[k]);
	}
	for (size_t i = 0; i < m->n_limits; i++) {
		p->limits[i].operation = (enum coffer_operation)m->limits[i]->operation;
		p->limits[i].per_second = m->limits[i]->per_second;
		p->limits[i].burst = m->limits[i]->burst;
	}
	p->nlimits = m->n_limits;
	return CF_OK;
}

/* Run an admin call that answers a Principal. */
static int
principal_call(coffer_client *c, const char *method, const ProtobufCMessage *req,
    struct coffer_principal **out)
{
	ProtobufCMessage *m = NULL;
	struct coffer_principal *p = NULL;
	int r;

	if ((r = lc_rpc(c, method, req, &coffer__v1__principal__descriptor, 0, &m)) != CF_OK ||
	    out == NULL)
		goto out;
	if ((p = calloc(1, sizeof(*p))) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = from_pb((const Coffer__V1__Principal *)m, p)) == CF_OK) {
		*out = p;
		p = NULL;
	}
out:
	coffer_principal_free(p);
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

static int
check_args(const coffer_client *c, const char *name)
{
	cf_error_clear();
	if (c == NULL || name == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL client or principal name");
	return CF_OK;
}

/* operations bits as a protobuf array (ops[] holds at least NOPS). */
static size_t
ops_list(unsigned int bits, Coffer__V1__Operation *ops)
{
	size_t n = 0;

	for (unsigned i = 1; i < NOPS; i++)
		if (bits & COFFER_OP_BIT(i))
			ops[n++] = (Coffer__V1__Operation)i;
	return n;
}

int
coffer_principal_create(coffer_client *c, const char *name, const uint32_t *uids, size_t nuids,
    const uint32_t *gids, size_t ngids, struct coffer_principal **out)
{
	Coffer__V1__CreatePrincipalRequest req = COFFER__V1__CREATE_PRINCIPAL_REQUEST__INIT;
	int r;

	if ((r = check_args(c, name)) != CF_OK)
		return r;
	req.name = (char *)name;
	req.uids = (uint32_t *)uids;
	req.n_uids = nuids;
	req.gids = (uint32_t *)gids;
	req.n_gids = ngids;
	return principal_call(c, AS "CreatePrincipal", &req.base, out);
}

int
coffer_principal_get(coffer_client *c, const char *name, struct coffer_principal **out)
{
	Coffer__V1__GetPrincipalRequest req = COFFER__V1__GET_PRINCIPAL_REQUEST__INIT;
	int r;

	if ((r = check_args(c, name)) != CF_OK)
		return r;
	req.name = (char *)name;
	return principal_call(c, AS "GetPrincipal", &req.base, out);
}

int
coffer_principal_list(coffer_client *c, struct coffer_principal_list **out)
{
	Coffer__V1__ListPrincipalsRequest req = COFFER__V1__LIST_PRINCIPALS_REQUEST__INIT;
	Coffer__V1__ListPrincipalsResponse *resp;
	struct coffer_principal_list *l = NULL;
	ProtobufCMessage *m = NULL;
	int r;

	if ((r = check_args(c, "")) != CF_OK || out == NULL)
		return r != CF_OK ? r : cf_error(CF_E_INVALID_ARG, "NULL output");
	if ((r = lc_rpc(c, AS "ListPrincipals", &req.base,
	    &coffer__v1__list_principals_response__descriptor, 0, &m)) != CF_OK)
		return r;
	resp = (Coffer__V1__ListPrincipalsResponse *)m;
	if ((l = calloc(1, sizeof(*l))) == NULL || (resp->n_principals &&
	    (l->principals = calloc(resp->n_principals, sizeof(*l->principals))) == NULL)) {
		r = cf_nomem();
		goto out;
	}
	for (size_t i = 0; i < resp->n_principals && r == CF_OK; i++, l->n++)
		r = from_pb(resp->principals[i], &l->principals[i]);
	if (r == CF_OK) {
		*out = l;
		l = NULL;
	}
out:
	coffer_principal_list_free(l);
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

int
coffer_principal_grant(coffer_client *c, const char *name, const char *key_pattern,
    unsigned int operations, struct coffer_principal **out)
{
	Coffer__V1__GrantRequest req = COFFER__V1__GRANT_REQUEST__INIT;
	Coffer__V1__Grant g = COFFER__V1__GRANT__INIT;
	Coffer__V1__Operation ops[NOPS];
	int r;

	if ((r = check_args(c, name)) != CF_OK)
		return r;
	g.key_pattern = (char *)(key_pattern ? key_pattern : "");
	g.operations = ops;
	g.n_operations = ops_list(operations, ops);
	req.name = (char *)name;
	req.grant = &g;
	return principal_call(c, AS "GrantPrincipal", &req.base, out);
}

int
coffer_principal_revoke(coffer_client *c, const char *name, const char *key_pattern,
    unsigned int operations, struct coffer_principal **out)
{
	Coffer__V1__RevokeRequest req = COFFER__V1__REVOKE_REQUEST__INIT;
	Coffer__V1__Operation ops[NOPS];
	int r;

	if ((r = check_args(c, name)) != CF_OK)
		return r;
	req.name = (char *)name;
	req.key_pattern = (char *)(key_pattern ? key_pattern : "");
	req.operations = ops;
	req.n_operations = ops_list(operations, ops);
	return principal_call(c, AS "RevokePrincipal", &req.base, out);
}

int
coffer_principal_set_limit(coffer_client *c, const char *name, enum coffer_operation op,
    double per_second, uint32_t burst, struct coffer_principal **out)
{
	Coffer__V1__SetRateLimitRequest req = COFFER__V1__SET_RATE_LIMIT_REQUEST__INIT;
	Coffer__V1__RateLimit l = COFFER__V1__RATE_LIMIT__INIT;
	int r;

	if ((r = check_args(c, name)) != CF_OK)
		return r;
	l.operation = (Coffer__V1__Operation)op;
	l.per_second = per_second;
	l.burst = burst;
	req.name = (char *)name;
	req.limit = &l;
	return principal_call(c, AS "SetRateLimit", &req.base, out);
}

int
coffer_principal_delete(coffer_client *c, const char *name)
{
	Coffer__V1__DeletePrincipalRequest req = COFFER__V1__DELETE_PRINCIPAL_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int r;

	if ((r = check_args(c, name)) != CF_OK)
		return r;
	req.name = (char *)name;
	r = lc_rpc(c, AS "DeletePrincipal", &req.base,
	    &coffer__v1__delete_principal_response__descriptor, 0, &m);
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}
