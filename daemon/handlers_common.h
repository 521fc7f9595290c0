/*
 * handlers_common.h — what the handler files share (not used outside the
 * handlers), and what each of them exports: its handlers bound to method
 * ids (cf_methods.h), so none names a method by string, and the answers it
 * can read back for handlers_describe. handlers_table.c merges them.
 */
#ifndef COFFER_HANDLERS_COMMON_H
#define COFFER_HANDLERS_COMMON_H

#include "cf_methods.h"
#include "coffer/v1/coffer.pb-c.h"
#include "handlers.h"

/* A new, initialised message of type d, or NULL; and dst = a copy of
 * src[0..len). Both from cf_pbwipe_allocator (so in a sealed call from its
 * locked arena); free the message through it. */
void *h_new_msg(const ProtobufCMessageDescriptor *d);
int h_set_bytes(ProtobufCBinaryData *dst, const uint8_t *src, size_t len);

/* The end of every handler that built a response `out` (a message from
 * h_new_msg, or NULL) with status r: on CF_OK it becomes *resp, else it is
 * freed. Returns r. */
int h_reply(int r, void *out, ProtobufCMessage **resp);

/* CF_E_TOO_LARGE (naming `what`) if len > max. */
int h_check_data(size_t len, size_t max, const char *what);

/* A Sign or Verify request's hash, scheme, ecdsa_raw and data (exactly one
 * of msg or digest) into sp, and the bytes to sign into in/inlen. */
int h_sign_params(Coffer__V1__Hash hash, Coffer__V1__SignatureScheme scheme,
		  protobuf_c_boolean raw, ProtobufCBinaryData msg, ProtobufCBinaryData digest,
		  struct cf_sign_params *sp, const uint8_t **in, size_t *inlen);
/* A digest for an Ed25519 key (which hashes the message itself) is refused,
 * naming the key. */
int h_digest_check(const struct cf_sign_params *sp, const cf_p11_key *k, const char *name);

/* The scheme and hash a signature of k with sp was made with (the key's
 * defaults where sp left them unspecified), as a response states them. */
void h_sign_used(const struct cf_sign_params *sp, const cf_p11_key *k,
		 Coffer__V1__SignatureScheme *scheme, Coffer__V1__Hash *hash);

/* Operations of a request as a mask; an unknown one sets bit 31 (refused
 * by policy). */
uint32_t h_ops_mask(size_t n, const Coffer__V1__Operation *ops);

/* Key metadata into a Key message (its fields allocated for it). */
int h_fill_key(const struct store_key *ki, Coffer__V1__Key *k);

/* Finish a handler that produced `info` with status r: build a Key
 * response; info is freed in every case. */
int h_key_response(int r, struct store_key *info, ProtobufCMessage **resp);

/* An answer of `type` read back for the change named `name`, which made
 * version (or secret generation) `made` (0: none) (handlers_describe). */
struct hdescribe {
	const ProtobufCMessageDescriptor *type;   /* NULL ends a list */
	int (*fn)(const struct hcall *c, const ProtobufCMessageDescriptor *type,
		  const char *name, uint32_t made, ProtobufCMessage **resp);
};

/* One handler file: its handlers by method id, and its hdescribe list (or
 * NULL). Every method but SessionService/Call is bound in exactly one
 * (tests/unit/test_dispatch.c). */
struct hservice {
	const handler_fn *fns;   /* [CF_METHOD__COUNT] */
	const struct hdescribe *describe;
};

extern const struct hservice handlers_keys;        /* handlers_keys.c */
extern const struct hservice handlers_requests;    /* handlers_requests.c */
extern const struct hservice handlers_admin_keys;  /* handlers_admin_keys.c */
extern const struct hservice handlers_lifecycle;   /* handlers_lifecycle.c */
extern const struct hservice handlers_principals;  /* handlers_principals.c */
extern const struct hservice handlers_apikeys;     /* handlers_apikeys.c */
extern const struct hservice handlers_audit;       /* handlers_audit.c */
extern const struct hservice handlers_token;       /* handlers_token.c */
extern const struct hservice handlers_session;     /* handlers_session.c */
extern const struct hservice handlers_batch;       /* handlers_batch.c */

#endif
