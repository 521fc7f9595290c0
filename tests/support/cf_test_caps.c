#include "cf_test_caps.h"

#include <CUnit/Basic.h>
#include <stdio.h>
#include <string.h>

#define MAX_SKIPS 32

static struct coffer_token_info info;
static coffer_client *admin;
static int loaded;
static char skips[MAX_SKIPS][400];
static int nskips;

int
cf_test_caps_load(coffer_client *adm)
{
	if (coffer_token_info(adm, &info) != COFFER_OK) {
		fprintf(stderr, "GetTokenInfo failed: %s\n", coffer_error_message());
		return -1;
	}
	loaded = 1;
	admin = adm;
	printf("\ntoken: %s (%s %s, %s), %zu features unavailable\n", info.label,
	       info.manufacturer, info.model, info.module, info.n_unavailable);
	return 0;
}

static const struct coffer_key_type_support *
support_of(enum coffer_key_type type)
{
	for (size_t i = 0; loaded && i < info.n_key_types; i++)
		if (info.key_types[i].type == type)
			return &info.key_types[i];
	return NULL;
}

/* A reason GetTokenInfo states: the type's own, or within an unavailable line. */
static int
stated(const struct coffer_key_type_support *ks, const char *why)
{
	if (why[0] == '\0')
		return 0;
	if (strcmp(ks->missing, why) == 0)
		return 1;
	for (size_t i = 0; i < info.n_unavailable; i++)
		if (strstr(info.unavailable[i], why) != NULL)
			return 1;
	return 0;
}

static void
skip(const char *what, const char *capability, const char *why)
{
	/* CUnit's verbose line for the case is still to come: a line of our own. */
	printf("\nSKIP %s: token lacks %s (%s)\n", what, capability, why);
	if (nskips < MAX_SKIPS)
		snprintf(skips[nskips++], sizeof(skips[0]), "%s: token lacks %s (%s)", what,
			 capability, why);
}

int
cf_test_can_generate(coffer_client *adm, const char *what, enum coffer_key_type type)
{
	const struct coffer_key_type_support *ks = support_of(type);
	const char *name = coffer_key_type_name(type);
	char cap[64], expect[400];
	int r;

	CU_ASSERT_PTR_NOT_NULL_FATAL(ks);
	if (ks->can_generate)
		return 1;
	CU_ASSERT(ks->missing[0] != '\0');
	snprintf(expect, sizeof(expect), "this token cannot generate %s keys: %s", name,
		 ks->missing);
	r = coffer_create_key(adm, "caps-refused", type, 0, NULL);
	if (r != COFFER_E_PRECONDITION || strcmp(coffer_error_message(), expect) != 0)
		fprintf(stderr, "\n  CreateKey of %s: %d \"%s\"; expected %d \"%s\"\n", name, r,
			coffer_error_message(), COFFER_E_PRECONDITION, expect);
	CU_ASSERT_EQUAL(r, COFFER_E_PRECONDITION);
	CU_ASSERT_STRING_EQUAL(coffer_error_message(), expect);
	snprintf(cap, sizeof(cap), "%s keys", name);
	skip(what, cap, ks->missing);
	return 0;
}

int
cf_test_can_import(coffer_client *adm, const char *what, enum coffer_key_type type)
{
	static const uint8_t material[64] = { 1 };
	const struct coffer_key_type_support *ks = support_of(type);
	const char *name = coffer_key_type_name(type), *msg, *why;
	char cap[64], prefix[96];
	int r;

	CU_ASSERT_PTR_NOT_NULL_FATAL(ks);
	if (ks->can_import)
		return 1;
	snprintf(prefix, sizeof(prefix), "this token cannot import %s keys: ", name);
	r = coffer_import_key(adm, "caps-refused", type, material, sizeof(material), 0, NULL);
	msg = coffer_error_message();
	why = strncmp(msg, prefix, strlen(prefix)) == 0 ? msg + strlen(prefix) : "";
	if (r != COFFER_E_PRECONDITION || !stated(ks, why))
		fprintf(stderr, "\n  ImportKey of %s: %d \"%s\"; expected %d \"%s<a reason "
			"GetTokenInfo states>\"\n", name, r, msg, COFFER_E_PRECONDITION, prefix);
	CU_ASSERT_EQUAL(r, COFFER_E_PRECONDITION);
	CU_ASSERT(stated(ks, why));
	snprintf(cap, sizeof(cap), "%s imports", name);
	skip(what, cap, why);
	return 0;
}

int
cf_test_refused_by_token(int r, const char *what, const char *capability)
{
	const char *msg = coffer_error_message();

	char refused[400], expect[600] = "";
	const char *why = NULL;
	size_t n = strlen(capability);

	if (r == COFFER_OK)
		return 1;
	snprintf(refused, sizeof(refused), "%s", msg);
	/* From now on GetTokenInfo lists it, with the reason the refusal gave. */
	CU_ASSERT_FATAL(admin != NULL && coffer_token_info(admin, &info) == COFFER_OK);
	for (size_t i = 0; i < info.n_unavailable && why == NULL; i++)
		if (strncmp(info.unavailable[i], capability, n) == 0 &&
		    strncmp(info.unavailable[i] + n, ": ", 2) == 0)
			why = info.unavailable[i] + n + 2;
	if (why != NULL)
		snprintf(expect, sizeof(expect), "this token cannot make %s: %s", capability, why);
	if (r != COFFER_E_PRECONDITION || strcmp(refused, expect) != 0)
		fprintf(stderr, "\n  %s: %d \"%s\"; expected %d \"%s\" (GetTokenInfo: \"%s: "
			"...\")\n", capability, r, refused, COFFER_E_PRECONDITION, expect,
			capability);
	CU_ASSERT_EQUAL(r, COFFER_E_PRECONDITION);
	CU_ASSERT_PTR_NOT_NULL(why);
	CU_ASSERT_STRING_EQUAL(refused, expect);
	skip(what, capability, why != NULL ? why : refused);
	return 0;
}

void
cf_test_caps_summary(void)
{
	printf("\nskipped by capability (%d):\n", nskips);
	for (int i = 0; i < nskips; i++)
		printf("  %s\n", skips[i]);
	if (nskips == 0)
		printf("  none: the token has every capability the cases need\n");
	fflush(stdout);
}
