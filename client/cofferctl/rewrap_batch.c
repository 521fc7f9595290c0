/*
 * rewrap --batch: a file of base64 blobs rewrapped line by line, with
 * progress, into a whole output file.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cofferctl.h"

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
int
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
	if (ctl->json && is_std(o->out))
		return usage_error("rewrap --batch --json prints a summary: give --out FILE for "
		    "the blobs", NULL);
	if (!is_std(o->in) && (in = fopen(o->in, "re")) == NULL) {
		errmsg(o->in, strerror(errno));
		return EXIT_FAILED;
	}
	/* --out FILE is written beside it and renamed over it at the end: it
	 * is whole or untouched, and --in and --out may be the same file. */
	if (!is_std(o->out)) {
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
		int e = errno;

		errmsg(is_std(o->in) ? "stdin" : o->in, strerror(e));
		/* The lines not read would be missing from the output: replacing
		 * --out with it (the input's own file, often) would lose them. */
		if (tmp != NULL) {
			fprintf(stderr, "cofferctl: %s is left as it was: the input could not be "
			    "read to its end\n", o->out);
			rc = EXIT_FAILED;
			goto done;
		}
		first = first ? first : COFFER_E_IO;
	}
	rewrap_progress(&rr, 1);
	if (fflush(out) != 0 || ferror(out) || (tmp != NULL && fsync(fileno(out)) != 0)) {
		errmsg(is_std(o->out) ? "stdout" : o->out, strerror(errno));
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
