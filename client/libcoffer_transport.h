/*
 * libcoffer_transport.h — libcoffer's bottom layer: a client's gRPC channel
 * and one unary call on it, and the one gRPC status table. It knows nothing
 * of messages, sessions or API keys (the layers above: libcoffer_signer,
 * libcoffer_session, libcoffer_rpc). Not installed; hidden by libcoffer.map.
 */
#ifndef COFFER_LIBCOFFER_TRANSPORT_H
#define COFFER_LIBCOFFER_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#define LC_IDEM_KEY_MAX 128

struct lc_conn;

/* A channel to the daemon's socket `path` (without "unix:"). */
int lc_conn_new(const char *path, struct lc_conn **out);
/* No call may be running. Accepts NULL. */
void lc_conn_free(struct lc_conn *t);
void lc_conn_set_timeout(struct lc_conn *t, unsigned int ms);
unsigned int lc_conn_timeout(const struct lc_conn *t);
/* The idempotency-key sent with every call (a checked key, or NULL: none). */
void lc_conn_set_idem_key(struct lc_conn *t, const char *key);
int lc_conn_has_idem_key(const struct lc_conn *t);

/*
 * One unary call of `method` with the packed request buf[0..len), which it
 * takes over (wiped and freed, unless LC_CIPHERTEXT), and the authorization
 * value authz (NULL: none). On success *out and *outlen is the response
 * payload, malloc'ed: the caller wipes and frees it. LC_CIPHERTEXT: neither
 * message carries anything secret in the clear (session handshakes and
 * sealed records), so nothing is wiped.
 */
#define LC_CIPHERTEXT 1
int lc_transport(struct lc_conn *t, const char *method, uint8_t *buf, size_t len,
    const char *authz, uint8_t **out, size_t *outlen, int flags);

/* Coffer status of a gRPC status code (the one table). */
int lc_status_from_grpc(unsigned code);

#endif
