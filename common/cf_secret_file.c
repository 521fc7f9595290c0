/* Secrets read from owner-only files (cf_secret_file.h). */
#include "cf_secret_file.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_status.h"

int
cf_secret_file_read(const char *path, const char *what, int code, size_t max, cf_secret **out)
{
	cf_secret *sec = NULL;
	struct stat st;
	ssize_t n;
	size_t len = 0;
	int fd = -1, r;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)) < 0) {
		r = cf_error(code, "cannot open %s %s: %s", what, path, strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		r = cf_error(code, "%s %s is not a regular file", what, path);
		goto out;
	}
	if (st.st_uid != geteuid()) {
		r = cf_error(code, "%s %s is owned by uid %u, not by the running user (uid %u); "
			     "chown it", what, path, (unsigned)st.st_uid, (unsigned)geteuid());
		goto out;
	}
	if ((st.st_mode & 077) != 0) {
		r = cf_error(code, "%s %s has mode %03o: group or others may access it; run "
			     "chmod 600 on it", what, path, (unsigned)(st.st_mode & 0777));
		goto out;
	}
	if ((r = cf_secret_new(max, &sec)) != CF_OK)
		goto out;
	while (len < max) {
		n = read(fd, cf_secret_ptr(sec) + len, max - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = cf_error(code, "cannot read %s %s: %s", what, path, strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (len == max) {
		r = cf_error(code, "%s %s is longer than %zu bytes", what, path, max);
		goto out;
	}
	while (len > 0 && (cf_secret_ptr(sec)[len - 1] == '\n' || cf_secret_ptr(sec)[len - 1] == '\r'))
		len--;
	if (len == 0) {
		r = cf_error(code, "%s %s is empty", what, path);
		goto out;
	}
	cf_secret_truncate(sec, len);
	*out = sec;
	sec = NULL;
	r = CF_OK;
out:
	if (fd >= 0)
		close(fd);
	cf_secret_free(sec);
	return r;
}
