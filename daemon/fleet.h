/*
 * fleet.h — what replicas sharing one PostgreSQL state need beyond the
 * store itself (daemon/FLEET.md):
 *  - change notification: every committed change is announced (the store
 *    issues NOTIFY coffer, '<kind> <name>' inside its transaction); a thread
 *    here LISTENs and hands each to `changed`, and after a lost connection
 *    calls `resync` (notifications sent meanwhile are gone);
 *  - the registry change lock: one change to keys, principals or API keys at
 *    a time across the fleet (a PostgreSQL advisory lock held on a
 *    connection of its own, so that a replica killed while holding it
 *    releases it with its connection);
 *  - the scheduled-work lease: exactly one replica does rotations,
 *    destructions and expiry, holding an advisory lock that moves to another
 *    replica when its holder dies or loses PostgreSQL;
 *  - liveness: each running replica process (an "incarnation") holds an
 *    advisory lock named by its incarnation id, so that another replica can
 *    tell a pending idempotency record of a dead process from one of a
 *    process still running its call.
 */
#ifndef COFFER_FLEET_H
#define COFFER_FLEET_H

#include <stdint.h>

typedef struct fleet fleet;

#define FLEET_RESYNC_S 30
#define FLEET_RETRY_MS 1000

struct fleet_hooks {
	/* kind: "key", "principal", "apikey", "signed"; name: what changed;
	 * sender: the PostgreSQL backend pid that announced it. What it could
	 * not reload it leaves to `resync`. */
	int (*changed)(const char *kind, const char *name, int sender, void *arg);
	/* all: reload everything (after the notification connection was lost:
	 * notifications sent meanwhile are gone; and every FLEET_RESYNC_S as a
	 * safety net); else what is left to reload, if anything (called every
	 * pass, at most every 200 ms). CF_OK; CF_E_BUSY (a change of this
	 * replica in progress): called again on the next pass; another failure:
	 * not before FLEET_RETRY_MS, its text logged once. */
	int (*resync)(int all, void *arg);
	/* NULL while this replica can do the scheduled work; else why not (its
	 * audit trail failing closed): it then lets the lease go, or does not
	 * take it, so that another replica does the work. NULL hook: always. */
	const char *(*unfit)(void *arg);
	void *arg;
};

/* Connect (dsn: libpq conninfo) and start the notification thread. replica:
 * this replica's name (the incarnation id starts with it). CF_E_UNAVAILABLE
 * if PostgreSQL cannot be reached. */
int fleet_open(const char *dsn, const char *replica, fleet **out);
/* Tests: the periodic reload's period and the change lock's wait, in ms
 * (FLEET_RESYNC_S and FLEET_LOCK_WAIT_S otherwise; whole seconds), set
 * before fleet_start and the first fleet_lock, so that a test of them does
 * not wait 30 s each. */
void fleet_set_bounds(fleet *f, unsigned resync_ms, unsigned lock_wait_ms);
/* Start delivering notifications to hooks (after the registry is loaded). */
int fleet_start(fleet *f, const struct fleet_hooks *hooks);
void fleet_close(fleet *f);   /* accepts NULL */

/* This process's incarnation id ("<replica>/<pid>/<random>"). */
const char *fleet_incarnation(const fleet *f);

/* 1 while this replica holds the scheduled-work lease. */
int fleet_leader(fleet *f);
/* 1 while the notification connection is up (health). */
int fleet_healthy(fleet *f);
int fleet_healthy_cb(void *f);   /* the same, for store_set_change_lock */

/* The registry change lock (waits up to FLEET_LOCK_WAIT_S). CF_OK, or
 * CF_E_UNAVAILABLE with a message (the wait's bound, the process's own turn
 * behind another change included). fleet_unlock releases. */
#define FLEET_LOCK_WAIT_S 30
int fleet_lock(void *f);
void fleet_unlock(void *f);
/* How long this process has held the change lock since it took it or
 * last committed a change under it (fleet_lock_touch): ms, 0 when not held. */
uint64_t fleet_lock_held_ms(fleet *f);
void fleet_lock_touch(void *f);   /* for store_set_change_lock */

/* *alive = whether the process with that incarnation id is running. */
int fleet_alive(fleet *f, const char *incarnation, int *alive);

/* Notifications received and the time from the first to now (tests). */
unsigned long fleet_notifications(fleet *f);

#endif
