/* change_mu.h — the mutex of one module's changes (keys, principals, API
 * keys), which the fleet's reloads only try and give way to.
 *
 * A reload on the notification thread takes it with change_mu_try, and not
 * at all while a change waits for it. Without that, a reload tried again and
 * again (a table another session holds) took the mutex back between its
 * tries, before the change it had woken ran, and the change waited for
 * each try (found by CI: a grant refused after 5.7 s, when each try still
 * waited the whole lock_timeout of 2 s). */
#ifndef COFFER_CHANGE_MU_H
#define COFFER_CHANGE_MU_H

#include <pthread.h>
#include <stdatomic.h>

struct change_mu {
	pthread_mutex_t mu;
	atomic_uint waiting;    /* changes blocked in change_mu_lock */
};

static inline void
change_mu_init(struct change_mu *m)
{
	pthread_mutex_init(&m->mu, NULL);
	atomic_init(&m->waiting, 0);
}

static inline void
change_mu_destroy(struct change_mu *m)
{
	pthread_mutex_destroy(&m->mu);
}

/* A change: waits for a change or a reload in progress. */
static inline void
change_mu_lock(struct change_mu *m)
{
	atomic_fetch_add(&m->waiting, 1);
	pthread_mutex_lock(&m->mu);
	atomic_fetch_sub(&m->waiting, 1);
}

/* A reload: 0 with the mutex held; -1 while a change holds it or waits
 * for it (the reload is tried again later). */
static inline int
change_mu_try(struct change_mu *m)
{
	if (atomic_load(&m->waiting) != 0)
		return -1;
	return pthread_mutex_trylock(&m->mu) == 0 ? 0 : -1;
}

static inline void
change_mu_unlock(struct change_mu *m)
{
	pthread_mutex_unlock(&m->mu);
}

#endif
