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
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>

#include "coffer/v1/coffer.pb-c.h"

#define ARM_DEPTH 8
#define MAX_WORKERS 64
#define SIG_LEN 72
#define MAC_LEN 32

struct method {
	const char *path;
	void *reg;
	int is_mac;
};

struct fcall {
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

static void
arm(struct method *m)
{
	struct fcall *c = calloc(1, sizeof(*c));

	if (c == NULL) {
		fprintf(stderr, "bench_grpc_floor: out of memory\n");
		exit(1);
	}
	c->m = m;
	c->details = grpc_empty_slice();
	grpc_metadata_array_init(&c->md);
	if (grpc_server_request_registered_call(server, m->reg, &c->call, &c->deadline, &c->md,
						&c->recv, cq, cq, c) != GRPC_CALL_OK) {
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

/* Unpack the request (as any server must), pack the canned answer. */
static grpc_byte_buffer *
answer(const struct fcall *c, grpc_status_code *code)
{
	static const uint8_t zeros[SIG_LEN];
	Coffer__V1__SignResponse sr = COFFER__V1__SIGN_RESPONSE__INIT;
	Coffer__V1__MacResponse mr = COFFER__V1__MAC_RESPONSE__INIT;
	ProtobufCMessage *req, *resp = c->m->is_mac ? &mr.base : &sr.base;
	grpc_byte_buffer_reader rd;
	grpc_byte_buffer *out;
	grpc_slice in, packed;

	*code = GRPC_STATUS_INVALID_ARGUMENT;
	if (c->recv == NULL || !grpc_byte_buffer_reader_init(&rd, c->recv))
		return NULL;
	in = grpc_byte_buffer_reader_readall(&rd);
	grpc_byte_buffer_reader_destroy(&rd);
	req = protobuf_c_message_unpack(c->m->is_mac ? &coffer__v1__mac_request__descriptor :
				       &coffer__v1__sign_request__descriptor, NULL,
				       GRPC_SLICE_LENGTH(in), GRPC_SLICE_START_PTR(in));
	grpc_slice_unref(in);
	if (req == NULL)
		return NULL;
	protobuf_c_message_free_unpacked(req, NULL);
	sr.signature.data = mr.mac.data = (uint8_t *)zeros;
	sr.signature.len = SIG_LEN;
	mr.mac.len = MAC_LEN;
	sr.version = mr.version = 1;
	packed = grpc_slice_malloc(protobuf_c_message_get_packed_size(resp));
	protobuf_c_message_pack(resp, GRPC_SLICE_START_PTR(packed));
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
	if (grpc_call_start_batch(c->call, ops, (size_t)(op - ops), c, NULL) != GRPC_CALL_OK)
		call_free(c);
}

static void *
worker(void *arg)
{
	(void)arg;
	for (;;) {
		grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME),
							   NULL);
		struct fcall *c = ev.tag;

		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			return NULL;
		if (ev.type != GRPC_OP_COMPLETE || c == NULL)
			continue;
		if (c->answered || !ev.success) {
			call_free(c);
		} else {
			if (!stop)
				arm(c->m);
			respond(c);
		}
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
