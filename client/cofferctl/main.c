/*
 * cofferctl — the Coffer command-line client, built on libcoffer only (and
 * common/'s offline audit verifier). main() sets the defaults, reads the
 * global options, finds the command (commands.c), reads its options
 * (options.c) and runs it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cofferctl.h"
#include "options.h"

static void
harden(void)
{
	struct rlimit rl = { 0, 0 };

	/* Secrets may pass through this process: no core files, no ptrace
	 * by other processes of the same user. */
	(void)setrlimit(RLIMIT_CORE, &rl);
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

/* The environment's value, unless unset or empty. */
static const char *
env_or(const char *name, const char *dflt)
{
	const char *env = getenv(name);

	return env != NULL && *env != '\0' ? env : dflt;
}

/* The defaults, before any option: sockets, identity and API key from the
 * environment, a new random idempotency key. */
static int
ctl_init(struct ctl *ctl)
{
	uint8_t rnd[12];

	memset(ctl, 0, sizeof(*ctl));
	ctl->timeout_ms = -1;
	ctl->socket = env_or("COFFER_SOCKET", DEFAULT_SOCKET);
	ctl->admin_socket = env_or("COFFER_ADMIN_SOCKET", DEFAULT_ADMIN_SOCKET);
	ctl->identity = env_or("COFFER_IDENTITY", NULL);
	ctl->api_key = env_or("COFFER_API_KEY_FILE", NULL);
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
		errmsg(NULL, "cannot read random bytes for an idempotency key");
		return EXIT_FAILED;
	}
	strcpy(ctl->idem_key, "ctl-");
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(ctl->idem_key + 4 + 2 * i, 3, "%02x", rnd[i]);
	return EXIT_OK;
}

/* No command was found at argv[0]: help, a group without its subcommand,
 * or an unknown name. */
static int
no_command(int argc, char **argv, int used)
{
	if (strcmp(argv[0], "help") == 0) {
		usage(stdout);
		return EXIT_OK;
	}
	if (strcmp(argv[0], "key") == 0 && argc < 2)
		return usage_error("key needs a subcommand: create, import, list, show, rotate, "
		    "set-primary, enable, disable, schedule-destroy, cancel-destroy, set-min, "
		    "trim, set-rotation or pubkey", NULL);
	if (strcmp(argv[0], "audit") == 0 && argc < 2)
		return usage_error("audit needs a subcommand: tail or verify", NULL);
	if (strcmp(argv[0], "token") == 0 && argc < 2)
		return usage_error("token needs a subcommand: info", NULL);
	if (strcmp(argv[0], "request") == 0 && argc < 2)
		return usage_error("request needs a subcommand: sign or verify", NULL);
	if (strcmp(argv[0], "principal") == 0 && argc < 2)
		return usage_error("principal needs a subcommand: create, list, show, grant, "
		    "revoke, limit, delete, add-key, rotate-secret, revoke-key, set-auth or keys",
		    NULL);
	return usage_error("unknown command", argv[used == 2]);
}

int
main(int argc, char **argv)
{
	struct ctl ctl;
	struct opts o;
	const struct cmd *cmd;
	int used = 0, rc;

	harden();
	if ((rc = ctl_init(&ctl)) != EXIT_OK)
		return rc;
	if ((rc = opts_parse_global(&ctl, argc, argv)) == EXIT_HELP_DONE) {
		usage(stdout);
		return EXIT_OK;
	}
	if (rc != EXIT_OK)
		return rc;
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	argc -= optind;
	argv += optind;
	if ((cmd = find_command(argc, argv, &used)) == NULL)
		return no_command(argc, argv, used);
	/* The command's argv: argv[0] is its last name word. */
	rc = opts_parse(&ctl, cmd, argc - used + 1, argv + used - 1, &o);
	if (rc == EXIT_HELP_DONE) {
		cmd_help(cmd);
		return flush_stdout();
	}
	if (rc != EXIT_OK)
		return rc;
	rc = cmd->fn(&ctl, &o);
	opts_free(&o);
	return rc;
}
