/* Key versions as token objects: naming, generation, import, lookup, handle
 * cache with in-token session copies, listing and destruction. */
#include "p11_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>

#include <openssl/sha.h>

#include "cf_crashpoint.h"
#include "cf_status.h"

#define LABEL_PREFIX "coffer/"
#define MAX_TEMPLATE 32
#define LIST_MAX 100000
#define ENSURE_LOOKS 10 /* more lookups, 100 ms apart, of a key another process made */

static CK_BBOOL p11_true = CK_TRUE;
static CK_BBOOL p11_false = CK_FALSE;
static CK_BYTE rsa_f4[] = { 0x01, 0x00, 0x01 };

struct p11_template {
	CK_ATTRIBUTE a[MAX_TEMPLATE];
	CK_ULONG n;
};

static void
tpl_add(struct p11_template *t, CK_ATTRIBUTE_TYPE type, const void *v, CK_ULONG len)
{
	/* Templates are built from fixed code paths; overflow is a bug. */
	if (t->n >= MAX_TEMPLATE)
		abort();
	t->a[t->n].type = type;
	t->a[t->n].pValue = (void *)v;
	t->a[t->n].ulValueLen = len;
	t->n++;
}

static void
tpl_bool(struct p11_template *t, CK_ATTRIBUTE_TYPE type, int v)
{
	tpl_add(t, type, v ? &p11_true : &p11_false, sizeof(CK_BBOOL));
}

/*
 * What each key may do inside the token: exactly the mechanisms Coffer runs
 * with it (p11_ops.c) and the usage attributes those need; every other usage
 * attribute is set FALSE explicitly (SoftHSM leaves CKA_DECRYPT, CKA_UNWRAP
 * and CKA_SIGN_RECOVER TRUE on a private key, CKA_ENCRYPT, CKA_WRAP and
 * CKA_VERIFY_RECOVER on a public key, unless told otherwise).
 */
#define U_SIGN    0x001u
#define U_VERIFY  0x002u
#define U_ENCRYPT 0x004u
#define U_DECRYPT 0x008u
#define U_WRAP    0x010u
#define U_UNWRAP  0x020u
#define U_SIGNREC 0x040u
#define U_VERREC  0x080u
#define U_DERIVE  0x100u

static const CK_MECHANISM_TYPE mechs_ecdsa[] = { CKM_ECDSA };
static const CK_MECHANISM_TYPE mechs_ecdh[] = { CKM_ECDSA, CKM_ECDH1_DERIVE };
static const CK_MECHANISM_TYPE mechs_eddsa[] = { CKM_EDDSA };
/* PKCS#1 v1.5 over a DigestInfo built on the host, and PSS over a digest. */
static const CK_MECHANISM_TYPE mechs_rsa[] = { CKM_RSA_PKCS, CKM_RSA_PKCS_PSS };
static const CK_MECHANISM_TYPE mechs_hmac256[] = { CKM_SHA256_HMAC };
static const CK_MECHANISM_TYPE mechs_hmac384[] = { CKM_SHA384_HMAC };
static const CK_MECHANISM_TYPE mechs_hmac512[] = { CKM_SHA512_HMAC };
static const CK_MECHANISM_TYPE mechs_aes[] = { CKM_AES_GCM };

/* The allowed mechanisms of a key type (private/secret and public alike):
 * the HMAC entry has exactly one, which also records the hash
 * (p11_detect_type reads it back). */
static void
tpl_mechs(struct p11_template *t, enum cf_key_type type, int derive)
{
	const CK_MECHANISM_TYPE *m;
	size_t n;

#define MECHS(a) do { m = (a); n = sizeof(a); } while (0)
	switch (type) {
	case CF_KEY_EC_P256:
	case CF_KEY_EC_P384:
		if (derive)
			MECHS(mechs_ecdh);
		else
			MECHS(mechs_ecdsa);
		break;
	case CF_KEY_ED25519: MECHS(mechs_eddsa); break;
	case CF_KEY_HMAC_SHA256: MECHS(mechs_hmac256); break;
	case CF_KEY_HMAC_SHA384: MECHS(mechs_hmac384); break;
	case CF_KEY_HMAC_SHA512: MECHS(mechs_hmac512); break;
	case CF_KEY_AES_256: MECHS(mechs_aes); break;
	default: MECHS(mechs_rsa); break;
	}
#undef MECHS
	tpl_add(t, CKA_ALLOWED_MECHANISMS, m, n);
}

/* Every usage attribute the object class has (PKCS#11 4.8-4.10) but those
 * in `omit`, TRUE for those in `on`, FALSE for the rest. */
static void
tpl_usage(struct p11_template *t, CK_OBJECT_CLASS cls, unsigned on, unsigned omit)
{
	static const struct { CK_ATTRIBUTE_TYPE a; unsigned bit; } all[] = {
		{ CKA_SIGN, U_SIGN }, { CKA_VERIFY, U_VERIFY }, { CKA_ENCRYPT, U_ENCRYPT },
		{ CKA_DECRYPT, U_DECRYPT }, { CKA_WRAP, U_WRAP }, { CKA_UNWRAP, U_UNWRAP },
		{ CKA_SIGN_RECOVER, U_SIGNREC }, { CKA_VERIFY_RECOVER, U_VERREC },
		{ CKA_DERIVE, U_DERIVE },
	};
	unsigned has = cls == CKO_PRIVATE_KEY ?
		       U_SIGN | U_DECRYPT | U_UNWRAP | U_SIGNREC | U_DERIVE :
		       cls == CKO_PUBLIC_KEY ?
		       U_VERIFY | U_ENCRYPT | U_WRAP | U_VERREC | U_DERIVE :
		       U_SIGN | U_VERIFY | U_ENCRYPT | U_DECRYPT | U_WRAP | U_UNWRAP | U_DERIVE;

	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		if (has & all[i].bit & ~omit)
			tpl_bool(t, all[i].a, (on & all[i].bit) != 0);
}

static int
p11_key_new(cf_p11 *p, const char *name, uint32_t version, enum cf_key_type type,
	    const uint8_t *id, cf_p11_key **out)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	cf_p11_key *k;
	int r;

	if ((r = cf_key_name_check(name)) != CF_OK)
		return r;
	if (version < 1 || version > CF_KEY_VERSION_MAX)
		return cf_error(CF_E_INVALID_ARG, "key version %u outside 1..%u", version,
				CF_KEY_VERSION_MAX);
	if ((k = calloc(1, sizeof(*k))) == NULL)
		return cf_nomem();
	k->p = p;
	snprintf(k->name, sizeof(k->name), "%s", name);
	k->version = version;
	k->type = type;
	snprintf(k->label, sizeof(k->label), LABEL_PREFIX "%s/%u", name, version);
	/* Without a recorded id, the legacy one derived from the label. */
	SHA256((const unsigned char *)k->label, strlen(k->label), md);
	memcpy(k->id, id != NULL ? id : md, sizeof(k->id));
	k->match_id = id != NULL;
	pthread_mutex_init(&k->mu, NULL);
	k->priv = k->pub = k->use_priv = k->use_pub = CK_INVALID_HANDLE;
	*out = k;
	return CF_OK;
}

/* The end of a create or a lookup: k is *out when r is CF_OK, else freed. */
static int
key_hand_out(int r, cf_p11_key *k, cf_p11_key **out)
{
	if (r == CF_OK)
		*out = k;
	else
		cf_p11_key_free(k);
	return r;
}

/*
 * CKA_MODIFIABLE stays TRUE on token objects: SoftHSM 2.6.1 refuses
 * C_CopyObject of an unmodifiable object with a CKA_TOKEN=FALSE template
 * (CKR_ATTRIBUTE_READ_ONLY, measured by tests/integration/p11_attrs.c), and the session
 * copies are what keep crypto at full speed (DESIGN 5). The copies the layer
 * works with are made CKA_MODIFIABLE=FALSE (p11_copy); the layer never calls
 * C_SetAttributeValue.
 */
#define TOKEN_OBJECTS_MODIFIABLE 1

/* Attributes shared by every private or secret object we create: the
 * material never leaves the token. */
static void
tpl_private(struct p11_template *t, const cf_p11_key *k)
{
	tpl_bool(t, CKA_TOKEN, 1);
	tpl_bool(t, CKA_PRIVATE, 1);
	tpl_bool(t, CKA_SENSITIVE, 1);
	tpl_bool(t, CKA_EXTRACTABLE, 0);
	tpl_bool(t, CKA_MODIFIABLE, TOKEN_OBJECTS_MODIFIABLE);
	tpl_add(t, CKA_LABEL, k->label, strlen(k->label));
	tpl_add(t, CKA_ID, k->id, sizeof(k->id));
}

static CK_OBJECT_CLASS secret_class = CKO_SECRET_KEY;
static CK_KEY_TYPE generic_type = CKK_GENERIC_SECRET;
static CK_KEY_TYPE aes_type = CKK_AES;

/* Template for a secret key (HMAC or AES); value_len must outlive t.
 * HMAC: CKM_SHA*_HMAC sign and verify. AES: CKM_AES_GCM encrypt and decrypt. */
static void
tpl_secret(struct p11_template *t, const cf_p11_key *k, CK_ULONG *value_len)
{
	tpl_add(t, CKA_CLASS, &secret_class, sizeof(secret_class));
	tpl_private(t, k);
	if (cf_key_type_is_hmac(k->type)) {
		tpl_add(t, CKA_KEY_TYPE, &generic_type, sizeof(generic_type));
		tpl_usage(t, CKO_SECRET_KEY, U_SIGN | U_VERIFY, 0);
	} else {
		tpl_add(t, CKA_KEY_TYPE, &aes_type, sizeof(aes_type));
		tpl_usage(t, CKO_SECRET_KEY, U_ENCRYPT | U_DECRYPT, 0);
	}
	tpl_mechs(t, k->type, 0);
	if (value_len != NULL)
		tpl_add(t, CKA_VALUE_LEN, value_len, sizeof(*value_len));
}

CK_RV
p11_find_one(cf_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label,
	     const unsigned char *id, CK_OBJECT_HANDLE *out)
{
	CK_ATTRIBUTE q[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_TOKEN, &p11_true, sizeof(p11_true) },
		{ CKA_LABEL, (void *)label, strlen(label) },
		{ CKA_ID, (void *)id, 16 },
	};
	CK_OBJECT_HANDLE found[2];
	CK_ULONG n = 0;
	CK_RV rv;

	if ((rv = p->f->C_FindObjectsInit(s, q, id != NULL ? 4 : 3)) != CKR_OK)
		return rv;
	rv = p->f->C_FindObjects(s, found, 2, &n);
	(void)p->f->C_FindObjectsFinal(s);
	if (rv != CKR_OK)
		return rv;
	if (n == 0)
		return P11_RV_NOT_FOUND;
	if (n > 1)
		return P11_RV_AMBIGUOUS;
	*out = found[0];
	return CKR_OK;
}

CK_RV
p11_get_attr(cf_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type,
	     unsigned char **out, unsigned long *len)
{
	CK_ATTRIBUTE a = { type, NULL, 0 };
	CK_RV rv;

	if ((rv = p->f->C_GetAttributeValue(s, o, &a, 1)) != CKR_OK)
		return rv;
	if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen > 65536)
		return CKR_ATTRIBUTE_VALUE_INVALID;
	if ((a.pValue = malloc(a.ulValueLen ? a.ulValueLen : 1)) == NULL)
		return CKR_HOST_MEMORY;
	if ((rv = p->f->C_GetAttributeValue(s, o, &a, 1)) != CKR_OK) {
		free(a.pValue);
		return rv;
	}
	*out = a.pValue;
	*len = a.ulValueLen;
	return CKR_OK;
}

/* Work out a Coffer key type from the token object itself. */
static CK_RV
p11_detect_type(cf_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, enum cf_key_type *out)
{
	CK_KEY_TYPE kt = 0;
	CK_ATTRIBUTE a = { CKA_KEY_TYPE, &kt, sizeof(kt) };
	unsigned char *v = NULL;
	unsigned long len = 0;
	size_t plen;
	CK_RV rv;

	if ((rv = p->f->C_GetAttributeValue(s, o, &a, 1)) != CKR_OK)
		return rv;
	*out = CF_KEY_NONE;
	switch (kt) {
	case CKK_EC:
		if ((rv = p11_get_attr(p, s, o, CKA_EC_PARAMS, &v, &len)) != CKR_OK)
			return rv;
		for (enum cf_key_type t = CF_KEY_EC_P256; t <= CF_KEY_EC_P384; t++) {
			const unsigned char *d = p11_ec_params(t, &plen);

			if (plen == len && memcmp(d, v, len) == 0)
				*out = t;
		}
		break;
	case CKK_EC_EDWARDS:
		*out = CF_KEY_ED25519;
		break;
	case CKK_RSA:
		if ((rv = p11_get_attr(p, s, o, CKA_MODULUS, &v, &len)) != CKR_OK)
			return rv;
		*out = len == 256 ? CF_KEY_RSA_2048 : len == 384 ? CF_KEY_RSA_3072 :
		       len == 512 ? CF_KEY_RSA_4096 : CF_KEY_NONE;
		break;
	case CKK_GENERIC_SECRET:
		/* A secret without the attribute is not one of Coffer's; a read
		 * that failed (a lost session, the device) is that failure, for
		 * recovery to see, not an unknown key type. */
		rv = p11_get_attr(p, s, o, CKA_ALLOWED_MECHANISMS, &v, &len);
		if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID &&
		    rv != CKR_ATTRIBUTE_SENSITIVE && rv != CKR_ATTRIBUTE_VALUE_INVALID)
			return rv;
		if (rv == CKR_OK && len == sizeof(CK_MECHANISM_TYPE)) {
			CK_MECHANISM_TYPE m;

			memcpy(&m, v, sizeof(m));
			*out = m == CKM_SHA256_HMAC ? CF_KEY_HMAC_SHA256 :
			       m == CKM_SHA384_HMAC ? CF_KEY_HMAC_SHA384 :
			       m == CKM_SHA512_HMAC ? CF_KEY_HMAC_SHA512 : CF_KEY_NONE;
		}
		break;
	case CKK_AES:
		*out = CF_KEY_AES_256;
		break;
	default:
		break;
	}
	free(v);
	return *out == CF_KEY_NONE ? CKR_KEY_TYPE_INCONSISTENT : CKR_OK;
}

/* The CKA_ID a lookup of k matches, or NULL (by label alone). */
static const unsigned char *
match_id(const cf_p11_key *k)
{
	return k->match_id ? k->id : NULL;
}

/* Private (asymmetric) or secret object of a key. */
static CK_RV
p11_find_key_object(cf_p11 *p, CK_SESSION_HANDLE s, const cf_p11_key *k, CK_OBJECT_HANDLE *o,
		    int *is_secret)
{
	CK_RV rv = p11_find_one(p, s, CKO_PRIVATE_KEY, k->label, match_id(k), o);

	*is_secret = 0;
	if (rv == P11_RV_NOT_FOUND) {
		rv = p11_find_one(p, s, CKO_SECRET_KEY, k->label, match_id(k), o);
		*is_secret = 1;
	}
	return rv;
}

/* CKR_OK if any token object (of any class or id) carries the label. */
static CK_RV
p11_label_taken(cf_p11 *p, CK_SESSION_HANDLE s, const char *label)
{
	CK_ATTRIBUTE q[] = {
		{ CKA_TOKEN, &p11_true, sizeof(p11_true) },
		{ CKA_LABEL, (void *)label, strlen(label) },
	};
	CK_OBJECT_HANDLE found;
	CK_ULONG n = 0;
	CK_RV rv;

	if ((rv = p->f->C_FindObjectsInit(s, q, 2)) != CKR_OK)
		return rv;
	rv = p->f->C_FindObjects(s, &found, 1, &n);
	(void)p->f->C_FindObjectsFinal(s);
	if (rv != CKR_OK)
		return rv;
	return n > 0 ? CKR_OK : P11_RV_NOT_FOUND;
}

static void
p11_destroy_copies(cf_p11_key *k)
{
	cf_p11 *p = k->p;

	if (!k->copied)
		return;
	/* Copies die with the anchor on recovery; only destroy same-epoch ones. */
	if (k->copy_epoch == p->epoch && p->anchor != CK_INVALID_HANDLE) {
		pthread_mutex_lock(&p->write_mu);
		(void)p->f->C_DestroyObject(p->anchor, k->use_priv);
		if (k->use_pub != CK_INVALID_HANDLE)
			(void)p->f->C_DestroyObject(p->anchor, k->use_pub);
		pthread_mutex_unlock(&p->write_mu);
	}
	k->copied = 0;
	k->use_priv = k->priv;
	k->use_pub = k->pub;
}

/* Session copy on the anchor session: it lives as long as the anchor, its
 * material never leaves the token, and none of its attributes can change. */
static CK_RV
p11_copy(cf_p11 *p, CK_OBJECT_HANDLE from, CK_OBJECT_HANDLE *to)
{
	CK_ATTRIBUTE t[] = {
		{ CKA_TOKEN, &p11_false, sizeof(p11_false) },
		{ CKA_MODIFIABLE, &p11_false, sizeof(p11_false) },
	};

	return p->f->C_CopyObject(p->anchor, from, t, 2, to);
}

CK_RV
p11_key_resolve(cf_p11_key *k, CK_SESSION_HANDLE s, uint64_t epoch, struct p11_handles *h)
{
	cf_p11 *p = k->p;
	CK_OBJECT_HANDLE cp = CK_INVALID_HANDLE, cpub = CK_INVALID_HANDLE;
	int is_secret;
	CK_RV rv = CKR_OK;

	pthread_mutex_lock(&k->mu);
	/* Before the epoch's shortcut: a version destroyed is not served from
	 * its handles either, nor copied into the session again. */
	if (k->retired) {
		rv = P11_RV_RETIRED;
		goto out;
	}
	if (k->epoch == epoch)
		goto done;
	p11_destroy_copies(k);
	/* Searching the token while another thread creates objects in it fails
	 * inside SoftHSM now and then: lookups take the write lock too, and
	 * the shared token lock against other processes' writes (the copies
	 * below are session objects: no token write). */
	pthread_mutex_lock(&p->write_mu);
	if ((rv = p11_token_lock(p, LOCK_SH)) != CKR_OK)
		goto unlock_mu;
	if ((rv = p11_find_key_object(p, s, k, &k->priv, &is_secret)) != CKR_OK)
		goto unlock;
	k->pub = CK_INVALID_HANDLE;
	if (!is_secret &&
	    (rv = p11_find_one(p, s, CKO_PUBLIC_KEY, k->label, match_id(k), &k->pub)) != CKR_OK)
		goto unlock;
	k->use_priv = k->priv;
	k->use_pub = k->pub;
	if (__atomic_load_n(&p->session_copies, __ATOMIC_RELAXED)) {
		CK_RV crv = p11_copy(p, k->priv, &cp);

		/* tpm2-pkcs11: no C_CopyObject at all; stop asking. */
		if (crv == CKR_FUNCTION_NOT_SUPPORTED)
			__atomic_store_n(&p->session_copies, 0, __ATOMIC_RELAXED);
		if (crv == CKR_OK &&
		    (k->pub == CK_INVALID_HANDLE || p11_copy(p, k->pub, &cpub) == CKR_OK)) {
			k->use_priv = cp;
			k->use_pub = k->pub == CK_INVALID_HANDLE ? CK_INVALID_HANDLE : cpub;
			k->copied = 1;
			k->copy_epoch = epoch;
		} else if (cp != CK_INVALID_HANDLE) {
			/* Not copyable (CKA_COPYABLE=FALSE): use the token objects. */
			(void)p->f->C_DestroyObject(p->anchor, cp);
		}
	}
	k->epoch = epoch;
	k->resolved++;
unlock:
	p11_token_unlock(p);
unlock_mu:
	pthread_mutex_unlock(&p->write_mu);
	if (rv != CKR_OK)
		goto out;
done:
	h->priv = k->use_priv;
	h->pub = k->use_pub;
	h->resolved = k->resolved;
out:
	pthread_mutex_unlock(&k->mu);
	return rv;
}

void
p11_key_invalidate(cf_p11_key *k, const struct p11_handles *h)
{
	pthread_mutex_lock(&k->mu);
	if (k->resolved == h->resolved)
		k->epoch = 0;
	pthread_mutex_unlock(&k->mu);
}

/* ---- generation and import ---- */

/* Destroy up to 16 token objects labelled `label` (and carrying `id` unless
 * NULL), counting them in *destroyed. The caller holds write_mu and the
 * exclusive token lock. */
static CK_RV
p11_destroy_labelled(cf_p11 *p, CK_SESSION_HANDLE s, const char *label, const uint8_t *id,
		     unsigned *destroyed)
{
	CK_ATTRIBUTE q[] = {
		{ CKA_TOKEN, &p11_true, sizeof(p11_true) },
		{ CKA_LABEL, (void *)label, strlen(label) },
		{ CKA_ID, (void *)id, CF_P11_ID_LEN },
	};
	CK_OBJECT_HANDLE objs[16];
	CK_ULONG n = 0;
	CK_RV rv;

	/* Find, then destroy: a search must be finished before the token changes. */
	if ((rv = p->f->C_FindObjectsInit(s, q, id != NULL ? 3 : 2)) == CKR_OK) {
		rv = p->f->C_FindObjects(s, objs, 16, &n);
		(void)p->f->C_FindObjectsFinal(s);
	}
	for (CK_ULONG i = 0; rv == CKR_OK && i < n; i++) {
		if (i > 0)
			CF_CRASH_POINT("p11.objects-destroy.between");
		if ((rv = p->f->C_DestroyObject(s, objs[i])) == CKR_OK)
			(*destroyed)++;
	}
	return rv;
}

struct gen_arg {
	cf_p11_key *k;
	unsigned flags;
	const cf_secret *material; /* import when set */
	int wrote;                 /* an attempt reached the token write */
};

/*
 * tpm2-pkcs11 1.9 makes every key pair a TPM object that signs and decrypts
 * and sets CKA_DECRYPT (private) and CKA_ENCRYPT (public) TRUE itself; a
 * template saying FALSE fails with CKR_GENERAL_ERROR ("User specified and
 * TPM specified attr mismatch"), and CKA_DECRYPT=FALSE on the private half
 * even turns the public half's CKA_VERIFY FALSE. Such a token gets templates
 * without those two attributes (CKA_ALLOWED_MECHANISMS still limits the
 * key to Coffer's mechanisms): tried once when the full template fails,
 * then kept (p->token_sets_crypt).
 */
#define U_TOKEN_SET_PRIV U_DECRYPT
#define U_TOKEN_SET_PUB  U_ENCRYPT

static CK_RV
gen_keypair_tpl(cf_p11 *p, CK_SESSION_HANDLE s, struct gen_arg *g, int lenient, int probe);

/*
 * One failure of the full template is not yet a token that sets those
 * attributes itself: a transient CKR_GENERAL_ERROR would otherwise make
 * every later pair of the process one that also decrypts. The same
 * template is tried once more as a pair of session objects (nothing left in
 * the token): if the token makes that one, this attempt failed by itself,
 * and its error stands (p11_run recovers the session and tries again, with
 * the full template). Either way the failed attempt's own objects (its
 * fresh id, under a label found free under the token lock) go first.
 */
static CK_RV
gen_keypair(cf_p11 *p, CK_SESSION_HANDLE s, struct gen_arg *g)
{
	int lenient = __atomic_load_n(&p->token_sets_crypt, __ATOMIC_RELAXED);
	CK_RV rv = gen_keypair_tpl(p, s, g, lenient, 0), rv2;
	unsigned gone = 0;

	if (lenient || (rv != CKR_GENERAL_ERROR && rv != CKR_TEMPLATE_INCONSISTENT))
		return rv;
	if ((rv2 = p11_destroy_labelled(p, s, g->k->label, g->k->id, &gone)) != CKR_OK)
		return rv2;
	/* Any failure of the probe counts as the token's refusal: tpm2-pkcs11
	 * fails such a session-object pair with codes of its own (requiring the
	 * same code broke every key pair on a TPM: CI, test_e2e_tpm). */
	if (gen_keypair_tpl(p, s, g, 0, 1) == CKR_OK)
		return rv;
	rv = gen_keypair_tpl(p, s, g, 1, 0);
	if (rv == CKR_OK)
		__atomic_store_n(&p->token_sets_crypt, 1, __ATOMIC_RELAXED);
	return rv;
}

/* A template made into one for session objects under `label`. */
static void
probe_template(struct p11_template *t, const char *label)
{
	for (CK_ULONG i = 0; i < t->n; i++) {
		if (t->a[i].type == CKA_TOKEN)
			t->a[i].pValue = &p11_false;
		if (t->a[i].type == CKA_LABEL) {
			t->a[i].pValue = (void *)label;
			t->a[i].ulValueLen = strlen(label);
		}
	}
}

/* A key pair with the full template (or without the attributes the token
 * sets itself: lenient); probe: as session objects under another label,
 * destroyed at once (gen_keypair). */
static CK_RV
gen_keypair_tpl(cf_p11 *p, CK_SESSION_HANDLE s, struct gen_arg *g, int lenient, int probe)
{
	static const char probe_label[] = "coffer-template-probe";
	CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
	CK_RV rv;
	cf_p11_key *k = g->k;
	struct p11_template pub = { .n = 0 }, priv = { .n = 0 };
	CK_MECHANISM mech = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
	CK_ULONG bits = 0;
	const unsigned char *params;
	size_t plen;
	int derive = (g->flags & CF_P11_DERIVE) != 0;

	tpl_bool(&pub, CKA_TOKEN, 1);
	tpl_bool(&pub, CKA_PRIVATE, 0);
	tpl_bool(&pub, CKA_MODIFIABLE, TOKEN_OBJECTS_MODIFIABLE);
	tpl_add(&pub, CKA_LABEL, k->label, strlen(k->label));
	tpl_add(&pub, CKA_ID, k->id, sizeof(k->id));
	/* The public half only verifies; ECDH uses the private half. */
	tpl_usage(&pub, CKO_PUBLIC_KEY, U_VERIFY, lenient ? U_TOKEN_SET_PUB : 0);
	tpl_mechs(&pub, k->type, 0);
	tpl_private(&priv, k);
	tpl_usage(&priv, CKO_PRIVATE_KEY, U_SIGN | (derive ? U_DERIVE : 0),
		  lenient ? U_TOKEN_SET_PRIV : 0);
	tpl_mechs(&priv, k->type, derive);
	if (cf_key_type_is_rsa(k->type)) {
		mech.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
		bits = k->type == CF_KEY_RSA_2048 ? 2048 : k->type == CF_KEY_RSA_3072 ? 3072 : 4096;
		tpl_add(&pub, CKA_MODULUS_BITS, &bits, sizeof(bits));
		tpl_add(&pub, CKA_PUBLIC_EXPONENT, rsa_f4, sizeof(rsa_f4));
	} else {
		if (k->type == CF_KEY_ED25519)
			mech.mechanism = CKM_EC_EDWARDS_KEY_PAIR_GEN;
		params = p11_ec_params(k->type, &plen);
		tpl_add(&pub, CKA_EC_PARAMS, params, plen);
	}
	if (!probe)
		return p->f->C_GenerateKeyPair(s, &mech, pub.a, pub.n, priv.a, priv.n, &k->pub,
					       &k->priv);
	probe_template(&pub, probe_label);
	probe_template(&priv, probe_label);
	rv = p->f->C_GenerateKeyPair(s, &mech, pub.a, pub.n, priv.a, priv.n, &hpub, &hpriv);
	if (rv == CKR_OK) {
		(void)p->f->C_DestroyObject(s, hpriv);
		(void)p->f->C_DestroyObject(s, hpub);
	}
	return rv;
}

static CK_RV
gen_op(cf_p11 *p, CK_SESSION_HANDLE s, const struct p11_handles *h, void *arg)
{
	struct gen_arg *g = arg;
	cf_p11_key *k = g->k;
	struct p11_template t = { .n = 0 };
	CK_MECHANISM mech = { CKM_GENERIC_SECRET_KEY_GEN, NULL, 0 };
	CK_ULONG value_len;
	CK_RV rv;

	(void)h;
	pthread_mutex_lock(&p->write_mu);
	/* Check and create under one exclusive token lock: another process
	 * cannot make the same label in between. */
	if ((rv = p11_token_lock(p, LOCK_EX)) != CKR_OK) {
		pthread_mutex_unlock(&p->write_mu);
		return rv;
	}
	/* Any object under the label, a lone public key left by an interrupted
	 * generation too, makes it taken: never a second pair beside it. */
	rv = p11_label_taken(p, s, k->label);
	if (rv == CKR_OK && g->wrote) {
		/* The first attempt failed in the token write, the token was
		 * recovered since, and the write may have happened in part.
		 * Objects with this call's own fresh id are that attempt's:
		 * remove them and start again. Without a recorded id there
		 * is no telling them from anyone else's. */
		unsigned gone = 0;

		if (!k->match_id) {
			rv = P11_RV_WRITE_UNKNOWN;
			goto out;
		}
		if ((rv = p11_destroy_labelled(p, s, k->label, k->id, &gone)) == CKR_OK)
			rv = p11_label_taken(p, s, k->label);
	}
	if (rv == CKR_OK) {
		rv = P11_RV_AMBIGUOUS; /* reported as CF_E_EXISTS by the caller */
		goto out;
	}
	if (rv != P11_RV_NOT_FOUND)
		goto out;
	g->wrote = 1;
	if (cf_key_type_is_asymmetric(k->type)) {
		rv = gen_keypair(p, s, g);
		goto out;
	}
	value_len = k->type == CF_KEY_AES_256 ? 32 : cf_hash_len(cf_key_default_hash(k->type));
	if (g->material != NULL) {
		tpl_secret(&t, k, NULL);
		tpl_add(&t, CKA_VALUE, cf_secret_cptr(g->material), cf_secret_len(g->material));
		rv = p->f->C_CreateObject(s, t.a, t.n, &k->priv);
	} else {
		if (k->type == CF_KEY_AES_256)
			mech.mechanism = CKM_AES_KEY_GEN;
		tpl_secret(&t, k, &value_len);
		rv = p->f->C_GenerateKey(s, &mech, t.a, t.n, &k->priv);
	}
out:
	p11_token_unlock(p);
	pthread_mutex_unlock(&p->write_mu);
	return rv;
}

static int
p11_key_create(cf_p11 *p, const char *name, uint32_t version, enum cf_key_type type,
	       unsigned flags, const cf_secret *material, const uint8_t *id, cf_p11_key **out)
{
	struct gen_arg g = { NULL, flags, material, 0 };
	CK_RV rv;
	int r;

	if (type <= CF_KEY_NONE || type >= CF_KEY__COUNT)
		return cf_error(CF_E_INVALID_ARG, "unknown key type %d", (int)type);
	if (flags & ~CF_P11_DERIVE)
		return cf_error(CF_E_INVALID_ARG, "unknown key flags 0x%x", flags & ~CF_P11_DERIVE);
	if ((flags & CF_P11_DERIVE) && !cf_key_type_is_ec(type))
		return cf_error(CF_E_WRONG_KEY_TYPE, "only EC keys can be made for ECDH");
	if ((r = cf_p11_can_create(p, type, material != NULL)) != CF_OK)
		return r;
	if ((r = p11_key_new(p, name, version, type, id, &g.k)) != CF_OK)
		return r;
	rv = p11_run(p, NULL, gen_op, &g);
	if (rv == CKR_OK)
		CF_CRASH_POINT("p11.key-create.created");
	if (rv == P11_RV_AMBIGUOUS)
		r = cf_error(CF_E_EXISTS, "key %s version %u already exists in the token", name,
			     version);
	else
		r = p11_status(rv, material ? "importing the key" : "generating the key");
	return key_hand_out(r, g.k, out);
}

int
cf_p11_key_generate(cf_p11 *p, const char *name, uint32_t version, enum cf_key_type type,
		    unsigned flags, cf_p11_key **out)
{
	return p11_key_create(p, name, version, type, flags, NULL, NULL, out);
}

int
cf_p11_key_generate_id(cf_p11 *p, const char *name, uint32_t version, enum cf_key_type type,
		       unsigned flags, const uint8_t id[CF_P11_ID_LEN], cf_p11_key **out)
{
	return p11_key_create(p, name, version, type, flags, NULL, id, out);
}

int
cf_p11_key_import(cf_p11 *p, const char *name, uint32_t version, enum cf_key_type type,
		  const cf_secret *material, unsigned flags, cf_p11_key **out)
{
	return cf_p11_key_import_id(p, name, version, type, material, flags, NULL, out);
}

int
cf_p11_key_import_id(cf_p11 *p, const char *name, uint32_t version, enum cf_key_type type,
		     const cf_secret *material, unsigned flags, const uint8_t *id,
		     cf_p11_key **out)
{
	size_t len = material ? cf_secret_len(material) : 0;

	if (type == CF_KEY_AES_256) {
		if (len != 32)
			return cf_error(CF_E_INVALID_ARG, "an aes-256 key is 32 bytes, not %zu", len);
	} else if (cf_key_type_is_hmac(type)) {
		size_t min = cf_hash_len(cf_key_default_hash(type));

		if (len < min)
			return cf_error(CF_E_INVALID_ARG, "a %s secret needs at least %zu bytes, "
					"got %zu", cf_key_type_name(type), min, len);
		if (len > CF_P11_MAX_SECRET)
			return cf_error(CF_E_TOO_LARGE, "a %s secret may have at most %u bytes, "
					"got %zu", cf_key_type_name(type), CF_P11_MAX_SECRET, len);
	} else {
		return cf_error(CF_E_WRONG_KEY_TYPE, "only HMAC and AES keys can be imported, "
				"not %s", cf_key_type_name(type));
	}
	return p11_key_create(p, name, version, type, flags, material, id, out);
}

/* ---- lookup ---- */

struct open_arg {
	cf_p11_key *k;
};

static CK_RV
open_op(cf_p11 *p, CK_SESSION_HANDLE s, const struct p11_handles *h, void *arg)
{
	struct open_arg *o = arg;
	CK_OBJECT_HANDLE obj;
	int is_secret;
	CK_RV rv;

	(void)h;
	pthread_mutex_lock(&p->write_mu);
	if ((rv = p11_token_lock(p, LOCK_SH)) == CKR_OK) {
		if ((rv = p11_find_key_object(p, s, o->k, &obj, &is_secret)) == CKR_OK)
			rv = p11_detect_type(p, s, obj, &o->k->type);
		p11_token_unlock(p);
	}
	pthread_mutex_unlock(&p->write_mu);
	return rv;
}

int
cf_p11_key_open(cf_p11 *p, const char *name, uint32_t version, cf_p11_key **out)
{
	return cf_p11_key_open_id(p, name, version, NULL, out);
}

int
cf_p11_key_open_id(cf_p11 *p, const char *name, uint32_t version, const uint8_t *id,
		   cf_p11_key **out)
{
	struct open_arg o = { NULL };
	CK_RV rv;
	int r;

	if ((r = p11_key_new(p, name, version, CF_KEY_NONE, id, &o.k)) != CF_OK)
		return r;
	rv = p11_run(p, NULL, open_op, &o);
	if (rv == P11_RV_NOT_FOUND)
		r = cf_error(CF_E_NOT_FOUND, "key %s version %u is not in the token", name, version);
	else if (rv == CKR_KEY_TYPE_INCONSISTENT)
		r = cf_error(CF_E_UNSUPPORTED, "token object %s is not a key type Coffer knows",
			     o.k->label);
	else
		r = p11_status(rv, "looking up the key");
	return key_hand_out(r, o.k, out);
}

int
cf_p11_key_ensure(cf_p11 *p, const char *name, uint32_t version, enum cf_key_type type,
		  cf_p11_key **out, int *created)
{
	int r = cf_p11_key_open(p, name, version, out);

	*created = 0;
	if (r == CF_E_NOT_FOUND) {
		if ((r = cf_p11_key_generate(p, name, version, type, 0, out)) == CF_OK) {
			*created = 1;
			return r;
		}
		/* Another process sharing the token made it since our lookup
		 * (replicas starting together): use theirs. */
		if (r != CF_E_EXISTS)
			return r;
		/* Without a lock file the other process may still be making it,
		 * or its new object is not yet visible here: a few more looks. */
		for (unsigned i = 0; (r = cf_p11_key_open(p, name, version, out)) == CF_E_NOT_FOUND &&
				     i < ENSURE_LOOKS; i++) {
			struct timespec ts = { 0, 100 * 1000000L };

			nanosleep(&ts, NULL);
		}
		if (r == CF_E_NOT_FOUND)
			return cf_error(CF_E_EXISTS, "the token holds objects labelled %s version %u "
					"but no whole key: a lone public key left by an interrupted "
					"generation (remove it), or another process making the key "
					"(processes sharing a token need [token] lock_file)", name,
					version);
	}
	if (r == CF_OK && cf_p11_key_type(*out) != type) {
		r = cf_error(CF_E_CONFIG, "token object %s version %u is %s, not %s", name, version,
			     cf_key_type_name(cf_p11_key_type(*out)), cf_key_type_name(type));
		cf_p11_key_free(*out);
		*out = NULL;
	}
	return r;
}

enum cf_key_type
cf_p11_key_type(const cf_p11_key *k)
{
	return k->type;
}

const char *
cf_p11_key_name(const cf_p11_key *k)
{
	return k->name;
}

uint32_t
cf_p11_key_version(const cf_p11_key *k)
{
	return k->version;
}

/* ---- destroy / free ---- */

struct destroy_arg {
	cf_p11_key *k;
	int wrote;                  /* an attempt reached C_DestroyObject */
};

static CK_RV
destroy_op(cf_p11 *p, CK_SESSION_HANDLE s, const struct p11_handles *h, void *arg)
{
	cf_p11_key *k = ((struct destroy_arg *)arg)->k;
	CK_RV rv;

	(void)h;
	pthread_mutex_lock(&k->mu);
	p11_destroy_copies(k);
	pthread_mutex_lock(&p->write_mu);
	if ((rv = p11_token_lock(p, LOCK_EX)) == CKR_OK) {
		((struct destroy_arg *)arg)->wrote = 1;
		rv = p->f->C_DestroyObject(s, k->priv);
		if (rv == CKR_OK && k->pub != CK_INVALID_HANDLE)
			rv = p->f->C_DestroyObject(s, k->pub);
		p11_token_unlock(p);
	}
	pthread_mutex_unlock(&p->write_mu);
	k->epoch = 0;
	pthread_mutex_unlock(&k->mu);
	return rv;
}

int
cf_p11_key_destroy(cf_p11_key *k)
{
	struct destroy_arg d = { k, 0 };
	CK_RV rv = p11_run(k->p, k, destroy_op, &d);

	/* A destroy the token failed in may have removed one object of a pair
	 * (the retry then finds the key gone, or half there): finish it by label
	 * (and the recorded id), as lookups find this key version's objects. */
	if (rv != CKR_OK && d.wrote)
		return cf_p11_objects_destroy(k->p, k->name, k->version,
					      k->match_id ? k->id : NULL, NULL);
	return p11_status(rv, "destroying the key");
}

void
cf_p11_key_retire(cf_p11_key *k)
{
	if (k == NULL)
		return;
	pthread_rwlock_rdlock(&k->p->life);
	pthread_mutex_lock(&k->mu);
	k->retired = 1;
	p11_destroy_copies(k);
	k->epoch = 0;
	pthread_mutex_unlock(&k->mu);
	pthread_rwlock_unlock(&k->p->life);
}

void
cf_p11_key_free(cf_p11_key *k)
{
	if (k == NULL)
		return;
	if (k->copied)
		cf_p11_key_retire(k);
	pthread_mutex_destroy(&k->mu);
	free(k);
}

/* ---- listing ---- */

struct list_arg {
	struct cf_p11_object *e;
	size_t n, cap;
	int full;               /* LIST_MAX objects listed, and more in the token */
};

/* "coffer/<name>/<version>" -> name, version; 0 if it is not ours. */
static int
parse_label(const unsigned char *l, unsigned long len, struct cf_p11_object *e)
{
	char buf[CF_KEY_NAME_MAX + 32], *slash, *end;
	unsigned long v;

	if (len >= sizeof(buf) || len <= strlen(LABEL_PREFIX))
		return 0;
	memcpy(buf, l, len);
	buf[len] = '\0';
	if (strncmp(buf, LABEL_PREFIX, strlen(LABEL_PREFIX)) != 0)
		return 0;
	if ((slash = strrchr(buf, '/')) == buf + strlen(LABEL_PREFIX) - 1)
		return 0;
	*slash = '\0';
	/* Only the form the layer writes ("1", never "01" or "+1"): the
	 * listing must name what a search for the label finds. */
	if (slash[1] < '1' || slash[1] > '9')
		return 0;
	v = strtoul(slash + 1, &end, 10);
	if (*end != '\0' || v < 1 || v > CF_KEY_VERSION_MAX)
		return 0;
	if (cf_key_name_check(buf + strlen(LABEL_PREFIX)) != CF_OK) {
		cf_error_clear();
		return 0;
	}
	memcpy(e->name, buf + strlen(LABEL_PREFIX), strlen(buf + strlen(LABEL_PREFIX)) + 1);
	e->version = (uint32_t)v;
	return 1;
}

static CK_RV
list_class(cf_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, struct list_arg *la)
{
	CK_ATTRIBUTE q[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_TOKEN, &p11_true, sizeof(p11_true) },
	};
	CK_OBJECT_HANDLE objs[64];
	CK_ULONG n;
	CK_RV rv;
	struct cf_p11_object e;
	unsigned char *label, *id;
	unsigned long llen, idlen;

	if ((rv = p->f->C_FindObjectsInit(s, q, 2)) != CKR_OK)
		return rv;
	for (;;) {
		if ((rv = p->f->C_FindObjects(s, objs, 64, &n)) != CKR_OK || n == 0)
			break;
		for (CK_ULONG i = 0; i < n; i++) {
			if (p11_get_attr(p, s, objs[i], CKA_LABEL, &label, &llen) != CKR_OK)
				continue;
			memset(&e, 0, sizeof(e));
			e.cls = cls == CKO_PRIVATE_KEY ? CF_P11_PRIVATE :
				cls == CKO_PUBLIC_KEY ? CF_P11_PUBLIC : CF_P11_SECRET;
			if (parse_label(label, llen, &e) &&
			    p11_detect_type(p, s, objs[i], &e.type) != CKR_OK)
				e.type = CF_KEY_NONE;
			if (e.version != 0 &&
			    p11_get_attr(p, s, objs[i], CKA_ID, &id, &idlen) == CKR_OK) {
				if (idlen == CF_P11_ID_LEN)
					memcpy(e.id, id, CF_P11_ID_LEN);
				e.id_len = idlen == CF_P11_ID_LEN;
				free(id);
			}
			if (e.version != 0) {
				if (la->n == la->cap) {
					size_t nc = la->cap ? la->cap * 2 : 64;
					struct cf_p11_object *ne;

					if (nc > LIST_MAX)
						nc = LIST_MAX;
					la->full = la->n == LIST_MAX;
					if (la->full ||
					    (ne = realloc(la->e, nc * sizeof(*ne))) == NULL) {
						free(label);
						rv = CKR_HOST_MEMORY;
						goto out;
					}
					la->e = ne;
					la->cap = nc;
				}
				la->e[la->n++] = e;
			}
			free(label);
		}
	}
out:
	(void)p->f->C_FindObjectsFinal(s);
	return rv;
}

static CK_RV
list_op(cf_p11 *p, CK_SESSION_HANDLE s, const struct p11_handles *h, void *arg)
{
	struct list_arg *la = arg;
	CK_RV rv;

	(void)h;
	la->n = 0;
	la->full = 0;
	pthread_mutex_lock(&p->write_mu);
	if ((rv = p11_token_lock(p, LOCK_SH)) == CKR_OK) {
		if ((rv = list_class(p, s, CKO_PRIVATE_KEY, la)) == CKR_OK &&
		    (rv = list_class(p, s, CKO_SECRET_KEY, la)) == CKR_OK)
			rv = list_class(p, s, CKO_PUBLIC_KEY, la);
		p11_token_unlock(p);
	}
	pthread_mutex_unlock(&p->write_mu);
	return rv;
}

/* The listing's status: a full one is not a token out of memory. */
static int
list_status(cf_p11 *p, struct list_arg *la, const char *what)
{
	CK_RV rv = p11_run(p, NULL, list_op, la);

	if (la->full)
		return cf_error(CF_E_EXHAUSTED, "%s: the token holds more than %d Coffer objects, "
				"the most one listing reads", what, LIST_MAX);
	return p11_status(rv, what);
}

int
cf_p11_objects(cf_p11 *p, struct cf_p11_object **out, size_t *n)
{
	struct list_arg la = { NULL, 0, 0, 0 };
	int r;

	if ((r = list_status(p, &la, "listing token objects")) != CF_OK) {
		free(la.e);
		return r;
	}
	*out = la.e;
	*n = la.n;
	return CF_OK;
}

int
cf_p11_object_cmp(const void *a, const void *b)
{
	const struct cf_p11_object *x = a, *y = b;
	int r = strcmp(x->name, y->name);

	return r != 0 ? r : x->version < y->version ? -1 : x->version > y->version;
}

/* What p11_find_key_object finds, from a sorted listing: the one private
 * object, else the one secret object, of name/version (with CKA_ID id
 * unless NULL); NULL if there is none or more than one. */
static const struct cf_p11_object *
listed_key_object(const struct cf_p11_object *o, size_t n, const char *name, uint32_t version,
		  const uint8_t *id)
{
	const struct cf_p11_object *hit[2] = { NULL, NULL };
	unsigned count[2] = { 0, 0 };
	size_t lo = 0, hi = n;

	while (lo < hi) {             /* the first entry not before name/version */
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(o[mid].name, name);

		if (c < 0 || (c == 0 && o[mid].version < version))
			lo = mid + 1;
		else
			hi = mid;
	}
	for (; lo < n && o[lo].version == version && strcmp(o[lo].name, name) == 0; lo++) {
		int secret = o[lo].cls == CF_P11_SECRET;

		if ((o[lo].cls != CF_P11_PRIVATE && !secret) ||
		    (id != NULL && (!o[lo].id_len || memcmp(o[lo].id, id, CF_P11_ID_LEN) != 0)))
			continue;
		count[secret]++;
		hit[secret] = &o[lo];
	}
	if (count[0] > 0)
		return count[0] == 1 ? hit[0] : NULL;
	return count[1] == 1 ? hit[1] : NULL;
}

int
cf_p11_key_open_listed(cf_p11 *p, const struct cf_p11_object *o, size_t n, const char *name,
		       uint32_t version, const uint8_t *id, cf_p11_key **out)
{
	const struct cf_p11_object *e = listed_key_object(o, n, name, version, id);
	cf_p11_key *k;
	int r;

	/* A type the listing could not tell gets the search's own error. */
	if (e == NULL || e->type == CF_KEY_NONE)
		return cf_p11_key_open_id(p, name, version, id, out);
	if ((r = p11_key_new(p, name, version, e->type, id, &k)) != CF_OK)
		return r;
	*out = k;
	return CF_OK;
}

struct purge_arg {
	char label[CF_KEY_NAME_MAX + 32];
	const uint8_t *id;
	unsigned destroyed;
};

static CK_RV
purge_op(cf_p11 *p, CK_SESSION_HANDLE s, const struct p11_handles *h, void *arg)
{
	struct purge_arg *pa = arg;
	CK_RV rv;

	(void)h;
	pthread_mutex_lock(&p->write_mu);
	if ((rv = p11_token_lock(p, LOCK_EX)) == CKR_OK) {
		rv = p11_destroy_labelled(p, s, pa->label, pa->id, &pa->destroyed);
		p11_token_unlock(p);
	}
	pthread_mutex_unlock(&p->write_mu);
	return rv;
}

int
cf_p11_objects_destroy(cf_p11 *p, const char *name, uint32_t version, const uint8_t *id,
		       unsigned *destroyed)
{
	struct purge_arg pa;
	int r = CF_OK;

	memset(&pa, 0, sizeof(pa));
	snprintf(pa.label, sizeof(pa.label), LABEL_PREFIX "%s/%u", name, version);
	pa.id = id;
	/* A batch at a time until none is left. */
	do {
		unsigned before = pa.destroyed;

		r = p11_status(p11_run(p, NULL, purge_op, &pa), "destroying token objects");
		if (r != CF_OK || pa.destroyed == before)
			break;
	} while (1);
	if (destroyed != NULL)
		*destroyed = pa.destroyed;
	return r;
}

int
cf_p11_key_list(cf_p11 *p, cf_p11_list_cb cb, void *arg)
{
	struct list_arg la = { NULL, 0, 0, 0 };
	int r;

	/* Collect first, call back after: callbacks may use the layer again. */
	if ((r = list_status(p, &la, "listing keys")) != CF_OK)
		goto out;
	for (size_t i = 0; i < la.n; i++)
		if (la.e[i].cls != CF_P11_PUBLIC && la.e[i].type != CF_KEY_NONE &&
		    (r = cb(la.e[i].name, la.e[i].version, la.e[i].type, arg)) != 0)
			break;
out:
	free(la.e);
	return r;
}
