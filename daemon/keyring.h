/*
 * keyring.h — the daemon's key registry: every key's metadata in memory
 * (loaded from the store at start-up, written through on change) beside the
 * open token handles of its versions. The data path never touches SQLite.
 *
 * Thread-safe: lookups take a read lock; changes (create, import, rotate,
 * lifecycle) serialise on a write lock. Handles returned by keyring_use are borrowed and stay valid
 * for the life of the keyring (versions are never freed while it runs).
 */
#ifndef COFFER_KEYRING_H
#define COFFER_KEYRING_H

#include <stdint.h>

#include "cf_p11.h"
#include "store.h"

typedef struct keyring keyring;

/* Names reserved for the daemon's own token keys (e.g. "coffer.identity"):
 * refused for callers' keys, not reported as orphans. */
#define KEYRING_RESERVED_PREFIX STORE_RESERVED_PREFIX

enum key_purpose { PURPOSE_SIGN = 1, PURPOSE_MAC = 2, PURPOSE_WRAP = 3 };

/* What an operation does with a version: make something new (sign, MAC,
 * wrap: needs min_version) or check or open something old (verify,
 * unwrap, a public key: needs min_verify). */
enum key_use { USE_NEW = 1, USE_CHECK = 2 };

/* Lifecycle limits ([keys] in the configuration), seconds. */
struct keyring_cfg {
	unsigned destroy_grace;         /* default grace before destruction: 7 days */
	unsigned min_destroy_grace;     /* shortest grace a caller may ask for: 1 day */
	unsigned min_rotation_period;   /* shortest rotation period: 1 hour */
};
#define KEYRING_MAX_GRACE (365 * 86400)
#define KEYRING_MAX_ROTATION_PERIOD (3650LL * 86400)
void keyring_cfg_defaults(struct keyring_cfg *c);

enum key_purpose keyring_purpose(enum cf_key_type t);
const char *keyring_purpose_name(enum key_purpose p);

/* Keys are described as the store holds them (struct store_key): a
 * consistent copy whose versions the caller owns and frees with
 * keyring_info_free. */
void keyring_info_free(struct store_key *info);

/* Run start-up recovery (recovery.h: each finding reported through `report`
 * and counted in *mismatches), then load every key from the store and open
 * its versions in the token by their recorded CKA_ID. */
int keyring_open(cf_p11 *p11, store *st, const struct keyring_cfg *cfg,
		 void (*report)(const char *msg), unsigned *mismatches, keyring **out);
void keyring_close(keyring *kr);

/* New key with version 1, generated in the token (or imported). allowed_ops
 * (0: every operation of its purpose) is the key's own limit, which no grant
 * can exceed; the caller checks it fits the purpose. rotation_period: 0 or
 * seconds between scheduled rotations. Crash-safe (daemon/CRASH-SAFETY.md):
 * the intent is recorded before the token is touched, and the version with
 * its CKA_ID in one transaction after; CF_E_EXISTS if objects nobody
 * recorded already carry the label (never a second set beside them). */
int keyring_create(keyring *kr, const char *name, enum cf_key_type type, uint32_t allowed_ops,
		   int64_t rotation_period, struct store_key *out);
int keyring_import(keyring *kr, const char *name, enum cf_key_type type,
		   const cf_secret *material, uint32_t allowed_ops, struct store_key *out);
/* New version, made primary; the next scheduled rotation is one period on. */
int keyring_rotate(keyring *kr, const char *name, struct store_key *out);

/* Lifecycle changes (coffer.proto "Key lifecycle"). Each is checked against
 * the key as it is, recorded in the store, then applied. CF_E_NOT_FOUND (no
 * key or version), CF_E_INVALID_ARG, CF_E_PRECONDITION (the state does not
 * allow it, force needed, grace period over, a minimum past the primary). */
enum key_change {
	KC_SET_PRIMARY = 1, KC_ENABLE, KC_DISABLE, KC_SCHEDULE_DESTROY, KC_CANCEL_DESTROY,
	KC_SET_MINIMUMS, KC_TRIM, KC_SET_ROTATION,
};
struct key_change_args {
	uint32_t version;
	int force;                  /* the primary or the last enabled version */
	int64_t grace;              /* seconds; 0: the configured default */
	uint32_t min_version, min_verify, keep_last;   /* 0: unchanged */
	int64_t period, next;       /* KC_SET_ROTATION */
};
int keyring_change(keyring *kr, const char *name, enum key_change what,
		   const struct key_change_args *a, struct store_key *out);

/* Due work, called about once a second: rotate keys whose scheduled
 * rotation is due (once, however long ago it fell due) and destroy the
 * token objects of versions whose grace period is over. done() is told of
 * each (what: "rotate" or "destroy"; status CF_OK or the failure, retried
 * a minute later). */
typedef void (*keyring_done_fn)(const char *name, uint32_t version, const char *what,
				int status, void *arg);
/* The audit record of a change the daemon makes on its own (method:
 * "cofferd/ScheduledRotation", "cofferd/DestroyKeyVersion"), written by
 * fn into buf: committed with the change (store_call in store.h). Without
 * one, such changes commit no record. */
typedef int (*keyring_record_fn)(const char *method, const char *name, uint32_t version,
				 char *buf, size_t len, void *arg);
void keyring_set_recorder(keyring *kr, keyring_record_fn fn, void *arg);
/* budget_ms (0: none): stop starting items once the tick has run that long;
 * the rest stay due for the next tick, which starts with the first due key
 * after the last one this tick rotated (so that the periodic work, chores.h,
 * can be stopped in about this long, and no key waits behind the others
 * forever). */
void keyring_tick(keyring *kr, int64_t now, unsigned budget_ms, keyring_done_fn done,
		  void *arg);

/* Re-read one key (name) or every key (NULL) from the store: another
 * replica changed it (fleet.h). CF_E_BUSY (try again) while a change of this
 * process is in progress. */
int keyring_refresh(keyring *kr, const char *name);

/* Names after `after` ("" = from the start), in order, at most `max`. */
int keyring_list(keyring *kr, const char *after, uint32_t max, struct store_key **out,
		 uint32_t *n, int *more);

/* A key looked up by name once per call: the name (borrowed) and the key,
 * NULL if none has that name (the keyring_ref_ functions then answer
 * CF_E_NOT_FOUND). Keys are never removed while the keyring is open, so a
 * reference stays valid as long as it. */
struct kr_key;
struct keyring_ref {
	const char *name;
	const struct kr_key *k;
};
/* Fills *ref in every case; CF_E_NOT_FOUND if no key has that name. */
int keyring_find(keyring *kr, const char *name, struct keyring_ref *ref);
/* The key's own limit: its allowed operations (0: all of its purpose, or no key). */
uint32_t keyring_ref_allowed_ops(keyring *kr, const struct keyring_ref *ref);
int keyring_ref_describe(keyring *kr, const struct keyring_ref *ref, struct store_key *out);
/* keyring_find, then keyring_ref_describe. */
int keyring_describe(keyring *kr, const char *name, struct store_key *out);

/* The token handle of `version` (0 = primary) for an operation needing
 * `purpose`. CF_E_NOT_FOUND (no key / version), CF_E_WRONG_KEY_TYPE (wrong
 * purpose), CF_E_PRECONDITION (version not enabled, or below the key's
 * minimum for `use`). */
int keyring_ref_use(keyring *kr, const struct keyring_ref *ref, uint32_t version,
		    enum key_purpose purpose, enum key_use use, cf_p11_key **key,
		    uint32_t *used_version);
/* keyring_find, then keyring_ref_use. */
int keyring_use(keyring *kr, const char *name, uint32_t version, enum key_purpose purpose,
		enum key_use use, cf_p11_key **key, uint32_t *used_version);

#endif
