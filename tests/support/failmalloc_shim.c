/*
 * failmalloc_shim.c — an LD_PRELOAD library for test_alloc_failures: it
 * makes one allocation asked for by the program's own code fail, the n-th
 * after the test arms it, so that every `== NULL` branch on the daemon's
 * paths is run against a real cofferd.
 *
 * Counted: malloc, calloc, realloc, strdup, strndup and posix_memalign
 * called directly from the main program's code (cofferd links all of
 * Coffer statically). Calls from libraries are never failed: gRPC core and
 * absl abort on a failed allocation by design, and they are not ours.
 *
 * Control: COFFER_FAILMALLOC_CTL names a file of at least 24 bytes that
 * the shim maps shared: [0] a countdown (int64), which each counted call
 * decrements while it is above 0, the call that takes it to 0 failing with
 * ENOMEM; [1] how many calls failed (int64); [2] how many were counted
 * (int64). Without the variable nothing is counted or failed.
 *
 * Threads: with COFFER_FAILTHREAD_FROM=N, the program's own pthread_create
 * calls from the N-th on (counted from 1) fail with EAGAIN, as when the
 * process is out of threads (with COFFER_FAILTHREAD_ONLY=1, the N-th
 * alone), each failure written to stderr as
 * "failthread: pthread_create #n failed (EAGAIN)".
 * Test-only.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t m);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);

static int64_t *ctl;                 /* NULL: inactive */
static long thread_from;             /* 0: no thread fails */
static int thread_only;              /* only the thread_from-th fails */
static long threads;                 /* the program's own pthread_create calls so far */
static uintptr_t text_lo, text_hi;   /* the main program's executable segments */

static int
main_text(struct dl_phdr_info *info, size_t size, void *arg)
{
	(void)size;
	(void)arg;
	/* The first object listed is the program itself. */
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr;

		if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
			continue;
		if (text_lo == 0 || lo < text_lo)
			text_lo = lo;
		if (lo + ph->p_memsz > text_hi)
			text_hi = lo + ph->p_memsz;
	}
	return 1;
}

__attribute__((constructor)) static void
setup(void)
{
	const char *path = getenv("COFFER_FAILMALLOC_CTL");
	const char *tf = getenv("COFFER_FAILTHREAD_FROM");
	void *m;
	int fd;

	if (tf != NULL && (thread_from = strtol(tf, NULL, 10)) > 0 && text_lo == 0)
		dl_iterate_phdr(main_text, NULL);
	thread_only = getenv("COFFER_FAILTHREAD_ONLY") != NULL;
	if (path == NULL || (fd = open(path, O_RDWR | O_CLOEXEC)) < 0)
		return;
	m = mmap(NULL, 3 * sizeof(int64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return;
	dl_iterate_phdr(main_text, NULL);
	ctl = m;
}

/* Should the call made from `from` fail? */
static int
fail_now(const void *from)
{
	uintptr_t a = (uintptr_t)from;
	int64_t left;

	if (ctl == NULL || a < text_lo || a >= text_hi)
		return 0;
	__atomic_add_fetch(&ctl[2], 1, __ATOMIC_RELAXED);
	left = __atomic_load_n(&ctl[0], __ATOMIC_RELAXED);
	while (left > 0)
		if (__atomic_compare_exchange_n(&ctl[0], &left, left - 1, 0, __ATOMIC_ACQ_REL,
						__ATOMIC_RELAXED)) {
			if (left != 1)
				return 0;
			__atomic_add_fetch(&ctl[1], 1, __ATOMIC_RELAXED);
			errno = ENOMEM;
			return 1;
		}
	return 0;
}

#define FROM __builtin_return_address(0)

void *
malloc(size_t n)
{
	return fail_now(FROM) ? NULL : __libc_malloc(n);
}

void *
calloc(size_t n, size_t m)
{
	return fail_now(FROM) ? NULL : __libc_calloc(n, m);
}

void *
realloc(void *p, size_t n)
{
	/* A failed realloc leaves the block as it was. */
	return fail_now(FROM) ? NULL : __libc_realloc(p, n);
}

int
posix_memalign(void **out, size_t align, size_t n)
{
	void *p;

	if (fail_now(FROM))
		return ENOMEM;
	if ((p = __libc_memalign(align, n)) == NULL)
		return ENOMEM;
	*out = p;
	return 0;
}

char *
strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = fail_now(FROM) ? NULL : __libc_malloc(n);

	return p != NULL ? memcpy(p, s, n) : NULL;
}

char *
strndup(const char *s, size_t max)
{
	size_t n = strnlen(s, max);
	char *p = fail_now(FROM) ? NULL : __libc_malloc(n + 1);

	if (p == NULL)
		return NULL;
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

int
pthread_create(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
	static create_fn real;
	uintptr_t a = (uintptr_t)FROM;

	if (real == NULL)
		real = (create_fn)dlsym(RTLD_NEXT, "pthread_create");
	if (thread_from > 0 && a >= text_lo && a < text_hi) {
		long n = __atomic_add_fetch(&threads, 1, __ATOMIC_RELAXED);

		if (n == thread_from || (n > thread_from && !thread_only)) {
			char line[80];
			int len = snprintf(line, sizeof(line),
					   "failthread: pthread_create #%ld failed (EAGAIN)\n", n);

			if (write(2, line, (size_t)len) < 0) {
				/* the test then sees no line, and says so */
			}
			return EAGAIN;
		}
	}
	return real(t, attr, fn, arg);
}
