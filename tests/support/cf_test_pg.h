/*
 * cf_test_pg.h — a throw-away PostgreSQL server for C tests and benchmarks:
 * initdb in a new directory under /tmp, run as user postgres (the server
 * refuses root), Unix socket only (listen_addresses = ''), reached with
 * dsn "host=<dir>/sock dbname=postgres". A minimal private starter for the
 * replay record's tests until tests/support/pg_server.sh (being written
 * alongside) can replace it.
 */
#ifndef CF_TEST_PG_H
#define CF_TEST_PG_H

struct cf_test_pg {
	char dir[64];
	char dsn[160];
	int running;
};

/* initdb and start. durable: fsync and synchronous_commit on (for timing
 * commits); else fsync off (tests: the same semantics, faster). 0 or -1. */
int cf_test_pg_create(struct cf_test_pg *pg, int durable);
int cf_test_pg_stop(struct cf_test_pg *pg);    /* pg_ctl -m fast stop */
int cf_test_pg_crash(struct cf_test_pg *pg);   /* pg_ctl -m immediate stop: a crash */
int cf_test_pg_start(struct cf_test_pg *pg);   /* again, after a stop */
void cf_test_pg_destroy(struct cf_test_pg *pg); /* stop if running, remove */

#endif
