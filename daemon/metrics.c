#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cf_methods.h"
#include "cf_status.h"
#include "cf_time.h"

#define CODES CF_GRPC_CODES
#define BUCKETS 16

int metrics_on;
uint64_t metrics_cells[M__COUNT];

/* Upper bounds of the latency buckets, 50 µs to 5 s, in ns and as "le". */
static const uint64_t bound_ns[BUCKETS] = {
	50000,    100000,    250000,    500000,    1000000,    2500000,    5000000,    10000000,
	25000000, 50000000, 100000000, 250000000, 500000000, 1000000000, 2500000000, 5000000000,
};
static const char *const bound_le[BUCKETS] = {
	"5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
	"0.025", "0.05",  "0.1",     "0.25",   "0.5",   "1",      "2.5",   "5",
};

/* Per method: calls by status, and the latency histogram (each bucket
 * counts only its own range: the cumulative counts are summed when shown,
 * so a call is one atomic add there and one in calls). */
static struct {
	uint64_t calls[CODES];
	uint64_t bucket[BUCKETS + 1];   /* the last: above 5 s */
	uint64_t sum_ns;
} per[CF_METHOD__COUNT];

void
metrics_enable(void)
{
	__atomic_store_n(&metrics_on, 1, __ATOMIC_RELAXED);
}

uint64_t
metrics_start(void)
{
	return __atomic_load_n(&metrics_on, __ATOMIC_RELAXED) ? cf_mono_ns() : 0;
}

void
metrics_call(unsigned method, unsigned code, uint64_t t0)
{
	uint64_t ns;
	unsigned b = 0;

	if (!__atomic_load_n(&metrics_on, __ATOMIC_RELAXED) || method >= CF_METHOD__COUNT ||
	    code >= CODES)
		return;
	ns = cf_mono_ns() - t0;
	while (b < BUCKETS && ns > bound_ns[b])
		b++;
	__atomic_fetch_add(&per[method].calls[code], 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&per[method].bucket[b], 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&per[method].sum_ns, ns, __ATOMIC_RELAXED);
}

static uint64_t
load(const uint64_t *c)
{
	return __atomic_load_n(c, __ATOMIC_RELAXED);
}

static void
head(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
scalar(FILE *f, const char *name, const char *type, const char *help, uint64_t v)
{
	head(f, name, type, help);
	fprintf(f, "%s %llu\n", name, (unsigned long long)v);
}

/* Events (enum metric) as families: a name, and the label that tells the
 * members apart. */
static void
refusals(FILE *f)
{
	static const struct {
		enum metric m;
		const char *reason;
	} r[] = {
		{ M_REFUSED_NO_PRINCIPAL, "no_principal" },
		{ M_REFUSED_UNAUTHENTICATED, "unauthenticated" },
		{ M_REFUSED_DENIED, "denied" },
		{ M_REFUSED_RATE_LIMITED, "rate_limited" },
	};

	head(f, "coffer_refusals_total", "counter",
	     "Calls on the service socket refused before they ran, by reason; a batch "
	     "counts each item the rate limits refused.");
	for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++)
		fprintf(f, "coffer_refusals_total{reason=\"%s\"} %llu\n", r[i].reason,
			(unsigned long long)load(&metrics_cells[r[i].m]));
}

static void
scheduled(FILE *f)
{
	static const struct {
		enum metric m;
		const char *work, *result;
	} w[] = {
		{ M_ROTATIONS, "rotate", "ok" },
		{ M_ROTATION_FAILURES, "rotate", "failed" },
		{ M_DESTRUCTIONS, "destroy", "ok" },
		{ M_DESTRUCTION_FAILURES, "destroy", "failed" },
	};

	head(f, "coffer_scheduled_work_total", "counter",
	     "Scheduled rotations and destructions of expired key versions, by result.");
	for (size_t i = 0; i < sizeof(w) / sizeof(w[0]); i++)
		fprintf(f, "coffer_scheduled_work_total{work=\"%s\",result=\"%s\"} %llu\n",
			w[i].work, w[i].result, (unsigned long long)load(&metrics_cells[w[i].m]));
}

/* Calls by status and their latency, for the methods called so far. */
static void
calls(FILE *f)
{
	head(f, "coffer_calls_total", "counter",
	     "Calls by method and gRPC status; a sealed call counts as SessionService/Call "
	     "and as its inner method.");
	for (int m = 0; m < CF_METHOD__COUNT; m++)
		for (int c = 0; c < CODES; c++) {
			uint64_t v = load(&per[m].calls[c]);

			if (v != 0)
				fprintf(f, "coffer_calls_total{service=\"%s\",method=\"%s\","
					"code=\"%s\"} %llu\n", cf_methods[m].service,
					cf_methods[m].name, cf_grpc_code_name((unsigned)c),
					(unsigned long long)v);
		}
	head(f, "coffer_call_duration_seconds", "histogram",
	     "Time from a call's arrival in dispatch to its answer, by method.");
	for (int m = 0; m < CF_METHOD__COUNT; m++) {
		const char *sv = cf_methods[m].service, *nm = cf_methods[m].name;
		uint64_t cum = 0, sum;

		for (int b = 0; b <= BUCKETS; b++)
			cum += load(&per[m].bucket[b]);
		if (cum == 0)
			continue;
		sum = load(&per[m].sum_ns);
		cum = 0;
		for (int b = 0; b <= BUCKETS; b++) {
			cum += load(&per[m].bucket[b]);
			fprintf(f, "coffer_call_duration_seconds_bucket{service=\"%s\","
				"method=\"%s\",le=\"%s\"} %llu\n", sv, nm,
				b < BUCKETS ? bound_le[b] : "+Inf", (unsigned long long)cum);
		}
		fprintf(f, "coffer_call_duration_seconds_sum{service=\"%s\",method=\"%s\"} "
			"%llu.%09llu\n", sv, nm, (unsigned long long)(sum / 1000000000u),
			(unsigned long long)(sum % 1000000000u));
		fprintf(f, "coffer_call_duration_seconds_count{service=\"%s\",method=\"%s\"} "
			"%llu\n", sv, nm, (unsigned long long)cum);
	}
}

/* The families of one unlabelled value each. */
static void
scalars(FILE *f, const struct metrics_read *rd)
{
	const struct {
		const char *name, *type, *help;
		uint64_t v;
	} t[] = {
		{ "coffer_token_operations_total", "counter",
		  "PKCS#11 operations run on a pooled token session (searches included).",
		  rd->token_ops },
		{ "coffer_token_errors_total", "counter",
		  "Token operations that failed in the token (after its one retry).",
		  rd->token_errors },
		{ "coffer_token_recoveries_total", "counter",
		  "Token sessions re-opened and logins renewed after a lost session or device.",
		  rd->token_recoveries },
		{ "coffer_token_pool_waits_total", "counter",
		  "Token operations that waited for a free pooled session ([token] pool_size).",
		  rd->pool_waits },
		{ "coffer_token_pool_timeouts_total", "counter",
		  "Token operations that gave up waiting ([token] pool_timeout_ms).",
		  rd->pool_timeouts },
		{ "coffer_sealed_sessions_open", "gauge", "Sealed sessions open now.",
		  rd->sessions_open },
		{ "coffer_nonce_record_entries", "gauge",
		  "Nonces of signed requests and calls held in the replay record.",
		  rd->nonces_live },
		{ "coffer_nonce_record_bytes", "gauge",
		  "Size of the replay record's file (0 with the PostgreSQL backend).",
		  rd->nonce_log_bytes },
		{ "coffer_audit_write_failures_total", "counter",
		  "Writes of the audit trail that failed.",
		  load(&metrics_cells[M_AUDIT_WRITE_FAILURES]) },
		{ "coffer_audit_records_lost_total", "counter",
		  "Audit records carried by failed writes (their calls were not answered OK "
		  "unless [audit] failure = open).", load(&metrics_cells[M_AUDIT_RECORDS_LOST]) },
		{ "coffer_audit_healthy", "gauge", "1 while the audit trail can be written.",
		  (uint64_t)rd->audit_healthy },
		{ "coffer_pipeline_messages_total", "counter",
		  "Messages read on pipelined streams.",
		  load(&metrics_cells[M_PIPELINE_MESSAGES]) },
		{ "coffer_pipeline_requests_total", "counter",
		  "Requests those messages carried (a frame carries several).",
		  load(&metrics_cells[M_PIPELINE_REQUESTS]) },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		scalar(f, t[i].name, t[i].type, t[i].help, t[i].v);
}

int
metrics_render(const struct metrics_read *rd, char **out, size_t *len)
{
	char *buf = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&buf, &n);

	if (f == NULL)
		return cf_nomem();
	calls(f);
	refusals(f);
	scalars(f, rd);
	scheduled(f);
	scalar(f, "coffer_scheduler_lease_held", "gauge",
	       "1 while this daemon does the scheduled work (always without a fleet).",
	       (uint64_t)rd->lease_held);
	if (fclose(f) != 0 || buf == NULL) {
		free(buf);
		return cf_nomem();
	}
	*out = buf;
	*len = n;
	return CF_OK;
}
