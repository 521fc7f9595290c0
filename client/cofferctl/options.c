/*
 * cofferctl's option parser. Every option is declared once in specs[]:
 * its name, whether it takes a value, and where the value goes (a field of
 * struct ctl for the global options, of struct opts for a command's own),
 * read as a flag, a string, a bounded number, or by its own function.
 * GNU getopt_long does the scanning: options and operands in any order,
 * --name=value or --name value, unambiguous abbreviations.
 */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "options.h"

#define TIMEOUT_MAX_MS          86400000u
/* getopt_long's value for option i: OPT_BASE + i, clear of any short option. */
#define OPT_BASE 0x100

/* How an option's value is read. */
enum opt_kind {
	K_HELP,         /* --help, -h: the caller prints the help */
	K_FLAG,         /* no value: the int field becomes 1 */
	K_STR,          /* the const char * field points at the value */
	K_U32,          /* the uint32_t field: a number in [min, max], else refused with why */
	K_PARSE,        /* parse() checks the value and stores it */
};

struct opt_spec {
	const char *name;
	int has_arg;            /* no_argument or required_argument */
	enum opt_kind kind;
	int global;             /* the field is in struct ctl, not struct opts */
	size_t field;           /* offsetof() the field the value goes to */
	size_t seen;            /* K_U32: 1 + offsetof() an int set when given; 0: none */
	uint32_t min, max;      /* K_U32 */
	const char *why;        /* K_U32: what a bad value is told */
	/* K_PARSE: target is the struct ctl or struct opts; an exit code. */
	int (*parse)(void *target, const struct opt_spec *s, const char *arg);
};

static int parse_timeout(void *, const struct opt_spec *, const char *);
static int parse_idem(void *, const struct opt_spec *, const char *);
static int parse_id(void *, const struct opt_spec *, const char *);
static int parse_op(void *, const struct opt_spec *, const char *);
static int parse_rate(void *, const struct opt_spec *, const char *);
static int parse_overlap(void *, const struct opt_spec *, const char *);
static int parse_long_duration(void *, const struct opt_spec *, const char *);
static int parse_next(void *, const struct opt_spec *, const char *);
static int parse_format(void *, const struct opt_spec *, const char *);
static int parse_context(void *, const struct opt_spec *, const char *);
static int parse_timestamp(void *, const struct opt_spec *, const char *);

#define OFF(f) offsetof(struct opts, f)
#define FLAG(n, f) { .name = n, .has_arg = no_argument, .kind = K_FLAG, .field = OFF(f) }
#define STR(n, f) { .name = n, .has_arg = required_argument, .kind = K_STR, .field = OFF(f) }
#define U32(n, f, lo, hi, w) { .name = n, .has_arg = required_argument, .kind = K_U32, \
	.field = OFF(f), .min = lo, .max = hi, .why = w }
#define CALL(n, fn) { .name = n, .has_arg = required_argument, .kind = K_PARSE, .parse = fn }
#define GFLAG(n, f) { .name = n, .has_arg = no_argument, .kind = K_FLAG, .global = 1, \
	.field = offsetof(struct ctl, f) }
#define GSTR(n, f) { .name = n, .has_arg = required_argument, .kind = K_STR, .global = 1, \
	.field = offsetof(struct ctl, f) }
#define GCALL(n, fn) { .name = n, .has_arg = required_argument, .kind = K_PARSE, .global = 1, \
	.parse = fn }

static const struct opt_spec specs[O__COUNT] = {
	[O_SOCKET] = GSTR("socket", socket),
	[O_ADMIN_SOCKET] = GSTR("admin-socket", admin_socket),
	[O_JSON] = GFLAG("json", json),
	[O_TIMEOUT] = GCALL("timeout", parse_timeout),
	[O_HELP] = { .name = "help", .has_arg = no_argument, .kind = K_HELP, .global = 1 },
	[O_IDENTITY] = GSTR("identity", identity),
	[O_API_KEY] = GSTR("api-key", api_key),
	[O_IDEM] = GCALL("idempotency-key", parse_idem),
	[O_NO_PEER_CHECK] = GFLAG("no-peer-check", no_peer_check),

	[O_TYPE] = STR("type", type),
	[O_IN] = STR("in", in),
	[O_OUT] = STR("out", out),
	[O_VERSION] = { .name = "version", .has_arg = required_argument, .kind = K_U32,
			.field = OFF(version), .seen = 1 + OFF(have_version), .min = 0,
			.max = VERSION_MAX, .why = "not a number from 0 to 1000000" },
	[O_DER] = FLAG("der", der),
	[O_HASH] = STR("hash", hash),
	[O_SCHEME] = STR("scheme", scheme),
	[O_RAW] = FLAG("raw", raw),
	[O_PREHASHED] = FLAG("prehashed", prehashed),
	[O_SIG] = STR("sig", sig),
	[O_MAC] = STR("mac", mac),
	[O_CONTEXT] = CALL("context", parse_context),
	[O_ADMIN] = FLAG("admin", admin),
	[O_SERVICE] = STR("service", service),
	[O_LENGTH] = U32("length", length, 0, 1024, "not a number of bytes (16, 24 or 32)"),
	[O_PLAINTEXT_OUT] = STR("plaintext-out", plaintext_out),
	[O_UID] = CALL("uid", parse_id),
	[O_GID] = CALL("gid", parse_id),
	[O_KEY] = STR("key", key_pattern),
	[O_OP] = CALL("op", parse_op),
	[O_RATE] = CALL("rate", parse_rate),
	[O_BURST] = U32("burst", burst, 1, 1000000, "not a number 1..1000000"),
	[O_OVERLAP] = CALL("overlap", parse_overlap),
	[O_IMPORT] = STR("import", import),
	[O_COUNT] = U32("count", count, 1, 1000, "not a number 1..1000"),
	[O_FORCE] = FLAG("force", force),
	[O_GRACE] = CALL("grace", parse_long_duration),
	[O_MIN_VERSION] = U32("min-version", min_version, 1, VERSION_MAX,
			      "not a number from 1 to 1000000"),
	[O_MIN_VERIFY] = U32("min-verify-version", min_verify, 1, VERSION_MAX,
			     "not a number from 1 to 1000000"),
	[O_KEEP_LAST] = U32("keep-last", keep_last, 1, VERSION_MAX,
			    "not a number from 1 to 1000000"),
	[O_PERIOD] = CALL("rotation-period", parse_long_duration),
	[O_NEXT] = CALL("next", parse_next),
	[O_FORMAT] = CALL("format", parse_format),
	[O_BATCH] = FLAG("batch", batch),
	[O_PROGRESS] = FLAG("progress", progress),
	[O_FILE] = STR("file", file),
	[O_PUBLIC_KEY] = STR("public-key", public_key),
	[O_STATE_DB] = STR("state-db", state_db),
	[O_STATE_DSN] = STR("state-dsn", state_dsn),
	[O_REPLICA] = STR("replica", replica),
	[O_ANCHOR] = STR("anchor", anchor),
	[O_UID_ONLY] = FLAG("uid-only", uid_only),
	[O_SIGNED_ONLY] = FLAG("signed-only", signed_only),
	[O_METHOD] = STR("method", method),
	[O_PATH] = STR("path", path),
	[O_QUERY] = STR("query", query),
	[O_BODY] = STR("body", body),
	[O_TIMESTAMP] = CALL("timestamp", parse_timestamp),
	[O_NONCE] = STR("nonce", nonce),
	[O_SIGNATURE] = STR("signature", signature),
};

/* "cofferctl: --NAME VALUE: why" and the hint; EXIT_USAGE. */
static int
refuse(const struct opt_spec *s, const char *arg, const char *why)
{
	char flag[32];

	snprintf(flag, sizeof(flag), "--%s", s->name);
	return bad_value(flag, arg, why);
}

int
parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
	char *end;
	unsigned long long v;

	if (s[0] < '0' || s[0] > '9')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

/* A duration: seconds, or a number with s, m, h or d; at most max seconds.
 * 0 or -1. */
static int
parse_duration(const char *arg, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long n;
	unsigned mult = 1;

	errno = 0;
	n = strtoull(arg, &end, 10);
	if (end != arg && *end != '\0' && end[1] == '\0')
		mult = *end == 's' ? 1 : *end == 'm' ? 60 : *end == 'h' ? 3600 :
		    *end == 'd' ? 86400 : 0;
	else if (end == arg || *end != '\0')
		mult = 0;
	if (arg[0] < '0' || arg[0] > '9' || errno != 0 || mult == 0 || n > max / mult)
		return -1;
	*out = (uint64_t)n * mult;
	return 0;
}

/* ---- the options read by their own function ---- */

static int
parse_timeout(void *target, const struct opt_spec *s, const char *arg)
{
	struct ctl *ctl = target;
	uint32_t v;

	if (parse_u32(arg, 0, TIMEOUT_MAX_MS, &v) != 0)
		return refuse(s, arg, "not a number of milliseconds (0 = none)");
	ctl->timeout_ms = (long)v;
	return EXIT_OK;
}

static int
parse_idem(void *target, const struct opt_spec *s, const char *arg)
{
	struct ctl *ctl = target;

	if (strlen(arg) < 8 || strlen(arg) >= sizeof(ctl->idem_key) ||
	    strspn(arg, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") !=
	    strlen(arg))
		return refuse(s, arg, "want 8..128 of A-Z a-z 0-9 . _ : -");
	snprintf(ctl->idem_key, sizeof(ctl->idem_key), "%s", arg);
	return EXIT_OK;
}

/* --uid or --gid: a user or group name, or a number. */
static int
parse_id(void *target, const struct opt_spec *s, const char *arg)
{
	struct opts *o = target;
	int gid = s == &specs[O_GID];
	size_t *nid = &o->nids[gid];
	struct passwd *pw = !gid ? getpwnam(arg) : NULL;
	struct group *gr = gid ? getgrnam(arg) : NULL;
	uint32_t v;

	if (*nid == 64)
		return usage_error("at most 64 --uid and 64 --gid", NULL);
	if (pw != NULL)
		v = (uint32_t)pw->pw_uid;
	else if (gr != NULL)
		v = (uint32_t)gr->gr_gid;
	else if (parse_u32(arg, 0, 0xfffffffeu, &v) != 0)
		return refuse(s, arg, "not a user/group name or number");
	o->ids[gid][(*nid)++] = v;
	return EXIT_OK;
}

/* --op LIST: names separated by commas, "all" for every operation. */
static int
parse_op(void *target, const struct opt_spec *s, const char *arg)
{
	struct opts *o = target;
	char buf[256], *save = NULL, *tok;
	enum coffer_operation op;

	if (snprintf(buf, sizeof(buf), "%s", arg) >= (int)sizeof(buf))
		goto bad;
	for (tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		if (coffer_operation_parse(tok, &op) != COFFER_OK)
			goto bad;
		if (op == COFFER_OP_ALL) {
			o->have_op_all = 1;
			o->ops |= COFFER_OPS_ALL;
		} else {
			o->ops |= COFFER_OP_BIT(op);
		}
	}
	if (o->ops != 0)
		return EXIT_OK;
 bad:
	return refuse(s, arg, "want a comma-separated list of sign, verify, mac, verify-mac, "
	    "wrap, unwrap, rewrap, generate-data-key, get-public-key, or all");
}

static int
parse_rate(void *target, const struct opt_spec *s, const char *arg)
{
	struct opts *o = target;
	char *end;

	errno = 0;
	o->rate = strtod(arg, &end);
	if (end == arg || *end != '\0' || !(o->rate >= 0.0 && o->rate <= 1e6))
		return refuse(s, arg, "not a number of calls per second, 0..1000000");
	/* 1e-400 reads as 0, which removes the limit: not what was asked. */
	if (errno == ERANGE)
		return refuse(s, arg, "too small to be told from 0 (which removes the limit); "
		    "the slowest rate is one a day, 0.0000116");
	o->have_rate = 1;
	return EXIT_OK;
}

static int
parse_overlap(void *target, const struct opt_spec *s, const char *arg)
{
	struct opts *o = target;
	uint64_t d;

	if (parse_duration(arg, 90ull * 86400, &d) != 0)
		return refuse(s, arg, "want a duration up to 90 days: seconds, or a number with "
		    "s, m, h or d");
	o->overlap = (uint32_t)d;
	return EXIT_OK;
}

/* --grace and --rotation-period: a duration up to ten years. */
static int
parse_long_duration(void *target, const struct opt_spec *s, const char *arg)
{
	struct opts *o = target;
	int grace = s == &specs[O_GRACE];
	uint64_t d;

	if (parse_duration(arg, 3650ull * 86400, &d) != 0)
		return refuse(s, arg, "want a duration: seconds, or a number with s, m, h or d "
		    "(e.g. 7d)");
	/* The request's 0 means the daemon's default, and the daemon keeps at
	 * least [keys] min_destroy_grace: no grace is not expressible, so "0"
	 * must not quietly mean 7 days. */
	if (grace && d == 0)
		return refuse(s, arg, "a grace period cannot be 0 (destruction always waits at "
		    "least [keys] min_destroy_grace, 1d by default); leave --grace out for the "
		    "daemon's default, [keys] destroy_grace");
	if (grace) {
		o->grace = (int64_t)d;
	} else {
		o->period = (int64_t)d;
		o->have_period = 1;
	}
	return EXIT_OK;
}

static int
parse_next(void *target, const struct opt_spec *s, const char *arg)
{
	struct opts *o = target;
	uint64_t d;
	int rel = arg[0] == '+';

	/* Absolute: plain seconds only ("30d" is not a time). */
	if ((!rel && arg[strspn(arg, "0123456789")] != '\0') ||
	    parse_duration(arg + rel, 3650ull * 86400 * (rel ? 1 : 30), &d) != 0)
		return refuse(s, arg, "want a Unix time in seconds, or +DURATION from now "
		    "(e.g. +1h)");
	o->next = rel ? (int64_t)time(NULL) + (int64_t)d : (int64_t)d;
	return EXIT_OK;
}

static int
parse_format(void *target, const struct opt_spec *s, const char *arg)
{
	struct opts *o = target;

	if (strcmp(arg, "pem") != 0 && strcmp(arg, "der") != 0 && strcmp(arg, "jwk") != 0)
		return refuse(s, arg, "want pem, der or jwk");
	o->format = arg;
	return EXIT_OK;
}

/* --context K=V: o->ctx has room for one per argument. */
static int
parse_context(void *target, const struct opt_spec *s, const char *arg)
{
	struct opts *o = target;
	const char *eq = strchr(arg, '=');
	char *k;

	if (eq == NULL || eq == arg)
		return refuse(s, arg, "want KEY=VALUE with a non-empty KEY");
	if ((k = strndup(arg, (size_t)(eq - arg))) == NULL) {
		errmsg(NULL, "out of memory");
		return EXIT_FAILED;
	}
	o->ctx[o->nctx].key = k;
	o->ctx[o->nctx].value = eq + 1;
	o->nctx++;
	return EXIT_OK;
}

/* --timestamp: Unix seconds, as a signed request's header carries them
 * (decimal, no sign); the daemon judges the window. */
static int
parse_timestamp(void *target, const struct opt_spec *s, const char *arg)
{
	struct opts *o = target;
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(arg, &end, 10);
	if (arg[0] < '0' || arg[0] > '9' || errno != 0 || *end != '\0' || v > INT64_MAX)
		return refuse(s, arg, "not a Unix time in seconds");
	o->timestamp = (int64_t)v;
	o->have_timestamp = 1;
	return EXIT_OK;
}

/* ---- the scan ---- */

/* Store one option's value where its spec says. An exit code, or
 * EXIT_HELP_DONE for --help. */
static int
apply(const struct opt_spec *s, struct ctl *ctl, struct opts *o, const char *arg)
{
	char *target = s->global ? (char *)ctl : (char *)o;
	uint32_t v;

	switch (s->kind) {
	case K_FLAG:
		*(int *)(target + s->field) = 1;
		return EXIT_OK;
	case K_STR:
		*(const char **)(target + s->field) = arg;
		return EXIT_OK;
	case K_U32:
		if (parse_u32(arg, s->min, s->max, &v) != 0)
			return refuse(s, arg, s->why);
		*(uint32_t *)(target + s->field) = v;
		if (s->seen != 0)
			*(int *)(target + s->seen - 1) = 1;
		return EXIT_OK;
	case K_PARSE:
		return s->parse(target, s, arg);
	default:
		return EXIT_HELP_DONE;
	}
}

/* Scan argv for the options in `allow` (o: NULL when all are global). */
static int
scan(struct ctl *ctl, struct opts *o, unsigned long long allow, const char *shortopts,
    int argc, char **argv)
{
	struct option lo[O__COUNT + 1];
	size_t n = 0;
	int ch, rc;

	memset(lo, 0, sizeof(lo));
	for (int i = 0; i < O__COUNT; i++)
		if (allow & B(i))
			lo[n++] = (struct option){ specs[i].name, specs[i].has_arg, NULL,
				OPT_BASE + i };
	opterr = 0;
	while ((ch = getopt_long(argc, argv, shortopts, lo, NULL)) != -1) {
		if (ch == '?' || ch == ':')
			return usage_error("unknown option, or option without its argument",
			    argv[optind - 1]);
		rc = apply(&specs[ch == 'h' ? O_HELP : ch - OPT_BASE], ctl, o, optarg);
		if (rc != EXIT_OK)
			return rc;
	}
	return EXIT_OK;
}

int
opts_parse_global(struct ctl *ctl, int argc, char **argv)
{
	/* "+": stop at the command; its own options follow it. */
	return scan(ctl, NULL, COMMON, "+h", argc, argv);
}

void
opts_free(struct opts *o)
{
	for (size_t i = 0; i < o->nctx; i++)
		free((char *)o->ctx[i].key);
	free(o->ctx);
	o->ctx = NULL;
	o->nctx = 0;
}

int
opts_parse(struct ctl *ctl, const struct cmd *cmd, int argc, char **argv, struct opts *o)
{
	int rc;

	memset(o, 0, sizeof(*o));
	if ((o->ctx = calloc((size_t)argc, sizeof(*o->ctx))) == NULL) {
		errmsg(NULL, "out of memory");
		return EXIT_FAILED;
	}
	optind = 0;   /* GNU: start a new scan of this argv */
	rc = scan(ctl, o, cmd->allow | COMMON, "h", argc, argv);
	if (rc == EXIT_OK) {
		o->args = argv + optind;
		o->nargs = argc - optind;
		if (o->nargs < cmd->min_args || o->nargs > cmd->max_args) {
			fprintf(stderr, "cofferctl: wrong number of arguments\nusage: cofferctl "
			    "%s\n", cmd->synopsis);
			rc = EXIT_USAGE;
		}
	}
	if (rc != EXIT_OK)
		opts_free(o);
	return rc;
}
