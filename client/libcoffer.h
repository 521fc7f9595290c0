/*
 * libcoffer.h — what the files of libcoffer's public calls share, on top of
 * the RPC layer (libcoffer_rpc.h). Not installed; hidden by libcoffer.map.
 */
#ifndef COFFER_LIBCOFFER_H
#define COFFER_LIBCOFFER_H

#include <protobuf-c/protobuf-c.h>

#include "coffer.h"
#include "libcoffer_rpc.h"

/* A call whose response is a Key, converted into *out (out may be NULL). */
int lc_key_call(coffer_client *c, const char *method, const ProtobufCMessage *req,
    struct coffer_key_info **out);

#endif
