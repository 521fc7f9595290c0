/*
 * bench_grpc_floor — the cheapest gRPC server this stack can be: the floor
 * under any daemon built on gRPC core (bench_daemon's "gRPC floor" row).
 *
 *   bench_grpc_floor SOCKET WORKERS
 *
 * It serves KeyService/Sign and KeyService/Mac on a Unix socket with the
 * threading cofferd uses (one completion queue, WORKERS threads, requests
 * armed per method, the payload read with the call): it unpacks each
 * request and answers a well-formed response of the real size (72-byte
 * signature, 32-byte MAC) without touching a token, checking a caller,
 * auditing or looking anything up. Its CPU per call is what gRPC and
 * protobuf-c cost; whatever cofferd spends beyond the token and beyond this
 * is cofferd's own. A measuring instrument only: its answers are zeros.
 *
 * It also serves Pipeline/Stream (proto/pipeline.md) the same way, frames
 * included: each message's requests are unpacked, each answered at once
 * with its canned response under its id, and the answers queued while a
 * message goes out leave together as one frame (bench_daemon's "gRPC floor
 * stream" row: the floor under the stream's rows).
 */
#include <pthread.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>

#include "coffer/v1/coffer.pb-c.h"
#include "coffer/v1/pipeline.pb-c.h"

#define ARM_DEPTH 8
#define MAX_WORKERS 64
#define SIG_LEN 72
#define MAC_LEN 32

struct method {
	const char *path;
	void *reg;
	int is_mac;
};

/* Every completion-queue tag: what to do with its event. */
struct tag {
	void (*fn)(struct tag *t, int success);
};

struct fcall {
	struct tag tag;
	struct method *m;
	grpc_call *call;
	gpr_timespec deadline;
	grpc_metadata_array md;
	grpc_byte_buffer *recv, *send;
	grpc_slice details;
	int cancelled;
	int answered;
};

static grpc_server *server;
static grpc_completion_queue *cq;
static struct method methods[] = {
	{ "/coffer.v1.KeyService/Sign", NULL, 0 },
	{ "/coffer.v1.KeyService/Mac", NULL, 1 },
};
static volatile sig_atomic_t stop;

static void unary_event(struct tag *t, int success);

static void
arm(struct method *m)
{
	struct fcall *c = calloc(1, sizeof(*c));

	if (c == NULL) {
		fprintf(stderr, "bench_grpc_floor: out of memory\n");
		exit(1);
	}
	c->tag.fn = unary_event;
	c->m = m;
	c->details = grpc_empty_slice();
	grpc_metadata_array_init(&c->md);
	if (grpc_server_request_registered_call(server, m->reg, &c->call, &c->deadline, &c->md,
						&c->recv, cq, cq, &c->tag) != GRPC_CALL_OK) {
		fprintf(stderr, "bench_grpc_floor: cannot arm %s\n", m->path);
		exit(1);
	}
}

static void
call_free(struct fcall *c)
{
	grpc_metadata_array_destroy(&c->md);
	if (c->recv != NULL)
		grpc_byte_buffer_destroy(c->recv);
	if (c->send != NULL)
		grpc_byte_buffer_destroy(c->send);
	grpc_slice_unref(c->details);
	if (c->call != NULL)
		grpc_call_unref(c->call);
	free(c);
}

/* A message's bytes, joined into one slice. */
static grpc_slice
read_all(grpc_byte_buffer *bb)
{
	grpc_byte_buffer_reader rd;
	grpc_slice in;

	if (bb == NULL || !grpc_byte_buffer_reader_init(&rd, bb))
		return grpc_empty_slice();
	in = grpc_byte_buffer_reader_readall(&rd);
	grpc_byte_buffer_reader_destroy(&rd);
	return in;
}

/* Unpack a Sign or Mac request (as any server must) and pack its canned
 * answer into a new slice; 0 when the request does not unpack. */
static int
canned(int is_mac, const uint8_t *in, size_t len, grpc_slice *packed)
{
	static const uint8_t zeros[SIG_LEN];
	Coffer__V1__SignResponse sr = COFFER__V1__SIGN_RESPONSE__INIT;
	Coffer__V1__MacResponse mr = COFFER__V1__MAC_RESPONSE__INIT;
	ProtobufCMessage *req, *resp = is_mac ? &mr.base : &sr.base;

	req = protobuf_c_message_unpack(is_mac ? &coffer__v1__mac_request__descriptor :
				       &coffer__v1__sign_request__descriptor, NULL, len, in);
	if (req == NULL)
		return 0;
	protobuf_c_message_free_unpacked(req, NULL);
	sr.signature.data = mr.mac.data = (uint8_t *)zeros;
	sr.signature.len = SIG_LEN;
	mr.mac.len = MAC_LEN;
	sr.version = mr.version = 1;
	*packed = grpc_slice_malloc(protobuf_c_message_get_packed_size(resp));
	protobuf_c_message_pack(resp, GRPC_SLICE_START_PTR(*packed));
	return 1;
}

/* The unary call's answer: NULL with *code set when the request is bad. */
static grpc_byte_buffer *
answer(const struct fcall *c, grpc_status_code *code)
{
	grpc_byte_buffer *out;
	grpc_slice in = read_all(c->recv), packed;
	int ok = canned(c->m->is_mac, GRPC_SLICE_START_PTR(in), GRPC_SLICE_LENGTH(in), &packed);

	grpc_slice_unref(in);
	*code = GRPC_STATUS_INVALID_ARGUMENT;
	if (!ok)
		return NULL;
	out = grpc_raw_byte_buffer_create(&packed, 1);
	grpc_slice_unref(packed);
	*code = GRPC_STATUS_OK;
	return out;
}

static void
respond(struct fcall *c)
{
	grpc_op ops[4];
	grpc_op *op = ops;
	grpc_status_code code;

	c->send = answer(c, &code);
	memset(ops, 0, sizeof(ops));
	(op++)->op = GRPC_OP_SEND_INITIAL_METADATA;
	if (c->send != NULL) {
		op->op = GRPC_OP_SEND_MESSAGE;
		(op++)->data.send_message.send_message = c->send;
	}
	op->op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	op->data.send_status_from_server.status = code;
	(op++)->data.send_status_from_server.status_details = &c->details;
	op->op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	(op++)->data.recv_close_on_server.cancelled = &c->cancelled;
	c->answered = 1;
	if (grpc_call_start_batch(c->call, ops, (size_t)(op - ops), &c->tag, NULL) != GRPC_CALL_OK)
		call_free(c);
}

static void
unary_event(struct tag *t, int success)
{
	struct fcall *c = (struct fcall *)(void *)t;

	if (c->answered || !success) {
		call_free(c);
	} else {
		if (!stop)
			arm(c->m);
		respond(c);
	}
}

/* ---- the pipelined stream ---- */

#define STREAM_PATH "/coffer.v1.Pipeline/Stream"
#define MORE_RESPONSE_KEY 0x3a        /* PipelineResponse.more: field 7, length-delimited */

static void *stream_reg;

/* One open stream: a read always armed until the caller half-closes, one
 * message going out at a time, the answers made meanwhile queued (packed,
 * the first as the frame's top, the others as its `more`). */
struct fstream {
	struct tag opened, recvd, sent, ended;
	pthread_mutex_t mu;
	grpc_call *call;
	gpr_timespec deadline;
	grpc_metadata_array md;
	grpc_metadata hello;
	grpc_byte_buffer *recv, *send;
	grpc_slice details;
	int cancelled;
	uint8_t *q;                   /* answers queued */
	size_t qlen, qcap;
	unsigned ops;                 /* batches in flight */
	int sending, half_closed, ending, dead;
};

static void stream_opened(struct tag *t, int success);
static void stream_recvd(struct tag *t, int success);
static void stream_sent(struct tag *t, int success);
static void stream_ended(struct tag *t, int success);

static void
arm_stream(void)
{
	struct fstream *st = calloc(1, sizeof(*st));

	if (st == NULL) {
		fprintf(stderr, "bench_grpc_floor: out of memory\n");
		exit(1);
	}
	st->opened.fn = stream_opened;
	st->recvd.fn = stream_recvd;
	st->sent.fn = stream_sent;
	st->ended.fn = stream_ended;
	pthread_mutex_init(&st->mu, NULL);
	st->details = grpc_empty_slice();
	grpc_metadata_array_init(&st->md);
	if (grpc_server_request_registered_call(server, stream_reg, &st->call, &st->deadline,
						&st->md, NULL, cq, cq, &st->opened) != GRPC_CALL_OK) {
		fprintf(stderr, "bench_grpc_floor: cannot arm %s\n", STREAM_PATH);
		exit(1);
	}
}

/* Under mu, or alone: the stream's memory, once nothing is in flight. */
static int
stream_free_if_done(struct fstream *st)
{
	if (st->ops > 0 || !st->dead)
		return 0;
	grpc_metadata_array_destroy(&st->md);
	if (st->recv != NULL)
		grpc_byte_buffer_destroy(st->recv);
	if (st->send != NULL)
		grpc_byte_buffer_destroy(st->send);
	grpc_slice_unref(st->details);
	if (st->call != NULL)
		grpc_call_unref(st->call);
	free(st->q);
	return 1;
}

/* Under mu: start one batch; 0 when gRPC refused it. */
static int
stream_op(struct fstream *st, grpc_op *ops, size_t n, struct tag *t)
{
	if (grpc_call_start_batch(st->call, ops, n, t, NULL) != GRPC_CALL_OK)
		return 0;
	st->ops++;
	return 1;
}

static void
stream_read(struct fstream *st)
{
	grpc_op op;

	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_RECV_MESSAGE;
	op.data.recv_message.recv_message = &st->recv;
	if (!stream_op(st, &op, 1, &st->recvd))
		st->dead = 1;
}

/* Under mu: send what is queued when nothing is going out; end the stream
 * (status OK) once the caller half-closed and everything went. */
static void
stream_pump(struct fstream *st)
{
	grpc_op ops[2];

	memset(ops, 0, sizeof(ops));
	if (!st->sending && st->qlen > 0 && !st->dead) {
		grpc_slice s = grpc_slice_from_copied_buffer((const char *)st->q, st->qlen);

		st->send = grpc_raw_byte_buffer_create(&s, 1);
		grpc_slice_unref(s);
		st->qlen = 0;
		ops[0].op = GRPC_OP_SEND_MESSAGE;
		ops[0].data.send_message.send_message = st->send;
		st->sending = stream_op(st, ops, 1, &st->sent);
		if (!st->sending)
			st->dead = 1;
	}
	if (!st->sending && st->qlen == 0 && st->half_closed && !st->ending && !st->dead) {
		st->ending = 1;
		ops[0].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
		ops[0].data.send_status_from_server.status = GRPC_STATUS_OK;
		ops[0].data.send_status_from_server.status_details = &st->details;
		ops[1].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
		ops[1].data.recv_close_on_server.cancelled = &st->cancelled;
		if (!stream_op(st, ops, 2, &st->ended))
			st->dead = 1;
	}
}

/* Under mu: queue n bytes, as the frame's top (the first) or in its `more`. */
static int
queue_answer(struct fstream *st, const uint8_t *b, size_t n)
{
	size_t need = st->qlen + n + 11;

	if (need > st->qcap) {
		uint8_t *q = realloc(st->q, need * 2);

		if (q == NULL)
			return 0;
		st->q = q;
		st->qcap = need * 2;
	}
	if (st->qlen > 0) {
		size_t v = n;

		st->q[st->qlen++] = MORE_RESPONSE_KEY;
		do {
			st->q[st->qlen++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
			v >>= 7;
		} while (v != 0);
	}
	memcpy(st->q + st->qlen, b, n);
	st->qlen += n;
	return 1;
}

/* Under mu: answer one request of a message (a frame's top or one of its
 * `more`): its canned response, or INVALID_ARGUMENT for a method not served. */
static int
stream_answer(struct fstream *st, const Coffer__V1__PipelineRequest *req)
{
	Coffer__V1__PipelineResponse pr = COFFER__V1__PIPELINE_RESPONSE__INIT;
	grpc_slice packed = grpc_empty_slice();
	uint8_t buf[512];
	char rid[48];
	int is_mac = strcmp(req->method, methods[1].path) == 0, ok = 0;
	size_t n;

	pr.id = req->id;
	snprintf(rid, sizeof(rid), "floor-0123456789abcdef.%llu", (unsigned long long)req->id);
	pr.request_id = rid;
	if ((is_mac || strcmp(req->method, methods[0].path) == 0) &&
	    canned(is_mac, req->request.data, req->request.len, &packed)) {
		pr.response.data = GRPC_SLICE_START_PTR(packed);
		pr.response.len = GRPC_SLICE_LENGTH(packed);
	} else {
		pr.code = GRPC_STATUS_INVALID_ARGUMENT;
		pr.message = (char *)"the gRPC floor serves Sign and Mac only";
	}
	if ((n = coffer__v1__pipeline_response__get_packed_size(&pr)) <= sizeof(buf)) {
		coffer__v1__pipeline_response__pack(&pr, buf);
		ok = queue_answer(st, buf, n);
	}
	grpc_slice_unref(packed);
	return ok;
}

/* mu released; the stream freed if that was its last use. */
static void
stream_unlock(struct fstream *st)
{
	int freed = stream_free_if_done(st);

	pthread_mutex_unlock(&st->mu);
	if (freed) {
		pthread_mutex_destroy(&st->mu);
		free(st);
	}
}

static void
stream_opened(struct tag *t, int success)
{
	struct fstream *st = (struct fstream *)(void *)((char *)t - offsetof(struct fstream,
									     opened));
	grpc_op ops[2];

	if (!stop)
		arm_stream();
	pthread_mutex_lock(&st->mu);
	if (!success) {
		st->dead = 1;
		stream_unlock(st);
		return;
	}
	memset(ops, 0, sizeof(ops));
	/* Tells the caller it may send frames, as cofferd does. */
	st->hello.key = grpc_slice_from_static_string("coffer-pipeline");
	st->hello.value = grpc_slice_from_static_string("frames");
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[0].data.send_initial_metadata.count = 1;
	ops[0].data.send_initial_metadata.metadata = &st->hello;
	ops[1].op = GRPC_OP_RECV_MESSAGE;
	ops[1].data.recv_message.recv_message = &st->recv;
	if (!stream_op(st, ops, 2, &st->recvd))
		st->dead = 1;
	stream_unlock(st);
}

static void
stream_recvd(struct tag *t, int success)
{
	struct fstream *st = (struct fstream *)(void *)((char *)t - offsetof(struct fstream,
									     recvd));
	Coffer__V1__PipelineRequest *req = NULL;

	pthread_mutex_lock(&st->mu);
	st->ops--;
	if (!success || st->recv == NULL) {
		st->half_closed = 1;    /* or cancelled: the end's batch says which */
		if (!success)
			st->dead = 1;
	} else {
		grpc_slice in = read_all(st->recv);

		grpc_byte_buffer_destroy(st->recv);
		st->recv = NULL;
		req = coffer__v1__pipeline_request__unpack(NULL, GRPC_SLICE_LENGTH(in),
							    GRPC_SLICE_START_PTR(in));
		grpc_slice_unref(in);
		if (req == NULL || !stream_answer(st, req)) {
			st->dead = 1;
		} else {
			for (size_t k = 0; k < req->n_more && !st->dead; k++)
				if (!stream_answer(st, req->more[k]))
					st->dead = 1;
		}
		if (req != NULL)
			coffer__v1__pipeline_request__free_unpacked(req, NULL);
		if (!st->dead)
			stream_read(st);
	}
	stream_pump(st);
	stream_unlock(st);
}

static void
stream_sent(struct tag *t, int success)
{
	struct fstream *st = (struct fstream *)(void *)((char *)t - offsetof(struct fstream,
									     sent));

	pthread_mutex_lock(&st->mu);
	st->ops--;
	st->sending = 0;
	grpc_byte_buffer_destroy(st->send);
	st->send = NULL;
	if (!success)
		st->dead = 1;
	stream_pump(st);
	stream_unlock(st);
}

static void
stream_ended(struct tag *t, int success)
{
	struct fstream *st = (struct fstream *)(void *)((char *)t - offsetof(struct fstream,
									     ended));

	(void)success;
	pthread_mutex_lock(&st->mu);
	st->ops--;
	st->dead = 1;
	stream_unlock(st);
}

static void *
worker(void *arg)
{
	(void)arg;
	for (;;) {
		grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME),
							   NULL);
		struct tag *t = ev.tag;

		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			return NULL;
		if (ev.type == GRPC_OP_COMPLETE && t != NULL)
			t->fn(t, ev.success);
	}
}

static void
on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

int
main(int argc, char **argv)
{
	grpc_arg args[2];
	grpc_channel_args cargs = { 2, args };
	grpc_server_credentials *creds;
	pthread_t th[MAX_WORKERS];
	char addr[300];
	unsigned n;

	if (argc != 3 || (n = (unsigned)atoi(argv[2])) == 0 || n > MAX_WORKERS) {
		fprintf(stderr, "usage: bench_grpc_floor SOCKET WORKERS (1..%d)\n", MAX_WORKERS);
		return 2;
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	grpc_init();
	/* cofferd's own transport settings (rpc.c). */
	memset(args, 0, sizeof(args));
	args[0].type = args[1].type = GRPC_ARG_INTEGER;
	args[0].key = GRPC_ARG_ENABLE_CHANNELZ;
	args[1].key = GRPC_ARG_HTTP2_BDP_PROBE;
	server = grpc_server_create(&cargs, NULL);
	cq = grpc_completion_queue_create_for_next(NULL);
	grpc_server_register_completion_queue(server, cq, NULL);
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		methods[i].reg = grpc_server_register_method(server, methods[i].path, NULL,
			GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
	stream_reg = grpc_server_register_method(server, STREAM_PATH, NULL, GRPC_SRM_PAYLOAD_NONE,
						 0);
	snprintf(addr, sizeof(addr), "unix:%s", argv[1]);
	unlink(argv[1]);
	creds = grpc_insecure_server_credentials_create();
	if (!grpc_server_add_http2_port(server, addr, creds)) {
		fprintf(stderr, "bench_grpc_floor: cannot listen on %s\n", argv[1]);
		return 1;
	}
	grpc_server_credentials_release(creds);
	grpc_server_start(server);
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		for (unsigned k = 0; k < ARM_DEPTH; k++)
			arm(&methods[i]);
	for (unsigned k = 0; k < ARM_DEPTH; k++)
		arm_stream();
	for (unsigned i = 0; i < n; i++)
		pthread_create(&th[i], NULL, worker, NULL);
	while (!stop)   /* not pause(): a signal before it would be missed */
		usleep(100000);
	grpc_server_shutdown_and_notify(server, cq, NULL);
	grpc_server_cancel_all_calls(server);
	grpc_completion_queue_shutdown(cq);
	for (unsigned i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	grpc_server_destroy(server);
	grpc_completion_queue_destroy(cq);
	unlink(argv[1]);
	grpc_shutdown();
	return 0;
}
