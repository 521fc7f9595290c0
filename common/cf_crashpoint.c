/* Named crash points: see cf_crashpoint.h. */
#include "cf_crashpoint.h"

#ifdef COFFER_CRASH_POINTS
#include <fcntl.h>
#include <stdio.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The linker provides the bounds of the section. */
extern const struct cf_crashpoint __start_cf_crashpoints[];
extern const struct cf_crashpoint __stop_cf_crashpoints[];

#define TARGETS 4
static struct {
	char name[128];
	unsigned long at, hits;   /* the pass it acts at (1: the first); passes so far */
} target[TARGETS];
static size_t ntargets;
static char hold_dir[256];
static enum { M_EXIT, M_STOP, M_HOLD } mode_at;
static int trace_fd = -1, armed;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

void
cf_crashpoint_init(void)
{
	const char *at = getenv("COFFER_CRASH_AT"), *mode = getenv("COFFER_CRASH_MODE");
	const char *trace = getenv("COFFER_CRASH_TRACE"), *hold = getenv("COFFER_CRASH_HOLD");
	char *n;

	/* <name>[@<n>], or several, comma-separated (hold mode: one thread at
	 * each). */
	for (; at != NULL && *at != '\0' && ntargets < TARGETS; ntargets++) {
		size_t len = strcspn(at, ",");

		snprintf(target[ntargets].name, sizeof(target[ntargets].name), "%.*s", (int)len,
			 at);
		target[ntargets].at = 1;
		if ((n = strrchr(target[ntargets].name, '@')) != NULL) {
			*n++ = '\0';
			if ((target[ntargets].at = strtoul(n, NULL, 10)) == 0)
				target[ntargets].at = 1;
		}
		armed = 1;
		at += len + (at[len] == ',');
	}
	if (mode != NULL && strcmp(mode, "stop") == 0)
		mode_at = M_STOP;
	else if (mode != NULL && strcmp(mode, "hold") == 0 && hold != NULL && *hold != '\0' &&
		 strlen(hold) < sizeof(hold_dir) - 16) {
		snprintf(hold_dir, sizeof(hold_dir), "%s", hold);
		mode_at = M_HOLD;
	} else if (mode != NULL && strcmp(mode, "hold") == 0) {
		fprintf(stderr, "COFFER_CRASH_MODE=hold needs COFFER_CRASH_HOLD=<dir>\n");
		_exit(2);
	}
	if (trace != NULL && *trace != '\0') {
		trace_fd = open(trace, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		armed = 1;
	}
}

/* This thread waits (polling: tests only) until the test releases it:
 * held/release for the first target, held2/release2 for the second... */
static void
hold_here(size_t t)
{
	char path[sizeof(hold_dir) + 32], k[8] = "";
	int fd;

	if (t > 0)
		snprintf(k, sizeof(k), "%zu", t + 1);
	snprintf(path, sizeof(path), "%s/held%s", hold_dir, k);
	if ((fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600)) >= 0)
		close(fd);
	snprintf(path, sizeof(path), "%s/release%s", hold_dir, k);
	while (access(path, F_OK) != 0)
		usleep(1000);
}

static void
hit(const struct cf_crashpoint *cp, int traced)
{
	size_t t = ntargets;

	if (!armed)
		return;
	pthread_mutex_lock(&mu);
	if (traced && trace_fd >= 0) {
		char line[160];
		int n = snprintf(line, sizeof(line), "%s\n", cp->name);

		if (n > 0 && write(trace_fd, line, (size_t)n) < 0) {
			/* tracing is best effort */
		}
	}
	for (size_t i = 0; i < ntargets && t == ntargets; i++)
		if (strcmp(cp->name, target[i].name) == 0 && ++target[i].hits == target[i].at)
			t = i;
	pthread_mutex_unlock(&mu);
	if (t == ntargets)
		return;
	if (mode_at == M_HOLD) {
		hold_here(t);
		return;
	}
	if (mode_at == M_STOP) {
		/* Wait for the SIGKILL from outside; never go on. */
		for (;;)
			raise(SIGSTOP);
	}
	_exit(CF_CRASH_EXIT);
}

void
cf_crashpoint_hit(const struct cf_crashpoint *cp)
{
	hit(cp, 1);
}

void
cf_holdpoint_hit(const struct cf_crashpoint *cp)
{
	hit(cp, 0);
}

static int
by_name(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

size_t
cf_crashpoint_list(FILE *out)
{
	size_t n = (size_t)(__stop_cf_crashpoints - __start_cf_crashpoints), k = 0;
	const char **names = calloc(n ? n : 1, sizeof(*names));

	if (names == NULL)
		return 0;
	for (size_t i = 0; i < n; i++)
		names[i] = __start_cf_crashpoints[i].name;
	qsort(names, n, sizeof(*names), by_name);
	/* A point used in an inline function may be emitted more than once. */
	for (size_t i = 0; i < n; i++)
		if (i == 0 || strcmp(names[i], names[i - 1]) != 0) {
			fprintf(out, "%s\n", names[i]);
			k++;
		}
	free(names);
	return k;
}
#endif
