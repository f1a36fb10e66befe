/* log.h — the daemon's structured log: one logfmt line per event on stderr,
 * `ts=... level=... node=... msg="..." key=value ...`, so a person can read
 * it and a machine can parse it. */
#ifndef CAPDSM_NODE_LOG_H
#define CAPDSM_NODE_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/* Sets the threshold and the node id printed on every line. */
void log_setup(enum log_level min, unsigned node_id);
/* Parses "debug|info|warn|error"; returns 0 or -EINVAL. */
int log_level_parse(const char *s, enum log_level *out);
/* `msg` is a short fixed text; `fmt` adds key=value pairs (may be NULL). */
void log_event(enum log_level lvl, const char *msg, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* The threshold, for log_debug: its arguments are not even evaluated
 * below it (debug lines sit on the fault path). */
extern enum log_level log_threshold;

#define log_debug(...)                                                        \
	do {                                                                      \
		if (log_threshold <= LOG_DEBUG)                                       \
			log_event(LOG_DEBUG, __VA_ARGS__);                                \
	} while (0)
#define log_info(...) log_event(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_event(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_event(LOG_ERROR, __VA_ARGS__)

#endif
