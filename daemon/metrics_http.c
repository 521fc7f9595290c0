#include "metrics_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "cf_log.h"
#include "cf_status.h"
#include "cf_time.h"
#include "metrics.h"

#define CONNECTIONS 16
#define TIMEOUT_S 5
#define HEADER_BYTES (16u << 10)
#define TICK_MS 200          /* how often the loop checks deadlines and stop */

/* A connection and when its request must be in. MHD's own timeout is one
 * of silence only: a client sending a byte every few seconds would keep a
 * connection (and 16 of them the endpoint) for hours. */
struct conn {
	int used;
	int fd;
	uint64_t deadline_ms;
};

struct metrics_http {
	struct MHD_Daemon *d;
	listener *unix_l;        /* the Unix socket, or NULL */
	int fd;                  /* what MHD listens on (MHD closes it) */
	struct metrics_sources src;
	pthread_t loop;
	int started;             /* loop running */
	atomic_int stop;
	/* Touched by the loop's thread only: MHD runs every callback there. */
	struct conn conns[CONNECTIONS];
};

void
metrics_http_defaults(struct metrics_http_cfg *c)
{
	memset(c, 0, sizeof(*c));
	c->mode = 0600;
	c->group = (gid_t)-1;
}

static int
port_of(const char *v, const char *p, uint16_t *out)
{
	char *end;
	unsigned long n;

	errno = 0;
	n = strtoul(p, &end, 10);
	if (p[0] < '0' || p[0] > '9' || errno != 0 || *end != '\0' || n < 1 || n > 65535)
		return cf_error(CF_E_CONFIG, "\"%.80s\": the port must be a number in 1..65535", v);
	*out = (uint16_t)n;
	return CF_OK;
}

static int
listen_unix(struct metrics_http_cfg *c, const char *v, const char *path)
{
	if (path[0] != '/')
		return cf_error(CF_E_CONFIG, "\"%.80s\": a Unix socket needs an absolute path "
				"(unix:/run/coffer/metrics.sock)", v);
	if (strlen(path) >= sizeof(c->path))
		return cf_error(CF_E_CONFIG, "\"%.80s\": the socket path is longer than %zu bytes",
				v, sizeof(c->path) - 1);
	c->is_unix = 1;
	snprintf(c->path, sizeof(c->path), "%s", path);
	return CF_OK;
}

/* 127.0.0.0/8 or ::1 (addr: a struct in_addr or in6_addr as af says). */
static int
loopback(int af, const void *addr)
{
	if (af == AF_INET)
		return (ntohl(((const struct in_addr *)addr)->s_addr) >> 24) == 127;
	return IN6_IS_ADDR_LOOPBACK((const struct in6_addr *)addr);
}

/* HOST:PORT with HOST 127.x.x.x, or [IPv6]:PORT with ::1: the endpoint has
 * no authentication, so nothing beyond this host may reach it. */
static int
listen_tcp(struct metrics_http_cfg *c, const char *v)
{
	char host[64];
	const char *colon = strrchr(v, ':');
	const char *h = v;
	size_t hl;
	uint16_t port;
	int r;

	if (colon == NULL)
		return cf_error(CF_E_CONFIG, "\"%.80s\" has no port: give 127.0.0.1:PORT, "
				"[::1]:PORT or unix:/path", v);
	hl = (size_t)(colon - v);
	if (v[0] == '[') {
		if (hl < 2 || v[hl - 1] != ']')
			return cf_error(CF_E_CONFIG, "\"%.80s\": an IPv6 address is written "
					"[::1]:PORT", v);
		h = v + 1;
		hl -= 2;
	}
	if (hl == 0)
		return cf_error(CF_E_CONFIG, "\"%.80s\" has no address before the port", v);
	if (hl >= sizeof(host))
		return cf_error(CF_E_CONFIG, "\"%.80s\": the address before the port is longer "
				"than any numeric address (%zu bytes); host names are not looked up",
				v, hl);
	memcpy(host, h, hl);
	host[hl] = '\0';
	if ((r = port_of(v, colon + 1, &port)) != CF_OK)
		return r;
	memset(&c->addr, 0, sizeof(c->addr));
	if (h == v) {
		struct sockaddr_in *a = (struct sockaddr_in *)&c->addr;

		if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
			return cf_error(CF_E_CONFIG, "\"%.80s\": \"%s\" is not a numeric IPv4 "
					"address (host names are not looked up; [IPv6] goes in "
					"brackets)", v, host);
		if (!loopback(AF_INET, &a->sin_addr))
			goto not_loopback;
		a->sin_family = AF_INET;
		a->sin_port = htons(port);
		c->addrlen = sizeof(*a);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&c->addr;

		if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
			return cf_error(CF_E_CONFIG, "\"%.80s\": \"%s\" is not a numeric IPv6 "
					"address", v, host);
		if (!loopback(AF_INET6, &a->sin6_addr))
			goto not_loopback;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		c->addrlen = sizeof(*a);
	}
	c->is_unix = 0;
	return CF_OK;
not_loopback:
	return cf_error(CF_E_CONFIG, "\"%.80s\" is not a loopback address: the metrics endpoint "
			"has no authentication, so it listens on 127.0.0.0/8, [::1] or a Unix "
			"socket (unix:/path) only", v);
}

int
metrics_http_listen(struct metrics_http_cfg *c, const char *v)
{
	int r;

	if (strlen(v) >= sizeof(c->listen))
		return cf_error(CF_E_CONFIG, "longer than %zu bytes", sizeof(c->listen) - 1);
	if (v[0] == '\0')
		return cf_error(CF_E_CONFIG, "empty: give 127.0.0.1:PORT, [::1]:PORT or "
				"unix:/path, or leave listen out to keep metrics off");
	r = strncmp(v, "unix:", 5) == 0 ? listen_unix(c, v, v + 5) : listen_tcp(c, v);
	if (r == CF_OK)
		snprintf(c->listen, sizeof(c->listen), "%s", v);
	return r;
}

/* ---- serving ---- */

static void
collect(const struct metrics_sources *s, struct metrics_read *rd)
{
	struct cf_p11_stats ps;
	uint64_t appended, compactions;

	memset(rd, 0, sizeof(*rd));
	if (s->p11 != NULL) {
		cf_p11_stats(s->p11, &ps);
		rd->token_ops = ps.operations;
		rd->token_errors = ps.errors;
		rd->token_recoveries = ps.recoveries;
		rd->pool_waits = ps.pool_waits;
		rd->pool_timeouts = ps.pool_timeouts;
	}
	if (s->sm != NULL)
		rd->sessions_open = session_count(s->sm);
	if (s->nn != NULL) {
		rd->nonces_live = nonces_live(s->nn);
		nonces_stats(s->nn, &appended, &compactions, &rd->nonce_log_bytes);
	}
	rd->audit_healthy = s->au == NULL || audit_healthy(s->au);
	rd->lease_held = s->fl == NULL || fleet_leader(s->fl);
}

static enum MHD_Result
answer_text(struct MHD_Connection *conn, unsigned status, const char *text)
{
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
	enum MHD_Result ok;

	if (resp == NULL)
		return MHD_NO;
	(void)MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
				      "text/plain; charset=utf-8");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		(void)MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	ok = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ok;
}

/* "" or ":PORT" after a Host header's name. */
static int
host_port_ok(const char *p)
{
	size_t n;

	if (p[0] == '\0')
		return 1;
	n = strlen(++p);
	return p[-1] == ':' && n >= 1 && n <= 5 && strspn(p, "0123456789") == n &&
	       strtoul(p, NULL, 10) <= 65535;
}

/* A Host header that names this host: localhost, 127.x.x.x or [::1], with
 * or without a port (the listen address among them). */
static int
host_is_local(const char *h)
{
	union {
		struct in_addr a4;
		struct in6_addr a6;
	} addr;
	char name[64];
	const char *rest;
	size_t n;
	int af = AF_INET;

	if (h[0] == '[') {
		if ((rest = strchr(h, ']')) == NULL)
			return 0;
		h++;
		n = (size_t)(rest++ - h);
		af = AF_INET6;
	} else {
		n = strcspn(h, ":");
		rest = h + n;
	}
	if (n == 0 || n >= sizeof(name) || !host_port_ok(rest))
		return 0;
	memcpy(name, h, n);
	name[n] = '\0';
	if (af == AF_INET && strcasecmp(name, "localhost") == 0)
		return 1;
	return inet_pton(af, name, &addr) == 1 && loopback(af, &addr);
}

/* A request was read whole: the connection's next one has its own time. */
static void
answered(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	struct conn *c = ci != NULL ? ci->socket_context : NULL;

	if (c != NULL)
		c->deadline_ms = cf_mono_ms() + TIMEOUT_S * 1000u;
}

static void
notify(void *cls, struct MHD_Connection *conn, void **ctx, enum MHD_ConnectionNotificationCode e)
{
	struct metrics_http *m = cls;
	const union MHD_ConnectionInfo *ci;

	if (e == MHD_CONNECTION_NOTIFY_CLOSED) {
		if (*ctx != NULL)
			((struct conn *)*ctx)->used = 0;
		*ctx = NULL;
		return;
	}
	if ((ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD)) == NULL)
		return;
	/* MHD takes at most CONNECTIONS at once: a slot is free. */
	for (size_t i = 0; i < CONNECTIONS; i++)
		if (!m->conns[i].used) {
			m->conns[i] = (struct conn){ .used = 1, .fd = ci->connect_fd,
						     .deadline_ms = cf_mono_ms() +
								    TIMEOUT_S * 1000u };
			*ctx = &m->conns[i];
			return;
		}
}

/* MHD's loop, on this thread, and the deadline of each request: one not in
 * by then has its socket shut down, which MHD then sees as closed (the
 * descriptor stays MHD's to close, on this same thread). */
static void *
loop_main(void *arg)
{
	struct metrics_http *m = arg;

	while (!atomic_load(&m->stop)) {
		uint64_t now;

		/* A daemon MHD cannot run any more: no busy loop over it. */
		if (MHD_run_wait(m->d, TICK_MS) != MHD_YES)
			usleep(TICK_MS * 1000u);
		now = cf_mono_ms();
		for (size_t i = 0; i < CONNECTIONS; i++)
			if (m->conns[i].used && now > m->conns[i].deadline_ms) {
				(void)shutdown(m->conns[i].fd, SHUT_RDWR);
				m->conns[i].deadline_ms = UINT64_MAX;
			}
	}
	return NULL;
}

/* Every request is answered at once (a body, if any, is not read). On TCP
 * a Host header (if sent) must name this host: a web page whose own name
 * was re-pointed at 127.0.0.1 (DNS rebinding) sends its own name, and is
 * refused before anything is read. */
static enum MHD_Result
serve(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
      const char *version, const char *upload, size_t *upload_len, void **con_cls)
{
	const struct metrics_http *m = cls;
	struct MHD_Response *resp;
	struct metrics_read rd;
	enum MHD_Result ok;
	const char *host;
	char *text;
	size_t len;

	(void)version;
	(void)upload;
	(void)upload_len;
	(void)con_cls;
	answered(conn);
	/* A Unix socket has no Host to check: no web page reaches it. */
	host = m->unix_l == NULL
		       ? MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST)
		       : NULL;
	if (host != NULL && !host_is_local(host)) {
		cf_log_debug("metrics: refused a request for Host \"%.80s\": not localhost or a "
			     "loopback address (a web page's name re-pointed at this host?)",
			     host);
		return answer_text(conn, MHD_HTTP_MISDIRECTED_REQUEST,
				   "misdirected request: this endpoint answers Host localhost, "
				   "127.0.0.0/8 or [::1] only\n");
	}
	if (strcmp(url, "/metrics") != 0)
		return answer_text(conn, MHD_HTTP_NOT_FOUND,
				   "not found: this endpoint serves GET /metrics only\n");
	/* HEAD too (RFC 9110 asks it of every server): MHD sends its headers
	 * and Content-Length without the body. */
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return answer_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
				   "method not allowed: this endpoint serves GET /metrics only\n");
	collect(&m->src, &rd);
	if (metrics_render(&rd, &text, &len) != CF_OK)
		return answer_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
	if ((resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE)) == NULL) {
		free(text);
		return MHD_NO;
	}
	(void)MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
				      "text/plain; version=0.0.4; charset=utf-8");
	ok = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ok;
}

/* A listening TCP socket on the configured loopback address. */
static int
bind_tcp(const struct metrics_http_cfg *c, int *out)
{
	int fd, one = 1;

	if ((fd = socket(c->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
		return cf_error(CF_E_IO, "metrics: socket: %s", strerror(errno));
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&c->addr, c->addrlen) != 0 ||
	    listen(fd, CONNECTIONS) != 0) {
		int e = errno;

		close(fd);
		return cf_error(CF_E_IO, "metrics: cannot listen on %s: %s", c->listen,
				strerror(e));
	}
	*out = fd;
	return CF_OK;
}

int
metrics_http_start(const struct metrics_http_cfg *c, const struct metrics_sources *src,
		   metrics_http **out)
{
	struct metrics_http *m;
	int r, e;

	*out = NULL;
	if (c->listen[0] == '\0')
		return CF_OK;
	if ((m = calloc(1, sizeof(*m))) == NULL)
		return cf_nomem();
	m->src = *src;
	m->fd = -1;
	if (c->is_unix) {
		struct listener_cfg lc = { .name = "metrics", .path = c->path, .mode = c->mode,
					   .group = c->group };

		/* MHD closes what it listens on; the listener closes its own. */
		if ((r = listener_open(&lc, &m->unix_l)) == CF_OK &&
		    (m->fd = fcntl(listener_fd(m->unix_l), F_DUPFD_CLOEXEC, 3)) < 0)
			r = cf_error(CF_E_IO, "metrics: %s", strerror(errno));
	} else {
		r = bind_tcp(c, &m->fd);
	}
	if (r != CF_OK)
		goto fail;
	/* Counting starts before the first scrape can see it. */
	metrics_enable();
	/* MHD without a thread of its own: loop_main drives it. */
	m->d = MHD_start_daemon(MHD_USE_AUTO, 0, NULL, NULL,
				serve, m, MHD_OPTION_LISTEN_SOCKET, m->fd,
				MHD_OPTION_CONNECTION_LIMIT, (unsigned)CONNECTIONS,
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)TIMEOUT_S,
				MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HEADER_BYTES,
				MHD_OPTION_NOTIFY_CONNECTION, notify, m,
				MHD_OPTION_END);
	if (m->d == NULL) {
		r = cf_error(CF_E_IO, "metrics: libmicrohttpd cannot serve %s", c->listen);
		m->fd = -1;   /* MHD may have closed it: better left open than closed twice */
		goto fail;
	}
	if ((e = pthread_create(&m->loop, NULL, loop_main, m)) != 0) {
		r = cf_error(CF_E_INTERNAL, "metrics: cannot start the endpoint's thread: %s",
			     strerror(e));
		MHD_stop_daemon(m->d);
		m->fd = -1;
		goto fail;
	}
	m->started = 1;
	*out = m;
	return CF_OK;
fail:
	if (m->fd >= 0)
		close(m->fd);
	listener_close(m->unix_l);
	free(m);
	return r;
}

void
metrics_http_stop(metrics_http *m)
{
	if (m == NULL)
		return;
	atomic_store(&m->stop, 1);
	if (m->started)
		pthread_join(m->loop, NULL);
	MHD_stop_daemon(m->d);
	listener_close(m->unix_l);
	free(m);
}
