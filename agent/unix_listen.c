/* Listening unix sockets; see unix_listen.h. */
#include "unix_listen.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "mkdir_p.h"

static int set_err(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int set_err(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

static int make_addr(const char *path, struct sockaddr_un *sa, char *err, size_t errlen)
{
    size_t len = strlen(path);

    if (len >= sizeof sa->sun_path)
        return set_err(err, errlen, -ENAMETOOLONG, "socket path %s is longer than %zu bytes", path,
                       sizeof sa->sun_path - 1);
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    memcpy(sa->sun_path, path, len + 1);
    return 0;
}

/* mkdir -p of path's folder. */
static int make_folder(const char *path, char *err, size_t errlen)
{
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
    char *slash;
    int r;

    snprintf(dir, sizeof dir, "%s", path); /* make_addr() checked the length */
    slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return 0;
    *slash = '\0';
    if ((r = mkdir_p(dir, 0755)) < 0)
        return set_err(err, errlen, r, "cannot create folder %s: %s", dir, strerror(-r));
    return 0;
}

/* Leaves path free to bind, or says why it is not. */
static int clear_stale(const char *path, const struct sockaddr_un *sa, char *err, size_t errlen)
{
    struct stat st;
    int fd, r, e;

    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        return set_err(err, errlen, -errno, "cannot stat %s: %s", path, strerror(errno));
    }
    if (!S_ISSOCK(st.st_mode))
        return set_err(err, errlen, -EEXIST, "%s exists and is not a socket", path);

    /* Non-blocking, so a live agent whose backlog is full (EAGAIN) does not
     * hang us; it counts as live. */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return set_err(err, errlen, -errno, "socket: %s", strerror(errno));
    r = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
    e = errno;
    close(fd);
    if (r == 0 || e == EAGAIN || e == EINPROGRESS)
        return set_err(err, errlen, -EADDRINUSE, "another agent is listening on %s", path);
    if (e == ENOENT)
        return 0;
    if (e != ECONNREFUSED)
        return set_err(err, errlen, -e, "cannot probe %s: %s", path, strerror(e));
    if (unlink(path) != 0 && errno != ENOENT)
        return set_err(err, errlen, -errno, "cannot remove stale socket %s: %s", path,
                       strerror(errno));
    return 0;
}

int unix_listen_prepare(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    int r;

    if (err && errlen > 0)
        err[0] = '\0';
    if ((r = make_addr(path, &sa, err, errlen)) < 0 || (r = make_folder(path, err, errlen)) < 0)
        return r;
    return clear_stale(path, &sa, err, errlen);
}

int unix_listen_open(const char *path, unsigned mode, int backlog, struct unix_listener *out,
                     char *err, size_t errlen)
{
    struct sockaddr_un sa;
    struct stat st;
    mode_t old;
    int fd, r;

    /* Callers never pass NULL; the check tells GCC so under -fsanitize. */
    if (!path || !out)
        return -EINVAL;
    if ((r = unix_listen_prepare(path, err, errlen)) < 0)
        return r;
    make_addr(path, &sa, NULL, 0); /* cannot fail: prepare checked the length */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return set_err(err, errlen, -errno, "socket: %s", strerror(errno));
    /* The umask gives the file its mode from the start, so that no client
     * connects through wider permissions before the chmod. The umask is
     * the process's, but every file of the agent is made on this thread. */
    old = umask(~mode & 0777);
    r = bind(fd, (const struct sockaddr *)&sa, sizeof sa) != 0 ? -errno : 0;
    umask(old);
    if (r) {
        close(fd);
        return set_err(err, errlen, r, "cannot bind %s: %s", path, strerror(-r));
    }
    /* fchmod() on a socket does not reach the file bind() made. */
    if (chmod(path, mode) != 0 || lstat(path, &st) != 0) {
        r = set_err(err, errlen, -errno, "cannot set mode of %s: %s", path, strerror(errno));
        unlink(path); /* ours: made just now */
        close(fd);
        return r;
    }
    if (listen(fd, backlog) != 0) {
        r = set_err(err, errlen, -errno, "cannot listen on %s: %s", path, strerror(errno));
        unix_listen_unlink(path, st.st_dev, st.st_ino);
        close(fd);
        return r;
    }
    out->fd = fd;
    out->dev = st.st_dev;
    out->ino = st.st_ino;
    return 0;
}

void unix_listen_unlink(const char *path, dev_t dev, ino_t ino)
{
    struct stat st;

    if (path && lstat(path, &st) == 0 && st.st_dev == dev && st.st_ino == ino)
        unlink(path);
}
