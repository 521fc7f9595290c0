/*
 * cf_count.h — per-thread counters of the steps each call must take exactly
 * once (a key name validated, a key looked up, an authorization decided),
 * so that a test can show it does: read cf_counts before and after one call
 * on the same thread (tests/unit/test_dispatch.c).
 */
#ifndef CF_COUNT_H
#define CF_COUNT_H

enum cf_count {
	CF_COUNT_KEY_NAME_CHECK,   /* cf_key_name_check */
	CF_COUNT_KEY_LOOKUP,       /* a key found by name in the daemon's keyring */
	CF_COUNT_AUTHORIZE,        /* policy_authorize */
	CF_COUNT__N
};

extern _Thread_local unsigned long cf_counts[CF_COUNT__N];

#define cf_count(c) ((void)cf_counts[(c)]++)

#endif
