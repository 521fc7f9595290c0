/* The one place the handler files are merged (handlers_common.h). */
#include "handlers_table.h"

#include "cf_status.h"
#include "handlers_common.h"

const struct hservice *const handlers_services[] = {
	&handlers_keys, &handlers_requests, &handlers_admin_keys, &handlers_lifecycle,
	&handlers_principals, &handlers_apikeys, &handlers_audit, &handlers_token, &handlers_session,
	&handlers_batch,
	NULL,
};

handler_fn
handlers_find(enum cf_method_id id)
{
	if ((unsigned)id >= CF_METHOD__COUNT)
		return NULL;
	for (const struct hservice *const *s = handlers_services; *s != NULL; s++)
		if ((*s)->fns[id] != NULL)
			return (*s)->fns[id];
	return NULL;
}

int
handlers_describe(const struct hcall *c, const ProtobufCMessageDescriptor *type, const char *name,
		  uint32_t made, ProtobufCMessage **resp)
{
	for (const struct hservice *const *s = handlers_services; *s != NULL; s++)
		for (const struct hdescribe *e = (*s)->describe; e != NULL && e->type != NULL; e++)
			if (e->type == type)
				return e->fn(c, type, name, made, resp);
	return cf_error(CF_E_UNSUPPORTED, "no description for a %s answer", type->name);
}
