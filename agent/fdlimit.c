/* The descriptor limit and the reserve kept from clients; see fdlimit.h. */
#include "fdlimit.h"

#include <sys/resource.h>

long fdlimit_raise(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    return fdlimit_get();
}

long fdlimit_get(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    /* Linux caps RLIMIT_NOFILE at fs.nr_open, far below LONG_MAX. */
    return rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (rlim_t)0x7fffffff ? 0x7fffffff
                                                                            : (long)rl.rlim_cur;
}

bool fdlimit_client_ok(int fd)
{
    /* Read at every accept rather than once, so that a limit changed while
     * the agent runs (prlimit) holds at once. It costs one system call next
     * to the accept's own. */
    long limit = fdlimit_get();

    return limit < 0 || (long)fd < limit - FDLIMIT_RESERVE;
}
