/* C tests' and benchmarks' throw-away PostgreSQL server: tests/support/
 * pg_server.sh does the work (one recipe for shell, Python and C). */
#include "cf_test_pg.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef COFFER_PG_SERVER
#error "COFFER_PG_SERVER (the path of tests/support/pg_server.sh) must be defined"
#endif

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int
sh(const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	return system(cmd) == 0 ? 0 : -1;
}

int
cf_test_pg_create(struct cf_test_pg *pg, int durable)
{
	memset(pg, 0, sizeof(*pg));
	snprintf(pg->dir, sizeof(pg->dir), "/tmp/cfpg.XXXXXX");
	/* The server user (postgres, when we are root) must enter it. */
	if (mkdtemp(pg->dir) == NULL || sh("chmod 0755 %s", pg->dir) != 0)
		return -1;
	pg->durable = durable;
	snprintf(pg->dsn, sizeof(pg->dsn), "host=%s/sock dbname=postgres", pg->dir);
	return cf_test_pg_start(pg);
}

int
cf_test_pg_start(struct cf_test_pg *pg)
{
	if (sh("bash %s start %s%s >/dev/null", COFFER_PG_SERVER, pg->dir,
	       pg->durable ? " --durable" : "") != 0)
		return -1;
	pg->running = 1;
	return 0;
}

static int
stop(struct cf_test_pg *pg, const char *how)
{
	if (sh("bash %s stop %s%s", COFFER_PG_SERVER, pg->dir, how) != 0)
		return -1;
	pg->running = 0;
	return 0;
}

int
cf_test_pg_stop(struct cf_test_pg *pg)
{
	return stop(pg, "");
}

/* The server's processes quit without a checkpoint: the next start
 * recovers from the WAL, as after a crash (an unlogged table comes back
 * empty). */
int
cf_test_pg_crash(struct cf_test_pg *pg)
{
	return stop(pg, " --immediate");
}

void
cf_test_pg_destroy(struct cf_test_pg *pg)
{
	if (pg->dir[0] == '\0')
		return;
	if (pg->running)
		(void)cf_test_pg_stop(pg);
	(void)sh("rm -rf %s", pg->dir);
	pg->dir[0] = '\0';
}
