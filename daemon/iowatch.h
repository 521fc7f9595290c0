/*
 * iowatch.h — disk operations in flight, so that one that hangs is seen
 * while it hangs.
 *
 * A write to a frozen file system, or to a volume whose device is gone, does
 * not fail: it never returns, and the thread in it cannot be interrupted. A
 * caller stuck that way cannot report anything, so the durable operations of
 * the state directory (the nonce log, the SQLite store; the audit trail has
 * its own check) register here, and admission and health ask whether one has
 * been in flight longer than the limit (the audit's max_wait_ms). New calls
 * are then refused at once, with the file named, instead of queueing behind
 * it; health says NOT_SERVING. Process-wide: the disk is the process's.
 */
#ifndef COFFER_IOWATCH_H
#define COFFER_IOWATCH_H

#include <pthread.h>

/* The limit in ms (default 2000); set once at start. */
void iowatch_set_limit(unsigned ms);
unsigned iowatch_limit(void);

/* An operation on `what` (a path: a string that outlives the operation)
 * begins; returns its slot for iowatch_end, or -1 when every slot is taken
 * (the operation then goes unwatched: others are watched already). */
int iowatch_begin(const char *what);
void iowatch_end(int slot);

/* 1 if an operation has been in flight longer than the limit (what then
 * names its file), else 0. */
int iowatch_hung(char *what, size_t len);

/* CF_OK, or UNAVAILABLE saying which file's operation hangs. */
int iowatch_admit(void);

/* pthread_mutex_lock bounded by the limit: 0, or ETIMEDOUT when the holder
 * has not let go within it (as behind an operation that hangs). */
int iowatch_lock(pthread_mutex_t *mu);

#endif
