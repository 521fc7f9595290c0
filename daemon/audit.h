/*
 * audit.h — the audit trail: one append-only record per call in
 * <state_dir>/audit.log (JSON lines), never a secret, plaintext or message
 * body: time, principal, uid/pid, socket, method, key and version, result,
 * request id (and replay_of: the request id of the original call, when a
 * retried idempotent call is answered from its record).
 *
 * Tamper evidence (common/cf_audit_verify.h, shared with cofferctl's
 * offline verifier): record i carries chain_i = SHA-256(chain_{i-1} ‖ body_i),
 * and seal records (once the writer has been idle 20 ms, at least every
 * 100 ms under load, and the start and stop records) carry an ECDSA P-256
 * signature by the token key "coffer.audit-seal" (never extractable; its
 * public key is written to <state_dir>/audit-seal.pub for auditors). The
 * state store keeps an anchor — the last record's number and chain value —
 * moved at every seal, after every batch of outbox records, and at a clean
 * stop (marked clean). A cut, rewritten or rolled-back tail shows as a trail
 * that ends before its anchor; after a clean stop, anything beyond the anchor
 * is an insertion. Older trails' HMAC seals (key "coffer.audit") are still
 * checked when that key exists.
 *
 * Start: the trail is checked against the anchor. Records past a non-clean
 * anchor (written after the last anchor by a daemon that then crashed) are
 * adopted and a torn last line is cut; what the check found (adopted
 * records, cut bytes, or tampering and where) goes into the start record, so
 * that a tamper found once stays visible to every later verify.
 *
 * Outbox: the state store commits the record of each change with the change
 * (store_call, formatted by audit_format_change); the trail moves those
 * records into the file exactly once, in outbox order, each marked
 * "outbox":<id> so that a crash between the write and the outbox delete is
 * recognised at the next start.
 *
 * Records are appended in batches (one write per batch; the token signs only
 * seals): fail closed, a call whose record is queued writes the whole queue
 * itself when nobody else is writing (group commit), or, on a trail synced
 * to disk, hands its answer to the writer thread (audit_group_end_async),
 * which writes whatever is queued and releases the answers. The writer also
 * writes the records of fail-open calls, seals, and retries a broken trail
 * once a second; an anchorer thread stores the seals' anchors and reads the
 * outbox, so that only it waits on the state store. Failure mode (config):
 * fail closed — a call's result is released
 * only once its record is written (fdatasync'ed); while the trail cannot be
 * written, calls are refused and health says NOT_SERVING; or fail open —
 * calls go on, with an alarm in the log every 10 s. A failed write leaves no
 * partial line (the file is cut back); records that could not be written are
 * counted in a "resumed" record once the trail is writable again.
 */
#ifndef COFFER_AUDIT_H
#define COFFER_AUDIT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cf_audit_verify.h"
#include "cf_p11.h"
#include "store.h"

#define AUDIT_KEY "coffer.audit"            /* HMAC seals of older trails */
#define AUDIT_SEAL_KEY "coffer.audit-seal"  /* ECDSA P-256: signs seals */
#define AUDIT_SEAL_PUB "audit-seal.pub"     /* its public key, in state_dir */
#define AUDIT_REQUEST_ID_MAX 64

struct audit_cfg {
	int fail_open;           /* 0: fail closed */
	unsigned max_wait_ms;    /* fail closed: the bound on a record's wait, and on a write */
	/* Fail closed, before a call's answer is released, its record is:
	 * 0 ("disk") written and fdatasync'd (it survives a power loss);
	 * 1 ("os") written to the kernel (it survives any crash of cofferd; the
	 * trail is fdatasync'd before every seal and anchor). */
	int durability_os;
	/* Fail open: records at most waiting for the disk (more are counted
	 * lost, as records that could not be written): a disk that hangs
	 * would otherwise grow the queue until memory runs out. 0: default. */
	unsigned max_queued;
};
#define AUDIT_MAX_QUEUED_DEFAULT 100000

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
	const char *replay_of;   /* answered from the record of this request id; NULL: not a
	                            replay */
	int batch;               /* a batch call: "items" and "failed" are written */
	uint32_t items;          /* a batch: its items */
	uint32_t failed;         /* ... of which answered an error */
};

typedef struct audit audit;

/* Open (or create) the trail; ensure the seal key and write its public key;
 * check the trail against the anchor in st, move committed records from the
 * outbox into it, write the start record and anchor it; start the writer.
 * st may be NULL (no anchor, no outbox: unit tests). A start record that
 * cannot be written leaves the trail broken (retried by the writer), not the
 * daemon down. SIGXFSZ is ignored from here on (a file-size limit makes the
 * write fail instead of killing the process). */
int audit_open(const char *state_dir, cf_p11 *p11, store *st, const struct audit_cfg *cfg,
	       audit **out);
/* Stop the ticker and the writer; write what is queued and what is in the
 * outbox, a seal and the stop record; stop the anchorer, anchor the end as a
 * clean stop; close. Accepts NULL. */
void audit_close(audit *a);

/* CF_OK, or (fail closed, the trail cannot be written) CF_E_UNAVAILABLE with
 * the reason: the call must not run. */
int audit_admit(audit *a);
/* Record a finished call. Fail closed: waits (bounded by max_wait_ms) until
 * the record is written and returns CF_OK, or CF_E_UNAVAILABLE with the
 * reason (the trail is then broken): the call's result must not be released.
 * Fail open: queues it and returns CF_OK. */
int audit_record(audit *a, const struct audit_event *ev);
/* The records of several calls whose answers are released together (a
 * frame of a pipelined stream): queued one by one, then waited for once
 * (or handed to the writer, audit_group_end_async), so they share one
 * write. audit_record is a group of one. */
struct audit_group;
int audit_group_new(struct audit_group **out);
/* Queue ev's record in g. Fail closed: CF_OK, or CF_E_UNAVAILABLE with the
 * reason when it cannot be queued (that call's result must not be released).
 * Fail open: as audit_record. */
int audit_record_in(audit *a, const struct audit_event *ev, struct audit_group *g);
/* Wait (bounded by max_wait_ms) until g's records are written, then free g:
 * CF_OK, or (fail closed) CF_E_UNAVAILABLE with the reason when any of them
 * was not: none of the group's results may be released. */
int audit_group_end(audit *a, struct audit_group *g);
/* As audit_group_end, without waiting: cb(arg, result, text) is called once,
 * when g's records are written (CF_OK, "") or when they cannot be, or have
 * waited past max_wait_ms (fail closed: CF_E_UNAVAILABLE and the refusal's
 * text). It runs on the thread that wrote them (the writer thread, or any
 * thread that wrote the queue itself: a call waiting for its own record, an
 * outbox flush), on this one when nothing is pending, or on the trail's
 * ticker thread once they have waited past max_wait_ms (then fail closed);
 * never under the trail's locks, and it may overwrite that thread's error
 * detail. g is freed. */
typedef void (*audit_done_fn)(void *arg, int result, const char *text);
/* Whether a call's answer should be handed to the writer rather than wait
 * for its record on the caller's thread: failing closed on a trail that is
 * fdatasync'ed per batch. (Handed to the kernel only, a record is written
 * faster than a thread is woken.) */
int audit_hands_off(const audit *a);
void audit_group_end_async(audit *a, struct audit_group *g, audit_done_fn cb, void *arg);
/* The body of ev's record as audit_record writes it, without its sequence
 * number and chain (for the store's outbox), into buf (NUL-terminated).
 * Returns the length, or -1 if it does not fit. Thread-safe, no locks. */
int audit_format_change(const struct audit_event *ev, char *buf, size_t len);
/* Move the outbox's records into the trail (after a call committed a change).
 * CF_OK once they are written; fail closed, CF_E_UNAVAILABLE with the reason
 * if they cannot be (they stay in the outbox; the writer retries). Fail open:
 * CF_OK. */
int audit_flush_outbox(audit *a);
/* 0 if calls are refused because the trail cannot be written (fail closed);
 * for the health check. */
int audit_healthy(audit *a);
/* 1 with [audit] failure = open: calls go on whatever the disk does. */
int audit_fails_open(const audit *a);

/* The last n records (oldest first) as malloc'ed lines; free with
 * audit_lines_free. */
int audit_tail(audit *a, size_t n, char ***lines, size_t *count);
void audit_lines_free(char **lines, size_t count);

/* Check the whole trail: every chain value, every seal, start records that
 * report tampering, and that the file ends exactly where the writer last
 * wrote. CF_OK with the verdict in rep, or an error. */
int audit_verify(audit *a, struct cf_audit_report *rep);

#endif
