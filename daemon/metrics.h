/*
 * metrics.h — what the daemon counts for Prometheus, and the text format
 * (version 0.0.4) it is shown in. No HTTP here (metrics_http.h serves it):
 * the modules that count (dispatch, audit, keyring) depend on this header
 * only.
 *
 * Cheap on the call path: fixed arrays of relaxed atomic counters, no lock
 * and no allocation per call; while metrics are off (the default) nothing
 * is counted and no clock is read. Values that a module already keeps
 * (sessions open, the nonce record, the token's counters) are read when
 * the endpoint is scraped and handed to metrics_render.
 */
#ifndef COFFER_METRICS_H
#define COFFER_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* Events counted where they happen. */
enum metric {
	M_REFUSED_NO_PRINCIPAL,     /* service socket: no principal for the caller's uid/gid */
	M_REFUSED_UNAUTHENTICATED,  /* a call's signature (API key) missing or wrong */
	M_REFUSED_DENIED,           /* a principal without the grant (or the key's own limit) */
	M_REFUSED_RATE_LIMITED,     /* a principal's rate limit (a batch: per item refused) */
	M_AUDIT_WRITE_FAILURES,     /* audit trail writes that failed */
	M_AUDIT_RECORDS_LOST,       /* records those writes carried */
	M_ROTATIONS,                /* scheduled rotations made */
	M_ROTATION_FAILURES,        /* ... failed (retried a minute later) */
	M_DESTRUCTIONS,             /* versions destroyed in the token after their grace */
	M_DESTRUCTION_FAILURES,
	M_PIPELINE_MESSAGES,        /* messages read on pipelined streams */
	M_PIPELINE_REQUESTS,        /* ... and the requests they carried (frames: more) */
	M__COUNT
};

/* Set once, at start (metrics_http_start). */
extern int metrics_on;
void metrics_enable(void);

extern uint64_t metrics_cells[M__COUNT];

static inline void
metrics_add(enum metric m, uint64_t n)
{
	if (__atomic_load_n(&metrics_on, __ATOMIC_RELAXED))
		__atomic_fetch_add(&metrics_cells[m], n, __ATOMIC_RELAXED);
}

/* A call's start (CLOCK_MONOTONIC, ns), for metrics_call; 0 while off. */
uint64_t metrics_start(void);
/* One call of method (enum cf_method_id) ended with gRPC status code
 * (0..16), started at metrics_start()'s t0. */
void metrics_call(unsigned method, unsigned code, uint64_t t0);

/* What other modules keep, read at scrape time. */
struct metrics_read {
	uint64_t token_ops, token_errors, token_recoveries;
	uint64_t pool_waits, pool_timeouts;
	uint64_t sessions_open;
	uint64_t nonces_live;       /* nonces of signed requests and calls recorded */
	uint64_t nonce_log_bytes;   /* the record's file (0 on PostgreSQL) */
	int audit_healthy;
	int lease_held;             /* this replica does the scheduled work */
};

/* The exposition: every counter and gauge with its HELP and TYPE, calls
 * and latency histograms of the methods that were called. Into *out
 * (malloc'ed, free it). */
int metrics_render(const struct metrics_read *rd, char **out, size_t *len);

#endif
