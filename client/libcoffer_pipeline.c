/*
 * libcoffer_pipeline.c — a client's pipelined stream (proto/pipeline.md).
 *
 * One stream per client, opened under the lock by the first call that
 * wants it, with a reader thread that owns its events. A call packs its
 * PipelineRequest with a fresh id, enters a table of waiters and a send
 * queue (one message goes out at a time: the next when the reader sees the
 * last one sent, carrying as one frame every request queued meanwhile once
 * the daemon has said it reads frames), then waits on its own condition
 * variable until the reader hands it its PipelineResponse, the stream
 * ends, or the client's timeout passes (its late answer is then dropped).
 * A caller may hand over several calls before it waits for any
 * (lc_pipeline_start, then lc_pipeline_finish for each: coffer_wait).
 * When the stream ends, every waiter is woken with the end status; lc_rpc
 * repeats what may be repeated as a unary call, and the next call opens a
 * new stream.
 */
#include "libcoffer_pipeline.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/status.h>
#include <openssl/crypto.h>

#include "cf_pbcheck.h"
#include "cf_pbwipe.h"
#include "cf_status.h"
#include "cf_time.h"
#include "coffer.h"
#include "coffer/v1/pipeline.pb-c.h"
#include "libcoffer_signer.h"

#define PIPELINE_PATH "/coffer.v1.Pipeline/Stream"
#define KEY_SERVICE "coffer.v1.KeyService"
#define NBUCKETS 64
#define CLOSE_WAIT_MS 500       /* coffer_close: how long the daemon may take to end it */

enum wstate { W_WAITING, W_ANSWERED, W_ENDED };

/* A frame's requests go out in one message of at most this many bytes (a
 * larger request goes alone), and at most COFFER_BATCH_MAX of them. */
#define FRAME_BYTES (256u << 10)
#define MORE_REQUEST 4          /* PipelineRequest.more */
/* A request held back for the rest of its wave (below) goes out after at
 * most this long anyway. */
#define LINGER_US 200

/* One received message: its answers are handed to their waiters, and the
 * last one done with it frees it. */
struct frame {
	Coffer__V1__PipelineResponse *top;
	atomic_uint refs;
};

/* One call handed to the stream, until its caller has its answer
 * (lc_pipeline_finish frees it). */
struct lc_pending {
	uint64_t id;
	struct lc_pending *next;        /* in its bucket */
	struct lc_pending *qnext;       /* in the send queue */
	uint8_t *req;                   /* the packed PipelineRequest, until handed over */
	size_t reqlen;
	int sent;                       /* handed to the stream: it may have run */
	int queued;                     /* in the send queue */
	int waiting;                    /* its caller waits for it (in await) */
	enum wstate state;
	Coffer__V1__PipelineResponse *resp;    /* W_ANSWERED: in fr */
	struct frame *fr;
	unsigned wave;                         /* W_ANSWERED: p->wave when handed it */
	unsigned end_code;                     /* W_ENDED: the stream's status */
	char end_msg[CF_ERROR_DETAIL_MAX];
	size_t end_len;
	struct timespec start;          /* its deadline counts from here */
	unsigned int ms;                /* the client's timeout then (0: none) */
	uint64_t rx_sent;               /* p->rx when it was sent */
	pthread_cond_t cv;
};

enum pstate { P_CLOSED, P_OPEN, P_DRAINING };

struct lc_pipeline {
	struct lc_conn *conn;
	atomic_int mode;
	atomic_int disabled;            /* the daemon has no Pipeline service */
	atomic_uint_fast64_t next_id;
	pthread_mutex_t mu;             /* guards the rest */
	enum pstate state;
	struct lc_stream *s;
	pthread_t reader;
	int reader_live;                /* a reader thread to join */
	unsigned forks;                 /* `forks` when it was started */
	struct lc_pending *buckets[NBUCKETS];
	struct lc_pending *qhead, *qtail;   /* not yet handed to the stream */
	unsigned qwaiting;              /* of those, how many a caller waits for */
	int sending;                    /* a message is going out */
	int frames;                     /* the stream's daemon reads frames */
	/* A wave: the callers handed their answers by one message tend to come
	 * back together with their next requests; while some of them have not,
	 * requests are held (at most LINGER_US) to go out as one frame. */
	unsigned woken;                 /* callers handed an answer, not back yet */
	unsigned wave;                  /* bumped when a linger gives up on them */
	struct lc_pending *lingerer;    /* the held request whose wait is timed */
	int close_queued;               /* P_DRAINING: half-close when the queue is empty */
	uint64_t rx;                    /* messages received on the stream */
};

/* The wave this thread was woken in (see woken): which client, which wave,
 * and how many of its answers it took (several when it keeps calls in
 * flight: coffer_wait). */
static __thread const struct lc_pipeline *tl_pipe;
static __thread unsigned tl_wave, tl_taken;

/* Under mu: this thread is back from the answers it was handed. */
static void
came_back(struct lc_pipeline *p)
{
	if (tl_pipe == p) {
		if (tl_wave == p->wave)
			p->woken -= tl_taken < p->woken ? tl_taken : p->woken;
		tl_pipe = NULL;
	}
}

/* Under mu: this thread took an answer handed to it in `wave`. */
static void
took(struct lc_pipeline *p, unsigned wave)
{
	if (tl_pipe == p && tl_wave == wave) {
		tl_taken++;
		return;
	}
	tl_pipe = p;
	tl_wave = wave;
	tl_taken = 1;
}

/* Forks so far, counted in the children: a reader thread started before
 * the last fork is in the parent, not here (without a getpid per call). */
static atomic_uint forks;
static pthread_once_t forks_once = PTHREAD_ONCE_INIT;

static void
forked(void)
{
	atomic_fetch_add(&forks, 1);
}

static void
count_forks(void)
{
	(void)pthread_atfork(NULL, NULL, forked);
}

/* Is the stream's reader thread in this process? */
static int
reader_here(const struct lc_pipeline *p)
{
	return p->forks == atomic_load(&forks);
}

int
lc_pipeline_new(struct lc_conn *conn, struct lc_pipeline **out)
{
	struct lc_pipeline *p;

	pthread_once(&forks_once, count_forks);
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return cf_nomem();
	if (pthread_mutex_init(&p->mu, NULL) != 0) {
		free(p);
		return cf_error(CF_E_NOMEM, "cannot create a mutex");
	}
	p->conn = conn;
	atomic_init(&p->mode, COFFER_PIPELINE_AUTO);
	atomic_init(&p->disabled, 0);
	atomic_init(&p->next_id, 1);
	*out = p;
	return CF_OK;
}

/* ---- the table of waiters and the send queue (under mu) ---- */

static struct lc_pending **
bucket(struct lc_pipeline *p, uint64_t id)
{
	return &p->buckets[id % NBUCKETS];
}

/* Where the waiter of `id` is linked in the table (*slot NULL: not there). */
static struct lc_pending **
slot_of(struct lc_pipeline *p, uint64_t id)
{
	struct lc_pending **w = bucket(p, id);

	while (*w != NULL && (*w)->id != id)
		w = &(*w)->next;
	return w;
}

/* Take the waiter of `id` out of the table: NULL when it is not there. */
static struct lc_pending *
unlink_waiter(struct lc_pipeline *p, uint64_t id)
{
	struct lc_pending **w = slot_of(p, id), *found = *w;

	if (found != NULL)
		*w = found->next;
	return found;
}

/* w leaves the send queue (sent, or given up): no longer counted there. */
static void
dequeued(struct lc_pipeline *p, struct lc_pending *w)
{
	if (w->queued && w->waiting)
		p->qwaiting--;
	w->queued = 0;
}

/* w's caller waits for it now (on), or no longer. */
static void
set_waiting(struct lc_pipeline *p, struct lc_pending *w, int on)
{
	if (w->waiting != on && w->queued) {
		if (on)
			p->qwaiting++;
		else
			p->qwaiting--;
	}
	w->waiting = on;
}

static void
unqueue(struct lc_pipeline *p, struct lc_pending *w)
{
	struct lc_pending *prev = NULL;

	for (struct lc_pending *q = p->qhead; q != NULL; prev = q, q = q->qnext)
		if (q == w) {
			if (prev == NULL)
				p->qhead = w->qnext;
			else
				prev->qnext = w->qnext;
			if (p->qtail == w)
				p->qtail = prev;
			dequeued(p, w);
			return;
		}
}

static void
frame_put(struct frame *fr, unsigned n)
{
	if (n > 0 && atomic_fetch_sub(&fr->refs, n) == n) {
		coffer__v1__pipeline_response__free_unpacked(fr->top, &cf_pbwipe_allocator);
		free(fr);
	}
}

static void
drop_request(struct lc_pending *w)
{
	if (w->req != NULL) {
		OPENSSL_cleanse(w->req, w->reqlen);
		free(w->req);
		w->req = NULL;
	}
}

/* Queued requests are held for their wave: the callers answered together
 * are not all back, and nothing else is going out. Only while a caller
 * waits for one of them: it times the hold (a call started and not yet
 * waited for has nobody to, and goes out at once). */
static int
held(const struct lc_pipeline *p)
{
	return p->qhead != NULL && p->frames && p->woken > 0 && !p->sending && !p->close_queued &&
	       p->qwaiting > 0;
}

/* Held requests need one of their callers timing the wait (the lingerer):
 * the first one waiting takes it when nobody has. */
static void
hand_over(struct lc_pipeline *p)
{
	if (p->lingerer == NULL && held(p))
		for (struct lc_pending *w = p->qhead; w != NULL; w = w->qnext)
			if (w->waiting) {
				pthread_cond_signal(&w->cv);
				break;
			}
}

/* How many queued requests, from the head, go out in the next message:
 * one, or on a stream that reads frames, as many as fit; *total is their
 * size joined. */
static size_t
frame_take(const struct lc_pipeline *p, size_t *total)
{
	size_t n = 1;

	*total = p->qhead->reqlen;
	for (struct lc_pending *w = p->qhead->qnext; p->frames && w != NULL && n < COFFER_BATCH_MAX;
	     w = w->qnext) {
		size_t add = cf_pb_len_prefix(MORE_REQUEST, w->reqlen, NULL) + w->reqlen;

		if (*total + add > FRAME_BYTES)
			break;
		*total += add;
		n++;
	}
	return n;
}

/* Hand the queued requests to the stream when none is going out (as one
 * frame when it reads them); the half-close of a draining stream after the
 * last one. */
static void
pump(struct lc_pipeline *p)
{
	if (!p->sending && p->qhead != NULL && !held(p)) {
		size_t total, n = frame_take(p, &total);
		uint8_t *buf, *at;

		/* A lone request is taken over as it is. */
		buf = n == 1 ? p->qhead->req : malloc(total);
		at = buf;
		for (size_t k = 0; k < n; k++) {
			struct lc_pending *w = p->qhead;

			if ((p->qhead = w->qnext) == NULL)
				p->qtail = NULL;
			dequeued(p, w);
			w->sent = 1;
			w->rx_sent = p->rx;
			if (n == 1) {
				w->req = NULL;
			} else if (buf != NULL) {
				if (k > 0)
					at += cf_pb_len_prefix(MORE_REQUEST, w->reqlen, at);
				memcpy(at, w->req, w->reqlen);
				at += w->reqlen;
			}
			drop_request(w);
		}
		p->sending = 1;
		if (p->lingerer != NULL && p->lingerer->sent)
			p->lingerer = NULL;
		/* Taken over: freed when sent, or with the stream. No memory for
		 * the frame: the stream's end wakes every waiter. */
		if (buf == NULL || lc_stream_send(p->s, buf, total) != CF_OK)
			lc_stream_cancel(p->s);
	}
	if (!p->sending && p->qhead == NULL && p->close_queued) {
		p->close_queued = 0;
		if (lc_stream_close_send(p->s) != CF_OK)
			lc_stream_cancel(p->s);
	}
	hand_over(p);
}

/* ---- the reader ---- */

/* The stream ended with `code`, `msg`: every waiter woken with it. */
static void
end_stream(struct lc_pipeline *p, unsigned code, const uint8_t *msg, size_t len)
{
	pthread_mutex_lock(&p->mu);
	p->state = P_CLOSED;
	p->s = NULL;
	p->sending = 0;
	p->close_queued = 0;
	p->qhead = p->qtail = NULL;
	p->qwaiting = 0;
	p->lingerer = NULL;
	p->woken = 0;
	p->wave++;
	/* An older cofferd: unary calls for good. */
	if (code == GRPC_STATUS_UNIMPLEMENTED)
		atomic_store(&p->disabled, 1);
	for (size_t i = 0; i < NBUCKETS; i++) {
		while (p->buckets[i] != NULL) {
			struct lc_pending *w = p->buckets[i];

			p->buckets[i] = w->next;
			drop_request(w);
			w->queued = 0;
			w->state = W_ENDED;
			w->end_code = code;
			w->end_len = len < sizeof(w->end_msg) ? len : sizeof(w->end_msg);
			if (w->end_len > 0)
				memcpy(w->end_msg, msg, w->end_len);
			pthread_cond_signal(&w->cv);
		}
	}
	pthread_mutex_unlock(&p->mu);
}

/* Hand each answer of the message resp to its waiter: NULL, or why not
 * (a frame the daemon did not announce, or nested; no memory). */
static const char *
handout(struct lc_pipeline *p, Coffer__V1__PipelineResponse *resp, int frames)
{
	size_t n = 1 + resp->n_more;
	unsigned unclaimed = 0;
	struct frame *fr;

	if (resp->n_more > 0 && !frames)
		return "malformed answer on the pipelined stream (a frame that was not announced)";
	for (size_t k = 0; k < resp->n_more; k++)
		if (resp->more[k]->n_more > 0)
			return "malformed answer on the pipelined stream (nested frames)";
	if ((fr = malloc(sizeof(*fr))) == NULL)
		return "out of memory reading the pipelined stream";
	fr->top = resp;
	atomic_init(&fr->refs, (unsigned)n);
	pthread_mutex_lock(&p->mu);
	p->rx++;
	/* An answer to a request still in the send queue: the daemon never had
	 * it (a broken or forged answer), and its waiter must not leave while
	 * the queue holds it. */
	for (size_t k = 0; k < n; k++) {
		struct lc_pending *w = *slot_of(p, (k == 0 ? resp : resp->more[k - 1])->id);

		if (w != NULL && !w->sent) {
			pthread_mutex_unlock(&p->mu);
			free(fr);
			return "malformed answer on the pipelined stream (an answer to a request "
			       "not yet sent)";
		}
	}
	if (frames)
		p->frames = 1;
	for (size_t k = 0; k < n; k++) {
		Coffer__V1__PipelineResponse *a = k == 0 ? resp : resp->more[k - 1];
		struct lc_pending *w = unlink_waiter(p, a->id);

		if (w == NULL) {
			unclaimed++;   /* its waiter timed out and left: dropped */
			continue;
		}
		w->state = W_ANSWERED;
		w->resp = a;
		w->fr = fr;
		w->wave = p->wave;
		p->woken++;
		pthread_cond_signal(&w->cv);
	}
	hand_over(p);
	pthread_mutex_unlock(&p->mu);
	frame_put(fr, unclaimed);
	return NULL;
}

static void *
reader_main(void *arg)
{
	struct lc_pipeline *p = arg;
	struct lc_stream *s;
	const char *broken = NULL;      /* why we cancelled it */

	pthread_mutex_lock(&p->mu);
	s = p->s;
	pthread_mutex_unlock(&p->mu);
	for (;;) {
		struct lc_stream_event ev;
		Coffer__V1__PipelineResponse *resp;
		const char *why;

		if (lc_stream_next(s, &ev) != CF_OK) {
			broken = "the pipelined stream's completion queue failed";
			break;
		}
		if (ev.kind == LC_STREAM_END) {
			if (broken == NULL) {
				end_stream(p, ev.code, ev.details, ev.details_len);
				lc_stream_free(s);
				return NULL;
			}
			break;
		}
		if (ev.kind == LC_STREAM_SENT) {
			pthread_mutex_lock(&p->mu);
			p->sending = 0;
			if (p->s == s)
				pump(p);
			pthread_mutex_unlock(&p->mu);
			continue;
		}
		/* Answers may carry what a caller keeps to itself (a MAC): wiped when freed. */
		resp = ev.ok ? coffer__v1__pipeline_response__unpack(&cf_pbwipe_allocator, ev.len,
		    ev.msg) : NULL;
		if (ev.msg != NULL) {
			OPENSSL_cleanse(ev.msg, ev.len);
			free(ev.msg);
		}
		why = resp == NULL ? (ev.ok ? "malformed answer on the pipelined stream" :
		    "out of memory reading the pipelined stream") : handout(p, resp, ev.frames);
		if (why != NULL) {
			/* Whose answer it was is unknown: no waiter can trust the stream. */
			if (broken == NULL)
				broken = why;
			if (resp != NULL)
				coffer__v1__pipeline_response__free_unpacked(resp,
				    &cf_pbwipe_allocator);
			lc_stream_cancel(s);
		}
	}
	end_stream(p, GRPC_STATUS_INTERNAL, (const uint8_t *)broken, strlen(broken));
	lc_stream_free(s);
	return NULL;
}

/* Under mu, P_CLOSED: a new stream and its reader. */
static int
open_locked(struct lc_pipeline *p, struct lc_apikey *k)
{
	struct lc_stream *s = NULL;
	int r;

	/* The last stream's reader has ended it and takes mu no more. */
	if (p->reader_live) {
		pthread_join(p->reader, NULL);
		p->reader_live = 0;
	}
	if ((r = lc_signed_stream_open(p->conn, k, PIPELINE_PATH, &s)) != CF_OK)
		return r;
	p->s = s;
	p->state = P_OPEN;
	p->frames = 0;   /* until this stream's daemon says it reads them */
	if (pthread_create(&p->reader, NULL, reader_main, p) != 0) {
		p->s = NULL;
		p->state = P_CLOSED;
		lc_stream_free(s);
		return cf_error(CF_E_INTERNAL, "cannot start the pipelined stream's reader thread");
	}
	p->reader_live = 1;
	p->forks = atomic_load(&forks);
	return CF_OK;
}

void
lc_pipeline_drop(struct lc_pipeline *p)
{
	pthread_mutex_lock(&p->mu);
	if (p->state == P_OPEN) {
		p->state = P_DRAINING;
		p->close_queued = 1;
		pump(p);
	}
	pthread_mutex_unlock(&p->mu);
}

void
lc_pipeline_close(struct lc_pipeline *p)
{
	struct timespec until;

	/* In the child of a fork the reader is not ours to join, nor the stream
	 * ours to touch (coffer.h: a client is not used after fork). */
	if (!p->reader_live || !reader_here(p))
		return;
	lc_pipeline_drop(p);
	cf_deadline_in(&until, CLOSE_WAIT_MS);
	if (pthread_clockjoin_np(p->reader, NULL, CLOCK_MONOTONIC, &until) != 0) {
		pthread_mutex_lock(&p->mu);
		if (p->s != NULL)
			lc_stream_cancel(p->s);
		pthread_mutex_unlock(&p->mu);
		pthread_join(p->reader, NULL);
	}
	p->reader_live = 0;
}

void
lc_pipeline_free(struct lc_pipeline *p)
{
	if (p == NULL)
		return;
	lc_pipeline_close(p);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

int
lc_pipeline_set_mode(struct lc_pipeline *p, int mode)
{
	if (mode != COFFER_PIPELINE_AUTO && mode != COFFER_PIPELINE_OFF &&
	    mode != COFFER_PIPELINE_ALWAYS)
		return cf_error(CF_E_INVALID_ARG, "unknown pipeline mode %d: use "
		    "COFFER_PIPELINE_AUTO, COFFER_PIPELINE_OFF or COFFER_PIPELINE_ALWAYS", mode);
	atomic_store(&p->mode, mode);
	if (mode == COFFER_PIPELINE_OFF)
		lc_pipeline_drop(p);
	return CF_OK;
}

/* ---- one call ---- */

/* What the daemon serves on the stream (proto/pipeline.md). */
static int
eligible(const struct cf_method *m)
{
	return m != NULL && strcmp(m->service, KEY_SERVICE) == 0 &&
	       !(m->flags & (CF_MF_MUTATING | CF_MF_SECRET | CF_MF_SEALED_ONLY));
}

/* The PipelineRequest of id, m and buf[0..len), into w. */
static int
pack_request(struct lc_pending *w, const struct cf_method *m, const uint8_t *buf, size_t len)
{
	Coffer__V1__PipelineRequest req = COFFER__V1__PIPELINE_REQUEST__INIT;

	req.id = w->id;
	req.method = (char *)m->path;
	req.request.data = (uint8_t *)buf;
	req.request.len = len;
	w->reqlen = coffer__v1__pipeline_request__get_packed_size(&req);
	if (w->reqlen > COFFER_MAX_MESSAGE)
		return cf_error(CF_E_TOO_LARGE, "request of %zu bytes is above the %u-byte "
		    "message limit", w->reqlen, COFFER_MAX_MESSAGE);
	if ((w->req = malloc(w->reqlen ? w->reqlen : 1)) == NULL)
		return cf_nomem();
	coffer__v1__pipeline_request__pack(&req, w->req);
	return CF_OK;
}

/* Wait for w's answer until its deadline (w->ms from w->start; 0: none):
 * 0, or ETIMEDOUT with w out of the table and the queue. Under mu. */
static int
await(struct lc_pipeline *p, struct lc_pending *w)
{
	struct timespec until = w->start, linger = { 0, 0 };

	cf_timespec_add_us(&until, (uint64_t)w->ms * 1000u);
	set_waiting(p, w, 1);
	while (w->state == W_WAITING) {
		const struct timespec *t = w->ms != 0 ? &until : NULL;
		int lingering = 0, r;

		/* Queued, nothing going out and nothing held: it goes now. */
		if (w->queued)
			pump(p);

		/* Held for its wave: one held request times the wait for all. */
		if (!w->sent && held(p) && (p->lingerer == NULL || p->lingerer == w)) {
			if (p->lingerer != w) {
				p->lingerer = w;
				cf_deadline_in_us(&linger, LINGER_US);
			}
			if (t == NULL || linger.tv_sec < t->tv_sec ||
			    (linger.tv_sec == t->tv_sec && linger.tv_nsec < t->tv_nsec)) {
				t = &linger;
				lingering = 1;
			}
		}
		r = t == NULL ? pthread_cond_wait(&w->cv, &p->mu) :
		    cf_cond_wait_until(&w->cv, &p->mu, t);
		if (r != ETIMEDOUT || w->state != W_WAITING)
			continue;
		if (lingering) {
			if (p->lingerer == w) {
				/* Re-armed on the next turn if it is still held. */
				p->lingerer = NULL;
				if (!w->sent) {
					/* The rest of the wave is busy elsewhere: not
					 * waited for. */
					p->woken = 0;
					p->wave++;
					pump(p);
				}
			}
			continue;
		}
		/* Sent, and nothing at all came back on the stream since: it
		 * is stalled (the daemon stopped reading or answering it). Ended,
		 * so that later calls do not all wait out their deadlines on it:
		 * they open another, or go unary. */
		if (w->sent && p->rx == w->rx_sent && p->s != NULL)
			lc_stream_cancel(p->s);
		(void)unlink_waiter(p, w->id);
		unqueue(p, w);
		drop_request(w);
		set_waiting(p, w, 0);
		if (p->lingerer == w)
			p->lingerer = NULL;
		pump(p);   /* another held one times the wait, or none is held now */
		return ETIMEDOUT;
	}
	set_waiting(p, w, 0);
	return 0;
}

/* The answer in w, as the unary call would give it. */
static int
answer(struct lc_pipeline *p, struct lc_pending *w, unsigned int ms, uint8_t **out, size_t *outlen)
{
	Coffer__V1__PipelineResponse *resp = w->resp;
	int r = CF_OK;

	if (resp->code != GRPC_STATUS_OK) {
		r = lc_status_error(p->conn, ms, resp->code, (const uint8_t *)resp->message,
		    strlen(resp->message));
	} else if ((*out = malloc(resp->response.len ? resp->response.len : 1)) == NULL) {
		r = cf_nomem();
	} else {
		if (resp->response.len > 0)
			memcpy(*out, resp->response.data, resp->response.len);
		*outlen = resp->response.len;
	}
	frame_put(w->fr, 1);
	return r;
}

/* The stream ended before w was answered. */
static int
ended(struct lc_pipeline *p, const struct cf_method *m, struct lc_pending *w, unsigned int ms)
{
	unsigned code = w->end_code;

	/* Never sent, or refused by a daemon without the service: nothing ran. */
	if (!w->sent || code == GRPC_STATUS_UNIMPLEMENTED)
		return LC_PIPE_UNARY;
	/* The daemon went (a restart) or ended the stream without its answer:
	 * as for a unary call that met a restart. */
	if (code == GRPC_STATUS_UNAVAILABLE || code == GRPC_STATUS_CANCELLED ||
	    code == GRPC_STATUS_OK) {
		if (!(m->flags & CF_MF_NO_RETRY))
			return LC_PIPE_RETRY;
		(void)lc_status_error(p->conn, ms, GRPC_STATUS_UNAVAILABLE,
		    (const uint8_t *)w->end_msg, w->end_len);
		return cf_error(CF_E_UNAVAILABLE, "the pipelined stream to cofferd ended before "
		    "%s was answered (%s); not repeated: it may have run, and it records a "
		    "nonce", m->name, code == GRPC_STATUS_OK ? "closed" : cf_error_detail());
	}
	/* A refused opening: its status and text, as the unary call gets them. */
	return lc_status_error(p->conn, ms, code, (const uint8_t *)w->end_msg, w->end_len);
}

/* After a call that did not take the stream: this thread is back from its
 * wave, and what it held back may go. */
static void
not_taken(struct lc_pipeline *p)
{
	if (tl_pipe == p) {
		pthread_mutex_lock(&p->mu);
		came_back(p);
		pump(p);
		pthread_mutex_unlock(&p->mu);
	}
}

/* lc_pipeline_start; `wait`: its caller waits for it at once (its request
 * may be held for its wave meanwhile). */
static int
start(struct lc_pipeline *p, struct lc_apikey *k, const struct cf_method *m, unsigned others,
    const uint8_t *buf, size_t len, int wait, struct lc_pending **out)
{
	int mode = atomic_load(&p->mode);
	struct lc_pending *w;
	int r;

	if (mode == COFFER_PIPELINE_OFF || !eligible(m) || atomic_load(&p->disabled)) {
		not_taken(p);
		return LC_PIPE_UNARY;
	}
	if ((w = calloc(1, sizeof(*w))) == NULL)
		return cf_nomem();
	w->id = atomic_fetch_add(&p->next_id, 1);
	w->state = W_WAITING;
	w->ms = lc_conn_timeout(p->conn);
	clock_gettime(CLOCK_MONOTONIC, &w->start);
	pthread_mutex_lock(&p->mu);
	came_back(p);
	/* A lone caller: a plain unary call costs it less. A draining stream
	 * takes nothing new; after a fork, a stream whose reader is in the
	 * parent serves nobody. */
	if ((p->state == P_CLOSED && mode == COFFER_PIPELINE_AUTO && others == 0) ||
	    p->state == P_DRAINING || (p->reader_live && !reader_here(p)) ||
	    (p->state == P_CLOSED && open_locked(p, k) != CF_OK)) {
		pthread_mutex_unlock(&p->mu);
		free(w);
		return LC_PIPE_UNARY;
	}
	pthread_mutex_unlock(&p->mu);
	if ((r = pack_request(w, m, buf, len)) != CF_OK) {
		free(w);
		return r;
	}
	if (pthread_cond_init(&w->cv, NULL) != 0) {
		drop_request(w);
		free(w);
		return cf_error(CF_E_NOMEM, "cannot create a condition variable");
	}
	pthread_mutex_lock(&p->mu);
	if (p->state != P_OPEN) {
		/* It ended or began draining meanwhile. */
		pthread_mutex_unlock(&p->mu);
		drop_request(w);
		pthread_cond_destroy(&w->cv);
		free(w);
		return LC_PIPE_UNARY;
	}
	w->next = *bucket(p, w->id);
	*bucket(p, w->id) = w;
	if (p->qtail != NULL)
		p->qtail->qnext = w;
	else
		p->qhead = w;
	p->qtail = w;
	w->queued = 1;
	set_waiting(p, w, wait);
	pump(p);
	pthread_mutex_unlock(&p->mu);
	*out = w;
	return CF_OK;
}

int
lc_pipeline_start(struct lc_pipeline *p, struct lc_apikey *k, const struct cf_method *m,
    unsigned others, const uint8_t *buf, size_t len, struct lc_pending **out)
{
	return start(p, k, m, others, buf, len, 0, out);
}

int
lc_pipeline_finish(struct lc_pipeline *p, struct lc_pending *w, const struct cf_method *m,
    uint8_t **out, size_t *outlen)
{
	int r;

	pthread_mutex_lock(&p->mu);
	/* Back from the answers it took: not held for itself (and what was
	 * held for it may go). */
	came_back(p);
	pump(p);
	r = await(p, w);
	/* One of the wave, until its next call (an answer of a wave given up
	 * since was written off then). */
	if (w->state == W_ANSWERED && w->wave == p->wave)
		took(p, w->wave);
	pthread_mutex_unlock(&p->mu);
	pthread_cond_destroy(&w->cv);
	if (r == ETIMEDOUT)   /* the text the unary call gives at its deadline */
		r = lc_status_error(p->conn, w->ms, GRPC_STATUS_DEADLINE_EXCEEDED,
		    (const uint8_t *)"Deadline Exceeded", strlen("Deadline Exceeded"));
	else if (w->state == W_ANSWERED)
		r = answer(p, w, w->ms, out, outlen);
	else
		r = ended(p, m, w, w->ms);
	free(w);
	return r;
}

int
lc_pipeline_call(struct lc_pipeline *p, struct lc_apikey *k, const struct cf_method *m,
    unsigned others, const uint8_t *buf, size_t len, uint8_t **out, size_t *outlen)
{
	struct lc_pending *w;
	int r = start(p, k, m, others, buf, len, 1, &w);

	return r != CF_OK ? r : lc_pipeline_finish(p, w, m, out, outlen);
}
