#include "backoff.h"

#include <stdint.h>
#include <sys/random.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* splitmix64: 64 bits of state, every value of it a full period of 2^64,
 * and good enough statistically for jitter and member choice (nothing here
 * is a secret). */
static uint64_t state;
static pid_t seeded_by; /* the process that seeded; 0: nobody yet */

static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void seed(void)
{
    uint64_t s = 0;

    /* GRND_NONBLOCK: early in boot the pool may not be ready, and an agent
     * must start anyway; the fallback still differs between processes and
     * between runs, which is all jitter needs. */
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) != (ssize_t)sizeof s) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = mix((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) ^
            mix((uint64_t)getpid() << 32 | (uint64_t)(uintptr_t)&ts);
    }
    state = s;
    seeded_by = getpid();
}

static uint64_t next(void)
{
    /* getpid() is checked on every draw, not only at the first: a forked
     * child must not repeat its parent's draws. Draws are rare (one per
     * retry or failover), so the system call costs nothing that matters. */
    if (seeded_by != getpid())
        seed();
    state += 0x9e3779b97f4a7c15ull;
    return mix(state);
}

uint64_t backoff_pick(uint64_t n)
{
    if (!n)
        return 0;
    /* Lemire's multiply-shift: the bias is below n / 2^64, far beneath
     * anything a fleet could notice. */
    return (uint64_t)(((unsigned __int128)next() * n) >> 64);
}

uint64_t backoff_delay(uint64_t base_ms, uint64_t cap_ms, unsigned attempt)
{
    uint64_t window = base_ms;

    while (attempt-- > 0 && window < cap_ms)
        window *= 2;
    if (window > cap_ms)
        window = cap_ms;
    return backoff_pick(window + 1);
}

uint64_t backoff_next(struct backoff *b)
{
    uint64_t ms = backoff_delay(b->base_ms, b->cap_ms, b->attempt);

    /* Past the cap the count only needs to say "not fresh". */
    if (b->attempt < 64)
        b->attempt++;
    return ms;
}

void backoff_reset(struct backoff *b)
{
    b->attempt = 0;
}

bool backoff_is_fresh(const struct backoff *b)
{
    return b->attempt == 0;
}
