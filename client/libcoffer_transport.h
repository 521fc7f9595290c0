/*
 * libcoffer_transport.h — libcoffer's bottom layer: a client's gRPC channel
 * and one unary call on it, and the one gRPC status table. It knows nothing
 * of messages, sessions or API keys (the layers above: libcoffer_signer,
 * libcoffer_session, libcoffer_rpc). Not installed; hidden by libcoffer.map.
 */
#ifndef COFFER_LIBCOFFER_TRANSPORT_H
#define COFFER_LIBCOFFER_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#define LC_IDEM_KEY_MAX 128

struct lc_conn;

/* A channel to the daemon's socket `path` (without "unix:"). */
int lc_conn_new(const char *path, struct lc_conn **out);
/* No call may be running. Accepts NULL. */
void lc_conn_free(struct lc_conn *t);
void lc_conn_set_timeout(struct lc_conn *t, unsigned int ms);
unsigned int lc_conn_timeout(const struct lc_conn *t);
/* The idempotency-key sent with every call (a checked key, or NULL: none). */
void lc_conn_set_idem_key(struct lc_conn *t, const char *key);
int lc_conn_has_idem_key(const struct lc_conn *t);

/*
 * One unary call of `method` with the packed request buf[0..len), which it
 * takes over (wiped and freed, unless LC_CIPHERTEXT), and the authorization
 * value authz (NULL: none). On success *out and *outlen is the response
 * payload, malloc'ed: the caller wipes and frees it. LC_CIPHERTEXT: neither
 * message carries anything secret in the clear (session handshakes and
 * sealed records), so nothing is wiped.
 */
#define LC_CIPHERTEXT 1
int lc_transport(struct lc_conn *t, const char *method, uint8_t *buf, size_t len,
    const char *authz, uint8_t **out, size_t *outlen, int flags);

/*
 * One public call's deadline, shared by everything it sends on this thread
 * between lc_call_begin and lc_call_end (its handshake, its record, its
 * repetitions): lc_transport gives each attempt only what is left, and one
 * begun with nothing left fails at once with the deadline's text. Outside
 * such a span each attempt has the client's whole timeout. Not nested.
 */
void lc_call_begin(const struct lc_conn *t);
/* The same for a call started at start_ms (cf_mono_ms) and waited for now. */
void lc_call_begin_at(const struct lc_conn *t, uint64_t start_ms);
void lc_call_end(void);
/* 1 when the current call's deadline has passed. */
int lc_call_expired(void);

/* A text from the server, made harmless to print: its first cap - 1 bytes
 * of src[0..n) into dst (NUL-terminated), control characters as '?'. */
void lc_text_copy(char *dst, size_t cap, const char *src, size_t n);

/* Coffer status of a gRPC status code (the one table). */
int lc_status_from_grpc(unsigned code);

/*
 * The error a call that ended with gRPC status `code` and message
 * msg[0..len) returns, its text recorded for the calling thread exactly as
 * lc_transport records it (control characters made harmless; gRPC's own
 * deadline and connection texts naming the daemon's socket and ms, the
 * call's deadline).
 */
int lc_status_error(const struct lc_conn *t, unsigned int ms, unsigned code, const uint8_t *msg,
    size_t len);

/*
 * A bidirectional stream of `method` on the client's channel, without a
 * deadline, authorization value authz (NULL: none). Its events are read by
 * one thread with lc_stream_next; lc_stream_send, lc_stream_close_send and
 * lc_stream_cancel may be called from any thread, one send at a time (the
 * next after the previous one's LC_STREAM_SENT). lc_stream_free cancels
 * what is still running and frees it, once nobody else uses it.
 */
struct lc_stream;

enum lc_stream_kind {
	LC_STREAM_SENT,         /* the last send is done (ok: it went out) */
	LC_STREAM_MESSAGE,      /* a message: msg[0..len), malloc'ed, the reader's to free
				 * (ok 0: it could not be copied, msg NULL) */
	LC_STREAM_END           /* the stream ended with gRPC status `code` and its
				 * message details[0..details_len), valid until free */
};

struct lc_stream_event {
	enum lc_stream_kind kind;
	int ok;
	uint8_t *msg;
	size_t len;
	unsigned code;
	const uint8_t *details;
	size_t details_len;
	int frames;             /* LC_STREAM_MESSAGE: the stream's opening answered the
				 * header "coffer-pipeline: frames" */
};

int lc_stream_open(struct lc_conn *t, const char *method, const char *authz,
    struct lc_stream **out);
/* Takes buf[0..len) over (wiped and freed when sent). */
int lc_stream_send(struct lc_stream *s, uint8_t *buf, size_t len);
int lc_stream_close_send(struct lc_stream *s);   /* half-close: no more sends */
void lc_stream_cancel(struct lc_stream *s);
/* Blocks for the next event; after LC_STREAM_END, call it no more. */
int lc_stream_next(struct lc_stream *s, struct lc_stream_event *ev);
void lc_stream_free(struct lc_stream *s);   /* accepts NULL */

#endif
