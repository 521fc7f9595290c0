#include "cf_secret.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "cf_status.h"

struct cf_secret {
	uint8_t *data;  /* page-aligned mapping, mlocked */
	size_t len;     /* visible length */
	size_t map_len; /* mapping size */
};

/*
 * Wiped single pages are kept (still locked, still out of core dumps) for
 * the next secret: a daemon unwrapping thousands of secrets a second would
 * otherwise map, lock, unlock and unmap a page for each, and every munmap
 * interrupts all cores to flush their TLBs.
 */
#define SPARE_PAGES_MAX 64

static pthread_mutex_t spare_mu = PTHREAD_MUTEX_INITIALIZER;
static void *spare[SPARE_PAGES_MAX];
static unsigned nspare;

static void *
spare_take(void)
{
	void *p = NULL;

	pthread_mutex_lock(&spare_mu);
	if (nspare > 0)
		p = spare[--nspare];
	pthread_mutex_unlock(&spare_mu);
	return p;
}

/* 1 if kept (the caller must have wiped it). */
static int
spare_keep(void *p)
{
	int kept = 0;

	pthread_mutex_lock(&spare_mu);
	if (nspare < SPARE_PAGES_MAX) {
		spare[nspare++] = p;
		kept = 1;
	}
	pthread_mutex_unlock(&spare_mu);
	return kept;
}

int
cf_secret_new(size_t len, cf_secret **out)
{
	return cf_secret_new_upto(len, CF_SECRET_MAX, out);
}

int
cf_secret_new_upto(size_t len, size_t cap, cf_secret **out)
{
	cf_secret *s = NULL;
	long page = sysconf(_SC_PAGESIZE);
	size_t map_len;
	void *p;

	if (len > cap)
		return cf_error(CF_E_TOO_LARGE, "secret of %zu bytes exceeds %zu", len, cap);
	if (page <= 0)
		page = 4096;
	map_len = (len + (size_t)page - 1) / (size_t)page * (size_t)page;
	if (map_len == 0)
		map_len = (size_t)page;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return cf_nomem();
	if (map_len == (size_t)page && (p = spare_take()) != NULL) {
		s->data = p;   /* zero: wiped when it was freed */
		s->len = len;
		s->map_len = map_len;
		*out = s;
		return CF_OK;
	}
	p = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		free(s);
		return cf_error(CF_E_NOMEM, "cannot map %zu bytes for a secret", map_len);
	}
	if (mlock(p, map_len) != 0) {
		munmap(p, map_len);
		free(s);
		return cf_error(CF_E_NOMEM, "cannot mlock a secret; raise RLIMIT_MEMLOCK");
	}
	(void)madvise(p, map_len, MADV_DONTDUMP);
	s->data = p;
	s->len = len;
	s->map_len = map_len;
	*out = s;
	return CF_OK;
}

int
cf_secret_from(const void *data, size_t len, cf_secret **out)
{
	cf_secret *s = NULL;
	int r;

	if ((r = cf_secret_new(len, &s)) != CF_OK)
		return r;
	if (len > 0)
		memcpy(s->data, data, len);
	*out = s;
	return CF_OK;
}

void
cf_secret_free(cf_secret *s)
{
	if (s == NULL)
		return;
	OPENSSL_cleanse(s->data, s->map_len);
	/* OPENSSL_cleanse zeroes, as a fresh mapping would be. */
	if (s->map_len != (size_t)sysconf(_SC_PAGESIZE) || !spare_keep(s->data)) {
		munlock(s->data, s->map_len);
		munmap(s->data, s->map_len);
	}
	free(s);
}

uint8_t *
cf_secret_ptr(cf_secret *s)
{
	return s->data;
}

const uint8_t *
cf_secret_cptr(const cf_secret *s)
{
	return s->data;
}

size_t
cf_secret_len(const cf_secret *s)
{
	return s->len;
}

int
cf_secret_truncate(cf_secret *s, size_t len)
{
	if (len > s->len)
		return cf_error(CF_E_INVALID_ARG, "cannot grow a secret by truncation");
	OPENSSL_cleanse(s->data + len, s->len - len);
	s->len = len;
	return CF_OK;
}

int
cf_secret_equal_mem(const cf_secret *a, const void *b, size_t blen)
{
	if (a->len != blen)
		return 0;
	if (blen == 0)
		return 1;
	return CRYPTO_memcmp(a->data, b, blen) == 0;
}

int
cf_secret_equal(const cf_secret *a, const cf_secret *b)
{
	return cf_secret_equal_mem(a, b->data, b->len);
}
