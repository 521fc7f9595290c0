/*
 * cf_log.h — logging for programs (cofferd, cofferctl, tools).
 *
 * Libraries never log: they return a status and set cf_error(). Programs log
 * once, at their boundary, with the function and the decoded error. Never
 * pass secret material to these functions. Thread-safe (one write(2) per line).
 */
#ifndef COFFER_CF_LOG_H
#define COFFER_CF_LOG_H

enum cf_log_level { CF_LOG_ERROR = 0, CF_LOG_WARN, CF_LOG_INFO, CF_LOG_DEBUG };

/* Set the program name and the most verbose level printed; lines go to
 * stderr. Call once at start-up before other threads exist. */
void cf_log_init(const char *progname, enum cf_log_level max_level);

void cf_log(enum cf_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define cf_log_error(...) cf_log(CF_LOG_ERROR, __VA_ARGS__)
#define cf_log_warn(...)  cf_log(CF_LOG_WARN, __VA_ARGS__)
#define cf_log_info(...)  cf_log(CF_LOG_INFO, __VA_ARGS__)
#define cf_log_debug(...) cf_log(CF_LOG_DEBUG, __VA_ARGS__)

#endif
