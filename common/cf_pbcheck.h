/*
 * cf_pbcheck.h — protocol strings are UTF-8 text without NUL.
 *
 * protobuf-c unpacks a proto3 `string` as a NUL-terminated char *: a NUL
 * inside the field would make the daemon act on a prefix of what the caller
 * sent (and signed, and sealed). cf_pb_check_strings reads the wire bytes
 * before they are unpacked and refuses such strings, and invalid UTF-8,
 * which strict clients cannot parse when it is echoed back.
 * cf_text_escape makes any bytes safe to put in a string field.
 */
#ifndef COFFER_CF_PBCHECK_H
#define COFFER_CF_PBCHECK_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

/* Nested messages deeper than this are refused (CF_E_INVALID_ARG). */
#define CF_PB_CHECK_DEPTH 32
/* A repeated field with more elements than this in one message is refused
 * (CF_E_TOO_LARGE) before protobuf-c allocates one per element: a batch
 * holds at most 1,024 items, a context 16 entries, a frame 1,024 requests;
 * an empty element is 2 bytes on the wire, so a 1 MiB request could ask for
 * half a million of them. */
#define CF_PB_REPEATED_MAX 4096

/* Every string field of the message `d` encoded in in[0..len), nested and
 * repeated messages included: CF_OK, or CF_E_INVALID_ARG naming the field
 * and the offset in it of a NUL byte or of invalid UTF-8; CF_E_TOO_LARGE
 * for a repeated field beyond CF_PB_REPEATED_MAX. Unknown fields are
 * skipped; a field whose wire type does not match its descriptor is left to
 * protobuf_c_message_unpack, which refuses it. Truncated wire data is
 * refused. */
int cf_pb_check_strings(const ProtobufCMessageDescriptor *d, const uint8_t *in, size_t len);

/* The length of the longest prefix of p[0..len) that is valid UTF-8
 * (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF);
 * len when all of it is. */
size_t cf_utf8_valid(const uint8_t *p, size_t len);

/* in[0..inlen) as printable UTF-8 text into out (outlen bytes, always
 * NUL-terminated when outlen > 0): valid UTF-8 is copied, every invalid
 * byte, control character (below 0x20, 0x7f) and NUL is written as \xNN.
 * Truncates at a character or escape boundary. Returns the length written
 * (without the NUL). */
size_t cf_text_escape(const char *in, size_t inlen, char *out, size_t outlen);

/* The key and length that put `len` packed bytes in the length-delimited
 * field `field` of a message, into out (at most CF_PB_PREFIX_MAX bytes;
 * NULL: only counted). Returns how many bytes they take. A message's fields
 * may come in any order, so packed messages joined with these prefixes are
 * the first one with the others in its repeated field: how the pipelined
 * stream's frames are built without packing anything twice. */
#define CF_PB_PREFIX_MAX 15
size_t cf_pb_len_prefix(uint32_t field, size_t len, uint8_t *out);

#endif
