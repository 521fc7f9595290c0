/*
 * libcoffer_rpc.h — the RPC layer, above the transport, the API-key signer
 * and the sealed channel: a client and one call of a protobuf-c message,
 * sealed where it must be. What the public calls (libcoffer.c and the other
 * libcoffer_*.c) are built on. Not installed; hidden by libcoffer.map.
 */
#ifndef COFFER_LIBCOFFER_RPC_H
#define COFFER_LIBCOFFER_RPC_H

#include <protobuf-c/protobuf-c.h>

#include "coffer.h"

struct lc_apikey;
struct lc_sessions;

/*
 * Call `method` with `req`, sealed in a session where it must be; on success
 * *out is the unpacked response, to be freed with
 * protobuf_c_message_free_unpacked(*out, secret ? &cf_locked_allocator : NULL).
 * `secret`: the response carries secret material, so it is unpacked into
 * locked memory (cf_arena.h).
 */
int lc_rpc(coffer_client *c, const char *method, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *rdesc, int secret, ProtobufCMessage **out);

/*
 * lc_rpc in two halves, so that a caller keeps several calls in flight
 * (coffer_wait): lc_rpc_start packs req (borrowed only meanwhile) and hands
 * it to the client's stream when it takes it; lc_rpc_wait waits for the
 * answer (or makes the unary call, when the stream did not take it or
 * ended under it), unpacks it as lc_rpc does, and frees the call. Only
 * for calls whose response carries no secret. Every started call is
 * waited for exactly once, by any thread, before coffer_close.
 */
struct lc_call;
int lc_rpc_start(coffer_client *c, const char *method, const ProtobufCMessage *req,
    struct lc_call **out);
int lc_rpc_wait(struct lc_call *call, const ProtobufCMessageDescriptor *rdesc,
    ProtobufCMessage **out);

/* Clear the error detail; COFFER_E_INVALID_ARG for a NULL client or name. */
int lc_check_client(const coffer_client *c, const char *name);

/* The client's COFFER_CONNECT_* flags, its session pool, its API key (the
 * client takes k over and frees the key it replaces). */
unsigned int lc_client_flags(const coffer_client *c);
struct lc_sessions *lc_client_sessions(coffer_client *c);
void lc_client_set_apikey(coffer_client *c, struct lc_apikey *k);

/* For the benchmark only (bench_daemon links libcoffer statically): send
 * every call unsealed, to measure what sealing costs against a daemon
 * configured with session.unsealed_secrets; and open (then drop) one fresh
 * session, to measure a handshake. */
void lc_client_set_unsealed(coffer_client *c, int unsealed);
int lc_handshake_once(coffer_client *c);

#endif
