/*
 * cf_test_session.h — a sealed session with an in-process session manager,
 * the client's half of the handshake done here (as libcoffer does it, less
 * the check of the daemon's signature): for tests and fuzz targets that
 * drive the dispatcher without gRPC.
 */
#ifndef COFFER_CF_TEST_SESSION_H
#define COFFER_CF_TEST_SESSION_H

#include <stdint.h>

#include "cf_session.h"
#include "session.h"

/* A new session of caller uid/gid: its id and the client's keys
 * (cf_session_keys_free). CF_OK or the handshake's failure. */
int cf_test_session_up(session_mgr *sm, uint32_t uid, uint32_t gid,
		       uint8_t id[CF_SESSION_ID_LEN], cf_session_keys **keys);

#endif
