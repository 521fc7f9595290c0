/* pbfield.c — fields of a decoded request read by name (pbfield.h). */
#include "pbfield.h"

#include <stdio.h>
#include <string.h>

/* The string field `field` of req ("outer.inner": of a nested message), ""
 * if there is none. */
const char *
pb_str_field(const ProtobufCMessage *req, const char *field)
{
	const ProtobufCFieldDescriptor *f;
	const char *dot, *v;
	char outer[32];

	if (field == NULL)
		return "";
	if ((dot = strchr(field, '.')) != NULL) {
		snprintf(outer, sizeof(outer), "%.*s", (int)(dot - field), field);
		if ((f = protobuf_c_message_descriptor_get_field_by_name(req->descriptor,
									  outer)) == NULL ||
		    f->type != PROTOBUF_C_TYPE_MESSAGE ||
		    (req = *(const ProtobufCMessage *const *)(const void *)
			   ((const char *)req + f->offset)) == NULL)
			return "";
		field = dot + 1;
	}
	if ((f = protobuf_c_message_descriptor_get_field_by_name(req->descriptor, field)) == NULL ||
	    f->type != PROTOBUF_C_TYPE_STRING)
		return "";
	v = *(const char *const *)(const void *)((const char *)req + f->offset);
	return v != NULL ? v : "";
}

/* Field `name` (a single field of `type`) of msg, NULL if it has none. */
static const void *
pb_scalar(const ProtobufCMessage *msg, const char *name, ProtobufCType type)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, name);

	if (f == NULL || f->type != type || f->label == PROTOBUF_C_LABEL_REPEATED)
		return NULL;
	return (const char *)msg + f->offset;
}

/* A uint32 field of msg by name; 0 if it has none. */
uint32_t
pb_u32_field(const ProtobufCMessage *msg, const char *name)
{
	const uint32_t *v = pb_scalar(msg, name, PROTOBUF_C_TYPE_UINT32);

	return v != NULL ? *v : 0;
}

/* A bool field of msg by name; 0 if it has none. */
int
pb_bool_field(const ProtobufCMessage *msg, const char *name)
{
	const protobuf_c_boolean *v = pb_scalar(msg, name, PROTOBUF_C_TYPE_BOOL);

	return v != NULL && *v;
}
