/* cf_time.h — deadlines for pthread's timed waits. */
#ifndef COFFER_CF_TIME_H
#define COFFER_CF_TIME_H

#include <time.h>

/* `ms` from now on CLOCK_REALTIME, the clock pthread_cond_timedwait (default
 * attributes) and pthread_mutex_timedlock measure against. */
static inline void
cf_deadline_in(struct timespec *until, unsigned ms)
{
	clock_gettime(CLOCK_REALTIME, until);
	until->tv_sec += ms / 1000;
	until->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (until->tv_nsec >= 1000000000L) {
		until->tv_sec++;
		until->tv_nsec -= 1000000000L;
	}
}

#endif
