/* Durations as operators write them in the configuration: "500ms", "10s",
 * "2m", "1h" and combinations such as "1m30s". The agent keeps every
 * duration in whole milliseconds, so nothing finer than "ms" exists. */
#ifndef AGENT_DURATION_H
#define AGENT_DURATION_H

#include <stddef.h>
#include <stdint.h>

/* Parses s, a sequence of terms "<digits><unit>" with the units h, m, s and
 * ms, each used at most once and largest first ("1h30m", "1s500ms"). Leading
 * zeros in a term are allowed; signs, spaces, fractions, a bare number
 * without a unit, an empty string and a sum above UINT64_MAX milliseconds
 * are not. On success stores the total in *ms and returns 0; otherwise
 * returns -EINVAL and leaves *ms unchanged. s is borrowed. */
int duration_parse(const char *s, uint64_t *ms);

#endif
