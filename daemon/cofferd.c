/*
 * cofferd — Coffer's key daemon: serves signing, verification, MACs and
 * envelope encryption from keys held in a PKCS#11 token to local callers over
 * gRPC on Unix sockets.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <grpc/grpc.h>

#include "cf_crashpoint.h"
#include "cf_log.h"
#include "cf_p11.h"
#include "cf_secret.h"
#include "cf_secret_file.h"
#include "cf_status.h"
#include "cf_time.h"
#include "chores.h"
#include "config.h"
#include "dispatch.h"
#include "fleet.h"
#include "iowatch.h"
#include "keyring.h"
#include "listener.h"
#include "metrics_http.h"
#include "notify.h"
#include "rpc.h"
#include "store.h"

static void
usage(FILE *f)
{
	fprintf(f,
"usage: cofferd [-c FILE] [options]\n"
"  -c, --config FILE          INI configuration (see deploy/cofferd.conf.example)\n"
"      --module PATH          PKCS#11 module            [token] module\n"
"      --token-uri URI        RFC 7512 token URI        [token] uri\n"
"      --pin-file PATH        user PIN file (0600)      [token] pin_file\n"
"      --state-dir DIR        registry directory        [daemon] state_dir\n"
"      --state-backend NAME   sqlite|postgresql         [state] backend\n"
"      --state-dsn-file PATH  libpq conninfo file (0600) [state] dsn_file\n"
"      --replica NAME         this replica's name       [state] replica\n"
"      --service-socket PATH  data-plane socket         [service] path\n"
"      --admin-socket PATH    admin socket              [admin] path\n"
"      --allow-uids LIST      uids allowed on both sockets (comma-separated)\n"
"      --workers N            RPC worker threads        [daemon] workers\n"
"      --log-level LEVEL      error|warn|info|debug     [daemon] log_level\n"
"      --check-config         load the configuration, say whether it loads, exit\n"
"      --init-token LABEL     initialise a token labelled LABEL in a free slot of\n"
"                             --module, with the PINs read from --so-pin-file PATH\n"
"                             and --pin-file (never on a command line), exit; a\n"
"                             token of that label without a user PIN (made, cut\n"
"                             short) gets it\n"
"  -h, --help\n"
"Runs in the foreground. SIGTERM or SIGINT: stop accepting, finish the calls in\n"
"flight (up to [daemon] shutdown_grace_ms), exit 0; a second one: exit 1 at\n"
"once. SIGHUP: re-read the -c FILE (flags still win) and apply log_level,\n"
"shutdown_grace_ms, [service]/[admin] allow_uids and allow_gids, [requests]\n"
"window; other changes are logged as needing a restart; a bad file changes\n"
"nothing.\n"
"Exit status: 0 stopped by a signal; 1 could not start or failed; 2 a bad\n"
"configuration or command line; 3 (a fleet) a change held the fleet's change\n"
"lock past its bound, stuck (the service manager starts it again).\n");
}

/* A second SIGTERM or SIGINT while calls finish (a call stuck in a token
 * that does not answer would hold the process for good): exit now. */
static void *
second_signal_main(void *arg)
{
	int sig = 0;

	if (sigwait(arg, &sig) == 0 && (sig == SIGTERM || sig == SIGINT)) {
		cf_log_warn("%s again: exiting without waiting for the calls in flight",
			    sig == SIGTERM ? "SIGTERM" : "SIGINT");
		_exit(1);
	}
	return NULL;
}

static void
second_signal_ends(sigset_t *sigs)
{
	static sigset_t set;
	pthread_t t;
	int e;

	set = *sigs;
	sigdelset(&set, SIGHUP);
	if ((e = pthread_create(&t, NULL, second_signal_main, &set)) == 0)
		pthread_detach(t);
	else
		cf_log_warn("shutdown: cannot start the thread that ends it at a second signal "
			    "(%s); SIGKILL ends a stuck shutdown", strerror(e));
}

/* rpc_cfg.allowed: the socket's allow-list as it is now (ls: service,
 * admin), so that a reload that narrows it reaches connections already open. */
static int
still_allowed(int admin, uid_t uid, gid_t gid, void *arg)
{
	listener **ls = arg;

	return listener_allows_now(ls[admin ? 1 : 0], uid, gid);
}

/* stuck_in_change: the lock goes with the process. */
#define CF_EXIT_STUCK 3

/* DESIGN 6.7: no core dumps, no ptrace by peers, private files. */
static void
harden(void)
{
	struct rlimit rl = { 0, 0 };

	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	(void)setrlimit(RLIMIT_CORE, &rl);
	/* Every connection is a descriptor: allow as many as we may. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	umask(077);
	signal(SIGPIPE, SIG_IGN);
	/* A file size limit makes writes fail (EFBIG) instead of killing us. */
	signal(SIGXFSZ, SIG_IGN);
}

/* The -c FILE the daemon was started with (SIGHUP re-reads it), or NULL. */
static const char *config_file;
/* --check-config: load the configuration, say whether it is good, exit. */
static int check_only;
/* --init-token LABEL with --so-pin-file: initialise a token, exit. */
static const char *init_label, *so_pin_file;

static int
parse_args(int argc, char **argv, struct cofferd_config *cfg)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "module", required_argument, NULL, 'm' },
		{ "token-uri", required_argument, NULL, 'u' },
		{ "pin-file", required_argument, NULL, 'p' },
		{ "state-dir", required_argument, NULL, 's' },
		{ "state-backend", required_argument, NULL, 'B' },
		{ "state-dsn-file", required_argument, NULL, 'D' },
		{ "replica", required_argument, NULL, 'R' },
		{ "service-socket", required_argument, NULL, 'S' },
		{ "admin-socket", required_argument, NULL, 'A' },
		{ "allow-uids", required_argument, NULL, 'U' },
		{ "workers", required_argument, NULL, 'w' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ "crash-points", no_argument, NULL, 'X' },
		{ "check-config", no_argument, NULL, 'K' },
		{ "init-token", required_argument, NULL, 'I' },
		{ "so-pin-file", required_argument, NULL, 'O' },
		{ NULL, 0, NULL, 0 },
	};
	const char *file = NULL;
	int ch, r;

	/* The file first, so flags override it wherever they appear. Again on
	 * SIGHUP: optind 0 restarts getopt from scratch. */
	optind = 0;
	while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		if (ch == 'c')
			file = optarg;
		else if (ch == 'h') {
			usage(stdout);
			exit(0);
		} else if (ch == 'X') {
			/* The named crash points of this build (cf_crashpoint.h). */
			if (cf_crashpoint_list(stdout) == 0) {
				fprintf(stderr, "cofferd: built without crash points "
					"(-DCOFFER_CRASH_POINTS=ON)\n");
				exit(2);
			}
			exit(0);
		} else if (ch == 'K') {
			check_only = 1;
		} else if (ch == 'I') {
			init_label = optarg;
		} else if (ch == 'O') {
			so_pin_file = optarg;
		} else if (ch == '?') {
			usage(stderr);
			exit(2);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "cofferd: unexpected argument \"%s\"\n", argv[optind]);
		exit(2);
	}
	config_file = file;
	if (file != NULL && (r = config_load(cfg, file)) != CF_OK)
		return r;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		r = CF_OK;
		switch (ch) {
		case 'm': r = config_set(cfg, "token", "module", optarg); break;
		case 'u': r = config_set(cfg, "token", "uri", optarg); break;
		case 'p': r = config_set(cfg, "token", "pin_file", optarg); break;
		case 's': r = config_set(cfg, "daemon", "state_dir", optarg); break;
		case 'B': r = config_set(cfg, "state", "backend", optarg); break;
		case 'D': r = config_set(cfg, "state", "dsn_file", optarg); break;
		case 'R': r = config_set(cfg, "state", "replica", optarg); break;
		case 'S': r = config_set(cfg, "service", "path", optarg); break;
		case 'A': r = config_set(cfg, "admin", "path", optarg); break;
		case 'w': r = config_set(cfg, "daemon", "workers", optarg); break;
		case 'l': r = config_set(cfg, "daemon", "log_level", optarg); break;
		case 'U':
			if ((r = config_set(cfg, "service", "allow_uids", optarg)) == CF_OK)
				r = config_set(cfg, "admin", "allow_uids", optarg);
			break;
		default: break;
		}
		if (r != CF_OK) {
			const char *name = "option";

			for (size_t k = 0; opts[k].name != NULL; k++)
				if (opts[k].val == ch)
					name = opts[k].name;
			return cf_error(r, "--%s: %s", name, cf_error_detail());
		}
	}
	return config_finish(cfg);
}

static const char *const level_names[] = { "error", "warn", "info", "debug" };

static void
changed(const char *what)
{
	cf_log_warn("SIGHUP: %s changed in %s: needs a restart (the running daemon keeps the "
		    "old value)", what, config_file);
}

static void
copy_allowed(struct listener_cfg *dst, const struct listener_cfg *src)
{
	memcpy(dst->uids, src->uids, sizeof(dst->uids));
	dst->nuids = src->nuids;
	memcpy(dst->gids, src->gids, sizeof(dst->gids));
	dst->ngids = src->ngids;
}

/* Settings read once at start (by the token, the store, the sockets' setup,
 * the session, audit, nonce, key and metrics modules): a changed value is logged, the
 * running daemon keeps the old one. */
static void
restart_needed(const struct cofferd_config *o, const struct cofferd_config *n)
{
#define DIFF_STR(f, what) do { if (strcmp(o->f, n->f) != 0) changed(what); } while (0)
#define DIFF_NUM(f, what) do { if (o->f != n->f) changed(what); } while (0)
#define DIFF_MEM(f, what) do { if (memcmp(&o->f, &n->f, sizeof(o->f)) != 0) changed(what); } \
	while (0)
	DIFF_STR(module, "[token] module");
	DIFF_STR(token_uri, "[token] uri");
	DIFF_STR(pin_file, "[token] pin_file");
	DIFF_NUM(pool_size, "[token] pool_size");
	DIFF_NUM(pool_timeout_ms, "[token] pool_timeout_ms");
	DIFF_STR(token_lock_file, "[token] lock_file");
	DIFF_STR(state_dir, "[daemon] state_dir");
	DIFF_NUM(state_backend, "[state] backend");
	DIFF_STR(state_dsn, "[state] dsn");
	DIFF_STR(state_dsn_file, "[state] dsn_file");
	DIFF_NUM(state_wait_ms, "[state] wait_ms");
	DIFF_STR(replica, "[state] replica");
	DIFF_NUM(workers, "[daemon] workers");
	DIFF_NUM(max_message_bytes, "[daemon] max_message_bytes");
	DIFF_STR(service_path, "[service] path");
	DIFF_NUM(service.mode, "[service] mode");
	DIFF_NUM(service.group, "[service] group");
	DIFF_STR(admin_path, "[admin] path");
	DIFF_NUM(admin.mode, "[admin] mode");
	DIFF_NUM(admin.group, "[admin] group");
	DIFF_MEM(session, "[session] limits");
	DIFF_NUM(require_sealed, "[session] require_sealed");
	DIFF_NUM(unsealed_secrets, "[session] unsealed_secrets");
	DIFF_NUM(max_nonces, "[requests] max_nonces");
	DIFF_NUM(max_nonces_per_key, "[requests] max_nonces_per_key");
	DIFF_NUM(require_api_key, "[requests] require_api_key");
	DIFF_MEM(audit, "[audit] settings");
	DIFF_NUM(idem_retention, "[idempotency] retention");
	DIFF_MEM(keys, "[keys] settings");
	DIFF_STR(metrics.listen, "[metrics] listen");
	DIFF_NUM(metrics.mode, "[metrics] mode");
	DIFF_NUM(metrics.group, "[metrics] group");
#undef DIFF_STR
#undef DIFF_NUM
#undef DIFF_MEM
}

/* SIGHUP: re-read the configuration file (command-line flags still win) and
 * apply what can change under running calls: the log level, the sockets'
 * allow-lists (checked at accept and at every call: still_allowed), the
 * request window (atomic in rpc.c) and the shutdown grace (read by this
 * thread only). A file that does not load changes nothing (its status); a
 * window the nonce record cannot take stays, the rest applies, and the
 * status says so. */
static int
reload(int argc, char **argv, struct cofferd_config *cur, listener **ls, rpc_server *srv,
       nonces *nn)
{
	static struct cofferd_config n;   /* large; only this thread reloads */
	int r, rw = CF_OK;

	if (config_file == NULL) {
		cf_log_warn("SIGHUP: cofferd was started without -c FILE; nothing to reload");
		return CF_OK;
	}
	config_defaults(&n);
	if ((r = parse_args(argc, argv, &n)) != CF_OK) {
		cf_log_error("SIGHUP: configuration not reloaded, nothing changed: %s",
			     cf_error_detail());
		return r;
	}
	listener_set_allowed(ls[0], &n.service);
	listener_set_allowed(ls[1], &n.admin);
	/* The nonce record first: a raised window must not accept a timestamp
	 * whose nonce it has already forgotten. */
	if (n.request_window != cur->request_window &&
	    (rw = nonces_set_window(nn, n.request_window, cf_wall_s())) != CF_OK) {
		char why[CF_ERROR_DETAIL_MAX];

		snprintf(why, sizeof(why), "%s", cf_error_detail());
		cf_log_error("SIGHUP: [requests] window stays %u s: %s", cur->request_window, why);
		rw = cf_error(rw, "[requests] window stays %u s: %s", cur->request_window, why);
		n.request_window = cur->request_window;
	}
	rpc_set_window(srv, n.request_window);
	cur->shutdown_grace_ms = n.shutdown_grace_ms;
	cur->request_window = n.request_window;
	copy_allowed(&cur->service, &n.service);
	copy_allowed(&cur->admin, &n.admin);
	/* Said once the rest applies, before the new level does (so at the
	 * old); what needs a restart after, at the new. */
	cf_log_info("SIGHUP: reloaded %s: log_level %s, shutdown_grace_ms %u, [requests] "
		    "window %u, service allow-list %u uids %u gids, admin allow-list %u uids %u "
		    "gids", config_file, level_names[n.log_level], n.shutdown_grace_ms,
		    n.request_window, n.service.nuids, n.service.ngids, n.admin.nuids,
		    n.admin.ngids);
	cf_log_init(NULL, n.log_level);
	cur->log_level = n.log_level;
	restart_needed(cur, &n);
	return rw;
}

/* The state the configuration names. SQLite: the store in state_dir (its rows
 * carry no replica name) and the nonce record's file there. PostgreSQL: the
 * store, the fleet's coordination (fleet.h) and the shared nonce record, all
 * on the connection string from [state] dsn or, with its password, from
 * [state] dsn_file (owner-only, like the PIN file), held in locked memory
 * until each has connected (libpq keeps its own copy to reconnect). */
static int
open_state(const struct cofferd_config *cfg, store **st, fleet **fl, nonces **nn)
{
	struct store_options so = { .backend = cfg->state_backend, .dir = cfg->state_dir,
				    .wait_ms = cfg->state_wait_ms };
	cf_secret *file = NULL, *dsn = NULL;
	int r;

	if (cfg->state_backend != STORE_POSTGRESQL) {
		if ((r = store_open_with(&so, st)) != CF_OK)
			return r;
		return nonces_open(cfg->state_dir, cfg->max_nonces, nn);
	}
	so.replica = cfg->replica;
	so.dsn = cfg->state_dsn;
	if (cfg->state_dsn_file[0] != '\0') {
		if ((r = cf_secret_file_read(cfg->state_dsn_file, "[state] dsn_file", CF_E_CONFIG,
					     4096, &file)) != CF_OK ||
		    (r = cf_secret_new(cf_secret_len(file) + 1, &dsn)) != CF_OK)
			goto out;
		memcpy(cf_secret_ptr(dsn), cf_secret_cptr(file), cf_secret_len(file));
		if (memchr(cf_secret_cptr(file), '\0', cf_secret_len(file)) != NULL) {
			r = cf_error(CF_E_CONFIG, "[state] dsn_file %s holds a NUL byte",
				     cfg->state_dsn_file);
			goto out;
		}
		so.dsn = (const char *)cf_secret_cptr(dsn);
	}
	if ((r = store_open_with(&so, st)) != CF_OK ||
	    (r = fleet_open(so.dsn, cfg->replica, fl)) != CF_OK ||
	    (r = nonces_open_pg(so.dsn, cfg->max_nonces, nn)) != CF_OK)
		goto out;
	/* Changes to keys, principals and API keys: one at a time in the fleet. */
	store_set_change_lock(*st, fleet_lock, fleet_unlock, fleet_healthy_cb, fleet_lock_touch, *fl);
out:
	cf_secret_free(file);
	cf_secret_free(dsn);
	return r;
}

static void
report_mismatch(const char *msg)
{
	cf_log_warn("reconcile: %s", msg);
}

/* The audit record of a change the daemon made on its own, committed with
 * the change (keyring_set_recorder). */
static int
own_change_record(const char *method, const char *name, uint32_t version, char *buf,
		  size_t len, void *arg)
{
	struct audit_event ev = {
		.principal = "cofferd", .uid = geteuid(), .pid = getpid(), .admin = 1,
		.method = method, .key = name, .version = version, .result = "OK",
		.request_id = strcmp(method, "cofferd/ScheduledRotation") == 0 ?
			      "scheduled-rotation" : "scheduled-destruction",
	};

	(void)arg;
	return audit_format_change(&ev, buf, len);
}

/* The parts of the registry a replica reloads, each on its own. */
enum { PART_KEYS = 1, PART_PRINCIPALS = 2, PART_APIKEYS = 4, PART_ALL = 7 };

/* What a replica hears of another's change (fleet.h): the part of its
 * memory that the change touched is re-read from the store. */
struct replica {
	store *st;
	keyring *kr;
	policy *pol;
	apikeys *ak;
	audit *au;
	_Atomic(chores *) ch;   /* set once the periodic work runs */
	unsigned stale;         /* PART_*: left to reload (the notification thread's) */
};

/* The lease goes to a replica that can do the scheduled work: not one
 * whose trail fails closed (the work waits then: chores.c), nor one whose
 * periodic work is stuck in a step beyond its bound (a token or a disk
 * that hangs), which would stop that work for the whole fleet. */
static const char *
replica_unfit(void *arg)
{
	struct replica *rp = arg;
	chores *ch = atomic_load(&rp->ch);

	if (rp->au != NULL && !audit_healthy(rp->au))
		return "its audit trail refuses records (failing closed)";
	if (ch != NULL && !chores_alive(ch))
		return "its periodic work is stuck (a step has not ended within its bound: a "
		       "token or disk that hangs?)";
	return NULL;
}

/* A change stuck while it holds the fleet's change lock (a token that does
 * not answer: its calls have no bound; a long run of destructions commits
 * each one, and each commit counts as progress) stops every replica's
 * changes, and
 * letting the lock go by closing its connection would fence the stuck
 * change but leave this replica's own changes waiting behind its thread
 * (the writer lock). The process ends instead, as the systemd
 * watchdog would end it, with or without one: the lock goes with its
 * session, crash safety covers the change cut short, and the service
 * manager starts cofferd again. */
static void
stuck_in_change(fleet *fl, unsigned bound_ms)
{
	uint64_t held = fleet_lock_held_ms(fl);

	if (bound_ms == 0 || held <= bound_ms)
		return;
	cf_log_error("ALARM: fleet: a change has held the fleet's change lock for %llu ms without "
		     "committing, past its bound of %u ms (a token that does not answer?), and "
		     "every replica's changes wait for it: exiting so that the lock goes with this "
		     "process (the service manager starts cofferd again)",
		     (unsigned long long)held, bound_ms);
	_exit(CF_EXIT_STUCK);
}

/* One part re-read (a key: name; NULL: every key). */
static int
reload_part(struct replica *rp, unsigned part, const char *name)
{
	if (part == PART_KEYS)
		return keyring_refresh(rp->kr, name);
	return part == PART_PRINCIPALS ? policy_refresh(rp->pol) : apikeys_refresh(rp->ak);
}

/* A change this replica made is installed as it commits (and every change
 * re-reads under the fleet's lock): its own notification reloads nothing.
 * Before, it met the change still holding its module's mutex (the fleet's
 * unlock comes after the commit) and became a reload of everything. */
static int
replica_changed(const char *kind, const char *name, int sender, void *arg)
{
	struct replica *rp = arg;
	unsigned part;
	int r;

	if (sender != 0 && sender == store_session_pid(rp->st))
		return CF_OK;
	if (strcmp(kind, "key") == 0)
		part = PART_KEYS;
	else if (strcmp(kind, "principal") == 0)
		part = PART_PRINCIPALS;
	else if (strcmp(kind, "apikey") == 0 || strcmp(kind, "signed") == 0)
		part = PART_APIKEYS;
	else
		return CF_OK;
	store_yield(1);   /* the notification thread's reloads are tried again */
	/* What fails is left to replica_resync, which logs a failure once. */
	if ((r = reload_part(rp, part, name)) != CF_OK) {
		cf_log_debug("fleet: re-reading %s %s after another replica's change: %s", kind,
			     name, cf_error_detail());
		rp->stale |= part;
	}
	return r;
}

/* Each stale part on its own (a key change in progress must not hold back a
 * revoked API key). A failure wins over a part found busy, with its own
 * text: a busy part is tried again at once, a failed one a second later. */
static int
replica_resync(int all, void *arg)
{
	static const unsigned parts[] = { PART_KEYS, PART_PRINCIPALS, PART_APIKEYS };
	struct replica *rp = arg;
	char why[CF_ERROR_DETAIL_MAX] = "";
	int failed = CF_OK, busy = 0;

	/* A COMMIT whose answer was lost may have committed a change this
	 * replica did not install, and its notification was its own. */
	if (all || store_take_commit_unknown(rp->st))
		rp->stale = PART_ALL;
	if (rp->stale == 0)
		return CF_OK;
	store_yield(1);
	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		int r;

		if (!(rp->stale & parts[i]))
			continue;
		if ((r = reload_part(rp, parts[i], NULL)) == CF_OK) {
			rp->stale &= ~parts[i];
		} else if (r == CF_E_BUSY) {
			busy = 1;
		} else if (failed == CF_OK) {
			failed = r;
			snprintf(why, sizeof(why), "%s", cf_error_detail());
		}
		cf_error_clear();
	}
	if (failed != CF_OK)
		return cf_error(failed, "%s", why);
	return busy ? cf_error(CF_E_BUSY, "a change is in progress; reload later") : CF_OK;
}

static int
replica_alive(void *arg, const char *owner, int *alive)
{
	return fleet_alive(arg, owner, alive);
}

int
main(int argc, char **argv)
{
	struct cofferd_config cfg;
	struct cf_p11_config pc;
	struct rpc_cfg rc;
	cf_p11 *p11 = NULL;
	store *st = NULL;
	keyring *kr = NULL;
	session_mgr *sm = NULL;
	policy *pol = NULL;
	apikeys *ak = NULL;
	audit *au = NULL;
	idem *idm = NULL;
	nonces *nn = NULL;
	fleet *fl = NULL;
	chores *ch = NULL;
	struct replica rp = { .st = NULL };
	listener *ls[2] = { NULL, NULL };
	rpc_server *srv = NULL;
	metrics_http *mh = NULL;
	sigset_t sigs;
	unsigned mismatches = 0;
	int sig = 0, r, status = 1, grpc_up = 0;
	unsigned step_bound_ms = 0;   /* the periodic work's, and the change lock's */
	char ready[300];

	harden();
	cf_crashpoint_init();
	config_defaults(&cfg);
	cf_log_init("cofferd", CF_LOG_INFO);
	if ((r = parse_args(argc, argv, &cfg)) != CF_OK) {
		cf_log_error("configuration: %s", cf_error_detail());
		return 2;
	}
	if (init_label != NULL || so_pin_file != NULL) {
		if (init_label == NULL || so_pin_file == NULL || cfg.pin_file[0] == '\0') {
			cf_log_error("--init-token LABEL needs --so-pin-file PATH and --pin-file PATH");
			return 2;
		}
		int finished = 0;

		if ((r = cf_p11_init_token(cfg.module, init_label, so_pin_file,
					   cfg.pin_file, &finished)) != CF_OK) {
			cf_log_error("initialising the token: %s", cf_error_detail());
			return r == CF_E_EXISTS ? 3 : 1;
		}
		if (finished)
			printf("cofferd: the token \"%s\" existed without a user PIN (its "
			       "initialisation was cut short): set it from %s\n", init_label,
			       cfg.pin_file);
		else
			printf("cofferd: initialised the token \"%s\" with the PINs of %s and %s\n",
			       init_label, so_pin_file, cfg.pin_file);
		return 0;
	}
	if (check_only) {
		/* A package upgrade asks before it restarts a running daemon. */
		printf("cofferd: configuration %s loads\n", config_file ? config_file : "(none)");
		return 0;
	}
	cf_log_init("cofferd", cfg.log_level);
	/* Signals are taken synchronously by sigwait; block them before gRPC
	 * (and any other thread) starts. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	notify_init();

	if ((r = listener_open(&cfg.service, &ls[0])) != CF_OK ||
	    (r = listener_open(&cfg.admin, &ls[1])) != CF_OK) {
		cf_log_error("sockets: %s", cf_error_detail());
		goto out;
	}
	memset(&pc, 0, sizeof(pc));
	pc.module_path = cfg.module;
	pc.token_uri = cfg.token_uri;
	pc.pin_file = cfg.pin_file;
	pc.pool_size = cfg.pool_size;
	pc.pool_timeout_ms = cfg.pool_timeout_ms;
	pc.lock_file = cfg.token_lock_file[0] != '\0' ? cfg.token_lock_file : NULL;
	if ((r = cf_p11_open(&pc, &p11)) != CF_OK) {
		cf_log_error("token: %s", cf_error_detail());
		goto out;
	}
	if (mkdir(cfg.state_dir, 0700) != 0 && errno != EEXIST) {
		cf_log_error("state directory %s: %s", cfg.state_dir, strerror(errno));
		goto out;
	}
	if ((r = open_state(&cfg, &st, &fl, &nn)) != CF_OK ||
	    (r = keyring_open(p11, st, &cfg.keys, report_mismatch, &mismatches, &kr)) != CF_OK ||
	    (r = policy_open(st, &pol)) != CF_OK ||
	    (r = apikeys_open(p11, st, report_mismatch, &mismatches, &ak)) != CF_OK ||
	    (r = idem_open(st, cfg.idem_retention, p11, &idm)) != CF_OK) {
		cf_log_error("registry: %s", cf_error_detail());
		goto out;
	}
	if (fl != NULL)
		idem_set_owner(idm, fleet_incarnation(fl), replica_alive, fl);
	/* Each API key's share of the nonce record (its own limit, not the whole). */
	nonces_set_scope_max(nn, cfg.max_nonces_per_key ? cfg.max_nonces_per_key
							: cfg.max_nonces / 8);
	/* Recorded under another window before (the log's header, the fleet's
	 * table): kept as long as this one accepts their timestamps. */
	if ((r = nonces_set_window(nn, cfg.request_window, cf_wall_s())) != CF_OK) {
		cf_log_error("[requests] window %u s cannot be taken, so cofferd does not start: %s",
			     cfg.request_window, cf_error_detail());
		goto out;
	}
	if (mismatches > 0)
		cf_log_warn("reconcile: %u mismatches between registry and token (see above)",
			    mismatches);
	grpc_init();
	grpc_up = 1;
	if ((r = session_mgr_open(p11, &cfg.session, &sm)) != CF_OK) {
		cf_log_error("session identity: %s", cf_error_detail());
		goto out;
	}
	/* One bound for a write of the trail and for any other of the state's. */
	iowatch_set_limit(cfg.audit.max_wait_ms);
	if ((r = audit_open(cfg.state_dir, p11, st, &cfg.audit, &au)) != CF_OK) {
		cf_log_error("audit trail: %s", cf_error_detail());
		goto out;
	}
	keyring_set_recorder(kr, own_change_record, NULL);
	if (cfg.unsealed_secrets)
		cf_log_warn("session.unsealed_secrets is on: secret plaintext may cross the "
			    "socket unsealed; use it for measurements only");
	memset(&rc, 0, sizeof(rc));
	rc.p11 = p11;
	rc.kr = kr;
	rc.sm = sm;
	rc.pol = pol;
	rc.ak = ak;
	rc.au = au;
	rc.idm = idm;
	rc.nn = nn;
	rc.st = st;
	rc.window = cfg.request_window;
	rc.workers = cfg.workers;
	rc.max_message_bytes = cfg.max_message_bytes;
	rc.admin_path = cfg.admin_path;
	rc.require_sealed = (int)cfg.require_sealed;
	rc.unsealed_secrets = (int)cfg.unsealed_secrets;
	rc.require_api_key = (int)cfg.require_api_key;
	rc.allowed = still_allowed;
	rc.allowed_arg = ls;
	/* Before the first call, so that every call is counted. */
	{
		struct metrics_sources ms = { p11, sm, nn, au, fl };

		if ((r = metrics_http_start(&cfg.metrics, &ms, &mh)) != CF_OK) {
			cf_log_error("%s", cf_error_detail());
			goto out;
		}
		if (mh != NULL)
			cf_log_info("metrics: serving GET /metrics on %s", cfg.metrics.listen);
	}
	if ((r = rpc_start(&rc, &srv)) != CF_OK ||
	    (r = listener_start(ls, 2, rpc_add_connection, srv)) != CF_OK) {
		cf_log_error("rpc: %s", cf_error_detail());
		goto out;
	}
	if (fl != NULL) {
		struct fleet_hooks hooks = { replica_changed, replica_resync, replica_unfit, &rp };

		rp.st = st;
		rp.kr = kr;
		rp.pol = pol;
		rp.ak = ak;
		rp.au = au;
		if ((r = fleet_start(fl, &hooks)) != CF_OK) {
			cf_log_error("fleet: %s", cf_error_detail());
			goto out;
		}
	}
	cf_log_info("ready: service %s, admin %s, token %s, state %s%s", cfg.service_path,
		    cfg.admin_path, cfg.token_uri, cfg.state_backend == STORE_POSTGRESQL ?
		    "PostgreSQL, replica " : "SQLite in ", cfg.state_backend == STORE_POSTGRESQL ?
		    cfg.replica : cfg.state_dir);
	{
		/* One step alone: a key generation of a scheduled rotation (an
		 * RSA key on a slow token) and, on PostgreSQL, a statement's
		 * bound (the expiry of nonces has 10 s) and a reconnection. */
		unsigned pg = cfg.state_backend == STORE_POSTGRESQL ?
			      (cfg.state_wait_ms > 10000 ? cfg.state_wait_ms : 10000) + 5000 : 0;
		struct chores_deps cd = { kr, au, fl, nn, ak, idm, 60000 + pg };

#ifdef COFFER_CRASH_POINTS
		/* Tests hold the thread at a point (cf_crashpoint.h) and need not
		 * wait a minute for it to count as stuck. */
		const char *tb = getenv("COFFER_TEST_CHORES_BOUND_MS");

		if (tb != NULL)
			cd.step_bound_ms = (unsigned)strtoul(tb, NULL, 10);
#endif
		step_bound_ms = cd.step_bound_ms;
		if ((r = chores_start(&cd, &ch)) != CF_OK) {
			cf_log_error("%s", cf_error_detail());
			goto out;
		}
		atomic_store(&rp.ch, ch);
		notify_gate(chores_alive, ch);
	}
	snprintf(ready, sizeof(ready), "serving: service %s, admin %s", cfg.service_path,
		 cfg.admin_path);
	notify_ready(ready);
	/* Between signals: every 5 s, end expired sessions (so that their keys
	 * are wiped even when no caller comes back for them), from memory.
	 * What touches the state waits on its own thread (chores.h). */
	for (unsigned n = 1;; n++) {
		sig = notify_sigwait(&sigs, 1000);
		if (sig == SIGTERM || sig == SIGINT)
			break;
		if (sig == SIGHUP) {
			notify_reloading();
			r = reload(argc, argv, &cfg, ls, srv, nn);
			notify_reloaded(r == CF_OK ? NULL : cf_error_detail());
		}
		if (n % 5 == 0)
			session_expire(sm);
		stuck_in_change(fl, step_bound_ms);
	}
	cf_log_info("%s: finishing calls in flight", sig == SIGTERM ? "SIGTERM" : "SIGINT");
	notify_stopping("stopping: finishing calls in flight");
	second_signal_ends(&sigs);
	status = 0;
out:
	notify_gate(NULL, NULL);
	/* Calls first: no new connection (refused at once), the grace for those
	 * in flight. Then the periodic work, whose step may take its bound: it
	 * must not hold the grace back with the sockets still serving. */
	listener_stop();
	if (srv != NULL)
		rpc_shutdown(srv, cfg.shutdown_grace_ms);
	chores_stop(ch);         /* its work uses the modules closed below */
	metrics_http_stop(mh);   /* a scrape reads the modules closed below */
	session_mgr_close(sm);
	/* Its thread calls into the registry: stopped before that closes. */
	fleet_close(fl);
	chores_free(ch);         /* the fleet's thread asked it (replica_unfit) */
	audit_close(au);
	policy_close(pol);
	apikeys_close(ak);
	idem_close(idm);
	nonces_close(nn);
	keyring_close(kr);
	store_close(st);
	cf_p11_close(p11);
	listener_close(ls[0]);
	listener_close(ls[1]);
	if (grpc_up)
		grpc_shutdown_blocking();
	if (status == 0)
		cf_log_info("stopped");
	return status;
}
