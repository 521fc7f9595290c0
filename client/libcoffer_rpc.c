/*
 * libcoffer_rpc.c — the RPC layer: a client, and one call of a protobuf-c
 * message, sealed in a session where it must be (must_seal), signed with the
 * client's API key when it has one, repeated across a daemon restart where
 * that is safe.
 */
#include "libcoffer_rpc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/un.h>

#include <openssl/crypto.h>

#include "cf_arena.h"
#include "cf_methods.h"
#include "cf_status.h"
#include "cf_time.h"
#include "libcoffer_pipeline.h"
#include "libcoffer_session.h"
#include "libcoffer_signer.h"
#include "libcoffer_transport.h"


struct coffer_client {
	struct lc_conn *conn;
	unsigned int flags;
	struct lc_sessions *sessions;
	struct lc_apikey *apikey;   /* signs every call, when set */
	struct lc_pipeline *pipe;   /* its pipelined stream */
	atomic_uint busy;           /* calls in flight */
	int unsealed;           /* benchmark baseline only: never seal */
};

/* ---- the client ---- */

int
coffer_connect(const char *socket_path, unsigned int flags, coffer_client **out)
{
	struct sockaddr_un sun;
	coffer_client *c = NULL;
	const char *path;
	int r;

	cf_error_clear();
	if (socket_path == NULL || out == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	if ((flags & ~(COFFER_CONNECT_ADMIN | COFFER_CONNECT_SEAL_ALL)) != 0)
		return cf_error(CF_E_INVALID_ARG, "unknown connect flags 0x%x", flags);
	path = socket_path;
	if (strncmp(path, "unix:", 5) == 0)
		path += 5;
	if (*path == '\0')
		return cf_error(CF_E_INVALID_ARG, "empty socket path");
	if (strlen(path) >= sizeof(sun.sun_path))
		return cf_error(CF_E_INVALID_ARG, "socket path longer than %zu bytes",
		    sizeof(sun.sun_path) - 1);
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return cf_nomem();
	c->flags = flags;
	atomic_init(&c->busy, 0);
	if ((c->sessions = lc_sessions_new()) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = lc_conn_new(path, &c->conn)) != CF_OK)
		goto out;
	if ((r = lc_pipeline_new(c->conn, &c->pipe)) != CF_OK) {
		lc_conn_free(c->conn);
		goto out;
	}
	*out = c;
	return CF_OK;
 out:
	lc_sessions_free(c->sessions);
	free(c);
	return r;
}

void
coffer_close(coffer_client *c)
{
	if (c == NULL)
		return;
	/* No call may be running: ours is the last reference. */
	lc_pipeline_free(c->pipe);
	lc_sessions_close(c->conn, c->apikey, c->sessions);
	lc_sessions_free(c->sessions);
	lc_apikey_free(c->apikey);
	lc_conn_free(c->conn);
	free(c);
}

void
coffer_set_timeout(coffer_client *c, unsigned int ms)
{
	if (c != NULL)
		lc_conn_set_timeout(c->conn, ms);
}

unsigned int
coffer_get_timeout(const coffer_client *c)
{
	if (c == NULL)
		return 0;
	return lc_conn_timeout(c->conn);
}

unsigned int
lc_client_flags(const coffer_client *c)
{
	return c->flags;
}

struct lc_sessions *
lc_client_sessions(coffer_client *c)
{
	return c->sessions;
}

void
lc_client_set_apikey(coffer_client *c, struct lc_apikey *k)
{
	/* The open stream was signed with the old key (or none): the next
	 * call opens one signed with k. */
	lc_pipeline_close(c->pipe);
	lc_apikey_free(c->apikey);
	c->apikey = k;
}

int
coffer_set_pipeline(coffer_client *c, int mode)
{
	cf_error_clear();
	if (c == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL client");
	return lc_pipeline_set_mode(c->pipe, mode);
}

void
lc_client_set_unsealed(coffer_client *c, int unsealed)
{
	c->unsealed = unsealed;
}

int
lc_handshake_once(coffer_client *c)
{
	return lc_sessions_handshake_once(c->conn, c->apikey, c->sessions);
}

/* ---- one call ---- */

#define IDEM_RETRY_MS 10000      /* ride out this long of a restart... */
#define IDEM_RETRY_US 250000     /* ...trying again this often */

/* Calls that carry secret plaintext travel sealed; with
 * COFFER_CONNECT_SEAL_ALL every KeyService call does. */
static int
must_seal(const coffer_client *c, const char *method)
{
	const struct cf_method *m = cf_method_by_path(method);

	if (c->unsealed || m == NULL)
		return 0;
	if ((c->flags & COFFER_CONNECT_SEAL_ALL) && m->socket == CF_SOCK_SERVICE)
		return 1;
	return (m->flags & CF_MF_SECRET) != 0;
}

/* One unary call (`first`: the stream ended under it, so it is the call's
 * one repetition). */
static int
unary(coffer_client *c, const struct cf_method *m, const char *method, int sealed, int first,
    uint8_t *buf, size_t len, uint8_t **resp, size_t *rlen)
{
	uint64_t t0 = cf_mono_ms();
	int r;

	/* With an idempotency key an admin call is safe to repeat: ride out a
	 * daemon restart. A KeyService call changes nothing, so it is repeated
	 * once at once: a daemon that restarted closed the connection this
	 * client had not yet noticed (gRPC core reads it only during calls);
	 * but not one that records a nonce (CF_MF_NO_RETRY). Never past the
	 * call's deadline (lc_call_begin). */
	for (int attempt = first;; attempt++) {
		uint8_t *copy;

		if (sealed) {   /* borrows buf */
			r = lc_sealed_call(c->conn, c->apikey, c->sessions, method, buf, len, resp,
			    rlen);
		} else if ((copy = malloc(len ? len : 1)) == NULL) {
			return cf_nomem();
		} else {
			memcpy(copy, buf, len);
			r = lc_signed_transport(c->conn, c->apikey, method, copy, len, resp, rlen,
			    0);
		}
		if (r != CF_E_UNAVAILABLE || lc_call_expired())
			break;
		if (m != NULL && m->socket == CF_SOCK_ADMIN && lc_conn_has_idem_key(c->conn)) {
			if (cf_mono_ms() - t0 >= IDEM_RETRY_MS)
				break;
			usleep(IDEM_RETRY_US);
		}
		else if (attempt > 0 || m == NULL || m->socket != CF_SOCK_SERVICE ||
		    (m->flags & CF_MF_NO_RETRY))
			break;
	}
	return r;
}

/* May the call travel on the client's stream? */
static int
streamable(const coffer_client *c, int sealed, int secret)
{
	return !sealed && !secret && !(c->flags & COFFER_CONNECT_ADMIN);
}

/* After the stream's answer r (CF_OK, a failure, or LC_PIPE_*): a unary
 * call when the stream did not take it, or ended under it. */
static int
unless_streamed(coffer_client *c, const struct cf_method *m, const char *method, int sealed,
    int r, uint8_t *buf, size_t len, uint8_t **resp, size_t *rlen)
{
	if (r <= 0)
		return r;
	return unary(c, m, method, sealed, r == LC_PIPE_RETRY, buf, len, resp, rlen);
}

/* req packed into *buf (in locked memory when it travels sealed: it may
 * carry secrets, and is sealed from there). */
static int
pack(const ProtobufCMessage *req, int sealed, uint8_t **buf, size_t *len)
{
	*len = protobuf_c_message_get_packed_size(req);
	if (*len > COFFER_MAX_MESSAGE)
		return cf_error(CF_E_TOO_LARGE, "request of %zu bytes is above the %u-byte "
		    "message limit", *len, COFFER_MAX_MESSAGE);
	*buf = sealed ? cf_locked_allocator.alloc(NULL, *len ? *len : 1) :
	    malloc(*len ? *len : 1);
	if (*buf == NULL)
		return cf_nomem();
	if (protobuf_c_message_pack(req, *buf) != *len) {
		cf_secure_free(*buf, *len);
		return cf_error(CF_E_INTERNAL, "cannot encode the request");
	}
	return CF_OK;
}

/* The response resp[0..rlen), consumed, unpacked into *out. */
static int
unpack(const char *method, const ProtobufCMessageDescriptor *rdesc, int secret, uint8_t *resp,
    size_t rlen, ProtobufCMessage **out)
{
	ProtobufCMessage *msg;

	msg = protobuf_c_message_unpack(rdesc, secret ? &cf_locked_allocator : NULL, rlen, resp);
	cf_secure_free(resp, rlen);
	if (msg == NULL)
		return cf_error(CF_E_INTERNAL, "malformed response to %s", method);
	*out = msg;
	return CF_OK;
}

int
lc_rpc(coffer_client *c, const char *method, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *rdesc, int secret, ProtobufCMessage **out)
{
	uint8_t *buf = NULL, *resp = NULL;
	size_t len, rlen = 0;
	const struct cf_method *m = cf_method_by_path(method);
	int sealed = must_seal(c, method);
	unsigned others;
	int r;

	if ((r = pack(req, sealed, &buf, &len)) != CF_OK)
		return r;
	/* Its other calls in flight decide whether a call takes the stream. */
	others = atomic_fetch_add(&c->busy, 1);
	lc_call_begin(c->conn);
	r = LC_PIPE_UNARY;
	if (streamable(c, sealed, secret))
		r = lc_pipeline_call(c->pipe, c->apikey, m, others, buf, len, &resp, &rlen);
	r = unless_streamed(c, m, method, sealed, r, buf, len, &resp, &rlen);
	lc_call_end();
	atomic_fetch_sub(&c->busy, 1);
	cf_secure_free(buf, len);
	if (r != CF_OK)
		return r;
	return unpack(method, rdesc, secret, resp, rlen, out);
}

/* A call started and not yet waited for (lc_rpc_start). */
struct lc_call {
	coffer_client *c;
	const char *method;
	const struct cf_method *m;
	int sealed;
	uint8_t *buf;                   /* the packed request, for a unary call */
	size_t len;
	struct lc_pending *w;           /* on the stream; NULL: unary, when waited for */
	uint64_t start_ms;              /* its deadline counts from here (cf_mono_ms) */
};

int
lc_rpc_start(coffer_client *c, const char *method, const ProtobufCMessage *req,
    struct lc_call **out)
{
	struct lc_call *call;
	int r;

	if ((call = calloc(1, sizeof(*call))) == NULL)
		return cf_nomem();
	call->c = c;
	call->start_ms = cf_mono_ms();
	call->method = method;
	call->m = cf_method_by_path(method);
	call->sealed = must_seal(c, method);
	if ((r = pack(req, call->sealed, &call->buf, &call->len)) != CF_OK) {
		free(call);
		return r;
	}
	/* A call started is in flight with the caller's others: it takes the
	 * stream even when it is the only one. */
	atomic_fetch_add(&c->busy, 1);
	r = LC_PIPE_UNARY;
	if (streamable(c, call->sealed, 0))
		r = lc_pipeline_start(c->pipe, c->apikey, call->m, 1, call->buf, call->len,
		    &call->w);
	if (r < 0) {
		atomic_fetch_sub(&c->busy, 1);
		cf_secure_free(call->buf, call->len);
		free(call);
		return r;
	}
	*out = call;
	return CF_OK;
}

int
lc_rpc_wait(struct lc_call *call, const ProtobufCMessageDescriptor *rdesc, ProtobufCMessage **out)
{
	coffer_client *c = call->c;
	uint8_t *resp = NULL;
	size_t rlen = 0;
	int r = LC_PIPE_UNARY;

	if (call->w != NULL)
		r = lc_pipeline_finish(c->pipe, call->w, call->m, &resp, &rlen);
	/* A unary call in its place has what is left of the started one's time. */
	lc_call_begin_at(c->conn, call->start_ms);
	r = unless_streamed(c, call->m, call->method, call->sealed, r, call->buf, call->len,
	    &resp, &rlen);
	lc_call_end();
	atomic_fetch_sub(&c->busy, 1);
	cf_secure_free(call->buf, call->len);
	if (r == CF_OK)
		r = unpack(call->method, rdesc, 0, resp, rlen, out);
	free(call);
	return r;
}

int
coffer_set_idempotency_key(coffer_client *c, const char *key)
{
	size_t n;

	cf_error_clear();
	if (c == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL client");
	if (key == NULL) {
		lc_conn_set_idem_key(c->conn, NULL);
		return CF_OK;
	}
	n = strlen(key);
	if (n < 8 || n > LC_IDEM_KEY_MAX || strspn(key, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "abcdefghijklmnopqrstuvwxyz0123456789._:-") != n)
		return cf_error(CF_E_INVALID_ARG, "an idempotency key is 8..128 characters of "
		    "A-Z a-z 0-9 . _ : -");
	lc_conn_set_idem_key(c->conn, key);
	return CF_OK;
}

int
lc_check_client(const coffer_client *c, const char *name)
{
	cf_error_clear();
	if (c == NULL || name == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL client or key name");
	return CF_OK;
}
