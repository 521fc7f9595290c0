#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cf_buf.h"
#include "cf_hex.h"
#include "cf_log.h"
#include "cf_status.h"

#define CHAIN_FIELD ",\"chain\":\""
#define LINE_MAX_BYTES 2048
#define ALARM_EVERY_S 10

struct item {
	char *rest;              /* the record after its "{\"seq\":N," prefix */
	struct item *next;
};

struct audit {
	struct audit_cfg cfg;
	cf_p11_key *key;
	int fd;
	char path[4096];
	pthread_t writer;
	int writer_started;

	pthread_mutex_t mu;
	pthread_cond_t work;     /* records queued, or stop: wakes the writer */
	pthread_cond_t written;  /* a batch was written (or lost): wakes waiting calls */
	struct item *head, **tail;
	uint64_t queued;         /* records handed to audit_record */
	uint64_t done;           /* records the writer has finished with (written or lost) */
	uint64_t lost;
	int stop;
	int writing;             /* a batch is being written (by a call or the writer) */
	uint64_t unsealed;       /* records written since the last seal */
	uint64_t last_seal;      /* CLOCK_MONOTONIC ms */
	int broken;
	char reason[200];
	time_t last_alarm;

	/* The end of the trail as last written (writer thread; read under mu). */
	uint64_t seq;
	uint8_t chain[32];
	off_t size;
};

/* ---- formatting ---- */

/* The trail's hex is lower-case, exactly as written: another spelling of the
 * same bytes is an alteration too. */
static int
lower_hex(const char *s, uint8_t *out, size_t n)
{
	if (strspn(s, "0123456789abcdef") < 2 * n)
		return -1;
	return cf_hex_decode(s, out, n);
}

/* Append s as a JSON string (quoted; control characters escaped). */
static size_t
json_str(char *out, size_t left, const char *s)
{
	size_t n = 0;

	if (left < 3)
		return 0;
	out[n++] = '"';
	for (; s != NULL && *s && n + 8 < left; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			out[n++] = '\\';
			out[n++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			n += (size_t)snprintf(out + n, left - n, "\\u%04x", c);
		} else {
			out[n++] = (char)c;
		}
	}
	out[n++] = '"';
	out[n] = '\0';
	return n;
}

static void
now_iso(char out[32])
{
	struct timespec ts;
	struct tm tm;

	char sec[24];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(sec, sizeof(sec), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out, 32, "%.20s.%03dZ", sec, (int)(ts.tv_nsec / 1000000));
}

/* chain = SHA-256(prev ‖ body). */
static void
chain_next(const uint8_t prev[32], const char *body, size_t len, uint8_t out[32])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	uint8_t d[32];

	/* out may be prev: hash first, then overwrite. */
	memset(d, 0, sizeof(d));
	if (c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
	    EVP_DigestUpdate(c, prev, 32) == 1 && EVP_DigestUpdate(c, body, len) == 1)
		EVP_DigestFinal_ex(c, d, NULL);
	EVP_MD_CTX_free(c);
	memcpy(out, d, 32);
}

/* What a seal authenticates: the chain value before it and its number. */
static void
seal_input(const uint8_t chain[32], uint64_t seq, uint8_t out[40])
{
	memcpy(out, chain, 32);
	for (int i = 0; i < 8; i++)
		out[32 + i] = (uint8_t)(seq >> (56 - 8 * i));
}

/* Append one full line for `body` to buf, advancing seq and chain. */
static int
emit(cf_buf *buf, uint8_t chain[32], const char *body)
{
	char h[65];
	int r;

	chain_next(chain, body, strlen(body), chain);
	cf_hex_encode(chain, 32, h);
	if ((r = cf_buf_put(buf, body, strlen(body))) != CF_OK ||
	    (r = cf_buf_put(buf, CHAIN_FIELD, strlen(CHAIN_FIELD))) != CF_OK ||
	    (r = cf_buf_put(buf, h, 64)) != CF_OK || (r = cf_buf_put(buf, "\"}\n", 3)) != CF_OK)
		return r;
	return CF_OK;
}

/* ---- the writer ---- */

/* Write a batch (and a seal after it); the trail's end moves only if all
 * of it is written. Returns CF_OK or a status with a detail. */
static int
write_batch(audit *a, const struct item *batch, int seal, uint64_t *seq, uint8_t chain[32],
	    off_t *size)
{
	cf_buf *buf = cf_buf_new(4096), *mac = cf_buf_new(64);
	uint8_t c[32], in[40];
	uint64_t s = *seq;
	char body[LINE_MAX_BYTES], t[32], mh[129];
	int r = CF_OK;

	if (buf == NULL || mac == NULL) {
		r = cf_error(CF_E_NOMEM, "out of memory");
		goto out;
	}
	memcpy(c, chain, 32);
	for (; batch != NULL && r == CF_OK; batch = batch->next) {
		snprintf(body, sizeof(body), "{\"seq\":%llu,%s", (unsigned long long)++s, batch->rest);
		r = emit(buf, c, body);
	}
	/* The seal: the token's MAC over the chain so far. */
	seal_input(c, s + 1, in);
	if (r == CF_OK && seal && (r = cf_p11_mac(a->key, in, sizeof(in), mac)) == CF_OK) {
		now_iso(t);
		cf_hex_encode(cf_buf_peek(mac), cf_buf_len(mac), mh);
		snprintf(body, sizeof(body), "{\"seq\":%llu,\"time\":\"%s\",\"seal\":\"%s\"",
			 (unsigned long long)++s, t, mh);
		r = emit(buf, c, body);
	}
	if (r != CF_OK)
		goto out;
	if (cf_write_all(a->fd, cf_buf_peek(buf), cf_buf_len(buf)) != 0) {
		r = cf_error(CF_E_IO, "writing %s: %s", a->path, strerror(errno));
		/* No half line may stay for the next batch to follow. */
		if (ftruncate(a->fd, *size) != 0)
			cf_log_error("audit: cannot cut a partial write from %s: %s", a->path,
				     strerror(errno));
		goto out;
	}
	*seq = s;
	memcpy(chain, c, 32);
	*size += (off_t)cf_buf_len(buf);
out:
	cf_buf_free(buf);
	cf_buf_free(mac);
	return r;
}

static uint64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void
deadline_in(struct timespec *until, unsigned ms)
{
	clock_gettime(CLOCK_REALTIME, until);
	until->tv_sec += ms / 1000;
	until->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (until->tv_nsec >= 1000000000L) {
		until->tv_sec++;
		until->tv_nsec -= 1000000000L;
	}
}

/*
 * Records are written as they come, in batches; a seal (one MAC in the
 * token) follows once the writer has been idle for SEAL_IDLE_MS, and at least
 * every SEAL_EVERY_MS under load, so its cost is spread over many records.
 */
#define SEAL_IDLE_MS 20
#define SEAL_EVERY_MS 100

/* Write `batch` (taken off the queue by the caller, mu held and writing
 * set) with a seal if `seal`, outside the lock; then account for it. */
static void
write_locked(audit *a, struct item *batch, int seal, struct item *resume)
{
	struct item *next;
	uint64_t n = 0, seq = a->seq;
	uint8_t chain[32];
	off_t size = a->size;
	int r;

	memcpy(chain, a->chain, 32);
	pthread_mutex_unlock(&a->mu);
	r = write_batch(a, batch, seal, &seq, chain, &size);
	pthread_mutex_lock(&a->mu);
	for (struct item *i = batch; i != NULL && i != resume; i = next) {
		next = i->next;
		free(i->rest);
		free(i);
		n++;
	}
	a->done += n;
	a->writing = 0;
	if (r == CF_OK) {
		a->seq = seq;
		memcpy(a->chain, chain, 32);
		a->size = size;
		if (seal) {
			a->unsealed = 0;
			a->last_seal = mono_ms();
		} else {
			a->unsealed += n;
		}
		if (a->broken)
			cf_log_warn("audit: the trail is written again (%llu records lost)",
				    (unsigned long long)a->lost);
		a->broken = 0;
		a->lost = 0;
	} else {
		a->lost += n;
		if (!a->broken)
			cf_log_error("audit: the trail cannot be written: %s", cf_error_detail());
		a->broken = 1;
		snprintf(a->reason, sizeof(a->reason), "%s", cf_error_detail());
	}
	pthread_cond_broadcast(&a->written);
	/* The writer thread seals once things go quiet. */
	pthread_cond_signal(&a->work);
}

/* Take the whole queue and write it (mu held, nobody writing). */
static void
write_queue_locked(audit *a)
{
	struct item *batch = a->head;

	a->head = NULL;
	a->tail = &a->head;
	a->writing = 1;
	write_locked(a, batch, mono_ms() - a->last_seal >= SEAL_EVERY_MS, NULL);
}

/* The writer thread: records that no waiting call writes itself (fail
 * open), seals once idle, and retries a broken trail. */
static void *
writer_main(void *arg)
{
	audit *a = arg;

	pthread_mutex_lock(&a->mu);
	for (;;) {
		char lostrec[160], t[32];
		struct item resume = { lostrec, NULL };
		struct timespec until;

		if (a->writing) {
			pthread_cond_wait(&a->written, &a->mu);
		} else if (a->head != NULL) {
			write_queue_locked(a);
		} else if (a->unsealed > 0 && !a->broken) {
			/* Idle: seal what was written, unless more comes first. */
			deadline_in(&until, SEAL_IDLE_MS);
			if (!a->stop && pthread_cond_timedwait(&a->work, &a->mu, &until) == 0)
				continue;
			if (a->head != NULL || a->writing)
				continue;
			a->writing = 1;
			write_locked(a, NULL, 1, NULL);
		} else if (a->broken) {
			/* Broken: try again every second with a record of what
			 * was lost, so that a freed disk heals the trail. */
			if (a->stop)
				break;
			deadline_in(&until, 1000);
			if (pthread_cond_timedwait(&a->work, &a->mu, &until) == 0 || a->writing ||
			    a->head != NULL)
				continue;
			now_iso(t);
			snprintf(lostrec, sizeof(lostrec), "\"time\":\"%s\",\"event\":\"resumed\","
				 "\"lost\":%llu", t, (unsigned long long)a->lost);
			a->writing = 1;
			write_locked(a, &resume, 1, &resume);
		} else if (a->stop) {
			break;
		} else {
			pthread_cond_wait(&a->work, &a->mu);
		}
	}
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

/* ---- opening ---- */

/* Where the trail ends: the last line's seq and chain. A torn last line is
 * cut off; anything else unreadable is refused. */
static int
resume(audit *a)
{
	char buf[LINE_MAX_BYTES * 2 + 1], *last, *c;
	struct stat st;
	off_t from;
	ssize_t got;
	unsigned long long seq;

	if (fstat(a->fd, &st) != 0)
		return cf_error(CF_E_IO, "%s: %s", a->path, strerror(errno));
	a->size = st.st_size;
	if (a->size == 0)
		return CF_OK;
	from = a->size > (off_t)(sizeof(buf) - 1) ? a->size - (off_t)(sizeof(buf) - 1) : 0;
	if ((got = pread(a->fd, buf, (size_t)(a->size - from), from)) != a->size - from)
		return cf_error(CF_E_IO, "%s: %s", a->path, strerror(errno));
	buf[got] = '\0';
	if (buf[got - 1] != '\n') {
		char *nl = strrchr(buf, '\n');
		off_t keep = nl != NULL ? from + (nl - buf) + 1 : 0;

		cf_log_warn("audit: %s ended in a torn record (a crash while writing); cut off "
			    "%lld bytes", a->path, (long long)(a->size - keep));
		if (ftruncate(a->fd, keep) != 0)
			return cf_error(CF_E_IO, "%s: %s", a->path, strerror(errno));
		a->size = keep;
		if (keep == 0)
			return CF_OK;
		nl[1] = '\0';
		got = nl - buf + 1;
	}
	buf[got - 1] = '\0';
	last = strrchr(buf, '\n');
	last = last != NULL ? last + 1 : buf;
	c = strstr(last, CHAIN_FIELD);
	if (sscanf(last, "{\"seq\":%llu,", &seq) != 1 || c == NULL ||
	    strlen(c) != strlen(CHAIN_FIELD) + 64 + 2 ||
	    lower_hex(c + strlen(CHAIN_FIELD), a->chain, 32) != 0)
		return cf_error(CF_E_CONFIG, "the last record of %s is malformed; check it, or move "
				"the file aside to start a new trail", a->path);
	a->seq = seq;
	return CF_OK;
}

int
audit_open(const char *state_dir, cf_p11 *p11, const struct audit_cfg *cfg, audit **out)
{
	audit *a = calloc(1, sizeof(*a));
	int r, created = 0;

	if (a == NULL)
		return CF_E_NOMEM;
	a->cfg = *cfg;
	a->fd = -1;
	a->tail = &a->head;
	a->last_seal = mono_ms();
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->work, NULL);
	pthread_cond_init(&a->written, NULL);
	snprintf(a->path, sizeof(a->path), "%s/audit.log", state_dir);
	if ((r = cf_p11_key_ensure(p11, AUDIT_KEY, 1, CF_KEY_HMAC_SHA256, &a->key, &created)) !=
	    CF_OK)
		goto fail;
	if (created)
		cf_log_info("audit: created the audit key in the token");
	if ((a->fd = open(a->path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) < 0) {
		r = cf_error(CF_E_IO, "cannot open the audit trail %s: %s", a->path,
			     strerror(errno));
		goto fail;
	}
	if ((r = resume(a)) != CF_OK)
		goto fail;
	if (pthread_create(&a->writer, NULL, writer_main, a) != 0) {
		r = cf_error(CF_E_INTERNAL, "cannot start the audit writer");
		goto fail;
	}
	a->writer_started = 1;
	*out = a;
	return CF_OK;
fail:
	audit_close(a);
	return r;
}

void
audit_close(audit *a)
{
	if (a == NULL)
		return;
	if (a->writer_started) {
		pthread_mutex_lock(&a->mu);
		a->stop = 1;
		pthread_cond_signal(&a->work);
		pthread_mutex_unlock(&a->mu);
		pthread_join(a->writer, NULL);
	}
	while (a->head != NULL) {
		struct item *i = a->head;

		a->head = i->next;
		free(i->rest);
		free(i);
	}
	if (a->fd >= 0)
		close(a->fd);
	cf_p11_key_free(a->key);
	pthread_cond_destroy(&a->work);
	pthread_cond_destroy(&a->written);
	pthread_mutex_destroy(&a->mu);
	free(a);
}

/* ---- calls ---- */

int
audit_admit(audit *a)
{
	int r = CF_OK;
	time_t now;

	pthread_mutex_lock(&a->mu);
	if (a->broken && !a->cfg.fail_open) {
		r = cf_error(CF_E_UNAVAILABLE, "the audit trail cannot be written (%s), and this "
			     "daemon fails closed (audit.failure = closed); free the disk or fix "
			     "%s", a->reason, a->path);
	} else if (a->broken && (now = time(NULL)) - a->last_alarm >= ALARM_EVERY_S) {
		a->last_alarm = now;
		cf_log_error("ALARM: audit: the trail cannot be written (%s); calls go on "
			     "unrecorded (audit.failure = open)", a->reason);
	}
	pthread_mutex_unlock(&a->mu);
	return r;
}

int
audit_healthy(audit *a)
{
	int ok;

	pthread_mutex_lock(&a->mu);
	ok = !a->broken || a->cfg.fail_open;
	pthread_mutex_unlock(&a->mu);
	return ok;
}

void
audit_record(audit *a, const struct audit_event *ev)
{
	char rec[LINE_MAX_BYTES - 128], t[32];
	struct item *it;
	size_t n;
	uint64_t ticket;

	now_iso(t);
	n = (size_t)snprintf(rec, sizeof(rec), "\"time\":\"%s\",\"principal\":", t);
	n += json_str(rec + n, sizeof(rec) - n, ev->principal ? ev->principal : "");
	n += (size_t)snprintf(rec + n, sizeof(rec) - n, ",\"uid\":%u,\"pid\":%d,\"socket\":\"%s\","
			      "\"sealed\":%s,\"method\":", (unsigned)ev->uid, (int)ev->pid,
			      ev->admin ? "admin" : "service", ev->sealed ? "true" : "false");
	n += json_str(rec + n, sizeof(rec) - n, ev->method);
	n += (size_t)snprintf(rec + n, sizeof(rec) - n, ",\"key\":");
	n += json_str(rec + n, sizeof(rec) - n, ev->key ? ev->key : "");
	n += (size_t)snprintf(rec + n, sizeof(rec) - n, ",\"version\":%u,\"result\":\"%s\","
			      "\"request_id\":", ev->version, ev->result);
	json_str(rec + n, sizeof(rec) - n, ev->request_id ? ev->request_id : "");
	if ((it = calloc(1, sizeof(*it))) == NULL || (it->rest = strdup(rec)) == NULL) {
		free(it);
		pthread_mutex_lock(&a->mu);
		a->lost++;
		a->broken = 1;
		snprintf(a->reason, sizeof(a->reason), "out of memory");
		pthread_mutex_unlock(&a->mu);
		return;
	}
	pthread_mutex_lock(&a->mu);
	*a->tail = it;
	a->tail = &it->next;
	ticket = ++a->queued;
	if (a->cfg.fail_open) {
		pthread_cond_signal(&a->work);
	} else {
		struct timespec until;

		deadline_in(&until, a->cfg.max_wait_ms);
		/* Group commit: the first caller to find nobody writing writes
		 * every queued record, its own included; the others wait. */
		while (a->done < ticket) {
			if (!a->writing) {
				write_queue_locked(a);
				continue;
			}
			if (pthread_cond_timedwait(&a->written, &a->mu, &until) != 0) {
				if (!a->broken)
					cf_log_error("audit: a record waited more than %u ms",
						     a->cfg.max_wait_ms);
				a->broken = 1;
				snprintf(a->reason, sizeof(a->reason), "a record waited more than "
					 "%u ms to be written", a->cfg.max_wait_ms);
				break;
			}
		}
	}
	pthread_mutex_unlock(&a->mu);
}

/* ---- reading ---- */

void
audit_lines_free(char **lines, size_t count)
{
	for (size_t i = 0; lines != NULL && i < count; i++)
		free(lines[i]);
	free(lines);
}

int
audit_tail(audit *a, size_t n, char ***lines, size_t *count)
{
	size_t want = n * LINE_MAX_BYTES, len;
	struct stat st;
	off_t size, from;
	char *buf, *p, **out;
	size_t k = 0;

	/* The file as it is (someone may have cut it), not as last written. */
	if (fstat(a->fd, &st) != 0)
		return cf_error(CF_E_IO, "reading %s: %s", a->path, strerror(errno));
	size = st.st_size;
	from = size > (off_t)want ? size - (off_t)want : 0;
	len = (size_t)(size - from);
	if ((buf = malloc(len + 1)) == NULL || (out = calloc(n ? n : 1, sizeof(*out))) == NULL) {
		free(buf);
		return CF_E_NOMEM;
	}
	{
		ssize_t got = pread(a->fd, buf, len, from);

		if (got < 0) {
			free(buf);
			free(out);
			return cf_error(CF_E_IO, "reading %s: %s", a->path, strerror(errno));
		}
		len = (size_t)got;
	}
	buf[len] = '\0';
	/* Back from the end: the last n complete lines. */
	p = buf + len;
	while (k < n && p > buf) {
		char *start = p - 1;

		while (start > buf && start[-1] != '\n')
			start--;
		if (start == buf && from > 0)
			break;   /* a partial first line */
		p[-1] = '\0';
		if ((out[k] = strdup(start)) == NULL) {
			audit_lines_free(out, k);
			free(buf);
			return CF_E_NOMEM;
		}
		k++;
		p = start;
	}
	free(buf);
	for (size_t i = 0; i < k / 2; i++) {
		char *t = out[i];

		out[i] = out[k - 1 - i];
		out[k - 1 - i] = t;
	}
	*lines = out;
	*count = k;
	return CF_OK;
}

static int
bad(struct audit_report *rep, uint64_t line, const char *why)
{
	rep->ok = 0;
	rep->first_bad = line;
	snprintf(rep->reason, sizeof(rep->reason), "record %llu: %s", (unsigned long long)line,
		 why);
	return CF_OK;
}

int
audit_verify(audit *a, struct audit_report *rep)
{
	uint8_t prev[32], before[32], c[32], end_chain[32], in[40], mac[32];
	uint64_t end_seq, line = 0;
	off_t end, at = 0;
	FILE *f;
	char *buf = NULL;
	size_t cap = 0;
	ssize_t got;
	int r = CF_OK;

	memset(rep, 0, sizeof(*rep));
	memset(prev, 0, sizeof(prev));
	pthread_mutex_lock(&a->mu);
	end = a->size;
	end_seq = a->seq;
	memcpy(end_chain, a->chain, 32);
	pthread_mutex_unlock(&a->mu);
	if ((f = fopen(a->path, "r")) == NULL)
		return cf_error(CF_E_IO, "cannot read %s: %s", a->path, strerror(errno));
	rep->ok = 1;
	while (at < end && (got = getline(&buf, &cap, f)) > 0) {
		unsigned long long seq;
		char *ch, *seal;

		line++;
		at += got;
		rep->records = line;
		if (buf[got - 1] != '\n' || (ch = strstr(buf, CHAIN_FIELD)) == NULL ||
		    strlen(ch) != strlen(CHAIN_FIELD) + 64 + 3 ||
		    strcmp(ch + strlen(CHAIN_FIELD) + 64, "\"}\n") != 0 ||
		    lower_hex(ch + strlen(CHAIN_FIELD), c, 32) != 0) {
			bad(rep, line, "malformed: no chain value where it belongs");
			break;
		}
		if (sscanf(buf, "{\"seq\":%llu,", &seq) != 1 || seq != line) {
			bad(rep, line, "its sequence number is not its position: a record before "
			    "it was deleted or inserted, or this one was altered");
			break;
		}
		memcpy(before, prev, 32);
		chain_next(before, buf, (size_t)(ch - buf), prev);
		if (CRYPTO_memcmp(prev, c, 32) != 0) {
			bad(rep, line, "its chain value does not follow from its content and the "
			    "record before it: it was altered");
			break;
		}
		*ch = '\0';
		if ((seal = strstr(buf, ",\"seal\":\"")) == NULL)
			continue;
		/* The seal authenticates, in the token, the chain value before it. */
		if (strlen(seal + 9) != 64 + 1 || lower_hex(seal + 9, mac, 32) != 0) {
			bad(rep, line, "malformed seal");
			break;
		}
		seal_input(before, seq, in);
		r = cf_p11_mac_verify(a->key, in, sizeof(in), mac, sizeof(mac));
		if (r == CF_E_BAD_SIGNATURE) {
			r = CF_OK;
			bad(rep, line, "its seal does not verify with the token's audit key: the "
			    "records before it were rewritten");
			break;
		}
		if (r != CF_OK)
			break;
		rep->seals++;
	}
	free(buf);
	fclose(f);
	if (r == CF_OK && rep->ok && line < end_seq)
		bad(rep, line + 1, "missing: the trail ends before the last record the daemon "
		    "wrote (records were removed from its end)");
	else if (r == CF_OK && rep->ok && line == end_seq && CRYPTO_memcmp(prev, end_chain, 32))
		bad(rep, line, "the last record is not the one the daemon wrote");
	return r;
}
