/*
 * cf_methods.h — the one table of per-method facts, shared by cofferd and
 * libcoffer: for every RPC of proto/coffer/v1/coffer.proto (KeyService,
 * AdminService, SessionService) and of grpc.health.v1.Health, its path,
 * the socket that serves it, the operation a principal needs granted, where
 * its key name lives, whether it changes something (takes an idempotency
 * key), whether it carries secrets (sealed only) and its session rules.
 * Nothing else says these things: cofferd binds its handlers to these ids
 * and reads every rule from here; libcoffer seals what this says to.
 * tests/unit/test_dispatch.c fails when the table and the .proto differ.
 *
 * No protobuf-c and no daemon types here: plain data.
 */
#ifndef CF_METHODS_H
#define CF_METHODS_H

#include <stdint.h>

/* Operations a principal is granted; numbering shared with coffer.v1.Operation. */
enum cf_op {
	CF_OP_NONE = 0,          /* in a rate limit: every operation */
	CF_OP_SIGN, CF_OP_VERIFY, CF_OP_MAC, CF_OP_VERIFY_MAC, CF_OP_WRAP, CF_OP_UNWRAP,
	CF_OP_REWRAP, CF_OP_GENERATE_DATA_KEY, CF_OP_GET_PUBLIC_KEY,
	CF_OP__COUNT
};
#define CF_OP_BIT(op) (1u << (op))
#define CF_OPS_ALL (((1u << CF_OP__COUNT) - 1) & ~1u)

/* Every method, in the order of the .proto's services and methods. */
enum cf_method_id {
	/* coffer.v1.KeyService */
	CF_KS_SIGN, CF_KS_VERIFY, CF_KS_MAC, CF_KS_VERIFY_MAC, CF_KS_WRAP, CF_KS_UNWRAP,
	CF_KS_REWRAP, CF_KS_GENERATE_DATA_KEY, CF_KS_GET_PUBLIC_KEY, CF_KS_GET_KEY,
	CF_KS_LIST_KEYS, CF_KS_VERIFY_REQUEST_SIGNATURE, CF_KS_SIGN_HTTP_REQUEST,
	CF_KS_SIGN_BATCH, CF_KS_VERIFY_BATCH, CF_KS_MAC_BATCH, CF_KS_VERIFY_MAC_BATCH,
	/* coffer.v1.AdminService */
	CF_AS_CREATE_KEY, CF_AS_IMPORT_KEY, CF_AS_ROTATE_KEY, CF_AS_SET_PRIMARY_VERSION,
	CF_AS_ENABLE_KEY_VERSION, CF_AS_DISABLE_KEY_VERSION, CF_AS_SCHEDULE_DESTROY_KEY_VERSION,
	CF_AS_CANCEL_DESTROY_KEY_VERSION, CF_AS_SET_KEY_MINIMUMS, CF_AS_TRIM_KEY,
	CF_AS_SET_ROTATION_SCHEDULE, CF_AS_GET_KEY, CF_AS_LIST_KEYS, CF_AS_CREATE_PRINCIPAL,
	CF_AS_GET_PRINCIPAL, CF_AS_LIST_PRINCIPALS, CF_AS_GRANT_PRINCIPAL, CF_AS_REVOKE_PRINCIPAL,
	CF_AS_SET_RATE_LIMIT, CF_AS_DELETE_PRINCIPAL, CF_AS_CREATE_API_KEY,
	CF_AS_ROTATE_API_KEY_SECRET, CF_AS_REVOKE_API_KEY, CF_AS_SET_PRINCIPAL_AUTH,
	CF_AS_LIST_API_KEYS, CF_AS_TAIL_AUDIT, CF_AS_VERIFY_AUDIT, CF_AS_GET_TOKEN_INFO,
	/* coffer.v1.SessionService */
	CF_SS_GET_IDENTITY, CF_SS_OPEN_SESSION, CF_SS_CALL, CF_SS_CLOSE_SESSION,
	/* grpc.health.v1.Health */
	CF_HEALTH_CHECK,
	CF_METHOD__COUNT
};

/* The most items one batch call carries. */
#define CF_BATCH_MAX 1024

/* The socket that serves a method. */
enum cf_socket { CF_SOCK_SERVICE = 1, CF_SOCK_ADMIN = 2, CF_SOCK_BOTH = 3 };

enum cf_method_flag {
	CF_MF_MUTATING = 1 << 0,      /* changes something: takes an idempotency key */
	CF_MF_SECRET = 1 << 1,        /* carries secrets: sealed unless the daemon allows
				       * secrets unsealed (session.unsealed_secrets) */
	CF_MF_OPEN = 1 << 2,          /* needs no principal */
	CF_MF_SEALED_ONLY = 1 << 3,   /* valid only inside a session */
	CF_MF_NEVER_SEALED = 1 << 4,  /* never inside a session */
	CF_MF_HEALTH = 1 << 5,        /* a health check: never refused, not audited */
	CF_MF_BATCH = 1 << 6,         /* many items (request "items", response "results",
				       * each with an ItemStatus "status"): one rate-limit
				       * token per item, failed items counted in the audit */
	CF_MF_NO_RETRY = 1 << 7,      /* clients never repeat it on their own: a first attempt
				       * whose answer was lost may have recorded a nonce */
	CF_MF_MAKES = 1 << 8,         /* makes a key version or an API key secret: a retry
				       * whose first answer was lost names the one it made */
};

struct cf_method {
	const char *path;       /* "/coffer.v1.KeyService/Sign" */
	const char *service;    /* "coffer.v1.KeyService" */
	const char *name;       /* "Sign" */
	enum cf_socket socket;
	unsigned flags;         /* enum cf_method_flag */
	enum cf_op op;          /* granted to call it (service socket); CF_OP_NONE: no grant */
	/* The request field naming the key the call uses ("outer.inner": in a
	 * nested message): validated and looked up once per call. NULL: none. */
	const char *key_field;
	/* CF_MF_SECRET: what the call does with a secret, for the refusal of
	 * an unsealed call ("takes plaintext"); the request's bool field that
	 * makes it carry one (NULL: always); the bytes fields that hold it in
	 * the request and in the response (NULL: none there). */
	const char *secret_what;
	const char *secret_if;
	const char *secret_in;
	const char *secret_out;
};

/* Indexed by enum cf_method_id. */
extern const struct cf_method cf_methods[CF_METHOD__COUNT];

/* The method at `path`, or NULL. */
const struct cf_method *cf_method_by_path(const char *path);
/* Is any method of `service` served on socket `s` (CF_SOCK_SERVICE or CF_SOCK_ADMIN)? */
int cf_service_served(const char *service, enum cf_socket s);

#endif
