/*
 * cf_audit_verify.h — the audit trail's tamper evidence, one implementation
 * for the daemon (which writes and verifies the trail) and cofferctl (which
 * verifies a copy offline, with no daemon and no token).
 *
 * Record i (line i, 1-based) is a JSON object starting {"seq":i, and ending
 * ,"chain":"<64 lower-case hex>"} with chain_i = SHA-256(chain_{i-1} ‖ body_i)
 * (body: the line up to its chain field; chain_0 = 32 zero bytes). A seal
 * record ends its body with ,"sig":"<hex>": an ECDSA P-256 signature (DER,
 * SHA-256) by the token key "coffer.audit-seal" over cf_audit_sig_input()
 * (the chain before it, its number and its own body up to the signature).
 * Older trails hold HMAC seals ,"seal":"<hex>" over chain_{i-1} ‖ seq (8
 * bytes, big-endian), which only the token can check.
 *
 * The anchor (the state store's copy of the last record's number and chain,
 * written at every seal, after every batch of outbox records and at a clean
 * stop) shows what the file alone cannot: a cut or rewritten tail, or an older
 * copy of the whole file.
 */
#ifndef COFFER_CF_AUDIT_VERIFY_H
#define COFFER_CF_AUDIT_VERIFY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/evp.h>

#define CF_AUDIT_LINE_MAX 2048
#define CF_AUDIT_CHAIN_FIELD ",\"chain\":\""
#define CF_AUDIT_SIG_FIELD ",\"sig\":\""
#define CF_AUDIT_HMAC_FIELD ",\"seal\":\""

struct cf_audit_anchor {
	uint64_t seq;
	uint8_t chain[32];
	int clean;               /* the daemon stopped cleanly: nothing may follow */
	int64_t time;
};

/* chain = SHA-256(prev ‖ body[0..len)); out may be prev. */
void cf_audit_chain_next(const uint8_t prev[32], const char *body, size_t len, uint8_t out[32]);
/* What a seal record signs: prev ‖ seq (8 bytes, big-endian) ‖ body[0..len)
 * (the record up to its ,"sig": field), into out (40 + len bytes). */
size_t cf_audit_sig_input(const uint8_t prev[32], uint64_t seq, const char *body, size_t len,
			  uint8_t *out);
/* What an old HMAC seal authenticates: prev ‖ seq. */
void cf_audit_hmac_input(const uint8_t prev[32], uint64_t seq, uint8_t out[40]);

struct cf_audit_verify_opts {
	EVP_PKEY *pub;           /* verifies "sig" seals; NULL: counted as unchecked */
	const struct cf_audit_anchor *anchor;   /* NULL: none (the tail is not checked) */
	int exact;               /* the trail must end at the anchor (clean stop, or the
	                            daemon's own end while it runs) */
	off_t limit;             /* read up to this offset; 0: the whole file */
	/* Old HMAC seals: CF_OK, CF_E_BAD_SIGNATURE, or an error (stops the
	 * check); NULL: counted as unchecked. */
	int (*hmac_verify)(void *arg, const uint8_t in[40], const uint8_t *mac, size_t len);
	void *hmac_arg;
	/* Each record after the anchor that carries an "outbox" id, once its
	 * chain value has checked out (and nothing before it was found
	 * altered): the id and what follows it (the outbox row's own text).
	 * NULL: not told. */
	void (*outbox_seen)(void *arg, int64_t id, const char *rest, size_t len);
	void *outbox_arg;
};

struct cf_audit_report {
	int ok;
	uint64_t records;        /* complete records read */
	uint64_t seals;          /* seals that verified */
	uint64_t unchecked;      /* seals that could not be checked here (no key) */
	uint64_t unsealed;       /* records after the last seal (not authenticated yet) */
	uint64_t first_bad;      /* line (= sequence number) of the first missing or wrong
	                            record, 1-based */
	char reason[512];
	/* Where the file ends, read on past a bad record (for the daemon's start): */
	uint64_t last_seq;       /* the last complete, parseable record's number and chain */
	uint8_t last_chain[32];
	off_t good_size;         /* bytes up to the end of the last complete line */
	off_t torn;              /* bytes of a last line without its end (0: none) */
	uint64_t beyond_anchor;  /* records after the anchored one */
};

/*
 * Check the trail at path: every record's number and chain value, every seal,
 * start records that report tampering found by the daemon, and the anchor:
 * the anchored record must be there with the anchored chain value and, if
 * exact, be the last. A torn last line past a non-exact anchor is a crash
 * mid-write (counted in torn, not an error). rep->ok = 0 names the first bad
 * line in first_bad and says why in reason. Returns CF_OK (whatever the
 * verdict) or an error (file unreadable, key or token failure).
 */
int cf_audit_verify_file(const char *path, const struct cf_audit_verify_opts *o,
			 struct cf_audit_report *rep);

/* The public key a seal verifies with, from a PEM file (SubjectPublicKeyInfo). */
int cf_audit_pubkey_load(const char *pem_path, EVP_PKEY **out);
/* The public key from PEM text. */
int cf_audit_pubkey_parse(const char *pem, size_t len, EVP_PKEY **out);
/* The anchor kept in the daemon's state store (coffer.db), read-only, with
 * no daemon running. CF_E_NOT_FOUND if the trail was never anchored,
 * CF_E_INVALID_ARG if it holds anchors of several replica names. */
int cf_audit_anchor_read(const char *db_path, struct cf_audit_anchor *out);
/* "SEQ:CHAINHEX" (64 hex digits): an anchor an auditor noted elsewhere;
 * records may follow it. */
int cf_audit_anchor_parse(const char *s, struct cf_audit_anchor *out);

/* Free n lines of a trail's tail (each malloc'd) and the array; NULL is fine.
 * The daemon's audit_tail and the client's coffer_audit_tail hand these out. */
void cf_audit_lines_free(char **lines, size_t n);

#endif
