#include "cf_count.h"

_Thread_local unsigned long cf_counts[CF_COUNT__N];
