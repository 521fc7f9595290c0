/*
 * Most commands are one job: connect to the service socket (or the admin
 * socket), make one libcoffer call, report its failure or print its result.
 */
#include <string.h>

#include "cofferctl.h"

void
job_init(struct job *j)
{
	memset(j, 0, sizeof(*j));
	j->st = COFFER_SERVING_UNKNOWN;
}

void
job_free(struct job *j)
{
	coffer_bytes_free(&j->in);
	coffer_bytes_free(&j->tag);
	coffer_bytes_free(&j->out);
	coffer_bytes_free(&j->pt);
	coffer_key_info_free(j->key);
	coffer_key_list_free(j->list);
	coffer_public_key_free(j->pk);
	j->key = NULL;
	j->list = NULL;
	j->pk = NULL;
}

int
connect_to(const struct ctl *ctl, int admin, coffer_client **c)
{
	int r;

	r = coffer_connect(admin ? ctl->admin_socket : ctl->socket,
	    admin ? COFFER_CONNECT_ADMIN : 0, c);
	if (r != COFFER_OK)
		return fail(r);
	if (ctl->timeout_ms >= 0)
		coffer_set_timeout(*c, (unsigned int)ctl->timeout_ms);
	if (ctl->no_peer_check)
		coffer_set_session_peer_check(*c, 0);
	/* One idempotency key per command: a change it makes happens once,
	 * even when libcoffer retries it across a daemon restart. */
	if ((admin && (r = coffer_set_idempotency_key(*c, ctl->idem_key)) != COFFER_OK) ||
	    (ctl->identity != NULL && (r = coffer_pin_identity_file(*c, ctl->identity)) !=
	    COFFER_OK) ||
	    (!admin && ctl->api_key != NULL &&
	    (r = coffer_set_api_key_file(*c, ctl->api_key)) != COFFER_OK)) {
		coffer_close(*c);
		*c = NULL;
		return fail(r);
	}
	return EXIT_OK;
}

/*
 * Connect to the service socket (admin: the admin socket), make the call,
 * report its failure or print its result; the job is freed in every case.
 */
int
run_job(const struct ctl *ctl, const struct opts *o, int admin, job_call call,
    job_put put, struct job *j)
{
	coffer_client *c = NULL;
	int r, rc;

	if ((rc = connect_to(ctl, admin, &c)) != EXIT_OK)
		goto out;
	if ((r = call(c, o, j)) != COFFER_OK) {
		rc = fail(r);
		/* The change may have been made, its answer lost (no answer in
		 * time, cofferd gone): only its key gets that answer without
		 * making it twice, and it was never shown (found from outside). */
		if (admin && rc == EXIT_UNAVAILABLE) {
			char hint[320];

			/* The key last: a ':' after it reads as part of it. */
			snprintf(hint, sizeof(hint), "if this command changes something, a retry "
				 "answers a change already made instead of making it again when it "
				 "carries this command's key: --idempotency-key %s", ctl->idem_key);
			errmsg(NULL, hint);
		}
		goto out;
	}
	rc = put(ctl, o, j);
 out:
	job_free(j);
	coffer_close(c);
	return rc;
}


/* run_job() with a fresh job: for commands that read nothing first. */
int
run_call(const struct ctl *ctl, const struct opts *o, int admin, job_call call, job_put put)
{
	struct job j;

	job_init(&j);
	return run_job(ctl, o, admin, call, put, &j);
}

/* sign, mac, wrap, unwrap and rewrap: read the input, then run the job. */
int
input_job(struct ctl *ctl, const struct opts *o, job_call call, job_put put,
    struct job *j)
{
	int rc;

	if ((rc = read_input(o->in, INPUT_MAX, &j->in)) != EXIT_OK)
		return rc;
	return run_job(ctl, o, 0, call, put, j);
}
