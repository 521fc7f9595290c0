/*
 * metrics_http.h — the Prometheus endpoint: GET /metrics over HTTP
 * (libmicrohttpd, its own thread), on a loopback TCP address or a Unix
 * socket, off unless [metrics] listen is set. The endpoint has no
 * authentication: a TCP address other than loopback is refused, and a
 * Unix socket is guarded by its mode and group like the daemon's own.
 *
 * On TCP a request whose Host header names anything but localhost,
 * 127.0.0.0/8 or [::1] (a web page reaching the loopback address through
 * DNS rebinding) is answered 421. Anything else is answered 404 (another
 * path) or 405 (another method); requests are bounded (headers in 16 KiB,
 * 5 s to send them, 16 connections at once) and a scrape only reads
 * counters and takes each module's own lock briefly: it never holds up a
 * call.
 */
#ifndef COFFER_METRICS_HTTP_H
#define COFFER_METRICS_HTTP_H

#include <netinet/in.h>
#include <sys/socket.h>

#include "audit.h"
#include "cf_p11.h"
#include "fleet.h"
#include "listener.h"
#include "nonces.h"
#include "session.h"

#define METRICS_LISTEN_MAX 128

struct metrics_http_cfg {
	char listen[METRICS_LISTEN_MAX];   /* as configured; "" = off */
	int is_unix;
	struct sockaddr_storage addr;      /* TCP: the loopback address and port */
	socklen_t addrlen;
	char path[108];                    /* Unix: the socket's path */
	unsigned mode;                     /* Unix: [metrics] mode */
	gid_t group;                       /* Unix: [metrics] group, (gid_t)-1 = as is */
};

void metrics_http_defaults(struct metrics_http_cfg *c);
/* [metrics] listen: "127.0.0.1:9464", "[::1]:9464" or "unix:/run/coffer/metrics.sock".
 * CF_E_CONFIG saying what is wrong: a non-loopback or non-numeric address,
 * a bad port, a relative or too long path. */
int metrics_http_listen(struct metrics_http_cfg *c, const char *v);

/* What a scrape reads besides the counters of metrics.h. au and fl may be NULL. */
struct metrics_sources {
	cf_p11 *p11;
	session_mgr *sm;
	nonces *nn;
	audit *au;
	fleet *fl;
};

typedef struct metrics_http metrics_http;

/* Turn counting on and serve; *out NULL (and CF_OK) when metrics are off.
 * CF_E_IO / CF_E_PRECONDITION naming the address if it cannot be bound. */
int metrics_http_start(const struct metrics_http_cfg *c, const struct metrics_sources *src,
		       metrics_http **out);
/* Stop serving (scrapes in progress finish first); accepts NULL. */
void metrics_http_stop(metrics_http *m);

#endif
