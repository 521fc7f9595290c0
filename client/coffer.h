/*
 * coffer.h — libcoffer, the C client of the Coffer key service.
 *
 * libcoffer talks gRPC to cofferd over a Unix socket. Every call is a
 * blocking unary RPC; the API uses plain C types only.
 *
 * Sockets. cofferd listens on two sockets: the service socket (data plane,
 * KeyService: sign, verify, MAC, wrap, unwrap, public keys, key metadata) and
 * the admin socket (AdminService: create, import, rotate, key metadata). A
 * client talks to the one socket it was connected to: data-plane calls on an
 * admin client, or admin calls on a service client, fail with
 * COFFER_E_UNIMPLEMENTED. Health checks work on both.
 *
 * Return values. Every function that can fail returns COFFER_OK (0) or a
 * negative COFFER_E_* code (the values are those of Coffer's internal
 * cf_status error space). After a failure, coffer_error_message() gives the
 * reason: the server's status message, or a local explanation. gRPC status
 * codes map to return values in one table:
 *
 *   gRPC status            return value              meaning for Coffer
 *   OK                     COFFER_OK
 *   INVALID_ARGUMENT       COFFER_E_INVALID_ARG      malformed request
 *   OUT_OF_RANGE           COFFER_E_INVALID_ARG
 *   RESOURCE_EXHAUSTED     COFFER_E_TOO_LARGE        a request above a limit
 *                                                    (message or data size,
 *                                                    context entries); the
 *                                                    message names the limit
 *   NOT_FOUND              COFFER_E_NOT_FOUND        no such key or version
 *   ALREADY_EXISTS         COFFER_E_EXISTS           the key name is taken
 *   FAILED_PRECONDITION    COFFER_E_PRECONDITION     type/purpose does not
 *                                                    allow it, or the version
 *                                                    is not enabled
 *   PERMISSION_DENIED      COFFER_E_DENIED
 *   UNAUTHENTICATED        COFFER_E_UNAUTHENTICATED
 *   UNAVAILABLE            COFFER_E_UNAVAILABLE      daemon not reachable, or
 *                                                    token busy/unavailable;
 *                                                    retrying later may work
 *   DEADLINE_EXCEEDED      COFFER_E_TIMEOUT          the client's deadline
 *   ABORTED                COFFER_E_BUSY             conflict; retry
 *   CANCELLED              COFFER_E_CANCELLED
 *   UNIMPLEMENTED          COFFER_E_UNIMPLEMENTED    method not served on
 *                                                    this socket
 *   INTERNAL, UNKNOWN,
 *   DATA_LOSS, other       COFFER_E_INTERNAL
 *
 * Local failures: COFFER_E_INVALID_ARG (NULL or inconsistent arguments),
 * COFFER_E_NOMEM, COFFER_E_TOO_LARGE (request above the 8 MiB message cap),
 * COFFER_E_INTERNAL (malformed response).
 *
 * A failed verification is not an error: coffer_verify and coffer_verify_mac
 * return COFFER_OK with *valid = 0.
 *
 * Outputs are written only on success; on failure they are left untouched.
 * Buffers returned in struct coffer_bytes are owned by the caller and must be
 * released with coffer_bytes_free(), which wipes them.
 *
 * Secrets. Plaintext returned by coffer_unwrap and coffer_generate_data_key,
 * and key material passed to coffer_import_key, are wiped from every buffer
 * libcoffer controls (request encoding, response decoding, received gRPC
 * slices) before the memory is released. gRPC's transport may hold its own
 * short-lived copies that libcoffer cannot reach. Wipe and free your own
 * copies (coffer_bytes_free does it for returned buffers).
 *
 * Threads. A coffer_client may be shared by any number of threads: all calls
 * use one gRPC channel (one connection); unary calls have their own
 * completion queue each, and calls that overlap share the client's
 * pipelined stream (coffer_set_pipeline). coffer_close() must not race with calls on the same client.
 * coffer_error_message() is per thread. Calls block until the response
 * arrives or the client's deadline passes.
 *
 * Reconnection. Calls fail fast (COFFER_E_UNAVAILABLE) while cofferd is not
 * listening; they never wait for it to come up. When a call finds the
 * connection failed, the client replaces its gRPC channel, so the first call
 * after cofferd is back connects at once (gRPC's own reconnect backoff would
 * keep failing calls for seconds). A call in flight while cofferd stops gets
 * COFFER_E_CANCELLED or COFFER_E_UNAVAILABLE; retrying is safe for every call
 * except create, import and rotate (check with coffer_get_key first).
 *
 * fork(): gRPC starts threads. Do not fork while a client exists, and do not
 * use a client in the child of a fork.
 */
#ifndef COFFER_H
#define COFFER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define COFFER_API __attribute__((visibility("default")))
#else
#define COFFER_API
#endif

/* Return values; identical to the internal cf_status codes. */
enum coffer_status {
	COFFER_OK = 0,
	COFFER_E_INTERNAL = -1,         /* a bug, or a malformed response */
	COFFER_E_NOMEM = -2,            /* allocation failed */
	COFFER_E_INVALID_ARG = -3,      /* malformed or out-of-range input */
	COFFER_E_TOO_LARGE = -4,        /* input above a documented limit */
	COFFER_E_NOT_FOUND = -5,        /* no such key or key version */
	COFFER_E_EXISTS = -6,           /* the key name is already taken */
	COFFER_E_BUSY = -14,            /* conflict or busy resource; retry */
	COFFER_E_UNAVAILABLE = -15,     /* daemon unreachable or token unavailable */
	COFFER_E_IO = -19,              /* a local file could not be read or written */
	COFFER_E_DENIED = -20,          /* the caller may not do this */
	COFFER_E_UNAUTHENTICATED = -21, /* the caller could not be authenticated */
	COFFER_E_PRECONDITION = -22,    /* key type, purpose or state forbids it */
	COFFER_E_TIMEOUT = -24,         /* the deadline passed */
	COFFER_E_CANCELLED = -25,       /* the call was cancelled */
	COFFER_E_UNIMPLEMENTED = -26    /* method not served on this socket */
};

/* Key types; numbering equals coffer.v1.KeyType. */
enum coffer_key_type {
	COFFER_KEY_UNSPECIFIED = 0,
	COFFER_KEY_EC_P256 = 1,         /* "ec-p256": ECDSA P-256, purpose sign */
	COFFER_KEY_EC_P384 = 2,         /* "ec-p384" */
	COFFER_KEY_ED25519 = 3,         /* "ed25519": pure Ed25519 */
	COFFER_KEY_RSA_2048 = 4,        /* "rsa-2048": RSA-PSS or PKCS#1 v1.5 */
	COFFER_KEY_RSA_3072 = 5,        /* "rsa-3072" */
	COFFER_KEY_RSA_4096 = 6,        /* "rsa-4096" */
	COFFER_KEY_HMAC_SHA256 = 7,     /* "hmac-sha256": purpose mac */
	COFFER_KEY_HMAC_SHA384 = 8,     /* "hmac-sha384" */
	COFFER_KEY_HMAC_SHA512 = 9,     /* "hmac-sha512" */
	COFFER_KEY_AES_256 = 10         /* "aes-256": AES-256-GCM, purpose wrap */
};

enum coffer_purpose {
	COFFER_PURPOSE_UNSPECIFIED = 0,
	COFFER_PURPOSE_SIGN = 1,
	COFFER_PURPOSE_MAC = 2,
	COFFER_PURPOSE_WRAP = 3
};

/* Hash for signing; 0 = the key type's default (SHA-384 for P-384, else
 * SHA-256; none for Ed25519). */
enum coffer_hash {
	COFFER_HASH_DEFAULT = 0,
	COFFER_HASH_SHA256 = 1,
	COFFER_HASH_SHA384 = 2,
	COFFER_HASH_SHA512 = 3
};

/* Signature scheme; 0 = the key type's default (ECDSA, EdDSA or RSA-PSS). */
enum coffer_sig_scheme {
	COFFER_SCHEME_DEFAULT = 0,
	COFFER_SCHEME_ECDSA = 1,        /* DER ECDSA-Sig-Value, or raw r||s */
	COFFER_SCHEME_EDDSA = 2,        /* 64-byte Ed25519 over the message */
	COFFER_SCHEME_RSA_PSS = 3,      /* MGF1 with the same hash, salt = hash length */
	COFFER_SCHEME_RSA_PKCS1 = 4     /* RSASSA-PKCS1-v1_5 */
};

enum coffer_version_state {
	COFFER_VERSION_UNSPECIFIED = 0,
	COFFER_VERSION_ENABLED = 1,
	COFFER_VERSION_DISABLED = 2,
	COFFER_VERSION_DESTROY_SCHEDULED = 3,
	COFFER_VERSION_DESTROYED = 4
};

/* grpc.health.v1 serving status. */
enum coffer_serving_status {
	COFFER_SERVING_UNKNOWN = 0,
	COFFER_SERVING = 1,
	COFFER_NOT_SERVING = 2,
	COFFER_SERVICE_UNKNOWN = 3
};

/* Default per-call deadline of a new client. */
#define COFFER_DEFAULT_TIMEOUT_MS 30000u
/* Largest request or response message libcoffer sends or accepts. */
#define COFFER_MAX_MESSAGE (8u << 20)
/* coffer_list_keys gives up (COFFER_E_TOO_LARGE) beyond this many keys. */
#define COFFER_LIST_MAX_KEYS 1000000u

typedef struct coffer_client coffer_client;

/* Bytes returned by libcoffer, len bytes long (data is never NULL on
 * success, even when len is 0). Release them only with coffer_bytes_free:
 * secrets (unwrapped plaintext, data keys, API secrets) live in locked
 * memory (mlocked, out of core dumps), which free() must not be given. */
struct coffer_bytes {
	uint8_t *data;
	size_t len;
};

/* One entry of a wrap context (additional authenticated data). Keys must be
 * distinct; the server limits the number and sizes of entries. */
struct coffer_kv {
	const char *key;
	const char *value;
};

/* Options for coffer_sign and coffer_verify; NULL means all defaults. */
struct coffer_sign_opts {
	enum coffer_hash hash;          /* 0 = key default */
	enum coffer_sig_scheme scheme;  /* 0 = key default */
	int prehashed;                  /* msg is already the digest of `hash`
					 * (not for Ed25519) */
	int ecdsa_raw;                  /* ECDSA as raw r||s instead of DER */
};

struct coffer_key_version {
	uint32_t version;
	enum coffer_version_state state;
	int64_t create_time;            /* seconds since the Unix epoch */
	int64_t destroy_time;           /* destroy-scheduled: when; destroyed: when it was */
};

struct coffer_key_info {
	char *name;
	enum coffer_key_type type;
	enum coffer_purpose purpose;
	uint32_t primary_version;       /* used by sign, mac, wrap, data keys */
	struct coffer_key_version *versions;    /* ascending */
	size_t nversions;
	int64_t create_time;
	int exportable;
	unsigned int allowed_operations;   /* the key's own limit: COFFER_OP_BIT()s; 0 = all */
	uint32_t min_version;           /* versions below make nothing new; 0 = none */
	uint32_t min_verify_version;    /* versions below neither verify nor unwrap; 0 = none */
	int64_t rotation_period;        /* seconds; 0 = no scheduled rotation */
	int64_t next_rotation_time;     /* 0 = none */
};

struct coffer_key_list {
	struct coffer_key_info *keys;   /* ordered by name */
	size_t nkeys;
};

struct coffer_public_key {
	struct coffer_bytes der;        /* SubjectPublicKeyInfo */
	char *pem;                      /* the same, PEM "PUBLIC KEY", NUL-terminated */
	enum coffer_key_type type;
	uint32_t version;
};

/* ---- errors and names ---- */

/* The calling thread's explanation of its last failed libcoffer call: the
 * server's status message (control characters replaced by '?'), or a local
 * reason. Never NULL; borrowed until this thread's next libcoffer call. */
COFFER_API const char *coffer_error_message(void);
/* Fixed description of a return value; never NULL. */
COFFER_API const char *coffer_strerror(int status);

/* Stable lower-case names ("ec-p256", "sha384", "rsa-pss", "sign",
 * "enabled", "SERVING"); "unknown" for values outside the enum. The parse
 * functions accept exactly those names (not "unspecified"), else return
 * COFFER_E_INVALID_ARG. */
COFFER_API const char *coffer_key_type_name(enum coffer_key_type t);
COFFER_API int coffer_key_type_parse(const char *name, enum coffer_key_type *out);
COFFER_API const char *coffer_hash_name(enum coffer_hash h);
COFFER_API int coffer_hash_parse(const char *name, enum coffer_hash *out);
COFFER_API const char *coffer_scheme_name(enum coffer_sig_scheme s);  /* ecdsa eddsa rsa-pss rsa-pkcs1 */
COFFER_API int coffer_scheme_parse(const char *name, enum coffer_sig_scheme *out);
COFFER_API const char *coffer_purpose_name(enum coffer_purpose p);    /* sign mac wrap */
COFFER_API const char *coffer_version_state_name(enum coffer_version_state s);
COFFER_API const char *coffer_serving_status_name(enum coffer_serving_status s);

/* ---- connection ---- */

/* Use the AdminService for coffer_get_key and coffer_list_keys (connect to
 * the admin socket with this flag). */
#define COFFER_CONNECT_ADMIN 0x1u
/* Seal every KeyService call in a session, not only those that carry secret
 * plaintext (for daemons configured with session.require_sealed). */
#define COFFER_CONNECT_SEAL_ALL 0x2u

/*
 * New client for the socket at `socket_path` (a file system path, or a gRPC
 * target already starting with "unix:"). No connection is made yet: the
 * first call connects, and fails with COFFER_E_UNAVAILABLE if cofferd is not
 * listening; later calls reconnect as needed. flags: 0 or
 * COFFER_CONNECT_ADMIN. Initialises gRPC (reference counted; released by
 * coffer_close). Returns COFFER_OK and *out, COFFER_E_INVALID_ARG (empty
 * path, path longer than a Unix socket address allows, unknown flags) or
 * COFFER_E_NOMEM.
 */
COFFER_API int coffer_connect(const char *socket_path, unsigned int flags, coffer_client **out);
/* Close the connection and free the client; accepts NULL. No call on `c`
 * may be running or start afterwards. The client's idle sealed sessions are
 * ended at the daemon first (CloseSession, at most one second in all, best
 * effort), so they do not hold its session table until they expire; this
 * thread's coffer_error_message() is left as it was. */
COFFER_API void coffer_close(coffer_client *c);

/* ---- the sealed channel (proto/session-protocol.md) ----
 * Wrap, Unwrap, GenerateDataKey and ImportKey always travel inside a sealed
 * session; libcoffer opens sessions on first use, keeps a small pool (one
 * session per call in flight), replaces a session before it reaches its
 * limits, and retries a call once on a new session when the daemon refused
 * the record (COFFER_E_UNAUTHENTICATED: the call did not run). A session
 * needs the daemon's identity pinned first. */

/* Pin the daemon's identity: its EC P-256 public key as SubjectPublicKeyInfo,
 * DER (spki) or a PEM file ("-----BEGIN PUBLIC KEY-----", as printed by
 * `cofferctl identity`). A daemon presenting another key, or unable to sign
 * with it, is refused with COFFER_E_UNAUTHENTICATED. Call before the first
 * sealed call; not thread-safe against calls in flight. */
COFFER_API int coffer_pin_identity(coffer_client *c, const uint8_t *spki, size_t len);
COFFER_API int coffer_pin_identity_file(coffer_client *c, const char *path);

/* Every session's handshake carries, signed by the daemon, the uid and gid it
 * read from the socket (SO_PEERCRED: the effective ids of the process that
 * connected). libcoffer refuses a session whose ids are not this process's
 * geteuid()/getegid() with COFFER_E_UNAUTHENTICATED: another process made
 * the connection and relays it, so the session, the grants it is checked
 * against and its audit records would be that process's. check = 0 turns
 * the comparison off, for a caller whose ids the daemon sees mapped (a user
 * namespace); sessions are then accepted under whatever ids the daemon saw,
 * and sealed calls run as (and are audited as) the principal of those ids.
 * Default 1. Thread-safe; applies to sessions opened afterwards. */
COFFER_API void coffer_set_session_peer_check(coffer_client *c, int check);

/* Ask the daemon for its identity public key (SPKI DER into *spki) and its
 * fingerprint ("sha256:<hex>", fpr of at least 72 bytes). This is not
 * authenticated: it is how an operator reads the key to pin, over a socket
 * they trust. */
COFFER_API int coffer_get_identity(coffer_client *c, struct coffer_bytes *spki, char *fpr,
    size_t fprlen);

/* Deadline of each later call, in milliseconds from its start (its session
 * handshake, its record and any repetition included); 0 = none.
 * Default COFFER_DEFAULT_TIMEOUT_MS. Thread-safe; calls already running
 * keep their deadline. */
COFFER_API void coffer_set_timeout(coffer_client *c, unsigned int ms);
COFFER_API unsigned int coffer_get_timeout(const coffer_client *c);

/*
 * The pipelined stream (proto/pipeline.md). Several threads sharing one
 * client pay gRPC's cost of a call for every call; the stream pays it once:
 * one long-lived stream per client carries the calls that may travel on it
 * (the KeyService calls that change nothing and carry no secret: sign,
 * verify, MAC, verify MAC, their batches, public keys, key metadata;
 * never sealed ones), each with an id, answered as they finish. Each call
 * still gets exactly what its unary call would: the same result, status
 * and error text, grants and rate limits checked per call, one audit
 * record per call (request id "<stream id>.<n>").
 *
 *   COFFER_PIPELINE_AUTO    (the default) a call takes the stream when
 *                           another call of the client is in flight, or
 *                           the stream is open; a lone single-threaded
 *                           caller keeps plain unary calls
 *   COFFER_PIPELINE_OFF     unary calls only; an open stream is closed
 *                           once its answers are in
 *   COFFER_PIPELINE_ALWAYS  every such call takes the stream
 *
 * The stream opens with the first call that takes it, signed with the
 * client's API key when it has one (coffer_set_api_key closes the open
 * stream: the next one is signed with the new key). When it ends (cofferd
 * restarted), its calls are repeated once as unary calls, except those
 * that record a nonce, which fail COFFER_E_UNAVAILABLE; the next call opens
 * a new stream. A cofferd without the stream (UNIMPLEMENTED) gets unary
 * calls from this client for good. A call's deadline (coffer_set_timeout)
 * counts on the waiting side: when it passes, the call fails
 * COFFER_E_TIMEOUT and its late answer is dropped. The stream has a reader
 * thread of its own; coffer_close ends both. Thread-safe.
 * COFFER_E_INVALID_ARG for another mode.
 */
enum coffer_pipeline_mode {
	COFFER_PIPELINE_AUTO = 0,
	COFFER_PIPELINE_OFF = 1,
	COFFER_PIPELINE_ALWAYS = 2
};
COFFER_API int coffer_set_pipeline(coffer_client *c, int mode);

/* Wipe and free b->data, then set b to {NULL, 0}; accepts NULL and an
 * empty struct. */
COFFER_API void coffer_bytes_free(struct coffer_bytes *b);

/* ---- KeyService (service socket) ----
 * `key` is a key name; `version` 0 means the key's primary version where the
 * contract allows it. `used_version` (NULL ok) receives the version the
 * server used: keep it with signatures and MACs for verification. */

/*
 * Sign msg[0..len) (at most 1 MiB), or with opts->prehashed a digest of
 * opts->hash. *sig gets the signature (DER ECDSA unless opts->ecdsa_raw).
 */
COFFER_API int coffer_sign(coffer_client *c, const char *key, uint32_t version,
    const uint8_t *msg, size_t len, const struct coffer_sign_opts *opts,
    struct coffer_bytes *sig, uint32_t *used_version);

/* Verify sig (at most 512 bytes) over msg with key version `version`
 * (required, >= 1) and the options used to sign. *valid = 1 or 0. */
COFFER_API int coffer_verify(coffer_client *c, const char *key, uint32_t version,
    const uint8_t *msg, size_t len, const struct coffer_sign_opts *opts,
    const uint8_t *sig, size_t siglen, int *valid);

/* HMAC of data[0..len) (at most 1 MiB): 32, 48 or 64 bytes in *mac. */
COFFER_API int coffer_mac(coffer_client *c, const char *key, uint32_t version,
    const uint8_t *data, size_t len, struct coffer_bytes *mac, uint32_t *used_version);

/* Compare a MAC inside the token; `version` is required. *valid = 1 or 0. */
COFFER_API int coffer_verify_mac(coffer_client *c, const char *key, uint32_t version,
    const uint8_t *data, size_t len, const uint8_t *mac, size_t maclen, int *valid);

/* ---- calls kept in flight: start several, then wait for each ----
 * A thread that makes one call at a time sleeps through each round trip;
 * one that starts several keeps them all in flight on the client's
 * pipelined stream, which sends the calls started while a message is going
 * out together, as one frame (proto/pipeline.md). coffer_*_start checks the arguments, packs the
 * request (the caller's buffers are not used after it returns), hands it
 * to the stream and returns at once: COFFER_OK with *call, or a local
 * failure (bad arguments, no memory, too large). Everything the daemon
 * says comes from coffer_wait, exactly as the waiting call would give it
 * (result, status, error text, rate limits and audit record per call).
 *
 * coffer_wait waits for one started call (its deadline, coffer_set_timeout,
 * counts from its start), writes its result into *res (NULL: dropped) and
 * frees the call: every started call is waited for exactly once, by any
 * thread, before coffer_close. Calls may be waited for in any order.
 *
 * A call the stream does not take (COFFER_PIPELINE_OFF, a client that
 * seals every call, a cofferd without the stream) is made as a unary call
 * inside coffer_wait; one whose stream ended is repeated there as the
 * waiting call would be. Those unary calls' deadlines count from then.
 * Thread-safe.
 */
typedef struct coffer_call coffer_call;

struct coffer_result {
	struct coffer_bytes out;  /* sign, MAC: the signature or MAC (free with
				   * coffer_bytes_free) */
	uint32_t version;         /* sign, MAC: the key version used */
	int valid;                /* verify, verify MAC: 1 or 0 */
};

COFFER_API int coffer_sign_start(coffer_client *c, const char *key, uint32_t version,
    const uint8_t *msg, size_t len, const struct coffer_sign_opts *opts, coffer_call **call);
COFFER_API int coffer_verify_start(coffer_client *c, const char *key, uint32_t version,
    const uint8_t *msg, size_t len, const struct coffer_sign_opts *opts,
    const uint8_t *sig, size_t siglen, coffer_call **call);
COFFER_API int coffer_mac_start(coffer_client *c, const char *key, uint32_t version,
    const uint8_t *data, size_t len, coffer_call **call);
COFFER_API int coffer_verify_mac_start(coffer_client *c, const char *key, uint32_t version,
    const uint8_t *data, size_t len, const uint8_t *mac, size_t maclen, coffer_call **call);
COFFER_API int coffer_wait(coffer_call *call, struct coffer_result *res);

/* ---- batches: many items for one key and version in one call ----
 * One authorization and one audit record for the call, one rate-limit token
 * per item (coffer.proto, "Batches"). The call's return value covers the
 * call as a whole (a bad key, version, hash or scheme, no permission, more
 * than COFFER_BATCH_MAX items); on COFFER_OK every item has its own status:
 * COFFER_OK, or an error code with `error` saying why (an item's bad input,
 * or COFFER_E_TOO_LARGE for the items beyond what the rate limits allow). */
#define COFFER_BATCH_MAX 1024

struct coffer_batch_item {
	const uint8_t *data;      /* the message (the digest with opts->prehashed), or data */
	size_t len;
	const uint8_t *tag;       /* verify batches: the signature or MAC to check */
	size_t taglen;
	/* set by the call */
	int status;               /* COFFER_OK or this item's error */
	char error[320];          /* why, when status is not COFFER_OK */
	struct coffer_bytes out;  /* sign and MAC batches: the signature or MAC (free with
				   * coffer_bytes_free) */
	int valid;                /* verify batches: 1 or 0 */
};

/* Sign every item with one version of key (0: the primary): as coffer_sign. */
COFFER_API int coffer_sign_batch(coffer_client *c, const char *key, uint32_t version,
    const struct coffer_sign_opts *opts, struct coffer_batch_item *items, size_t n,
    uint32_t *used_version);
/* Verify every item's signature (tag); `version` is required. */
COFFER_API int coffer_verify_batch(coffer_client *c, const char *key, uint32_t version,
    const struct coffer_sign_opts *opts, struct coffer_batch_item *items, size_t n);
/* MAC every item with one version of key (0: the primary). */
COFFER_API int coffer_mac_batch(coffer_client *c, const char *key, uint32_t version,
    struct coffer_batch_item *items, size_t n, uint32_t *used_version);
/* Compare every item's MAC (tag) inside the token; `version` is required. */
COFFER_API int coffer_verify_mac_batch(coffer_client *c, const char *key, uint32_t version,
    struct coffer_batch_item *items, size_t n);

/*
 * Encrypt plaintext (at most 64 KiB) under the key's primary version with
 * AES-256-GCM, bound to the key name, version and the context (ctx[0..nctx),
 * NULL if nctx is 0; at most 16 entries, keys distinct). *ciphertext gets a
 * self-describing blob: 0x01 | version (4, big-endian) | IV (12) | ct | tag (16).
 */
COFFER_API int coffer_wrap(coffer_client *c, const char *key,
    const uint8_t *plaintext, size_t len, const struct coffer_kv *ctx, size_t nctx,
    struct coffer_bytes *ciphertext, uint32_t *used_version);

/* Decrypt a blob from coffer_wrap with the same key name and context.
 * *plaintext is secret: release it with coffer_bytes_free. A tampered blob
 * or a different context fails (the server's status decides the code). */
COFFER_API int coffer_unwrap(coffer_client *c, const char *key,
    const uint8_t *ciphertext, size_t len, const struct coffer_kv *ctx, size_t nctx,
    struct coffer_bytes *plaintext, uint32_t *used_version);

/* Re-encrypt a blob under the primary version without returning the
 * plaintext. new_version / previous_version may be NULL. */
COFFER_API int coffer_rewrap(coffer_client *c, const char *key,
    const uint8_t *ciphertext, size_t len, const struct coffer_kv *ctx, size_t nctx,
    struct coffer_bytes *new_ciphertext, uint32_t *new_version, uint32_t *previous_version);

/*
 * A fresh random data key of `length` bytes (16, 24 or 32; 0 = 32), returned
 * wrapped in *ciphertext (a coffer_wrap blob) and, only if `plaintext` is not
 * NULL, also in the clear in *plaintext (secret: coffer_bytes_free).
 */
COFFER_API int coffer_generate_data_key(coffer_client *c, const char *key, uint32_t length,
    const struct coffer_kv *ctx, size_t nctx, struct coffer_bytes *ciphertext,
    struct coffer_bytes *plaintext, uint32_t *used_version);

/* Public key of an asymmetric key version (0 = primary) as DER and PEM.
 * Release *out with coffer_public_key_free. */
COFFER_API int coffer_get_public_key(coffer_client *c, const char *key, uint32_t version,
    struct coffer_public_key **out);
COFFER_API void coffer_public_key_free(struct coffer_public_key *pk);   /* NULL ok */

/* The public key as a JSON Web Key (RFC 7517): EC P-256/P-384 ("ES256",
 * "ES384"), Ed25519 (OKP, "EdDSA"), RSA (n, e; no "alg": it signs PSS and
 * PKCS#1 v1.5), with "use":"sig" and, if not NULL, "kid". *json is one
 * line of JSON, malloc'ed: release it with free(). */
COFFER_API int coffer_public_key_jwk(const struct coffer_public_key *pk, const char *kid,
    char **json);

/* Metadata of one key (KeyService, or AdminService with COFFER_CONNECT_ADMIN).
 * Release *out with coffer_key_info_free. */
COFFER_API int coffer_get_key(coffer_client *c, const char *name, struct coffer_key_info **out);
COFFER_API void coffer_key_info_free(struct coffer_key_info *k);       /* NULL ok */

/* All keys the caller may see, ordered by name; fetches every page.
 * COFFER_E_TOO_LARGE beyond COFFER_LIST_MAX_KEYS keys. Release *out with
 * coffer_key_list_free. */
COFFER_API int coffer_list_keys(coffer_client *c, struct coffer_key_list **out);
COFFER_API void coffer_key_list_free(struct coffer_key_list *l);       /* NULL ok */

/* ---- AdminService (admin socket) ----
 * `out` may be NULL when the resulting key metadata is not wanted. */

/* Generate a key (version 1) in the token. `exportable` must be 0: key
 * material never leaves the token, and the daemon refuses 1 with
 * COFFER_E_INVALID_ARG ("exportable keys are not supported: ..."); the same
 * for coffer_create_key_limited and coffer_import_key. */
COFFER_API int coffer_create_key(coffer_client *c, const char *name, enum coffer_key_type type,
    int exportable, struct coffer_key_info **out);

/* The same, with the key's own operation limit (COFFER_OP_BIT()s that fit
 * its purpose; 0 = all of them): no grant can exceed it. */
COFFER_API int coffer_create_key_limited(coffer_client *c, const char *name,
    enum coffer_key_type type, int exportable, unsigned int operations,
    struct coffer_key_info **out);

/* Import raw secret material: HMAC_* (hash length .. 512 bytes) or AES_256
 * (32 bytes). The material is never logged or echoed; libcoffer wipes its
 * encoded copy after sending. */
COFFER_API int coffer_import_key(coffer_client *c, const char *name, enum coffer_key_type type,
    const uint8_t *material, size_t len, int exportable, struct coffer_key_info **out);

/* Generate a new version and make it primary. */
COFFER_API int coffer_rotate_key(coffer_client *c, const char *name, struct coffer_key_info **out);

/* coffer_create_key with every option: rotation_period (seconds, 0 = none)
 * makes the daemon rotate the key on that schedule. */
struct coffer_create_opts {
	enum coffer_key_type type;
	int exportable;
	unsigned int operations;        /* COFFER_OP_BIT()s; 0 = all of its purpose */
	int64_t rotation_period;
};
COFFER_API int coffer_create_key_opts(coffer_client *c, const char *name,
    const struct coffer_create_opts *o, struct coffer_key_info **out);

/* ---- key lifecycle (admin socket; coffer.proto "Key lifecycle") ----
 * Refusals are COFFER_E_PRECONDITION with the reason (the version's state,
 * the primary or last enabled version without COFFER_FORCE, the grace
 * period over, a minimum past the primary). */
enum coffer_version_action {
	COFFER_SET_PRIMARY = 1,
	COFFER_ENABLE_VERSION,
	COFFER_DISABLE_VERSION,         /* COFFER_FORCE for the primary / last enabled */
	COFFER_SCHEDULE_DESTROY,        /* grace_seconds: 0 = the daemon's default (7 d) */
	COFFER_CANCEL_DESTROY
};
#define COFFER_FORCE 0x1u
COFFER_API int coffer_key_version_action(coffer_client *c, const char *name, uint32_t version,
    enum coffer_version_action action, unsigned int flags, int64_t grace_seconds,
    struct coffer_key_info **out);
/* 0 leaves a minimum unchanged, 1 removes it; keep_last N (not with
 * min_verify_version) keeps the newest N versions usable for verify/unwrap. */
COFFER_API int coffer_set_key_minimums(coffer_client *c, const char *name,
    uint32_t min_version, uint32_t min_verify_version, uint32_t keep_last,
    struct coffer_key_info **out);
/* Schedule the destruction of every version below min_verify_version. */
COFFER_API int coffer_trim_key(coffer_client *c, const char *name, int64_t grace_seconds,
    struct coffer_key_info **out);
/* Rotate every period_seconds (0: never), first at next_rotation_time (0: one
 * period from now). */
COFFER_API int coffer_set_rotation_schedule(coffer_client *c, const char *name,
    int64_t period_seconds, int64_t next_rotation_time, struct coffer_key_info **out);

/* ---- HMAC-signed HTTP requests (proto/request-signing.md) ----
 * For services that verify their REST clients' API-key signatures with a
 * secret kept in Coffer (an hmac-sha256 key named after the API key id).
 * libcoffer builds the canonical request from the request's parts. */

struct coffer_http_request {
	const char *key;            /* the hmac-sha256 key: the API key id */
	const char *method;         /* "GET", "POST", ... */
	const char *path;           /* as sent, without the query */
	const char *raw_query;      /* what follows '?', or NULL/"" */
	const uint8_t *body;        /* NULL with body_len 0 for none */
	size_t body_len;
	int64_t timestamp;          /* Unix seconds; signing: 0 = now */
	const char *nonce;          /* 16..64 of A-Z a-z 0-9 - _; signing: NULL = fresh */
};

enum coffer_request_verdict {
	COFFER_REQUEST_VALID = 1,
	COFFER_REQUEST_BAD_SIGNATURE = 2,
	COFFER_REQUEST_EXPIRED = 3,
	COFFER_REQUEST_CLOCK_SKEW = 4,
	COFFER_REQUEST_REPLAYED_NONCE = 5,
};

struct coffer_http_signature {
	char *signature;            /* 64 lower-case hex */
	int64_t timestamp;
	char *nonce;
	uint32_t version;
	char *authorization;        /* the Authorization header value */
};

/* The canonical query of a raw query string (malloc'ed into *out). */
COFFER_API int coffer_canonical_query(const char *raw_query, char **out);
/* Check a request's signature. A failed check is not an error: COFFER_OK
 * with *verdict saying why (reason: a malloc'ed sentence, NULL ok). Errors:
 * COFFER_E_INVALID_ARG (malformed parts), COFFER_E_NOT_FOUND, COFFER_E_DENIED. */
COFFER_API int coffer_verify_http_request(coffer_client *c, const struct coffer_http_request *r,
    const char *signature, enum coffer_request_verdict *verdict, char **reason,
    uint32_t *version);
COFFER_API int coffer_sign_http_request(coffer_client *c, const struct coffer_http_request *r,
    struct coffer_http_signature **out);
COFFER_API void coffer_http_signature_free(struct coffer_http_signature *s);   /* NULL ok */

/* ---- principals (AdminService, admin socket) ----
 * Callers of the service socket are principals: the uids/gids they connect
 * as, grants (key-name glob x operations) and rate limits. Deny by default:
 * see coffer.proto. */

enum coffer_operation {
	COFFER_OP_ALL = 0,              /* in a rate limit: every operation together */
	COFFER_OP_SIGN = 1,
	COFFER_OP_VERIFY = 2,
	COFFER_OP_MAC = 3,
	COFFER_OP_VERIFY_MAC = 4,
	COFFER_OP_WRAP = 5,
	COFFER_OP_UNWRAP = 6,
	COFFER_OP_REWRAP = 7,
	COFFER_OP_GENERATE_DATA_KEY = 8,
	COFFER_OP_GET_PUBLIC_KEY = 9,   /* also key metadata */
};
#define COFFER_OP_BIT(op) (1u << (op))
#define COFFER_OPS_ALL 0x3feu

struct coffer_grant {
	char *key_pattern;              /* a key name or a glob with * and ? */
	unsigned int operations;        /* COFFER_OP_BIT()s */
};

struct coffer_rate_limit {
	enum coffer_operation operation;   /* COFFER_OP_ALL: all calls together */
	double per_second;
	uint32_t burst;
};

struct coffer_principal {
	char *name;
	uint32_t *uids;
	size_t nuids;
	uint32_t *gids;
	size_t ngids;
	struct coffer_grant *grants;
	size_t ngrants;
	struct coffer_rate_limit *limits;
	size_t nlimits;
	int64_t create_time;
};

struct coffer_principal_list {
	struct coffer_principal *principals;   /* by name */
	size_t n;
};

/* "sign", "verify", "mac", "verify-mac", "wrap", "unwrap", "rewrap",
 * "generate-data-key", "get-public-key"; "all" for COFFER_OP_ALL. */
COFFER_API const char *coffer_operation_name(enum coffer_operation op);
COFFER_API int coffer_operation_parse(const char *name, enum coffer_operation *out);

/* `out` may be NULL. COFFER_E_EXISTS: the name, or a uid/gid of another
 * principal. */
COFFER_API int coffer_principal_create(coffer_client *c, const char *name, const uint32_t *uids,
    size_t nuids, const uint32_t *gids, size_t ngids, struct coffer_principal **out);
COFFER_API int coffer_principal_get(coffer_client *c, const char *name,
    struct coffer_principal **out);
COFFER_API int coffer_principal_list(coffer_client *c, struct coffer_principal_list **out);
/* Add `operations` to the grant for key_pattern. */
COFFER_API int coffer_principal_grant(coffer_client *c, const char *name, const char *key_pattern,
    unsigned int operations, struct coffer_principal **out);
/* Remove `operations` (0: all) from the grant for key_pattern. */
COFFER_API int coffer_principal_revoke(coffer_client *c, const char *name,
    const char *key_pattern, unsigned int operations, struct coffer_principal **out);
/* per_second 0 removes the limit. */
COFFER_API int coffer_principal_set_limit(coffer_client *c, const char *name,
    enum coffer_operation op, double per_second, uint32_t burst, struct coffer_principal **out);
COFFER_API int coffer_principal_delete(coffer_client *c, const char *name);
COFFER_API void coffer_principal_free(struct coffer_principal *p);           /* NULL ok */
COFFER_API void coffer_principal_list_free(struct coffer_principal_list *l); /* NULL ok */

/* ---- API keys (proto/call-authentication.md) ----
 * A principal's API key: an id ("ak_" + 24 hex digits) and an HMAC-SHA256
 * secret in the daemon's token. Once a principal has one, every call it
 * makes on the service socket must be signed with it: coffer_set_api_key. */

#define COFFER_API_KEY_ID_LEN 27
#define COFFER_API_KEY_SECRETS_MAX 4

struct coffer_api_key {
	char id[COFFER_API_KEY_ID_LEN + 1];
	char principal[65];
	int64_t create_time;
	int64_t revoke_time;            /* 0: live */
	size_t nsecrets;                /* live secrets, newest first */
	struct {
		uint32_t generation;
		int64_t create_time;
		int64_t expire_time;    /* 0: the current secret */
	} secrets[COFFER_API_KEY_SECRETS_MAX];
};

/* Sign every call of c with this API key (the secret is copied into locked
 * memory, 32..64 bytes). Set before calls start; not thread-safe against
 * calls in flight. */
COFFER_API int coffer_set_api_key(coffer_client *c, const char *id, const uint8_t *secret,
    size_t len);
/* The same from a credentials file (coffer_write_api_key_file; it must not
 * be readable by group or others). */
COFFER_API int coffer_set_api_key_file(coffer_client *c, const char *path);
/* Write a credentials file, mode 0600, refusing to replace an existing file:
 *   COFFER-API-KEY 1 \n id <id> \n secret <hex> \n */
COFFER_API int coffer_write_api_key_file(const char *path, const char *id,
    const uint8_t *secret, size_t len);

/* Admin socket; both travel sealed (the secret is shown this once).
 * import NULL: the daemon generates the secret in its token and returns it in
 * *secret; else the imported secret (32..64 bytes) and secret->len == 0. */
COFFER_API int coffer_api_key_create(coffer_client *c, const char *principal,
    const uint8_t *import, size_t import_len, struct coffer_api_key *key,
    struct coffer_bytes *secret);
/* The old secrets keep verifying for overlap_seconds (0: destroyed now). */
COFFER_API int coffer_api_key_rotate(coffer_client *c, const char *id, uint32_t overlap_seconds,
    const uint8_t *import, size_t import_len, struct coffer_api_key *key,
    struct coffer_bytes *secret);
COFFER_API int coffer_api_key_revoke(coffer_client *c, const char *id,
    struct coffer_api_key *key);
/* Whether principal `name` must sign its calls while it has no live API key
 * (admin socket; an audited change). Its first API key sets it and revoking
 * its last key keeps it; require_api_key 0 allows uid-only calls again. On
 * success *has_live_key (if not NULL) says whether a live key requires
 * signed calls anyway. */
COFFER_API int coffer_principal_set_auth(coffer_client *c, const char *name,
    int require_api_key, int *has_live_key);
/* principal NULL or "": every principal's. Free *keys with free(). */
COFFER_API int coffer_api_key_list(coffer_client *c, const char *principal,
    struct coffer_api_key **keys, size_t *n);

/* ---- idempotency keys ----
 * Every mutating admin call (key create/import/rotate, principal and API key
 * changes) of c carries this key while it is set (NULL clears it): the daemon
 * runs a request with a given key once and answers repeats with the first
 * outcome (a secret it returned is not repeated); the same key with another
 * request is refused (COFFER_E_PRECONDITION). While a key is set, libcoffer
 * retries such a call on COFFER_E_UNAVAILABLE for up to 10 s (a daemon
 * restart), within the call's deadline (coffer_set_timeout). Use one key per
 * intended change. Not thread-safe against calls in flight. */
COFFER_API int coffer_set_idempotency_key(coffer_client *c, const char *key);

/* ---- the audit trail (AdminService, admin socket) ----
 * One JSON line per call in the daemon's state directory, chained and sealed
 * with a token-held key (see coffer.proto). */

/* The last `count` records (0: 20; at most 1000), oldest first; free with
 * coffer_audit_lines_free. */
COFFER_API int coffer_audit_tail(coffer_client *c, uint32_t count, char ***lines, size_t *n);
COFFER_API void coffer_audit_lines_free(char **lines, size_t n);

struct coffer_audit_report {
	int ok;
	uint64_t records;       /* records read */
	uint64_t seals;         /* seals verified in the token */
	uint64_t first_bad;     /* !ok: the first bad record (line number, from 1) */
	char reason[256];
};
/* COFFER_OK with the verdict in *rep (ok or not); an error only if the
 * check could not run. */
COFFER_API int coffer_audit_verify(coffer_client *c, struct coffer_audit_report *rep);

/* ---- the token's capabilities (AdminService/GetTokenInfo, admin socket) ----
 * What the daemon's PKCS#11 token can do, as read when the daemon opened it. */
struct coffer_key_type_support {
	enum coffer_key_type type;
	int can_generate;               /* create_key / rotate_key */
	int can_import;                 /* import_key (HMAC and AES types) */
	int can_use;                    /* an existing key of the type works */
	char missing[160];              /* !can_generate: what the token lacks */
};
#define COFFER_TOKEN_UNAVAILABLE_MAX 8
struct coffer_token_info {
	char label[33], manufacturer[33], model[17];
	char module[256];               /* the PKCS#11 module's path */
	uint32_t mechanisms;            /* how many mechanisms the token lists */
	int rng;
	int session_copies;             /* keys run on session copies */
	size_t n_key_types;
	struct coffer_key_type_support key_types[16];
	size_t n_unavailable;           /* daemon features the token cannot carry */
	char unavailable[COFFER_TOKEN_UNAVAILABLE_MAX][320];   /* "feature: why" */
};
COFFER_API int coffer_token_info(coffer_client *c, struct coffer_token_info *out);

/* ---- grpc.health.v1.Health/Check (both sockets) ----
 * service: NULL or "" for the daemon as a whole, "coffer.v1.KeyService" or
 * "coffer.v1.AdminService". Unknown names fail with COFFER_E_NOT_FOUND. */
COFFER_API int coffer_health(coffer_client *c, const char *service,
    enum coffer_serving_status *status);

#ifdef __cplusplus
}
#endif

#endif
