/*
 * iowatch.h — disk operations in flight, so that one that hangs is seen
 * while it hangs.
 *
 * A write to a frozen file system, or to a volume whose device is gone, does
 * not fail: it never returns, and the thread in it cannot be interrupted; a
 * PostgreSQL server that hangs (stopped, or its own disk frozen) is the same
 * seen from a socket. A caller stuck that way cannot report anything, so the
 * operations of the state (the nonce log, the SQLite store's commits, the
 * PostgreSQL store's statements and nonce claims; the audit trail has its
 * own check) register here, and admission and health ask whether one has
 * been in flight longer than the limit (the audit's max_wait_ms). New calls
 * are then refused at once, with what hangs named, instead of queueing
 * behind it; health says NOT_SERVING. Process-wide: the state is the
 * process's.
 */
#ifndef COFFER_IOWATCH_H
#define COFFER_IOWATCH_H

#include <pthread.h>

/* The limit in ms (default 2000); set once at start. */
void iowatch_set_limit(unsigned ms);
unsigned iowatch_limit(void);

/* An operation on `what` (a path or a name: a string that outlives it)
 * begins; returns its slot for iowatch_end, or -1 when every slot is taken
 * (the operation then goes unwatched: others are watched already). */
int iowatch_begin(const char *what);
/* The same for an operation on a server (PostgreSQL; `what` a string
 * literal): it counts for health, not for admission (calls that do not need
 * the server go on; those that do fail by themselves, in bounded time). */
int iowatch_begin_remote(const char *what);
/* The same, hung only past ms instead of the daemon's limit: a
 * statement that may wait for a lock another session holds (lock_timeout,
 * below its own bound) is not a server that hangs (before, a change waiting
 * 20 s on a table an operator held turned health NOT_SERVING after 2 s;
 * found from outside). */
int iowatch_begin_remote_within(const char *what, unsigned ms);
/* It ended: IOWATCH_OK or IOWATCH_FAILED. A remote one failed after more
 * than the limit (given up on a server that did not answer, a connection
 * that timed out): its `what` counts as hung until an operation on the
 * same `what` ends OK within the limit: otherwise every call would wait the
 * bound out again. */
enum { IOWATCH_OK, IOWATCH_FAILED };
void iowatch_end(int slot, int outcome);

/* 1 if an operation has been in flight longer than the limit, or one was
 * given up and nothing on it has ended in time since (what then names it),
 * else 0. */
int iowatch_hung(char *what, size_t len);

/* 1 if an operation on `what` was given up and nothing on it has ended in
 * time since: a caller that needs it can be refused without waiting. */
int iowatch_given_up(const char *what);

/* CF_OK, or UNAVAILABLE saying which local operation hangs. */
int iowatch_admit(void);

/* pthread_mutex_lock bounded by the limit: 0, or ETIMEDOUT when the holder
 * has not let go within it (as behind an operation that hangs). */
int iowatch_lock(pthread_mutex_t *mu);

#endif
