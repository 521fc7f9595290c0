/*
 * nonces_pg.c — the replay record's table in PostgreSQL, with group commit.
 *
 * Callers queue their claim and wait; whoever leads a batch takes
 * everything queued (up to BATCH_MAX), sends it as one transaction on a free
 * connection (LINKS of them) and answers each claim. While commits are being
 * flushed the next callers queue up, so the batch grows with the load.
 * A caller that finds no batch in flight sends its claim from its own
 * thread: one round trip, without the hand-over to a batcher thread and back
 * (two wake-ups on the critical path; bench_nonces_pg, one caller: p50
 * 0.21 ms against 0.32-0.34 with the hand-over). Otherwise the batcher
 * threads lead, and stay awake from one batch to the next: callers leading
 * whenever a connection was free cost 10-25% of the throughput at 8
 * callers, each batch waiting for a sleeping caller to wake up and lead it.
 *
 * Why one multi-row statement rather than one INSERT per claim in a
 * pipeline: a pipeline is one transaction, and any statement failing in it
 * aborts every other claim of the batch. Here a claim cannot fail on its
 * own: a taken nonce is not an error but a row missing from RETURNING
 * (ON CONFLICT ... DO UPDATE ... WHERE expired), and the two claims of one
 * statement that could collide ("cannot affect row a second time": the same
 * nonce twice in one batch) are merged before sending. What is left can
 * only fail for the whole batch (connection lost, server error), and then
 * every claim in it is answered UNAVAILABLE, none "fresh" or "replayed".
 * The statement travels in pipeline mode, INSERT and Sync in one write: the
 * Sync ends the statement's implicit transaction, and the server answers it
 * (PGRES_PIPELINE_SYNC) only once that transaction committed, so a batch
 * costs one round trip and one commit, and "fresh" is only said after it
 * (no BEGIN and COMMIT statements: measured, they cost PostgreSQL CPU per
 * batch for nothing).
 */
#include "nonces_pg.h"

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <openssl/crypto.h>

#include "cf_log.h"
#include "cf_status.h"
#include "iowatch.h"
#include "sqldb.h"
#include "sqldb_pg.h"

#define BATCH_MAX 512
/* Transactions in flight at once. With one, a caller arriving during a
 * commit waits for it to end before its own begins (up to two commits);
 * with two, another connection takes it at once, and the server flushes
 * concurrent commits together. More buys little (one WAL flush at a time). */
#define LINKS 2
#define BATCHERS 2
#define EXPIRE_BATCH 5000    /* rows per DELETE */
#define EXPIRE_ROUNDS 40     /* DELETEs per nonces_pg_expire (the sweep comes back) */
#define EXPIRE_SKEW_S 300    /* the clock skew between replicas tolerated (FLEET.md) */
#define MSG_MAX 200
#define TIMED_OUT "PostgreSQL did not answer"
#define GIVEN_UP "PostgreSQL does not answer (a statement was given up after its bound)"
/* Connection set-up and expiry (not on a call's path): their own bound. */
#define SETUP_WAIT_MS 10000

/* One transaction for the table and its index; the advisory lock orders
 * replicas starting together (CREATE ... IF NOT EXISTS is not safe against
 * a concurrent CREATE of the same name). A logged table: an unlogged one is
 * emptied by a server crash, which would forget every nonce. */
static const char SCHEMA_SQL[] =
	"BEGIN;"
	"SET LOCAL client_min_messages = warning;"   /* no "already exists" notices */
	"SELECT pg_advisory_xact_lock(7262865741106393857);"
	"CREATE TABLE IF NOT EXISTS coffer_nonces ("
	" h bytea PRIMARY KEY CHECK (octet_length(h) = 16),"
	" expires bigint NOT NULL);"
	"CREATE INDEX IF NOT EXISTS coffer_nonces_expires ON coffer_nonces (expires);"
	/* The largest [requests] window any replica has checked calls with
	 * (nonces_pg_set_window): every row is kept as long as it accepts the
	 * row's timestamp, whichever replica recorded it. */
	"CREATE TABLE IF NOT EXISTS coffer_nonce_window ("
	" one boolean PRIMARY KEY DEFAULT true CHECK (one),"
	" seconds bigint NOT NULL,"
	" floor bigint NOT NULL);"
	"INSERT INTO coffer_nonce_window VALUES (true, 0, 0) ON CONFLICT DO NOTHING;"
	"COMMIT";

/* Whether SCHEMA_SQL made everything already: names looked up, no lock
 * taken on the tables. */
static const char SCHEMA_PRESENT_SQL[] =
	"SELECT to_regclass('coffer_nonces') IS NOT NULL"
	" AND to_regclass('coffer_nonces_expires') IS NOT NULL"
	" AND to_regclass('coffer_nonce_window') IS NOT NULL";

/* $1: hashes (hex), $2: their expiries, $4: the windows they were computed
 * with, all sorted by hash; $3: now. Each expiry is lengthened to the
 * fleet's largest window (a raise holds the table meanwhile:
 * WINDOW_LOCK_SQL). A row comes back for each claim that took its key: a
 * new row, or one whose expiry had passed. Rows are taken in hash order,
 * the same order in every replica's batches, so that two batches waiting
 * on each other's rows cannot deadlock. */
static const char CLAIM_SQL[] =
	"INSERT INTO coffer_nonces AS t (h, expires)"
	" SELECT decode(u.h, 'hex'), u.e + greatest(0, w.seconds - u.w)"
	" FROM unnest($1::text[], $2::int8[], $4::int8[]) AS u(h, e, w), coffer_nonce_window w"
	" ORDER BY u.h"
	" ON CONFLICT (h) DO UPDATE SET expires = EXCLUDED.expires WHERE t.expires <= $3"
	" RETURNING encode(t.h, 'hex')";

/* The window, one transaction (nonces_pg_set_window): the fleet's largest
 * and its floor, locked; raised beyond it, the table is held (claims take
 * ROW EXCLUSIVE: one that read the old window would keep its row too
 * short), the live rows (and those kept for the skew) are kept longer by as
 * much ($1: the raise, $2: now - skew), and timestamps whose rows may be
 * swept already are refused from then on ($1: the window, $2: the floor;
 * nonces.c). */
static const char WINDOW_LOCK_SQL[] =
	"LOCK TABLE coffer_nonces IN SHARE ROW EXCLUSIVE MODE";
static const char WINDOW_READ_SQL[] =
	"SELECT seconds, floor FROM coffer_nonce_window WHERE one FOR UPDATE";
static const char WINDOW_KEEP_SQL[] =
	"UPDATE coffer_nonces SET expires = expires + $1::int8 WHERE expires > $2::int8";
static const char WINDOW_SET_SQL[] =
	"UPDATE coffer_nonce_window SET seconds = $1::int8, floor = $2::int8 WHERE one";

/* The outer "expires <= $1" is re-checked on a row that a concurrent claim
 * has just renewed, which then stays. */
static const char EXPIRE_SQL[] =
	"DELETE FROM coffer_nonces WHERE h IN (SELECT h FROM coffer_nonces"
	" WHERE expires <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED) AND expires <= $1";

/* A claim's answer, set by whoever sent its batch; its caller turns it into
 * a status (the detail text is per thread). */
enum verdict { V_TAKEN, V_FRESH, V_FAILED };

struct claim {
	uint8_t h[16];
	char hex[33];
	int64_t expires, now;
	unsigned window;         /* the window `expires` was computed with */
	enum verdict v;
	int done;
	char msg[MSG_MAX];       /* with V_FAILED */
	struct claim *next;
};

/* A connection (pipeline mode) and what sending a batch on it needs; used
 * by one leader (a caller or a batcher thread) at a time. */
struct link {
	struct nonces_pg *p;
	int busy;                        /* a batch is in flight on it (under mu) */
	PGconn *conn;
	int64_t warned;                  /* when a failed batch was last logged */
	char hexes[BATCH_MAX * 33 + 3];  /* the statement's array literals */
	char exps[BATCH_MAX * 21 + 3];
	char wins[BATCH_MAX * 11 + 3];
};

struct nonces_pg {
	char *dsn;
	pthread_mutex_t mu;
	pthread_cond_t work;     /* claims queued, or stop */
	pthread_cond_t answered; /* a batch ended: claims answered */
	struct claim *head, **tail;
	int stop;
	uint64_t batches, items;
	struct link ln[LINKS];
	pthread_t bt[BATCHERS];
	int nbt;                 /* batcher threads started */
	pthread_mutex_t xmu;
	PGconn *xconn;           /* the expiry sweep's */
};

/* prefix, then libpq's text on one line (cf_oneline). */
static void
pq_text(const char *prefix, const char *s, char *out, size_t len)
{
	size_t plen = (size_t)snprintf(out, len, "%s", prefix);

	if (plen >= len)
		return;
	snprintf(out + plen, len - plen, "%s", s != NULL ? s : "");
	cf_oneline(out + plen);
	if (out[plen] == '\0')
		snprintf(out + plen, len - plen, "no detail from libpq");
}

/* One set-up statement on c within SETUP_WAIT_MS: 1, or 0 with msg set.
 * With `value`, the first column of its first row (a boolean: 't' or 'f'). */
static int
setup_step(PGconn *c, int sent, ExecStatusType want, const char *what, char *msg, size_t len,
	   char *value)
{
	int late, ok;
	PGresult *res = sqldb_pg_collect(c, sent, SETUP_WAIT_MS, 0, &late);

	ok = PQresultStatus(res) == want && (value == NULL || PQntuples(res) > 0);
	if (ok && value != NULL)
		*value = PQgetvalue(res, 0, 0)[0];
	if (!ok && late)
		snprintf(msg, len, "%s in %d ms", TIMED_OUT, SETUP_WAIT_MS);
	else if (!ok && !sqldb_pg_lock_refusal(res, sqldb_pg_lock_ms(iowatch_limit()), msg, len))
		pq_text(what, PQerrorMessage(c), msg, len);
	PQclear(res);
	return ok;
}

/* A connection with the table in place, or NULL with msg set (a message
 * for "nonce record: %s"). Its lock waits end before a claim's bound
 * (sqldb_pg_lock_ms), with the server's answer: a table another session
 * holds is no server that hangs. The schema is made only where missing:
 * CREATE INDEX IF NOT EXISTS waits for the table's lock (a reconnection
 * waited 7-10 s behind a held table; found by a client written from the
 * documents alone). */
static PGconn *
connect_db(const char *dsn, int pipeline, char *msg, size_t len)
{
	int slot = iowatch_begin_remote(SQLDB_PG_WATCH);
	PGconn *c = sqldb_pg_connect(dsn, "nonces");
	char sql[48], present;

	iowatch_end(slot, c != NULL && PQstatus(c) == CONNECTION_OK ? IOWATCH_OK : IOWATCH_FAILED);

	if (c == NULL) {
		snprintf(msg, len, "PostgreSQL unreachable: out of memory");
		return NULL;
	}
	if (PQstatus(c) != CONNECTION_OK) {
		char prefix[64];

		snprintf(prefix, sizeof(prefix), "%s: ", sqldb_pg_connect_failed(c));
		pq_text(prefix, PQerrorMessage(c), msg, len);
		PQfinish(c);
		return NULL;
	}
	/* Bounded like any statement: the server may take the connection and
	 * then stop answering (SETUP_WAIT_MS: the schema's advisory lock may
	 * wait for another replica's). */
	snprintf(sql, sizeof(sql), "SET lock_timeout = %u", sqldb_pg_lock_ms(iowatch_limit()));
	if (!setup_step(c, PQsendQuery(c, sql), PGRES_COMMAND_OK, "PostgreSQL error: ", msg,
			len, NULL) ||
	    !setup_step(c, PQsendQuery(c, SCHEMA_PRESENT_SQL), PGRES_TUPLES_OK,
			"PostgreSQL error: ", msg, len, &present) ||
	    (present != 't' &&
	     !setup_step(c, PQsendQuery(c, SCHEMA_SQL), PGRES_COMMAND_OK,
			 "PostgreSQL cannot create table coffer_nonces: ", msg, len, NULL)))
		goto fail;
	if (pipeline) {
		if (!setup_step(c, PQsendPrepare(c, "claim", CLAIM_SQL, 4, NULL), PGRES_COMMAND_OK,
				"PostgreSQL error: ", msg, len, NULL))
			goto fail;
		if (PQenterPipelineMode(c) != 1) {
			pq_text("PostgreSQL error: ", PQerrorMessage(c), msg, len);
			goto fail;
		}
	}
	return c;
fail:
	PQfinish(c);
	return NULL;
}

/* An idle connection with something to read was closed by the server (a
 * shutdown or restart sends its notice, then EOF): never send a batch into
 * it, since a claim written to a dying connection has an unknown outcome. */
static int
conn_usable(PGconn *c)
{
	struct pollfd pfd = { .fd = PQsocket(c), .events = POLLIN };

	return PQstatus(c) == CONNECTION_OK && pfd.fd >= 0 && poll(&pfd, 1, 0) == 0;
}

static int
claim_cmp(const void *a, const void *b)
{
	return memcmp((*(struct claim *const *)a)->h, (*(struct claim *const *)b)->h, 16);
}

static int
hex_cmp(const void *key, const void *elem)
{
	return strcmp(key, (*(struct claim *const *)elem)->hex);
}


/* PQgetResult, waited for at most the state's bound: NULL with msg set when
 * the server did not answer in time. */
static PGresult *
awaited(PGconn *c, char *msg, size_t len)
{
	if (!sqldb_pg_await(c, iowatch_limit())) {
		snprintf(msg, len, "%s the claim in %u ms (a server that hangs: stopped, or its "
			 "disk)", TIMED_OUT, iowatch_limit());
		return NULL;
	}
	return PQgetResult(c);
}

static int
timed_out(const char *msg)
{
	return strncmp(msg, TIMED_OUT, strlen(TIMED_OUT)) == 0;
}

/* Send the unique claims b[0..k) (sorted) as one transaction. 1: committed,
 * b[i]->v set; 0: not committed, msg set, *retry if the server rolled it
 * back for a conflict that a new attempt resolves (deadlock, serialization). */
static int
send_batch(struct link *p, struct claim **b, size_t k, char *msg, size_t len, int *retry)
{
	const char *vals[4];
	char now[24];
	char *h = p->hexes, *e = p->exps, *w = p->wins;
	int64_t mn = b[0]->now;
	int committed = 0, slot;
	PGresult *res;

	*retry = 0;
	msg[0] = '\0';
	*h++ = '{';
	*e++ = '{';
	*w++ = '{';
	for (size_t i = 0; i < k; i++) {
		/* Claims of one batch were made within a few ms: the earliest
		 * "now" reuses no row that any of them would still call live. */
		if (b[i]->now < mn)
			mn = b[i]->now;
		h += sprintf(h, "%s%s", i ? "," : "", b[i]->hex);
		e += sprintf(e, "%s%lld", i ? "," : "", (long long)b[i]->expires);
		w += sprintf(w, "%s%u", i ? "," : "", b[i]->window);
		b[i]->v = V_TAKEN;
	}
	strcpy(h, "}");
	strcpy(e, "}");
	strcpy(w, "}");
	snprintf(now, sizeof(now), "%lld", (long long)mn);
	vals[0] = p->hexes;
	vals[1] = p->exps;
	vals[2] = now;
	vals[3] = p->wins;
	if (PQsendQueryPrepared(p->conn, "claim", 4, vals, NULL, NULL, 0) != 1 ||
	    PQpipelineSync(p->conn) != 1) {
		pq_text("PostgreSQL unreachable: ", PQerrorMessage(p->conn), msg, len);
		return 0;
	}
	/* The statement's result (ends with NULL), then the Sync's; each waited
	 * for at most the state's bound (iowatch.h), since a server that hangs
	 * would otherwise hold every caller of the batch. */
	slot = iowatch_begin_remote(SQLDB_PG_WATCH);
	while ((res = awaited(p->conn, msg, len)) != NULL) {
		ExecStatusType st = PQresultStatus(res);

		if (st == PGRES_TUPLES_OK) {
			for (int row = 0; row < PQntuples(res); row++) {
				struct claim **c = bsearch(PQgetvalue(res, row, 0), b, k,
							   sizeof(*b), hex_cmp);

				if (c != NULL)
					(*c)->v = V_FRESH;
			}
		} else if (st == PGRES_FATAL_ERROR && msg[0] == '\0') {
			const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

			if (!sqldb_pg_lock_refusal(res, sqldb_pg_lock_ms(iowatch_limit()), msg,
						   len))
				pq_text("PostgreSQL error: ", PQresultErrorMessage(res), msg, len);
			*retry = state != NULL && strncmp(state, "40", 2) == 0;
		}
		PQclear(res);
		if (PQstatus(p->conn) != CONNECTION_OK)
			break;
	}
	if (PQstatus(p->conn) == CONNECTION_OK && !timed_out(msg)) {
		/* Committed: the server answers the Sync after the commit. */
		res = awaited(p->conn, msg, len);
		if (PQresultStatus(res) == PGRES_PIPELINE_SYNC)
			committed = 1;
		else if (msg[0] == '\0')
			snprintf(msg, len, "PostgreSQL error: the pipeline lost its sync");
		PQclear(res);
	}
	/* Answered, even with an error: the server is not the one hanging. */
	iowatch_end(slot, PQstatus(p->conn) == CONNECTION_OK && !timed_out(msg) ?
		     IOWATCH_OK : IOWATCH_FAILED);
	if (PQstatus(p->conn) != CONNECTION_OK) {
		pq_text("PostgreSQL unreachable: ", PQerrorMessage(p->conn), msg, len);
		*retry = 0;
		return 0;
	}
	if (timed_out(msg)) {
		*retry = 0;     /* its outcome unknown: not sent again on this claim */
		return 0;
	}
	if (!committed && msg[0] == '\0')
		snprintf(msg, len, "PostgreSQL error: COMMIT did not succeed");
	return committed && msg[0] == '\0';
}

/* Answer every claim of b[0..k): set v (and msg). */
static void
run_batch(struct link *p, struct claim **b, size_t k)
{
	struct claim *u[BATCH_MAX];
	char msg[MSG_MAX];
	size_t nu = 0;
	int ok = 0, retry = 1;

	qsort(b, k, sizeof(*b), claim_cmp);
	/* The same nonce twice in one batch: the second is a replay of the
	 * first whatever the first's fate, and must not reach the statement. */
	for (size_t i = 0; i < k; i++)
		if (i == 0 || memcmp(b[i]->h, b[i - 1]->h, 16) != 0)
			u[nu++] = b[i];
	for (int attempt = 0; attempt < 3 && !ok && retry; attempt++) {
		if (p->conn != NULL && !conn_usable(p->conn)) {
			PQfinish(p->conn);
			p->conn = NULL;
		}
		/* Claims queued behind a batch that timed out: refused now, as
		 * new ones are, not after a connect_timeout each. */
		if (p->conn == NULL && iowatch_given_up(SQLDB_PG_WATCH)) {
			snprintf(msg, sizeof(msg), "%s; calls that need it are refused until it "
				 "answers", GIVEN_UP);
			break;
		}
		if (p->conn == NULL &&
		    (p->conn = connect_db(p->p->dsn, 1, msg, sizeof(msg))) == NULL)
			break;
		ok = send_batch(p, u, nu, msg, sizeof(msg), &retry);
		if (!ok) {
			/* Whatever went wrong, the next batch starts on a clean
			 * connection rather than one in an unknown pipeline state. */
			PQfinish(p->conn);
			p->conn = NULL;
		}
	}
	if (!ok) {
		/* One line in 10 s: a flood of refused calls is no flood of lines. */
		if (b[0]->now - p->warned >= 10) {
			cf_log_warn("nonce record: %s", msg);
			p->warned = b[0]->now;
		}
	}
	for (size_t i = 0, j = 0; i < k; i++) {
		if (!ok) {
			b[i]->v = V_FAILED;
			snprintf(b[i]->msg, sizeof(b[i]->msg), "%s", msg);
		} else if (j < nu && u[j] == b[i]) {
			j++;
		} else {
			b[i]->v = V_TAKEN;   /* a duplicate within the batch */
		}
	}
}

/* Under mu, with l free and claims queued: send what is queued (up to
 * BATCH_MAX) on l, answer it, wake the waiting callers (and a batcher if
 * more queued meanwhile). */
static void
lead(struct nonces_pg *p, struct link *l)
{
	struct claim *b[BATCH_MAX];
	size_t k = 0;

	while (p->head != NULL && k < BATCH_MAX) {
		b[k++] = p->head;
		p->head = p->head->next;
	}
	if (p->head == NULL)
		p->tail = &p->head;
	l->busy = 1;
	pthread_mutex_unlock(&p->mu);
	run_batch(l, b, k);
	pthread_mutex_lock(&p->mu);
	for (size_t i = 0; i < k; i++)
		b[i]->done = 1;
	l->busy = 0;
	p->batches++;
	p->items += k;
	pthread_cond_broadcast(&p->answered);
	if (p->head != NULL)     /* queued meanwhile, and l is free again */
		pthread_cond_signal(&p->work);
}

/* Under mu: a connection no batch is using, or NULL. */
static struct link *
free_link(struct nonces_pg *p)
{
	for (int i = 0; i < LINKS; i++)
		if (!p->ln[i].busy)
			return &p->ln[i];
	return NULL;
}

/* Under mu: no batch in flight. */
static int
idle(struct nonces_pg *p)
{
	for (int i = 0; i < LINKS; i++)
		if (p->ln[i].busy)
			return 0;
	return 1;
}

static void *
batcher(void *arg)
{
	struct nonces_pg *p = arg;
	struct link *l;

	pthread_mutex_lock(&p->mu);
	while (!p->stop) {
		if (p->head != NULL && (l = free_link(p)) != NULL)
			lead(p, l);
		else
			pthread_cond_wait(&p->work, &p->mu);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int
nonces_pg_open(const char *dsn, struct nonces_pg **out)
{
	struct nonces_pg *p = calloc(1, sizeof(*p));
	char msg[MSG_MAX];
	int r, e;

	if (p == NULL)
		return cf_nomem();
	pthread_mutex_init(&p->mu, NULL);
	pthread_mutex_init(&p->xmu, NULL);
	pthread_cond_init(&p->work, NULL);
	pthread_cond_init(&p->answered, NULL);
	p->tail = &p->head;
	if ((p->dsn = strdup(dsn)) == NULL) {
		r = cf_nomem();
		goto fail;
	}
	if ((p->xconn = connect_db(dsn, 0, msg, sizeof(msg))) == NULL) {
		r = cf_error(CF_E_UNAVAILABLE, "nonce record: %s", msg);
		goto fail;
	}
	for (int i = 0; i < LINKS; i++) {
		p->ln[i].p = p;
		if ((p->ln[i].conn = connect_db(dsn, 1, msg, sizeof(msg))) == NULL) {
			r = cf_error(CF_E_UNAVAILABLE, "nonce record: %s", msg);
			goto fail;
		}
	}
	for (; p->nbt < BATCHERS; p->nbt++) {
		if ((e = pthread_create(&p->bt[p->nbt], NULL, batcher, p)) != 0) {
			r = cf_error(CF_E_INTERNAL, "nonce record: cannot start a batcher thread: %s",
				     strerror(e));
			goto fail;
		}
	}
	*out = p;
	return CF_OK;
fail:
	nonces_pg_close(p);
	return r;
}

void
nonces_pg_close(struct nonces_pg *p)
{
	if (p == NULL)
		return;
	/* No claim is in flight: the daemon closes it after its calls ended. */
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	pthread_cond_broadcast(&p->work);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->nbt; i++)
		pthread_join(p->bt[i], NULL);
	for (int i = 0; i < LINKS; i++)
		PQfinish(p->ln[i].conn);
	PQfinish(p->xconn);
	/* The connection string may hold a password ([state] dsn_file). */
	if (p->dsn != NULL)
		OPENSSL_cleanse(p->dsn, strlen(p->dsn));
	free(p->dsn);
	pthread_cond_destroy(&p->work);
	pthread_cond_destroy(&p->answered);
	pthread_mutex_destroy(&p->mu);
	pthread_mutex_destroy(&p->xmu);
	free(p);
}

int
nonces_pg_claim(struct nonces_pg *p, const uint8_t h[16], int64_t expires, unsigned window,
		int64_t now)
{
	static const char digits[] = "0123456789abcdef";
	struct claim c;

	/* A server that hangs: refused at once rather than each claim waiting the
	 * bound out; the store's next statement in time clears it. */
	if (iowatch_given_up(SQLDB_PG_WATCH))
		return cf_error(CF_E_UNAVAILABLE, "nonce record: %s; calls that need it are "
				"refused until it answers", GIVEN_UP);
	memset(&c, 0, sizeof(c));
	memcpy(c.h, h, 16);
	for (int i = 0; i < 16; i++) {
		c.hex[2 * i] = digits[h[i] >> 4];
		c.hex[2 * i + 1] = digits[h[i] & 15];
	}
	c.expires = expires;
	c.window = window;
	c.now = now;
	pthread_mutex_lock(&p->mu);
	*p->tail = &c;
	p->tail = &c.next;
	/* Alone (no batch in flight): sent from this thread. Otherwise the
	 * batchers, already awake and hot, take it with what else queues. */
	if (idle(p))
		lead(p, &p->ln[0]);      /* c among what it sends */
	else
		pthread_cond_signal(&p->work);
	while (!c.done)
		pthread_cond_wait(&p->answered, &p->mu);
	pthread_mutex_unlock(&p->mu);
	if (c.v == V_FRESH)
		return CF_OK;
	if (c.v == V_TAKEN)
		return cf_error(CF_E_EXISTS, "nonce already used: every call needs a new one");
	return cf_error(CF_E_UNAVAILABLE, "nonce record: %s", c.msg);
}

/* Under xmu: the sweep's and the window's connection, usable (a closed one
 * replaced); 0 with msg set when PostgreSQL cannot be reached. */
static int
xconn_ready(struct nonces_pg *p, char *msg, size_t len)
{
	if (p->xconn != NULL && !conn_usable(p->xconn)) {
		PQfinish(p->xconn);
		p->xconn = NULL;
	}
	return p->xconn != NULL || (p->xconn = connect_db(p->dsn, 0, msg, len)) != NULL;
}

int
nonces_pg_expire(struct nonces_pg *p, int64_t now, uint64_t *deleted)
{
	char msg[MSG_MAX], v[24], lim[24];
	const char *vals[2] = { v, lim };
	int r = CF_OK;

	*deleted = 0;
	/* The periodic work's (chores.h): never a wait on a server known not to
	 * answer. */
	if (iowatch_given_up(SQLDB_PG_WATCH))
		return cf_error(CF_E_UNAVAILABLE, "nonce record: %s; expiry waits until it "
				"answers", GIVEN_UP);
	/* Rows outlive their expiry by the clock skew replicas may have: one
	 * whose clock is behind the sweeper's still accepts the timestamp, and
	 * must find the nonce taken. */
	snprintf(v, sizeof(v), "%lld", (long long)(now - EXPIRE_SKEW_S));
	snprintf(lim, sizeof(lim), "%d", EXPIRE_BATCH);
	pthread_mutex_lock(&p->xmu);
	if (!xconn_ready(p, msg, sizeof(msg))) {
		r = cf_error(CF_E_UNAVAILABLE, "nonce record: %s", msg);
		goto out;
	}
	/* Each DELETE its own short transaction: never a long lock on rows a
	 * claim may want to renew. */
	for (int round = 0; round < EXPIRE_ROUNDS; round++) {
		int late;
		PGresult *res = sqldb_pg_collect(p->xconn, PQsendQueryParams(
			p->xconn, EXPIRE_SQL, 2, NULL, vals, NULL, NULL, 0), SETUP_WAIT_MS, 1,
			&late);
		unsigned long got;

		if (PQresultStatus(res) != PGRES_COMMAND_OK) {
			int up = PQstatus(p->xconn) == CONNECTION_OK;

			if (late)
				snprintf(msg, sizeof(msg), "%s in %d ms", TIMED_OUT, SETUP_WAIT_MS);
			else
				pq_text(up ? "PostgreSQL error: " : "PostgreSQL unreachable: ",
					PQerrorMessage(p->xconn), msg, sizeof(msg));
			r = cf_error(CF_E_UNAVAILABLE, "nonce record: %s", msg);
			PQclear(res);
			PQfinish(p->xconn);
			p->xconn = NULL;
			goto out;
		}
		got = strtoul(PQcmdTuples(res), NULL, 10);
		PQclear(res);
		*deleted += got;
		if (got < EXPIRE_BATCH)
			break;
	}
out:
	pthread_mutex_unlock(&p->xmu);
	return r;
}

/* One statement of the window's transaction on xconn: its result (NULL
 * with msg set on failure; then the connection is dropped). */
static PGresult *
window_step(struct nonces_pg *p, const char *sql, int n, const char *const *vals,
	    ExecStatusType want, char *msg, size_t len)
{
	int late;
	PGresult *res = sqldb_pg_collect(p->xconn, PQsendQueryParams(p->xconn, sql, n, NULL, vals,
								      NULL, NULL, 0),
					 SETUP_WAIT_MS, 1, &late);

	if (PQresultStatus(res) == want)
		return res;
	if (late)
		snprintf(msg, len, "%s in %d ms", TIMED_OUT, SETUP_WAIT_MS);
	else
		pq_text("PostgreSQL error: ", PQerrorMessage(p->xconn), msg, len);
	PQclear(res);
	PQfinish(p->xconn);
	p->xconn = NULL;
	return NULL;
}

int
nonces_pg_set_window(struct nonces_pg *p, unsigned window, int64_t now, int64_t *floor)
{
	char msg[MSG_MAX], a[24], b[24];
	const char *vals[2] = { a, b };
	PGresult *res;
	int64_t old, fl;
	int r = CF_OK;

	pthread_mutex_lock(&p->xmu);
	if (!xconn_ready(p, msg, sizeof(msg)))
		goto fail;
	if ((res = window_step(p, "BEGIN", 0, NULL, PGRES_COMMAND_OK, msg, sizeof(msg))) == NULL)
		goto fail;
	PQclear(res);
	if ((res = window_step(p, WINDOW_READ_SQL, 0, NULL, PGRES_TUPLES_OK, msg,
			       sizeof(msg))) == NULL)
		goto fail;
	old = PQntuples(res) == 1 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
	fl = PQntuples(res) == 1 ? strtoll(PQgetvalue(res, 0, 1), NULL, 10) : 0;
	PQclear(res);
	if (window > old) {
		if ((res = window_step(p, WINDOW_LOCK_SQL, 0, NULL, PGRES_COMMAND_OK, msg,
				       sizeof(msg))) == NULL)
			goto fail;
		PQclear(res);
		if (now - old - EXPIRE_SKEW_S > fl)
			fl = now - old - EXPIRE_SKEW_S;
		snprintf(a, sizeof(a), "%lld", (long long)(window - old));
		snprintf(b, sizeof(b), "%lld", (long long)(now - EXPIRE_SKEW_S));
		if ((res = window_step(p, WINDOW_KEEP_SQL, 2, vals, PGRES_COMMAND_OK, msg,
				       sizeof(msg))) == NULL)
			goto fail;
		PQclear(res);
		snprintf(a, sizeof(a), "%u", window);
		snprintf(b, sizeof(b), "%lld", (long long)fl);
		if ((res = window_step(p, WINDOW_SET_SQL, 2, vals, PGRES_COMMAND_OK, msg,
				       sizeof(msg))) == NULL)
			goto fail;
		PQclear(res);
	}
	if ((res = window_step(p, "COMMIT", 0, NULL, PGRES_COMMAND_OK, msg, sizeof(msg))) == NULL)
		goto fail;
	PQclear(res);
	*floor = fl;
	pthread_mutex_unlock(&p->xmu);
	return CF_OK;
fail:
	r = cf_error(CF_E_UNAVAILABLE, "nonce record: the window: %s", msg);
	pthread_mutex_unlock(&p->xmu);
	return r;
}

void
nonces_pg_stats(struct nonces_pg *p, uint64_t *batches, uint64_t *items)
{
	pthread_mutex_lock(&p->mu);
	*batches = p->batches;
	*items = p->items;
	pthread_mutex_unlock(&p->mu);
}
