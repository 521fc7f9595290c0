/*
 * principal create, list, show, grant, revoke, limit and delete: the named
 * callers of the service socket, as text or JSON.
 */
#include <inttypes.h>
#include <stdlib.h>

#include "cofferctl.h"

static void
put_principal_json(FILE *f, const struct coffer_principal *p)
{
	fputs("{\"name\":", f);
	put_json_str(f, p->name);
	fputs(",\"uids\":[", f);
	for (size_t i = 0; i < p->nuids; i++)
		fprintf(f, "%s%" PRIu32, i ? "," : "", p->uids[i]);
	fputs("],\"gids\":[", f);
	for (size_t i = 0; i < p->ngids; i++)
		fprintf(f, "%s%" PRIu32, i ? "," : "", p->gids[i]);
	fputs("],\"grants\":[", f);
	for (size_t i = 0; i < p->ngrants; i++) {
		fprintf(f, "%s{\"key\":", i ? "," : "");
		put_json_str(f, p->grants[i].key_pattern);
		put_ops_json(f, "operations", p->grants[i].operations);
		fputc('}', f);
	}
	fputs("],\"rate_limits\":[", f);
	for (size_t i = 0; i < p->nlimits; i++)
		fprintf(f, "%s{\"operation\":\"%s\",\"per_second\":%g,\"burst\":%" PRIu32 "}",
		    i ? "," : "", coffer_operation_name(p->limits[i].operation),
		    p->limits[i].per_second, p->limits[i].burst);
	fprintf(f, "],\"create_time\":%" PRId64 "}", p->create_time);
}

static void
put_principal_text(const struct coffer_principal *p)
{
	fputs("name:        ", stdout);
	put_safe(stdout, p->name);
	fputs("\nuids:       ", stdout);
	for (size_t i = 0; i < p->nuids; i++)
		printf("%s%" PRIu32, i ? ", " : "", p->uids[i]);
	fputs("\ngids:       ", stdout);
	for (size_t i = 0; i < p->ngids; i++)
		printf("%s%" PRIu32, i ? ", " : "", p->gids[i]);
	fputs("\ncreated:     ", stdout);
	put_time(stdout, p->create_time);
	fputs("\ngrants:\n", stdout);
	for (size_t i = 0; i < p->ngrants; i++) {
		fputs("  ", stdout);
		put_safe(stdout, p->grants[i].key_pattern);
		fputs(":", stdout);
		for (int op = COFFER_OP_SIGN; op <= COFFER_OP_GET_PUBLIC_KEY; op++)
			if (p->grants[i].operations & COFFER_OP_BIT(op))
				printf(" %s", coffer_operation_name((enum coffer_operation)op));
		fputc('\n', stdout);
	}
	fputs("rate limits:\n", stdout);
	for (size_t i = 0; i < p->nlimits; i++)
		printf("  %s: %g/s, burst %" PRIu32 "\n",
		    coffer_operation_name(p->limits[i].operation), p->limits[i].per_second,
		    p->limits[i].burst);
}



/* Print the principal a command produced (with_keys: and its API keys), and
 * free it. */
static int
principal_done(const struct ctl *ctl, coffer_client *c, int r, struct coffer_principal *p,
    int with_keys)
{
	struct coffer_api_key *keys = NULL;
	size_t nkeys = 0;
	int rc;

	if (r == COFFER_OK && with_keys)
		r = coffer_api_key_list(c, p->name, &keys, &nkeys);
	if (r != COFFER_OK) {
		rc = fail(r);
	} else {
		if (ctl->json) {
			put_principal_json(stdout, p);
			fputc('\n', stdout);
		} else {
			put_principal_text(p);
		}
		if (with_keys && !ctl->json) {
			fputs("api keys:\n", stdout);
			for (size_t i = 0; i < nkeys; i++)
				put_api_key_text(&keys[i]);
		}
		rc = flush_stdout();
	}
	free(keys);
	coffer_principal_free(p);
	coffer_close(c);
	return rc;
}

static int
cmd_principal(struct ctl *ctl, const struct opts *o, int which)
{
	struct coffer_principal *p = NULL;
	coffer_client *c = NULL;
	const char *name = o->nargs > 0 ? o->args[0] : NULL;
	int rc, r;

	switch (which) {
	case 'c':
		if (o->nids[0] + o->nids[1] == 0)
			return usage_error("principal create needs --uid or --gid", NULL);
		break;
	case 'g':
		if (o->key_pattern == NULL || o->ops == 0)
			return usage_error("principal grant needs --key PATTERN and --op LIST", NULL);
		break;
	case 'r':
		if (o->key_pattern == NULL)
			return usage_error("principal revoke needs --key PATTERN", NULL);
		break;
	case 'l':
		if (!o->have_rate || (o->rate > 0.0 && o->burst == 0))
			return usage_error("principal limit needs --rate (0 removes) and --burst",
			    NULL);
		if (o->ops & (o->ops - 1))
			return usage_error("principal limit takes one --op (or none for all)", NULL);
		break;
	}
	if ((rc = connect_to(ctl, 1, &c)) != EXIT_OK)
		return rc;
	switch (which) {
	case 'c':
		r = coffer_principal_create(c, name, o->ids[0], o->nids[0], o->ids[1], o->nids[1], &p);
		break;
	case 's':
		r = coffer_principal_get(c, name, &p);
		break;
	case 'g':
		r = coffer_principal_grant(c, name, o->key_pattern, o->ops, &p);
		break;
	case 'r':
		r = coffer_principal_revoke(c, name, o->key_pattern, o->have_op_all ? 0 : o->ops, &p);
		break;
	case 'l': {
		enum coffer_operation op = COFFER_OP_ALL;

		for (int i = COFFER_OP_SIGN; i <= COFFER_OP_GET_PUBLIC_KEY && !o->have_op_all; i++)
			if (o->ops == COFFER_OP_BIT(i))
				op = (enum coffer_operation)i;
		r = coffer_principal_set_limit(c, name, op, o->rate, o->burst, &p);
		break;
	}
	default: /* 'd' */
		if ((r = coffer_principal_delete(c, name)) == COFFER_OK) {
			coffer_close(c);
			if (ctl->json)
				printf("{\"deleted\":true}\n");
			return flush_stdout();
		}
		break;
	}
	return principal_done(ctl, c, r, p, which == 's');
}

#define PRINCIPAL_CMD(fn, which)                                               \
	int fn(struct ctl *t, const struct opts *o) { return cmd_principal(t, o, which); }
PRINCIPAL_CMD(cmd_principal_create, 'c')
PRINCIPAL_CMD(cmd_principal_show, 's')
PRINCIPAL_CMD(cmd_principal_grant, 'g')
PRINCIPAL_CMD(cmd_principal_revoke, 'r')
PRINCIPAL_CMD(cmd_principal_limit, 'l')
PRINCIPAL_CMD(cmd_principal_delete, 'd')
#undef PRINCIPAL_CMD

int
cmd_principal_list(struct ctl *ctl, const struct opts *o)
{
	struct coffer_principal_list *l = NULL;
	coffer_client *c = NULL;
	int r, rc;

	(void)o;
	if ((rc = connect_to(ctl, 1, &c)) != EXIT_OK)
		return rc;
	if ((r = coffer_principal_list(c, &l)) != COFFER_OK) {
		rc = fail(r);
	} else {
		if (ctl->json)
			fputc('[', stdout);
		for (size_t i = 0; i < l->n; i++) {
			if (ctl->json) {
				if (i)
					fputc(',', stdout);
				put_principal_json(stdout, &l->principals[i]);
			} else {
				put_safe(stdout, l->principals[i].name);
				fputc('\n', stdout);
			}
		}
		if (ctl->json)
			fputs("]\n", stdout);
		rc = flush_stdout();
	}
	coffer_principal_list_free(l);
	coffer_close(c);
	return rc;
}
