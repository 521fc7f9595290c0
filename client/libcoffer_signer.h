/*
 * libcoffer_signer.h — the API key libcoffer signs every call with, above
 * the transport (proto/call-authentication.md). Not installed.
 */
#ifndef COFFER_LIBCOFFER_SIGNER_H
#define COFFER_LIBCOFFER_SIGNER_H

#include <stddef.h>
#include <stdint.h>

#include "libcoffer_transport.h"

struct lc_apikey;

/* Key `id` (checked) with secret[0..len) (32..64 bytes, checked). */
int lc_apikey_new(const char *id, const uint8_t *secret, size_t len, struct lc_apikey **out);
void lc_apikey_free(struct lc_apikey *k);   /* wipes the secret; accepts NULL */

/* lc_transport, with the authorization value of k over method and
 * buf[0..len) when k is not NULL (buf taken over as there). */
int lc_signed_transport(struct lc_conn *t, struct lc_apikey *k, const char *method, uint8_t *buf,
    size_t len, uint8_t **out, size_t *outlen, int flags);

/* lc_stream_open, the opening signed with k (over method and an empty body)
 * when k is not NULL. */
int lc_signed_stream_open(struct lc_conn *t, struct lc_apikey *k, const char *method,
    struct lc_stream **out);

#endif
