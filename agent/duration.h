/* Durations as operators write them in the configuration: "500ms", "10s",
 * "2m", "1h" and combinations such as "1m30s". The agent keeps every
 * duration in whole milliseconds, so nothing finer than "ms" exists. */
#ifndef AGENT_DURATION_H
#define AGENT_DURATION_H

#include <stddef.h>
#include <stdint.h>

/* A buffer of this size always holds duration_format()'s output: the longest
 * form of UINT64_MAX milliseconds is 25 characters plus the NUL. */
#define DURATION_FORMAT_MAX 32

/* Parses s, a sequence of terms "<digits><unit>" with the units h, m, s and
 * ms, each used at most once and largest first ("1h30m", "1s500ms"). Leading
 * zeros in a term are allowed; signs, spaces, fractions, a bare number
 * without a unit, an empty string and a sum above UINT64_MAX milliseconds
 * are not. On success stores the total in *ms and returns 0; otherwise
 * returns -EINVAL and leaves *ms unchanged. s is borrowed. */
int duration_parse(const char *s, uint64_t *ms);

/* Writes ms into buf as a string that duration_parse() turns back into the
 * same value: the shortest of the forms that use each unit at most once,
 * largest first, with every term as large as it can be once the set of units
 * is chosen ("90s" rather than "1m30s", "1h1s" rather than "3601s"); on a
 * tie in length the form with fewer terms wins. Zero is "0s". Returns 0,
 * -EINVAL for a NULL buf, or -ENOSPC when len is too small (buf then holds
 * an empty string if len > 0). */
int duration_format(uint64_t ms, char *buf, size_t len);

#endif
