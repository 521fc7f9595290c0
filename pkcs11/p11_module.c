/* Module loading, token selection, login, the session pool and recovery. */
#include "p11_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/uri.h>

#include "cf_secret_file.h"
#include "cf_status.h"

#define P11_LOGIN_ATTEMPTS 5
/* Waits between failed recoveries: short enough that a token back from a
 * restart serves within seconds, long enough not to hammer one that is gone. */
#define P11_BACKOFF_MIN_MS 100u
#define P11_BACKOFF_MAX_MS 5000u

static int64_t
p11_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Read the PIN file into a secret (cf_secret_file.h: a regular file owned by
 * the effective uid with no group/other permissions). */
static int
p11_read_pin(const char *path, cf_secret **out)
{
	return cf_secret_file_read(path, "PIN file", CF_E_PIN_FILE, P11_PIN_MAX, out);
}

/* The slots with a token: *out (n in *n), freed by the caller. */
int
p11_token_slots(CK_FUNCTION_LIST_PTR f, CK_SLOT_ID **out, CK_ULONG *n)
{
	CK_SLOT_ID *v = NULL;
	CK_RV rv = CKR_OK;

	/* Slots may appear between the two calls: ask again while they do. */
	for (int tries = 0; tries < 8; tries++) {
		CK_SLOT_ID *nv;

		if ((rv = f->C_GetSlotList(CK_TRUE, NULL, n)) != CKR_OK)
			break;
		if ((nv = realloc(v, (*n ? *n : 1) * sizeof(*v))) == NULL) {
			free(v);
			return cf_nomem();
		}
		v = nv;
		if ((rv = f->C_GetSlotList(CK_TRUE, v, n)) != CKR_BUFFER_TOO_SMALL)
			break;
	}
	if (rv != CKR_OK) {
		free(v);
		return p11_status(rv, "listing the token's slots (C_GetSlotList)");
	}
	*out = v;
	return CF_OK;
}

/* Find the one slot whose token matches the URI. */
static int
p11_find_slot(cf_p11 *p, CK_SLOT_ID *out)
{
	P11KitUri *uri = NULL;
	CK_SLOT_ID *slots = NULL;
	CK_ULONG n = 0, matches = 0, unread = 0;
	CK_TOKEN_INFO ti;
	CK_RV rv, unread_rv = CKR_OK;
	int r, ur;

	if ((uri = p11_kit_uri_new()) == NULL)
		return cf_nomem();
	ur = p11_kit_uri_parse(p->token_uri, P11_KIT_URI_FOR_TOKEN, uri);
	if (ur != P11_KIT_URI_OK) {
		r = cf_error(CF_E_CONFIG, "token URI \"%s\" is not a valid PKCS#11 URI: %s",
			     p->token_uri, p11_kit_uri_message(ur));
		goto out;
	}
	if ((r = p11_token_slots(p->f, &slots, &n)) != CF_OK)
		goto out;
	for (CK_ULONG i = 0; i < n; i++) {
		if ((rv = p->f->C_GetTokenInfo(slots[i], &ti)) != CKR_OK) {
			unread++;
			unread_rv = rv;
			continue;
		}
		if (p11_kit_uri_match_token_info(uri, &ti)) {
			if (matches++ == 0)
				*out = slots[i];
		}
	}
	/* A token that could not be read may be the one: not "initialise it". */
	if (matches == 0 && unread > 0) {
		r = cf_error(CF_E_UNAVAILABLE, "no token read matches %s, and %lu of the %lu "
			     "tokens present could not be read (%s)", p->token_uri,
			     (unsigned long)unread, (unsigned long)n, p11_rv_name(unread_rv));
		goto out;
	}
	if (matches == 0) {
		r = cf_error(CF_E_TOKEN_NOT_FOUND, "no token matches %s (%lu tokens present); "
			     "check the label or initialise the token", p->token_uri,
			     (unsigned long)n);
		goto out;
	}
	if (matches > 1) {
		r = cf_error(CF_E_CONFIG, "%lu tokens match %s; add serial= to the URI",
			     (unsigned long)matches, p->token_uri);
		goto out;
	}
	r = CF_OK;
out:
	free(slots);
	p11_kit_uri_free(uri);
	return r;
}

static void
p11_sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Open the anchor session and log in. The PIN is read, used and wiped here. */
static int
p11_login(cf_p11 *p)
{
	struct p11_file_id fid;
	struct stat st;
	cf_secret *pin = NULL;
	CK_RV rv = CKR_OK;
	int r;

	if ((rv = p->f->C_OpenSession(p->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
				      &p->anchor)) != CKR_OK) {
		p->anchor = CK_INVALID_HANDLE;
		return p11_status(rv, "opening the anchor session");
	}
	/* Identify the file before reading it: a change racing the read only
	 * costs one more attempt later. */
	memset(&fid, 0, sizeof(fid));
	if (stat(p->pin_file, &st) == 0) {
		fid.dev = st.st_dev;
		fid.ino = st.st_ino;
		fid.size = st.st_size;
		fid.mtime = st.st_mtim;
		fid.ctime = st.st_ctim;
		if (p->pin_refused && memcmp(&fid, &p->refused_pin, sizeof(fid)) == 0)
			return cf_error(CF_E_PIN_INCORRECT, "the token refused the PIN from %s "
					"(CKR_PIN_INCORRECT); it is not tried again until the "
					"file changes", p->pin_file);
	}
	if ((r = p11_read_pin(p->pin_file, &pin)) != CF_OK)
		return r;
	/* Concurrent logins of two processes at start-up race in SoftHSM: retry. */
	for (int i = 0; i < P11_LOGIN_ATTEMPTS; i++) {
		rv = p->f->C_Login(p->anchor, CKU_USER, cf_secret_ptr(pin), cf_secret_len(pin));
		if (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN || rv == CKR_PIN_INCORRECT ||
		    rv == CKR_PIN_LOCKED || rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE)
			break;
		p11_sleep_ms(20u << i);
	}
	cf_secret_free(pin);
	p->pin_refused = rv == CKR_PIN_INCORRECT;
	p->refused_pin = fid;
	if (rv == CKR_PIN_INCORRECT)
		return cf_error(CF_E_PIN_INCORRECT, "the token refused the PIN from %s "
				"(CKR_PIN_INCORRECT); check the PIN file", p->pin_file);
	return p11_status(rv, "logging in to the token");
}

static CK_RV
p11_initialize(cf_p11 *p)
{
	CK_C_INITIALIZE_ARGS args;
	CK_RV rv;

	memset(&args, 0, sizeof(args));
	args.flags = CKF_OS_LOCKING_OK;
	rv = p->f->C_Initialize(&args);
	if (rv == CKR_OK)
		p->we_initialized = 1;
	return rv == CKR_CRYPTOKI_ALREADY_INITIALIZED ? CKR_OK : rv;
}

static void
p11_pool_close_all(cf_p11 *p)
{
	for (unsigned i = 0; i < p->pool_free; i++)
		(void)p->f->C_CloseSession(p->pool[i].h);
	p->pool_open -= p->pool_free;
	p->pool_free = 0;
}

/* Open (create) the lock file once; its flock is what processes sharing
 * the token directory serialise on, so every process must name the same
 * file. */
static int
p11_lock_open(cf_p11 *p)
{
	struct stat st;

	p->lock_fd = open(p->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (p->lock_fd < 0)
		return cf_error(CF_E_IO, "cannot open the token lock file %s: %s", p->lock_path,
				strerror(errno));
	if (fstat(p->lock_fd, &st) != 0 || !S_ISREG(st.st_mode))
		return cf_error(CF_E_IO, "the token lock file %s is not a regular file",
				p->lock_path);
	return CF_OK;
}

CK_RV
p11_token_lock(cf_p11 *p, int how)
{
	if (p->lock_fd < 0)
		return CKR_OK;
	while (flock(p->lock_fd, how) != 0) {
		if (errno != EINTR) {
			cf_error(CF_E_IO, "flock(%s) on the token lock file %s failed: %s",
				 how == LOCK_EX ? "LOCK_EX" : "LOCK_SH", p->lock_path,
				 strerror(errno));
			return P11_RV_LOCK;
		}
	}
	return CKR_OK;
}

void
p11_token_unlock(cf_p11 *p)
{
	/* Cannot fail on an open descriptor we hold a lock through. */
	if (p->lock_fd >= 0)
		(void)flock(p->lock_fd, LOCK_UN);
}

int
p11_load(const char *path, void **dl, CK_FUNCTION_LIST_PTR *f)
{
	CK_C_GetFunctionList getfl;
	CK_RV rv;

	*f = NULL;
	if ((*dl = dlopen(path, RTLD_NOW | RTLD_LOCAL)) == NULL)
		return cf_error(CF_E_MODULE, "cannot load PKCS#11 module %s: %s", path, dlerror());
	if ((getfl = (CK_C_GetFunctionList)dlsym(*dl, "C_GetFunctionList")) == NULL)
		return cf_error(CF_E_MODULE, "%s is not a PKCS#11 module (no C_GetFunctionList)",
				path);
	if ((rv = getfl(f)) != CKR_OK || *f == NULL) {
		*f = NULL;
		return cf_error(CF_E_MODULE, "C_GetFunctionList of %s failed (%s)", path,
				p11_rv_name(rv));
	}
	return CF_OK;
}

int
cf_p11_open(const struct cf_p11_config *cfg, cf_p11 **out)
{
	pthread_rwlockattr_t ra;
	cf_p11 *p = NULL;
	CK_RV rv;
	int r;

	if (cfg == NULL || cfg->module_path == NULL || cfg->token_uri == NULL ||
	    cfg->pin_file == NULL)
		return cf_error(CF_E_CONFIG, "module path, token URI and PIN file are required");
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return cf_nomem();
	p->anchor = CK_INVALID_HANDLE;
	p->lock_fd = -1;
	p->epoch = 1;
	p->pool_size = cfg->pool_size ? cfg->pool_size : 8;
	p->pool_timeout_ms = cfg->pool_timeout_ms ? cfg->pool_timeout_ms : 5000;
	p->session_copies = !cfg->no_session_copies;
	pthread_rwlockattr_init(&ra);
	/* Writer preference: a pending recovery must not starve behind readers. */
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&p->life, &ra);
	pthread_rwlockattr_destroy(&ra);
	pthread_mutex_init(&p->write_mu, NULL);
	pthread_mutex_init(&p->pool_mu, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&p->pool_cv, &ca);
		pthread_condattr_destroy(&ca);
	}
	p->module_path = strdup(cfg->module_path);
	p->token_uri = strdup(cfg->token_uri);
	p->pin_file = strdup(cfg->pin_file);
	p->pool = calloc(p->pool_size, sizeof(*p->pool));
	if (cfg->lock_file != NULL && cfg->lock_file[0] != '\0')
		p->lock_path = strdup(cfg->lock_file);
	if (p->module_path == NULL || p->token_uri == NULL || p->pin_file == NULL ||
	    p->pool == NULL || (cfg->lock_file != NULL && cfg->lock_file[0] != '\0' &&
				p->lock_path == NULL)) {
		r = cf_nomem();
		goto out;
	}
	if (p->lock_path != NULL && (r = p11_lock_open(p)) != CF_OK)
		goto out;
	if ((r = p11_load(p->module_path, &p->dl, &p->f)) != CF_OK)
		goto out;
	/* Another process's login rewrites the token file SoftHSM reads here
	 * (C_Initialize, C_GetTokenInfo): with them at the same time, a token
	 * can look absent. The lock file keeps replicas starting together apart. */
	if ((rv = p11_token_lock(p, LOCK_EX)) != CKR_OK) {
		r = p11_status(rv, "opening the token");
		goto out;
	}
	if ((rv = p11_initialize(p)) != CKR_OK)
		r = cf_error(CF_E_MODULE, "C_Initialize of %s failed (%s)", p->module_path,
			     p11_rv_name(rv));
	else if ((r = p11_find_slot(p, &p->slot)) == CF_OK &&
		 (r = p11_login(p)) == CF_OK)
		r = p11_caps_read(p);
	p11_token_unlock(p);
	if (r != CF_OK)
		goto out;
	*out = p;
	p = NULL;
	r = CF_OK;
out:
	cf_p11_close(p);
	return r;
}

void
cf_p11_close(cf_p11 *p)
{
	if (p == NULL)
		return;
	if (p->f != NULL) {
		p11_pool_close_all(p);
		/* No C_Logout: closing the last session ends the login. */
		if (p->anchor != CK_INVALID_HANDLE)
			(void)p->f->C_CloseSession(p->anchor);
		if (p->we_initialized)
			(void)p->f->C_Finalize(NULL);
	}
	if (p->dl != NULL)
		dlclose(p->dl);
	if (p->lock_fd >= 0)
		close(p->lock_fd);
	free(p->lock_path);
	pthread_rwlock_destroy(&p->life);
	pthread_mutex_destroy(&p->write_mu);
	pthread_mutex_destroy(&p->pool_mu);
	pthread_cond_destroy(&p->pool_cv);
	free(p->pool);
	p11_caps_free(&p->caps);
	free(p->module_path);
	free(p->token_uri);
	free(p->pin_file);
	free(p);
}

/* ---- session pool ---- */

/* One more of a counter of p->stats: no lock, no ordering needed. */
static void
p11_stat(uint64_t *c)
{
	__atomic_fetch_add(c, 1, __ATOMIC_RELAXED);
}

CK_RV
p11_pool_acquire(cf_p11 *p, CK_SESSION_HANDLE *s, uint64_t *epoch)
{
	struct timespec deadline;
	CK_RV rv = CKR_OK;

	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += p->pool_timeout_ms / 1000;
	deadline.tv_nsec += (long)(p->pool_timeout_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&p->pool_mu);
	if (p->pool_free == 0 && p->pool_open >= p->pool_size)
		p11_stat(&p->stats.pool_waits);
	while (p->pool_free == 0 && p->pool_open >= p->pool_size) {
		if (pthread_cond_timedwait(&p->pool_cv, &p->pool_mu, &deadline) == ETIMEDOUT &&
		    p->pool_free == 0 && p->pool_open >= p->pool_size) {
			rv = P11_RV_POOL_TIMEOUT;
			p11_stat(&p->stats.pool_timeouts);
			goto out;
		}
	}
	if (p->pool_free > 0) {
		p->pool_free--;
		*s = p->pool[p->pool_free].h;
		*epoch = p->pool[p->pool_free].epoch;
		goto out;
	}
	rv = p->f->C_OpenSession(p->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s);
	if (rv == CKR_OK) {
		p->pool_open++;
		*epoch = p->epoch;
	}
out:
	pthread_mutex_unlock(&p->pool_mu);
	return rv;
}

void
p11_pool_release(cf_p11 *p, CK_SESSION_HANDLE s, uint64_t epoch)
{
	pthread_mutex_lock(&p->pool_mu);
	if (epoch != p->epoch) {
		/* Opened before a recovery (it may be dead), or poisoned: drop it. */
		(void)p->f->C_CloseSession(s);
		p->pool_open--;
	} else {
		p->pool[p->pool_free].h = s;
		p->pool[p->pool_free].epoch = epoch;
		p->pool_free++;
	}
	pthread_cond_signal(&p->pool_cv);
	pthread_mutex_unlock(&p->pool_mu);
}

/* ---- recovery ---- */

/* The failure of a recovery, or of a call within the wait after one. The
 * reason is shortened if need be (a long PIN file path) so that the wait
 * survives the truncation of the detail to CF_ERROR_DETAIL_MAX, with room
 * for what the caller prefixes ("destroying token objects: "). */
#define P11_LOST_FMT "the token is not answering (%.*s); the next attempt to recover it is in " \
	"%u ms"
#define P11_LOST_ROOM (CF_ERROR_DETAIL_MAX - 1 - 32 - (int)sizeof(P11_LOST_FMT) - 4)

static int
p11_lost(const char *why, unsigned wait_ms)
{
	return cf_error(CF_E_UNAVAILABLE, P11_LOST_FMT, P11_LOST_ROOM, why, wait_ms);
}

int
p11_recover(cf_p11 *p, CK_RV rv, uint64_t seen)
{
	CK_RV irv;
	int64_t now;
	int r = CF_OK;
	int full;

	pthread_rwlock_wrlock(&p->life);
	if (p->epoch != seen)
		goto out; /* another thread already recovered */
	now = p11_now_ms();
	if (now < p->retry_at_ms) {
		/* The last attempt failed moments ago: fail fast, saying why. */
		r = p11_lost(p->lost_why, (unsigned)(p->retry_at_ms - now));
		goto out;
	}
	p11_stat(&p->stats.recoveries);
	full = p11_rv_device_lost(rv) || __atomic_load_n(&p->reinit, __ATOMIC_RELAXED);
	/* We own everything now: no operation is in flight. */
	pthread_mutex_lock(&p->pool_mu);
	p11_pool_close_all(p);
	pthread_mutex_unlock(&p->pool_mu);
	if (p->anchor != CK_INVALID_HANDLE)
		(void)p->f->C_CloseSession(p->anchor);
	p->anchor = CK_INVALID_HANDLE;
	/* As in cf_p11_open. No thread of ours holds the lock file: its holders
	 * hold p->life for reading. */
	if ((irv = p11_token_lock(p, LOCK_EX)) != CKR_OK) {
		r = p11_status(irv, "recovering the token");
		goto bump;
	}
	if (full && p->we_initialized) {
		/* The device went and came back (or may have): the module
		 * keeps its dead connection until it is finalized. Only a
		 * module this context initialised is ours to finalize. */
		(void)p->f->C_Finalize(NULL);
		p->we_initialized = 0;
	}
	if (rv == CKR_CRYPTOKI_NOT_INITIALIZED || (full && !p->we_initialized)) {
		if ((irv = p11_initialize(p)) != CKR_OK) {
			r = p11_status(irv, "re-initialising the PKCS#11 module");
			goto unlock;
		}
	}
	if (rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT ||
	    rv == CKR_CRYPTOKI_NOT_INITIALIZED || full) {
		/* Slot ids may have changed. */
		if ((r = p11_find_slot(p, &p->slot)) != CF_OK)
			goto unlock;
	}
	r = p11_login(p);
unlock:
	if (r != CF_OK && p->anchor != CK_INVALID_HANDLE) {
		/* The login failed on it (a refused PIN): calls must fail at
		 * once until the next attempt, not run logged out on the token. */
		(void)p->f->C_CloseSession(p->anchor);
		p->anchor = CK_INVALID_HANDLE;
	}
	p11_token_unlock(p);
	/* Failed: the next recovery starts from scratch (finalize, initialise). */
	__atomic_store_n(&p->reinit, r != CF_OK, __ATOMIC_RELAXED);
bump:
	/* Every cached handle and session copy belongs to the old epoch. */
	p->epoch++;
	if (r == CF_OK) {
		p->backoff_ms = 0;
		p->retry_at_ms = 0;
	} else {
		p->backoff_ms = p->backoff_ms == 0 ? P11_BACKOFF_MIN_MS :
				p->backoff_ms >= P11_BACKOFF_MAX_MS / 2 ? P11_BACKOFF_MAX_MS :
				p->backoff_ms * 2;
		p->retry_at_ms = now + p->backoff_ms;
		snprintf(p->lost_why, sizeof(p->lost_why), "%s", cf_error_detail());
		r = p11_lost(p->lost_why, p->backoff_ms);
	}
out:
	pthread_rwlock_unlock(&p->life);
	return r;
}

/* After a failure, ask the session what really happened: an error such as
 * CKR_GENERAL_ERROR or "not found" can be the symptom of a closed session or
 * a lost login (private objects turn invisible), which recovery can fix. */
static CK_RV
p11_diagnose(cf_p11 *p, CK_SESSION_HANDLE s, CK_RV rv)
{
	CK_SESSION_INFO info;
	CK_RV srv;

	if (p11_rv_recoverable(rv) && !p11_rv_stale_object(rv))
		return rv;
	/* A session that cannot even describe itself speaks for the device:
	 * a failed GCM tag check (P11_RV_DECRYPT_FAILED) must not hide a lost
	 * token, nor a lost token pass for a bad ciphertext. */
	if ((srv = p->f->C_GetSessionInfo(s, &info)) != CKR_OK)
		return p11_rv_recoverable(srv) || p11_rv_device_lost(srv) ? srv : rv;
	if (info.state != CKS_RW_USER_FUNCTIONS && info.state != CKS_RO_USER_FUNCTIONS)
		return CKR_USER_NOT_LOGGED_IN;
	return rv;
}

CK_RV
p11_run(cf_p11 *p, cf_p11_key *k, p11_op_fn fn, void *arg)
{
	struct p11_handles h = { .priv = CK_INVALID_HANDLE, .pub = CK_INVALID_HANDLE };
	CK_SESSION_HANDLE s;
	uint64_t epoch, sepoch;
	CK_RV rv = CKR_OK;
	int recovered = 0;
	unsigned stuck = 0;

	for (int attempt = 0; attempt < 2; attempt++) {
		pthread_rwlock_rdlock(&p->life);
		epoch = p->epoch;
		if (p->anchor == CK_INVALID_HANDLE) {
			/* An earlier recovery failed; try again below (all of
			 * it if a re-initialisation was part of it). */
			rv = __atomic_load_n(&p->reinit, __ATOMIC_RELAXED) ? CKR_DEVICE_ERROR :
			     CKR_SESSION_HANDLE_INVALID;
		} else if ((rv = p11_pool_acquire(p, &s, &sepoch)) == CKR_OK) {
			if (k != NULL)
				rv = p11_key_resolve(k, s, epoch, &h);
			if (rv == CKR_OK)
				rv = fn(p, s, &h, arg);
			if (!p11_rv_clean(rv) || rv == P11_RV_NOT_FOUND)
				rv = p11_diagnose(p, s, rv);
			/* Some modules leave an operation active after an error
			 * (SoftHSM on CKR_ARGUMENTS_BAD): never reuse such a session. */
			p11_pool_release(p, s, p11_rv_clean(rv) ? sepoch : 0);
			p11_stat(&p->stats.operations);
		}
		pthread_rwlock_unlock(&p->life);
		/* A session stuck in an operation (seen with tpm2-pkcs11 under
		 * load: C_SignInit answers CKR_OPERATION_ACTIVE on every call)
		 * was just closed: run again on another, without counting it as
		 * an attempt, once for each session the pool can hold. */
		if (rv == CKR_OPERATION_ACTIVE && stuck++ < p->pool_size) {
			attempt--;
			continue;
		}
		if (attempt > 0 || !(p11_rv_recoverable(rv) || p11_rv_device_lost(rv)))
			break;
		if (p11_rv_stale_object(rv)) {
			/* The object went (another process sharing the token may
			 * have destroyed or re-made it) but the session and the
			 * login are fine (p11_diagnose): search again and retry.
			 * Bodies without a key search for their objects themselves. */
			if (k != NULL)
				p11_key_invalidate(k, &h);
		} else if (p11_recover(p, rv, epoch) != CF_OK) {
			/* It set p->reinit (the next attempt starts from scratch)
			 * and left the reason as the error detail. */
			rv = P11_RV_TOKEN_LOST;
			break;
		} else {
			recovered = 1;
		}
	}
	/* A recovery that did not help (tpm2-pkcs11 while its TPM is gone can
	 * accept C_Login and answer CKR_USER_NOT_LOGGED_IN to the next call):
	 * the next one finalizes and initialises the module. */
	if (recovered && ((p11_rv_recoverable(rv) && !p11_rv_stale_object(rv)) ||
			  p11_rv_device_lost(rv))) {
		__atomic_store_n(&p->reinit, 1, __ATOMIC_RELAXED);
		pthread_rwlock_rdlock(&p->life);
		if (p->retry_at_ms != 0) /* another thread's recovery failed */
			cf_error(CF_E_UNAVAILABLE, "the token is not answering (%s)", p->lost_why);
		else
			cf_error(CF_E_UNAVAILABLE, "the token is not answering (%s after recovering "
				 "the session); the next call re-initialises the PKCS#11 module",
				 p11_rv_name(rv));
		pthread_rwlock_unlock(&p->life);
		rv = P11_RV_TOKEN_LOST;
	}
	if (!p11_rv_clean(rv) && p11_rv_fault(rv))
		p11_stat(&p->stats.errors);
	return rv;
}

void
cf_p11_stats(cf_p11 *p, struct cf_p11_stats *out)
{
	out->operations = __atomic_load_n(&p->stats.operations, __ATOMIC_RELAXED);
	out->errors = __atomic_load_n(&p->stats.errors, __ATOMIC_RELAXED);
	out->recoveries = __atomic_load_n(&p->stats.recoveries, __ATOMIC_RELAXED);
	out->pool_waits = __atomic_load_n(&p->stats.pool_waits, __ATOMIC_RELAXED);
	out->pool_timeouts = __atomic_load_n(&p->stats.pool_timeouts, __ATOMIC_RELAXED);
}
