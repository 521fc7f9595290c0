#include "cf_pbwipe.h"

#include <stdlib.h>

#include "cf_arena.h"

static void *
pbwipe_alloc(void *data, size_t n)
{
	cf_arena *a = cf_arena_current();
	void *p = a != NULL ? cf_arena_alloc(a, n) : NULL;

	(void)data;
	return p != NULL ? p : malloc(n ? n : 1);
}

static void
pbwipe_free(void *data, void *p)
{
	(void)data;
	cf_wipe_free(p);
}

ProtobufCAllocator cf_pbwipe_allocator = { pbwipe_alloc, pbwipe_free, NULL };
