/* Line clients of a unix stream socket: the agent's, or a floor server's.
 * Reads go into a buffer (never byte by byte), so the client's own cost per
 * round trip is one send and one recv, the same against the agent and
 * against the floor. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "bench.h"

int lc_open(struct lc *c, const char *path, bool nonblock)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    memset(c, 0, sizeof *c);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    if (nonblock)
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->cap = 16384; /* grows on demand; 10,000 clients hold one each */
    c->buf = malloc(c->cap);
    if (!c->buf) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    return 0;
}

void lc_close(struct lc *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->buf);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

int lc_send(struct lc *c, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t w = send(c->fd, data, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = c->fd, .events = POLLOUT};
            poll(&p, 1, 1000);
            continue;
        }
        if (w <= 0)
            return -1;
        data += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Makes room for a read: drops consumed bytes, grows if full. */
static int room(struct lc *c)
{
    if (c->start > 0) {
        memmove(c->buf, c->buf + c->start, c->len - c->start);
        c->len -= c->start;
        c->start = 0;
    }
    if (c->cap - c->len < 4096) {
        size_t cap = c->cap * 2;
        char *p = realloc(c->buf, cap);
        if (!p)
            return -1;
        c->buf = p;
        c->cap = cap;
    }
    return 0;
}

char *lc_line(struct lc *c, int timeout_ms, size_t *len)
{
    uint64_t deadline = timeout_ms < 0 ? 0 : now_ns() + (uint64_t)timeout_ms * 1000000u;

    for (;;) {
        char *nl = memchr(c->buf + c->start, '\n', c->len - c->start);
        if (nl) {
            char *line = c->buf + c->start;
            *nl = '\0';
            if (len)
                *len = (size_t)(nl - line);
            c->start = (size_t)(nl - c->buf) + 1;
            return line;
        }
        if (room(c) < 0)
            return NULL;
        /* With a timeout, never block in recv: poll below keeps the time. */
        ssize_t r =
            recv(c->fd, c->buf + c->len, c->cap - c->len, timeout_ms >= 0 ? MSG_DONTWAIT : 0);
        if (r > 0) {
            c->len += (size_t)r;
            continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EINTR))
            return NULL;
        if (errno == EINTR)
            continue;
        /* Non-blocking socket with nothing yet: wait. */
        int left = -1;
        if (timeout_ms >= 0) {
            uint64_t now = now_ns();
            if (now >= deadline)
                return NULL;
            left = (int)((deadline - now) / 1000000u) + 1;
        }
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, left) == 0)
            return NULL;
    }
}

/* Counts and consumes the complete lines already in the buffer. */
static int count_buffered(struct lc *c)
{
    char *p = c->buf + c->start, *end = c->buf + c->len, *last = NULL;
    int lines = 0;

    while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        lines++;
        last = ++p;
    }
    if (last)
        c->start = (size_t)(last - c->buf);
    return lines;
}

int lc_drain_count(struct lc *c)
{
    int lines = count_buffered(c);

    for (;;) {
        if (room(c) < 0)
            return -1;
        ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, MSG_DONTWAIT);
        if (r == 0)
            return -1;
        if (r < 0)
            return errno == EAGAIN || errno == EINTR ? lines : -1;
        c->len += (size_t)r;
        lines += count_buffered(c);
        if ((size_t)r < 4096)
            return lines;
    }
}

char *lc_call(struct lc *c, const char *req, int timeout_ms, size_t *len)
{
    size_t n = strlen(req);
    char *line;

    if (lc_send(c, req, n) < 0 || (n && req[n - 1] != '\n' && lc_send(c, "\n", 1) < 0))
        return NULL;
    while ((line = lc_line(c, timeout_ms, len)) != NULL)
        if (!strstr(line, "\"event\":"))
            return line;
    return NULL;
}

int wait_agent(const char *path, int timeout_ms)
{
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;

    while (now_ns() < deadline) {
        struct lc c;
        if (lc_open(&c, path, false) == 0) {
            char *r = lc_call(&c, "{\"op\":\"ping\"}\n", 1000, NULL);
            bool ok = r && strstr(r, "\"ok\":true");
            lc_close(&c);
            if (ok)
                return 0;
        }
        sleep_ms(5);
    }
    return -1;
}

long long json_int_member(const char *line, const char *name, long long def)
{
    char pat[128];
    const char *p;

    snprintf(pat, sizeof pat, "\"%s\":", name);
    p = line ? strstr(line, pat) : NULL;
    if (!p)
        return def;
    p += strlen(pat);
    if (*p == '"')
        p++;
    return strtoll(p, NULL, 10);
}
