/*
 * cf_test_trail.h — an audit trail (common/cf_audit_verify.h) as lines, to
 * alter it the way an attacker would: drop, copy, swap or renumber lines and
 * recompute the chain values after a change (with OpenSSL alone, from the
 * documented format). Failures are CUnit fatal assertions.
 */
#ifndef COFFER_CF_TEST_TRAIL_H
#define COFFER_CF_TEST_TRAIL_H

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <CUnit/Basic.h>

#define CF_TRAIL_MAX 64

struct cf_trail {      /* lines without their newlines */
	char *l[CF_TRAIL_MAX];
	size_t n;
};

void cf_trail_free(struct cf_trail *t);
/* Read path's complete lines (at most CF_TRAIL_MAX). */
void cf_trail_load(const char *path, struct cf_trail *t);
/* Write t's lines; the last without its newline if torn. */
void cf_trail_save(const char *path, const struct cf_trail *t, int torn);
void cf_trail_copy(const struct cf_trail *from, struct cf_trail *to);
/* Remove line i (0-based). */
void cf_trail_drop(struct cf_trail *t, size_t i);
/* Where line's chain field starts, or NULL. */
char *cf_trail_chain_field(char *line);
/* A copy of line numbered seq (malloc'ed; its chain to be recomputed). */
char *cf_trail_renumbered(const char *line, size_t seq);
/* 1 if line is a seal (it carries a signature). */
int cf_trail_is_seal(const char *line);
/* Recompute every chain value from line `from` (0-based) on. */
void cf_trail_rechain(struct cf_trail *t, size_t from);

/* The verifier's report rep says "altered at record `line`", with why in its
 * reason; prints the report when not. */
#define CHECK_TRAIL_BAD(rep, line, why) do {                                  \
	if ((rep).ok || (rep).first_bad != (line) ||                          \
	    strstr((rep).reason, (why)) == NULL)                              \
		fprintf(stderr, "\n  %s:%d: ok %d first_bad %llu \"%s\"\n",   \
			__FILE__, __LINE__, (rep).ok,                         \
			(unsigned long long)(rep).first_bad, (rep).reason);   \
	CU_ASSERT_EQUAL((rep).ok, 0);                                         \
	CU_ASSERT_EQUAL((rep).first_bad, (line));                             \
	CU_ASSERT_PTR_NOT_NULL(strstr((rep).reason, (why)));                  \
} while (0)

#endif
