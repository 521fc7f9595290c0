/*
 * audit.h — the audit trail: one append-only record per call in
 * <state_dir>/audit.log (JSON lines), never a secret, plaintext or message
 * body: time, principal, uid/pid, socket, method, key and version, result,
 * request id.
 *
 * Tamper evidence: record i carries chain_i = SHA-256(chain_{i-1} ‖ body_i)
 * (body: the line without its chain field), and seal records (once the
 * writer has been idle 20 ms, and at least every 100 ms under load) hold
 * HMAC-SHA256 over the chain value before them, computed inside the token
 * with the audit key
 * "coffer.audit" (generated there, never extractable). Changing or deleting
 * a record breaks the chain at the record itself; rewriting the chain from
 * there on needs the token's key for the next seal. audit_verify names the
 * first bad record.
 *
 * Records are appended in batches (one write per batch; the token MAC only
 * for seals): fail closed, a call whose record is queued writes the whole
 * queue itself when nobody else is writing (group commit); a writer thread
 * writes the records of fail-open calls, seals, and retries a broken trail. Failure mode (config): fail closed — while the trail cannot
 * be written, calls are refused (and the health check says NOT_SERVING),
 * and each call waits up to max_wait_ms for its record; or fail open — calls
 * go on, with an alarm in the log every 10 s.
 */
#ifndef COFFER_AUDIT_H
#define COFFER_AUDIT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cf_p11.h"

#define AUDIT_KEY "coffer.audit"
#define AUDIT_REQUEST_ID_MAX 64

struct audit_cfg {
	int fail_open;           /* 0: fail closed */
	unsigned max_wait_ms;    /* fail closed: how long a call waits for its record */
};

/* One call, as the dispatcher saw it (strings borrowed). */
struct audit_event {
	const char *principal;   /* NULL or "" on the admin socket */
	uid_t uid;
	pid_t pid;
	int admin;
	int sealed;
	const char *method;      /* "/coffer.v1.KeyService/Sign" */
	const char *key;         /* "" if none */
	uint32_t version;        /* 0 if none */
	const char *result;      /* gRPC status name, "OK" */
	const char *request_id;
};

typedef struct audit audit;

/* Open (or create) the trail and the audit key; resume the chain from the
 * last record (a torn last line, from a crash mid-write, is cut off and
 * reported). Starts the writer. */
int audit_open(const char *state_dir, cf_p11 *p11, const struct audit_cfg *cfg, audit **out);
/* Write what is queued, stop the writer, close. Accepts NULL. */
void audit_close(audit *a);

/* CF_OK, or (fail closed, the trail cannot be written) CF_E_UNAVAILABLE with
 * the reason: the call must not run. */
int audit_admit(audit *a);
/* Queue the record of a finished call. Fail closed: wait (bounded) until it
 * is written; a timeout marks the trail broken. */
void audit_record(audit *a, const struct audit_event *ev);
/* 0 if calls are refused because the trail cannot be written (fail closed);
 * for the health check. */
int audit_healthy(audit *a);

/* The last n records (oldest first) as malloc'ed lines; free with
 * audit_lines_free. */
int audit_tail(audit *a, size_t n, char ***lines, size_t *count);
void audit_lines_free(char **lines, size_t count);

struct audit_report {
	int ok;
	uint64_t records;        /* records read */
	uint64_t seals;          /* token MACs checked */
	uint64_t first_bad;      /* line number (1-based) of the first bad record */
	char reason[256];
};
/* Check the whole trail: every chain value, every seal (in the token), and
 * that the file ends where the writer last wrote. */
int audit_verify(audit *a, struct audit_report *rep);

#endif
