#include "cf_test_session.h"

#include <string.h>

#include "cf_status.h"

int
cf_test_session_up(session_mgr *sm, uint32_t uid, uint32_t gid, uint8_t id[CF_SESSION_ID_LEN],
		   cf_session_keys **keys)
{
	struct cf_session_hello h;
	uint8_t th[CF_SESSION_TH_LEN];
	cf_session_eph *e = NULL;
	cf_buf *sig = cf_buf_new(CF_P11_MAX_SIG);
	int r;

	*keys = NULL;
	memset(&h, 0, sizeof(h));
	h.version = CF_SESSION_VERSION;
	if (sig == NULL)
		return cf_nomem();
	if ((r = cf_session_eph_new(NULL, &e)) != CF_OK)
		goto out;
	cf_session_eph_pub(e, h.client_pub);
	memset(h.client_random, 0x42, sizeof(h.client_random));
	if ((r = session_handshake(sm, uid, gid, &h, sig)) == CF_OK &&
	    (r = cf_session_transcript_hash(&h, th)) == CF_OK &&
	    (r = cf_session_keys_derive(e, h.server_pub, th, h.session_id, keys)) == CF_OK)
		memcpy(id, h.session_id, CF_SESSION_ID_LEN);
out:
	cf_session_eph_free(e);
	cf_buf_free(sig);
	return r;
}
