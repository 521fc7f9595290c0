/* change_mu.c — the mutex of one module's changes (change_mu.h). */
#include "change_mu.h"

#include "cf_time.h"

static _Thread_local uint64_t waited;   /* this call's turns, ms */
static _Thread_local unsigned held;     /* change mutexes this thread holds */
static _Thread_local int in_call;       /* between change_mu_call_begin and _end */

void
change_mu_init(struct change_mu *m)
{
	pthread_mutex_init(&m->mu, NULL);
	atomic_init(&m->waiting, 0);
}

void
change_mu_destroy(struct change_mu *m)
{
	pthread_mutex_destroy(&m->mu);
}

void
change_mu_lock(struct change_mu *m)
{
	uint64_t t0;

	held++;
	if (pthread_mutex_trylock(&m->mu) == 0)
		return;
	t0 = cf_mono_ms();
	atomic_fetch_add(&m->waiting, 1);
	pthread_mutex_lock(&m->mu);
	atomic_fetch_sub(&m->waiting, 1);
	waited += cf_mono_ms() - t0;
}

int
change_mu_try(struct change_mu *m)
{
	if (atomic_load(&m->waiting) != 0)
		return -1;
	if (pthread_mutex_trylock(&m->mu) != 0)
		return -1;
	held++;
	return 0;
}

void
change_mu_unlock(struct change_mu *m)
{
	if (--held == 0 && !in_call)
		waited = 0;
	pthread_mutex_unlock(&m->mu);
}

void
change_mu_waited(uint64_t ms)
{
	waited += ms;
}

uint64_t
change_mu_waited_ms(void)
{
	return waited;
}

void
change_mu_wait_over(void)
{
	if (held == 0 && !in_call)
		waited = 0;
}

/* A call's store transactions before its change (its idempotency record)
 * no longer take the tally with them: before, a change queued for 30 s
 * then waited the fleet's lock 30 s more (found from outside). */
void
change_mu_call_begin(uint64_t queued_ms)
{
	in_call = 1;
	waited = queued_ms;
}

void
change_mu_call_end(void)
{
	in_call = 0;
	waited = 0;
}
