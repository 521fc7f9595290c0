#include "cf_pbcheck.h"

#include <string.h>

#include "cf_status.h"

#define STRING_RULE "protocol strings are UTF-8 text without NUL"

/* The length of the valid UTF-8 character at p (RFC 3629, table 3-7 of
 * the Unicode standard), 0 if there is none (invalid or truncated). */
static size_t
utf8_char(const uint8_t *p, size_t len)
{
	uint8_t c = p[0], lo = 0x80, hi = 0xbf;
	size_t n;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;   /* a continuation byte, an overlong lead (c0 c1), above U+10FFFF */
	if (c == 0xe0)
		lo = 0xa0;          /* overlong */
	else if (c == 0xed)
		hi = 0x9f;          /* surrogates */
	else if (c == 0xf0)
		lo = 0x90;          /* overlong */
	else if (c == 0xf4)
		hi = 0x8f;          /* above U+10FFFF */
	if (len < n || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	return n;
}

size_t
cf_utf8_valid(const uint8_t *p, size_t len)
{
	size_t i = 0, n;

	while (i < len && (n = utf8_char(p + i, len - i)) != 0)
		i += n;
	return i;
}

size_t
cf_text_escape(const char *in, size_t inlen, char *out, size_t outlen)
{
	static const char digits[] = "0123456789abcdef";
	const uint8_t *p = (const uint8_t *)in;
	size_t i = 0, o = 0, n;

	if (outlen == 0)
		return 0;
	while (i < inlen) {
		n = utf8_char(p + i, inlen - i);
		if (n == 0 || p[i] < 0x20 || p[i] == 0x7f) {
			if (o + 4 >= outlen)
				break;
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = digits[p[i] >> 4];
			out[o++] = digits[p[i] & 15];
			i++;
			continue;
		}
		if (o + n >= outlen)
			break;
		memcpy(out + o, p + i, n);
		o += n;
		i += n;
	}
	out[o] = '\0';
	return o;
}

static size_t
put_varint(uint64_t v, uint8_t *out)
{
	size_t n = 0;

	do {
		uint8_t b = (uint8_t)(v & 0x7f);

		v >>= 7;
		if (out != NULL)
			out[n] = (uint8_t)(b | (v != 0 ? 0x80 : 0));
		n++;
	} while (v != 0);
	return n;
}

size_t
cf_pb_len_prefix(uint32_t field, size_t len, uint8_t *out)
{
	size_t n = put_varint(((uint64_t)field << 3) | 2u, out);

	return n + put_varint(len, out != NULL ? out + n : NULL);
}

/* A varint at in[*pos..len); 0 when truncated or longer than 10 bytes. */
static int
varint(const uint8_t *in, size_t len, size_t *pos, uint64_t *v)
{
	*v = 0;
	for (unsigned shift = 0; shift < 70 && *pos < len; shift += 7) {
		uint8_t b = in[(*pos)++];

		*v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return 1;
	}
	return 0;
}

static int
check_string(const ProtobufCMessageDescriptor *d, const ProtobufCFieldDescriptor *f,
	     const uint8_t *p, size_t len)
{
	size_t valid = cf_utf8_valid(p, len);
	const uint8_t *nul = memchr(p, 0, len);

	if (nul != NULL && (size_t)(nul - p) < valid)
		return cf_error(CF_E_INVALID_ARG, "field %s.%s: a NUL byte at offset %zu; "
				STRING_RULE, d->name, f->name, (size_t)(nul - p));
	if (valid < len)
		return cf_error(CF_E_INVALID_ARG, "field %s.%s: invalid UTF-8 at offset %zu; "
				STRING_RULE, d->name, f->name, valid);
	return CF_OK;
}

static int
check_message(const ProtobufCMessageDescriptor *d, const uint8_t *in, size_t len,
	      unsigned depth)
{
	size_t pos = 0;
	uint64_t tag, n;
	unsigned seen[64] = { 0 };   /* occurrences of each repeated field */
	int r;

	if (depth > CF_PB_CHECK_DEPTH)
		return cf_error(CF_E_INVALID_ARG, "request is not a valid message: %s nested "
				"more than %d deep", d->name, CF_PB_CHECK_DEPTH);
	while (pos < len) {
		const ProtobufCFieldDescriptor *f;
		size_t at = pos;

		if (!varint(in, len, &pos, &tag) || tag >> 3 == 0 || tag >> 3 > UINT32_MAX)
			return cf_error(CF_E_INVALID_ARG, "request is not a valid %s message: "
					"bad field tag at byte %zu", d->name, at);
		switch (tag & 7) {
		case PROTOBUF_C_WIRE_TYPE_VARINT:
			if (!varint(in, len, &pos, &n))
				goto truncated;
			continue;
		case PROTOBUF_C_WIRE_TYPE_64BIT:
			n = 8;
			break;
		case PROTOBUF_C_WIRE_TYPE_32BIT:
			n = 4;
			break;
		case PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED:
			if (!varint(in, len, &pos, &n))
				goto truncated;
			break;
		default:
			return cf_error(CF_E_INVALID_ARG, "request is not a valid %s message: "
					"wire type %u at byte %zu is not supported", d->name,
					(unsigned)(tag & 7), at);
		}
		if (n > len - pos)
			goto truncated;
		f = protobuf_c_message_descriptor_get_field(d, (unsigned)(tag >> 3));
		/* Each element costs protobuf-c an allocation before any handler
		 * looks at the count: bounded here, while it is only counted. */
		if (f != NULL && f->label == PROTOBUF_C_LABEL_REPEATED &&
		    (size_t)(f - d->fields) < sizeof(seen) / sizeof(seen[0]) &&
		    ++seen[f - d->fields] > CF_PB_REPEATED_MAX)
			return cf_error(CF_E_TOO_LARGE, "field %s.%s repeats more than %d times",
					d->name, f->name, CF_PB_REPEATED_MAX);
		if ((tag & 7) != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED)
			f = NULL;
		if (f != NULL && f->type == PROTOBUF_C_TYPE_STRING &&
		    (r = check_string(d, f, in + pos, (size_t)n)) != CF_OK)
			return r;
		if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE &&
		    (r = check_message(f->descriptor, in + pos, (size_t)n, depth + 1)) != CF_OK)
			return r;
		pos += (size_t)n;
	}
	return CF_OK;
truncated:
	return cf_error(CF_E_INVALID_ARG, "request is not a valid %s message: truncated",
			d->name);
}

int
cf_pb_check_strings(const ProtobufCMessageDescriptor *d, const uint8_t *in, size_t len)
{
	return check_message(d, in, len, 0);
}
