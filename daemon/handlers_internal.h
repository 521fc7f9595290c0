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
/* CF_E_PRECONDITION unless the call is sealed (or configuration allows
 * secret plaintext unsealed): for calls that carry secrets. */
int h_require_sealed(const struct hctx *c, const char *method, const char *what);

/* Finish a handler that produced `info` with status r: build a Key
 * response; info is freed in every case. */
int h_key_response(int r, struct store_key *info, ProtobufCMessage **resp);

/* API key `id` as a response of `type` (ApiKey, or ApiKeySecretResponse
 * without the secret): handlers_describe. */
int h_describe_api_key(const struct hctx *c, const ProtobufCMessageDescriptor *type,
		       const char *id, ProtobufCMessage **resp);
/* Principal `name`'s SetPrincipalAuthResponse: handlers_describe. */
int h_describe_principal_auth(const struct hctx *c, const char *name, ProtobufCMessage **resp);

/* AdminService's API key methods (handlers_apikeys.c), audit methods
 * (handlers_audit.c) and key lifecycle methods (handlers_lifecycle.c), each
 * ended by a NULL service. */
extern const struct handler handlers_apikeys[];
extern const struct handler handlers_audit[];
extern const struct handler handlers_lifecycle[];

#endif
