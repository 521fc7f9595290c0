/*
 * listener.h — cofferd owns its Unix sockets: it binds them itself (mode and
 * group from configuration), guards each path with a lock file so a second
 * daemon is refused, accepts connections on its own thread, checks the
 * peer's SO_PEERCRED against an allow-list, and only then hands the
 * connection to the RPC layer.
 */
#ifndef COFFER_LISTENER_H
#define COFFER_LISTENER_H

#include <sys/types.h>

#define LISTENER_MAX_IDS 64

struct listener_cfg {
	const char *name;        /* "service" or "admin", for messages */
	const char *path;
	unsigned mode;           /* applied with chmod after bind */
	gid_t group;             /* (gid_t)-1 = leave as is */
	uid_t uids[LISTENER_MAX_IDS];
	unsigned nuids;
	gid_t gids[LISTENER_MAX_IDS];
	unsigned ngids;
};

typedef struct listener listener;

/* Lock <path>.lock (CF_E_PRECONDITION if another daemon holds it), remove a
 * stale socket, bind, set mode and group, listen. */
int listener_open(const struct listener_cfg *cfg, listener **out);
/* Remove the socket and lock files and close; accepts NULL. */
void listener_close(listener *l);
/* Its listening socket, for a server that accepts on it itself (the
 * metrics endpoint); still the listener's to close. */
int listener_fd(const listener *l);

/* Called for each accepted, allowed connection; takes ownership of fd. */
typedef void (*listener_accept_fn)(int fd, void *arg);

/* Start one thread accepting on all `n` listeners. */
int listener_start(listener **ls, unsigned n, listener_accept_fn fn, void *arg);
/* Stop the accept thread; new connections are refused from then on (the
 * sockets stay bound until listener_close). Safe to call once. */
void listener_stop(void);

/* SIGHUP: replace l's uid and gid allow-lists with cfg's (the rest of cfg
 * is ignored); connections accepted from now on are checked against them,
 * and every call on one already open (listener_allows_now, rpc.h). */
void listener_set_allowed(listener *l, const struct listener_cfg *cfg);

/* Is a peer with these credentials allowed on l? */
int listener_allows(const struct listener_cfg *cfg, uid_t uid, gid_t gid);
/* The same against l's allow-lists as they are now (a reload may have
 * narrowed them since a connection was accepted); thread-safe. */
int listener_allows_now(listener *l, uid_t uid, gid_t gid);

#endif
