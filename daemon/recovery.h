/*
 * recovery.h — start-up recovery: what a crash left between the state store
 * and the token is finished or undone, and every other mismatch is reported
 * (daemon/CRASH-SAFETY.md).
 *
 * Runs once, before the key registry is loaded and before any call is
 * served: intents of calls that died between making token objects and
 * recording them are undone (their objects, found by the intent's CKA_ID,
 * destroyed); then every Coffer-labelled object in the token is compared
 * with the registry. Repaired, and reported: objects left of a destroyed
 * version; objects under a served version's label that carry another CKA_ID
 * while the version's own objects are complete. Reported only (nothing
 * proves whose they are): objects no record claims, a served version whose
 * objects are missing, incomplete (half a pair) or duplicated.
 * The daemon's own objects ("coffer." names) are left to their modules.
 */
#ifndef COFFER_RECOVERY_H
#define COFFER_RECOVERY_H

#include "cf_p11.h"
#include "store.h"

/* report: one message per finding (repairs included); *findings counts
 * them. Fails only if the store or the token cannot be read. */
int recovery_run(cf_p11 *p11, store *st, void (*report)(const char *msg), unsigned *findings);

/* Undo every intent in the store (the first step of recovery_run). Only
 * while no call that records intents can be running: at start-up, or under
 * the fleet's change lock (store_change_begin), where any intent found is a
 * dead replica's. */
int recovery_undo_intents(cf_p11 *p11, store *st, void (*report)(const char *msg),
			  unsigned *findings);

#endif
