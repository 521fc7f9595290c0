/*
 * cf_pbwipe.h — a protobuf-c allocator that wipes every block it frees.
 *
 * Used for messages that may carry secrets (key material, unwrapped
 * plaintext, data keys) on both sides of the socket. While the calling
 * thread has a current arena (cf_arena.h: the daemon's sealed calls) its
 * blocks come from that locked arena and freeing them is left to the arena;
 * otherwise (or when the arena is full) from malloc, so fields allocated
 * with plain malloc may be freed through it too.
 */
#ifndef COFFER_CF_PBWIPE_H
#define COFFER_CF_PBWIPE_H

#include <protobuf-c/protobuf-c.h>

#include "cf_arena.h"   /* cf_wipe_free */

extern ProtobufCAllocator cf_pbwipe_allocator;

#endif
