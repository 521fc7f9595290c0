/*
 * cf_secret.h — a buffer for secret bytes (PINs, key material, plaintext data
 * keys, session keys).
 *
 * The bytes live in their own anonymous mapping that is mlock()ed (never
 * swapped) and marked MADV_DONTDUMP (never in a core file). They are wiped
 * with OPENSSL_cleanse before the mapping is released. Comparison is constant
 * time. Secret contents must never be logged or echoed; nothing in this
 * module prints them. Not thread-safe per object.
 */
#ifndef COFFER_CF_SECRET_H
#define COFFER_CF_SECRET_H

#include <stddef.h>
#include <stdint.h>

typedef struct cf_secret cf_secret;

/* Hard cap for one secret; larger requests fail with CF_E_TOO_LARGE. */
#define CF_SECRET_MAX (1u << 20)

/* New zero-filled secret of `len` bytes (len may be 0).
 * CF_E_NOMEM if mapping or mlock fails (check RLIMIT_MEMLOCK). */
int cf_secret_new(size_t len, cf_secret **out);
/* cf_secret_new with another cap: for locked memory that is not one secret
 * (cf_arena's chunks, which hold whole messages). */
int cf_secret_new_upto(size_t len, size_t cap, cf_secret **out);
/* New secret holding a copy of data[0..len). The caller still owns and must
 * wipe `data`. */
int cf_secret_from(const void *data, size_t len, cf_secret **out);
/* Wipe, unlock, unmap; accepts NULL. */
void cf_secret_free(cf_secret *s);

uint8_t *cf_secret_ptr(cf_secret *s);
const uint8_t *cf_secret_cptr(const cf_secret *s);
size_t cf_secret_len(const cf_secret *s);
/* Shrink the visible length (wiping the cut-off tail). CF_E_INVALID_ARG if
 * len is larger than the current length. */
int cf_secret_truncate(cf_secret *s, size_t len);

/* 1 if both secrets have the same length and bytes, else 0. Runs in time that
 * depends only on the lengths. */
int cf_secret_equal(const cf_secret *a, const cf_secret *b);
/* Constant-time compare against plain memory; same contract. */
int cf_secret_equal_mem(const cf_secret *a, const void *b, size_t blen);

#endif
