/*
 * A principal's API keys (add-key, rotate-secret, revoke-key, keys) and
 * whether it must sign its calls (set-auth). A new secret is shown once.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "cofferctl.h"

static void
put_api_key_json(FILE *f, const struct coffer_api_key *k)
{
	fputs("{\"id\":", f);
	put_json_str(f, k->id);
	fputs(",\"principal\":", f);
	put_json_str(f, k->principal);
	fprintf(f, ",\"create_time\":%" PRId64 ",\"revoke_time\":%" PRId64 ",\"secrets\":[",
	    k->create_time, k->revoke_time);
	for (size_t i = 0; i < k->nsecrets; i++)
		fprintf(f, "%s{\"generation\":%" PRIu32 ",\"create_time\":%" PRId64
		    ",\"expire_time\":%" PRId64 "}", i ? "," : "", k->secrets[i].generation,
		    k->secrets[i].create_time, k->secrets[i].expire_time);
	fputs("]}", f);
}

void
put_api_key_text(const struct coffer_api_key *k)
{
	fputs("  ", stdout);
	put_safe(stdout, k->id);
	if (k->revoke_time != 0) {
		fputs("  revoked ", stdout);
		put_time(stdout, k->revoke_time);
	}
	for (size_t i = 0; i < k->nsecrets; i++) {
		printf("  secret %" PRIu32 " ", k->secrets[i].generation);
		if (k->secrets[i].expire_time == 0) {
			fputs("(current)", stdout);
		} else {
			fputs("(until ", stdout);
			put_time(stdout, k->secrets[i].expire_time);
			fputc(')', stdout);
		}
	}
	fputc('\n', stdout);
}

/* A secret in hex on stdout, and a newline (no copy of it is made). */
static void
put_hex_line(const struct coffer_bytes *b)
{
	for (size_t i = 0; i < b->len; i++)
		printf("%02x", b->data[i]);
	fputc('\n', stdout);
}

/* principal add-key / rotate-secret: show the key and, once, the secret. */
static int
put_new_secret(const struct ctl *ctl, const struct opts *o, const struct coffer_api_key *k,
    const struct coffer_bytes *secret, const struct coffer_bytes *imported)
{
	const struct coffer_bytes *file = secret->len > 0 ? secret : imported;
	int r;

	if (secret->len == 0 && imported->len == 0) {
		/* A repeat answered from the idempotency record: no secret. The
		 * first answer may never have reached anyone (cofferd died after
		 * the commit): say which key, and how to get a secret for it. */
		fprintf(stderr, "cofferctl: the daemon answered a repeat of this request (same "
		    "idempotency key) for API key %s: its secret is in the first answer only, "
		    "which may have been lost; if nobody holds it, make a new one with "
		    "'cofferctl principal rotate-secret %s --overlap 0' or revoke the key with "
		    "'cofferctl principal revoke-key %s'\n", k->id, k->id, k->id);
		return EXIT_FAILED;
	}
	if (o->out != NULL &&
	    (r = coffer_write_api_key_file(o->out, k->id, file->data, file->len)) != COFFER_OK) {
		/* Never lose a secret that exists nowhere else: show it. */
		errmsg(NULL, coffer_error_message());
		if (secret->len > 0) {
			fprintf(stderr, "cofferctl: the secret of %s, shown only now:\n", k->id);
			put_hex_line(secret);
			flush_stdout();
		}
		return EXIT_FAILED;
	}
	if (ctl->json) {
		fputs("{\"key\":", stdout);
		put_api_key_json(stdout, k);
		if (secret->len > 0 && o->out == NULL) {
			fputc(',', stdout);
			if ((r = put_json_b64(stdout, "secret", secret->data, secret->len)) !=
			    EXIT_OK)
				return r;
		}
		fputs("}\n", stdout);
		return flush_stdout();
	}
	printf("id:     %s\n", k->id);
	if (secret->len > 0 && o->out == NULL) {
		fputs("secret: ", stdout);
		put_hex_line(secret);
		fprintf(stderr, "cofferctl: the secret is shown only this once: keep it now "
		    "(--out FILE writes a credentials file for --api-key)\n");
	} else if (o->out != NULL) {
		printf("credentials written to %s (mode 0600; use it with --api-key %s)\n", o->out,
		    o->out);
	}
	return flush_stdout();
}

static int
cmd_api_key_new(struct ctl *ctl, const struct opts *o, int rotate)
{
	struct coffer_bytes imp = { NULL, 0 }, secret = { NULL, 0 };
	struct coffer_api_key k;
	coffer_client *c = NULL;
	int r, rc;

	struct stat st;

	/* Checked before the daemon makes a secret that could not be saved. */
	if (o->out != NULL && lstat(o->out, &st) == 0) {
		fprintf(stderr, "cofferctl: %s exists; a credentials file is never replaced: choose "
		    "another name\n", o->out);
		return EXIT_INVALID;
	}
	if (o->import != NULL && (rc = read_input(o->import, 64, &imp)) != EXIT_OK)
		return rc;
	/* Empty, the call would ask the daemon to make a secret instead. */
	if (o->import != NULL && imp.len < 32) {
		fprintf(stderr, "cofferctl: %s holds %zu bytes; an imported secret is 32 to 64 "
		    "bytes\n", is_std(o->import) ? "stdin" : o->import, imp.len);
		rc = EXIT_INVALID;
		goto out;
	}
	if ((rc = connect_to(ctl, 1, &c)) != EXIT_OK)
		goto out;
	r = rotate ? coffer_api_key_rotate(c, o->args[0], o->overlap, imp.data, imp.len, &k,
			 &secret)
		   : coffer_api_key_create(c, o->args[0], imp.data, imp.len, &k, &secret);
	rc = r != COFFER_OK ? fail(r) : put_new_secret(ctl, o, &k, &secret, &imp);
out:
	coffer_bytes_free(&imp);
	coffer_bytes_free(&secret);
	coffer_close(c);
	return rc;
}

int
cmd_principal_add_key(struct ctl *ctl, const struct opts *o)
{
	return cmd_api_key_new(ctl, o, 0);
}

int
cmd_principal_rotate_secret(struct ctl *ctl, const struct opts *o)
{
	return cmd_api_key_new(ctl, o, 1);
}

int
cmd_principal_revoke_key(struct ctl *ctl, const struct opts *o)
{
	struct coffer_api_key k;
	coffer_client *c = NULL;
	int r, rc;

	if ((rc = connect_to(ctl, 1, &c)) != EXIT_OK)
		return rc;
	if ((r = coffer_api_key_revoke(c, o->args[0], &k)) != COFFER_OK) {
		rc = fail(r);
	} else {
		if (ctl->json)
			put_api_key_json(stdout, &k);
		else
			printf("%s revoked; its secrets are destroyed", k.id);
		fputc('\n', stdout);
		rc = flush_stdout();
	}
	coffer_close(c);
	return rc;
}

int
cmd_principal_set_auth(struct ctl *ctl, const struct opts *o)
{
	coffer_client *c = NULL;
	int r, rc, live = 0;

	if (o->uid_only == o->signed_only)
		return usage_error("principal set-auth needs --uid-only or --signed-only", NULL);
	if ((rc = connect_to(ctl, 1, &c)) != EXIT_OK)
		return rc;
	if ((r = coffer_principal_set_auth(c, o->args[0], o->signed_only, &live)) != COFFER_OK) {
		rc = fail(r);
	} else {
		if (ctl->json)
			printf("{\"name\":\"%s\",\"require_api_key\":%s,\"has_live_key\":%s}",
			    o->args[0], o->signed_only || live ? "true" : "false",
			    live ? "true" : "false");
		else if (o->signed_only)
			printf("%s must sign its calls", o->args[0]);
		else if (live)
			printf("%s may call with its uid only once its API keys are revoked; it "
			    "has a live one now", o->args[0]);
		else
			printf("%s may call with its uid only", o->args[0]);
		fputc('\n', stdout);
		rc = flush_stdout();
	}
	coffer_close(c);
	return rc;
}

int
cmd_principal_keys(struct ctl *ctl, const struct opts *o)
{
	struct coffer_api_key *l = NULL;
	coffer_client *c = NULL;
	size_t n = 0;
	int r, rc;

	if ((rc = connect_to(ctl, 1, &c)) != EXIT_OK)
		return rc;
	if ((r = coffer_api_key_list(c, o->nargs ? o->args[0] : NULL, &l, &n)) != COFFER_OK) {
		rc = fail(r);
	} else {
		if (ctl->json)
			fputc('[', stdout);
		for (size_t i = 0; i < n; i++) {
			if (ctl->json) {
				if (i)
					fputc(',', stdout);
				put_api_key_json(stdout, &l[i]);
			} else {
				put_safe(stdout, l[i].principal);
				fputc(':', stdout);
				put_api_key_text(&l[i]);
			}
		}
		if (ctl->json)
			fputs("]\n", stdout);
		rc = flush_stdout();
	}
	free(l);
	coffer_close(c);
	return rc;
}
