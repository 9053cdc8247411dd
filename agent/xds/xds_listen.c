/* The xDS server's listening sockets, made by the agent itself: gRPC is
 * started only when a client talks (xds_grpc.c), so the sockets, their
 * checks and their permissions cannot wait for it. See xds_listen.h. */
#include "xds_listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "error.h"

static int mkdirs(const char *path)
{
    char buf[sizeof(((struct sockaddr_un *)0)->sun_path)];
    size_t len = strlen(path);

    if (len >= sizeof buf)
        return -ENAMETOOLONG;
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    return 0;
}

/* Refuses a live socket or a file that is no socket; removes a stale
 * socket. */
int xlisten_check_path(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    struct stat st;
    int fd, rc;

    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "xds.path %s is too long for a unix socket", path);
        return -ENAMETOOLONG;
    }
    if ((rc = mkdirs(path)) < 0) {
        snprintf(err, errlen, "cannot create the folder of %s: %s", path, strerror(-rc));
        return rc;
    }
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket; not removing it", path);
        return -EEXIST;
    }
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
        close(fd);
        if (rc == 0) {
            snprintf(err, errlen, "another agent is listening on %s", path);
            return -EADDRINUSE;
        }
    }
    if (unlink(path) < 0 && errno != ENOENT) {
        snprintf(err, errlen, "cannot remove the stale socket %s: %s", path, strerror(errno));
        return -errno;
    }
    return 0;
}

int xlisten_unix(const char *path, unsigned mode, dev_t *dev, ino_t *ino, char *err,
                 size_t errlen)
{
    struct sockaddr_un sa;
    struct stat st;
    mode_t old;
    int fd, rc;

    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1); /* xlisten_check_path() checked the length */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot create the xDS socket: %s", strerror(-rc));
        return rc;
    }
    /* The umask gives the socket its mode from the start, so no client
     * connects through wider permissions. */
    old = umask(~mode & 0777);
    rc = bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ? -errno : 0;
    umask(old);
    if (rc) {
        snprintf(err, errlen, "cannot listen on unix:%s: %s", path, strerror(-rc));
        close(fd);
        return rc;
    }
    if (chmod(path, mode) < 0 || lstat(path, &st) < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot set the mode of %s: %s", path, strerror(-rc));
        unlink(path);
        close(fd);
        return rc;
    }
    if (listen(fd, SOMAXCONN) < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot listen on unix:%s: %s", path, strerror(-rc));
        unlink(path); /* ours: made just now */
        close(fd);
        return rc;
    }
    *dev = st.st_dev;
    *ino = st.st_ino;
    return fd;
}

/* A listening socket on one resolved address: fd, or -errno. */
static int tcp_socket(const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1, rc;

    if (fd < 0)
        return -errno;
    /* SO_REUSEADDR as gRPC sets it; never SO_REUSEPORT: two agents must
     * not share a port. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, SOMAXCONN) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

int xlisten_tcp(const char *hostport, int *fds, int max, int *port, char *err, size_t errlen)
{
    const char *colon = strrchr(hostport, ':'), *h = hostport;
    char host[256];
    struct addrinfo hints, *res = NULL;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    size_t hlen = colon ? (size_t)(colon - hostport) : 0;
    int rc, last = 0, bound = 0;

    *port = 0;

    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    if (!colon || !hlen || hlen >= sizeof host) {
        snprintf(err, errlen, "bad xds.tcp %s", hostport);
        return DA_EINVAL;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if ((rc = getaddrinfo(host, colon + 1, &hints, &res)) != 0) {
        snprintf(err, errlen, "cannot resolve %s for xDS: %s", hostport, gai_strerror(rc));
        return -EADDRNOTAVAIL;
    }
    for (struct addrinfo *ai = res; ai && bound < max; ai = ai->ai_next) {
        int fd = tcp_socket(ai);
        if (fd < 0) {
            last = fd;
            continue;
        }
        if (!bound && getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
            *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                   : ((struct sockaddr_in *)&ss)->sin_port);
        fds[bound++] = fd;
    }
    freeaddrinfo(res);
    if (!bound) {
        snprintf(err, errlen, "cannot listen on %s for xDS (in use?): %s", hostport,
                 strerror(last ? -last : EADDRNOTAVAIL));
        return last == -EADDRINUSE || !last ? -EADDRINUSE : last;
    }
    return bound;
}
