/*
 * fuzz_config.c — the cofferd configuration file (daemon/config.c, its own
 * INI reader), from memory: defaults, the file, then the consistency checks
 * cofferd runs before it starts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cf_status.h"
#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct cofferd_config c;   /* ~20 KiB: not on the stack */
	char *text = malloc(size + 1);

	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	config_defaults(&c);
	if (config_load_string(&c, "fuzz.conf", text) == CF_OK)
		(void)config_finish(&c);
	free(text);
	cf_error_clear();
	return 0;
}
