/* AdminService: keys created, imported and rotated (their later lifecycle:
 * handlers_lifecycle.c). */
#include <string.h>

#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"
#include "handlers_common.h"

/* The operations a key of this type can do at all. */
static uint32_t
purpose_ops(enum cf_key_type t)
{
	switch (keyring_purpose(t)) {
	case PURPOSE_SIGN:
		return CF_OP_BIT(CF_OP_SIGN) | CF_OP_BIT(CF_OP_VERIFY) |
		       CF_OP_BIT(CF_OP_GET_PUBLIC_KEY);
	case PURPOSE_MAC:
		return CF_OP_BIT(CF_OP_MAC) | CF_OP_BIT(CF_OP_VERIFY_MAC);
	default:
		return CF_OP_BIT(CF_OP_WRAP) | CF_OP_BIT(CF_OP_UNWRAP) |
		       CF_OP_BIT(CF_OP_REWRAP) |
		       CF_OP_BIT(CF_OP_GENERATE_DATA_KEY);
	}
}

/* A new key's own operation limit from the request; it must fit the type. */
static int
key_limit(Coffer__V1__KeyType type, size_t n, const Coffer__V1__Operation *ops, uint32_t *out)
{
	uint32_t m = h_ops_mask(n, ops);

	if (m & ~purpose_ops((enum cf_key_type)type))
		return cf_error(CF_E_INVALID_ARG, "allowed_operations holds an operation that an %s "
				"key cannot do", cf_key_type_name((enum cf_key_type)type));
	*out = m;
	return CF_OK;
}

static int
check_type(Coffer__V1__KeyType t)
{
	if ((int)t <= 0 || (int)t >= CF_KEY__COUNT)
		return cf_error(CF_E_INVALID_ARG, "type is missing or unknown (%d)", (int)t);
	return CF_OK;
}

/* The exportable field is kept in the proto only to be refused. */
static int
refuse_exportable(int exportable, const char *verb)
{
	if (!exportable)
		return CF_OK;
	return cf_error(CF_E_INVALID_ARG, "exportable keys are not supported: Coffer never "
			"exports key material (use Wrap/GenerateDataKey for data keys); %s the key "
			"without exportable", verb);
}

static int
h_create_key(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__CreateKeyRequest *req = (const void *)m;
	struct store_key info;
	uint32_t ops;
	int r;

	memset(&info, 0, sizeof(info));
	if ((r = handlers_check_key_name(req->name)) != CF_OK ||
	    (r = check_type(req->type)) != CF_OK ||
	    (r = refuse_exportable(req->exportable, "create")) != CF_OK ||
	    (r = key_limit(req->type, req->n_allowed_operations, req->allowed_operations,
			   &ops)) != CF_OK)
		return r;
	return h_key_response(keyring_create(c->sv->kr, req->name, (enum cf_key_type)req->type,
					     ops, req->rotation_period, &info),
				&info, resp);
}

static int
h_import_key(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__ImportKeyRequest *req = (const void *)m;
	struct store_key info;
	cf_secret *mat = NULL;
	uint32_t ops;
	int r;

	memset(&info, 0, sizeof(info));
	if ((r = handlers_check_key_name(req->name)) != CF_OK ||
	    (r = check_type(req->type)) != CF_OK ||
	    (r = refuse_exportable(req->exportable, "import")) != CF_OK ||
	    (r = h_check_data(req->material.len, CF_P11_MAX_SECRET, "key material")) != CF_OK ||
	    (r = key_limit(req->type, req->n_allowed_operations, req->allowed_operations,
			   &ops)) != CF_OK)
		return r;
	if ((r = cf_secret_from(req->material.data, req->material.len, &mat)) != CF_OK)
		return r;
	r = keyring_import(c->sv->kr, req->name, (enum cf_key_type)req->type, mat, ops, &info);
	cf_secret_free(mat);
	return h_key_response(r, &info, resp);
}

static int
h_rotate_key(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__RotateKeyRequest *req = (const void *)m;
	struct store_key info;
	int r;

	memset(&info, 0, sizeof(info));
	if ((r = handlers_check_key_name(req->name)) != CF_OK)
		return r;
	return h_key_response(keyring_rotate(c->sv->kr, req->name, &info), &info, resp);
}


static int
has_version(const struct store_key *k, uint32_t v)
{
	for (uint32_t i = 0; i < k->nversions; i++)
		if (k->versions[i].version == v)
			return 1;
	return 0;
}

/* A key as a Key answer (handlers_describe). A creation or rotation is
 * answered as it left the key: its version primary, the versions made
 * after it left out, the minimums (at most the primary then) capped; the
 * versions' states and the schedule are as they are now. */
static int
describe_key(const struct hcall *c, const ProtobufCMessageDescriptor *type, const char *name,
	     uint32_t made, ProtobufCMessage **resp)
{
	struct store_key info;
	int r;

	(void)type;
	memset(&info, 0, sizeof(info));
	r = keyring_describe(c->sv->kr, name, &info);
	if (r == CF_OK && made != 0 && !has_version(&info, made))
		/* Not read back yet (another replica made it, and this one
		 * could not reload): the record stays for a retry. */
		r = cf_error(CF_E_UNAVAILABLE, "key %s: version %u, which this call made, is "
			     "not known to this replica yet; retry", name, made);
	if (r == CF_OK && made != 0) {
		while (info.nversions > 0 && info.versions[info.nversions - 1].version > made)
			info.nversions--;
		info.primary = made;
		if (info.min_version > made)
			info.min_version = made;
		if (info.min_verify > made)
			info.min_verify = made;
	}
	return h_key_response(r, &info, resp);
}

static const handler_fn fns[CF_METHOD__COUNT] = {
	[CF_AS_CREATE_KEY] = h_create_key,
	[CF_AS_IMPORT_KEY] = h_import_key,
	[CF_AS_ROTATE_KEY] = h_rotate_key,
};

static const struct hdescribe describe[] = {
	{ &coffer__v1__key__descriptor, describe_key },
	{ NULL, NULL },
};

const struct hservice handlers_admin_keys = { .fns = fns, .describe = describe };
