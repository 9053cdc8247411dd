/* What every fuzz target shares: an invariant check that aborts (libFuzzer
 * then saves the input as a crash), and muting the daemon's log, which
 * would otherwise print a line for most malformed inputs and slow the run
 * to the speed of the terminal. */
#ifndef DA_FUZZ_H
#define DA_FUZZ_H

#include <stdio.h>
#include <stdlib.h>

#include "log.h"

/* Unlike assert(), never compiled out: a broken invariant is a finding. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Above LOG_LVL_ERROR: nothing is printed. FUZZ_LOG=1 in the environment
 * keeps the log, to see what the agent says about a crashing input. */
static inline void fuzz_quiet_log(void)
{
    const char *v = getenv("FUZZ_LOG");

    if (!v || !*v || *v == '0')
        log_level = LOG_LVL_ERROR + 1;
    else
        log_level = LOG_LVL_DEBUG;
}

#endif
