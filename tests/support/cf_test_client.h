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

#endif
