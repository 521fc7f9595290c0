/*
 * test_p11_multiproc — several processes on one SoftHSM2 token directory, as
 * cofferd replicas sharing a token run (cf_p11_config.lock_file):
 *   - the lock file: created 0600, errors name it; token writes wait for an
 *     exclusive holder, searches only for an exclusive one, crypto for none;
 *   - three processes ensuring the same keys at once end with one key each;
 *   - a handle whose object another process destroyed and re-made finds the
 *     new object (one fresh search), for signing and for destroying;
 *   - 3 processes for COFFER_STRESS_SECONDS (10) each generating, finding (its
 *     own and the others' newest keys, by label), signing with and destroying
 *     token key pairs: 0 errors, 0 missed finds, 0 duplicates, 0 leftovers and
 *     a healthy token with the lock file; then the same without it, where only
 *     the miss rate is reported (SoftHSM 2.6.1 hides a just-made object from
 *     another process's search now and then);
 *   - three cofferd with [token] lock_file start together on a fresh token.
 * Every PKCS#11 context lives in a forked child (never in the parent, so no
 * child inherits an initialised module); children report through shared
 * memory and their exit status.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/sha.h>

#include "cf_status.h"
#include "cf_test_token.h"

#define WORKERS 3
#define WINDOW 4     /* live keys per stress worker; the oldest is destroyed */
#define ENSURE_NAMES 24

static struct cf_test_token tok;
static char lock_path[400];
static const uint8_t msg[] = "several processes, one token";

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void *
shm_new(size_t len)
{
	void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	CU_ASSERT_FATAL(m != MAP_FAILED);
	memset(m, 0, len);
	return m;
}

/* ---- children ---- */

/* Checks inside a child: print and count; the child exits non-zero. */
static int child_failed;
#define C_CHECK(cond) do {                                                          \
	if (!(cond)) {                                                              \
		fprintf(stderr, "\n  [pid %d] %s:%d: %s failed (%s)\n", (int)getpid(), \
			__FILE__, __LINE__, #cond, cf_error_detail());              \
		child_failed++;                                                     \
	}                                                                           \
} while (0)

static pid_t
spawn(int (*fn)(void *), void *arg)
{
	pid_t pid;

	fflush(stderr);
	if ((pid = fork()) == 0) {
		child_failed = 0;
		_exit(fn(arg) != 0 || child_failed ? 1 : 0);
	}
	CU_ASSERT_FATAL(pid > 0);
	return pid;
}

/* The child's exit status; a child still running after timeout_s is killed
 * (a hang is a failure, e.g. a deadlock between the locks) and gives -1. */
static int
reap(pid_t pid, double timeout_s)
{
	double end = now_s() + timeout_s;
	int st;

	for (;;) {
		pid_t w = waitpid(pid, &st, WNOHANG);

		if (w == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
		if (w < 0)
			return -1;
		if (now_s() > end) {
			fprintf(stderr, "\n  child %d hangs: killed\n", (int)pid);
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			return -1;
		}
		sleep_ms(20);
	}
}

static int
run_child(int (*fn)(void *), void *arg, double timeout_s)
{
	return reap(spawn(fn, arg), timeout_s);
}

static int
child_open(int locked, int copies, cf_p11 **p)
{
	struct cf_p11_config c = tok.cfg;
	int r;

	c.lock_file = locked ? lock_path : NULL;
	c.no_session_copies = !copies;
	if ((r = cf_p11_open(&c, p)) != CF_OK)
		fprintf(stderr, "\n  [pid %d] cf_p11_open: %s: %s\n", (int)getpid(),
			cf_status_name(r), cf_error_detail());
	return r;
}

/* Sign and verify once with k. */
static int
sign_verify(cf_p11_key *k)
{
	cf_buf *sig = cf_buf_new(CF_P11_MAX_SIG);
	int r;

	if (sig == NULL)
		return CF_E_NOMEM;
	if ((r = cf_p11_sign(k, NULL, msg, sizeof(msg), sig)) == CF_OK)
		r = cf_p11_verify(k, NULL, msg, sizeof(msg), cf_buf_peek(sig), cf_buf_len(sig));
	cf_buf_free(sig);
	return r;
}

static int
suite_init(void)
{
	if (cf_test_token_create(&tok, "coffer-multiproc") != 0)
		return -1;
	snprintf(lock_path, sizeof(lock_path), "%s/tokens/coffer.lock", tok.dir);
	return 0;
}

static int
suite_clean(void)
{
	cf_test_token_destroy(&tok);
	return 0;
}

/* ---- the lock file itself ---- */

static int
child_lock_file(void *arg)
{
	struct cf_p11_config c = tok.cfg;
	char path[500];
	cf_p11 *p = NULL;
	int r;

	(void)arg;
	snprintf(path, sizeof(path), "%s/no-such-dir/coffer.lock", tok.dir);
	c.lock_file = path;
	r = cf_p11_open(&c, &p);
	C_CHECK(r == CF_E_IO && strstr(cf_error_detail(), path) != NULL);
	c.lock_file = tok.dir; /* a directory */
	r = cf_p11_open(&c, &p);
	C_CHECK(r == CF_E_IO && strstr(cf_error_detail(), tok.dir) != NULL);
	/* Created if absent. */
	if (child_open(1, 1, &p) != CF_OK)
		return 1;
	cf_p11_close(p);
	return 0;
}

static void
test_lock_file(void)
{
	struct stat st;

	(void)unlink(lock_path);
	CU_ASSERT_EQUAL(run_child(child_lock_file, NULL, 60), 0);
	CU_ASSERT_EQUAL_FATAL(stat(lock_path, &st), 0);
	CU_ASSERT(S_ISREG(st.st_mode));
	CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
}

/* ---- what waits for whom ---- */

struct holder {
	int how;           /* LOCK_EX or LOCK_SH */
	atomic_int held;   /* 1 held, -1 failed */
};

#define HOLD_MS 800

/* Another open file description of the lock file, which is the same as
 * another process holding it: held for HOLD_MS, then released. */
static void *
holder_main(void *arg)
{
	struct holder *h = arg;
	int fd = open(lock_path, O_RDWR | O_CLOEXEC);

	if (fd < 0 || flock(fd, h->how) != 0) {
		perror("holder");
		atomic_store(&h->held, -1);
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	atomic_store(&h->held, 1);
	sleep_ms(HOLD_MS);
	close(fd);
	return NULL;
}

enum step { GENERATE, OPEN, SIGN, DESTROY };

/* Seconds one call of `step` on "wait"/1 takes while a holder has the lock
 * file in mode `how` (for HOLD_MS from just before the call). */
static double
timed_under(int how, enum step step, cf_p11 *p, cf_p11_key **k, int *r)
{
	struct holder h = { how, 0 };
	pthread_t t;
	double t0, dt;

	pthread_create(&t, NULL, holder_main, &h);
	while (atomic_load(&h.held) == 0)
		sleep_ms(1);
	t0 = now_s();
	if (atomic_load(&h.held) < 0)
		*r = CF_E_IO;
	else if (step == GENERATE)
		*r = cf_p11_key_generate(p, "wait", 1, CF_KEY_EC_P256, 0, k);
	else if (step == OPEN)
		*r = cf_p11_key_open(p, "wait", 1, k);
	else if (step == SIGN)
		*r = sign_verify(*k);
	else
		*r = cf_p11_key_destroy(*k);
	dt = now_s() - t0;
	pthread_join(t, NULL);
	return dt;
}

#define WAITED(dt) ((dt) >= HOLD_MS / 1000.0 * 0.8)
#define NOT_WAITED(dt) ((dt) < HOLD_MS / 1000.0 * 0.5)

static int
child_exclusion(void *arg)
{
	cf_p11 *p = NULL;
	cf_p11_key *k = NULL, *k2 = NULL;
	double dt;
	int r;

	(void)arg;
	if (child_open(1, 1, &p) != CF_OK)
		return 1;
	/* An exclusive holder (another replica writing) holds up writes and
	 * searches. */
	dt = timed_under(LOCK_EX, GENERATE, p, &k, &r);
	fprintf(stderr, "(generate under LOCK_EX: %.2f s) ", dt);
	C_CHECK(r == CF_OK && WAITED(dt));
	dt = timed_under(LOCK_EX, OPEN, p, &k2, &r);
	fprintf(stderr, "(lookup under LOCK_EX: %.2f s) ", dt);
	C_CHECK(r == CF_OK && WAITED(dt));
	/* Crypto with a resolved handle never touches the lock. */
	C_CHECK(k2 != NULL && sign_verify(k2) == CF_OK);
	dt = timed_under(LOCK_EX, SIGN, p, &k2, &r);
	fprintf(stderr, "(sign under LOCK_EX: %.3f s) ", dt);
	C_CHECK(r == CF_OK && NOT_WAITED(dt));
	cf_p11_key_free(k2);
	k2 = NULL;
	/* A shared holder (another replica searching): searches go on, writes
	 * wait. */
	dt = timed_under(LOCK_SH, OPEN, p, &k2, &r);
	fprintf(stderr, "(lookup under LOCK_SH: %.3f s) ", dt);
	C_CHECK(r == CF_OK && NOT_WAITED(dt));
	cf_p11_key_free(k2);
	if (k != NULL) {
		dt = timed_under(LOCK_SH, DESTROY, p, &k, &r);
		fprintf(stderr, "(destroy under LOCK_SH: %.2f s) ", dt);
		C_CHECK(r == CF_OK && WAITED(dt));
	}
	cf_p11_key_free(k);
	cf_p11_close(p);
	return 0;
}

static void
test_exclusion(void)
{
	CU_ASSERT_EQUAL(run_child(child_exclusion, NULL, 120), 0);
}

/* ---- ensure: replicas starting together ---- */

struct ensure_shm {
	atomic_int arrive[ENSURE_NAMES];
	int status[WORKERS][ENSURE_NAMES];
	int created[WORKERS][ENSURE_NAMES];
	unsigned char spki_md[WORKERS][ENSURE_NAMES][SHA256_DIGEST_LENGTH];
};
static struct ensure_shm *ens;

static int
child_ensure(void *arg)
{
	int w = (int)(intptr_t)arg;
	cf_p11 *p = NULL;
	char name[32];

	if (child_open(1, 1, &p) != CF_OK)
		return 1;
	for (int i = 0; i < ENSURE_NAMES; i++) {
		cf_p11_key *k = NULL;
		cf_buf *der = cf_buf_new(256);

		/* All three ask for the same name at the same moment. */
		atomic_fetch_add(&ens->arrive[i], 1);
		while (atomic_load(&ens->arrive[i]) < WORKERS)
			sched_yield();
		snprintf(name, sizeof(name), "ensure-%d", i);
		ens->status[w][i] = cf_p11_key_ensure(p, name, 1, CF_KEY_EC_P256, &k,
						      &ens->created[w][i]);
		if (ens->status[w][i] != CF_OK)
			fprintf(stderr, "\n  [%d] ensure %s: %s\n", w, name, cf_error_detail());
		else if (cf_p11_pubkey_der(k, der) == CF_OK)
			SHA256(cf_buf_peek(der), cf_buf_len(der), ens->spki_md[w][i]);
		cf_buf_free(der);
		cf_p11_key_free(k);
	}
	cf_p11_close(p);
	return 0;
}

/* Per-label object counts of a prefix, from the layer's own listing;
 * the labels of a prefix are then destroyed when purge is set. */
struct census {
	char prefix[16];
	int purge;
	long objects, labels, over; /* over: labels with more than one private/public */
	long purge_errors;
};

static int
child_census(void *arg)
{
	struct census *c = arg;
	struct cf_p11_object *o = NULL;
	size_t n = 0;
	cf_p11 *p = NULL;

	if (child_open(1, 1, &p) != CF_OK)
		return 1;
	C_CHECK(cf_p11_objects(p, &o, &n) == CF_OK);
	for (size_t i = 0; i < n; i++) {
		int priv = 0, pub = 0, first = 1;

		if (strncmp(o[i].name, c->prefix, strlen(c->prefix)) != 0)
			continue;
		c->objects++;
		for (size_t j = 0; j < n; j++) {
			if (strcmp(o[j].name, o[i].name) != 0 || o[j].version != o[i].version)
				continue;
			if (j < i)
				first = 0;
			priv += o[j].cls == CF_P11_PRIVATE;
			pub += o[j].cls == CF_P11_PUBLIC;
		}
		if (!first)
			continue;
		c->labels++;
		if (priv > 1 || pub > 1)
			c->over++;
		if (c->purge && cf_p11_objects_destroy(p, o[i].name, o[i].version, NULL, NULL) != CF_OK)
			c->purge_errors++;
	}
	free(o);
	cf_p11_close(p);
	return 0;
}

static void
census(const char *prefix, int purge, struct census *c)
{
	memset(c, 0, sizeof(*c));
	snprintf(c->prefix, sizeof(c->prefix), "%s", prefix);
	c->purge = purge;
	CU_ASSERT_EQUAL(run_child(child_census, c, 120), 0);
}

static void
test_ensure_race(void)
{
	struct census *c;
	pid_t pid[WORKERS];
	int created = 0, differ = 0, failed = 0;

	ens = shm_new(sizeof(*ens));
	c = shm_new(sizeof(*c));
	for (int w = 0; w < WORKERS; w++)
		pid[w] = spawn(child_ensure, (void *)(intptr_t)w);
	for (int w = 0; w < WORKERS; w++)
		CU_ASSERT_EQUAL(reap(pid[w], 120), 0);
	for (int i = 0; i < ENSURE_NAMES; i++) {
		int made = 0;

		for (int w = 0; w < WORKERS; w++) {
			failed += ens->status[w][i] != CF_OK;
			made += ens->created[w][i];
			differ += memcmp(ens->spki_md[w][i], ens->spki_md[0][i],
					 SHA256_DIGEST_LENGTH) != 0;
		}
		created += made;
		CU_ASSERT_EQUAL(made, 1);
	}
	fprintf(stderr, "(%d names, %d failed ensures, %d made, %d different keys) ", ENSURE_NAMES,
		failed, created, differ);
	CU_ASSERT_EQUAL(failed, 0);
	CU_ASSERT_EQUAL(differ, 0);
	/* One pair per name in the token, then gone. */
	census("ensure-", 1, c);
	CU_ASSERT_EQUAL(c->labels, ENSURE_NAMES);
	CU_ASSERT_EQUAL(c->objects, 2 * ENSURE_NAMES);
	CU_ASSERT_EQUAL(c->over, 0);
	CU_ASSERT_EQUAL(c->purge_errors, 0);
	munmap(c, sizeof(*c));
	munmap(ens, sizeof(*ens));
}

/* ---- handles of objects another process destroyed and re-made ---- */

struct stale_shm {
	atomic_int step;
	int copies;
	uint8_t old_spki[256], new_spki[256];
	size_t old_len, new_len;
};
static struct stale_shm *stl;

static void
wait_step(int s)
{
	double end = now_s() + 60;

	while (atomic_load(&stl->step) < s && now_s() < end)
		sleep_ms(2);
}

static int
spki_of(cf_p11_key *k, uint8_t *out, size_t *len)
{
	cf_buf *der = cf_buf_new(256);
	int r = der != NULL ? cf_p11_pubkey_der(k, der) : CF_E_NOMEM;

	if (r == CF_OK && cf_buf_len(der) <= 256) {
		memcpy(out, cf_buf_peek(der), cf_buf_len(der));
		*len = cf_buf_len(der);
	}
	cf_buf_free(der);
	return r;
}

/* The other process: makes "remade"/1 and "redone"/1, then destroys and
 * makes both again under the same labels. */
static int
child_remaker(void *arg)
{
	cf_p11 *p = NULL;
	cf_p11_key *a = NULL, *b = NULL;

	(void)arg;
	if (child_open(1, 1, &p) != CF_OK)
		return 1;
	C_CHECK(cf_p11_key_generate(p, "remade", 1, CF_KEY_EC_P256, 0, &a) == CF_OK);
	C_CHECK(cf_p11_key_generate(p, "redone", 1, CF_KEY_EC_P256, 0, &b) == CF_OK);
	C_CHECK(a != NULL && spki_of(a, stl->old_spki, &stl->old_len) == CF_OK);
	atomic_store(&stl->step, 1);
	wait_step(2);
	C_CHECK(a != NULL && cf_p11_key_destroy(a) == CF_OK);
	C_CHECK(b != NULL && cf_p11_key_destroy(b) == CF_OK);
	cf_p11_key_free(a);
	cf_p11_key_free(b);
	a = b = NULL;
	C_CHECK(cf_p11_key_generate(p, "remade", 1, CF_KEY_EC_P256, 0, &a) == CF_OK);
	C_CHECK(cf_p11_key_generate(p, "redone", 1, CF_KEY_EC_P256, 0, &b) == CF_OK);
	C_CHECK(a != NULL && spki_of(a, stl->new_spki, &stl->new_len) == CF_OK);
	atomic_store(&stl->step, 3);
	wait_step(4);
	C_CHECK(cf_p11_objects_destroy(p, "remade", 1, NULL, NULL) == CF_OK);
	cf_p11_key_free(a);
	cf_p11_key_free(b);
	cf_p11_close(p);
	return 0;
}

/* This process: handles resolved before the other process re-made the
 * objects, used after. */
static int
child_stale_user(void *arg)
{
	cf_p11 *p = NULL;
	cf_p11_key *a = NULL, *b = NULL, *gone = NULL;
	cf_buf *sig = cf_buf_new(CF_P11_MAX_SIG);
	int r, new_ok, old_ok;

	(void)arg;
	if (child_open(1, stl->copies, &p) != CF_OK || sig == NULL)
		return 1;
	wait_step(1);
	C_CHECK(cf_p11_key_open(p, "remade", 1, &a) == CF_OK);
	C_CHECK(cf_p11_key_open(p, "redone", 1, &b) == CF_OK);
	if (a == NULL || b == NULL)
		return 1;
	/* Resolve both handles (session copies made, when on). */
	C_CHECK(sign_verify(a) == CF_OK);
	C_CHECK(sign_verify(b) == CF_OK);
	atomic_store(&stl->step, 2);
	wait_step(3);
	r = cf_p11_sign(a, NULL, msg, sizeof(msg), sig);
	C_CHECK(r == CF_OK);
	new_ok = cf_test_openssl_verify(stl->new_spki, stl->new_len, CF_HASH_SHA256, 0, msg,
					sizeof(msg), cf_buf_peek(sig), cf_buf_len(sig));
	old_ok = cf_test_openssl_verify(stl->old_spki, stl->old_len, CF_HASH_SHA256, 0, msg,
					sizeof(msg), cf_buf_peek(sig), cf_buf_len(sig));
	if (stl->copies) {
		/* Documented: a session copy keeps the material it was made from
		 * until the handle is resolved again. */
		C_CHECK(old_ok && !new_ok);
	} else {
		/* The stale token handle: one fresh search found the new object. */
		C_CHECK(new_ok && !old_ok);
	}
	/* Destroying through the stale handle destroys what the label now
	 * holds (a fresh search), not an error. */
	C_CHECK(cf_p11_key_destroy(b) == CF_OK);
	C_CHECK(cf_p11_key_open(p, "redone", 1, &gone) == CF_E_NOT_FOUND);
	atomic_store(&stl->step, 4);
	cf_buf_free(sig);
	cf_p11_key_free(gone);
	cf_p11_key_free(a);
	cf_p11_key_free(b);
	cf_p11_close(p);
	return 0;
}

static void
stale_run(int copies)
{
	pid_t maker, user;

	stl = shm_new(sizeof(*stl));
	stl->copies = copies;
	maker = spawn(child_remaker, NULL);
	user = spawn(child_stale_user, NULL);
	CU_ASSERT_EQUAL(reap(user, 120), 0);
	atomic_store(&stl->step, 4); /* the maker cleans up even if the user failed */
	CU_ASSERT_EQUAL(reap(maker, 120), 0);
	munmap(stl, sizeof(*stl));
}

static void
test_stale_token_handles(void)
{
	stale_run(0);
}

static void
test_stale_with_session_copies(void)
{
	stale_run(1);
}

/* ---- the stress run ---- */

/* One published key of a worker: a seqlock (odd seq: being changed). A key
 * is published after its generation returned and retired before its
 * destruction starts, so a reader that sees the same even seq, with the key
 * live, before and after its search knows the key was in the token for the
 * whole search: not finding it is a miss. */
struct slot {
	atomic_uint_fast64_t seq;
	atomic_uint n;
	atomic_int live;
};

struct wstats {
	long made, destroyed, own_finds, own_misses, other_tries, other_finds, other_gone;
	long misses, found_on_retry, dups, signs, errors;
	double gen_s, find_s; /* time in generation and in searches by label */
	long finds;
};

struct stress_shm {
	int locked;
	char prefix[8];
	atomic_int ready, go, stop;
	atomic_uint latest[WORKERS];
	struct slot ring[WORKERS][WINDOW];
	struct wstats st[WORKERS];
};
static struct stress_shm *S;

static void
slot_set(struct slot *s, unsigned n, int live)
{
	atomic_fetch_add(&s->seq, 1);
	atomic_store(&s->n, n);
	atomic_store(&s->live, live);
	atomic_fetch_add(&s->seq, 1);
}

static void
key_name(char *buf, size_t len, int w, unsigned n)
{
	snprintf(buf, len, "%s-%d-%u", S->prefix, w, n);
}

static void
stress_error(struct wstats *st, int w, const char *what, int r)
{
	if (st->errors++ < 3)
		fprintf(stderr, "\n  [worker %d] %s: %s: %s\n", w, what, cf_status_name(r),
			cf_error_detail());
}

/* Find (and sign with) the newest key of worker o. */
static void
find_other(cf_p11 *p, int w, int o, struct wstats *st)
{
	unsigned m = atomic_load(&S->latest[o]);
	struct slot *s = &S->ring[o][m % WINDOW];
	uint_fast64_t s1;
	cf_p11_key *k = NULL;
	char name[48];
	double t0;
	int r;

	if (m == 0)
		return;
	s1 = atomic_load(&s->seq);
	if ((s1 & 1) || atomic_load(&s->n) != m || !atomic_load(&s->live) ||
	    atomic_load(&s->seq) != s1)
		return; /* already being retired */
	key_name(name, sizeof(name), o, m);
	st->other_tries++;
	t0 = now_s();
	r = cf_p11_key_open(p, name, 1, &k);
	st->find_s += now_s() - t0;
	st->finds++;
	if (r == CF_OK) {
		st->other_finds++;
		if ((r = sign_verify(k)) == CF_OK)
			st->signs++;
		else if (r == CF_E_NOT_FOUND && atomic_load(&s->seq) != s1)
			st->other_gone++; /* its owner destroyed it meanwhile */
		else
			stress_error(st, w, "signing with another process's key", r);
	} else if (r == CF_E_NOT_FOUND) {
		if (atomic_load(&s->seq) != s1) {
			st->other_gone++;
		} else {
			st->misses++;
			if (cf_p11_key_open(p, name, 1, &k) == CF_OK)
				st->found_on_retry++;
		}
		cf_error_clear();
	} else if (r == CF_E_TOKEN && strstr(cf_error_detail(), "same label") != NULL) {
		st->dups++;
	} else {
		stress_error(st, w, "finding another process's key", r);
	}
	cf_p11_key_free(k);
}

static void
retire(cf_p11_key **mine, int w, unsigned i, struct wstats *st)
{
	int r;

	if (mine[i] == NULL)
		return;
	slot_set(&S->ring[w][i], atomic_load(&S->ring[w][i].n), 0);
	if ((r = cf_p11_key_destroy(mine[i])) == CF_OK)
		st->destroyed++;
	else
		stress_error(st, w, "destroying", r);
	cf_p11_key_free(mine[i]);
	mine[i] = NULL;
}

static int
child_stress(void *arg)
{
	int w = (int)(intptr_t)arg;
	struct wstats *st = &S->st[w];
	cf_p11_key *mine[WINDOW] = { NULL };
	cf_p11 *p = NULL;
	char name[48];
	double t0;
	int r;

	if (child_open(S->locked, 1, &p) != CF_OK)
		return 1;
	atomic_fetch_add(&S->ready, 1);
	while (!atomic_load(&S->go))
		sleep_ms(1);
	for (unsigned n = 1; !atomic_load(&S->stop); n++) {
		cf_p11_key *k = NULL;

		retire(mine, w, n % WINDOW, st);
		key_name(name, sizeof(name), w, n);
		t0 = now_s();
		r = cf_p11_key_generate(p, name, 1, CF_KEY_EC_P256, 0, &mine[n % WINDOW]);
		st->gen_s += now_s() - t0;
		if (r != CF_OK) {
			stress_error(st, w, "generating", r);
			continue;
		}
		st->made++;
		slot_set(&S->ring[w][n % WINDOW], n, 1);
		atomic_store(&S->latest[w], n);
		/* Our own, by label, in a fresh search. */
		t0 = now_s();
		r = cf_p11_key_open(p, name, 1, &k);
		st->find_s += now_s() - t0;
		st->finds++;
		if (r == CF_OK) {
			st->own_finds++;
			if ((r = sign_verify(k)) == CF_OK)
				st->signs++;
			else
				stress_error(st, w, "signing with our own key", r);
		} else if (r == CF_E_NOT_FOUND) {
			st->own_misses++;
		} else if (r == CF_E_TOKEN && strstr(cf_error_detail(), "same label") != NULL) {
			st->dups++;
		} else {
			stress_error(st, w, "finding our own key", r);
		}
		cf_p11_key_free(k);
		for (int o = 0; o < WORKERS; o++)
			if (o != w)
				find_other(p, w, o, st);
	}
	for (unsigned i = 0; i < WINDOW; i++)
		retire(mine, w, i, st);
	cf_p11_close(p);
	return 0;
}

static unsigned
stress_seconds(void)
{
	const char *env = getenv("COFFER_STRESS_SECONDS");
	int s = env != NULL ? atoi(env) : 10;

	return s > 0 ? (unsigned)s : 1;
}

/* Run the workers; *t gets the sums. 0 if every worker exited cleanly. */
static int
stress_run(int locked, const char *prefix, struct wstats *t)
{
	unsigned seconds = stress_seconds();
	pid_t pid[WORKERS];
	double end;
	int bad = 0;

	S = shm_new(sizeof(*S));
	S->locked = locked;
	snprintf(S->prefix, sizeof(S->prefix), "%s", prefix);
	for (int w = 0; w < WORKERS; w++)
		pid[w] = spawn(child_stress, (void *)(intptr_t)w);
	end = now_s() + 60;
	while (atomic_load(&S->ready) < WORKERS && now_s() < end)
		sleep_ms(5);
	atomic_store(&S->go, 1);
	sleep(seconds);
	atomic_store(&S->stop, 1);
	for (int w = 0; w < WORKERS; w++)
		bad += reap(pid[w], 120) != 0;
	memset(t, 0, sizeof(*t));
	for (int w = 0; w < WORKERS; w++) {
		const struct wstats *s = &S->st[w];

		t->made += s->made;
		t->destroyed += s->destroyed;
		t->own_finds += s->own_finds;
		t->own_misses += s->own_misses;
		t->other_tries += s->other_tries;
		t->other_finds += s->other_finds;
		t->other_gone += s->other_gone;
		t->misses += s->misses;
		t->found_on_retry += s->found_on_retry;
		t->dups += s->dups;
		t->signs += s->signs;
		t->errors += s->errors;
		t->gen_s += s->gen_s;
		t->find_s += s->find_s;
		t->finds += s->finds;
	}
	fprintf(stderr, "\n  %s lock file, %d processes, %u s: %ld pairs made, %ld destroyed, "
		"%ld signatures; own finds %ld (missed %ld); others' newest keys: %ld searches, "
		"%ld found, %ld destroyed by their owner meanwhile, %ld MISSED (%.2f %%, %ld found "
		"on an immediate retry); %ld duplicates, %ld errors; a generation took %.0f ms, "
		"a search %.0f ms on average\n  ",
		locked ? "with the" : "WITHOUT a", WORKERS, seconds, t->made, t->destroyed,
		t->signs, t->own_finds, t->own_misses, t->other_tries, t->other_finds,
		t->other_gone, t->misses,
		t->other_tries ? 100.0 * (double)t->misses / (double)t->other_tries : 0.0,
		t->found_on_retry, t->dups, t->errors,
		t->made ? 1000.0 * t->gen_s / (double)t->made : 0.0,
		t->finds ? 1000.0 * t->find_s / (double)t->finds : 0.0);
	munmap(S, sizeof(*S));
	S = NULL;
	return bad;
}

struct health {
	int made, signed_, destroyed, base_ok, objects;
};

/* A fresh process on the token after the run: the key made before it still
 * signs, a new key can be made, used and destroyed. */
static int
child_health(void *arg)
{
	struct health *h = arg;
	struct cf_p11_object *o = NULL;
	size_t n = 0;
	cf_p11 *p = NULL;
	cf_p11_key *k = NULL, *base = NULL;

	if (child_open(1, 1, &p) != CF_OK)
		return 1;
	h->base_ok = cf_p11_key_open(p, "base", 1, &base) == CF_OK && sign_verify(base) == CF_OK;
	h->made = cf_p11_key_generate(p, "health", 1, CF_KEY_EC_P256, 0, &k) == CF_OK;
	h->signed_ = h->made && sign_verify(k) == CF_OK;
	h->destroyed = h->made && cf_p11_key_destroy(k) == CF_OK;
	if (cf_p11_objects(p, &o, &n) == CF_OK)
		h->objects = (int)n;
	free(o);
	cf_p11_key_free(k);
	cf_p11_key_free(base);
	cf_p11_close(p);
	return 0;
}

static int
child_make_base(void *arg)
{
	cf_p11 *p = NULL;
	cf_p11_key *k = NULL;

	(void)arg;
	if (child_open(1, 1, &p) != CF_OK)
		return 1;
	C_CHECK(cf_p11_key_generate(p, "base", 1, CF_KEY_EC_P256, 0, &k) == CF_OK);
	cf_p11_key_free(k);
	cf_p11_close(p);
	return 0;
}

static void
test_stress_locked(void)
{
	struct wstats t;
	struct census *c = shm_new(sizeof(*c));
	struct health *h = shm_new(sizeof(*h));

	CU_ASSERT_EQUAL_FATAL(run_child(child_make_base, NULL, 60), 0);
	CU_ASSERT_EQUAL(stress_run(1, "mpl", &t), 0);
	CU_ASSERT(t.made >= 3 * WORKERS);
	CU_ASSERT(t.other_finds > 0);
	CU_ASSERT_EQUAL(t.errors, 0);
	CU_ASSERT_EQUAL(t.misses, 0);
	CU_ASSERT_EQUAL(t.own_misses, 0);
	CU_ASSERT_EQUAL(t.dups, 0);
	CU_ASSERT_EQUAL(t.destroyed, t.made);
	CU_ASSERT_EQUAL(t.own_finds, t.made);
	/* Nothing of the run is left in the token, and it is healthy. */
	census("mpl-", 0, c);
	fprintf(stderr, "(leftovers: %ld objects) ", c->objects);
	CU_ASSERT_EQUAL(c->objects, 0);
	CU_ASSERT_EQUAL(run_child(child_health, h, 60), 0);
	CU_ASSERT(h->base_ok);
	CU_ASSERT(h->made && h->signed_ && h->destroyed);
	CU_ASSERT_EQUAL(h->objects, 2); /* the base pair alone */
	munmap(h, sizeof(*h));
	munmap(c, sizeof(*c));
}

static void
test_stress_unlocked(void)
{
	struct wstats t;
	struct census *c = shm_new(sizeof(*c));

	/* Measured, not asserted: the difference the lock file makes. */
	(void)stress_run(0, "mpu", &t);
	census("mpu-", 1, c);
	fprintf(stderr, "(leftovers without the lock: %ld objects, %ld labels with duplicates) ",
		c->objects, c->over);
	CU_ASSERT(t.made > 0);
	munmap(c, sizeof(*c));
}

/* ---- cofferd replicas ---- */

/* The identity line of a cofferd log ("" if none). */
static void
log_identity(const char *log, char *out, size_t len)
{
	char line[512];
	FILE *f = fopen(log, "r");
	const char *id;

	out[0] = '\0';
	while (f != NULL && fgets(line, sizeof(line), f) != NULL)
		if ((id = strstr(line, "identity sha256:")) != NULL)
			snprintf(out, len, "%s", id);
	if (f != NULL)
		fclose(f);
}

/* Three cofferd started at once on a token none has used: each needs the
 * session identity and audit seal keys, which one of them makes and the
 * others open (without the lock file they make duplicates and fail). */
static void
test_daemons_start_together(void)
{
	struct cf_test_daemon d[WORKERS];
	char bin[400], conf[400], text[600], id[WORKERS][200];
	int ready = 0;

	cf_test_cofferd(bin, sizeof(bin));
	snprintf(conf, sizeof(conf), "%s/replica.conf", tok.dir);
	snprintf(text, sizeof(text), "[token]\nlock_file = %s\n", lock_path);
	CU_ASSERT_FATAL(cf_test_write_file(conf, text, 0600) == 0);
	for (int i = 0; i < WORKERS; i++) {
		memset(&d[i], 0, sizeof(d[i]));
		snprintf(d[i].state, sizeof(d[i].state), "%s/replica%d", tok.dir, i);
		snprintf(d[i].service, sizeof(d[i].service), "%s/r%d.sock", tok.dir, i);
		snprintf(d[i].admin, sizeof(d[i].admin), "%s/r%d.admin", tok.dir, i);
		snprintf(d[i].log, sizeof(d[i].log), "%s/replica%d.log", tok.dir, i);
		if ((d[i].pid = fork()) == 0) {
			int fd = open(d[i].log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

			if (fd >= 0) {
				dup2(fd, STDOUT_FILENO);
				dup2(fd, STDERR_FILENO);
			}
			execl(bin, bin, "-c", conf, "--module", tok.cfg.module_path, "--token-uri",
			      tok.uri, "--pin-file", tok.pin_file, "--state-dir", d[i].state,
			      "--service-socket", d[i].service, "--admin-socket", d[i].admin,
			      (char *)NULL);
			_exit(127);
		}
		CU_ASSERT_FATAL(d[i].pid > 0);
	}
	for (double end = now_s() + 60; now_s() < end && ready < WORKERS;) {
		ready = 0;
		for (int i = 0; i < WORKERS; i++)
			ready += cf_test_daemon_log_has(&d[i], "ready:");
		sleep_ms(50);
	}
	for (int i = 0; i < WORKERS; i++) {
		if (!cf_test_daemon_log_has(&d[i], "ready:"))
			fprintf(stderr, "\n  replica %d not ready: see %s\n", i, d[i].log);
		log_identity(d[i].log, id[i], sizeof(id[i]));
		kill(d[i].pid, SIGTERM);
		CU_ASSERT_EQUAL(reap(d[i].pid, 30), 0);
	}
	fprintf(stderr, "(%d of %d replicas ready) ", ready, WORKERS);
	CU_ASSERT_EQUAL(ready, WORKERS);
	/* One identity key, the same for every replica. */
	CU_ASSERT(id[0][0] != '\0');
	CU_ASSERT_STRING_EQUAL(id[1], id[0]);
	CU_ASSERT_STRING_EQUAL(id[2], id[0]);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "lock file: created 0600; errors name it", test_lock_file },
		{ "writes wait for any holder, searches for an exclusive one, crypto for none",
		  test_exclusion },
		{ "three processes ensuring the same keys at once: one key each", test_ensure_race },
		{ "token handle of an object another process re-made: one fresh search",
		  test_stale_token_handles },
		{ "session copies keep their material; destroy through a stale handle",
		  test_stale_with_session_copies },
		{ "3 processes generate/find/sign/destroy with the lock file: no miss",
		  test_stress_locked },
		{ "the same without the lock file: miss rate reported", test_stress_unlocked },
		{ "three cofferd with the lock file start at once on a fresh token",
		  test_daemons_start_together },
		{ NULL, NULL },
	};

	return cf_test_main("p11_multiproc", suite_init, suite_clean, cases);
}
