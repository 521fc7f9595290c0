#include "cf_arena.h"

#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "cf_secret.h"
#include "cf_status.h"

#define CHUNK_MIN 4096u
#define ALIGN 16u

struct chunk {
	cf_secret *mem;
	size_t used;
};

struct cf_arena {
	struct chunk c[16];   /* each at least twice the last: 16 reach CF_ARENA_MAX */
	unsigned n;
	size_t total;
};

static _Thread_local cf_arena *current;

int
cf_arena_new(cf_arena **out)
{
	if ((*out = calloc(1, sizeof(**out))) == NULL)
		return cf_nomem();
	return CF_OK;
}

void
cf_arena_free(cf_arena *a)
{
	if (a == NULL)
		return;
	if (current == a)
		current = NULL;
	for (unsigned i = 0; i < a->n; i++)
		cf_secret_free(a->c[i].mem);   /* wipes */
	free(a);
}

void *
cf_arena_alloc(cf_arena *a, size_t n)
{
	struct chunk *k = a->n > 0 ? &a->c[a->n - 1] : NULL;
	size_t need = (n + ALIGN - 1) & ~(size_t)(ALIGN - 1), size;
	uint8_t *p;

	if (need == 0)
		need = ALIGN;
	if (k == NULL || cf_secret_len(k->mem) - k->used < need) {
		/* Twice the last chunk, or what this block needs in whole pages: a
		 * sealed record of the largest payload and its unpacked request
		 * fit in CF_ARENA_MAX. */
		size = k != NULL ? 2 * cf_secret_len(k->mem) : CHUNK_MIN;
		if (size < need)
			size = (need + CHUNK_MIN - 1) & ~(size_t)(CHUNK_MIN - 1);
		if (a->n == sizeof(a->c) / sizeof(a->c[0]) || a->total + size > CF_ARENA_MAX)
			return NULL;
		k = &a->c[a->n];
		if (cf_secret_new_upto(size, CF_ARENA_MAX, &k->mem) != CF_OK)
			return NULL;
		k->used = 0;
		a->n++;
		a->total += size;
	}
	p = cf_secret_ptr(k->mem) + k->used;
	k->used += need;
	return p;
}

int
cf_arena_contains(const cf_arena *a, const void *p)
{
	uintptr_t x = (uintptr_t)p;

	for (unsigned i = 0; a != NULL && i < a->n; i++) {
		uintptr_t lo = (uintptr_t)cf_secret_cptr(a->c[i].mem);

		if (x >= lo && x < lo + cf_secret_len(a->c[i].mem))
			return 1;
	}
	return 0;
}

static void *
arena_pb_alloc(void *data, size_t n)
{
	return cf_arena_alloc(data, n);
}

static void
arena_pb_free(void *data, void *p)
{
	(void)data;
	(void)p;
}

ProtobufCAllocator
cf_arena_allocator(cf_arena *a)
{
	ProtobufCAllocator al = { arena_pb_alloc, arena_pb_free, a };

	return al;
}

void
cf_arena_set_current(cf_arena *a)
{
	current = a;
}

cf_arena *
cf_arena_current(void)
{
	return current;
}

/* ---- locked blocks ---- */

/*
 * Which pointers are locked blocks: an open-addressing set (pointer ->
 * its cf_secret), so that cf_locked_free can tell them from heap blocks
 * without reading memory around a foreign pointer.
 */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct reg_slot {
	void *p;
	cf_secret *s;
} *reg;
static size_t reg_cap, reg_n;
#define TOMB ((void *)1)

static size_t
reg_hash(const void *p, size_t cap)
{
	return (size_t)(((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull) & (cap - 1);
}

/* Under reg_mu. */
static int
reg_put(void *p, cf_secret *s)
{
	if ((reg_n + 1) * 2 > reg_cap) {
		size_t ncap = reg_cap ? reg_cap * 2 : 64;
		struct reg_slot *nr = calloc(ncap, sizeof(*nr));

		if (nr == NULL)
			return -1;
		for (size_t i = 0; i < reg_cap; i++) {
			size_t h;

			if (reg[i].p == NULL || reg[i].p == TOMB)
				continue;
			for (h = reg_hash(reg[i].p, ncap); nr[h].p != NULL; h = (h + 1) & (ncap - 1))
				;
			nr[h] = reg[i];
		}
		free(reg);
		reg = nr;
		reg_cap = ncap;
		reg_n = 0;
		for (size_t i = 0; i < reg_cap; i++)
			reg_n += reg[i].p != NULL;
	}
	for (size_t h = reg_hash(p, reg_cap);; h = (h + 1) & (reg_cap - 1))
		if (reg[h].p == NULL || reg[h].p == TOMB) {
			reg_n += reg[h].p == NULL;
			reg[h].p = p;
			reg[h].s = s;
			return 0;
		}
}

/* Under reg_mu: remove p, returning its secret (NULL: not a locked block). */
static cf_secret *
reg_take(const void *p)
{
	if (reg_cap == 0 || p == NULL)
		return NULL;
	for (size_t h = reg_hash(p, reg_cap); reg[h].p != NULL; h = (h + 1) & (reg_cap - 1))
		if (reg[h].p == p) {
			cf_secret *s = reg[h].s;

			reg[h].p = TOMB;
			return s;
		}
	return NULL;
}

void *
cf_locked_alloc(size_t n)
{
	cf_secret *s = NULL;
	void *p;
	int bad;

	if (cf_secret_new(n, &s) != CF_OK)
		return NULL;
	p = cf_secret_ptr(s);
	pthread_mutex_lock(&reg_mu);
	bad = reg_put(p, s);
	pthread_mutex_unlock(&reg_mu);
	if (bad) {
		cf_secret_free(s);
		return NULL;
	}
	return p;
}

int
cf_locked_free(void *p)
{
	cf_secret *s;

	pthread_mutex_lock(&reg_mu);
	s = reg_take(p);
	pthread_mutex_unlock(&reg_mu);
	cf_secret_free(s);   /* wipes the whole mapping */
	return s != NULL;
}

void
cf_wipe_free(void *p)
{
	if (p == NULL || cf_arena_contains(current, p))
		return;
	OPENSSL_cleanse(p, malloc_usable_size(p));
	free(p);
}

void
cf_secure_free(void *p, size_t len)
{
	if (p == NULL || cf_locked_free(p))
		return;
	OPENSSL_cleanse(p, len);
	free(p);
}

/* Blocks above CF_SECRET_MAX, and any block once locked memory runs out
 * (RLIMIT_MEMLOCK), come from the heap and are wiped when freed: a call
 * still works where memory cannot be locked, as it did before. */
static void *
locked_pb_alloc(void *data, size_t n)
{
	void *p = n <= CF_SECRET_MAX ? cf_locked_alloc(n) : NULL;

	(void)data;
	return p != NULL ? p : malloc(n ? n : 1);
}

static void
locked_pb_free(void *data, void *p)
{
	(void)data;
	if (!cf_locked_free(p))
		cf_wipe_free(p);
}

ProtobufCAllocator cf_locked_allocator = { locked_pb_alloc, locked_pb_free, NULL };
