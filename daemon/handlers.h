/*
 * handlers.h — one plain function per RPC. A handler gets the decoded
 * request and the caller, and returns a Coffer status with a newly allocated
 * response (malloc'ed throughout; the adapter frees it with a wiping
 * allocator). Failure details go to cf_error(). No gRPC in here, so tests can
 * call handlers directly.
 */
#ifndef COFFER_HANDLERS_H
#define COFFER_HANDLERS_H

#include <sys/types.h>

#include <protobuf-c/protobuf-c.h>

#include "apikeys.h"
#include "cf_methods.h"
#include "audit.h"
#include "idempotency.h"
#include "keyring.h"
#include "nonces.h"
#include "policy.h"
#include "session.h"

/* Limits of the data plane (also written in coffer.proto). */
#define H_MAX_WRAP_PLAINTEXT (64u << 10)
#define H_MAX_PAGE 1000
#define H_DEFAULT_PAGE 100

struct hctx {
	keyring *kr;
	session_mgr *sm;
	policy *pol;
	apikeys *ak;            /* principals' API keys */
	audit *au;              /* the audit trail */
	idem *idm;              /* idempotency records of mutating calls */
	nonces *nn;             /* replay record of signed requests */
	store *st;              /* the state store (health: NOT_SERVING once it is gone) */
	unsigned window;        /* seconds a signed request's timestamp may be off */
	const char *principal;  /* service socket: the caller's principal, else NULL */
	/* The key the request names (cf_method.key_field): its name validated
	 * and the key looked up once per call, by dispatch. */
	struct keyring_ref key;
	session *sess;          /* the session of a sealed call, else NULL */
	uid_t uid;
	gid_t gid;
	pid_t pid;
	int admin;              /* the call arrived on the admin socket */
	int sealed;             /* the call arrived inside a session */
	int unsealed_secrets;   /* configuration allows secret plaintext unsealed */
	int require_api_key;    /* every principal must sign its calls */
	const char *authz;      /* the call's authorization metadata (the first), or NULL */
	size_t authz_len;
	unsigned authz_n;       /* authorization entries the call carried */
	int authenticated;      /* an enclosing call (SessionService/Call) was authenticated */
	char request_id[AUDIT_REQUEST_ID_MAX + 1];
	char idem_key[STORE_IDEM_KEY_MAX + 1];   /* "idempotency-key" metadata, or "" */
	int idem_bad;           /* that metadata was malformed */
};

typedef int (*handler_fn)(const struct hctx *c, const ProtobufCMessage *req,
			  ProtobufCMessage **resp);

/* A key name a caller gave: "" is refused as missing, the rest by
 * cf_key_name_check. */
int handlers_check_key_name(const char *name);

#endif
