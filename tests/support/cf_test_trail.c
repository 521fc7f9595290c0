/*
 * cf_test_trail.c — an audit trail as lines, for tests that alter it the way
 * an attacker would (see cf_test_trail.h).
 */
#include "cf_test_trail.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>
#include <openssl/evp.h>

#include "cf_audit_verify.h"
#include "cf_hex.h"
#include "cf_status.h"

void
cf_trail_free(struct cf_trail *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->l[i]);
	t->n = 0;
}

void
cf_trail_load(const char *path, struct cf_trail *t)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0;
	ssize_t got;

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	t->n = 0;
	while ((got = getline(&line, &cap, f)) > 0 && t->n < CF_TRAIL_MAX) {
		CU_ASSERT_FATAL(line[got - 1] == '\n');
		line[got - 1] = '\0';
		t->l[t->n++] = strdup(line);
	}
	free(line);
	fclose(f);
}

void
cf_trail_save(const char *path, const struct cf_trail *t, int torn)
{
	FILE *f = fopen(path, "w");

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	for (size_t i = 0; i < t->n; i++)
		fprintf(f, "%s%s", t->l[i], torn && i + 1 == t->n ? "" : "\n");
	CU_ASSERT_FATAL(fclose(f) == 0);
}

void
cf_trail_copy(const struct cf_trail *from, struct cf_trail *to)
{
	to->n = from->n;
	for (size_t i = 0; i < from->n; i++)
		to->l[i] = strdup(from->l[i]);
}

void
cf_trail_drop(struct cf_trail *t, size_t i)
{
	free(t->l[i]);
	memmove(&t->l[i], &t->l[i + 1], (t->n - i - 1) * sizeof(t->l[0]));
	t->n--;
}

char *
cf_trail_chain_field(char *line)
{
	char *p = NULL, *q = line;

	while ((q = strstr(q, CF_AUDIT_CHAIN_FIELD)) != NULL)
		p = q++;
	return p;
}

char *
cf_trail_renumbered(const char *line, size_t seq)
{
	const char *rest = strchr(line, ',');
	char *out = NULL;

	CU_ASSERT_FATAL(rest != NULL && asprintf(&out, "{\"seq\":%zu%s", seq, rest) > 0);
	return out;
}

int
cf_trail_is_seal(const char *line)
{
	return strstr(line, CF_AUDIT_SIG_FIELD) != NULL;
}

/* What an attacker who rewrote records would also do: recompute every chain
 * value from line `from` on, as the format says (SHA-256 of the previous
 * value and the body), with OpenSSL alone. */
void
cf_trail_rechain(struct cf_trail *t, size_t from)
{
	uint8_t prev[32] = { 0 };
	unsigned dl;

	for (size_t i = 0; i < t->n; i++) {
		char *ch = cf_trail_chain_field(t->l[i]);
		EVP_MD_CTX *c = EVP_MD_CTX_new();

		CU_ASSERT_PTR_NOT_NULL_FATAL(ch);
		if (i >= from) {
			CU_ASSERT_FATAL(EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
					EVP_DigestUpdate(c, prev, 32) == 1 &&
					EVP_DigestUpdate(c, t->l[i], (size_t)(ch - t->l[i])) == 1 &&
					EVP_DigestFinal_ex(c, prev, &dl) == 1);
			cf_hex_encode(prev, 32, ch + strlen(CF_AUDIT_CHAIN_FIELD));
			memcpy(ch + strlen(CF_AUDIT_CHAIN_FIELD) + 64, "\"}", 3);
		} else {
			const char *hex = ch + strlen(CF_AUDIT_CHAIN_FIELD);

			CU_ASSERT_FATAL(cf_hex_decode(hex, prev, 32) == CF_OK);
		}
		EVP_MD_CTX_free(c);
	}
}
