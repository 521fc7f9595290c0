/*
 * test_session_oom — the handshake's X25519 with OpenSSL's own allocations
 * failing one at a time (CRYPTO_set_mem_functions, before OpenSSL allocates
 * anything): a valid peer key is then answered CF_OK or CF_E_NOMEM, never
 * CF_E_INVALID_ARG, which would blame the client for the daemon's memory;
 * a low-order peer key is still refused as the client's. The LD_PRELOAD
 * shim of test_alloc_failures cannot reach these: it fails only the
 * allocations of Coffer's own code.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>
#include <openssl/crypto.h>

#include "cf_secret.h"
#include "cf_session.h"
#include "cf_status.h"
#include "cf_test_token.h"

static atomic_long countdown;   /* > 0: the n-th allocation from now fails */
static atomic_long failed, counted;

static int
fail_now(void)
{
	atomic_fetch_add(&counted, 1);
	if (atomic_load(&countdown) > 0 && atomic_fetch_sub(&countdown, 1) == 1) {
		atomic_fetch_add(&failed, 1);
		return 1;
	}
	return 0;
}

static void *
t_malloc(size_t n, const char *file, int line)
{
	(void)file;
	(void)line;
	return fail_now() ? NULL : malloc(n);
}

static void *
t_realloc(void *p, size_t n, const char *file, int line)
{
	(void)file;
	(void)line;
	return fail_now() ? NULL : realloc(p, n);
}

static void
t_free(void *p, const char *file, int line)
{
	(void)file;
	(void)line;
	free(p);
}

static void
test_shared_secret_under_oom(void)
{
	cf_session_eph *mine = NULL, *peer = NULL;
	uint8_t pub[CF_SESSION_PUB_LEN], low[CF_SESSION_PUB_LEN];
	cf_secret *s = NULL, *want = NULL;
	long k, nomem = 0;
	int r;

	CU_ASSERT_EQUAL_FATAL(cf_session_eph_new(NULL, &mine), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_session_eph_new(NULL, &peer), CF_OK);
	cf_session_eph_pub(peer, pub);
	/* Unarmed, it counts what one derivation allocates. */
	atomic_store(&counted, 0);
	CU_ASSERT_EQUAL_FATAL(cf_session_shared(mine, pub, &want), CF_OK);
	k = atomic_load(&counted);
	CU_ASSERT(k > 0);
	for (long n = 1; n <= k + 2; n++) {
		long f0 = atomic_load(&failed);

		s = NULL;
		atomic_store(&countdown, n);
		r = cf_session_shared(mine, pub, &s);
		atomic_store(&countdown, 0);
		if (r != CF_OK) {
			CU_ASSERT_EQUAL(r, CF_E_NOMEM);
			CU_ASSERT(atomic_load(&failed) > f0);
			if (r != CF_E_NOMEM)
				printf("\n    allocation %ld of %ld failed: %d \"%s\"", n, k, r,
				       cf_error_message(r));
			nomem++;
			cf_error_clear();
		} else {
			/* Derived despite the failure (OpenSSL had another way): the
			 * same secret. */
			CU_ASSERT(cf_secret_equal(s, want));
		}
		cf_secret_free(s);
	}
	printf("\n    %ld OpenSSL allocations per X25519 derivation, each failed in turn: "
	       "%ld answered out of memory, the rest derived\n", k, nomem);
	CU_ASSERT(nomem > 0);
	/* A low-order peer key (u = 0) is the client's fault, as before. */
	memset(low, 0, sizeof(low));
	s = NULL;
	r = cf_session_shared(mine, low, &s);
	CU_ASSERT_EQUAL(r, CF_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(cf_error_message(r),
			       "the peer's ephemeral key is not a usable X25519 key");
	cf_error_clear();
	CU_ASSERT_PTR_NULL(s);
	cf_secret_free(want);
	cf_session_eph_free(mine);
	cf_session_eph_free(peer);
}

static int
suite_init(void)
{
	return 0;
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "X25519 with OpenSSL's allocations failing in turn", test_shared_secret_under_oom },
		{ NULL, NULL },
	};

	/* Only possible before OpenSSL's first allocation. */
	if (!CRYPTO_set_mem_functions(t_malloc, t_realloc, t_free)) {
		fprintf(stderr, "test_session_oom: OpenSSL allocated before main\n");
		return 1;
	}
	return cf_test_main("session_oom", suite_init, suite_init, cases);
}
