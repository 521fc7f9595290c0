/*
 * cf_hex.h — hex text for digests, MACs and secrets in files and headers,
 * and a write that finishes. Pure helpers shared by the daemon and clients.
 */
#ifndef COFFER_CF_HEX_H
#define COFFER_CF_HEX_H

#include <stddef.h>
#include <stdint.h>

/* in[0..n) as 2n lower-case hex digits, NUL-terminated (out: 2n + 1 bytes). */
void cf_hex_encode(const uint8_t *in, size_t n, char *out);
/* The value of one hex digit (either case), or -1. */
int cf_hex_digit(char c);
/* Exactly 2n hex digits (either case) of s into out[0..n); 0, or -1 (out
 * partly written) on a bad digit. */
int cf_hex_decode(const char *s, uint8_t *out, size_t n);

/* write() all of p[0..len), across short writes and EINTR; 0 or -1 (errno). */
int cf_write_all(int fd, const void *p, size_t len);

#endif
