/*
 * p11_persist_child — opens a key by name and version in a fresh process and
 * uses it, proving keys are found again after a restart.
 * usage: p11_persist_child MODULE URI PIN_FILE NAME VERSION TYPE OUT
 * Writes a signature, a MAC, or IV || ciphertext of the test message to OUT.
 * Exit: 0 ok, 2 key not found, 3 wrong type, 1 other errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_p11.h"
#include "cf_status.h"

static const uint8_t msg[] = "Coffer keeps keys inside the token.";

int
main(int argc, char **argv)
{
	struct cf_p11_config cfg = { 0 };
	cf_p11 *p = NULL;
	cf_p11_key *k = NULL;
	cf_buf *out = cf_buf_new(4096);
	enum cf_key_type want;
	uint8_t iv[CF_GCM_IV_LEN];
	FILE *fp;
	int r, rc = 1;

	if (argc != 8 || out == NULL || cf_key_type_parse(argv[6], &want) != CF_OK) {
		fprintf(stderr, "usage: %s MODULE URI PIN_FILE NAME VERSION TYPE OUT\n", argv[0]);
		return 1;
	}
	cfg.module_path = argv[1];
	cfg.token_uri = argv[2];
	cfg.pin_file = argv[3];
	if ((r = cf_p11_open(&cfg, &p)) != CF_OK)
		goto fail;
	if ((r = cf_p11_key_open(p, argv[4], (uint32_t)strtoul(argv[5], NULL, 10), &k)) != CF_OK) {
		rc = r == CF_E_NOT_FOUND ? 2 : 1;
		goto fail;
	}
	if (cf_p11_key_type(k) != want) {
		fprintf(stderr, "key type is %s, expected %s\n", cf_key_type_name(cf_p11_key_type(k)),
			argv[6]);
		rc = 3;
		goto out;
	}
	if (cf_key_type_is_asymmetric(want))
		r = cf_p11_sign(k, NULL, msg, sizeof(msg), out);
	else if (cf_key_type_is_hmac(want))
		r = cf_p11_mac(k, msg, sizeof(msg), out);
	else if ((r = cf_p11_gcm_encrypt(k, NULL, 0, msg, sizeof(msg), iv, out)) == CF_OK) {
		cf_buf *both = cf_buf_new(4096);

		cf_buf_put(both, iv, sizeof(iv));
		cf_buf_put(both, cf_buf_peek(out), cf_buf_len(out));
		cf_buf_free(out);
		out = both;
	}
	if (r != CF_OK)
		goto fail;
	if ((fp = fopen(argv[7], "wb")) == NULL ||
	    fwrite(cf_buf_peek(out), 1, cf_buf_len(out), fp) != cf_buf_len(out) || fclose(fp) != 0) {
		perror(argv[7]);
		goto out;
	}
	rc = 0;
	goto out;
fail:
	fprintf(stderr, "p11_persist_child: %s: %s\n", cf_status_name(r), cf_error_detail());
out:
	cf_p11_key_free(k);
	cf_p11_close(p);
	cf_buf_free(out);
	return rc;
}
