/* cofferd's periodic work on its own thread: see chores.h. */
#include "chores.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cf_crashpoint.h"
#include "cf_log.h"
#include "cf_status.h"
#include "cf_time.h"
#include "dispatch.h"

/* Scheduled work per round: the rest waits a second, so that a stop is
 * answered within about this long even when many keys fall due at once. */
#define TICK_BUDGET_MS 1000u

struct chores {
	struct chores_deps d;
	pthread_t t;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	atomic_int stop;         /* set under mu; read between steps too */
	_Atomic uint64_t beat;   /* cf_mono_ms() when a step last ended */
};

static void
beat(chores *c)
{
	atomic_store_explicit(&c->beat, cf_mono_ms(), memory_order_relaxed);
}

/* What the daemon did on its own (keyring_tick): logged; a failure also
 * audited (a change's own record was committed with it). */
static void
lifecycle_done(const char *name, uint32_t version, const char *what, int status, void *arg)
{
	chores *c = arg;
	int rotate = strcmp(what, "rotate") == 0;
	struct audit_event ev = {
		.principal = "cofferd", .uid = geteuid(), .pid = getpid(), .admin = 1,
		.method = rotate ? "cofferd/ScheduledRotation" : "cofferd/DestroyKeyVersion",
		.key = name, .version = version, .result = dispatch_status_name(status),
		.request_id = rotate ? "scheduled-rotation" : "scheduled-destruction",
	};

	if (status != CF_OK && rotate)
		cf_log_warn("lifecycle: scheduled rotation of key %s failed (retried in a "
			    "minute): %s", name, cf_error_detail());
	else if (status != CF_OK)
		cf_log_warn("lifecycle: destruction of key %s version %u failed (retried in a "
			    "minute): %s", name, version, cf_error_detail());
	else if (rotate)
		cf_log_info("lifecycle: scheduled rotation of key %s made version %u", name,
			    version);
	else
		cf_log_info("lifecycle: key %s version %u destroyed in the token (grace period "
			    "over)", name, version);
	if (c->d.au != NULL && status != CF_OK)
		(void)audit_record(c->d.au, &ev);
	/* A long run of items that progresses is no stuck thread. */
	beat(c);
}

/* The step ended: beat, and whether to go on (a stop waits one step, not a
 * round: with PostgreSQL hung each may wait out its bound). */
static int
stepped(chores *c)
{
	beat(c);
	return !atomic_load(&c->stop);
}

static void
round_of(chores *c, unsigned n)
{
	const struct chores_deps *d = &c->d;
	/* In a fleet, the shared scheduled work is the lease holder's. */
	int lead = d->fl == NULL || fleet_leader(d->fl);

	/* Failing closed on the audit trail: nothing irreversible that could
	 * not be recorded either; the work waits until it can. */
	if (d->au == NULL || audit_healthy(d->au)) {
		if (lead) {
			CF_HOLD_POINT("chores.lead");   /* a step that hangs (tests) */
			keyring_tick(d->kr, (int64_t)time(NULL), TICK_BUDGET_MS, lifecycle_done, c);
		}
		if (!stepped(c))
			return;
		(void)audit_flush_outbox(d->au);
		if (!stepped(c))
			return;
	}
	idem_retry(d->idm);
	if (!stepped(c) || n % 5 != 0 || !lead)
		return;
	nonces_expire(d->nn, (int64_t)time(NULL));
	if (!stepped(c))
		return;
	apikeys_expire(d->ak, (int64_t)time(NULL));
	if (!stepped(c))
		return;
	idem_expire(d->idm, (int64_t)time(NULL));
	beat(c);
}

static void *
chores_main(void *arg)
{
	chores *c = arg;
	struct timespec until;

	for (unsigned n = 1;; n++) {
		pthread_mutex_lock(&c->mu);
		cf_deadline_in(&until, 1000);
		while (!c->stop && cf_cond_wait_until(&c->cv, &c->mu, &until) == 0)
			;
		if (c->stop) {
			pthread_mutex_unlock(&c->mu);
			return NULL;
		}
		pthread_mutex_unlock(&c->mu);
		beat(c);
		round_of(c, n);
	}
}

int
chores_start(const struct chores_deps *d, chores **out)
{
	chores *c = calloc(1, sizeof(*c));
	int e;

	if (c == NULL)
		return cf_nomem();
	c->d = *d;
	atomic_init(&c->beat, cf_mono_ms());
	atomic_init(&c->stop, 0);
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);   /* waited on with its clock named */
	if ((e = pthread_create(&c->t, NULL, chores_main, c)) != 0) {
		pthread_cond_destroy(&c->cv);
		pthread_mutex_destroy(&c->mu);
		free(c);
		return cf_error(CF_E_INTERNAL, "cannot start the periodic work's thread: %s",
				strerror(e));
	}
	*out = c;
	return CF_OK;
}

int
chores_alive(void *arg)
{
	chores *c = arg;
	uint64_t last = atomic_load_explicit(&c->beat, memory_order_relaxed);

	/* The wait between rounds is a second; a step may take its bound. */
	return cf_mono_ms() - last <= (uint64_t)c->d.step_bound_ms + 2000u;
}

void
chores_stop(chores *c)
{
	if (c == NULL)
		return;
	pthread_mutex_lock(&c->mu);
	atomic_store(&c->stop, 1);
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	pthread_join(c->t, NULL);
}

void
chores_free(chores *c)
{
	if (c == NULL)
		return;
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	free(c);
}
