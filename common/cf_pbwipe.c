#include "cf_pbwipe.h"

#include <malloc.h>
#include <stdlib.h>

#include <openssl/crypto.h>

void
cf_wipe_free(void *p)
{
	if (p == NULL)
		return;
	OPENSSL_cleanse(p, malloc_usable_size(p));
	free(p);
}

static void *
pbwipe_alloc(void *data, size_t n)
{
	(void)data;
	return malloc(n ? n : 1);
}

static void
pbwipe_free(void *data, void *p)
{
	(void)data;
	cf_wipe_free(p);
}

ProtobufCAllocator cf_pbwipe_allocator = { pbwipe_alloc, pbwipe_free, NULL };
