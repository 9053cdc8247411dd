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
#include <unistd.h>

#include "error.h"
#include "unix_listen.h"

/* The checks and the socket are the socket server's too: unix_listen.c. */
int xlisten_check_path(const char *path, char *err, size_t errlen)
{
    return unix_listen_prepare(path, err, errlen);
}

int xlisten_unix(const char *path, unsigned mode, dev_t *dev, ino_t *ino, char *err, size_t errlen)
{
    struct unix_listener ul;
    int rc = unix_listen_open(path, mode, SOMAXCONN, &ul, err, errlen);

    if (rc < 0)
        return rc;
    *dev = ul.dev;
    *ino = ul.ino;
    return ul.fd;
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
