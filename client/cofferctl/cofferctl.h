/*
 * cofferctl's internals, shared by its files (not installed): the parsed
 * options, the command table's entry, the output and I/O helpers, the
 * one-call job runner, and the command functions the table names.
 *
 * Every command is one function that takes the parsed options, makes one
 * libcoffer call (two for none) and prints the result. Errors are printed
 * once, as "cofferctl: <reason>", and turned into the exit codes listed in
 * usage(). Secret material (import material, wrap input, unwrap and data
 * key output) lives only in buffers that are wiped before they are freed,
 * and is printed only as the command's own output.
 */
#ifndef COFFERCTL_H
#define COFFERCTL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "coffer.h"

#define DEFAULT_SOCKET          "/run/coffer/service.sock"
#define DEFAULT_ADMIN_SOCKET    "/run/coffer/admin.sock"
/* Inputs above this are refused before anything is sent. */
#define INPUT_MAX               COFFER_MAX_MESSAGE
#define SIG_FILE_MAX            (64u << 10)
#define VERSION_MAX             1000000u

enum exit_code {
	EXIT_OK = 0,
	EXIT_FAILED = 1,        /* operation failed, or verification said invalid */
	EXIT_USAGE = 2,
	EXIT_DENIED = 3,
	EXIT_NOT_FOUND = 4,
	EXIT_UNAVAILABLE = 5,
	EXIT_INVALID = 6
};

/* Returned by the option parsers when --help was given. */
#define EXIT_HELP_DONE (-1)

/* The global options: where and how to reach the daemon, how to print. */
struct ctl {
	const char *socket;
	const char *admin_socket;
	const char *identity;   /* PEM file of the daemon identity to pin */
	const char *api_key;    /* credentials file: sign service-socket calls with it */
	char idem_key[129];     /* this command's idempotency key (given or made) */
	int json;
	int no_peer_check;      /* --no-peer-check */
	long timeout_ms;        /* -1 = library default */
};

/* A command's own options (options.c fills it). */
struct opts {
	char **args;            /* positional arguments */
	int nargs;
	const char *type, *in, *out, *sig, *mac, *service, *plaintext_out;
	const char *hash, *scheme;
	uint32_t version, length;
	int have_version;
	int der, raw, prehashed, admin;
	struct coffer_kv *ctx;  /* keys strdup()ed, values borrowed from argv */
	size_t nctx;
	uint32_t ids[2][64];    /* principal --uid, --gid */
	size_t nids[2];
	const char *key_pattern;
	unsigned int ops;       /* --op: COFFER_OP_BIT()s; COFFER_OP_ALL sets have_op_all */
	int have_op_all;
	double rate;
	uint32_t burst;
	int have_rate;
	uint32_t overlap;       /* --overlap, seconds */
	uint32_t count;         /* --count */
	const char *import;     /* --import FILE: a secret to import */
	int force;              /* --force */
	int64_t grace;          /* --grace, seconds; 0 = the daemon's default */
	uint32_t min_version, min_verify, keep_last;
	int64_t period;         /* --rotation-period, seconds */
	int have_period;
	int64_t next;           /* --next: a Unix time */
	const char *format;     /* --format pem|der|jwk */
	int batch, progress;    /* rewrap --batch, --progress */
	/* audit verify offline: --file, --public-key, --state-db, --anchor,
	 * --state-dsn with --replica (PostgreSQL) */
	const char *file, *public_key, *state_db, *anchor, *state_dsn, *replica;
	int uid_only, signed_only;   /* principal set-auth */
	/* request sign/verify: the HTTP request's parts and its header's */
	const char *method, *path, *query, *body, *nonce, *signature;
	int64_t timestamp;
	int have_timestamp;
};

/* One command of the table (commands.c). */
struct cmd {
	const char *name;
	int (*fn)(struct ctl *, const struct opts *);
	unsigned long long allow;   /* B(O_*) beyond COMMON (options.h) */
	int min_args, max_args;
	const char *synopsis;
	const char *help;
};

/* ---- commands.c: the table, usage ---- */

const struct cmd *find_command(int argc, char **argv, int *used);
void usage(FILE *f);
void cmd_help(const struct cmd *cmd);

/* ---- output.c: messages, exit codes, printing, files ---- */

void errmsg(const char *what, const char *detail);
int exit_for_status(int r);
int fail(int r);
int usage_error(const char *what, const char *arg);
int bad_value(const char *opt, const char *value, const char *why);
void wipe(void *p, size_t n);
void put_safe(FILE *f, const char *s);
void put_json_str(FILE *f, const char *s);
char *b64(const uint8_t *p, size_t n);
ssize_t unb64(const char *s, size_t n, uint8_t *out);
int put_json_b64(FILE *f, const char *name, const uint8_t *p, size_t n);
int put_json_open(const char *field, const struct coffer_bytes *b);
void put_ops_json(FILE *f, const char *name, unsigned int bits);
void put_time(FILE *f, int64_t t);
int flush_stdout(void);
int write_output(const char *path, const void *data, size_t len, int secret);
int json_done(const char *out, const void *data, size_t len);
int read_input(const char *path, size_t max, struct coffer_bytes *out);
int is_std(const char *path);

/* ---- job.c: connect, make the one call, print ---- */

/*
 * What one command sends and receives. A command checks its options and
 * reads its inputs into a job, then run_job() connects, makes the one
 * libcoffer call, prints the result and frees the job.
 */
struct job {
	struct coffer_bytes in;         /* the input (--in) */
	struct coffer_bytes tag;        /* signature or MAC to check */
	struct coffer_bytes out;        /* signature, MAC, ciphertext or plaintext */
	struct coffer_bytes pt;         /* datakey: the plaintext key */
	struct coffer_key_info *key;
	struct coffer_key_list *list;
	struct coffer_public_key *pk;
	struct coffer_sign_opts so;
	enum coffer_key_type type;
	enum coffer_serving_status st;
	enum coffer_version_action action;   /* key set-primary, enable, ... */
	uint32_t used, prev;
	int valid;
};

/* The command's libcoffer call; returns a COFFER_* status. */
typedef int (*job_call)(coffer_client *, const struct opts *, struct job *);
/* Print a successful call's result; returns an exit code. */
typedef int (*job_put)(const struct ctl *, const struct opts *, const struct job *);

void job_init(struct job *j);
void job_free(struct job *j);
int connect_to(const struct ctl *ctl, int admin, coffer_client **c);
int run_job(const struct ctl *ctl, const struct opts *o, int admin, job_call call, job_put put,
    struct job *j);
int run_call(const struct ctl *ctl, const struct opts *o, int admin, job_call call, job_put put);
int input_job(struct ctl *ctl, const struct opts *o, job_call call, job_put put, struct job *j);

/* ---- the commands ---- */

/* keys.c */
int put_job_key(const struct ctl *ctl, const struct opts *o, const struct job *j);
int cmd_key_create(struct ctl *ctl, const struct opts *o);
int cmd_key_import(struct ctl *ctl, const struct opts *o);
int cmd_key_list(struct ctl *ctl, const struct opts *o);
int cmd_key_show(struct ctl *ctl, const struct opts *o);
int cmd_key_rotate(struct ctl *ctl, const struct opts *o);
int cmd_key_pubkey(struct ctl *ctl, const struct opts *o);

/* lifecycle.c */
int cmd_key_set_primary(struct ctl *ctl, const struct opts *o);
int cmd_key_enable(struct ctl *ctl, const struct opts *o);
int cmd_key_disable(struct ctl *ctl, const struct opts *o);
int cmd_key_schedule_destroy(struct ctl *ctl, const struct opts *o);
int cmd_key_cancel_destroy(struct ctl *ctl, const struct opts *o);
int cmd_key_set_min(struct ctl *ctl, const struct opts *o);
int cmd_key_trim(struct ctl *ctl, const struct opts *o);
int cmd_key_set_rotation(struct ctl *ctl, const struct opts *o);

/* data.c */
int cmd_sign(struct ctl *ctl, const struct opts *o);
int cmd_verify(struct ctl *ctl, const struct opts *o);
int cmd_mac(struct ctl *ctl, const struct opts *o);
int cmd_verify_mac(struct ctl *ctl, const struct opts *o);
int cmd_wrap(struct ctl *ctl, const struct opts *o);
int cmd_unwrap(struct ctl *ctl, const struct opts *o);
int cmd_rewrap(struct ctl *ctl, const struct opts *o);
int cmd_datakey(struct ctl *ctl, const struct opts *o);

/* rewrap_batch.c */
int cmd_rewrap_batch(struct ctl *ctl, const struct opts *o);

/* principals.c */
int cmd_principal_create(struct ctl *ctl, const struct opts *o);
int cmd_principal_list(struct ctl *ctl, const struct opts *o);
int cmd_principal_show(struct ctl *ctl, const struct opts *o);
int cmd_principal_grant(struct ctl *ctl, const struct opts *o);
int cmd_principal_revoke(struct ctl *ctl, const struct opts *o);
int cmd_principal_limit(struct ctl *ctl, const struct opts *o);
int cmd_principal_delete(struct ctl *ctl, const struct opts *o);

/* apikeys.c */
void put_api_key_text(const struct coffer_api_key *k);
int cmd_principal_add_key(struct ctl *ctl, const struct opts *o);
int cmd_principal_rotate_secret(struct ctl *ctl, const struct opts *o);
int cmd_principal_revoke_key(struct ctl *ctl, const struct opts *o);
int cmd_principal_set_auth(struct ctl *ctl, const struct opts *o);
int cmd_principal_keys(struct ctl *ctl, const struct opts *o);

/* audit.c */
int cmd_audit_tail(struct ctl *ctl, const struct opts *o);
int cmd_audit_verify(struct ctl *ctl, const struct opts *o);
int cmd_token_info(struct ctl *ctl, const struct opts *o);

/* requests.c */
int cmd_request_sign(struct ctl *ctl, const struct opts *o);
int cmd_request_verify(struct ctl *ctl, const struct opts *o);

/* service.c */
int cmd_identity(struct ctl *ctl, const struct opts *o);
int cmd_health(struct ctl *ctl, const struct opts *o);

#endif
