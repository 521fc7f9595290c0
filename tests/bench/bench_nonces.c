/*
 * bench_nonces — the replay record under the load the request-signing
 * design has to carry: RATE new nonces per second for a WINDOW-second
 * window (default 10,000/s for 300 s: 3,000,000 live nonces), inserted as
 * fast as they go. Prints the cost per check (in memory, and with the
 * durable SQLite write) and the memory per live nonce (the in-memory table,
 * and the process's RSS growth), then checks that a replay is refused.
 *
 * With --threads T the nonces are inserted by T threads at once, as a
 * daemon's workers would; a sweeper thread expires and compacts every 5 s
 * as cofferd does.
 *
 * usage: bench_nonces [--rate N] [--window S] [--threads T] [--dir DIR]
 * This is a benchmark, not a test.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cf_status.h"
#include "nonces.h"

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long
rss_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;

	while (f != NULL && fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "VmRSS: %ld kB", &v) == 1)
			break;
	if (f != NULL)
		fclose(f);
	return v;
}

struct worker {
	pthread_t tid;
	nonces *n;
	long from, to, rate, window;
	int64_t t0;
	int failed;
};

static void *
insert_range(void *arg)
{
	struct worker *w = arg;
	char nonce[40];

	for (long i = w->from; i < w->to; i++) {
		/* Timestamps spread over the window, as live traffic would. */
		int64_t ts = w->t0 - w->window + (int64_t)(i / w->rate);

		snprintf(nonce, sizeof(nonce), "bench-%016lx", (unsigned long)i);
		if (nonces_use(w->n, "api-key", nonce, ts + 2 * w->window, w->t0) != CF_OK) {
			fprintf(stderr, "bench_nonces: insert %ld: %s\n", i, cf_error_detail());
			w->failed = 1;
			return NULL;
		}
	}
	return NULL;
}

static volatile int sweeping = 1;

/* What cofferd's main loop does every 5 s: expire, slice deletes, checkpoint. */
static void *
sweeper(void *arg)
{
	nonces *n = arg;

	while (sweeping) {
		for (int i = 0; i < 50 && sweeping; i++)
			usleep(100000);
		nonces_expire(n, (int64_t)time(NULL));
	}
	return NULL;
}

int
main(int argc, char **argv)
{
	pthread_t sweep;
	long rate = 10000, window = 300, threads = 1, total, rss0, rss1;
	struct worker w[64];
	uint64_t appended = 0, compactions = 0, log_bytes = 0;
	char dir[] = "/tmp/bench-nonces-XXXXXX", path[300];
	const char *base = NULL;
	nonces *n = NULL;
	int64_t t0 = (int64_t)time(NULL);
	double s, e;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--rate") == 0)
			rate = atol(argv[i + 1]);
		else if (strcmp(argv[i], "--window") == 0)
			window = atol(argv[i + 1]);
		else if (strcmp(argv[i], "--threads") == 0)
			threads = atol(argv[i + 1]);
		else if (strcmp(argv[i], "--dir") == 0)
			base = argv[i + 1];
	}
	if (rate <= 0 || window <= 0 || threads < 1 || threads > 64) {
		fprintf(stderr, "usage: bench_nonces [--rate N] [--window S] [--threads 1..64] "
			"[--dir DIR]\n");
		return 2;
	}
	if (base == NULL && (base = mkdtemp(dir)) == NULL)
		return 1;
	total = rate * window;
	rss0 = rss_kib();
	if (nonces_open(base, (size_t)total + 1000, &n) != CF_OK) {
		fprintf(stderr, "bench_nonces: %s\n", cf_error_detail());
		return 1;
	}
	printf("# bench_nonces: %ld nonces (%ld/s for a %ld s window), state in %s\n", total,
	       rate, window, base);
	s = now_s();
	if (pthread_create(&sweep, NULL, sweeper, n) != 0)
		return 1;
	for (long t = 0; t < threads; t++) {
		w[t] = (struct worker){ .n = n, .from = total * t / threads,
					.to = total * (t + 1) / threads, .rate = rate,
					.window = window, .t0 = t0 };
		if (pthread_create(&w[t].tid, NULL, insert_range, &w[t]) != 0)
			return 1;
	}
	for (long t = 0; t < threads; t++) {
		pthread_join(w[t].tid, NULL);
		if (w[t].failed)
			return 1;
	}
	e = now_s() - s;
	sweeping = 0;
	pthread_join(sweep, NULL);
	rss1 = rss_kib();
	nonces_stats(n, &appended, &compactions, &log_bytes);
	printf("durable check+insert, %ld thread(s): %.2f us per nonce (%.0f per second); "
	       "log %.1f MB after %llu compactions\n", threads, 1e6 * e / (double)total,
	       (double)total / e, (double)log_bytes / 1e6, (unsigned long long)compactions);
	printf("live nonces: %zu; in-memory table %.1f MB = %.1f bytes per live nonce; "
	       "RSS growth %.1f MB\n", nonces_live(n), (double)nonces_memory(n) / 1e6,
	       (double)nonces_memory(n) / (double)nonces_live(n), (double)(rss1 - rss0) / 1024.0);
	printf("target: < 200 MB at 10,000/s over 300 s: %s\n",
	       (double)nonces_memory(n) < 200e6 && (double)(rss1 - rss0) * 1024.0 < 200e6 ?
	       "met" : "NOT met");
	/* A replay of the first and of the last: refused. */
	printf("replay of a recorded nonce: %s\n",
	       nonces_use(n, "api-key", "bench-0000000000000000", t0 + window, t0) == CF_E_EXISTS &&
	       nonces_use(n, "api-key", "bench-00000000000001ff", t0 + window, t0) == CF_E_EXISTS ?
	       "refused (ok)" : "ACCEPTED (bug)");
	nonces_close(n);
	snprintf(path, sizeof(path), "%s/nonces.log", base);
	if (base == dir) {
		unlink(path);
		rmdir(base);
	}
	return 0;
}
