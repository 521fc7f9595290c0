/*
 * cf_arena.h — locked memory for the short-lived copies of secrets that
 * messages make: protobuf-c messages, packed and opened records.
 *
 * An arena is a bump allocator over cf_secret pages (mlock()ed, out of core
 * dumps), wiped and released at once when the call that owns it ends; one
 * arena can be made the calling thread's current arena, which
 * cf_pbwipe_allocator then allocates from (so handlers, dispatch and the
 * wire code need no allocator of their own). Locked blocks are single
 * allocations in locked memory that outlive a call (secrets handed to a
 * library's caller), released with cf_locked_free.
 *
 * Locked memory is scarce (RLIMIT_MEMLOCK): an arena holds at most
 * CF_ARENA_MAX bytes and a locked block at most CF_SECRET_MAX; larger
 * requests fail (cf_arena_alloc: NULL, and cf_pbwipe_allocator falls back
 * to its wiping heap). Messages that carry secrets are far smaller (wrapped
 * plaintext is at most 64 KiB).
 */
#ifndef COFFER_CF_ARENA_H
#define COFFER_CF_ARENA_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

/* A sealed payload is at most CF_SECRET_MAX (1 MiB): its record, the
 * unpacked request and the packed answer fit in 4 MiB. */
#define CF_ARENA_MAX (4u << 20)

typedef struct cf_arena cf_arena;

int cf_arena_new(cf_arena **out);
/* Wipe everything allocated and release it; accepts NULL. */
void cf_arena_free(cf_arena *a);
/* n bytes (16-byte aligned, zeroed), NULL when the arena is full. */
void *cf_arena_alloc(cf_arena *a, size_t n);
/* 1 if p lies in memory of arena a (a may be NULL: 0). */
int cf_arena_contains(const cf_arena *a, const void *p);
/* A protobuf-c allocator over a: frees nothing (cf_arena_free wipes all). */
ProtobufCAllocator cf_arena_allocator(cf_arena *a);

/* The calling thread's current arena (NULL: none), which
 * cf_pbwipe_allocator allocates from while it is set. */
void cf_arena_set_current(cf_arena *a);
cf_arena *cf_arena_current(void);

/* A zeroed block of n bytes in locked memory, NULL on failure. */
void *cf_locked_alloc(size_t n);
/* If p came from cf_locked_alloc: wipe and release it, 1. Else 0 (p
 * untouched). Accepts NULL (0). */
int cf_locked_free(void *p);
/* Wipe and free one malloc'ed block; accepts NULL and the current arena's
 * blocks (left to the arena). */
void cf_wipe_free(void *p);
/* Wipe p[0..len) and release it, whether it came from cf_locked_alloc or
 * malloc; accepts NULL. */
void cf_secure_free(void *p, size_t len);
/* A protobuf-c allocator of locked blocks (a message and its fields); a
 * block above CF_SECRET_MAX comes from the heap and is wiped when freed. */
extern ProtobufCAllocator cf_locked_allocator;

#endif
