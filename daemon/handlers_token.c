/* AdminService: the token's capabilities (GetTokenInfo). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"
#include "handlers_common.h"

/* The daemon features a key type carries, for the "unavailable" list. */
static const struct {
	enum cf_key_type type;
	const char *feature;
} features[] = {
	{ CF_KEY_HMAC_SHA256, "Mac and VerifyMac (hmac-sha256 keys)" },
	{ CF_KEY_AES_256, "Wrap, Unwrap, Rewrap and GenerateDataKey (aes-256 keys)" },
	{ CF_KEY_ED25519, "Ed25519 signing keys" },
};

static char *
str_dup_or(const char *s)
{
	return strdup(s != NULL ? s : "");
}

/* One "feature: why" line (feature NULL: why says it all). */
static int
add_unavailable(Coffer__V1__GetTokenInfoResponse *out, const char *feature, const char *why)
{
	size_t len = (feature ? strlen(feature) + 2 : 0) + strlen(why) + 1;
	char *line = malloc(len);

	if (line == NULL)
		return cf_nomem();
	snprintf(line, len, "%s%s%s", feature ? feature : "", feature ? ": " : "", why);
	out->unavailable[out->n_unavailable++] = line;
	return CF_OK;
}

/* Fill out from caps; on failure the caller frees out (h_reply). */
static int
token_info(cf_p11 *p11, const struct cf_p11_caps *caps, Coffer__V1__GetTokenInfoResponse *out)
{
	size_t nt = CF_KEY__COUNT - 1;
	int r = CF_OK;

	out->label = str_dup_or(caps->label);
	out->manufacturer = str_dup_or(caps->manufacturer);
	out->model = str_dup_or(caps->model);
	out->module = str_dup_or(caps->module);
	out->key_types = calloc(nt, sizeof(*out->key_types));
	out->unavailable = calloc(sizeof(features) / sizeof(features[0]) + 3,
				  sizeof(*out->unavailable));
	if (out->label == NULL || out->manufacturer == NULL || out->model == NULL ||
	    out->module == NULL || out->key_types == NULL || out->unavailable == NULL)
		return cf_nomem();
	out->mechanisms = (uint32_t)caps->mechanisms;
	out->rng = caps->rng;
	out->session_copies = caps->session_copies;
	for (int t = CF_KEY_NONE + 1; t < CF_KEY__COUNT; t++) {
		const struct cf_p11_type_caps *tc = &caps->type[t];
		Coffer__V1__KeyTypeSupport *ks = malloc(sizeof(*ks));

		if (ks == NULL)
			return cf_nomem();
		coffer__v1__key_type_support__init(ks);
		out->key_types[out->n_key_types++] = ks;
		ks->type = (Coffer__V1__KeyType)t;
		ks->can_generate = tc->generate;
		ks->can_import = tc->import;
		ks->can_use = tc->use;
		if ((ks->missing = str_dup_or(tc->generate ? "" : tc->why)) == NULL)
			return cf_nomem();
	}
	for (size_t i = 0; i < sizeof(features) / sizeof(features[0]) && r == CF_OK; i++)
		if (!caps->type[features[i].type].generate)
			r = add_unavailable(out, features[i].feature,
					    caps->type[features[i].type].why);
	if (r == CF_OK && apikeys_available(p11) != CF_OK)
		r = add_unavailable(out, NULL, cf_error_detail()); /* "API keys are ..." */
	if (r == CF_OK && caps->pkcs1_refused[0] != '\0')
		r = add_unavailable(out, "RSA PKCS#1 v1.5 signatures", caps->pkcs1_refused);
	if (r == CF_OK && !caps->session_copies)
		r = add_unavailable(out, "session copies", "keys run on their token objects "
				    "(C_CopyObject is not supported or was turned off)");
	return r;
}

static int
h_get_token_info(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	Coffer__V1__GetTokenInfoResponse *out;
	struct cf_p11_caps caps;

	(void)m;
	if (c->sv->p11 == NULL)
		return cf_error(CF_E_UNAVAILABLE, "this daemon has no token");
	cf_p11_caps_get(c->sv->p11, &caps);
	if ((out = h_new_msg(&coffer__v1__get_token_info_response__descriptor)) == NULL)
		return cf_nomem();
	return h_reply(token_info(c->sv->p11, &caps, out), out, resp);
}

static const handler_fn fns[CF_METHOD__COUNT] = {
	[CF_AS_GET_TOKEN_INFO] = h_get_token_info,
};

const struct hservice handlers_token = { .fns = fns };
