/*
 * cf_test_caps.h — what the daemon's token can do (AdminService/GetTokenInfo),
 * for libcoffer suites that run on either token (COFFER_TEST_TOKEN). A case
 * that needs a capability the token lacks is skipped by capability, never by
 * token name: first the refusal is checked (FAILED_PRECONDITION with the
 * daemon's exact text), then "SKIP <case>: token lacks <capability> (<why>)"
 * is printed and kept for cf_test_caps_summary at the end of the run.
 */
#ifndef COFFER_CF_TEST_CAPS_H
#define COFFER_CF_TEST_CAPS_H

#include "coffer.h"

/* Read the token's capabilities through the admin client; 0, or -1 with
 * the reason printed. */
int cf_test_caps_load(coffer_client *adm);
/* 1 when the token can generate keys of `type`. Else asserts that CreateKey
 * of `type` is refused with COFFER_E_PRECONDITION and "this token cannot
 * generate <type> keys: <the reason GetTokenInfo gives>", prints and keeps
 * the skip of `what` ("<type> keys"), and returns 0. */
int cf_test_can_generate(coffer_client *adm, const char *what, enum coffer_key_type type);
/* The same for ImportKey ("<type> imports"): the refusal is "this token
 * cannot import <type> keys: <why>", where <why> is a reason GetTokenInfo
 * states (the type's or an unavailable feature's). */
int cf_test_can_import(coffer_client *adm, const char *what, enum coffer_key_type type);
/* For what GetTokenInfo does not describe (a signature scheme of a usable
 * key type): r is the call's result. 1 when it succeeded (COFFER_OK). Else
 * asserts that it was refused with COFFER_E_PRECONDITION naming a mechanism
 * "not supported by the token" and that GetTokenInfo reports this token as
 * lacking something (a token it calls complete must do everything), prints
 * and keeps the skip of `what` for `capability` with the daemon's text, and
 * returns 0. */
int cf_test_refused_by_token(int r, const char *what, const char *capability);
/* Every skip of the run, one line each, under "skipped by capability (N):". */
void cf_test_caps_summary(void);

#endif
