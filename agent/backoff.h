/* Retry delays, and every random draw of the agent, from one generator.
 *
 * A fleet runs the same binary with the same configuration on every host:
 * anything "random" that is not seeded per process makes every agent draw
 * the same numbers, so that a fleet cut off together (a member dies, etcd
 * comes back) retries in lock-step: the herd that jitter exists to spread.
 * So the generator is seeded once per process from getrandom(), and again
 * in a forked child (a child drawing its parent's numbers is the same
 * herd), and every retry loop takes its delay here, with full jitter: a
 * uniform draw in [0, min(cap, base * 2^attempt)], which spreads a fleet's
 * retries over the whole window instead of its upper half.
 *
 * Not thread-safe: every caller runs on the agent's loop thread. */
#ifndef DA_BACKOFF_H
#define DA_BACKOFF_H

#include <stdbool.h>
#include <stdint.h>

/* One retry loop's state: embed it in the retrying object, zeroed but for
 * the two bounds (BACKOFF_INIT). */
struct backoff {
    uint32_t base_ms; /* the first window */
    uint32_t cap_ms;  /* the largest window */
    unsigned attempt; /* failures since the last success */
};

#define BACKOFF_INIT(base, cap) ((struct backoff){.base_ms = (base), .cap_ms = (cap)})

/* The delay before the next try after a failure: uniform in
 * [0, min(cap, base * 2^attempt)]; then counts the failure. */
uint64_t backoff_next(struct backoff *b);

/* A success: the next failure starts again from the base window. */
void backoff_reset(struct backoff *b);

/* Whether no failure has been counted since the last success (a caller logs
 * the first failure of a series and not the rest). */
bool backoff_is_fresh(const struct backoff *b);

/* The same draw without state: uniform in [0, min(cap, base * 2^attempt)]. */
uint64_t backoff_delay(uint64_t base_ms, uint64_t cap_ms, unsigned attempt);

/* A uniform draw in [0, n) (0 when n is 0), for choices that must differ
 * from one agent to the next, such as the etcd member to start on. */
uint64_t backoff_pick(uint64_t n);

#endif
