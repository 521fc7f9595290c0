/*
 * p11_internal.h — shared internals of the PKCS#11 layer. Not installed,
 * not included outside pkcs11/.
 *
 * Lock order (never taken in the other direction):
 *   p->life (read) -> session pool -> k->mu -> p->write_mu -> flock(p->lock_fd)
 * p->life is taken for writing only by recovery, which then owns everything.
 * The flock is taken only while holding write_mu: one thread of the process
 * at a time holds it, so a shared lock is never silently converted by another
 * thread's request on the same open file description. Exceptions, with no
 * other thread able to hold it: cf_p11_open, and recovery (p->life held for
 * writing) around initialising, token selection and login.
 */
#ifndef COFFER_P11_INTERNAL_H
#define COFFER_P11_INTERNAL_H

#define CRYPTOKI_COMPAT
#include <p11-kit/pkcs11.h>

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "cf_p11.h"

/* Layer-private return values carried in a CK_RV. */
#define P11_RV_POOL_TIMEOUT (CKR_VENDOR_DEFINED | 0x434f0001UL)
#define P11_RV_NOT_FOUND    (CKR_VENDOR_DEFINED | 0x434f0002UL)
#define P11_RV_AMBIGUOUS    (CKR_VENDOR_DEFINED | 0x434f0003UL)
/* flock on the lock file failed; the thread's error detail names the file. */
#define P11_RV_LOCK         (CKR_VENDOR_DEFINED | 0x434f0004UL)
/* GCM decryption refused (SoftHSM reports a failed tag check as
 * CKR_GENERAL_ERROR, which must not pass for a lost device). */
#define P11_RV_DECRYPT_FAILED (CKR_VENDOR_DEFINED | 0x434f0006UL)
/* The token answered with output of a length it should not have. */
#define P11_RV_BAD_OUTPUT   (CKR_VENDOR_DEFINED | 0x434f0007UL)
/* The token failed and recovering did not bring it back (p->reinit is set);
 * the thread's error detail says why. */
#define P11_RV_TOKEN_LOST   (CKR_VENDOR_DEFINED | 0x434f0005UL)
/* A token write was interrupted by a token failure and may have happened in
 * part; the layer cannot tell which objects are its own (a key without a
 * recorded id). */
#define P11_RV_WRITE_UNKNOWN (CKR_VENDOR_DEFINED | 0x434f0008UL)
/* A handle retired (cf_p11_key_retire): its version serves no more. */
#define P11_RV_RETIRED      (CKR_VENDOR_DEFINED | 0x434f0009UL)

/* Modules reject NULL data pointers even for zero lengths. */
#define P11_DATA(ptr) ((CK_BYTE_PTR)((ptr) != NULL ? (const void *)(ptr) : (const void *)""))

struct p11_file_id {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime, ctime;
};

struct p11_pooled {
	CK_SESSION_HANDLE h;
	uint64_t epoch;
};

/* What the token can do with each Coffer key type (p11_caps.c). */
struct p11_type_cap {
	int generate, import, use;  /* use: an existing key of the type works */
	char why_generate[160];     /* names the missing mechanism, or "" */
	char why_import[160];
};

/* The token's mechanisms and what they allow: read once, at open, and kept
 * through every recovery, the full one too (p11_recover: C_Finalize,
 * C_Initialize, the slot found again). A recovery reconnects to the token
 * [token] uri names, whose mechanisms are those of its module and model:
 * they do not change under a running daemon. A token of another kind put
 * behind the same URI is a restart, as a new module is (the keys the
 * daemon knows were made by the old one). Constant, the caps need no lock
 * and their readers (cf_p11_caps_get, cf_p11_can_create) take none; a
 * re-read would have to hold them off while the array of mechanisms is
 * freed and rebuilt. What is learned at run time (pkcs1_refused,
 * session_copies) is atomic. */
struct p11_caps {
	CK_TOKEN_INFO token;
	CK_MECHANISM_TYPE *mechs;   /* those whose C_GetMechanismInfo answered */
	CK_MECHANISM_INFO *infos;
	CK_ULONG n_mechs;
	char secret_why[160];       /* why no secret key can be made, or "" */
	struct p11_type_cap type[CF_KEY__COUNT];
};

struct cf_p11 {
	void *dl;
	CK_FUNCTION_LIST *f;
	int we_initialized;
	char *module_path;
	char *token_uri;
	char *pin_file;
	int session_copies;         /* atomic: cleared when C_CopyObject is not supported */
	CK_SLOT_ID slot;
	struct p11_caps caps;       /* read at open; constant afterwards, recoveries
				       included (see struct p11_caps) */
	/* atomic: the CK_RV with which the token refused an RSA PKCS#1 v1.5
	 * signature although it lists CKM_RSA_PKCS for signing (tpm2-pkcs11
	 * makes one as a raw RSA decryption, which a sign-only key does not
	 * allow); learned at the first refusal, 0 until then. */
	unsigned long pkcs1_refused;
	int token_sets_crypt;       /* atomic: key-pair templates leave CKA_ENCRYPT and
				       CKA_DECRYPT to the module (p11_keys.c) */
	CK_SESSION_HANDLE anchor;   /* holds the login and owns session copies */

	/* Readers: every operation. Writer: recovery. Writer-preferring. */
	pthread_rwlock_t life;
	uint64_t epoch;             /* bumped whenever sessions/objects were reset */
	int reinit;                 /* atomic: the next recovery finalizes and initialises
				       the module (a full one failed, or a lighter one
				       did not help) */
	/* After a failed recovery, calls fail at once until retry_at (doubling
	 * backoff): a token that is gone is not hammered with re-initialisations
	 * and logins. Written under life (write side). */
	int64_t retry_at_ms;        /* CLOCK_MONOTONIC */
	unsigned backoff_ms;        /* the last wait; 0 after a success */
	char lost_why[320];         /* why the last recovery failed */
	/* The PIN file the token refused, as it was then: logging in again
	 * with the same PIN only counts towards the token's lockout (a TPM's
	 * dictionary-attack protection), so it is not tried until it changes. */
	int pin_refused;
	struct p11_file_id refused_pin;

	pthread_mutex_t write_mu;   /* serialises token-object writes, token searches and anchor use */
	char *lock_path;            /* cross-process token lock file, or NULL */
	int lock_fd;                /* open on lock_path, or -1 */

	pthread_mutex_t pool_mu;
	pthread_cond_t pool_cv;
	struct p11_pooled *pool;    /* free sessions */
	unsigned pool_free;
	unsigned pool_open;         /* free + in use */
	unsigned pool_size;
	unsigned pool_timeout_ms;

	struct cf_p11_stats stats;  /* relaxed atomic counters (cf_p11_stats) */
};

struct cf_p11_key {
	cf_p11 *p;
	char name[CF_KEY_NAME_MAX + 1];
	uint32_t version;
	enum cf_key_type type;
	char label[CF_KEY_NAME_MAX + 32];
	unsigned char id[16];
	int match_id;               /* lookups also match CKA_ID (a recorded id) */

	pthread_mutex_t mu;         /* guards the handle cache below */
	uint64_t epoch;             /* epoch the handles were resolved in; 0 = stale */
	uint64_t resolved;          /* bumped by each search that filled the cache */
	CK_OBJECT_HANDLE priv;      /* private or secret token object */
	CK_OBJECT_HANDLE pub;       /* public token object (asymmetric only) */
	CK_OBJECT_HANDLE use_priv;  /* session copy, or priv */
	CK_OBJECT_HANDLE use_pub;   /* session copy, or pub */
	int copied;                 /* use_* are session copies to destroy */
	uint64_t copy_epoch;
	int retired;                /* cf_p11_key_retire: never resolved again */
};

/* Handles an operation works with, resolved for the current epoch. */
struct p11_handles {
	CK_OBJECT_HANDLE priv;
	CK_OBJECT_HANDLE pub;
	uint64_t resolved;          /* the key's cache these came from */
};

/* ---- p11_errors.c ---- */
/* Map a CK_RV to a Coffer status and set a detail "<what>: <text> (CKR_...)". */
int p11_status(CK_RV rv, const char *what);
const char *p11_rv_name(CK_RV rv);
#define P11_PIN_MAX 256       /* bytes of a PIN file, its newline included */

/* The slots with a token: *out (n in *n), freed by the caller; asked again
 * while slots appear between the size query and the listing. */
int p11_token_slots(CK_FUNCTION_LIST_PTR f, CK_SLOT_ID **out, CK_ULONG *n);
/* dlopen the module at path and get its function list (*dl set even on a
 * later failure, for the caller to dlclose). */
int p11_load(const char *path, void **dl, CK_FUNCTION_LIST_PTR *f);
/* 1 if the layer should recover and retry once after this CK_RV. */
int p11_rv_recoverable(CK_RV rv);
/* 1 if a session that returned this CK_RV is certainly idle again. */
int p11_rv_clean(CK_RV rv);
/* 1 if the CK_RV says the object handle went stale. */
int p11_rv_stale_object(CK_RV rv);
/* 1 if the token, its module or the layer failed (counted as a token
 * error), 0 if it refused what it was given: a signature or ciphertext
 * that does not check, bad data, an absent object, a busy pool. */
int p11_rv_fault(CK_RV rv);
/* 1 if the CK_RV may mean the device behind the module went away and came
 * back (tpm2-pkcs11 after a TPM restart: CKR_GENERAL_ERROR until the module
 * is finalized and initialised again). */
int p11_rv_device_lost(CK_RV rv);

/* ---- p11_module.c ---- */
CK_RV p11_pool_acquire(cf_p11 *p, CK_SESSION_HANDLE *s, uint64_t *epoch);
void p11_pool_release(cf_p11 *p, CK_SESSION_HANDLE s, uint64_t epoch);
/* Recover from `rv` seen during epoch `seen`; no-op if someone already did. */
int p11_recover(cf_p11 *p, CK_RV rv, uint64_t seen);
/* Why the token refuses PKCS#1 v1.5 signatures (it answered rv), into buf. */
void p11_pkcs1_why(CK_RV rv, char *buf, size_t len);

/* An operation body: runs with a pooled session and the key's handles. */
typedef CK_RV (*p11_op_fn)(cf_p11 *p, CK_SESSION_HANDLE s, const struct p11_handles *h,
			   void *arg);
/* Run `fn` (key may be NULL: then h is zeroed), with one recovery + retry.
 * Returns the final CK_RV; map it with p11_status(). */
CK_RV p11_run(cf_p11 *p, cf_p11_key *k, p11_op_fn fn, void *arg);
/* The cross-process token lock, taken while holding p->write_mu: LOCK_EX
 * around token-object writes, LOCK_SH around searches. No-ops without a
 * lock file. P11_RV_LOCK (detail set) if flock fails. */
CK_RV p11_token_lock(cf_p11 *p, int how);
void p11_token_unlock(cf_p11 *p);

/* ---- p11_caps.c ---- */
/* Read token info and mechanisms and map them to key types (after login). */
int p11_caps_read(cf_p11 *p);
void p11_caps_free(struct p11_caps *c);

/* ---- p11_keys.c ---- */
CK_RV p11_key_resolve(cf_p11_key *k, CK_SESSION_HANDLE s, uint64_t epoch,
		      struct p11_handles *h);
/* The handles h (from p11_key_resolve) are stale: search again, unless
 * another thread has already refilled the cache (its copies may be in use). */
void p11_key_invalidate(cf_p11_key *k, const struct p11_handles *h);
/* Find objects of `cls` with `label`; P11_RV_NOT_FOUND / P11_RV_AMBIGUOUS. */
CK_RV p11_find_one(cf_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label,
		   const unsigned char *id, CK_OBJECT_HANDLE *out);
/* Read one variable-length attribute into a new malloc'ed buffer. */
CK_RV p11_get_attr(cf_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
		   CK_ATTRIBUTE_TYPE type, unsigned char **out, unsigned long *len);

/* ---- p11_pubkey.c ---- */
/* EC_PARAMS DER of a curve type (P-256, P-384, Ed25519). */
const unsigned char *p11_ec_params(enum cf_key_type t, size_t *len);
/* CF_OK if `pt` is a valid uncompressed point on the curve of `t`. */
int p11_ec_point_check(enum cf_key_type t, const uint8_t *pt, size_t len);

#endif
