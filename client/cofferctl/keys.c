/*
 * key create, import, list, show, rotate and pubkey; a key's metadata as
 * text or JSON (also what the lifecycle commands print).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cofferctl.h"

static void
put_key_json(FILE *f, const struct coffer_key_info *k)
{
	fputs("{\"name\":", f);
	put_json_str(f, k->name);
	fprintf(f, ",\"type\":\"%s\",\"purpose\":\"%s\",\"primary_version\":%" PRIu32
	    ",\"exportable\":%s,\"create_time\":%" PRId64,
	    coffer_key_type_name(k->type), coffer_purpose_name(k->purpose),
	    k->primary_version, k->exportable ? "true" : "false", k->create_time);
	put_ops_json(f, "allowed_operations", k->allowed_operations);
	fprintf(f, ",\"min_version\":%" PRIu32 ",\"min_verify_version\":%" PRIu32
	    ",\"rotation_period\":%" PRId64 ",\"next_rotation_time\":%" PRId64,
	    k->min_version, k->min_verify_version, k->rotation_period, k->next_rotation_time);
	fputs(",\"versions\":[", f);
	for (size_t i = 0; i < k->nversions; i++)
		fprintf(f, "%s{\"version\":%" PRIu32 ",\"state\":\"%s\",\"create_time\":%"
		    PRId64 ",\"destroy_time\":%" PRId64 "}", i ? "," : "", k->versions[i].version,
		    coffer_version_state_name(k->versions[i].state),
		    k->versions[i].create_time, k->versions[i].destroy_time);
	fputs("]}", f);
}

static int
put_key(const struct ctl *ctl, const struct coffer_key_info *k)
{
	if (ctl->json) {
		put_key_json(stdout, k);
		fputc('\n', stdout);
		return flush_stdout();
	}
	fputs("name:        ", stdout);
	put_safe(stdout, k->name);
	printf("\ntype:        %s\npurpose:     %s\nprimary:     %" PRIu32
	    "\nexportable:  %s\ncreated:     ", coffer_key_type_name(k->type),
	    coffer_purpose_name(k->purpose), k->primary_version,
	    k->exportable ? "yes" : "no");
	put_time(stdout, k->create_time);
	fputs("\noperations: ", stdout);
	if (k->allowed_operations == 0)
		fputs("all of its purpose", stdout);
	for (int op = COFFER_OP_SIGN; op <= COFFER_OP_GET_PUBLIC_KEY; op++)
		if (k->allowed_operations & COFFER_OP_BIT(op))
			printf("%s ", coffer_operation_name((enum coffer_operation)op));
	printf("\nminimums:    new operations >= %" PRIu32 ", verify/unwrap >= %" PRIu32,
	    k->min_version ? k->min_version : 1,
	    k->min_verify_version ? k->min_verify_version : 1);
	fputs("\nrotation:    ", stdout);
	if (k->rotation_period == 0) {
		fputs("manual", stdout);
	} else {
		printf("every %" PRId64 " s, next ", k->rotation_period);
		put_time(stdout, k->next_rotation_time);
	}
	fputs("\nversions:\n", stdout);
	for (size_t i = 0; i < k->nversions; i++) {
		const struct coffer_key_version *v = &k->versions[i];

		printf("  %-8" PRIu32 " %-18s created ", v->version,
		    coffer_version_state_name(v->state));
		put_time(stdout, v->create_time);
		if (v->state == COFFER_VERSION_DESTROY_SCHEDULED ||
		    v->state == COFFER_VERSION_DESTROYED) {
			fputs(v->state == COFFER_VERSION_DESTROYED ? ", destroyed " :
			    ", to be destroyed at ", stdout);
			put_time(stdout, v->destroy_time);
		}
		fputs(v->version == k->primary_version ? "  (primary)\n" : "\n", stdout);
	}
	return flush_stdout();
}

static int
call_create_key(coffer_client *c, const struct opts *o, struct job *j)
{
	struct coffer_create_opts co = { j->type, 0, o->have_op_all ? 0 : o->ops,
	    o->period };

	return coffer_create_key_opts(c, o->args[0], &co, &j->key);
}

static int
call_import_key(coffer_client *c, const struct opts *o, struct job *j)
{
	int r;

	r = coffer_import_key(c, o->args[0], j->type, j->in.data, j->in.len, 0, &j->key);
	coffer_bytes_free(&j->in);
	return r;
}

static int
call_get_key(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_get_key(c, o->args[0], &j->key);
}

static int
call_rotate_key(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_rotate_key(c, o->args[0], &j->key);
}

int
put_job_key(const struct ctl *ctl, const struct opts *o, const struct job *j)
{
	(void)o;
	return put_key(ctl, j->key);
}

int
cmd_key_create(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	job_init(&j);
	if (o->type == NULL)
		return usage_error("key create needs --type TYPE", NULL);
	if (coffer_key_type_parse(o->type, &j.type) != COFFER_OK)
		return bad_value("--type", o->type, coffer_error_message());
	return run_job(ctl, o, 1, call_create_key, put_job_key, &j);
}

int
cmd_key_import(struct ctl *ctl, const struct opts *o)
{
	struct job j;
	int rc;

	job_init(&j);
	if (o->type == NULL || o->in == NULL)
		return usage_error("key import needs --type TYPE and --in FILE|-", NULL);
	if (coffer_key_type_parse(o->type, &j.type) != COFFER_OK)
		return bad_value("--type", o->type, coffer_error_message());
	if ((rc = read_input(o->in, 64u << 10, &j.in)) != EXIT_OK)
		return rc;
	return run_job(ctl, o, 1, call_import_key, put_job_key, &j);
}

static int
call_list_keys(coffer_client *c, const struct opts *o, struct job *j)
{
	(void)o;
	return coffer_list_keys(c, &j->list);
}

static int
put_list(const struct ctl *ctl, const struct opts *o, const struct job *j)
{
	const struct coffer_key_list *l = j->list;

	(void)o;
	if (ctl->json) {
		fputs("{\"keys\":[", stdout);
		for (size_t i = 0; i < l->nkeys; i++) {
			if (i > 0)
				fputc(',', stdout);
			put_key_json(stdout, &l->keys[i]);
		}
		fputs("]}\n", stdout);
	} else {
		printf("%-32s %-12s %-8s %8s %9s %s\n", "NAME", "TYPE", "PURPOSE",
		    "PRIMARY", "VERSIONS", "EXPORTABLE");
		for (size_t i = 0; i < l->nkeys; i++) {
			const struct coffer_key_info *k = &l->keys[i];

			put_safe(stdout, k->name);
			printf("%*s %-12s %-8s %8" PRIu32 " %9zu %s\n",
			    (int)(strlen(k->name) < 32 ? 32 - strlen(k->name) : 0), "",
			    coffer_key_type_name(k->type), coffer_purpose_name(k->purpose),
			    k->primary_version, k->nversions, k->exportable ? "yes" : "no");
		}
	}
	return flush_stdout();
}

int
cmd_key_list(struct ctl *ctl, const struct opts *o)
{
	return run_call(ctl, o, o->admin, call_list_keys, put_list);
}

int
cmd_key_show(struct ctl *ctl, const struct opts *o)
{
	return run_call(ctl, o, o->admin, call_get_key, put_job_key);
}

int
cmd_key_rotate(struct ctl *ctl, const struct opts *o)
{
	return run_call(ctl, o, 1, call_rotate_key, put_job_key);
}

static int
call_get_public_key(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_get_public_key(c, o->args[0], o->version, &j->pk);
}

static int
put_pubkey(const struct ctl *ctl, const struct opts *o, const struct job *j)
{
	const struct coffer_public_key *pk = j->pk;
	int der = o->der || (o->format != NULL && strcmp(o->format, "der") == 0);
	int want_jwk = ctl->json || (o->format != NULL && strcmp(o->format, "jwk") == 0);
	const void *data = der ? (const void *)pk->der.data : (const void *)pk->pem;
	size_t len = der ? pk->der.len : strlen(pk->pem);
	char kid[160], *jwk = NULL;
	int rc;

	/* kid "<name>:<version>": what a verifier passes back as key and version. */
	snprintf(kid, sizeof(kid), "%s:%" PRIu32, o->args[0], pk->version);
	if (want_jwk && (rc = coffer_public_key_jwk(pk, kid, &jwk)) != COFFER_OK)
		return fail(rc);
	if (!ctl->json) {
		if (jwk != NULL) {
			size_t n = strlen(jwk);

			jwk[n] = '\n';   /* the terminating NUL becomes the newline */
			rc = write_output(o->out, jwk, n + 1, 0);
			free(jwk);
			return rc;
		}
		return write_output(o->out, data, len, 0);
	}
	printf("{\"type\":\"%s\",\"version\":%" PRIu32 ",\"jwk\":%s,\"pem\":",
	    coffer_key_type_name(pk->type), pk->version, jwk);
	free(jwk);
	put_json_str(stdout, pk->pem);
	fputc(',', stdout);
	if ((rc = put_json_b64(stdout, "der", pk->der.data, pk->der.len)) != EXIT_OK)
		return rc;
	fputs("}\n", stdout);
	return json_done(o->out, data, len);
}

int
cmd_key_pubkey(struct ctl *ctl, const struct opts *o)
{
	if (o->der && o->format != NULL && strcmp(o->format, "der") != 0)
		return usage_error("--der contradicts --format", o->format);
	return run_call(ctl, o, 0, call_get_public_key, put_pubkey);
}
