/* AdminService: principals (create, read, grants, rate limits, delete). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"
#include "handlers_common.h"

static int
fill_principal(const struct store_principal *sp, Coffer__V1__Principal *p)
{
	p->create_time = sp->created;
	if ((p->name = strdup(sp->name)) == NULL ||
	    (sp->nuids && (p->uids = calloc(sp->nuids, sizeof(*p->uids))) == NULL) ||
	    (sp->ngids && (p->gids = calloc(sp->ngids, sizeof(*p->gids))) == NULL) ||
	    (sp->ngrants && (p->grants = calloc(sp->ngrants, sizeof(*p->grants))) == NULL) ||
	    (sp->nlimits && (p->limits = calloc(sp->nlimits, sizeof(*p->limits))) == NULL))
		return cf_nomem();
	if (sp->nuids > 0)
		memcpy(p->uids, sp->uids, sp->nuids * sizeof(*p->uids));
	p->n_uids = sp->nuids;
	if (sp->ngids > 0)
		memcpy(p->gids, sp->gids, sp->ngids * sizeof(*p->gids));
	p->n_gids = sp->ngids;
	for (uint32_t i = 0; i < sp->ngrants; i++) {
		Coffer__V1__Grant *g = h_new_msg(&coffer__v1__grant__descriptor);

		if (g == NULL)
			return cf_nomem();
		p->grants[p->n_grants++] = g;
		if ((g->key_pattern = strdup(sp->grants[i].pattern)) == NULL ||
		    (g->operations = calloc(CF_OP__COUNT, sizeof(*g->operations))) == NULL)
			return cf_nomem();
		for (unsigned op = 1; op < CF_OP__COUNT; op++)
			if (sp->grants[i].ops & CF_OP_BIT(op))
				g->operations[g->n_operations++] = (Coffer__V1__Operation)op;
	}
	for (uint32_t i = 0; i < sp->nlimits; i++) {
		Coffer__V1__RateLimit *l = h_new_msg(&coffer__v1__rate_limit__descriptor);

		if (l == NULL)
			return cf_nomem();
		l->operation = (Coffer__V1__Operation)sp->limits[i].op;
		l->per_second = sp->limits[i].rate;
		l->burst = sp->limits[i].burst;
		p->limits[p->n_limits++] = l;
	}
	return CF_OK;
}

/* Finish a principal handler: the Principal response of `sp`. */
static int
principal_response(int r, struct store_principal *sp, ProtobufCMessage **resp)
{
	Coffer__V1__Principal *p = NULL;

	if (r == CF_OK && (p = h_new_msg(&coffer__v1__principal__descriptor)) == NULL)
		r = cf_nomem();
	if (r == CF_OK)
		r = fill_principal(sp, p);
	policy_principal_free(sp);
	return h_reply(r, p, resp);
}

static int
h_create_principal(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__CreatePrincipalRequest *req = (const void *)m;
	struct store_principal sp;

	memset(&sp, 0, sizeof(sp));
	return principal_response(policy_create(c->sv->pol, req->name, req->uids, req->n_uids,
						req->gids, req->n_gids, &sp), &sp, resp);
}

static int
h_get_principal(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__GetPrincipalRequest *req = (const void *)m;
	struct store_principal sp;

	memset(&sp, 0, sizeof(sp));
	return principal_response(policy_get(c->sv->pol, req->name, &sp), &sp, resp);
}

static int
h_list_principals(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	Coffer__V1__ListPrincipalsResponse *out = NULL;
	struct store_principal *list = NULL;
	size_t n = 0;
	int r;

	(void)m;
	if ((r = policy_list(c->sv->pol, &list, &n)) != CF_OK)
		return r;
	if ((out = h_new_msg(&coffer__v1__list_principals_response__descriptor)) == NULL ||
	    (n && (out->principals = calloc(n, sizeof(*out->principals))) == NULL)) {
		r = cf_nomem();
		goto out;
	}
	for (size_t i = 0; i < n && r == CF_OK; i++) {
		Coffer__V1__Principal *p = h_new_msg(&coffer__v1__principal__descriptor);

		if (p == NULL) {
			r = cf_nomem();
			break;
		}
		out->principals[out->n_principals++] = p;
		r = fill_principal(&list[i], p);
	}
out:
	policy_list_free(list, n);
	return h_reply(r, out, resp);
}

static int
h_grant_principal(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__GrantRequest *req = (const void *)m;
	struct store_principal sp;

	memset(&sp, 0, sizeof(sp));
	if (req->grant == NULL)
		return cf_error(CF_E_INVALID_ARG, "grant is required");
	return principal_response(policy_grant(c->sv->pol, req->name, req->grant->key_pattern,
					       h_ops_mask(req->grant->n_operations,
							req->grant->operations), &sp), &sp, resp);
}

static int
h_revoke_principal(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__RevokeRequest *req = (const void *)m;
	struct store_principal sp;

	memset(&sp, 0, sizeof(sp));
	return principal_response(policy_revoke(c->sv->pol, req->name, req->key_pattern,
						h_ops_mask(req->n_operations, req->operations),
						&sp),
				  &sp, resp);
}

static int
h_set_rate_limit(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__SetRateLimitRequest *req = (const void *)m;
	struct store_principal sp;

	memset(&sp, 0, sizeof(sp));
	if (req->limit == NULL)
		return cf_error(CF_E_INVALID_ARG, "limit is required");
	return principal_response(policy_set_limit(c->sv->pol, req->name,
						   (enum cf_op)req->limit->operation,
						   req->limit->per_second, req->limit->burst, &sp),
				  &sp, resp);
}

struct principal_deletion {
	policy *pol;
	const char *name;
};

static int
delete_commit(void *arg, int64_t now, struct store_dropped *dropped)
{
	const struct principal_deletion *d = arg;

	return policy_delete(d->pol, d->name, now, dropped);
}

static int
h_delete_principal(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__DeletePrincipalRequest *req = (const void *)m;
	Coffer__V1__DeletePrincipalResponse *out;
	struct principal_deletion d = { c->sv->pol, req->name };
	int r;

	/* The principal and its API keys go in one change (its secrets must
	 * not outlive it); memory and the token follow without fail. */
	r = c->sv->ak != NULL ? apikeys_principal_delete(c->sv->ak, d.name, delete_commit, &d)
			      : policy_delete(d.pol, d.name, (int64_t)time(NULL), NULL);
	if (r != CF_OK)
		return r;
	if ((out = h_new_msg(&coffer__v1__delete_principal_response__descriptor)) == NULL)
		return cf_nomem();
	*resp = &out->base;
	return CF_OK;
}


/* Principal `name` as a Principal answer (handlers_describe). */
static int
describe_principal(const struct hcall *c, const ProtobufCMessageDescriptor *type,
		   const char *name, uint32_t made, ProtobufCMessage **resp)
{
	struct store_principal sp;

	(void)type;
	(void)made;
	memset(&sp, 0, sizeof(sp));
	return principal_response(policy_get(c->sv->pol, name, &sp), &sp, resp);
}

/* A deletion's answer holds nothing to read back. */
static int
describe_deleted(const struct hcall *c, const ProtobufCMessageDescriptor *type,
		 const char *name, uint32_t made, ProtobufCMessage **resp)
{
	(void)c;
	(void)name;
	(void)made;
	return (*resp = h_new_msg(type)) != NULL ? CF_OK : cf_nomem();
}

static const handler_fn fns[CF_METHOD__COUNT] = {
	[CF_AS_CREATE_PRINCIPAL] = h_create_principal,
	[CF_AS_GET_PRINCIPAL] = h_get_principal,
	[CF_AS_LIST_PRINCIPALS] = h_list_principals,
	[CF_AS_GRANT_PRINCIPAL] = h_grant_principal,
	[CF_AS_REVOKE_PRINCIPAL] = h_revoke_principal,
	[CF_AS_SET_RATE_LIMIT] = h_set_rate_limit,
	[CF_AS_DELETE_PRINCIPAL] = h_delete_principal,
};

static const struct hdescribe describe[] = {
	{ &coffer__v1__principal__descriptor, describe_principal },
	{ &coffer__v1__delete_principal_response__descriptor, describe_deleted },
	{ NULL, NULL },
};

const struct hservice handlers_principals = { .fns = fns, .describe = describe };
