/* cf_time.h — CLOCK_MONOTONIC readings, and deadlines for pthread's timed
 * waits on it: a step of the wall clock (NTP at boot, an operator, a
 * resumed VM) neither cuts a bound short nor stretches it. */
#ifndef COFFER_CF_TIME_H
#define COFFER_CF_TIME_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Nano-, micro- and milliseconds on CLOCK_MONOTONIC (since boot). */
static inline uint64_t
cf_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t
cf_mono_us(void)
{
	return cf_mono_ns() / 1000u;
}

static inline uint64_t
cf_mono_ms(void)
{
	return cf_mono_ns() / 1000000u;
}

/* Whole seconds of the wall clock, read precisely, for comparing with a
 * caller's timestamp: time() reads the coarse clock, up to a tick behind
 * what a caller on this machine just read (Python's time.time()), so at a
 * second's turn a timestamp taken an hour ago looked 3599 s old. */
static inline int64_t
cf_wall_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec;
}

/* t moved on by `us` microseconds. */
static inline void
cf_timespec_add_us(struct timespec *t, uint64_t us)
{
	t->tv_sec += (time_t)(us / 1000000u);
	t->tv_nsec += (long)(us % 1000000u) * 1000L;
	if (t->tv_nsec >= 1000000000L) {
		t->tv_sec++;
		t->tv_nsec -= 1000000000L;
	}
}

/* `ms` (or `us`) from now on CLOCK_MONOTONIC, for the two waits below. */
static inline void
cf_deadline_in_us(struct timespec *until, uint64_t us)
{
	clock_gettime(CLOCK_MONOTONIC, until);
	cf_timespec_add_us(until, us);
}

static inline void
cf_deadline_in(struct timespec *until, unsigned ms)
{
	cf_deadline_in_us(until, (uint64_t)ms * 1000u);
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
