#include "listener.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cf_log.h"
#include "cf_status.h"
#include "cf_time.h"

/* Connections taken from one socket per pass: a flood on one does not keep
 * the other (the admin socket) waiting. */
#define ACCEPT_PER_PASS 32
/* Out of descriptors: accepting again after this long, not at once (the
 * connection stays queued, so poll would report it again and again). */
#define NOFD_BACKOFF_MS 100
/* One line of a kind per listener in this long; the rest are counted. */
#define WARN_EVERY_MS 10000

struct listener {
	struct listener_cfg cfg;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char lock_path[sizeof(((struct sockaddr_un *)0)->sun_path) + 8];
	int fd;
	int lock_fd;
	pthread_mutex_t allow_mu;  /* cfg's allow-lists: the accept thread vs SIGHUP */
	/* The accept thread's: when a refusal or a failed accept was last
	 * logged, and how many were not since. */
	uint64_t refused_at, nofd_at;
	unsigned long refused_quiet, nofd_quiet;
};

static struct {
	pthread_t thread;
	int running;
	int wake[2];
	listener **ls;
	unsigned n;
	listener_accept_fn fn;
	void *arg;
} acceptor = { .wake = { -1, -1 } };

int
listener_allows(const struct listener_cfg *cfg, uid_t uid, gid_t gid)
{
	for (unsigned i = 0; i < cfg->nuids; i++)
		if (cfg->uids[i] == uid)
			return 1;
	for (unsigned i = 0; i < cfg->ngids; i++)
		if (cfg->gids[i] == gid)
			return 1;
	return 0;
}

/* The system's maximum backlog, net.core.somaxconn (listen() silently caps
 * what it is given at that); SOMAXCONN if it cannot be read. */
static int
backlog(void)
{
	FILE *f = fopen("/proc/sys/net/core/somaxconn", "re");
	int n = 0;

	if (f != NULL) {
		if (fscanf(f, "%d", &n) != 1)
			n = 0;
		fclose(f);
	}
	return n > 0 ? n : SOMAXCONN;
}

void
listener_set_allowed(listener *l, const struct listener_cfg *cfg)
{
	pthread_mutex_lock(&l->allow_mu);
	memcpy(l->cfg.uids, cfg->uids, sizeof(l->cfg.uids));
	l->cfg.nuids = cfg->nuids;
	memcpy(l->cfg.gids, cfg->gids, sizeof(l->cfg.gids));
	l->cfg.ngids = cfg->ngids;
	pthread_mutex_unlock(&l->allow_mu);
}

int
listener_open(const struct listener_cfg *cfg, listener **out)
{
	struct sockaddr_un sa;
	struct stat st;
	listener *l;
	int r;

	if ((l = calloc(1, sizeof(*l))) == NULL)
		return cf_nomem();
	l->fd = l->lock_fd = -1;
	l->cfg = *cfg;
	pthread_mutex_init(&l->allow_mu, NULL);
	if (strlen(cfg->path) >= sizeof(l->path)) {
		r = cf_error(CF_E_CONFIG, "%s socket path is longer than %zu bytes", cfg->name,
			     sizeof(l->path) - 1);
		goto fail;
	}
	snprintf(l->path, sizeof(l->path), "%s", cfg->path);
	snprintf(l->lock_path, sizeof(l->lock_path), "%s.lock", cfg->path);
	l->cfg.path = l->path;
	if ((l->lock_fd = open(l->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0) {
		r = cf_error(CF_E_IO, "cannot open lock file %s: %s", l->lock_path, strerror(errno));
		goto fail;
	}
	if (flock(l->lock_fd, LOCK_EX | LOCK_NB) != 0) {
		r = cf_error(CF_E_PRECONDITION, "another cofferd is serving %s (it holds %s)",
			     l->path, l->lock_path);
		close(l->lock_fd);
		l->lock_fd = -1;
		goto fail;
	}
	/* We hold the lock: a socket file left there is stale. Anything else
	 * there is not ours to remove (a path mistyped onto the database). */
	if (lstat(l->path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
		r = cf_error(CF_E_CONFIG, "%s socket path %s exists and is not a socket; it is "
			     "left as it is: choose another path, or move that file away",
			     cfg->name, l->path);
		goto fail;
	}
	(void)unlink(l->path);
	if ((l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0) {
		r = cf_error(CF_E_IO, "socket: %s", strerror(errno));
		goto fail;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, l->path, strlen(l->path) + 1);
	if (bind(l->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		r = cf_error(CF_E_IO, "cannot bind %s socket %s: %s", cfg->name, l->path,
			     strerror(errno));
		goto fail;
	}
	/* umask applied at bind; set the configured mode and group explicitly. */
	if (chmod(l->path, cfg->mode) != 0 ||
	    (cfg->group != (gid_t)-1 && chown(l->path, (uid_t)-1, cfg->group) != 0)) {
		r = cf_error(CF_E_IO, "cannot set mode/group of %s: %s", l->path, strerror(errno));
		goto fail;
	}
	/* The kernel caps the backlog at net.core.somaxconn; asking for the
	 * most lets a flood of idle connections queue instead of refusing
	 * good clients (EAGAIN on a Unix socket). */
	if (listen(l->fd, backlog()) != 0) {
		r = cf_error(CF_E_IO, "listen on %s: %s", l->path, strerror(errno));
		goto fail;
	}
	*out = l;
	return CF_OK;
fail:
	if (l->fd >= 0)
		(void)unlink(l->path);
	listener_close(l);
	return r;
}

int
listener_fd(const listener *l)
{
	return l->fd;
}

void
listener_close(listener *l)
{
	if (l == NULL)
		return;
	if (l->fd >= 0) {
		close(l->fd);
		(void)unlink(l->path);
	}
	/* The lock file stays: unlinking it would let a daemon that opened the
	 * old file and one that creates a new one both hold "the" lock. */
	if (l->lock_fd >= 0)
		close(l->lock_fd);
	pthread_mutex_destroy(&l->allow_mu);
	free(l);
}

int
listener_allows_now(listener *l, uid_t uid, gid_t gid)
{
	int ok;

	pthread_mutex_lock(&l->allow_mu);
	ok = listener_allows(&l->cfg, uid, gid);
	pthread_mutex_unlock(&l->allow_mu);
	return ok;
}

/* Whether a line of the kind last logged at *at may be logged now; if not,
 * it is counted in *quiet. When it may, `more` says how many were not
 * logged since the last ("" when none). */
static int
may_log(uint64_t *at, unsigned long *quiet, char *more, size_t len)
{
	uint64_t now = cf_mono_ms();

	if (*at != 0 && now - *at < WARN_EVERY_MS) {
		(*quiet)++;
		return 0;
	}
	*at = now;
	more[0] = '\0';
	if (*quiet != 0)
		snprintf(more, len, " (and %lu more not logged in the last %d s)", *quiet,
			 WARN_EVERY_MS / 1000);
	*quiet = 0;
	return 1;
}

/* Up to ACCEPT_PER_PASS connections of l. 1 when the process is out of
 * descriptors (the caller backs off). */
static int
accept_one(listener *l)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	int fd, allowed, err = 0;
	char more[80];

	for (int k = 0; k < ACCEPT_PER_PASS; k++) {
		if ((fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) < 0) {
			err = errno;
			break;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
			cf_log_warn("%s socket: no peer credentials: %s; connection closed",
				    l->cfg.name, strerror(errno));
			close(fd);
			continue;
		}
		allowed = listener_allows_now(l, cred.uid, cred.gid);
		if (!allowed) {
			if (may_log(&l->refused_at, &l->refused_quiet, more, sizeof(more)))
				cf_log_warn("%s socket: refused connection from uid %u gid %u pid %d: "
					    "not on the allow-list%s", l->cfg.name, (unsigned)cred.uid,
					    (unsigned)cred.gid, (int)cred.pid, more);
			close(fd);
			continue;
		}
		acceptor.fn(fd, acceptor.arg);
	}
	if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
		if (may_log(&l->nofd_at, &l->nofd_quiet, more, sizeof(more)))
			cf_log_warn("%s socket: accept: %s: connections wait; trying again every %d ms%s",
				    l->cfg.name, strerror(err), NOFD_BACKOFF_MS, more);
		return 1;
	}
	if (err != 0 && err != EAGAIN && err != EWOULDBLOCK && err != EINTR)
		cf_log_warn("%s socket: accept: %s", l->cfg.name, strerror(err));
	return 0;
}

static void *
acceptor_main(void *arg)
{
	struct pollfd pfd[8];

	int backoff = 0;

	(void)arg;
	for (;;) {
		unsigned n = 0;

		pfd[n].fd = acceptor.wake[0];
		pfd[n++].events = POLLIN;
		/* Out of descriptors: only the stop is waited for, a while. */
		for (unsigned i = 0; i < acceptor.n && !backoff; i++) {
			pfd[n].fd = acceptor.ls[i]->fd;
			pfd[n++].events = POLLIN;
		}
		if (poll(pfd, n, backoff ? NOFD_BACKOFF_MS : -1) < 0) {
			if (errno == EINTR)
				continue;
			cf_log_error("listener: poll: %s", strerror(errno));
			break;
		}
		if (pfd[0].revents != 0)
			break;
		if (backoff) {
			backoff = 0;
			continue;
		}
		for (unsigned i = 0; i < acceptor.n; i++)
			if (pfd[i + 1].revents & POLLIN)
				backoff |= accept_one(acceptor.ls[i]);
	}
	return NULL;
}

int
listener_start(listener **ls, unsigned n, listener_accept_fn fn, void *arg)
{
	int e;

	if (n == 0 || n > 7)
		return cf_error(CF_E_INVALID_ARG, "1..7 listeners");
	if (pipe2(acceptor.wake, O_CLOEXEC) != 0)
		return cf_error(CF_E_IO, "pipe: %s", strerror(errno));
	acceptor.ls = ls;
	acceptor.n = n;
	acceptor.fn = fn;
	acceptor.arg = arg;
	if ((e = pthread_create(&acceptor.thread, NULL, acceptor_main, NULL)) != 0)
		return cf_error(CF_E_INTERNAL, "cannot start the accept thread: %s", strerror(e));
	acceptor.running = 1;
	return CF_OK;
}

void
listener_stop(void)
{
	if (!acceptor.running)
		return;
	(void)!write(acceptor.wake[1], "x", 1);
	pthread_join(acceptor.thread, NULL);
	close(acceptor.wake[0]);
	close(acceptor.wake[1]);
	acceptor.running = 0;
	/* A client that connects from now on is refused at once (ECONNREFUSED)
	 * rather than queued in a backlog nobody accepts from, waiting out its
	 * deadline; the sockets' files go at listener_close. */
	for (unsigned i = 0; i < acceptor.n; i++)
		(void)shutdown(acceptor.ls[i]->fd, SHUT_RDWR);
}
