/*
 * share.h — idle threads that help run the items of a job its owner runs
 * too: a pipelined stream's frame arrives on one worker, and its requests
 * would otherwise run one after the other on that core while the others
 * idle. The owner offers the job and works through it; a helper that
 * wakes in time takes items from the same counter. One wake-up per job,
 * none per item; and none for items that run shorter than a wake-up costs
 * (timed as they run). A batch's items (handlers_batch.c) are shared the
 * same way, its worker waiting for the last of them.
 */
#ifndef COFFER_SHARE_H
#define COFFER_SHARE_H

#include <stdatomic.h>
#include <stddef.h>

struct share_job {
	/* Run item k (0 .. n-1); each runs exactly once, on any thread. */
	void (*run)(struct share_job *j, size_t k);
	/* After the last item has run: once, by the thread that ran it. */
	void (*finish)(struct share_job *j);
	/* Once nobody holds the job any more (after finish): free it. */
	void (*release)(struct share_job *j);
	size_t n;
	/* The time of such an item (ns), kept by share_run across the jobs
	 * that share it (a stream's: one caller's requests tend to be alike):
	 * NULL, or set to SHARE_ITEM_NS_FIRST before the first. */
	atomic_uint_fast64_t *item_ns;
	/* share_run's; the caller leaves them alone. */
	atomic_size_t next, ran;
	atomic_uint refs;
	struct share_job *qnext;
	struct share_wait *wait;   /* share_run_sync's */
};

typedef struct share share;

/* Items shorter than this are not offered: a helper's wake-up, and the
 * token's locks it then contends for, cost more than it takes over. HMACs
 * in SoftHSM (~15 us) ran 18% faster kept on their owner (8 callers x 16
 * in flight, 2 cores, four pairs); ECDSA signatures (~60 us) ran 10-15%
 * slower. */
#define SHARE_MIN_ITEM_NS 30000u
/* What a new estimate (share_job.item_ns) starts at: shared until its
 * items are timed. */
#define SHARE_ITEM_NS_FIRST SHARE_MIN_ITEM_NS

/* Start `helpers` threads (0: jobs run on their owners only). */
int share_new(unsigned helpers, share **out);
/* Stop the helpers. Every job has run: share_run returns only once each
 * of its items is taken, and a helper finishes what it took. Accepts NULL. */
void share_free(share *sh);

/* Offer j (run, finish, release, n and item_ns set) to the helpers when
 * it has more than one item and its kind of item (item_ns; NULL: any) has
 * lately taken long enough to be worth a helper's wake-up, and run its
 * items until none is left. */
void share_run(share *sh, struct share_job *j);
/* share_run, then wait until every item has run and no helper holds j any
 * more, so that j and what its items write may live on the caller's stack
 * (a batch's items, answered together). Sets j's finish and release. */
void share_run_sync(share *sh, struct share_job *j);
/* Keep j past its finish (which hands its results on to be completed
 * later): release waits for the matching share_put. */
void share_hold(struct share_job *j);
void share_put(struct share_job *j);

#endif
