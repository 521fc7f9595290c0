/*
 * cofferctl — the Coffer command-line client, built on libcoffer only.
 *
 * Every command is one function that takes the parsed options, makes one
 * libcoffer call (two for none) and prints the result. Errors are printed
 * once, here, as "cofferctl: <reason>", and turned into the exit codes listed
 * in usage(). Secret material (import material, wrap input, unwrap and data
 * key output) lives only in buffers that are wiped before they are freed, and
 * is printed only as the command's own output.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cf_audit_verify.h"
#include "cf_hex.h"
#include "cf_status.h"
#include "coffer.h"

#define DEFAULT_SOCKET          "/run/coffer/service.sock"
#define DEFAULT_ADMIN_SOCKET    "/run/coffer/admin.sock"
/* Inputs above this are refused before anything is sent. */
#define INPUT_MAX               COFFER_MAX_MESSAGE
#define SIG_FILE_MAX            (64u << 10)
#define TIMEOUT_MAX_MS          86400000u
#define VERSION_MAX             1000000u

enum exit_code {
	EXIT_OK = 0,
	EXIT_FAILED = 1,        /* operation failed, or verification said invalid */
	EXIT_USAGE = 2,
	EXIT_DENIED = 3,
	EXIT_NOT_FOUND = 4,
	EXIT_UNAVAILABLE = 5,
	EXIT_INVALID = 6
};

/* Returned by parse_opts when --help was printed. */
#define EXIT_HELP_DONE (-1)

struct ctl {
	const char *socket;
	const char *admin_socket;
	const char *identity;   /* PEM file of the daemon identity to pin */
	const char *api_key;    /* credentials file: sign service-socket calls with it */
	char idem_key[129];     /* this command's idempotency key (given or made) */
	int json;
	int no_peer_check;      /* --no-peer-check */
	long timeout_ms;        /* -1 = library default */
};

enum opt_id {
	O_SOCKET, O_ADMIN_SOCKET, O_JSON, O_TIMEOUT, O_HELP, O_IDENTITY,
	O_TYPE, O_IN, O_OUT, O_VERSION, O_DER, O_HASH, O_SCHEME,
	O_RAW, O_PREHASHED, O_SIG, O_MAC, O_CONTEXT, O_ADMIN, O_SERVICE, O_LENGTH,
	O_PLAINTEXT_OUT, O_UID, O_GID, O_KEY, O_OP, O_RATE, O_BURST, O_API_KEY, O_OVERLAP,
	O_IMPORT, O_COUNT, O_IDEM, O_FORCE, O_GRACE, O_MIN_VERSION, O_MIN_VERIFY, O_KEEP_LAST,
	O_PERIOD, O_NEXT, O_FORMAT, O_BATCH, O_PROGRESS, O_FILE, O_PUBLIC_KEY, O_STATE_DB,
	O_ANCHOR, O_NO_PEER_CHECK, O_UID_ONLY, O_SIGNED_ONLY,
	O__COUNT
};

#define B(x) (1ull << (x))
#define COMMON (B(O_SOCKET) | B(O_ADMIN_SOCKET) | B(O_JSON) | B(O_TIMEOUT) | B(O_HELP) | \
    B(O_IDENTITY) | B(O_API_KEY) | B(O_IDEM) | B(O_NO_PEER_CHECK))
#define OPT_BASE 0x100

static const struct option all_options[O__COUNT] = {
	[O_SOCKET] = { "socket", required_argument, NULL, OPT_BASE + O_SOCKET },
	[O_ADMIN_SOCKET] = { "admin-socket", required_argument, NULL, OPT_BASE + O_ADMIN_SOCKET },
	[O_JSON] = { "json", no_argument, NULL, OPT_BASE + O_JSON },
	[O_TIMEOUT] = { "timeout", required_argument, NULL, OPT_BASE + O_TIMEOUT },
	[O_HELP] = { "help", no_argument, NULL, OPT_BASE + O_HELP },
	[O_IDENTITY] = { "identity", required_argument, NULL, OPT_BASE + O_IDENTITY },
	[O_TYPE] = { "type", required_argument, NULL, OPT_BASE + O_TYPE },
	[O_IN] = { "in", required_argument, NULL, OPT_BASE + O_IN },
	[O_OUT] = { "out", required_argument, NULL, OPT_BASE + O_OUT },
	[O_VERSION] = { "version", required_argument, NULL, OPT_BASE + O_VERSION },
	[O_DER] = { "der", no_argument, NULL, OPT_BASE + O_DER },
	[O_HASH] = { "hash", required_argument, NULL, OPT_BASE + O_HASH },
	[O_SCHEME] = { "scheme", required_argument, NULL, OPT_BASE + O_SCHEME },
	[O_RAW] = { "raw", no_argument, NULL, OPT_BASE + O_RAW },
	[O_PREHASHED] = { "prehashed", no_argument, NULL, OPT_BASE + O_PREHASHED },
	[O_SIG] = { "sig", required_argument, NULL, OPT_BASE + O_SIG },
	[O_MAC] = { "mac", required_argument, NULL, OPT_BASE + O_MAC },
	[O_CONTEXT] = { "context", required_argument, NULL, OPT_BASE + O_CONTEXT },
	[O_ADMIN] = { "admin", no_argument, NULL, OPT_BASE + O_ADMIN },
	[O_SERVICE] = { "service", required_argument, NULL, OPT_BASE + O_SERVICE },
	[O_LENGTH] = { "length", required_argument, NULL, OPT_BASE + O_LENGTH },
	[O_UID] = { "uid", required_argument, NULL, OPT_BASE + O_UID },
	[O_GID] = { "gid", required_argument, NULL, OPT_BASE + O_GID },
	[O_KEY] = { "key", required_argument, NULL, OPT_BASE + O_KEY },
	[O_OP] = { "op", required_argument, NULL, OPT_BASE + O_OP },
	[O_RATE] = { "rate", required_argument, NULL, OPT_BASE + O_RATE },
	[O_BURST] = { "burst", required_argument, NULL, OPT_BASE + O_BURST },
	[O_API_KEY] = { "api-key", required_argument, NULL, OPT_BASE + O_API_KEY },
	[O_OVERLAP] = { "overlap", required_argument, NULL, OPT_BASE + O_OVERLAP },
	[O_IMPORT] = { "import", required_argument, NULL, OPT_BASE + O_IMPORT },
	[O_COUNT] = { "count", required_argument, NULL, OPT_BASE + O_COUNT },
	[O_IDEM] = { "idempotency-key", required_argument, NULL, OPT_BASE + O_IDEM },
	[O_FORCE] = { "force", no_argument, NULL, OPT_BASE + O_FORCE },
	[O_GRACE] = { "grace", required_argument, NULL, OPT_BASE + O_GRACE },
	[O_MIN_VERSION] = { "min-version", required_argument, NULL, OPT_BASE + O_MIN_VERSION },
	[O_MIN_VERIFY] = { "min-verify-version", required_argument, NULL,
			   OPT_BASE + O_MIN_VERIFY },
	[O_KEEP_LAST] = { "keep-last", required_argument, NULL, OPT_BASE + O_KEEP_LAST },
	[O_PERIOD] = { "rotation-period", required_argument, NULL, OPT_BASE + O_PERIOD },
	[O_NEXT] = { "next", required_argument, NULL, OPT_BASE + O_NEXT },
	[O_FORMAT] = { "format", required_argument, NULL, OPT_BASE + O_FORMAT },
	[O_BATCH] = { "batch", no_argument, NULL, OPT_BASE + O_BATCH },
	[O_PROGRESS] = { "progress", no_argument, NULL, OPT_BASE + O_PROGRESS },
	[O_FILE] = { "file", required_argument, NULL, OPT_BASE + O_FILE },
	[O_PUBLIC_KEY] = { "public-key", required_argument, NULL, OPT_BASE + O_PUBLIC_KEY },
	[O_STATE_DB] = { "state-db", required_argument, NULL, OPT_BASE + O_STATE_DB },
	[O_ANCHOR] = { "anchor", required_argument, NULL, OPT_BASE + O_ANCHOR },
	[O_NO_PEER_CHECK] = { "no-peer-check", no_argument, NULL, OPT_BASE + O_NO_PEER_CHECK },
	[O_UID_ONLY] = { "uid-only", no_argument, NULL, OPT_BASE + O_UID_ONLY },
	[O_SIGNED_ONLY] = { "signed-only", no_argument, NULL, OPT_BASE + O_SIGNED_ONLY },
	[O_PLAINTEXT_OUT] = { "plaintext-out", required_argument, NULL,
			      OPT_BASE + O_PLAINTEXT_OUT },
};

struct opts {
	char **args;            /* positional arguments */
	int nargs;
	const char *type, *in, *out, *sig, *mac, *service, *plaintext_out;
	const char *hash, *scheme;
	uint32_t version, length;
	int have_version;
	int der, raw, prehashed, admin;
	struct coffer_kv *ctx;  /* keys strdup()ed, values borrowed from argv */
	size_t nctx;
	uint32_t ids[2][64];    /* principal --uid, --gid */
	size_t nids[2];
	const char *key_pattern;
	unsigned int ops;       /* --op: COFFER_OP_BIT()s; COFFER_OP_ALL sets have_op_all */
	int have_op_all;
	double rate;
	uint32_t burst;
	int have_rate;
	uint32_t overlap;       /* --overlap, seconds */
	uint32_t count;         /* --count */
	const char *import;     /* --import FILE: a secret to import */
	int force;              /* --force */
	int64_t grace;          /* --grace, seconds; 0 = the daemon's default */
	uint32_t min_version, min_verify, keep_last;
	int64_t period;         /* --rotation-period, seconds */
	int have_period;
	int64_t next;           /* --next: a Unix time */
	const char *format;     /* --format pem|der|jwk */
	int batch, progress;    /* rewrap --batch, --progress */
	/* audit verify offline: --file, --public-key, --state-db, --anchor */
	const char *file, *public_key, *state_db, *anchor;
	int uid_only, signed_only;   /* principal set-auth */
};

struct cmd {
	const char *name;
	int (*fn)(struct ctl *, const struct opts *);
	unsigned long long allow;   /* B(O_*) beyond COMMON */
	int min_args, max_args;
	const char *synopsis;
	const char *help;
};

/* ---- output helpers ---- */

static void
errmsg(const char *what, const char *detail)
{
	if (what != NULL)
		fprintf(stderr, "cofferctl: %s: %s\n", what, detail);
	else
		fprintf(stderr, "cofferctl: %s\n", detail);
}

static int
exit_for_status(int r)
{
	switch (r) {
	case COFFER_OK:
		return EXIT_OK;
	case COFFER_E_DENIED:
	case COFFER_E_UNAUTHENTICATED:
		return EXIT_DENIED;
	case COFFER_E_NOT_FOUND:
		return EXIT_NOT_FOUND;
	case COFFER_E_UNAVAILABLE:
	case COFFER_E_TIMEOUT:
	case COFFER_E_BUSY:
	case COFFER_E_CANCELLED:        /* we never cancel: the daemon went away */
		return EXIT_UNAVAILABLE;
	case COFFER_E_INVALID_ARG:
	case COFFER_E_TOO_LARGE:
	case COFFER_E_PRECONDITION:
	case COFFER_E_EXISTS:
		return EXIT_INVALID;
	default:
		return EXIT_FAILED;
	}
}

/* Report a failed libcoffer call and map it to an exit code. */
static int
fail(int r)
{
	errmsg(NULL, coffer_error_message());
	return exit_for_status(r);
}

static int
usage_error(const char *what, const char *arg)
{
	if (arg != NULL)
		fprintf(stderr, "cofferctl: %s: %s\n", what, arg);
	else
		fprintf(stderr, "cofferctl: %s\n", what);
	fprintf(stderr, "Try 'cofferctl --help'.\n");
	return EXIT_USAGE;
}

static void
wipe(void *p, size_t n)
{
	if (p != NULL)
		explicit_bzero(p, n);
}

/* Print a string that came from the server, control characters as '?'. */
static void
put_safe(FILE *f, const char *s)
{
	for (; *s != '\0'; s++) {
		unsigned char ch = (unsigned char)*s;

		fputc(ch < 0x20 || ch == 0x7f ? '?' : ch, f);
	}
}

static int
bad_value(const char *opt, const char *value, const char *why)
{
	fprintf(stderr, "cofferctl: %s ", opt);
	put_safe(stderr, value);
	fprintf(stderr, ": %s\nTry 'cofferctl --help'.\n", why);
	return EXIT_USAGE;
}

static void
put_json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s != '\0'; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch == '\n')
			fputs("\\n", f);
		else if (ch < 0x20 || ch == 0x7f)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

/* Base64 (RFC 4648, padded) into a new NUL-terminated string, or NULL. */
static char *
b64(const uint8_t *p, size_t n)
{
	static const char tab[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char *s, *o;
	size_t i;

	if (n > (SIZE_MAX - 1) / 4 * 3 - 3)
		return NULL;
	if ((s = malloc((n + 2) / 3 * 4 + 1)) == NULL)
		return NULL;
	o = s;
	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];

		*o++ = tab[v >> 18];
		*o++ = tab[(v >> 12) & 63];
		*o++ = tab[(v >> 6) & 63];
		*o++ = tab[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);

		*o++ = tab[v >> 18];
		*o++ = tab[(v >> 12) & 63];
		*o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
		*o++ = '=';
	}
	*o = '\0';
	return s;
}

/* Print `"name":"<base64>"`; the encoding is wiped afterwards. */
static int
put_json_b64(FILE *f, const char *name, const uint8_t *p, size_t n)
{
	char *s;

	if ((s = b64(p, n)) == NULL) {
		errmsg(NULL, "out of memory");
		return EXIT_FAILED;
	}
	fprintf(f, "\"%s\":\"%s\"", name, s);
	wipe(s, strlen(s));
	free(s);
	return EXIT_OK;
}

static void
put_time(FILE *f, int64_t t)
{
	struct tm tm;
	time_t tt = (time_t)t;
	char buf[32];

	if (t <= 0 || gmtime_r(&tt, &tm) == NULL ||
	    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
		fputs("-", f);
		return;
	}
	fputs(buf, f);
}

/* Finish stdout: report a failed write (disk full, closed pipe). */
static int
flush_stdout(void)
{
	if (fflush(stdout) != 0 || ferror(stdout)) {
		errmsg("stdout", strerror(errno));
		return EXIT_FAILED;
	}
	return EXIT_OK;
}

/*
 * Write bytes to `path` (NULL or "-": stdout). Files holding secrets are
 * created (or reset to) mode 0600.
 */
static int
write_output(const char *path, const void *data, size_t len, int secret)
{
	const uint8_t *p = data;
	struct stat st;
	int fd = -1, rc = EXIT_FAILED;

	if (path == NULL || strcmp(path, "-") == 0) {
		if (len > 0 && fwrite(data, 1, len, stdout) != len) {
			errmsg("stdout", strerror(errno));
			return EXIT_FAILED;
		}
		return flush_stdout();
	}
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, secret ? 0600 : 0644);
	if (fd == -1) {
		errmsg(path, strerror(errno));
		goto out;
	}
	if (secret && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
	    (st.st_mode & 077) != 0 && fchmod(fd, st.st_mode & 0700) == -1) {
		errmsg(path, strerror(errno));
		goto out;
	}
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			errmsg(path, n == 0 ? "short write" : strerror(errno));
			goto out;
		}
		p += n;
		len -= (size_t)n;
	}
	if (close(fd) == -1) {
		fd = -1;
		errmsg(path, strerror(errno));
		goto out;
	}
	fd = -1;
	rc = EXIT_OK;
 out:
	if (fd != -1)
		close(fd);
	return rc;
}

/*
 * Read all of `path` (NULL or "-": stdin), at most `max` bytes, into *out
 * (free with coffer_bytes_free, which wipes). Growth copies and wipes, so no
 * stale copy of the input is left in freed memory.
 */
static int
read_input(const char *path, size_t max, struct coffer_bytes *out)
{
	uint8_t *buf = NULL, *nbuf;
	size_t len = 0, cap = 0;
	int fd = -1, rc = EXIT_FAILED;
	const char *name = path;

	if (path == NULL || strcmp(path, "-") == 0) {
		fd = STDIN_FILENO;
		name = "stdin";
	} else if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		errmsg(path, strerror(errno));
		goto out;
	}
	for (;;) {
		ssize_t n;

		if (len == cap) {
			size_t ncap = cap ? cap * 2 : 4096;

			if (cap > max) {
				fprintf(stderr, "cofferctl: %s: input larger than %zu bytes\n",
				    name, max);
				rc = EXIT_INVALID;
				goto out;
			}
			if (ncap > max + 1)
				ncap = max + 1;
			if ((nbuf = malloc(ncap)) == NULL) {
				errmsg(NULL, "out of memory");
				goto out;
			}
			if (len > 0)
				memcpy(nbuf, buf, len);
			wipe(buf, cap);
			free(buf);
			buf = nbuf;
			cap = ncap;
		}
		n = read(fd, buf + len, cap - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			errmsg(name, strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > max) {
			fprintf(stderr, "cofferctl: %s: input larger than %zu bytes\n", name, max);
			rc = EXIT_INVALID;
			goto out;
		}
	}
	if (buf == NULL && (buf = malloc(1)) == NULL) {
		errmsg(NULL, "out of memory");
		goto out;
	}
	out->data = buf;
	out->len = len;
	buf = NULL;
	rc = EXIT_OK;
 out:
	wipe(buf, cap);
	free(buf);
	if (fd != -1 && fd != STDIN_FILENO)
		close(fd);
	return rc;
}

static int
is_stdin(const char *path)
{
	return path == NULL || strcmp(path, "-") == 0;
}

static int
is_stdout(const char *path)
{
	return path == NULL || strcmp(path, "-") == 0;
}

/* ---- option parsing ---- */

static int
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

static void
opts_free(struct opts *o)
{
	for (size_t i = 0; i < o->nctx; i++)
		free((char *)o->ctx[i].key);
	free(o->ctx);
	o->ctx = NULL;
	o->nctx = 0;
}

static void
cmd_help(const struct cmd *cmd)
{
	printf("usage: cofferctl %s\n\n%s\n", cmd->synopsis, cmd->help);
	printf("Common options: --socket PATH, --admin-socket PATH, --identity FILE, "
	    "--api-key FILE,\n  --idempotency-key KEY, --json, --timeout MS, --help\n");
}

/* A global option (allowed anywhere); 1 if `id` was one, -1 on a bad value. */
static int
common_opt(struct ctl *ctl, int id, const char *arg)
{
	uint32_t v;

	switch (id) {
	case O_SOCKET:
		ctl->socket = arg;
		return 1;
	case O_ADMIN_SOCKET:
		ctl->admin_socket = arg;
		return 1;
	case O_JSON:
		ctl->json = 1;
		return 1;
	case O_IDENTITY:
		ctl->identity = arg;
		return 1;
	case O_API_KEY:
		ctl->api_key = arg;
		return 1;
	case O_NO_PEER_CHECK:
		ctl->no_peer_check = 1;
		return 1;
	case O_IDEM:
		if (strlen(arg) < 8 || strlen(arg) >= sizeof(ctl->idem_key) ||
		    strspn(arg, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") !=
		    strlen(arg))
			return -2;
		snprintf(ctl->idem_key, sizeof(ctl->idem_key), "%s", arg);
		return 1;
	case O_TIMEOUT:
		if (parse_u32(arg, 0, TIMEOUT_MAX_MS, &v) != 0)
			return -1;
		ctl->timeout_ms = (long)v;
		return 1;
	default:
		return 0;
	}
}

/* --op LIST: names separated by commas, "all" for every operation. */
static int
parse_ops(const char *list, struct opts *o)
{
	char buf[256], *save = NULL, *tok;
	enum coffer_operation op;

	if (snprintf(buf, sizeof(buf), "%s", list) >= (int)sizeof(buf))
		return -1;
	for (tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		if (coffer_operation_parse(tok, &op) != COFFER_OK)
			return -1;
		if (op == COFFER_OP_ALL) {
			o->have_op_all = 1;
			o->ops |= COFFER_OPS_ALL;
		} else {
			o->ops |= COFFER_OP_BIT(op);
		}
	}
	return o->ops != 0 ? 0 : -1;
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

/*
 * Parse a command's options (GNU getopt_long, options and operands in any
 * order). EXIT_OK to go on, EXIT_HELP_DONE after --help, EXIT_USAGE.
 */
static int
parse_opts(struct ctl *ctl, const struct cmd *cmd, int argc, char **argv, struct opts *o)
{
	struct option lo[O__COUNT + 1];
	unsigned long long allow = cmd->allow | COMMON;
	size_t n = 0;
	uint32_t v;
	int ch, rc = EXIT_USAGE;

	memset(o, 0, sizeof(*o));
	memset(lo, 0, sizeof(lo));
	for (int i = 0; i < O__COUNT; i++)
		if (allow & B(i))
			lo[n++] = all_options[i];
	if ((o->ctx = calloc((size_t)argc, sizeof(*o->ctx))) == NULL) {
		errmsg(NULL, "out of memory");
		return EXIT_FAILED;
	}
	optind = 0;
	opterr = 0;
	while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		int id = ch == 'h' ? O_HELP : ch - OPT_BASE;
		const char *arg = optarg;
		int c;

		if (ch == '?' || ch == ':') {
			usage_error("unknown option, or option without its argument",
			    argv[optind - 1]);
			goto out;
		}
		if ((c = common_opt(ctl, id, arg)) == 1)
			continue;
		if (c == -1) {
			bad_value("--timeout", arg, "not a number of milliseconds (0 = none)");
			goto out;
		}
		if (c == -2) {
			bad_value("--idempotency-key", arg, "want 8..128 of A-Z a-z 0-9 . _ : -");
			goto out;
		}
		switch (id) {
		case O_HELP:
			cmd_help(cmd);
			rc = EXIT_HELP_DONE;
			goto out;
		case O_TYPE: o->type = arg; break;
		case O_IN: o->in = arg; break;
		case O_OUT: o->out = arg; break;
		case O_VERSION:
			if (parse_u32(arg, 0, VERSION_MAX, &v) != 0) {
				bad_value("--version", arg, "not a number from 0 to 1000000");
				goto out;
			}
			o->version = v;
			o->have_version = 1;
			break;
		case O_DER: o->der = 1; break;
		case O_HASH: o->hash = arg; break;
		case O_SCHEME: o->scheme = arg; break;
		case O_RAW: o->raw = 1; break;
		case O_PREHASHED: o->prehashed = 1; break;
		case O_SIG: o->sig = arg; break;
		case O_MAC: o->mac = arg; break;
		case O_ADMIN: o->admin = 1; break;
		case O_UID_ONLY: o->uid_only = 1; break;
		case O_SIGNED_ONLY: o->signed_only = 1; break;
		case O_SERVICE: o->service = arg; break;
		case O_PLAINTEXT_OUT: o->plaintext_out = arg; break;
		case O_LENGTH:
			if (parse_u32(arg, 0, 1024, &v) != 0) {
				bad_value("--length", arg, "not a number of bytes (16, 24 or 32)");
				goto out;
			}
			o->length = v;
			break;
		case O_UID:
		case O_GID: {
			size_t *nid = &o->nids[id == O_GID];
			struct passwd *pw = id == O_UID ? getpwnam(arg) : NULL;
			struct group *gr = id == O_GID ? getgrnam(arg) : NULL;

			if (*nid == 64) {
				usage_error("at most 64 --uid and 64 --gid", NULL);
				goto out;
			}
			if (pw != NULL)
				v = (uint32_t)pw->pw_uid;
			else if (gr != NULL)
				v = (uint32_t)gr->gr_gid;
			else if (parse_u32(arg, 0, 0xfffffffeu, &v) != 0) {
				bad_value(id == O_UID ? "--uid" : "--gid", arg,
				    "not a user/group name or number");
				goto out;
			}
			o->ids[id == O_GID][(*nid)++] = v;
			break;
		}
		case O_KEY: o->key_pattern = arg; break;
		case O_OP:
			if (parse_ops(arg, o) != 0) {
				bad_value("--op", arg, "want a comma-separated list of sign, verify, "
				    "mac, verify-mac, wrap, unwrap, rewrap, generate-data-key, "
				    "get-public-key, or all");
				goto out;
			}
			break;
		case O_RATE: {
			char *end;

			o->rate = strtod(arg, &end);
			if (end == arg || *end != '\0' || !(o->rate >= 0.0 && o->rate <= 1e6)) {
				bad_value("--rate", arg, "not a number of calls per second, 0..1000000");
				goto out;
			}
			o->have_rate = 1;
			break;
		}
		case O_IMPORT: o->import = arg; break;
		case O_COUNT:
			if (parse_u32(arg, 1, 1000, &o->count) != 0) {
				bad_value("--count", arg, "not a number 1..1000");
				goto out;
			}
			break;
		case O_OVERLAP: {
			uint64_t d;

			if (parse_duration(arg, 90ull * 86400, &d) != 0) {
				bad_value("--overlap", arg, "want a duration up to 90 days: "
				    "seconds, or a number with s, m, h or d");
				goto out;
			}
			o->overlap = (uint32_t)d;
			break;
		}
		case O_GRACE:
		case O_PERIOD: {
			uint64_t d;

			if (parse_duration(arg, 3650ull * 86400, &d) != 0) {
				bad_value(id == O_GRACE ? "--grace" : "--rotation-period", arg,
				    "want a duration: seconds, or a number with s, m, h or d "
				    "(e.g. 7d)");
				goto out;
			}
			/* The request's 0 means the daemon's default, and the daemon
			 * keeps at least [keys] min_destroy_grace: no grace is not
			 * expressible, so "0" must not quietly mean 7 days. */
			if (id == O_GRACE && d == 0) {
				bad_value("--grace", arg, "a grace period cannot be 0 (destruction "
				    "always waits at least [keys] min_destroy_grace, 1d by "
				    "default); leave --grace out for the daemon's default, "
				    "[keys] destroy_grace");
				goto out;
			}
			if (id == O_GRACE) {
				o->grace = (int64_t)d;
			} else {
				o->period = (int64_t)d;
				o->have_period = 1;
			}
			break;
		}
		case O_NEXT: {
			uint64_t d;
			int rel = arg[0] == '+';

			/* Absolute: plain seconds only ("30d" is not a time). */
			if ((!rel && arg[strspn(arg, "0123456789")] != '\0') ||
			    parse_duration(arg + rel, 3650ull * 86400 * (rel ? 1 : 30), &d) != 0) {
				bad_value("--next", arg, "want a Unix time in seconds, or +DURATION "
				    "from now (e.g. +1h)");
				goto out;
			}
			o->next = rel ? (int64_t)time(NULL) + (int64_t)d : (int64_t)d;
			break;
		}
		case O_FORCE: o->force = 1; break;
		case O_MIN_VERSION:
		case O_MIN_VERIFY:
		case O_KEEP_LAST:
			if (parse_u32(arg, 1, VERSION_MAX, &v) != 0) {
				bad_value(id == O_MIN_VERSION ? "--min-version" : id == O_MIN_VERIFY ?
				    "--min-verify-version" : "--keep-last", arg,
				    "not a number from 1 to 1000000");
				goto out;
			}
			*(id == O_MIN_VERSION ? &o->min_version : id == O_MIN_VERIFY ?
			    &o->min_verify : &o->keep_last) = v;
			break;
		case O_FORMAT:
			if (strcmp(arg, "pem") != 0 && strcmp(arg, "der") != 0 &&
			    strcmp(arg, "jwk") != 0) {
				bad_value("--format", arg, "want pem, der or jwk");
				goto out;
			}
			o->format = arg;
			break;
		case O_BATCH: o->batch = 1; break;
		case O_PROGRESS: o->progress = 1; break;
		case O_FILE: o->file = arg; break;
		case O_PUBLIC_KEY: o->public_key = arg; break;
		case O_STATE_DB: o->state_db = arg; break;
		case O_ANCHOR: o->anchor = arg; break;
		case O_BURST:
			if (parse_u32(arg, 1, 1000000, &o->burst) != 0) {
				bad_value("--burst", arg, "not a number 1..1000000");
				goto out;
			}
			break;
		case O_CONTEXT: {
			const char *eq = strchr(arg, '=');
			char *k;

			if (eq == NULL || eq == arg) {
				bad_value("--context", arg, "want KEY=VALUE with a non-empty KEY");
				goto out;
			}
			if ((k = strndup(arg, (size_t)(eq - arg))) == NULL) {
				errmsg(NULL, "out of memory");
				rc = EXIT_FAILED;
				goto out;
			}
			o->ctx[o->nctx].key = k;
			o->ctx[o->nctx].value = eq + 1;
			o->nctx++;
			break;
		}
		default:
			usage_error("unexpected option", argv[optind - 1]);
			goto out;
		}
	}
	o->args = argv + optind;
	o->nargs = argc - optind;
	if (o->nargs < cmd->min_args || o->nargs > cmd->max_args) {
		fprintf(stderr, "cofferctl: wrong number of arguments\nusage: cofferctl %s\n",
		    cmd->synopsis);
		goto out;
	}
	rc = EXIT_OK;
 out:
	if (rc != EXIT_OK)
		opts_free(o);
	return rc;
}

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

/* ---- key metadata output ---- */

/* `,"name":[...]` of the operations in bits. */
static void
put_ops_json(FILE *f, const char *name, unsigned int bits)
{
	int first = 1;

	fprintf(f, ",\"%s\":[", name);
	for (int op = COFFER_OP_SIGN; op <= COFFER_OP_GET_PUBLIC_KEY; op++)
		if (bits & COFFER_OP_BIT(op)) {
			fprintf(f, "%s\"%s\"", first ? "" : ",",
			    coffer_operation_name((enum coffer_operation)op));
			first = 0;
		}
	fputc(']', f);
}

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

/* ---- commands ---- */

/*
 * What one command sends and receives. A command checks its options and
 * reads its inputs into a job, then run_job() connects, makes the one
 * libcoffer call, prints the result and frees the job.
 */
struct job {
	struct coffer_bytes in;         /* the input (--in) */
	struct coffer_bytes tag;        /* signature or MAC to check */
	struct coffer_bytes out;        /* signature, MAC, ciphertext or plaintext */
	struct coffer_bytes pt;         /* datakey: the plaintext key */
	struct coffer_key_info *key;
	struct coffer_key_list *list;
	struct coffer_public_key *pk;
	struct coffer_sign_opts so;
	enum coffer_key_type type;
	enum coffer_serving_status st;
	enum coffer_version_action action;   /* key set-primary, enable, ... */
	uint32_t used, prev;
	int valid;
};

/* The command's libcoffer call; returns a COFFER_* status. */
typedef int (*job_call)(coffer_client *, const struct opts *, struct job *);
/* Print a successful call's result; returns an exit code. */
typedef int (*job_put)(const struct ctl *, const struct opts *, const struct job *);

static void
job_init(struct job *j)
{
	memset(j, 0, sizeof(*j));
	j->st = COFFER_SERVING_UNKNOWN;
}

static void
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

static int
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
static int
run_job(const struct ctl *ctl, const struct opts *o, int admin, job_call call,
    job_put put, struct job *j)
{
	coffer_client *c = NULL;
	int r, rc;

	if ((rc = connect_to(ctl, admin, &c)) != EXIT_OK)
		goto out;
	if ((r = call(c, o, j)) != COFFER_OK) {
		rc = fail(r);
		goto out;
	}
	rc = put(ctl, o, j);
 out:
	job_free(j);
	coffer_close(c);
	return rc;
}

/* Print a JSON object's opening and its first field, base64. */
static int
put_json_open(const char *field, const struct coffer_bytes *b)
{
	fputc('{', stdout);
	return put_json_b64(stdout, field, b->data, b->len);
}

/* After the JSON result: also write the bytes to --out, when it is a file. */
static int
json_done(const char *out, const void *data, size_t len)
{
	int rc;

	if ((rc = flush_stdout()) != EXIT_OK)
		return rc;
	if (!is_stdout(out))
		return write_output(out, data, len, 0);
	return EXIT_OK;
}

/* sign, mac, wrap, unwrap and rewrap: read the input, then run the job. */
static int
input_job(struct ctl *ctl, const struct opts *o, job_call call, job_put put,
    struct job *j)
{
	int rc;

	if ((rc = read_input(o->in, INPUT_MAX, &j->in)) != EXIT_OK)
		return rc;
	return run_job(ctl, o, 0, call, put, j);
}

/* ---- key commands ---- */

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

static int
put_job_key(const struct ctl *ctl, const struct opts *o, const struct job *j)
{
	(void)o;
	return put_key(ctl, j->key);
}

static int
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

static int
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

static int
cmd_key_list(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	job_init(&j);
	return run_job(ctl, o, o->admin, call_list_keys, put_list, &j);
}

static int
cmd_key_show(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	job_init(&j);
	return run_job(ctl, o, o->admin, call_get_key, put_job_key, &j);
}

static int
cmd_key_rotate(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	job_init(&j);
	return run_job(ctl, o, 1, call_rotate_key, put_job_key, &j);
}

/* ---- key lifecycle ---- */

/* The VERSION operand of a version command. */
static int
version_arg(const struct opts *o, uint32_t *v)
{
	if (parse_u32(o->args[1], 1, VERSION_MAX, v) != 0)
		return bad_value("VERSION", o->args[1], "not a number from 1 to 1000000");
	return EXIT_OK;
}

static int
call_version(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_key_version_action(c, o->args[0], j->used, j->action,
	    o->force ? COFFER_FORCE : 0, o->grace, &j->key);
}

/* set-primary, enable, disable, schedule-destroy, cancel-destroy: the
 * options each does not take are refused by its option list. */
static int
version_job(struct ctl *ctl, const struct opts *o, enum coffer_version_action action)
{
	struct job j;
	int rc;

	job_init(&j);
	j.action = action;
	if ((rc = version_arg(o, &j.used)) != EXIT_OK)
		return rc;
	return run_job(ctl, o, 1, call_version, put_job_key, &j);
}

static int
cmd_key_set_primary(struct ctl *ctl, const struct opts *o)
{
	return version_job(ctl, o, COFFER_SET_PRIMARY);
}

static int
cmd_key_enable(struct ctl *ctl, const struct opts *o)
{
	return version_job(ctl, o, COFFER_ENABLE_VERSION);
}

static int
cmd_key_disable(struct ctl *ctl, const struct opts *o)
{
	return version_job(ctl, o, COFFER_DISABLE_VERSION);
}

static int
cmd_key_schedule_destroy(struct ctl *ctl, const struct opts *o)
{
	return version_job(ctl, o, COFFER_SCHEDULE_DESTROY);
}

static int
cmd_key_cancel_destroy(struct ctl *ctl, const struct opts *o)
{
	return version_job(ctl, o, COFFER_CANCEL_DESTROY);
}

static int
call_set_min(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_set_key_minimums(c, o->args[0], o->min_version, o->min_verify,
	    o->keep_last, &j->key);
}

static int
cmd_key_set_min(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	job_init(&j);
	if (o->min_version == 0 && o->min_verify == 0 && o->keep_last == 0)
		return usage_error("key set-min needs --min-version, --min-verify-version or "
		    "--keep-last", NULL);
	if (o->keep_last != 0 && o->min_verify != 0)
		return usage_error("give --keep-last or --min-verify-version, not both", NULL);
	return run_job(ctl, o, 1, call_set_min, put_job_key, &j);
}

static int
call_trim(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_trim_key(c, o->args[0], o->grace, &j->key);
}

static int
cmd_key_trim(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	job_init(&j);
	return run_job(ctl, o, 1, call_trim, put_job_key, &j);
}

static int
call_set_rotation(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_set_rotation_schedule(c, o->args[0], o->period, o->next, &j->key);
}

static int
cmd_key_set_rotation(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	job_init(&j);
	if (!o->have_period)
		return usage_error("key set-rotation needs --rotation-period DURATION (0: off)",
		    NULL);
	if (o->period == 0 && o->next != 0)
		return usage_error("--next needs a rotation period", NULL);
	return run_job(ctl, o, 1, call_set_rotation, put_job_key, &j);
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

static int
cmd_key_pubkey(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	if (o->der && o->format != NULL && strcmp(o->format, "der") != 0)
		return usage_error("--der contradicts --format", o->format);
	job_init(&j);
	return run_job(ctl, o, 0, call_get_public_key, put_pubkey, &j);
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
	if (!is_stdout(out)) {
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
	if (is_stdin(tag) && is_stdin(o->in))
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

static int
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

static int
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

static int
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

static int
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

static int
cmd_wrap(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	job_init(&j);
	return input_job(ctl, o, call_wrap, put_wrap, &j);
}

static int
cmd_unwrap(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	job_init(&j);
	return input_job(ctl, o, call_unwrap, put_unwrap, &j);
}

/* Standard base64 (with padding) of s[0..n) into out (at least n / 4 * 3
 * bytes); the decoded length, or -1. */
static ssize_t
unb64(const char *s, size_t n, uint8_t *out)
{
	size_t o = 0, pad = 0;
	uint32_t acc = 0;

	if (n % 4 != 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		const char c = s[i];
		int v = c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26 :
		    c >= '0' && c <= '9' ? c - '0' + 52 : c == '+' ? 62 : c == '/' ? 63 : -1;

		if (c == '=' && i >= n - 2 && (pad > 0 || i == n - 2 || s[n - 2] != '=')) {
			pad++;
			v = 0;
		} else if (v < 0 || pad > 0) {
			return -1;
		}
		acc = acc << 6 | (uint32_t)v;
		if (i % 4 == 3) {
			out[o++] = (uint8_t)(acc >> 16);
			out[o++] = (uint8_t)(acc >> 8);
			out[o++] = (uint8_t)acc;
		}
	}
	return (ssize_t)(o - pad);
}

struct rewrap_run {
	size_t line, total;       /* total: 0 if unknown (a pipe) */
	size_t moved, current, failed;
	int show;                 /* progress on stderr */
	struct timespec last;
};

static void
rewrap_progress(struct rewrap_run *rr, int final)
{
	struct timespec now;

	if (!rr->show)
		return;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (!final && (now.tv_sec - rr->last.tv_sec) * 1000 +
	    (now.tv_nsec - rr->last.tv_nsec) / 1000000 < 100)
		return;
	rr->last = now;
	fprintf(stderr, "\rrewrap: %zu", rr->line);
	if (rr->total > 0)
		fprintf(stderr, "/%zu lines (%zu%%)", rr->total, rr->line * 100 / rr->total);
	else
		fputs(" lines", stderr);
	fprintf(stderr, ", %zu moved to the primary version, %zu already on it, %zu failed%s",
	    rr->moved, rr->current, rr->failed, final ? "\n" : "");
	fflush(stderr);
}

/* The process umask (mkstemp makes 0600 files; an output file gets the
 * mode an ordinary create would give it). */
static mode_t
current_umask(void)
{
	mode_t m = umask(077);

	umask(m);
	return m;
}

/* Lines in a regular file (for the progress total); 0 for anything else. */
static size_t
count_lines(FILE *f)
{
	struct stat st;
	size_t n = 0;
	int ch, last = '\n';

	if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode))
		return 0;
	while ((ch = getc(f)) != EOF) {
		n += ch == '\n';
		last = ch;
	}
	n += last != '\n';
	rewind(f);
	return n;
}

/* One line (n bytes, with its newline if it has one): its blob rewrapped
 * to out, or (failure) the line byte for byte as it was. The COFFER_*
 * status. */
static int
rewrap_line(coffer_client *c, const struct opts *o, const char *line, size_t n, FILE *out,
    struct rewrap_run *rr)
{
	struct coffer_bytes nb = { NULL, 0 };
	uint8_t *blob = NULL;
	uint32_t used = 0, prev = 0;
	size_t text_len = n;
	ssize_t len = -1;
	char *text = NULL;
	int r = COFFER_OK;

	while (text_len > 0 && (line[text_len - 1] == '\n' || line[text_len - 1] == '\r'))
		text_len--;
	if (text_len == 0 || line[0] == '#') {
		fwrite(line, 1, n, out);   /* blank lines and comments stay */
		return COFFER_OK;
	}
	if ((blob = malloc(text_len / 4 * 3 + 3)) == NULL) {
		errmsg(NULL, "out of memory");
		r = COFFER_E_NOMEM;
	} else if ((len = unb64(line, text_len, blob)) <= 0) {
		fprintf(stderr, "%scofferctl: line %zu: not a base64 blob; left as it is\n",
		    rr->show ? "\n" : "", rr->line);
		r = COFFER_E_INVALID_ARG;
	} else if ((r = coffer_rewrap(c, o->args[0], blob, (size_t)len, o->ctx, o->nctx, &nb,
	    &used, &prev)) != COFFER_OK) {
		fprintf(stderr, "%scofferctl: line %zu: ", rr->show ? "\n" : "", rr->line);
		put_safe(stderr, coffer_error_message());
		fputs("; left as it is\n", stderr);
	} else if ((text = b64(nb.data, nb.len)) == NULL) {
		r = COFFER_E_NOMEM;
	}
	if (text != NULL)
		fprintf(out, "%s\n", text);
	else
		fwrite(line, 1, n, out);
	if (r != COFFER_OK)
		rr->failed++;
	else if (used == prev)
		rr->current++;
	else
		rr->moved++;
	free(text);
	free(blob);
	coffer_bytes_free(&nb);
	return r;
}

/*
 * rewrap --batch: base64 blobs one per line (what wrap --json and datakey
 * --json print), rewrapped in order, one per line. A line that fails is
 * written unchanged and reported; if the daemon cannot be reached any more,
 * the rest is copied unchanged: the output is always a whole file, and
 * running the job again on it finishes the work (a blob already under the
 * primary version is simply wrapped again).
 */
static int
cmd_rewrap_batch(struct ctl *ctl, const struct opts *o)
{
	struct rewrap_run rr;
	coffer_client *c = NULL;
	FILE *in = stdin, *out = stdout;
	char *line = NULL, *tmp = NULL;
	size_t cap = 0;
	ssize_t n;
	int rc, r, first = COFFER_OK, stop = 0, fd;

	memset(&rr, 0, sizeof(rr));
	if (ctl->json && is_stdout(o->out))
		return usage_error("rewrap --batch --json prints a summary: give --out FILE for "
		    "the blobs", NULL);
	if (!is_stdin(o->in) && (in = fopen(o->in, "re")) == NULL) {
		errmsg(o->in, strerror(errno));
		return EXIT_FAILED;
	}
	/* --out FILE is written beside it and renamed over it at the end: it
	 * is whole or untouched, and --in and --out may be the same file. */
	if (!is_stdout(o->out)) {
		if (asprintf(&tmp, "%s.rewrap-XXXXXX", o->out) < 0) {
			tmp = NULL;
			errmsg(NULL, "out of memory");
			rc = EXIT_FAILED;
			goto done;
		}
		if ((fd = mkostemp(tmp, O_CLOEXEC)) == -1 || (out = fdopen(fd, "w")) == NULL) {
			errmsg(o->out, strerror(errno));
			if (fd != -1) {
				close(fd);
				unlink(tmp);
			}
			free(tmp);
			tmp = NULL;
			out = NULL;
			rc = EXIT_FAILED;
			goto done;
		}
		(void)fchmod(fd, 0644 & ~current_umask());
	}
	rr.total = count_lines(in);
	rr.show = o->progress || isatty(STDERR_FILENO);
	if ((rc = connect_to(ctl, 0, &c)) != EXIT_OK)
		goto done;
	while ((n = getline(&line, &cap, in)) != -1) {
		rr.line++;
		if (stop) {
			fwrite(line, 1, (size_t)n, out);
			rr.failed++;   /* not rewrapped either */
			continue;
		}
		r = rewrap_line(c, o, line, (size_t)n, out, &rr);
		if (r != COFFER_OK && first == COFFER_OK)
			first = r;
		/* Nothing more will get through: keep the rest as it is. */
		stop = r == COFFER_E_UNAVAILABLE || r == COFFER_E_DENIED ||
		    r == COFFER_E_UNAUTHENTICATED;
		if (stop)
			fprintf(stderr, "cofferctl: stopped at line %zu; the remaining lines are "
			    "copied unchanged: run the job again on the output\n", rr.line);
		rewrap_progress(&rr, 0);
	}
	if (ferror(in)) {
		errmsg(is_stdin(o->in) ? "stdin" : o->in, strerror(errno));
		first = first ? first : COFFER_E_IO;
	}
	rewrap_progress(&rr, 1);
	if (fflush(out) != 0 || ferror(out) || (tmp != NULL && fsync(fileno(out)) != 0)) {
		errmsg(is_stdout(o->out) ? "stdout" : o->out, strerror(errno));
		rc = EXIT_FAILED;
		goto done;
	}
	if (tmp != NULL) {
		if (fclose(out) != 0 || rename(tmp, o->out) != 0) {
			out = NULL;
			errmsg(o->out, strerror(errno));
			rc = EXIT_FAILED;
			goto done;
		}
		out = NULL;
		free(tmp);
		tmp = NULL;
	}
	if (ctl->json)
		printf("{\"lines\":%zu,\"moved\":%zu,\"current\":%zu,\"failed\":%zu}\n",
		    rr.line, rr.moved, rr.current, rr.failed);
	rc = first == COFFER_OK ? flush_stdout() : exit_for_status(first);
 done:
	free(line);
	coffer_close(c);
	if (in != stdin)
		fclose(in);
	if (out != stdout && out != NULL)
		fclose(out);
	if (tmp != NULL) {   /* not finished: the target stays as it was */
		unlink(tmp);
		free(tmp);
	}
	return rc;
}

static int
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
	int pt_in_json = want_pt && ctl->json && is_stdout(o->plaintext_out);
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

static int
cmd_datakey(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	job_init(&j);
	if (o->plaintext_out != NULL && is_stdout(o->plaintext_out) && !ctl->json &&
	    is_stdout(o->out))
		return usage_error("--plaintext-out - needs --out FILE or --json", NULL);
	return run_job(ctl, o, 0, call_datakey, put_datakey, &j);
}

/* ---- principals ---- */

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

static void put_api_key_json(FILE *f, const struct coffer_api_key *k);
static void put_api_key_text(const struct coffer_api_key *k);

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
	static int fn(struct ctl *t, const struct opts *o) { return cmd_principal(t, o, which); }
PRINCIPAL_CMD(cmd_principal_create, 'c')
PRINCIPAL_CMD(cmd_principal_show, 's')
PRINCIPAL_CMD(cmd_principal_grant, 'g')
PRINCIPAL_CMD(cmd_principal_revoke, 'r')
PRINCIPAL_CMD(cmd_principal_limit, 'l')
PRINCIPAL_CMD(cmd_principal_delete, 'd')
#undef PRINCIPAL_CMD

static int
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

/* ---- API keys ---- */

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

static void
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

/* principal add-key / rotate-secret: show the key and, once, the secret. */
static int
put_new_secret(const struct ctl *ctl, const struct opts *o, const struct coffer_api_key *k,
    const struct coffer_bytes *secret, const struct coffer_bytes *imported)
{
	const struct coffer_bytes *file = secret->len > 0 ? secret : imported;
	int r;

	if (secret->len == 0 && imported->len == 0) {
		/* A repeat answered from the idempotency record: no secret. */
		errmsg(NULL, "the daemon answered a repeat of this request (same idempotency "
		    "key): its secret was shown the first time only");
		return EXIT_FAILED;
	}
	if (o->out != NULL &&
	    (r = coffer_write_api_key_file(o->out, k->id, file->data, file->len)) != COFFER_OK) {
		/* Never lose a secret that exists nowhere else: show it. */
		errmsg(NULL, coffer_error_message());
		if (secret->len > 0) {
			fprintf(stderr, "cofferctl: the secret of %s, shown only now:\n", k->id);
			for (size_t i = 0; i < secret->len; i++)
				printf("%02x", secret->data[i]);
			fputc('\n', stdout);
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
		for (size_t i = 0; i < secret->len; i++)
			printf("%02x", secret->data[i]);
		fputc('\n', stdout);
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

static int
cmd_principal_add_key(struct ctl *ctl, const struct opts *o)
{
	return cmd_api_key_new(ctl, o, 0);
}

static int
cmd_principal_rotate_secret(struct ctl *ctl, const struct opts *o)
{
	return cmd_api_key_new(ctl, o, 1);
}

static int
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

static int
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

static int
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

/* ---- audit ---- */

static int
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
	if (o->state_db != NULL && o->anchor != NULL) {
		usage_error("give --state-db or --anchor, not both", NULL);
		goto out;
	}
	if (o->anchor != NULL && cf_audit_anchor_parse(o->anchor, &an) != CF_OK) {
		bad_value("--anchor", o->anchor, cf_error_detail());
		goto out;
	}
	rc = EXIT_FAILED;
	if ((r = cf_audit_pubkey_load(o->public_key, &pub)) != CF_OK ||
	    (o->state_db != NULL && (r = cf_audit_anchor_read(o->state_db, &an)) != CF_OK)) {
		errmsg("audit verify", cf_error_detail());
		goto out;
	}
	vo.pub = pub;
	if (o->state_db != NULL || o->anchor != NULL) {
		vo.anchor = &an;
		vo.exact = o->state_db != NULL && an.clean;
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
			printf("note: no anchor given (--state-db or --anchor): a cut tail or an "
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

static int
cmd_audit_verify(struct ctl *ctl, const struct opts *o)
{
	struct coffer_audit_report rep;
	coffer_client *c = NULL;
	int r, rc;

	if (o->file != NULL)
		return audit_verify_offline(ctl, o);
	if (o->public_key != NULL || o->state_db != NULL || o->anchor != NULL)
		return usage_error("--public-key, --state-db and --anchor go with --file", NULL);
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

/* ---- identity ---- */

/* The SPKI as a PEM public key, in a new string. */
static char *
spki_pem(const struct coffer_bytes *der)
{
	static const char head[] = "-----BEGIN PUBLIC KEY-----\n",
	    tail[] = "-----END PUBLIC KEY-----\n";
	char *b = b64(der->data, der->len), *pem, *o;
	size_t n;

	if (b == NULL)
		return NULL;
	n = strlen(b);
	if ((pem = malloc(sizeof(head) + n + n / 64 + 2 + sizeof(tail))) != NULL) {
		o = pem + sprintf(pem, "%s", head);
		for (size_t i = 0; i < n; i += 64)
			o += sprintf(o, "%.64s\n", b + i);
		sprintf(o, "%s", tail);
	}
	free(b);
	return pem;
}

static int
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
	if ((pem = spki_pem(&der)) == NULL) {
		errmsg(NULL, "out of memory");
		rc = EXIT_FAILED;
		goto out;
	}
	if (o->out != NULL && !is_stdout(o->out) &&
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
		if (o->out == NULL || is_stdout(o->out))
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

static int
cmd_health(struct ctl *ctl, const struct opts *o)
{
	struct job j;

	job_init(&j);
	return run_job(ctl, o, o->admin, call_health, put_health, &j);
}

/* ---- command table and usage ---- */

#define SIGN_OPTS (B(O_HASH) | B(O_SCHEME) | B(O_RAW) | B(O_PREHASHED))

static const struct cmd commands[] = {
	{ "key create", cmd_key_create, B(O_TYPE) | B(O_OP) | B(O_PERIOD), 1, 1,
	  "key create NAME --type TYPE [--op LIST] [--rotation-period D]",
	  "Generate a new key (version 1) in the token. Uses the admin socket.\n"
	  "  --type TYPE     ec-p256, ec-p384, ed25519, rsa-2048, rsa-3072, rsa-4096,\n"
	  "                  hmac-sha256, hmac-sha384, hmac-sha512, aes-256\n"
	  "  --op LIST       the key's own limit: only these operations (comma-\n"
	  "                  separated, fitting its purpose), whatever is granted\n"
	  "  --rotation-period D  the daemon rotates the key every D (e.g. 90d; see\n"
	  "                  key set-rotation)\n"
	  "Prints the key's metadata." },
	{ "key import", cmd_key_import, B(O_TYPE) | B(O_IN), 1, 1,
	  "key import NAME --type TYPE --in FILE|-",
	  "Import raw secret material as a new key. Uses the admin socket.\n"
	  "  --type TYPE     hmac-sha256, hmac-sha384, hmac-sha512 (hash length ..\n"
	  "                  512 bytes) or aes-256 (32 bytes)\n"
	  "  --in FILE|-     raw key bytes from FILE or stdin (taken verbatim: no\n"
	  "                  newline stripping, no decoding); never echoed\n"
	  "Prints the key's metadata." },
	{ "key list", cmd_key_list, B(O_ADMIN), 0, 0,
	  "key list [--admin]",
	  "List all keys, ordered by name.\n"
	  "  --admin         ask the admin socket (AdminService) instead of the\n"
	  "                  service socket" },
	{ "key show", cmd_key_show, B(O_ADMIN), 1, 1,
	  "key show NAME [--admin]",
	  "Show a key's metadata and versions: states, primary, minimums, rotation\n"
	  "schedule, destruction times (--json: all of it as one object).\n"
	  "  --admin         ask the admin socket (AdminService) instead of the\n"
	  "                  service socket" },
	{ "key rotate", cmd_key_rotate, 0, 1, 1,
	  "key rotate NAME",
	  "Generate a new version and make it primary. Uses the admin socket.\n"
	  "Older enabled versions still verify and unwrap. The next scheduled\n"
	  "rotation (if any) moves to one period from now." },
	{ "key set-primary", cmd_key_set_primary, 0, 2, 2,
	  "key set-primary NAME VERSION",
	  "Make an enabled version (at or above the key's min-version) the one that\n"
	  "signs, MACs and wraps. Uses the admin socket." },
	{ "key enable", cmd_key_enable, 0, 2, 2,
	  "key enable NAME VERSION",
	  "Enable a disabled version again. A version scheduled for destruction is\n"
	  "restored with key cancel-destroy; a destroyed one cannot be." },
	{ "key disable", cmd_key_disable, B(O_FORCE), 2, 2,
	  "key disable NAME VERSION [--force]",
	  "Disable a version: it is kept but used for nothing (calls naming it get\n"
	  "exit 6, \"disabled\") until enabled again.\n"
	  "  --force         also the primary or the last enabled version (new\n"
	  "                  operations then fail until another is primary)" },
	{ "key schedule-destroy", cmd_key_schedule_destroy, B(O_FORCE) | B(O_GRACE), 2, 2,
	  "key schedule-destroy NAME VERSION [--grace D] [--force]",
	  "Make a version unusable at once and destroy its token objects when the\n"
	  "grace period ends; until then key cancel-destroy restores it.\n"
	  "  --grace D       e.g. 7d (default: the daemon's [keys] destroy_grace);\n"
	  "                  at least [keys] min_destroy_grace (1d), at most 365d;\n"
	  "                  0 is refused\n"
	  "  --force         also the primary or the last enabled version" },
	{ "key cancel-destroy", cmd_key_cancel_destroy, 0, 2, 2,
	  "key cancel-destroy NAME VERSION",
	  "Restore a version scheduled for destruction to its state before (enabled\n"
	  "or disabled). Refused once the grace period has ended." },
	{ "key set-min", cmd_key_set_min, B(O_MIN_VERSION) | B(O_MIN_VERIFY) | B(O_KEEP_LAST),
	  1, 1,
	  "key set-min NAME [--min-version N] [--min-verify-version N] [--keep-last N]",
	  "Set the oldest versions still used. 1 removes a minimum.\n"
	  "  --min-version N         older versions make nothing new (sign, mac,\n"
	  "                          wrap, data keys); at most the primary\n"
	  "  --min-verify-version N  older versions neither verify nor unwrap; at\n"
	  "                          most --min-version\n"
	  "  --keep-last N           keep the newest N versions for verify/unwrap\n"
	  "                          (sets --min-verify-version, and --min-version\n"
	  "                          if it was lower)\n"
	  "Versions below the minimum stay in the token until key trim." },
	{ "key trim", cmd_key_trim, B(O_GRACE), 1, 1,
	  "key trim NAME [--grace D]",
	  "Schedule the destruction of every version below the key's\n"
	  "min-verify-version (as key schedule-destroy, with --grace D)." },
	{ "key set-rotation", cmd_key_set_rotation, B(O_PERIOD) | B(O_NEXT), 1, 1,
	  "key set-rotation NAME --rotation-period D [--next TIME|+D]",
	  "Rotate the key every D (e.g. 90d; at least [keys] min_rotation_period,\n"
	  "1h by default; 0 turns it off). A daemon that was down when a rotation\n"
	  "fell due rotates once when it starts.\n"
	  "  --next TIME|+D  the first rotation: a Unix time, or +D from now\n"
	  "                  (default: one period from now)" },
	{ "key pubkey", cmd_key_pubkey, B(O_VERSION) | B(O_DER) | B(O_OUT) | B(O_FORMAT), 1, 1,
	  "key pubkey NAME [--version N] [--format pem|der|jwk] [--out FILE]",
	  "Print the public key of an asymmetric key (PEM by default).\n"
	  "  --version N     key version (default: the primary version)\n"
	  "  --format F      pem; der (SubjectPublicKeyInfo); jwk (a JSON Web Key,\n"
	  "                  kid \"NAME:VERSION\"); --der means --format der\n"
	  "  --out FILE      write to FILE instead of stdout\n"
	  "With --json prints {\"type\",\"version\",\"jwk\",\"pem\",\"der\" (base64)}." },
	{ "sign", cmd_sign, B(O_IN) | B(O_OUT) | B(O_VERSION) | SIGN_OPTS, 1, 1,
	  "sign KEY [--in FILE|-] [--out FILE] [--version N] [--hash H] [--scheme S]\n"
	  "                [--raw] [--prehashed]",
	  "Sign data (at most 1 MiB) with a signing key.\n"
	  "  --in FILE|-     data to sign (default: stdin)\n"
	  "  --out FILE      write the signature to FILE and print \"version: N\"\n"
	  "                  (default: raw signature bytes on stdout)\n"
	  "  --version N     key version (default: the primary version)\n"
	  "  --hash H        sha256, sha384 or sha512 (default: the key's)\n"
	  "  --scheme S      ecdsa, eddsa, rsa-pss or rsa-pkcs1 (default: the key's)\n"
	  "  --raw           ECDSA signature as raw r||s instead of DER\n"
	  "  --prehashed     the input is already a digest (of --hash, else of the key's\n"
	  "                  default hash: SHA-384 for P-384, else SHA-256; not Ed25519)\n"
	  "With --json prints {\"signature\": base64, \"version\": N}.\n"
	  "Keep the version: verify needs it." },
	{ "verify", cmd_verify, B(O_IN) | B(O_VERSION) | B(O_SIG) | SIGN_OPTS, 1, 1,
	  "verify KEY --version N --sig FILE [--in FILE|-] [--hash H] [--scheme S]\n"
	  "                [--raw] [--prehashed]",
	  "Verify a signature. Prints \"valid\" (exit 0) or \"invalid\" (exit 1).\n"
	  "  --version N     the key version that signed (required)\n"
	  "  --sig FILE      the signature bytes (\"-\" for stdin)\n"
	  "  --in FILE|-     the signed data (default: stdin)\n"
	  "  --hash, --scheme, --raw, --prehashed: as given to sign\n"
	  "With --json prints {\"valid\": true|false}." },
	{ "mac", cmd_mac, B(O_IN) | B(O_OUT) | B(O_VERSION), 1, 1,
	  "mac KEY [--in FILE|-] [--out FILE] [--version N]",
	  "Compute an HMAC (at most 1 MiB of data) with a MAC key.\n"
	  "  --in FILE|-     data (default: stdin)\n"
	  "  --out FILE      write the MAC to FILE and print \"version: N\"\n"
	  "                  (default: raw MAC bytes on stdout)\n"
	  "  --version N     key version (default: the primary version)\n"
	  "With --json prints {\"mac\": base64, \"version\": N}." },
	{ "verify-mac", cmd_verify_mac, B(O_IN) | B(O_VERSION) | B(O_MAC), 1, 1,
	  "verify-mac KEY --version N --mac FILE [--in FILE|-]",
	  "Check an HMAC inside the token. Prints \"valid\" (exit 0) or \"invalid\"\n"
	  "(exit 1).\n"
	  "  --version N     the key version that made the MAC (required)\n"
	  "  --mac FILE      the MAC bytes (\"-\" for stdin)\n"
	  "  --in FILE|-     the data (default: stdin)\n"
	  "With --json prints {\"valid\": true|false}." },
	{ "wrap", cmd_wrap, B(O_IN) | B(O_OUT) | B(O_CONTEXT), 1, 1,
	  "wrap KEY [--context K=V ...] [--in FILE|-] [--out FILE]",
	  "Encrypt data (at most 64 KiB) with an AES key's primary version.\n"
	  "  --context K=V   additional authenticated data; repeat for more entries\n"
	  "                  (unwrap needs exactly the same set)\n"
	  "  --in FILE|-     plaintext (default: stdin)\n"
	  "  --out FILE      ciphertext blob (default: stdout)\n"
	  "With --json prints {\"ciphertext\": base64, \"version\": N}." },
	{ "unwrap", cmd_unwrap, B(O_IN) | B(O_OUT) | B(O_CONTEXT), 1, 1,
	  "unwrap KEY [--context K=V ...] [--in FILE|-] [--out FILE]",
	  "Decrypt a blob made by wrap, with the same key name and context.\n"
	  "  --in FILE|-     ciphertext blob (default: stdin)\n"
	  "  --out FILE      plaintext, created with mode 0600 (default: stdout)\n"
	  "With --json prints {\"plaintext\": base64, \"version\": N}." },
	{ "rewrap", cmd_rewrap, B(O_IN) | B(O_OUT) | B(O_CONTEXT) | B(O_BATCH) | B(O_PROGRESS),
	  1, 1,
	  "rewrap KEY [--context K=V ...] [--in FILE|-] [--out FILE] [--batch [--progress]]",
	  "Re-encrypt a blob under the key's primary version; the plaintext never\n"
	  "leaves the daemon.\n"
	  "  --batch         a job: --in holds base64 blobs, one per line (as wrap\n"
	  "                  --json prints them); each is rewrapped in order to\n"
	  "                  --out, one per line. A line that fails is reported\n"
	  "                  and written unchanged, so the output is always whole;\n"
	  "                  run the job again on it to retry (exit status of the\n"
	  "                  first failure). --out FILE is replaced only at the\n"
	  "                  end, so --in and --out may be the same file\n"
	  "  --progress      show progress on stderr (default: when it is a terminal)\n"
	  "With --json prints {\"ciphertext\", \"version\", \"previous_version\"};\n"
	  "--batch --json (with --out FILE): {\"lines\", \"moved\", \"current\", \"failed\"}." },
	{ "datakey", cmd_datakey, B(O_OUT) | B(O_CONTEXT) | B(O_LENGTH) | B(O_PLAINTEXT_OUT),
	  1, 1,
	  "datakey KEY [--length N] [--context K=V ...] [--out FILE]\n"
	  "                [--plaintext-out FILE]",
	  "Generate a random data key, wrapped under KEY.\n"
	  "  --length N           16, 24 or 32 bytes (default 32)\n"
	  "  --out FILE           wrapped blob (default: stdout)\n"
	  "  --plaintext-out FILE also return the key in the clear, to FILE (mode\n"
	  "                       0600); \"-\" means stdout (with --out FILE), or the\n"
	  "                       \"plaintext\" field with --json\n"
	  "With --json prints {\"ciphertext\": base64, \"version\": N}." },
	{ "principal create", cmd_principal_create, B(O_UID) | B(O_GID), 1, 1,
	  "principal create NAME (--uid USER|UID)... (--gid GROUP|GID)...",
	  "Create a principal: a named caller of the service socket, recognised by\n"
	  "its uid (first) or gid. It may do nothing until granted. Admin socket." },
	{ "principal list", cmd_principal_list, 0, 0, 0, "principal list",
	  "List principals by name (--json: with everything they hold)." },
	{ "principal show", cmd_principal_show, 0, 1, 1, "principal show NAME",
	  "Show a principal's ids, grants and rate limits." },
	{ "principal grant", cmd_principal_grant, B(O_KEY) | B(O_OP), 1, 1,
	  "principal grant NAME --key PATTERN --op LIST",
	  "Let the principal do operations on keys whose names match PATTERN (a\n"
	  "name, or a glob with * and ?). LIST: comma-separated sign, verify, mac,\n"
	  "verify-mac, wrap, unwrap, rewrap, generate-data-key, get-public-key, or all." },
	{ "principal revoke", cmd_principal_revoke, B(O_KEY) | B(O_OP), 1, 1,
	  "principal revoke NAME --key PATTERN [--op LIST]",
	  "Take operations (all without --op) back from the grant for PATTERN." },
	{ "principal limit", cmd_principal_limit, B(O_OP) | B(O_RATE) | B(O_BURST), 1, 1,
	  "principal limit NAME [--op OP] --rate PER_SECOND --burst N",
	  "Set a token-bucket rate limit for one operation, or (without --op) for\n"
	  "all the principal's calls together. --rate 0 removes it. Calls above\n"
	  "it get RESOURCE_EXHAUSTED with a retry-after time." },
	{ "principal delete", cmd_principal_delete, 0, 1, 1, "principal delete NAME",
	  "Delete a principal; its callers are refused from then on and its API\n"
	  "keys are revoked." },
	{ "principal add-key", cmd_principal_add_key, B(O_OUT) | B(O_IMPORT), 1, 1,
	  "principal add-key NAME [--out FILE] [--import FILE]",
	  "Give the principal an API key. From then on every call it makes must be\n"
	  "signed with it (--api-key FILE; libcoffer: coffer_set_api_key). The\n"
	  "daemon generates the secret in its token and shows it this once, sealed\n"
	  "in a session (needs --identity).\n"
	  "  --out FILE      write a credentials file (mode 0600, never replaced)\n"
	  "                  instead of printing the secret\n"
	  "  --import FILE   use the 32..64 secret bytes in FILE instead" },
	{ "principal rotate-secret", cmd_principal_rotate_secret,
	  B(O_OUT) | B(O_IMPORT) | B(O_OVERLAP), 1, 1,
	  "principal rotate-secret KEYID [--overlap DURATION] [--out FILE] [--import FILE]",
	  "Give the API key a new secret (shown once, as for add-key). The old one\n"
	  "keeps working for --overlap (e.g. 3600, 30m, 24h, 7d; at most 90d;\n"
	  "default 0: it stops at once), then is destroyed in the token." },
	{ "principal revoke-key", cmd_principal_revoke_key, 0, 1, 1,
	  "principal revoke-key KEYID",
	  "Revoke an API key: its secrets are destroyed and calls signed with it\n"
	  "are refused (UNAUTHENTICATED, \"revoked\")." },
	{ "principal set-auth", cmd_principal_set_auth, B(O_UID_ONLY) | B(O_SIGNED_ONLY), 1, 1,
	  "principal set-auth NAME (--uid-only | --signed-only)",
	  "Whether the principal must sign its calls while it has no live API key.\n"
	  "Its first add-key sets this and revoking its last key keeps it, so its\n"
	  "calls stay refused unsigned until --uid-only allows its uid alone again\n"
	  "(a live key still requires signing). --signed-only sets it. Audited." },
	{ "principal keys", cmd_principal_keys, 0, 0, 1, "principal keys [NAME]",
	  "List API keys (of NAME, or of everyone) with their live secrets and the\n"
	  "deadlines of rotated-out ones." },
	{ "audit tail", cmd_audit_tail, B(O_COUNT), 0, 0, "audit tail [--count N]",
	  "Print the last N records of the audit trail (default 20, at most 1000),\n"
	  "oldest first, one JSON object per line (--json: an array)." },
	{ "audit verify", cmd_audit_verify,
	  B(O_FILE) | B(O_PUBLIC_KEY) | B(O_STATE_DB) | B(O_ANCHOR), 0, 0,
	  "audit verify [--file PATH --public-key PEM [--state-db DB | --anchor SEQ:CHAIN]]",
	  "Check the audit trail: every record's number and chain value, every seal\n"
	  "(a signature by the token's audit seal key), and that the trail ends where\n"
	  "the daemon last wrote it. Exit 0 if it is intact; else exit 1 and name the\n"
	  "first missing or wrong record (altered, deleted, inserted, reordered, cut,\n"
	  "or a tail rewritten or rolled back).\n"
	  "Without --file the daemon checks its own trail. With --file it is checked\n"
	  "here, offline, with no daemon and no token:\n"
	  "  --file PATH        the trail (audit.log, or a copy)\n"
	  "  --public-key PEM   the seal key's public key (<state_dir>/audit-seal.pub)\n"
	  "  --state-db DB      the daemon's state store (<state_dir>/coffer.db), read\n"
	  "                     only: the anchor (last record's number and chain value);\n"
	  "                     after a clean stop nothing may follow it\n"
	  "  --anchor SEQ:CHAIN an anchor noted elsewhere (e.g. from --json output)\n"
	  "Without an anchor a cut tail or an older copy of the file cannot be seen." },
	{ "identity", cmd_identity, B(O_OUT) | B(O_ADMIN), 0, 0,
	  "identity [--out FILE] [--admin]",
	  "Print the daemon's identity: the fingerprint (sha256:...) and the EC P-256\n"
	  "public key (PEM) that callers pin to open sealed sessions. This answer is\n"
	  "not authenticated: read it once over a socket you trust, then give the\n"
	  "file to callers (--identity FILE or $COFFER_IDENTITY).\n"
	  "  --out FILE      write the PEM to FILE (the fingerprint still goes to stdout)\n"
	  "  --admin         ask the admin socket\n"
	  "With --json prints {\"fingerprint\", \"pem\"}." },
	{ "health", cmd_health, B(O_SERVICE) | B(O_ADMIN), 0, 0,
	  "health [--service NAME] [--admin]",
	  "Ask grpc.health.v1.Health/Check. Prints the serving status; exit 0 only\n"
	  "when SERVING.\n"
	  "  --service NAME  coffer.v1.KeyService or coffer.v1.AdminService\n"
	  "                  (default: the daemon as a whole)\n"
	  "  --admin         ask the admin socket" },
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void
usage(FILE *f)
{
	fprintf(f, "usage: cofferctl [--socket PATH] [--admin-socket PATH] [--json] "
	    "[--timeout MS]\n                 COMMAND [ARGS]\n\nCommands:\n");
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(f, "  %s\n", commands[i].synopsis);
	fprintf(f,
	    "\nOptions (also accepted after the command):\n"
	    "  --socket PATH        service socket (default: $COFFER_SOCKET, else\n"
	    "                       " DEFAULT_SOCKET ")\n"
	    "  --admin-socket PATH  admin socket for key create/import/rotate and\n"
	    "                       --admin (default: $COFFER_ADMIN_SOCKET, else\n"
	    "                       " DEFAULT_ADMIN_SOCKET ")\n"
	    "  --identity FILE      the daemon identity to pin (PEM from `cofferctl\n"
	    "                       identity`; default: $COFFER_IDENTITY). wrap,\n"
	    "                       unwrap, datakey --plaintext-out and key import\n"
	    "                       travel in a sealed session and need it\n"
	    "  --no-peer-check      accept a session the daemon bound to other ids\n"
	    "                       than this process's (only where a user namespace\n"
	    "                       maps them; otherwise it means a relay)\n"
	    "  --idempotency-key K  the key of this command's change (default: a new\n"
	    "                       random one): running a command again with the\n"
	    "                       same K makes no second change. K is 8 to 128\n"
	    "                       characters of A-Z a-z 0-9 . _ : -\n"
	    "  --api-key FILE       sign service-socket calls with this API key\n"
	    "                       (from `principal add-key --out`; default:\n"
	    "                       $COFFER_API_KEY_FILE)\n"
	    "  --json               machine-readable output (binary as base64)\n"
	    "  --timeout MS         deadline per call in milliseconds (0 = none;\n"
	    "                       default %u)\n"
	    "  -h, --help           this text; \"cofferctl COMMAND --help\" for a command\n"
	    "\nExit status:\n"
	    "  0  success; verify/verify-mac: valid\n"
	    "  1  the operation failed, or verify/verify-mac: invalid, or health:\n"
	    "     not serving\n"
	    "  2  usage error\n"
	    "  3  permission denied or unauthenticated\n"
	    "  4  key or key version not found\n"
	    "  5  daemon unavailable (not running, stopping, busy), or deadline\n"
	    "     exceeded\n"
	    "  6  invalid input or failed precondition: malformed request, size limit,\n"
	    "     key already exists, key type/purpose/state does not allow it\n"
	    "Errors are printed on stderr as \"cofferctl: <reason>\".\n",
	    COFFER_DEFAULT_TIMEOUT_MS);
}

static const struct cmd *
find_command(int argc, char **argv, int *used)
{
	char name[64];

	if (argc < 1)
		return NULL;
	if (strcmp(argv[0], "key") == 0 || strcmp(argv[0], "principal") == 0 ||
	    strcmp(argv[0], "audit") == 0) {
		if (argc < 2)
			return NULL;
		if (snprintf(name, sizeof(name), "%s %s", argv[0], argv[1]) >= (int)sizeof(name))
			return NULL;
		*used = 2;
	} else {
		if (snprintf(name, sizeof(name), "%s", argv[0]) >= (int)sizeof(name))
			return NULL;
		*used = 1;
	}
	for (size_t i = 0; i < NCOMMANDS; i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

static void
harden(void)
{
	struct rlimit rl = { 0, 0 };

	/* Secrets may pass through this process: no core files, no ptrace
	 * by other processes of the same user. */
	(void)setrlimit(RLIMIT_CORE, &rl);
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

int
main(int argc, char **argv)
{
	struct ctl ctl;
	struct opts o;
	struct option lo[O__COUNT + 1];
	const struct cmd *cmd;
	const char *env;
	size_t n = 0;
	int ch, used = 0, rc;

	harden();
	memset(&ctl, 0, sizeof(ctl));
	memset(&o, 0, sizeof(o));
	ctl.timeout_ms = -1;
	env = getenv("COFFER_SOCKET");
	ctl.socket = env != NULL && *env != '\0' ? env : DEFAULT_SOCKET;
	env = getenv("COFFER_ADMIN_SOCKET");
	ctl.admin_socket = env != NULL && *env != '\0' ? env : DEFAULT_ADMIN_SOCKET;
	env = getenv("COFFER_IDENTITY");
	ctl.identity = env != NULL && *env != '\0' ? env : NULL;
	env = getenv("COFFER_API_KEY_FILE");
	ctl.api_key = env != NULL && *env != '\0' ? env : NULL;
	{
		uint8_t rnd[12];

		if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
			errmsg(NULL, "cannot read random bytes for an idempotency key");
			return EXIT_FAILED;
		}
		strcpy(ctl.idem_key, "ctl-");
		for (size_t i = 0; i < sizeof(rnd); i++)
			snprintf(ctl.idem_key + 4 + 2 * i, 3, "%02x", rnd[i]);
	}

	memset(lo, 0, sizeof(lo));
	for (int i = 0; i < O__COUNT; i++)
		if (COMMON & B(i))
			lo[n++] = all_options[i];
	opterr = 0;
	while ((ch = getopt_long(argc, argv, "+h", lo, NULL)) != -1) {
		int id = ch == 'h' ? O_HELP : ch - OPT_BASE;
		int c;

		if (ch == '?' || ch == ':')
			return usage_error("unknown option, or option without its argument",
			    argv[optind - 1]);
		if (id == O_HELP) {
			usage(stdout);
			return EXIT_OK;
		}
		if ((c = common_opt(&ctl, id, optarg)) == -1)
			return bad_value("--timeout", optarg, "not a number of milliseconds (0 = none)");
		if (c == -2)
			return bad_value("--idempotency-key", optarg,
			    "want 8..128 of A-Z a-z 0-9 . _ : -");
		if (c == 0)
			return usage_error("unexpected option", argv[optind - 1]);
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if ((cmd = find_command(argc - optind, argv + optind, &used)) == NULL) {
		if (strcmp(argv[optind], "help") == 0) {
			usage(stdout);
			return EXIT_OK;
		}
		if (strcmp(argv[optind], "key") == 0 && optind + 1 >= argc)
			return usage_error("key needs a subcommand: create, import, list, "
			    "show, rotate, set-primary, enable, disable, schedule-destroy, "
			    "cancel-destroy, set-min, trim, set-rotation or pubkey", NULL);
		if (strcmp(argv[optind], "audit") == 0 && optind + 1 >= argc)
			return usage_error("audit needs a subcommand: tail or verify", NULL);
		if (strcmp(argv[optind], "principal") == 0 && optind + 1 >= argc)
			return usage_error("principal needs a subcommand: create, list, show, "
			    "grant, revoke, limit, delete, add-key, rotate-secret, revoke-key, "
			    "set-auth or keys", NULL);
		return usage_error("unknown command", argv[optind + (used == 2)]);
	}
	/* The command's argv: argv[0] is its last name word. */
	rc = parse_opts(&ctl, cmd, argc - optind - used + 1, argv + optind + used - 1, &o);
	if (rc == EXIT_HELP_DONE)
		return flush_stdout();
	if (rc != EXIT_OK)
		return rc;
	rc = cmd->fn(&ctl, &o);
	opts_free(&o);
	return rc;
}
