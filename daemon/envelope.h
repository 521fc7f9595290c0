/*
 * envelope.h — the self-describing Wrap blob and its additional data.
 *
 * Blob:  0x01 | key version (u32 BE) | IV (12) | ciphertext | GCM tag (16)
 * AAD:   "coffer.v1.wrap" 0x00 | u32 len | key name | u32 key version |
 *        u32 entry count | for each context entry in byte order of its key:
 *        u32 len | key | u32 len | value
 * Binding the name and version stops a blob from being replayed under
 * another key or version; the context map is the caller's own binding.
 */
#ifndef COFFER_ENVELOPE_H
#define COFFER_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "cf_buf.h"
#include "cf_p11.h"

#define ENV_FORMAT 0x01
#define ENV_HEADER_LEN (1 + 4 + CF_GCM_IV_LEN)
#define ENV_MAX_CONTEXT 16
#define ENV_MAX_CONTEXT_KEY 128
#define ENV_MAX_CONTEXT_VALUE 1024

struct env_kv {
	const char *key;
	const char *value;
};

/* Build the AAD. CF_E_TOO_LARGE / CF_E_INVALID_ARG when the context breaks
 * a limit (count, key or value length, empty or duplicate key). */
int env_aad(const char *name, uint32_t version, const struct env_kv *ctx, size_t n,
	    cf_buf *aad);

/* Split a blob; pointers borrow from `blob`. CF_E_INVALID_ARG if malformed. */
int env_parse(const uint8_t *blob, size_t len, uint32_t *version, const uint8_t **iv,
	      const uint8_t **ct, size_t *ctlen);

/* Wrap `pt` under `k` (version `version` of key `name`) into a new blob. */
int env_seal(cf_p11_key *k, const char *name, uint32_t version, const struct env_kv *ctx,
	     size_t n, const uint8_t *pt, size_t ptlen, cf_buf *blob);
/* Unwrap a blob already parsed to belong to version `version`. */
int env_open(cf_p11_key *k, const char *name, uint32_t version, const struct env_kv *ctx,
	     size_t n, const uint8_t *blob, size_t len, cf_secret **pt);

#endif
