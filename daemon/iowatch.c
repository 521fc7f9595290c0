/* iowatch.c — disk operations in flight (iowatch.h). */
#include "iowatch.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "cf_status.h"
#include "cf_time.h"

/* More than the daemon ever has in flight (one per thread at most). */
#define SLOTS 64

static struct {
	_Atomic uint64_t began;          /* CLOCK_MONOTONIC ms; 0: free */
	_Atomic(const char *) what;
} slots[SLOTS];

static _Atomic unsigned limit_ms = 2000;

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000 + 1;  /* never 0 */
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

int
iowatch_begin(const char *what)
{
	uint64_t now = now_ms();

	for (int i = 0; i < SLOTS; i++) {
		uint64_t free_slot = 0;

		if (atomic_load_explicit(&slots[i].began, memory_order_relaxed) == 0 &&
		    atomic_compare_exchange_strong(&slots[i].began, &free_slot, now)) {
			atomic_store(&slots[i].what, what);
			return i;
		}
	}
	return -1;
}

void
iowatch_end(int slot)
{
	if (slot < 0)
		return;
	atomic_store(&slots[slot].what, NULL);
	atomic_store(&slots[slot].began, 0);
}

int
iowatch_hung(char *what, size_t len)
{
	uint64_t now = now_ms(), lim = atomic_load(&limit_ms);

	for (int i = 0; i < SLOTS; i++) {
		uint64_t b = atomic_load(&slots[i].began);
		const char *w;

		if (b == 0 || now - b <= lim)
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
iowatch_admit(void)
{
	char what[512];

	if (!iowatch_hung(what, sizeof(what)))
		return CF_OK;
	return cf_error(CF_E_UNAVAILABLE, "the disk does not answer: an operation on %s has not "
			"returned in %u ms (a frozen file system or a lost device?); calls are "
			"refused until it does", what, iowatch_limit());
}

int
iowatch_lock(pthread_mutex_t *mu)
{
	struct timespec until;

	cf_deadline_in(&until, iowatch_limit());
	return pthread_mutex_timedlock(mu, &until);
}
