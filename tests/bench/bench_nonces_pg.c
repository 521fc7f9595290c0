/*
 * bench_nonces_pg — the replay record, file mode against PostgreSQL mode in
 * the same run: new nonces used per second, and the p50/p99 of one
 * nonces_use, with 1, 8 and 32 threads calling at once (as cofferd's
 * workers would). PostgreSQL is a throw-away server started here, DURABLE
 * (fsync on, synchronous_commit on, full_page_writes on, a logged table):
 * "fresh" costs a flushed commit, shared by the calls of one batch (group
 * commit; the table shows the mean batch). "pg x2" is two handles, as two
 * replicas sharing the database, the threads split between them. "pg
 * async" (a reference, NOT durable: synchronous_commit off for its session)
 * shows what the same path costs without waiting for the WAL flush, and the
 * header gives this disk's fdatasync of an 8 kB write, the floor of a
 * durable commit.
 *
 * usage: bench_nonces_pg [--seconds S]   (per row; default 3)
 * This is a benchmark, not a test. Client and server share this machine's
 * cores, as do other processes: compare rows of one run.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "cf_status.h"
#include "cf_test_pg.h"
#include "nonces.h"

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct worker {
	pthread_t tid;
	nonces *n;
	const char *tag;
	int id;
	double until;
	double *lat;   /* seconds per call */
	size_t count, cap;
	int failed;
};

static void *
run(void *arg)
{
	struct worker *w = arg;
	char nonce[64];
	int64_t t = (int64_t)time(NULL);

	while (now_s() < w->until) {
		double s;
		int r;

		if (w->count == w->cap) {
			double *l = realloc(w->lat, (w->cap ? 2 * w->cap : 4096) * sizeof(*l));

			if (l == NULL) {
				w->failed = 1;
				return NULL;
			}
			w->lat = l;
			w->cap = w->cap ? 2 * w->cap : 4096;
		}
		snprintf(nonce, sizeof(nonce), "%s-%d-%zu", w->tag, w->id, w->count);
		s = now_s();
		r = nonces_use(w->n, "bench-key", nonce, t + 300, t);
		w->lat[w->count++] = now_s() - s;
		if (r != CF_OK) {
			fprintf(stderr, "bench_nonces_pg: %s: %s\n", nonce, cf_error_detail());
			w->failed = 1;
			return NULL;
		}
	}
	return NULL;
}

static int cmp_double(const void *a, const void *b);

/* p50 of write(8 kB) + fdatasync in dir, ms (the WAL flush's floor). */
static double
fsync_ms(const char *dir)
{
	char path[300], buf[8192];
	double t[40];
	int fd;

	snprintf(path, sizeof(path), "%s/fsync-probe", dir);
	if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600)) < 0)
		return -1;
	memset(buf, 'x', sizeof(buf));
	for (int i = 0; i < 40; i++) {
		double s = now_s();

		if (pwrite(fd, buf, sizeof(buf), 0) != (ssize_t)sizeof(buf) || fdatasync(fd) != 0)
			t[i] = -1;
		else
			t[i] = now_s() - s;
	}
	close(fd);
	unlink(path);
	qsort(t, 40, sizeof(t[0]), cmp_double);
	return 1e3 * t[20];
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* One row: `threads` threads over handles h[0..nh) for `secs` seconds. */
static int
row(const char *mode, nonces **h, int nh, int threads, double secs)
{
	struct worker w[32];
	double *all, t0, el;
	size_t total = 0, k = 0;
	uint64_t b0 = 0, i0 = 0, b1 = 0, i1 = 0, b, it;
	char tag[32], batch[32] = "-";

	for (int j = 0; j < nh; j++) {
		nonces_batch_stats(h[j], &b, &it);
		b0 += b;
		i0 += it;
	}
	snprintf(tag, sizeof(tag), "%s-%d", mode, threads);
	t0 = now_s();
	for (int i = 0; i < threads; i++) {
		w[i] = (struct worker){ .n = h[i % nh], .tag = tag, .id = i, .until = t0 + secs };
		if (pthread_create(&w[i].tid, NULL, run, &w[i]) != 0)
			return -1;
	}
	for (int i = 0; i < threads; i++) {
		pthread_join(w[i].tid, NULL);
		total += w[i].count;
	}
	el = now_s() - t0;
	if ((all = malloc((total + 1) * sizeof(*all))) == NULL)
		return -1;
	for (int i = 0; i < threads; i++) {
		if (w[i].failed) {
			free(all);
			return -1;
		}
		memcpy(all + k, w[i].lat, w[i].count * sizeof(*all));
		k += w[i].count;
		free(w[i].lat);
	}
	qsort(all, total, sizeof(*all), cmp_double);
	for (int j = 0; j < nh; j++) {
		nonces_batch_stats(h[j], &b, &it);
		b1 += b;
		i1 += it;
	}
	if (b1 > b0)
		snprintf(batch, sizeof(batch), "%.1f", (double)(i1 - i0) / (double)(b1 - b0));
	printf("| %-8s | %7d | %10.0f | %8.3f | %8.3f | %10s |\n", mode, threads,
	       (double)total / el, 1e3 * all[total / 2], 1e3 * all[total * 99 / 100], batch);
	fflush(stdout);
	free(all);
	return 0;
}

int
main(int argc, char **argv)
{
	static const int threads[] = { 1, 8, 32 };
	char dir[] = "/tmp/bench-nonces-pg-XXXXXX", path[300];
	struct cf_test_pg pg;
	char dsn[300];
	nonces *file = NULL, *pgn[2] = { NULL, NULL }, *async = NULL;
	double secs = 3;
	int rc = 1;

	for (int i = 1; i + 1 < argc; i += 2)
		if (strcmp(argv[i], "--seconds") == 0)
			secs = atof(argv[i + 1]);
	if (secs <= 0) {
		fprintf(stderr, "usage: bench_nonces_pg [--seconds S]\n");
		return 2;
	}
	if (mkdtemp(dir) == NULL || nonces_open(dir, 50000000, &file) != CF_OK) {
		fprintf(stderr, "bench_nonces_pg: file mode: %s\n", cf_error_detail());
		return 1;
	}
	if (cf_test_pg_create(&pg, 1) != 0) {
		fprintf(stderr, "bench_nonces_pg: cannot start PostgreSQL\n");
		goto out;
	}
	if (nonces_open_pg(pg.dsn, 50000000, &pgn[0]) != CF_OK ||
	    nonces_open_pg(pg.dsn, 50000000, &pgn[1]) != CF_OK ||
	    (snprintf(dsn, sizeof(dsn), "%s options='-c synchronous_commit=off'", pg.dsn),
	     nonces_open_pg(dsn, 50000000, &async)) != CF_OK) {
		fprintf(stderr, "bench_nonces_pg: %s\n", cf_error_detail());
		goto out;
	}
	printf("# bench_nonces_pg: %.0f s per row; file: %s/nonces.log (write(), no fsync);\n"
	       "# pg: PostgreSQL 15, fsync on, synchronous_commit on, logged table, Unix socket;\n"
	       "# this disk now: write(8 kB) + fdatasync p50 %.3f ms\n\n", secs, dir,
	       fsync_ms(pg.dir));
	printf("| mode     | threads | uses/s     | p50 ms   | p99 ms   | mean batch |\n");
	printf("|----------|---------|------------|----------|----------|------------|\n");
	for (size_t t = 0; t < sizeof(threads) / sizeof(threads[0]); t++)
		if (row("file", &file, 1, threads[t], secs) != 0 ||
		    row("pg", pgn, 1, threads[t], secs) != 0 ||
		    (threads[t] > 1 && row("pg x2", pgn, 2, threads[t], secs) != 0) ||
		    row("pg async", &async, 1, threads[t], secs) != 0)
			goto out;
	rc = 0;
out:
	nonces_close(file);
	nonces_close(pgn[0]);
	nonces_close(pgn[1]);
	nonces_close(async);
	cf_test_pg_destroy(&pg);
	snprintf(path, sizeof(path), "%s/nonces.log", dir);
	unlink(path);
	rmdir(dir);
	return rc;
}
