/*
 * apikeys.h — principals' API keys: an id and up to STORE_APIKEY_SECRETS_MAX
 * HMAC-SHA256 secrets, each a non-extractable token object
 * "coffer.apikey.<id>" at version = its generation. Secrets are made by the
 * token's RNG (or imported) and handed out once; afterwards only the token
 * can compute with them. Records live in the state store; the data path
 * reads memory only.
 *
 * Rotation keeps the old secrets verifying until a deadline; apikeys_expire
 * (run by cofferd every few seconds) then destroys them in the token, and a
 * secret past its deadline never verifies even before that sweep.
 *
 * Thread-safe: verification holds a read lock while the token checks the
 * MAC; changes serialise on their own mutex and take the write lock only to
 * swap records, so token handles are destroyed after no reader can hold them.
 */
#ifndef COFFER_APIKEYS_H
#define COFFER_APIKEYS_H

#include <stddef.h>
#include <stdint.h>

#include "cf_p11.h"
#include "store.h"

#define APIKEYS_OBJECT_PREFIX "coffer.apikey."
#define APIKEYS_SECRET_LEN 32            /* generated secrets */
#define APIKEYS_IMPORT_MIN 32
#define APIKEYS_IMPORT_MAX 64
#define APIKEYS_PER_PRINCIPAL 8          /* live keys */
#define APIKEYS_MAX_OVERLAP (90 * 86400)

typedef struct apikeys apikeys;

/* Load every record and open its secrets. Reconciliation, each reported
 * through `report` and counted in *mismatches: a secret the store records but
 * the token lacks (unusable), and an API key object no record claims (a
 * secret that was retired or never handed out: destroyed). */
int apikeys_open(cf_p11 *p11, store *st, void (*report)(const char *msg),
		 unsigned *mismatches, apikeys **out);
void apikeys_close(apikeys *a);   /* accepts NULL */
/* Re-read every key from the store (another replica changed one, fleet.h).
 * CF_E_BUSY (try again) while a change of this process is in progress. */
int apikeys_refresh(apikeys *a);

/* ---- administration ---- */

/* CF_OK, or CF_E_PRECONDITION saying why the token cannot hold API-key
 * secrets (they are HMAC-SHA256 keys imported into it): create and rotate
 * check it first. */
int apikeys_available(cf_p11 *p11);

/* New key for principal (who must exist: the caller checks). import NULL:
 * a generated secret, returned in *secret (free with cf_secret_free); else
 * the imported secret and *secret = NULL. CF_E_PRECONDITION beyond
 * APIKEYS_PER_PRINCIPAL live keys. */
int apikeys_create(apikeys *a, const char *principal, const cf_secret *import, int64_t now,
		   struct store_apikey *out, cf_secret **secret);
/* New current secret; the previous ones verify until now + overlap (never
 * later than their own deadline) or, with overlap 0, are destroyed now.
 * CF_E_NOT_FOUND, CF_E_PRECONDITION (revoked; all secret slots live). */
int apikeys_rotate(apikeys *a, const char *id, uint32_t overlap, const cf_secret *import,
		   int64_t now, struct store_apikey *out, cf_secret **secret);
/* Destroy every secret; the id stays known as revoked. */
int apikeys_revoke(apikeys *a, const char *id, int64_t now, struct store_apikey *out);
/* DeletePrincipal. commit(arg, now, dropped) makes the store's change (the
 * principal deleted and its keys revoked as of now, the time it began, in
 * one transaction: store_principal_delete) while this module's changes and
 * reloads wait, so that none writes back a key of the principal or lets a
 * handle go in between; if it commits, memory follows without fail: the
 * keys stop verifying, the "must sign" flag goes, and the objects of the
 * secrets that went (as the store listed them in dropped) are destroyed.
 * commit's status. */
int apikeys_principal_delete(apikeys *a, const char *principal,
			     int (*commit)(void *arg, int64_t now, struct store_dropped *dropped),
			     void *arg);
/* Whether principal must sign its calls while it has no live key (an
 * audited change; the caller checks that the principal exists). Set by its
 * first key; on = 0 lets it call with its uid only once its keys are gone. */
int apikeys_set_required(apikeys *a, const char *principal, int on);
/* Keys by id (principal NULL or "": all), revoked ones too; free() *out. */
int apikeys_list(apikeys *a, const char *principal, struct store_apikey **out, size_t *n);
/* One key, revoked ones too. CF_E_NOT_FOUND. */
int apikeys_get(apikeys *a, const char *id, struct store_apikey *out);
/* Destroy secrets whose deadline has passed. */
void apikeys_expire(apikeys *a, int64_t now);

/* ---- the data path ---- */

/* Must principal's calls be signed? APIKEYS_LIVE: it has a live API key;
 * APIKEYS_STICKY: it has none now but had one and no operator has allowed
 * uid-only calls since (apikeys_set_required); APIKEYS_NONE (0): no. */
enum { APIKEYS_NONE = 0, APIKEYS_LIVE, APIKEYS_STICKY };
int apikeys_required(apikeys *a, const char *principal);
/* CF_OK if mac is HMAC-SHA256(msg) under a live secret of key id, which
 * belongs to principal (*generation: that secret's, unless NULL).
 * CF_E_UNAUTHENTICATED with the reason (unknown, revoked, another
 * principal's, no live secret matches); token failures as they are. */
int apikeys_verify(apikeys *a, const char *principal, const char *id, const uint8_t *msg,
		   size_t len, const uint8_t mac[32], int64_t now, uint32_t *generation);
/* Is secret `generation` of key id still live: APIKEYS_SECRET_LIVE;
 * APIKEYS_KEY_GONE: the key is unknown, revoked or not principal's;
 * APIKEYS_SECRET_GONE: that secret was rotated out (expired). */
enum { APIKEYS_SECRET_LIVE = 0, APIKEYS_KEY_GONE, APIKEYS_SECRET_GONE };
int apikeys_secret_live(apikeys *a, const char *principal, const char *id, uint32_t generation,
			int64_t now);

#endif
