#include "rpc.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_posix.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <openssl/crypto.h>

#include "cf_log.h"
#include "cf_pbwipe.h"
#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "handlers.h"

#define RPC_MAX_WORKERS 64
/* Requested calls kept armed per registered method. Handlers run on the
 * completion-queue threads, so a call that arrives while every thread is
 * busy waits in gRPC; only calls matched to a requested call survive the
 * start of a shutdown, hence a deep pool (each entry is ~300 bytes). */
#define RPC_ARM_DEPTH 64
#define RPC_ARM_GENERIC 4  /* unregistered paths: answered UNIMPLEMENTED */

enum socket_kind { SOCK_SERVICE, SOCK_ADMIN, SOCK_BOTH };

struct method {
	char path[128];
	const char *service;
	const char *name;
	enum socket_kind where;
	const ProtobufCMessageDescriptor *input;
	handler_fn fn;
	void *reg;               /* grpc_server_register_method handle */
};

struct rpc_server {
	grpc_server *server;
	grpc_completion_queue *cq;
	keyring *kr;
	struct rpc_cfg cfg;
	char admin_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	pthread_t workers[RPC_MAX_WORKERS];
	unsigned nworkers;
	struct method *methods;
	size_t nmethods;
	atomic_int shutting_down;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned live;           /* requested or active calls */
	int shutdown_done;
	int shutdown_tag;        /* its address is the tag */
};

/* A requested call: registered (m != NULL, the request payload arrives with
 * the call) or generic (m == NULL, a path nobody registered). */
struct rpc_call {
	rpc_server *s;
	const struct method *m;
	grpc_call *call;
	grpc_call_details details;   /* generic calls only */
	gpr_timespec deadline;       /* registered calls only */
	grpc_metadata_array md;
	grpc_byte_buffer *recv;
	grpc_byte_buffer *send;
	grpc_slice status_details;
	int cancelled;
	enum { ST_REQUESTED, ST_SENDING } st;
};

/* ---- the one table from Coffer status to gRPC status ---- */

static grpc_status_code
rpc_status(int st)
{
	switch (st) {
	case CF_OK: return GRPC_STATUS_OK;
	case CF_E_INVALID_ARG:
	case CF_E_DECRYPT:
	case CF_E_BAD_SIGNATURE: return GRPC_STATUS_INVALID_ARGUMENT;
	case CF_E_TOO_LARGE:
	case CF_E_EXHAUSTED: return GRPC_STATUS_RESOURCE_EXHAUSTED;
	case CF_E_NOT_FOUND: return GRPC_STATUS_NOT_FOUND;
	case CF_E_EXISTS: return GRPC_STATUS_ALREADY_EXISTS;
	case CF_E_WRONG_KEY_TYPE:
	case CF_E_PRECONDITION:
	case CF_E_UNSUPPORTED: return GRPC_STATUS_FAILED_PRECONDITION;
	case CF_E_DENIED: return GRPC_STATUS_PERMISSION_DENIED;
	case CF_E_UNAUTHENTICATED: return GRPC_STATUS_UNAUTHENTICATED;
	case CF_E_BUSY:
	case CF_E_UNAVAILABLE: return GRPC_STATUS_UNAVAILABLE;
	case CF_E_TIMEOUT: return GRPC_STATUS_DEADLINE_EXCEEDED;
	case CF_E_CANCELLED: return GRPC_STATUS_CANCELLED;
	case CF_E_UNIMPLEMENTED: return GRPC_STATUS_UNIMPLEMENTED;
	default: return GRPC_STATUS_INTERNAL;
	}
}

/* ---- dispatch table ---- */

static int
add_service(rpc_server *s, const ProtobufCServiceDescriptor *svc, enum socket_kind where)
{
	for (unsigned i = 0; i < svc->n_methods; i++) {
		const ProtobufCMethodDescriptor *m = &svc->methods[i];
		const struct handler *h = handlers_find(svc->name, m->name);
		struct method *e;

		if (h == NULL)
			return cf_error(CF_E_INTERNAL, "no handler for %s/%s", svc->name, m->name);
		e = &s->methods[s->nmethods++];
		snprintf(e->path, sizeof(e->path), "/%s/%s", svc->name, m->name);
		e->service = svc->name;
		e->name = m->name;
		e->where = where;
		e->input = m->input;
		e->fn = h->fn;
	}
	return CF_OK;
}

/* ---- the caller ---- */

static int
peer_identify(rpc_server *s, grpc_call *call, struct hctx *h)
{
	struct sockaddr_un sa;
	socklen_t salen = sizeof(sa);
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	char *peer = grpc_call_get_peer(call), *end;
	long fd;
	int r = CF_E_DENIED;

	if (peer == NULL || strncmp(peer, "fd:", 3) != 0)
		goto out;
	fd = strtol(peer + 3, &end, 10);
	if (*end != '\0' || fd < 0 ||
	    getsockopt((int)fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 ||
	    getsockname((int)fd, (struct sockaddr *)&sa, &salen) != 0)
		goto out;
	h->uid = cred.uid;
	h->gid = cred.gid;
	h->pid = cred.pid;
	sa.sun_path[sizeof(sa.sun_path) - 1] = '\0';
	h->admin = strcmp(sa.sun_path, s->admin_path) == 0;
	r = CF_OK;
out:
	gpr_free(peer);
	return r;
}

/* ---- call processing ---- */

static void
call_free(struct rpc_call *c)
{
	rpc_server *s = c->s;

	if (c->call != NULL)
		grpc_call_unref(c->call);
	grpc_call_details_destroy(&c->details);
	grpc_metadata_array_destroy(&c->md);
	if (c->recv != NULL)
		grpc_byte_buffer_destroy(c->recv);
	if (c->send != NULL)
		grpc_byte_buffer_destroy(c->send);
	grpc_slice_unref(c->status_details);
	free(c);
	pthread_mutex_lock(&s->mu);
	s->live--;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

/* Arm one requested call for method m (NULL: any unregistered path). */
static void
arm(rpc_server *s, const struct method *m)
{
	struct rpc_call *c;
	grpc_call_error e;

	if (atomic_load(&s->shutting_down) || (c = calloc(1, sizeof(*c))) == NULL)
		return;
	c->s = s;
	c->m = m;
	c->status_details = grpc_empty_slice();
	grpc_call_details_init(&c->details);
	grpc_metadata_array_init(&c->md);
	pthread_mutex_lock(&s->mu);
	s->live++;
	pthread_mutex_unlock(&s->mu);
	if (m != NULL)
		e = grpc_server_request_registered_call(s->server, m->reg, &c->call, &c->deadline,
							&c->md, &c->recv, s->cq, s->cq, c);
	else
		e = grpc_server_request_call(s->server, &c->call, &c->details, &c->md, s->cq,
					     s->cq, c);
	if (e != GRPC_CALL_OK) {
		cf_log_error("grpc_server_request_call: %d", (int)e);
		call_free(c);
	}
}

/* Decode, authorise by socket, run the handler, encode. Sets *code and the
 * status message; returns the packed response (or NULL). */
static grpc_byte_buffer *
dispatch(struct rpc_call *c, grpc_status_code *code, char *msg, size_t msglen)
{
	rpc_server *s = c->s;
	const struct method *m = c->m;
	struct hctx h = { .kr = s->kr };
	ProtobufCMessage *req = NULL, *resp = NULL;
	grpc_byte_buffer_reader rd;
	grpc_byte_buffer *out = NULL;
	grpc_slice in = grpc_empty_slice(), packed;
	uint8_t *buf = NULL;
	size_t len;
	int r;

	cf_error_clear();
	if (m == NULL) {
		r = cf_error(CF_E_UNIMPLEMENTED, "unknown method");
		goto out;
	}
	if ((r = peer_identify(s, c->call, &h)) != CF_OK) {
		r = cf_error(CF_E_DENIED, "caller identity unavailable");
		goto out;
	}
	if ((m->where == SOCK_ADMIN && !h.admin) || (m->where == SOCK_SERVICE && h.admin)) {
		r = cf_error(CF_E_UNIMPLEMENTED, "%s is not served on the %s socket", m->path,
			     h.admin ? "admin" : "service");
		goto out;
	}
	if (c->recv == NULL) {
		r = cf_error(CF_E_INVALID_ARG, "no request message");
		goto out;
	}
	if (!grpc_byte_buffer_reader_init(&rd, c->recv)) {
		r = cf_error(CF_E_INVALID_ARG, "unreadable request message");
		goto out;
	}
	in = grpc_byte_buffer_reader_readall(&rd);
	grpc_byte_buffer_reader_destroy(&rd);
	req = protobuf_c_message_unpack(m->input, &cf_pbwipe_allocator, GRPC_SLICE_LENGTH(in),
					GRPC_SLICE_START_PTR(in));
	/* Requests may carry secrets (key material): do not leave them behind. */
	OPENSSL_cleanse(GRPC_SLICE_START_PTR(in), GRPC_SLICE_LENGTH(in));
	if (req == NULL) {
		r = cf_error(CF_E_INVALID_ARG, "request is not a valid %s message", m->input->name);
		goto out;
	}
	if ((r = m->fn(&h, req, &resp)) != CF_OK)
		goto out;
	len = protobuf_c_message_get_packed_size(resp);
	if ((buf = malloc(len ? len : 1)) == NULL) {
		r = CF_E_NOMEM;
		goto out;
	}
	protobuf_c_message_pack(resp, buf);
	packed = grpc_slice_from_copied_buffer((const char *)buf, len);
	out = grpc_raw_byte_buffer_create(&packed, 1);
	grpc_slice_unref(packed);
	OPENSSL_cleanse(buf, len);
out:
	*code = rpc_status(r);
	snprintf(msg, msglen, "%s", r == CF_OK ? "" : cf_error_detail());
	if (r != CF_OK && *code == GRPC_STATUS_INTERNAL)
		cf_log_error("%s: %s", m ? m->path : "?", cf_error_detail());
	free(buf);
	grpc_slice_unref(in);
	if (req != NULL)
		protobuf_c_message_free_unpacked(req, &cf_pbwipe_allocator);
	if (resp != NULL)
		protobuf_c_message_free_unpacked(resp, &cf_pbwipe_allocator);
	return out;
}

static void
respond(struct rpc_call *c)
{
	grpc_op ops[4];
	grpc_op *op = ops;
	grpc_status_code code;
	char msg[CF_ERROR_DETAIL_MAX];
	grpc_call_error e;

	c->send = dispatch(c, &code, msg, sizeof(msg));
	memset(ops, 0, sizeof(ops));
	op->op = GRPC_OP_SEND_INITIAL_METADATA;
	op++;
	if (c->send != NULL) {
		op->op = GRPC_OP_SEND_MESSAGE;
		op->data.send_message.send_message = c->send;
		op++;
	}
	c->status_details = grpc_slice_from_copied_string(msg);
	op->op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	op->data.send_status_from_server.status = code;
	op->data.send_status_from_server.status_details = &c->status_details;
	op++;
	op->op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	op->data.recv_close_on_server.cancelled = &c->cancelled;
	op++;
	c->st = ST_SENDING;
	if ((e = grpc_call_start_batch(c->call, ops, (size_t)(op - ops), c, NULL)) != GRPC_CALL_OK) {
		cf_log_error("grpc_call_start_batch(send): %d", (int)e);
		call_free(c);
	}
}

static void
on_event(rpc_server *s, struct rpc_call *c, int success)
{
	switch (c->st) {
	case ST_REQUESTED:
		if (!success) { /* the server is shutting down */
			call_free(c);
			return;
		}
		arm(s, c->m);
		respond(c);
		return;
	case ST_SENDING:
		call_free(c);
		return;
	}
}

/* The completion-queue threads also run the handlers: with the request
 * payload delivered with the call, a call costs two queue events and no
 * hand-off between threads. */
static void *
worker_main(void *arg)
{
	rpc_server *s = arg;

	for (;;) {
		grpc_event ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME),
							   NULL);

		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
		if (ev.type != GRPC_OP_COMPLETE)
			continue;
		if (ev.tag == &s->shutdown_tag) {
			pthread_mutex_lock(&s->mu);
			s->shutdown_done = 1;
			pthread_cond_broadcast(&s->cv);
			pthread_mutex_unlock(&s->mu);
			continue;
		}
		on_event(s, ev.tag, ev.success);
	}
	return NULL;
}

int
rpc_start(const struct rpc_cfg *cfg, keyring *kr, rpc_server **out)
{
	grpc_arg args[4];
	grpc_channel_args cargs = { 4, args };
	rpc_server *s;
	pthread_condattr_t ca;
	size_t total;
	int r;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		return CF_E_NOMEM;
	s->kr = kr;
	s->cfg = *cfg;
	snprintf(s->admin_path, sizeof(s->admin_path), "%s", cfg->admin_path);
	pthread_mutex_init(&s->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cv, &ca);
	pthread_condattr_destroy(&ca);
	total = coffer__v1__key_service__descriptor.n_methods +
		coffer__v1__admin_service__descriptor.n_methods +
		grpc__health__v1__health__descriptor.n_methods;
	if ((s->methods = calloc(total, sizeof(*s->methods))) == NULL) {
		free(s);
		return CF_E_NOMEM;
	}
	if ((r = add_service(s, &coffer__v1__key_service__descriptor, SOCK_SERVICE)) != CF_OK ||
	    (r = add_service(s, &coffer__v1__admin_service__descriptor, SOCK_ADMIN)) != CF_OK ||
	    (r = add_service(s, &grpc__health__v1__health__descriptor, SOCK_BOTH)) != CF_OK) {
		free(s->methods);
		free(s);
		return r;
	}
	args[0].type = GRPC_ARG_INTEGER;
	args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
	args[0].value.integer = (int)cfg->max_message_bytes;
	args[1].type = GRPC_ARG_INTEGER;
	args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
	args[1].value.integer = 8 << 20;
	/* Local sockets: no bandwidth probing, no channelz bookkeeping per call. */
	args[2].type = GRPC_ARG_INTEGER;
	args[2].key = GRPC_ARG_ENABLE_CHANNELZ;
	args[2].value.integer = 0;
	args[3].type = GRPC_ARG_INTEGER;
	args[3].key = GRPC_ARG_HTTP2_BDP_PROBE;
	args[3].value.integer = 0;
	s->server = grpc_server_create(&cargs, NULL);
	s->cq = grpc_completion_queue_create_for_next(NULL);
	grpc_server_register_completion_queue(s->server, s->cq, NULL);
	for (size_t i = 0; i < s->nmethods; i++)
		s->methods[i].reg = grpc_server_register_method(
			s->server, s->methods[i].path, NULL,
			GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
	grpc_server_start(s->server);
	s->nworkers = cfg->workers ? cfg->workers : 4;
	if (s->nworkers > RPC_MAX_WORKERS)
		s->nworkers = RPC_MAX_WORKERS;
	for (size_t i = 0; i < s->nmethods; i++)
		for (unsigned k = 0; k < RPC_ARM_DEPTH; k++)
			arm(s, &s->methods[i]);
	for (unsigned k = 0; k < RPC_ARM_GENERIC; k++)
		arm(s, NULL);
	for (unsigned i = 0; i < s->nworkers; i++)
		pthread_create(&s->workers[i], NULL, worker_main, s);
	*out = s;
	return CF_OK;
}

void
rpc_add_connection(int fd, void *srv)
{
	rpc_server *s = srv;
	grpc_server_credentials *creds;

	if (atomic_load(&s->shutting_down)) {
		close(fd);
		return;
	}
	creds = grpc_insecure_server_credentials_create();
	grpc_server_add_channel_from_fd(s->server, fd, creds);
	grpc_server_credentials_release(creds);
}

unsigned
rpc_live_calls(rpc_server *s)
{
	unsigned n;

	pthread_mutex_lock(&s->mu);
	n = s->live;
	pthread_mutex_unlock(&s->mu);
	return n;
}

void
rpc_shutdown(rpc_server *s, unsigned grace_ms)
{
	struct timespec deadline;

	if (s == NULL)
		return;
	atomic_store(&s->shutting_down, 1);
	grpc_server_shutdown_and_notify(s->server, s->cq, &s->shutdown_tag);
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += grace_ms / 1000;
	deadline.tv_nsec += (long)(grace_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&s->mu);
	while (!s->shutdown_done)
		if (pthread_cond_timedwait(&s->cv, &s->mu, &deadline) == ETIMEDOUT)
			break;
	if (!s->shutdown_done) {
		pthread_mutex_unlock(&s->mu);
		cf_log_warn("shutdown: grace period over; cancelling %u calls", rpc_live_calls(s));
		grpc_server_cancel_all_calls(s->server);
		pthread_mutex_lock(&s->mu);
	}
	/* Shutting the queue down before every call is released aborts gRPC. */
	while (s->live > 0 || !s->shutdown_done)
		pthread_cond_wait(&s->cv, &s->mu);
	pthread_mutex_unlock(&s->mu);
	grpc_completion_queue_shutdown(s->cq);
	for (unsigned i = 0; i < s->nworkers; i++)
		pthread_join(s->workers[i], NULL);
	grpc_server_destroy(s->server);
	grpc_completion_queue_destroy(s->cq);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	free(s->methods);
	free(s);
}
