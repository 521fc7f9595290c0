/*
 * p11_fault.h — a fault-injecting PKCS#11 module for tests (p11_fault.c).
 *
 * The module forwards every call to a real one ($COFFER_FAULT_MODULE, else
 * $COFFER_TEST_MODULE, else the configured SoftHSM2 module) and makes chosen
 * functions fail with a chosen CK_RV: the token underneath is real, only its
 * answers are changed. A test points cf_p11_config.module_path at the
 * module's file, dlopens the same file (which shares the instance) and
 * controls it through p11_fault_ops(). The controls are thread-safe.
 */
#ifndef COFFER_P11_FAULT_H
#define COFFER_P11_FAULT_H

#define CRYPTOKI_COMPAT
#include <p11-kit/pkcs11.h>

/* The functions the module wraps: every one Coffer's layer calls. */
#define P11_FAULT_FUNCS(X)                                                    \
	X(C_Initialize) X(C_Finalize) X(C_GetSlotList) X(C_GetTokenInfo)      \
	X(C_GetMechanismList) X(C_GetMechanismInfo) X(C_OpenSession)          \
	X(C_CloseSession) X(C_GetSessionInfo) X(C_Login) X(C_CreateObject)    \
	X(C_CopyObject) X(C_DestroyObject) X(C_GetAttributeValue)             \
	X(C_FindObjectsInit) X(C_FindObjects) X(C_FindObjectsFinal)           \
	X(C_EncryptInit) X(C_Encrypt) X(C_DecryptInit) X(C_Decrypt)           \
	X(C_SignInit) X(C_Sign) X(C_VerifyInit) X(C_Verify) X(C_GenerateKey)  \
	X(C_GenerateKeyPair) X(C_DeriveKey) X(C_GenerateRandom)

#define P11_FAULT_ENUM(fn) P11F_##fn,
enum p11_fault_fn { P11_FAULT_FUNCS(P11_FAULT_ENUM) P11F__COUNT };
#undef P11_FAULT_ENUM

/* What to do to the calls of one function. */
struct p11_fault_rule {
	CK_RV rv;                /* the answer instead of the module's */
	unsigned skip;           /* matching calls left alone first */
	int times;               /* matching calls that then fail; -1: until cleared */
	int through;             /* the failing calls still reach the module (a write
				    that happened while the caller is told it failed) */
	CK_OBJECT_HANDLE object; /* only calls on this object (C_DestroyObject,
				    C_CopyObject, C_GetAttributeValue) or about
				    this mechanism (C_GetMechanismInfo: the
				    layer then leaves it out); 0: any */
	/* Called (without the module's lock) in the calling thread each time
	 * the rule answers a call, before the answer: a test holds a thread
	 * there to order it against another. NULL: none. */
	void (*hook)(void *arg);
	void *hook_arg;
};

struct p11_fault_ops {
	/* Replace fn's rule (times = 0 clears it). */
	void (*set)(enum p11_fault_fn fn, const struct p11_fault_rule *rule);
	/* The device is gone: every wrapped function but C_Finalize answers rv
	 * without reaching the module (CKR_OK: it is back). */
	void (*gone)(CK_RV rv);
	/* Clear every rule and the gone state (the counters stay). */
	void (*clear)(void);
	/* Calls of fn made to the module so far, and how many of them were
	 * answered by a rule or the gone state. */
	unsigned long (*calls)(enum p11_fault_fn fn);
	unsigned long (*injected)(enum p11_fault_fn fn);
};

typedef const struct p11_fault_ops *(*p11_fault_ops_fn)(void);
/* The module's exported entry point, found with dlsym. */
const struct p11_fault_ops *p11_fault_ops(void);

#endif
