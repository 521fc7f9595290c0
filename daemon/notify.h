/*
 * notify.h — cofferd under systemd (Type=notify, sd_notify(3)): READY=1 once
 * both sockets serve, RELOADING=1 and READY=1 around a SIGHUP reload,
 * STOPPING=1 at shutdown, and the watchdog's WATCHDOG=1 pings from the main
 * loop's wait and between its scheduled items, so that a main loop stuck in
 * its scheduled work stops them.
 * Without $NOTIFY_SOCKET (not started by systemd) every call is a no-op, and
 * without $WATCHDOG_USEC notify_sigwait() is sigtimedwait(). Main thread only.
 */
#ifndef COFFER_NOTIFY_H
#define COFFER_NOTIFY_H

#include <signal.h>

/* Read $WATCHDOG_USEC (for this process: $WATCHDOG_PID); call once at start. */
void notify_init(void);

/* READY=1 with STATUS=status (kept, repeated after each reload). */
void notify_ready(const char *status);

/* SIGHUP: RELOADING=1 with MONOTONIC_USEC=now, before the reload. */
void notify_reloading(void);

/* After the reload: READY=1; STATUS= the status of notify_ready(), plus the
 * reason when failed is not NULL (the previous settings stay in force). */
void notify_reloaded(const char *failed);

/* STOPPING=1 with STATUS=status. */
void notify_stopping(const char *status);

/* WATCHDOG=1 if half a period has passed since the last: for work the main
 * loop does between its waits (scheduled rotations, each a token key
 * generation), called after each item, so that a long but progressing run
 * of items does not trip the watchdog while one stuck item still does. */
void notify_keepalive(void);

/* Wait up to ms milliseconds for one of sigs (blocked) like sigtimedwait(),
 * sending WATCHDOG=1 every half watchdog period meanwhile. The signal, or 0
 * when the time is up. */
int notify_sigwait(const sigset_t *sigs, unsigned ms);

#endif
