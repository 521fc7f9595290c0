/*
 * p11_fault.c — a PKCS#11 module for tests that forwards to a real one and
 * fails chosen calls (p11_fault.h). SoftHSM2 never fails on its own: this is
 * how the layer's recovery from a token that fails mid-write, loses its
 * device or refuses the PIN is provoked for real.
 */
#include "p11_fault.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef COFFER_SOFTHSM_MODULE
#define COFFER_SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#endif

static pthread_once_t pf_once = PTHREAD_ONCE_INIT;
static CK_FUNCTION_LIST *pf_real; /* the module underneath, or NULL */
static CK_FUNCTION_LIST pf_list;  /* its list with the wrapped functions replaced */

static pthread_mutex_t pf_mu = PTHREAD_MUTEX_INITIALIZER;
static struct p11_fault_rule pf_rule[P11F__COUNT];
static CK_RV pf_gone_rv;
static unsigned long pf_calls[P11F__COUNT], pf_injected[P11F__COUNT];

enum pf_act { PF_PASS, PF_FAIL, PF_THROUGH };

/* Decide one call of fn on `object`; *rv is the answer unless PF_PASS. */
static enum pf_act
pf_enter(enum p11_fault_fn fn, CK_OBJECT_HANDLE object, CK_RV *rv)
{
	struct p11_fault_rule *r = &pf_rule[fn];
	enum pf_act a = PF_PASS;
	void (*hook)(void *) = NULL;
	void *hook_arg = NULL;

	pthread_mutex_lock(&pf_mu);
	pf_calls[fn]++;
	if (pf_gone_rv != CKR_OK && fn != P11F_C_Finalize) {
		/* The library can still let go of a device that is gone. */
		*rv = pf_gone_rv;
		a = PF_FAIL;
	} else if (r->times != 0 && (r->object == CK_INVALID_HANDLE || r->object == object)) {
		if (r->skip > 0) {
			r->skip--;
		} else {
			*rv = r->rv;
			a = r->through ? PF_THROUGH : PF_FAIL;
			if (r->times > 0)
				r->times--;
			hook = r->hook;
			hook_arg = r->hook_arg;
		}
	}
	if (a != PF_PASS)
		pf_injected[fn]++;
	pthread_mutex_unlock(&pf_mu);
	if (hook != NULL)
		hook(hook_arg);
	return a;
}

/* A wrapper: the real call unless a fault answers instead of it. */
#define PF_WRAP(fn, object, params, args)                                     \
	static CK_RV pf_##fn params                                           \
	{                                                                     \
		CK_RV pf_rv = CKR_OK, pf_got;                                 \
		enum pf_act pf_a = pf_enter(P11F_##fn, object, &pf_rv);       \
		if (pf_a == PF_FAIL)                                          \
			return pf_rv;                                         \
		pf_got = pf_real->fn args;                                    \
		return pf_a == PF_THROUGH ? pf_rv : pf_got;                   \
	}

PF_WRAP(C_Initialize, 0, (void *a), (a))
PF_WRAP(C_Finalize, 0, (void *a), (a))
PF_WRAP(C_GetSlotList, 0, (CK_BBOOL present, CK_SLOT_ID_PTR l, CK_ULONG_PTR n), (present, l, n))
PF_WRAP(C_GetTokenInfo, 0, (CK_SLOT_ID slot, CK_TOKEN_INFO_PTR i), (slot, i))
PF_WRAP(C_GetMechanismList, 0, (CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR l, CK_ULONG_PTR n),
	(slot, l, n))
PF_WRAP(C_GetMechanismInfo, m, (CK_SLOT_ID slot, CK_MECHANISM_TYPE m, CK_MECHANISM_INFO_PTR i),
	(slot, m, i))
PF_WRAP(C_OpenSession, 0,
	(CK_SLOT_ID slot, CK_FLAGS fl, CK_VOID_PTR app, CK_NOTIFY cb, CK_SESSION_HANDLE_PTR s),
	(slot, fl, app, cb, s))
PF_WRAP(C_CloseSession, 0, (CK_SESSION_HANDLE s), (s))
PF_WRAP(C_GetSessionInfo, 0, (CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR i), (s, i))
PF_WRAP(C_Login, 0, (CK_SESSION_HANDLE s, CK_USER_TYPE u, CK_UTF8CHAR_PTR pin, CK_ULONG len),
	(s, u, pin, len))
PF_WRAP(C_CreateObject, 0,
	(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o),
	(s, t, n, o))
PF_WRAP(C_CopyObject, o,
	(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n,
	 CK_OBJECT_HANDLE_PTR to),
	(s, o, t, n, to))
PF_WRAP(C_DestroyObject, o, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o), (s, o))
PF_WRAP(C_GetAttributeValue, o,
	(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, o, t, n))
PF_WRAP(C_FindObjectsInit, 0, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, t, n))
PF_WRAP(C_FindObjects, 0,
	(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR o, CK_ULONG max, CK_ULONG_PTR n),
	(s, o, max, n))
PF_WRAP(C_FindObjectsFinal, 0, (CK_SESSION_HANDLE s), (s))
PF_WRAP(C_EncryptInit, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k),
	(s, m, k))
PF_WRAP(C_Encrypt, 0,
	(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out,
	 CK_ULONG_PTR outlen),
	(s, in, inlen, out, outlen))
PF_WRAP(C_DecryptInit, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k),
	(s, m, k))
PF_WRAP(C_Decrypt, 0,
	(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out,
	 CK_ULONG_PTR outlen),
	(s, in, inlen, out, outlen))
PF_WRAP(C_SignInit, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k),
	(s, m, k))
PF_WRAP(C_Sign, 0,
	(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR sig, CK_ULONG_PTR siglen),
	(s, in, inlen, sig, siglen))
PF_WRAP(C_VerifyInit, 0, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k),
	(s, m, k))
PF_WRAP(C_Verify, 0,
	(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR sig, CK_ULONG siglen),
	(s, in, inlen, sig, siglen))
PF_WRAP(C_GenerateKey, 0,
	(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n,
	 CK_OBJECT_HANDLE_PTR k),
	(s, m, t, n, k))
PF_WRAP(C_GenerateKeyPair, 0,
	(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pubt, CK_ULONG npub,
	 CK_ATTRIBUTE_PTR privt, CK_ULONG npriv, CK_OBJECT_HANDLE_PTR pub,
	 CK_OBJECT_HANDLE_PTR priv),
	(s, m, pubt, npub, privt, npriv, pub, priv))
PF_WRAP(C_DeriveKey, 0,
	(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE base, CK_ATTRIBUTE_PTR t,
	 CK_ULONG n, CK_OBJECT_HANDLE_PTR k),
	(s, m, base, t, n, k))
PF_WRAP(C_GenerateRandom, 0, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG len),
	(s, out, len))

static void
pf_load(void)
{
	const char *path = getenv("COFFER_FAULT_MODULE");
	CK_C_GetFunctionList getfl;
	CK_FUNCTION_LIST *real = NULL;
	void *dl;

	if (path == NULL || path[0] == '\0')
		path = getenv("COFFER_TEST_MODULE");
	if (path == NULL || path[0] == '\0')
		path = COFFER_SOFTHSM_MODULE;
	/* Kept loaded for the life of the process, as the real module is
	 * shared with the test's own raw access to it. */
	if ((dl = dlopen(path, RTLD_NOW | RTLD_LOCAL)) == NULL) {
		fprintf(stderr, "p11_fault: cannot load %s: %s\n", path, dlerror());
		return;
	}
	getfl = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
	if (getfl == NULL || getfl(&real) != CKR_OK || real == NULL) {
		fprintf(stderr, "p11_fault: %s is not a PKCS#11 module\n", path);
		return;
	}
	pf_list = *real;
#define PF_SET(fn) pf_list.fn = pf_##fn;
	P11_FAULT_FUNCS(PF_SET)
#undef PF_SET
	pf_list.C_GetFunctionList = C_GetFunctionList;
	pf_real = real;
}

CK_RV
C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
	pthread_once(&pf_once, pf_load);
	if (pf_real == NULL)
		return CKR_GENERAL_ERROR;
	*out = &pf_list;
	return CKR_OK;
}

static void
pf_set(enum p11_fault_fn fn, const struct p11_fault_rule *rule)
{
	pthread_mutex_lock(&pf_mu);
	pf_rule[fn] = *rule;
	pthread_mutex_unlock(&pf_mu);
}

static void
pf_gone(CK_RV rv)
{
	pthread_mutex_lock(&pf_mu);
	pf_gone_rv = rv;
	pthread_mutex_unlock(&pf_mu);
}

static void
pf_clear(void)
{
	pthread_mutex_lock(&pf_mu);
	for (int i = 0; i < P11F__COUNT; i++)
		pf_rule[i] = (struct p11_fault_rule){ .times = 0 };
	pf_gone_rv = CKR_OK;
	pthread_mutex_unlock(&pf_mu);
}

static unsigned long
pf_count(const unsigned long *counter, enum p11_fault_fn fn)
{
	unsigned long n;

	pthread_mutex_lock(&pf_mu);
	n = counter[fn];
	pthread_mutex_unlock(&pf_mu);
	return n;
}

static unsigned long
pf_calls_of(enum p11_fault_fn fn)
{
	return pf_count(pf_calls, fn);
}

static unsigned long
pf_injected_of(enum p11_fault_fn fn)
{
	return pf_count(pf_injected, fn);
}

const struct p11_fault_ops *
p11_fault_ops(void)
{
	static const struct p11_fault_ops ops = {
		pf_set, pf_gone, pf_clear, pf_calls_of, pf_injected_of,
	};

	return &ops;
}
