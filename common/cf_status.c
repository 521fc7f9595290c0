#include "cf_status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const struct {
	const char *name;
	const char *text;
} cf_status_table[] = {
	/* index = -status */
	{ "CF_OK", "success" },
	{ "CF_E_INTERNAL", "internal error" },
	{ "CF_E_NOMEM", "out of memory" },
	{ "CF_E_INVALID_ARG", "invalid argument" },
	{ "CF_E_TOO_LARGE", "input exceeds a limit" },
	{ "CF_E_NOT_FOUND", "not found" },
	{ "CF_E_EXISTS", "already exists" },
	{ "CF_E_WRONG_KEY_TYPE", "key type does not support this operation" },
	{ "CF_E_BAD_SIGNATURE", "signature or MAC does not verify" },
	{ "CF_E_DECRYPT", "decryption failed: data or context was altered" },
	{ "CF_E_PIN_INCORRECT", "PIN incorrect" },
	{ "CF_E_PIN_FILE", "PIN file unusable" },
	{ "CF_E_MODULE", "PKCS#11 module unusable" },
	{ "CF_E_TOKEN_NOT_FOUND", "no token matches the URI" },
	{ "CF_E_BUSY", "resource busy" },
	{ "CF_E_UNAVAILABLE", "token unavailable" },
	{ "CF_E_UNSUPPORTED", "not supported" },
	{ "CF_E_TOKEN", "token error" },
	{ "CF_E_CONFIG", "invalid configuration" },
	{ "CF_E_IO", "I/O error" },
	{ "CF_E_DENIED", "permission denied" },
	{ "CF_E_UNAUTHENTICATED", "unauthenticated" },
	{ "CF_E_PRECONDITION", "failed precondition" },
	{ "CF_E_EXHAUSTED", "limit exceeded" },
	{ "CF_E_TIMEOUT", "deadline exceeded" },
	{ "CF_E_CANCELLED", "cancelled" },
	{ "CF_E_UNIMPLEMENTED", "not implemented" },
};

_Static_assert(sizeof(cf_status_table) / sizeof(cf_status_table[0]) == (size_t)-CF_E__LAST,
	       "cf_status_table must cover every status");

static _Thread_local char cf_detail[CF_ERROR_DETAIL_MAX];
static _Thread_local int cf_detail_status;

static int
cf_status_index(int status)
{
	if (status > 0 || status <= CF_E__LAST)
		return -1;
	return -status;
}

const char *
cf_strerror(int status)
{
	int i = cf_status_index(status);

	return i < 0 ? "unknown status" : cf_status_table[i].text;
}

const char *
cf_status_name(int status)
{
	int i = cf_status_index(status);

	return i < 0 ? "CF_E_UNKNOWN" : cf_status_table[i].name;
}

const char *
cf_grpc_code_name(unsigned code)
{
	static const char *const names[CF_GRPC_CODES] = {
		"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
		"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
		"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
		"UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
	};

	return code < CF_GRPC_CODES ? names[code] : "UNKNOWN";
}

unsigned
cf_status_grpc(int st)
{
	enum {
		OK = 0, CANCELLED = 1, INVALID_ARGUMENT = 3, DEADLINE_EXCEEDED = 4, NOT_FOUND = 5,
		ALREADY_EXISTS = 6, PERMISSION_DENIED = 7, RESOURCE_EXHAUSTED = 8,
		FAILED_PRECONDITION = 9, UNIMPLEMENTED = 12, INTERNAL = 13, UNAVAILABLE = 14,
		UNAUTHENTICATED = 16,
	};

	switch (st) {
	case CF_OK: return OK;
	case CF_E_INVALID_ARG:
	case CF_E_DECRYPT:
	case CF_E_BAD_SIGNATURE: return INVALID_ARGUMENT;
	case CF_E_TOO_LARGE:
	case CF_E_EXHAUSTED: return RESOURCE_EXHAUSTED;
	case CF_E_NOT_FOUND: return NOT_FOUND;
	case CF_E_EXISTS: return ALREADY_EXISTS;
	case CF_E_WRONG_KEY_TYPE:
	case CF_E_PRECONDITION:
	case CF_E_UNSUPPORTED: return FAILED_PRECONDITION;
	case CF_E_DENIED: return PERMISSION_DENIED;
	case CF_E_UNAUTHENTICATED: return UNAUTHENTICATED;
	case CF_E_BUSY:
	case CF_E_UNAVAILABLE: return UNAVAILABLE;
	case CF_E_TIMEOUT: return DEADLINE_EXCEEDED;
	case CF_E_CANCELLED: return CANCELLED;
	case CF_E_UNIMPLEMENTED: return UNIMPLEMENTED;
	default: return INTERNAL;
	}
}

int
cf_error(int status, const char *fmt, ...)
{
	char text[CF_ERROR_DETAIL_MAX];
	va_list ap;

	/* Formatted aside: an argument may be cf_detail itself. */
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	memcpy(cf_detail, text, sizeof(cf_detail));
	cf_detail_status = status;
	return status;
}

const char *
cf_error_detail(void)
{
	if (cf_detail[0] == '\0')
		return cf_strerror(cf_detail_status);
	return cf_detail;
}

const char *
cf_error_message(int status)
{
	if (cf_detail_status != status || cf_detail[0] == '\0')
		return cf_strerror(status);
	return cf_detail;
}

void
cf_error_clear(void)
{
	cf_detail[0] = '\0';
	cf_detail_status = CF_OK;
}

void
cf_error_save(struct cf_error_saved *e)
{
	e->status = cf_detail_status;
	memcpy(e->detail, cf_detail, sizeof(e->detail));
}

void
cf_error_restore(const struct cf_error_saved *e)
{
	cf_detail_status = e->status;
	memcpy(cf_detail, e->detail, sizeof(cf_detail));
}

void
cf_oneline(char *s)
{
	size_t n = 0;

	for (size_t i = 0; s[i] != '\0'; i++) {
		char c = s[i] == '\n' || s[i] == '\t' || s[i] == '\r' ? ' ' : s[i];

		if (c != ' ' || (n > 0 && s[n - 1] != ' '))
			s[n++] = c;
	}
	while (n > 0 && s[n - 1] == ' ')
		n--;
	s[n] = '\0';
}
