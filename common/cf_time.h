/* cf_time.h — deadlines for pthread's timed waits, on CLOCK_MONOTONIC: a
 * step of the wall clock (NTP at boot, an operator, a resumed VM) neither
 * cuts a bound short nor stretches it. */
#ifndef COFFER_CF_TIME_H
#define COFFER_CF_TIME_H

#include <pthread.h>
#include <time.h>

/* `ms` from now on CLOCK_MONOTONIC, for the two waits below. */
static inline void
cf_deadline_in(struct timespec *until, unsigned ms)
{
	clock_gettime(CLOCK_MONOTONIC, until);
	until->tv_sec += ms / 1000;
	until->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (until->tv_nsec >= 1000000000L) {
		until->tv_sec++;
		until->tv_nsec -= 1000000000L;
	}
}

/* pthread_cond_timedwait, and pthread_mutex_timedlock, against a deadline
 * of cf_deadline_in (any condition variable: the clock is named here, not
 * set when it was made). 0, or ETIMEDOUT. */
static inline int
cf_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, const struct timespec *until)
{
	return pthread_cond_clockwait(cv, mu, CLOCK_MONOTONIC, until);
}

static inline int
cf_mutex_lock_until(pthread_mutex_t *mu, const struct timespec *until)
{
	return pthread_mutex_clocklock(mu, CLOCK_MONOTONIC, until);
}

#endif
