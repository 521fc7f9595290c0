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

/* The elements of repeated message field `name` of msg: their count, and
 * the array into *v (NULL and 0 if msg has no such field). */
static size_t
pb_repeated(const ProtobufCMessage *msg, const char *name, ProtobufCMessage *const **v)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, name);
	size_t n;

	*v = NULL;
	if (f == NULL || f->type != PROTOBUF_C_TYPE_MESSAGE || f->label != PROTOBUF_C_LABEL_REPEATED)
		return 0;
	memcpy(&n, (const char *)msg + f->quantifier_offset, sizeof(n));
	memcpy(v, (const char *)msg + f->offset, sizeof(*v));
	return n;
}

size_t
pb_count_field(const ProtobufCMessage *msg, const char *name)
{
	ProtobufCMessage *const *v;

	return pb_repeated(msg, name, &v);
}

size_t
pb_failed_items(const ProtobufCMessage *resp)
{
	ProtobufCMessage *const *v;
	size_t n = pb_repeated(resp, "results", &v), failed = 0;

	for (size_t i = 0; i < n; i++) {
		const ProtobufCFieldDescriptor *f =
			protobuf_c_message_descriptor_get_field_by_name(v[i]->descriptor, "status");
		const ProtobufCMessage *st = NULL;
		const int32_t *code;

		if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE)
			memcpy(&st, (const char *)v[i] + f->offset, sizeof(st));
		/* A result without a status is not a success anyone can rely on. */
		if (st == NULL || (code = pb_scalar(st, "code", PROTOBUF_C_TYPE_INT32)) == NULL ||
		    *code != 0)
			failed++;
	}
	return failed;
}
