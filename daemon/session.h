/*
 * session.h — the daemon's side of sealed sessions (proto/session-protocol.md):
 * the token-held identity key, the handshake, and the table of live sessions
 * with their sequence numbers and limits. The record crypto is cf_session.
 *
 * Thread-safe. A session returned by session_accept stays valid until
 * session_release, even if it is ended meanwhile (its keys are wiped when
 * the last reference goes).
 */
#ifndef COFFER_SESSION_H
#define COFFER_SESSION_H

#include <stdint.h>
#include <sys/types.h>

#include "cf_buf.h"
#include "cf_p11.h"
#include "cf_secret.h"
#include "cf_session.h"

/* The identity key's token name (version 1). Names starting with "coffer."
 * are reserved for the daemon's own keys. */
#define SESSION_IDENTITY_KEY "coffer.identity"

struct session_cfg {
	unsigned lifetime;          /* seconds from the handshake */
	uint64_t max_records;       /* per direction */
	uint64_t max_bytes;         /* plaintext bytes per direction */
	unsigned max_per_caller;    /* sessions per uid; the LRU one is ended to make room */
	unsigned max_sessions;      /* in total; beyond: CF_E_EXHAUSTED */
	unsigned max_pending;       /* handshakes in progress per uid; beyond: CF_E_EXHAUSTED */
};

typedef struct session_mgr session_mgr;
typedef struct session session;

/* Open the identity key in the token, generating it on first start. */
int session_mgr_open(cf_p11 *p11, const struct session_cfg *cfg, session_mgr **out);
/* All sessions must be released. Accepts NULL. */
void session_mgr_close(session_mgr *sm);

/* The identity public key (SPKI DER, borrowed) and its fingerprint. */
const uint8_t *session_identity(const session_mgr *sm, size_t *len);
const char *session_fingerprint(const session_mgr *sm);

/* Server side of the handshake. `h` carries the client's fields (version,
 * client_pub, client_random, principal); this fills in the rest (session id,
 * server ephemeral and random, uid/gid, identity, limits), signs the
 * transcript in the token into `sig` and registers the session.
 * CF_E_INVALID_ARG (bad version or ephemeral key), CF_E_EXHAUSTED (limits). */
int session_handshake(session_mgr *sm, uid_t uid, gid_t gid, struct cf_session_hello *h,
		      cf_buf *sig);

/* CF_OK if session id exists and is uid/gid's (what session_accept checks
 * first, with its texts): a record for no session of the caller's is
 * refused before memory is locked to open it. */
int session_known(session_mgr *sm, uid_t uid, gid_t gid, const uint8_t *id, size_t idlen);
/* Check and open a caller's record in place: the session exists, belongs
 * to uid/gid, has not expired, seq is the next one, the record
 * authenticates. On success *s is referenced and rec[0 .. *ptlen) holds the
 * inner request, which the caller wipes. CF_E_UNAUTHENTICATED with the
 * reason otherwise (nothing of the plaintext is left in rec); the session is
 * ended after a sequence or authentication failure. */
int session_accept(session_mgr *sm, uid_t uid, gid_t gid, const uint8_t *id, size_t idlen,
		   uint64_t seq, const char *method, uint8_t *rec, size_t reclen,
		   session **s, size_t *ptlen);
/* Seal the reply to the call accepted with seq into
 * out[0 .. len + CF_SESSION_TAG_LEN); out may be pt (in place). */
int session_reply(session *s, uint64_t seq, const char *method, const uint8_t *pt, size_t len,
		  uint8_t *out);
/* End the session now (CloseSession); later records are refused. */
void session_end(session_mgr *sm, session *s);
void session_release(session_mgr *sm, session *s);   /* accepts NULL */

/* End every session past its lifetime or limits (their keys are wiped once
 * no call holds them). Returns how many ended. */
unsigned session_expire(session_mgr *sm);

unsigned session_count(session_mgr *sm);

#endif
