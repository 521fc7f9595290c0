/*
 * cf_bench.c — see cf_bench.h.
 */
#include "cf_bench.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

const char *cf_bench_name = "bench";

enum phase { PH_WARMUP, PH_MEASURE, PH_STOP };

/* Latencies of one thread, in nanoseconds. */
struct lat {
	uint64_t *v;
	size_t n;
	size_t cap;
};

struct caller {
	struct cf_bench_run *r;
	unsigned idx;
	pthread_t tid;
	struct lat lat[2];                 /* per side */
	unsigned long done[2];             /* successful calls per side */
};

/* What one side of a measurement used: time, CPU. */
struct side {
	double window, cli, sys;
	double srv[CF_BENCH_MAX_SERVERS];
};

/* ---- small helpers ---- */

uint64_t
cf_bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double
rusage_cpu(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

void
cf_bench_sleep(double s)
{
	struct timespec ts;

	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

void
cf_bench_failure_init(struct cf_bench_failure *f)
{
	pthread_mutex_init(&f->mu, NULL);
	cf_bench_failure_reset(f);
}

void
cf_bench_failure_fini(struct cf_bench_failure *f)
{
	pthread_mutex_destroy(&f->mu);
}

void
cf_bench_failure_reset(struct cf_bench_failure *f)
{
	atomic_store(&f->failed, false);
	f->text[0] = '\0';
}

void
cf_bench_failure_vset(struct cf_bench_failure *f, const char *fmt, va_list ap)
{
	pthread_mutex_lock(&f->mu);
	if (!atomic_load(&f->failed)) {
		vsnprintf(f->text, sizeof(f->text), fmt, ap);
		atomic_store(&f->failed, true);
	}
	pthread_mutex_unlock(&f->mu);
}

void
cf_bench_init(struct cf_bench_run *r)
{
	memset(r, 0, sizeof(*r));
	cf_bench_failure_init(&r->fail);
}

void
cf_bench_fini(struct cf_bench_run *r)
{
	cf_bench_failure_fini(&r->fail);
}

void
cf_bench_fail(struct cf_bench_run *r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	cf_bench_failure_vset(&r->fail, fmt, ap);
	va_end(ap);
	atomic_store(&r->phase, PH_STOP);
}

/* ---- CPU time of a server process and its children, from /proc ---- */

/* utime + stime + cutime + cstime of one process, in clock ticks. */
static int
proc_ticks(pid_t pid, unsigned long long *ticks)
{
	char path[64], buf[1024], *p;
	unsigned long long ut, st, cut, cst;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* Fields after the command name (which may hold spaces and parentheses):
	 * state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
	 * utime stime cutime cstime. */
	if ((p = strrchr(buf, ')')) == NULL ||
	    sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu",
		   &ut, &st, &cut, &cst) != 4)
		return -1;
	*ticks = ut + st + cut + cst;
	return 0;
}

/*
 * The process and, recursively, its live children (p11-kit server forks a
 * p11-kit-remote per connection, PostgreSQL a backend); reaped children
 * are in cutime/cstime.
 */
static unsigned long long
proc_tree_ticks(pid_t pid, int depth)
{
	unsigned long long total = 0, t;
	char path[96];
	struct dirent *de;
	DIR *dir;

	if (proc_ticks(pid, &t) == 0)
		total += t;
	if (depth > 4)
		return total;
	snprintf(path, sizeof(path), "/proc/%ld/task", (long)pid);
	if ((dir = opendir(path)) == NULL)
		return total;
	while ((de = readdir(dir)) != NULL) {
		char cpath[400];
		long child;
		FILE *f;

		if (de->d_name[0] == '.')
			continue;
		snprintf(cpath, sizeof(cpath), "/proc/%ld/task/%s/children", (long)pid, de->d_name);
		if ((f = fopen(cpath, "r")) == NULL)
			continue;
		while (fscanf(f, "%ld", &child) == 1)
			total += proc_tree_ticks((pid_t)child, depth + 1);
		fclose(f);
	}
	closedir(dir);
	return total;
}

double
cf_bench_proc_cpu(pid_t pid)
{
	return (double)proc_tree_ticks(pid, 0) / (double)sysconf(_SC_CLK_TCK);
}

/* Busy CPU seconds of the whole machine (all CPUs), from /proc/stat. */
static double
system_busy_s(void)
{
	unsigned long long v[8] = { 0 };
	FILE *f = fopen("/proc/stat", "r");
	int n;

	if (f == NULL)
		return 0.0;
	/* cpu user nice system idle iowait irq softirq steal */
	n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
		   &v[4], &v[5], &v[6], &v[7]);
	fclose(f);
	if (n < 7)
		return 0.0;
	return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

/* ---- the callers ---- */

static int
lat_push(struct lat *l, uint64_t ns)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 65536;
		uint64_t *v = realloc(l->v, cap * sizeof(*v));

		if (v == NULL)
			return -1;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = ns;
	return 0;
}

static void *
caller_main(void *arg)
{
	struct caller *w = arg;
	struct cf_bench_run *r = w->r;

	pthread_barrier_wait(&r->start);
	for (;;) {
		int ph = atomic_load_explicit(&r->phase, memory_order_acquire);
		unsigned seg = atomic_load_explicit(&r->seg, memory_order_acquire);
		int md = (int)(seg & 1u);
		uint64_t t0, t1;

		if (ph == PH_STOP)
			break;
		t0 = cf_bench_now_ns();
		if (r->call(r, w->idx, md) != 0)
			break;
		t1 = cf_bench_now_ns();
		w->done[md]++;
		/* Only calls that started inside the timed window count, and of
		 * a pair only those that did not straddle a switch. */
		if (ph == PH_MEASURE && atomic_load(&r->seg) == seg &&
		    lat_push(&w->lat[md], t1 - t0) != 0) {
			cf_bench_fail(r, "out of memory for latencies");
			break;
		}
	}
	return NULL;
}

static int
u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[0..n), in microseconds. */
static double
percentile_us(const uint64_t *v, size_t n, double p)
{
	size_t k;

	if (n == 0)
		return 0.0;
	k = (size_t)(p * (double)n + 0.999999);
	if (k < 1)
		k = 1;
	if (k > n)
		k = n;
	return (double)v[k - 1] / 1e3;
}

/* A new segment in which side md calls. */
static void
switch_side(struct cf_bench_run *r, int md)
{
	unsigned seg = atomic_load(&r->seg);

	atomic_store(&r->seg, ((seg >> 1) + 1) << 1 | (unsigned)md);
}

/* One side's row from its callers' latencies and its share of the window. */
static int
fill_row(const struct cf_bench_run *r, struct caller *w, int md, const struct side *sd,
	 struct cf_bench_row *res)
{
	uint64_t *all;
	size_t total = 0;
	double srv = 0.0;

	for (unsigned i = 0; i < r->callers; i++)
		total += w[i].lat[md].n;
	if (total == 0 || (all = malloc(total * sizeof(*all))) == NULL) {
		fprintf(stderr, "%s: no calls completed in the window\n", cf_bench_name);
		return -1;
	}
	total = 0;
	for (unsigned i = 0; i < r->callers; i++) {
		memcpy(all + total, w[i].lat[md].v, w[i].lat[md].n * sizeof(*all));
		total += w[i].lat[md].n;
	}
	qsort(all, total, sizeof(*all), u64_cmp);
	for (unsigned i = 0; i < r->nservers; i++) {
		res->server_each[i] = sd->srv[i];
		srv += sd->srv[i];
	}
	res->callers = r->callers;
	res->ops = (unsigned long)total;
	res->window = sd->window;
	res->rate = (double)total / res->window;
	res->p50 = percentile_us(all, total, 0.50);
	res->p99 = percentile_us(all, total, 0.99);
	res->p999 = percentile_us(all, total, 0.999);
	res->server_cpu = r->nservers > 0 ? srv : -1.0;
	res->client_cpu = sd->cli;
	/* Everything else the machine did meanwhile: noise from other work. */
	res->other_cpu = (sd->sys - res->client_cpu - srv) / res->window;
	if (res->other_cpu < 0.0)
		res->other_cpu = 0.0;
	free(all);
	return 0;
}

static void
take_mark(const struct cf_bench_run *r, struct side *m)
{
	m->window = (double)cf_bench_now_ns() / 1e9;
	for (unsigned i = 0; i < r->nservers; i++)
		m->srv[i] = cf_bench_proc_cpu(r->servers[i]);
	m->cli = rusage_cpu();
	m->sys = system_busy_s();
}

/* Add what the machine did since *mark to side sd, and move the mark. */
static void
account(const struct cf_bench_run *r, struct side *mark, struct side *sd)
{
	struct side now;

	take_mark(r, &now);
	sd->window += now.window - mark->window;
	for (unsigned i = 0; i < r->nservers; i++)
		sd->srv[i] += now.srv[i] - mark->srv[i];
	sd->cli += now.cli - mark->cli;
	sd->sys += now.sys - mark->sys;
	*mark = now;
}

int
cf_bench_measure(struct cf_bench_run *r, struct cf_bench_row *rows)
{
	static const int abba[4] = { 0, 1, 1, 0 };
	int pair = r->segment > 0.0;
	struct caller *w;
	struct side sides[2], mark;
	unsigned started = 0, nseg = 1;
	double waited, seg_s = r->seconds;
	int e, ret = -1;

	if ((w = calloc(r->callers, sizeof(*w))) == NULL) {
		fprintf(stderr, "%s: out of memory\n", cf_bench_name);
		return -1;
	}
	memset(sides, 0, sizeof(sides));
	if (pair) {
		nseg = 4 * (unsigned)(r->seconds / (2 * r->segment) + 0.999);
		seg_s = 2 * r->seconds / nseg;
	}
	atomic_store(&r->phase, PH_WARMUP);
	atomic_store(&r->seg, 0);
	cf_bench_failure_reset(&r->fail);
	for (unsigned i = 0; i < r->callers; i++) {
		/* Room for the expected calls, touched now rather than in the window. */
		size_t cap = (size_t)(r->seconds * 400000.0 / r->callers) + 65536;

		w[i].r = r;
		w[i].idx = i;
		for (int md = 0; md < (pair ? 2 : 1); md++) {
			if ((w[i].lat[md].v = malloc(cap * sizeof(uint64_t))) == NULL) {
				fprintf(stderr, "%s: out of memory\n", cf_bench_name);
				goto out;
			}
			memset(w[i].lat[md].v, 0, cap * sizeof(uint64_t));
			w[i].lat[md].cap = cap;
		}
	}
	pthread_barrier_init(&r->start, NULL, r->callers + 1);
	for (unsigned i = 0; i < r->callers; i++) {
		if ((e = pthread_create(&w[i].tid, NULL, caller_main, &w[i])) != 0) {
			fprintf(stderr, "%s: pthread_create: %s\n", cf_bench_name, strerror(e));
			exit(1); /* the barrier cannot be released any more */
		}
		started++;
	}
	pthread_barrier_wait(&r->start);
	for (waited = 0.0; waited < r->warmup && !atomic_load(&r->fail.failed); waited += 0.05) {
		cf_bench_sleep(0.05);
		if (pair)   /* both sides warm */
			switch_side(r, ((unsigned)(waited / 0.05) / 2) % 2);
	}
	switch_side(r, 0);
	take_mark(r, &mark);
	atomic_store(&r->phase, PH_MEASURE);
	for (unsigned k = 0; k < nseg && !atomic_load(&r->fail.failed); k++) {
		for (waited = 0.0; waited < seg_s && !atomic_load(&r->fail.failed); waited += 0.05)
			cf_bench_sleep(seg_s - waited < 0.05 ? seg_s - waited : 0.05);
		/* Switch first, then read the clocks: a call that straddles the
		 * switch (or the end) is not counted, and neither is its time. */
		if (k + 1 == nseg)
			atomic_store(&r->phase, PH_STOP);
		switch_side(r, k + 1 < nseg ? abba[(k + 1) % 4] : 0);
		account(r, &mark, &sides[abba[k % 4]]);
	}
	atomic_store(&r->phase, PH_STOP);
	for (unsigned i = 0; i < started; i++) {
		pthread_join(w[i].tid, NULL);
		r->calls[0] += w[i].done[0];
		r->calls[1] += w[i].done[1];
	}
	pthread_barrier_destroy(&r->start);
	if (atomic_load(&r->fail.failed)) {
		fprintf(stderr, "%s: %s\n", cf_bench_name, r->fail.text);
		goto out;
	}
	if (fill_row(r, w, 0, &sides[0], &rows[0]) != 0 ||
	    (pair && fill_row(r, w, 1, &sides[1], &rows[1]) != 0))
		goto out;
	ret = 0;
out:
	for (unsigned i = 0; i < r->callers; i++) {
		free(w[i].lat[0].v);
		free(w[i].lat[1].v);
	}
	free(w);
	return ret;
}

/* ---- output ---- */

void
cf_bench_print_header(void)
{
	printf("%-26s %7s %9s %8s %8s %8s %13s %14s %13s %8s\n", "path", "callers", "ops/s",
	       "p50 us", "p99 us", "p99.9 us", "srv CPU us/op", "ops/srv CPU-s", "cli CPU us/op",
	       "other");
}

void
cf_bench_print_row(const struct cf_bench_row *r)
{
	char srv[32], per[32];

	if (r->server_cpu >= 0.0 && r->ops > 0) {
		snprintf(srv, sizeof(srv), "%.1f", 1e6 * r->server_cpu / (double)r->ops);
		if (r->server_cpu > 0.0)
			snprintf(per, sizeof(per), "%.0f", (double)r->ops / r->server_cpu);
		else
			snprintf(per, sizeof(per), "inf");
	} else {
		snprintf(srv, sizeof(srv), "-");
		snprintf(per, sizeof(per), "-");
	}
	printf("%-26s %7u %9.0f %8.0f %8.0f %8.0f %13s %14s %13.1f %8.2f\n", r->label,
	       r->callers, r->rate, r->p50, r->p99, r->p999, srv, per,
	       r->ops > 0 ? 1e6 * r->client_cpu / (double)r->ops : 0.0, r->other_cpu);
	fflush(stdout);
}

const char *
cf_bench_met(int ok)
{
	return ok ? "met" : "NOT met";
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

void
cf_bench_sort(double *v, unsigned n)
{
	qsort(v, n, sizeof(v[0]), cmp_double);
}

double
cf_bench_median(double *v, unsigned n)
{
	if (n == 0)
		return 0.0;
	cf_bench_sort(v, n);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

/* ---- options ---- */

void
cf_bench_opts_init(struct cf_bench_opts *o, double seconds, unsigned max_rounds)
{
	o->callers = 8;
	o->seconds = seconds;
	o->warmup = 1.0;
	o->rounds = 2;
	o->max_rounds = max_rounds;
	o->durability = "disk";
}

/* Option `name` with `value` if it is one of cf_bench_opts: 1 (set), -1
 * (a bad value, printed), or 0 for another option. */
static int
common_option(struct cf_bench_opts *o, const char *name, const char *value)
{
	int bad;

	if (strcmp(name, "--callers") == 0)
		bad = cf_bench_parse_uint(value, 1, CF_BENCH_MAX_CALLERS, &o->callers) != 0;
	else if (strcmp(name, "--seconds") == 0)
		bad = cf_bench_parse_seconds(value, 0.1, &o->seconds) != 0;
	else if (strcmp(name, "--warmup") == 0)
		bad = cf_bench_parse_seconds(value, 0.0, &o->warmup) != 0;
	else if (strcmp(name, "--rounds") == 0)
		bad = cf_bench_parse_uint(value, 1, o->max_rounds, &o->rounds) != 0;
	else if (strcmp(name, "--durability") == 0) {
		bad = strcmp(value, "disk") != 0 && strcmp(value, "os") != 0;
		o->durability = value;
	} else {
		return 0;
	}
	if (bad) {
		fprintf(stderr, "%s: bad value \"%s\" for %s\n", cf_bench_name, value, name);
		return -1;
	}
	return 1;
}

int
cf_bench_option(int argc, char **argv, int *i, struct cf_bench_opts *o, const char **name,
		const char **value, void (*usage)(FILE *fp))
{
	int r;

	for (;;) {
		if (*i >= argc)
			return 0;
		*name = argv[*i];
		if (strcmp(*name, "--help") == 0 || strcmp(*name, "-h") == 0) {
			usage(stdout);
			exit(0);
		}
		if (*i + 1 >= argc) {
			usage(stderr);
			return -1;
		}
		*value = argv[*i + 1];
		*i += 2;
		if ((r = common_option(o, *name, *value)) <= 0)
			return r == 0 ? 1 : -1;
	}
}

int
cf_bench_parse_uint(const char *v, unsigned long lo, unsigned long hi, unsigned *out)
{
	char *end;
	unsigned long n;

	errno = 0;
	n = strtoul(v, &end, 10);
	if (end == v || *end != '\0' || errno != 0 || n < lo || n > hi)
		return -1;
	*out = (unsigned)n;
	return 0;
}

int
cf_bench_parse_seconds(const char *v, double lo, double *out)
{
	char *end;
	double s = strtod(v, &end);

	if (end == v || *end != '\0' || !(s >= lo && s <= 3600.0))
		return -1;
	*out = s;
	return 0;
}

int
cf_bench_socket_ready(const char *path)
{
	struct sockaddr_un sa;
	size_t len = strlen(path);
	int fd, ok;

	if (len >= sizeof(sa.sun_path) ||
	    (fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return 0;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, path, len);
	ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

/* ---- admin steps ---- */

int
cf_bench_create_key(const struct cf_test_daemon *d, const char *name, enum coffer_key_type type)
{
	coffer_client *admin = NULL;
	int r;

	if ((r = coffer_connect(d->admin, COFFER_CONNECT_ADMIN, &admin)) != COFFER_OK) {
		fprintf(stderr, "%s: coffer_connect(admin): %s\n", cf_bench_name,
			coffer_strerror(r));
		return -1;
	}
	r = coffer_create_key(admin, name, type, 0, NULL);
	if (r != COFFER_OK && r != COFFER_E_EXISTS)
		fprintf(stderr, "%s: creating %s: %s: %s\n", cf_bench_name, name,
			coffer_strerror(r), coffer_error_message());
	coffer_close(admin);
	return r == COFFER_OK || r == COFFER_E_EXISTS ? 0 : -1;
}

int
cf_bench_identity(const struct cf_test_daemon *d, struct coffer_bytes *id, char *fpr, size_t len)
{
	coffer_client *admin = NULL;
	int r;

	if ((r = coffer_connect(d->admin, COFFER_CONNECT_ADMIN, &admin)) == COFFER_OK)
		r = coffer_get_identity(admin, id, fpr, len);
	if (r != COFFER_OK)
		fprintf(stderr, "%s: identity: %s\n", cf_bench_name, coffer_error_message());
	coffer_close(admin);
	return r == COFFER_OK ? 0 : -1;
}

int
cf_bench_api_key(const struct cf_test_daemon *d, const struct coffer_bytes *id,
		 struct coffer_api_key *k, struct coffer_bytes *secret, int revoke)
{
	coffer_client *admin = NULL;
	int r;

	if ((r = coffer_connect(d->admin, COFFER_CONNECT_ADMIN, &admin)) == COFFER_OK &&
	    (r = coffer_pin_identity(admin, id->data, id->len)) == COFFER_OK)
		r = revoke ? coffer_api_key_revoke(admin, k->id, NULL)
			   : coffer_api_key_create(admin, CF_TEST_PRINCIPAL, NULL, 0, k, secret);
	/* Revoking the last key keeps the principal signing: allow its
	 * unsigned calls again. */
	if (r == COFFER_OK && revoke)
		r = coffer_principal_set_auth(admin, CF_TEST_PRINCIPAL, 0, NULL);
	if (r != COFFER_OK)
		fprintf(stderr, "%s: API key: %s\n", cf_bench_name, coffer_error_message());
	coffer_close(admin);
	return r == COFFER_OK ? 0 : -1;
}
