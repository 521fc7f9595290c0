/*
 * libcoffer_pipeline.h — a client's pipelined stream (proto/pipeline.md):
 * one coffer.v1.Pipeline/Stream per client, opened when calls overlap,
 * carrying the unsealed KeyService calls that change nothing and carry no
 * secret, each with an id, answered out of order. Above the transport and
 * the signer; used by lc_rpc. Not installed; hidden by libcoffer.map.
 */
#ifndef COFFER_LIBCOFFER_PIPELINE_H
#define COFFER_LIBCOFFER_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "cf_methods.h"
#include "libcoffer_transport.h"

struct lc_apikey;
struct lc_pipeline;

int lc_pipeline_new(struct lc_conn *conn, struct lc_pipeline **out);
/* Close the stream (half-close, then cancel if the daemon does not end it
 * at once) and join its reader thread; the next call that wants a stream
 * opens a new one. No call may be running. */
void lc_pipeline_close(struct lc_pipeline *p);
/* lc_pipeline_close, then free. Accepts NULL. */
void lc_pipeline_free(struct lc_pipeline *p);

/* COFFER_PIPELINE_AUTO, _OFF or _ALWAYS (else COFFER_E_INVALID_ARG). */
int lc_pipeline_set_mode(struct lc_pipeline *p, int mode);
/* The open stream takes no more requests and is closed once its answers
 * are in; meanwhile calls go unary, then the next call that wants a stream
 * opens a new one. Thread-safe. */
void lc_pipeline_drop(struct lc_pipeline *p);

/* lc_pipeline_call's answers besides a status: send it as a unary call
 * instead; or the stream ended under it: repeat it once as a unary call. */
#define LC_PIPE_UNARY 1
#define LC_PIPE_RETRY 2

/*
 * Call m with the packed request buf[0..len) (borrowed) through the stream
 * when it is eligible and the client's mode says so (`others`: its other
 * calls in flight), opening the stream with k's signature (NULL: none).
 * CF_OK with *out, *outlen the response (malloc'ed, the caller's), a
 * failure with the text the unary call would give, or LC_PIPE_UNARY or
 * LC_PIPE_RETRY. lc_pipeline_start, then lc_pipeline_finish.
 */
int lc_pipeline_call(struct lc_pipeline *p, struct lc_apikey *k, const struct cf_method *m,
    unsigned others, const uint8_t *buf, size_t len, uint8_t **out, size_t *outlen);

/* A call handed to the stream and not yet finished. */
struct lc_pending;

/* The first half of lc_pipeline_call: hand the request to the stream (its
 * deadline counts from now) and return: CF_OK with *w, LC_PIPE_UNARY, or a
 * failure. Every *w must be finished exactly once, before
 * lc_pipeline_close. */
int lc_pipeline_start(struct lc_pipeline *p, struct lc_apikey *k, const struct cf_method *m,
    unsigned others, const uint8_t *buf, size_t len, struct lc_pending **w);
/* The second half: wait for w's answer, free w, and return as
 * lc_pipeline_call. Any thread may finish it. */
int lc_pipeline_finish(struct lc_pipeline *p, struct lc_pending *w, const struct cf_method *m,
    uint8_t **out, size_t *outlen);

#endif
