/* fuzz_token.c — see fuzz_token.h. */
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_token.h"

static struct cf_test_token tok;
static cf_p11 *p11;

static void
cleanup(void)
{
	/* The token's files go; the module stays loaded (objects that still
	 * hold keys may be in use by a sanitizer's last report). */
	cf_test_token_destroy(&tok);
}

cf_p11 *
fuzz_token_open(const char *label, struct cf_test_token **t)
{
	int r;

	if (cf_test_token_create(&tok, label) != 0)
		exit(1);
	atexit(cleanup);
	if ((r = cf_p11_open(&tok.cfg, &p11)) != CF_OK) {
		fprintf(stderr, "fuzz: cf_p11_open: %s: %s\n", cf_status_name(r),
			cf_error_detail());
		exit(1);
	}
	if (t != NULL)
		*t = &tok;
	return p11;
}
