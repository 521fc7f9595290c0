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
#include <openssl/rand.h>

#include "cf_log.h"
#include "cf_status.h"
#include "dispatch.h"

#define RPC_MAX_WORKERS 64
/* Requested calls kept armed per registered method. Handlers run on the
 * completion-queue threads; a call that arrives while every armed request
 * is taken waits in gRPC until a worker re-arms (one per event), so a few
 * are enough. Debian's libgrpc is built with its debug checks, which scan
 * every tag outstanding on the queue at each completion: a deep pool for
 * each of ~40 methods made every call pay for thousands of idle tags. */
#define RPC_ARM_DEPTH 8
/* Only calls matched to a requested call survive the start of a shutdown:
 * this many more per method are armed just before it, so that calls the
 * daemon has already read are served, not refused. */
#define RPC_ARM_DRAIN 64
#define RPC_ARM_GENERIC 4  /* unregistered paths: answered UNIMPLEMENTED */

struct method {
	size_t idx;              /* in the dispatch table */
	void *reg;               /* grpc_server_register_method handle */
};

struct rpc_server {
	grpc_server *server;
	grpc_completion_queue *cq;
	struct rpc_cfg cfg;
	dispatch *d;
	char admin_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	pthread_t workers[RPC_MAX_WORKERS];
	unsigned nworkers;
	struct method *methods;
	size_t nmethods;
	atomic_int shutting_down;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned live;           /* requested or active calls */
	atomic_uint window;      /* cfg.window; SIGHUP may change it */
	int shutdown_done;
	int shutdown_tag;        /* its address is the tag */
	char id_prefix[17];      /* request ids: random per start, then a counter */
	atomic_ullong next_id;
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
	grpc_metadata trailer[2];    /* x-request-id; retry-after-ms when a rate limit refused */
	char retry[16];
	char request_id[AUDIT_REQUEST_ID_MAX + 1];
	int cancelled;
	enum { ST_REQUESTED, ST_SENDING } st;
};

/* ---- the caller ---- */

static int
peer_identify(rpc_server *s, grpc_call *call, struct dcall *h)
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

/* The caller's x-request-id, if it is 1..64 of A-Z a-z 0-9 . _ : - */
static void
request_id_from(char out[AUDIT_REQUEST_ID_MAX + 1], grpc_slice v)
{
	size_t n = GRPC_SLICE_LENGTH(v);
	const unsigned char *p = GRPC_SLICE_START_PTR(v);

	if (n == 0 || n > AUDIT_REQUEST_ID_MAX)
		return;
	for (size_t i = 0; i < n; i++)
		if (!((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z') ||
		      (p[i] >= '0' && p[i] <= '9') || p[i] == '.' || p[i] == '_' || p[i] == ':' ||
		      p[i] == '-'))
			return;
	memcpy(out, p, n);
	out[n] = '\0';
}

/* ---- call processing ---- */

/* A call's deadline as CLOCK_MONOTONIC milliseconds (gRPC's monotonic
 * clock has its own epoch: only the time left is carried over); 0: none. */
static int64_t
deadline_ms(gpr_timespec deadline)
{
	gpr_timespec left;
	struct timespec now;

	if (gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) == 0)
		return 0;
	left = gpr_time_sub(gpr_convert_clock_type(deadline, GPR_CLOCK_MONOTONIC),
			    gpr_now(GPR_CLOCK_MONOTONIC));
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 + gpr_time_to_millis(left);
}

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

/* Identify the caller, read the request, run it through the dispatch
 * table. Sets *code and the status message; returns the packed response
 * (or NULL). */
static grpc_byte_buffer *
serve(struct rpc_call *c, grpc_status_code *code, char *msg, size_t msglen,
      uint32_t *retry_after_ms)
{
	rpc_server *s = c->s;
	/* The window as of this call: SIGHUP may change it (rpc_set_window). */
	struct hservices sv = { .p11 = s->cfg.p11, .kr = s->cfg.kr, .sm = s->cfg.sm, .pol = s->cfg.pol,
				.ak = s->cfg.ak, .au = s->cfg.au, .nn = s->cfg.nn, .st = s->cfg.st,
				.window = atomic_load(&s->window) };
	struct dcall h = { .sv = &sv, .idm = s->cfg.idm,
			   .unsealed_secrets = s->cfg.unsealed_secrets,
			   .require_api_key = s->cfg.require_api_key };
	grpc_byte_buffer_reader rd;
	grpc_byte_buffer *out = NULL;
	grpc_slice in = grpc_empty_slice(), packed;
	uint8_t *buf = NULL;
	size_t len = 0;
	int ciphertext = 0;

	if (c->m == NULL) {
		*code = (grpc_status_code)dispatch_status(CF_E_UNIMPLEMENTED);
		snprintf(msg, msglen, "unknown method");
		return NULL;
	}
	if (peer_identify(s, c->call, &h) != CF_OK) {
		*code = (grpc_status_code)dispatch_status(CF_E_DENIED);
		snprintf(msg, msglen, "caller identity unavailable");
		return NULL;
	}
	for (size_t i = 0; i < c->md.count; i++) {
		const grpc_metadata *md = &c->md.metadata[i];

		if (grpc_slice_str_cmp(md->key, "authorization") == 0 && h.authz_n++ == 0) {
			h.authz = (const char *)GRPC_SLICE_START_PTR(md->value);
			h.authz_len = GRPC_SLICE_LENGTH(md->value);
		} else if (grpc_slice_str_cmp(md->key, "x-request-id") == 0) {
			request_id_from(h.request_id, md->value);
		} else if (grpc_slice_str_cmp(md->key, "idempotency-key") == 0) {
			size_t n = GRPC_SLICE_LENGTH(md->value);

			h.idem_bad = n > STORE_IDEM_KEY_MAX;
			if (!h.idem_bad) {
				memcpy(h.idem_key, GRPC_SLICE_START_PTR(md->value), n);
				h.idem_key[n] = '\0';
				h.idem_bad = idem_key_check(h.idem_key) != CF_OK;
			}
		}
	}
	h.deadline_ms = deadline_ms(c->deadline);
	if (h.request_id[0] == '\0')
		snprintf(h.request_id, sizeof(h.request_id), "%s-%llx", s->id_prefix,
			 (unsigned long long)atomic_fetch_add(&s->next_id, 1));
	memcpy(c->request_id, h.request_id, sizeof(c->request_id));
	if (c->recv == NULL || !grpc_byte_buffer_reader_init(&rd, c->recv)) {
		*code = (grpc_status_code)dispatch_status(CF_E_INVALID_ARG);
		snprintf(msg, msglen, "no readable request message");
		return NULL;
	}
	ciphertext = dispatch_ciphertext(s->d, c->m->idx);
	in = grpc_byte_buffer_reader_readall(&rd);
	grpc_byte_buffer_reader_destroy(&rd);
	*code = (grpc_status_code)dispatch_call(s->d, c->m->idx, &h, GRPC_SLICE_START_PTR(in),
						GRPC_SLICE_LENGTH(in), &buf, &len, msg, msglen,
						retry_after_ms);
	/* Requests may carry secrets (key material): do not leave them behind. */
	if (!ciphertext)
		OPENSSL_cleanse(GRPC_SLICE_START_PTR(in), GRPC_SLICE_LENGTH(in));
	grpc_slice_unref(in);
	if (*code == GRPC_STATUS_OK) {
		packed = grpc_slice_from_copied_buffer((const char *)buf, len);
		out = grpc_raw_byte_buffer_create(&packed, 1);
		grpc_slice_unref(packed);
	}
	if (buf != NULL && !ciphertext)
		OPENSSL_cleanse(buf, len);
	free(buf);
	return out;
}

static void
respond(struct rpc_call *c)
{
	grpc_op ops[4];
	grpc_op *op = ops;
	grpc_status_code code;
	char msg[CF_ERROR_DETAIL_MAX];
	uint32_t retry = 0;
	grpc_call_error e;

	c->send = serve(c, &code, msg, sizeof(msg), &retry);
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
	/* The request id of the audit record, so callers can find theirs. */
	c->trailer[0].key = grpc_slice_from_static_string("x-request-id");
	c->trailer[0].value = grpc_slice_from_static_string(c->request_id);
	op->data.send_status_from_server.trailing_metadata_count = c->request_id[0] ? 1 : 0;
	op->data.send_status_from_server.trailing_metadata = c->trailer;
	if (retry > 0) {
		snprintf(c->retry, sizeof(c->retry), "%u", retry);
		c->trailer[1].key = grpc_slice_from_static_string("retry-after-ms");
		c->trailer[1].value = grpc_slice_from_static_string(c->retry);
		op->data.send_status_from_server.trailing_metadata_count = 2;
	}
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
rpc_start(const struct rpc_cfg *cfg, rpc_server **out)
{
	struct dispatch_cfg dc = { .require_sealed = cfg->require_sealed };
	grpc_arg args[4];
	grpc_channel_args cargs = { 4, args };
	rpc_server *s;
	pthread_condattr_t ca;
	int r;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		return cf_nomem();
	s->cfg = *cfg;
	atomic_init(&s->window, cfg->window);
	{
		uint8_t rnd[8];

		if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
			free(s);
			return cf_error(CF_E_INTERNAL, "random number generator failed");
		}
		for (size_t i = 0; i < sizeof(rnd); i++)
			snprintf(s->id_prefix + 2 * i, 3, "%02x", rnd[i]);
	}
	snprintf(s->admin_path, sizeof(s->admin_path), "%s", cfg->admin_path);
	pthread_mutex_init(&s->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cv, &ca);
	pthread_condattr_destroy(&ca);
	if ((r = dispatch_new(&dc, &s->d)) != CF_OK)
		goto fail;
	s->nmethods = dispatch_count(s->d);
	if ((s->methods = calloc(s->nmethods, sizeof(*s->methods))) == NULL) {
		r = cf_nomem();
		goto fail;
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
	for (size_t i = 0; i < s->nmethods; i++) {
		s->methods[i].idx = i;
		s->methods[i].reg = grpc_server_register_method(
			s->server, dispatch_path(s->d, i), NULL,
			GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
	}
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
fail:
	dispatch_free(s->d);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	free(s);
	return r;
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

void
rpc_set_window(rpc_server *s, unsigned window)
{
	atomic_store(&s->window, window);
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
	for (size_t i = 0; i < s->nmethods; i++)
		for (unsigned k = 0; k < RPC_ARM_DRAIN; k++)
			arm(s, &s->methods[i]);
	atomic_store(&s->shutting_down, 1);
	grpc_server_shutdown_and_notify(s->server, s->cq, &s->shutdown_tag);
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += grace_ms / 1000;
	deadline.tv_nsec += (long)(grace_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	/* Shutdown fails every requested call not yet matched, so what stays
	 * live is the calls in flight: they drain. An idle connection would
	 * hold the shutdown until the grace period ends; once no call is live,
	 * the connections are closed. */
	pthread_mutex_lock(&s->mu);
	while (!s->shutdown_done && s->live > 0)
		if (pthread_cond_timedwait(&s->cv, &s->mu, &deadline) == ETIMEDOUT)
			break;
	if (!s->shutdown_done) {
		unsigned running = s->live;

		pthread_mutex_unlock(&s->mu);
		if (running > 0)
			cf_log_warn("shutdown: grace period over; cancelling the %u calls still "
				    "running", running);
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
	dispatch_free(s->d);
	free(s);
}
