/*
 * The data commands: sign, verify, mac, verify-mac, wrap, unwrap, rewrap
 * (one blob; rewrap_batch.c does files of them) and datakey.
 */
#include <inttypes.h>
#include <string.h>

#include "cofferctl.h"

static int
sign_opts(const struct opts *o, struct coffer_sign_opts *so)
{
	memset(so, 0, sizeof(*so));
	if (o->hash != NULL && coffer_hash_parse(o->hash, &so->hash) != COFFER_OK)
		return bad_value("--hash", o->hash, coffer_error_message());
	if (o->scheme != NULL && coffer_scheme_parse(o->scheme, &so->scheme) != COFFER_OK)
		return bad_value("--scheme", o->scheme, coffer_error_message());
	so->prehashed = o->prehashed;
	so->ecdsa_raw = o->raw;
	return EXIT_OK;
}

/* ---- sign, verify, mac, verify-mac ---- */

/* sign and mac: output bytes, and the version that made them. */
static int
put_tagged(const struct ctl *ctl, const char *field, const char *out,
    const struct coffer_bytes *b, uint32_t version)
{
	int rc;

	if (ctl->json) {
		if ((rc = put_json_open(field, b)) != EXIT_OK)
			return rc;
		printf(",\"version\":%" PRIu32 "}\n", version);
		return json_done(out, b->data, b->len);
	}
	if ((rc = write_output(out, b->data, b->len, 0)) != EXIT_OK)
		return rc;
	if (!is_std(out)) {
		printf("version: %" PRIu32 "\n", version);
		return flush_stdout();
	}
	return EXIT_OK;
}

static int
put_valid(const struct ctl *ctl, const struct opts *o, const struct job *j)
{
	int rc;

	(void)o;
	if (ctl->json)
		printf("{\"valid\":%s}\n", j->valid ? "true" : "false");
	else
		puts(j->valid ? "valid" : "invalid");
	if ((rc = flush_stdout()) != EXIT_OK)
		return rc;
	return j->valid ? EXIT_OK : EXIT_FAILED;
}

/*
 * verify and verify-mac: check --version and the signature or MAC file
 * `tag`, then read it and the input.
 */
static int
read_checked(const struct opts *o, const char *tag, const char *need,
    const char *both_stdin, struct job *j)
{
	int rc;

	if (!o->have_version || o->version == 0 || tag == NULL)
		return usage_error(need, NULL);
	if (is_std(tag) && is_std(o->in))
		return usage_error(both_stdin, NULL);
	if ((rc = read_input(tag, SIG_FILE_MAX, &j->tag)) != EXIT_OK)
		return rc;
	if ((rc = read_input(o->in, INPUT_MAX, &j->in)) != EXIT_OK)
		job_free(j);
	return rc;
}

static int
call_sign(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_sign(c, o->args[0], o->version, j->in.data, j->in.len, &j->so,
	    &j->out, &j->used);
}

static int
put_sig(const struct ctl *ctl, const struct opts *o, const struct job *j)
{
	return put_tagged(ctl, "signature", o->out, &j->out, j->used);
}

int
cmd_sign(struct ctl *ctl, const struct opts *o)
{
	struct job j;
	int rc;

	job_init(&j);
	if ((rc = sign_opts(o, &j.so)) != EXIT_OK)
		return rc;
	return input_job(ctl, o, call_sign, put_sig, &j);
}

static int
call_verify(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_verify(c, o->args[0], o->version, j->in.data, j->in.len, &j->so,
	    j->tag.data, j->tag.len, &j->valid);
}

int
cmd_verify(struct ctl *ctl, const struct opts *o)
{
	struct job j;
	int rc;

	job_init(&j);
	if ((rc = sign_opts(o, &j.so)) != EXIT_OK)
		return rc;
	if ((rc = read_checked(o, o->sig, "verify needs --version N (>= 1) and --sig FILE",
	    "--sig and the input cannot both be stdin", &j)) != EXIT_OK)
		return rc;
	return run_job(ctl, o, 0, call_verify, put_valid, &j);
}

static int
call_mac(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_mac(c, o->args[0], o->version, j->in.data, j->in.len, &j->out,
	    &j->used);
}

static int
put_mac(const struct ctl *ctl, const struct opts *o, const struct job *j)
{
	return put_tagged(ctl, "mac", o->out, &j->out, j->used);
}

int
cmd_mac(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	job_init(&j);
	return input_job(ctl, o, call_mac, put_mac, &j);
}

static int
call_verify_mac(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_verify_mac(c, o->args[0], o->version, j->in.data, j->in.len,
	    j->tag.data, j->tag.len, &j->valid);
}

int
cmd_verify_mac(struct ctl *ctl, const struct opts *o)
{
	struct job j;
	int rc;

	job_init(&j);
	if ((rc = read_checked(o, o->mac,
	    "verify-mac needs --version N (>= 1) and --mac FILE",
	    "--mac and the input cannot both be stdin", &j)) != EXIT_OK)
		return rc;
	return run_job(ctl, o, 0, call_verify_mac, put_valid, &j);
}

/* ---- wrap, unwrap, rewrap, datakey ---- */

/* wrap and rewrap output: the blob, or JSON with versions. */
static int
put_blob(const struct ctl *ctl, const struct opts *o, const struct coffer_bytes *ct,
    uint32_t version, const uint32_t *previous)
{
	int rc;

	if (!ctl->json)
		return write_output(o->out, ct->data, ct->len, 0);
	if ((rc = put_json_open("ciphertext", ct)) != EXIT_OK)
		return rc;
	printf(",\"version\":%" PRIu32, version);
	if (previous != NULL)
		printf(",\"previous_version\":%" PRIu32, *previous);
	fputs("}\n", stdout);
	return json_done(o->out, ct->data, ct->len);
}

static int
call_wrap(coffer_client *c, const struct opts *o, struct job *j)
{
	int r;

	r = coffer_wrap(c, o->args[0], j->in.data, j->in.len, o->ctx, o->nctx, &j->out,
	    &j->used);
	coffer_bytes_free(&j->in);
	return r;
}

static int
put_wrap(const struct ctl *ctl, const struct opts *o, const struct job *j)
{
	return put_blob(ctl, o, &j->out, j->used, NULL);
}

static int
call_unwrap(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_unwrap(c, o->args[0], j->in.data, j->in.len, o->ctx, o->nctx,
	    &j->out, &j->used);
}

static int
put_unwrap(const struct ctl *ctl, const struct opts *o, const struct job *j)
{
	int rc;

	if (!ctl->json)
		return write_output(o->out, j->out.data, j->out.len, 1);
	/* --out FILE takes the plaintext (0600), as datakey's --plaintext-out
	 * does: it stays out of the JSON (a terminal, a CI log). */
	if (!is_std(o->out)) {
		if ((rc = write_output(o->out, j->out.data, j->out.len, 1)) != EXIT_OK)
			return rc;
		printf("{\"version\":%" PRIu32 "}\n", j->used);
		return flush_stdout();
	}
	if ((rc = put_json_open("plaintext", &j->out)) != EXIT_OK)
		return rc;
	printf(",\"version\":%" PRIu32 "}\n", j->used);
	return flush_stdout();
}

static int
call_rewrap(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_rewrap(c, o->args[0], j->in.data, j->in.len, o->ctx, o->nctx,
	    &j->out, &j->used, &j->prev);
}

static int
put_rewrap(const struct ctl *ctl, const struct opts *o, const struct job *j)
{
	return put_blob(ctl, o, &j->out, j->used, &j->prev);
}

int
cmd_wrap(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	job_init(&j);
	return input_job(ctl, o, call_wrap, put_wrap, &j);
}

int
cmd_unwrap(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	job_init(&j);
	return input_job(ctl, o, call_unwrap, put_unwrap, &j);
}


int
cmd_rewrap(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	if (o->batch)
		return cmd_rewrap_batch(ctl, o);
	if (o->progress)
		return usage_error("--progress goes with --batch", NULL);
	job_init(&j);
	return input_job(ctl, o, call_rewrap, put_rewrap, &j);
}

static int
call_datakey(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_generate_data_key(c, o->args[0], o->length, o->ctx, o->nctx,
	    &j->out, o->plaintext_out != NULL ? &j->pt : NULL, &j->used);
}

static int
put_datakey(const struct ctl *ctl, const struct opts *o, const struct job *j)
{
	int want_pt = o->plaintext_out != NULL;
	int pt_in_json = want_pt && ctl->json && is_std(o->plaintext_out);
	int rc;

	if (want_pt && !pt_in_json &&
	    (rc = write_output(o->plaintext_out, j->pt.data, j->pt.len, 1)) != EXIT_OK)
		return rc;
	if (!ctl->json)
		return write_output(o->out, j->out.data, j->out.len, 0);
	if ((rc = put_json_open("ciphertext", &j->out)) != EXIT_OK)
		return rc;
	if (pt_in_json) {
		fputc(',', stdout);
		if ((rc = put_json_b64(stdout, "plaintext", j->pt.data, j->pt.len)) !=
		    EXIT_OK)
			return rc;
	}
	printf(",\"version\":%" PRIu32 "}\n", j->used);
	return json_done(o->out, j->out.data, j->out.len);
}

int
cmd_datakey(struct ctl *ctl, const struct opts *o)
{
	if (o->plaintext_out != NULL && is_std(o->plaintext_out) && !ctl->json &&
	    is_std(o->out))
		return usage_error("--plaintext-out - needs --out FILE or --json", NULL);
	return run_call(ctl, o, 0, call_datakey, put_datakey);
}
