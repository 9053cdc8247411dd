#include "log.h"

#include <stdarg.h>
#include <stdio.h>

int log_level = LOG_LVL_INFO;

/* syslog priorities: debug 7, info 6, warning 4, err 3. */
static const int priority[] = {7, 6, 4, 3};

void log_write(int level, const char *fmt, ...)
{
    char line[2048];
    va_list ap;

    if (level < LOG_LVL_DEBUG || level > LOG_LVL_ERROR)
        level = LOG_LVL_ERROR;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* One fprintf per line keeps lines whole when stderr is shared. */
    fprintf(stderr, "<%d>%s\n", priority[level], line);
}
