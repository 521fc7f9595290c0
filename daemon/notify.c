#include "notify.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include "cf_log.h"
#include "cf_time.h"

static uint64_t watchdog_usec; /* 0: no watchdog */
static uint64_t next_ping;     /* CLOCK_MONOTONIC, microseconds */
static char status_text[512];
static int warned;

/* STATUS= is one line: a newline (in a socket path, an error) would start a
 * new field. */
static void
one_line(char *s)
{
	for (; (s = strchr(s, '\n')) != NULL; s++)
		*s = ' ';
}

/* One datagram; a failure is logged once (the manager went away, or
 * $NOTIFY_SOCKET is wrong), never fatal: the daemon serves either way. */
static void
send_state(const char *state)
{
	int r = sd_notify(0, state);

	if (r < 0 && !warned) {
		warned = 1;
		cf_log_warn("systemd notification \"%.*s\" to $NOTIFY_SOCKET failed: %s (further "
			    "failures are not logged)",
			    (int)strcspn(state, "\n"), state, strerror(-r));
	}
}

static int (*gate)(void *arg);
static void *gate_arg;
static int withheld;

static void
ping(void)
{
	next_ping = cf_mono_us() + watchdog_usec / 2;
	if (gate != NULL && !gate(gate_arg)) {
		if (!withheld)
			cf_log_error("systemd watchdog: no WATCHDOG=1: the periodic work is stuck "
				     "beyond the bounds of its waits");
		withheld = 1;
		return;
	}
	if (withheld)
		cf_log_info("systemd watchdog: the periodic work moves again; pinging");
	withheld = 0;
	send_state("WATCHDOG=1");
}

void
notify_gate(int (*alive)(void *arg), void *arg)
{
	gate = alive;
	gate_arg = arg;
}

void
notify_init(void)
{
	uint64_t usec = 0;
	int r = sd_watchdog_enabled(0, &usec);

	if (r < 0) {
		cf_log_warn("systemd watchdog: $WATCHDOG_USEC \"%.32s\" or $WATCHDOG_PID is not "
			    "valid (%s): no watchdog pings",
			    getenv("WATCHDOG_USEC") ?: "", strerror(-r));
		return;
	}
	if (r == 0)
		return;
	/* Pinged from a loop that also runs scheduled work: below 2 ms the
	 * pings alone would keep the main thread busy. */
	if (usec < 2000) {
		cf_log_warn("systemd watchdog: %" PRIu64 " us is too short (at least 2000 us): no "
			    "watchdog pings",
			    usec);
		return;
	}
	watchdog_usec = usec;
	next_ping = cf_mono_us() + usec / 2;
	cf_log_info("systemd watchdog: WATCHDOG=1 every %" PRIu64 " ms", usec / 2000);
}

void
notify_ready(const char *status)
{
	char msg[sizeof(status_text) + 32];

	snprintf(status_text, sizeof(status_text), "%s", status);
	one_line(status_text);
	snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", status_text);
	send_state(msg);
	/* Start-up may have taken most of a period. */
	if (watchdog_usec != 0)
		ping();
}

void
notify_reloading(void)
{
	char msg[64];

	snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64, cf_mono_us());
	send_state(msg);
}

void
notify_reloaded(const char *failed)
{
	char status[sizeof(status_text) + 600], msg[sizeof(status) + 32];

	if (failed == NULL)
		snprintf(status, sizeof(status), "%s", status_text);
	else
		snprintf(status, sizeof(status),
			 "%s; last reload failed, previous settings "
			 "kept: %.512s",
			 status_text, failed);
	one_line(status);
	snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", status);
	send_state(msg);
}

void
notify_stopping(const char *status)
{
	char line[sizeof(status_text)], msg[sizeof(line) + 32];

	snprintf(line, sizeof(line), "%s", status);
	one_line(line);
	snprintf(msg, sizeof(msg), "STOPPING=1\nSTATUS=%s", line);
	send_state(msg);
}


int
notify_sigwait(const sigset_t *sigs, unsigned ms)
{
	uint64_t now = cf_mono_us(), end = now + (uint64_t)ms * 1000u;

	for (;;) {
		uint64_t until = watchdog_usec != 0 && next_ping < end ? next_ping : end;
		uint64_t wait = until > now ? until - now : 0;
		struct timespec ts = {(time_t)(wait / 1000000u), (long)(wait % 1000000u) * 1000};
		int sig = sigtimedwait(sigs, NULL, &ts);

		if (sig > 0)
			return sig;
		now = cf_mono_us();
		if (watchdog_usec != 0 && now >= next_ping)
			ping();
		if (now >= end)
			return 0;
	}
}
