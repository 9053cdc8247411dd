/* One line per message on stderr. Under journald (JOURNAL_STREAM names
 * our stderr), the line starts with the syslog priority in angle brackets
 * ("<6>"), which journald turns into the entry's level, and journald adds
 * the time. Anywhere else (a terminal, a file, a container's log) each
 * line starts with its UTC time to the millisecond and the level's name.
 * With log.format json, each line is one JSON object:
 * {"time":"...","level":"info","msg":"..."}. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

int log_level = LOG_LVL_INFO;
bool log_json;

/* syslog priorities: debug 7, info 6, warning 4, err 3. */
static const int priority[] = {7, 6, 4, 3};
static const char *const names[] = {"debug", "info", "warn", "error"};

/* systemd's rule: JOURNAL_STREAM is "DEV:INO" of the stream journald gave
 * us; it is ours only if stderr is still that stream (a child whose stderr
 * was redirected inherits the variable but not the stream). */
static bool under_journald(void)
{
    static int known = -1;
    const char *v;
    unsigned long long dev, ino;
    struct stat st;

    if (known >= 0)
        return known;
    v = getenv("JOURNAL_STREAM");
    known = v && sscanf(v, "%llu:%llu", &dev, &ino) == 2 && fstat(2, &st) == 0 &&
            (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
    return known;
}

/* JSON string contents of s: quotes, backslashes and control bytes escaped. */
static size_t json_escape(char *out, size_t cap, const char *s)
{
    size_t n = 0;

    for (; *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return n;
}

void log_write(int level, const char *fmt, ...)
{
    char line[2048], esc[4 * 2048], ts[40];
    struct timespec now;
    struct tm tm;
    va_list ap;

    if (level < LOG_LVL_DEBUG || level > LOG_LVL_ERROR)
        level = LOG_LVL_ERROR;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    /* One fprintf per line keeps lines whole when stderr is shared. */
    if (log_json) {
        json_escape(esc, sizeof esc, line);
        fprintf(stderr, "{\"time\":\"%s.%03ldZ\",\"level\":\"%s\",\"msg\":\"%s\"}\n", ts,
                now.tv_nsec / 1000000, names[level], esc);
    } else if (under_journald()) {
        fprintf(stderr, "<%d>%s\n", priority[level], line);
    } else {
        fprintf(stderr, "%s.%03ldZ %-5s %s\n", ts, now.tv_nsec / 1000000, names[level], line);
    }
}
