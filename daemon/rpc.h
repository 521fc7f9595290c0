/*
 * rpc.h — the gRPC core adapter: the only code in Coffer that includes gRPC
 * headers. One server; every method of the dispatch table registered with
 * its request payload read up front; one completion queue whose worker
 * threads identify the caller, hand the request bytes to dispatch_call
 * (decode, handler, encode; no gRPC there) and send the answer.
 *
 * Caller identity: each call's peer is "fd:N"; SO_PEERCRED on N gives the
 * uid/gid/pid and getsockname(N) tells which socket (service or admin) the
 * connection arrived on. Admin methods are refused (UNIMPLEMENTED) on the
 * service socket and KeyService methods on the admin socket.
 */
#ifndef COFFER_RPC_H
#define COFFER_RPC_H

#include <sys/types.h>

#include "apikeys.h"
#include "audit.h"
#include "idempotency.h"
#include "keyring.h"
#include "nonces.h"
#include "policy.h"
#include "session.h"
#include "store.h"

struct rpc_cfg {
	cf_p11 *p11;                 /* the token (GetTokenInfo) */
	keyring *kr;
	session_mgr *sm;
	policy *pol;
	apikeys *ak;                 /* principals' API keys */
	audit *au;                   /* the audit trail */
	idem *idm;                   /* idempotency records */
	nonces *nn;                  /* replay record of signed requests and calls */
	store *st;                   /* the state store (health) */
	unsigned window;             /* seconds a signed request may be off (rpc_set_window) */
	unsigned workers;            /* completion-queue threads; handlers run on them */
	unsigned max_message_bytes;  /* larger requests: RESOURCE_EXHAUSTED from gRPC */
	const char *admin_path;      /* the admin socket's path */
	int require_sealed;          /* every KeyService call must be sealed */
	int unsealed_secrets;        /* allow secret plaintext outside sessions (benchmarks) */
	int require_api_key;         /* every principal must sign its calls */
	/* Whether a peer is still on its socket's allow-list (a SIGHUP may
	 * have narrowed it since its connection was accepted): asked for each
	 * call and each request of a stream. NULL: not asked. */
	int (*allowed)(int admin, uid_t uid, gid_t gid, void *arg);
	void *allowed_arg;
};

typedef struct rpc_server rpc_server;

/* grpc_init must already have run. */
int rpc_start(const struct rpc_cfg *cfg, rpc_server **out);
/* Serve an accepted connection (takes ownership of fd). Thread-safe. */
void rpc_add_connection(int fd, void *srv);
/* SIGHUP: a new request window (seconds), used by calls from now on. */
void rpc_set_window(rpc_server *s, unsigned window);
/* Stop accepting calls, let calls in flight finish for up to grace_ms, then
 * cancel the rest and close idle connections (at once when no call is in
 * flight), wait for every call to be released, stop the workers. */
void rpc_shutdown(rpc_server *s, unsigned grace_ms);
/* Calls currently being served (for tests and logs). */
unsigned rpc_live_calls(rpc_server *s);

#endif
