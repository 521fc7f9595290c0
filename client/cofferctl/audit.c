/*
 * audit tail, and audit verify: by the daemon, or offline here from the
 * trail file, the seal key's public half and an anchor.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include <openssl/evp.h>

#include "cf_audit_verify.h"
#include "cf_hex.h"
#include "cf_status.h"
#include "cofferctl.h"

int
cmd_audit_tail(struct ctl *ctl, const struct opts *o)
{
	coffer_client *c = NULL;
	char **lines = NULL;
	size_t n = 0;
	int r, rc;

	if ((rc = connect_to(ctl, 1, &c)) != EXIT_OK)
		return rc;
	if ((r = coffer_audit_tail(c, o->count, &lines, &n)) != COFFER_OK) {
		rc = fail(r);
	} else {
		/* The records are JSON already: one per line, or an array. */
		if (ctl->json)
			fputc('[', stdout);
		for (size_t i = 0; i < n; i++) {
			if (ctl->json && i)
				fputc(',', stdout);
			put_safe(stdout, lines[i]);
			if (!ctl->json)
				fputc('\n', stdout);
		}
		if (ctl->json)
			fputs("]\n", stdout);
		rc = flush_stdout();
	}
	coffer_audit_lines_free(lines, n);
	coffer_close(c);
	return rc;
}

/* The verdict line of a broken trail (unless --json) and the exit code. */
static int
audit_verdict(const struct ctl *ctl, int ok, uint64_t first_bad, const char *reason)
{
	int rc;

	if (!ok && !ctl->json) {
		printf("audit trail BROKEN at record %" PRIu64 ": ", first_bad);
		put_safe(stdout, reason);
		fputc('\n', stdout);
	}
	rc = flush_stdout();
	return rc == EXIT_OK && !ok ? EXIT_FAILED : rc;
}

/* The anchor of `replica` in a PostgreSQL state (read only), as
 * cf_audit_anchor_read reads it from a SQLite one. */
static int
anchor_read_pg(const char *dsn, const char *replica, struct cf_audit_anchor *out)
{
	const char *params[1] = { replica };
	char text[128], msg[512];
	PGconn *c = PQconnectdb(dsn);
	PGresult *res = NULL;
	int r;

	if (PQstatus(c) != CONNECTION_OK) {
		snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
		r = cf_error(CF_E_UNAVAILABLE, "cannot read the audit anchor: PostgreSQL "
			     "unreachable: %s", (cf_oneline(msg), msg));
		goto out;
	}
	res = PQexecParams(c, "SELECT seq, chain, clean, time FROM audit_anchor WHERE replica = $1",
			   1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(res));
		r = cf_error(CF_E_IO, "cannot read the audit anchor: %s", (cf_oneline(msg), msg));
		goto out;
	}
	if (PQntuples(res) == 0) {
		r = cf_error(CF_E_NOT_FOUND, "no audit anchor of replica %s (never anchored, or "
			     "another name: [state] replica)", replica);
		goto out;
	}
	snprintf(text, sizeof(text), "%s:%s", PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1));
	if ((r = cf_audit_anchor_parse(text, out)) != CF_OK) {
		r = cf_error(CF_E_IO, "the audit anchor of replica %s is malformed", replica);
		goto out;
	}
	out->clean = strcmp(PQgetvalue(res, 0, 2), "0") != 0;
	out->time = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
out:
	PQclear(res);
	PQfinish(c);
	return r;
}

/* audit verify --file: the trail checked here, with the seal key's public
 * half and the anchor (from the state store, or noted by the auditor); no
 * daemon, no token. */
static int
audit_verify_offline(struct ctl *ctl, const struct opts *o)
{
	struct cf_audit_verify_opts vo;
	struct cf_audit_anchor an;
	struct cf_audit_report rep;
	EVP_PKEY *pub = NULL;
	char anchor_text[128] = "none", chain[65];
	int r, rc = EXIT_USAGE;

	memset(&vo, 0, sizeof(vo));
	if (o->public_key == NULL) {
		usage_error("audit verify --file needs --public-key PEM (the daemon writes it to "
		    "<state_dir>/audit-seal.pub)", NULL);
		goto out;
	}
	if ((o->state_db != NULL) + (o->anchor != NULL) + (o->state_dsn != NULL) > 1) {
		usage_error("give one of --state-db, --state-dsn and --anchor", NULL);
		goto out;
	}
	if ((o->state_dsn != NULL) != (o->replica != NULL)) {
		usage_error("--state-dsn and --replica go together (the replica whose trail "
		    "this is)", NULL);
		goto out;
	}
	if (o->anchor != NULL && cf_audit_anchor_parse(o->anchor, &an) != CF_OK) {
		bad_value("--anchor", o->anchor, cf_error_detail());
		goto out;
	}
	rc = EXIT_FAILED;
	if ((r = cf_audit_pubkey_load(o->public_key, &pub)) != CF_OK ||
	    (o->state_db != NULL && (r = cf_audit_anchor_read(o->state_db, &an)) != CF_OK) ||
	    (o->state_dsn != NULL &&
	     (r = anchor_read_pg(o->state_dsn, o->replica, &an)) != CF_OK)) {
		errmsg("audit verify", cf_error_detail());
		goto out;
	}
	vo.pub = pub;
	if (o->state_db != NULL || o->state_dsn != NULL || o->anchor != NULL) {
		vo.anchor = &an;
		vo.exact = o->anchor == NULL && an.clean;
		cf_hex_encode(an.chain, 32, chain);
		snprintf(anchor_text, sizeof(anchor_text), "record %" PRIu64 " (%s)", an.seq,
		    o->anchor != NULL ? "given" : an.clean ? "clean stop" :
		    "daemon running, or stopped without a clean stop");
	}
	if ((r = cf_audit_verify_file(o->file, &vo, &rep)) != CF_OK) {
		errmsg("audit verify", cf_error_detail());
		goto out;
	}
	if (ctl->json) {
		printf("{\"ok\":%s,\"records\":%" PRIu64 ",\"seals\":%" PRIu64
		    ",\"unchecked\":%" PRIu64 ",\"unsealed\":%" PRIu64 ",\"torn\":%lld"
		    ",\"first_bad\":%" PRIu64 ",\"anchor\":", rep.ok ? "true" : "false",
		    rep.records, rep.seals, rep.unchecked, rep.unsealed, (long long)rep.torn,
		    rep.first_bad);
		if (vo.anchor != NULL)
			printf("{\"seq\":%" PRIu64 ",\"chain\":\"%s\",\"clean\":%s}", an.seq,
			    chain, an.clean ? "true" : "false");
		else
			fputs("null", stdout);
		fputs(",\"reason\":", stdout);
		put_json_str(stdout, rep.reason);
		fputs("}\n", stdout);
	} else if (rep.ok) {
		printf("audit trail intact: %" PRIu64 " records, %" PRIu64 " seals verified "
		    "offline; anchor: %s\n", rep.records, rep.seals, anchor_text);
		if (vo.anchor == NULL)
			printf("note: no anchor given (--state-db, --state-dsn or --anchor): a cut tail or an "
			    "older copy of the file cannot be told apart\n");
		if (rep.unsealed > 0)
			printf("note: the last %" PRIu64 " records are not sealed yet\n",
			    rep.unsealed);
		if (rep.unchecked > 0)
			printf("note: %" PRIu64 " older HMAC seals can only be checked by the daemon "
			    "(cofferctl audit verify without --file)\n", rep.unchecked);
		if (rep.torn > 0)
			printf("note: the file ends in a torn record (%lld bytes): the daemon died "
			    "while writing it and cuts it at its next start\n", (long long)rep.torn);
	}
	rc = audit_verdict(ctl, rep.ok, rep.first_bad, rep.reason);
out:
	EVP_PKEY_free(pub);
	return rc;
}

int
cmd_audit_verify(struct ctl *ctl, const struct opts *o)
{
	struct coffer_audit_report rep;
	coffer_client *c = NULL;
	int r, rc;

	if (o->file != NULL)
		return audit_verify_offline(ctl, o);
	if (o->public_key != NULL || o->state_db != NULL || o->anchor != NULL ||
	    o->state_dsn != NULL || o->replica != NULL)
		return usage_error("--public-key, --state-db, --state-dsn, --replica and --anchor "
		    "go with --file", NULL);
	if ((rc = connect_to(ctl, 1, &c)) != EXIT_OK)
		return rc;
	if ((r = coffer_audit_verify(c, &rep)) != COFFER_OK) {
		rc = fail(r);
	} else {
		if (ctl->json) {
			printf("{\"ok\":%s,\"records\":%" PRIu64 ",\"seals\":%" PRIu64
			    ",\"first_bad\":%" PRIu64 ",\"reason\":", rep.ok ? "true" : "false",
			    rep.records, rep.seals, rep.first_bad);
			put_json_str(stdout, rep.reason);
			fputs("}\n", stdout);
		} else if (rep.ok) {
			printf("audit trail intact: %" PRIu64 " records, %" PRIu64 " seals verified "
			    "by the daemon\n", rep.records, rep.seals);
		}
		rc = audit_verdict(ctl, rep.ok, rep.first_bad, rep.reason);
	}
	coffer_close(c);
	return rc;
}

static void
token_info_json(const struct coffer_token_info *ti)
{
	fputs("{\"label\":", stdout);
	put_json_str(stdout, ti->label);
	fputs(",\"manufacturer\":", stdout);
	put_json_str(stdout, ti->manufacturer);
	fputs(",\"model\":", stdout);
	put_json_str(stdout, ti->model);
	fputs(",\"module\":", stdout);
	put_json_str(stdout, ti->module);
	printf(",\"mechanisms\":%u,\"rng\":%s,\"session_copies\":%s,\"key_types\":[",
	       ti->mechanisms, ti->rng ? "true" : "false", ti->session_copies ? "true" : "false");
	for (size_t i = 0; i < ti->n_key_types; i++) {
		const struct coffer_key_type_support *k = &ti->key_types[i];

		printf("%s{\"type\":\"%s\",\"generate\":%s,\"import\":%s,\"use\":%s,"
		       "\"missing\":", i ? "," : "", coffer_key_type_name(k->type),
		       k->can_generate ? "true" : "false", k->can_import ? "true" : "false",
		       k->can_use ? "true" : "false");
		put_json_str(stdout, k->missing);
		fputc('}', stdout);
	}
	fputs("],\"unavailable\":[", stdout);
	for (size_t i = 0; i < ti->n_unavailable; i++) {
		if (i)
			fputc(',', stdout);
		put_json_str(stdout, ti->unavailable[i]);
	}
	fputs("]}\n", stdout);
}

/* token info: the one AdminService call that describes the token itself. */
int
cmd_token_info(struct ctl *ctl, const struct opts *o)
{
	struct coffer_token_info ti;
	coffer_client *c = NULL;
	int r, rc;

	(void)o;
	if ((rc = connect_to(ctl, 1, &c)) != EXIT_OK)
		return rc;
	r = coffer_token_info(c, &ti);
	coffer_close(c);
	if (r != COFFER_OK)
		return fail(r);
	if (ctl->json) {
		token_info_json(&ti);
		return flush_stdout();
	}
	fputs("token:          ", stdout);
	put_safe(stdout, ti.label);
	fputs(" (", stdout);
	put_safe(stdout, ti.manufacturer);
	fputs(" ", stdout);
	put_safe(stdout, ti.model);
	fputs(")\nmodule:         ", stdout);
	put_safe(stdout, ti.module);
	printf("\nmechanisms:     %u listed; RNG %s; session copies %s\n", ti.mechanisms,
	       ti.rng ? "yes" : "no", ti.session_copies ? "yes" : "no (keys run on token objects)");
	printf("%-12s %-8s %-6s %-4s %s\n", "KEY TYPE", "GENERATE", "IMPORT", "USE", "MISSING");
	for (size_t i = 0; i < ti.n_key_types; i++) {
		const struct coffer_key_type_support *k = &ti.key_types[i];

		printf("%-12s %-8s %-6s %-4s ", coffer_key_type_name(k->type),
		       k->can_generate ? "yes" : "no",
		       k->can_import ? "yes" : k->type >= COFFER_KEY_HMAC_SHA256 ? "no" : "-",
		       k->can_use ? "yes" : "no");
		put_safe(stdout, k->missing);
		fputc('\n', stdout);
	}
	for (size_t i = 0; i < ti.n_unavailable; i++) {
		fputs("unavailable:    ", stdout);
		put_safe(stdout, ti.unavailable[i]);
		fputc('\n', stdout);
	}
	return flush_stdout();
}
