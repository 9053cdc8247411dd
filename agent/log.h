/* The daemon's log: one line per message on stderr, prefixed with the syslog
 * priority in angle brackets ("<6>") that journald turns into a level. */
#ifndef DA_LOG_H
#define DA_LOG_H

#include <stdbool.h>

enum { LOG_LVL_DEBUG = 0, LOG_LVL_INFO = 1, LOG_LVL_WARN = 2, LOG_LVL_ERROR = 3 };

extern int log_level;
/* log.format: json writes each line as one JSON object. */
extern bool log_json;

void log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The level is tested before the arguments are evaluated, so a debug line
 * that formats something costly costs nothing when debug is off. */
#define LOG(level, ...)                                                                            \
    do {                                                                                           \
        if ((level) >= log_level)                                                                  \
            log_write((level), __VA_ARGS__);                                                       \
    } while (0)
#define log_debug(...) LOG(LOG_LVL_DEBUG, __VA_ARGS__)
#define log_info(...) LOG(LOG_LVL_INFO, __VA_ARGS__)
#define log_warn(...) LOG(LOG_LVL_WARN, __VA_ARGS__)
#define log_error(...) LOG(LOG_LVL_ERROR, __VA_ARGS__)

#endif
