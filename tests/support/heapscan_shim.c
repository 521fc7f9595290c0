/*
 * heapscan_shim.c — an LD_PRELOAD library for test_plaintext_heap: it copies
 * every block of ordinary memory a process releases or wipes into a dump
 * file, so the test can look for a secret in everything that ever held one
 * outside locked memory.
 *
 * Logged: the block of every free() and of realloc()'s old pointer (glibc
 * heap), and the range of every OPENSSL_cleanse() call that does not lie
 * in memory the process mlock()ed (this shim keeps the locked ranges). A
 * buffer wiped before it is freed is logged by its wipe, one freed unwiped
 * by its free. Not seen: ordinary memory only overwritten in place (a record
 * sealed where its plaintext lay) or never released, and wipes inside
 * libcrypto itself.
 *
 * Active when COFFER_HEAPSCAN_DIR is set: the dump is DIR/heap.PID.
 * cf_heapscan_stop() ends logging (before the test reads the dumps).
 * Test-only: it writes secrets to disk on purpose.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

extern void __libc_free(void *p);
extern void *__libc_realloc(void *p, size_t n);
void OPENSSL_cleanse(void *p, size_t n);

#define RANGES_MAX 16384

static int dump_fd = -1;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct { uintptr_t lo, hi; } locked[RANGES_MAX];
static size_t nlocked;
static void (*real_cleanse)(void *, size_t);

__attribute__((constructor)) static void
heapscan_init(void)
{
	const char *dir = getenv("COFFER_HEAPSCAN_DIR");
	char path[4096];

	if (dir == NULL)
		return;
	snprintf(path, sizeof(path), "%s/heap.%d", dir, (int)getpid());
	dump_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
}

void cf_heapscan_stop(void);

void
cf_heapscan_stop(void)
{
	int fd = dump_fd;

	dump_fd = -1;
	if (fd >= 0)
		close(fd);
}

/* One write per block: O_APPEND keeps blocks of different threads whole. */
static void
dump(const void *p, size_t n)
{
	const char *c = p;
	ssize_t w;

	while (dump_fd >= 0 && n > 0 && (w = write(dump_fd, c, n)) > 0) {
		c += w;
		n -= (size_t)w;
	}
}

static int
in_locked(const void *p, size_t n)
{
	uintptr_t a = (uintptr_t)p;
	int in = 0;

	pthread_mutex_lock(&mu);
	for (size_t i = 0; i < nlocked && !in; i++)
		in = a >= locked[i].lo && a + n <= locked[i].hi;
	pthread_mutex_unlock(&mu);
	return in;
}

int
mlock(const void *addr, size_t len)
{
	pthread_mutex_lock(&mu);
	if (nlocked < RANGES_MAX) {
		locked[nlocked].lo = (uintptr_t)addr;
		locked[nlocked++].hi = (uintptr_t)addr + len;
	}
	pthread_mutex_unlock(&mu);
	return (int)syscall(SYS_mlock, addr, len);
}

int
munlock(const void *addr, size_t len)
{
	pthread_mutex_lock(&mu);
	for (size_t i = 0; i < nlocked; i++)
		if (locked[i].lo == (uintptr_t)addr) {
			locked[i] = locked[--nlocked];
			break;
		}
	pthread_mutex_unlock(&mu);
	return (int)syscall(SYS_munlock, addr, len);
}

void
free(void *p)
{
	if (p != NULL && dump_fd >= 0)
		dump(p, malloc_usable_size(p));
	__libc_free(p);
}

void *
realloc(void *p, size_t n)
{
	if (p != NULL && dump_fd >= 0)
		dump(p, malloc_usable_size(p));
	return __libc_realloc(p, n);
}

void
OPENSSL_cleanse(void *p, size_t n)
{
	if (real_cleanse == NULL)
		*(void **)&real_cleanse = dlsym(RTLD_NEXT, "OPENSSL_cleanse");
	if (p != NULL && n > 0 && dump_fd >= 0 && !in_locked(p, n))
		dump(p, n);
	real_cleanse(p, n);
}
