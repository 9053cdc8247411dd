#include "listen_fds.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* sd_listen_fds(3): passed descriptors start here. */
#define LISTEN_FDS_START 3
/* More than a socket unit of ours ever lists; a larger count is refused
 * as malformed rather than taken as licence to close arbitrary fds. */
#define LISTEN_FDS_MAX 16

static struct {
    bool read;
    int n; /* passed descriptors, or a negative errno */
    bool taken[LISTEN_FDS_MAX];
    char names[LISTEN_FDS_MAX][64]; /* "" when $LISTEN_FDNAMES gave none */
} L;

/* A decimal number that is all of s, within [lo, hi]; -1 otherwise. */
static long parse_num(const char *s, long lo, long hi)
{
    char *end;
    long v;

    if (!s || !*s)
        return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    return v;
}

static int read_env(void)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    const char *names = getenv("LISTEN_FDNAMES");
    long p, n;

    if (!pid || !fds)
        return 0;
    p = parse_num(pid, 1, 0x7fffffff);
    if (p < 0)
        return -EINVAL;
    /* Variables meant for a parent of ours (a shell in between) are not
     * ours to act on, nor to remove. */
    if (p != (long)getpid())
        return 0;
    n = parse_num(fds, 0, LISTEN_FDS_MAX);
    if (n < 0)
        return -EINVAL;
    for (long i = 0; names && i < n; i++) {
        const char *colon = strchr(names, ':');
        size_t len = colon ? (size_t)(colon - names) : strlen(names);
        if (len < sizeof L.names[0]) {
            memcpy(L.names[i], names, len);
            L.names[i][len] = '\0';
        }
        names = colon ? colon + 1 : NULL;
    }
    for (long i = 0; i < n; i++) {
        int fd = LISTEN_FDS_START + (int)i;
        int flags = fcntl(fd, F_GETFD);
        if (flags < 0)
            return -EBADF;
        fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    }
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return (int)n;
}

int listen_fds_init(void)
{
    if (!L.read) {
        L.read = true;
        L.n = read_env();
    }
    return L.n;
}

/* The path fd is bound to, if it is a listening unix stream socket. */
static bool unix_listener_path(int fd, char *path, size_t cap)
{
    struct sockaddr_un sa;
    socklen_t len = sizeof sa;
    int type = 0, listening = 0;
    socklen_t olen = sizeof type;

    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &olen) < 0 || type != SOCK_STREAM)
        return false;
    olen = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &olen) < 0 || !listening)
        return false;
    memset(&sa, 0, sizeof sa);
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0 || sa.sun_family != AF_UNIX)
        return false;
    len -= (socklen_t)offsetof(struct sockaddr_un, sun_path);
    if (len >= cap)
        len = (socklen_t)cap - 1;
    memcpy(path, sa.sun_path, len);
    path[len] = '\0';
    return true;
}

int listen_fds_take(const char *name, const char *path)
{
    char bound[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
    int pick = -1;

    if (listen_fds_init() <= 0)
        return -ENOENT;
    /* The bound path first: one socket unit names all its sockets alike
     * (FileDescriptorName= is per unit), so a name alone may not tell
     * agent.sock from xds.sock. */
    for (int i = 0; i < L.n && pick < 0; i++)
        if (!L.taken[i] && path && unix_listener_path(LISTEN_FDS_START + i, bound, sizeof bound) &&
            !strcmp(bound, path))
            pick = i;
    /* A name counts only when it is one socket's alone. */
    int named = -1, n_named = 0;
    for (int i = 0; i < L.n && name; i++)
        if (!strcmp(L.names[i], name)) {
            named = i;
            n_named++;
        }
    if (pick < 0 && n_named == 1 && !L.taken[named])
        pick = named;
    if (pick < 0)
        return -ENOENT;
    int fd = LISTEN_FDS_START + pick;
    L.taken[pick] = true;
    if (!unix_listener_path(fd, bound, sizeof bound)) {
        close(fd);
        return -ENOTSOCK;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0)
        fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    return fd;
}

int listen_fds_close_rest(void)
{
    int closed = 0;

    for (int i = 0; i < listen_fds_init(); i++)
        if (!L.taken[i]) {
            L.taken[i] = true;
            close(LISTEN_FDS_START + i);
            closed++;
        }
    return closed;
}
