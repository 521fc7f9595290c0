/* The binary search by name (sorted.h). */
#include "sorted.h"

#include <string.h>

size_t
sorted_find(const void *set, size_t n, const char *(*name_at)(const void *set, size_t i),
	    const char *name, int *found)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(name_at(set, mid), name);

		if (c == 0) {
			*found = 1;
			return mid;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = 0;
	return lo;
}
