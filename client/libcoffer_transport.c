/*
 * libcoffer_transport.c — libcoffer's bottom layer: a client's gRPC channel
 * (replaced when it is stuck in failure), one unary call on it with a
 * packed message, and the gRPC status table.
 */
#include "libcoffer_transport.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <openssl/crypto.h>

#include "cf_status.h"
#include "cf_time.h"
#include "coffer.h"

/* ---- gRPC status -> Coffer status: the one table ---- */

static const int grpc_to_cf[] = {
	[GRPC_STATUS_OK] = CF_OK,
	[GRPC_STATUS_CANCELLED] = CF_E_CANCELLED,
	[GRPC_STATUS_UNKNOWN] = CF_E_INTERNAL,
	[GRPC_STATUS_INVALID_ARGUMENT] = CF_E_INVALID_ARG,
	[GRPC_STATUS_DEADLINE_EXCEEDED] = CF_E_TIMEOUT,
	[GRPC_STATUS_NOT_FOUND] = CF_E_NOT_FOUND,
	[GRPC_STATUS_ALREADY_EXISTS] = CF_E_EXISTS,
	[GRPC_STATUS_PERMISSION_DENIED] = CF_E_DENIED,
	[GRPC_STATUS_RESOURCE_EXHAUSTED] = CF_E_TOO_LARGE,
	[GRPC_STATUS_FAILED_PRECONDITION] = CF_E_PRECONDITION,
	[GRPC_STATUS_ABORTED] = CF_E_BUSY,
	[GRPC_STATUS_OUT_OF_RANGE] = CF_E_INVALID_ARG,
	[GRPC_STATUS_UNIMPLEMENTED] = CF_E_UNIMPLEMENTED,
	[GRPC_STATUS_INTERNAL] = CF_E_INTERNAL,
	[GRPC_STATUS_UNAVAILABLE] = CF_E_UNAVAILABLE,
	[GRPC_STATUS_DATA_LOSS] = CF_E_INTERNAL,
	[GRPC_STATUS_UNAUTHENTICATED] = CF_E_UNAUTHENTICATED,
};

static int
status_from_grpc(grpc_status_code s)
{
	if ((int)s < 0 || (size_t)s >= sizeof(grpc_to_cf) / sizeof(grpc_to_cf[0]))
		return cf_error(CF_E_INTERNAL, "the daemon answered unknown gRPC status %d", (int)s);
	return grpc_to_cf[s];
}

int
lc_status_from_grpc(unsigned code)
{
	return status_from_grpc((grpc_status_code)code);
}

/* ---- secret-safe memory ---- */

/* Destroy callback of request slices: every packed request is wiped. */
static void
slice_wipe_free(void *p, size_t len)
{
	if (p == NULL)
		return;
	OPENSSL_cleanse(p, len);
	free(p);
}

/* Wipe the received message bytes in place before gRPC releases them. */
static void
byte_buffer_wipe(grpc_byte_buffer *bb)
{
	grpc_slice_buffer *sb;

	if (bb == NULL || bb->type != GRPC_BB_RAW)
		return;
	sb = &bb->data.raw.slice_buffer;
	for (size_t i = 0; i < sb->count; i++)
		OPENSSL_cleanse(GRPC_SLICE_START_PTR(sb->slices[i]),
		    GRPC_SLICE_LENGTH(sb->slices[i]));
}

/* ---- the channel ---- */

/*
 * A gRPC channel shared by the calls that took a reference to it. gRPC
 * 1.51's pick_first policy keeps a channel whose connection attempts failed
 * in TRANSIENT_FAILURE for seconds after the daemon is back, failing every
 * call fast meanwhile; so a channel found in that state after a failed call
 * is replaced by a fresh one (with its own subchannel), and the old one is
 * destroyed when its last call is done.
 */
struct chan {
	grpc_channel *channel;
	atomic_uint refs;
};

struct lc_conn {
	pthread_mutex_t mu;     /* guards cur */
	struct chan *cur;
	grpc_channel_credentials *creds;
	atomic_uint timeout_ms;
	char *target;           /* "unix:PATH" */
	char idem_key[LC_IDEM_KEY_MAX + 1];   /* sent with every call when set */
};

static struct chan *
chan_new(const struct lc_conn *c)
{
	struct chan *ch;
	grpc_arg args[] = {
		{ .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
		  .value.integer = COFFER_MAX_MESSAGE },
		{ .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
		  .value.integer = COFFER_MAX_MESSAGE },
		/* A local daemon restarts quickly: do not back off for long.
		 * (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS stays at its default: gRPC
		 * uses it as the connect timeout.) */
		{ .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
		  .value.integer = 100 },
		{ .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
		  .value.integer = 1000 },
		/* A replacement channel must not inherit the failed subchannel. */
		{ .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL,
		  .value.integer = 1 },
		{ .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ENABLE_HTTP_PROXY,
		  .value.integer = 0 },
		/* Identity only: no compressed copies of secrets we cannot wipe. */
		{ .type = GRPC_ARG_INTEGER,
		  .key = GRPC_COMPRESSION_CHANNEL_ENABLED_ALGORITHMS_BITSET,
		  .value.integer = 1 },
		{ .type = GRPC_ARG_STRING, .key = GRPC_ARG_PRIMARY_USER_AGENT_STRING,
		  .value.string = "libcoffer/" COFFER_LIB_VERSION },
		/* A local socket: no bandwidth probes, no channelz bookkeeping. */
		{ .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_HTTP2_BDP_PROBE, .value.integer = 0 },
		{ .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ENABLE_CHANNELZ, .value.integer = 0 },
	};
	grpc_channel_args chargs = { sizeof(args) / sizeof(args[0]), args };

	if ((ch = calloc(1, sizeof(*ch))) == NULL)
		return NULL;
	/* Never NULL: on failure gRPC returns a "lame" channel whose calls fail. */
	if ((ch->channel = grpc_channel_create(c->target, c->creds, &chargs)) == NULL) {
		free(ch);
		return NULL;
	}
	atomic_init(&ch->refs, 1);
	return ch;
}

static void
chan_unref(struct chan *ch)
{
	if (ch == NULL || atomic_fetch_sub(&ch->refs, 1) != 1)
		return;
	grpc_channel_destroy(ch->channel);
	free(ch);
}

static struct chan *
chan_get(struct lc_conn *c)
{
	struct chan *ch;

	pthread_mutex_lock(&c->mu);
	ch = c->cur;
	atomic_fetch_add(&ch->refs, 1);
	pthread_mutex_unlock(&c->mu);
	return ch;
}

/* After a failed call on `ch`: replace it if it is stuck in failure. */
static void
chan_check(struct lc_conn *c, struct chan *ch)
{
	struct chan *fresh, *old = NULL;

	if (grpc_channel_check_connectivity_state(ch->channel, 0) !=
	    GRPC_CHANNEL_TRANSIENT_FAILURE)
		return;
	if ((fresh = chan_new(c)) == NULL)
		return;
	pthread_mutex_lock(&c->mu);
	if (c->cur == ch) {
		old = ch;
		c->cur = fresh;
		fresh = NULL;
	}
	pthread_mutex_unlock(&c->mu);
	chan_unref(old);
	chan_unref(fresh);
}

int
lc_conn_new(const char *path, struct lc_conn **out)
{
	struct lc_conn *c;
	int grpc_ready = 0, mu_ready = 0;
	int r;

	if ((c = calloc(1, sizeof(*c))) == NULL)
		return cf_nomem();
	if (pthread_mutex_init(&c->mu, NULL) != 0) {
		r = cf_error(CF_E_NOMEM, "cannot create a mutex");
		goto out;
	}
	mu_ready = 1;
	if (asprintf(&c->target, "unix:%s", path) < 0) {
		c->target = NULL;
		r = cf_nomem();
		goto out;
	}
	atomic_init(&c->timeout_ms, COFFER_DEFAULT_TIMEOUT_MS);
	grpc_init();
	grpc_ready = 1;
	if ((c->creds = grpc_insecure_credentials_create()) == NULL) {
		r = cf_error(CF_E_INTERNAL, "cannot create gRPC channel credentials");
		goto out;
	}
	if ((c->cur = chan_new(c)) == NULL) {
		r = cf_error(CF_E_INTERNAL, "cannot create a gRPC channel for %s", c->target);
		goto out;
	}
	*out = c;
	return CF_OK;
 out:
	if (c->creds != NULL)
		grpc_channel_credentials_release(c->creds);
	if (mu_ready)
		pthread_mutex_destroy(&c->mu);
	free(c->target);
	free(c);
	if (grpc_ready)
		grpc_shutdown();
	return r;
}

void
lc_conn_free(struct lc_conn *c)
{
	if (c == NULL)
		return;
	/* No call may be running: ours is the last reference. */
	chan_unref(c->cur);
	grpc_channel_credentials_release(c->creds);
	pthread_mutex_destroy(&c->mu);
	free(c->target);
	free(c);
	grpc_shutdown();
}

void
lc_conn_set_timeout(struct lc_conn *c, unsigned int ms)
{
	atomic_store(&c->timeout_ms, ms);
}

unsigned int
lc_conn_timeout(const struct lc_conn *c)
{
	return atomic_load(&((struct lc_conn *)c)->timeout_ms);
}

void
lc_conn_set_idem_key(struct lc_conn *c, const char *key)
{
	snprintf(c->idem_key, sizeof(c->idem_key), "%s", key != NULL ? key : "");
}

int
lc_conn_has_idem_key(const struct lc_conn *c)
{
	return c->idem_key[0] != '\0';
}

/* ---- one unary call ---- */

/* The public call this thread is making (lc_call_begin): its timeout and
 * when it ends (UINT64_MAX: never). */
static _Thread_local struct {
	int on;
	unsigned int ms;
	uint64_t until_ms;
} tl_call;

void
lc_call_begin_at(const struct lc_conn *c, uint64_t start_ms)
{
	unsigned int ms = lc_conn_timeout(c);

	tl_call.on = 1;
	tl_call.ms = ms;
	tl_call.until_ms = ms == 0 ? UINT64_MAX : start_ms + ms;
}

void
lc_call_begin(const struct lc_conn *c)
{
	lc_call_begin_at(c, cf_mono_ms());
}

void
lc_call_end(void)
{
	tl_call.on = 0;
}

int
lc_call_expired(void)
{
	return tl_call.on && cf_mono_ms() >= tl_call.until_ms;
}

void
lc_text_copy(char *dst, size_t cap, const char *src, size_t n)
{
	if (n >= cap)
		n = cap - 1;
	for (size_t i = 0; i < n; i++)
		dst[i] = ((unsigned char)src[i] < 0x20 || src[i] == 0x7f) ? '?' : src[i];
	dst[n] = '\0';
}

/* Record the server's status message, with control characters made
 * harmless before anyone prints it. */
int
lc_status_error(const struct lc_conn *c, unsigned int ms, unsigned code, const uint8_t *p,
    size_t n)
{
	char msg[CF_ERROR_DETAIL_MAX];
	grpc_status_code st = (grpc_status_code)code;
	int r = status_from_grpc(st);

	lc_text_copy(msg, sizeof(msg), (const char *)p, n);
	if (n == 0)
		return cf_error(r, "%s (gRPC status %d)", coffer_strerror(r), (int)st);
	/* gRPC's own texts: say which daemon and which deadline. */
	if (st == GRPC_STATUS_DEADLINE_EXCEEDED && strcmp(msg, "Deadline Exceeded") == 0)
		return cf_error(r, "no answer from cofferd at %s within %u ms", c->target + 5,
		    ms);
	if (st == GRPC_STATUS_UNAVAILABLE && strstr(msg, "failed to connect") != NULL) {
		const char *why = strrchr(msg, ':');

		return cf_error(r, "cannot connect to cofferd at %s: %s", c->target + 5,
		    why != NULL && why[1] == ' ' ? why + 2 : msg);
	}
	return cf_error(r, "%s", msg);
}

static int
status_error(const struct lc_conn *c, unsigned int ms, grpc_status_code st,
    const grpc_slice *details)
{
	return lc_status_error(c, ms, (unsigned)st, GRPC_SLICE_START_PTR(*details),
	    GRPC_SLICE_LENGTH(*details));
}

static void
slice_free(void *p, size_t len)
{
	(void)len;
	free(p);
}

/* The received message's bytes, copied out (wiped in gRPC's buffers). */
static int
byte_buffer_copy(grpc_byte_buffer *bb, uint8_t **out, size_t *outlen)
{
	grpc_byte_buffer_reader reader;
	grpc_slice payload;
	uint8_t *copy;

	if (!grpc_byte_buffer_reader_init(&reader, bb))
		return cf_error(CF_E_INTERNAL, "cannot read the response message");
	payload = grpc_byte_buffer_reader_readall(&reader);
	grpc_byte_buffer_reader_destroy(&reader);
	if ((copy = malloc(GRPC_SLICE_LENGTH(payload) + 1)) != NULL) {
		memcpy(copy, GRPC_SLICE_START_PTR(payload), GRPC_SLICE_LENGTH(payload));
		*out = copy;
		*outlen = GRPC_SLICE_LENGTH(payload);
	}
	OPENSSL_cleanse(GRPC_SLICE_START_PTR(payload), GRPC_SLICE_LENGTH(payload));
	grpc_slice_unref(payload);
	byte_buffer_wipe(bb);
	return copy != NULL ? CF_OK : cf_nomem();
}

int
lc_transport(struct lc_conn *c, const char *method, uint8_t *buf, size_t len, const char *authz,
    uint8_t **out, size_t *outlen, int flags)
{
	int wipe = !(flags & LC_CIPHERTEXT);
	grpc_completion_queue *cq = NULL;
	struct chan *ch = NULL;
	grpc_call *call = NULL;
	grpc_byte_buffer *send_bb = NULL, *recv_bb = NULL;
	grpc_metadata_array md_initial, md_trailing;
	grpc_status_code st = GRPC_STATUS_UNKNOWN;
	grpc_slice details = grpc_empty_slice(), s;
	const char *errstr = NULL;
	grpc_op ops[6];
	grpc_metadata md[2] = { { .value = grpc_empty_slice() }, { .value = grpc_empty_slice() } };
	size_t nmd = 0;
	grpc_event ev;
	gpr_timespec deadline;
	unsigned int ms, left;
	int started = 0;
	int r = CF_E_INTERNAL;

	grpc_metadata_array_init(&md_initial);
	grpc_metadata_array_init(&md_trailing);

	/* gRPC owns buf from here (and wipes it, unless it is ciphertext). */
	s = grpc_slice_new_with_len(buf, len, wipe ? slice_wipe_free : slice_free);
	send_bb = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
	if (send_bb == NULL) {
		r = cf_nomem();
		goto out;
	}

	if ((cq = grpc_completion_queue_create_for_pluck(NULL)) == NULL) {
		r = cf_error(CF_E_NOMEM, "cannot create a gRPC completion queue");
		goto out;
	}
	ms = atomic_load(&c->timeout_ms);
	left = ms;
	if (tl_call.on) {
		uint64_t now = cf_mono_ms();

		ms = tl_call.ms;
		if (tl_call.until_ms == UINT64_MAX) {
			left = 0;
		} else if (now >= tl_call.until_ms) {
			r = lc_status_error(c, ms, GRPC_STATUS_DEADLINE_EXCEEDED,
			    (const uint8_t *)"Deadline Exceeded", 17);
			goto out;
		} else {
			left = (unsigned int)(tl_call.until_ms - now);
		}
	}
	if (left == 0)
		deadline = gpr_inf_future(GPR_CLOCK_MONOTONIC);
	else
		deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
		    gpr_time_from_millis((int64_t)left, GPR_TIMESPAN));
	ch = chan_get(c);
	call = grpc_channel_create_call(ch->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
	    grpc_slice_from_static_string(method), NULL, deadline, NULL);
	if (call == NULL) {
		r = cf_error(CF_E_INTERNAL, "cannot create a gRPC call");
		goto out;
	}

	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	/* Counted copies: gRPC may keep header values (HPACK table) after
	 * the call. */
	if (authz != NULL) {
		md[nmd].key = grpc_slice_from_static_string("authorization");
		md[nmd++].value = grpc_slice_from_copied_string(authz);
	}
	if (c->idem_key[0] != '\0') {
		md[nmd].key = grpc_slice_from_static_string("idempotency-key");
		md[nmd++].value = grpc_slice_from_copied_string(c->idem_key);
	}
	ops[0].data.send_initial_metadata.count = nmd;
	ops[0].data.send_initial_metadata.metadata = md;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = send_bb;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &md_initial;
	ops[4].op = GRPC_OP_RECV_MESSAGE;
	ops[4].data.recv_message.recv_message = &recv_bb;
	ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[5].data.recv_status_on_client.trailing_metadata = &md_trailing;
	ops[5].data.recv_status_on_client.status = &st;
	ops[5].data.recv_status_on_client.status_details = &details;
	ops[5].data.recv_status_on_client.error_string = &errstr;
	if (grpc_call_start_batch(call, ops, sizeof(ops) / sizeof(ops[0]), cq, NULL) !=
	    GRPC_CALL_OK) {
		r = cf_error(CF_E_INTERNAL, "cannot start the gRPC call");
		goto out;
	}
	started = 1;
	/* The call's deadline bounds this wait. */
	ev = grpc_completion_queue_pluck(cq, cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
	if (ev.type != GRPC_OP_COMPLETE) {
		r = cf_error(CF_E_INTERNAL, "gRPC completion queue failed");
		goto out;
	}
	if (st != GRPC_STATUS_OK) {
		if (st == GRPC_STATUS_UNAVAILABLE)
			chan_check(c, ch);
		r = status_error(c, ms, st, &details);
		goto out;
	}
	if (recv_bb == NULL) {
		r = cf_error(CF_E_INTERNAL, "the server sent no response message");
		goto out;
	}
	r = byte_buffer_copy(recv_bb, out, outlen);
 out:
	/* Responses may carry secrets: wipe gRPC's copies before release. */
	if (wipe)
		byte_buffer_wipe(recv_bb);
	if (recv_bb != NULL)
		grpc_byte_buffer_destroy(recv_bb);
	if (send_bb != NULL)
		grpc_byte_buffer_destroy(send_bb);
	grpc_metadata_array_destroy(&md_initial);
	grpc_metadata_array_destroy(&md_trailing);
	grpc_slice_unref(md[0].value);
	grpc_slice_unref(md[1].value);
	grpc_slice_unref(details);
	if (errstr != NULL)
		gpr_free((void *)errstr);
	if (call != NULL)
		grpc_call_unref(call);
	if (cq != NULL) {
		grpc_completion_queue_shutdown(cq);
		if (started)
			(void)grpc_completion_queue_pluck(cq, NULL,
			    gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
		grpc_completion_queue_destroy(cq);
	}
	chan_unref(ch);
	return r;
}

/* ---- one bidirectional stream ---- */

/* The tags of a stream's operations on its completion queue. */
enum { TAG_OPEN, TAG_SEND, TAG_RECV, TAG_STATUS, TAG_CLOSE, TAG__COUNT };

struct lc_stream {
	struct lc_conn *conn;
	struct chan *ch;
	grpc_completion_queue *cq;
	grpc_call *call;
	char tags[TAG__COUNT];          /* their addresses are the tags */
	atomic_int pending;             /* batches started, not yet completed */
	grpc_metadata md;
	grpc_metadata_array md_initial, md_trailing;
	grpc_byte_buffer *send_bb;      /* the message being sent */
	grpc_byte_buffer *recv_bb;      /* the message being received */
	int recv_initial;               /* the first receive takes the initial metadata */
	int frames;                     /* ... which said "coffer-pipeline: frames" */
	grpc_status_code st;
	grpc_slice details;
	const char *errstr;
};

static int
stream_batch(struct lc_stream *s, const grpc_op *ops, size_t n, int tag)
{
	atomic_fetch_add(&s->pending, 1);
	if (grpc_call_start_batch(s->call, ops, n, &s->tags[tag], NULL) == GRPC_CALL_OK)
		return CF_OK;
	atomic_fetch_sub(&s->pending, 1);
	return cf_error(CF_E_INTERNAL, "cannot start an operation on the gRPC stream");
}

/* Does md hold the header key with exactly this value? */
static int
has_header(const grpc_metadata_array *md, const char *key, const char *value)
{
	for (size_t i = 0; i < md->count; i++)
		if (grpc_slice_str_cmp(md->metadata[i].key, key) == 0 &&
		    grpc_slice_str_cmp(md->metadata[i].value, value) == 0)
			return 1;
	return 0;
}

/* One receive at a time: the first with the initial metadata. */
static int
stream_recv(struct lc_stream *s)
{
	grpc_op ops[2];
	size_t n = 0;

	memset(ops, 0, sizeof(ops));
	if (s->recv_initial) {
		s->recv_initial = 0;
		ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
		ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->md_initial;
	}
	ops[n].op = GRPC_OP_RECV_MESSAGE;
	ops[n++].data.recv_message.recv_message = &s->recv_bb;
	return stream_batch(s, ops, n, TAG_RECV);
}

int
lc_stream_open(struct lc_conn *c, const char *method, const char *authz, struct lc_stream **out)
{
	struct lc_stream *s;
	grpc_op ops[1];
	int r;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		return cf_nomem();
	s->conn = c;
	s->md.value = grpc_empty_slice();
	s->details = grpc_empty_slice();
	s->st = GRPC_STATUS_UNKNOWN;
	s->recv_initial = 1;
	atomic_init(&s->pending, 0);
	grpc_metadata_array_init(&s->md_initial);
	grpc_metadata_array_init(&s->md_trailing);
	if ((s->cq = grpc_completion_queue_create_for_next(NULL)) == NULL) {
		r = cf_error(CF_E_NOMEM, "cannot create a gRPC completion queue");
		goto fail;
	}
	/* No deadline: the stream lives as long as the client; each request's
	 * wait has its own. */
	s->ch = chan_get(c);
	s->call = grpc_channel_create_call(s->ch->channel, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq,
	    grpc_slice_from_static_string(method), NULL, gpr_inf_future(GPR_CLOCK_REALTIME),
	    NULL);
	if (s->call == NULL) {
		r = cf_error(CF_E_INTERNAL, "cannot create a gRPC call");
		goto fail;
	}
	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[0].data.recv_status_on_client.trailing_metadata = &s->md_trailing;
	ops[0].data.recv_status_on_client.status = &s->st;
	ops[0].data.recv_status_on_client.status_details = &s->details;
	ops[0].data.recv_status_on_client.error_string = &s->errstr;
	if ((r = stream_batch(s, ops, 1, TAG_STATUS)) != CF_OK)
		goto fail;
	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	if (authz != NULL) {
		s->md.key = grpc_slice_from_static_string("authorization");
		s->md.value = grpc_slice_from_copied_string(authz);
		ops[0].data.send_initial_metadata.count = 1;
		ops[0].data.send_initial_metadata.metadata = &s->md;
	}
	if ((r = stream_batch(s, ops, 1, TAG_OPEN)) != CF_OK || (r = stream_recv(s)) != CF_OK)
		goto fail;
	*out = s;
	return CF_OK;
 fail:
	lc_stream_free(s);
	return r;
}

int
lc_stream_send(struct lc_stream *s, uint8_t *buf, size_t len)
{
	grpc_slice sl = grpc_slice_new_with_len(buf, len, slice_wipe_free);
	grpc_op op;

	s->send_bb = grpc_raw_byte_buffer_create(&sl, 1);
	grpc_slice_unref(sl);
	if (s->send_bb == NULL)
		return cf_nomem();
	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_SEND_MESSAGE;
	op.data.send_message.send_message = s->send_bb;
	return stream_batch(s, &op, 1, TAG_SEND);
}

int
lc_stream_close_send(struct lc_stream *s)
{
	grpc_op op;

	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	return stream_batch(s, &op, 1, TAG_CLOSE);
}

void
lc_stream_cancel(struct lc_stream *s)
{
	grpc_call_cancel(s->call, NULL);
}

int
lc_stream_next(struct lc_stream *s, struct lc_stream_event *ev)
{
	for (;;) {
		grpc_event e = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME),
		    NULL);
		int tag;

		if (e.type != GRPC_OP_COMPLETE)
			return cf_error(CF_E_INTERNAL, "gRPC completion queue failed");
		atomic_fetch_sub(&s->pending, 1);
		tag = (int)((char *)e.tag - s->tags);
		memset(ev, 0, sizeof(*ev));
		switch (tag) {
		case TAG_SEND:
			grpc_byte_buffer_destroy(s->send_bb);
			s->send_bb = NULL;
			ev->kind = LC_STREAM_SENT;
			ev->ok = e.success;
			return CF_OK;
		case TAG_RECV:
			if (!e.success || s->recv_bb == NULL)
				continue;   /* no more messages: the status follows */
			if (s->md_initial.count > 0 && !s->frames)
				s->frames = has_header(&s->md_initial, "coffer-pipeline", "frames");
			ev->kind = LC_STREAM_MESSAGE;
			ev->frames = s->frames;
			ev->ok = byte_buffer_copy(s->recv_bb, &ev->msg, &ev->len) == CF_OK;
			grpc_byte_buffer_destroy(s->recv_bb);
			s->recv_bb = NULL;
			/* Keep one receive posted. */
			if (stream_recv(s) != CF_OK)
				lc_stream_cancel(s);
			return CF_OK;
		case TAG_STATUS:
			ev->kind = LC_STREAM_END;
			ev->code = (unsigned)s->st;
			ev->details = GRPC_SLICE_START_PTR(s->details);
			ev->details_len = GRPC_SLICE_LENGTH(s->details);
			if (s->st == GRPC_STATUS_UNAVAILABLE)
				chan_check(s->conn, s->ch);
			return CF_OK;
		default:   /* the opening and the half-close: their failure ends the stream */
			continue;
		}
	}
}

void
lc_stream_free(struct lc_stream *s)
{
	grpc_event e;

	if (s == NULL)
		return;
	if (s->call != NULL) {
		/* Every operation still posted completes once the call is cancelled. */
		grpc_call_cancel(s->call, NULL);
		while (atomic_load(&s->pending) > 0) {
			e = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME),
			    NULL);
			if (e.type != GRPC_OP_COMPLETE)
				break;
			atomic_fetch_sub(&s->pending, 1);
		}
		grpc_call_unref(s->call);
	}
	if (s->cq != NULL) {
		grpc_completion_queue_shutdown(s->cq);
		do
			e = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME),
			    NULL);
		while (e.type != GRPC_QUEUE_SHUTDOWN);
		grpc_completion_queue_destroy(s->cq);
	}
	if (s->recv_bb != NULL) {
		byte_buffer_wipe(s->recv_bb);
		grpc_byte_buffer_destroy(s->recv_bb);
	}
	if (s->send_bb != NULL)
		grpc_byte_buffer_destroy(s->send_bb);
	grpc_metadata_array_destroy(&s->md_initial);
	grpc_metadata_array_destroy(&s->md_trailing);
	grpc_slice_unref(s->md.value);
	grpc_slice_unref(s->details);
	if (s->errstr != NULL)
		gpr_free((void *)s->errstr);
	chan_unref(s->ch);
	free(s);
}
