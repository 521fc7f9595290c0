/*
 * handlers_internal.h — what the handler files share (not used outside the
 * handlers).
 */
#ifndef COFFER_HANDLERS_INTERNAL_H
#define COFFER_HANDLERS_INTERNAL_H

#include "handlers.h"

/* A new, initialised message of type d, or NULL; and dst = a copy of
 * src[0..len). Both from cf_pbwipe_allocator (so in a sealed call from its
 * locked arena); free the message through it. */
void *h_new_msg(const ProtobufCMessageDescriptor *d);
int h_set_bytes(ProtobufCBinaryData *dst, const uint8_t *src, size_t len);

/* Finish a handler that produced `info` with status r: build a Key
 * response; info is freed in every case. */
int h_key_response(int r, struct store_key *info, ProtobufCMessage **resp);

/* API key `id` as a response of `type` (ApiKey, or ApiKeySecretResponse
 * without the secret): handlers_describe. */
int h_describe_api_key(const struct hctx *c, const ProtobufCMessageDescriptor *type,
		       const char *id, ProtobufCMessage **resp);
/* Principal `name`'s SetPrincipalAuthResponse: handlers_describe. */
int h_describe_principal_auth(const struct hctx *c, const char *name, ProtobufCMessage **resp);

/* Each handler file binds its handlers to method ids (cf_methods.h), so
 * none names a method by string: handlers.c, AdminService's API key methods
 * (handlers_apikeys.c), audit methods (handlers_audit.c) and key lifecycle
 * methods (handlers_lifecycle.c). handlers_files lists them, NULL-ended:
 * every method but SessionService/Call is bound in exactly one
 * (tests/unit/test_dispatch.c). */
extern const handler_fn handlers_base[CF_METHOD__COUNT];
extern const handler_fn handlers_apikeys[CF_METHOD__COUNT];
extern const handler_fn handlers_audit[CF_METHOD__COUNT];
extern const handler_fn handlers_lifecycle[CF_METHOD__COUNT];
extern const handler_fn *const handlers_files[];

#endif
