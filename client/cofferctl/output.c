/*
 * cofferctl's output and I/O: error messages and exit codes, safe printing
 * of what the server sent, JSON and base64, and the files and standard
 * streams a command reads and writes.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cofferctl.h"

/* ---- messages and exit codes ---- */

void
errmsg(const char *what, const char *detail)
{
	if (what != NULL)
		fprintf(stderr, "cofferctl: %s: %s\n", what, detail);
	else
		fprintf(stderr, "cofferctl: %s\n", detail);
}

int
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
int
fail(int r)
{
	errmsg(NULL, coffer_error_message());
	return exit_for_status(r);
}

int
usage_error(const char *what, const char *arg)
{
	if (arg != NULL)
		errmsg(what, arg);
	else
		errmsg(NULL, what);
	fprintf(stderr, "Try 'cofferctl --help'.\n");
	return EXIT_USAGE;
}

void
wipe(void *p, size_t n)
{
	if (p != NULL)
		explicit_bzero(p, n);
}

/* Print a string that came from the server, control characters as '?'. */
void
put_safe(FILE *f, const char *s)
{
	for (; *s != '\0'; s++) {
		unsigned char ch = (unsigned char)*s;

		fputc(ch < 0x20 || ch == 0x7f ? '?' : ch, f);
	}
}

int
bad_value(const char *opt, const char *value, const char *why)
{
	fprintf(stderr, "cofferctl: %s ", opt);
	put_safe(stderr, value);
	fprintf(stderr, ": %s\nTry 'cofferctl --help'.\n", why);
	return EXIT_USAGE;
}

/* ---- JSON, base64, times ---- */

void
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
char *
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
int
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

/* Standard base64 (with padding) of s[0..n) into out (at least n / 4 * 3
 * bytes); the decoded length, or -1. */
ssize_t
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

/* Print a JSON object's opening and its first field, base64. */
int
put_json_open(const char *field, const struct coffer_bytes *b)
{
	fputc('{', stdout);
	return put_json_b64(stdout, field, b->data, b->len);
}

/* `,"name":[...]` of the operations in bits. */
void
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

void
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

/* ---- files and standard streams ---- */

/* Finish stdout: report a failed write (disk full, closed pipe). */
int
flush_stdout(void)
{
	if (fflush(stdout) != 0 || ferror(stdout)) {
		errmsg("stdout", strerror(errno));
		return EXIT_FAILED;
	}
	return EXIT_OK;
}

/* A new file (mode 0600) beside `path`, renamed over it by write_output:
 * a secret never lands in an inode another process may already hold open
 * or reach through a hard link. -1 with errno; *tmp: its name. */
static int
secret_tmp(const char *path, char **tmp)
{
	const char *slash = strrchr(path, '/');
	size_t dir = slash != NULL ? (size_t)(slash - path) + 1 : 0;
	int fd;

	if ((*tmp = malloc(dir + sizeof(".cofferctl-XXXXXX"))) == NULL)
		return -1;
	memcpy(*tmp, path, dir);
	memcpy(*tmp + dir, ".cofferctl-XXXXXX", sizeof(".cofferctl-XXXXXX"));
	if ((fd = mkostemp(*tmp, O_CLOEXEC)) == -1) {
		free(*tmp);
		*tmp = NULL;
	}
	return fd;
}

/*
 * Write bytes to `path` (NULL or "-": stdout). A secret goes to a new file
 * of mode 0600 that replaces a regular file already there. Written through
 * instead: a symbolic link, a FIFO or a device, and a file in a directory
 * cofferctl cannot create files in (one provisioned in /etc/app); a regular
 * file among them is made 0600 before the secret goes in.
 */
int
write_output(const char *path, const void *data, size_t len, int secret)
{
	const uint8_t *p = data;
	struct stat st;
	char *tmp = NULL;
	int fd = -1, rc = EXIT_FAILED;

	if (is_std(path)) {
		if (len > 0 && fwrite(data, 1, len, stdout) != len) {
			errmsg("stdout", strerror(errno));
			return EXIT_FAILED;
		}
		return flush_stdout();
	}
	if (secret && (lstat(path, &st) != 0 || S_ISREG(st.st_mode)))
		fd = secret_tmp(path, &tmp);
	if (fd == -1)
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, secret ? 0600 : 0644);
	if (fd == -1) {
		errmsg(path, strerror(errno));
		goto out;
	}
	if (tmp == NULL && secret && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
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
	if (tmp != NULL && rename(tmp, path) != 0) {
		errmsg(path, strerror(errno));
		goto out;
	}
	rc = EXIT_OK;
 out:
	if (fd != -1)
		close(fd);
	if (tmp != NULL) {
		if (rc != EXIT_OK)
			unlink(tmp);
		free(tmp);
	}
	return rc;
}

/* After the JSON result: also write the bytes to --out, when it is a file. */
int
json_done(const char *out, const void *data, size_t len)
{
	int rc;

	if ((rc = flush_stdout()) != EXIT_OK)
		return rc;
	if (!is_std(out))
		return write_output(out, data, len, 0);
	return EXIT_OK;
}

/*
 * Read all of `path` (NULL or "-": stdin), at most `max` bytes, into *out
 * (free with coffer_bytes_free, which wipes). Growth copies and wipes, so no
 * stale copy of the input is left in freed memory.
 */
int
read_input(const char *path, size_t max, struct coffer_bytes *out)
{
	uint8_t *buf = NULL, *nbuf;
	size_t len = 0, cap = 0;
	int fd = -1, rc = EXIT_FAILED;
	const char *name = path;

	if (is_std(path)) {
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

/* NULL or "-": the standard stream (stdin for an input, stdout for an output). */
int
is_std(const char *path)
{
	return path == NULL || strcmp(path, "-") == 0;
}
