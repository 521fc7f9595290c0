/*
 * chores.h — cofferd's periodic work on its state, on a thread of its own:
 * scheduled rotations and destructions (the fleet's lease holder only), the
 * audit outbox, idempotency retries, and the expiry of nonces, API key
 * secrets and idempotency records. On PostgreSQL a step may wait out the
 * state's bounds while the server hangs; the main thread (signals, the
 * systemd watchdog) must not wait with it, and the calls served from memory
 * go on meanwhile.
 */
#ifndef COFFER_CHORES_H
#define COFFER_CHORES_H

#include "apikeys.h"
#include "audit.h"
#include "fleet.h"
#include "idempotency.h"
#include "keyring.h"
#include "nonces.h"

typedef struct chores chores;

struct chores_deps {
	keyring *kr;
	audit *au;              /* NULL: no trail */
	fleet *fl;              /* NULL: no fleet (the work is this daemon's) */
	nonces *nn;
	apikeys *ak;
	idem *idm;
	/* The longest one step may wait for the state on its own (a statement's
	 * bound plus a reconnection): beyond it, the thread is stuck. */
	unsigned step_bound_ms;
};

/* Start the thread: a round each second, the expiries every fifth. */
int chores_start(const struct chores_deps *d, chores **out);

/* Whether the thread moved within its step bound: the watchdog's gate
 * (notify_gate). c: a chores. */
int chores_alive(void *c);

/* Stop the thread (after its current step). chores_alive may still be
 * asked (the fleet's thread does until fleet_close); chores_free frees.
 * Both accept NULL. */
void chores_stop(chores *c);
void chores_free(chores *c);

#endif
