/*
 * bench_fleet — signed calls through a fleet of three cofferd replicas on
 * one durable PostgreSQL, against one cofferd on SQLite, in the same run.
 *
 *   sqlite x1   one cofferd on its SQLite state (the default backend) and
 *               its own temporary SoftHSM2 token;
 *   fleet x3    three cofferd replicas (--replicas) on one PostgreSQL database
 *               (tests/support/pg_server.sh start --durable: fsync,
 *               full_page_writes and synchronous_commit on, logged tables)
 *               and one SoftHSM2 token directory ([token] lock_file); the
 *               key, the principal and its API key are made once, through
 *               the first replica (the state is shared).
 *
 * usage: bench_fleet [--callers N] [--seconds S] [--warmup S] [--rounds R]
 *                    [--workers N] [--replicas N] [--durability disk|os]
 *
 * N caller threads make HMAC-SHA256 calls (256 bytes) through libcoffer,
 * each signed with the principal's API key (a fresh nonce per call, which
 * the fleet records in PostgreSQL), each thread with its own client: on the
 * SQLite path all on the one daemon, on the fleet path thread i on replica
 * i mod 3 (the replicas). Both paths are connected throughout; the callers switch between
 * them in windows of S seconds, A B B A in a round, B A A B in the next,
 * so that the load that drifts on this shared machine falls on both (the
 * machinery of bench_daemon, tests/support/cf_bench.c). Server CPU is that
 * of the path's own processes: the SQLite cofferd, or the three replicas
 * plus the PostgreSQL server and its backends.
 *
 * The verdict takes, per round, the fleet's ops/s over the SQLite path's
 * and the difference of their p50s, then the median over the rounds. The
 * group commit is seen from PostgreSQL (cofferd does not publish its
 * batcher's counts): the database's committed transactions and the
 * server's WAL flushes over the whole run, against the signed calls the
 * fleet answered, and the rows each table saw per 1000 calls (which
 * statements a call costs). Also printed: the server CPU per call split
 * between the replicas and PostgreSQL, and what the fleet burns idle.
 *
 * This is a benchmark, not a test.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <openssl/rand.h>

#include "cf_bench.h"
#include "cf_test_token.h"
#include "coffer.h"

#define MAX_REPLICAS (CF_BENCH_MAX_SERVERS - 2)
#define MAX_ROUNDS 50
#define MSG_LEN 256
#define KEY_NAME "bench-fleet-hmac"
#define PG_DB "coffer_fleet"

/* Targets of issue 16. */
#define TARGET_RATIO 0.60
#define TARGET_ADDED_P50_US 250.0

#ifndef CF_BENCH_PG_SERVER
#define CF_BENCH_PG_SERVER "tests/support/pg_server.sh"
#endif

enum path { P_SQLITE, P_FLEET, P__COUNT };

/* Indices of run.servers: the replicas from SRV_REPLICA0 on. */
enum { SRV_SQLITE, SRV_PG, SRV_REPLICA0 };

struct options {
	struct cf_bench_opts c;            /* callers, seconds, warm-up, rounds, durability */
	unsigned workers;
	unsigned replicas;
};

struct fleet {
	struct cf_bench_run run;           /* run.arg is this */
	coffer_client **client[P__COUNT];  /* [path][thread] */
	int swapped;                       /* side 0 is the fleet this round */
	uint8_t msg[MSG_LEN];
};

#define MAX_TABLES 32

/* PostgreSQL's counters: transactions committed in the fleet's database,
 * WAL flushes (fsync/fdatasync) and writes of the server, and what each
 * table of the database saw: rows inserted, updated, deleted, and scans
 * (sequential + index), so that a call's statements can be told apart. */
struct pg_counts {
	unsigned long long commits, rollbacks, wal_syncs, wal_writes;
	struct {
		char name[64];
		unsigned long long v[4];   /* ins, upd, del, scans */
	} tab[MAX_TABLES];
	unsigned ntab;
};

/* ---- the call ---- */

static int
fleet_call(struct cf_bench_run *r, unsigned thread, int side)
{
	struct fleet *f = r->arg;
	int path = side ^ f->swapped;
	struct coffer_bytes out = { NULL, 0 };
	uint32_t ver = 0;
	int rc;

	rc = coffer_mac(f->client[path][thread], KEY_NAME, 0, f->msg, sizeof(f->msg), &out, &ver);
	if (rc != COFFER_OK) {
		cf_bench_fail(r, "HMAC through the %s path (thread %u): %s: %s",
			      path == P_FLEET ? "fleet" : "SQLite", thread, coffer_strerror(rc),
			      coffer_error_message());
		return -1;
	}
	coffer_bytes_free(&out);
	if (ver != 1) {
		cf_bench_fail(r, "HMAC through the %s path: version %u, expected 1",
			      path == P_FLEET ? "fleet" : "SQLite", ver);
		return -1;
	}
	return 0;
}

/* ---- the PostgreSQL server ---- */

static const char *
pg_script(void)
{
	const char *s = getenv("COFFER_PG_SERVER");

	return s != NULL && s[0] != '\0' ? s : CF_BENCH_PG_SERVER;
}

/* Run `cmd` through the shell; its first line of output in out (if not
 * NULL), every line to each_line (if not NULL). 0 if it exited 0. */
static int
run_lines(const char *cmd, char *out, size_t len, void (*each_line)(void *arg, char *line),
	  void *arg)
{
	char line[2048];
	FILE *p = popen(cmd, "r");
	int st, got = 0;

	if (p == NULL)
		return -1;
	while (fgets(line, sizeof(line), p) != NULL) {
		line[strcspn(line, "\n")] = '\0';
		if (!got++ && out != NULL && len > 0)
			snprintf(out, len, "%.*s", (int)(len - 1), line);
		if (each_line != NULL)
			each_line(arg, line);
	}
	st = pclose(p);
	return st == 0 && (out == NULL || got > 0) ? 0 : -1;
}

static int
run_capture(const char *cmd, char *out, size_t len)
{
	return run_lines(cmd, out, len, NULL, NULL);
}

/* `sql` on the server's database postgres, unaligned; first row in out. */
static int
pg_query(const char *sock, const char *sql, char *out, size_t len)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd), "psql -X -A -t -q -h '%s' -d postgres -c \"%s\"", sock, sql);
	return run_capture(cmd, out, len);
}

static int
dbl_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* The floor of any state shared through this server: one lone durable
 * commit (an INSERT in its own transaction, a round trip and a WAL flush),
 * timed FLOOR_N times in the same run as the paths. p50 and p99 in us;
 * -1 if it cannot be measured. */
#define FLOOR_N 300
static int
commit_floor(const char *sock, double *p50, double *p99)
{
	static double t[FLOOR_N];
	char dsn[300];   /* sock is at most 256 */
	PGconn *c;
	int ok = 1;

	snprintf(dsn, sizeof(dsn), "host=%s dbname=postgres", sock);
	c = PQconnectdb(dsn);
	if (PQstatus(c) != CONNECTION_OK) {
		PQfinish(c);
		return -1;
	}
	PQclear(PQexec(c, "CREATE TABLE IF NOT EXISTS bench_floor (i bigint)"));
	for (int i = 0; i < FLOOR_N && ok; i++) {
		struct timespec a, b;
		PGresult *r;

		clock_gettime(CLOCK_MONOTONIC, &a);
		r = PQexec(c, "INSERT INTO bench_floor VALUES (1)");
		clock_gettime(CLOCK_MONOTONIC, &b);
		ok = PQresultStatus(r) == PGRES_COMMAND_OK;
		PQclear(r);
		t[i] = (double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_nsec - a.tv_nsec) / 1e3;
	}
	PQclear(PQexec(c, "DROP TABLE bench_floor"));
	PQfinish(c);
	if (!ok)
		return -1;
	qsort(t, FLOOR_N, sizeof(*t), dbl_cmp);
	*p50 = t[FLOOR_N / 2];
	*p99 = t[FLOOR_N * 99 / 100];
	return 0;
}

/* One row of pg_stat_user_tables: name|ins|upd|del|scans. */
static void
table_line(void *arg, char *line)
{
	struct pg_counts *c = arg;
	char *bar = strchr(line, '|');

	if (bar == NULL || c->ntab == MAX_TABLES)
		return;
	*bar = '\0';
	snprintf(c->tab[c->ntab].name, sizeof(c->tab[0].name), "%s", line);
	if (sscanf(bar + 1, "%llu|%llu|%llu|%llu", &c->tab[c->ntab].v[0], &c->tab[c->ntab].v[1],
		   &c->tab[c->ntab].v[2], &c->tab[c->ntab].v[3]) == 4)
		c->ntab++;
}

static int
pg_counts(const char *sock, struct pg_counts *c)
{
	char row[256], cmd[1024];

	memset(c, 0, sizeof(*c));
	if (pg_query(sock,
		     "SELECT xact_commit, xact_rollback, wal_sync, wal_write FROM pg_stat_database, "
		     "pg_stat_wal WHERE datname = '" PG_DB "'",
		     row, sizeof(row)) != 0 ||
	    sscanf(row, "%llu|%llu|%llu|%llu", &c->commits, &c->rollbacks, &c->wal_syncs,
		   &c->wal_writes) != 4) {
		fprintf(stderr, "bench_fleet: cannot read PostgreSQL's statistics\n");
		return -1;
	}
	snprintf(cmd, sizeof(cmd),
		 "psql -X -A -t -q -h '%s' -d " PG_DB " -c \"SELECT relname, n_tup_ins, n_tup_upd, "
		 "n_tup_del, coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
		 "ORDER BY relname\"", sock);
	return run_lines(cmd, NULL, 0, table_line, c);
}

/* What the tables saw between c0 and c1, per 1000 calls. */
static void
print_tables(const struct pg_counts *c0, const struct pg_counts *c1, unsigned long calls)
{
	static const char *const what[4] = { "inserted", "updated", "deleted", "scans" };
	int any = 0;

	printf("# per 1000 signed calls through the fleet, rows:");
	for (unsigned i = 0; i < c1->ntab; i++) {
		unsigned j;

		for (j = 0; j < c0->ntab && strcmp(c0->tab[j].name, c1->tab[i].name) != 0; j++)
			;
		for (int k = 0; k < 4; k++) {
			unsigned long long d = c1->tab[i].v[k] - (j < c0->ntab ? c0->tab[j].v[k] : 0);

			if (d > 0) {
				printf("%s %s %s %.0f", any++ ? "," : "", c1->tab[i].name, what[k],
				       1000.0 * (double)d / (double)calls);
			}
		}
	}
	printf("%s\n", any ? "" : " none");
}

/* The postmaster's pid, first line of DIR/data/postmaster.pid. */
static pid_t
pg_pid(const char *dir)
{
	char path[400];
	long pid = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/data/postmaster.pid", dir);
	if ((f = fopen(path, "r")) == NULL)
		return 0;
	if (fscanf(f, "%ld", &pid) != 1)
		pid = 0;
	fclose(f);
	return (pid_t)pid;
}

/* ---- setting the paths up ---- */

/* The end of a daemon's log, on stderr: the directory is removed on exit. */
static void
show_log(const char *log)
{
	char cmd[400];

	snprintf(cmd, sizeof(cmd), "tail -n 15 '%s' >&2", log);
	if (system(cmd) != 0)
		fprintf(stderr, "bench_fleet: cannot read %s\n", log);
}

/* Write `text` to DIR/NAME (0600) and put its path in out. */
static int
write_conf(const char *dir, const char *name, const char *text, char *out, size_t len)
{
	snprintf(out, len, "%s/%s", dir, name);
	if (cf_test_write_file(out, text, 0600) != 0) {
		fprintf(stderr, "bench_fleet: cannot write %s: %s\n", out, strerror(errno));
		return -1;
	}
	return 0;
}

/* A signed MAC through a client of its own, retried for up to 5 s: the
 * replicas that did not make the API key learn of it by notification. */
static int
signed_call_works(const struct cf_test_daemon *d, const struct coffer_api_key *ak,
		  const struct coffer_bytes *secret, const uint8_t *msg)
{
	int r = COFFER_E_UNAVAILABLE;

	for (int i = 0; i < 100 && r != COFFER_OK; i++) {
		struct coffer_bytes id = { NULL, 0 }, out = { NULL, 0 };
		coffer_client *c = NULL;
		char fpr[80];

		if (i > 0)
			cf_bench_sleep(0.05);
		if (cf_bench_identity(d, &id, fpr, sizeof(fpr)) != 0)
			return -1;
		if ((r = coffer_connect(d->service, 0, &c)) == COFFER_OK &&
		    (r = coffer_pin_identity(c, id.data, id.len)) == COFFER_OK &&
		    (r = coffer_set_api_key(c, ak->id, secret->data, secret->len)) == COFFER_OK)
			r = coffer_mac(c, KEY_NAME, 0, msg, MSG_LEN, &out, NULL);
		if (r != COFFER_OK && i == 99)
			fprintf(stderr, "bench_fleet: a signed call on %s: %s: %s\n", d->service,
				coffer_strerror(r), coffer_error_message());
		coffer_bytes_free(&out);
		coffer_bytes_free(&id);
		coffer_close(c);
	}
	return r == COFFER_OK ? 0 : -1;
}

/* `n` clients of daemon d[i % nd] (thread i's), pinned, signing with ak. */
static int
connect_clients(const struct cf_test_daemon *d, unsigned nd, unsigned n,
		const struct coffer_api_key *ak, const struct coffer_bytes *secret,
		coffer_client **cs)
{
	for (unsigned i = 0; i < n; i++) {
		const struct cf_test_daemon *di = &d[i % nd];
		struct coffer_bytes id = { NULL, 0 };
		char fpr[80];
		int r = COFFER_E_UNAVAILABLE;

		if (cf_bench_identity(di, &id, fpr, sizeof(fpr)) == 0 &&
		    (r = coffer_connect(di->service, 0, &cs[i])) == COFFER_OK &&
		    (r = coffer_pin_identity(cs[i], id.data, id.len)) == COFFER_OK)
			r = coffer_set_api_key(cs[i], ak->id, secret->data, secret->len);
		coffer_bytes_free(&id);
		if (r != COFFER_OK) {
			fprintf(stderr, "bench_fleet: client of %s: %s\n", di->service,
				coffer_error_message());
			return -1;
		}
	}
	return 0;
}

/* ---- options ---- */

static void
usage(FILE *fp)
{
	fprintf(fp,
		"usage: bench_fleet [options]\n"
		"  --callers N        concurrent calling threads, each with its own client\n"
		"                     (default 8; max %d)\n"
		"  --seconds S        length of one window (default 3); a round is four\n"
		"                     windows, A B B A, so each path gets 2 S per round\n"
		"  --warmup S         untimed calls on both paths before a round (default 1)\n"
		"  --rounds R         rounds, the order of the paths swapped each round\n"
		"                     (default 2)\n"
		"  --workers N        cofferd --workers of every daemon (default 4)\n"
		"  --replicas N       replicas of the fleet (default 3, the issue's; 1..%d)\n"
		"  --durability D     cofferd [audit] durability of every daemon: disk\n"
		"                     (default) | os\n"
		"  --help             this text\n"
		"Columns: srv CPU = the path's servers (SQLite: its cofferd; fleet: the three\n"
		"replicas, the PostgreSQL server and its backends); cli CPU = this process;\n"
		"other = CPUs busy with other processes meanwhile. Starts a PostgreSQL server\n"
		"with %s (COFFER_PG_SERVER overrides it); COFFER_TEST_KEEP=1 keeps the tokens,\n"
		"the daemons' logs and the server's directory.\n",
		CF_BENCH_MAX_CALLERS, MAX_REPLICAS, pg_script());
}

static int
parse_args(int argc, char **argv, struct options *o)
{
	const char *a = NULL, *v = NULL;
	int i = 1, k;

	memset(o, 0, sizeof(*o));
	cf_bench_opts_init(&o->c, 3.0, MAX_ROUNDS);
	o->workers = 4;
	o->replicas = 3;
	/* Beyond the options of every benchmark, --workers and --replicas. */
	while ((k = cf_bench_option(argc, argv, &i, &o->c, &a, &v, usage)) > 0) {
		int bad;

		if (strcmp(a, "--workers") == 0) {
			bad = cf_bench_parse_uint(v, 1, 64, &o->workers) != 0;
		} else if (strcmp(a, "--replicas") == 0) {
			bad = cf_bench_parse_uint(v, 1, MAX_REPLICAS, &o->replicas) != 0;
		} else {
			usage(stderr);
			return -1;
		}
		if (bad) {
			fprintf(stderr, "bench_fleet: bad value \"%s\" for %s\n", v, a);
			return -1;
		}
	}
	return k;
}

/* ---- summary ---- */

/* Per-op microseconds of `cpu` seconds over `ops` calls. */
static double
per_op(double cpu, unsigned long ops)
{
	return ops > 0 ? 1e6 * cpu / (double)ops : 0.0;
}

static void
print_verdict(struct cf_bench_row res[][P__COUNT], unsigned rounds, unsigned nrep,
	      const struct pg_counts *c0, const struct pg_counts *c1, unsigned long fleet_calls)
{
	double ratio[MAX_ROUNDS], added[MAX_ROUNDS], cpu[P__COUNT] = { 0, 0 }, dmn = 0, pg = 0;
	double idle_dmn = 0, idle_pg = 0, idle_s = 0;   /* the fleet while SQLite ran */
	double all[P__COUNT] = { 0, 0 }, other[P__COUNT] = { 0, 0 }, win[P__COUNT] = { 0, 0 };
	unsigned long ops[P__COUNT] = { 0, 0 };
	const struct cf_bench_row *best[P__COUNT] = { NULL, NULL };
	double rlo, rhi, alo, ahi, mr, ma;

	for (unsigned k = 0; k < rounds; k++) {
		ratio[k] = res[k][P_FLEET].rate / res[k][P_SQLITE].rate;
		added[k] = res[k][P_FLEET].p50 - res[k][P_SQLITE].p50;
		for (int p = 0; p < P__COUNT; p++) {
			if (best[p] == NULL || res[k][p].rate > best[p]->rate)
				best[p] = &res[k][p];
			cpu[p] += res[k][p].server_cpu;
			ops[p] += res[k][p].ops;
			all[p] += res[k][p].server_cpu + res[k][p].client_cpu;
			other[p] += res[k][p].other_cpu * res[k][p].window;
			win[p] += res[k][p].window;
		}
		for (unsigned i = SRV_REPLICA0; i < SRV_REPLICA0 + nrep; i++)
			dmn += res[k][P_FLEET].server_each[i];
		pg += res[k][P_FLEET].server_each[SRV_PG];
		for (unsigned i = SRV_REPLICA0; i < SRV_REPLICA0 + nrep; i++)
			idle_dmn += res[k][P_SQLITE].server_each[i];
		idle_pg += res[k][P_SQLITE].server_each[SRV_PG];
		idle_s += res[k][P_SQLITE].window;
	}
	printf("# best of %u rounds\n", rounds);
	cf_bench_print_header();
	for (int p = 0; p < P__COUNT; p++)
		cf_bench_print_row(best[p]);
	mr = cf_bench_median(ratio, rounds);
	ma = cf_bench_median(added, rounds);
	rlo = ratio[0], rhi = ratio[rounds - 1], alo = added[0], ahi = added[rounds - 1];
	printf("# server CPU per signed call (all rounds): sqlite cofferd %.1f us; fleet %.1f us "
	       "= replicas %.1f + PostgreSQL %.1f\n",
	       per_op(cpu[P_SQLITE], ops[P_SQLITE]), per_op(cpu[P_FLEET], ops[P_FLEET]),
	       per_op(dmn, ops[P_FLEET]), per_op(pg, ops[P_FLEET]));
	printf("# the fleet idle (while the SQLite path ran): replicas %.3f CPU, PostgreSQL %.3f "
	       "CPU\n", idle_s > 0 ? idle_dmn / idle_s : 0.0, idle_s > 0 ? idle_pg / idle_s : 0.0);
	printf("# fleet/SQLite throughput (median of %u rounds; rounds %.0f%% .. %.0f%%) = %.0f%% "
	       "(target >= %.0f%%): %s\n",
	       rounds, 100.0 * rlo, 100.0 * rhi, 100.0 * mr, 100.0 * TARGET_RATIO,
	       cf_bench_met(mr >= TARGET_RATIO));
	/* On this shared machine the paths also compete with other processes,
	 * and the one with more threads gets more of the cores: where the cores
	 * are the limit, what each call costs in CPU decides the ratio. */
	printf("# CPU per signed call, servers + callers: sqlite %.0f us, fleet %.0f us: where "
	       "the cores are the limit and the paths have them to themselves, fleet/SQLite "
	       "throughput would be %.0f%% (other processes kept %.2f CPUs busy in the SQLite "
	       "windows, %.2f in the fleet's)\n",
	       per_op(all[P_SQLITE], ops[P_SQLITE]), per_op(all[P_FLEET], ops[P_FLEET]),
	       all[P_FLEET] > 0 && ops[P_SQLITE] > 0
		       ? 100.0 * (all[P_SQLITE] / (double)ops[P_SQLITE]) /
				 (all[P_FLEET] / (double)ops[P_FLEET])
		       : 0.0,
	       win[P_SQLITE] > 0 ? other[P_SQLITE] / win[P_SQLITE] : 0.0,
	       win[P_FLEET] > 0 ? other[P_FLEET] / win[P_FLEET] : 0.0);
	/* The part no change to cofferd removes: PostgreSQL's own CPU per call,
	 * added to what the SQLite path spends in all (a fleet as lean per call
	 * as one cofferd, with callers as cheap). */
	if (ops[P_SQLITE] > 0 && ops[P_FLEET] > 0 && all[P_SQLITE] + pg > 0.0) {
		double s_all = all[P_SQLITE] / (double)ops[P_SQLITE],
		       pg_op = pg / (double)ops[P_FLEET];

		printf("# PostgreSQL's share (same rounds): %.0f us of CPU per signed call, at %.1f "
		       "calls per transaction. Even with replicas and callers as cheap per call as "
		       "the SQLite path's (%.0f us in all), the cores could give the fleet at most "
		       "%.0f / (%.0f + %.0f) = %.0f%% of SQLite's throughput (target >= %.0f%%)\n",
		       1e6 * pg_op, c0 != NULL && c1 != NULL && c1->commits > c0->commits
			       ? (double)fleet_calls / (double)(c1->commits - c0->commits) : 0.0,
		       1e6 * s_all, 1e6 * s_all, 1e6 * s_all, 1e6 * pg_op,
		       100.0 * s_all / (s_all + pg_op), 100.0 * TARGET_RATIO);
	}
	printf("# added p50 per signed call, fleet - SQLite (median of %u rounds; rounds %+.0f .. "
	       "%+.0f us) = %+.0f us (target <= %.0f us): %s\n",
	       rounds, alo, ahi, ma, TARGET_ADDED_P50_US, cf_bench_met(ma <= TARGET_ADDED_P50_US));
	if (c0 != NULL && c1 != NULL && fleet_calls > 0) {
		unsigned long long dc = c1->commits - c0->commits, ds = c1->wal_syncs - c0->wal_syncs,
				   dw = c1->wal_writes - c0->wal_writes;

		printf("# group commit, as PostgreSQL saw it over the rounds: %lu signed calls "
		       "answered by the fleet (warm-up included), %llu transactions committed in %s "
		       "(%.1f calls each; %llu rolled back), %llu WAL flushes (%.1f calls each), "
		       "%llu WAL writes\n",
		       fleet_calls, dc, PG_DB, dc > 0 ? (double)fleet_calls / (double)dc : 0.0,
		       c1->rollbacks - c0->rollbacks, ds,
		       ds > 0 ? (double)fleet_calls / (double)ds : 0.0, dw);
		print_tables(c0, c1, fleet_calls);
	}
}

/* ---- main ---- */

int
main(int argc, char **argv)
{
	struct options o;
	struct cf_test_token tok[P__COUNT], rtok[MAX_REPLICAS];
	struct cf_test_daemon sq, rep[MAX_REPLICAS];
	struct fleet f;
	struct coffer_api_key ak[P__COUNT];
	struct coffer_bytes id = { NULL, 0 }, secret[P__COUNT] = { { NULL, 0 }, { NULL, 0 } };
	struct cf_bench_row res[MAX_ROUNDS][P__COUNT];
	struct pg_counts c0, c1;
	unsigned long fleet_calls = 0;
	double floor50 = 0, floor99 = 0;
	char pgdir[] = "/tmp/coffer-fleet-pg-XXXXXX", sock[256] = "", cmd[1024], conf[400],
	     text[1200], wbuf[16], fpr[80], date[64], info[1024];
	const char *extra[] = { "--workers", wbuf, "--config", conf, NULL };
	int have_tok[P__COUNT] = { 0, 0 }, have_sq = 0, have_pgdir = 0, have_pg = 0, rc = 1,
	    stats = 0, started;
	unsigned nrep = 0, rounds_done = 0;
	time_t t;

	cf_bench_name = "bench_fleet";
	if (parse_args(argc, argv, &o) != 0)
		return 2;
	signal(SIGPIPE, SIG_IGN);
	/* The SQLite path must stay on SQLite whatever the test harness says. */
	unsetenv("COFFER_TEST_BACKEND");
	memset(&f, 0, sizeof(f));
	memset(ak, 0, sizeof(ak));
	memset(res, 0, sizeof(res));
	cf_bench_init(&f.run);
	snprintf(wbuf, sizeof(wbuf), "%u", o.workers);
	if (RAND_bytes(f.msg, sizeof(f.msg)) != 1) {
		fprintf(stderr, "bench_fleet: RAND_bytes failed\n");
		goto out;
	}

	t = time(NULL);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S %Z", localtime(&t));
	printf("# bench_fleet %s  cpus %ld  HMAC-SHA256 of %d bytes, every call signed with an "
	       "API key  callers %u  window %.3g s  warm-up %.3g s  rounds %u  cofferd workers %u"
	       "  audit durability %s\n#",
	       date, sysconf(_SC_NPROCESSORS_ONLN), MSG_LEN, o.c.callers, o.c.seconds, o.c.warmup,
	       o.c.rounds, o.workers, o.c.durability);
	for (int i = 0; i < argc; i++)
		printf(" %s", argv[i]);
	printf("\n");
	fflush(stdout);

	/* Path A: one cofferd on SQLite and a token of its own. The daemon
	 * takes the token from SOFTHSM2_CONF, which the next token changes. */
	if (cf_test_token_create(&tok[P_SQLITE], "bench-sqlite") != 0)
		goto out;
	have_tok[P_SQLITE] = 1;
	snprintf(text, sizeof(text), "[audit]\ndurability = %s\n", o.c.durability);
	if (write_conf(tok[P_SQLITE].dir, "bench.conf", text, conf, sizeof(conf)) != 0)
		goto out;
	/* Started or not, a daemon that got a pid is stopped at the end. */
	started = cf_test_daemon_start(&tok[P_SQLITE], &sq, extra) == 0;
	have_sq = sq.pid > 0;
	if (!started) {
		show_log(sq.log);
		goto out;
	}

	/* Path B: a durable PostgreSQL, then three replicas on one token. */
	if (mkdtemp(pgdir) == NULL || chmod(pgdir, 0755) != 0) {
		fprintf(stderr, "bench_fleet: %s: %s\n", pgdir, strerror(errno));
		goto out;
	}
	have_pgdir = 1;
	snprintf(cmd, sizeof(cmd), "'%s' start '%s' --durable", pg_script(), pgdir);
	if (run_capture(cmd, sock, sizeof(sock)) != 0) {
		fprintf(stderr, "bench_fleet: '%s' failed\n", cmd);
		goto out;
	}
	have_pg = 1;
	snprintf(cmd, sizeof(cmd), "'%s' createdb '%s' %s", pg_script(), pgdir, PG_DB);
	if (run_capture(cmd, NULL, 0) != 0) {
		fprintf(stderr, "bench_fleet: '%s' failed\n", cmd);
		goto out;
	}
	if (cf_test_token_create(&tok[P_FLEET], "bench-fleet") != 0)
		goto out;
	have_tok[P_FLEET] = 1;
	for (nrep = 0; nrep < o.replicas;) {
		unsigned i = nrep;
		int r;

		/* Sockets, state dir and log of replica i in a directory of its
		 * own; the token (SOFTHSM2_CONF, URI, PIN) is the one shared. */
		rtok[i] = tok[P_FLEET];
		if (snprintf(rtok[i].dir, sizeof(rtok[i].dir), "%s/r%u", tok[P_FLEET].dir, i) >=
			    (int)sizeof(rtok[i].dir) ||
		    mkdir(rtok[i].dir, 0700) != 0) {
			fprintf(stderr, "bench_fleet: mkdir %s: %s\n", rtok[i].dir, strerror(errno));
			goto out;
		}
		snprintf(text, sizeof(text),
			 "[state]\nbackend = postgresql\ndsn = host=%s dbname=%s\nreplica = bench-r%u\n"
			 "[token]\nlock_file = %s/token.lock\n[audit]\ndurability = %s\n",
			 sock, PG_DB, i, tok[P_FLEET].dir, o.c.durability);
		if (write_conf(rtok[i].dir, "fleet.conf", text, conf, sizeof(conf)) != 0)
			goto out;
		r = cf_test_daemon_start(&rtok[i], &rep[i], extra);
		if (rep[i].pid > 0)
			nrep++;
		if (r != 0) {
			show_log(rep[i].log);
			goto out;
		}
	}

	/* The same key name and a principal with an API key on each path; on
	 * the fleet made once, through replica 0. */
	for (int p = 0; p < P__COUNT; p++) {
		const struct cf_test_daemon *d = p == P_FLEET ? &rep[0] : &sq;

		if (cf_bench_create_key(d, KEY_NAME, COFFER_KEY_HMAC_SHA256) != 0 ||
		    cf_bench_identity(d, &id, fpr, sizeof(fpr)) != 0 ||
		    cf_bench_api_key(d, &id, &ak[p], &secret[p], 0) != 0)
			goto out;
		coffer_bytes_free(&id);
	}
	if (signed_call_works(&sq, &ak[P_SQLITE], &secret[P_SQLITE], f.msg) != 0)
		goto out;
	for (unsigned i = 0; i < o.replicas; i++)
		if (signed_call_works(&rep[i], &ak[P_FLEET], &secret[P_FLEET], f.msg) != 0)
			goto out;
	if (pg_query(sock,
		     "SELECT version() || ' fsync=' || current_setting('fsync') || "
		     "' synchronous_commit=' || current_setting('synchronous_commit') || "
		     "' full_page_writes=' || current_setting('full_page_writes')",
		     info, sizeof(info)) == 0)
		printf("# %s\n", info);
	snprintf(cmd, sizeof(cmd),
		 "psql -X -A -t -q -h '%s' -d %s -c \"SELECT string_agg(relname || ' ' || "
		 "CASE relpersistence WHEN 'p' THEN 'logged' ELSE 'UNLOGGED' END, ', ' ORDER BY "
		 "relname) FROM pg_class WHERE relkind = 'r' AND relnamespace = "
		 "'public'::regnamespace\"",
		 sock, PG_DB);
	if (run_capture(cmd, info, sizeof(info)) == 0)
		printf("# tables of %s: %s\n", PG_DB, info);
	printf("# sqlite: %s (token %s)\n# fleet:", sq.service, tok[P_SQLITE].uri);
	for (unsigned i = 0; i < o.replicas; i++)
		printf(" %s", rep[i].service);
	printf(" on %s (token %s, one directory)\n", sock, tok[P_FLEET].uri);

	for (int p = 0; p < P__COUNT; p++)
		if ((f.client[p] = calloc(o.c.callers, sizeof(coffer_client *))) == NULL ||
		    connect_clients(p == P_FLEET ? rep : &sq, p == P_FLEET ? o.replicas : 1,
				    o.c.callers, &ak[p], &secret[p], f.client[p]) != 0)
			goto out;

	/* PostgreSQL publishes a backend's counters within about a second of
	 * its last transaction: let the set-up's settle before the first read. */
	cf_bench_sleep(1.2);
	stats = pg_counts(sock, &c0) == 0;
	cf_bench_print_header();
	fflush(stdout);
	f.run.arg = &f;
	f.run.call = fleet_call;
	f.run.callers = o.c.callers;
	f.run.seconds = 2 * o.c.seconds;     /* per path: two windows of a round */
	f.run.warmup = o.c.warmup;
	f.run.segment = o.c.seconds;
	f.run.servers[SRV_SQLITE] = sq.pid;
	for (unsigned i = 0; i < o.replicas; i++)
		f.run.servers[SRV_REPLICA0 + i] = rep[i].pid;
	f.run.servers[SRV_PG] = pg_pid(pgdir);
	f.run.nservers = SRV_REPLICA0 + o.replicas;
	if (f.run.servers[SRV_PG] <= 0) {
		fprintf(stderr, "bench_fleet: no postmaster.pid in %s/data\n", pgdir);
		goto out;
	}
	for (unsigned k = 0; k < o.c.rounds; k++) {
		struct cf_bench_row rows[2];
		unsigned long fleet_side;

		memset(rows, 0, sizeof(rows));
		f.swapped = (int)(k % 2);
		fleet_side = f.run.calls[P_FLEET ^ f.swapped];
		if (cf_bench_measure(&f.run, rows) != 0)
			goto out;
		fleet_calls += f.run.calls[P_FLEET ^ f.swapped] - fleet_side;
		for (int p = 0; p < P__COUNT; p++) {
			struct cf_bench_row *r = &res[k][p];
			double own = 0.0;

			*r = rows[p ^ f.swapped];
			if (p == P_SQLITE)
				snprintf(r->label, sizeof(r->label), "sqlite x1 signed");
			else
				snprintf(r->label, sizeof(r->label), "fleet pg x%u signed", o.replicas);
			/* Each path's own servers; the other path's idle ones
			 * count with the rest of the machine. */
			if (p == P_SQLITE)
				own = r->server_each[SRV_SQLITE];
			else
				for (unsigned i = SRV_PG; i < f.run.nservers; i++)
					own += r->server_each[i];
			r->other_cpu += (r->server_cpu - own) / r->window;
			r->server_cpu = own;
			cf_bench_print_row(r);
		}
		rounds_done++;
	}
	cf_bench_sleep(1.2);
	if (stats)
		stats = pg_counts(sock, &c1) == 0;
	print_verdict(res, rounds_done, o.replicas, stats ? &c0 : NULL, stats ? &c1 : NULL, fleet_calls);
	/* Measured after the rounds (not to load them), on the same server. */
	if (commit_floor(sock, &floor50, &floor99) == 0)
		printf("# floor: one lone durable commit on this server, measured now: p50 %.0f us, "
		       "p99 %.0f us. A nonce shared through PostgreSQL cannot be answered before "
		       "its commit, so no design adds less than that p50 to a signed call at one "
		       "caller; the added-p50 target (%.0f us) is %s this disk's floor\n", floor50,
		       floor99, TARGET_ADDED_P50_US,
		       floor50 > TARGET_ADDED_P50_US ? "BELOW" : "above");
	rc = 0;
out:
	fflush(stdout);
	for (int p = 0; p < P__COUNT; p++) {
		for (unsigned i = 0; f.client[p] != NULL && i < o.c.callers; i++)
			coffer_close(f.client[p][i]);
		free(f.client[p]);
		coffer_bytes_free(&secret[p]);
	}
	coffer_bytes_free(&id);
	while (nrep > 0) {
		nrep--;
		if (cf_test_daemon_stop(&rep[nrep]) != 0) {
			fprintf(stderr, "bench_fleet: replica %u did not exit 0; log %s\n", nrep,
				rep[nrep].log);
			rc = 1;
		}
	}
	if (have_sq && cf_test_daemon_stop(&sq) != 0) {
		fprintf(stderr, "bench_fleet: the SQLite cofferd did not exit 0; log %s\n", sq.log);
		rc = 1;
	}
	if (have_pg) {
		snprintf(cmd, sizeof(cmd), "'%s' stop '%s'", pg_script(), pgdir);
		if (run_capture(cmd, NULL, 0) != 0)
			fprintf(stderr, "bench_fleet: '%s' failed\n", cmd);
	}
	if (have_pgdir && getenv("COFFER_TEST_KEEP") == NULL) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", pgdir);
		if (system(cmd) != 0)
			fprintf(stderr, "bench_fleet: could not remove %s\n", pgdir);
	} else if (have_pgdir) {
		fprintf(stderr, "bench_fleet: kept %s\n", pgdir);
	}
	for (int p = 0; p < P__COUNT; p++)
		if (have_tok[p])
			cf_test_token_destroy(&tok[p]);
	cf_bench_fini(&f.run);
	return rc;
}
