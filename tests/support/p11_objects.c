/*
 * p11_objects — an independent listing of a token's objects through raw
 * Cryptoki (dlopen + C_GetFunctionList; none of Coffer's pkcs11/ code), for
 * the crash-consistency checker (tests/integration/crash_check.py).
 *
 * usage: p11_objects --module SO --token-label LABEL --pin-file FILE [ACTION]
 *   (no action)                     list every object the user sees, one JSON
 *                                   line each: {"class":..,"label":..,"id":..,
 *                                   "key_type":..,"token":..}; id is lower hex,
 *                                   a missing attribute is null
 *   --generate-secret LABEL IDHEX   plant a 32-byte generic secret (token)
 *   --generate-ec-pair LABEL IDHEX  plant an EC P-256 key pair (token)
 *   --destroy LABEL [CLASS [IDHEX]] destroy every object with that label (and
 *                                   class: private, public, secret, data, ...;
 *                                   and CKA_ID); prints how many
 * SoftHSM reads SOFTHSM2_CONF from the environment. Tests use the planting
 * actions to make the states a crash leaves (duplicates, half pairs,
 * leftovers) and see the checker report them.
 * Exit: 0 ok, 1 error (message on stderr), 2 usage.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CRYPTOKI_COMPAT
#include <p11-kit/pkcs11.h>

#include "cf_hex.h"

static const char *progname = "p11_objects";
static CK_FUNCTION_LIST_PTR f;

static void
die(const char *what, CK_RV rv)
{
	if (rv != CKR_OK)
		fprintf(stderr, "%s: %s: CKR 0x%08lx\n", progname, what, (unsigned long)rv);
	else
		fprintf(stderr, "%s: %s\n", progname, what);
	exit(1);
}

static void
usage(void)
{
	fprintf(stderr, "usage: %s --module SO --token-label LABEL --pin-file FILE\n"
		"       [--generate-secret LABEL IDHEX | --generate-ec-pair LABEL IDHEX |\n"
		"        --destroy LABEL [CLASS [IDHEX]]]\n", progname);
	exit(2);
}

static const char *
class_name(CK_OBJECT_CLASS c)
{
	switch (c) {
	case CKO_DATA: return "data";
	case CKO_CERTIFICATE: return "certificate";
	case CKO_PUBLIC_KEY: return "public";
	case CKO_PRIVATE_KEY: return "private";
	case CKO_SECRET_KEY: return "secret";
	case CKO_HW_FEATURE: return "hw_feature";
	case CKO_DOMAIN_PARAMETERS: return "domain_parameters";
	case CKO_MECHANISM: return "mechanism";
	default: return NULL;
	}
}

static const char *
key_type_name(CK_KEY_TYPE t)
{
	switch (t) {
	case CKK_RSA: return "rsa";
	case CKK_DSA: return "dsa";
	case CKK_DH: return "dh";
	case CKK_EC: return "ec";
	case CKK_GENERIC_SECRET: return "generic_secret";
	case CKK_AES: return "aes";
	case CKK_DES3: return "des3";
#ifdef CKK_EC_EDWARDS
	case CKK_EC_EDWARDS: return "ec_edwards";
#endif
#ifdef CKK_EC_MONTGOMERY
	case CKK_EC_MONTGOMERY: return "ec_montgomery";
#endif
	default: return NULL;
	}
}

/* A JSON string of len bytes (not NUL-terminated); non-ASCII bytes as \u00XX. */
static void
json_str(const unsigned char *s, size_t len)
{
	putchar('"');
	for (size_t i = 0; i < len; i++) {
		unsigned char c = s[i];
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static size_t
parse_hex(const char *s, unsigned char *out, size_t max)
{
	size_t n = strlen(s);

	if (n % 2 != 0 || n / 2 > max || n == 0)
		die("IDHEX must be 1..64 bytes of hex", CKR_OK);
	if (cf_hex_decode(s, out, n / 2) != 0)
		die("IDHEX is not hex", CKR_OK);
	return n / 2;
}

static void
read_pin(const char *path, char *pin, size_t pinsz)
{
	FILE *fp = fopen(path, "re");
	size_t n;

	if (fp == NULL)
		die("cannot open the PIN file", CKR_OK);
	n = fread(pin, 1, pinsz - 1, fp);
	fclose(fp);
	while (n > 0 && (pin[n - 1] == '\n' || pin[n - 1] == '\r'))
		n--;
	pin[n] = '\0';
	if (n == 0)
		die("empty PIN file", CKR_OK);
}

static CK_SLOT_ID
find_slot(const char *label)
{
	CK_SLOT_ID slots[64];
	CK_ULONG n = 64;
	CK_RV rv;
	size_t len = strlen(label);
	int found = 0;
	CK_SLOT_ID slot = 0;

	if ((rv = f->C_GetSlotList(CK_TRUE, slots, &n)) != CKR_OK)
		die("C_GetSlotList", rv);
	for (CK_ULONG i = 0; i < n; i++) {
		CK_TOKEN_INFO ti;
		size_t l = sizeof(ti.label);
		if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
			continue;
		while (l > 0 && ti.label[l - 1] == ' ')
			l--;
		if (l == len && memcmp(ti.label, label, len) == 0) {
			if (found++)
				die("several tokens carry that label", CKR_OK);
			slot = slots[i];
		}
	}
	if (!found)
		die("no token with that label", CKR_OK);
	return slot;
}

/* One attribute's value, malloc'd (NULL, *len 0 if the object has none). */
static unsigned char *
get_attr(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type, CK_ULONG *len)
{
	CK_ATTRIBUTE a = { type, NULL, 0 };
	unsigned char *v;

	*len = 0;
	if (f->C_GetAttributeValue(s, o, &a, 1) != CKR_OK ||
	    a.ulValueLen == (CK_ULONG)-1)
		return NULL;
	if ((v = malloc(a.ulValueLen + 1)) == NULL)
		die("out of memory", CKR_OK);
	a.pValue = v;
	if (f->C_GetAttributeValue(s, o, &a, 1) != CKR_OK) {
		free(v);
		return NULL;
	}
	*len = a.ulValueLen;
	return v;
}

/* A known constant by its name, another as "0x..": a JSON string. */
static void
json_name(const char *name, unsigned long v)
{
	if (name != NULL)
		printf("\"%s\"", name);
	else
		printf("\"0x%lx\"", v);
}

static void
print_object(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
	CK_ULONG len;
	unsigned char *v;

	printf("{\"class\":");
	v = get_attr(s, o, CKA_CLASS, &len);
	if (v != NULL && len == sizeof(CK_OBJECT_CLASS)) {
		CK_OBJECT_CLASS c;
		memcpy(&c, v, sizeof(c));
		json_name(class_name(c), c);
	} else {
		printf("null");
	}
	free(v);
	printf(",\"label\":");
	v = get_attr(s, o, CKA_LABEL, &len);
	if (v != NULL)
		json_str(v, len);
	else
		printf("null");
	free(v);
	printf(",\"id\":");
	v = get_attr(s, o, CKA_ID, &len);
	if (v != NULL) {
		putchar('"');
		for (CK_ULONG i = 0; i < len; i++)
			printf("%02x", v[i]);
		putchar('"');
	} else {
		printf("null");
	}
	free(v);
	printf(",\"key_type\":");
	v = get_attr(s, o, CKA_KEY_TYPE, &len);
	if (v != NULL && len == sizeof(CK_KEY_TYPE)) {
		CK_KEY_TYPE t;
		memcpy(&t, v, sizeof(t));
		json_name(key_type_name(t), t);
	} else {
		printf("null");
	}
	free(v);
	printf(",\"token\":");
	v = get_attr(s, o, CKA_TOKEN, &len);
	if (v != NULL && len == sizeof(CK_BBOOL))
		printf("%s", v[0] ? "true" : "false");
	else
		printf("null");
	free(v);
	printf("}\n");
}

/* Every object matching tpl (n attributes), up to max handles. */
static CK_ULONG
find(CK_SESSION_HANDLE s, CK_ATTRIBUTE *tpl, CK_ULONG n, CK_OBJECT_HANDLE **out)
{
	CK_ULONG cap = 256, count = 0, got;
	CK_OBJECT_HANDLE *h = malloc(cap * sizeof(*h));
	CK_RV rv;

	if (h == NULL)
		die("out of memory", CKR_OK);
	if ((rv = f->C_FindObjectsInit(s, tpl, n)) != CKR_OK)
		die("C_FindObjectsInit", rv);
	for (;;) {
		if (count == cap) {
			cap *= 2;
			if ((h = realloc(h, cap * sizeof(*h))) == NULL)
				die("out of memory", CKR_OK);
		}
		if ((rv = f->C_FindObjects(s, h + count, cap - count, &got)) != CKR_OK)
			die("C_FindObjects", rv);
		if (got == 0)
			break;
		count += got;
	}
	f->C_FindObjectsFinal(s);
	*out = h;
	return count;
}

static CK_OBJECT_CLASS
class_of(const char *name)
{
	static const CK_OBJECT_CLASS all[] = { CKO_DATA, CKO_CERTIFICATE, CKO_PUBLIC_KEY,
					       CKO_PRIVATE_KEY, CKO_SECRET_KEY };
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		if (strcmp(class_name(all[i]), name) == 0)
			return all[i];
	die("unknown class (data, certificate, public, private, secret)", CKR_OK);
	return 0;
}

static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

static void
generate_secret(CK_SESSION_HANDLE s, const char *label, const char *idhex)
{
	unsigned char id[64];
	size_t idlen = parse_hex(idhex, id, sizeof(id));
	CK_MECHANISM m = { CKM_GENERIC_SECRET_KEY_GEN, NULL, 0 };
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
	CK_ULONG vlen = 32;
	CK_ATTRIBUTE t[] = {
		{ CKA_CLASS, &cls, sizeof(cls) },
		{ CKA_KEY_TYPE, &kt, sizeof(kt) },
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_SENSITIVE, &yes, sizeof(yes) },
		{ CKA_EXTRACTABLE, &no, sizeof(no) },
		{ CKA_SIGN, &yes, sizeof(yes) },
		{ CKA_VERIFY, &yes, sizeof(yes) },
		{ CKA_VALUE_LEN, &vlen, sizeof(vlen) },
		{ CKA_LABEL, (void *)label, strlen(label) },
		{ CKA_ID, id, idlen },
	};
	CK_OBJECT_HANDLE h;
	CK_RV rv;

	if ((rv = f->C_GenerateKey(s, &m, t, sizeof(t) / sizeof(t[0]), &h)) != CKR_OK)
		die("C_GenerateKey", rv);
}

static void
generate_ec_pair(CK_SESSION_HANDLE s, const char *label, const char *idhex)
{
	/* DER OID 1.2.840.10045.3.1.7 (P-256) */
	static CK_BYTE p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
	unsigned char id[64];
	size_t idlen = parse_hex(idhex, id, sizeof(id));
	CK_MECHANISM m = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
	CK_ATTRIBUTE pub[] = {
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_VERIFY, &yes, sizeof(yes) },
		{ CKA_EC_PARAMS, p256, sizeof(p256) },
		{ CKA_LABEL, (void *)label, strlen(label) },
		{ CKA_ID, id, idlen },
	};
	CK_ATTRIBUTE priv[] = {
		{ CKA_TOKEN, &yes, sizeof(yes) },
		{ CKA_PRIVATE, &yes, sizeof(yes) },
		{ CKA_SENSITIVE, &yes, sizeof(yes) },
		{ CKA_EXTRACTABLE, &no, sizeof(no) },
		{ CKA_SIGN, &yes, sizeof(yes) },
		{ CKA_LABEL, (void *)label, strlen(label) },
		{ CKA_ID, id, idlen },
	};
	CK_OBJECT_HANDLE hpub, hpriv;
	CK_RV rv;

	if ((rv = f->C_GenerateKeyPair(s, &m, pub, sizeof(pub) / sizeof(pub[0]), priv,
				       sizeof(priv) / sizeof(priv[0]), &hpub, &hpriv)) != CKR_OK)
		die("C_GenerateKeyPair", rv);
}

int
main(int argc, char **argv)
{
	const char *module = NULL, *token = NULL, *pin_file = NULL;
	const char *action = NULL, *a1 = NULL, *a2 = NULL, *a3 = NULL;
	CK_C_GetFunctionList get_list;
	CK_SESSION_HANDLE s;
	CK_SLOT_ID slot;
	char pin[256];
	void *dl;
	CK_RV rv;

	for (int i = 1; i < argc; i++) {
		const char *o = argv[i];
		if (strcmp(o, "--module") == 0 && i + 1 < argc) {
			module = argv[++i];
		} else if (strcmp(o, "--token-label") == 0 && i + 1 < argc) {
			token = argv[++i];
		} else if (strcmp(o, "--pin-file") == 0 && i + 1 < argc) {
			pin_file = argv[++i];
		} else if ((strcmp(o, "--generate-secret") == 0 ||
			    strcmp(o, "--generate-ec-pair") == 0) && i + 2 < argc && !action) {
			action = o;
			a1 = argv[++i];
			a2 = argv[++i];
		} else if (strcmp(o, "--destroy") == 0 && i + 1 < argc && !action) {
			action = o;
			a1 = argv[++i];
			if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0)
				a2 = argv[++i];
			if (a2 && i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0)
				a3 = argv[++i];
		} else {
			usage();
		}
	}
	if (module == NULL || token == NULL || pin_file == NULL)
		usage();
	read_pin(pin_file, pin, sizeof(pin));
	if ((dl = dlopen(module, RTLD_NOW | RTLD_LOCAL)) == NULL) {
		fprintf(stderr, "%s: dlopen %s: %s\n", progname, module, dlerror());
		return 1;
	}
	*(void **)&get_list = dlsym(dl, "C_GetFunctionList");
	if (get_list == NULL)
		die("the module has no C_GetFunctionList", CKR_OK);
	if ((rv = get_list(&f)) != CKR_OK)
		die("C_GetFunctionList", rv);
	if ((rv = f->C_Initialize(NULL)) != CKR_OK)
		die("C_Initialize", rv);
	slot = find_slot(token);
	if ((rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
				   &s)) != CKR_OK)
		die("C_OpenSession", rv);
	rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
	memset(pin, 0, sizeof(pin));
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
		die("C_Login", rv);

	if (action == NULL) {
		CK_OBJECT_HANDLE *h;
		CK_ULONG n = find(s, NULL, 0, &h);
		for (CK_ULONG i = 0; i < n; i++)
			print_object(s, h[i]);
		free(h);
	} else if (strcmp(action, "--generate-secret") == 0) {
		generate_secret(s, a1, a2);
	} else if (strcmp(action, "--generate-ec-pair") == 0) {
		generate_ec_pair(s, a1, a2);
	} else {
		CK_OBJECT_CLASS cls = a2 ? class_of(a2) : 0;
		unsigned char id[64];
		size_t idlen = a3 ? parse_hex(a3, id, sizeof(id)) : 0;
		CK_ATTRIBUTE t[] = { { CKA_LABEL, (void *)a1, strlen(a1) },
				     { CKA_CLASS, &cls, sizeof(cls) },
				     { CKA_ID, id, idlen } };
		CK_OBJECT_HANDLE *h;
		CK_ULONG n = find(s, t, a3 ? 3 : a2 ? 2 : 1, &h), done = 0;
		for (CK_ULONG i = 0; i < n; i++) {
			if ((rv = f->C_DestroyObject(s, h[i])) != CKR_OK)
				die("C_DestroyObject", rv);
			done++;
		}
		free(h);
		printf("%lu\n", (unsigned long)done);
	}
	if (fflush(stdout) != 0 || ferror(stdout))
		die("write error on standard output", CKR_OK);
	f->C_Logout(s);
	f->C_CloseSession(s);
	f->C_Finalize(NULL);
	/* No dlclose: SoftHSM's atexit handlers may still refer to the module. */
	return 0;
}
