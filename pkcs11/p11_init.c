/*
 * p11_init.c — initialise a token (cofferd --init-token): C_InitToken in a
 * free slot with the security officer's PIN, then the user PIN set with
 * C_InitPIN, both PINs read from files (cf_secret_file.h), so that neither
 * appears on a command line (softhsm2-util takes them only there or from a
 * terminal, and every local user can read another process's argv).
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "cf_secret_file.h"
#include "cf_status.h"
#include "p11_internal.h"

#define LABEL_LEN 32

/* The free slot to initialise (*slot), after checking that no token has
 * the label already; or (*half set) the slot of a token with the label whose
 * user PIN was never set: an initialisation cut short between C_InitToken
 * and C_InitPIN, which cofferd could never log in to. */
static int
pick_slot(CK_FUNCTION_LIST_PTR f, const char label[LABEL_LEN], const char *name,
	  CK_SLOT_ID *slot, int *half)
{
	CK_SLOT_ID *v = NULL;
	CK_TOKEN_INFO ti;
	CK_ULONG n = 0;
	CK_RV rv;
	int found = 0, r;

	if ((r = p11_token_slots(f, &v, &n)) != CF_OK)
		return r;
	for (CK_ULONG i = 0; i < n && r == CF_OK; i++) {
		if ((rv = f->C_GetTokenInfo(v[i], &ti)) != CKR_OK) {
			r = cf_error(CF_E_TOKEN, "reading the token in slot %lu: %s",
				     (unsigned long)v[i], p11_rv_name(rv));
		} else if (ti.flags & CKF_TOKEN_INITIALIZED) {
			if (memcmp(ti.label, label, LABEL_LEN) != 0)
				continue;
			if (!(ti.flags & CKF_USER_PIN_INITIALIZED)) {
				*slot = v[i];
				*half = 1;
				break;
			}
			r = cf_error(CF_E_EXISTS, "a token labelled \"%s\" exists already "
				     "(slot %lu): not initialising another", name,
				     (unsigned long)v[i]);
		} else if (!found) {
			*slot = v[i];
			found = 1;
		}
	}
	free(v);
	if (r == CF_OK && !found && !*half)
		r = cf_error(CF_E_NOT_FOUND, "no slot holds an uninitialised token (SoftHSM2 "
			     "offers one in each token directory: check its configuration)");
	return r;
}

/* What a failed step says: what it did, and the module's code; a refused
 * PIN names its file (SoftHSM2 answers CKR_PIN_INCORRECT to a PIN of the
 * wrong length at C_InitToken). */
static int
step_failed(const char *what, CK_RV rv, const char *pin_file)
{
	if (rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_INCORRECT || rv == CKR_PIN_INVALID)
		return cf_error(CF_E_INVALID_ARG, "%s: the token refused the PIN of %s (%s; "
				"SoftHSM2 takes 4 to 255 bytes)", what, pin_file, p11_rv_name(rv));
	return cf_error(CF_E_TOKEN, "%s: %s", what, p11_rv_name(rv));
}

int
cf_p11_init_token(const char *module_path, const char *label, const char *so_pin_file,
		  const char *user_pin_file, int *finished)
{
	CK_C_INITIALIZE_ARGS args;
	CK_FUNCTION_LIST_PTR f = NULL;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	CK_SLOT_ID slot = 0;
	cf_secret *so = NULL, *user = NULL;
	char padded[LABEL_LEN];
	void *dl = NULL;
	size_t len = label != NULL ? strlen(label) : 0;
	int r, initialized = 0, half = 0;
	CK_RV rv;

	if (len == 0 || len > LABEL_LEN)
		return cf_error(CF_E_INVALID_ARG, "a token label is 1 to %d bytes", LABEL_LEN);
	memset(padded, ' ', sizeof(padded));
	memcpy(padded, label, len);
	if ((r = cf_secret_file_read(so_pin_file, "SO PIN file", CF_E_PIN_FILE, P11_PIN_MAX,
				     &so)) != CF_OK ||
	    (r = cf_secret_file_read(user_pin_file, "PIN file", CF_E_PIN_FILE, P11_PIN_MAX,
				     &user)) != CF_OK ||
	    (r = p11_load(module_path, &dl, &f)) != CF_OK)
		goto out;
	memset(&args, 0, sizeof(args));
	args.flags = CKF_OS_LOCKING_OK;
	if ((rv = f->C_Initialize(&args)) != CKR_OK) {
		r = cf_error(CF_E_MODULE, "C_Initialize of %s failed (%s)", module_path,
			     p11_rv_name(rv));
		goto out;
	}
	initialized = 1;
	if ((r = pick_slot(f, padded, label, &slot, &half)) != CF_OK)
		goto out;
	*finished = half;
	rv = half ? CKR_OK : f->C_InitToken(slot, (CK_UTF8CHAR_PTR)cf_secret_cptr(so),
					    cf_secret_len(so), (CK_UTF8CHAR_PTR)padded);
	if (rv != CKR_OK) {
		r = step_failed("C_InitToken", rv, so_pin_file);
		goto out;
	}
	if ((rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
				   &s)) != CKR_OK ||
	    (rv = f->C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR)cf_secret_cptr(so),
			     cf_secret_len(so))) != CKR_OK) {
		r = step_failed("logging in as the security officer", rv, so_pin_file);
		goto out;
	}
	if ((rv = f->C_InitPIN(s, (CK_UTF8CHAR_PTR)cf_secret_cptr(user),
			       cf_secret_len(user))) != CKR_OK) {
		r = step_failed("setting the user PIN (C_InitPIN)", rv, user_pin_file);
		goto out;
	}
	(void)f->C_Logout(s);
	r = CF_OK;
out:
	if (s != CK_INVALID_HANDLE)
		(void)f->C_CloseSession(s);
	if (initialized)
		(void)f->C_Finalize(NULL);
	if (dl != NULL)
		dlclose(dl);
	cf_secret_free(so);
	cf_secret_free(user);
	return r;
}
