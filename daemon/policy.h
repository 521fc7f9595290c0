/*
 * policy.h — who may call what on the service socket: principals (named
 * callers, matched by uid, then gid), grants (key-name globs × operations),
 * and token-bucket rate limits per principal and per (principal, operation).
 * Deny by default. Definitions are kept in the state store and in memory;
 * the data path never touches SQLite.
 *
 * Thread-safe. Returned principals are copies (policy_principal_free).
 */
#ifndef COFFER_POLICY_H
#define COFFER_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cf_methods.h"
#include "store.h"

#define POLICY_RATE_MAX 1e6
/* The slowest rate: one a day. Slower, a refusal's retry-after (ms, 32 bits)
 * would not hold the wait. */
#define POLICY_RATE_MIN (1.0 / 86400.0)

/* "sign", "verify", "mac", "verify-mac", "wrap", "unwrap", "rewrap",
 * "generate-data-key", "get-public-key"; "all" for CF_OP_NONE. */
const char *policy_op_name(enum cf_op op);

typedef struct policy policy;

int policy_open(store *st, policy **out);
void policy_close(policy *p);   /* accepts NULL */
/* Re-read every principal from the store (another replica changed one,
 * fleet.h); rate-limit levels are kept where the limits did not change.
 * CF_E_BUSY (try again) while a change of this process is in progress. */
int policy_refresh(policy *p);

/* ---- administration (each change is written to the store first) ---- */

/* CF_E_EXISTS for a taken name or a uid/gid another principal holds;
 * CF_E_INVALID_ARG for a bad name, no ids, too many ids. */
int policy_create(policy *p, const char *name, const uint32_t *uids, size_t nuids,
		  const uint32_t *gids, size_t ngids, struct store_principal *out);
/* out NULL: only whether the principal exists (CF_E_NOT_FOUND). */
int policy_get(policy *p, const char *name, struct store_principal *out);
int policy_list(policy *p, struct store_principal **out, size_t *n);
/* Add ops to the grant for pattern (a key name or a glob with * and ?). */
int policy_grant(policy *p, const char *name, const char *pattern, uint32_t ops,
		 struct store_principal *out);
/* Remove ops (0: all) from the grant for pattern; CF_E_NOT_FOUND without one. */
int policy_revoke(policy *p, const char *name, const char *pattern, uint32_t ops,
		  struct store_principal *out);
/* rate 0 removes the limit of op. */
int policy_set_limit(policy *p, const char *name, enum cf_op op, double rate,
		     uint32_t burst, struct store_principal *out);
/* Its API keys are revoked as of `now` in the same change
 * (store_principal_delete, which lists in dropped, if not NULL, the secrets
 * that went); apikeys_principal_delete runs it, then drops them from memory
 * and destroys their objects. */
int policy_delete(policy *p, const char *name, int64_t now, struct store_dropped *dropped);
void policy_principal_free(struct store_principal *sp);   /* its arrays; accepts NULL */
void policy_list_free(struct store_principal *list, size_t n);

/* ---- the data path ---- */

/* The principal of a caller into name. CF_E_UNAUTHENTICATED if none. */
int policy_identify(policy *p, uid_t uid, gid_t gid, char name[STORE_PRINCIPAL_NAME_MAX + 1]);
/* May `principal` do op on key, now? One decision, in this order: a grant
 * must cover it (CF_E_DENIED), then the key's own limit key_ops (0: none, or
 * no such key) must allow it (CF_E_DENIED, *own_limit set), then the rate
 * limits must have a token (CF_E_EXHAUSTED with *retry_after_ms): a token is
 * taken only from a call that is otherwise allowed. CF_E_UNAUTHENTICATED if
 * the principal was deleted meanwhile. key must be a valid key name
 * (cf_key_name_check: globs against long hostile strings backtrack); op
 * CF_OP_NONE checks only the principal's overall rate limit. */
int policy_authorize(policy *p, const char *principal, enum cf_op op, const char *key,
		     uint32_t key_ops, uint32_t *retry_after_ms, int *own_limit);
/* policy_authorize for `want` (>= 1) operations at once (a batch): takes as
 * many tokens as every bucket can give, up to want, into *got. None at all
 * is refused as policy_authorize refuses; fewer than want is CF_OK with
 * *retry_after_ms saying when the next token comes. */
/* Give back n tokens policy_authorize_n took for op (a batch that then
 * failed as a whole ran none of its items); capped at each bucket's burst. */
void policy_refund_n(policy *p, const char *principal, enum cf_op op, uint32_t n);
/* *by_all_ops: the principal's limit of all operations is the one that
 * gave fewest (the refusals then name no operation). */
int policy_authorize_n(policy *p, const char *principal, enum cf_op op, const char *key,
		       uint32_t key_ops, uint32_t want, uint32_t *got, uint32_t *retry_after_ms,
		       int *own_limit, int *by_all_ops);
/* Does a grant of `principal` cover op on key? policy_authorize's grant
 * check alone (no token is taken): for filtering what a caller sees.
 * CF_OK, CF_E_DENIED, CF_E_UNAUTHENTICATED or CF_E_INVALID_ARG (bad name). */
int policy_may(policy *p, const char *principal, enum cf_op op, const char *key);

#endif
