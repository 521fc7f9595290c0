/*
 * cf_p11.h — Coffer's PKCS#11 layer: the only code that calls Cryptoki.
 *
 * A cf_p11 is one loaded module, one selected token, one login and a bounded
 * pool of sessions. A cf_p11_key is one version of one named key in that
 * token. Every function returns CF_OK or a negative CF_E_* status and leaves a
 * detail in cf_error_detail() on failure; outputs are written only on success.
 *
 * Thread safety: a cf_p11 and its keys may be used from any number of threads
 * at once. Token-object writes (generate, import, unwrap, destroy) are
 * serialised internally (SoftHSM 2.6.1 corrupts its token otherwise).
 * Every call may block: on the token, on the session pool (bounded by
 * pool_timeout_ms, then CF_E_BUSY) and on the write lock.
 *
 * Several processes on one token (lock_file): every token-object write
 * (generate, import, destroy) also holds flock(LOCK_EX) on the lock file, and
 * every search (lookup, listing, the handle resolution before a key's first
 * use) holds LOCK_SH: without it SoftHSM 2.6.1 file tokens now and then hide
 * an object another process has just made from a search. A handle whose
 * object another process destroyed or re-made is searched again once (see
 * Recovery). Session copies (below) are made at resolution: a copy keeps
 * working after another process destroys its token object, until the next
 * resolution (a new handle, or a recovery).
 *
 * Recovery: when the token reports a lost session, a lost login, an invalid
 * object handle, a removed device or an un-initialised library, the layer
 * re-initialises / reopens / logs in again as needed and retries the
 * operation once. An invalid object handle (the object was destroyed or
 * re-made, e.g. by another process) only costs a fresh search and one retry.
 * CKR_GENERAL_ERROR or CKR_DEVICE_ERROR may mean the device went away: the
 * layer then finalizes the module (if it initialised it), initialises it
 * again, finds the token, logs in and retries once (tpm2-pkcs11 stays broken
 * after its TPM restarts until then). When a recovery fails, or does not
 * help, the call fails with CF_E_UNAVAILABLE ("the token is not answering")
 * and the next call's recovery is the full one.
 *
 * Objects: each key version is stored with CKA_LABEL "coffer/<name>/<version>"
 * and CKA_ID = the first 16 bytes of SHA-256 of that label, on every object of
 * the version (private + public, or the secret). Private and secret objects
 * are CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE = TRUE and CKA_EXTRACTABLE = FALSE:
 * key material never leaves the token. Every object has every usage
 * attribute of its class set (TRUE only for what Coffer does with it; not
 * CKA_ENCRYPT and CKA_DECRYPT of a key pair on a module that sets them
 * itself and refuses templates saying otherwise, such as tpm2-pkcs11) and
 * CKA_ALLOWED_MECHANISMS = exactly the mechanisms Coffer runs with it
 * (token objects stay CKA_MODIFIABLE: SoftHSM cannot make session copies of
 * unmodifiable ones; the session copies the layer uses are unmodifiable):
 *   EC P-256/P-384  private SIGN (+ DERIVE with CF_P11_DERIVE), public VERIFY;
 *                   CKM_ECDSA (+ CKM_ECDH1_DERIVE on a CF_P11_DERIVE private key)
 *   Ed25519         private SIGN, public VERIFY; CKM_EDDSA
 *   RSA             private SIGN, public VERIFY; CKM_RSA_PKCS, CKM_RSA_PKCS_PSS
 *   HMAC            secret SIGN, VERIFY; its one CKM_SHA*_HMAC (which also
 *                   records the hash)
 *   AES-256         secret ENCRYPT, DECRYPT; CKM_AES_GCM
 */
#ifndef COFFER_CF_P11_H
#define COFFER_CF_P11_H

#include <stddef.h>
#include <stdint.h>

#include "cf_buf.h"
#include "cf_keytype.h"
#include "cf_secret.h"

typedef struct cf_p11 cf_p11;
typedef struct cf_p11_key cf_p11_key;

/* Hard limits on caller data handed to the token. */
#define CF_P11_MAX_DATA      (1u << 20)  /* message to sign/MAC, GCM plaintext */
#define CF_P11_MAX_AAD       (64u << 10) /* GCM additional authenticated data */
#define CF_P11_MAX_SIG       512         /* longest signature (RSA-4096) */
#define CF_P11_MAX_SECRET    512         /* longest importable HMAC secret */
#define CF_GCM_IV_LEN        12
#define CF_GCM_TAG_LEN       16

struct cf_p11_config {
	const char *module_path;  /* PKCS#11 module to dlopen (required) */
	const char *token_uri;    /* RFC 7512 URI, e.g. "pkcs11:token=coffer" (required) */
	const char *pin_file;     /* user PIN; owned by us, mode 0600 or stricter (required) */
	unsigned pool_size;       /* sessions shared by threads; 0 = 8 */
	unsigned pool_timeout_ms; /* wait for a free session before CF_E_BUSY; 0 = 5000 */
	int no_session_copies;    /* 1 = use token objects directly (slower; for baselines) */
	const char *lock_file;    /* NULL = none; else flock'ed around token writes and
				     searches (processes sharing one token directory);
				     created 0600 if absent */
};

/*
 * Load the module, C_Initialize it with CKF_OS_LOCKING_OK (an already
 * initialised module is accepted), find exactly one token matching the URI,
 * read the PIN file, log in on an anchor session kept for the life of the
 * context, and wipe the PIN. With a lock file: opens (creates) it and holds
 * LOCK_EX from C_Initialize to the login (SoftHSM rewrites its token file on
 * a login; another process reading it then may not see the token).
 * Errors: CF_E_MODULE, CF_E_CONFIG (bad or ambiguous URI), CF_E_TOKEN_NOT_FOUND,
 * CF_E_PIN_FILE, CF_E_PIN_INCORRECT, CF_E_TOKEN, CF_E_IO (lock file).
 * Later calls fail with CF_E_IO, naming the file, if flock on it fails.
 * Use one context per module per process; close it before opening another.
 */
int cf_p11_open(const struct cf_p11_config *cfg, cf_p11 **out);
/* Close sessions and finalize the module if this context initialised it.
 * All keys of the context must be freed first. Accepts NULL. */
void cf_p11_close(cf_p11 *p);
/* Initialise a token labelled `label` (1..32 bytes) in a free slot of the
 * module: the security officer's PIN from so_pin_file, the user PIN set from
 * user_pin_file (both cf_secret_file.h files: owned by the caller, 0600).
 * CF_E_EXISTS when a token has the label already, unless its user PIN was
 * never set (an initialisation cut short): then only that is done, and
 * *finished says so. */
int cf_p11_init_token(const char *module_path, const char *label, const char *so_pin_file,
		      const char *user_pin_file, int *finished);

/* ---- capabilities ---- */

/* What the token can do, read at open from C_GetTokenInfo,
 * C_GetMechanismList and C_GetMechanismInfo (flags and key sizes) and one
 * probe: a session AES key made and destroyed (modules list secret-key
 * generation they cannot run). Session copies turn off for good the first
 * time the module answers C_CopyObject with CKR_FUNCTION_NOT_SUPPORTED. */
struct cf_p11_type_caps {
	int generate;     /* cf_p11_key_generate of the type can work */
	int import;       /* cf_p11_key_import of the type can work */
	int use;          /* an existing key of the type can be used */
	char why[160];    /* if not: the missing mechanism, e.g. "the token has no CKM_EDDSA" */
};
struct cf_p11_caps {
	char label[33], manufacturer[33], model[17];
	char module[256];
	unsigned long token_flags;  /* CKF_* of CK_TOKEN_INFO */
	int rng;                    /* CKF_RNG */
	int session_copies;         /* keys run on session copies (else the token objects) */
	unsigned long mechanisms;   /* how many mechanisms the token lists */
	struct cf_p11_type_caps type[CF_KEY__COUNT];
	/* Why the token refuses RSA PKCS#1 v1.5 signatures, learned when it
	 * first refused one (cf_p11_sign); "" while none was refused. */
	char pkcs1_refused[200];
};
void cf_p11_caps_get(cf_p11 *p, struct cf_p11_caps *out);

/* CF_OK if the token can generate (import = 0) or import (1) a key of `type`;
 * else CF_E_PRECONDITION with a detail naming the missing mechanism ("this
 * token cannot generate ed25519 keys: the token has no
 * CKM_EC_EDWARDS_KEY_PAIR_GEN"). cf_p11_key_generate and cf_p11_key_import check this first. */
int cf_p11_can_create(cf_p11 *p, enum cf_key_type type, int import);

/* ---- keys ---- */

/* 0x1 was CF_P11_EXPORTABLE: gone, key material never leaves the token. */
#define CF_P11_DERIVE     0x2u /* EC P-256/P-384 private key may run ECDH */

/* Generate a new version inside the token. CF_E_EXISTS if the name/version is
 * taken, CF_E_INVALID_ARG for a bad name, version or flag. */
int cf_p11_key_generate(cf_p11 *p, const char *name, uint32_t version,
			enum cf_key_type type, unsigned flags, cf_p11_key **out);

/* The same with CKA_ID `id` on every object it makes (a unique id per
 * attempt lets recovery tell its objects from any other); lookups of the
 * returned handle match that id too. */
#define CF_P11_ID_LEN 16
int cf_p11_key_generate_id(cf_p11 *p, const char *name, uint32_t version, enum cf_key_type type,
			   unsigned flags, const uint8_t id[CF_P11_ID_LEN], cf_p11_key **out);

/* Import raw key material (bring your own key) for HMAC and AES types.
 * HMAC secrets: hash length .. CF_P11_MAX_SECRET bytes; AES-256: 32 bytes.
 * The caller keeps ownership of `material`. */
int cf_p11_key_import(cf_p11 *p, const char *name, uint32_t version,
		      enum cf_key_type type, const cf_secret *material, unsigned flags,
		      cf_p11_key **out);

/* With CKA_ID id (NULL: the legacy id derived from the label). */
int cf_p11_key_import_id(cf_p11 *p, const char *name, uint32_t version, enum cf_key_type type,
			 const cf_secret *material, unsigned flags, const uint8_t *id,
			 cf_p11_key **out);

/* Find an existing version by name and version (e.g. after a restart).
 * CF_E_NOT_FOUND if absent. CF_E_TOKEN (ambiguous) if several objects of a
 * class carry the label. */
int cf_p11_key_open(cf_p11 *p, const char *name, uint32_t version, cf_p11_key **out);
/* Only the objects whose CKA_ID is id (NULL: as cf_p11_key_open). */
int cf_p11_key_open_id(cf_p11 *p, const char *name, uint32_t version, const uint8_t *id,
		       cf_p11_key **out);

/* The daemon's own keys: open name/version, or generate it when the
 * token has none (*created = 1); if another process generates it in
 * between, its key is opened. CF_E_CONFIG if the object there is of
 * another type. */
int cf_p11_key_ensure(cf_p11 *p, const char *name, uint32_t version, enum cf_key_type type,
		      cf_p11_key **out, int *created);

/* Destroy the version's token objects. The handle must still be freed. */
int cf_p11_key_destroy(cf_p11_key *k);

/* Release the handle (and its in-token session copies). Accepts NULL. */
void cf_p11_key_free(cf_p11_key *k);

/* The version is destroyed (or about to be) while calls may still borrow
 * this handle: its session copies go now, and every later use fails
 * (CF_E_PRECONDITION "the key version was destroyed while this call held
 * it") without looking the objects up or copying them again; the handle
 * stays valid until freed. Accepts NULL. */
void cf_p11_key_retire(cf_p11_key *k);

enum cf_key_type cf_p11_key_type(const cf_p11_key *k);
const char *cf_p11_key_name(const cf_p11_key *k);   /* borrowed */
uint32_t cf_p11_key_version(const cf_p11_key *k);

/* Call `cb` for every Coffer key version in the token (order unspecified).
 * A non-zero return from cb stops the walk and is returned. */
typedef int (*cf_p11_list_cb)(const char *name, uint32_t version, enum cf_key_type type,
			      void *arg);
int cf_p11_key_list(cf_p11 *p, cf_p11_list_cb cb, void *arg);

/* Every token object labelled as a Coffer key version, of every class:
 * what reconciliation compares with the registry. */
enum cf_p11_class { CF_P11_PRIVATE = 1, CF_P11_PUBLIC, CF_P11_SECRET };
struct cf_p11_object {
	char name[CF_KEY_NAME_MAX + 1];
	uint32_t version;
	enum cf_p11_class cls;
	enum cf_key_type type;          /* CF_KEY_NONE if not one Coffer knows */
	uint8_t id[CF_P11_ID_LEN];
	int id_len;                     /* 1 if id holds a CKA_ID of CF_P11_ID_LEN bytes */
};
/* *out (malloc'ed, caller frees) holds *n objects. */
int cf_p11_objects(cf_p11 *p, struct cf_p11_object **out, size_t *n);
/* qsort order of a listing: by name, then version. */
int cf_p11_object_cmp(const void *a, const void *b);
/* As cf_p11_key_open_id, answered from a listing sorted by cf_p11_object_cmp
 * when it holds exactly the object a search would find: a SoftHSM2 search
 * reads every object file of the token, so opening every version by search
 * at start-up costs the square of the token's size. Without such a match
 * (the listing may be older than the registry) it searches. */
int cf_p11_key_open_listed(cf_p11 *p, const struct cf_p11_object *o, size_t n, const char *name,
			   uint32_t version, const uint8_t *id, cf_p11_key **out);
/* Destroy every token object of name/version whose CKA_ID is id (NULL:
 * every one), whatever its class; *destroyed counts them (may be NULL). */
int cf_p11_objects_destroy(cf_p11 *p, const char *name, uint32_t version, const uint8_t *id,
			   unsigned *destroyed);

/* ---- signatures ---- */

struct cf_sign_params {
	enum cf_sig_scheme scheme; /* CF_SIG_DEFAULT = the key type's scheme */
	enum cf_hash hash;         /* CF_HASH_NONE = the key type's hash; Ed25519 has none */
	int prehashed;             /* input is already a digest of `hash` (not Ed25519) */
	int ecdsa_raw;             /* ECDSA signatures as raw r||s instead of DER */
};

/* The checks of cf_p11_sign that do not depend on the data: can the key
 * sign with params' scheme, hash and encoding? (A batch refuses a request
 * the key cannot serve as a whole, before any item.) */
int cf_p11_sign_check(const cf_p11_key *k, const struct cf_sign_params *params);

/* Sign `in` (a message, hashed on the host, or a digest if prehashed) and
 * append the signature to `sig`. params may be NULL for all defaults.
 * CF_E_WRONG_KEY_TYPE for a key that cannot sign with that scheme,
 * CF_E_INVALID_ARG for a digest of the wrong length, CF_E_TOO_LARGE above
 * CF_P11_MAX_DATA. */
int cf_p11_sign(cf_p11_key *k, const struct cf_sign_params *params,
		const uint8_t *in, size_t inlen, cf_buf *sig);
/* CF_OK if valid, CF_E_BAD_SIGNATURE if not (also for malformed signatures). */
int cf_p11_verify(cf_p11_key *k, const struct cf_sign_params *params,
		  const uint8_t *in, size_t inlen, const uint8_t *sig, size_t siglen);

/* ---- randomness ---- */
/* Fill out (len bytes, at most CF_P11_MAX_SECRET) from the token's random
 * number generator (C_GenerateRandom): secrets the daemon issues, such as API
 * keys, come from the token like the keys it generates. */
int cf_p11_random(cf_p11 *p, cf_secret *out);

/* ---- HMAC (inside the token) ---- */
int cf_p11_mac(cf_p11_key *k, const uint8_t *in, size_t inlen, cf_buf *mac);
/* CF_OK or CF_E_BAD_SIGNATURE; the comparison happens inside the token. */
int cf_p11_mac_verify(cf_p11_key *k, const uint8_t *in, size_t inlen,
		      const uint8_t *mac, size_t maclen);

/* ---- AES-256-GCM (inside the token) ---- */
/* Encrypt with a fresh random 96-bit IV (written to iv), appending
 * ciphertext || 16-byte tag to `out`. */
int cf_p11_gcm_encrypt(cf_p11_key *k, const uint8_t *aad, size_t aadlen,
		       const uint8_t *pt, size_t ptlen, uint8_t iv[CF_GCM_IV_LEN], cf_buf *out);
/* Decrypt ciphertext || tag; the plaintext comes back in a new secret.
 * CF_E_DECRYPT if ciphertext, tag, IV or AAD were altered. */
int cf_p11_gcm_decrypt(cf_p11_key *k, const uint8_t *aad, size_t aadlen,
		       const uint8_t iv[CF_GCM_IV_LEN], const uint8_t *ct, size_t ctlen,
		       cf_secret **pt);

/* ---- ECDH (CKM_ECDH1_DERIVE, CKD_NULL) ---- */
/* Shared secret (x coordinate) of this token-held EC key (made with
 * CF_P11_DERIVE) and an uncompressed peer point (0x04 || X || Y). */
int cf_p11_ecdh(cf_p11_key *k, const uint8_t *peer, size_t peerlen, cf_secret **shared);

/* ---- public keys ---- */
/* Append the SubjectPublicKeyInfo, DER or PEM. CF_E_WRONG_KEY_TYPE for
 * secret keys. */
int cf_p11_pubkey_der(cf_p11_key *k, cf_buf *out);
int cf_p11_pubkey_pem(cf_p11_key *k, cf_buf *out);

/* ---- counters (for metrics; read at any time from any thread) ---- */
struct cf_p11_stats {
	uint64_t operations;     /* operations run on a pooled session (searches included) */
	uint64_t errors;         /* of those, ended in a failure of the token, its module or
				    the layer (after any retry); a refusal of what it was
				    given (a signature or ciphertext that does not check, bad
				    data, an absent object, a busy pool) is none */
	uint64_t recoveries;     /* re-opened sessions / re-login after a lost session */
	uint64_t pool_waits;     /* an operation waited for a free pooled session */
	uint64_t pool_timeouts;  /* ... and gave up (CF_E_BUSY) */
};
void cf_p11_stats(cf_p11 *p, struct cf_p11_stats *out);

#endif
