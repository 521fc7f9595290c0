/*
 * cofferctl's options: one table (options.c) says of each its name,
 * whether it takes a value, and where the value goes; a command's entry
 * (commands.c) says which of them it accepts beyond the global ones.
 */
#ifndef COFFERCTL_OPTIONS_H
#define COFFERCTL_OPTIONS_H

#include <stdint.h>

#include "cofferctl.h"

enum opt_id {
	O_SOCKET, O_ADMIN_SOCKET, O_JSON, O_TIMEOUT, O_HELP, O_IDENTITY,
	O_TYPE, O_IN, O_OUT, O_VERSION, O_DER, O_HASH, O_SCHEME,
	O_RAW, O_PREHASHED, O_SIG, O_MAC, O_CONTEXT, O_ADMIN, O_SERVICE, O_LENGTH,
	O_PLAINTEXT_OUT, O_UID, O_GID, O_KEY, O_OP, O_RATE, O_BURST, O_API_KEY, O_OVERLAP,
	O_IMPORT, O_COUNT, O_IDEM, O_FORCE, O_GRACE, O_MIN_VERSION, O_MIN_VERIFY, O_KEEP_LAST,
	O_PERIOD, O_NEXT, O_FORMAT, O_BATCH, O_PROGRESS, O_FILE, O_PUBLIC_KEY, O_STATE_DB,
	O_ANCHOR, O_NO_PEER_CHECK, O_UID_ONLY, O_SIGNED_ONLY, O_METHOD, O_PATH, O_QUERY,
	O_BODY, O_TIMESTAMP, O_NONCE, O_SIGNATURE, O_STATE_DSN, O_REPLICA,
	O__COUNT
};

/* A command's options are a 64-bit mask (struct cmd's allow). */
_Static_assert(O__COUNT <= 64, "more options than bits in struct cmd's allow");

#define B(x) (1ull << (x))
/* The global options: accepted before the command and after it. */
#define COMMON (B(O_SOCKET) | B(O_ADMIN_SOCKET) | B(O_JSON) | B(O_TIMEOUT) | B(O_HELP) | \
    B(O_IDENTITY) | B(O_API_KEY) | B(O_IDEM) | B(O_NO_PEER_CHECK))

/*
 * The global options before the command (parsing stops at the first
 * operand, left at argv[optind]). EXIT_OK, EXIT_HELP_DONE after --help
 * (nothing printed yet), or EXIT_USAGE (reported).
 */
int opts_parse_global(struct ctl *ctl, int argc, char **argv);

/*
 * A command's options and operands (GNU getopt_long: in any order; argv[0]
 * is the command's last name word). EXIT_OK to go on (free *o with
 * opts_free), EXIT_HELP_DONE after --help (nothing printed yet), or an
 * exit code (reported; *o freed).
 */
int opts_parse(struct ctl *ctl, const struct cmd *cmd, int argc, char **argv, struct opts *o);
void opts_free(struct opts *o);

/* A decimal number in [min, max] (no sign, no space): 0, or -1. */
int parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out);

#endif
