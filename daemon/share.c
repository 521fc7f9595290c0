#include "share.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cf_log.h"
#include "cf_status.h"
#include "cf_time.h"

#define SHARE_MAX_HELPERS 16

struct share {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct share_job *head, **tail;   /* offered, not yet taken */
	int stopping;
	unsigned nthreads;
	pthread_t threads[SHARE_MAX_HELPERS];
};

void
share_hold(struct share_job *j)
{
	atomic_fetch_add(&j->refs, 1);
}

void
share_put(struct share_job *j)
{
	if (atomic_fetch_sub(&j->refs, 1) == 1)
		j->release(j);
}

/* Take items until none is left. With `timed`, the quickest of them goes
 * into j->item_ns: the running mean, over the last ~4 runs, of the
 * quickest item of each (a thread preempted mid-item does not count; an
 * estimate, updated without a lock). */
static void
work(struct share_job *j, int timed)
{
	atomic_uint_fast64_t *est = timed ? j->item_ns : NULL;
	uint64_t quickest = UINT64_MAX, mean;
	size_t k;

	while ((k = atomic_fetch_add(&j->next, 1)) < j->n) {
		uint64_t t0 = est != NULL ? cf_mono_ns() : 0, dt;

		j->run(j, k);
		if (est != NULL && (dt = cf_mono_ns() - t0) < quickest)
			quickest = dt;
		if (atomic_fetch_add(&j->ran, 1) + 1 == j->n)
			j->finish(j);
	}
	if (quickest != UINT64_MAX) {
		mean = atomic_load_explicit(est, memory_order_relaxed);
		atomic_store_explicit(est, mean - mean / 4 + quickest / 4, memory_order_relaxed);
	}
}

static void *
helper_main(void *arg)
{
	share *sh = arg;

	pthread_mutex_lock(&sh->mu);
	for (;;) {
		struct share_job *j;

		while (sh->head == NULL && !sh->stopping)
			pthread_cond_wait(&sh->cv, &sh->mu);
		if ((j = sh->head) == NULL)
			break;
		if ((sh->head = j->qnext) == NULL)
			sh->tail = &sh->head;
		pthread_mutex_unlock(&sh->mu);
		work(j, 1);   /* nothing left by now: the owner took it all */
		share_put(j);
		pthread_mutex_lock(&sh->mu);
	}
	pthread_mutex_unlock(&sh->mu);
	return NULL;
}

int
share_new(unsigned helpers, share **out)
{
	share *sh = calloc(1, sizeof(*sh));
	int e = 0;

	if (sh == NULL)
		return cf_nomem();
	pthread_mutex_init(&sh->mu, NULL);
	pthread_cond_init(&sh->cv, NULL);
	sh->tail = &sh->head;
	if (helpers > SHARE_MAX_HELPERS)
		helpers = SHARE_MAX_HELPERS;
	for (; sh->nthreads < helpers; sh->nthreads++)
		if ((e = pthread_create(&sh->threads[sh->nthreads], NULL, helper_main, sh)) != 0)
			break;
	/* Fewer helpers: jobs still run on their owners, on fewer cores. */
	if (sh->nthreads < helpers)
		cf_log_warn("started %u of the %u helper threads that spread frames and batches "
			    "over the cores (%s)", sh->nthreads, helpers, strerror(e));
	*out = sh;
	return CF_OK;
}

void
share_free(share *sh)
{
	if (sh == NULL)
		return;
	pthread_mutex_lock(&sh->mu);
	sh->stopping = 1;
	pthread_cond_broadcast(&sh->cv);
	pthread_mutex_unlock(&sh->mu);
	for (unsigned i = 0; i < sh->nthreads; i++)
		pthread_join(sh->threads[i], NULL);
	/* Offered but never taken: their owners ran them. */
	while (sh->head != NULL) {
		struct share_job *j = sh->head;

		sh->head = j->qnext;
		share_put(j);
	}
	pthread_cond_destroy(&sh->cv);
	pthread_mutex_destroy(&sh->mu);
	free(sh);
}

/* Ready j and offer it to the helpers when share.h's rules say so; whether
 * it is timed (helpers exist). */
static int
offer(share *sh, struct share_job *j)
{
	int helped = sh != NULL && sh->nthreads > 0;

	atomic_init(&j->next, 0);
	atomic_init(&j->ran, 0);
	atomic_init(&j->refs, 1);
	j->qnext = NULL;
	if (helped && j->n > 1 && (j->item_ns == NULL ||
	    atomic_load_explicit(j->item_ns, memory_order_relaxed) >= SHARE_MIN_ITEM_NS)) {
		atomic_fetch_add(&j->refs, 1);   /* the queue's, then its taker's */
		pthread_mutex_lock(&sh->mu);
		*sh->tail = j;
		sh->tail = &j->qnext;
		pthread_cond_signal(&sh->cv);
		pthread_mutex_unlock(&sh->mu);
	}
	return helped;
}

void
share_run(share *sh, struct share_job *j)
{
	work(j, offer(sh, j));
	share_put(j);
}

/* Take j back if no helper has taken it yet (its owner ran every item):
 * nobody waits for a helper busy elsewhere, and a helper that runs a
 * batch itself does not wait for its own queue. */
static void
withdraw(share *sh, struct share_job *j)
{
	struct share_job **p;

	pthread_mutex_lock(&sh->mu);
	for (p = &sh->head; *p != NULL && *p != j; p = &(*p)->qnext)
		;
	if (*p == NULL) {
		pthread_mutex_unlock(&sh->mu);
		return;
	}
	if ((*p = j->qnext) == NULL)
		sh->tail = p;
	pthread_mutex_unlock(&sh->mu);
	share_put(j);   /* the queue's */
}

struct share_wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int released;
};

static void
sync_finish(struct share_job *j)
{
	(void)j;
}

static void
sync_release(struct share_job *j)
{
	struct share_wait *w = j->wait;

	pthread_mutex_lock(&w->mu);
	w->released = 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

void
share_run_sync(share *sh, struct share_job *j)
{
	struct share_wait w = { .released = 0 };

	pthread_mutex_init(&w.mu, NULL);
	pthread_cond_init(&w.cv, NULL);
	j->finish = sync_finish;
	j->release = sync_release;
	j->wait = &w;
	work(j, offer(sh, j));
	/* More than the owner's reference: still queued, or a helper's. */
	if (atomic_load(&j->refs) > 1)
		withdraw(sh, j);
	share_put(j);
	/* Its owner took the last item: a helper may still be running one. */
	pthread_mutex_lock(&w.mu);
	while (!w.released)
		pthread_cond_wait(&w.cv, &w.mu);
	pthread_mutex_unlock(&w.mu);
	pthread_cond_destroy(&w.cv);
	pthread_mutex_destroy(&w.mu);
}
