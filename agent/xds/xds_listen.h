/* The xDS server's listening sockets (xds_listen.c): plain sockets made
 * by the agent, handed to gRPC only once a client talks (xds_grpc.c). */
#ifndef DA_XDS_LISTEN_H
#define DA_XDS_LISTEN_H

#include <stddef.h>
#include <sys/types.h>

/* unix_listen_prepare() (unix_listen.h): makes path's folders; refuses a
 * live socket or a file that is no socket there, and removes a stale
 * socket. 0 or -errno, with err filled. */
int xlisten_check_path(const char *path, char *err, size_t errlen);

/* unix_listen_open(): binds and listens (non-blocking) on the unix socket
 * path with mode, set through the umask so that it never has wider
 * permissions. Returns the fd,
 * with the socket file's device and inode (so that only our own file is
 * removed later), or -errno with err filled. */
int xlisten_unix(const char *path, unsigned mode, dev_t *dev, ino_t *ino, char *err, size_t errlen);

/* "127.0.0.1:PORT", "[::1]:PORT" or "localhost:PORT" (config.c checked it):
 * listens (non-blocking) on every address it stands for, up to max, as gRPC
 * did; at least one must work. Returns how many fds it put in fds, with the
 * port bound (useful with port 0), or a DA_E* / -errno code with err filled. */
int xlisten_tcp(const char *hostport, int *fds, int max, int *port, char *err, size_t errlen);

#endif
