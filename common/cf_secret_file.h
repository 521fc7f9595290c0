/*
 * cf_secret_file.h — read a small secret held in a file (the token PIN, a
 * PostgreSQL connection string with its password) into a cf_secret.
 *
 * The file must be a regular file (symbolic links are not followed) owned by
 * the effective uid with no group or other permissions: a secret others can
 * read or replace is refused before it is read.
 */
#ifndef COFFER_CF_SECRET_FILE_H
#define COFFER_CF_SECRET_FILE_H

#include <stddef.h>

#include "cf_secret.h"

/* Read at most max - 1 bytes of `path`, trailing newlines and carriage
 * returns stripped, into *out. `what` names the file in errors ("PIN file");
 * every error is `code` with a detail that says how to fix it (it never
 * quotes the contents). Empty contents are an error. */
int cf_secret_file_read(const char *path, const char *what, int code, size_t max,
			cf_secret **out);

#endif
