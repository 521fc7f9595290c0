/*
 * cf_session.h — the crypto of Coffer's sealed sessions, shared by the daemon
 * and libcoffer: X25519 ephemerals, the handshake transcript, the HKDF key
 * schedule and AES-256-GCM records. proto/session-protocol.md is the
 * specification; this module is its only implementation in C.
 *
 * No I/O, no protobuf, no token: the daemon signs the transcript in its
 * token, the caller verifies with cf_session_verify_server. Every derived
 * value lives in cf_secret buffers and is wiped when freed. Objects are not
 * thread-safe; a cf_session_keys may be used by several threads at once for
 * seal/open (they only read it).
 */
#ifndef COFFER_CF_SESSION_H
#define COFFER_CF_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "cf_buf.h"
#include "cf_secret.h"

#define CF_SESSION_VERSION 1u
#define CF_SESSION_ID_LEN 16
#define CF_SESSION_RANDOM_LEN 32
#define CF_SESSION_PUB_LEN 32          /* X25519 */
#define CF_SESSION_TH_LEN 32           /* SHA-256 */
#define CF_SESSION_KEY_LEN 32
#define CF_SESSION_IV_LEN 12
#define CF_SESSION_TAG_LEN 16
#define CF_SESSION_MAX_PRINCIPAL 128
#define CF_SESSION_MAX_METHOD 128
#define CF_SESSION_MAX_SPKI 512
#define CF_SESSION_FPR_LEN (7 + 64)    /* "sha256:" + hex, without the NUL */

enum cf_session_dir { CF_SESSION_C2S = 1, CF_SESSION_S2C = 2 };

/* Everything the transcript covers, in protocol order. */
struct cf_session_hello {
	uint32_t version;
	uint8_t client_pub[CF_SESSION_PUB_LEN];
	uint8_t client_random[CF_SESSION_RANDOM_LEN];
	const char *principal;                  /* borrowed; NULL or "" = none */
	uint8_t session_id[CF_SESSION_ID_LEN];
	uint8_t server_pub[CF_SESSION_PUB_LEN];
	uint8_t server_random[CF_SESSION_RANDOM_LEN];
	uint32_t uid, gid;
	const uint8_t *spki;                    /* borrowed: identity SubjectPublicKeyInfo */
	size_t spki_len;
	uint32_t lifetime;
	uint64_t max_records, max_bytes;
};

/* Milliseconds since boot, suspended time included (CLOCK_BOOTTIME): the
 * clock of session lifetimes on both sides. */
int64_t cf_session_now(void);

/* ---- ephemeral X25519 ---- */

typedef struct cf_session_eph cf_session_eph;

/* A new key pair; `fixed_priv` (32 bytes) only for test vectors, else NULL. */
int cf_session_eph_new(const uint8_t *fixed_priv, cf_session_eph **out);
void cf_session_eph_pub(const cf_session_eph *e, uint8_t pub[CF_SESSION_PUB_LEN]);
void cf_session_eph_free(cf_session_eph *e);   /* accepts NULL */

/* ---- transcript ---- */

/* Append the transcript T to `out`. CF_E_INVALID_ARG for a principal or
 * SPKI above its limit. */
int cf_session_transcript(const struct cf_session_hello *h, cf_buf *out);
/* TH = SHA-256(T). */
int cf_session_transcript_hash(const struct cf_session_hello *h,
			       uint8_t th[CF_SESSION_TH_LEN]);
/* Append the message the identity key signs: label, NUL, TH. */
int cf_session_signed_message(const uint8_t th[CF_SESSION_TH_LEN], cf_buf *out);
/* CF_OK if `sig` (DER ECDSA/SHA-256) by `spki` verifies over the signed
 * message of `th`; CF_E_BAD_SIGNATURE otherwise (also for a malformed key or
 * signature). */
int cf_session_verify_server(const uint8_t *spki, size_t spki_len,
			     const uint8_t th[CF_SESSION_TH_LEN], const uint8_t *sig,
			     size_t siglen);
/* A parsed identity key to verify handshakes against (parsing an SPKI costs
 * more in OpenSSL 3 than the verification itself: do it once per pin). */
typedef struct cf_session_pin cf_session_pin;
/* CF_E_INVALID_ARG unless spki is an EC P-256 SubjectPublicKeyInfo. */
int cf_session_pin_new(const uint8_t *spki, size_t spki_len, cf_session_pin **out);
void cf_session_pin_free(cf_session_pin *pin);   /* accepts NULL */
int cf_session_verify_pinned(const cf_session_pin *pin, const uint8_t th[CF_SESSION_TH_LEN],
			     const uint8_t *sig, size_t siglen);
/* "sha256:<hex>" of an SPKI into out (at least CF_SESSION_FPR_LEN + 1). */
int cf_session_fingerprint(const uint8_t *spki, size_t spki_len, char *out, size_t outlen);
/* The PEM ("PUBLIC KEY") of an SPKI, made from its DER: a new NUL-terminated
 * string in *pem (free()). CF_E_INVALID_ARG unless der is exactly one
 * SubjectPublicKeyInfo. */
int cf_spki_pem(const uint8_t *der, size_t len, char **pem);

/* ---- keys and records ---- */

typedef struct cf_session_keys cf_session_keys;

/* Derive both directions' keys and IVs from X25519(mine, peer_pub) and TH.
 * CF_E_INVALID_ARG for an all-zero shared secret (a low-order peer key). */
int cf_session_keys_derive(const cf_session_eph *mine, const uint8_t peer_pub[CF_SESSION_PUB_LEN],
			   const uint8_t th[CF_SESSION_TH_LEN],
			   const uint8_t session_id[CF_SESSION_ID_LEN], cf_session_keys **out);
void cf_session_keys_free(cf_session_keys *k);   /* wipes; accepts NULL */
/* The derived values, borrowed (test vectors only; never log them). */
const uint8_t *cf_session_keys_peek(const cf_session_keys *k, enum cf_session_dir d,
				    const uint8_t **iv);
/* The X25519 shared secret of mine and peer_pub (test vectors only). */
int cf_session_shared(const cf_session_eph *mine, const uint8_t peer_pub[CF_SESSION_PUB_LEN],
		      cf_secret **out);

/* The record's additional data and nonce (exposed for test vectors). */
int cf_session_aad(const uint8_t session_id[CF_SESSION_ID_LEN], enum cf_session_dir d,
		   uint64_t seq, const char *method, cf_buf *out);
void cf_session_nonce(const cf_session_keys *k, enum cf_session_dir d, uint64_t seq,
		      uint8_t nonce[CF_SESSION_IV_LEN]);

/* Append AES-256-GCM(pt) || tag to `out`. method: the inner method path,
 * 1..CF_SESSION_MAX_METHOD bytes. */
int cf_session_seal(const cf_session_keys *k, enum cf_session_dir d, uint64_t seq,
		    const char *method, const uint8_t *pt, size_t ptlen, cf_buf *out);
/* The same into out[0 .. ptlen + CF_SESSION_TAG_LEN): the record straight
 * into the buffer that carries it, with no copy. out may be pt (in place). */
int cf_session_seal_to(const cf_session_keys *k, enum cf_session_dir d, uint64_t seq,
		       const char *method, const uint8_t *pt, size_t ptlen, uint8_t *out);
/* Open a record into a new buffer *pt of *ptlen bytes (malloc'ed; release
 * it with cf_session_plain_free, which wipes). Records live for one call,
 * so they are not given an mlock()ed cf_secret: mapping and unmapping one
 * per call costs more than the rest of the call (and munmap interrupts
 * every core). CF_E_DECRYPT if the record fails authentication (tampered,
 * truncated, other direction, other session, other sequence number or
 * method); nothing of the plaintext is released then. */
int cf_session_open(const cf_session_keys *k, enum cf_session_dir d, uint64_t seq,
		    const char *method, const uint8_t *rec, size_t reclen, uint8_t **pt,
		    size_t *ptlen);
/* The same in place: on success rec[0 .. *ptlen) holds the plaintext, which
 * the caller wipes; on failure nothing of it is left there. */
int cf_session_open_in_place(const cf_session_keys *k, enum cf_session_dir d, uint64_t seq,
			     const char *method, uint8_t *rec, size_t reclen, size_t *ptlen);
void cf_session_plain_free(uint8_t *pt, size_t len);   /* wipes; accepts NULL */

#endif
