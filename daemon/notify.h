/*
 * notify.h — cofferd under systemd (Type=notify, sd_notify(3)): READY=1 once
 * both sockets serve, RELOADING=1 and READY=1 around a SIGHUP reload,
 * STOPPING=1 at shutdown, and the watchdog's WATCHDOG=1 pings from the main
 * loop's wait while the periodic work's thread moves (notify_gate), so that
 * a daemon stuck in that work stops them.
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

/* Pings only while alive(arg) says so (chores_alive): a thread stuck in
 * the periodic work, beyond the bounds of its waits, has systemd restart
 * the daemon; one waiting out a hung PostgreSQL within them does not. */
void notify_gate(int (*alive)(void *arg), void *arg);

/* Wait up to ms milliseconds for one of sigs (blocked) like sigtimedwait(),
 * sending WATCHDOG=1 every half watchdog period meanwhile. The signal, or 0
 * when the time is up. */
int notify_sigwait(const sigset_t *sigs, unsigned ms);

#endif
