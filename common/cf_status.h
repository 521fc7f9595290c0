/*
 * cf_status.h — Coffer's single error space.
 *
 * Every Coffer function that can fail returns an int: CF_OK (0) on success or
 * a negative CF_E_* code. cf_strerror() gives the fixed text of a code.
 *
 * A failing library function may also leave a human-readable detail for the
 * calling thread (cf_error_detail()): it names the input or limit at fault and
 * what to do about it. Details never contain secret material. The detail is
 * thread-local, so it is safe to use from any thread; it is only meaningful
 * right after a call returned an error.
 */
#ifndef COFFER_CF_STATUS_H
#define COFFER_CF_STATUS_H

#include <stddef.h>

enum cf_status {
	CF_OK = 0,
	CF_E_INTERNAL = -1,          /* a bug or an unexpected library failure */
	CF_E_NOMEM = -2,             /* allocation or mlock failed */
	CF_E_INVALID_ARG = -3,       /* malformed or out-of-range input */
	CF_E_TOO_LARGE = -4,         /* input above a documented limit */
	CF_E_NOT_FOUND = -5,         /* no such key, version or object */
	CF_E_EXISTS = -6,            /* the name/version is already taken */
	CF_E_WRONG_KEY_TYPE = -7,    /* key type or purpose does not fit the operation */
	CF_E_BAD_SIGNATURE = -8,     /* signature or MAC does not verify */
	CF_E_DECRYPT = -9,           /* ciphertext, tag, IV or AAD failed authentication */
	CF_E_PIN_INCORRECT = -10,    /* the token refused the PIN */
	CF_E_PIN_FILE = -11,         /* PIN file missing, unsafe owner/mode or unreadable */
	CF_E_MODULE = -12,           /* PKCS#11 module cannot be loaded or initialised */
	CF_E_TOKEN_NOT_FOUND = -13,  /* no token matches the configured URI */
	CF_E_BUSY = -14,             /* a bounded resource stayed exhausted past its timeout */
	CF_E_UNAVAILABLE = -15,      /* token or device gone; retrying later may work */
	CF_E_UNSUPPORTED = -16,      /* mechanism or feature not offered */
	CF_E_TOKEN = -17,            /* the token reported an error not mapped elsewhere */
	CF_E_CONFIG = -18,           /* configuration invalid */
	CF_E_IO = -19,               /* file or socket I/O failed */
	CF_E_DENIED = -20,           /* the caller may not do this */
	CF_E_UNAUTHENTICATED = -21,  /* the caller could not be authenticated */
	CF_E_PRECONDITION = -22,     /* state does not allow the operation now */
	CF_E_EXHAUSTED = -23,        /* quota or rate limit exceeded */
	CF_E_TIMEOUT = -24,          /* a deadline passed */
	CF_E_CANCELLED = -25,        /* the operation was cancelled */
	CF_E_UNIMPLEMENTED = -26,    /* method not offered here */
	CF_E__LAST = -27
};

/* Fixed description of a status code; never NULL, never allocates. */
const char *cf_strerror(int status);

/* Stable symbolic name ("CF_E_NOT_FOUND"); never NULL. */
const char *cf_status_name(int status);

/* The gRPC status code (grpc/status.h, fixed by the gRPC specification) a
 * status is answered with: INVALID_ARGUMENT for CF_E_INVALID_ARG, ... */
unsigned cf_status_grpc(int status);
/* The name of gRPC status code `code` ("OK", "NOT_FOUND", ...); "UNKNOWN"
 * for a code above 16. */
#define CF_GRPC_CODES 17
const char *cf_grpc_code_name(unsigned code);

/*
 * Record a detail for the calling thread and return `status` unchanged, so
 * callers can write `return cf_error(CF_E_TOO_LARGE, "...%zu", n);`.
 * The formatted text is truncated to CF_ERROR_DETAIL_MAX - 1 bytes. The
 * arguments may include cf_error_detail() itself (to prefix the last detail):
 * the text is formatted aside before it replaces the detail.
 */
#define CF_ERROR_DETAIL_MAX 256
int cf_error(int status, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* The calling thread's last detail, or cf_strerror() of the last code if no
 * detail was given. Borrowed; valid until the thread's next cf_error(). */
const char *cf_error_detail(void);

/* Out of memory, said where: every status carries its own detail, so a bare
 * `return CF_E_NOMEM;` would leave the previous call's text in place. */
#define cf_nomem() cf_error(CF_E_NOMEM, "out of memory (%s)", __func__)

/* The detail for `status`: the thread's last detail if it was recorded with
 * that status, else cf_strerror(status) -- never the text of some earlier,
 * different failure. */
const char *cf_error_message(int status);

/* Forget the calling thread's detail. */
void cf_error_clear(void);

/* The calling thread's detail kept across work whose own failures are not
 * reported (a close that ends sessions at the daemon, best effort). */
struct cf_error_saved {
	int status;
	char detail[CF_ERROR_DETAIL_MAX];
};
void cf_error_save(struct cf_error_saved *e);
void cf_error_restore(const struct cf_error_saved *e);

/* Make s one line in place: newlines and tabs become single spaces (libpq's
 * messages span lines), runs of spaces one, trailing space dropped. */
void cf_oneline(char *s);

#endif
