/*
 * bench_daemon — one operation end to end through cofferd (libcoffer, gRPC
 * over a Unix socket), beside two baselines on the same key in the same
 * SoftHSM2 token:
 *
 *   cofferd          N threads call libcoffer (coffer_sign / coffer_mac /
 *                    coffer_wrap) on the service socket of a cofferd started
 *                    on a temporary token; each thread with its own client
 *                    (own connection) or all threads sharing one client.
 *   in-process       N threads call the PKCS#11 layer (cf_p11_*) directly in
 *                    this process: the floor that cofferd adds its cost to.
 *   p11-kit remote   N threads call the same layer, loaded on p11-kit's
 *                    client module, with SoftHSM2 served by `p11-kit server`
 *                    over a Unix socket: the off-the-shelf way to keep keys
 *                    out of the caller's process.
 *
 * usage: bench_daemon [--op OP] [--callers N] [--seconds S] [--warmup S]
 *                     [--workers LIST] [--clients per-thread|shared|both]
 *                     [--rounds R] [--paths LIST]
 *
 * Every call's latency is recorded (CLOCK_MONOTONIC) into per-thread arrays
 * during the timed window, after a warm-up; the window gives ops/s and the
 * p50 / p99 / p99.9 latencies. Server CPU is read from /proc/<pid>/stat
 * (utime + stime of the server and its child processes) at both ends of the
 * window; client CPU is this process's getrusage(). "other" is the number
 * of CPUs that the rest of the machine kept busy during the window (from
 * /proc/stat): a row with other > 0.2 was measured under foreign load. The
 * whole sequence of paths runs --rounds times, alternating, so that drifting
 * background load hits every path; the summary takes the best round (highest
 * ops/s) of each path and judges the targets on the best cofferd row. A
 * pair that prices something is judged on the median of the rounds: sealed
 * and unsealed calls interleaved on one daemon, the callers switching
 * between a sealed and an unsealed client every 0.2 s (A B B A), so both
 * sides see the same machine; signed and unsigned calls as windows A B B A
 * (a principal with an API key must sign every call), the order swapped
 * each round.
 *
 * Known gaps of p11-kit 0.24's RPC, which leave some operations without a
 * p11-kit row (the run goes on without it): it does not carry
 * CKA_ALLOWED_MECHANISMS (C_GetAttributeValue returns CKR_DEVICE_ERROR, so
 * the layer cannot open an HMAC key), and it rejects CKM_EDDSA and
 * CKM_AES_GCM with CKR_MECHANISM_INVALID (ed25519, wrap-1k). ecdsa-p256 and
 * rsa2048 have all three paths.
 *
 * This is a benchmark, not a test.
 */
#define CRYPTOKI_COMPAT
#include <p11-kit/pkcs11.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "cf_buf.h"
#include "cf_p11.h"
#include "cf_status.h"
#include "cf_test_token.h"
#include "coffer.h"
#include "libcoffer_rpc.h"

#define MAX_CALLERS 256
#define MAX_WORKER_COUNTS 8
#define MAX_ROUNDS 50
#define MAX_RESULTS 256
#define KEY_VERSION 1u
#define OUT_MAX 2048
#define MSG_MAX 1024
#define P11KIT_CLIENT "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"

/* Targets of the comparison line. */
#define TARGET_SPEEDUP 1.5
#define TARGET_OPS_PER_CPU_S 10000.0
#define TARGET_P99_US 1500.0

enum op_id { OP_ECDSA, OP_ED25519, OP_RSA, OP_HMAC, OP_WRAP, OP_UNWRAP, OP_HANDSHAKE, OP__COUNT };

struct op_def {
	const char *name;            /* --op */
	const char *what;            /* for the header */
	enum cf_key_type type;
	enum coffer_key_type ctype;
	size_t msglen;
};

static const struct op_def ops[OP__COUNT] = {
	[OP_ECDSA] = { "ecdsa-p256", "ECDSA P-256 sign, 32-byte message", CF_KEY_EC_P256,
		       COFFER_KEY_EC_P256, 32 },
	[OP_ED25519] = { "ed25519", "Ed25519 sign, 32-byte message", CF_KEY_ED25519,
			 COFFER_KEY_ED25519, 32 },
	[OP_RSA] = { "rsa2048", "RSA-2048 PSS/SHA-256 sign, 32-byte message", CF_KEY_RSA_2048,
		     COFFER_KEY_RSA_2048, 32 },
	[OP_HMAC] = { "hmac-sha256", "HMAC-SHA256 of 256 bytes", CF_KEY_HMAC_SHA256,
		      COFFER_KEY_HMAC_SHA256, 256 },
	[OP_WRAP] = { "wrap-1k", "AES-256-GCM wrap of 1 KiB", CF_KEY_AES_256, COFFER_KEY_AES_256,
		      1024 },
	[OP_UNWRAP] = { "unwrap-1k", "AES-256-GCM unwrap of 1 KiB", CF_KEY_AES_256,
			COFFER_KEY_AES_256, 1024 },
	[OP_HANDSHAKE] = { "handshake", "sealed-session handshake (X25519 + token ECDSA)",
			   CF_KEY_AES_256, COFFER_KEY_AES_256, 0 },
};

/* Operations that carry secret plaintext: measured sealed (as libcoffer
 * sends them) and unsealed (a daemon with session.unsealed_secrets). */
#define OP_SEALABLE(op) ((op) == OP_WRAP || (op) == OP_UNWRAP)
/* Operations with no PKCS#11-layer counterpart: daemon path only. */
#define OP_DAEMON_ONLY(op) ((op) == OP_UNWRAP || (op) == OP_HANDSHAKE)

enum path_kind { PATH_DAEMON, PATH_LAYER, PATH_P11KIT, PATH__COUNT };

static const char *const path_names[PATH__COUNT] = { "daemon", "layer", "p11kit" };

#define CLIENT_PER_THREAD 0x1u
#define CLIENT_SHARED 0x2u

enum phase { PH_WARMUP, PH_MEASURE, PH_STOP };

/* Latencies of one thread, in nanoseconds. */
struct lat {
	uint64_t *v;
	size_t n;
	size_t cap;
};

/* One measurement: one path, one operation, N callers. */
struct bench {
	enum op_id op;
	enum path_kind path;
	char key_name[64];
	cf_p11_key *key;                   /* layer paths */
	const uint8_t *msg;
	const uint8_t *aad;                /* layer wrap: AAD like cofferd's envelope */
	size_t aadlen;
	struct coffer_bytes blob;          /* unwrap: a Wrap of msg */
	atomic_int phase;
	/* Interleaved pair: the segment number << 1 | the side calling now, in
	 * one word so that a caller never sees one without the other. */
	atomic_uint segment;
	atomic_bool failed;
	pthread_mutex_t err_mu;
	char err[400];
	pthread_barrier_t start;
};

struct caller {
	struct bench *b;
	pthread_t tid;
	coffer_client *client[2];          /* daemon path: [1] in mode 1 of a pair */
	cf_buf *out;                       /* layer paths */
	struct lat lat[2];                 /* per mode */
};

struct result {
	char label[48];
	enum path_kind path;
	unsigned callers;
	unsigned long ops;
	double window;                     /* seconds */
	double rate;
	double p50, p99, p999;             /* microseconds */
	double server_cpu;                 /* seconds; < 0 if there is no server */
	double client_cpu;                 /* seconds */
	double other_cpu;                  /* CPUs busy with other processes */
	int unsealed;                      /* the unsealed baseline of a sealable op */
	unsigned group;                    /* the rows of one round of one daemon */
	int auth;                          /* --auth: 1 unsigned baseline, 2 signed calls */
	enum op_id op_id;
};

struct options {
	enum op_id op;
	unsigned callers;
	double seconds;
	double warmup;
	unsigned workers[MAX_WORKER_COUNTS];
	unsigned nworkers;
	unsigned clients;                  /* CLIENT_* bits */
	unsigned rounds;
	int paths[PATH__COUNT];
	const char *p11kit_client;
	int auth;                          /* also measure calls signed with an API key */
	const char *durability;            /* cofferd [audit] durability */
};

static struct result results[MAX_RESULTS];
static unsigned nresults;

/* ---- small helpers ---- */

static uint64_t
now_ns(void)
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

static void
sleep_s(double s)
{
	struct timespec ts;

	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Record the first failure and stop every thread. */
static void
bench_fail(struct bench *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void
bench_fail(struct bench *b, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&b->err_mu);
	if (!atomic_load(&b->failed)) {
		va_start(ap, fmt);
		vsnprintf(b->err, sizeof(b->err), fmt, ap);
		va_end(ap);
		atomic_store(&b->failed, true);
	}
	pthread_mutex_unlock(&b->err_mu);
	atomic_store(&b->phase, PH_STOP);
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
 * p11-kit-remote per connection); reaped children are in cutime/cstime.
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

static double
proc_cpu_s(pid_t pid)
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

/* ---- one operation ---- */

static int
daemon_op(struct bench *b, coffer_client *c)
{
	const struct op_def *d = &ops[b->op];
	struct coffer_bytes out = { NULL, 0 };
	uint32_t ver = 0;
	int r;

	switch (b->op) {
	case OP_HMAC:
		r = coffer_mac(c, b->key_name, 0, b->msg, d->msglen, &out, &ver);
		break;
	case OP_WRAP:
		r = coffer_wrap(c, b->key_name, b->msg, d->msglen, NULL, 0, &out, &ver);
		break;
	case OP_UNWRAP:
		r = coffer_unwrap(c, b->key_name, b->blob.data, b->blob.len, NULL, 0, &out, &ver);
		break;
	case OP_HANDSHAKE:
		if ((r = lc_handshake_once(c)) == COFFER_OK)
			return 0;
		break;
	default:
		r = coffer_sign(c, b->key_name, 0, b->msg, d->msglen, NULL, &out, &ver);
		break;
	}
	if (r != COFFER_OK) {
		bench_fail(b, "%s through cofferd: %s: %s", d->name, coffer_strerror(r),
			   coffer_error_message());
		return -1;
	}
	if (out.len == 0 || ver != KEY_VERSION) {
		bench_fail(b, "%s through cofferd: %zu-byte result, version %u", d->name, out.len,
			   ver);
		coffer_bytes_free(&out);
		return -1;
	}
	coffer_bytes_free(&out);
	return 0;
}

static int
layer_op(struct bench *b, cf_buf *out)
{
	const struct op_def *d = &ops[b->op];
	uint8_t iv[CF_GCM_IV_LEN];
	int r;

	cf_buf_reset(out);
	switch (b->op) {
	case OP_HMAC:
		r = cf_p11_mac(b->key, b->msg, d->msglen, out);
		break;
	case OP_WRAP:
		r = cf_p11_gcm_encrypt(b->key, b->aad, b->aadlen, b->msg, d->msglen, iv, out);
		break;
	default:
		r = cf_p11_sign(b->key, NULL, b->msg, d->msglen, out);
		break;
	}
	if (r != CF_OK) {
		bench_fail(b, "%s through the %s layer: %s: %s", d->name,
			   b->path == PATH_P11KIT ? "p11-kit remote" : "in-process",
			   cf_status_name(r), cf_error_detail());
		return -1;
	}
	return 0;
}

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
	struct bench *b = w->b;

	pthread_barrier_wait(&b->start);
	for (;;) {
		int ph = atomic_load_explicit(&b->phase, memory_order_acquire);
		unsigned seg = atomic_load_explicit(&b->segment, memory_order_acquire);
		int md = (int)(seg & 1u);
		uint64_t t0, t1;
		int r;

		if (ph == PH_STOP)
			break;
		t0 = now_ns();
		r = b->path == PATH_DAEMON ? daemon_op(b, w->client[md]) : layer_op(b, w->out);
		t1 = now_ns();
		if (r != 0)
			break;
		/* Only calls that started inside the timed window count, and of
		 * an interleaved pair only those that did not straddle a switch. */
		if (ph == PH_MEASURE && atomic_load(&b->segment) == seg &&
		    lat_push(&w->lat[md], t1 - t0) != 0) {
			bench_fail(b, "out of memory for latencies");
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

/* An interleaved pair switches clients every SEGMENT_S, in the order
 * A B B A, so that both sides see the same machine: on this shared VM
 * throughput drifts by 10-20% over seconds, far more than what a pair
 * prices. */
#define SEGMENT_S 0.2

/* A new segment in which side md calls. */
static void
switch_side(struct bench *b, int md)
{
	unsigned seg = atomic_load(&b->segment);

	atomic_store(&b->segment, ((seg >> 1) + 1) << 1 | (unsigned)md);
}

/* What one side of the measurement used: time, CPU, rows of latencies. */
struct side {
	double window, srv, cli, sys;
};

/* One side's row from its callers' latencies and its share of the window. */
static int
fill_result(const struct options *o, struct caller *w, int md, const struct side *sd,
	    pid_t server, enum path_kind path, struct result *res)
{
	uint64_t *all;
	size_t total = 0;

	for (unsigned i = 0; i < o->callers; i++)
		total += w[i].lat[md].n;
	if (total == 0 || (all = malloc(total * sizeof(*all))) == NULL) {
		fprintf(stderr, "bench_daemon: no calls completed in the window\n");
		return -1;
	}
	total = 0;
	for (unsigned i = 0; i < o->callers; i++) {
		memcpy(all + total, w[i].lat[md].v, w[i].lat[md].n * sizeof(*all));
		total += w[i].lat[md].n;
	}
	qsort(all, total, sizeof(*all), u64_cmp);
	res->path = path;
	res->callers = o->callers;
	res->ops = (unsigned long)total;
	res->window = sd->window;
	res->rate = (double)total / res->window;
	res->p50 = percentile_us(all, total, 0.50);
	res->p99 = percentile_us(all, total, 0.99);
	res->p999 = percentile_us(all, total, 0.999);
	res->server_cpu = server > 0 ? sd->srv : -1.0;
	res->client_cpu = sd->cli;
	/* Everything else the machine did meanwhile: noise from other work. */
	res->other_cpu = (sd->sys - res->client_cpu - (server > 0 ? res->server_cpu : 0.0)) /
			 res->window;
	if (res->other_cpu < 0.0)
		res->other_cpu = 0.0;
	free(all);
	return 0;
}

/* Add what the machine did since *mark to side sd, and move the mark. */
static void
account(pid_t server, struct side *mark, struct side *sd)
{
	struct side now = { (double)now_ns() / 1e9, server > 0 ? proc_cpu_s(server) : 0.0,
			    rusage_cpu(), system_busy_s() };

	sd->window += now.window - mark->window;
	sd->srv += now.srv - mark->srv;
	sd->cli += now.cli - mark->cli;
	sd->sys += now.sys - mark->sys;
	*mark = now;
}

/*
 * Run b with `ncallers` threads: warm up, time the window, collect the
 * latencies. clients[i] (daemon path) is the client of thread i. With alt
 * (an interleaved pair), thread i calls through alt[i] in every other
 * segment (A B B A ...), each side gets --seconds, and the second side's
 * row goes to *res_alt. server is the pid whose CPU counts (0 for none).
 * Fills *res; 0 or -1 after printing why.
 */
static int
measure(struct bench *b, const struct options *o, coffer_client *const *clients,
	coffer_client *const *alt, pid_t server, struct result *res, struct result *res_alt)
{
	static const int abba[4] = { 0, 1, 1, 0 };
	struct caller *w;
	struct side sides[2], mark;
	unsigned started = 0, nseg = 1;
	double waited, seg_s = o->seconds;
	int e, ret = -1;

	if ((w = calloc(o->callers, sizeof(*w))) == NULL) {
		fprintf(stderr, "bench_daemon: out of memory\n");
		return -1;
	}
	memset(sides, 0, sizeof(sides));
	if (alt != NULL) {
		nseg = 4 * (unsigned)(o->seconds / (2 * SEGMENT_S) + 0.999);
		seg_s = 2 * o->seconds / nseg;
	}
	atomic_store(&b->phase, PH_WARMUP);
	atomic_store(&b->segment, 0);
	atomic_store(&b->failed, false);
	b->err[0] = '\0';
	for (unsigned i = 0; i < o->callers; i++) {
		/* Room for the expected calls, touched now rather than in the window. */
		size_t cap = (size_t)(o->seconds * 400000.0 / o->callers) + 65536;

		w[i].b = b;
		w[i].client[0] = clients != NULL ? clients[i] : NULL;
		w[i].client[1] = alt != NULL ? alt[i] : NULL;
		for (int md = 0; md < (alt != NULL ? 2 : 1); md++) {
			if ((w[i].lat[md].v = malloc(cap * sizeof(uint64_t))) == NULL) {
				fprintf(stderr, "bench_daemon: out of memory\n");
				goto out;
			}
			memset(w[i].lat[md].v, 0, cap * sizeof(uint64_t));
			w[i].lat[md].cap = cap;
		}
		if (b->path != PATH_DAEMON && (w[i].out = cf_buf_new(OUT_MAX)) == NULL) {
			fprintf(stderr, "bench_daemon: out of memory\n");
			goto out;
		}
	}
	pthread_barrier_init(&b->start, NULL, o->callers + 1);
	for (unsigned i = 0; i < o->callers; i++) {
		if ((e = pthread_create(&w[i].tid, NULL, caller_main, &w[i])) != 0) {
			fprintf(stderr, "bench_daemon: pthread_create: %s\n", strerror(e));
			exit(1); /* the barrier cannot be released any more */
		}
		started++;
	}
	pthread_barrier_wait(&b->start);
	for (waited = 0.0; waited < o->warmup && !atomic_load(&b->failed); waited += 0.05) {
		sleep_s(0.05);
		if (alt != NULL)   /* both sides warm */
			switch_side(b, ((unsigned)(waited / 0.05) / 2) % 2);
	}
	switch_side(b, 0);
	mark = (struct side){ (double)now_ns() / 1e9, server > 0 ? proc_cpu_s(server) : 0.0,
			      rusage_cpu(), system_busy_s() };
	atomic_store(&b->phase, PH_MEASURE);
	for (unsigned k = 0; k < nseg && !atomic_load(&b->failed); k++) {
		for (waited = 0.0; waited < seg_s && !atomic_load(&b->failed); waited += 0.05)
			sleep_s(seg_s - waited < 0.05 ? seg_s - waited : 0.05);
		/* Switch first, then read the clocks: a call that straddles the
		 * switch (or the end) is not counted, and neither is its time. */
		if (k + 1 == nseg)
			atomic_store(&b->phase, PH_STOP);
		switch_side(b, k + 1 < nseg ? abba[(k + 1) % 4] : 0);
		account(server, &mark, &sides[abba[k % 4]]);
	}
	atomic_store(&b->phase, PH_STOP);
	for (unsigned i = 0; i < started; i++)
		pthread_join(w[i].tid, NULL);
	pthread_barrier_destroy(&b->start);
	if (atomic_load(&b->failed)) {
		fprintf(stderr, "bench_daemon: %s\n", b->err);
		goto out;
	}
	if (fill_result(o, w, 0, &sides[0], server, b->path, res) != 0 ||
	    (alt != NULL && fill_result(o, w, 1, &sides[1], server, b->path, res_alt) != 0))
		goto out;
	ret = 0;
out:
	for (unsigned i = 0; i < o->callers; i++) {
		free(w[i].lat[0].v);
		free(w[i].lat[1].v);
		cf_buf_free(w[i].out);
	}
	free(w);
	return ret;
}

/* ---- output ---- */

static void
print_table_header(void)
{
	printf("%-26s %7s %9s %8s %8s %8s %13s %14s %13s %8s\n", "path", "callers", "ops/s",
	       "p50 us", "p99 us", "p99.9 us", "srv CPU us/op", "ops/srv CPU-s", "cli CPU us/op",
	       "other");
}

static void
print_result(const struct result *r)
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

static void
record(const struct result *r)
{
	if (nresults < MAX_RESULTS)
		results[nresults++] = *r;
	print_result(r);
}

/* ---- path 1: cofferd ---- */

static int
daemon_create_key(const struct cf_test_daemon *d, const struct bench *b)
{
	coffer_client *admin = NULL;
	int r;

	if ((r = coffer_connect(d->admin, COFFER_CONNECT_ADMIN, &admin)) != COFFER_OK) {
		fprintf(stderr, "bench_daemon: coffer_connect(admin): %s\n", coffer_strerror(r));
		return -1;
	}
	r = coffer_create_key(admin, b->key_name, ops[b->op].ctype, 0, NULL);
	if (r != COFFER_OK && r != COFFER_E_EXISTS)
		fprintf(stderr, "bench_daemon: creating %s: %s: %s\n", b->key_name,
			coffer_strerror(r), coffer_error_message());
	coffer_close(admin);
	return r == COFFER_OK || r == COFFER_E_EXISTS ? 0 : -1;
}

/* The daemon's identity, read once on the admin socket, for the clients to pin. */
static int
daemon_identity(const struct cf_test_daemon *d, struct coffer_bytes *id, char *fpr, size_t len)
{
	coffer_client *admin = NULL;
	int r;

	if ((r = coffer_connect(d->admin, COFFER_CONNECT_ADMIN, &admin)) == COFFER_OK)
		r = coffer_get_identity(admin, id, fpr, len);
	if (r != COFFER_OK)
		fprintf(stderr, "bench_daemon: identity: %s\n", coffer_error_message());
	coffer_close(admin);
	return r == COFFER_OK ? 0 : -1;
}

/* --auth: give the benchmark's principal an API key (sealed, so pinned to
 * the identity `id`), or revoke it again. */
static int
api_key(const struct cf_test_daemon *d, const struct coffer_bytes *id, struct coffer_api_key *k,
	struct coffer_bytes *secret, int revoke)
{
	coffer_client *admin = NULL;
	int r;

	if ((r = coffer_connect(d->admin, COFFER_CONNECT_ADMIN, &admin)) == COFFER_OK &&
	    (r = coffer_pin_identity(admin, id->data, id->len)) == COFFER_OK)
		r = revoke ? coffer_api_key_revoke(admin, k->id, NULL)
			   : coffer_api_key_create(admin, CF_TEST_PRINCIPAL, NULL, 0, k, secret);
	if (r != COFFER_OK)
		fprintf(stderr, "bench_daemon: API key: %s\n", coffer_error_message());
	coffer_close(admin);
	return r == COFFER_OK ? 0 : -1;
}

static int
run_daemon(struct bench *b, const struct options *o, const struct cf_test_token *tok,
	   unsigned workers, unsigned round)
{
	/* Sealed and unsealed calls are interleaved (measure()). Signed and
	 * unsigned calls cannot be (a principal with an API key must sign every
	 * call), so they run as windows A B B A on one daemon, A and B swapping
	 * from round to round, so that drift within a round falls on both. */
	static const int abba[2][4] = { { 0, 1, 1, 0 }, { 1, 0, 0, 1 } };
	static unsigned groups;
	int interleave = OP_SEALABLE(b->op), pair = !interleave && o->auth;
	struct cf_test_daemon d;
	coffer_client **clients = NULL, **own = NULL;
	struct coffer_bytes id = { NULL, 0 }, secret = { NULL, 0 };
	char wbuf[16], conf[400], fpr[80];
	const char *extra[] = { "--workers", wbuf, "--config", conf, NULL };
	struct result res[2];
	unsigned nown = 0;
	FILE *f;
	int r, ret = -1;

	snprintf(wbuf, sizeof(wbuf), "%u", workers);
	/* Unsealed secrets only so that the unsealed baseline can be measured. */
	snprintf(conf, sizeof(conf), "%s/bench.conf", tok->dir);
	if ((f = fopen(conf, "w")) == NULL)
		return -1;
	fprintf(f, "[session]\nunsealed_secrets = %s\n[audit]\ndurability = %s\n",
		interleave ? "true" : "false", o->durability);
	fclose(f);
	b->path = PATH_DAEMON;
	if (cf_test_daemon_start(tok, &d, extra) != 0)
		return -1;
	if (daemon_create_key(&d, b) != 0 || daemon_identity(&d, &id, fpr, sizeof(fpr)) != 0)
		goto out;
	if ((clients = calloc(2 * o->callers, sizeof(*clients))) == NULL ||
	    (own = calloc(2 * o->callers, sizeof(*own))) == NULL)
		goto out;
	for (unsigned mode = CLIENT_PER_THREAD; mode <= CLIENT_SHARED; mode <<= 1) {
		if (!(o->clients & mode))
			continue;
		unsigned group = ++groups;

		for (unsigned w = 0; w < (pair ? 4u : 1u); w++) {
			int v = pair ? abba[round % 2][w] : 0;
			unsigned want = mode == CLIENT_PER_THREAD ? o->callers : 1;
			int sign = o->auth && v == 1;
			struct coffer_api_key ak;

			memset(&ak, 0, sizeof(ak));
			if (sign && api_key(&d, &id, &ak, &secret, 0) != 0)
				goto out;
			/* Set 0 sealed (as libcoffer sends), set 1 the unsealed baseline. */
			for (unsigned set = 0; set < (interleave ? 2u : 1u); set++) {
				coffer_client **cs = clients + set * o->callers;

				for (unsigned k = 0; k < want; k++) {
					if ((r = coffer_connect(d.service, 0, &cs[k])) != COFFER_OK ||
					    (own[nown++] = cs[k],
					     r = coffer_pin_identity(cs[k], id.data, id.len)) !=
					    COFFER_OK) {
						fprintf(stderr, "bench_daemon: connect: %s\n",
							coffer_error_message());
						goto out;
					}
					lc_client_set_unsealed(cs[k], set == 1);
					if (sign && coffer_set_api_key(cs[k], ak.id, secret.data,
								       secret.len) != COFFER_OK) {
						fprintf(stderr, "bench_daemon: api key: %s\n",
							coffer_error_message());
						goto out;
					}
				}
				for (unsigned i = want; i < o->callers; i++)
					cs[i] = cs[0];
			}
			if (b->op == OP_UNWRAP && b->blob.data == NULL &&
			    (r = coffer_wrap(clients[0], b->key_name, b->msg, ops[b->op].msglen,
					     NULL, 0, &b->blob, NULL)) != COFFER_OK) {
				fprintf(stderr, "bench_daemon: making the blob: %s\n",
					coffer_error_message());
				goto out;
			}
			memset(res, 0, sizeof(res));
			for (int k = 0; k < 2; k++) {
				snprintf(res[k].label, sizeof(res[k].label), "cofferd w%u %s%s",
					 workers, mode == CLIENT_PER_THREAD ? "client/thread" :
					 "shared client", interleave ? (k ? " unsealed" : " sealed") :
					 o->auth ? (sign ? " signed" : " unsigned") : "");
				res[k].unsealed = interleave && k == 1;
				res[k].group = group;
				res[k].auth = o->auth ? 1 + sign : 0;
				res[k].op_id = b->op;
			}
			if (measure(b, o, clients, interleave ? clients + o->callers : NULL, d.pid,
				    &res[0], &res[1]) != 0)
				goto out;
			record(&res[0]);
			if (interleave)
				record(&res[1]);
			while (nown > 0)
				coffer_close(own[--nown]);
			coffer_bytes_free(&secret);
			/* Revoked, so that the next unsigned row may call unsigned. */
			if (sign && api_key(&d, &id, &ak, &secret, 1) != 0)
				goto out;
		}
	}
	ret = 0;
out:
	while (nown > 0)
		coffer_close(own[--nown]);
	free(own);
	free(clients);
	coffer_bytes_free(&id);
	coffer_bytes_free(&secret);
	coffer_bytes_free(&b->blob);
	if ((r = cf_test_daemon_stop(&d)) != 0) {
		fprintf(stderr, "bench_daemon: cofferd exited with %d; log %s\n", r, d.log);
		ret = -1;
	}
	return ret;
}

/* ---- paths 2 and 3: the PKCS#11 layer, in process or over p11-kit ---- */

static int
run_layer(struct bench *b, const struct options *o, const struct cf_p11_config *base,
	  const char *module, enum path_kind path, pid_t server)
{
	struct cf_p11_config cfg = *base;
	struct result res;
	cf_p11 *p = NULL;
	int r, ret = -1;

	cfg.module_path = module;
	cfg.pool_size = o->callers > 8 ? o->callers : 0;
	b->path = path;
	if ((r = cf_p11_open(&cfg, &p)) != CF_OK) {
		fprintf(stderr, "bench_daemon: cf_p11_open(%s): %s: %s\n", module, cf_status_name(r),
			cf_error_detail());
		return -1;
	}
	if ((r = cf_p11_key_open(p, b->key_name, KEY_VERSION, &b->key)) != CF_OK) {
		fprintf(stderr, "bench_daemon: opening %s: %s: %s\n", b->key_name,
			cf_status_name(r), cf_error_detail());
		goto out;
	}
	memset(&res, 0, sizeof(res));
	snprintf(res.label, sizeof(res.label), "%s",
		 path == PATH_P11KIT ? "p11-kit server (remote)" : "in-process layer");
	if (measure(b, o, NULL, NULL, server, &res, NULL) != 0)
		goto out;
	record(&res);
	ret = 0;
out:
	cf_p11_key_free(b->key);
	b->key = NULL;
	cf_p11_close(p);
	return ret;
}

/* Connect to a Unix socket once to see that the server listens. */
static int
socket_ready(const char *path)
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

static int
run_p11kit(struct bench *b, const struct options *o, const struct cf_test_token *tok)
{
	extern char **environ;
	posix_spawn_file_actions_t fa;
	char sock[320], log[320], addr[340];
	char *argv[] = { "p11-kit", "server", "--foreground", "--provider",
			 (char *)tok->cfg.module_path, "-n", sock, (char *)tok->uri, NULL };
	pid_t pid;
	int e, st, ret = -1, ready = 0;

	snprintf(sock, sizeof(sock), "%s/p11kit.sock", tok->dir);
	if (strlen(sock) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		fprintf(stderr, "bench_daemon: socket path %s is too long\n", sock);
		return -1;
	}
	snprintf(log, sizeof(log), "%s/p11kit-server.log", tok->dir);
	snprintf(addr, sizeof(addr), "unix:path=%s", sock);
	unlink(sock);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log, O_WRONLY | O_CREAT | O_APPEND,
					 0600);
	posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
	/* The server inherits SOFTHSM2_CONF of the temporary token. */
	e = posix_spawnp(&pid, "p11-kit", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (e != 0) {
		fprintf(stderr, "bench_daemon: cannot run p11-kit server: %s\n", strerror(e));
		return -1;
	}
	for (int i = 0; i < 500 && !ready; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid) {
			fprintf(stderr, "bench_daemon: p11-kit server exited; log %s\n", log);
			return -1;
		}
		if (!(ready = socket_ready(sock)))
			sleep_s(0.01);
	}
	if (!ready) {
		fprintf(stderr, "bench_daemon: p11-kit server not listening after 5 s; log %s\n",
			log);
		goto out;
	}
	setenv("P11_KIT_SERVER_ADDRESS", addr, 1);
	ret = run_layer(b, o, &tok->cfg, o->p11kit_client, PATH_P11KIT, pid);
	unsetenv("P11_KIT_SERVER_ADDRESS");
out:
	kill(pid, SIGTERM);
	waitpid(pid, &st, 0);
	unlink(sock);
	return ret;
}

/* ---- options ---- */

static void
usage(FILE *fp)
{
	fprintf(fp,
		"usage: bench_daemon [options]\n"
		"  --op OP            operation (default ecdsa-p256):");
	for (int i = 0; i < OP__COUNT; i++)
		fprintf(fp, "%s%s", i ? "|" : " ", ops[i].name);
	fprintf(fp,
		"\n"
		"  --callers N        concurrent calling threads (default 8; max %d)\n"
		"  --seconds S        timed window per measurement (default 5; sealed and\n"
		"                     unsealed get S each, interleaved every 0.2 s)\n"
		"  --warmup S         untimed calls before each window (default 1)\n"
		"  --workers LIST     cofferd --workers values, comma-separated (default 4)\n"
		"  --clients MODE     per-thread | shared | both: libcoffer clients of the\n"
		"                     cofferd path (default both)\n"
		"  --rounds R         repeat the sequence of paths R times (default 2)\n"
		"  --paths LIST       subset of daemon,layer,p11kit (default all)\n"
		"  --p11kit-client M  p11-kit client module (default %s)\n"
		"  --auth both        cofferd path: each configuration unsigned, then with\n"
		"                     every call signed with an API key; prints the cost\n"
		"                     of authentication per call (not with wrap/unwrap)\n"
		"  --durability D     cofferd [audit] durability: disk (default) | os\n"
		"  --help             this text\n"
		"Columns: srv CPU = CPU of cofferd or of p11-kit server and its children;\n"
		"cli CPU = this process; other = CPUs busy with other processes meanwhile.\n"
		"Runs on a temporary SoftHSM2 token (COFFER_TEST_KEEP=1 keeps it, with the\n"
		"cofferd and p11-kit server logs).\n", MAX_CALLERS, P11KIT_CLIENT);
}

static int
parse_uint(const char *v, unsigned long lo, unsigned long hi, unsigned *out)
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

static int
parse_seconds(const char *v, double lo, double *out)
{
	char *end;
	double s = strtod(v, &end);

	if (end == v || *end != '\0' || !(s >= lo && s <= 3600.0))
		return -1;
	*out = s;
	return 0;
}

static int
parse_workers(const char *list, struct options *o)
{
	char *copy = strdup(list), *save = NULL, *tok;
	int ret = 0;

	if (copy == NULL)
		return -1;
	o->nworkers = 0;
	for (tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		if (o->nworkers == MAX_WORKER_COUNTS ||
		    parse_uint(tok, 1, 64, &o->workers[o->nworkers]) != 0) {
			ret = -1;
			break;
		}
		o->nworkers++;
	}
	free(copy);
	return ret == 0 && o->nworkers > 0 ? 0 : -1;
}

static int
parse_paths(const char *list, struct options *o)
{
	char *copy = strdup(list), *save = NULL, *tok;
	int ret = 0, any = 0;

	if (copy == NULL)
		return -1;
	memset(o->paths, 0, sizeof(o->paths));
	for (tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		int i;

		for (i = 0; i < PATH__COUNT; i++)
			if (strcmp(tok, path_names[i]) == 0)
				break;
		if (i == PATH__COUNT) {
			ret = -1;
			break;
		}
		o->paths[i] = 1;
		any = 1;
	}
	free(copy);
	return ret == 0 && any ? 0 : -1;
}

static int
parse_args(int argc, char **argv, struct options *o)
{
	memset(o, 0, sizeof(*o));
	o->op = OP_ECDSA;
	o->callers = 8;
	o->seconds = 5.0;
	o->warmup = 1.0;
	o->workers[0] = 4;
	o->nworkers = 1;
	o->clients = CLIENT_PER_THREAD | CLIENT_SHARED;
	o->rounds = 2;
	for (int i = 0; i < PATH__COUNT; i++)
		o->paths[i] = 1;
	o->p11kit_client = P11KIT_CLIENT;
	o->durability = "disk";
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int bad = 0;

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			exit(0);
		}
		if (v == NULL) {
			usage(stderr);
			return -1;
		}
		i++;
		if (strcmp(a, "--op") == 0) {
			int k;

			for (k = 0; k < OP__COUNT; k++)
				if (strcmp(v, ops[k].name) == 0)
					break;
			bad = k == OP__COUNT;
			o->op = (enum op_id)k;
		} else if (strcmp(a, "--callers") == 0) {
			bad = parse_uint(v, 1, MAX_CALLERS, &o->callers) != 0;
		} else if (strcmp(a, "--seconds") == 0) {
			bad = parse_seconds(v, 0.1, &o->seconds) != 0;
		} else if (strcmp(a, "--warmup") == 0) {
			bad = parse_seconds(v, 0.0, &o->warmup) != 0;
		} else if (strcmp(a, "--workers") == 0) {
			bad = parse_workers(v, o) != 0;
		} else if (strcmp(a, "--clients") == 0) {
			if (strcmp(v, "per-thread") == 0)
				o->clients = CLIENT_PER_THREAD;
			else if (strcmp(v, "shared") == 0)
				o->clients = CLIENT_SHARED;
			else if (strcmp(v, "both") == 0)
				o->clients = CLIENT_PER_THREAD | CLIENT_SHARED;
			else
				bad = 1;
		} else if (strcmp(a, "--rounds") == 0) {
			bad = parse_uint(v, 1, MAX_ROUNDS, &o->rounds) != 0;
		} else if (strcmp(a, "--paths") == 0) {
			bad = parse_paths(v, o) != 0;
		} else if (strcmp(a, "--auth") == 0) {
			o->auth = strcmp(v, "both") == 0;
			bad = !o->auth && strcmp(v, "none") != 0;
		} else if (strcmp(a, "--p11kit-client") == 0) {
			o->p11kit_client = v;
		} else if (strcmp(a, "--durability") == 0) {
			o->durability = v;
			bad = strcmp(v, "disk") != 0 && strcmp(v, "os") != 0;
		} else {
			usage(stderr);
			return -1;
		}
		if (bad) {
			fprintf(stderr, "bench_daemon: bad value \"%s\" for %s\n", v, a);
			return -1;
		}
	}
	if (o->auth && (OP_SEALABLE(o->op) || o->op == OP_HANDSHAKE)) {
		fprintf(stderr, "bench_daemon: --auth measures plain calls: use it with ecdsa-p256, "
			"ed25519, rsa2048 or hmac-sha256\n");
		return -1;
	}
	return 0;
}

/* ---- summary ---- */

/* Best round (highest ops/s) of each label, in order of first appearance. */
static unsigned
summarise(const struct result *best[MAX_RESULTS])
{
	unsigned n = 0;

	for (unsigned i = 0; i < nresults; i++) {
		unsigned j;

		for (j = 0; j < n; j++)
			if (strcmp(best[j]->label, results[i].label) == 0)
				break;
		if (j == n)
			best[n++] = &results[i];
		else if (results[i].rate > best[j]->rate)
			best[j] = &results[i];
	}
	return n;
}

static const char *
met(int ok)
{
	return ok ? "met" : "NOT met";
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* What `costly` rows add over `base` rows: per round, the rows measured on
 * one daemon (run_daemon) summed on each side, then the median
 * over the rounds, since best-of-N of each side would pair a lucky round
 * with an unlucky one. */
static void
print_pair_cost(const char *what, const char *how, int (*is_costly)(const struct result *),
		int (*is_base)(const struct result *), const char *target)
{
	double slow[MAX_RESULTS], cpu[MAX_RESULTS], srv[MAX_RESULTS];
	const char *label = NULL;
	int mixed = 0;   /* more than one configuration (workers, client mode) */
	unsigned k = 0;

	for (unsigned i = 0; i < nresults; i++) {
		double nops[2] = { 0, 0 }, win[2] = { 0, 0 }, all[2] = { 0, 0 }, own[2] = { 0, 0 };
		unsigned g = results[i].group, j;

		for (j = 0; j < i && results[j].group != g; j++)
			;
		if (g == 0 || j < i)   /* a row of no pair, or a round already counted */
			continue;
		for (j = i; j < nresults; j++) {
			const struct result *r = &results[j];
			int side = is_costly(r) ? 0 : is_base(r) ? 1 : -1;

			if (r->group != g || side < 0)
				continue;
			if (side == 0 && label != NULL && strcmp(label, r->label) != 0)
				mixed = 1;
			if (side == 0)
				label = r->label;
			nops[side] += (double)r->ops;
			win[side] += r->window;
			all[side] += r->server_cpu + r->client_cpu;
			own[side] += r->server_cpu;
		}
		if (nops[0] == 0 || nops[1] == 0)
			continue;
		slow[k] = (win[0] / nops[0]) / (win[1] / nops[1]) - 1.0;
		cpu[k] = 1e6 * (all[0] / nops[0] - all[1] / nops[1]);
		srv[k] = 1e6 * (own[0] / nops[0] - own[1] / nops[1]);
		k++;
	}
	if (k == 0)
		return;
	qsort(slow, k, sizeof(slow[0]), cmp_double);
	qsort(cpu, k, sizeof(cpu[0]), cmp_double);
	qsort(srv, k, sizeof(srv[0]), cmp_double);
	printf("# %s cost (median of %u rounds%s, %s): %+.1f%% time per call "
	       "(rounds %+.1f%% .. %+.1f%%), %+.1f us CPU per call (client + daemon), of which "
	       "the daemon %+.1f us%s%s\n", what, k, mixed ? " and configurations" : "", how,
	       100.0 * slow[k / 2], 100.0 * slow[0],
	       100.0 * slow[k - 1], cpu[k / 2], srv[k / 2], target ? " (target < 10%): " : "",
	       target ? met(slow[k / 2] < 0.10) : "");
}

static int is_sealed(const struct result *r) { return r->path == PATH_DAEMON && !r->unsealed; }
static int is_unsealed(const struct result *r) { return r->unsealed; }
static int is_signed(const struct result *r) { return r->auth == 2; }
static int is_unsigned(const struct result *r) { return r->auth == 1; }

static void
print_verdict(const struct result *const *best, unsigned n)
{
	const struct result *d = NULL, *k = NULL, *l = NULL;
	double per_cpu;

	for (unsigned i = 0; i < n; i++) {
		if (best[i]->path == PATH_DAEMON && (d == NULL || best[i]->rate > d->rate))
			d = best[i];
		if (best[i]->path == PATH_P11KIT)
			k = best[i];
		if (best[i]->path == PATH_LAYER)
			l = best[i];
	}
	if (d == NULL)
		return;
	if (OP_SEALABLE(d->op_id))
		print_pair_cost("sealing", "each interleaved every 0.2 s", is_sealed, is_unsealed,
				"");
	print_pair_cost("API key authentication", "each A B B A", is_signed, is_unsigned, NULL);
	if (OP_SEALABLE(d->op_id) || OP_DAEMON_ONLY(d->op_id))
		return;
	per_cpu = d->server_cpu > 0.0 ? (double)d->ops / d->server_cpu : 0.0;
	printf("# cofferd configuration compared: %s (highest ops/s)\n", d->label);
	if (k != NULL)
		printf("# daemon/p11-kit ops/s = %.0f / %.0f = %.2fx (target >= %.1fx): %s\n",
		       d->rate, k->rate, k->rate > 0.0 ? d->rate / k->rate : 0.0, TARGET_SPEEDUP,
		       met(k->rate > 0.0 && d->rate / k->rate >= TARGET_SPEEDUP));
	else
		printf("# daemon/p11-kit ops/s: no p11-kit result (target >= %.1fx): not judged\n",
		       TARGET_SPEEDUP);
	printf("# daemon ops per daemon CPU-second = %.0f (target >= %.0f): %s\n", per_cpu,
	       TARGET_OPS_PER_CPU_S, met(per_cpu >= TARGET_OPS_PER_CPU_S));
	printf("# daemon p99 = %.0f us (target < %.0f us): %s\n", d->p99, TARGET_P99_US,
	       met(d->p99 < TARGET_P99_US));
	/* The in-process row spends its CPU on the token's own work, so it
	 * bounds what any daemon could reach, before a single byte of RPC. */
	if (l != NULL && l->ops > 0 && l->client_cpu > 0.0)
		printf("# token floor: the in-process layer uses %.1f us CPU per op at %u callers, "
		       "so no daemon can exceed %.0f ops per CPU-second; cofferd adds %.1f us\n",
		       1e6 * l->client_cpu / (double)l->ops, l->callers,
		       (double)l->ops / l->client_cpu,
		       d->ops > 0 ? 1e6 * (d->server_cpu / (double)d->ops -
					   l->client_cpu / (double)l->ops) : 0.0);
}

/* ---- main ---- */

int
main(int argc, char **argv)
{
	static uint8_t msg[MSG_MAX];
	struct options o;
	struct cf_test_token tok;
	struct bench b;
	cf_buf *aad = NULL;
	const struct result *best[MAX_RESULTS];
	char date[64];
	time_t t;
	unsigned n;
	int rc = 1, have_token = 0;

	if (parse_args(argc, argv, &o) != 0)
		return 2;
	signal(SIGPIPE, SIG_IGN);
	memset(&b, 0, sizeof(b));
	pthread_mutex_init(&b.err_mu, NULL);
	b.op = o.op;
	b.msg = msg;
	snprintf(b.key_name, sizeof(b.key_name), "bench-%s", ops[o.op].name);
	if (RAND_bytes(msg, sizeof(msg)) != 1) {
		fprintf(stderr, "bench_daemon: RAND_bytes failed\n");
		goto out;
	}
	/* The AAD cofferd's envelope binds for an empty context (envelope.c),
	 * so that the in-process wrap does the same token work. */
	if ((aad = cf_buf_new(256)) == NULL ||
	    cf_buf_put(aad, "coffer.v1.wrap", sizeof("coffer.v1.wrap")) != CF_OK ||
	    cf_buf_put_u32(aad, (uint32_t)strlen(b.key_name)) != CF_OK ||
	    cf_buf_put(aad, b.key_name, strlen(b.key_name)) != CF_OK ||
	    cf_buf_put_u32(aad, KEY_VERSION) != CF_OK || cf_buf_put_u32(aad, 0) != CF_OK) {
		fprintf(stderr, "bench_daemon: out of memory\n");
		goto out;
	}
	b.aad = cf_buf_peek(aad);
	b.aadlen = cf_buf_len(aad);
	if (cf_test_token_create(&tok, "coffer-bench") != 0)
		goto out;
	have_token = 1;

	t = time(NULL);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S %Z", localtime(&t));
	printf("# bench_daemon %s  cpus %ld  op %s (%s)  callers %u  window %.3g s  "
	       "warm-up %.3g s  rounds %u  cofferd workers",
	       date, sysconf(_SC_NPROCESSORS_ONLN), ops[o.op].name, ops[o.op].what, o.callers,
	       o.seconds, o.warmup, o.rounds);
	for (unsigned i = 0; i < o.nworkers; i++)
		printf("%s%u", i ? "," : " ", o.workers[i]);
	printf("\n# token %s  module %s  p11-kit client %s\n", tok.uri, tok.cfg.module_path,
	       o.p11kit_client);
	print_table_header();
	fflush(stdout);

	/* The key is made through cofferd's admin socket; the baselines open the
	 * same token object. Without the daemon path, make it with the layer. */
	if (!o.paths[PATH_DAEMON]) {
		cf_p11 *p = NULL;
		cf_p11_key *k = NULL;
		int r;

		if ((r = cf_p11_open(&tok.cfg, &p)) != CF_OK ||
		    (r = cf_p11_key_generate(p, b.key_name, KEY_VERSION, ops[o.op].type, 0, &k)) !=
		    CF_OK) {
			fprintf(stderr, "bench_daemon: making the key: %s: %s\n", cf_status_name(r),
				cf_error_detail());
			cf_p11_close(p);
			goto out;
		}
		cf_p11_key_free(k);
		cf_p11_close(p);
	}
	if (OP_DAEMON_ONLY(o.op) && (o.paths[PATH_LAYER] || o.paths[PATH_P11KIT])) {
		printf("# %s: cofferd only (no PKCS#11-layer counterpart)\n", ops[o.op].name);
		o.paths[PATH_LAYER] = o.paths[PATH_P11KIT] = 0;
	}
	for (unsigned round = 0; round < o.rounds; round++) {
		if (o.paths[PATH_DAEMON])
			for (unsigned i = 0; i < o.nworkers; i++)
				if (run_daemon(&b, &o, &tok, o.workers[i], round) != 0)
					goto out;
		if (o.paths[PATH_LAYER] &&
		    run_layer(&b, &o, &tok.cfg, tok.cfg.module_path, PATH_LAYER, 0) != 0)
			goto out;
		/* Not fatal: the other paths still mean something without it. */
		if (o.paths[PATH_P11KIT] && run_p11kit(&b, &o, &tok) != 0) {
			printf("# p11-kit server (remote): not measured (see the error above)\n");
			fflush(stdout);
			o.paths[PATH_P11KIT] = 0;
		}
	}

	n = summarise(best);
	printf("# best of %u rounds\n", o.rounds);
	print_table_header();
	for (unsigned i = 0; i < n; i++)
		print_result(best[i]);
	print_verdict(best, n);
	rc = 0;
out:
	fflush(stdout);
	cf_buf_free(aad);
	pthread_mutex_destroy(&b.err_mu);
	if (have_token)
		cf_test_token_destroy(&tok);
	return rc;
}
