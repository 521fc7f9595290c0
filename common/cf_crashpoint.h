/*
 * cf_crashpoint.h — named crash points (crash-safety tests only).
 *
 * A crash point marks a step between two durable writes of a mutation. With
 * the build option COFFER_CRASH_POINTS (off in release builds) a test can
 * make the process die there: COFFER_CRASH_AT=<name>[@<n>] ends it with
 * _exit(CF_CRASH_EXIT) (no clean-up) the n-th time (default 1) the point is
 * passed; with COFFER_CRASH_MODE=stop the process stops itself (SIGSTOP) there
 * instead, for a SIGKILL from outside. With COFFER_CRASH_MODE=hold only the
 * thread that reached the point waits there, the rest of the process going
 * on: it creates the file <dir>/held and goes on once <dir>/release exists
 * (COFFER_CRASH_HOLD=<dir>), so a test can run another call inside that
 * window (an interleaving, not a crash). Several points, comma-separated,
 * hold a thread each: the second's files are held2 and release2, and so on. COFFER_CRASH_TRACE=<file> appends
 * the name of every point passed, one per line.
 *
 * Every point is registered at build time in the ELF section cf_crashpoints,
 * so cf_crashpoint_list() enumerates them all without running anything: a
 * new point is covered by the tests that loop over the list.
 */
#ifndef COFFER_CF_CRASHPOINT_H
#define COFFER_CF_CRASHPOINT_H

#include <stdio.h>

#define CF_CRASH_EXIT 86

struct cf_crashpoint {
	const char *name;
};

#ifdef COFFER_CRASH_POINTS
/* Defines a registered point `id` (static). */
#define CF_CRASHPOINT_DEF(id, nm)                                                              \
	static const struct cf_crashpoint id                                                   \
		__attribute__((used, section("cf_crashpoints"), aligned(sizeof(void *)))) = { nm }
void cf_crashpoint_hit(const struct cf_crashpoint *cp);
/* A hold point (CF_HOLD_POINT): acted on as a target, never traced. */
void cf_holdpoint_hit(const struct cf_crashpoint *cp);
/* Read the environment; call once at start, before any thread. */
void cf_crashpoint_init(void);
/* Print every registered name, one per line; the count. */
size_t cf_crashpoint_list(FILE *out);
#else
#define CF_CRASHPOINT_DEF(id, nm) static const struct cf_crashpoint id = { nm }
static inline void cf_crashpoint_hit(const struct cf_crashpoint *cp) { (void)cp; }
static inline void cf_holdpoint_hit(const struct cf_crashpoint *cp) { (void)cp; }
static inline void cf_crashpoint_init(void) {}
static inline size_t cf_crashpoint_list(FILE *out) { (void)out; return 0; }
#endif

/* A point where a test may hold a thread (COFFER_CRASH_MODE=hold) that is
 * no step of a mutation: neither listed (not in the section) nor traced, so
 * the crash loops do not look for a scenario that crashes there. */
#define CF_HOLD_POINT(nm)                                                                      \
	do {                                                                                   \
		static const struct cf_crashpoint cf_hp_here_ = { nm };                        \
		cf_holdpoint_hit(&cf_hp_here_);                                                \
	} while (0)

/* Pass the point named nm (a string literal). */
#define CF_CRASH_POINT(nm)                                                                     \
	do {                                                                                   \
		CF_CRASHPOINT_DEF(cf_cp_here_, nm);                                            \
		cf_crashpoint_hit(&cf_cp_here_);                                               \
	} while (0)

#endif
