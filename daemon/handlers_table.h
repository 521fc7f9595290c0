/*
 * handlers_table.h — the handlers of every service merged: what dispatch
 * looks up by method id, and the answers of committed changes read back.
 */
#ifndef COFFER_HANDLERS_TABLE_H
#define COFFER_HANDLERS_TABLE_H

#include "cf_methods.h"
#include "handlers.h"

/* The handler of method id (cf_methods.h), or NULL (SessionService/Call,
 * which the dispatcher runs itself). */
handler_fn handlers_find(enum cf_method_id id);

/* The answer to a mutating call whose change was committed by an attempt
 * that never answered (the daemon stopped first): what it changed, `name`
 * (a key, principal or API key id), read back as a response of `type`.
 * `made`: the key version or API key secret generation the change made (0:
 * none); what later changes added after it is left out of the answer, so
 * that it names what this call made. CF_E_UNSUPPORTED for a type that
 * names nothing. */
int handlers_describe(const struct hcall *c, const ProtobufCMessageDescriptor *type,
		      const char *name, uint32_t made, ProtobufCMessage **resp);

/* The handler files (handlers_common.h), NULL-ended. */
struct hservice;
extern const struct hservice *const handlers_services[];

#endif
