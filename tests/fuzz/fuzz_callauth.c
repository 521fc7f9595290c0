/*
 * fuzz_callauth.c — the authorization header of every gRPC call
 * (cf_callauth_parse, proto/call-authentication.md): hostile bytes straight
 * from a socket. A header that parses must format back to one that parses
 * to the same fields, and its signed string must build.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cf_buf.h"
#include "cf_reqsign.h"
#include "cf_status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cf_call_auth a, b;
	char hdr[CF_CALLAUTH_HEADER_MAX];
	cf_buf *s;

	/* The value is not NUL-terminated on the wire: parse a copy that
	 * ends exactly at size, so ASan sees any read past it. */
	char *v = malloc(size ? size : 1);

	if (v == NULL)
		return 0;
	memcpy(v, data, size);
	if (cf_callauth_parse(v, size, &a) == CF_OK) {
		if (cf_apikey_id_check(a.key_id) != CF_OK)
			abort();
		cf_callauth_format(&a, hdr);
		if (cf_callauth_parse(hdr, strlen(hdr), &b) != CF_OK ||
		    memcmp(&a, &b, sizeof(a)) != 0)
			abort();
		s = cf_buf_new(1024);
		if (s != NULL && cf_callauth_string("/coffer.v1.KeyService/Sign", data, size,
						    a.timestamp, a.nonce, a.key_id, s) != CF_OK)
			abort();
		cf_buf_free(s);
	}
	free(v);
	cf_error_clear();
	return 0;
}
