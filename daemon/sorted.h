/*
 * sorted.h — the binary search of the daemon's tables kept sorted by name
 * (keyring's keys, policy's principals), written once.
 */
#ifndef COFFER_SORTED_H
#define COFFER_SORTED_H

#include <stddef.h>

/* Where `name` stands among the n names name_at(set, 0..n) (ascending by
 * strcmp): *found = 1 and its index, or *found = 0 and the index it would
 * be inserted at. */
size_t sorted_find(const void *set, size_t n, const char *(*name_at)(const void *set, size_t i),
		   const char *name, int *found);

#endif
