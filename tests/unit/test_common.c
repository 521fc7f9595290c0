/*
 * test_common — the code shared by daemon and client: status codes and the
 * thread-local error detail, bounds-checked buffers, locked secrets and the
 * key model (type names, hashes, the key-name rule).
 */
#include <ctype.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/capability.h>

#include <CUnit/Basic.h>

#include "cf_test_token.h"

#include "cf_arena.h"
#include "cf_buf.h"
#include "cf_keytype.h"
#include "cf_pbwipe.h"
#include "cf_secret.h"
#include "cf_hex.h"
#include "cf_pbcheck.h"
#include "cf_reqsign.h"
#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* AddressSanitizer replaces mlock() with a no-op that reports success, so a
 * sanitizer build cannot observe locked pages. */
#if defined(__SANITIZE_ADDRESS__)
#define MLOCK_OBSERVABLE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MLOCK_OBSERVABLE 0
#endif
#endif
#ifndef MLOCK_OBSERVABLE
#define MLOCK_OBSERVABLE 1
#endif

/* ---- status codes and error details ---- */

#define STATUS(c) { c, #c }
static const struct {
	int code;
	const char *name;
} statuses[] = {
	STATUS(CF_OK), STATUS(CF_E_INTERNAL), STATUS(CF_E_NOMEM), STATUS(CF_E_INVALID_ARG),
	STATUS(CF_E_TOO_LARGE), STATUS(CF_E_NOT_FOUND), STATUS(CF_E_EXISTS),
	STATUS(CF_E_WRONG_KEY_TYPE), STATUS(CF_E_BAD_SIGNATURE), STATUS(CF_E_DECRYPT),
	STATUS(CF_E_PIN_INCORRECT), STATUS(CF_E_PIN_FILE), STATUS(CF_E_MODULE),
	STATUS(CF_E_TOKEN_NOT_FOUND), STATUS(CF_E_BUSY), STATUS(CF_E_UNAVAILABLE),
	STATUS(CF_E_UNSUPPORTED), STATUS(CF_E_TOKEN), STATUS(CF_E_CONFIG), STATUS(CF_E_IO),
	STATUS(CF_E_DENIED), STATUS(CF_E_UNAUTHENTICATED), STATUS(CF_E_PRECONDITION),
	STATUS(CF_E_EXHAUSTED), STATUS(CF_E_TIMEOUT), STATUS(CF_E_CANCELLED),
	STATUS(CF_E_UNIMPLEMENTED),
};
#undef STATUS

static void
test_status_names(void)
{
	static const int unknown[] = { CF_E__LAST, CF_E__LAST - 1, 1, 42, -1000, INT_MIN, INT_MAX };

	/* The table above lists every code exactly once. */
	CU_ASSERT_EQUAL(NELEM(statuses), (size_t)-CF_E__LAST);
	for (size_t i = 0; i < NELEM(statuses); i++) {
		const char *text = cf_strerror(statuses[i].code);

		CU_ASSERT_EQUAL(statuses[i].code, -(int)i);
		CU_ASSERT_STRING_EQUAL(cf_status_name(statuses[i].code), statuses[i].name);
		CU_ASSERT_PTR_NOT_NULL_FATAL(text);
		CU_ASSERT(text[0] != '\0');
		CU_ASSERT_STRING_NOT_EQUAL(text, "unknown status");
		/* every code has its own text */
		for (size_t j = 0; j < i; j++)
			CU_ASSERT_STRING_NOT_EQUAL(text, cf_strerror(statuses[j].code));
	}
	CU_ASSERT_STRING_EQUAL(cf_strerror(CF_OK), "success");
	CU_ASSERT_STRING_EQUAL(cf_strerror(CF_E_NOT_FOUND), "not found");
	for (size_t i = 0; i < NELEM(unknown); i++) {
		CU_ASSERT_PTR_NOT_NULL_FATAL(cf_strerror(unknown[i]));
		CU_ASSERT_STRING_EQUAL(cf_strerror(unknown[i]), "unknown status");
		CU_ASSERT_STRING_EQUAL(cf_status_name(unknown[i]), "CF_E_UNKNOWN");
	}
}

static void
test_error_detail(void)
{
	char longfmt[CF_ERROR_DETAIL_MAX * 2];

	CU_ASSERT_EQUAL(cf_error(CF_E_TOO_LARGE, "limit %u exceeded by %s", 16u, "x"),
			CF_E_TOO_LARGE);
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), "limit 16 exceeded by x");
	/* no detail text: the code's description */
	CU_ASSERT_EQUAL(cf_error(CF_E_NOT_FOUND, "%s", ""), CF_E_NOT_FOUND);
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), cf_strerror(CF_E_NOT_FOUND));
	/* truncated to CF_ERROR_DETAIL_MAX - 1 bytes */
	memset(longfmt, 'z', sizeof(longfmt) - 1);
	longfmt[sizeof(longfmt) - 1] = '\0';
	cf_error(CF_E_INVALID_ARG, "%s", longfmt);
	CU_ASSERT_EQUAL(strlen(cf_error_detail()), CF_ERROR_DETAIL_MAX - 1);
	CU_ASSERT_EQUAL(strncmp(cf_error_detail(), longfmt, CF_ERROR_DETAIL_MAX - 1), 0);
	cf_error_clear();
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), cf_strerror(CF_OK));
}

struct detail_thread {
	char initial[CF_ERROR_DETAIL_MAX];
	char after[CF_ERROR_DETAIL_MAX];
	int status;
};

static void *
detail_thread_main(void *arg)
{
	struct detail_thread *dt = arg;

	snprintf(dt->initial, sizeof(dt->initial), "%s", cf_error_detail());
	dt->status = cf_error(CF_E_BUSY, "detail from thread %d", 2);
	snprintf(dt->after, sizeof(dt->after), "%s", cf_error_detail());
	return NULL;
}

static void
test_error_detail_thread_local(void)
{
	struct detail_thread dt;
	pthread_t th;

	memset(&dt, 0, sizeof(dt));
	cf_error(CF_E_EXISTS, "detail from main %d", 1);
	CU_ASSERT_EQUAL_FATAL(pthread_create(&th, NULL, detail_thread_main, &dt), 0);
	CU_ASSERT_EQUAL_FATAL(pthread_join(th, NULL), 0);
	/* The new thread started with no detail of its own ... */
	CU_ASSERT_STRING_EQUAL(dt.initial, cf_strerror(CF_OK));
	CU_ASSERT_EQUAL(dt.status, CF_E_BUSY);
	CU_ASSERT_STRING_EQUAL(dt.after, "detail from thread 2");
	/* ... and its detail is not visible here. */
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), "detail from main 1");
	cf_error_clear();
}

/* Issue 14, defect 1: a detail formatted from the detail itself, and a
 * status never answered with another failure's text. */
static void
test_error_self_format(void)
{
	char longname[CF_ERROR_DETAIL_MAX * 2];
	char want[CF_ERROR_DETAIL_MAX];
	const char *d;

	cf_error(CF_E_INVALID_ARG, "must start with a letter");
	cf_error(CF_E_INVALID_ARG, "key name: %s", cf_error_detail());
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), "key name: must start with a letter");
	/* twice more: each prefix once, nothing read from what is being written */
	cf_error(CF_E_UNAUTHENTICATED, "malformed authorization header: %s", cf_error_detail());
	CU_ASSERT_STRING_EQUAL(cf_error_detail(),
			       "malformed authorization header: key name: must start with a letter");
	cf_error(CF_E_CONFIG, "%s (%s)", cf_error_detail(), cf_error_detail());
	CU_ASSERT_STRING_EQUAL(cf_error_detail(),
			       "malformed authorization header: key name: must start with a letter "
			       "(malformed authorization header: key name: must start with a letter)");

	/* The detail only for the status it was recorded with. */
	cf_error(CF_E_NOT_FOUND, "no key named k1");
	CU_ASSERT_STRING_EQUAL(cf_error_message(CF_E_NOT_FOUND), "no key named k1");
	CU_ASSERT_STRING_EQUAL(cf_error_message(CF_E_NOMEM), "out of memory");
	CU_ASSERT_STRING_EQUAL(cf_error_message(CF_E_INTERNAL), cf_strerror(CF_E_INTERNAL));
	CU_ASSERT_STRING_EQUAL(cf_error_message(-1000), "unknown status");
	/* the same status with an empty detail: the fixed text */
	cf_error(CF_E_NOT_FOUND, "%s", "");
	CU_ASSERT_STRING_EQUAL(cf_error_message(CF_E_NOT_FOUND), "not found");
	/* cf_nomem() says where */
	CU_ASSERT_EQUAL(cf_nomem(), CF_E_NOMEM);
	CU_ASSERT_STRING_EQUAL(cf_error_message(CF_E_NOMEM),
			       "out of memory (test_error_self_format)");
	cf_error_clear();
	CU_ASSERT_STRING_EQUAL(cf_error_message(CF_E_NOT_FOUND), "not found");
	CU_ASSERT_STRING_EQUAL(cf_error_message(CF_OK), "success");

	/* A long detail prefixed with itself: cut at CF_ERROR_DETAIL_MAX - 1,
	 * the prefix once, then the old detail's bytes in order. */
	longname[sizeof(longname) - 1] = '\0';
	for (size_t i = 0; i < sizeof(longname) - 1; i++)
		longname[i] = (char)('a' + i % 26);
	cf_error(CF_E_TOO_LARGE, "%s", longname);
	CU_ASSERT_EQUAL(strlen(cf_error_detail()), CF_ERROR_DETAIL_MAX - 1);
	cf_error(CF_E_TOO_LARGE, "key name: %s", cf_error_detail());
	d = cf_error_detail();
	memcpy(want, "key name: ", 10);
	memcpy(want + 10, longname, sizeof(want) - 11);
	want[sizeof(want) - 1] = '\0';
	CU_ASSERT_EQUAL(strlen(d), CF_ERROR_DETAIL_MAX - 1);
	CU_ASSERT_STRING_EQUAL(d, want);
	CU_ASSERT_EQUAL(strncmp(d, "key name: abcdefghijklmnopqrstuvwxyzabc", 39), 0);
	CU_ASSERT_STRING_EQUAL(cf_error_message(CF_E_TOO_LARGE), want);
	CU_ASSERT_STRING_EQUAL(cf_error_message(CF_E_INVALID_ARG), "invalid argument");
	cf_error_clear();
}

/* ---- cf_buf ---- */

static void
test_buf_round_trip(void)
{
	static const uint8_t blob[] = { 0xde, 0xad, 0xbe, 0xef, 0x00, 0x7f };
	cf_buf *b = cf_buf_new(256);
	uint8_t got[sizeof(blob)], u8 = 0;
	uint32_t u32 = 0;
	const uint8_t *p = NULL;

	CU_ASSERT_PTR_NULL(cf_buf_new(0));
	CU_ASSERT_PTR_NOT_NULL_FATAL(b);
	CU_ASSERT_EQUAL(cf_buf_max(b), 256);
	CU_ASSERT_EQUAL(cf_buf_len(b), 0);
	CU_ASSERT_PTR_NOT_NULL(cf_buf_peek(b));
	CU_ASSERT_EQUAL(cf_buf_put(b, NULL, 0), CF_OK);
	CU_ASSERT_EQUAL(cf_buf_len(b), 0);

	CU_ASSERT_EQUAL(cf_buf_put_u32(b, 0x01020304u), CF_OK);
	CU_ASSERT_EQUAL(cf_buf_len(b), 4);
	/* big-endian on the wire */
	CU_ASSERT_EQUAL(memcmp(cf_buf_peek(b), "\x01\x02\x03\x04", 4), 0);
	CU_ASSERT_EQUAL(cf_buf_put_u8(b, 0xa5), CF_OK);
	CU_ASSERT_EQUAL(cf_buf_put(b, blob, sizeof(blob)), CF_OK);
	CU_ASSERT_EQUAL(cf_buf_put_u32(b, 0xfffffffeu), CF_OK);
	CU_ASSERT_EQUAL(cf_buf_len(b), 4 + 1 + sizeof(blob) + 4);

	CU_ASSERT_EQUAL(cf_buf_get_u32(b, &u32), CF_OK);
	CU_ASSERT_EQUAL(u32, 0x01020304u);
	CU_ASSERT_EQUAL(cf_buf_get_u8(b, &u8), CF_OK);
	CU_ASSERT_EQUAL(u8, 0xa5);
	CU_ASSERT_EQUAL(cf_buf_len(b), sizeof(blob) + 4);
	CU_ASSERT_EQUAL(memcmp(cf_buf_peek(b), blob, sizeof(blob)), 0);
	CU_ASSERT_EQUAL(cf_buf_get(b, got, 2), CF_OK);
	CU_ASSERT_EQUAL(memcmp(got, blob, 2), 0);
	CU_ASSERT_EQUAL(cf_buf_get_ptr(b, sizeof(blob) - 2, &p), CF_OK);
	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	CU_ASSERT_EQUAL(memcmp(p, blob + 2, sizeof(blob) - 2), 0);
	CU_ASSERT_EQUAL(cf_buf_get_u32(b, &u32), CF_OK);
	CU_ASSERT_EQUAL(u32, 0xfffffffeu);
	CU_ASSERT_EQUAL(cf_buf_len(b), 0);
	CU_ASSERT_EQUAL(cf_buf_get(b, got, 0), CF_OK);

	/* growth across many reallocations keeps every byte */
	for (unsigned i = 0; i < 200; i++)
		CU_ASSERT_EQUAL(cf_buf_put_u8(b, (uint8_t)i), CF_OK);
	for (unsigned i = 0; i < 200; i++) {
		CU_ASSERT_EQUAL(cf_buf_get_u8(b, &u8), CF_OK);
		CU_ASSERT_EQUAL(u8, (uint8_t)i);
	}
	cf_buf_free(b);
	cf_buf_free(NULL);
}

static void
test_buf_cap(void)
{
	cf_buf *b = cf_buf_new(8);
	uint8_t *w = NULL;

	CU_ASSERT_PTR_NOT_NULL_FATAL(b);
	CU_ASSERT_EQUAL(cf_buf_put(b, "abcdef", 6), CF_OK);
	/* 6 + 3 > 8: refused, buffer unchanged */
	CU_ASSERT_EQUAL(cf_buf_put(b, "xyz", 3), CF_E_TOO_LARGE);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "8"));
	CU_ASSERT_EQUAL(cf_buf_len(b), 6);
	CU_ASSERT_EQUAL(memcmp(cf_buf_peek(b), "abcdef", 6), 0);
	CU_ASSERT_EQUAL(cf_buf_put_u32(b, 1), CF_E_TOO_LARGE);
	CU_ASSERT_EQUAL(cf_buf_len(b), 6);
	CU_ASSERT_EQUAL(cf_buf_put(b, "x", SIZE_MAX), CF_E_TOO_LARGE);
	CU_ASSERT_EQUAL(cf_buf_reserve(b, SIZE_MAX - 2, &w), CF_E_TOO_LARGE);
	CU_ASSERT_PTR_NULL(w);
	CU_ASSERT_EQUAL(cf_buf_reserve(b, 3, &w), CF_E_TOO_LARGE);
	CU_ASSERT_PTR_NULL(w);
	CU_ASSERT_EQUAL(cf_buf_len(b), 6);
	/* exactly up to the cap is fine */
	CU_ASSERT_EQUAL(cf_buf_put(b, "gh", 2), CF_OK);
	CU_ASSERT_EQUAL(cf_buf_len(b), 8);
	CU_ASSERT_EQUAL(memcmp(cf_buf_peek(b), "abcdefgh", 8), 0);
	CU_ASSERT_EQUAL(cf_buf_put_u8(b, 'i'), CF_E_TOO_LARGE);
	CU_ASSERT_EQUAL(cf_buf_len(b), 8);
	CU_ASSERT_EQUAL(memcmp(cf_buf_peek(b), "abcdefgh", 8), 0);
	cf_buf_free(b);
}

static void
test_buf_read_past_end(void)
{
	cf_buf *b = cf_buf_new(64);
	uint8_t got[8] = { 0 }, u8 = 0x11;
	uint32_t u32 = 0x22222222u;
	const uint8_t *p = (const uint8_t *)"sentinel";

	CU_ASSERT_PTR_NOT_NULL_FATAL(b);
	/* empty buffer */
	CU_ASSERT_EQUAL(cf_buf_get_u8(b, &u8), CF_E_INVALID_ARG);
	CU_ASSERT_EQUAL(u8, 0x11);
	CU_ASSERT_EQUAL(cf_buf_put(b, "\x0a\x0b\x0c", 3), CF_OK);
	/* 4 > 3: nothing consumed, outputs untouched */
	CU_ASSERT_EQUAL(cf_buf_get_u32(b, &u32), CF_E_INVALID_ARG);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "truncated"));
	CU_ASSERT_EQUAL(u32, 0x22222222u);
	CU_ASSERT_EQUAL(cf_buf_len(b), 3);
	CU_ASSERT_EQUAL(cf_buf_get(b, got, 4), CF_E_INVALID_ARG);
	CU_ASSERT_EQUAL(got[0], 0);
	CU_ASSERT_EQUAL(cf_buf_get_ptr(b, 4, &p), CF_E_INVALID_ARG);
	CU_ASSERT_EQUAL(memcmp(p, "sentinel", 8), 0);
	CU_ASSERT_EQUAL(cf_buf_get_ptr(b, SIZE_MAX, &p), CF_E_INVALID_ARG);
	CU_ASSERT_EQUAL(cf_buf_len(b), 3);
	/* the bytes are all still there */
	CU_ASSERT_EQUAL(cf_buf_get(b, got, 3), CF_OK);
	CU_ASSERT_EQUAL(memcmp(got, "\x0a\x0b\x0c", 3), 0);
	CU_ASSERT_EQUAL(cf_buf_len(b), 0);
	CU_ASSERT_EQUAL(cf_buf_get_u8(b, &u8), CF_E_INVALID_ARG);
	cf_buf_free(b);
}

static void
test_buf_reserve_commit(void)
{
	cf_buf *b = cf_buf_new(32);
	uint8_t *w = NULL;

	CU_ASSERT_PTR_NOT_NULL_FATAL(b);
	CU_ASSERT_EQUAL(cf_buf_put(b, "hd", 2), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_buf_reserve(b, 16, &w), CF_OK);
	CU_ASSERT_PTR_NOT_NULL_FATAL(w);
	/* reserving does not change the length */
	CU_ASSERT_EQUAL(cf_buf_len(b), 2);
	memcpy(w, "0123456789", 10);
	CU_ASSERT_EQUAL(cf_buf_commit(b, 10), CF_OK);
	CU_ASSERT_EQUAL(cf_buf_len(b), 12);
	CU_ASSERT_EQUAL(memcmp(cf_buf_peek(b), "hd0123456789", 12), 0);
	/* a reservation that was not committed leaves nothing behind */
	CU_ASSERT_EQUAL_FATAL(cf_buf_reserve(b, 4, &w), CF_OK);
	memcpy(w, "junk", 4);
	CU_ASSERT_EQUAL(cf_buf_commit(b, 0), CF_OK);
	CU_ASSERT_EQUAL(cf_buf_len(b), 12);
	CU_ASSERT_EQUAL(cf_buf_put(b, "!", 1), CF_OK);
	CU_ASSERT_EQUAL(memcmp(cf_buf_peek(b), "hd0123456789!", 13), 0);
	/* the cap applies to reservations */
	CU_ASSERT_EQUAL(cf_buf_reserve(b, 32 - 13 + 1, &w), CF_E_TOO_LARGE);
	CU_ASSERT_EQUAL(cf_buf_reserve(b, 32 - 13, &w), CF_OK);
	CU_ASSERT_EQUAL(cf_buf_len(b), 13);
	cf_buf_free(b);
}

static void
test_buf_reset(void)
{
	cf_buf *b = cf_buf_new(8);
	const uint8_t *old;
	uint8_t got[8];

	CU_ASSERT_PTR_NOT_NULL_FATAL(b);
	cf_buf_reset(b);        /* on a buffer that never allocated */
	CU_ASSERT_EQUAL(cf_buf_len(b), 0);
	CU_ASSERT_EQUAL(cf_buf_put(b, "secret!!", 8), CF_OK);
	old = cf_buf_peek(b);
	CU_ASSERT_EQUAL(cf_buf_get(b, got, 3), CF_OK);
	cf_buf_reset(b);
	CU_ASSERT_EQUAL(cf_buf_len(b), 0);
	/* the allocation is kept and its bytes were wiped */
	for (size_t i = 0; i < 8; i++)
		CU_ASSERT_EQUAL(old[i], 0);
	/* the read offset rewound and the full cap is available again */
	CU_ASSERT_EQUAL(cf_buf_put(b, "ABCDEFGH", 8), CF_OK);
	CU_ASSERT_EQUAL(cf_buf_get(b, got, 8), CF_OK);
	CU_ASSERT_EQUAL(memcmp(got, "ABCDEFGH", 8), 0);
	cf_buf_free(b);
}

/* ---- cf_secret ---- */

static void
test_secret_basics(void)
{
	static const uint8_t data[] = { 1, 2, 3, 4, 5 };
	cf_secret *s = NULL, *z = NULL, *e = NULL, *big = NULL;
	const uint8_t *q;

	CU_ASSERT_EQUAL_FATAL(cf_secret_new(32, &z), CF_OK);
	CU_ASSERT_EQUAL(cf_secret_len(z), 32);
	q = cf_secret_cptr(z);
	for (size_t i = 0; i < 32; i++)
		CU_ASSERT_EQUAL(q[i], 0);
	CU_ASSERT_PTR_EQUAL(cf_secret_ptr(z), cf_secret_cptr(z));
	CU_ASSERT_EQUAL_FATAL(cf_secret_new(0, &e), CF_OK);
	CU_ASSERT_EQUAL(cf_secret_len(e), 0);
	CU_ASSERT_EQUAL(cf_secret_new(CF_SECRET_MAX + 1, &big), CF_E_TOO_LARGE);
	CU_ASSERT_PTR_NULL(big);
	CU_ASSERT_EQUAL(cf_secret_from(data, CF_SECRET_MAX + 1, &big), CF_E_TOO_LARGE);
	CU_ASSERT_PTR_NULL(big);

	CU_ASSERT_EQUAL_FATAL(cf_secret_from(data, sizeof(data), &s), CF_OK);
	CU_ASSERT_EQUAL(cf_secret_len(s), sizeof(data));
	CU_ASSERT_EQUAL(memcmp(cf_secret_cptr(s), data, sizeof(data)), 0);
	/* truncate wipes the tail and cannot grow */
	CU_ASSERT_EQUAL(cf_secret_truncate(s, 3), CF_OK);
	CU_ASSERT_EQUAL(cf_secret_len(s), 3);
	CU_ASSERT_EQUAL(memcmp(cf_secret_cptr(s), data, 3), 0);
	CU_ASSERT_EQUAL(cf_secret_cptr(s)[3], 0);
	CU_ASSERT_EQUAL(cf_secret_cptr(s)[4], 0);
	CU_ASSERT_EQUAL(cf_secret_truncate(s, 4), CF_E_INVALID_ARG);
	CU_ASSERT_EQUAL(cf_secret_len(s), 3);
	CU_ASSERT_EQUAL(cf_secret_truncate(s, 3), CF_OK);
	CU_ASSERT_EQUAL(cf_secret_truncate(s, 0), CF_OK);
	CU_ASSERT_EQUAL(cf_secret_len(s), 0);
	CU_ASSERT_EQUAL(cf_secret_cptr(s)[0], 0);

	cf_secret_free(s);
	cf_secret_free(z);
	cf_secret_free(e);
	cf_secret_free(NULL);
}

static void
test_secret_equal(void)
{
	static const uint8_t a[] = "correct horse", b[] = "correct horsf";
	cf_secret *sa = NULL, *sa2 = NULL, *sb = NULL, *sshort = NULL, *e1 = NULL, *e2 = NULL;

	CU_ASSERT_EQUAL_FATAL(cf_secret_from(a, sizeof(a), &sa), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_secret_from(a, sizeof(a), &sa2), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_secret_from(b, sizeof(b), &sb), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_secret_from(a, sizeof(a) - 1, &sshort), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_secret_new(0, &e1), CF_OK);
	CU_ASSERT_EQUAL_FATAL(cf_secret_new(0, &e2), CF_OK);

	CU_ASSERT_EQUAL(cf_secret_equal(sa, sa), 1);
	CU_ASSERT_EQUAL(cf_secret_equal(sa, sa2), 1);
	CU_ASSERT_EQUAL(cf_secret_equal(sa, sb), 0);
	CU_ASSERT_EQUAL(cf_secret_equal(sb, sa), 0);
	/* a prefix is not equal, in either order */
	CU_ASSERT_EQUAL(cf_secret_equal(sa, sshort), 0);
	CU_ASSERT_EQUAL(cf_secret_equal(sshort, sa), 0);
	CU_ASSERT_EQUAL(cf_secret_equal(e1, e2), 1);
	CU_ASSERT_EQUAL(cf_secret_equal(e1, sa), 0);
	CU_ASSERT_EQUAL(cf_secret_equal(sa, e1), 0);

	CU_ASSERT_EQUAL(cf_secret_equal_mem(sa, a, sizeof(a)), 1);
	CU_ASSERT_EQUAL(cf_secret_equal_mem(sa, b, sizeof(b)), 0);
	CU_ASSERT_EQUAL(cf_secret_equal_mem(sa, a, sizeof(a) - 1), 0);
	CU_ASSERT_EQUAL(cf_secret_equal_mem(sshort, a, sizeof(a)), 0);
	CU_ASSERT_EQUAL(cf_secret_equal_mem(sa, a, 0), 0);
	CU_ASSERT_EQUAL(cf_secret_equal_mem(e1, "", 0), 1);
	CU_ASSERT_EQUAL(cf_secret_equal_mem(e1, a, 1), 0);
	/* truncation changes what compares equal */
	CU_ASSERT_EQUAL(cf_secret_truncate(sa2, sizeof(a) - 1), CF_OK);
	CU_ASSERT_EQUAL(cf_secret_equal(sa2, sshort), 1);
	CU_ASSERT_EQUAL(cf_secret_equal(sa2, sa), 0);

	cf_secret_free(sa);
	cf_secret_free(sa2);
	cf_secret_free(sb);
	cf_secret_free(sshort);
	cf_secret_free(e1);
	cf_secret_free(e2);
}

/* VmLck of this process in kB, or -1. */
static long
vmlck_kb(void)
{
	char line[256];
	long kb = -1;
	FILE *fp;

	if ((fp = fopen("/proc/self/status", "re")) == NULL)
		goto out;
	while (fgets(line, sizeof(line), fp) != NULL) {
		if (sscanf(line, "VmLck: %ld kB", &kb) == 1)
			break;
	}
	fclose(fp);
out:
	return kb;
}

struct vma_info {
	int found;
	int locked;     /* "lo" in VmFlags (VM_LOCKED) */
	int dontdump;   /* "dd" in VmFlags (VM_DONTDUMP) */
	long locked_kb; /* "Locked:" */
	long size_kb;   /* "Size:" */
};

/* Describe the mapping holding `addr` from /proc/self/smaps; 0 on success. */
static int
vma_info(const void *addr, struct vma_info *vi)
{
	uintptr_t a = (uintptr_t)addr;
	unsigned long lo, hi;
	char line[1024], *tok, *save;
	int in = 0, rc = -1;
	FILE *fp;

	memset(vi, 0, sizeof(*vi));
	if ((fp = fopen("/proc/self/smaps", "re")) == NULL)
		goto out;
	while (fgets(line, sizeof(line), fp) != NULL) {
		/* Mapping headers start with a lower-case hex address; fields
		 * ("Size:", "VmFlags:") with an upper-case letter. */
		if ((isdigit((unsigned char)line[0]) || (line[0] >= 'a' && line[0] <= 'f')) &&
		    sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
			if (in)
				break;
			in = a >= lo && a < hi;
			vi->found |= in;
			continue;
		}
		if (!in)
			continue;
		if (sscanf(line, "Size: %ld kB", &vi->size_kb) == 1 ||
		    sscanf(line, "Locked: %ld kB", &vi->locked_kb) == 1)
			continue;
		if (strncmp(line, "VmFlags:", 8) == 0) {
			for (tok = strtok_r(line + 8, " \n", &save); tok != NULL;
			     tok = strtok_r(NULL, " \n", &save)) {
				vi->locked |= strcmp(tok, "lo") == 0;
				vi->dontdump |= strcmp(tok, "dd") == 0;
			}
		}
	}
	rc = vi->found ? 0 : -1;
	fclose(fp);
out:
	return rc;
}

static void
test_secret_locked_dontdump(void)
{
	const size_t len = 64 * 1024;
	struct vma_info vi;
	cf_secret *s = NULL;
	long before, during, after;

	if (!MLOCK_OBSERVABLE)
		fprintf(stderr, "(AddressSanitizer build: mlock is a no-op, checking "
			"MADV_DONTDUMP only) ");
	before = vmlck_kb();
	CU_ASSERT_FATAL(before >= 0);
	CU_ASSERT_EQUAL_FATAL(cf_secret_new(len, &s), CF_OK);
	during = vmlck_kb();
	CU_ASSERT_EQUAL_FATAL(vma_info(cf_secret_cptr(s), &vi), 0);
	CU_ASSERT(vi.dontdump);
	if (MLOCK_OBSERVABLE) {
		/* the whole secret is locked in memory */
		CU_ASSERT(during >= before + (long)(len / 1024));
		CU_ASSERT(vi.locked);
		CU_ASSERT(vi.locked_kb >= (long)(len / 1024));
		CU_ASSERT_EQUAL(vi.locked_kb, vi.size_kb);
	}
	cf_secret_free(s);
	after = vmlck_kb();
	if (MLOCK_OBSERVABLE)
		CU_ASSERT(after <= during - (long)(len / 1024));

	/* a tiny secret gets its own locked, never-dumped page too */
	CU_ASSERT_EQUAL_FATAL(cf_secret_from("pin", 3, &s), CF_OK);
	CU_ASSERT_EQUAL_FATAL(vma_info(cf_secret_cptr(s), &vi), 0);
	CU_ASSERT(vi.dontdump);
	if (MLOCK_OBSERVABLE) {
		CU_ASSERT(vi.locked);
		CU_ASSERT(vi.locked_kb > 0);
	}
	cf_secret_free(s);
}

/* ---- key model ---- */

static void
test_key_types(void)
{
	static const struct {
		enum cf_key_type t;
		const char *name;
	} types[] = {
		{ CF_KEY_EC_P256, "ec-p256" }, { CF_KEY_EC_P384, "ec-p384" },
		{ CF_KEY_ED25519, "ed25519" }, { CF_KEY_RSA_2048, "rsa-2048" },
		{ CF_KEY_RSA_3072, "rsa-3072" }, { CF_KEY_RSA_4096, "rsa-4096" },
		{ CF_KEY_HMAC_SHA256, "hmac-sha256" }, { CF_KEY_HMAC_SHA384, "hmac-sha384" },
		{ CF_KEY_HMAC_SHA512, "hmac-sha512" }, { CF_KEY_AES_256, "aes-256" },
	};
	static const char *const bad[] = {
		"", "none", "unknown", "EC-P256", "ec-p256 ", "ec_p256", "rsa", "aes-128",
		"hmac-sha1", "ed448",
	};
	enum cf_key_type t;

	CU_ASSERT_EQUAL(NELEM(types), CF_KEY__COUNT - 1);
	for (size_t i = 0; i < NELEM(types); i++) {
		CU_ASSERT_STRING_EQUAL(cf_key_type_name(types[i].t), types[i].name);
		t = CF_KEY_NONE;
		CU_ASSERT_EQUAL(cf_key_type_parse(types[i].name, &t), CF_OK);
		CU_ASSERT_EQUAL(t, types[i].t);
	}
	/* every value of the enum round-trips */
	for (int i = CF_KEY_NONE + 1; i < CF_KEY__COUNT; i++) {
		t = CF_KEY_NONE;
		CU_ASSERT_EQUAL(cf_key_type_parse(cf_key_type_name((enum cf_key_type)i), &t), CF_OK);
		CU_ASSERT_EQUAL((int)t, i);
	}
	for (size_t i = 0; i < NELEM(bad); i++) {
		t = CF_KEY_EC_P384;
		CU_ASSERT_EQUAL(cf_key_type_parse(bad[i], &t), CF_E_INVALID_ARG);
		CU_ASSERT_EQUAL(t, CF_KEY_EC_P384);
		CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "ec-p256"));
	}
	CU_ASSERT_STRING_EQUAL(cf_key_type_name(CF_KEY__COUNT), "unknown");
	CU_ASSERT_STRING_EQUAL(cf_key_type_name((enum cf_key_type)-1), "unknown");

	/* classification and defaults */
	CU_ASSERT(cf_key_type_is_ec(CF_KEY_EC_P256) && cf_key_type_is_ec(CF_KEY_EC_P384));
	CU_ASSERT(!cf_key_type_is_ec(CF_KEY_ED25519));
	CU_ASSERT(cf_key_type_is_rsa(CF_KEY_RSA_3072) && !cf_key_type_is_rsa(CF_KEY_AES_256));
	CU_ASSERT(cf_key_type_is_hmac(CF_KEY_HMAC_SHA512) && !cf_key_type_is_hmac(CF_KEY_AES_256));
	CU_ASSERT(cf_key_type_is_asymmetric(CF_KEY_ED25519));
	CU_ASSERT(!cf_key_type_is_asymmetric(CF_KEY_HMAC_SHA256));
	CU_ASSERT(!cf_key_type_is_asymmetric(CF_KEY_NONE));
	CU_ASSERT_EQUAL(cf_key_default_hash(CF_KEY_EC_P384), CF_HASH_SHA384);
	CU_ASSERT_EQUAL(cf_key_default_hash(CF_KEY_ED25519), CF_HASH_NONE);
	CU_ASSERT_EQUAL(cf_key_default_hash(CF_KEY_AES_256), CF_HASH_NONE);
	CU_ASSERT_EQUAL(cf_key_default_scheme(CF_KEY_RSA_2048), CF_SIG_RSA_PSS);
	CU_ASSERT_EQUAL(cf_key_default_scheme(CF_KEY_EC_P256), CF_SIG_ECDSA);
	CU_ASSERT_EQUAL(cf_key_default_scheme(CF_KEY_ED25519), CF_SIG_EDDSA);
}

static void
test_hashes(void)
{
	static const struct {
		enum cf_hash h;
		const char *name;
		size_t len;
	} hashes[] = {
		{ CF_HASH_SHA256, "sha256", 32 }, { CF_HASH_SHA384, "sha384", 48 },
		{ CF_HASH_SHA512, "sha512", 64 },
	};
	enum cf_hash h;

	for (size_t i = 0; i < NELEM(hashes); i++) {
		CU_ASSERT_STRING_EQUAL(cf_hash_name(hashes[i].h), hashes[i].name);
		CU_ASSERT_EQUAL(cf_hash_len(hashes[i].h), hashes[i].len);
		h = CF_HASH_NONE;
		CU_ASSERT_EQUAL(cf_hash_parse(hashes[i].name, &h), CF_OK);
		CU_ASSERT_EQUAL(h, hashes[i].h);
	}
	CU_ASSERT_EQUAL(cf_hash_len(CF_HASH_NONE), 0);
	h = CF_HASH_SHA256;
	CU_ASSERT_EQUAL(cf_hash_parse("none", &h), CF_E_INVALID_ARG);
	CU_ASSERT_EQUAL(cf_hash_parse("SHA256", &h), CF_E_INVALID_ARG);
	CU_ASSERT_EQUAL(cf_hash_parse("sha1", &h), CF_E_INVALID_ARG);
	CU_ASSERT_EQUAL(h, CF_HASH_SHA256);
}

static void
test_key_names(void)
{
	static const char *const good[] = {
		"a", "0", "key-1.v_2", "9lives", "a.", "a-", "a_", "x..y",
	};
	static const char *const bad[] = {
		"", "A", "-a", ".a", "_a", "a/b", "aB", "a b", "key\n", "k\xc3\xa9",
		"../etc", "a:b", "a+b",
	};
	char name[CF_KEY_NAME_MAX + 2];

	for (size_t i = 0; i < NELEM(good); i++) {
		if (cf_key_name_check(good[i]) != CF_OK)
			fprintf(stderr, "rejected \"%s\": %s\n", good[i], cf_error_detail());
		CU_ASSERT_EQUAL(cf_key_name_check(good[i]), CF_OK);
	}
	for (size_t i = 0; i < NELEM(bad); i++) {
		cf_error_clear();
		CU_ASSERT_EQUAL(cf_key_name_check(bad[i]), CF_E_INVALID_ARG);
		CU_ASSERT_STRING_NOT_EQUAL(cf_error_detail(), cf_strerror(CF_E_INVALID_ARG));
	}
	CU_ASSERT_EQUAL(cf_key_name_check(NULL), CF_E_INVALID_ARG);

	/* CF_KEY_NAME_MAX (128) characters is the longest accepted name */
	memset(name, 'a', CF_KEY_NAME_MAX);
	name[CF_KEY_NAME_MAX] = '\0';
	CU_ASSERT_EQUAL(strlen(name), 128);
	CU_ASSERT_EQUAL(cf_key_name_check(name), CF_OK);
	name[CF_KEY_NAME_MAX] = 'a';
	name[CF_KEY_NAME_MAX + 1] = '\0';
	CU_ASSERT_EQUAL(strlen(name), 129);
	CU_ASSERT_EQUAL(cf_key_name_check(name), CF_E_INVALID_ARG);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "128"));
}

/* The authorization header parser: a NUL inside a value is refused (it
 * would hide bytes from the checks), as are a trailing comma and extra
 * spaces after the label; a good header parses back to its fields. */
static void
test_callauth_parse(void)
{
	static const char good[] = "COFFER-HMAC-SHA256 keyId=ak_000102030405060708090a0b, "
		"timestamp=1764300000, nonce=0123456789abcdef, signature="
		"7cd5aed32632d27e7a360c3657a2693bbfe6122719f9695d2f29d15fbd98bc8d";
	char nul[sizeof(good) + 60];
	struct cf_call_auth a;
	size_t n;

	CU_ASSERT_EQUAL(cf_callauth_parse(good, strlen(good), &a), CF_OK);
	CU_ASSERT_STRING_EQUAL(a.key_id, "ak_000102030405060708090a0b");
	CU_ASSERT_EQUAL(a.timestamp, 1764300000);
	/* keyId=<valid id>\0<padding>: the padding must not be copied over. */
	n = (size_t)snprintf(nul, sizeof(nul), "COFFER-HMAC-SHA256 keyId=ak_000102030405060708090a0b");
	nul[n++] = '\0';
	memset(nul + n, 'Z', 40);
	n += 40;
	n += (size_t)snprintf(nul + n, sizeof(nul) - n, ", timestamp=1");
	CU_ASSERT_EQUAL(cf_callauth_parse(nul, n, &a), CF_E_INVALID_ARG);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "NUL"));
	{
		char t[sizeof(good) + 2];

		snprintf(t, sizeof(t), "%s,", good);
		CU_ASSERT_EQUAL(cf_callauth_parse(t, strlen(t), &a), CF_E_INVALID_ARG);
		snprintf(t, sizeof(t), "COFFER-HMAC-SHA256  %s", good + 19);
		CU_ASSERT_EQUAL(cf_callauth_parse(t, strlen(t), &a), CF_E_INVALID_ARG);
	}
}

static void
test_hex(void)
{
	const uint8_t in[4] = { 0x00, 0x9f, 0xa0, 0xff };
	uint8_t out[4];
	char text[9];

	cf_hex_encode(in, sizeof(in), text);
	CU_ASSERT_STRING_EQUAL(text, "009fa0ff");
	CU_ASSERT_EQUAL(cf_hex_decode("009FA0ff", out, 4), 0);
	CU_ASSERT_EQUAL(memcmp(out, in, 4), 0);
	CU_ASSERT_EQUAL(cf_hex_decode("009fa0fg", out, 4), -1);
	CU_ASSERT_EQUAL(cf_hex_decode("009fa0f", out, 4), -1);   /* too short: the NUL */
	CU_ASSERT_EQUAL(cf_hex_digit('x'), -1);
}

/* ---- protocol strings: UTF-8 without NUL (cf_pbcheck) ---- */

#define S(lit) lit, sizeof(lit) - 1

/* Each input with the length of its valid UTF-8 prefix. */
static void
test_utf8_valid(void)
{
	static const struct {
		const char *in;
		size_t len, valid;
	} t[] = {
		{ S(""), 0 },
		{ S("abc"), 3 },
		{ S("\xc3\xa9"), 2 },                  /* U+00E9 */
		{ S("\xe2\x82\xac"), 3 },              /* U+20AC */
		{ S("\xef\xbf\xbf"), 3 },              /* U+FFFF */
		{ S("\xed\x9f\xbf"), 3 },              /* U+D7FF, below the surrogates */
		{ S("\xf0\x9f\x98\x80"), 4 },          /* U+1F600 */
		{ S("\xf4\x8f\xbf\xbf"), 4 },          /* U+10FFFF */
		{ S("a\0b"), 3 },                      /* NUL is UTF-8: the NUL rule is separate */
		{ S("k\xbdz"), 1 },                    /* a lone continuation byte */
		{ S("\x80"), 0 },
		{ S("\xff"), 0 },
		{ S("\xfe"), 0 },
		{ S("\xc0\xaf"), 0 },                  /* overlong '/' */
		{ S("\xc1\xbf"), 0 },                  /* overlong */
		{ S("\xe0\x80\xaf"), 0 },              /* overlong, 3 bytes */
		{ S("\xe0\x9f\xbf"), 0 },              /* overlong U+07FF */
		{ S("\xf0\x80\x80\xaf"), 0 },          /* overlong, 4 bytes */
		{ S("\xf0\x8f\xbf\xbf"), 0 },          /* overlong U+FFFF */
		{ S("\xed\xa0\x80"), 0 },              /* U+D800, a surrogate */
		{ S("\xed\xbf\xbf"), 0 },              /* U+DFFF */
		{ S("\xf4\x90\x80\x80"), 0 },          /* U+110000 */
		{ S("\xf5\x80\x80\x80"), 0 },
		{ S("a\xe2\x82"), 1 },                 /* truncated 3-byte */
		{ S("ab\xf0\x9f\x98"), 2 },            /* truncated 4-byte */
		{ S("\xc3"), 0 },                      /* truncated 2-byte */
		{ S("\xe2\x28\xa1"), 0 },              /* bad second byte */
		{ S("\xf0\x9f\x28\x80"), 0 },          /* bad third byte */
		{ S("\xc3\xa9\xc3"), 2 },
	};

	for (size_t i = 0; i < NELEM(t); i++) {
		size_t v = cf_utf8_valid((const uint8_t *)t[i].in, t[i].len);

		if (v != t[i].valid)
			fprintf(stderr, "\ncase %zu: valid prefix %zu, expected %zu\n", i, v,
				t[i].valid);
		CU_ASSERT_EQUAL(v, t[i].valid);
	}
}

/* Escaped text: invalid bytes and controls as \xNN, valid UTF-8 copied,
 * cut only between characters or escapes, always terminated. */
static void
test_text_escape(void)
{
	static const struct {
		const char *in;
		size_t len, outlen;
		const char *want;
	} t[] = {
		{ S("no principal k\xbdz"), 64, "no principal k\\xbdz" },
		{ S("a\nb\tc\x7f"), 64, "a\\x0ab\\x09c\\x7f" },
		{ S("a\0b"), 64, "a\\x00b" },
		{ S("caf\xc3\xa9 \xf0\x9f\x98\x80"), 64, "caf\xc3\xa9 \xf0\x9f\x98\x80" },
		{ S("\xc0\xaf\xed\xa0\x80"), 64, "\\xc0\\xaf\\xed\\xa0\\x80" },
		{ S("x\xe2\x82"), 64, "x\\xe2\\x82" },        /* truncated input */
		{ S("\xc3\xa9"), 2, "" },                     /* no room for the character */
		{ S("\xc3\xa9"), 3, "\xc3\xa9" },
		{ S("a\xf0\x9f\x98\x80"), 5, "a" },
		{ S("a\xf0\x9f\x98\x80"), 6, "a\xf0\x9f\x98\x80" },
		{ S("\xbd"), 4, "" },                         /* no room for the escape */
		{ S("\xbd"), 5, "\\xbd" },
		{ S("ab\xbd"), 6, "ab" },
		{ S("abc"), 1, "" },
	};
	char out[64];

	for (size_t i = 0; i < NELEM(t); i++) {
		size_t n;

		memset(out, 'Z', sizeof(out));
		n = cf_text_escape(t[i].in, t[i].len, out, t[i].outlen);
		if (strcmp(out, t[i].want) != 0)
			fprintf(stderr, "\ncase %zu: \"%s\", expected \"%s\"\n", i, out, t[i].want);
		CU_ASSERT_STRING_EQUAL(out, t[i].want);
		CU_ASSERT_EQUAL(n, strlen(t[i].want));
		CU_ASSERT_EQUAL(cf_utf8_valid((const uint8_t *)out, n), n);
	}
	out[0] = 'Z';
	CU_ASSERT_EQUAL(cf_text_escape("abc", 3, out, 0), 0);
	CU_ASSERT_EQUAL(out[0], 'Z');
}

/* Wire bytes checked against descriptors: string fields at every depth,
 * repeated (map) entries, bytes and unknown fields left alone. */
static void
test_pb_check_strings(void)
{
	/* SealedCall { method (3) = "/coffer.v1.KeyService/GetKey\0junk", record (4) } */
	static const uint8_t nul_method[] = "\x1a\x21/coffer.v1.KeyService/GetKey\0junk"
					    "\x22\x03\x00\xbd\x00";
	static const uint8_t ok_method[] = "\x0a\x02\x00\xff\x10\x07"
					   "\x1a\x1c/coffer.v1.KeyService/GetKey";
	/* VerifyRequestSignatureRequest { request (1) { key (1) = "k\xbdz" } } */
	static const uint8_t nested[] = "\x0a\x05\x0a\x03k\xbdz\x12\x01x";
	/* WrapRequest { context (3) { "a": "b" }, context { "c": "\xed\xa0\x80" } } */
	static const uint8_t map[] = "\x0a\x01k\x1a\x06\x0a\x01" "a\x12\x01" "b"
				     "\x1a\x08\x0a\x01" "c\x12\x03\xed\xa0\x80";
	/* GetKeyRequest { name = "k", unknown field 9 = "\0\xff" } */
	static const uint8_t unknown[] = "\x0a\x01k\x4a\x02\x00\xff";
	static const uint8_t truncated[] = "\x0a\x05k";
	static const uint8_t group[] = "\x0b\x0c";
	/* OpenSessionRequest { principal (4) = "me\0" + 200 bytes } */
	uint8_t big[3 + 203];

	CU_ASSERT_EQUAL(cf_pb_check_strings(&coffer__v1__sealed_call__descriptor, nul_method,
					    sizeof(nul_method) - 1), CF_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), "field coffer.v1.SealedCall.method: a NUL "
			       "byte at offset 28; protocol strings are UTF-8 text without NUL");
	CU_ASSERT_EQUAL(cf_pb_check_strings(&coffer__v1__sealed_call__descriptor, ok_method,
					    sizeof(ok_method) - 1), CF_OK);
	CU_ASSERT_EQUAL(cf_pb_check_strings(&coffer__v1__verify_request_signature_request__descriptor,
					    nested, sizeof(nested) - 1), CF_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), "field coffer.v1.HttpRequestParts.key: invalid "
			       "UTF-8 at offset 1; protocol strings are UTF-8 text without NUL");
	CU_ASSERT_EQUAL(cf_pb_check_strings(&coffer__v1__wrap_request__descriptor, map,
					    sizeof(map) - 1), CF_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), "field coffer.v1.WrapRequest.ContextEntry.value: "
			       "invalid UTF-8 at offset 0; protocol strings are UTF-8 text "
			       "without NUL");
	CU_ASSERT_EQUAL(cf_pb_check_strings(&coffer__v1__get_key_request__descriptor, unknown,
					    sizeof(unknown) - 1), CF_OK);
	CU_ASSERT_EQUAL(cf_pb_check_strings(&coffer__v1__get_key_request__descriptor, truncated,
					    sizeof(truncated) - 1), CF_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(cf_error_detail(),
			       "request is not a valid coffer.v1.GetKeyRequest message: truncated");
	CU_ASSERT_EQUAL(cf_pb_check_strings(&coffer__v1__get_key_request__descriptor, group,
					    sizeof(group) - 1), CF_E_INVALID_ARG);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "wire type 3 at byte 0"));
	CU_ASSERT_EQUAL(cf_pb_check_strings(&coffer__v1__get_key_request__descriptor, NULL, 0),
			CF_OK);
	big[0] = 0x22;
	big[1] = 0xcb;          /* 203 as a varint */
	big[2] = 0x01;
	memcpy(big + 3, "me", 2);
	big[5] = 0;
	memset(big + 6, 'x', 200);
	CU_ASSERT_EQUAL(cf_pb_check_strings(&coffer__v1__open_session_request__descriptor, big,
					    sizeof(big)), CF_E_INVALID_ARG);
	CU_ASSERT_STRING_EQUAL(cf_error_detail(), "field coffer.v1.OpenSessionRequest.principal: "
			       "a NUL byte at offset 2; protocol strings are UTF-8 text without NUL");
	/* Every byte of the wire data is read through the field's length only. */
	CU_ASSERT_EQUAL(cf_pb_check_strings(&coffer__v1__open_session_request__descriptor, big,
					    sizeof(big) - 1), CF_E_INVALID_ARG);
	CU_ASSERT_PTR_NOT_NULL(strstr(cf_error_detail(), "truncated"));
	/* Repeated fields: CF_PB_REPEATED_MAX empty batch items pass (the
	 * handler's own bound says the rest), one more is refused before
	 * anything is unpacked; so are context entries, counted per message. */
	{
		size_t n = 2 * (CF_PB_REPEATED_MAX + 1);
		uint8_t *w = malloc(n + 3);

		CU_ASSERT_PTR_NOT_NULL_FATAL(w);
		memcpy(w, "\x0a\x01k", 3);                    /* key = "k" */
		for (size_t i = 0; i < CF_PB_REPEATED_MAX + 1; i++)
			memcpy(w + 3 + 2 * i, "\x32\x00", 2);  /* items (6) = {} */
		CU_ASSERT_EQUAL(cf_pb_check_strings(&coffer__v1__sign_batch_request__descriptor, w,
						    n + 1), CF_OK);
		CU_ASSERT_EQUAL(cf_pb_check_strings(&coffer__v1__sign_batch_request__descriptor, w,
						    n + 3), CF_E_TOO_LARGE);
		CU_ASSERT_STRING_EQUAL(cf_error_detail(), "field coffer.v1.SignBatchRequest.items "
				       "repeats more than 4096 times");
		for (size_t i = 0; i < CF_PB_REPEATED_MAX + 1; i++)
			memcpy(w + 3 + 2 * i, "\x1a\x00", 2);  /* context (3) = {} */
		CU_ASSERT_EQUAL(cf_pb_check_strings(&coffer__v1__wrap_request__descriptor, w, n + 3),
				CF_E_TOO_LARGE);
		CU_ASSERT_STRING_EQUAL(cf_error_detail(), "field coffer.v1.WrapRequest.context "
				       "repeats more than 4096 times");
		free(w);
	}
}

/* cf_arena: a locked bump allocator that is the thread's current one for
 * cf_pbwipe_allocator; locked blocks told apart from heap blocks. */
static void
test_arena(void)
{
	cf_arena *a = NULL;
	ProtobufCAllocator al;
	uint8_t *p, *q, *big, *h;
	size_t total = 0;
	int heap = 0;

	CHECK_OK(cf_arena_new(&a));
	CU_ASSERT_FALSE(cf_arena_contains(a, &total));
	p = cf_arena_alloc(a, 1);
	q = cf_arena_alloc(a, 100);
	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	CU_ASSERT_PTR_NOT_NULL_FATAL(q);
	CU_ASSERT_EQUAL((uintptr_t)q % 16, 0);
	CU_ASSERT(q >= p + 16);
	CU_ASSERT(cf_arena_contains(a, p) && cf_arena_contains(a, q + 99));
	memset(q, 0xa5, 100);
	/* Growth past the first chunk, then the cap. */
	big = cf_arena_alloc(a, 100000);
	CU_ASSERT_PTR_NOT_NULL_FATAL(big);
	CU_ASSERT(cf_arena_contains(a, big + 99999));
	CU_ASSERT_EQUAL(q[99], 0xa5);   /* earlier blocks stay put */
	CU_ASSERT_PTR_NULL(cf_arena_alloc(a, CF_ARENA_MAX));
	while (cf_arena_alloc(a, 60000) != NULL)
		total += 60000;
	CU_ASSERT(total > 0 && total < CF_ARENA_MAX);
	cf_arena_free(a);

	/* Current: cf_pbwipe_allocator allocates from it, and leaves its blocks
	 * to it; outside it, the heap (wiped on free). */
	CHECK_OK(cf_arena_new(&a));
	al = cf_arena_allocator(a);       /* frees nothing */
	p = al.alloc(al.allocator_data, 32);
	CU_ASSERT(cf_arena_contains(a, p));
	al.free(al.allocator_data, p);
	cf_arena_set_current(a);
	CU_ASSERT_PTR_EQUAL(cf_arena_current(), a);
	p = cf_pbwipe_allocator.alloc(NULL, 48);
	CU_ASSERT(cf_arena_contains(a, p));
	cf_pbwipe_allocator.free(NULL, p);   /* a no-op: freeing it would crash */
	cf_arena_set_current(NULL);
	h = cf_pbwipe_allocator.alloc(NULL, 48);
	CU_ASSERT_FALSE(cf_arena_contains(a, h));
	cf_pbwipe_allocator.free(NULL, h);
	cf_arena_set_current(a);
	cf_arena_free(a);                    /* also ends it being current */
	CU_ASSERT_PTR_NULL(cf_arena_current());
	cf_arena_free(NULL);

	/* Locked blocks: recognised, released once; heap blocks are not theirs. */
	p = cf_locked_alloc(40);
	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	CU_ASSERT_EQUAL(p[39], 0);
	h = malloc(40);
	CU_ASSERT_PTR_NOT_NULL_FATAL(h);
	CU_ASSERT_FALSE(cf_locked_free(h));
	CU_ASSERT_FALSE(cf_locked_free(NULL));
	CU_ASSERT_TRUE(cf_locked_free(p));
	CU_ASSERT_FALSE(cf_locked_free(p));  /* not twice */
	cf_secure_free(h, 40);
	cf_secure_free(cf_locked_alloc(10), 10);
	cf_secure_free(NULL, 0);
	/* Many at once (the set grows), each freed. */
	{
		uint8_t *many[300];

		for (int i = 0; i < 300; i++) {
			many[i] = cf_locked_alloc(8);
			CU_ASSERT_PTR_NOT_NULL_FATAL(many[i]);
		}
		for (int i = 299; i >= 0; i--)
			heap += cf_locked_free(many[i]);
		CU_ASSERT_EQUAL(heap, 300);
	}
	/* The locked protobuf-c allocator: locked up to CF_SECRET_MAX, heap above. */
	p = cf_locked_allocator.alloc(NULL, 64);
	big = cf_locked_allocator.alloc(NULL, CF_SECRET_MAX + 1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	CU_ASSERT_PTR_NOT_NULL_FATAL(big);
	cf_locked_allocator.free(NULL, big);
	CU_ASSERT_TRUE(cf_locked_free(p));
}

/* Where memory cannot be locked (RLIMIT_MEMLOCK 0 and no CAP_IPC_LOCK),
 * cf_locked_allocator falls back to the wiping heap: a library call still
 * works. In a child, which drops the capability and the limit. */
static int
locked_fallback_child(void)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct cap[2];
	struct rlimit none = { 0, 0 };
	uint8_t *p;
	int ok;

	if (syscall(SYS_capget, &hdr, cap) != 0)
		return 2;
	cap[0].effective &= ~(1u << CAP_IPC_LOCK);
	if (syscall(SYS_capset, &hdr, cap) != 0 || setrlimit(RLIMIT_MEMLOCK, &none) != 0)
		return 3;
	/* Two pages: more than a spare locked page the parent may have left.
	 * Under ASan mlock "succeeds" anyway: only the allocator is checked. */
	if ((p = cf_locked_alloc(8192)) != NULL) {
		cf_locked_free(p);
		if (MLOCK_OBSERVABLE)
			return 4;   /* memory was locked after all: nothing tested */
	}
	if ((p = cf_locked_allocator.alloc(NULL, 8192)) == NULL)
		return 5;
	memset(p, 0xA5, 8192);
	ok = p[8191] == 0xA5;
	cf_locked_allocator.free(NULL, p);
	return ok ? 0 : 6;
}

static void
test_locked_fallback(void)
{
	int status = -1;
	pid_t pid = fork();

	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0)
		_exit(locked_fallback_child());
	CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
	if (!MLOCK_OBSERVABLE)
		fprintf(stderr, "(AddressSanitizer build: mlock cannot fail, checking the "
			"allocator only) ");
	CU_ASSERT(WIFEXITED(status));
	CU_ASSERT_EQUAL(WEXITSTATUS(status), 0);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "every status has a name and a text; unknown codes", test_status_names },
		{ "cf_arena: locked arena, current arena, locked blocks", test_arena },
		{ "cf_error details, fallback, truncation, clear", test_error_detail },
		{ "error details are thread-local", test_error_detail_thread_local },
		{ "cf_error formats aside; cf_error_message only for its status",
		  test_error_self_format },
		{ "cf_buf put/get round trip, big-endian u32", test_buf_round_trip },
		{ "cf_buf cap refuses and leaves the buffer unchanged", test_buf_cap },
		{ "cf_buf reads past the end consume nothing", test_buf_read_past_end },
		{ "cf_buf reserve/commit", test_buf_reserve_commit },
		{ "cf_buf reset wipes and rewinds", test_buf_reset },
		{ "cf_secret new/from/len/truncate", test_secret_basics },
		{ "cf_secret equal and equal_mem", test_secret_equal },
		{ "cf_secret mapping is mlocked and MADV_DONTDUMP", test_secret_locked_dontdump },
		{ "locked allocator falls back to the wiping heap without RLIMIT_MEMLOCK",
		  test_locked_fallback },
		{ "key type names round-trip; unknown names rejected", test_key_types },
		{ "hash names and lengths", test_hashes },
		{ "key name rule", test_key_names },
		{ "authorization header parser", test_callauth_parse },
		{ "hex encode and decode", test_hex },
		{ "UTF-8 validation: overlong, surrogate, 4-byte, truncated", test_utf8_valid },
		{ "text escaping of invalid UTF-8 and controls, clean cuts", test_text_escape },
		{ "string fields of wire data: NUL and UTF-8, nested, repeated", test_pb_check_strings },
		{ NULL, NULL },
	};

	return cf_test_main("common", NULL, NULL, cases);
}
