/* A listening unix stream socket, made the one way every unix listener of
 * the agent needs (the socket server, server.c; the xDS server,
 * xds_listen.c): the path checked against sun_path, its folder made, a
 * live socket refused, a stale one removed, a file that is no socket never
 * touched, the mode set before any client can connect, and the descriptor
 * non-blocking and close-on-exec. What happens to the connections is the
 * caller's (accept4, the fd reserve of fdlimit.h). */
#ifndef DA_UNIX_LISTEN_H
#define DA_UNIX_LISTEN_H

#include <stddef.h>
#include <sys/types.h>

struct unix_listener {
    int fd;    /* listening, non-blocking, close-on-exec; owned by the caller */
    dev_t dev; /* the socket file made for it, so that only that file */
    ino_t ino; /* is ever removed (unix_listen_unlink) */
};

/* Makes the folders above path (0755); refuses a path longer than sun_path
 * (-ENAMETOOLONG), a socket at path that something accepts connections on
 * (-EADDRINUSE, "another agent is listening on PATH") and a file at path
 * that is not a socket (-EEXIST: a misspelt path must not cost a regular
 * file); removes a stale socket. Returns 0 or a negative errno, with a
 * one-line reason in err (when errlen > 0). Safe to call again. */
int unix_listen_prepare(const char *path, char *err, size_t errlen);

/* unix_listen_prepare(), then binds path with mode (through the umask, so
 * that the file never has wider permissions, then chmod) and listens with
 * backlog. On success returns 0 and fills *out; on failure returns a
 * negative errno with err filled, leaving no descriptor open and no file
 * of its own at path. */
int unix_listen_open(const char *path, unsigned mode, int backlog, struct unix_listener *out,
                     char *err, size_t errlen);

/* Removes path if it is still the socket file dev/ino name: another agent
 * may have replaced it since. Call it before closing the descriptor, so
 * that no agent binds the path in between. */
void unix_listen_unlink(const char *path, dev_t dev, ino_t ino);

#endif
