#include "rpc.h"

#include <errno.h>
#include <stddef.h>
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
#include "cf_pbcheck.h"
#include "cf_pbwipe.h"
#include "cf_reqsign.h"
#include "cf_status.h"
#include "cf_time.h"
#include "change_mu.h"
#include "coffer/v1/pipeline.pb-c.h"
#include "dispatch.h"
#include "metrics.h"
#include "share.h"

#define RPC_MAX_WORKERS 64
/* Changes (CF_MF_MUTATING) run on threads of their own: a change may wait
 * long for the state store (another process's lock, a server that hangs,
 * the fleet's change lock), and changes waiting on the completion-queue
 * threads left none for Sign, Mac or a health check (found from outside:
 * a Mac waited 15 s behind 8 changes on a locked SQLite store). */
#define RPC_CHANGERS 4
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
#define RPC_ARM_STREAMS 4  /* pipelined streams being opened at once */
/* A stream stops reading requests while this many answers wait to be sent
 * (the caller is not reading them), and reads again below half of it. */
#define RPC_STREAM_QUEUE 256

/* Connections whose caller is kept by descriptor number (peer_read);
 * others are read per call. */
#define RPC_PEERS 1024
struct rpc_peer {
	uid_t uid;
	gid_t gid;
	pid_t pid;
	int admin;
	int known;
};

struct method {
	size_t idx;              /* in the dispatch table; SIZE_MAX: the pipelined stream */
	void *reg;               /* grpc_server_register_method handle */
};

/* What a completion-queue tag points at: the first member of a requested
 * call, or one of a stream's operations (rpc_stream). */
enum tag_kind { TAG_CALL, TAG_C_CLOSE, TAG_S_RECV, TAG_S_SEND, TAG_S_CLOSE, TAG_S_END };
struct tag {
	enum tag_kind kind;
};

struct rpc_server {
	grpc_server *server;
	grpc_completion_queue *cq;
	struct rpc_cfg cfg;
	dispatch *d;
	char admin_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	pthread_t workers[RPC_MAX_WORKERS];
	unsigned nworkers;
	pthread_t changers[RPC_CHANGERS];
	unsigned nchangers;      /* 0: changes run on the workers */
	pthread_mutex_t chq_mu;  /* the changes waiting for a changer */
	pthread_cond_t chq_cv;
	struct rpc_call *chq_head, **chq_tail;
	int chq_stop;
	struct method *methods;
	size_t nmethods;
	struct method pipeline;  /* coffer.v1.Pipeline/Stream */
	struct rpc_stream *streams;  /* open streams (mu): cancelled at shutdown */
	share *share;            /* helps run frames and batches on the other cores */
	atomic_int shutting_down;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned live;           /* requested or active calls */
	atomic_uint window;      /* cfg.window; SIGHUP may change it */
	int shutdown_done;
	int shutdown_tag;        /* its address is the tag */
	char id_prefix[17];      /* request ids: random per start, then a counter */
	atomic_ullong next_id;
	pthread_mutex_t peers_mu;
	struct rpc_peer peers[RPC_PEERS];   /* by descriptor number (peer_read) */
};

/* A requested call: registered (m != NULL, the request payload arrives with
 * the call) or generic (m == NULL, a path nobody registered). */
struct rpc_call {
	struct tag tag;              /* TAG_CALL; first: the call is its own tag */
	/* A batch learns of its caller's cancel while it runs: its
	 * RECV_CLOSE_ON_SERVER goes first, alone (TAG_C_CLOSE), and sets gone.
	 * refs: the batches outstanding (the last frees the call). */
	struct tag close_tag;
	int refs;                    /* atomic */
	int gone;                    /* atomic */
	rpc_server *s;
	const struct method *m;
	grpc_call *call;
	grpc_call_details details;   /* generic calls only */
	gpr_timespec deadline;       /* registered calls only */
	grpc_metadata_array md;
	grpc_byte_buffer *recv;
	grpc_byte_buffer *send;
	/* The packed answer, kept as it is until its record is written: a
	 * withheld one is wiped before gRPC ever holds a copy. */
	uint8_t *out;
	size_t outlen;
	int ciphertext;              /* out is ciphertext: no wipe needed */
	grpc_slice status_details;
	grpc_metadata trailer[2];    /* x-request-id; retry-after-ms when a rate limit refused */
	char retry[16];
	char request_id[AUDIT_REQUEST_ID_MAX + 1];
	/* The answer, kept while its audit record is written (answer()). */
	grpc_status_code code;
	uint32_t retry_ms;
	uint64_t t0;                 /* metrics_start() of a call that ran (counted in answer()) */
	int ran;
	int watch;
	char msg[CF_ERROR_DETAIL_MAX];
	int cancelled;
	enum { ST_REQUESTED, ST_SENDING } st;
	struct rpc_call *chq_next;   /* queued for a changer */
	uint64_t chq_since;          /* cf_mono_ms() when queued */
};

/* ---- the caller ---- */

/* Who is on a connection: read once, when it is accepted, and kept by its
 * descriptor number for its calls (two system calls fewer per call). The
 * entry is set before gRPC reads from the descriptor, and a call keeps its
 * connection open, so the number a call names is its own connection's (as
 * reading it per call already assumed). */
static int
peer_read(rpc_server *s, int fd, struct rpc_peer *p)
{
	struct sockaddr_un sa;
	socklen_t salen = sizeof(sa);
	struct ucred cred;
	socklen_t clen = sizeof(cred);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &salen) != 0)
		return -1;
	p->uid = cred.uid;
	p->gid = cred.gid;
	p->pid = cred.pid;
	sa.sun_path[sizeof(sa.sun_path) - 1] = '\0';
	p->admin = strcmp(sa.sun_path, s->admin_path) == 0;
	p->known = 1;
	return 0;
}

/* Whether a caller is still on its socket's allow-list; its refusal in why. */
static int
still_allowed(const rpc_server *s, int admin, uid_t uid, gid_t gid, char *why, size_t len)
{
	if (s->cfg.allowed == NULL || s->cfg.allowed(admin, uid, gid, s->cfg.allowed_arg))
		return 1;
	snprintf(why, len, "uid %u gid %u is no longer on the %s socket's allow-list (a reload "
		 "changed it): this connection serves no more calls", (unsigned)uid,
		 (unsigned)gid, admin ? "admin" : "service");
	return 0;
}

/* The caller's credentials into h: CF_OK, or CF_E_DENIED with why set. */
static int
peer_identify(rpc_server *s, grpc_call *call, struct dcall *h, char *why, size_t len)
{
	struct rpc_peer p = { 0 };
	char *peer = grpc_call_get_peer(call), *end;
	long fd;
	int r = CF_E_DENIED;

	snprintf(why, len, "caller identity unavailable");
	if (peer == NULL || strncmp(peer, "fd:", 3) != 0)
		goto out;
	fd = strtol(peer + 3, &end, 10);
	if (*end != '\0' || fd < 0)
		goto out;
	if (fd < RPC_PEERS) {
		pthread_mutex_lock(&s->peers_mu);
		p = s->peers[fd];
		pthread_mutex_unlock(&s->peers_mu);
	}
	if (!p.known && peer_read(s, (int)fd, &p) != 0)
		goto out;
	if (!still_allowed(s, p.admin, p.uid, p.gid, why, len))
		goto out;
	h->uid = p.uid;
	h->gid = p.gid;
	h->pid = p.pid;
	h->admin = p.admin;
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

/* What a call's metadata says into h: its authorization (pointing into
 * mds), x-request-id and idempotency-key; a request id of the daemon's own
 * when the caller sent none. */
static void
call_metadata(rpc_server *s, const grpc_metadata_array *mds, struct dcall *h)
{
	for (size_t i = 0; i < mds->count; i++) {
		const grpc_metadata *md = &mds->metadata[i];

		if (grpc_slice_str_cmp(md->key, "authorization") == 0 && h->authz_n++ == 0) {
			h->authz = (const char *)GRPC_SLICE_START_PTR(md->value);
			h->authz_len = GRPC_SLICE_LENGTH(md->value);
		} else if (grpc_slice_str_cmp(md->key, "x-request-id") == 0) {
			request_id_from(h->request_id, md->value);
		} else if (grpc_slice_str_cmp(md->key, "idempotency-key") == 0 &&
			   h->idem_n++ == 0) {
			size_t n = GRPC_SLICE_LENGTH(md->value);

			h->idem_bad = n > STORE_IDEM_KEY_MAX;
			if (!h->idem_bad) {
				memcpy(h->idem_key, GRPC_SLICE_START_PTR(md->value), n);
				h->idem_key[n] = '\0';
				h->idem_bad = idem_key_check(h->idem_key) != CF_OK;
			}
		}
	}
	if (h->request_id[0] == '\0')
		snprintf(h->request_id, sizeof(h->request_id), "%s-%llx", s->id_prefix,
			 (unsigned long long)atomic_fetch_add(&s->next_id, 1));
}


/* A call's deadline as CLOCK_MONOTONIC milliseconds (gRPC's monotonic
 * clock has its own epoch: only the time left is carried over); 0: none. */
static int64_t
deadline_ms(gpr_timespec deadline)
{
	gpr_timespec left;

	if (gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) == 0)
		return 0;
	left = gpr_time_sub(gpr_convert_clock_type(deadline, GPR_CLOCK_MONOTONIC),
			    gpr_now(GPR_CLOCK_MONOTONIC));
	return (int64_t)cf_mono_ms() + gpr_time_to_millis(left);
}

/* A packed answer's bytes, released: wiped unless they are ciphertext
 * (grpc_slice_new_with_len's destroy, and drop_out). */
static void
slice_wipe_free(void *p, size_t len)
{
	OPENSSL_cleanse(p, len);
	free(p);
}

static void
slice_free(void *p, size_t len)
{
	(void)len;
	free(p);
}

static void
drop_out(struct rpc_call *c)
{
	if (c->out != NULL)
		(c->ciphertext ? slice_free : slice_wipe_free)(c->out, c->outlen);
	c->out = NULL;
	c->outlen = 0;
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
	drop_out(c);
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
	c->tag.kind = TAG_CALL;
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
							&c->md, m == &s->pipeline ? NULL : &c->recv,
							s->cq, s->cq, c);
	else
		e = grpc_server_request_call(s->server, &c->call, &c->details, &c->md, s->cq,
					     s->cq, c);
	if (e != GRPC_CALL_OK) {
		cf_log_error("grpc_server_request_call: %d", (int)e);
		call_free(c);
	}
}

/* Identify the caller, read the request, run it through the dispatch
 * table. Sets *code and the status message, and with OK the packed
 * response in c->out. */
static void
serve(struct rpc_call *c, int watch, struct audit_group *g, grpc_status_code *code, char *msg,
      size_t msglen, uint32_t *retry_after_ms)
{
	rpc_server *s = c->s;
	/* The window as of this call: SIGHUP may change it (rpc_set_window). */
	struct hservices sv = { .p11 = s->cfg.p11, .kr = s->cfg.kr, .sm = s->cfg.sm, .pol = s->cfg.pol,
				.ak = s->cfg.ak, .au = s->cfg.au, .nn = s->cfg.nn, .st = s->cfg.st,
				.window = atomic_load(&s->window), .share = s->share };
	struct dcall h = { .sv = &sv, .idm = s->cfg.idm,
			   .unsealed_secrets = s->cfg.unsealed_secrets,
			   .require_api_key = s->cfg.require_api_key,
			   .cancelled = watch ? &c->gone : NULL, .audit_group = g,
			   .metrics_t0 = g != NULL ? &c->t0 : NULL };
	grpc_byte_buffer_reader rd;
	grpc_slice in = grpc_empty_slice();

	if (c->m == NULL) {
		*code = (grpc_status_code)dispatch_status(CF_E_UNIMPLEMENTED);
		snprintf(msg, msglen, "unknown method");
		return;
	}
	if (peer_identify(s, c->call, &h, msg, msglen) != CF_OK) {
		*code = (grpc_status_code)dispatch_status(CF_E_DENIED);
		return;
	}
	call_metadata(s, &c->md, &h);
	h.deadline_ms = deadline_ms(c->deadline);
	memcpy(c->request_id, h.request_id, sizeof(c->request_id));
	if (c->recv == NULL || !grpc_byte_buffer_reader_init(&rd, c->recv)) {
		*code = (grpc_status_code)dispatch_status(CF_E_INVALID_ARG);
		snprintf(msg, msglen, "no readable request message");
		return;
	}
	c->ciphertext = dispatch_ciphertext(s->d, c->m->idx);
	in = grpc_byte_buffer_reader_readall(&rd);
	grpc_byte_buffer_reader_destroy(&rd);
	*code = (grpc_status_code)dispatch_call(s->d, c->m->idx, &h, GRPC_SLICE_START_PTR(in),
						GRPC_SLICE_LENGTH(in), &c->out, &c->outlen, msg,
						msglen, retry_after_ms);
	c->ran = h.metrics_t0 != NULL;
	/* Requests may carry secrets (key material): do not leave them behind. */
	if (!c->ciphertext)
		OPENSSL_cleanse(GRPC_SLICE_START_PTR(in), GRPC_SLICE_LENGTH(in));
	grpc_slice_unref(in);
	if (*code != GRPC_STATUS_OK)
		drop_out(c);
}

static void call_unref(struct rpc_call *c);

/* Send the call's answer: its message (if any), status and trailers. */
static void
send_answer(struct rpc_call *c)
{
	grpc_op ops[4];
	grpc_op *op = ops;
	grpc_call_error e;

	memset(ops, 0, sizeof(ops));
	op->op = GRPC_OP_SEND_INITIAL_METADATA;
	op++;
	if (c->code == GRPC_STATUS_OK) {
		/* gRPC takes the bytes over; slice_wipe_free wipes them (unless
		 * ciphertext) once it lets go. */
		grpc_slice sl = c->outlen == 0 ? grpc_empty_slice() :
			grpc_slice_new_with_len(c->out, c->outlen,
						c->ciphertext ? slice_free : slice_wipe_free);

		if (c->outlen == 0)
			drop_out(c);
		c->out = NULL;
		c->send = grpc_raw_byte_buffer_create(&sl, 1);
		grpc_slice_unref(sl);
	}
	if (c->send != NULL) {
		op->op = GRPC_OP_SEND_MESSAGE;
		op->data.send_message.send_message = c->send;
		op++;
	}
	c->status_details = grpc_slice_from_copied_string(c->msg);
	op->op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	op->data.send_status_from_server.status = c->code;
	op->data.send_status_from_server.status_details = &c->status_details;
	/* The request id of the audit record, so callers can find theirs. */
	c->trailer[0].key = grpc_slice_from_static_string("x-request-id");
	c->trailer[0].value = grpc_slice_from_static_string(c->request_id);
	op->data.send_status_from_server.trailing_metadata_count = c->request_id[0] ? 1 : 0;
	op->data.send_status_from_server.trailing_metadata = c->trailer;
	if (c->retry_ms > 0) {
		snprintf(c->retry, sizeof(c->retry), "%u", c->retry_ms);
		c->trailer[1].key = grpc_slice_from_static_string("retry-after-ms");
		c->trailer[1].value = grpc_slice_from_static_string(c->retry);
		op->data.send_status_from_server.trailing_metadata_count = 2;
	}
	op++;
	if (!c->watch) {
		op->op = GRPC_OP_RECV_CLOSE_ON_SERVER;
		op->data.recv_close_on_server.cancelled = &c->cancelled;
		op++;
	}
	c->st = ST_SENDING;
	if ((e = grpc_call_start_batch(c->call, ops, (size_t)(op - ops), c, NULL)) != GRPC_CALL_OK) {
		cf_log_error("grpc_call_start_batch(send): %d", (int)e);
		call_unref(c);
	}
}

/* The call's audit record is written (result CF_OK) or not (fail closed:
 * the answer is withheld, the refusal sent instead): audit_done_fn. */
static void
answer(void *arg, int result, const char *text)
{
	struct rpc_call *c = arg;

	if (result != CF_OK && c->code == GRPC_STATUS_OK) {
		drop_out(c);
		c->code = (grpc_status_code)dispatch_status(result);
		cf_text_escape(text, strlen(text), c->msg, sizeof(c->msg));
	}
	if (c->ran)
		metrics_call((unsigned)c->m->idx, (unsigned)c->code, c->t0);
	send_answer(c);
}

/* Run the call; its answer goes once its audit record is written. On a
 * trail synced to disk this thread does not wait for that (whoever writes
 * the record answers it, as for a stream's frame), so a worker is not held
 * by the disk for a call's record (a change still waits for its outbox
 * record). */
static void
respond(struct rpc_call *c)
{
	grpc_op op;
	struct audit_group *g = NULL;
	audit *au = c->s->cfg.au;

	c->watch = c->m != NULL && dispatch_batch(c->s->d, c->m->idx);
	c->refs = 1;
	if (c->watch) {
		memset(&op, 0, sizeof(op));
		op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
		op.data.recv_close_on_server.cancelled = &c->cancelled;
		c->close_tag.kind = TAG_C_CLOSE;
		c->refs = 2;
		if (grpc_call_start_batch(c->call, &op, 1, &c->close_tag, NULL) != GRPC_CALL_OK) {
			c->refs = 1;
			c->watch = 0;
		}
	}
	/* Without a group (out of memory), the call waits for its record. */
	if (au != NULL && audit_hands_off(au) && audit_group_new(&g) != CF_OK)
		g = NULL;
	serve(c, c->watch, g, &c->code, c->msg, sizeof(c->msg), &c->retry_ms);
	if (g != NULL)
		audit_group_end_async(au, g, answer, c);
	else
		send_answer(c);
}

/* The last outstanding batch of a call frees it. */
static void
call_unref(struct rpc_call *c)
{
	if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
		call_free(c);
}

/* ---- the pipelined stream (proto/pipeline.md) ---- */

/* An answer waiting to be sent: a packed PipelineResponse. */
struct outmsg {
	uint8_t *pk;
	size_t len;
	struct outmsg *next;
};

/* A stream that has sent a frame gets its answers in frames of at most
 * this many bytes (one larger answer goes alone): well under any client's
 * receive limit. */
#define RPC_FRAME_BYTES (64u << 10)
#define RPC_MORE_FIELD 7   /* PipelineResponse.more */

/* One open stream. Its operations are tags of their own; refs counts those
 * outstanding plus the requests being run, and the last one frees it. */
struct rpc_stream {
	struct tag recv_tag, send_tag, close_tag, end_tag;
	rpc_server *s;
	grpc_call *call;
	struct rpc_stream *next;     /* in s->streams */
	struct hservices sv;
	struct dcall base;           /* what every request starts from */
	char key_id[CF_APIKEY_ID_LEN + 1];
	uint32_t key_gen;            /* ... the generation of its secret that did */
	char who[STORE_PRINCIPAL_NAME_MAX + 1];   /* the principal it opened as */
	char id[41];                 /* the stream's request id: ".<n>" follows it */
	grpc_metadata hello;         /* the opening's answer: "coffer-pipeline: frames" */
	pthread_mutex_t mu;
	unsigned refs;
	grpc_byte_buffer *recv;      /* the RECV_MESSAGE outstanding's */
	int reading, read_done, paused, failed;
	int frames;                  /* the caller sent a frame: answer in frames */
	atomic_uint_fast64_t item_ns;   /* its requests' time, for share_run */
	struct outmsg *head, *tail;  /* answers not yet sent */
	unsigned queued, running;
	grpc_byte_buffer *sending;   /* the SEND_MESSAGE outstanding's */
	int ended;                   /* SEND_STATUS started */
	int cancelled;               /* RECV_CLOSE_ON_SERVER said so (mu) */
	int gone;                    /* the same, for other threads (atomic): frames'
					requests and the batches they carry */
	grpc_status_code code;       /* the status it ends with */
	char msg[CF_ERROR_DETAIL_MAX];
	grpc_slice details;
};

static void
outmsg_free(struct outmsg *o)
{
	OPENSSL_cleanse(o->pk, o->len);
	free(o->pk);
	free(o);
}

static void
stream_unref(struct rpc_stream *st)
{
	rpc_server *s = st->s;
	unsigned left;

	pthread_mutex_lock(&st->mu);
	left = --st->refs;
	pthread_mutex_unlock(&st->mu);
	if (left > 0)
		return;
	pthread_mutex_lock(&s->mu);
	for (struct rpc_stream **pp = &s->streams; *pp != NULL; pp = &(*pp)->next)
		if (*pp == st) {
			*pp = st->next;
			break;
		}
	pthread_mutex_unlock(&s->mu);
	while (st->head != NULL) {
		struct outmsg *o = st->head;

		st->head = o->next;
		outmsg_free(o);
	}
	if (st->recv != NULL)
		grpc_byte_buffer_destroy(st->recv);
	grpc_slice_unref(st->details);
	grpc_call_unref(st->call);
	pthread_mutex_destroy(&st->mu);
	free(st);
	/* Counted out only now, the call released (as call_free): this may run
	 * on the audit writer, which rpc_shutdown does not join. */
	pthread_mutex_lock(&s->mu);
	s->live--;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

/* Start one operation on the stream (st->mu held); it holds a reference. */
static void
stream_op(struct rpc_stream *st, grpc_op *ops, size_t n, struct tag *t)
{
	grpc_call_error e;

	st->refs++;
	if ((e = grpc_call_start_batch(st->call, ops, n, t, NULL)) != GRPC_CALL_OK) {
		/* Cannot happen on a live call; never leave the reference behind. */
		cf_log_error("pipelined stream: grpc_call_start_batch: %d", (int)e);
		st->refs--;
		st->read_done = 1;
	}
}

static void
stream_read(struct rpc_stream *st)
{
	grpc_op op;

	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_RECV_MESSAGE;
	op.data.recv_message.recv_message = &st->recv;
	st->reading = 1;
	stream_op(st, &op, 1, &st->recv_tag);
}

/* The answers queued, as one message (mu held, head not NULL): the first,
 * and on a stream that sends frames, those after it that fit, each as an
 * element of its `more` (field 7: a PipelineResponse's fields may come in
 * any order, so a frame is the packed answers concatenated). */
static grpc_byte_buffer *
stream_frame(struct rpc_stream *st)
{
	struct outmsg *o, *last = st->head;
	size_t total = st->head->len, n = 1;
	grpc_byte_buffer *bb = NULL;
	grpc_slice sl;
	uint8_t *p;

	for (o = st->head->next; st->frames && o != NULL; o = o->next) {
		size_t add = cf_pb_len_prefix(RPC_MORE_FIELD, o->len, NULL) + o->len;

		if (total + add > RPC_FRAME_BYTES)
			break;
		total += add;
		last = o;
		n++;
	}
	/* Joined into the bytes gRPC sends, which it hands back to be wiped
	 * (answers may carry what the caller keeps to itself: a MAC). */
	if ((p = malloc(total ? total : 1)) == NULL)
		return NULL;
	sl = grpc_slice_new_with_len(p, total, slice_wipe_free);
	for (o = st->head;; o = o->next) {
		if (o != st->head)
			p += cf_pb_len_prefix(RPC_MORE_FIELD, o->len, p);
		memcpy(p, o->pk, o->len);
		p += o->len;
		if (o == last)
			break;
	}
	bb = grpc_raw_byte_buffer_create(&sl, 1);
	grpc_slice_unref(sl);
	if (bb == NULL)
		return NULL;
	while (n-- > 0) {
		o = st->head;
		st->head = o->next;
		st->queued--;
		outmsg_free(o);
	}
	if (st->head == NULL)
		st->tail = NULL;
	return bb;
}

/* Answers that cannot be made or sent (no memory): end the stream now with
 * `why` rather than leave its callers waiting; what is queued is dropped,
 * and the read outstanding ends with the call (mu held). */
static void
stream_abort(struct rpc_stream *st, const char *why)
{
	if (!st->failed) {
		st->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
		snprintf(st->msg, sizeof(st->msg), "%s", why);
	}
	st->failed = 1;
	st->read_done = 1;
	st->cancelled = 1;
	__atomic_store_n(&st->gone, 1, __ATOMIC_RELEASE);
	grpc_call_cancel_with_status(st->call, GRPC_STATUS_RESOURCE_EXHAUSTED, why, NULL);
}

/* Send the next answers, or end the stream once nothing is left (mu held). */
static void
stream_pump(struct rpc_stream *st)
{
	grpc_op op;

	if (st->sending == NULL && st->head != NULL && !st->cancelled) {
		if ((st->sending = stream_frame(st)) == NULL) {
			stream_abort(st, "out of memory for the answers");
		} else {
			memset(&op, 0, sizeof(op));
			op.op = GRPC_OP_SEND_MESSAGE;
			op.data.send_message.send_message = st->sending;
			stream_op(st, &op, 1, &st->send_tag);
		}
	}
	if (st->paused && !st->read_done && st->queued + st->running < RPC_STREAM_QUEUE / 2) {
		st->paused = 0;
		stream_read(st);
	}
	if (st->ended || !st->read_done || st->reading || st->running > 0 ||
	    st->sending != NULL || (st->head != NULL && !st->cancelled))
		return;
	st->ended = 1;
	memset(&op, 0, sizeof(op));
	st->details = grpc_slice_from_copied_string(st->msg);
	op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	op.data.send_status_from_server.status = st->code;
	op.data.send_status_from_server.status_details = &st->details;
	stream_op(st, &op, 1, &st->end_tag);
}

/* One request's answer, before it is packed. */
struct answer {
	int ran;                     /* 0: the stream was cancelled before it ran */
	Coffer__V1__PipelineResponse resp;
	char request_id[AUDIT_REQUEST_ID_MAX + 1];
	char msg[CF_ERROR_DETAIL_MAX];
	uint8_t *buf;
	size_t len;
};

/* The message's requests, unpacked: NULL when the bytes are not a
 * PipelineRequest or not a valid frame (fmsg says why). */
static Coffer__V1__PipelineRequest *
stream_unpack(grpc_byte_buffer *bb, char *fmsg, size_t fmsglen)
{
	Coffer__V1__PipelineRequest *req = NULL;
	grpc_byte_buffer_reader rd;
	grpc_slice in = grpc_empty_slice();
	int r;

	if (grpc_byte_buffer_reader_init(&rd, bb)) {
		in = grpc_byte_buffer_reader_readall(&rd);
		grpc_byte_buffer_reader_destroy(&rd);
	}
	/* As any request: no NUL or invalid UTF-8 in its strings (the methods). */
	if ((r = cf_pb_check_strings(&coffer__v1__pipeline_request__descriptor,
				     GRPC_SLICE_START_PTR(in), GRPC_SLICE_LENGTH(in))) != CF_OK ||
	    (req = coffer__v1__pipeline_request__unpack(&cf_pbwipe_allocator, GRPC_SLICE_LENGTH(in),
							 GRPC_SLICE_START_PTR(in))) == NULL) {
		snprintf(fmsg, fmsglen, "%s", r != CF_OK ? cf_error_detail() :
			 "request is not a valid coffer.v1.PipelineRequest message");
	} else if (req->n_more >= CF_BATCH_MAX) {
		snprintf(fmsg, fmsglen, "a frame of %zu requests is above the limit of %u: send "
			 "fewer per message", req->n_more + 1, CF_BATCH_MAX);
		coffer__v1__pipeline_request__free_unpacked(req, &cf_pbwipe_allocator);
		req = NULL;
	} else {
		for (size_t k = 0; k < req->n_more; k++)
			if (req->more[k]->n_more > 0) {
				snprintf(fmsg, fmsglen, "request %llu of a frame carries requests in "
					 "its own `more`: frames do not nest",
					 (unsigned long long)req->more[k]->id);
				coffer__v1__pipeline_request__free_unpacked(req, &cf_pbwipe_allocator);
				req = NULL;
				break;
			}
	}
	OPENSSL_cleanse(GRPC_SLICE_START_PTR(in), GRPC_SLICE_LENGTH(in));
	grpc_slice_unref(in);
	return req;
}

/* Run one request of a frame, its record queued in g. */
static void
stream_run(struct rpc_stream *st, const Coffer__V1__PipelineRequest *req,
	   struct audit_group *g, struct answer *a)
{
	struct dcall h = st->base;
	/* The window as of this request, as a unary call's (SIGHUP). */
	struct hservices sv = st->sv;
	uint32_t retry = 0;

	sv.window = atomic_load(&st->s->window);
	h.sv = &sv;
	coffer__v1__pipeline_response__init(&a->resp);
	h.audit_group = g;
	a->resp.id = req->id;
	snprintf(h.request_id, sizeof(h.request_id), "%s.%llu", st->id,
		 (unsigned long long)req->id);
	snprintf(a->request_id, sizeof(a->request_id), "%s", h.request_id);
	a->resp.request_id = a->request_id;
	if (!still_allowed(st->s, h.admin, h.uid, h.gid, a->msg, sizeof(a->msg))) {
		a->resp.code = dispatch_status(CF_E_DENIED);
		a->resp.message = a->msg;
		return;
	}
	a->resp.code = dispatch_pipeline_call(st->s->d, &h, req->method, req->request.data,
					      req->request.len, &a->buf, &a->len, a->msg,
					      sizeof(a->msg), &retry);
	a->resp.message = a->msg;
	a->resp.retry_after_ms = retry;
	a->resp.response.data = a->buf;
	a->resp.response.len = a->len;
}

/* a's answer withheld: its record (or another of its frame's) is not
 * written, for the reason r (text says it). */
static void
withhold_answer(struct answer *a, int r, const char *text)
{
	OPENSSL_cleanse(a->buf, a->len);
	free(a->buf);
	a->buf = NULL;
	a->len = 0;
	a->resp.response.data = NULL;
	a->resp.response.len = 0;
	a->resp.code = dispatch_status(r);
	a->resp.retry_after_ms = 0;
	cf_text_escape(text, strlen(text), a->msg, sizeof(a->msg));
}

/* a, packed and queued to be sent (mu held): CF_OK, or CF_E_NOMEM. */
static int
stream_queue(struct rpc_stream *st, struct answer *a)
{
	struct outmsg *o = malloc(sizeof(*o));

	if (o == NULL)
		return cf_nomem();
	o->len = coffer__v1__pipeline_response__get_packed_size(&a->resp);
	if ((o->pk = malloc(o->len ? o->len : 1)) == NULL) {
		free(o);
		return cf_nomem();
	}
	coffer__v1__pipeline_response__pack(&a->resp, o->pk);
	o->next = NULL;
	if (st->tail != NULL)
		st->tail->next = o;
	else
		st->head = o;
	st->tail = o;
	st->queued++;
	return CF_OK;
}

/* A message's requests (a frame, or one), run as a job its worker shares. */
struct frame_job {
	struct share_job sj;   /* first */
	struct rpc_stream *st;
	Coffer__V1__PipelineRequest *req;
	struct audit_group *g;
	struct answer *ans;
};

static void
frame_run(struct share_job *sj, size_t k)
{
	struct frame_job *j = (struct frame_job *)(void *)sj;

	/* Once the caller cancelled, nobody reads them: they do not run. */
	if (__atomic_load_n(&j->st->gone, __ATOMIC_ACQUIRE))
		return;
	stream_run(j->st, k == 0 ? j->req : j->req->more[k - 1], j->g, &j->ans[k]);
	j->ans[k].ran = 1;
}

/* The frame's records are written (result CF_OK) or not (fail closed:
 * every answer that would release a result is withheld, for text's
 * reason); its answers are queued to be sent: audit_done_fn. */
static void
frame_answer(void *arg, int result, const char *text)
{
	struct frame_job *j = arg;
	struct rpc_stream *st = j->st;

	if (result != CF_OK)
		for (size_t k = 0; k < j->sj.n; k++)
			if (j->ans[k].ran && j->ans[k].resp.code == GRPC_STATUS_OK)
				withhold_answer(&j->ans[k], result, text);
	pthread_mutex_lock(&st->mu);
	st->running -= (unsigned)j->sj.n;
	/* Answered even when a later message ended the stream: they ran. */
	for (size_t k = 0; k < j->sj.n; k++)
		if (j->ans[k].ran && stream_queue(st, &j->ans[k]) != CF_OK) {
			char why[96];

			snprintf(why, sizeof(why), "out of memory for the answer to request %llu",
				 (unsigned long long)j->ans[k].resp.id);
			stream_abort(st, why);
			break;
		}
	stream_pump(st);
	pthread_mutex_unlock(&st->mu);
}

static void
frame_recorded(void *arg, int result, const char *text)
{
	struct frame_job *j = arg;

	frame_answer(j, result, text);
	share_put(&j->sj);
}

/* Every request has run: once their records are written (one write for
 * the frame), their answers are queued to be sent. On a trail synced to
 * disk, whoever writes the records does that (as respond's unary calls),
 * so the worker goes on to the stream's next frame meanwhile. */
static void
frame_finish(struct share_job *sj)
{
	struct frame_job *j = (struct frame_job *)(void *)sj;
	audit *au = j->st->sv.au;
	struct audit_group *g = j->g;
	int r;

	j->g = NULL;
	if (g != NULL && audit_hands_off(au)) {
		share_hold(sj);
		audit_group_end_async(au, g, frame_recorded, j);
	} else if (g != NULL && (r = audit_group_end(au, g)) != CF_OK) {
		frame_answer(j, r, cf_error_message(r));
	} else {
		frame_answer(j, CF_OK, "");
	}
}

static void
frame_release(struct share_job *sj)
{
	struct frame_job *j = (struct frame_job *)(void *)sj;
	struct rpc_stream *st = j->st;

	for (size_t k = 0; k < sj->n; k++) {
		OPENSSL_cleanse(j->ans[k].buf, j->ans[k].len);
		free(j->ans[k].buf);
	}
	free(j->ans);
	coffer__v1__pipeline_request__free_unpacked(j->req, &cf_pbwipe_allocator);
	free(j);
	stream_unref(st);
}

static void
stream_received(struct rpc_stream *st, int success)
{
	Coffer__V1__PipelineRequest *req;
	grpc_byte_buffer *bb;
	struct audit_group *g = NULL;
	struct answer *ans = NULL;
	struct frame_job *job = NULL;
	char fmsg[CF_ERROR_DETAIL_MAX];
	size_t n = 0;
	int r = CF_OK;

	pthread_mutex_lock(&st->mu);
	st->reading = 0;
	bb = st->recv;
	st->recv = NULL;
	if (!success || bb == NULL || st->failed) {
		/* Half-closed (or cancelled): answer what was read, then end. */
		st->read_done = 1;
		stream_pump(st);
		pthread_mutex_unlock(&st->mu);
		if (bb != NULL)
			grpc_byte_buffer_destroy(bb);
		return;
	}
	st->refs++;
	pthread_mutex_unlock(&st->mu);
	req = stream_unpack(bb, fmsg, sizeof(fmsg));
	grpc_byte_buffer_destroy(bb);
	if (req == NULL) {
		r = cf_error(CF_E_INVALID_ARG, "%s", fmsg);
	} else {
		n = 1 + req->n_more;
		if ((job = calloc(1, sizeof(*job))) == NULL ||
		    (ans = calloc(n, sizeof(*ans))) == NULL ||
		    (st->sv.au != NULL && audit_group_new(&g) != CF_OK))
			r = cf_error(CF_E_NOMEM, "out of memory for a frame of %zu requests", n);
	}
	pthread_mutex_lock(&st->mu);
	if (r != CF_OK) {
		/* The first such message ends the stream, with its reason. */
		if (!st->failed) {
			st->code = (grpc_status_code)dispatch_status(r);
			snprintf(st->msg, sizeof(st->msg), "%s", cf_error_message(r));
		}
		st->failed = 1;
		st->read_done = 1;
		stream_pump(st);
		pthread_mutex_unlock(&st->mu);
		free(job);
		free(ans);
		free(g);
		if (req != NULL)
			coffer__v1__pipeline_request__free_unpacked(req, &cf_pbwipe_allocator);
		stream_unref(st);
		return;
	}
	if (n > 1)
		st->frames = 1;
	metrics_add(M_PIPELINE_MESSAGES, 1);
	metrics_add(M_PIPELINE_REQUESTS, n);
	st->running += (unsigned)n;
	/* Read the next one now: another worker may run it meanwhile. */
	if (st->queued + st->running < RPC_STREAM_QUEUE)
		stream_read(st);
	else
		st->paused = 1;
	pthread_mutex_unlock(&st->mu);
	job->st = st;
	job->req = req;
	job->g = g;
	job->ans = ans;
	job->sj.run = frame_run;
	job->sj.finish = frame_finish;
	job->sj.release = frame_release;
	job->sj.n = n;
	job->sj.item_ns = &st->item_ns;
	share_run(st->s->share, &job->sj);
}

static void
stream_event(struct tag *t, int success)
{
	struct rpc_stream *st;

	switch (t->kind) {
	case TAG_S_RECV:
		st = (struct rpc_stream *)(void *)((char *)t - offsetof(struct rpc_stream, recv_tag));
		stream_received(st, success);
		break;
	case TAG_S_SEND:
		st = (struct rpc_stream *)(void *)((char *)t - offsetof(struct rpc_stream, send_tag));
		pthread_mutex_lock(&st->mu);
		grpc_byte_buffer_destroy(st->sending);
		st->sending = NULL;
		if (!success) {   /* the caller went: nothing more reaches it */
			st->cancelled = 1;
			__atomic_store_n(&st->gone, 1, __ATOMIC_RELEASE);
		}
		stream_pump(st);
		pthread_mutex_unlock(&st->mu);
		break;
	case TAG_S_CLOSE:
		st = (struct rpc_stream *)(void *)((char *)t - offsetof(struct rpc_stream, close_tag));
		pthread_mutex_lock(&st->mu);
		/* gRPC core wrote cancelled as this completed; published here. */
		if (st->cancelled) {
			st->read_done = 1;
			__atomic_store_n(&st->gone, 1, __ATOMIC_RELEASE);
		}
		stream_pump(st);
		pthread_mutex_unlock(&st->mu);
		break;
	case TAG_S_END:
		st = (struct rpc_stream *)(void *)((char *)t - offsetof(struct rpc_stream, end_tag));
		break;
	default:
		return;
	}
	stream_unref(st);
}

/* A requested Pipeline/Stream call arrived: authenticate its opening, then
 * read requests (or end it at once with the refusal). */
static void
stream_open(struct rpc_call *c)
{
	rpc_server *s = c->s;
	struct rpc_stream *st = calloc(1, sizeof(*st));
	grpc_op ops[3];
	size_t n = 0;

	if (st == NULL) {
		grpc_call_cancel_with_status(c->call, GRPC_STATUS_RESOURCE_EXHAUSTED,
					     "out of memory for the stream", NULL);
		call_free(c);
		return;
	}
	atomic_init(&st->item_ns, SHARE_ITEM_NS_FIRST);
	st->recv_tag.kind = TAG_S_RECV;
	st->send_tag.kind = TAG_S_SEND;
	st->close_tag.kind = TAG_S_CLOSE;
	st->end_tag.kind = TAG_S_END;
	st->s = s;
	st->call = c->call;
	c->call = NULL;
	st->details = grpc_empty_slice();
	pthread_mutex_init(&st->mu, NULL);
	st->sv = (struct hservices){ .p11 = s->cfg.p11, .kr = s->cfg.kr, .sm = s->cfg.sm,
				     .pol = s->cfg.pol, .ak = s->cfg.ak, .au = s->cfg.au,
				     .nn = s->cfg.nn, .st = s->cfg.st,
				     .window = atomic_load(&s->window), .share = s->share };
	st->base = (struct dcall){ .sv = &st->sv, .idm = s->cfg.idm,
				   .unsealed_secrets = s->cfg.unsealed_secrets,
				   .require_api_key = s->cfg.require_api_key };
	st->code = GRPC_STATUS_OK;
	if (peer_identify(s, st->call, &st->base, st->msg, sizeof(st->msg)) != CF_OK) {
		st->code = (grpc_status_code)dispatch_status(CF_E_DENIED);
	} else {
		call_metadata(s, &c->md, &st->base);
		snprintf(st->id, sizeof(st->id), "%.40s", st->base.request_id);
		snprintf(st->base.request_id, sizeof(st->base.request_id), "%s", st->id);
		st->base.deadline_ms = deadline_ms(c->deadline);
		st->code = (grpc_status_code)dispatch_open_stream(s->d, &st->base, st->key_id,
								   sizeof(st->key_id), &st->key_gen,
								   st->who,
								   st->msg, sizeof(st->msg));
	}
	/* A batch a frame carries stops its items as a unary one does. */
	st->base.cancelled = &st->gone;
	/* Only the key id stays: the opening's signature is spent. */
	st->base.authz = NULL;
	st->base.authz_len = 0;
	st->base.authz_n = 0;
	st->base.stream_key_id = st->key_id;
	st->base.stream_key_gen = st->key_gen;
	st->base.stream_principal = st->who;
	pthread_mutex_lock(&s->mu);
	s->live++;       /* the stream; the requested call's count goes below */
	st->next = s->streams;
	s->streams = st;
	pthread_mutex_unlock(&s->mu);
	call_free(c);

	pthread_mutex_lock(&st->mu);
	st->refs = 1;   /* held until the first operations are started */
	memset(ops, 0, sizeof(ops));
	ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
	if (st->code != GRPC_STATUS_OK)
		st->read_done = 1;   /* refused: the status follows at once */
	else {
		/* Tells the caller it may send frames (proto/pipeline.md). */
		st->hello.key = grpc_slice_from_static_string("coffer-pipeline");
		st->hello.value = grpc_slice_from_static_string("frames");
		ops[0].data.send_initial_metadata.count = 1;
		ops[0].data.send_initial_metadata.metadata = &st->hello;
		ops[n].op = GRPC_OP_RECV_MESSAGE;
		ops[n++].data.recv_message.recv_message = &st->recv;
		st->reading = 1;
	}
	stream_op(st, ops, n, &st->recv_tag);
	if (st->code != GRPC_STATUS_OK)
		st->reading = 1;   /* the batch above completes as a read of nothing */
	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	ops[0].data.recv_close_on_server.cancelled = &st->cancelled;
	stream_op(st, ops, 1, &st->close_tag);
	pthread_mutex_unlock(&st->mu);
	stream_unref(st);
}

/* ---- changes, on their own threads ---- */

static void
change_queue(rpc_server *s, struct rpc_call *c)
{
	c->chq_next = NULL;
	c->chq_since = cf_mono_ms();
	pthread_mutex_lock(&s->chq_mu);
	*s->chq_tail = c;
	s->chq_tail = &c->chq_next;
	pthread_cond_signal(&s->chq_cv);
	pthread_mutex_unlock(&s->chq_mu);
}

/* A change's time in the queue is a turn it waited: its store transactions
 * wait for another process's lock only what is left of one bound (before,
 * changes queued behind others that waited out a locked store were refused
 * after 5, 10, then 15 s). */
static void *
changer_main(void *arg)
{
	rpc_server *s = arg;

	for (;;) {
		struct rpc_call *c;

		pthread_mutex_lock(&s->chq_mu);
		while (s->chq_head == NULL && !s->chq_stop)
			pthread_cond_wait(&s->chq_cv, &s->chq_mu);
		if ((c = s->chq_head) == NULL) {
			pthread_mutex_unlock(&s->chq_mu);
			break;
		}
		if ((s->chq_head = c->chq_next) == NULL)
			s->chq_tail = &s->chq_head;
		pthread_mutex_unlock(&s->chq_mu);
		change_mu_call_begin(cf_mono_ms() - c->chq_since);
		respond(c);
		change_mu_call_end();
	}
	return NULL;
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
		if (c->m == &s->pipeline)
			stream_open(c);
		else if (c->m != NULL && s->nchangers > 0 && dispatch_mutating(s->d, c->m->idx))
			change_queue(s, c);
		else {
			change_mu_call_begin(0);
			respond(c);
			change_mu_call_end();
		}
		return;
	case ST_SENDING:
		call_unref(c);
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
		grpc_event ev = grpc_completion_queue_next(s->cq,
							   gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);

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
		switch (((struct tag *)ev.tag)->kind) {
		case TAG_CALL:
			on_event(s, ev.tag, ev.success);
			break;
		case TAG_C_CLOSE: {
			struct rpc_call *c = (struct rpc_call *)(void *)((char *)ev.tag -
				offsetof(struct rpc_call, close_tag));

			/* Read by the batch's handler on another thread. */
			__atomic_store_n(&c->gone, c->cancelled, __ATOMIC_RELEASE);
			call_unref(c);
			break;
		}
		default:
			stream_event(ev.tag, ev.success);
		}
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
	unsigned want;
	long ncpu;
	int r, e = 0;

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
	pthread_mutex_init(&s->peers_mu, NULL);
	pthread_cond_init(&s->cv, NULL);   /* waited on with cf_cond_wait_until */
	pthread_mutex_init(&s->chq_mu, NULL);
	pthread_cond_init(&s->chq_cv, NULL);
	s->chq_tail = &s->chq_head;
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
	s->pipeline.idx = SIZE_MAX;
	s->pipeline.reg = grpc_server_register_method(s->server, dispatch_pipeline_path, NULL,
						      GRPC_SRM_PAYLOAD_NONE, 0);
	/* One helper per other core: a frame's requests, a batch's items
	 * spread over them. */
	ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	if (share_new(ncpu > 1 ? (unsigned)(ncpu - 1) : 0, &s->share) != CF_OK)
		s->share = NULL;   /* frames and batches run on their workers alone */
	/* The workers before the server starts: none started is a daemon that
	 * would accept connections and never answer them. */
	want = cfg->workers ? cfg->workers : 4;
	if (want > RPC_MAX_WORKERS)
		want = RPC_MAX_WORKERS;
	for (s->nworkers = 0; s->nworkers < want; s->nworkers++)
		if ((e = pthread_create(&s->workers[s->nworkers], NULL, worker_main, s)) != 0)
			break;
	if (s->nworkers == 0) {
		r = cf_error(CF_E_INTERNAL, "cannot start a worker thread: %s", strerror(e));
		grpc_server_destroy(s->server);
		grpc_completion_queue_shutdown(s->cq);
		grpc_completion_queue_destroy(s->cq);
		share_free(s->share);
		free(s->methods);
		goto fail;
	}
	if (s->nworkers < want)
		cf_log_warn("started %u of the %u worker threads configured (%s); serving with "
			    "%u", s->nworkers, want, strerror(e), s->nworkers);
	for (s->nchangers = 0; s->nchangers < RPC_CHANGERS; s->nchangers++)
		if ((e = pthread_create(&s->changers[s->nchangers], NULL, changer_main, s)) != 0)
			break;
	if (s->nchangers < RPC_CHANGERS)
		cf_log_warn("started %u of the %u threads for changes (%s)%s", s->nchangers,
			    RPC_CHANGERS, strerror(e), s->nchangers ? "" : ": changes run on the "
			    "worker threads, and may hold them while they wait for the state store");
	grpc_server_start(s->server);
	for (size_t i = 0; i < s->nmethods; i++)
		for (unsigned k = 0; k < RPC_ARM_DEPTH; k++)
			arm(s, &s->methods[i]);
	for (unsigned k = 0; k < RPC_ARM_GENERIC; k++)
		arm(s, NULL);
	for (unsigned k = 0; k < RPC_ARM_STREAMS; k++)
		arm(s, &s->pipeline);
	*out = s;
	return CF_OK;
fail:
	dispatch_free(s->d);
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->peers_mu);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->chq_mu);
	pthread_cond_destroy(&s->chq_cv);
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
	if (fd < RPC_PEERS) {
		struct rpc_peer p = { 0 };

		(void)peer_read(s, fd, &p);   /* not known: read per call (and refused there) */
		pthread_mutex_lock(&s->peers_mu);
		s->peers[fd] = p;
		pthread_mutex_unlock(&s->peers_mu);
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
	/* A stream would hold the whole grace period: its requests running
	 * finish (and are recorded); the caller opens a new stream elsewhere. */
	pthread_mutex_lock(&s->mu);
	for (struct rpc_stream *st = s->streams; st != NULL; st = st->next)
		grpc_call_cancel_with_status(st->call, GRPC_STATUS_UNAVAILABLE,
					     "cofferd is shutting down", NULL);
	pthread_mutex_unlock(&s->mu);
	cf_deadline_in(&deadline, grace_ms);
	/* Shutdown fails every requested call not yet matched, so what stays
	 * live is the calls in flight: they drain. An idle connection would
	 * hold the shutdown until the grace period ends; once no call is live,
	 * the connections are closed. */
	pthread_mutex_lock(&s->mu);
	while (!s->shutdown_done && s->live > 0)
		if (cf_cond_wait_until(&s->cv, &s->mu, &deadline) == ETIMEDOUT)
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
	/* Shutting the queue down before every call is released aborts gRPC
	 * (a queued change is live: the changers run it first). */
	while (s->live > 0 || !s->shutdown_done)
		pthread_cond_wait(&s->cv, &s->mu);
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_lock(&s->chq_mu);
	s->chq_stop = 1;
	pthread_cond_broadcast(&s->chq_cv);
	pthread_mutex_unlock(&s->chq_mu);
	for (unsigned i = 0; i < s->nchangers; i++)
		pthread_join(s->changers[i], NULL);
	grpc_completion_queue_shutdown(s->cq);
	for (unsigned i = 0; i < s->nworkers; i++)
		pthread_join(s->workers[i], NULL);
	share_free(s->share);
	grpc_server_destroy(s->server);
	grpc_completion_queue_destroy(s->cq);
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->peers_mu);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->chq_mu);
	pthread_cond_destroy(&s->chq_cv);
	free(s->methods);
	dispatch_free(s->d);
	free(s);
}
