/*
 * cf_test_client.h — libcoffer clients for tests that run a cofferd from
 * cf_test_token: connected to the service and admin sockets and pinned to
 * the daemon's identity as its admin socket serves it (the operator's step;
 * test_session checks that identity against the token itself).
 */
#ifndef COFFER_CF_TEST_CLIENT_H
#define COFFER_CF_TEST_CLIENT_H

#include "cf_test_token.h"
#include "coffer.h"

/* *svc and *adm, both pinned. 0 on success; prints why and returns -1
 * otherwise (with nothing left open). */
int cf_test_clients(const struct cf_test_daemon *d, coffer_client **svc, coffer_client **adm);

/* What a libcoffer suite runs against: a throw-away token named `label`, a
 * cofferd on it and both clients. For CUnit's suite init: 0, or -1 with the
 * reason printed. */
int cf_test_suite_up(struct cf_test_token *tok, const char *label, struct cf_test_daemon *d,
		     coffer_client **svc, coffer_client **adm);

/* The clients closed, the daemon stopped and started again on the same
 * token, new clients: 0, or -1 (the daemon did not exit 0, did not start,
 * or no clients) with the reason printed. */
int cf_test_suite_restart(struct cf_test_token *tok, struct cf_test_daemon *d,
			  coffer_client **svc, coffer_client **adm);

/* For CUnit's suite clean: the clients closed, the daemon stopped (an exit
 * status other than 0 is printed), the token destroyed. */
void cf_test_suite_down(struct cf_test_token *tok, struct cf_test_daemon *d, coffer_client **svc,
			coffer_client **adm);

#endif
