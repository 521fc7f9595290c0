/*
 * syncfail_shim.c — an LD_PRELOAD library for test_audit_failclosed: it makes
 * one fdatasync of a file fail with EIO, as the kernel reports pages of
 * earlier writes that did not reach the disk (a writeback error is told to
 * the next fdatasync of the file, once).
 *
 * Control: COFFER_SYNCFAIL_CTL names a file of at least 16 bytes that the
 * shim maps shared: [0] a countdown (int64), which each fdatasync of a file
 * whose name ends in COFFER_SYNCFAIL_NAME (default "audit.log") decrements
 * while it is above 0, the call that takes it to 0 failing; [1] how many
 * failed (int64), counted once their ".lost" file below is whole (counted
 * first, a test that saw the count could open the file before it was
 * made: CI). At a failure the shim writes what the disk would then be
 * missing to COFFER_SYNCFAIL_CTL with ".lost" appended: a line "OFFSET
 * LENGTH" (the file's size at its last good fdatasync, and what was
 * written after it), then those bytes as the file held them. Without the
 * variable every call goes through. Test-only.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define FDS 4096

static int64_t *ctl;            /* NULL: inactive */
static const char *name = "audit.log";
static char lost_path[4096];
static off_t good[FDS];         /* per fd: the size at its last good fdatasync, + 1 */

__attribute__((constructor)) static void
setup(void)
{
	const char *path = getenv("COFFER_SYNCFAIL_CTL");
	const char *n = getenv("COFFER_SYNCFAIL_NAME");
	void *m;
	int fd;

	if (n != NULL && *n != '\0')
		name = n;
	if (path == NULL || (fd = open(path, O_RDWR | O_CLOEXEC)) < 0)
		return;
	m = mmap(NULL, 16, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return;
	snprintf(lost_path, sizeof(lost_path), "%s.lost", path);
	ctl = m;
}

static int
watched(int fd)
{
	char link[64], target[4096];
	ssize_t k;
	size_t nl = strlen(name);

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	if ((k = readlink(link, target, sizeof(target) - 1)) < 0)
		return 0;
	target[k] = '\0';
	return (size_t)k >= nl && strcmp(target + k - nl, name) == 0;
}

/* What the disk would miss: [from, end of file), as the file holds it now. */
static void
save_lost(int fd, off_t from)
{
	struct stat st;
	char buf[65536];
	FILE *f;
	off_t at = from;
	ssize_t k;

	if (fstat(fd, &st) != 0 || (f = fopen(lost_path, "w")) == NULL)
		return;
	fprintf(f, "%lld %lld\n", (long long)from, (long long)(st.st_size - from));
	while (at < st.st_size && (k = pread(fd, buf, sizeof(buf), at)) > 0) {
		fwrite(buf, 1, (size_t)k, f);
		at += k;
	}
	fclose(f);
}

typedef int (*sync_fn)(int);

int
fdatasync(int fd)
{
	static sync_fn real;
	struct stat st;
	int r;

	if (real == NULL)
		real = (sync_fn)dlsym(RTLD_NEXT, "fdatasync");
	if (ctl == NULL || fd < 0 || fd >= FDS || !watched(fd))
		return real(fd);
	if (__atomic_load_n(&ctl[0], __ATOMIC_SEQ_CST) > 0 &&
	    __atomic_sub_fetch(&ctl[0], 1, __ATOMIC_SEQ_CST) == 0) {
		save_lost(fd, good[fd] > 0 ? good[fd] - 1 : 0);
		__atomic_add_fetch(&ctl[1], 1, __ATOMIC_SEQ_CST);
		errno = EIO;
		return -1;
	}
	if ((r = real(fd)) == 0 && fstat(fd, &st) == 0)
		good[fd] = st.st_size + 1;
	return r;
}
