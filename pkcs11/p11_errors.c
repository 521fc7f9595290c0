/* The one table from CKR_* to Coffer status. */
#include "p11_internal.h"

#include "cf_status.h"

struct p11_rv_entry {
	CK_RV rv;
	int status;
	const char *name;
	const char *text;
};

#define E(rv, st, text) { rv, st, #rv, text }
static const struct p11_rv_entry p11_rv_table[] = {
	E(CKR_OK, CF_OK, "ok"),
	E(CKR_HOST_MEMORY, CF_E_NOMEM, "module out of memory"),
	E(CKR_DEVICE_MEMORY, CF_E_EXHAUSTED, "token out of memory"),
	E(CKR_GENERAL_ERROR, CF_E_TOKEN, "token general error"),
	E(CKR_FUNCTION_FAILED, CF_E_TOKEN, "token function failed"),
	E(CKR_ARGUMENTS_BAD, CF_E_INVALID_ARG, "bad arguments"),
	E(CKR_ATTRIBUTE_READ_ONLY, CF_E_INVALID_ARG, "attribute is read-only"),
	E(CKR_ATTRIBUTE_SENSITIVE, CF_E_DENIED, "attribute is sensitive"),
	E(CKR_ATTRIBUTE_TYPE_INVALID, CF_E_INVALID_ARG, "attribute type invalid"),
	E(CKR_ATTRIBUTE_VALUE_INVALID, CF_E_INVALID_ARG, "attribute value invalid"),
	E(CKR_DATA_INVALID, CF_E_INVALID_ARG, "data invalid"),
	E(CKR_DATA_LEN_RANGE, CF_E_INVALID_ARG, "data length out of range"),
	E(CKR_DEVICE_ERROR, CF_E_UNAVAILABLE, "device error"),
	E(CKR_DEVICE_REMOVED, CF_E_UNAVAILABLE, "device removed"),
	E(CKR_TOKEN_NOT_PRESENT, CF_E_UNAVAILABLE, "token not present"),
	E(CKR_TOKEN_NOT_RECOGNIZED, CF_E_UNAVAILABLE, "token not recognised"),
	E(CKR_ENCRYPTED_DATA_INVALID, CF_E_DECRYPT, "encrypted data invalid"),
	E(CKR_ENCRYPTED_DATA_LEN_RANGE, CF_E_DECRYPT, "encrypted data length out of range"),
	E(CKR_KEY_HANDLE_INVALID, CF_E_NOT_FOUND, "key handle invalid"),
	E(CKR_KEY_SIZE_RANGE, CF_E_INVALID_ARG, "key size out of range"),
	E(CKR_KEY_TYPE_INCONSISTENT, CF_E_WRONG_KEY_TYPE, "key type does not fit the mechanism"),
	E(CKR_KEY_FUNCTION_NOT_PERMITTED, CF_E_WRONG_KEY_TYPE, "key may not be used this way"),
	E(CKR_KEY_NOT_WRAPPABLE, CF_E_DENIED, "key is not wrappable"),
	E(CKR_KEY_UNEXTRACTABLE, CF_E_DENIED, "key is not extractable"),
	E(CKR_MECHANISM_INVALID, CF_E_UNSUPPORTED, "mechanism not supported by the token"),
	E(CKR_MECHANISM_PARAM_INVALID, CF_E_INVALID_ARG, "mechanism parameter invalid"),
	E(CKR_OBJECT_HANDLE_INVALID, CF_E_NOT_FOUND, "object handle invalid"),
	E(CKR_OPERATION_ACTIVE, CF_E_INTERNAL, "operation already active"),
	E(CKR_OPERATION_NOT_INITIALIZED, CF_E_INTERNAL, "operation not initialised"),
	E(CKR_PIN_INCORRECT, CF_E_PIN_INCORRECT, "PIN incorrect"),
	E(CKR_PIN_INVALID, CF_E_PIN_INCORRECT, "PIN has invalid characters"),
	E(CKR_PIN_LEN_RANGE, CF_E_PIN_INCORRECT, "PIN length out of range"),
	E(CKR_PIN_EXPIRED, CF_E_PIN_INCORRECT, "PIN expired"),
	E(CKR_PIN_LOCKED, CF_E_PIN_INCORRECT, "PIN locked"),
	E(CKR_SESSION_CLOSED, CF_E_UNAVAILABLE, "session closed"),
	E(CKR_SESSION_COUNT, CF_E_EXHAUSTED, "token session limit reached"),
	E(CKR_SESSION_HANDLE_INVALID, CF_E_UNAVAILABLE, "session handle invalid"),
	E(CKR_SESSION_READ_ONLY, CF_E_INTERNAL, "session is read-only"),
	E(CKR_SIGNATURE_INVALID, CF_E_BAD_SIGNATURE, "signature invalid"),
	E(CKR_SIGNATURE_LEN_RANGE, CF_E_BAD_SIGNATURE, "signature length out of range"),
	E(CKR_TEMPLATE_INCOMPLETE, CF_E_INVALID_ARG, "template incomplete"),
	E(CKR_TEMPLATE_INCONSISTENT, CF_E_INVALID_ARG, "template inconsistent"),
	E(CKR_UNWRAPPING_KEY_HANDLE_INVALID, CF_E_NOT_FOUND, "unwrapping key handle invalid"),
	E(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT, CF_E_WRONG_KEY_TYPE, "unwrapping key type wrong"),
	E(CKR_USER_ALREADY_LOGGED_IN, CF_OK, "user already logged in"),
	E(CKR_USER_NOT_LOGGED_IN, CF_E_UNAVAILABLE, "user not logged in"),
	E(CKR_USER_PIN_NOT_INITIALIZED, CF_E_CONFIG, "user PIN not initialised on the token"),
	E(CKR_USER_TYPE_INVALID, CF_E_INTERNAL, "user type invalid"),
	E(CKR_WRAPPED_KEY_INVALID, CF_E_DECRYPT, "wrapped key invalid"),
	E(CKR_WRAPPED_KEY_LEN_RANGE, CF_E_DECRYPT, "wrapped key length out of range"),
	E(CKR_WRAPPING_KEY_HANDLE_INVALID, CF_E_NOT_FOUND, "wrapping key handle invalid"),
	E(CKR_WRAPPING_KEY_TYPE_INCONSISTENT, CF_E_WRONG_KEY_TYPE, "wrapping key type wrong"),
	E(CKR_RANDOM_NO_RNG, CF_E_UNSUPPORTED, "token has no RNG"),
	E(CKR_BUFFER_TOO_SMALL, CF_E_INTERNAL, "output buffer too small"),
	E(CKR_CRYPTOKI_NOT_INITIALIZED, CF_E_UNAVAILABLE, "PKCS#11 library not initialised"),
	E(CKR_CRYPTOKI_ALREADY_INITIALIZED, CF_OK, "PKCS#11 library already initialised"),
	E(CKR_FUNCTION_NOT_SUPPORTED, CF_E_UNSUPPORTED, "function not supported"),
	E(CKR_CURVE_NOT_SUPPORTED, CF_E_UNSUPPORTED, "curve not supported"),
	E(CKR_SLOT_ID_INVALID, CF_E_TOKEN_NOT_FOUND, "slot id invalid"),
	E(CKR_TOKEN_WRITE_PROTECTED, CF_E_DENIED, "token is write-protected"),
	E(CKR_ACTION_PROHIBITED, CF_E_DENIED, "action prohibited by the token"),
	E(P11_RV_POOL_TIMEOUT, CF_E_BUSY, "no free PKCS#11 session before the pool timeout"),
	E(P11_RV_NOT_FOUND, CF_E_NOT_FOUND, "no such object in the token"),
	E(P11_RV_RETIRED, CF_E_PRECONDITION, "the key version was destroyed while this call "
	  "held it"),
	E(P11_RV_AMBIGUOUS, CF_E_TOKEN, "several token objects carry the same label"),
	E(P11_RV_LOCK, CF_E_IO, "cannot lock the token lock file"),
	E(P11_RV_DECRYPT_FAILED, CF_E_DECRYPT, "decryption failed"),
	E(P11_RV_BAD_OUTPUT, CF_E_TOKEN, "the token returned output of an unexpected length"),
	E(P11_RV_TOKEN_LOST, CF_E_UNAVAILABLE, "the token is not answering"),
	E(P11_RV_WRITE_UNKNOWN, CF_E_UNAVAILABLE, "the token failed during the write and may "
	  "hold part of it; cofferd's start-up reconciliation reports such objects"),
};
#undef E

static const struct p11_rv_entry *
p11_rv_lookup(CK_RV rv)
{
	for (size_t i = 0; i < sizeof(p11_rv_table) / sizeof(p11_rv_table[0]); i++)
		if (p11_rv_table[i].rv == rv)
			return &p11_rv_table[i];
	return NULL;
}

const char *
p11_rv_name(CK_RV rv)
{
	const struct p11_rv_entry *e = p11_rv_lookup(rv);

	return e != NULL ? e->name : "CKR_(unmapped)";
}

int
p11_status(CK_RV rv, const char *what)
{
	const struct p11_rv_entry *e = p11_rv_lookup(rv);

	if (e == NULL)
		return cf_error(CF_E_TOKEN, "%s: token error 0x%lx", what, (unsigned long)rv);
	if (e->status == CF_OK)
		return CF_OK;
	/* p11_token_lock and p11_run left a detail saying why. */
	if (rv == P11_RV_LOCK || rv == P11_RV_TOKEN_LOST)
		return cf_error(e->status, "%s: %s", what, cf_error_detail());
	return cf_error(e->status, "%s: %s (%s)", what, e->text, e->name);
}

int
p11_rv_fault(CK_RV rv)
{
	const struct p11_rv_entry *e = p11_rv_lookup(rv);

	if (e == NULL)
		return 1;   /* unmapped: CF_E_TOKEN */
	switch (e->status) {
	case CF_E_TOKEN:
	case CF_E_UNAVAILABLE:
	case CF_E_INTERNAL:
	case CF_E_NOMEM:
	case CF_E_EXHAUSTED:
	case CF_E_PIN_INCORRECT:
	case CF_E_CONFIG:
	case CF_E_TOKEN_NOT_FOUND:
	case CF_E_IO:
		return 1;
	default:
		return 0;
	}
}

int
p11_rv_stale_object(CK_RV rv)
{
	return rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID;
}

int
p11_rv_device_lost(CK_RV rv)
{
	return rv == CKR_GENERAL_ERROR || rv == CKR_DEVICE_ERROR;
}

int
p11_rv_recoverable(CK_RV rv)
{
	switch (rv) {
	case CKR_SESSION_HANDLE_INVALID:
	case CKR_SESSION_CLOSED:
	case CKR_USER_NOT_LOGGED_IN:
	case CKR_OBJECT_HANDLE_INVALID:
	case CKR_KEY_HANDLE_INVALID:
	case CKR_DEVICE_REMOVED:
	case CKR_TOKEN_NOT_PRESENT:
	case CKR_CRYPTOKI_NOT_INITIALIZED:
		return 1;
	default:
		return 0;
	}
}

int
p11_rv_clean(CK_RV rv)
{
	switch (rv) {
	case CKR_OK:
	case CKR_SIGNATURE_INVALID:
	case CKR_SIGNATURE_LEN_RANGE:
	case P11_RV_NOT_FOUND:
	case P11_RV_AMBIGUOUS:
	case P11_RV_RETIRED:
	case P11_RV_LOCK: /* failed before any token call */
		return 1;
	default:
		return 0;
	}
}
