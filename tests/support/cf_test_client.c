#include "cf_test_client.h"

#include <stdio.h>

int
cf_test_clients(const struct cf_test_daemon *d, coffer_client **svc, coffer_client **adm)
{
	struct coffer_bytes spki = { NULL, 0 };
	coffer_client *s = NULL, *a = NULL;
	char fpr[80];
	int ok;

	ok = coffer_connect(d->service, 0, &s) == COFFER_OK &&
	     coffer_connect(d->admin, COFFER_CONNECT_ADMIN, &a) == COFFER_OK &&
	     coffer_get_identity(a, &spki, fpr, sizeof(fpr)) == COFFER_OK &&
	     coffer_pin_identity(s, spki.data, spki.len) == COFFER_OK &&
	     coffer_pin_identity(a, spki.data, spki.len) == COFFER_OK;
	coffer_bytes_free(&spki);
	if (!ok) {
		fprintf(stderr, "cannot make pinned clients of %s: %s\n", d->service,
			coffer_error_message());
		coffer_close(s);
		coffer_close(a);
		return -1;
	}
	*svc = s;
	*adm = a;
	return 0;
}

int
cf_test_suite_up(struct cf_test_token *tok, const char *label, struct cf_test_daemon *d,
		 coffer_client **svc, coffer_client **adm)
{
	if (cf_test_token_create_any(tok, label) != 0 || cf_test_daemon_start(tok, d, NULL) != 0)
		return -1;
	return cf_test_clients(d, svc, adm);
}

static void
close_clients(coffer_client **svc, coffer_client **adm)
{
	coffer_close(*svc);
	coffer_close(*adm);
	*svc = *adm = NULL;
}

int
cf_test_suite_restart(struct cf_test_token *tok, struct cf_test_daemon *d, coffer_client **svc,
		      coffer_client **adm)
{
	close_clients(svc, adm);
	if (cf_test_daemon_stop(d) != 0) {
		fprintf(stderr, "cofferd did not exit 0 when stopped for a restart\n");
		return -1;
	}
	if (cf_test_daemon_start(tok, d, NULL) != 0)
		return -1;
	return cf_test_clients(d, svc, adm);
}

void
cf_test_suite_down(struct cf_test_token *tok, struct cf_test_daemon *d, coffer_client **svc,
		   coffer_client **adm)
{
	close_clients(svc, adm);
	if (d->pid > 0 && cf_test_daemon_stop(d) != 0)
		fprintf(stderr, "cofferd did not exit 0\n");
	cf_test_token_destroy(tok);
}
