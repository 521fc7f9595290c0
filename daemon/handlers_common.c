/* What the handler files share: response allocation, size checks, a key's
 * metadata as a Key message. */
#include "handlers_common.h"

#include <stdlib.h>
#include <string.h>

#include "cf_pbwipe.h"
#include "cf_status.h"

/* Responses come from cf_pbwipe_allocator: in a sealed call, the call's
 * locked arena (cf_arena.h). */
void *
h_new_msg(const ProtobufCMessageDescriptor *d)
{
	ProtobufCMessage *m = cf_pbwipe_allocator.alloc(NULL, d->sizeof_message);

	if (m != NULL)
		protobuf_c_message_init(d, m);
	return m;
}

int
h_set_bytes(ProtobufCBinaryData *dst, const uint8_t *src, size_t len)
{
	dst->len = 0;
	if ((dst->data = cf_pbwipe_allocator.alloc(NULL, len ? len : 1)) == NULL)
		return cf_nomem();
	if (len > 0)
		memcpy(dst->data, src, len);
	dst->len = len;
	return CF_OK;
}

int
h_reply(int r, void *out, ProtobufCMessage **resp)
{
	if (r == CF_OK)
		*resp = out;
	else if (out != NULL)
		protobuf_c_message_free_unpacked(out, &cf_pbwipe_allocator);
	return r;
}

int
handlers_check_key_name(const char *name)
{
	if (name[0] == '\0')
		return cf_error(CF_E_INVALID_ARG, "the key name is required");
	return cf_key_name_check(name);
}

int
h_check_data(size_t len, size_t max, const char *what)
{
	if (len > max)
		return cf_error(CF_E_TOO_LARGE, "%s of %zu bytes exceeds the limit of %zu bytes",
				what, len, max);
	return CF_OK;
}

uint32_t
h_ops_mask(size_t n, const Coffer__V1__Operation *ops)
{
	uint32_t m = 0;

	for (size_t i = 0; i < n; i++)
		m |= (unsigned)ops[i] > 0 && (unsigned)ops[i] < CF_OP__COUNT ?
		     CF_OP_BIT(ops[i]) : 0x80000000u;   /* unknown: refused by policy */
	return m;
}

int
h_fill_key(const struct store_key *ki, Coffer__V1__Key *k)
{
	k->name = strdup(ki->name);
	k->type = (Coffer__V1__KeyType)ki->type;
	k->purpose = (Coffer__V1__Purpose)keyring_purpose(ki->type);
	k->primary_version = ki->primary;
	k->create_time = ki->created;
	k->exportable = ki->exportable;
	k->min_version = ki->min_version;
	k->min_verify_version = ki->min_verify;
	k->rotation_period = ki->rotation_period;
	k->next_rotation_time = ki->next_rotation;
	if (k->name == NULL)
		return cf_nomem();
	if (ki->allowed_ops != 0) {
		if ((k->allowed_operations = calloc(CF_OP__COUNT,
						    sizeof(*k->allowed_operations))) == NULL)
			return cf_nomem();
		for (unsigned op = 1; op < CF_OP__COUNT; op++)
			if (ki->allowed_ops & CF_OP_BIT(op))
				k->allowed_operations[k->n_allowed_operations++] =
					(Coffer__V1__Operation)op;
	}
	if (ki->nversions == 0)
		return CF_OK;
	if ((k->versions = calloc(ki->nversions, sizeof(*k->versions))) == NULL)
		return cf_nomem();
	for (uint32_t i = 0; i < ki->nversions; i++) {
		Coffer__V1__KeyVersion *v = h_new_msg(&coffer__v1__key_version__descriptor);

		if (v == NULL)
			return cf_nomem();
		v->version = ki->versions[i].version;
		v->state = (Coffer__V1__VersionState)ki->versions[i].state;
		v->create_time = ki->versions[i].created;
		v->destroy_time = ki->versions[i].destroy_time;
		k->versions[k->n_versions++] = v;
	}
	return CF_OK;
}

int
h_key_response(int r, struct store_key *info, ProtobufCMessage **resp)
{
	Coffer__V1__Key *k = NULL;

	if (r != CF_OK)
		goto out;
	if ((k = h_new_msg(&coffer__v1__key__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = h_fill_key(info, k)) != CF_OK)
		goto out;
out:
	keyring_info_free(info);
	return h_reply(r, k, resp);
}

int
h_sign_params(Coffer__V1__Hash hash, Coffer__V1__SignatureScheme scheme, protobuf_c_boolean raw,
	    ProtobufCBinaryData msg, ProtobufCBinaryData digest, struct cf_sign_params *sp,
	    const uint8_t **in, size_t *inlen)
{
	*in = NULL;   /* set on every path: the callers read them only on success */
	*inlen = 0;
	if ((int)hash < 0 || hash > COFFER__V1__HASH__SHA512)
		return cf_error(CF_E_INVALID_ARG, "unknown hash %d", (int)hash);
	if ((int)scheme < 0 || scheme > COFFER__V1__SIGNATURE_SCHEME__RSA_PKCS1)
		return cf_error(CF_E_INVALID_ARG, "unknown signature scheme %d", (int)scheme);
	if (msg.len > 0 && digest.len > 0)
		return cf_error(CF_E_INVALID_ARG, "give either message or digest, not both");
	memset(sp, 0, sizeof(*sp));
	sp->hash = (enum cf_hash)hash;
	sp->scheme = (enum cf_sig_scheme)scheme;
	sp->ecdsa_raw = raw;
	if (digest.len > 0) {
		sp->prehashed = 1;
		*in = digest.data;
		*inlen = digest.len;
	} else {
		*in = msg.data;
		*inlen = msg.len;
	}
	return h_check_data(*inlen, CF_P11_MAX_DATA, "message");
}

/* A digest with HASH_UNSPECIFIED is of the key's default hash (SHA-256,
 * SHA-384 for P-384), as the proto says; cf_p11_sign fills it in. Ed25519
 * hashes inside the signature, so it has no digest to take. */
int
h_digest_check(const struct cf_sign_params *sp, const cf_p11_key *k, const char *name)
{
	if (sp->prehashed && cf_p11_key_type(k) == CF_KEY_ED25519)
		return cf_error(CF_E_UNSUPPORTED, "key %s is ed25519, which signs the message "
				"itself (no prehash): send the message, not a digest", name);
	return CF_OK;
}

void
h_sign_used(const struct cf_sign_params *sp, const cf_p11_key *k,
	    Coffer__V1__SignatureScheme *scheme, Coffer__V1__Hash *hash)
{
	*scheme = (Coffer__V1__SignatureScheme)(sp->scheme ? sp->scheme :
		cf_key_default_scheme(cf_p11_key_type(k)));
	*hash = (Coffer__V1__Hash)(sp->hash ? sp->hash : cf_key_default_hash(cf_p11_key_type(k)));
}
