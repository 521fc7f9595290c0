#include "cf_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *cf_log_prog = "coffer";
/* Atomic: cofferd changes it on SIGHUP while its workers log. */
static atomic_int cf_log_max = CF_LOG_INFO;

void
cf_log_init(const char *progname, enum cf_log_level max_level)
{
	if (progname != NULL)
		cf_log_prog = progname;
	atomic_store_explicit(&cf_log_max, (int)max_level, memory_order_relaxed);
}

void
cf_log(enum cf_log_level level, const char *fmt, ...)
{
	static const char *names[] = { "error", "warn", "info", "debug" };
	char line[1024];
	struct timespec ts;
	struct tm tm;
	va_list ap;
	int n, m;

	if ((int)level > atomic_load_explicit(&cf_log_max, memory_order_relaxed))
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%d] %s: ",
		     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
		     tm.tm_sec, ts.tv_nsec / 1000000, cf_log_prog, (int)getpid(), names[level]);
	if (n < 0 || (size_t)n >= sizeof(line))
		return;
	va_start(ap, fmt);
	m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		return;
	n = (int)strlen(line);
	/* Control characters could forge log lines; replace them. */
	for (int i = 0; i < n; i++)
		if ((unsigned char)line[i] < 0x20)
			line[i] = '?';
	line[n++] = '\n';
	(void)!write(STDERR_FILENO, line, (size_t)n);
}
