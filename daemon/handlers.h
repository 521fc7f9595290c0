/*
 * handlers.h — one plain function per RPC. A handler gets the decoded
 * request and the call (struct hcall), and returns a Coffer status with a
 * newly allocated response (through cf_pbwipe_allocator, which dispatch
 * frees it with). Failure details go to cf_error(). No gRPC in here, so
 * tests can call handlers directly.
 */
#ifndef COFFER_HANDLERS_H
#define COFFER_HANDLERS_H

#include <sys/types.h>

#include <protobuf-c/protobuf-c.h>

#include "apikeys.h"
#include "cf_methods.h"
#include "audit.h"
#include "keyring.h"
#include "nonces.h"
#include "policy.h"
#include "session.h"
#include "share.h"
#include "store.h"

/* Limits of the data plane (also written in coffer.proto). */
#define H_MAX_WRAP_PLAINTEXT (64u << 10)
#define H_MAX_PAGE 1000
#define H_DEFAULT_PAGE 100

/*
 * What a handler may see: the daemon's services it works with, and who is
 * calling. Nothing of how the call arrived: dispatch alone authenticates it
 * (authorization metadata, nonces), authorizes it (grants, limits), makes it
 * run once (idempotency) and records it (request id, audit), all before or
 * after the handler. A handler that cannot see that state cannot skip or
 * redo any of it, and tests build an hcall from a few fields.
 */
struct hservices {
	cf_p11 *p11;            /* the token: its capabilities (GetTokenInfo) */
	keyring *kr;
	session_mgr *sm;
	policy *pol;
	apikeys *ak;            /* principals' API keys */
	audit *au;              /* the audit trail (AdminService reads it; health) */
	nonces *nn;             /* replay record of signed requests and calls */
	store *st;              /* the state store (health: NOT_SERVING once it is gone) */
	unsigned window;        /* seconds a signed request's timestamp may be off */
	share *share;           /* spreads a batch's items over the cores; NULL: not */
};

struct hcall {
	const struct hservices *sv;
	/* The key the request names (cf_method.key_field): its name validated
	 * and the key looked up once per call, by dispatch. Never NULL; its
	 * name is NULL for a method that names no key. */
	const struct keyring_ref *key;
	const char *principal;  /* service socket: the caller's principal, else NULL */
	session *sess;          /* the session of a sealed call, else NULL */
	uid_t uid;
	gid_t gid;
	pid_t pid;
	int admin;              /* the call arrived on the admin socket */
	/* A batch (CF_MF_BATCH): how many of its items, from the first, the
	 * rate limits let run (UINT32_MAX: all); the others are answered
	 * RESOURCE_EXHAUSTED, retry after batch_retry_ms. */
	uint32_t batch_granted;
	uint32_t batch_retry_ms;
	int batch_all_ops;          /* the principal's all-operations limit gave fewest */
	int64_t deadline_ms;    /* the caller's deadline (monotonic ms), 0: none: a batch
				 * stops between items once it has passed */
	const int *cancelled;   /* atomic: the caller cancelled the call (NULL: not known) */
};

typedef int (*handler_fn)(const struct hcall *c, const ProtobufCMessage *req,
			  ProtobufCMessage **resp);

/* A key name a caller gave: "" is refused as missing, the rest by
 * cf_key_name_check. */
int handlers_check_key_name(const char *name);

#endif
