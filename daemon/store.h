/*
 * store.h — the daemon's state store: key metadata (names, types, versions,
 * primary version, states), principals, API keys, idempotency records,
 * intents and the audit outbox, in SQLite (WAL) under the state directory or
 * in PostgreSQL shared by a fleet of replicas. Both backends offer all of
 * it; the logic is written once (store.c) over a small SQL driver (sqldb.h).
 *
 * The token holds key material; the store holds only metadata. All
 * functions are serialised internally (one connection) and may block on
 * disk or network I/O. On PostgreSQL a lost connection fails the call with
 * CF_E_UNAVAILABLE ("state store: PostgreSQL unreachable: ..."), and the
 * next call reconnects by itself.
 */
#ifndef COFFER_STORE_H
#define COFFER_STORE_H

#include <stdint.h>

#include "cf_keytype.h"

#define STORE_SCHEMA_VERSION 10  /* 2: principals; 3: keys' allowed operations; 4: API keys;
                                    5: idempotency records; 6: key lifecycle; 7: crash safety
                                    (intents, CKA_IDs, audit outbox and anchor); 8: principals
                                    that must sign their calls (PostgreSQL starts here);
                                    9: replicas (owners of idempotency records and intents,
                                    the audit outbox and anchor per replica); 10: the fleet's
                                    change lock fenced (PostgreSQL only) */

enum store_state { STORE_ENABLED = 1, STORE_DISABLED, STORE_DESTROY_SCHEDULED, STORE_DESTROYED };

#define STORE_CKAID_LEN 16
/* Names of the daemon's own token keys (e.g. "coffer.identity"). */
#define STORE_RESERVED_PREFIX "coffer."

struct store_version {
	uint32_t version;
	uint8_t ckaid[STORE_CKAID_LEN]; /* CKA_ID of its token objects */
	enum store_state state;
	int64_t created;
	int64_t destroy_time;           /* DESTROY_SCHEDULED: due; DESTROYED: done */
	enum store_state prior;         /* DESTROY_SCHEDULED: the state a cancel restores */
};

struct store_key {
	char name[CF_KEY_NAME_MAX + 1];
	enum cf_key_type type;
	int exportable;
	uint32_t allowed_ops;           /* bit (1 << operation); 0 = all its purpose has */
	uint32_t primary;
	int64_t created;
	uint32_t min_version;           /* new operations; 0 = none */
	uint32_t min_verify;            /* verify and unwrap; 0 = none */
	int64_t rotation_period;        /* seconds; 0 = no scheduled rotation */
	int64_t next_rotation;          /* 0 = none */
	uint32_t pending_rotation;      /* a scheduled rotation started making this version */
	struct store_version *versions; /* ascending; owned by the caller of store_load */
	uint32_t nversions;
};

#define STORE_PRINCIPAL_NAME_MAX 64
#define STORE_PRINCIPAL_IDS_MAX 64

struct store_grant {
	char pattern[CF_KEY_NAME_MAX + 1];
	uint32_t ops;                   /* bit (1 << operation) */
};

struct store_limit {
	uint32_t op;                    /* 0: every operation together */
	double rate;                    /* per second */
	uint32_t burst;
};

/* A principal and everything it owns; arrays owned by whoever filled it. */
struct store_principal {
	char name[STORE_PRINCIPAL_NAME_MAX + 1];
	int64_t created;
	uint32_t uids[STORE_PRINCIPAL_IDS_MAX], nuids;
	uint32_t gids[STORE_PRINCIPAL_IDS_MAX], ngids;
	struct store_grant *grants;
	uint32_t ngrants;
	struct store_limit *limits;
	uint32_t nlimits;
};

#define STORE_APIKEY_ID_MAX 32
#define STORE_APIKEY_SECRETS_MAX 4

/* One secret of an API key; its token object is "coffer.apikey.<id>" at
 * version `generation`. */
struct store_apikey_secret {
	uint32_t generation;
	int64_t created;
	int64_t expires;                /* 0: the current secret */
};

struct store_apikey {
	char id[STORE_APIKEY_ID_MAX + 1];
	char principal[STORE_PRINCIPAL_NAME_MAX + 1];
	int64_t created;
	int64_t revoked;                /* 0: live */
	uint32_t next_generation;       /* never reused, even after a revoke */
	struct store_apikey_secret secrets[STORE_APIKEY_SECRETS_MAX];
	uint32_t nsecrets;
};

typedef struct store store;

enum store_backend { STORE_SQLITE = 0, STORE_POSTGRESQL = 1 };

#define STORE_REPLICA_MAX 63      /* [A-Za-z0-9._-], "" allowed */
#define STORE_OWNER_MAX 127     /* an incarnation: "<replica>/<pid>/<16 hex>" */

struct store_options {
	enum store_backend backend;
	const char *dir;              /* SQLite: <dir>/coffer.db */
	const char *dsn;              /* PostgreSQL: a libpq connection string (not kept) */
	const char *replica;          /* this replica's name; NULL: "" */
	const char *owner;            /* the owner of intents this store records; NULL: replica */
	unsigned busy_ms;             /* SQLite: how long a write waits for another process's
					 lock; 0: 5,000 (tests that hold the lock use less) */
	unsigned wait_ms;             /* PostgreSQL: how long a statement waits for the
					 server's answer; 0: 30,000 */
};

/* Open the store and create, migrate or check its schema. SQLite: CF_E_IO;
 * PostgreSQL: CF_E_UNAVAILABLE when the server cannot be reached; both:
 * CF_E_CONFIG for a schema from a newer Coffer, CF_E_INVALID_ARG for a bad
 * replica or owner name. Rows written before schema 9 (one daemon per
 * store) are given this replica and owner. */
int store_open_with(const struct store_options *o, store **out);
/* store_open_with for SQLite in dir, replica "". */
int store_open(const char *dir, store **out);
void store_close(store *s);
enum store_backend store_backend(store *s);
/* 0 while the store cannot be used: SQLite, once the state database was
 * found removed or replaced under the running daemon (checked before every
 * change; changes are refused from then on); PostgreSQL, while the server
 * does not answer (asked at most once a second, reconnecting if it can). */
int store_healthy(store *s);
/* For the fleet's notification thread (any thread): the PostgreSQL backend
 * pid of the store's connection (a notification it sent announces a change
 * this process made and installed already; 0 on SQLite), and whether a
 * change's COMMIT lost its answer since the last call (sqldb.h: this
 * process's memory may then be behind the database). */
int store_session_pid(store *s);
int store_take_commit_unknown(store *s);

/* The CKA_ID of versions made before schema 7: SHA-256("coffer/<name>/<version>")[:16]. */
void store_ckaid_legacy(const char *name, uint32_t version, uint8_t out[STORE_CKAID_LEN]);

/* Call cb for every key with its versions (borrowed for the callback). */
int store_load(store *s, int (*cb)(const struct store_key *k, void *arg), void *arg);
/* The same for one key (after a change notification); CF_E_NOT_FOUND. */
int store_key_get(store *s, const char *name, int (*cb)(const struct store_key *k, void *arg),
		  void *arg);

/* Record a new key (k: name, type, exportable, allowed_ops, created,
 * rotation_period, next_rotation) with version 1 (CKA_ID ckaid) as primary,
 * and retire the intent `intent` (0: none), in one transaction. CF_E_EXISTS
 * if the name is taken. */
int store_key_create(store *s, const struct store_key *k, const uint8_t ckaid[STORE_CKAID_LEN],
		     int64_t intent);
/* Record a new version, make it primary, set the next scheduled rotation,
 * and retire the intent `intent` (0: none), in one transaction. */
int store_version_add(store *s, const char *name, uint32_t version,
		      const uint8_t ckaid[STORE_CKAID_LEN], int64_t now, int64_t next_rotation,
		      int64_t intent);
/* Write a key's lifecycle fields (primary, minimums, rotation schedule,
 * pending rotation) and every version's state, and retire the intent
 * `intent` (0: none), in one transaction. `version` names the version the
 * change is about (for its audit record; 0: the key as a whole). */
int store_key_save(store *s, const struct store_key *k, uint32_t version, int64_t intent);

/*
 * Intents (crash safety, daemon/CRASH-SAFETY.md): before a call makes token
 * objects it records, durably, what it is about to make: the objects of
 * `name` at `version` (the token label coffer/<name>/<version>) with CKA_ID
 * `ckaid`. The transaction that records the new version retires the intent;
 * an intent found at start-up belongs to a call that died in between, and
 * recovery removes what it made. (A destruction needs none: the version's
 * destroy-scheduled state is its intent.)
 */
enum store_intent_kind { STORE_INTENT_MAKE = 1 };
struct store_intent {
	int64_t id;
	enum store_intent_kind kind;
	char name[CF_KEY_NAME_MAX + 32];
	uint32_t version;
	uint8_t ckaid[STORE_CKAID_LEN];
	int64_t created;
	char owner[STORE_OWNER_MAX + 1];  /* who recorded it (store_options.owner) */
};
/* Record an intent owned by this store's owner; *id is its number. */
int store_intent_add(store *s, enum store_intent_kind kind, const char *name, uint32_t version,
		     const uint8_t ckaid[STORE_CKAID_LEN], int64_t *id);
/* Retire an intent whose call changed nothing (it failed before recording). */
int store_intent_drop(store *s, int64_t id);
/* The same for the caller's own intent once its objects are destroyed, not
 * fenced: a change that lost the fleet's lock still clears what it made
 * (the row names nothing else). */
int store_intent_drop_own(store *s, int64_t id);
/* Every owner's intents, by number (collected first: cb may use the store). */
int store_intents_load(store *s, int (*cb)(const struct store_intent *in, void *arg), void *arg);
/* Drop every intent (recovery, once their objects are gone). */
int store_intents_clear(store *s);
/* Drop the intents of one owner (a replica recovering its own). */
int store_intents_clear_owner(store *s, const char *owner);

/*
 * The call a change belongs to. A dispatcher (or the daemon's scheduled
 * work) sets it on the calling thread for the length of a mutating call.
 * Every transaction that records a change (key, version, lifecycle,
 * principal, API key) then also commits, atomically with it:
 *  - the call's audit record, into the audit outbox (the audit trail takes it
 *    from there: audit.h), formatted by `record`;
 *  - with an idempotency key, the mark on its idempotency record that the
 *    call's effect is durable, naming what it changed (so that a retry
 *    answers it instead of acting again).
 * `record` writes the JSON body of the record of a change to `name` at
 * `version` into buf (at most len bytes, NUL-terminated); it returns the
 * length, or -1.
 */
struct store_call {
	const char *idem_key;           /* NULL: the call has no idempotency key */
	const char *idem_owner;         /* who holds its record (idem_owner()): the change
					   commits only while it still does */
	uint32_t uid;
	int (*record)(const struct store_call *c, const char *name, uint32_t version, char *buf,
		      size_t len);
	void *arg;
	/* Written by the store. */
	unsigned effects;               /* changes committed for this call */
};
/* Set (c) or clear (NULL) the calling thread's call. */
void store_call_set(struct store_call *c);
struct store_call *store_call_get(void);
/* From now on (on: 1) the calling thread's transactions wait at most
 * SQLDB_YIELD_LOCK_MS for a lock another session holds, then fail with that
 * text: background work that is tried again (the fleet's reloads, the audit
 * trail's anchor). The store has one connection, and background work
 * waiting the whole lock_timeout (PostgreSQL) or busy timeout (SQLite) on
 * what another process holds kept every change and call of the daemon
 * queued behind it, once per retry. */
void store_yield(int on);

/*
 * Change notification: on PostgreSQL every transaction that records a change
 * also announces it, delivered on commit, as NOTIFY on channel
 * STORE_NOTIFY_CHANNEL with the payload "<kind> <name>": kind "key" (a key,
 * its versions or lifecycle; name: the key), "principal" (name: the
 * principal), "apikey" (name: the API key id), "signed" (whether a principal
 * must sign its calls; name: the principal). SQLite has no other reader.
 */
#define STORE_NOTIFY_CHANNEL "coffer"

/* The audit outbox: records of committed changes not yet in the trail.
 * Outbox and anchor are per replica (store_options.replica): each sees only
 * its own. */
int store_outbox_load(store *s, int (*cb)(int64_t id, const char *line, void *arg), void *arg);

/* Where the audit trail ended when last anchored: its last record's number
 * and chain value, and whether the daemon then stopped cleanly. */
struct store_audit_anchor {
	uint64_t seq;
	uint8_t chain[32];
	int clean;
	int64_t time;
};
/* CF_E_NOT_FOUND if the trail was never anchored. */
int store_audit_anchor_get(store *s, struct store_audit_anchor *out);
/* Move the anchor and drop outbox records up to outbox_done (0: none), in
 * one transaction. */
int store_audit_anchor_put(store *s, const struct store_audit_anchor *a, int64_t outbox_done);
/* (Offline verification reads it with cf_audit_anchor_read, cf_audit_verify.h.) */

/* Call cb for every principal (borrowed for the callback), by name. */
int store_principals_load(store *s, int (*cb)(const struct store_principal *p, void *arg),
			  void *arg);
/* Write a principal whole (replacing what was stored under its name) in one
 * transaction. create: CF_E_EXISTS if the name is taken. CF_E_EXISTS also for
 * a uid or gid another principal holds. */
int store_principal_put(store *s, const struct store_principal *p, int create);
/* The secrets a principal's deletion dropped, as the store had them (a
 * replica may not have read a key another one made a moment ago): their
 * token objects, "coffer.apikey.<id>" at version `generation`, are the
 * caller's to destroy. The first STORE_DROPPED_MAX are listed; total counts
 * them all (the start's reconciliation destroys any beyond). */
#define STORE_DROPPED_MAX 64
struct store_dropped {
	struct {
		char id[STORE_APIKEY_ID_MAX + 1];
		uint32_t generation;
	} s[STORE_DROPPED_MAX];
	size_t n, total;
};

/* Delete a principal and, in the same transaction, revoke its API keys as
 * of `now` (their secrets' rows go): its secrets never outlive it, even
 * when the process dies right after. CF_E_NOT_FOUND if there is no such
 * principal. dropped (NULL: not wanted): what went, for the caller to
 * destroy. */
int store_principal_delete(store *s, const char *name, int64_t now,
			   struct store_dropped *dropped);

/* An idempotency record: a mutating call's key, caller and request, and
 * (once done) its outcome. */
#define STORE_IDEM_KEY_MAX 128
struct store_idem {
	char key[STORE_IDEM_KEY_MAX + 1];
	uint32_t uid;
	char method[128];
	uint8_t fingerprint[32];      /* of method and request bytes (idempotency.c) */
	int done;                     /* 0: the call started and has not finished */
	int status;                   /* Coffer status of the outcome */
	char message[256];
	uint8_t *response;            /* packed response (owned by whoever filled it) */
	size_t response_len;
	int64_t created;
	char request_id[65];          /* the first attempt's request id */
	int committed;                /* not done, but its change is durable (store_call) */
	char effect_name[CF_KEY_NAME_MAX + 32];   /* what it changed (committed) */
	uint32_t effect_version;      /* the key version it made or acted on, or the API
				       * key secret generation it made (committed) */
	char owner[STORE_OWNER_MAX + 1];  /* the incarnation of the replica running it (opaque) */
};
/* CF_E_NOT_FOUND if there is none. */
int store_idem_get(store *s, const char *key, uint32_t uid, struct store_idem *out);
/* Insert or replace. */
int store_idem_put(store *s, const struct store_idem *r);
/* Insert r if there is no record for (r->key, r->uid): CF_OK. Otherwise
 * CF_E_EXISTS, and *existing (if not NULL) holds the record found (its
 * response the caller's to free). One atomic insert under the primary key:
 * of concurrent claims, on any replica, exactly one gets CF_OK. */
int store_idem_claim(store *s, const struct store_idem *r, struct store_idem *existing);
/* Replace the record of (r->key, r->uid) with r only if it is still pending
 * (not done, not committed) and owned by old_owner: CF_OK; otherwise (it
 * finished, committed, was taken over or is gone) CF_E_EXISTS. */
int store_idem_takeover(store *s, const struct store_idem *r, const char *old_owner);
/* Finish the pending record of (r->key, r->uid) with r, or (release) drop
 * it while nothing was committed, only if `owner` still holds it: CF_OK, or
 * CF_E_EXISTS (another replica took it over, or it is gone). */
int store_idem_settle(store *s, const struct store_idem *r, const char *owner);
int store_idem_release(store *s, const char *key, uint32_t uid, const char *owner);
/* Make new_owner the holder of the record of (key, uid) if it is not done
 * and old_owner (dead) holds it: CF_OK, else CF_E_EXISTS. */
int store_idem_adopt(store *s, const char *key, uint32_t uid, const char *old_owner,
		     const char *new_owner);
/* Drop finished records created before `before`. */
int store_idem_expire(store *s, int64_t before);

/* Call cb for every API key, revoked ones too (borrowed for the callback). */
int store_apikeys_load(store *s, int (*cb)(const struct store_apikey *k, void *arg), void *arg);
/* Write an API key whole (its secrets replaced) and retire the intent
 * `intent` (0: none) in one transaction. create: CF_E_EXISTS if the id is
 * taken. generation: the secret the change is about (its audit record). */
int store_apikey_put(store *s, const struct store_apikey *k, int create, uint32_t generation,
		     int64_t intent);

/* Principals whose calls must be signed even while they have no live API key
 * (store_apikey_put sets it with a principal's first key). cb gets each name. */
int store_signed_load(store *s, int (*cb)(const char *principal, void *arg), void *arg);
/* Set or clear it (the caller checks that the principal exists). */
int store_signed_set(store *s, const char *principal, int on);

/*
 * The registry change lock. Replicas sharing one state (fleet.h) change keys,
 * principals and API keys one at a time across the fleet: each such change
 * runs between store_change_begin and store_change_end, and with *shared
 * set re-reads from the store what it is about to change (another replica
 * may have changed it since this one loaded it). Without a lock set (one
 * daemon on its own state), begin does nothing and *shared is 0. healthy
 * (may be NULL): whether the lock's provider is connected (store_healthy
 * reports it too: a replica that hears no notifications may serve stale
 * data). touch (may be NULL) is told of each change committed under the
 * lock: progress, for a holder watched for being stuck (fleet.h).
 * On PostgreSQL the lock is fenced: begin moves an epoch on, and each
 * write of the thread until end commits only if the epoch is still its
 * own (else CF_E_UNAVAILABLE, nothing committed), so a replica that lost
 * the lock mid-change cannot commit over the change of the one that took it.
 */
/* Called on the committing thread after each change whose audit record went
 * into the outbox committed, before the change is installed in memory:
 * the trail queues the record now (audit.c), so that records of calls that
 * see the change follow it in the file. NULL: none. Set before calls run. */
void store_set_committed_hook(store *s, void (*fn)(void *arg), void *arg);

void store_set_change_lock(store *s, int (*lock)(void *arg), void (*unlock)(void *arg),
			   int (*healthy)(void *arg), void (*touch)(void *arg), void *arg);
int store_change_begin(store *s, int *shared);
/* 1 if the calling thread's change was refused by the fence (its lock was
 * lost: nothing of that transaction committed, unlike a connection lost
 * during a COMMIT, whose outcome is unknown). */
int store_change_lost(store *s);
/* CF_OK if the calling thread's change still holds the lock (a read through
 * the fence), before a token write that rests on what it read. */
int store_change_check(store *s);
void store_change_end(store *s);

#endif
