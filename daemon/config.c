#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "cf_status.h"

void
config_defaults(struct cofferd_config *c)
{
	memset(c, 0, sizeof(*c));
	snprintf(c->module, sizeof(c->module), "/usr/lib/softhsm/libsofthsm2.so");
	snprintf(c->token_uri, sizeof(c->token_uri), "pkcs11:token=coffer");
	snprintf(c->pin_file, sizeof(c->pin_file), "/etc/coffer/user.pin");
	snprintf(c->state_dir, sizeof(c->state_dir), "/var/lib/coffer");
	snprintf(c->service_path, sizeof(c->service_path), "/run/coffer/service.sock");
	snprintf(c->admin_path, sizeof(c->admin_path), "/run/coffer/admin.sock");
	c->pool_size = 8;
	c->pool_timeout_ms = 5000;
	c->workers = 4;
	c->max_message_bytes = (1u << 20) + (64u << 10);
	c->shutdown_grace_ms = 10000;
	c->log_level = CF_LOG_INFO;
	c->service.name = "service";
	c->service.mode = 0660;
	c->service.group = (gid_t)-1;
	c->admin.name = "admin";
	c->admin.mode = 0600;
	c->admin.group = (gid_t)-1;
	c->session.lifetime = 3600;
	c->session.max_records = 1000000;
	c->session.max_bytes = 1ull << 30;
	c->session.max_per_caller = 64;
	c->session.max_sessions = 4096;
	c->session.max_pending = 8;
	c->request_window = 300;
	c->max_nonces = 4000000;
	c->audit.fail_open = 0;
	c->audit.max_wait_ms = 2000;
	c->audit.max_queued = AUDIT_MAX_QUEUED_DEFAULT;
	c->idem_retention = 86400;
	keyring_cfg_defaults(&c->keys);
	metrics_http_defaults(&c->metrics);
	c->state_backend = STORE_SQLITE;
	c->state_wait_ms = 30000;
	/* The host name, cut to a replica name's length (replica_name()):
	 * from uname, since gethostname refuses a name longer than the buffer
	 * (every such host would have been "coffer", sharing its rows). */
	{
		struct utsname u;

		if (uname(&u) != 0 || u.nodename[0] == '\0')
			snprintf(c->replica, sizeof(c->replica), "coffer");
		else
			snprintf(c->replica, sizeof(c->replica), "%.*s",
				 (int)(sizeof(c->replica) - 1), u.nodename);
	}
}

static int
parse_uint(const char *v, unsigned long min, unsigned long max, int base, unsigned *out)
{
	char *end;
	unsigned long n;

	errno = 0;
	n = strtoul(v, &end, base);
	if (errno != 0 || end == v || *end != '\0' || v[0] == '-' || n < min || n > max)
		return cf_error(CF_E_CONFIG, "\"%s\" is not a number in %lu..%lu", v, min, max);
	*out = (unsigned)n;
	return CF_OK;
}

static int
parse_u64(const char *v, unsigned long long min, unsigned long long max, uint64_t *out)
{
	char *end;
	unsigned long long n;

	errno = 0;
	n = strtoull(v, &end, 10);
	if (errno != 0 || end == v || *end != '\0' || v[0] == '-' || n < min || n > max)
		return cf_error(CF_E_CONFIG, "\"%s\" is not a number in %llu..%llu", v, min, max);
	*out = n;
	return CF_OK;
}

static int
parse_bool(const char *v, unsigned *out)
{
	if (strcmp(v, "true") == 0 || strcmp(v, "yes") == 0 || strcmp(v, "1") == 0)
		*out = 1;
	else if (strcmp(v, "false") == 0 || strcmp(v, "no") == 0 || strcmp(v, "0") == 0)
		*out = 0;
	else
		return cf_error(CF_E_CONFIG, "\"%s\" is not true or false", v);
	return CF_OK;
}

static int
set_session(struct cofferd_config *c, const char *name, const char *v)
{
	struct session_cfg *s = &c->session;

	if (strcmp(name, "lifetime") == 0)
		return parse_uint(v, 1, 7 * 86400, 10, &s->lifetime);
	if (strcmp(name, "max_records") == 0)
		return parse_u64(v, 1, 1ull << 32, &s->max_records);
	if (strcmp(name, "max_bytes") == 0)
		return parse_u64(v, 1024, 1ull << 36, &s->max_bytes);
	if (strcmp(name, "max_per_caller") == 0)
		return parse_uint(v, 1, 4096, 10, &s->max_per_caller);
	if (strcmp(name, "max_sessions") == 0)
		return parse_uint(v, 1, 1u << 20, 10, &s->max_sessions);
	if (strcmp(name, "max_pending") == 0)
		return parse_uint(v, 1, 1024, 10, &s->max_pending);
	if (strcmp(name, "require_sealed") == 0)
		return parse_bool(v, &c->require_sealed);
	if (strcmp(name, "unsealed_secrets") == 0)
		return parse_bool(v, &c->unsealed_secrets);
	return cf_error(CF_E_CONFIG, "unknown setting %s in [session]", name);
}

static int
parse_path(const char *v, char *dst, size_t len)
{
	if (v[0] == '\0' || strlen(v) >= len)
		return cf_error(CF_E_CONFIG, "path is empty or longer than %zu bytes", len - 1);
	memcpy(dst, v, strlen(v) + 1);
	return CF_OK;
}

/* [A-Za-z0-9._-]{1,63}: it names this replica's rows in a shared store. */
static int
replica_name(const char *v, char *dst, size_t len)
{
	size_t n = strlen(v);

	if (n == 0 || n >= len || strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
				       "0123456789._-") != n)
		return cf_error(CF_E_CONFIG, "\"%.80s\" is not a replica name (1 to %zu of "
				"A-Z a-z 0-9 . _ -)", v, len - 1);
	memcpy(dst, v, n + 1);
	return CF_OK;
}

static int
set_state(struct cofferd_config *c, const char *name, const char *v)
{
	if (strcmp(name, "backend") == 0) {
		if (strcmp(v, "sqlite") == 0)
			c->state_backend = STORE_SQLITE;
		else if (strcmp(v, "postgresql") == 0)
			c->state_backend = STORE_POSTGRESQL;
		else
			return cf_error(CF_E_CONFIG, "\"%.80s\" is not sqlite or postgresql", v);
		return CF_OK;
	}
	/* The connection string may carry a password: never echoed. */
	if (strcmp(name, "dsn") == 0) {
		if (v[0] == '\0' || strlen(v) >= sizeof(c->state_dsn))
			return cf_error(CF_E_CONFIG, "the connection string is empty or longer than "
					"%zu bytes", sizeof(c->state_dsn) - 1);
		memcpy(c->state_dsn, v, strlen(v) + 1);
		return CF_OK;
	}
	if (strcmp(name, "dsn_file") == 0)
		return parse_path(v, c->state_dsn_file, sizeof(c->state_dsn_file));
	if (strcmp(name, "replica") == 0)
		return replica_name(v, c->replica, sizeof(c->replica));
	if (strcmp(name, "wait_ms") == 0)
		return parse_uint(v, 100, 600000, 10, &c->state_wait_ms);
	return cf_error(CF_E_CONFIG, "unknown setting %s in [state]", name);
}

/* A user id (groups: a group id) by number or by name. */
static int
lookup_id(const char *v, int groups, unsigned *out)
{
	const struct passwd *pw = NULL;
	const struct group *gr = NULL;
	unsigned n;

	if (parse_uint(v, 0, 0xfffffffeUL, 10, &n) == CF_OK) {
		*out = n;
		return CF_OK;
	}
	if (groups ? (gr = getgrnam(v)) == NULL : (pw = getpwnam(v)) == NULL)
		return cf_error(CF_E_CONFIG, "unknown %s \"%s\"", groups ? "group" : "user", v);
	*out = gr != NULL ? (unsigned)gr->gr_gid : (unsigned)pw->pw_uid;
	return CF_OK;
}

/* "a, b, c" -> ids via lookup (uid or gid). */
static int
parse_ids(const char *v, unsigned *ids, unsigned *n, int groups)
{
	char buf[2048], *save = NULL, *tok;
	int r;

	if (strlen(v) >= sizeof(buf))
		return cf_error(CF_E_CONFIG, "list too long");
	snprintf(buf, sizeof(buf), "%s", v);
	*n = 0;
	for (tok = strtok_r(buf, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
		if (*n >= LISTENER_MAX_IDS)
			return cf_error(CF_E_CONFIG, "more than %d entries", LISTENER_MAX_IDS);
		if ((r = lookup_id(tok, groups, &ids[*n])) != CF_OK)
			return r;
		(*n)++;
	}
	return CF_OK;
}

static int
set_socket(struct listener_cfg *l, char *path, const char *name, const char *v)
{
	if (strcmp(name, "path") == 0)
		return parse_path(v, path, CONFIG_PATH_MAX);
	if (strcmp(name, "mode") == 0)
		return parse_uint(v, 0, 0777, 8, &l->mode);
	if (strcmp(name, "group") == 0)
		return lookup_id(v, 1, (unsigned *)&l->group);
	if (strcmp(name, "allow_uids") == 0)
		return parse_ids(v, (unsigned *)l->uids, &l->nuids, 0);
	if (strcmp(name, "allow_gids") == 0)
		return parse_ids(v, (unsigned *)l->gids, &l->ngids, 1);
	return cf_error(CF_E_CONFIG, "unknown setting %s", name);
}

int
config_set(struct cofferd_config *c, const char *section, const char *name, const char *value)
{
	if (strcmp(section, "token") == 0) {
		if (strcmp(name, "module") == 0)
			return parse_path(value, c->module, sizeof(c->module));
		if (strcmp(name, "uri") == 0)
			return parse_path(value, c->token_uri, sizeof(c->token_uri));
		if (strcmp(name, "pin_file") == 0)
			return parse_path(value, c->pin_file, sizeof(c->pin_file));
		if (strcmp(name, "pool_size") == 0)
			return parse_uint(value, 1, 256, 10, &c->pool_size);
		if (strcmp(name, "pool_timeout_ms") == 0)
			return parse_uint(value, 1, 600000, 10, &c->pool_timeout_ms);
		if (strcmp(name, "lock_file") == 0)
			return parse_path(value, c->token_lock_file, sizeof(c->token_lock_file));
	} else if (strcmp(section, "daemon") == 0) {
		if (strcmp(name, "state_dir") == 0)
			return parse_path(value, c->state_dir, sizeof(c->state_dir));
		if (strcmp(name, "workers") == 0)
			return parse_uint(value, 1, 64, 10, &c->workers);
		if (strcmp(name, "max_message_bytes") == 0)
			return parse_uint(value, 4096, 64u << 20, 10, &c->max_message_bytes);
		if (strcmp(name, "shutdown_grace_ms") == 0)
			return parse_uint(value, 0, 600000, 10, &c->shutdown_grace_ms);
		if (strcmp(name, "log_level") == 0) {
			static const char *lv[] = { "error", "warn", "info", "debug" };

			for (int i = 0; i < 4; i++)
				if (strcmp(value, lv[i]) == 0) {
					c->log_level = (enum cf_log_level)i;
					return CF_OK;
				}
			return cf_error(CF_E_CONFIG, "log_level must be error, warn, info or debug");
		}
	} else if (strcmp(section, "state") == 0) {
		return set_state(c, name, value);
	} else if (strcmp(section, "service") == 0) {
		return set_socket(&c->service, c->service_path, name, value);
	} else if (strcmp(section, "admin") == 0) {
		return set_socket(&c->admin, c->admin_path, name, value);
	} else if (strcmp(section, "session") == 0) {
		return set_session(c, name, value);
	} else if (strcmp(section, "idempotency") == 0) {
		if (strcmp(name, "retention") == 0)
			return parse_uint(value, 60, 30 * 86400, 10, &c->idem_retention);
		return cf_error(CF_E_CONFIG, "unknown setting %s in [idempotency]", name);
	} else if (strcmp(section, "keys") == 0) {
		if (strcmp(name, "destroy_grace") == 0)
			return parse_uint(value, 1, KEYRING_MAX_GRACE, 10, &c->keys.destroy_grace);
		if (strcmp(name, "min_destroy_grace") == 0)
			return parse_uint(value, 1, KEYRING_MAX_GRACE, 10, &c->keys.min_destroy_grace);
		if (strcmp(name, "min_rotation_period") == 0)
			return parse_uint(value, 1, 366 * 86400, 10, &c->keys.min_rotation_period);
	} else if (strcmp(section, "audit") == 0) {
		if (strcmp(name, "failure") == 0) {
			if (strcmp(value, "closed") != 0 && strcmp(value, "open") != 0)
				return cf_error(CF_E_CONFIG, "\"%s\" is not closed or open", value);
			c->audit.fail_open = strcmp(value, "open") == 0;
			return CF_OK;
		}
		if (strcmp(name, "max_wait_ms") == 0)
			return parse_uint(value, 1, 60000, 10, &c->audit.max_wait_ms);
		if (strcmp(name, "max_queued") == 0)
			return parse_uint(value, 1, 10000000, 10, &c->audit.max_queued);
		if (strcmp(name, "durability") == 0) {
			if (strcmp(value, "disk") != 0 && strcmp(value, "os") != 0)
				return cf_error(CF_E_CONFIG, "\"%s\" is not disk or os", value);
			c->audit.durability_os = strcmp(value, "os") == 0;
			return CF_OK;
		}
		return cf_error(CF_E_CONFIG, "unknown setting %s in [audit]", name);
	} else if (strcmp(section, "metrics") == 0) {
		if (strcmp(name, "listen") == 0)
			return metrics_http_listen(&c->metrics, value);
		if (strcmp(name, "mode") == 0)
			return parse_uint(value, 0, 0777, 8, &c->metrics.mode);
		if (strcmp(name, "group") == 0)
			return lookup_id(value, 1, (unsigned *)&c->metrics.group);
	} else if (strcmp(section, "requests") == 0) {
		if (strcmp(name, "window") == 0)
			return parse_uint(value, 1, 86400, 10, &c->request_window);
		if (strcmp(name, "max_nonces") == 0)
			return parse_uint(value, 1000, 100000000, 10, &c->max_nonces);
		if (strcmp(name, "max_nonces_per_key") == 0)
			return parse_uint(value, 100, 100000000, 10, &c->max_nonces_per_key);
		if (strcmp(name, "require_api_key") == 0)
			return parse_bool(value, &c->require_api_key);
	} else {
		return cf_error(CF_E_CONFIG, "unknown section [%s]", section);
	}
	return cf_error(CF_E_CONFIG, "unknown setting %s in [%s]", name, section);
}

/* ---- the file ----
 *
 * INI read here rather than by libinih, whose Debian build folds an
 * indented line into the setting above it (replacing its value), splits
 * lines past 200 bytes into two settings, cuts a value at " ;", lets a
 * repeated setting silently win, and reports the line of a different
 * error than the one it names (found by a review). Here: "[section]",
 * "name = value" (both sides trimmed; the value is everything after the
 * first '='), blank lines and lines starting with ';' or '#'; anything
 * else (an indented continuation line among them), a setting before any
 * section, one set twice or a value with a ';' after a blank (which
 * libinih took for a comment) is an error naming its line. */

#define CONFIG_FILE_MAX (1u << 20)

static char *
trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

/* A setting seen: "section\0name", and its line. */
struct seen {
	char *key;
	size_t klen;
	int line;
};

/* The line `key` was first set on, or 0 after recording it at `line`;
 * -1 when out of memory. */
static int
seen_before(struct seen **v, size_t *n, const char *section, const char *name, int line)
{
	size_t sl = strlen(section) + 1, klen = sl + strlen(name) + 1;
	struct seen *nv;
	char *key;

	for (size_t i = 0; i < *n; i++)
		if ((*v)[i].klen == klen && memcmp((*v)[i].key, section, sl) == 0 &&
		    strcmp((*v)[i].key + sl, name) == 0)
			return (*v)[i].line;
	if ((key = malloc(klen)) == NULL ||
	    (nv = realloc(*v, (*n + 1) * sizeof(**v))) == NULL) {
		free(key);
		return -1;
	}
	memcpy(key, section, sl);
	memcpy(key + sl, name, klen - sl);
	*v = nv;
	(*v)[(*n)++] = (struct seen){ key, klen, line };
	return 0;
}

/* The sections config_set knows: a header is checked on its own line (an
 * unknown one was reported at its first setting, found from outside). */
static const char *const known_sections[] = {
	"token", "daemon", "state", "service", "admin", "session", "idempotency", "keys",
	"audit", "metrics", "requests",
};

static int
section_known(const char *name)
{
	for (size_t i = 0; i < sizeof(known_sections) / sizeof(known_sections[0]); i++)
		if (strcmp(name, known_sections[i]) == 0)
			return 1;
	return 0;
}

/* Apply `text` (NUL-terminated, changed in place); `file` names it. */
static int
load_text(struct cofferd_config *c, const char *file, char *text)
{
	char section[64] = "";
	struct seen *seen = NULL;
	size_t nseen = 0;
	int r = CF_OK, line = 0, have_section = 0;
	char *p = text;

	if (strncmp(p, "\xEF\xBB\xBF", 3) == 0)   /* a UTF-8 byte order mark */
		p += 3;
	while (*p != '\0' && r == CF_OK) {
		char *nl = strchr(p, '\n'), *s, *eq, *value;
		int first;

		if (nl != NULL)
			*nl = '\0';
		line++;
		s = trim(p);
		p = nl != NULL ? nl + 1 : s + strlen(s);
		if (*s == '\0' || *s == ';' || *s == '#')
			continue;
		if (*s == '[') {
			size_t len = strlen(s);

			if (s[len - 1] != ']' || len < 3)
				r = cf_error(CF_E_CONFIG, "%s:%d: syntax error: a section is [name]",
					     file, line);
			else if (len - 2 >= sizeof(section))
				r = cf_error(CF_E_CONFIG, "%s:%d: unknown section (a name of %zu "
					     "bytes)", file, line, len - 2);
			else {
				s[len - 1] = '\0';
				s = trim(s + 1);
				memmove(section, s, strlen(s) + 1);
				have_section = 1;
				if (!section_known(section)) {
					char known[160] = "";

					for (size_t i = 0; i < sizeof(known_sections) /
							       sizeof(known_sections[0]); i++)
						snprintf(known + strlen(known),
							 sizeof(known) - strlen(known), "%s%s",
							 i ? ", " : "", known_sections[i]);
					r = cf_error(CF_E_CONFIG, "%s:%d: unknown section [%s] "
						     "(known: %s)", file, line, section, known);
				}
			}
			continue;
		}
		if ((eq = strchr(s, '=')) == NULL || eq == s) {
			r = cf_error(CF_E_CONFIG, "%s:%d: syntax error: not [section], name = value or "
				     "a comment (a value is written on one line)", file, line);
			continue;
		}
		*eq = '\0';
		s = trim(s);
		if (!have_section) {
			r = cf_error(CF_E_CONFIG, "%s:%d: %s is set before any [section]", file, line,
				     s);
			continue;
		}
		if ((first = seen_before(&seen, &nseen, section, s, line)) != 0) {
			r = first < 0 ? cf_nomem() :
			    cf_error(CF_E_CONFIG, "%s:%d: [%s] %s is set again (first on line %d): "
				     "keep one", file, line, section, s, first);
			continue;
		}
		value = trim(eq + 1);
		/* libinih cut a value at a ';' after a blank (a comment): such a
		 * file, taken whole now, would name another path or lock file
		 * without a word. */
		for (const char *q = value; *q != '\0' && r == CF_OK; q++)
			if (*q == ';' && (q == value || q[-1] == ' ' || q[-1] == '\t'))
				r = cf_error(CF_E_CONFIG, "%s:%d: [%s] %s: a ';' after a blank in the "
					     "value: write a comment on a line of its own", file, line,
					     section, s);
		if (r != CF_OK)
			continue;
		if ((r = config_set(c, section, s, value)) != CF_OK) {
			char why[CF_ERROR_DETAIL_MAX];

			snprintf(why, sizeof(why), "%s", cf_error_detail());
			r = cf_error(CF_E_CONFIG, "%s:%d: [%s] %s: %s", file, line, section, s, why);
		}
	}
	for (size_t i = 0; i < nseen; i++)
		free(seen[i].key);
	free(seen);
	return r;
}

/* A text copy whose memory is wiped before it is freed: a dsn may hold a
 * password. */
static void
text_free(char *t, size_t cap)
{
	if (t != NULL)
		OPENSSL_cleanse(t, cap);
	free(t);
}

int
config_load(struct cofferd_config *c, const char *path)
{
	/* O_NONBLOCK: a FIFO would hold the open until a writer came (and with
	 * it a reload on the main thread); refused below as no regular file. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK), r;
	size_t len = 0;
	struct stat st;
	char *text = NULL, *nul;

	if (fd < 0)
		return cf_error(CF_E_CONFIG, "cannot open configuration file %s: %s", path,
				strerror(errno));
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		r = cf_error(CF_E_CONFIG, "configuration file %s is not a regular file", path);
		goto out;
	}
	if ((text = malloc(CONFIG_FILE_MAX + 1)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	for (;;) {
		ssize_t got = read(fd, text + len, CONFIG_FILE_MAX + 1 - len);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			r = cf_error(CF_E_CONFIG, "reading configuration file %s: %s", path,
				     strerror(errno));
			goto out;
		}
		if (got == 0)
			break;
		if ((len += (size_t)got) > CONFIG_FILE_MAX) {
			r = cf_error(CF_E_CONFIG, "configuration file %s is larger than %u bytes",
				     path, CONFIG_FILE_MAX);
			goto out;
		}
	}
	text[len] = '\0';
	if ((nul = memchr(text, '\0', len)) != NULL) {
		int line = 1;

		for (const char *q = text; q < nul; q++)
			line += *q == '\n';
		r = cf_error(CF_E_CONFIG, "%s:%d: a NUL byte (not a text file?)", path, line);
		goto out;
	}
	r = load_text(c, path, text);
out:
	text_free(text, CONFIG_FILE_MAX + 1);
	close(fd);
	return r;
}

int
config_load_string(struct cofferd_config *c, const char *name, const char *text)
{
	size_t len = strlen(text);
	char *copy = malloc(len + 1);
	int r;

	if (copy == NULL)
		return cf_nomem();
	memcpy(copy, text, len + 1);
	r = load_text(c, name, copy);
	text_free(copy, len + 1);
	return r;
}

int
config_finish(struct cofferd_config *c)
{
	c->service.path = c->service_path;
	c->admin.path = c->admin_path;
	if (strcmp(c->service_path, c->admin_path) == 0)
		return cf_error(CF_E_CONFIG, "service and admin sockets must differ");
	if (c->metrics.is_unix && (strcmp(c->metrics.path, c->service_path) == 0 ||
				   strcmp(c->metrics.path, c->admin_path) == 0))
		return cf_error(CF_E_CONFIG, "[metrics] listen names the %s socket's path; give "
				"the metrics endpoint its own", strcmp(c->metrics.path,
				c->service_path) == 0 ? "service" : "admin");
	if (c->keys.destroy_grace < c->keys.min_destroy_grace)
		return cf_error(CF_E_CONFIG, "[keys] destroy_grace (%u s) is shorter than "
				"min_destroy_grace (%u s)", c->keys.destroy_grace,
				c->keys.min_destroy_grace);
	if (c->state_dsn[0] != '\0' && c->state_dsn_file[0] != '\0')
		return cf_error(CF_E_CONFIG, "[state] dsn and dsn_file are both set; keep one "
				"(dsn_file for a connection string with a password)");
	if (c->state_backend == STORE_POSTGRESQL && c->state_dsn[0] == '\0' &&
	    c->state_dsn_file[0] == '\0')
		return cf_error(CF_E_CONFIG, "[state] backend = postgresql needs [state] dsn or "
				"dsn_file (a libpq connection string)");
	/* With no allow-list, only the daemon's own user may connect. */
	if (c->service.nuids == 0 && c->service.ngids == 0)
		c->service.uids[c->service.nuids++] = geteuid();
	if (c->admin.nuids == 0 && c->admin.ngids == 0)
		c->admin.uids[c->admin.nuids++] = geteuid();
	return CF_OK;
}
