/* KeyService's data plane: Sign, Verify, Mac, VerifyMac, Wrap, Unwrap,
 * Rewrap, GenerateDataKey, GetPublicKey; and GetKey, ListKeys (on both
 * sockets). */
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"
#include "envelope.h"
#include "handlers_common.h"

/* The context map of a request as env_kv entries (borrowed strings). */
struct req_ctx {
	struct env_kv kv[ENV_MAX_CONTEXT];
	size_t n;
};

/* protobuf-c map entries are messages with key = field 1, value = field 2. */
static int
ctx_entries(size_t n, void *const *entries, struct req_ctx *x)
{
	struct env_kv *kv = x->kv;

	if (n > ENV_MAX_CONTEXT)
		return cf_error(CF_E_TOO_LARGE, "context has %zu entries; the limit is %d", n,
				ENV_MAX_CONTEXT);
	for (size_t i = 0; i < n; i++) {
		const ProtobufCMessage *e = entries[i];
		const ProtobufCFieldDescriptor *k = protobuf_c_message_descriptor_get_field(
			e->descriptor, 1);
		const ProtobufCFieldDescriptor *v = protobuf_c_message_descriptor_get_field(
			e->descriptor, 2);

		kv[i].key = *(char *const *)(const void *)((const char *)e + k->offset);
		kv[i].value = *(char *const *)(const void *)((const char *)e + v->offset);
	}
	x->n = n;
	return CF_OK;
}

static int
h_sign(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__SignRequest *req = (const void *)m;
	Coffer__V1__SignResponse *out = NULL;
	struct cf_sign_params sp;
	cf_buf *sig = NULL;
	cf_p11_key *k;
	const uint8_t *in;
	size_t inlen;
	uint32_t ver;
	int r;

	if ((r = h_sign_params(req->hash, req->scheme, req->ecdsa_raw, req->message, req->digest,
			     &sp, &in, &inlen)) != CF_OK ||
	    (r = keyring_ref_use(c->sv->kr, c->key, req->version, PURPOSE_SIGN, USE_NEW, &k,
				 &ver)) != CF_OK ||
	    (r = h_digest_check(&sp, k, req->key)) != CF_OK)
		return r;
	if ((sig = cf_buf_new(CF_P11_MAX_SIG)) == NULL ||
	    (out = h_new_msg(&coffer__v1__sign_response__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = cf_p11_sign(k, &sp, in, inlen, sig)) != CF_OK ||
	    (r = h_set_bytes(&out->signature, cf_buf_peek(sig), cf_buf_len(sig))) != CF_OK)
		goto out;
	out->version = ver;
	h_sign_used(&sp, k, &out->scheme, &out->hash);
out:
	cf_buf_free(sig);
	return h_reply(r, out, resp);
}

static int
h_verify(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__VerifyRequest *req = (const void *)m;
	Coffer__V1__VerifyResponse *out;
	struct cf_sign_params sp;
	cf_p11_key *k;
	const uint8_t *in;
	size_t inlen;
	uint32_t ver;
	int r;

	if (req->version == 0)
		return cf_error(CF_E_INVALID_ARG, "version is required: pass the version that "
				"Sign returned");
	if ((r = h_sign_params(req->hash, req->scheme, req->ecdsa_raw, req->message, req->digest,
			     &sp, &in, &inlen)) != CF_OK ||
	    (r = h_check_data(req->signature.len, CF_P11_MAX_SIG, "signature")) != CF_OK ||
	    (r = keyring_ref_use(c->sv->kr, c->key, req->version, PURPOSE_SIGN, USE_CHECK, &k,
				 &ver)) != CF_OK ||
	    (r = h_digest_check(&sp, k, req->key)) != CF_OK)
		return r;
	r = cf_p11_verify(k, &sp, in, inlen, req->signature.data, req->signature.len);
	if (r != CF_OK && r != CF_E_BAD_SIGNATURE)
		return r;
	if ((out = h_new_msg(&coffer__v1__verify_response__descriptor)) == NULL)
		return cf_nomem();
	out->valid = r == CF_OK;
	*resp = &out->base;
	return CF_OK;
}

static int
h_mac(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__MacRequest *req = (const void *)m;
	Coffer__V1__MacResponse *out = NULL;
	cf_buf *mac = NULL;
	cf_p11_key *k;
	uint32_t ver;
	int r;

	if ((r = h_check_data(req->data.len, CF_P11_MAX_DATA, "data")) != CF_OK ||
	    (r = keyring_ref_use(c->sv->kr, c->key, req->version, PURPOSE_MAC, USE_NEW, &k,
				 &ver)) != CF_OK)
		return r;
	if ((mac = cf_buf_new(64)) == NULL ||
	    (out = h_new_msg(&coffer__v1__mac_response__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = cf_p11_mac(k, req->data.data, req->data.len, mac)) != CF_OK ||
	    (r = h_set_bytes(&out->mac, cf_buf_peek(mac), cf_buf_len(mac))) != CF_OK)
		goto out;
	out->version = ver;
out:
	cf_buf_free(mac);
	return h_reply(r, out, resp);
}

static int
h_verify_mac(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__VerifyMacRequest *req = (const void *)m;
	Coffer__V1__VerifyMacResponse *out;
	cf_p11_key *k;
	uint32_t ver;
	int r;

	if (req->version == 0)
		return cf_error(CF_E_INVALID_ARG, "version is required: pass the version that "
				"Mac returned");
	if ((r = h_check_data(req->data.len, CF_P11_MAX_DATA, "data")) != CF_OK ||
	    (r = h_check_data(req->mac.len, 64, "mac")) != CF_OK ||
	    (r = keyring_ref_use(c->sv->kr, c->key, req->version, PURPOSE_MAC, USE_CHECK, &k,
				 &ver)) != CF_OK)
		return r;
	r = cf_p11_mac_verify(k, req->data.data, req->data.len, req->mac.data, req->mac.len);
	if (r != CF_OK && r != CF_E_BAD_SIGNATURE)
		return r;
	if ((out = h_new_msg(&coffer__v1__verify_mac_response__descriptor)) == NULL)
		return cf_nomem();
	out->valid = r == CF_OK;
	*resp = &out->base;
	return CF_OK;
}

/* Seal `pt` under the primary version of the call's key into *ct / *ver. */
static int
wrap_common(const struct hcall *c, const struct req_ctx *x, const uint8_t *pt, size_t ptlen,
	    ProtobufCBinaryData *ct, uint32_t *ver)
{
	const char *name = c->key->name;
	cf_buf *blob = NULL;
	cf_p11_key *k;
	int r;

	if ((r = h_check_data(ptlen, H_MAX_WRAP_PLAINTEXT, "plaintext")) != CF_OK ||
	    (r = keyring_ref_use(c->sv->kr, c->key, 0, PURPOSE_WRAP, USE_NEW, &k, ver)) != CF_OK)
		return r;
	if ((blob = cf_buf_new(ENV_HEADER_LEN + H_MAX_WRAP_PLAINTEXT + CF_GCM_TAG_LEN)) == NULL)
		return cf_nomem();
	if ((r = env_seal(k, name, *ver, x->kv, x->n, pt, ptlen, blob)) == CF_OK)
		r = h_set_bytes(ct, cf_buf_peek(blob), cf_buf_len(blob));
	cf_buf_free(blob);
	return r;
}

/* Unwrap's and Rewrap's first half: the request's context map into *x, and
 * its blob of the call's key opened into a secret, with the version it names. */
static int
unwrap_common(const struct hcall *c, size_t nctx, void *const *ctx, ProtobufCBinaryData ct,
	      struct req_ctx *x, cf_secret **pt, uint32_t *ver)
{
	const char *name = c->key->name;
	const uint8_t *iv, *body;
	cf_p11_key *k;
	size_t blen;
	int r;

	if ((r = ctx_entries(nctx, ctx, x)) != CF_OK ||
	    (r = h_check_data(ct.len, ENV_HEADER_LEN + H_MAX_WRAP_PLAINTEXT + CF_GCM_TAG_LEN,
			    "ciphertext")) != CF_OK ||
	    (r = env_parse(ct.data, ct.len, ver, &iv, &body, &blen)) != CF_OK ||
	    (r = keyring_ref_use(c->sv->kr, c->key, *ver, PURPOSE_WRAP, USE_CHECK, &k,
				 ver)) != CF_OK)
		return r;
	return env_open(k, name, *ver, x->kv, x->n, ct.data, ct.len, pt);
}

static int
h_wrap(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__WrapRequest *req = (const void *)m;
	Coffer__V1__WrapResponse *out;
	struct req_ctx x;
	int r;

	if ((r = ctx_entries(req->n_context, (void *const *)req->context, &x)) != CF_OK)
		return r;
	if ((out = h_new_msg(&coffer__v1__wrap_response__descriptor)) == NULL)
		return cf_nomem();
	r = wrap_common(c, &x, req->plaintext.data, req->plaintext.len, &out->ciphertext,
			&out->version);
	return h_reply(r, out, resp);
}

static int
h_unwrap(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__UnwrapRequest *req = (const void *)m;
	Coffer__V1__UnwrapResponse *out = NULL;
	struct req_ctx x;
	cf_secret *pt = NULL;
	uint32_t ver;
	int r;

	if ((r = unwrap_common(c, req->n_context, (void *const *)req->context, req->ciphertext, &x,
			       &pt, &ver)) == CF_OK &&
	    (out = h_new_msg(&coffer__v1__unwrap_response__descriptor)) == NULL)
		r = cf_nomem();
	/* The response is freed through the wiping allocator. */
	if (r == CF_OK &&
	    (r = h_set_bytes(&out->plaintext, cf_secret_cptr(pt), cf_secret_len(pt))) == CF_OK)
		out->version = ver;
	cf_secret_free(pt);
	return h_reply(r, out, resp);
}

static int
h_rewrap(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__RewrapRequest *req = (const void *)m;
	Coffer__V1__RewrapResponse *out = NULL;
	struct req_ctx x;
	cf_secret *pt = NULL;
	uint32_t old;
	int r;

	if ((r = unwrap_common(c, req->n_context, (void *const *)req->context, req->ciphertext, &x,
			       &pt, &old)) == CF_OK &&
	    (out = h_new_msg(&coffer__v1__rewrap_response__descriptor)) == NULL)
		r = cf_nomem();
	if (r == CF_OK && (r = wrap_common(c, &x, cf_secret_cptr(pt), cf_secret_len(pt),
					   &out->ciphertext, &out->version)) == CF_OK)
		out->previous_version = old;
	cf_secret_free(pt);
	return h_reply(r, out, resp);
}

static int
h_generate_data_key(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__GenerateDataKeyRequest *req = (const void *)m;
	Coffer__V1__GenerateDataKeyResponse *out = NULL;
	struct req_ctx x;
	cf_secret *dk = NULL;
	uint32_t len = req->length ? req->length : 32;
	int r;

	if (len != 16 && len != 24 && len != 32)
		return cf_error(CF_E_INVALID_ARG, "data key length must be 16, 24 or 32 bytes, "
				"not %u", len);
	if ((r = ctx_entries(req->n_context, (void *const *)req->context, &x)) != CF_OK)
		return r;
	if ((r = cf_secret_new(len, &dk)) != CF_OK)
		return r;
	if (RAND_priv_bytes(cf_secret_ptr(dk), (int)len) != 1) {
		r = cf_error(CF_E_INTERNAL, "random number generator failed");
		goto out;
	}
	if ((out = h_new_msg(&coffer__v1__generate_data_key_response__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = wrap_common(c, &x, cf_secret_cptr(dk), len, &out->ciphertext,
			     &out->version)) != CF_OK)
		goto out;
	if (req->include_plaintext &&
	    (r = h_set_bytes(&out->plaintext, cf_secret_cptr(dk), len)) != CF_OK)
		goto out;
out:
	cf_secret_free(dk);
	return h_reply(r, out, resp);
}

static int
h_get_public_key(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__GetPublicKeyRequest *req = (const void *)m;
	Coffer__V1__GetPublicKeyResponse *out = NULL;
	cf_buf *der = NULL, *pem = NULL;
	cf_p11_key *k;
	uint32_t ver;
	int r;

	if ((r = keyring_ref_use(c->sv->kr, c->key, req->version, PURPOSE_SIGN, USE_CHECK, &k,
				 &ver)) != CF_OK)
		return r;
	if ((der = cf_buf_new(4096)) == NULL || (pem = cf_buf_new(8192)) == NULL ||
	    (out = h_new_msg(&coffer__v1__get_public_key_response__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = cf_p11_pubkey_der(k, der)) != CF_OK || (r = cf_p11_pubkey_pem(k, pem)) != CF_OK ||
	    (r = h_set_bytes(&out->der, cf_buf_peek(der), cf_buf_len(der))) != CF_OK)
		goto out;
	/* cf_buf holds bytes, not a C string: terminate the copy ourselves. */
	if ((out->pem = malloc(cf_buf_len(pem) + 1)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	memcpy(out->pem, cf_buf_peek(pem), cf_buf_len(pem));
	out->pem[cf_buf_len(pem)] = '\0';
	out->type = (Coffer__V1__KeyType)cf_p11_key_type(k);
	out->version = ver;
out:
	cf_buf_free(der);
	cf_buf_free(pem);
	return h_reply(r, out, resp);
}

static int
h_get_key(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	struct store_key info;

	(void)m;
	memset(&info, 0, sizeof(info));
	return h_key_response(keyring_ref_describe(c->sv->kr, c->key, &info), &info, resp);
}

/* May the caller see key k's metadata? Exactly what GetKey needs (a grant
 * of get-public-key the key's own limit allows), so listing never shows a
 * key GetKey would refuse. The admin socket sees every key. */
static int
list_visible(const struct hcall *c, const struct store_key *k)
{
	if (c->admin || c->principal == NULL || c->sv->pol == NULL)
		return 1;
	if (k->allowed_ops != 0 && !(k->allowed_ops & CF_OP_BIT(CF_OP_GET_PUBLIC_KEY)))
		return 0;
	return policy_may(c->sv->pol, c->principal, CF_OP_GET_PUBLIC_KEY, k->name) == CF_OK;
}

static int
h_list_keys(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__ListKeysRequest *req = (const void *)m;
	Coffer__V1__ListKeysResponse *out = NULL;
	struct store_key *infos = NULL;
	uint32_t n = 0, size = req->page_size ? req->page_size : H_DEFAULT_PAGE;
	char *cursor = NULL;
	int more = 1, r = CF_OK;

	if (size > H_MAX_PAGE)
		return cf_error(CF_E_INVALID_ARG, "page_size %u exceeds %d", size, H_MAX_PAGE);
	if (req->page_token[0] != '\0' && cf_key_name_check(req->page_token) != CF_OK)
		return cf_error(CF_E_INVALID_ARG, "page_token is not one this daemon issued");
	if ((out = h_new_msg(&coffer__v1__list_keys_response__descriptor)) == NULL ||
	    (out->keys = calloc(size, sizeof(*out->keys))) == NULL) {
		r = cf_nomem();
		goto out;
	}
	/* Keys the caller may not see are skipped: read on until the page is
	 * full or the keys run out. The next page starts after the last key
	 * shown, so a token never names a hidden key. */
	while (more && out->n_keys < size) {
		uint32_t i;

		for (uint32_t j = 0; j < n; j++)
			keyring_info_free(&infos[j]);
		free(infos);
		infos = NULL;
		n = 0;
		if ((r = keyring_list(c->sv->kr, cursor != NULL ? cursor : req->page_token, size,
				      &infos, &n, &more)) != CF_OK)
			goto out;
		for (i = 0; i < n && out->n_keys < size; i++) {
			Coffer__V1__Key *k;

			if (!list_visible(c, &infos[i]))
				continue;
			if ((k = h_new_msg(&coffer__v1__key__descriptor)) == NULL) {
				r = cf_nomem();
				goto out;
			}
			out->keys[out->n_keys++] = k;
			if ((r = h_fill_key(&infos[i], k)) != CF_OK)
				goto out;
		}
		if (i < n)
			more = 1;
		else if (n == 0)
			more = 0;
		if (more && out->n_keys < size) {
			free(cursor);
			if ((cursor = strdup(infos[n - 1].name)) == NULL) {
				r = cf_nomem();
				goto out;
			}
		}
	}
	if (more && out->n_keys > 0 &&
	    (out->next_page_token = strdup(out->keys[out->n_keys - 1]->name)) == NULL) {
		r = cf_nomem();
		goto out;
	}
out:
	for (uint32_t i = 0; i < n; i++)
		keyring_info_free(&infos[i]);
	free(infos);
	free(cursor);
	return h_reply(r, out, resp);
}


static const handler_fn fns[CF_METHOD__COUNT] = {
	[CF_KS_SIGN] = h_sign,
	[CF_KS_VERIFY] = h_verify,
	[CF_KS_MAC] = h_mac,
	[CF_KS_VERIFY_MAC] = h_verify_mac,
	[CF_KS_WRAP] = h_wrap,
	[CF_KS_UNWRAP] = h_unwrap,
	[CF_KS_REWRAP] = h_rewrap,
	[CF_KS_GENERATE_DATA_KEY] = h_generate_data_key,
	[CF_KS_GET_PUBLIC_KEY] = h_get_public_key,
	[CF_KS_GET_KEY] = h_get_key,
	[CF_KS_LIST_KEYS] = h_list_keys,
	[CF_AS_GET_KEY] = h_get_key,
	[CF_AS_LIST_KEYS] = h_list_keys,
};

const struct hservice handlers_keys = { .fns = fns };
