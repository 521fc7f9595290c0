#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cf_buf.h"
#include "cf_crashpoint.h"
#include "cf_time.h"
#include "iowatch.h"
#include "cf_hex.h"
#include "cf_log.h"
#include "cf_pbcheck.h"
#include "cf_status.h"
#include "metrics.h"

#define ALARM_EVERY_S 10
#define RETRY_MS 1000            /* a broken trail is retried (and the outbox read) this often */
#define TICK_MS 250              /* the ticker looks for answers waiting too long this often */

struct item {
	char *rest;              /* the record after its "{\"seq\":N," prefix */
	int64_t outbox;          /* its outbox id; 0: a call's record */
	unsigned gen;            /* outbox generation it was queued in (stale ones are skipped) */
	struct audit_group *group;   /* the calls waiting for it (NULL: none) */
	struct item *next;
};

/* Calls waiting for their records (mu): one call's, or a stream frame's.
 * Each queued record holds a reference, as does its owner until it has
 * waited: the last one frees it, so a waiter that gave up leaves safely.
 * Its owner waits on its own condition, so that a written batch wakes only
 * the calls it answered (and one more to write the next), not every call
 * waiting: on this VM a needless wake-up costs more than a record. */
struct audit_group {
	unsigned pending;        /* its records not yet written */
	unsigned records;        /* ever queued in it */
	unsigned refs;
	int status;              /* CF_OK, or why one of them was not written */
	int waiting;             /* its owner waits on done */
	pthread_cond_t done;
	/* Answered without waiting (audit_group_end_async): called once. */
	audit_done_fn cb;
	void *cb_arg;
	uint64_t deadline;       /* CLOCK_MONOTONIC ms: refused past it (the ticker) */
	int fired;
	int result;              /* what cb is given, and its text */
	char text[CF_ERROR_DETAIL_MAX];
	struct audit_group *anext;   /* in a->async (not yet fired) or a->fire */
	struct audit_group **aprev;  /* in a->async: what points at it */
};

/* What a batch ends with, and what it moved. */
struct batch_end {
	const char *seal;        /* NULL: no seal; else the seal record's extra fields */
	int clean;               /* anchor it as a clean stop */
	unsigned gen;            /* outbox records of another generation are skipped */
	int64_t ob_done;         /* in: outbox ids up to here are in the file;
	                            out: the highest id written */
	uint64_t n;              /* out: records written */
	uint64_t cut;            /* out, on failure: records of earlier batches cut with it */
	int anchor;              /* out: the end is to be anchored (anchor_end) */
	uint64_t a_seq;
	uint8_t a_chain[32];
};

struct audit {
	struct audit_cfg cfg;
	cf_p11_key *seal_key;    /* signs seals */
	cf_p11_key *hmac_key;    /* checks old HMAC seals; NULL if the token has none */
	EVP_PKEY *pub;           /* the seal key's public half, for verifying */
	store *st;
	int fd;
	char path[4096];
	pthread_t writer;
	int writer_started;

	pthread_mutex_t mu;
	pthread_cond_t work;     /* records queued, or stop: wakes the writer */
	pthread_cond_t written;  /* a batch was written (or failed): wakes waiting calls */
	struct item *head, **tail;
	struct audit_group *async;   /* groups answered without waiting, not yet fired */
	struct audit_group *fire;    /* fired, their callbacks not yet called */
	uint64_t lost;           /* records that could not be written since the last good write */
	size_t queued;           /* calls' records in the queue (fail open: cfg.max_queued) */
	int64_t full_warned;     /* when a full queue was last logged */
	uint64_t failures;       /* failed batches, ever */
	uint64_t written_run;    /* records written by this process */
	int stop;
	int writing;             /* a batch is being written (by a call or the writer) */
	/* A failed write left a partial record that could not be cut (an
	 * append-only file): nothing more is written after it (write_batch;
	 * read and set by the one writing). */
	int stuck_tail;
	char stuck_why[PATH_MAX + 256];
	uint64_t write_began;    /* CLOCK_MONOTONIC ms, when that write began */
	/* Anchors are the anchorer thread's: the state store may be slow or
	 * hang, and the writer, which answers calls, must not wait for it. */
	pthread_t anchorer;
	int anchorer_started;
	/* The ticker refuses answers whose records wait past max_wait_ms. */
	pthread_t ticker;
	int ticker_started;
	pthread_cond_t tk_cv;       /* stop (under mu) */
	int tk_stop;
	pthread_cond_t an_cv;       /* an anchor to store, or stop (under mu) */
	int an_have, an_stop;
	struct batch_end an_next;   /* the latest end to anchor (under mu) */
	pthread_mutex_t anchor_mu;  /* anchors one at a time, in order (anchor_end) */
	uint64_t anchored_seq;      /* the last end anchored (under anchor_mu) */
	int anchor_skipped;         /* anchors skipped: the state hangs (under anchor_mu) */
	unsigned anchor_failed;     /* anchors failed in a row (under anchor_mu) */
	uint64_t unsealed;       /* records written since the last seal */
	uint64_t last_seal;      /* CLOCK_MONOTONIC ms */
	uint64_t last_write;     /* CLOCK_MONOTONIC ms, when the last batch ended */
	int broken;
	char reason[200];
	char *pending_start;     /* the start record's fields, until written */
	time_t last_alarm;

	/* The outbox (under mu; loading it also under ob_mu). */
	pthread_mutex_t ob_mu;
	int64_t ob_queued;       /* highest id queued */
	int64_t ob_written;      /* highest id in the file */
	unsigned ob_gen;         /* bumped when a failed write drops queued outbox records */

	/* The end of the trail as last written (read under mu). */
	uint64_t seq;
	uint8_t chain[32];
	off_t size;
	/* The end as of the last fdatasync that succeeded, and the records
	 * written after it without one (durability = os, failing open): a
	 * later fdatasync that fails may be reporting their writeback, so they
	 * are cut with its batch and counted lost (write_batch). The writer's
	 * (the one writing). */
	uint64_t synced_seq;
	uint8_t synced_chain[32];
	off_t synced_size;
	uint64_t unsynced;
};

/* ---- formatting ---- */

struct fmt {
	char *p;
	size_t len, n;
	int over;
};

static void
put(struct fmt *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
put(struct fmt *f, const char *fmt, ...)
{
	va_list ap;
	int k;

	if (f->over)
		return;
	va_start(ap, fmt);
	k = vsnprintf(f->p + f->n, f->len - f->n, fmt, ap);
	va_end(ap);
	if (k < 0 || (size_t)k >= f->len - f->n)
		f->over = 1;
	else
		f->n += (size_t)k;
}

/* n bytes of p as they are (put's bound: room for them and a NUL). */
static void
put_raw(struct fmt *f, const char *p, size_t n)
{
	if (f->over)
		return;
	if (n >= f->len - f->n) {
		f->over = 1;
		return;
	}
	memcpy(f->p + f->n, p, n);
	f->n += n;
	f->p[f->n] = '\0';
}

/* A byte that goes into a JSON string as it is. */
static int
plain(unsigned char c)
{
	return c >= 0x20 && c != 0x7f && c != '"' && c != '\\';
}

/* s as a JSON string (quoted; quotes, backslashes and control characters
 * escaped, and every byte that is not UTF-8 written as the text \xNN, so
 * that each record stays valid UTF-8 JSON). No field holds a NUL: requests
 * with one in a string are refused before they are read (cf_pbcheck.h).
 * Runs of plain bytes are copied whole: every call's record goes through
 * here. */
static void
put_str(struct fmt *f, const char *s)
{
	size_t len = s != NULL ? strlen(s) : 0, i = 0;

	put_raw(f, "\"", 1);
	while (i < len && !f->over) {
		size_t valid = i + cf_utf8_valid((const uint8_t *)s + i, len - i);

		while (i < valid && !f->over) {
			size_t run = i;
			unsigned char c;

			while (run < valid && plain((unsigned char)s[run]))
				run++;
			put_raw(f, s + i, run - i);
			if ((i = run) == valid)
				break;
			c = (unsigned char)s[i++];
			if (c == '"' || c == '\\')
				put(f, "\\%c", c);
			else
				put(f, "\\u%04x", c);
		}
		if (i < len)
			put(f, "\\\\x%02x", (unsigned char)s[i++]);
	}
	put_raw(f, "\"", 1);
}

static void
now_iso(char out[32])
{
	struct timespec ts;
	struct tm tm;
	char sec[24];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(sec, sizeof(sec), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out, 32, "%.20s.%03dZ", sec, (int)(ts.tv_nsec / 1000000));
}

int
audit_format_change(const struct audit_event *ev, char *buf, size_t len)
{
	struct fmt f = { buf, len, 0, len == 0 };
	char t[32];

	now_iso(t);
	put(&f, "\"time\":\"%s\",\"principal\":", t);
	put_str(&f, ev->principal ? ev->principal : "");
	put(&f, ",\"uid\":%u,\"pid\":%d,\"socket\":\"%s\",\"sealed\":%s,\"method\":",
	    (unsigned)ev->uid, (int)ev->pid, ev->admin ? "admin" : "service",
	    ev->sealed ? "true" : "false");
	put_str(&f, ev->method);
	put(&f, ",\"key\":");
	put_str(&f, ev->key ? ev->key : "");
	put(&f, ",\"version\":%u,\"result\":", ev->version);
	put_str(&f, ev->result);
	put(&f, ",\"request_id\":");
	put_str(&f, ev->request_id ? ev->request_id : "");
	if (ev->replay_of != NULL) {
		put(&f, ",\"replay_of\":");
		put_str(&f, ev->replay_of);
	}
	if (ev->batch || ev->items > 0)
		put(&f, ",\"items\":%u,\"failed\":%u", ev->items, ev->failed);
	return f.over ? -1 : (int)f.n;
}

/* Append one full line for body[0..len) to buf, advancing chain. */
static int
emit(cf_buf *buf, uint8_t chain[32], const char *body, size_t len)
{
	char h[65];
	int r;

	cf_audit_chain_next(chain, body, len, chain);
	cf_hex_encode(chain, 32, h);
	if ((r = cf_buf_put(buf, body, len)) != CF_OK ||
	    (r = cf_buf_put(buf, CF_AUDIT_CHAIN_FIELD, strlen(CF_AUDIT_CHAIN_FIELD))) != CF_OK ||
	    (r = cf_buf_put(buf, h, 64)) != CF_OK || (r = cf_buf_put(buf, "\"}\n", 3)) != CF_OK)
		return r;
	return CF_OK;
}

/* Append the seal record number seq (with `fields`, "" or ",\"event\":...")
 * signed in the token. */
static int
emit_seal(audit *a, cf_buf *buf, uint8_t chain[32], uint64_t seq, const char *fields)
{
	char body[CF_AUDIT_LINE_MAX], t[32], sh[2 * CF_P11_MAX_SIG + 1];
	uint8_t in[40 + CF_AUDIT_LINE_MAX];
	cf_buf *sig = cf_buf_new(CF_P11_MAX_SIG);
	struct fmt f = { body, sizeof(body) - 2 * CF_P11_MAX_SIG - 16, 0, 0 };
	int r;

	if (sig == NULL) {
		r = cf_nomem();
		goto out;
	}
	now_iso(t);
	put(&f, "{\"seq\":%llu,\"time\":\"%s\"%s", (unsigned long long)seq, t, fields);
	if (f.over) {
		r = cf_error(CF_E_INTERNAL, "a seal record too long to write");
		goto out;
	}
	if ((r = cf_p11_sign(a->seal_key, NULL, in, cf_audit_sig_input(chain, seq, body, f.n, in),
			     sig)) != CF_OK)
		goto out;
	cf_hex_encode(cf_buf_peek(sig), cf_buf_len(sig), sh);
	f.len = sizeof(body);
	put(&f, CF_AUDIT_SIG_FIELD "%s\"", sh);
	r = emit(buf, chain, body, f.n);
out:
	cf_buf_free(sig);
	return r;
}

/* ---- the writer ---- */

static int
sync_fd(audit *a)
{
	if (fdatasync(a->fd) != 0)
		return cf_error(CF_E_UNAVAILABLE, "writing %s: %s", a->path, strerror(errno));
	return CF_OK;
}

/* Where the trail ends now, into the state store (dropping outbox records up
 * to ob_done). A failure only weakens the tail's evidence: logged. */
static void
anchor(audit *a, uint64_t seq, const uint8_t chain[32], int clean, int64_t ob_done)
{
	struct store_audit_anchor an;
	char why[256];

	if (a->st == NULL)
		return;
	/* Best effort as ever (the next seal anchors again), and never a wait
	 * on a state known to hang. */
	if (iowatch_hung(why, sizeof(why))) {
		if (!a->anchor_skipped)
			cf_log_warn("audit: seals are not anchored while %s does not answer "
				    "(from record %llu)", why, (unsigned long long)seq);
		a->anchor_skipped = 1;
		return;
	}
	a->anchor_skipped = 0;
	memset(&an, 0, sizeof(an));
	an.seq = seq;
	memcpy(an.chain, chain, 32);
	an.clean = clean;
	an.time = (int64_t)time(NULL);
	/* Logged once a streak: an anchor gives way to a lock held elsewhere
	 * after 100 ms (store_yield), and is tried again at each seal. */
	if (store_audit_anchor_put(a->st, &an, ob_done) != CF_OK) {
		if (a->anchor_failed++ == 0)
			cf_log_error("audit: cannot anchor record %llu in the state store (tried "
				     "again at each seal; logged again when one succeeds): %s",
				     (unsigned long long)seq, cf_error_detail());
	} else if (a->anchor_failed > 0) {
		cf_log_info("audit: anchored record %llu in the state store again, after %u "
			    "failed tries", (unsigned long long)seq, a->anchor_failed);
		a->anchor_failed = 0;
	}
}

/* The anchor a written batch asked for (be->anchor), outside mu and after
 * the batch's accounting; anchors of batches written one after the other may
 * run in any order, so only a later end than the last anchored is stored.
 * One in progress (a slow or hanging store) makes another skip its own, best
 * effort as every anchor: the next seal anchors again. A clean stop's waits. */
static void
anchor_end(audit *a, const struct batch_end *be)
{
	if (!be->anchor)
		return;
	if (be->clean) {
		store_yield(0);   /* a clean stop's anchor waits its whole bound */
		pthread_mutex_lock(&a->anchor_mu);
	}
	else if (pthread_mutex_trylock(&a->anchor_mu) != 0)
		return;
	if (be->a_seq > a->anchored_seq) {
		anchor(a, be->a_seq, be->a_chain, be->clean, be->ob_done);
		a->anchored_seq = be->a_seq;
	}
	pthread_mutex_unlock(&a->anchor_mu);
	CF_CRASH_POINT("audit.anchored");
}

/* Write a batch (and a seal after it); the trail's end moves only if all of
 * it is written (and, fail closed or before an anchor, synced). Returns CF_OK
 * or CF_E_UNAVAILABLE with a detail. */
static int
write_batch(audit *a, const struct item *batch, struct batch_end *be, uint64_t *seq,
	    uint8_t chain[32], off_t *size)
{
	cf_buf *buf = NULL;
	uint8_t c[32];
	uint64_t s = *seq, n = 0;
	char body[CF_AUDIT_LINE_MAX + 64];
	int64_t ob = be->ob_done;
	int r = CF_OK, moved = 0, synced = 0;

	/* A record written after a fragment would be glued to it: the chain
	 * breaks there, and every later record reads as altered. */
	if (a->stuck_tail)
		return cf_error(CF_E_UNAVAILABLE, "%s", a->stuck_why);
	for (const struct item *i = batch; i != NULL; i = i->next)
		n++;
	if ((buf = cf_buf_new((n + 2) * (CF_AUDIT_LINE_MAX + 64))) == NULL) {
		r = cf_nomem();
		goto out;
	}
	memcpy(c, chain, 32);
	for (; batch != NULL && r == CF_OK; batch = batch->next) {
		int k;

		if (batch->outbox != 0 && (batch->gen != be->gen || batch->outbox <= ob))
			continue;   /* dropped by a failed write, or already in: reloaded/skipped */
		if (batch->outbox != 0)
			k = snprintf(body, sizeof(body), "{\"seq\":%llu,\"outbox\":%lld,%s",
				     (unsigned long long)++s, (long long)batch->outbox, batch->rest);
		else
			k = snprintf(body, sizeof(body), "{\"seq\":%llu,%s",
				     (unsigned long long)++s, batch->rest);
		if (k < 0 || (size_t)k >= sizeof(body)) {
			r = cf_error(CF_E_INTERNAL, "an audit record too long to write");
			break;
		}
		r = emit(buf, c, body, (size_t)k);
		if (batch->outbox != 0) {
			ob = batch->outbox;
			moved = 1;
		}
	}
	if (r == CF_OK && be->seal != NULL)
		r = emit_seal(a, buf, c, ++s, be->seal);
	if (r != CF_OK)
		goto out;
	if (cf_write_all(a->fd, cf_buf_peek(buf), cf_buf_len(buf)) != 0)
		r = cf_error(CF_E_UNAVAILABLE, "writing %s: %s", a->path, strerror(errno));
	else if ((synced = (!a->cfg.fail_open && !a->cfg.durability_os) || be->seal != NULL ||
			   moved))
		r = sync_fd(a);
	if (r != CF_OK) {
		/* No partial line may stay for the next batch to follow; and a
		 * failed fdatasync reports the writeback of every page since the
		 * last good one (the kernel keeps no more than that the error
		 * happened): the batches written since may not be on the disk, so
		 * they go with this one and the chain resumes where it was synced. */
		struct stat fst;
		off_t to = synced ? a->synced_size : *size;
		int e;

		e = ftruncate(a->fd, to) != 0 ? errno : 0;
		if (e == 0 && to < *size) {
			be->cut = a->unsynced;
			a->unsynced = 0;
			*seq = a->synced_seq;
			memcpy(chain, a->synced_chain, 32);
			*size = to;
		}
		if (e != 0 && (fstat(a->fd, &fst) != 0 || fst.st_size != to)) {
			/* The path last: the refusal's text is cut to fit. */
			snprintf(a->stuck_why, sizeof(a->stuck_why), "%s cannot be cut (%s%s): "
				 "nothing is written after it until a restart; %s",
				 to < *size ? "what was written since the last good fdatasync" :
				 "a partial record", strerror(e), e == EPERM ? ", append-only" : "",
				 a->path);
			a->stuck_tail = 1;
			/* Whole records verify at the next start, and stay. */
			cf_log_error("audit: %s%s", a->stuck_why, to < *size ? "" :
				     "; the restart cuts it (remove the append-only attribute first)");
		}
		goto out;
	}
	if (moved)
		CF_CRASH_POINT("audit.outbox.written");
	/* Anchored by the caller once the batch's waiters are answered and the
	 * next batch may be written (anchor_end): a state store that is slow or
	 * hangs holds no record of the trail. */
	be->anchor = be->seal != NULL || moved;
	be->a_seq = s;
	memcpy(be->a_chain, c, 32);
	be->n = s - *seq;
	be->ob_done = ob;
	*seq = s;
	memcpy(chain, c, 32);
	*size += (off_t)cf_buf_len(buf);
	if (synced) {
		a->synced_seq = s;
		memcpy(a->synced_chain, c, 32);
		a->synced_size = *size;
		a->unsynced = 0;
	} else {
		a->unsynced += be->n;
	}
out:
	cf_buf_free(buf);
	return r;
}

/*
 * Records are written as they come, in batches; a seal (one signature in the
 * token) follows once the writer has been idle for SEAL_IDLE_MS, and at least
 * every SEAL_EVERY_MS under load, so its cost is spread over many records.
 */
#define SEAL_IDLE_MS 20
#define SEAL_EVERY_MS 100

static void
group_unref_locked(struct audit_group *g)
{
	if (--g->refs == 0) {
		pthread_cond_destroy(&g->done);
		free(g);
	}
}

static int group_result_locked(audit *a, const struct audit_group *g);

/* What an answered-without-waiting group's callback is given (mu held). */
static int
group_outcome_locked(audit *a, const struct audit_group *g, char text[CF_ERROR_DETAIL_MAX])
{
	int r = group_result_locked(a, g);

	snprintf(text, CF_ERROR_DETAIL_MAX, "%s", r == CF_OK ? "" : cf_error_message(r));
	return r;
}

/* g's answer is known: off the waiting list, onto the list whose callbacks
 * fire_locked calls (mu held). */
static void
ready_locked(audit *a, struct audit_group *g)
{
	if (g->aprev != NULL) {
		*g->aprev = g->anext;
		if (g->anext != NULL)
			g->anext->aprev = g->aprev;
		g->aprev = NULL;
	}
	g->fired = 1;
	g->refs++;
	g->anext = a->fire;
	a->fire = g;
}

/* Call the callbacks of the groups made ready, outside mu (mu held on entry
 * and on return): they answer calls through gRPC. Their results are taken
 * now, once the write that readied them has been accounted for. */
static void
fire_locked(audit *a)
{
	while (a->fire != NULL) {
		struct audit_group *list = a->fire, *next;

		a->fire = NULL;
		for (struct audit_group *g = list; g != NULL; g = g->anext)
			g->result = group_outcome_locked(a, g, g->text);
		pthread_mutex_unlock(&a->mu);
		for (struct audit_group *g = list; g != NULL; g = g->anext)
			g->cb(g->cb_arg, g->result, g->text);
		pthread_mutex_lock(&a->mu);
		for (struct audit_group *g = list; g != NULL; g = next) {
			next = g->anext;
			group_unref_locked(g);
		}
	}
}

/* One of g's records was written (r == CF_OK) or not (mu held). */
static void
group_put_locked(audit *a, struct audit_group *g, int r)
{
	if (r != CF_OK)
		g->status = r;
	if (--g->pending == 0) {
		if (g->waiting)
			pthread_cond_signal(&g->done);
		if (g->cb != NULL && !g->fired)
			ready_locked(a, g);
	}
	group_unref_locked(g);
}

/* Records were queued while a batch was written: wake one call waiting for
 * one of them to write them all (mu held). */
static void
wake_next_writer_locked(audit *a)
{
	for (struct item *i = a->head; i != NULL; i = i->next)
		if (i->group != NULL && i->group->waiting) {
			pthread_cond_signal(&i->group->done);
			return;
		}
	if (a->head != NULL)   /* only calls that do not wait: the writer thread's */
		pthread_cond_signal(&a->work);
}

/* Write `batch` (taken off the queue by the caller, mu held and writing set)
 * ending as `end` says, outside the lock; then account for it. Items from
 * `keep` on are the caller's (not freed). healed: the batch is a heal that
 * says this many records were lost (heal_locked); only such a batch ends a
 * break (an argument, not a field: another write may start while this
 * one's callbacks run without the lock). */
static int
write_locked(audit *a, struct item *batch, const char *seal, struct item *keep,
	     const uint64_t *healed)
{
	struct batch_end be = { .seal = seal, .gen = a->ob_gen, .ob_done = a->ob_written };
	struct item *next;
	uint64_t n = 0, seq = a->seq;
	uint8_t chain[32];
	off_t size = a->size;
	int r, wake;

	memcpy(chain, a->chain, 32);
	a->write_began = cf_mono_ms();
	pthread_mutex_unlock(&a->mu);
	r = write_batch(a, batch, &be, &seq, chain, &size);
	pthread_mutex_lock(&a->mu);
	for (struct item *i = batch; i != NULL && i != keep; i = next) {
		next = i->next;
		if (i->group != NULL)
			group_put_locked(a, i->group, r);
		if (i->outbox == 0)
			n++;
		free(i->rest);
		free(i);
	}
	a->writing = 0;
	a->last_write = cf_mono_ms();
	/* The writer thread needs waking only when its state changes: the first
	 * record after a seal (it may be in its long wait) or a failure or a
	 * heal. A wake-up per batch would cost every call a context switch. */
	wake = r != CF_OK || a->broken || (seal == NULL && a->unsealed == 0);
	if (r == CF_OK) {
		a->seq = seq;
		memcpy(a->chain, chain, 32);
		a->size = size;
		a->written_run += be.n;
		if (be.ob_done > a->ob_written)
			a->ob_written = be.ob_done;
		if (seal != NULL) {
			a->unsealed = 0;
			a->last_seal = cf_mono_ms();
		} else {
			a->unsealed += be.n;
		}
		/* Only a batch that says so ends a break (heal_locked): one begun
		 * before the trail broke (a write that outlived max_wait_ms, a
		 * full queue) leaves it for the next, which counts the lost. */
		if (a->broken && healed != NULL) {
			cf_log_warn("audit: the trail is written again (%llu records could not be "
				    "written meanwhile)", (unsigned long long)*healed);
			/* Lost while the heal was being written: the next one says them. */
			a->lost -= *healed <= a->lost ? *healed : a->lost;
			a->broken = a->lost > 0;
		}
	} else {
		if (be.cut > 0) {
			/* Answered, but their records went with the failed sync. */
			a->seq = seq;
			memcpy(a->chain, chain, 32);
			a->size = size;
			a->written_run -= be.cut <= a->written_run ? be.cut : a->written_run;
			cf_log_error("audit: %llu records written since the trail was last synced are "
				     "cut from it and counted lost: the failed fdatasync may be their "
				     "writeback's", (unsigned long long)be.cut);
		}
		n += be.cut;
		a->lost += n;
		a->failures++;
		metrics_add(M_AUDIT_WRITE_FAILURES, 1);
		metrics_add(M_AUDIT_RECORDS_LOST, n);
		/* Outbox records queued after a failure would overtake the ones it
		 * dropped: all of them are read again from the store, in order. */
		a->ob_gen++;
		a->ob_queued = a->ob_written;
		if (!a->broken)
			cf_log_error("audit: the trail cannot be written: %s", cf_error_detail());
		a->broken = 1;
		snprintf(a->reason, sizeof(a->reason), "%s", cf_error_detail());
	}
	pthread_cond_broadcast(&a->written);
	wake_next_writer_locked(a);
	if (wake)
		pthread_cond_signal(&a->work);
	fire_locked(a);
	if (r == CF_OK && be.anchor) {
		if (a->anchorer_started) {
			/* A later end supersedes one not yet stored, never the
			 * reverse (fire_locked let other writes in meanwhile). */
			if (!a->an_have || be.a_seq > a->an_next.a_seq) {
				a->an_next = be;
				a->an_have = 1;
				pthread_cond_signal(&a->an_cv);
			}
		} else {
			pthread_mutex_unlock(&a->mu);
			/* The start record written, not yet anchored (audit_open). */
			CF_CRASH_POINT("audit.start.written");
			anchor_end(a, &be);
			pthread_mutex_lock(&a->mu);
		}
	}
	return r;
}

static int outbox_enqueue(audit *a, int64_t *max);

/* The anchorer thread, which alone waits on the state store for the trail:
 * it stores the latest end a seal asked for, and reads the outbox (records
 * of changes a failed write left behind) every RETRY_MS, queueing them for
 * the writer. */
static void *
anchorer_main(void *arg)
{
	audit *a = arg;
	struct batch_end be;
	struct timespec until;
	uint64_t last_ob = cf_mono_ms(), since;
	int64_t max;

	/* Anchors and outbox reads are tried again: they give way to another
	 * process's hold of the store (an anchor waiting out SQLite's busy
	 * timeout held every call that needs the store for 5 s, each seal). */
	store_yield(1);
	pthread_mutex_lock(&a->mu);
	for (;;) {
		while (!a->an_have && !a->an_stop) {
			if ((since = cf_mono_ms() - last_ob) < RETRY_MS) {
				cf_deadline_in(&until, (unsigned)(RETRY_MS - since));
				cf_cond_wait_until(&a->an_cv, &a->mu, &until);
				continue;
			}
			last_ob = cf_mono_ms();
			if (a->broken)   /* the writer reads it then */
				continue;
			pthread_mutex_unlock(&a->mu);
			(void)outbox_enqueue(a, &max);
			pthread_mutex_lock(&a->mu);
			if (a->head != NULL && !a->writing)
				pthread_cond_signal(&a->work);
		}
		if (!a->an_have)
			break;
		be = a->an_next;
		a->an_have = 0;
		pthread_mutex_unlock(&a->mu);
		anchor_end(a, &be);
		pthread_mutex_lock(&a->mu);
	}
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

static void heal_locked(audit *a);

/* Take the whole queue and write it (mu held, nobody writing). While the
 * trail is broken, or its start record not written yet, the batch carries
 * them (heal_locked): a plain batch would clear the break with no trace of
 * the records lost meanwhile (a call's own write could win the race with
 * the writer's retry; found by a review). */
static void
write_queue_locked(audit *a)
{
	struct item *batch = a->head;

	if (a->broken || a->pending_start != NULL) {
		heal_locked(a);
		return;
	}
	a->head = NULL;
	a->tail = &a->head;
	a->queued = 0;
	a->writing = 1;
	write_locked(a, batch, cf_mono_ms() - a->last_seal >= SEAL_EVERY_MS ? "" : NULL, NULL,
		     NULL);
}

struct ob_load {
	int64_t after;           /* ids up to here are queued or written */
	unsigned gen;
	int64_t max;             /* the highest id in the outbox */
	struct item *head, **tail;
};

static int
ob_collect(int64_t id, const char *line, void *arg)
{
	struct ob_load *l = arg;
	struct item *it;

	if (id > l->max)
		l->max = id;
	if (id <= l->after)
		return CF_OK;
	if ((it = calloc(1, sizeof(*it))) == NULL || (it->rest = strdup(line)) == NULL) {
		free(it);
		return cf_nomem();
	}
	it->outbox = id;
	it->gen = l->gen;
	*l->tail = it;
	l->tail = &it->next;
	return CF_OK;
}

static void
items_free(struct item *i)
{
	while (i != NULL) {
		struct item *next = i->next;

		free(i->rest);
		free(i);
		i = next;
	}
}

/* Queue the outbox records not queued yet, in id order (mu not held);
 * *max: the highest id in the outbox (0: empty). */
static int
outbox_enqueue(audit *a, int64_t *max)
{
	struct ob_load l;
	int r = CF_OK;

	*max = 0;
	if (a->st == NULL)
		return CF_OK;
	pthread_mutex_lock(&a->ob_mu);
	for (;;) {
		memset(&l, 0, sizeof(l));
		l.tail = &l.head;
		pthread_mutex_lock(&a->mu);
		l.after = a->ob_queued;
		l.gen = a->ob_gen;
		pthread_mutex_unlock(&a->mu);
		if ((r = store_outbox_load(a->st, ob_collect, &l)) != CF_OK) {
			items_free(l.head);
			break;
		}
		pthread_mutex_lock(&a->mu);
		if (l.gen != a->ob_gen) {
			/* A write failed meanwhile: read again from what is written. */
			pthread_mutex_unlock(&a->mu);
			items_free(l.head);
			continue;
		}
		if (l.head != NULL) {
			*a->tail = l.head;
			a->tail = l.tail;
			a->ob_queued = l.max;
		}
		pthread_mutex_unlock(&a->mu);
		*max = l.max;
		break;
	}
	pthread_mutex_unlock(&a->ob_mu);
	return r;
}

/* store_set_committed_hook: a change's record is queued as it commits,
 * before the change is installed, so that no record of a call that saw the
 * change comes before it in the file. Not waited for here: the call's
 * audit_flush_outbox waits (a failure here leaves it to that, or to the
 * anchorer's next read). */
static void
outbox_committed(void *arg)
{
	audit *a = arg;
	int64_t max;
	int broken;

	pthread_mutex_lock(&a->mu);
	broken = a->broken;   /* the writer reads the outbox as it heals */
	pthread_mutex_unlock(&a->mu);
	if (broken || outbox_enqueue(a, &max) != CF_OK) {
		cf_error_clear();
		return;
	}
	pthread_mutex_lock(&a->mu);
	if (a->head != NULL && !a->writing)
		pthread_cond_signal(&a->work);
	pthread_mutex_unlock(&a->mu);
}

/* The writer thread: records that no waiting call writes itself (fail
 * open), seals once idle, the outbox now and then, and retries a broken
 * trail. */
/* While broken, the next write (a retry, or records queued meanwhile when
 * failing open) carries, sealed, what the trail must say of the break: the
 * start record that could not be written, or how many records were lost.
 * Written only so: a heal by a plain batch would leave no trace of them. */
static void
heal_locked(audit *a)
{
	char fields[1024];
	uint64_t said = a->lost;   /* what this heal says: a break ends only with it */
	int r;

	if (a->pending_start != NULL)
		snprintf(fields, sizeof(fields), "%s,\"lost\":%llu", a->pending_start,
			 (unsigned long long)a->lost);
	else
		snprintf(fields, sizeof(fields), ",\"event\":\"resumed\",\"lost\":%llu",
			 (unsigned long long)a->lost);
	a->writing = 1;
	if (a->head != NULL) {
		struct item *batch = a->head;

		a->head = NULL;
		a->tail = &a->head;
		a->queued = 0;
		r = write_locked(a, batch, fields, NULL, &said);
	} else {
		r = write_locked(a, NULL, fields, NULL, &said);
	}
	if (r == CF_OK) {
		free(a->pending_start);
		a->pending_start = NULL;
	}
}

static void *
writer_main(void *arg)
{
	audit *a = arg;
	int64_t max;

	pthread_mutex_lock(&a->mu);
	for (;;) {
		struct timespec until;

		if (a->writing) {
			pthread_cond_wait(&a->written, &a->mu);
		} else if (a->head != NULL && (a->broken || a->pending_start != NULL)) {
			heal_locked(a);
		} else if (a->head != NULL) {
			write_queue_locked(a);
		} else if (a->unsealed > 0 && !a->broken) {
			/* Seal what was written once nothing has been for SEAL_IDLE_MS
			 * (writes do not wake this thread: it looks at when the last
			 * one ended). */
			uint64_t quiet = cf_mono_ms() - a->last_write;

			if (!a->stop && quiet < SEAL_IDLE_MS) {
				cf_deadline_in(&until, (unsigned)(SEAL_IDLE_MS - quiet));
				cf_cond_wait_until(&a->work, &a->mu, &until);
				continue;
			}
			if (a->head != NULL || a->writing)
				continue;
			a->writing = 1;
			write_locked(a, NULL, "", NULL, NULL);
		} else if (a->stop) {
			break;
		} else if (a->broken) {
			/* Every second while broken: the outbox, which a failed write
			 * left behind (while sound, the anchorer reads it), then a
			 * record of what could not be written, sealed, so that a
			 * writable file again heals the trail. */
			cf_deadline_in(&until, RETRY_MS);
			if (cf_cond_wait_until(&a->work, &a->mu, &until) == 0)
				continue;
			pthread_mutex_unlock(&a->mu);
			(void)outbox_enqueue(a, &max);
			pthread_mutex_lock(&a->mu);
			if (!a->broken || a->writing || a->stop)
				continue;
			heal_locked(a);
		} else {
			cf_deadline_in(&until, RETRY_MS);
			cf_cond_wait_until(&a->work, &a->mu, &until);
		}
	}
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

/* ---- opening ---- */

static void *ticker_main(void *arg);   /* with the calls it answers, below */

/* The seal key's public half, to <state_dir>/audit-seal.pub (0644, written
 * whole: a new file renamed over the old one). */
static int
seal_pub(audit *a, const char *state_dir)
{
	cf_buf *pem = cf_buf_new(4096);
	char path[4200], tmp[4220];
	int fd = -1, r;

	snprintf(path, sizeof(path), "%s/" AUDIT_SEAL_PUB, state_dir);
	snprintf(tmp, sizeof(tmp), "%s.new", path);
	if (pem == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = cf_p11_pubkey_pem(a->seal_key, pem)) != CF_OK ||
	    (r = cf_audit_pubkey_parse((const char *)cf_buf_peek(pem), cf_buf_len(pem),
				       &a->pub)) != CF_OK)
		goto out;
	(void)unlink(tmp);
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0 ||
	    fchmod(fd, 0644) != 0 || cf_write_all(fd, cf_buf_peek(pem), cf_buf_len(pem)) != 0 ||
	    fsync(fd) != 0 || rename(tmp, path) != 0) {
		r = cf_error(CF_E_IO, "writing the audit seal's public key to %s: %s", path,
			     strerror(errno));
		(void)unlink(tmp);
	}
out:
	if (fd >= 0)
		close(fd);
	cf_buf_free(pem);
	return r;
}

static int
hmac_check(void *arg, const uint8_t in[40], const uint8_t *mac, size_t len)
{
	return cf_p11_mac_verify(arg, in, 40, mac, len);
}

/*
 * Check the trail against the anchor, cut a torn last line, and say in the
 * start record's fields what was found. Tampering does not stop the daemon:
 * it is recorded (where and what) in the sealed start record, which every
 * later verify reports; the trail goes on from the file's last record.
 */
/* The outbox records found in the file after its anchor, by id, each with
 * the SHA-256 of its text. */
struct seen {
	struct seen_rec {
		int64_t id;
		uint8_t h[32];
	} *v;
	size_t n, cap;
	int failed;              /* out of memory */
};

static void
seen_add(void *arg, int64_t id, const char *rest, size_t len)
{
	struct seen *s = arg;

	if (s->n == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 64;
		struct seen_rec *v = realloc(s->v, cap * sizeof(*v));

		if (v == NULL) {
			s->failed = 1;
			return;
		}
		s->v = v;
		s->cap = cap;
	}
	s->v[s->n].id = id;
	if (EVP_Digest(rest, len, s->v[s->n].h, NULL, EVP_sha256(), NULL) != 1) {
		s->failed = 1;
		return;
	}
	s->n++;
}

static int
seen_cmp(const void *a, const void *b)
{
	const struct seen_rec *x = a, *y = b;

	return x->id < y->id ? -1 : x->id > y->id;
}

/* Walking the outbox in id order: how far its rows are all in the file. */
struct ob_match {
	const struct seen *seen;
	int64_t upto;            /* every row up to this id is in the file */
	int gap;                 /* a row that is not: the rest are written again */
};

static int
ob_match_row(int64_t id, const char *line, void *arg)
{
	struct ob_match *m = arg;
	struct seen_rec key = { .id = id }, *hit;
	uint8_t h[32];

	if (m->gap)
		return CF_OK;
	hit = bsearch(&key, m->seen->v, m->seen->n, sizeof(key), seen_cmp);
	if (hit == NULL || EVP_Digest(line, strlen(line), h, NULL, EVP_sha256(), NULL) != 1 ||
	    memcmp(h, hit->h, 32) != 0)
		m->gap = 1;
	else
		m->upto = id;
	return CF_OK;
}

/* Outbox records already in the file (written, then a crash before the
 * anchor dropped them from the outbox) are not written again: the rows, in
 * id order, up to the first one the file lacks (an id alone is not trusted:
 * a record anyone can chain on, claiming a huge id, would otherwise hide
 * every later change's record; found by a review). */
static int
outbox_written(audit *a, struct seen *seen)
{
	struct ob_match m = { .seen = seen };
	int r;

	if (a->st == NULL || seen->n == 0)
		return CF_OK;
	qsort(seen->v, seen->n, sizeof(*seen->v), seen_cmp);
	if ((r = store_outbox_load(a->st, ob_match_row, &m)) != CF_OK)
		return r;
	a->ob_written = a->ob_queued = m.upto;
	return CF_OK;
}

/* *clean: the store's anchor says the daemon stopped cleanly (the file was
 * then checked to end exactly there). */
static int
recover(audit *a, char *fields, size_t flen, int *clean)
{
	struct store_audit_anchor sa;
	struct cf_audit_anchor an;
	struct cf_audit_verify_opts o;
	struct cf_audit_report rep;
	struct fmt f = { fields, flen, 0, 0 };
	struct seen seen = { 0 };
	const char *state = "none";
	int r, have = 0;

	memset(&o, 0, sizeof(o));
	memset(&an, 0, sizeof(an));
	if (a->st != NULL && (r = store_audit_anchor_get(a->st, &sa)) != CF_E_NOT_FOUND) {
		if (r != CF_OK)
			return r;
		an.seq = sa.seq;
		memcpy(an.chain, sa.chain, 32);
		an.clean = sa.clean;
		o.anchor = &an;
		o.exact = sa.clean;
		have = 1;
		state = sa.clean ? "clean" : "crash";
	}
	/* Seals are checked with the public key (cheap); old HMAC seals are
	 * left to audit_verify (a token call each). */
	o.pub = a->pub;
	o.outbox_seen = seen_add;
	o.outbox_arg = &seen;
	r = cf_audit_verify_file(a->path, &o, &rep);
	if (r == CF_OK && seen.failed)
		r = cf_nomem();
	if (r == CF_OK)
		r = outbox_written(a, &seen);
	free(seen.v);
	if (r != CF_OK)
		return r;
	*clean = have && sa.clean;
	if (rep.torn > 0) {
		int e = ftruncate(a->fd, rep.good_size) != 0 ? errno : 0;

		if (e != 0)
			return cf_error(CF_E_IO, "%s ends in a torn record of %lld bytes that cannot "
					"be cut: %s%s", a->path, (long long)rep.torn, strerror(e),
					e == EPERM ? " (an append-only file cannot be cut: remove "
					"the attribute with chattr -a, or move the file aside)" : "");
		cf_log_warn("audit: %s ended in a torn record (%s); cut off %lld bytes", a->path,
			    rep.ok ? "a crash while writing" : "see below",
			    (long long)rep.torn);
	}
	a->size = rep.good_size;
	a->seq = rep.last_seq;
	memcpy(a->chain, rep.last_chain, 32);
	/* Taken as synced: the start record's fdatasync covers it. */
	a->synced_size = a->size;
	a->synced_seq = a->seq;
	memcpy(a->synced_chain, a->chain, 32);
	put(&f, ",\"event\":\"start\",\"pid\":%d,\"anchor\":\"%s\"", (int)getpid(), state);
	if (have)
		put(&f, ",\"anchored\":%llu", (unsigned long long)an.seq);
	if (rep.ok && have && !sa.clean && rep.beyond_anchor > 0) {
		cf_log_warn("audit: adopted %llu records written after the last anchor (record "
			    "%llu) by a daemon that did not stop cleanly",
			    (unsigned long long)rep.beyond_anchor, (unsigned long long)an.seq);
		put(&f, ",\"adopted\":%llu", (unsigned long long)rep.beyond_anchor);
	}
	if (rep.torn > 0)
		put(&f, ",\"cut_bytes\":%lld", (long long)rep.torn);
	/* No record at all where the store anchors some: the file was moved
	 * aside (the remedy for a trail found altered, or to rotate it), or
	 * removed. A new trail begins, sound by itself; its start record names
	 * the previous one's anchor, with which that file verifies offline.
	 * (Judged as records 1..N removed, every later verify of the new trail
	 * would report that.) */
	if (!rep.ok && have && an.seq > 0 && rep.records == 0 && rep.torn == 0) {
		char h[65];

		cf_hex_encode(an.chain, 32, h);
		cf_log_warn("audit: %s holds no record, where the state store anchors record %llu "
			    "of a trail: a new trail begins, and its start record names the previous "
			    "one (expected after the file was moved aside; if not, it was removed, "
			    "and records 1..%llu exist only in a copy)", a->path,
			    (unsigned long long)an.seq, (unsigned long long)an.seq);
		put(&f, ",\"new_trail\":true,\"previous_anchor\":\"%llu:%s\"",
		    (unsigned long long)an.seq, h);
		rep.ok = 1;
	}
	if (!rep.ok) {
		cf_log_error("ALARM: audit: %s was altered while the daemon was stopped: %s "
			     "(recorded in the start record; `cofferctl audit verify` reports it "
			     "until the file is moved aside)", a->path, rep.reason);
		/* The reason without its "record N: " (tamper_at says where). */
		const char *why = strstr(rep.reason, ": ");

		put(&f, ",\"tamper_at\":%llu,\"tampered\":", (unsigned long long)rep.first_bad);
		put_str(&f, why != NULL ? why + 2 : rep.reason);
	}
	return f.over ? cf_error(CF_E_INTERNAL, "the start record is too long") : CF_OK;
}

int
audit_open(const char *state_dir, cf_p11 *p11, store *st, const struct audit_cfg *cfg,
	   audit **out)
{
	audit *a = calloc(1, sizeof(*a));
	char fields[1024];
	int64_t max;
	int r, e, created = 0, clean = 0;

	if (a == NULL)
		return cf_nomem();
	/* A file-size limit must fail the write (EFBIG), not kill the daemon. */
	signal(SIGXFSZ, SIG_IGN);
	a->cfg = *cfg;
	a->full_warned = -10;      /* the first full queue is said at once */
	if (a->cfg.max_queued == 0)
		a->cfg.max_queued = AUDIT_MAX_QUEUED_DEFAULT;
	a->st = st;
	a->fd = -1;
	a->tail = &a->head;
	a->last_seal = cf_mono_ms();
	pthread_mutex_init(&a->mu, NULL);
	pthread_mutex_init(&a->ob_mu, NULL);
	pthread_mutex_init(&a->anchor_mu, NULL);
	pthread_cond_init(&a->work, NULL);
	pthread_cond_init(&a->an_cv, NULL);
	pthread_cond_init(&a->tk_cv, NULL);
	pthread_cond_init(&a->written, NULL);
	snprintf(a->path, sizeof(a->path), "%s/audit.log", state_dir);
	if ((r = cf_p11_key_ensure(p11, AUDIT_SEAL_KEY, 1, CF_KEY_EC_P256, &a->seal_key,
				   &created)) != CF_OK)
		goto fail;
	if (created)
		cf_log_info("audit: created the audit seal key in the token");
	if ((r = seal_pub(a, state_dir)) != CF_OK)
		goto fail;
	if ((r = cf_p11_key_open(p11, AUDIT_KEY, 1, &a->hmac_key)) != CF_OK &&
	    r != CF_E_NOT_FOUND)
		goto fail;
	if ((a->fd = open(a->path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) < 0) {
		r = cf_error(CF_E_IO, "cannot open the audit trail %s: %s", a->path,
			     strerror(errno));
		goto fail;
	}
	if ((r = recover(a, fields, sizeof(fields), &clean)) != CF_OK)
		goto fail;
	/* A clean stop's anchor says the file ends exactly there: it goes
	 * before anything is written, or a crash before this start's own
	 * anchor would leave records after a "clean" end, which the next start
	 * (and every verify) would call an alteration. */
	if (clean) {
		struct store_audit_anchor an = { .seq = a->seq, .clean = 0 };

		memcpy(an.chain, a->chain, 32);
		an.time = (int64_t)time(NULL);
		if ((r = store_audit_anchor_put(st, &an, 0)) != CF_OK) {
			r = cf_error(r, "audit: cannot record in the state store that the trail is "
				     "in use (before writing this start's record): %s",
				     cf_error_detail());
			goto fail;
		}
	}
	/* The anchor in use, nothing written yet (after a clean stop). */
	CF_CRASH_POINT("audit.start.in-use");
	/* The outbox first (changes committed before this start), then the
	 * start record, sealed and anchored. */
	if ((r = outbox_enqueue(a, &max)) != CF_OK)
		goto fail;
	pthread_mutex_lock(&a->mu);
	{
		struct item *batch = a->head;

		a->head = NULL;
		a->tail = &a->head;
		a->queued = 0;
		a->writing = 1;
		if (write_locked(a, batch, fields, NULL, NULL) != CF_OK &&
		    (a->pending_start = strdup(fields)) == NULL)
			r = cf_nomem();
	}
	pthread_mutex_unlock(&a->mu);
	if (r != CF_OK)
		goto fail;
	if ((e = pthread_create(&a->anchorer, NULL, anchorer_main, a)) != 0) {
		r = cf_error(CF_E_INTERNAL, "cannot start the audit anchorer's thread: %s",
			     strerror(e));
		goto fail;
	}
	a->anchorer_started = 1;
	if ((e = pthread_create(&a->writer, NULL, writer_main, a)) != 0) {
		r = cf_error(CF_E_INTERNAL, "cannot start the audit writer's thread: %s",
			     strerror(e));
		goto fail;
	}
	a->writer_started = 1;
	if (st != NULL)
		store_set_committed_hook(st, outbox_committed, a);
	if (audit_hands_off(a)) {
		if ((e = pthread_create(&a->ticker, NULL, ticker_main, a)) != 0) {
			r = cf_error(CF_E_INTERNAL, "cannot start the audit ticker's thread: %s",
				     strerror(e));
			goto fail;
		}
		a->ticker_started = 1;
	}
	*out = a;
	return CF_OK;
fail:
	audit_close(a);
	return r;
}

/* Stop one of the trail's threads: its flag set, woken, joined. */
static void
stop_thread(audit *a, int *flag, pthread_cond_t *cv, pthread_t t)
{
	pthread_mutex_lock(&a->mu);
	*flag = 1;
	pthread_cond_signal(cv);
	pthread_mutex_unlock(&a->mu);
	pthread_join(t, NULL);
}

void
audit_close(audit *a)
{
	char fields[128];
	int64_t max;

	if (a == NULL)
		return;
	if (a->st != NULL)
		store_set_committed_hook(a->st, NULL, NULL);
	if (a->ticker_started)
		stop_thread(a, &a->tk_stop, &a->tk_cv, a->ticker);
	if (a->writer_started)
		stop_thread(a, &a->stop, &a->work, a->writer);
	if (a->anchorer_started) {
		/* It stores what it was given; the stop record's anchor is ours. */
		stop_thread(a, &a->an_stop, &a->an_cv, a->anchorer);
		a->anchorer_started = 0;
	}
	if (a->writer_started) {
		/* What is left, the outbox, a seal, then the stop record (itself a
		 * seal: dropping it shows, since the record before it is sealed),
		 * anchored as a clean stop. */
		(void)outbox_enqueue(a, &max);
		pthread_mutex_lock(&a->mu);
		if (a->broken || a->pending_start != NULL) {
			heal_locked(a);   /* with what the trail must say of the break */
		} else if (a->head != NULL || a->unsealed > 0) {
			struct item *batch = a->head;

			a->head = NULL;
			a->tail = &a->head;
			a->queued = 0;
			a->writing = 1;
			write_locked(a, batch, "", NULL, NULL);
		}
		snprintf(fields, sizeof(fields), ",\"event\":\"stop\",\"records\":%llu%s",
			 (unsigned long long)a->written_run + 1, a->broken ? ",\"lost\":1" : "");
		if (a->broken) {
			cf_log_error("audit: stopping without a clean anchor: the trail cannot be "
				     "written (%s)", a->reason);
		} else {
			a->writing = 1;
			a->write_began = cf_mono_ms();
			pthread_mutex_unlock(&a->mu);
			{
				struct batch_end be = { .seal = fields, .clean = 1, .gen = a->ob_gen,
							.ob_done = a->ob_written };

				if (write_batch(a, NULL, &be, &a->seq, a->chain, &a->size) != CF_OK)
					cf_log_error("audit: cannot write the stop record: %s",
						     cf_error_detail());
				else
					anchor_end(a, &be);
			}
			pthread_mutex_lock(&a->mu);
			a->writing = 0;
		}
		pthread_mutex_unlock(&a->mu);
	}
	items_free(a->head);
	if (a->fd >= 0)
		close(a->fd);
	free(a->pending_start);
	EVP_PKEY_free(a->pub);
	cf_p11_key_free(a->seal_key);
	cf_p11_key_free(a->hmac_key);
	pthread_cond_destroy(&a->work);
	pthread_cond_destroy(&a->written);
	pthread_cond_destroy(&a->an_cv);
	pthread_cond_destroy(&a->tk_cv);
	pthread_mutex_destroy(&a->anchor_mu);
	pthread_mutex_destroy(&a->ob_mu);
	pthread_mutex_destroy(&a->mu);
	free(a);
}

/* ---- calls ---- */

/* The detail of a call refused for its record (mu held). */
static int
refused_locked(audit *a, const char *what)
{
	char why[sizeof(a->reason)];

	snprintf(why, sizeof(why), "%s", a->reason);
	/* The reason names the file; the message must fit CF_ERROR_DETAIL_MAX. */
	return cf_error(CF_E_UNAVAILABLE, "the audit trail cannot be written (%s): %s; this "
			"daemon fails closed (audit.failure = closed)", why, what);
}

/* Mark the trail broken after a wait past max_wait_ms (mu held). */
static void
timed_out_locked(audit *a)
{
	if (!a->broken)
		cf_log_error("audit: a record waited more than %u ms", a->cfg.max_wait_ms);
	a->broken = 1;
	snprintf(a->reason, sizeof(a->reason), "a record waited more than %u ms to be written",
		 a->cfg.max_wait_ms);
}

/* A write still not done after max_wait_ms (a disk that hangs, such as a
 * frozen file system) breaks the trail now rather than when it returns: the
 * call stuck in it cannot time out, and no other call may be waiting to
 * notice, so health and new calls would otherwise see a sound trail for as
 * long as the disk hangs (mu held). */
static void
check_hung_locked(audit *a)
{
	if (a->writing && !a->broken && cf_mono_ms() - a->write_began > a->cfg.max_wait_ms)
		timed_out_locked(a);
}

int
audit_admit(audit *a)
{
	int r = CF_OK;
	time_t now;

	pthread_mutex_lock(&a->mu);
	check_hung_locked(a);
	if (a->broken && !a->cfg.fail_open) {
		r = refused_locked(a, "calls are refused until it can");
	} else if (a->broken && (now = time(NULL)) - a->last_alarm >= ALARM_EVERY_S) {
		a->last_alarm = now;
		cf_log_error("ALARM: audit: the trail cannot be written (%s); calls go on "
			     "unrecorded (audit.failure = open)", a->reason);
	}
	pthread_mutex_unlock(&a->mu);
	return r;
}

int
audit_fails_open(const audit *a)
{
	return a->cfg.fail_open;
}

int
audit_healthy(audit *a)
{
	int ok;

	pthread_mutex_lock(&a->mu);
	check_hung_locked(a);
	ok = !a->broken || a->cfg.fail_open;
	pthread_mutex_unlock(&a->mu);
	return ok;
}

/* A record could not be queued for want of memory (mu held): lost, and
 * failing closed, the call's refusal. */
static int
lost_locked(audit *a)
{
	a->lost++;
	a->broken = 1;
	snprintf(a->reason, sizeof(a->reason), "out of memory");
	return a->cfg.fail_open ? CF_OK : refused_locked(a, "this call's record is not written");
}

int
audit_group_new(struct audit_group **out)
{
	if ((*out = calloc(1, sizeof(**out))) == NULL)
		return cf_nomem();
	(*out)->refs = 1;
	pthread_cond_init(&(*out)->done, NULL);
	return CF_OK;
}

int
audit_record_in(audit *a, const struct audit_event *ev, struct audit_group *g)
{
	char rec[CF_AUDIT_LINE_MAX - 128];
	struct item *it;
	int r = CF_OK;

	if (audit_format_change(ev, rec, sizeof(rec)) < 0) {
		/* Only an oversized field does this; the call is still recorded. */
		struct audit_event cut = *ev;

		cut.request_id = "(too long)";
		cut.replay_of = NULL;
		(void)audit_format_change(&cut, rec, sizeof(rec));
	}
	pthread_mutex_lock(&a->mu);
	if (a->cfg.fail_open && a->queued >= a->cfg.max_queued) {
		/* The disk has not taken the queue: counted lost, as records that
		 * could not be written (the sealed record that heals says how many). */
		a->lost++;
		a->broken = 1;
		snprintf(a->reason, sizeof(a->reason), "%zu records wait for the disk "
			 "([audit] max_queued)", a->queued);
		metrics_add(M_AUDIT_RECORDS_LOST, 1);
		if ((int64_t)(cf_mono_ms() / 1000) - a->full_warned >= 10) {
			a->full_warned = (int64_t)(cf_mono_ms() / 1000);
			cf_log_error("ALARM: audit: %zu records wait for the disk; more are not kept "
				     "([audit] max_queued, failing open): counted lost", a->queued);
		}
		goto out;
	}
	if ((it = calloc(1, sizeof(*it))) == NULL || (it->rest = strdup(rec)) == NULL) {
		free(it);
		if ((r = lost_locked(a)) != CF_OK)
			g->status = r;
		goto out;
	}
	*a->tail = it;
	a->tail = &it->next;
	a->queued++;
	if (a->cfg.fail_open) {
		pthread_cond_signal(&a->work);
	} else {
		it->group = g;
		g->pending++;
		g->records++;
		g->refs++;
	}
out:
	pthread_mutex_unlock(&a->mu);
	return r;
}

/* What a group's calls are told: CF_OK once all its records are written
 * (mu held). */
static int
group_result_locked(audit *a, const struct audit_group *g)
{
	if (g->status == CF_OK && g->pending == 0)
		return CF_OK;
	return refused_locked(a, g->records > 1 ?
			      "the records of the calls answered with this one (a stream's "
			      "frame) are not all written, so its result is withheld" :
			      "this call's record is not written, so its result is withheld");
}

int
audit_group_end(audit *a, struct audit_group *g)
{
	struct timespec until;
	int r, e;

	pthread_mutex_lock(&a->mu);
	cf_deadline_in(&until, a->cfg.max_wait_ms);
	/* Group commit: the first caller to find nobody writing writes every
	 * queued record, its own included; the others wait. */
	while (g->pending > 0) {
		if (!a->writing) {
			write_queue_locked(a);
			continue;
		}
		g->waiting = 1;
		e = cf_cond_wait_until(&g->done, &a->mu, &until);
		g->waiting = 0;
		if (e != 0 && g->pending > 0) {
			timed_out_locked(a);   /* its records, still queued, are not ours now */
			/* It may have been the one woken to write the next batch. */
			if (!a->writing && a->head != NULL)
				pthread_cond_signal(&a->work);
			break;
		}
	}
	r = group_result_locked(a, g);
	group_unref_locked(g);
	pthread_mutex_unlock(&a->mu);
	return r;
}

int
audit_hands_off(const audit *a)
{
	return !a->cfg.fail_open && !a->cfg.durability_os;
}

void
audit_group_end_async(audit *a, struct audit_group *g, audit_done_fn cb, void *arg)
{
	char text[CF_ERROR_DETAIL_MAX];
	int r;

	pthread_mutex_lock(&a->mu);
	if (g->pending > 0) {
		g->cb = cb;
		g->cb_arg = arg;
		g->deadline = cf_mono_ms() + a->cfg.max_wait_ms;
		g->anext = a->async;
		if (a->async != NULL)
			a->async->aprev = &g->anext;
		g->aprev = &a->async;
		a->async = g;
		/* The writer thread writes it (and every record queued meanwhile). */
		if (!a->writing)
			pthread_cond_signal(&a->work);
		group_unref_locked(g);
		pthread_mutex_unlock(&a->mu);
		return;
	}
	r = group_outcome_locked(a, g, text);
	group_unref_locked(g);
	pthread_mutex_unlock(&a->mu);
	cb(arg, r, text);
}

/* Refuse the answers handed off (audit_group_end_async) whose records have
 * waited past max_wait_ms: on a disk that hangs, no write returns to say
 * so (mu held; their callbacks run outside it). */
static void
tick_locked(audit *a)
{
	uint64_t now = cf_mono_ms();
	struct audit_group *g, *next;

	check_hung_locked(a);
	for (g = a->async; g != NULL; g = next) {
		next = g->anext;
		if (g->deadline > now)
			continue;
		timed_out_locked(a);   /* as a call that waited: its records are not ours now */
		ready_locked(a, g);
	}
	fire_locked(a);
}

/* The ticker thread, on a trail whose writer answers calls. It never waits
 * on the disk, the state store or a handler (it only sends the refusals),
 * so neither a write stuck in the kernel, nor a store that hangs, nor a
 * long call on every worker delays a refusal past max_wait_ms + TICK_MS. */
static void *
ticker_main(void *arg)
{
	audit *a = arg;
	uint64_t next = cf_mono_ms() + TICK_MS, now;
	struct timespec until;

	pthread_mutex_lock(&a->mu);
	while (!a->tk_stop) {
		if ((now = cf_mono_ms()) >= next) {
			tick_locked(a);
			next = now + TICK_MS;
			continue;
		}
		cf_deadline_in(&until, (unsigned)(next - now));
		cf_cond_wait_until(&a->tk_cv, &a->mu, &until);
	}
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

int
audit_record(audit *a, const struct audit_event *ev)
{
	struct audit_group *g;
	int r;

	if (audit_group_new(&g) != CF_OK) {
		pthread_mutex_lock(&a->mu);
		r = lost_locked(a);
		pthread_mutex_unlock(&a->mu);
		return r;
	}
	if ((r = audit_record_in(a, ev, g)) != CF_OK) {
		pthread_cond_destroy(&g->done);
		free(g);   /* nothing was queued: no record holds it */
		return r;
	}
	return audit_group_end(a, g);
}

int
audit_flush_outbox(audit *a)
{
	struct timespec until;
	uint64_t fails;
	int64_t max;
	int r;

	pthread_mutex_lock(&a->mu);
	fails = a->failures;
	pthread_mutex_unlock(&a->mu);
	if ((r = outbox_enqueue(a, &max)) != CF_OK) {
		char why[CF_ERROR_DETAIL_MAX];

		snprintf(why, sizeof(why), "%s", cf_error_detail());
		cf_log_error("audit: cannot read the audit outbox: %s", why);
		return a->cfg.fail_open ? CF_OK :
			cf_error(CF_E_UNAVAILABLE, "the audit trail cannot take the change's record "
				 "(%s); it stays in the outbox", why);
	}
	pthread_mutex_lock(&a->mu);
	cf_deadline_in(&until, a->cfg.max_wait_ms ? a->cfg.max_wait_ms : 5000);
	while (a->ob_written < max && a->failures == fails) {
		if (!a->writing && a->head != NULL) {
			write_queue_locked(a);
			continue;
		}
		if (cf_cond_wait_until(&a->written, &a->mu, &until) != 0 &&
		    a->ob_written < max) {
			timed_out_locked(a);
			break;
		}
	}
	r = a->ob_written >= max || a->cfg.fail_open ? CF_OK :
		/* A retry without the call's idempotency key would make the
		 * change again (before, the text advised "retry" to every call). */
		refused_locked(a, "the change was made and its record kept in the state store: "
			       "retry only with its idempotency key");
	pthread_mutex_unlock(&a->mu);
	return r;
}

/* ---- reading ---- */

void
audit_lines_free(char **lines, size_t count)
{
	cf_audit_lines_free(lines, count);
}

int
audit_tail(audit *a, size_t n, char ***lines, size_t *count)
{
	size_t want = n * CF_AUDIT_LINE_MAX, len;
	struct stat st;
	off_t size, from;
	char *buf, *p, **out;
	size_t k = 0;

	/* The file as it is (someone may have cut it), not as last written. */
	if (fstat(a->fd, &st) != 0)
		return cf_error(CF_E_IO, "reading %s: %s", a->path, strerror(errno));
	size = st.st_size;
	from = size > (off_t)want ? size - (off_t)want : 0;
	len = (size_t)(size - from);
	if ((buf = malloc(len + 1)) == NULL || (out = calloc(n ? n : 1, sizeof(*out))) == NULL) {
		free(buf);
		return cf_nomem();
	}
	{
		ssize_t got = pread(a->fd, buf, len, from);

		if (got < 0) {
			free(buf);
			free(out);
			return cf_error(CF_E_IO, "reading %s: %s", a->path, strerror(errno));
		}
		len = (size_t)got;
	}
	/* A last line without its newline is a batch still being written (or
	 * one about to be cut back): not a record yet. */
	while (len > 0 && buf[len - 1] != '\n')
		len--;
	buf[len] = '\0';
	/* Back from the end: the last n complete lines. */
	p = buf + len;
	while (k < n && p > buf) {
		char *start = p - 1;

		while (start > buf && start[-1] != '\n')
			start--;
		if (start == buf && from > 0)
			break;   /* a partial first line */
		p[-1] = '\0';
		if ((out[k] = strdup(start)) == NULL) {
			audit_lines_free(out, k);
			free(buf);
			return cf_nomem();
		}
		k++;
		p = start;
	}
	free(buf);
	for (size_t i = 0; i < k / 2; i++) {
		char *t = out[i];

		out[i] = out[k - 1 - i];
		out[k - 1 - i] = t;
	}
	*lines = out;
	*count = k;
	return CF_OK;
}

int
audit_verify(audit *a, struct cf_audit_report *rep)
{
	struct cf_audit_verify_opts o;
	struct cf_audit_anchor end;
	struct stat st;
	int r;

	/* The daemon knows exactly where it last wrote: the strictest anchor. */
	memset(&o, 0, sizeof(o));
	memset(&end, 0, sizeof(end));
	pthread_mutex_lock(&a->mu);
	end.seq = a->seq;
	memcpy(end.chain, a->chain, 32);
	o.limit = a->size;
	pthread_mutex_unlock(&a->mu);
	o.pub = a->pub;
	o.anchor = end.seq > 0 ? &end : NULL;
	o.exact = 1;
	o.hmac_verify = a->hmac_key != NULL ? hmac_check : NULL;
	o.hmac_arg = a->hmac_key;
	if ((r = cf_audit_verify_file(a->path, &o, rep)) != CF_OK || !rep->ok)
		return r;
	/* Read up to where the daemon last wrote (a batch may be going on):
	 * bytes past it while nothing is being written were put there by
	 * another process (before, unseen until the daemon wrote again). */
	pthread_mutex_lock(&a->mu);
	if (!a->writing && fstat(a->fd, &st) == 0 && st.st_size > a->size) {
		rep->ok = 0;
		rep->first_bad = a->seq + 1;
		snprintf(rep->reason, sizeof(rep->reason), "record %llu: %lld bytes follow record "
			 "%llu, the last the daemon wrote: another process appended to the file",
			 (unsigned long long)a->seq + 1, (long long)(st.st_size - a->size),
			 (unsigned long long)a->seq);
	}
	pthread_mutex_unlock(&a->mu);
	return CF_OK;
}
