/* AdminService: principals' API keys (create, rotate the secret, revoke, list) and
 * whether a principal must sign its calls (SetPrincipalAuth). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_pbwipe.h"
#include "cf_reqsign.h"
#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"
#include "handlers_common.h"

static int
fill_apikey(const struct store_apikey *k, Coffer__V1__ApiKey *out)
{
	if ((out->id = strdup(k->id)) == NULL || (out->principal = strdup(k->principal)) == NULL)
		return cf_nomem();
	out->create_time = k->created;
	out->revoke_time = k->revoked;
	if (k->nsecrets == 0)
		return CF_OK;
	if ((out->secrets = calloc(k->nsecrets, sizeof(*out->secrets))) == NULL)
		return cf_nomem();
	for (uint32_t i = 0; i < k->nsecrets; i++) {
		Coffer__V1__ApiKeySecret *s = h_new_msg(&coffer__v1__api_key_secret__descriptor);

		if (s == NULL)
			return cf_nomem();
		s->generation = k->secrets[i].generation;
		s->create_time = k->secrets[i].created;
		s->expire_time = k->secrets[i].expires;
		out->secrets[out->n_secrets++] = s;
	}
	return CF_OK;
}

static int
apikey_msg(const struct store_apikey *k, Coffer__V1__ApiKey **out)
{
	int r;

	if ((*out = h_new_msg(&coffer__v1__api_key__descriptor)) == NULL)
		return cf_nomem();
	if ((r = fill_apikey(k, *out)) != CF_OK) {
		protobuf_c_message_free_unpacked(&(*out)->base, &cf_pbwipe_allocator);
		*out = NULL;
	}
	return r;
}

/* The response to a create or rotate: the key and the generated secret. */
static int
secret_response(int r, const struct store_apikey *k, cf_secret *secret, ProtobufCMessage **resp)
{
	Coffer__V1__ApiKeySecretResponse *out = NULL;

	if (r == CF_OK && (out = h_new_msg(&coffer__v1__api_key_secret_response__descriptor)) ==
			  NULL)
		r = cf_nomem();
	if (r == CF_OK)
		r = apikey_msg(k, &out->key);
	if (r == CF_OK && secret != NULL)
		r = h_set_bytes(&out->secret, cf_secret_cptr(secret), cf_secret_len(secret));
	cf_secret_free(secret);
	return h_reply(r, out, resp);
}

/* An imported secret from a request field, or NULL for "generate one". */
static int
imported(const ProtobufCBinaryData *b, cf_secret **out)
{
	*out = NULL;
	if (b->len == 0)
		return CF_OK;
	return cf_secret_from(b->data, b->len, out);
}

/* API key `id` as an ApiKey answer, or an ApiKeySecretResponse without the
 * secret (handlers_describe). A creation or secret rotation is answered as
 * it left the key: the secret it made current, the ones made after it left
 * out. */
static int
describe_api_key(const struct hcall *c, const ProtobufCMessageDescriptor *type, const char *id,
		 uint32_t made, ProtobufCMessage **resp)
{
	struct store_apikey k;
	Coffer__V1__ApiKey *out = NULL;
	uint32_t n = 0;
	int r;

	if ((r = apikeys_get(c->sv->ak, id, &k)) != CF_OK)
		return r;
	if (made != 0 && made >= k.next_generation)
		/* Not read back yet (another replica made it, and this one
		 * could not reload): the record stays for a retry. */
		return cf_error(CF_E_UNAVAILABLE, "API key %s: secret generation %u, which this "
				"call made, is not known to this replica yet; retry", id, made);
	/* (The secret it made may be gone since: expired, revoked, or
	 * replaced with no overlap; then so are the ones before it.) */
	for (uint32_t i = 0; made != 0 && i < k.nsecrets; i++) {
		if (k.secrets[i].generation > made)
			continue;
		if (k.secrets[i].generation == made)
			k.secrets[i].expires = 0;
		k.secrets[n++] = k.secrets[i];
	}
	if (made != 0)
		k.nsecrets = n;
	/* A secret is shown once, in the answer that was lost: never again. */
	if (type == &coffer__v1__api_key_secret_response__descriptor)
		return secret_response(CF_OK, &k, NULL, resp);
	if ((r = apikey_msg(&k, &out)) == CF_OK)
		*resp = &out->base;
	return r;
}

static int
h_create_api_key(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__CreateApiKeyRequest *req = (const void *)m;
	struct store_apikey k;
	cf_secret *imp = NULL, *secret = NULL;
	int r;

	if ((r = policy_get(c->sv->pol, req->principal, NULL)) != CF_OK ||
	    (r = imported(&req->secret, &imp)) != CF_OK)
		return r;
	/* A principal deleted meanwhile: the store refuses the key (no
	 * principal), or, made first, the deletion revoked it. */
	r = apikeys_create(c->sv->ak, req->principal, imp, (int64_t)time(NULL), &k, &secret);
	cf_secret_free(imp);
	return secret_response(r, &k, secret, resp);
}

static int
h_rotate_api_key_secret(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__RotateApiKeySecretRequest *req = (const void *)m;
	struct store_apikey k;
	cf_secret *imp = NULL, *secret = NULL;
	int r;

	if ((r = cf_apikey_id_check(req->id)) != CF_OK)
		return r;
	if (req->overlap_seconds > APIKEYS_MAX_OVERLAP)
		return cf_error(CF_E_INVALID_ARG, "overlap_seconds is at most %d (90 days)",
				APIKEYS_MAX_OVERLAP);
	if ((r = imported(&req->secret, &imp)) != CF_OK)
		return r;
	r = apikeys_rotate(c->sv->ak, req->id, req->overlap_seconds, imp, (int64_t)time(NULL), &k,
			   &secret);
	cf_secret_free(imp);
	return secret_response(r, &k, secret, resp);
}

static int
h_revoke_api_key(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__RevokeApiKeyRequest *req = (const void *)m;
	Coffer__V1__ApiKey *out;
	struct store_apikey k;
	int r;

	if ((r = cf_apikey_id_check(req->id)) != CF_OK ||
	    (r = apikeys_revoke(c->sv->ak, req->id, (int64_t)time(NULL), &k)) != CF_OK ||
	    (r = apikey_msg(&k, &out)) != CF_OK)
		return r;
	*resp = &out->base;
	return CF_OK;
}

static int
h_list_api_keys(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__ListApiKeysRequest *req = (const void *)m;
	Coffer__V1__ListApiKeysResponse *out = NULL;
	struct store_apikey *l = NULL;
	size_t n = 0;
	int r;

	if ((r = apikeys_list(c->sv->ak, req->principal, &l, &n)) != CF_OK)
		return r;
	if ((out = h_new_msg(&coffer__v1__list_api_keys_response__descriptor)) == NULL ||
	    (n > 0 && (out->keys = calloc(n, sizeof(*out->keys))) == NULL))
		r = cf_nomem();
	for (size_t i = 0; i < n && r == CF_OK; i++)
		if ((r = apikey_msg(&l[i], &out->keys[i])) == CF_OK)
			out->n_keys++;
	free(l);
	return h_reply(r, out, resp);
}

/* The principal's "must sign" state as SetPrincipalAuth answers it. */
static int
auth_response(const struct hcall *c, const char *name, ProtobufCMessage **resp)
{
	Coffer__V1__SetPrincipalAuthResponse *out;
	int req = apikeys_required(c->sv->ak, name);

	if ((out = h_new_msg(&coffer__v1__set_principal_auth_response__descriptor)) == NULL ||
	    (out->name = strdup(name)) == NULL)
		return h_reply(cf_nomem(), out, resp);
	out->has_live_key = req == APIKEYS_LIVE;
	/* A live key implies the flag (it was set with the first key). */
	out->require_api_key = req != APIKEYS_NONE;
	*resp = &out->base;
	return CF_OK;
}

/* Principal `name`'s SetPrincipalAuthResponse (handlers_describe). */
static int
describe_principal_auth(const struct hcall *c, const ProtobufCMessageDescriptor *type,
			const char *name, uint32_t made, ProtobufCMessage **resp)
{
	int r;

	(void)type;
	(void)made;

	if ((r = policy_get(c->sv->pol, name, NULL)) != CF_OK)
		return r;
	return auth_response(c, name, resp);
}

static int
h_set_principal_auth(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__SetPrincipalAuthRequest *req = (const void *)m;
	int r;

	if ((r = policy_get(c->sv->pol, req->name, NULL)) != CF_OK ||
	    (r = apikeys_set_required(c->sv->ak, req->name, req->require_api_key)) != CF_OK)
		return r;
	return auth_response(c, req->name, resp);
}

static const handler_fn fns[CF_METHOD__COUNT] = {
	[CF_AS_CREATE_API_KEY] = h_create_api_key,
	[CF_AS_ROTATE_API_KEY_SECRET] = h_rotate_api_key_secret,
	[CF_AS_REVOKE_API_KEY] = h_revoke_api_key,
	[CF_AS_LIST_API_KEYS] = h_list_api_keys,
	[CF_AS_SET_PRINCIPAL_AUTH] = h_set_principal_auth,
};

static const struct hdescribe describe[] = {
	{ &coffer__v1__api_key__descriptor, describe_api_key },
	{ &coffer__v1__api_key_secret_response__descriptor, describe_api_key },
	{ &coffer__v1__set_principal_auth_response__descriptor, describe_principal_auth },
	{ NULL, NULL },
};

const struct hservice handlers_apikeys = { .fns = fns, .describe = describe };
