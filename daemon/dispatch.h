/*
 * dispatch.h — from a method path and request bytes to response bytes and a
 * status, without gRPC: the method table (common/cf_methods.h) bound to the
 * protoc-c service descriptors and the handlers, which socket serves what,
 * the sealing policy, one key lookup and one authorization per call, protobuf decode
 * and encode around the handlers, sealed calls (SessionService/Call) opened,
 * run and sealed again, and the one table from Coffer status to gRPC status
 * codes (numeric: they are fixed by the gRPC specification).
 */
#ifndef COFFER_DISPATCH_H
#define COFFER_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include "handlers.h"
#include "idempotency.h"

struct dispatch_cfg {
	int require_sealed;     /* every KeyService call must be sealed */
};

typedef struct dispatch dispatch;

/* A call as the adapter (rpc.c) hands it over: the daemon's services and
 * settings, the caller from its peer credentials, and what the call's
 * metadata says. Dispatch derives from it what the handler sees (struct
 * hcall); the rest stays dispatch's. */
struct dcall {
	const struct hservices *sv;
	idem *idm;              /* idempotency records of mutating calls */
	int unsealed_secrets;   /* configuration allows secret plaintext unsealed */
	int require_api_key;    /* every principal must sign its calls */
	uid_t uid;
	gid_t gid;
	pid_t pid;
	int admin;              /* the call arrived on the admin socket */
	const char *authz;      /* the call's authorization metadata (the first), or NULL */
	size_t authz_len;
	unsigned authz_n;       /* authorization entries the call carried */
	char request_id[AUDIT_REQUEST_ID_MAX + 1];
	char idem_key[STORE_IDEM_KEY_MAX + 1];   /* "idempotency-key" metadata, or "" */
	int idem_bad;           /* that metadata was malformed */
	unsigned idem_n;        /* idempotency-key entries the call carried */
	int64_t deadline_ms;    /* the call's deadline, CLOCK_MONOTONIC milliseconds; 0: none */
	/* A request of a pipelined stream (proto/pipeline.md): its opening was
	 * authenticated, signed with this API key ("" when unsigned), which
	 * must still be live; NULL: a call of its own. */
	const char *stream_key_id;
	uint32_t stream_key_gen;        /* ... its secret that signed the opening */
	const char *stream_principal;   /* ... and the principal it opened as */
	/* Set (atomically, by another thread) once the caller cancelled the
	 * call; NULL: not watched. Batches stop running items then. */
	const int *cancelled;
	/* A request of a stream's frame: its record is queued here and not
	 * waited for; the adapter waits once for the frame (audit_group_end)
	 * before releasing any of its answers. NULL: each call waits. */
	struct audit_group *audit_group;
	/* Set: the call's metric is the adapter's to count, once its answer is
	 * final (metrics_call with this start); NULL: counted on return. */
	uint64_t *metrics_t0;
};

int dispatch_new(const struct dispatch_cfg *cfg, dispatch **out);
void dispatch_free(dispatch *d);   /* accepts NULL */

/* Methods are numbered by enum cf_method_id (cf_methods.h), 0 .. dispatch_count()-1. */
size_t dispatch_count(const dispatch *d);
const char *dispatch_path(const dispatch *d, size_t i);   /* "/pkg.Service/Method" */
/* Method i's messages hold only ciphertext (a sealed call's envelope): the
 * adapter need not wipe its copies of them. */
int dispatch_ciphertext(const dispatch *d, size_t i);
/* Method i is a batch: worth telling it when its caller gives up (dcall.cancelled). */
int dispatch_batch(const dispatch *d, size_t i);
/* Method i changes something (CF_MF_MUTATING): it may wait for the state store. */
int dispatch_mutating(const dispatch *d, size_t i);

/* gRPC status code of a Coffer status. */
unsigned dispatch_status(int st);
/* Its name: "OK", "FAILED_PRECONDITION", ... */
const char *dispatch_status_name(int st);

/* Run method i for the call c. Returns the gRPC status code and writes the
 * error message (msg) or the packed response (*out, malloc'ed: the caller
 * wipes and frees it). Requests and responses are wiped after use. A call
 * refused by a rate limit sets *retry_after_ms (else 0).
 *
 * On the service socket every call but Health and GetIdentity (public)
 * needs a principal (policy
 * identify), and every KeyService call a grant for its operation and key
 * (policy check); refusals are logged. */
unsigned dispatch_call(const dispatch *d, size_t i, const struct dcall *c, const uint8_t *in,
		       size_t inlen, uint8_t **out, size_t *outlen, char *msg, size_t msglen,
		       uint32_t *retry_after_ms);

/* The pipelined stream's path, "/coffer.v1.Pipeline/Stream". */
extern const char dispatch_pipeline_path[];

/* The opening of a pipelined stream by the caller c: served on the service
 * socket only; the caller must be a principal, and sign the opening (over
 * dispatch_pipeline_path and an empty body) when its calls must be signed.
 * Recorded in the audit trail. Returns the gRPC status code, the message in
 * msg; on OK, key_id is the API key that signed it ("" if none), *key_gen
 * the generation of its secret that did, and who the principal. */
unsigned dispatch_open_stream(const dispatch *d, const struct dcall *c, char *key_id,
			      size_t kidlen, uint32_t *key_gen,
			      char who[STORE_PRINCIPAL_NAME_MAX + 1], char *msg, size_t msglen);

/* A pipelined stream's request for the method at path: run by
 * dispatch_call when it is a KeyService method the stream carries; else
 * INVALID_ARGUMENT saying why, recorded in the audit trail as a refused
 * request of the stream (c->stream_principal's). */
unsigned dispatch_pipeline_call(const dispatch *d, const struct dcall *c, const char *path,
				const uint8_t *in, size_t inlen, uint8_t **out, size_t *outlen,
				char *msg, size_t msglen, uint32_t *retry_after_ms);

#endif
