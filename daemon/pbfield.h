/*
 * pbfield.h — fields of a decoded protobuf-c message read by name, for the
 * facts the method table names by field (cf_methods.h: the key field, the
 * secret fields) and the audit record (key and version of a call). A field
 * the message lacks, or of another type, reads as empty.
 */
#ifndef COFFER_PBFIELD_H
#define COFFER_PBFIELD_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

/* The string field `field` of msg ("outer.inner": of a nested message); ""
 * if there is none (or field is NULL). */
const char *pb_str_field(const ProtobufCMessage *msg, const char *field);
/* A uint32 field of msg by name; 0 if it has none. */
uint32_t pb_u32_field(const ProtobufCMessage *msg, const char *name);
/* A bool field of msg by name; 0 if it has none. */
int pb_bool_field(const ProtobufCMessage *msg, const char *name);

/* How many elements repeated message field `name` of msg has (0: none, or
 * no such field). */
size_t pb_count_field(const ProtobufCMessage *msg, const char *name);
/* A batch response (cf_methods.h, CF_MF_BATCH): how many of its "results"
 * have a status other than OK. */
size_t pb_failed_items(const ProtobufCMessage *resp);

#endif
