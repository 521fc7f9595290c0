/*
 * libcoffer.c — the Coffer client library: plain C calls over gRPC core.
 *
 * Each public call builds a protobuf-c request that borrows the caller's
 * memory, packs it into a buffer that is wiped when gRPC releases it, runs
 * one batch of six ops on its own pluck completion queue, and unpacks the
 * response (with a wiping allocator when the response carries secrets).
 */
#include "cf_pbwipe.h"
#include "coffer.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/un.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <openssl/crypto.h>

#include "cf_keytype.h"
#include "cf_methods.h"
#include "cf_session.h"
#include "cf_status.h"
#include "libcoffer_internal.h"
#include "coffer/v1/coffer.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"

/* The public codes are the internal ones. */
_Static_assert((int)COFFER_OK == (int)CF_OK, "status");
_Static_assert((int)COFFER_E_INTERNAL == (int)CF_E_INTERNAL, "status");
_Static_assert((int)COFFER_E_NOMEM == (int)CF_E_NOMEM, "status");
_Static_assert((int)COFFER_E_IO == (int)CF_E_IO, "status");
_Static_assert((int)COFFER_E_INVALID_ARG == (int)CF_E_INVALID_ARG, "status");
_Static_assert((int)COFFER_E_TOO_LARGE == (int)CF_E_TOO_LARGE, "status");
_Static_assert((int)COFFER_E_NOT_FOUND == (int)CF_E_NOT_FOUND, "status");
_Static_assert((int)COFFER_E_EXISTS == (int)CF_E_EXISTS, "status");
_Static_assert((int)COFFER_E_BUSY == (int)CF_E_BUSY, "status");
_Static_assert((int)COFFER_E_UNAVAILABLE == (int)CF_E_UNAVAILABLE, "status");
_Static_assert((int)COFFER_E_DENIED == (int)CF_E_DENIED, "status");
_Static_assert((int)COFFER_E_UNAUTHENTICATED == (int)CF_E_UNAUTHENTICATED, "status");
_Static_assert((int)COFFER_E_PRECONDITION == (int)CF_E_PRECONDITION, "status");
_Static_assert((int)COFFER_E_TIMEOUT == (int)CF_E_TIMEOUT, "status");
_Static_assert((int)COFFER_E_CANCELLED == (int)CF_E_CANCELLED, "status");
_Static_assert((int)COFFER_E_UNIMPLEMENTED == (int)CF_E_UNIMPLEMENTED, "status");

/* Public enums share the wire numbering and the internal model's. */
_Static_assert(COFFER_KEY_EC_P256 == (int)CF_KEY_EC_P256 &&
	       COFFER_KEY_AES_256 == (int)CF_KEY_AES_256 &&
	       COFFER_KEY_AES_256 + 1 == (int)CF_KEY__COUNT, "key type");
_Static_assert(COFFER_KEY_EC_P256 == (int)COFFER__V1__KEY_TYPE__EC_P256 &&
	       COFFER_KEY_EC_P384 == (int)COFFER__V1__KEY_TYPE__EC_P384 &&
	       COFFER_KEY_ED25519 == (int)COFFER__V1__KEY_TYPE__ED25519 &&
	       COFFER_KEY_RSA_2048 == (int)COFFER__V1__KEY_TYPE__RSA_2048 &&
	       COFFER_KEY_RSA_3072 == (int)COFFER__V1__KEY_TYPE__RSA_3072 &&
	       COFFER_KEY_RSA_4096 == (int)COFFER__V1__KEY_TYPE__RSA_4096 &&
	       COFFER_KEY_HMAC_SHA256 == (int)COFFER__V1__KEY_TYPE__HMAC_SHA256 &&
	       COFFER_KEY_HMAC_SHA384 == (int)COFFER__V1__KEY_TYPE__HMAC_SHA384 &&
	       COFFER_KEY_HMAC_SHA512 == (int)COFFER__V1__KEY_TYPE__HMAC_SHA512 &&
	       COFFER_KEY_AES_256 == (int)COFFER__V1__KEY_TYPE__AES_256, "key type");
_Static_assert(COFFER_HASH_SHA256 == (int)COFFER__V1__HASH__SHA256 &&
	       COFFER_HASH_SHA384 == (int)COFFER__V1__HASH__SHA384 &&
	       COFFER_HASH_SHA512 == (int)COFFER__V1__HASH__SHA512 &&
	       COFFER_HASH_SHA256 == (int)CF_HASH_SHA256 &&
	       COFFER_HASH_SHA512 == (int)CF_HASH_SHA512, "hash");
_Static_assert(COFFER_SCHEME_ECDSA == (int)COFFER__V1__SIGNATURE_SCHEME__ECDSA &&
	       COFFER_SCHEME_EDDSA == (int)COFFER__V1__SIGNATURE_SCHEME__EDDSA &&
	       COFFER_SCHEME_RSA_PSS == (int)COFFER__V1__SIGNATURE_SCHEME__RSA_PSS &&
	       COFFER_SCHEME_RSA_PKCS1 == (int)COFFER__V1__SIGNATURE_SCHEME__RSA_PKCS1 &&
	       COFFER_SCHEME_RSA_PKCS1 == (int)CF_SIG_RSA_PKCS1, "scheme");
_Static_assert(COFFER_PURPOSE_WRAP == (int)COFFER__V1__PURPOSE__WRAP, "purpose");
_Static_assert(COFFER_VERSION_DESTROYED == (int)COFFER__V1__VERSION_STATE__DESTROYED, "state");
_Static_assert(COFFER_SERVICE_UNKNOWN ==
	       (int)GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN,
	       "serving status");

#define KS "/coffer.v1.KeyService/"
#define AS "/coffer.v1.AdminService/"
#define HEALTH_CHECK "/grpc.health.v1.Health/Check"

/* Longest page token we carry from one ListKeys page to the next. */
#define PAGE_TOKEN_MAX 1024
#define LIST_PAGE_SIZE 100

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

struct coffer_client {
	pthread_mutex_t mu;     /* guards cur */
	struct chan *cur;
	grpc_channel_credentials *creds;
	unsigned int flags;
	atomic_uint timeout_ms;
	char *target;           /* "unix:PATH" */
	struct lc_sessions *sessions;
	struct lc_apikey *apikey;   /* signs every call, when set */
	char idem_key[129];     /* sent with every call when set; see coffer_set_idempotency_key */
	int unsealed;           /* benchmark baseline only: never seal */
};

struct lc_apikey **
lc_client_apikey(coffer_client *c)
{
	return &c->apikey;
}

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

static int
bytes_set(struct coffer_bytes *out, const ProtobufCBinaryData *in)
{
	uint8_t *p;

	if ((p = malloc(in->len ? in->len : 1)) == NULL)
		return cf_error(CF_E_NOMEM, "out of memory");
	if (in->len > 0)
		memcpy(p, in->data, in->len);
	out->data = p;
	out->len = in->len;
	return CF_OK;
}

void
coffer_bytes_free(struct coffer_bytes *b)
{
	if (b == NULL)
		return;
	if (b->data != NULL) {
		OPENSSL_cleanse(b->data, b->len);
		free(b->data);
	}
	b->data = NULL;
	b->len = 0;
}

/* ---- names ---- */

const char *
coffer_error_message(void)
{
	return cf_error_detail();
}

const char *
coffer_strerror(int status)
{
	/* The shared text speaks of the token; a client also sees this code
	 * when the daemon itself cannot be reached. */
	if (status == CF_E_UNAVAILABLE)
		return "cofferd or its token unavailable";
	return cf_strerror(status);
}

const char *
coffer_key_type_name(enum coffer_key_type t)
{
	if (t <= COFFER_KEY_UNSPECIFIED || t > COFFER_KEY_AES_256)
		return "unknown";
	return cf_key_type_name((enum cf_key_type)t);
}

int
coffer_key_type_parse(const char *name, enum coffer_key_type *out)
{
	enum cf_key_type t;
	int r;

	cf_error_clear();
	if (name == NULL || out == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	if ((r = cf_key_type_parse(name, &t)) != CF_OK)
		return r;
	*out = (enum coffer_key_type)t;
	return CF_OK;
}

const char *
coffer_hash_name(enum coffer_hash h)
{
	if (h <= COFFER_HASH_DEFAULT || h > COFFER_HASH_SHA512)
		return "unknown";
	return cf_hash_name((enum cf_hash)h);
}

int
coffer_hash_parse(const char *name, enum coffer_hash *out)
{
	enum cf_hash h;
	int r;

	cf_error_clear();
	if (name == NULL || out == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	if ((r = cf_hash_parse(name, &h)) != CF_OK)
		return r;
	*out = (enum coffer_hash)h;
	return CF_OK;
}

static const char *const scheme_names[] = {
	[COFFER_SCHEME_ECDSA] = "ecdsa",
	[COFFER_SCHEME_EDDSA] = "eddsa",
	[COFFER_SCHEME_RSA_PSS] = "rsa-pss",
	[COFFER_SCHEME_RSA_PKCS1] = "rsa-pkcs1",
};

const char *
coffer_scheme_name(enum coffer_sig_scheme s)
{
	if (s <= COFFER_SCHEME_DEFAULT || s > COFFER_SCHEME_RSA_PKCS1)
		return "unknown";
	return scheme_names[s];
}

int
coffer_scheme_parse(const char *name, enum coffer_sig_scheme *out)
{
	cf_error_clear();
	if (name == NULL || out == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL argument");
	for (int s = COFFER_SCHEME_ECDSA; s <= COFFER_SCHEME_RSA_PKCS1; s++) {
		if (strcmp(name, scheme_names[s]) == 0) {
			*out = (enum coffer_sig_scheme)s;
			return CF_OK;
		}
	}
	return cf_error(CF_E_INVALID_ARG,
	    "unknown signature scheme; use ecdsa, eddsa, rsa-pss or rsa-pkcs1");
}

const char *
coffer_purpose_name(enum coffer_purpose p)
{
	switch (p) {
	case COFFER_PURPOSE_SIGN: return "sign";
	case COFFER_PURPOSE_MAC: return "mac";
	case COFFER_PURPOSE_WRAP: return "wrap";
	default: return "unknown";
	}
}

const char *
coffer_version_state_name(enum coffer_version_state s)
{
	switch (s) {
	case COFFER_VERSION_ENABLED: return "enabled";
	case COFFER_VERSION_DISABLED: return "disabled";
	case COFFER_VERSION_DESTROY_SCHEDULED: return "destroy-scheduled";
	case COFFER_VERSION_DESTROYED: return "destroyed";
	default: return "unknown";
	}
}

const char *
coffer_serving_status_name(enum coffer_serving_status s)
{
	switch (s) {
	case COFFER_SERVING_UNKNOWN: return "UNKNOWN";
	case COFFER_SERVING: return "SERVING";
	case COFFER_NOT_SERVING: return "NOT_SERVING";
	case COFFER_SERVICE_UNKNOWN: return "SERVICE_UNKNOWN";
	default: return "unknown";
	}
}

/* ---- connection ---- */

static struct chan *
chan_new(const coffer_client *c)
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
chan_get(coffer_client *c)
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
chan_check(coffer_client *c, struct chan *ch)
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
coffer_connect(const char *socket_path, unsigned int flags, coffer_client **out)
{
	struct sockaddr_un sun;
	coffer_client *c = NULL;
	const char *path;
	int grpc_ready = 0, mu_ready = 0;
	int r = CF_E_INTERNAL;

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

	if ((c = calloc(1, sizeof(*c))) == NULL) {
		r = cf_error(CF_E_NOMEM, "out of memory");
		goto out;
	}
	if (pthread_mutex_init(&c->mu, NULL) != 0) {
		r = cf_error(CF_E_NOMEM, "cannot create a mutex");
		goto out;
	}
	mu_ready = 1;
	if (asprintf(&c->target, "unix:%s", path) < 0) {
		c->target = NULL;
		r = cf_error(CF_E_NOMEM, "out of memory");
		goto out;
	}
	c->flags = flags;
	atomic_init(&c->timeout_ms, COFFER_DEFAULT_TIMEOUT_MS);
	if ((c->sessions = lc_sessions_new()) == NULL) {
		r = cf_error(CF_E_NOMEM, "out of memory");
		goto out;
	}

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
	c = NULL;
	grpc_ready = 0;
	r = CF_OK;
 out:
	if (c != NULL) {
		if (c->creds != NULL)
			grpc_channel_credentials_release(c->creds);
		if (mu_ready)
			pthread_mutex_destroy(&c->mu);
		lc_sessions_free(c->sessions);
		free(c->target);
		free(c);
	}
	if (grpc_ready)
		grpc_shutdown();
	return r;
}

void
coffer_close(coffer_client *c)
{
	if (c == NULL)
		return;
	/* No call may be running: ours is the last reference. */
	lc_sessions_free(c->sessions);
	lc_apikey_free(c->apikey);
	chan_unref(c->cur);
	grpc_channel_credentials_release(c->creds);
	pthread_mutex_destroy(&c->mu);
	free(c->target);
	free(c);
	grpc_shutdown();
}

void
coffer_set_timeout(coffer_client *c, unsigned int ms)
{
	if (c != NULL)
		atomic_store(&c->timeout_ms, ms);
}

unsigned int
coffer_get_timeout(const coffer_client *c)
{
	if (c == NULL)
		return 0;
	return atomic_load(&((coffer_client *)c)->timeout_ms);
}

/* ---- one unary call ---- */

/* Record the server's status message, with control characters made
 * harmless before anyone prints it. */
static int
status_error(const coffer_client *c, unsigned int ms, grpc_status_code st,
    const grpc_slice *details)
{
	char msg[CF_ERROR_DETAIL_MAX];
	size_t n = GRPC_SLICE_LENGTH(*details);
	const uint8_t *p = GRPC_SLICE_START_PTR(*details);
	int r = status_from_grpc(st);

	if (n >= sizeof(msg))
		n = sizeof(msg) - 1;
	for (size_t i = 0; i < n; i++)
		msg[i] = (p[i] < 0x20 || p[i] == 0x7f) ? '?' : (char)p[i];
	msg[n] = '\0';
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

static void
slice_free(void *p, size_t len)
{
	(void)len;
	free(p);
}

/*
 * One unary call of `method` with the packed request buf[0..len) (taken over:
 * wiped and freed here, unless LC_CIPHERTEXT). On success *out and *outlen
 * is the response payload, malloc'ed; the caller wipes and frees it.
 */
int
lc_transport(coffer_client *c, const char *method, uint8_t *buf, size_t len, uint8_t **out,
    size_t *outlen, int flags)
{
	int wipe = !(flags & LC_CIPHERTEXT);
	grpc_completion_queue *cq = NULL;
	struct chan *ch = NULL;
	grpc_call *call = NULL;
	grpc_byte_buffer *send_bb = NULL, *recv_bb = NULL;
	grpc_byte_buffer_reader reader;
	grpc_metadata_array md_initial, md_trailing;
	grpc_status_code st = GRPC_STATUS_UNKNOWN;
	grpc_slice details = grpc_empty_slice(), payload = grpc_empty_slice(), s;
	const char *errstr = NULL;
	grpc_op ops[6];
	grpc_metadata md[2] = { { .value = grpc_empty_slice() }, { .value = grpc_empty_slice() } };
	size_t nmd = 0;
	char authz[512];
	grpc_event ev;
	gpr_timespec deadline;
	unsigned int ms;
	uint8_t *copy;
	int reader_ready = 0, started = 0;
	int r = CF_E_INTERNAL;

	grpc_metadata_array_init(&md_initial);
	grpc_metadata_array_init(&md_trailing);

	if (c->apikey != NULL &&
	    (r = lc_apikey_sign(c->apikey, method, buf, len, authz, sizeof(authz))) != CF_OK) {
		OPENSSL_cleanse(buf, len);
		free(buf);
		goto out;
	}
	/* gRPC owns buf from here (and wipes it, unless it is ciphertext). */
	s = grpc_slice_new_with_len(buf, len, wipe ? slice_wipe_free : slice_free);
	send_bb = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
	if (send_bb == NULL) {
		r = cf_error(CF_E_NOMEM, "out of memory");
		goto out;
	}

	if ((cq = grpc_completion_queue_create_for_pluck(NULL)) == NULL) {
		r = cf_error(CF_E_NOMEM, "cannot create a gRPC completion queue");
		goto out;
	}
	ms = atomic_load(&c->timeout_ms);
	if (ms == 0)
		deadline = gpr_inf_future(GPR_CLOCK_MONOTONIC);
	else
		deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
		    gpr_time_from_millis((int64_t)ms, GPR_TIMESPAN));
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
	if (c->apikey != NULL) {
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
	if (!grpc_byte_buffer_reader_init(&reader, recv_bb)) {
		r = cf_error(CF_E_INTERNAL, "cannot read the response message");
		goto out;
	}
	reader_ready = 1;
	payload = grpc_byte_buffer_reader_readall(&reader);
	if ((copy = malloc(GRPC_SLICE_LENGTH(payload) + 1)) == NULL) {
		r = cf_error(CF_E_NOMEM, "out of memory");
		goto out;
	}
	memcpy(copy, GRPC_SLICE_START_PTR(payload), GRPC_SLICE_LENGTH(payload));
	*out = copy;
	*outlen = GRPC_SLICE_LENGTH(payload);
	r = CF_OK;
 out:
	/* Responses may carry secrets: wipe gRPC's copies before release. */
	if (wipe) {
		OPENSSL_cleanse(GRPC_SLICE_START_PTR(payload), GRPC_SLICE_LENGTH(payload));
		byte_buffer_wipe(recv_bb);
	}
	grpc_slice_unref(payload);
	if (reader_ready)
		grpc_byte_buffer_reader_destroy(&reader);
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

#define IDEM_RETRIES 40          /* with IDEM_RETRY_US: ride out 10 s of restart */
#define IDEM_RETRY_US 250000

/* Calls that carry secrets travel sealed (cf_methods.h); with
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

/*
 * Call `method` with `req`, sealed in a session where it must be; on success
 * *out is the unpacked response, to be freed with
 * protobuf_c_message_free_unpacked(*out, secret ? &cf_pbwipe_allocator : NULL).
 * `secret`: the response carries secret material.
 */
static int
rpc(coffer_client *c, const char *method, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *rdesc, int secret, ProtobufCMessage **out)
{
	uint8_t *buf = NULL, *resp = NULL;
	size_t len, rlen = 0;
	ProtobufCMessage *msg;
	int r;

	len = protobuf_c_message_get_packed_size(req);
	if (len > COFFER_MAX_MESSAGE)
		return cf_error(CF_E_TOO_LARGE, "request of %zu bytes is above the %u-byte "
		    "message limit", len, COFFER_MAX_MESSAGE);
	if ((buf = malloc(len ? len : 1)) == NULL)
		return cf_error(CF_E_NOMEM, "out of memory");
	if (protobuf_c_message_pack(req, buf) != len) {
		slice_wipe_free(buf, len);
		return cf_error(CF_E_INTERNAL, "cannot encode the request");
	}
	/* With an idempotency key an admin call is safe to repeat: ride out a
	 * daemon restart. A KeyService call changes nothing, so it is repeated
	 * once at once: a daemon that restarted closed the connection this
	 * client had not yet noticed (gRPC core reads it only during calls). */
	for (int attempt = 0;; attempt++) {
		uint8_t *copy;

		if (must_seal(c, method)) {   /* borrows buf */
			r = lc_sealed_call(c, c->sessions, method, buf, len, &resp, &rlen);
		} else if ((copy = malloc(len ? len : 1)) == NULL) {
			slice_wipe_free(buf, len);
			return cf_error(CF_E_NOMEM, "out of memory");
		} else {
			memcpy(copy, buf, len);
			r = lc_transport(c, method, copy, len, &resp, &rlen, 0);
		}
		if (r != CF_E_UNAVAILABLE || attempt == IDEM_RETRIES)
			break;
		if (c->idem_key[0] != '\0' && strncmp(method, AS, strlen(AS)) == 0)
			usleep(IDEM_RETRY_US);
		else if (attempt > 0 || strncmp(method, KS, strlen(KS)) != 0)
			break;
	}
	slice_wipe_free(buf, len);
	if (r != CF_OK)
		return r;
	msg = protobuf_c_message_unpack(rdesc, secret ? &cf_pbwipe_allocator : NULL, rlen, resp);
	slice_wipe_free(resp, rlen);
	if (msg == NULL)
		return cf_error(CF_E_INTERNAL, "malformed response to %s", method);
	*out = msg;
	return CF_OK;
}

int
coffer_set_idempotency_key(coffer_client *c, const char *key)
{
	size_t n;

	cf_error_clear();
	if (c == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL client");
	if (key == NULL) {
		c->idem_key[0] = '\0';
		return CF_OK;
	}
	n = strlen(key);
	if (n < 8 || n >= sizeof(c->idem_key) || strspn(key, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "abcdefghijklmnopqrstuvwxyz0123456789._:-") != n)
		return cf_error(CF_E_INVALID_ARG, "an idempotency key is 8..128 characters of "
		    "A-Z a-z 0-9 . _ : -");
	memcpy(c->idem_key, key, n + 1);
	return CF_OK;
}

int
lc_rpc(coffer_client *c, const char *method, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *rdesc, ProtobufCMessage **out)
{
	return rpc(c, method, req, rdesc, 0, out);
}

/* ---- request helpers ---- */

int
lc_check_client(const coffer_client *c, const char *name)
{
	cf_error_clear();
	if (c == NULL || name == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL client or key name");
	return CF_OK;
}

static ProtobufCBinaryData
bin(const uint8_t *p, size_t len)
{
	ProtobufCBinaryData b = { len, (uint8_t *)p };

	return b;
}

/* A context map as protobuf-c entries of the request's own entry type. The
 * entries borrow the caller's strings. */
struct ctx_entries {
	ProtobufCMessage **ptrs;
	uint8_t *mem;
	size_t n;
};

static void
ctx_free(struct ctx_entries *e)
{
	free(e->ptrs);
	free(e->mem);
	e->ptrs = NULL;
	e->mem = NULL;
	e->n = 0;
}

static int
ctx_build(const ProtobufCMessageDescriptor *d, const struct coffer_kv *kv, size_t n,
    struct ctx_entries *e)
{
	const ProtobufCFieldDescriptor *fk, *fv;
	size_t sz = d->sizeof_message;

	e->ptrs = NULL;
	e->mem = NULL;
	e->n = 0;
	if (n == 0)
		return CF_OK;
	if (kv == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL context with %zu entries", n);
	if (n > COFFER_MAX_MESSAGE / 2)
		return cf_error(CF_E_TOO_LARGE, "too many context entries");
	for (size_t i = 0; i < n; i++) {
		if (kv[i].key == NULL || kv[i].value == NULL)
			return cf_error(CF_E_INVALID_ARG, "context entry %zu has a NULL "
			    "key or value", i);
		for (size_t j = 0; j < i; j++)
			if (strcmp(kv[i].key, kv[j].key) == 0)
				return cf_error(CF_E_INVALID_ARG, "context key \"%.64s\" "
				    "given twice", kv[i].key);
	}
	fk = protobuf_c_message_descriptor_get_field_by_name(d, "key");
	fv = protobuf_c_message_descriptor_get_field_by_name(d, "value");
	if (fk == NULL || fv == NULL)
		return cf_error(CF_E_INTERNAL, "context entry descriptor");
	if ((e->ptrs = calloc(n, sizeof(*e->ptrs))) == NULL ||
	    (e->mem = calloc(n, sz)) == NULL) {
		ctx_free(e);
		return cf_error(CF_E_NOMEM, "out of memory");
	}
	for (size_t i = 0; i < n; i++) {
		uint8_t *m = e->mem + i * sz;
		const char *k = kv[i].key, *v = kv[i].value;

		protobuf_c_message_init(d, m);
		memcpy(m + fk->offset, &k, sizeof(k));
		memcpy(m + fv->offset, &v, sizeof(v));
		e->ptrs[i] = (ProtobufCMessage *)(void *)m;
	}
	e->n = n;
	return CF_OK;
}

/* check_client, then the call's own argument check: `bad` fails with `why`. */
static int
check_call(const coffer_client *c, const char *name, int bad, const char *why)
{
	int r;

	if ((r = lc_check_client(c, name)) != CF_OK)
		return r;
	if (bad)
		return cf_error(CF_E_INVALID_ARG, "%s", why);
	return CF_OK;
}

/* Copy a response's bytes to *out; empty ones (`what`) are a server error. */
static int
bytes_out(struct coffer_bytes *out, const ProtobufCBinaryData *in, const char *what)
{
	if (in->len == 0)
		return cf_error(CF_E_INTERNAL, "the server returned an empty %s", what);
	return bytes_set(out, in);
}

/*
 * rpc() for a request with a context map: the request's "context" field
 * borrows entries built from `ctx` for the duration of the call.
 */
static int
ctx_rpc(coffer_client *c, const char *method, ProtobufCMessage *req,
    const struct coffer_kv *ctx, size_t nctx, const ProtobufCMessageDescriptor *rdesc,
    int secret, ProtobufCMessage **out)
{
	const ProtobufCFieldDescriptor *f;
	struct ctx_entries e = { NULL, NULL, 0 };
	uint8_t *base = (uint8_t *)(void *)req;
	int r;

	f = protobuf_c_message_descriptor_get_field_by_name(req->descriptor, "context");
	if (f == NULL || f->label != PROTOBUF_C_LABEL_REPEATED ||
	    f->type != PROTOBUF_C_TYPE_MESSAGE)
		return cf_error(CF_E_INTERNAL, "context entry descriptor");
	if ((r = ctx_build(f->descriptor, ctx, nctx, &e)) != CF_OK)
		return r;
	memcpy(base + f->quantifier_offset, &e.n, sizeof(e.n));
	memcpy(base + f->offset, &e.ptrs, sizeof(e.ptrs));
	r = rpc(c, method, req, rdesc, secret, out);
	ctx_free(&e);
	memcpy(base + f->quantifier_offset, &e.n, sizeof(e.n));
	memcpy(base + f->offset, &e.ptrs, sizeof(e.ptrs));
	return r;
}

/* ---- KeyService ---- */

/* The data and options shared by Sign and Verify requests. */
static void
sign_fields(const uint8_t *msg, size_t len, const struct coffer_sign_opts *opts,
    ProtobufCBinaryData *message, ProtobufCBinaryData *digest, Coffer__V1__Hash *hash,
    Coffer__V1__SignatureScheme *scheme, protobuf_c_boolean *ecdsa_raw)
{
	if (opts != NULL && opts->prehashed)
		*digest = bin(msg, len);
	else
		*message = bin(msg, len);
	if (opts != NULL) {
		*hash = (Coffer__V1__Hash)opts->hash;
		*scheme = (Coffer__V1__SignatureScheme)opts->scheme;
		*ecdsa_raw = opts->ecdsa_raw != 0;
	}
}

int
coffer_sign(coffer_client *c, const char *key, uint32_t version, const uint8_t *msg,
    size_t len, const struct coffer_sign_opts *opts, struct coffer_bytes *sig,
    uint32_t *used_version)
{
	Coffer__V1__SignRequest req = COFFER__V1__SIGN_REQUEST__INIT;
	Coffer__V1__SignResponse *resp = NULL;
	ProtobufCMessage *m = NULL;
	int r;

	if ((r = check_call(c, key, sig == NULL || (msg == NULL && len > 0),
	    "NULL message or output")) != CF_OK)
		return r;
	req.key = (char *)key;
	req.version = version;
	sign_fields(msg, len, opts, &req.message, &req.digest, &req.hash, &req.scheme,
	    &req.ecdsa_raw);
	if ((r = rpc(c, KS "Sign", &req.base, &coffer__v1__sign_response__descriptor, 0,
	    &m)) != CF_OK)
		goto out;
	resp = (Coffer__V1__SignResponse *)m;
	if ((r = bytes_out(sig, &resp->signature, "signature")) != CF_OK)
		goto out;
	if (used_version != NULL)
		*used_version = resp->version;
 out:
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

int
coffer_verify(coffer_client *c, const char *key, uint32_t version, const uint8_t *msg,
    size_t len, const struct coffer_sign_opts *opts, const uint8_t *sig, size_t siglen,
    int *valid)
{
	Coffer__V1__VerifyRequest req = COFFER__V1__VERIFY_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int r;

	if ((r = check_call(c, key,
	    valid == NULL || (msg == NULL && len > 0) || (sig == NULL && siglen > 0),
	    "NULL message, signature or output")) != CF_OK)
		return r;
	req.key = (char *)key;
	req.version = version;
	sign_fields(msg, len, opts, &req.message, &req.digest, &req.hash, &req.scheme,
	    &req.ecdsa_raw);
	req.signature = bin(sig, siglen);
	if ((r = rpc(c, KS "Verify", &req.base, &coffer__v1__verify_response__descriptor, 0,
	    &m)) != CF_OK)
		return r;
	*valid = ((Coffer__V1__VerifyResponse *)m)->valid ? 1 : 0;
	protobuf_c_message_free_unpacked(m, NULL);
	return CF_OK;
}

int
coffer_mac(coffer_client *c, const char *key, uint32_t version, const uint8_t *data,
    size_t len, struct coffer_bytes *mac, uint32_t *used_version)
{
	Coffer__V1__MacRequest req = COFFER__V1__MAC_REQUEST__INIT;
	Coffer__V1__MacResponse *resp;
	ProtobufCMessage *m = NULL;
	int r;

	if ((r = check_call(c, key, mac == NULL || (data == NULL && len > 0),
	    "NULL data or output")) != CF_OK)
		return r;
	req.key = (char *)key;
	req.version = version;
	req.data = bin(data, len);
	if ((r = rpc(c, KS "Mac", &req.base, &coffer__v1__mac_response__descriptor, 0,
	    &m)) != CF_OK)
		goto out;
	resp = (Coffer__V1__MacResponse *)m;
	if ((r = bytes_out(mac, &resp->mac, "MAC")) != CF_OK)
		goto out;
	if (used_version != NULL)
		*used_version = resp->version;
 out:
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

int
coffer_verify_mac(coffer_client *c, const char *key, uint32_t version, const uint8_t *data,
    size_t len, const uint8_t *mac, size_t maclen, int *valid)
{
	Coffer__V1__VerifyMacRequest req = COFFER__V1__VERIFY_MAC_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int r;

	if ((r = check_call(c, key,
	    valid == NULL || (data == NULL && len > 0) || (mac == NULL && maclen > 0),
	    "NULL data, MAC or output")) != CF_OK)
		return r;
	req.key = (char *)key;
	req.version = version;
	req.data = bin(data, len);
	req.mac = bin(mac, maclen);
	if ((r = rpc(c, KS "VerifyMac", &req.base,
	    &coffer__v1__verify_mac_response__descriptor, 0, &m)) != CF_OK)
		return r;
	*valid = ((Coffer__V1__VerifyMacResponse *)m)->valid ? 1 : 0;
	protobuf_c_message_free_unpacked(m, NULL);
	return CF_OK;
}

int
coffer_wrap(coffer_client *c, const char *key, const uint8_t *plaintext, size_t len,
    const struct coffer_kv *ctx, size_t nctx, struct coffer_bytes *ciphertext,
    uint32_t *used_version)
{
	Coffer__V1__WrapRequest req = COFFER__V1__WRAP_REQUEST__INIT;
	Coffer__V1__WrapResponse *resp;
	ProtobufCMessage *m = NULL;
	int r;

	if ((r = check_call(c, key, ciphertext == NULL || (plaintext == NULL && len > 0),
	    "NULL plaintext or output")) != CF_OK)
		return r;
	req.key = (char *)key;
	req.plaintext = bin(plaintext, len);
	if ((r = ctx_rpc(c, KS "Wrap", &req.base, ctx, nctx,
	    &coffer__v1__wrap_response__descriptor, 0, &m)) != CF_OK)
		goto out;
	resp = (Coffer__V1__WrapResponse *)m;
	if ((r = bytes_out(ciphertext, &resp->ciphertext, "ciphertext")) != CF_OK)
		goto out;
	if (used_version != NULL)
		*used_version = resp->version;
 out:
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

int
coffer_unwrap(coffer_client *c, const char *key, const uint8_t *ciphertext, size_t len,
    const struct coffer_kv *ctx, size_t nctx, struct coffer_bytes *plaintext,
    uint32_t *used_version)
{
	Coffer__V1__UnwrapRequest req = COFFER__V1__UNWRAP_REQUEST__INIT;
	Coffer__V1__UnwrapResponse *resp;
	ProtobufCMessage *m = NULL;
	int r;

	if ((r = check_call(c, key, plaintext == NULL || (ciphertext == NULL && len > 0),
	    "NULL ciphertext or output")) != CF_OK)
		return r;
	req.key = (char *)key;
	req.ciphertext = bin(ciphertext, len);
	if ((r = ctx_rpc(c, KS "Unwrap", &req.base, ctx, nctx,
	    &coffer__v1__unwrap_response__descriptor, 1, &m)) != CF_OK)
		goto out;
	resp = (Coffer__V1__UnwrapResponse *)m;
	if ((r = bytes_set(plaintext, &resp->plaintext)) != CF_OK)
		goto out;
	if (used_version != NULL)
		*used_version = resp->version;
 out:
	protobuf_c_message_free_unpacked(m, &cf_pbwipe_allocator);
	return r;
}

int
coffer_rewrap(coffer_client *c, const char *key, const uint8_t *ciphertext, size_t len,
    const struct coffer_kv *ctx, size_t nctx, struct coffer_bytes *new_ciphertext,
    uint32_t *new_version, uint32_t *previous_version)
{
	Coffer__V1__RewrapRequest req = COFFER__V1__REWRAP_REQUEST__INIT;
	Coffer__V1__RewrapResponse *resp;
	ProtobufCMessage *m = NULL;
	int r;

	if ((r = check_call(c, key, new_ciphertext == NULL || (ciphertext == NULL && len > 0),
	    "NULL ciphertext or output")) != CF_OK)
		return r;
	req.key = (char *)key;
	req.ciphertext = bin(ciphertext, len);
	if ((r = ctx_rpc(c, KS "Rewrap", &req.base, ctx, nctx,
	    &coffer__v1__rewrap_response__descriptor, 0, &m)) != CF_OK)
		goto out;
	resp = (Coffer__V1__RewrapResponse *)m;
	if ((r = bytes_out(new_ciphertext, &resp->ciphertext, "ciphertext")) != CF_OK)
		goto out;
	if (new_version != NULL)
		*new_version = resp->version;
	if (previous_version != NULL)
		*previous_version = resp->previous_version;
 out:
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

int
coffer_generate_data_key(coffer_client *c, const char *key, uint32_t length,
    const struct coffer_kv *ctx, size_t nctx, struct coffer_bytes *ciphertext,
    struct coffer_bytes *plaintext, uint32_t *used_version)
{
	Coffer__V1__GenerateDataKeyRequest req = COFFER__V1__GENERATE_DATA_KEY_REQUEST__INIT;
	Coffer__V1__GenerateDataKeyResponse *resp;
	ProtobufCMessage *m = NULL;
	struct coffer_bytes ct = { NULL, 0 }, pt = { NULL, 0 };
	int r;

	if ((r = check_call(c, key, ciphertext == NULL, "NULL output")) != CF_OK)
		return r;
	req.key = (char *)key;
	req.length = length;
	req.include_plaintext = plaintext != NULL;
	if ((r = ctx_rpc(c, KS "GenerateDataKey", &req.base, ctx, nctx,
	    &coffer__v1__generate_data_key_response__descriptor, 1, &m)) != CF_OK)
		goto out;
	resp = (Coffer__V1__GenerateDataKeyResponse *)m;
	if (resp->ciphertext.len == 0 || (plaintext != NULL && resp->plaintext.len == 0)) {
		r = cf_error(CF_E_INTERNAL, "the server returned an empty data key");
		goto out;
	}
	if ((r = bytes_set(&ct, &resp->ciphertext)) != CF_OK)
		goto out;
	if (plaintext != NULL && (r = bytes_set(&pt, &resp->plaintext)) != CF_OK)
		goto out;
	*ciphertext = ct;
	ct.data = NULL;
	if (plaintext != NULL) {
		*plaintext = pt;
		pt.data = NULL;
	}
	if (used_version != NULL)
		*used_version = resp->version;
 out:
	coffer_bytes_free(&ct);
	coffer_bytes_free(&pt);
	protobuf_c_message_free_unpacked(m, &cf_pbwipe_allocator);
	return r;
}

void
coffer_public_key_free(struct coffer_public_key *pk)
{
	if (pk == NULL)
		return;
	coffer_bytes_free(&pk->der);
	free(pk->pem);
	free(pk);
}

int
coffer_get_public_key(coffer_client *c, const char *key, uint32_t version,
    struct coffer_public_key **out)
{
	Coffer__V1__GetPublicKeyRequest req = COFFER__V1__GET_PUBLIC_KEY_REQUEST__INIT;
	Coffer__V1__GetPublicKeyResponse *resp;
	ProtobufCMessage *m = NULL;
	struct coffer_public_key *pk = NULL;
	int r;

	if ((r = lc_check_client(c, key)) != CF_OK)
		goto out;
	if (out == NULL) {
		r = cf_error(CF_E_INVALID_ARG, "NULL output");
		goto out;
	}
	req.key = (char *)key;
	req.version = version;
	if ((r = rpc(c, KS "GetPublicKey", &req.base,
	    &coffer__v1__get_public_key_response__descriptor, 0, &m)) != CF_OK)
		goto out;
	resp = (Coffer__V1__GetPublicKeyResponse *)m;
	if (resp->der.len == 0 || resp->pem == NULL || resp->pem[0] == '\0') {
		r = cf_error(CF_E_INTERNAL, "the server returned an empty public key");
		goto out;
	}
	if ((pk = calloc(1, sizeof(*pk))) == NULL || (pk->pem = strdup(resp->pem)) == NULL) {
		r = cf_error(CF_E_NOMEM, "out of memory");
		goto out;
	}
	if ((r = bytes_set(&pk->der, &resp->der)) != CF_OK)
		goto out;
	pk->type = (enum coffer_key_type)resp->type;
	pk->version = resp->version;
	*out = pk;
	pk = NULL;
 out:
	coffer_public_key_free(pk);
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

/* ---- key metadata ---- */

static void
key_info_clear(struct coffer_key_info *k)
{
	free(k->name);
	free(k->versions);
	memset(k, 0, sizeof(*k));
}

void
coffer_key_info_free(struct coffer_key_info *k)
{
	if (k == NULL)
		return;
	key_info_clear(k);
	free(k);
}

void
coffer_key_list_free(struct coffer_key_list *l)
{
	if (l == NULL)
		return;
	for (size_t i = 0; i < l->nkeys; i++)
		key_info_clear(&l->keys[i]);
	free(l->keys);
	free(l);
}

static int
key_from_pb(const Coffer__V1__Key *k, struct coffer_key_info *out)
{
	struct coffer_key_info tmp;

	memset(&tmp, 0, sizeof(tmp));
	if (k->name == NULL || k->name[0] == '\0')
		return cf_error(CF_E_INTERNAL, "the server returned a key without a name");
	if ((tmp.name = strdup(k->name)) == NULL)
		goto nomem;
	if (k->n_versions > 0) {
		if ((tmp.versions = calloc(k->n_versions, sizeof(*tmp.versions))) == NULL)
			goto nomem;
		for (size_t i = 0; i < k->n_versions; i++) {
			tmp.versions[i].version = k->versions[i]->version;
			tmp.versions[i].state = (enum coffer_version_state)k->versions[i]->state;
			tmp.versions[i].create_time = k->versions[i]->create_time;
			tmp.versions[i].destroy_time = k->versions[i]->destroy_time;
		}
		tmp.nversions = k->n_versions;
	}
	tmp.type = (enum coffer_key_type)k->type;
	tmp.purpose = (enum coffer_purpose)k->purpose;
	tmp.primary_version = k->primary_version;
	tmp.create_time = k->create_time;
	tmp.exportable = k->exportable ? 1 : 0;
	tmp.min_version = k->min_version;
	tmp.min_verify_version = k->min_verify_version;
	tmp.rotation_period = k->rotation_period;
	tmp.next_rotation_time = k->next_rotation_time;
	for (size_t i = 0; i < k->n_allowed_operations; i++)
		if ((unsigned)k->allowed_operations[i] < 32)
			tmp.allowed_operations |= 1u << k->allowed_operations[i];
	*out = tmp;
	return CF_OK;
 nomem:
	key_info_clear(&tmp);
	return cf_error(CF_E_NOMEM, "out of memory");
}

int
lc_key_call(coffer_client *c, const char *method, const ProtobufCMessage *req,
    struct coffer_key_info **out)
{
	ProtobufCMessage *m = NULL;
	struct coffer_key_info *k = NULL;
	int r;

	if ((r = rpc(c, method, req, &coffer__v1__key__descriptor, 0, &m)) != CF_OK)
		goto out;
	if (out == NULL)
		goto out;
	if ((k = calloc(1, sizeof(*k))) == NULL) {
		r = cf_error(CF_E_NOMEM, "out of memory");
		goto out;
	}
	if ((r = key_from_pb((Coffer__V1__Key *)m, k)) != CF_OK)
		goto out;
	*out = k;
	k = NULL;
 out:
	coffer_key_info_free(k);
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

int
coffer_get_key(coffer_client *c, const char *name, struct coffer_key_info **out)
{
	Coffer__V1__GetKeyRequest req = COFFER__V1__GET_KEY_REQUEST__INIT;
	int r;

	if ((r = lc_check_client(c, name)) != CF_OK)
		return r;
	if (out == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL output");
	req.name = (char *)name;
	return lc_key_call(c, (c->flags & COFFER_CONNECT_ADMIN) ? AS "GetKey" : KS "GetKey",
	    &req.base, out);
}

int
coffer_list_keys(coffer_client *c, struct coffer_key_list **out)
{
	Coffer__V1__ListKeysRequest req = COFFER__V1__LIST_KEYS_REQUEST__INIT;
	Coffer__V1__ListKeysResponse *resp;
	ProtobufCMessage *m = NULL;
	struct coffer_key_list *l = NULL;
	struct coffer_key_info *nk;
	const char *method;
	char token[PAGE_TOKEN_MAX + 1] = "";
	size_t cap = 0, n;
	int r;

	cf_error_clear();
	if (c == NULL || out == NULL) {
		r = cf_error(CF_E_INVALID_ARG, "NULL argument");
		goto out;
	}
	method = (c->flags & COFFER_CONNECT_ADMIN) ? AS "ListKeys" : KS "ListKeys";
	if ((l = calloc(1, sizeof(*l))) == NULL) {
		r = cf_error(CF_E_NOMEM, "out of memory");
		goto out;
	}
	for (;;) {
		req.page_size = LIST_PAGE_SIZE;
		req.page_token = token;
		if ((r = rpc(c, method, &req.base, &coffer__v1__list_keys_response__descriptor,
		    0, &m)) != CF_OK)
			goto out;
		resp = (Coffer__V1__ListKeysResponse *)m;
		n = resp->n_keys;
		if (n > COFFER_LIST_MAX_KEYS - l->nkeys) {
			r = cf_error(CF_E_TOO_LARGE, "more than %u keys", COFFER_LIST_MAX_KEYS);
			goto out;
		}
		if (l->nkeys + n > cap) {
			size_t ncap = cap ? cap : 64;

			while (ncap < l->nkeys + n)
				ncap *= 2;
			if ((nk = reallocarray(l->keys, ncap, sizeof(*nk))) == NULL) {
				r = cf_error(CF_E_NOMEM, "out of memory");
				goto out;
			}
			l->keys = nk;
			cap = ncap;
		}
		for (size_t i = 0; i < n; i++) {
			if ((r = key_from_pb(resp->keys[i], &l->keys[l->nkeys])) != CF_OK)
				goto out;
			l->nkeys++;
		}
		if (resp->next_page_token == NULL || resp->next_page_token[0] == '\0')
			break;
		if (strlen(resp->next_page_token) > PAGE_TOKEN_MAX) {
			r = cf_error(CF_E_INTERNAL, "the server returned an overlong page token");
			goto out;
		}
		/* A page that adds nothing, or the same token again, would loop. */
		if (n == 0 || strcmp(resp->next_page_token, token) == 0) {
			r = cf_error(CF_E_INTERNAL, "the server's key listing does not advance");
			goto out;
		}
		strcpy(token, resp->next_page_token);
		protobuf_c_message_free_unpacked(m, NULL);
		m = NULL;
	}
	*out = l;
	l = NULL;
 out:
	protobuf_c_message_free_unpacked(m, NULL);
	coffer_key_list_free(l);
	return r;
}

/* ---- AdminService ---- */

int
coffer_create_key(coffer_client *c, const char *name, enum coffer_key_type type,
    int exportable, struct coffer_key_info **out)
{
	return coffer_create_key_limited(c, name, type, exportable, 0, out);
}

int
coffer_create_key_limited(coffer_client *c, const char *name, enum coffer_key_type type,
    int exportable, unsigned int operations, struct coffer_key_info **out)
{
	struct coffer_create_opts o = { type, exportable, operations, 0 };

	return coffer_create_key_opts(c, name, &o, out);
}

int
coffer_create_key_opts(coffer_client *c, const char *name, const struct coffer_create_opts *o,
    struct coffer_key_info **out)
{
	Coffer__V1__CreateKeyRequest req = COFFER__V1__CREATE_KEY_REQUEST__INIT;
	Coffer__V1__Operation ops[32];
	int r;

	if ((r = lc_check_client(c, name)) != CF_OK)
		return r;
	if (o == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL options");
	req.name = (char *)name;
	req.type = (Coffer__V1__KeyType)o->type;
	req.exportable = o->exportable != 0;
	for (unsigned i = 1; i < 32; i++)
		if (o->operations & (1u << i))
			ops[req.n_allowed_operations++] = (Coffer__V1__Operation)i;
	req.allowed_operations = ops;
	req.rotation_period = o->rotation_period;
	return lc_key_call(c, AS "CreateKey", &req.base, out);
}

int
coffer_import_key(coffer_client *c, const char *name, enum coffer_key_type type,
    const uint8_t *material, size_t len, int exportable, struct coffer_key_info **out)
{
	Coffer__V1__ImportKeyRequest req = COFFER__V1__IMPORT_KEY_REQUEST__INIT;
	int r;

	if ((r = lc_check_client(c, name)) != CF_OK)
		return r;
	if (material == NULL && len > 0)
		return cf_error(CF_E_INVALID_ARG, "NULL key material");
	req.name = (char *)name;
	req.type = (Coffer__V1__KeyType)type;
	req.material = bin(material, len);
	req.exportable = exportable != 0;
	/* The packed request (with the material) is wiped by slice_wipe_free. */
	return lc_key_call(c, AS "ImportKey", &req.base, out);
}

int
coffer_rotate_key(coffer_client *c, const char *name, struct coffer_key_info **out)
{
	Coffer__V1__RotateKeyRequest req = COFFER__V1__ROTATE_KEY_REQUEST__INIT;
	int r;

	if ((r = lc_check_client(c, name)) != CF_OK)
		return r;
	req.name = (char *)name;
	return lc_key_call(c, AS "RotateKey", &req.base, out);
}

/* ---- Health ---- */

void
lc_client_set_unsealed(coffer_client *c, int unsealed)
{
	c->unsealed = unsealed;
}

int
lc_handshake_once(coffer_client *c)
{
	return lc_sessions_handshake_once(c, c->sessions);
}

int
coffer_pin_identity(coffer_client *c, const uint8_t *spki, size_t len)
{
	cf_error_clear();
	if (c == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL client");
	return lc_sessions_pin(c->sessions, spki, len);
}

void
coffer_set_session_peer_check(coffer_client *c, int check)
{
	if (c != NULL)
		lc_sessions_set_peer_check(c->sessions, check);
}

int
coffer_pin_identity_file(coffer_client *c, const char *path)
{
	uint8_t *der = NULL;
	size_t len = 0;
	int r;

	cf_error_clear();
	if (c == NULL || path == NULL)
		return cf_error(CF_E_INVALID_ARG, "NULL client or path");
	if ((r = lc_spki_from_pem_file(path, &der, &len)) != CF_OK)
		return r;
	r = lc_sessions_pin(c->sessions, der, len);
	OPENSSL_free(der);
	return r;
}

int
coffer_get_identity(coffer_client *c, struct coffer_bytes *spki, char *fpr, size_t fprlen)
{
	Coffer__V1__GetIdentityRequest req = COFFER__V1__GET_IDENTITY_REQUEST__INIT;
	Coffer__V1__GetIdentityResponse *resp;
	ProtobufCMessage *m = NULL;
	int r;

	cf_error_clear();
	if (c == NULL || spki == NULL || fpr == NULL || fprlen < CF_SESSION_FPR_LEN + 1)
		return cf_error(CF_E_INVALID_ARG, "NULL argument or fingerprint buffer too short");
	if ((r = rpc(c, "/coffer.v1.SessionService/GetIdentity", &req.base,
	    &coffer__v1__get_identity_response__descriptor, 0, &m)) != CF_OK)
		return r;
	resp = (Coffer__V1__GetIdentityResponse *)m;
	/* Computed here, not taken from the daemon's text. */
	if ((r = bytes_out(spki, &resp->public_key, "identity key")) == CF_OK &&
	    (r = cf_session_fingerprint(spki->data, spki->len, fpr, fprlen)) != CF_OK)
		coffer_bytes_free(spki);
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

int
coffer_health(coffer_client *c, const char *service, enum coffer_serving_status *status)
{
	Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int r;

	cf_error_clear();
	if (c == NULL || status == NULL) {
		r = cf_error(CF_E_INVALID_ARG, "NULL argument");
		goto out;
	}
	req.service = (char *)(service != NULL ? service : "");
	if ((r = rpc(c, HEALTH_CHECK, &req.base,
	    &grpc__health__v1__health_check_response__descriptor, 0, &m)) != CF_OK)
		goto out;
	*status = (enum coffer_serving_status)
	    ((Grpc__Health__V1__HealthCheckResponse *)m)->status;
 out:
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}
