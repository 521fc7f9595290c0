/*
 * cf_pbwipe.h — a protobuf-c allocator that wipes every block it frees.
 *
 * Used for messages that may carry secrets (key material, unwrapped
 * plaintext, data keys) on both sides of the socket. Blocks come from
 * malloc, so fields allocated with plain malloc may be freed through it
 * too (the daemon's handlers build responses that way).
 */
#ifndef COFFER_CF_PBWIPE_H
#define COFFER_CF_PBWIPE_H

#include <protobuf-c/protobuf-c.h>

extern ProtobufCAllocator cf_pbwipe_allocator;

/* Wipe and free one malloc'ed block; accepts NULL. */
void cf_wipe_free(void *p);

#endif
