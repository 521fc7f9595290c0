/*
 * config.h — cofferd settings: defaults, an INI file (libinih) and
 * command-line flags, in that order of precedence (flags win). Every setting
 * is documented in deploy/cofferd.conf.example.
 */
#ifndef COFFER_CONFIG_H
#define COFFER_CONFIG_H

#include "cf_log.h"
#include "audit.h"
#include "keyring.h"
#include "listener.h"
#include "metrics_http.h"
#include "session.h"
#include "store.h"

#define CONFIG_PATH_MAX 108

struct cofferd_config {
	char module[4096];
	char token_uri[1024];
	char pin_file[4096];
	char token_lock_file[4096]; /* [token] lock_file; "" = none */
	unsigned pool_size;
	unsigned pool_timeout_ms;
	char state_dir[4096];
	unsigned workers;
	unsigned max_message_bytes;
	unsigned shutdown_grace_ms;
	enum cf_log_level log_level;
	char service_path[CONFIG_PATH_MAX];
	char admin_path[CONFIG_PATH_MAX];
	struct listener_cfg service;
	struct listener_cfg admin;
	struct session_cfg session;
	unsigned require_sealed;     /* [session] require_sealed */
	unsigned unsealed_secrets;   /* [session] unsealed_secrets (benchmarks only) */
	unsigned request_window;     /* [requests] window: seconds either way */
	unsigned max_nonces;         /* [requests] max_nonces */
	unsigned max_nonces_per_key; /* [requests] max_nonces_per_key; 0: max_nonces / 8 */
	unsigned require_api_key;    /* [requests] require_api_key */
	struct audit_cfg audit;      /* [audit] failure, max_wait_ms */
	unsigned idem_retention;     /* [idempotency] retention, seconds */
	struct keyring_cfg keys;     /* [keys] destroy_grace, min_destroy_grace,
	                                min_rotation_period */
	enum store_backend state_backend;   /* [state] backend */
	char state_dsn[4096];               /* [state] dsn (may hold a password: never logged) */
	char state_dsn_file[4096];          /* [state] dsn_file */
	unsigned state_wait_ms;             /* [state] wait_ms (PostgreSQL) */
	char replica[STORE_REPLICA_MAX + 1]; /* [state] replica; default: the host name */
	struct metrics_http_cfg metrics;    /* [metrics] listen, mode, group; off by default */
};

void config_defaults(struct cofferd_config *c);
/* CF_E_CONFIG with "file:line: what is wrong" on a bad file. */
int config_load(struct cofferd_config *c, const char *path);
/* The same from text in memory; `name` stands for the file in errors. */
int config_load_string(struct cofferd_config *c, const char *name, const char *text);
/* Apply one "section.name = value" setting (used by the file and by flags). */
int config_set(struct cofferd_config *c, const char *section, const char *name,
	       const char *value);
/* Fill defaults that depend on others (allow-lists) and check consistency. */
int config_finish(struct cofferd_config *c);

#endif
