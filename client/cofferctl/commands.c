/*
 * cofferctl's commands: each one's name, function, options, operands and
 * help text (deploy/mkman.py writes the man page from these texts, and the
 * bash completion offers what they list), and the overall usage.
 */
#include <stdio.h>
#include <string.h>

#include "cofferctl.h"
#include "options.h"

#define SIGN_OPTS (B(O_HASH) | B(O_SCHEME) | B(O_RAW) | B(O_PREHASHED))
#define REQ_OPTS (B(O_METHOD) | B(O_PATH) | B(O_QUERY) | B(O_BODY) | B(O_TIMESTAMP) | \
    B(O_NONCE))

static const struct cmd commands[] = {
	{ "key create", cmd_key_create, B(O_TYPE) | B(O_OP) | B(O_PERIOD), 1, 1,
	  "key create NAME --type TYPE [--op LIST] [--rotation-period D]",
	  "Generate a new key (version 1) in the token. Uses the admin socket.\n"
	  "  --type TYPE     ec-p256, ec-p384, ed25519, rsa-2048, rsa-3072, rsa-4096,\n"
	  "                  hmac-sha256, hmac-sha384, hmac-sha512, aes-256\n"
	  "  --op LIST       the key's own limit: only these operations (comma-\n"
	  "                  separated, fitting its purpose), whatever is granted\n"
	  "  --rotation-period D  the daemon rotates the key every D (e.g. 90d; see\n"
	  "                  key set-rotation)\n"
	  "Prints the key's metadata." },
	{ "key import", cmd_key_import, B(O_TYPE) | B(O_IN), 1, 1,
	  "key import NAME --type TYPE --in FILE|-",
	  "Import raw secret material as a new key. Uses the admin socket.\n"
	  "  --type TYPE     hmac-sha256, hmac-sha384, hmac-sha512 (hash length ..\n"
	  "                  512 bytes) or aes-256 (32 bytes)\n"
	  "  --in FILE|-     raw key bytes from FILE or stdin (taken verbatim: no\n"
	  "                  newline stripping, no decoding); never echoed\n"
	  "Prints the key's metadata." },
	{ "key list", cmd_key_list, B(O_ADMIN), 0, 0,
	  "key list [--admin]",
	  "List all keys, ordered by name.\n"
	  "  --admin         ask the admin socket (AdminService) instead of the\n"
	  "                  service socket" },
	{ "key show", cmd_key_show, B(O_ADMIN), 1, 1,
	  "key show NAME [--admin]",
	  "Show a key's metadata and versions: states, primary, minimums, rotation\n"
	  "schedule, destruction times (--json: all of it as one object).\n"
	  "  --admin         ask the admin socket (AdminService) instead of the\n"
	  "                  service socket" },
	{ "key rotate", cmd_key_rotate, 0, 1, 1,
	  "key rotate NAME",
	  "Generate a new version and make it primary. Uses the admin socket.\n"
	  "Older enabled versions still verify and unwrap. The next scheduled\n"
	  "rotation (if any) moves to one period from now." },
	{ "key set-primary", cmd_key_set_primary, 0, 2, 2,
	  "key set-primary NAME VERSION",
	  "Make an enabled version (at or above the key's min-version) the one that\n"
	  "signs, MACs and wraps. Uses the admin socket." },
	{ "key enable", cmd_key_enable, 0, 2, 2,
	  "key enable NAME VERSION",
	  "Enable a disabled version again. A version scheduled for destruction is\n"
	  "restored with key cancel-destroy; a destroyed one cannot be." },
	{ "key disable", cmd_key_disable, B(O_FORCE), 2, 2,
	  "key disable NAME VERSION [--force]",
	  "Disable a version: it is kept but used for nothing (calls naming it get\n"
	  "exit 6, \"disabled\") until enabled again.\n"
	  "  --force         also the primary or the last enabled version (new\n"
	  "                  operations then fail until another is primary)" },
	{ "key schedule-destroy", cmd_key_schedule_destroy, B(O_FORCE) | B(O_GRACE), 2, 2,
	  "key schedule-destroy NAME VERSION [--grace D] [--force]",
	  "Make a version unusable at once and destroy its token objects when the\n"
	  "grace period ends; until then key cancel-destroy restores it.\n"
	  "  --grace D       e.g. 7d (default: the daemon's [keys] destroy_grace);\n"
	  "                  at least [keys] min_destroy_grace (1d), at most 365d;\n"
	  "                  0 is refused\n"
	  "  --force         also the primary or the last enabled version" },
	{ "key cancel-destroy", cmd_key_cancel_destroy, 0, 2, 2,
	  "key cancel-destroy NAME VERSION",
	  "Restore a version scheduled for destruction to its state before (enabled\n"
	  "or disabled). Refused once the grace period has ended." },
	{ "key set-min", cmd_key_set_min, B(O_MIN_VERSION) | B(O_MIN_VERIFY) | B(O_KEEP_LAST),
	  1, 1,
	  "key set-min NAME [--min-version N] [--min-verify-version N] [--keep-last N]",
	  "Set the oldest versions still used. 1 removes a minimum.\n"
	  "  --min-version N         older versions make nothing new (sign, mac,\n"
	  "                          wrap, data keys); at most the primary\n"
	  "  --min-verify-version N  older versions neither verify nor unwrap; at\n"
	  "                          most --min-version\n"
	  "  --keep-last N           keep the newest N versions for verify/unwrap\n"
	  "                          (sets --min-verify-version, and --min-version\n"
	  "                          if it was lower)\n"
	  "Versions below the minimum stay in the token until key trim." },
	{ "key trim", cmd_key_trim, B(O_GRACE), 1, 1,
	  "key trim NAME [--grace D]",
	  "Schedule the destruction of every version below the key's\n"
	  "min-verify-version (as key schedule-destroy, with --grace D)." },
	{ "key set-rotation", cmd_key_set_rotation, B(O_PERIOD) | B(O_NEXT), 1, 1,
	  "key set-rotation NAME --rotation-period D [--next TIME|+D]",
	  "Rotate the key every D (e.g. 90d; at least [keys] min_rotation_period,\n"
	  "1h by default; 0 turns it off). A daemon that was down when a rotation\n"
	  "fell due rotates once when it starts.\n"
	  "  --next TIME|+D  the first rotation: a Unix time, or +D from now\n"
	  "                  (default: one period from now)" },
	{ "key pubkey", cmd_key_pubkey, B(O_VERSION) | B(O_DER) | B(O_OUT) | B(O_FORMAT), 1, 1,
	  "key pubkey NAME [--version N] [--format pem|der|jwk] [--out FILE]",
	  "Print the public key of an asymmetric key (PEM by default).\n"
	  "  --version N     key version (default: the primary version)\n"
	  "  --format F      pem; der (SubjectPublicKeyInfo); jwk (a JSON Web Key,\n"
	  "                  kid \"NAME:VERSION\"); --der means --format der\n"
	  "  --out FILE      write to FILE instead of stdout\n"
	  "With --json prints {\"type\",\"version\",\"jwk\",\"pem\",\"der\" (base64)}." },
	{ "sign", cmd_sign, B(O_IN) | B(O_OUT) | B(O_VERSION) | SIGN_OPTS, 1, 1,
	  "sign KEY [--in FILE|-] [--out FILE] [--version N] [--hash H] [--scheme S]\n"
	  "                [--raw] [--prehashed]",
	  "Sign data (at most 1 MiB) with a signing key.\n"
	  "  --in FILE|-     data to sign (default: stdin)\n"
	  "  --out FILE      write the signature to FILE and print \"version: N\"\n"
	  "                  (default: raw signature bytes on stdout)\n"
	  "  --version N     key version (default: the primary version)\n"
	  "  --hash H        sha256, sha384 or sha512 (default: the key's)\n"
	  "  --scheme S      ecdsa, eddsa, rsa-pss or rsa-pkcs1 (default: the key's)\n"
	  "  --raw           ECDSA signature as raw r||s instead of DER\n"
	  "  --prehashed     the input is already a digest (of --hash, else of the key's\n"
	  "                  default hash: SHA-384 for P-384, else SHA-256; not Ed25519)\n"
	  "With --json prints {\"signature\": base64, \"version\": N}.\n"
	  "Keep the version: verify needs it." },
	{ "verify", cmd_verify, B(O_IN) | B(O_VERSION) | B(O_SIG) | SIGN_OPTS, 1, 1,
	  "verify KEY --version N --sig FILE [--in FILE|-] [--hash H] [--scheme S]\n"
	  "                [--raw] [--prehashed]",
	  "Verify a signature. Prints \"valid\" (exit 0) or \"invalid\" (exit 1).\n"
	  "  --version N     the key version that signed (required)\n"
	  "  --sig FILE      the signature bytes (\"-\" for stdin)\n"
	  "  --in FILE|-     the signed data (default: stdin)\n"
	  "  --hash, --scheme, --raw, --prehashed: as given to sign\n"
	  "With --json prints {\"valid\": true|false}." },
	{ "mac", cmd_mac, B(O_IN) | B(O_OUT) | B(O_VERSION), 1, 1,
	  "mac KEY [--in FILE|-] [--out FILE] [--version N]",
	  "Compute an HMAC (at most 1 MiB of data) with a MAC key.\n"
	  "  --in FILE|-     data (default: stdin)\n"
	  "  --out FILE      write the MAC to FILE and print \"version: N\"\n"
	  "                  (default: raw MAC bytes on stdout)\n"
	  "  --version N     key version (default: the primary version)\n"
	  "With --json prints {\"mac\": base64, \"version\": N}." },
	{ "verify-mac", cmd_verify_mac, B(O_IN) | B(O_VERSION) | B(O_MAC), 1, 1,
	  "verify-mac KEY --version N --mac FILE [--in FILE|-]",
	  "Check an HMAC inside the token. Prints \"valid\" (exit 0) or \"invalid\"\n"
	  "(exit 1).\n"
	  "  --version N     the key version that made the MAC (required)\n"
	  "  --mac FILE      the MAC bytes (\"-\" for stdin)\n"
	  "  --in FILE|-     the data (default: stdin)\n"
	  "With --json prints {\"valid\": true|false}." },
	{ "request sign", cmd_request_sign, REQ_OPTS, 1, 1,
	  "request sign KEY --method M --path P [--query Q] [--body FILE|-]\n"
	  "                [--timestamp T] [--nonce N]",
	  "Sign an HTTP request with an hmac-sha256 key (proto/request-signing.md;\n"
	  "the mac grant). Prints the Authorization header value and its parts:\n"
	  "timestamp, nonce, signature and the key version that signed.\n"
	  "  --method M      GET, POST, ... (A-Z, at most 16)\n"
	  "  --path P        the path as sent, without the query (signed byte for\n"
	  "                  byte: no normalisation)\n"
	  "  --query Q       the raw query string, what follows '?' (canonicalised\n"
	  "                  here)\n"
	  "  --body FILE|-   the body (at most 64 MiB; only its SHA-256 is sent;\n"
	  "                  default: an empty body)\n"
	  "  --timestamp T   Unix seconds (default: now)\n"
	  "  --nonce N       16..64 of A-Z a-z 0-9 - _ (default: a fresh one)\n"
	  "With --json prints {\"authorization\", \"signature\", \"timestamp\",\n"
	  "\"nonce\", \"version\"}." },
	{ "request verify", cmd_request_verify, REQ_OPTS | B(O_SIGNATURE), 1, 1,
	  "request verify KEY --method M --path P [--query Q] [--body FILE|-]\n"
	  "                --timestamp T --nonce N --signature S",
	  "Check a signed HTTP request (the verify-mac grant), as a service does\n"
	  "with an incoming one. Prints \"valid (key version N)\" (exit 0), or\n"
	  "\"invalid:\", the verdict and the daemon's reason (exit 1): bad-signature,\n"
	  "expired (older than the daemon's [requests] window), clock-skew (further\n"
	  "ahead) or replayed (the nonce was accepted before with this key, by this\n"
	  "daemon or any replica sharing its state). A valid request's nonce is used\n"
	  "up.\n"
	  "  --method, --path, --query, --body: the request's, as for request sign\n"
	  "  --timestamp T, --nonce N, --signature S: from its Authorization header\n"
	  "With --json prints {\"valid\", \"verdict\", \"reason\", \"version\"}." },
	{ "wrap", cmd_wrap, B(O_IN) | B(O_OUT) | B(O_CONTEXT), 1, 1,
	  "wrap KEY [--context K=V ...] [--in FILE|-] [--out FILE]",
	  "Encrypt data (at most 64 KiB) with an AES key's primary version.\n"
	  "  --context K=V   additional authenticated data; repeat for more entries\n"
	  "                  (unwrap needs exactly the same set)\n"
	  "  --in FILE|-     plaintext (default: stdin)\n"
	  "  --out FILE      ciphertext blob (default: stdout)\n"
	  "With --json prints {\"ciphertext\": base64, \"version\": N}." },
	{ "unwrap", cmd_unwrap, B(O_IN) | B(O_OUT) | B(O_CONTEXT), 1, 1,
	  "unwrap KEY [--context K=V ...] [--in FILE|-] [--out FILE]",
	  "Decrypt a blob made by wrap, with the same key name and context.\n"
	  "  --in FILE|-     ciphertext blob (default: stdin)\n"
	  "  --out FILE      plaintext, a new file of mode 0600 (default: stdout)\n"
	  "With --json prints {\"plaintext\": base64, \"version\": N}, or only the\n"
	  "version with --out FILE." },
	{ "rewrap", cmd_rewrap, B(O_IN) | B(O_OUT) | B(O_CONTEXT) | B(O_BATCH) | B(O_PROGRESS),
	  1, 1,
	  "rewrap KEY [--context K=V ...] [--in FILE|-] [--out FILE] [--batch [--progress]]",
	  "Re-encrypt a blob under the key's primary version; the plaintext never\n"
	  "leaves the daemon.\n"
	  "  --batch         a job: --in holds base64 blobs, one per line (as wrap\n"
	  "                  --json prints them); each is rewrapped in order to\n"
	  "                  --out, one per line. A line that fails is reported\n"
	  "                  and written unchanged, so the output is always whole;\n"
	  "                  run the job again on it to retry (exit status of the\n"
	  "                  first failure). --out FILE is replaced only at the\n"
	  "                  end, so --in and --out may be the same file\n"
	  "  --progress      show progress on stderr (default: when it is a terminal)\n"
	  "With --json prints {\"ciphertext\", \"version\", \"previous_version\"};\n"
	  "--batch --json (with --out FILE): {\"lines\", \"moved\", \"current\", \"failed\"}." },
	{ "datakey", cmd_datakey, B(O_OUT) | B(O_CONTEXT) | B(O_LENGTH) | B(O_PLAINTEXT_OUT),
	  1, 1,
	  "datakey KEY [--length N] [--context K=V ...] [--out FILE]\n"
	  "                [--plaintext-out FILE]",
	  "Generate a random data key, wrapped under KEY.\n"
	  "  --length N           16, 24 or 32 bytes (default 32)\n"
	  "  --out FILE           wrapped blob (default: stdout)\n"
	  "  --plaintext-out FILE also return the key in the clear, to FILE (mode\n"
	  "                       0600); \"-\" means stdout (with --out FILE), or the\n"
	  "                       \"plaintext\" field with --json\n"
	  "With --json prints {\"ciphertext\": base64, \"version\": N}." },
	{ "principal create", cmd_principal_create, B(O_UID) | B(O_GID), 1, 1,
	  "principal create NAME (--uid USER|UID)... (--gid GROUP|GID)...",
	  "Create a principal: a named caller of the service socket, recognised by\n"
	  "its uid (first) or gid. It may do nothing until granted. Admin socket." },
	{ "principal list", cmd_principal_list, 0, 0, 0, "principal list",
	  "List principals by name (--json: with everything they hold)." },
	{ "principal show", cmd_principal_show, 0, 1, 1, "principal show NAME",
	  "Show a principal's ids, grants and rate limits." },
	{ "principal grant", cmd_principal_grant, B(O_KEY) | B(O_OP), 1, 1,
	  "principal grant NAME --key PATTERN --op LIST",
	  "Let the principal do operations on keys whose names match PATTERN (a\n"
	  "name, or a glob with * and ?). LIST: comma-separated sign, verify, mac,\n"
	  "verify-mac, wrap, unwrap, rewrap, generate-data-key, get-public-key, or all." },
	{ "principal revoke", cmd_principal_revoke, B(O_KEY) | B(O_OP), 1, 1,
	  "principal revoke NAME --key PATTERN [--op LIST]",
	  "Take operations (all without --op) back from the grant for PATTERN." },
	{ "principal limit", cmd_principal_limit, B(O_OP) | B(O_RATE) | B(O_BURST), 1, 1,
	  "principal limit NAME [--op OP] --rate PER_SECOND --burst N",
	  "Set a token-bucket rate limit for one operation, or (without --op) for\n"
	  "all the principal's calls together. --rate 0 removes it. Calls above\n"
	  "it get RESOURCE_EXHAUSTED with a retry-after time." },
	{ "principal delete", cmd_principal_delete, 0, 1, 1, "principal delete NAME",
	  "Delete a principal; its callers are refused from then on and its API\n"
	  "keys are revoked." },
	{ "principal add-key", cmd_principal_add_key, B(O_OUT) | B(O_IMPORT), 1, 1,
	  "principal add-key NAME [--out FILE] [--import FILE]",
	  "Give the principal an API key. From then on every call it makes must be\n"
	  "signed with it (--api-key FILE; libcoffer: coffer_set_api_key). The\n"
	  "daemon generates the secret in its token and shows it this once, sealed\n"
	  "in a session (needs --identity).\n"
	  "  --out FILE      write a credentials file (mode 0600, never replaced)\n"
	  "                  instead of printing the secret\n"
	  "  --import FILE   use the 32..64 secret bytes in FILE instead" },
	{ "principal rotate-secret", cmd_principal_rotate_secret,
	  B(O_OUT) | B(O_IMPORT) | B(O_OVERLAP), 1, 1,
	  "principal rotate-secret KEYID [--overlap DURATION] [--out FILE] [--import FILE]",
	  "Give the API key a new secret (shown once, as for add-key). The old one\n"
	  "keeps working for --overlap (e.g. 3600, 30m, 24h, 7d; at most 90d;\n"
	  "default 0: it stops at once), then is destroyed in the token." },
	{ "principal revoke-key", cmd_principal_revoke_key, 0, 1, 1,
	  "principal revoke-key KEYID",
	  "Revoke an API key: its secrets are destroyed and calls signed with it\n"
	  "are refused (UNAUTHENTICATED, \"revoked\")." },
	{ "principal set-auth", cmd_principal_set_auth, B(O_UID_ONLY) | B(O_SIGNED_ONLY), 1, 1,
	  "principal set-auth NAME (--uid-only | --signed-only)",
	  "Whether the principal must sign its calls while it has no live API key.\n"
	  "Its first add-key sets this and revoking its last key keeps it, so its\n"
	  "calls stay refused unsigned until --uid-only allows its uid alone again\n"
	  "(a live key still requires signing). --signed-only sets it. Audited." },
	{ "principal keys", cmd_principal_keys, 0, 0, 1, "principal keys [NAME]",
	  "List API keys (of NAME, or of everyone) with their live secrets and the\n"
	  "deadlines of rotated-out ones." },
	{ "audit tail", cmd_audit_tail, B(O_COUNT), 0, 0, "audit tail [--count N]",
	  "Print the last N records of the audit trail (default 20, at most 1000),\n"
	  "oldest first, one JSON object per line (--json: an array)." },
	{ "audit verify", cmd_audit_verify,
	  B(O_FILE) | B(O_PUBLIC_KEY) | B(O_STATE_DB) | B(O_ANCHOR) | B(O_STATE_DSN) |
	  B(O_REPLICA), 0, 0,
	  "audit verify [--file PATH --public-key PEM [--state-db DB | --state-dsn DSN\n"
	  "                --replica NAME | --anchor SEQ:CHAIN]]",
	  "Check the audit trail: every record's number and chain value, every seal\n"
	  "(a signature by the token's audit seal key), and that the trail ends where\n"
	  "the daemon last wrote it. Exit 0 if it is intact; else exit 1 and name the\n"
	  "first missing or wrong record (altered, deleted, inserted, reordered, cut,\n"
	  "or a tail rewritten or rolled back).\n"
	  "Without --file the daemon checks its own trail. With --file it is checked\n"
	  "here, offline, with no daemon and no token:\n"
	  "  --file PATH        the trail (audit.log, or a copy)\n"
	  "  --public-key PEM   the seal key's public key (<state_dir>/audit-seal.pub)\n"
	  "  --state-db DB      the daemon's state store (<state_dir>/coffer.db), read\n"
	  "                     only: the anchor (last record's number and chain value);\n"
	  "                     after a clean stop nothing may follow it\n"
	  "  --state-dsn DSN    the same from a PostgreSQL state ([state] backend =\n"
	  "  --replica NAME     postgresql): a libpq connection string (a password in\n"
	  "                     ~/.pgpass, not here) and the replica whose trail it is\n"
	  "  --anchor SEQ:CHAIN an anchor noted elsewhere (e.g. from --json output)\n"
	  "Without an anchor a cut tail or an older copy of the file cannot be seen." },
	{ "token info", cmd_token_info, 0, 0, 0, "token info",
	  "What the daemon's PKCS#11 token can do, as read when the daemon opened it:\n"
	  "for every key type whether it can be generated, imported and used, and if\n"
	  "not the mechanism the token lacks; the daemon features it cannot carry\n"
	  "(HMAC, wrapping, Ed25519, API keys on a signing-only token such as a TPM)." },
	{ "identity", cmd_identity, B(O_OUT) | B(O_ADMIN), 0, 0,
	  "identity [--out FILE] [--admin]",
	  "Print the daemon's identity: the fingerprint (sha256:...) and the EC P-256\n"
	  "public key (PEM) that callers pin to open sealed sessions. This answer is\n"
	  "not authenticated: read it once over a socket you trust, then give the\n"
	  "file to callers (--identity FILE or $COFFER_IDENTITY).\n"
	  "  --out FILE      write the PEM to FILE (the fingerprint still goes to stdout)\n"
	  "  --admin         ask the admin socket\n"
	  "With --json prints {\"fingerprint\", \"pem\"}." },
	{ "health", cmd_health, B(O_SERVICE) | B(O_ADMIN), 0, 0,
	  "health [--service NAME] [--admin]",
	  "Ask grpc.health.v1.Health/Check. Prints the serving status; exit 0 only\n"
	  "when SERVING.\n"
	  "  --service NAME  coffer.v1.KeyService or coffer.v1.AdminService\n"
	  "                  (default: the daemon as a whole)\n"
	  "  --admin         ask the admin socket" },
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

void
usage(FILE *f)
{
	fprintf(f, "usage: cofferctl [--socket PATH] [--admin-socket PATH] [--json] "
	    "[--timeout MS]\n                 COMMAND [ARGS]\n\nCommands:\n");
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(f, "  %s\n", commands[i].synopsis);
	fprintf(f,
	    "\nOptions (also accepted after the command):\n"
	    "  --socket PATH        service socket (default: $COFFER_SOCKET, else\n"
	    "                       " DEFAULT_SOCKET ")\n"
	    "  --admin-socket PATH  admin socket for key create/import/rotate and\n"
	    "                       --admin (default: $COFFER_ADMIN_SOCKET, else\n"
	    "                       " DEFAULT_ADMIN_SOCKET ")\n"
	    "  --identity FILE      the daemon identity to pin (PEM from `cofferctl\n"
	    "                       identity`; default: $COFFER_IDENTITY). wrap,\n"
	    "                       unwrap, datakey --plaintext-out and key import\n"
	    "                       travel in a sealed session and need it\n"
	    "  --no-peer-check      accept a session the daemon bound to other ids\n"
	    "                       than this process's (only where a user namespace\n"
	    "                       maps them; otherwise it means a relay)\n"
	    "  --idempotency-key K  the key of this command's change (default: a new\n"
	    "                       random one): running a command again with the\n"
	    "                       same K makes no second change. K is 8 to 128\n"
	    "                       characters of A-Z a-z 0-9 . _ : -\n"
	    "  --api-key FILE       sign service-socket calls with this API key\n"
	    "                       (from `principal add-key --out`; default:\n"
	    "                       $COFFER_API_KEY_FILE)\n"
	    "  --json               machine-readable output (binary as base64)\n"
	    "  --timeout MS         deadline per call in milliseconds (0 = none;\n"
	    "                       default %u)\n"
	    "  -h, --help           this text; \"cofferctl COMMAND --help\" for a command\n"
	    "\nExit status:\n"
	    "  0  success; verify/verify-mac/request verify: valid\n"
	    "  1  the operation failed, or verify/verify-mac/request verify: invalid,\n"
	    "     or health: not serving\n"
	    "  2  usage error\n"
	    "  3  permission denied or unauthenticated\n"
	    "  4  key or key version not found\n"
	    "  5  daemon unavailable (not running, stopping, busy), or deadline\n"
	    "     exceeded\n"
	    "  6  invalid input or failed precondition: malformed request, size limit,\n"
	    "     key already exists, key type/purpose/state does not allow it\n"
	    "Errors are printed on stderr as \"cofferctl: <reason>\".\n",
	    COFFER_DEFAULT_TIMEOUT_MS);
}

const struct cmd *
find_command(int argc, char **argv, int *used)
{
	char name[64];

	if (argc < 1)
		return NULL;
	if (strcmp(argv[0], "key") == 0 || strcmp(argv[0], "principal") == 0 ||
	    strcmp(argv[0], "audit") == 0 || strcmp(argv[0], "request") == 0 ||
	    strcmp(argv[0], "token") == 0) {
		if (argc < 2)
			return NULL;
		if (snprintf(name, sizeof(name), "%s %s", argv[0], argv[1]) >= (int)sizeof(name))
			return NULL;
		*used = 2;
	} else {
		if (snprintf(name, sizeof(name), "%s", argv[0]) >= (int)sizeof(name))
			return NULL;
		*used = 1;
	}
	for (size_t i = 0; i < NCOMMANDS; i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

void
cmd_help(const struct cmd *cmd)
{
	printf("usage: cofferctl %s\n\n%s\n", cmd->synopsis, cmd->help);
	printf("Common options: --socket PATH, --admin-socket PATH, --identity FILE, "
	    "--api-key FILE,\n  --idempotency-key KEY, --json, --timeout MS, --help\n");
}
