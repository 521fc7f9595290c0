/* Capability discovery: what the token can do, read once at open from its
 * mechanism list, mechanism infos and token flags, and mapped to Coffer key
 * types. A type the token cannot make is refused before any object is
 * created, naming the missing mechanism. */
#include "p11_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_status.h"

/* One mechanism a key type needs, with the flags and key size it needs. */
struct need {
	CK_MECHANISM_TYPE mech;
	const char *name;
	CK_FLAGS flags;
	CK_ULONG bits; /* 0 = any size */
};

#define N(m, fl, b) { m, #m, fl, b }
#define SIGVER (CKF_SIGN | CKF_VERIFY)
#define GENPAIR CKF_GENERATE_KEY_PAIR
/* Per type: first what a key of the type runs, then what makes one. */
static const struct need need_p256[] = { N(CKM_ECDSA, SIGVER, 256),
					 N(CKM_EC_KEY_PAIR_GEN, GENPAIR, 256) };
static const struct need need_p384[] = { N(CKM_ECDSA, SIGVER, 384),
					 N(CKM_EC_KEY_PAIR_GEN, GENPAIR, 384) };
static const struct need need_ed25519[] = { N(CKM_EDDSA, SIGVER, 0),
					    N(CKM_EC_EDWARDS_KEY_PAIR_GEN, GENPAIR, 0) };
static const struct need need_rsa2048[] = { N(CKM_RSA_PKCS, SIGVER, 2048),
					    N(CKM_RSA_PKCS_PSS, SIGVER, 2048),
					    N(CKM_RSA_PKCS_KEY_PAIR_GEN, GENPAIR, 2048) };
static const struct need need_rsa3072[] = { N(CKM_RSA_PKCS, SIGVER, 3072),
					    N(CKM_RSA_PKCS_PSS, SIGVER, 3072),
					    N(CKM_RSA_PKCS_KEY_PAIR_GEN, GENPAIR, 3072) };
static const struct need need_rsa4096[] = { N(CKM_RSA_PKCS, SIGVER, 4096),
					    N(CKM_RSA_PKCS_PSS, SIGVER, 4096),
					    N(CKM_RSA_PKCS_KEY_PAIR_GEN, GENPAIR, 4096) };
/* Generation only: an import is a C_CreateObject, which needs no mechanism. */
static const struct need need_hmac256[] = { N(CKM_SHA256_HMAC, SIGVER, 0),
					    N(CKM_GENERIC_SECRET_KEY_GEN, CKF_GENERATE, 0) };
static const struct need need_hmac384[] = { N(CKM_SHA384_HMAC, SIGVER, 0),
					    N(CKM_GENERIC_SECRET_KEY_GEN, CKF_GENERATE, 0) };
static const struct need need_hmac512[] = { N(CKM_SHA512_HMAC, SIGVER, 0),
					    N(CKM_GENERIC_SECRET_KEY_GEN, CKF_GENERATE, 0) };
static const struct need need_aes[] = { N(CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT, 256),
					N(CKM_AES_KEY_GEN, CKF_GENERATE, 256) };
#undef GENPAIR
#undef SIGVER
#undef N

static const struct {
	const struct need *n;
	size_t count;
	size_t use;     /* the first `use` entries are what a key of the type runs */
} needs[CF_KEY__COUNT] = {
#define T(t, a, use) [t] = { a, sizeof(a) / sizeof(a[0]), use }
	T(CF_KEY_EC_P256, need_p256, 1),       T(CF_KEY_EC_P384, need_p384, 1),
	T(CF_KEY_ED25519, need_ed25519, 1),    T(CF_KEY_RSA_2048, need_rsa2048, 2),
	T(CF_KEY_RSA_3072, need_rsa3072, 2),   T(CF_KEY_RSA_4096, need_rsa4096, 2),
	T(CF_KEY_HMAC_SHA256, need_hmac256, 1), T(CF_KEY_HMAC_SHA384, need_hmac384, 1),
	T(CF_KEY_HMAC_SHA512, need_hmac512, 1), T(CF_KEY_AES_256, need_aes, 1),
#undef T
};

/* Modules give key sizes in bits (RSA, EC on most) or in bytes (AES, EC on
 * some); 0..0 means "not given". */
static int
size_ok(const CK_MECHANISM_INFO *mi, CK_ULONG bits)
{
	if (bits == 0 || (mi->ulMinKeySize == 0 && mi->ulMaxKeySize == 0))
		return 1;
	return (mi->ulMinKeySize <= bits && bits <= mi->ulMaxKeySize) ||
	       (mi->ulMinKeySize <= bits / 8 && bits / 8 <= mi->ulMaxKeySize);
}

static const CK_MECHANISM_INFO *
mech_find(const struct p11_caps *c, CK_MECHANISM_TYPE m)
{
	for (size_t i = 0; i < c->n_mechs; i++)
		if (c->mechs[i] == m)
			return &c->infos[i];
	return NULL;
}

/* Why the token cannot do need `n`, or NULL if it can. */
static void
need_check(const struct p11_caps *c, const struct need *n, char *why, size_t whylen)
{
	const CK_MECHANISM_INFO *mi = mech_find(c, n->mech);

	if (mi == NULL)
		snprintf(why, whylen, "the token has no %s", n->name);
	else if ((mi->flags & n->flags) != n->flags)
		snprintf(why, whylen, "the token's %s lacks %s", n->name,
			 (n->flags & CKF_GENERATE_KEY_PAIR) ? "CKF_GENERATE_KEY_PAIR" :
			 (n->flags & CKF_GENERATE) ? "CKF_GENERATE" :
			 (n->flags & CKF_SIGN) && !(mi->flags & CKF_SIGN) ? "CKF_SIGN" :
			 (n->flags & CKF_VERIFY) && !(mi->flags & CKF_VERIFY) ? "CKF_VERIFY" :
			 (n->flags & CKF_ENCRYPT) && !(mi->flags & CKF_ENCRYPT) ? "CKF_ENCRYPT" :
			 "CKF_DECRYPT");
	else if (!size_ok(mi, n->bits))
		snprintf(why, whylen, "the token's %s takes keys of %lu..%lu, not %lu bits",
			 n->name, (unsigned long)mi->ulMinKeySize, (unsigned long)mi->ulMaxKeySize,
			 (unsigned long)n->bits);
	else
		why[0] = '\0';
}

/* Fill c->type[] from the mechanisms and the secret-key probe. */
static void
caps_map(struct p11_caps *c)
{
	for (int t = CF_KEY_NONE + 1; t < CF_KEY__COUNT; t++) {
		struct p11_type_cap *tc = &c->type[t];

		tc->generate = tc->import = tc->use = 1;
		tc->why_generate[0] = tc->why_import[0] = '\0';
		/* The making mechanisms first: a refused generation names them
		 * before the ones a key would run. */
		for (size_t k = 0; k < needs[t].count; k++) {
			size_t i = (k + needs[t].use) % needs[t].count;
			char why[sizeof(tc->why_generate)];

			need_check(c, &needs[t].n[i], why, sizeof(why));
			if (why[0] == '\0')
				continue;
			if (i < needs[t].use)
				tc->use = 0;
			if (tc->generate) {
				tc->generate = 0;
				snprintf(tc->why_generate, sizeof(tc->why_generate), "%s", why);
			}
			if (i < needs[t].use && tc->import) {
				tc->import = 0;
				snprintf(tc->why_import, sizeof(tc->why_import), "%s", why);
			}
		}
		if (cf_key_type_is_asymmetric((enum cf_key_type)t)) {
			/* Coffer imports secret keys only (cf_p11_key_import). */
			tc->import = 0;
			snprintf(tc->why_import, sizeof(tc->why_import),
				 "Coffer imports only HMAC and AES keys");
			continue;
		}
		if (c->secret_why[0] != '\0') {
			tc->use = 0; /* no secret key can exist to be used */
			if (tc->generate) {
				tc->generate = 0;
				snprintf(tc->why_generate, sizeof(tc->why_generate), "%s",
					 c->secret_why);
			}
			if (tc->import) {
				tc->import = 0;
				snprintf(tc->why_import, sizeof(tc->why_import), "%s",
					 c->secret_why);
			}
		}
	}
}

/* Some modules list secret-key mechanisms they cannot run (tpm2-pkcs11 1.9
 * lists CKM_AES_KEY_GEN and answers C_GenerateKey with
 * CKR_FUNCTION_NOT_SUPPORTED). One AES session key, made and destroyed at
 * once, tells; it never reaches the token's storage. */
static void
caps_probe_secret(cf_p11 *p, CK_SESSION_HANDLE s, struct p11_caps *c)
{
	static CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
	CK_ULONG len = 32;
	CK_ATTRIBUTE t[] = {
		{ CKA_TOKEN, &no, sizeof(no) },
		{ CKA_VALUE_LEN, &len, sizeof(len) },
		{ CKA_ENCRYPT, &yes, sizeof(yes) },
	};
	CK_MECHANISM m = { CKM_AES_KEY_GEN, NULL, 0 };
	CK_OBJECT_HANDLE o = CK_INVALID_HANDLE;
	CK_RV rv;

	c->secret_why[0] = '\0';
	if (mech_find(c, CKM_AES_KEY_GEN) == NULL) {
		m.mechanism = CKM_GENERIC_SECRET_KEY_GEN;
		if (mech_find(c, m.mechanism) == NULL)
			return; /* the per-type checks name what is missing */
	}
	rv = p->f->C_GenerateKey(s, &m, t, sizeof(t) / sizeof(t[0]), &o);
	if (rv == CKR_OK) {
		(void)p->f->C_DestroyObject(s, o);
		return;
	}
	if (rv == CKR_FUNCTION_NOT_SUPPORTED || rv == CKR_MECHANISM_INVALID ||
	    rv == CKR_TEMPLATE_INCONSISTENT || rv == CKR_ATTRIBUTE_VALUE_INVALID)
		snprintf(c->secret_why, sizeof(c->secret_why),
			 "the token makes no secret keys (C_GenerateKey of a %s key: %s)",
			 m.mechanism == CKM_AES_KEY_GEN ? "CKM_AES_KEY_GEN" :
			 "CKM_GENERIC_SECRET_KEY_GEN", p11_rv_name(rv));
}

/* Called by cf_p11_open after the login, on the anchor session. */
int
p11_caps_read(cf_p11 *p)
{
	struct p11_caps *c = &p->caps;
	CK_ULONG n = 0;
	CK_RV rv;

	if ((rv = p->f->C_GetTokenInfo(p->slot, &c->token)) != CKR_OK)
		return p11_status(rv, "C_GetTokenInfo");
	if ((rv = p->f->C_GetMechanismList(p->slot, NULL, &n)) != CKR_OK)
		return p11_status(rv, "C_GetMechanismList");
	free(c->mechs);
	free(c->infos);
	c->mechs = calloc(n ? n : 1, sizeof(*c->mechs));
	c->infos = calloc(n ? n : 1, sizeof(*c->infos));
	c->n_mechs = 0;
	if (c->mechs == NULL || c->infos == NULL)
		return cf_nomem();
	if ((rv = p->f->C_GetMechanismList(p->slot, c->mechs, &n)) != CKR_OK)
		return p11_status(rv, "C_GetMechanismList");
	for (CK_ULONG i = 0; i < n; i++) {
		/* A mechanism whose info the module will not give is left out. */
		if (p->f->C_GetMechanismInfo(p->slot, c->mechs[i], &c->infos[c->n_mechs]) !=
		    CKR_OK)
			continue;
		c->mechs[c->n_mechs++] = c->mechs[i];
	}
	caps_probe_secret(p, p->anchor, c);
	caps_map(c);
	return CF_OK;
}

void
p11_caps_free(struct p11_caps *c)
{
	free(c->mechs);
	free(c->infos);
	c->mechs = NULL;
	c->infos = NULL;
	c->n_mechs = 0;
}

int
cf_p11_can_create(cf_p11 *p, enum cf_key_type type, int import)
{
	const struct p11_type_cap *tc;

	if (type <= CF_KEY_NONE || type >= CF_KEY__COUNT)
		return cf_error(CF_E_INVALID_ARG, "unknown key type %d", (int)type);
	tc = &p->caps.type[type];
	if (import ? tc->import : tc->generate)
		return CF_OK;
	return cf_error(CF_E_PRECONDITION, "this token cannot %s %s keys: %s",
			import ? "import" : "generate", cf_key_type_name(type),
			import ? tc->why_import : tc->why_generate);
}

void
p11_pkcs1_why(CK_RV rv, char *buf, size_t len)
{
	snprintf(buf, len, "the token refuses them with Coffer's sign-only RSA keys (CKM_RSA_PKCS: "
		 "%s; a TPM makes one as a raw RSA decryption); sign with rsa-pss",
		 p11_rv_name(rv));
}

static void
fixed_copy(char *dst, size_t cap, const unsigned char *src, size_t len)
{
	/* Token-info strings are blank-padded, not terminated. */
	while (len > 0 && src[len - 1] == ' ')
		len--;
	if (len >= cap)
		len = cap - 1;
	memcpy(dst, src, len);
	dst[len] = '\0';
}

void
cf_p11_caps_get(cf_p11 *p, struct cf_p11_caps *out)
{
	const struct p11_caps *c = &p->caps;
	const CK_TOKEN_INFO *ti = &c->token;
	CK_RV rv;

	memset(out, 0, sizeof(*out));
	fixed_copy(out->label, sizeof(out->label), ti->label, sizeof(ti->label));
	fixed_copy(out->manufacturer, sizeof(out->manufacturer), ti->manufacturerID,
		   sizeof(ti->manufacturerID));
	fixed_copy(out->model, sizeof(out->model), ti->model, sizeof(ti->model));
	snprintf(out->module, sizeof(out->module), "%s", p->module_path);
	out->token_flags = ti->flags;
	out->rng = (ti->flags & CKF_RNG) != 0;
	out->session_copies = __atomic_load_n(&p->session_copies, __ATOMIC_RELAXED);
	out->mechanisms = c->n_mechs;
	rv = __atomic_load_n(&p->pkcs1_refused, __ATOMIC_RELAXED);
	if (rv != 0)
		p11_pkcs1_why(rv, out->pkcs1_refused, sizeof(out->pkcs1_refused));
	for (int t = CF_KEY_NONE + 1; t < CF_KEY__COUNT; t++) {
		out->type[t].generate = c->type[t].generate;
		out->type[t].import = c->type[t].import;
		out->type[t].use = c->type[t].use;
		snprintf(out->type[t].why, sizeof(out->type[t].why), "%s",
			 c->type[t].why_generate[0] ? c->type[t].why_generate :
			 c->type[t].why_import);
	}
}
