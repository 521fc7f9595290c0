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
#include <stdint.h>

struct change_mu {
	pthread_mutex_t mu;
	atomic_uint waiting;    /* changes blocked in change_mu_lock */
};

void change_mu_init(struct change_mu *m);
void change_mu_destroy(struct change_mu *m);
/* A change: waits for a change or a reload in progress. */
void change_mu_lock(struct change_mu *m);
/* A reload: 0 with the mutex held; -1 while a change holds it or waits
 * for it (the reload is tried again later). */
int change_mu_try(struct change_mu *m);
void change_mu_unlock(struct change_mu *m);

/* How long this thread's call has waited for its turns (ms): in the queue
 * of changes, for a change mutex, the fleet's change lock or the store's
 * connection, each added by change_mu_waited. A store transaction counts
 * them in its own wait for another process's lock, and the fleet's lock in
 * its bound: changes queued behind one that waits out a locked database
 * are refused after one bound, not one each. The tally lasts from
 * change_mu_call_begin to change_mu_call_end (a call of the daemon's);
 * outside a call, until the thread holds no change mutex or, outside a
 * change, change_mu_wait_over (one transaction's). */
#define CHANGE_MU_WAIT_SLACK_MS 50   /* less: a turn, no shorter wait */
void change_mu_waited(uint64_t ms);
uint64_t change_mu_waited_ms(void);
void change_mu_wait_over(void);
void change_mu_call_begin(uint64_t queued_ms);
void change_mu_call_end(void);

#endif
