#include "cf_test_pg.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PGBIN "/usr/lib/postgresql/15/bin"

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
	char conf[200];
	FILE *f;

	memset(pg, 0, sizeof(*pg));
	snprintf(pg->dir, sizeof(pg->dir), "/tmp/cfpg.XXXXXX");
	/* The server user must enter the directory: 0755, and its own
	 * subdirectories for data, socket and log. */
	if (mkdtemp(pg->dir) == NULL || chmod(pg->dir, 0755) != 0 ||
	    sh("cd %s && mkdir data sock log && chown postgres: data sock log", pg->dir) != 0 ||
	    sh("cd / && runuser -u postgres -- " PGBIN "/initdb -D %s/data -U root --auth=trust "
	       "--no-locale -E UTF8 --no-sync >%s/initdb.out 2>&1", pg->dir, pg->dir) != 0)
		return -1;
	snprintf(conf, sizeof(conf), "%s/data/postgresql.conf", pg->dir);
	if ((f = fopen(conf, "a")) == NULL)
		return -1;
	fprintf(f, "listen_addresses = ''\nunix_socket_directories = '%s/sock'\n", pg->dir);
	if (durable)
		fprintf(f, "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n");
	else
		fprintf(f, "fsync = off\nfull_page_writes = off\n");
	fclose(f);
	snprintf(pg->dsn, sizeof(pg->dsn), "host=%s/sock dbname=postgres", pg->dir);
	return cf_test_pg_start(pg);
}

int
cf_test_pg_start(struct cf_test_pg *pg)
{
	if (sh("cd / && runuser -u postgres -- " PGBIN "/pg_ctl -D %s/data -l %s/log/pg.log -w "
	       "start >/dev/null", pg->dir, pg->dir) != 0)
		return -1;
	pg->running = 1;
	return 0;
}

static int
stop(struct cf_test_pg *pg, const char *mode)
{
	if (sh("cd / && runuser -u postgres -- " PGBIN "/pg_ctl -D %s/data -m %s -w stop "
	       ">/dev/null", pg->dir, mode) != 0)
		return -1;
	pg->running = 0;
	return 0;
}

int
cf_test_pg_stop(struct cf_test_pg *pg)
{
	return stop(pg, "fast");
}

/* The server's processes quit without a checkpoint: the next start
 * recovers from the WAL, as after a crash (an unlogged table comes back
 * empty). */
int
cf_test_pg_crash(struct cf_test_pg *pg)
{
	return stop(pg, "immediate");
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
