/*
 * libcoffer_internal.h — what libcoffer.c (gRPC transport, public calls) and
 * libcoffer_session.c (the sealed channel) share. Not installed; the symbols
 * are hidden by libcoffer.map.
 */
#ifndef COFFER_LIBCOFFER_INTERNAL_H
#define COFFER_LIBCOFFER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "coffer.h"

struct lc_sessions;

/* A unary call with protobuf-c messages, sealed where it must be; on success
 * *out is the response (free with protobuf_c_message_free_unpacked(*out,
 * NULL)). */
int lc_rpc(coffer_client *c, const char *method, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *rdesc, ProtobufCMessage **out);

/* One unary call with the packed request buf[0..len), which it takes over
 * (wiped and freed). On success *out and *outlen is the response payload,
 * malloc'ed: the caller wipes and frees it. LC_CIPHERTEXT: neither message
 * carries anything secret in the clear (session handshakes and sealed
 * records), so nothing is wiped. */
#define LC_CIPHERTEXT 1
int lc_transport(coffer_client *c, const char *method, uint8_t *buf, size_t len, uint8_t **out,
    size_t *outlen, int flags);

/* Clear the error detail; COFFER_E_INVALID_ARG for a NULL client or name. */
int lc_check_client(const coffer_client *c, const char *name);

/* A call whose response is a Key, converted into *out (out may be NULL). */
int lc_key_call(coffer_client *c, const char *method, const ProtobufCMessage *req,
    struct coffer_key_info **out);

struct lc_sessions *lc_sessions_new(void);
void lc_sessions_free(struct lc_sessions *p);   /* wipes every session; accepts NULL */
int lc_sessions_pin(struct lc_sessions *p, const uint8_t *spki, size_t len);
/* 0: do not compare the caller ids the daemon signed with this process's. */
void lc_sessions_set_peer_check(struct lc_sessions *p, int check);

/* `method` with the packed request req[0..len) (borrowed) through a sealed
 * session of pool p; *out and *outlen as for lc_transport. */
int lc_sealed_call(coffer_client *c, struct lc_sessions *p, const char *method,
    const uint8_t *req, size_t len, uint8_t **out, size_t *outlen);

/* The API key calls are signed with (libcoffer_apikey.c). */
struct lc_apikey;
void lc_apikey_free(struct lc_apikey *k);   /* wipes the secret; accepts NULL */
struct lc_apikey **lc_client_apikey(coffer_client *c);
/* The authorization value for method with the packed request buf[0..len). */
int lc_apikey_sign(struct lc_apikey *k, const char *method, const uint8_t *buf,
    size_t len, char *out, size_t outlen);

/* Coffer status of a gRPC status code (the one table, in libcoffer.c). */
int lc_status_from_grpc(unsigned code);

/* The SubjectPublicKeyInfo DER of the PEM public key in `path`
 * (OPENSSL_free *der). */
int lc_spki_from_pem_file(const char *path, uint8_t **der, size_t *len);

/* For the benchmark only (bench_daemon links libcoffer statically): send
 * every call unsealed, to measure what sealing costs against a daemon
 * configured with session.unsealed_secrets; and open (then drop) one fresh
 * session, to measure a handshake. */
void lc_client_set_unsealed(coffer_client *c, int unsealed);
int lc_handshake_once(coffer_client *c);
int lc_sessions_handshake_once(coffer_client *c, struct lc_sessions *p);

#endif
