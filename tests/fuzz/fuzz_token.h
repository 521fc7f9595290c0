/*
 * fuzz_token.h — a throw-away SoftHSM2 token for a fuzz target, made once
 * in LLVMFuzzerInitialize and removed at exit (tests/support/cf_test_token.c).
 */
#ifndef COFFER_FUZZ_TOKEN_H
#define COFFER_FUZZ_TOKEN_H

#include "cf_p11.h"
#include "cf_test_token.h"

/* Create the token and open it; exits the process on failure (a fuzz run
 * without its token would only measure error paths). */
cf_p11 *fuzz_token_open(const char *label, struct cf_test_token **tok);

#endif
