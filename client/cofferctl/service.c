/*
 * Questions about the daemon itself: its identity (to pin for sealed
 * sessions) and its health.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_session.h"
#include "cf_status.h"
#include "cofferctl.h"

/* ---- identity ---- */

int
cmd_identity(struct ctl *ctl, const struct opts *o)
{
	struct coffer_bytes der = { NULL, 0 };
	char fpr[80], *pem = NULL;
	coffer_client *c = NULL;
	int r, rc;

	if ((rc = connect_to(ctl, o->admin, &c)) != EXIT_OK)
		return rc;
	if ((r = coffer_get_identity(c, &der, fpr, sizeof(fpr))) != COFFER_OK) {
		rc = fail(r);
		goto out;
	}
	if ((r = cf_spki_pem(der.data, der.len, &pem)) != CF_OK) {
		errmsg("the daemon's identity key", cf_error_detail());
		rc = EXIT_FAILED;
		goto out;
	}
	if (o->out != NULL && !is_std(o->out) &&
	    (rc = write_output(o->out, pem, strlen(pem), 0)) != EXIT_OK)
		goto out;
	if (ctl->json) {
		printf("{\"fingerprint\":\"%s\",\"pem\":\"", fpr);
		for (const char *p = pem; *p; p++) {
			if (*p == '\n')
				fputs("\\n", stdout);
			else
				putchar(*p);
		}
		printf("\"}\n");
	} else {
		printf("%s\n", fpr);
		if (o->out == NULL || is_std(o->out))
			fputs(pem, stdout);
	}
	rc = flush_stdout();
 out:
	free(pem);
	coffer_bytes_free(&der);
	coffer_close(c);
	return rc;
}

/* ---- health ---- */

static int
call_health(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_health(c, o->service, &j->st);
}

static int
put_health(const struct ctl *ctl, const struct opts *o, const struct job *j)
{
	int rc;

	(void)o;
	if (ctl->json)
		printf("{\"status\":\"%s\"}\n", coffer_serving_status_name(j->st));
	else
		puts(coffer_serving_status_name(j->st));
	if ((rc = flush_stdout()) == EXIT_OK && j->st != COFFER_SERVING)
		rc = EXIT_FAILED;
	return rc;
}

int
cmd_health(struct ctl *ctl, const struct opts *o)
{
	return run_call(ctl, o, o->admin, call_health, put_health);
}
