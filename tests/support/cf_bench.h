/*
 * cf_bench.h — the measuring machinery of the cofferd benchmarks
 * (bench_daemon, bench_fleet): caller threads, per-call latencies, CPU of
 * the servers and of the rest of the machine, the table they print, and
 * the admin steps that set a test daemon up for calls.
 *
 * A measurement runs `callers` threads that call run->call() in a loop:
 * a warm-up, then a timed window. Every call that starts inside the window
 * is timed (CLOCK_MONOTONIC) into a per-thread array; the window gives
 * ops/s and the p50 / p99 / p99.9 latencies. Server CPU is read from
 * /proc/<pid>/stat (utime + stime of each server and its child processes)
 * at both ends; client CPU is this process's getrusage(); "other" is what
 * the rest of the machine kept busy meanwhile (from /proc/stat).
 *
 * With run->segment > 0 the measurement is a pair: the callers switch
 * between side 0 and side 1 (A B B A ...) every `segment` seconds at most,
 * so both sides see the same machine; a call that straddles a switch is not
 * counted, and the CPU of each segment goes to its side.
 */
#ifndef COFFER_CF_BENCH_H
#define COFFER_CF_BENCH_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "cf_test_token.h"
#include "coffer.h"

#define CF_BENCH_MAX_CALLERS 256
#define CF_BENCH_MAX_SERVERS 8

/* Prefix of messages (the program's name); set by main. */
extern const char *cf_bench_name;

/* One row of the table: one path, one window (or one side of a pair). */
struct cf_bench_row {
	char label[48];
	unsigned callers;
	unsigned long ops;
	double window;                     /* seconds */
	double rate;                       /* ops/s */
	double p50, p99, p999;             /* microseconds */
	double server_cpu;                 /* seconds, every server; < 0 without one */
	double server_each[CF_BENCH_MAX_SERVERS];   /* seconds, run->servers[i] */
	double client_cpu;                 /* seconds, this process */
	double other_cpu;                  /* CPUs busy with other processes */
};

/* The first failure among threads: its text, kept until a reset. */
struct cf_bench_failure {
	pthread_mutex_t mu;
	atomic_bool failed;
	char text[400];
};

void cf_bench_failure_init(struct cf_bench_failure *f);
void cf_bench_failure_fini(struct cf_bench_failure *f);
void cf_bench_failure_reset(struct cf_bench_failure *f);
/* Record the text unless a failure is recorded already. */
void cf_bench_failure_vset(struct cf_bench_failure *f, const char *fmt, va_list ap)
	__attribute__((format(printf, 2, 0)));

struct cf_bench_run;

/* One call by caller `thread` on side `side` (0 unless a pair): 0, or -1
 * after cf_bench_fail(). */
typedef int (*cf_bench_call)(struct cf_bench_run *r, unsigned thread, int side);

struct cf_bench_run {
	/* Set by the user. */
	unsigned callers;
	double seconds;                    /* timed time per side */
	double warmup;                     /* untimed calls first */
	double segment;                    /* > 0: a pair, sides switching A B B A */
	cf_bench_call call;
	void *arg;                         /* for call() */
	pid_t servers[CF_BENCH_MAX_SERVERS];   /* whose CPU counts (process trees) */
	unsigned nservers;
	/* Calls that succeeded per side, warm-up and uncounted ones included,
	 * summed over every measurement of this run. */
	unsigned long calls[2];
	/* Internal. */
	atomic_int phase;
	/* The segment number << 1 | the side calling now, in one word so
	 * that a caller never sees one without the other. */
	atomic_uint seg;
	struct cf_bench_failure fail;
	pthread_barrier_t start;
};

void cf_bench_init(struct cf_bench_run *r);
void cf_bench_fini(struct cf_bench_run *r);
/* Record the first failure and stop every caller. */
void cf_bench_fail(struct cf_bench_run *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Warm up, time, collect: rows[0] (and rows[1] for a pair) get everything
 * but the label. 0, or -1 after printing why. */
int cf_bench_measure(struct cf_bench_run *r, struct cf_bench_row *rows);

uint64_t cf_bench_now_ns(void);
void cf_bench_sleep(double s);
/* CPU seconds of a process and its children (live and reaped). */
double cf_bench_proc_cpu(pid_t pid);

/* The table. */
void cf_bench_print_header(void);
void cf_bench_print_row(const struct cf_bench_row *r);
/* "met" or "NOT met". */
const char *cf_bench_met(int ok);
/* Sort v[0..n) ascending. */
void cf_bench_sort(double *v, unsigned n);
/* The median of v[0..n) (sorts v); 0 for n == 0. */
double cf_bench_median(double *v, unsigned n);

/* The options every cofferd benchmark takes. */
struct cf_bench_opts {
	unsigned callers;                  /* --callers N */
	double seconds;                    /* --seconds S */
	double warmup;                     /* --warmup S */
	unsigned rounds;                   /* --rounds R (1..max_rounds) */
	unsigned max_rounds;
	const char *durability;            /* --durability: cofferd [audit] durability */
};

/* The defaults: 8 callers, `seconds`, 1 s of warm-up, 2 rounds, disk. */
void cf_bench_opts_init(struct cf_bench_opts *o, double seconds, unsigned max_rounds);
/* The next option of argv from *i (every option takes a value), *i moved
 * past it: those of cf_bench_opts are set in *o and skipped; another is
 * returned, 1 with *name and *value set. 0 after the last; -1 (printed)
 * when a value is missing or bad. --help or -h print usage to stdout and
 * exit 0. */
int cf_bench_option(int argc, char **argv, int *i, struct cf_bench_opts *o, const char **name,
		    const char **value, void (*usage)(FILE *fp));
/* Option values: 0, or -1 when out of [lo, hi]. */
int cf_bench_parse_uint(const char *v, unsigned long lo, unsigned long hi, unsigned *out);
int cf_bench_parse_seconds(const char *v, double lo, double *out);

/* 1 if something accepts connections on the Unix socket `path`. */
int cf_bench_socket_ready(const char *path);

/* Admin steps on a test daemon (prints why on failure, returns -1). */
/* Key `name` of `type` (an existing one is fine). */
int cf_bench_create_key(const struct cf_test_daemon *d, const char *name,
			enum coffer_key_type type);
/* The daemon's identity, read on its admin socket, for clients to pin. */
int cf_bench_identity(const struct cf_test_daemon *d, struct coffer_bytes *id, char *fpr,
		      size_t len);
/* An API key for CF_TEST_PRINCIPAL (sealed, so pinned to identity `id`),
 * or, with revoke, the revocation of k, after which the principal may call
 * unsigned again. */
int cf_bench_api_key(const struct cf_test_daemon *d, const struct coffer_bytes *id,
		     struct coffer_api_key *k, struct coffer_bytes *secret, int revoke);

#endif
