/*
 * libcoffer_session.h — the caller's side of sealed sessions
 * (proto/session-protocol.md), above the transport and the API-key signer.
 * Not installed.
 */
#ifndef COFFER_LIBCOFFER_SESSION_H
#define COFFER_LIBCOFFER_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "libcoffer_signer.h"
#include "libcoffer_transport.h"

struct lc_sessions;

struct lc_sessions *lc_sessions_new(void);
void lc_sessions_free(struct lc_sessions *p);   /* wipes every session; accepts NULL */
/* Ends the idle sessions at the daemon (sealed CloseSession, signed with k),
 * best effort and bounded: they no longer hold room in its session table
 * until they expire. For close: no call may be running. */
void lc_sessions_close(struct lc_conn *t, struct lc_apikey *k, struct lc_sessions *p);
int lc_sessions_pin(struct lc_sessions *p, const uint8_t *spki, size_t len);
/* 0: do not compare the caller ids the daemon signed with this process's. */
void lc_sessions_set_peer_check(struct lc_sessions *p, int check);

/* `method` with the packed request req[0..len) (borrowed) through a sealed
 * session of pool p, on t, signed with k (NULL: unsigned); on success *out
 * and *outlen is the response payload in locked memory (cf_arena.h): release
 * it with cf_secure_free. */
int lc_sealed_call(struct lc_conn *t, struct lc_apikey *k, struct lc_sessions *p,
    const char *method, const uint8_t *req, size_t len, uint8_t **out, size_t *outlen);

/* For the benchmark: open (then drop) one fresh session. */
int lc_sessions_handshake_once(struct lc_conn *t, struct lc_apikey *k, struct lc_sessions *p);

/* The SubjectPublicKeyInfo DER of the PEM public key in `path`
 * (OPENSSL_free *der). */
int lc_spki_from_pem_file(const char *path, uint8_t **der, size_t *len);

#endif
