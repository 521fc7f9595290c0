/* iowatch.c — disk operations in flight (iowatch.h). */
#include "iowatch.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cf_status.h"
#include "cf_time.h"

/* More than the daemon ever has in flight (one per thread at most). */
#define SLOTS 64

/* A slot being filled in: taken, not yet published. */
#define CLAIMED UINT64_MAX

static struct {
	_Atomic uint64_t began;          /* CLOCK_MONOTONIC ms; 0: free; CLAIMED */
	_Atomic(const char *) what;
	_Atomic int remote;
	_Atomic unsigned limit;          /* ms; 0: limit_ms */
} slots[SLOTS];

static _Atomic unsigned limit_ms = 2000;
static _Atomic(const char *) gave_up;    /* a remote what given up (iowatch_end) */

static uint64_t
now_ms(void)
{
	return cf_mono_ms() + 1;   /* never 0: a slot's "free" */
}

void
iowatch_set_limit(unsigned ms)
{
	atomic_store(&limit_ms, ms);
}

unsigned
iowatch_limit(void)
{
	return atomic_load(&limit_ms);
}

static unsigned
slot_limit(int i)
{
	unsigned l = atomic_load(&slots[i].limit);

	return l != 0 ? l : atomic_load(&limit_ms);
}

static int
begin(const char *what, int remote, unsigned limit)
{
	uint64_t now = now_ms();

	for (int i = 0; i < SLOTS; i++) {
		uint64_t free_slot = 0;

		/* Claimed, filled in, then published: a reader never sees a
		 * start time without its name and kind. */
		if (atomic_load_explicit(&slots[i].began, memory_order_relaxed) == 0 &&
		    atomic_compare_exchange_strong(&slots[i].began, &free_slot, CLAIMED)) {
			atomic_store(&slots[i].remote, remote);
			atomic_store(&slots[i].limit, limit);
			atomic_store(&slots[i].what, what);
			atomic_store(&slots[i].began, now);
			return i;
		}
	}
	return -1;
}

int
iowatch_begin(const char *what)
{
	return begin(what, 0, 0);
}

int
iowatch_begin_remote(const char *what)
{
	return begin(what, 1, 0);
}

int
iowatch_begin_remote_within(const char *what, unsigned ms)
{
	return begin(what, 1, ms);
}

void
iowatch_end(int slot, int outcome)
{
	const char *w, *g;
	int in_time, remote;

	if (slot < 0)
		return;
	w = atomic_load(&slots[slot].what);
	g = atomic_load(&gave_up);
	remote = atomic_load(&slots[slot].remote);
	in_time = now_ms() - atomic_load(&slots[slot].began) < slot_limit(slot);
	/* Done in time: what it works on answers again. */
	if (outcome == IOWATCH_OK && in_time && g != NULL && w != NULL && strcmp(g, w) == 0)
		atomic_compare_exchange_strong(&gave_up, &g, NULL);
	atomic_store(&slots[slot].what, NULL);
	atomic_store(&slots[slot].began, 0);
	/* Remote names only: they are literals, and a local operation that
	 * hangs is seen while it does. */
	if (outcome != IOWATCH_OK && !in_time && remote && w != NULL)
		atomic_store(&gave_up, w);
}

/* An operation in flight past the limit (local ones only, or any), or with
 * any, one given up; its name to what. */
static int
hung(int any, char *what, size_t len)
{
	uint64_t now = now_ms();
	const char *g = atomic_load(&gave_up);

	if (any && g != NULL) {
		snprintf(what, len, "%s", g);
		return 1;
	}
	for (int i = 0; i < SLOTS; i++) {
		uint64_t b = atomic_load(&slots[i].began);
		const char *w;

		/* b > now: begun after now was read. */
		if (b == 0 || b == CLAIMED || b > now || now - b <= slot_limit(i) ||
		    (!any && atomic_load(&slots[i].remote)))
			continue;
		w = atomic_load(&slots[i].what);
		/* Still the same operation: w is its (or NULL, not yet set). */
		if (atomic_load(&slots[i].began) != b)
			continue;
		snprintf(what, len, "%s", w != NULL ? w : "a file of the state directory");
		return 1;
	}
	return 0;
}

int
iowatch_hung(char *what, size_t len)
{
	return hung(1, what, len);
}

int
iowatch_given_up(const char *what)
{
	const char *g = atomic_load(&gave_up);

	return g != NULL && strcmp(g, what) == 0;
}

int
iowatch_admit(void)
{
	char what[512];

	if (!hung(0, what, sizeof(what)))
		return CF_OK;
	return cf_error(CF_E_UNAVAILABLE, "the state does not answer: an operation on %s has not "
			"returned in %u ms (a frozen file system, a lost device or a server that "
			"hangs?); calls are refused until it does", what, iowatch_limit());
}

int
iowatch_lock(pthread_mutex_t *mu)
{
	struct timespec until;

	cf_deadline_in(&until, iowatch_limit());
	return cf_mutex_lock_until(mu, &until);
}
