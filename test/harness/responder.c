/*
 * responder: a tiny scripted HTTP/1.1 server for tests.  See responder.h.
 *
 * Every blocking point (accept, read, write, the waits of @HANG and @SLOW)
 * polls one eventfd as well; responder_stop() makes it readable for good, so
 * all threads notice and end, and can be joined.
 */
#include "responder.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

/* Requests larger than this are a bug in the test, not something to serve. */
#define REQ_MAX (64u * 1024 * 1024)
/* How long a graceful close waits for the peer's FIN before giving up. */
#define LINGER_MS 1000

struct conn {
    struct responder *r;
    int fd;
    pthread_t tid;
    struct conn *next;
    /* Bytes read but not yet consumed: HTTP/1.1 clients may pipeline. */
    char *buf;
    size_t len, cap;
};

struct responder {
    int lfd;
    int wake_fd;
    int port;
    char url[40];
    char **replies;
    size_t n;
    pthread_t acceptor;
    int acceptor_started;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    /* Everything below is guarded by mu. */
    char **reqs;
    size_t nreq, capreq;
    struct conn *conns;
};

/*
 * Waits for events on fd (or only for the wake fd when fd < 0) up to
 * timeout_ms (negative: forever).  Returns 1 if fd is ready, 0 on timeout,
 * -1 when the responder is stopping or on error.
 */
static int wait_fd(struct responder *r, int fd, short events, int timeout_ms)
{
    struct pollfd p[2] = {
        {.fd = r->wake_fd, .events = POLLIN},
        {.fd = fd, .events = events},
    };
    long long deadline = now_ms() + timeout_ms;

    for (;;) {
        int left = timeout_ms < 0 ? -1 : (int)(deadline - now_ms());
        int rc;

        if (timeout_ms >= 0 && left < 0)
            left = 0;
        rc = poll(p, fd >= 0 ? 2 : 1, left);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0 || (p[0].revents & POLLIN))
            return -1;
        if (rc == 0)
            return 0;
        return 1;
    }
}

static int write_all(struct conn *c, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n;

        if (wait_fd(c->r, c->fd, POLLOUT, -1) != 1)
            return -1;
        /* MSG_NOSIGNAL: a client that went away must not kill the test. */
        n = send(c->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads more bytes into c->buf.  Returns 1, 0 on EOF, -1 on error or stop. */
static int read_more(struct conn *c)
{
    ssize_t n;

    if (c->cap - c->len < 4096) {
        size_t ncap = c->cap ? c->cap * 2 : 8192;
        char *nb;

        if (c->cap >= REQ_MAX + 1)
            return -1;
        if (ncap > REQ_MAX + 1)
            ncap = REQ_MAX + 1;
        nb = realloc(c->buf, ncap);
        if (nb == NULL)
            return -1;
        c->buf = nb;
        c->cap = ncap;
    }
    for (;;) {
        if (wait_fd(c->r, c->fd, POLLIN, -1) != 1)
            return -1;
        n = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            return 0;
        c->len += (size_t)n;
        c->buf[c->len] = '\0';
        return 1;
    }
}

static const char *find_crlf2(const char *s, size_t len)
{
    return memmem(s, len, "\r\n\r\n", 4);
}

/*
 * Finds header `name` in the header block [hdr, hdr + len) (which starts
 * with the request or status line) and copies its trimmed value into val.
 * Returns 1 if found.
 */
static int header_value(const char *hdr, size_t len, const char *name, char *val, size_t vallen)
{
    const char *end = hdr + len, *line = memchr(hdr, '\n', len);
    size_t nlen = strlen(name);

    while (line != NULL && ++line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        const char *stop = eol != NULL ? eol : end;

        if ((size_t)(stop - line) > nlen && line[nlen] == ':' &&
            strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1;
            size_t vl;

            while (v < stop && (*v == ' ' || *v == '\t'))
                v++;
            while (stop > v && (stop[-1] == '\r' || stop[-1] == ' ' || stop[-1] == '\t'))
                stop--;
            vl = (size_t)(stop - v);
            if (vl >= vallen)
                vl = vallen - 1;
            memcpy(val, v, vl);
            val[vl] = '\0';
            return 1;
        }
        line = eol;
    }
    return 0;
}

static int contains_token(const char *s, const char *tok)
{
    return strcasestr(s, tok) != NULL;
}

/*
 * Returns the length of a complete chunked body starting at body (including
 * the final CRLF after the trailer), 0 if more bytes are needed, -1 if
 * malformed.
 */
static long chunked_length(const char *body, size_t avail)
{
    size_t pos = 0;

    for (;;) {
        const char *eol = memmem(body + pos, avail - pos, "\r\n", 2);
        char *endp;
        unsigned long size;

        if (eol == NULL)
            return 0;
        errno = 0;
        size = strtoul(body + pos, &endp, 16);
        if (errno != 0 || endp == body + pos || size > REQ_MAX)
            return -1;
        pos = (size_t)(eol - body) + 2;
        if (size == 0) {
            /* Trailer fields end at an empty line. */
            for (;;) {
                eol = memmem(body + pos, avail - pos, "\r\n", 2);
                if (eol == NULL)
                    return 0;
                if (eol == body + pos)
                    return (long)(pos + 2);
                pos = (size_t)(eol - body) + 2;
            }
        }
        if (avail - pos < size + 2)
            return 0;
        pos += size + 2;
    }
}

/*
 * Reads one full request from c.  Returns it as a new NUL-terminated string,
 * or NULL on EOF, error or stop.
 */
static char *read_request(struct conn *c)
{
    const char *hend;
    size_t hlen, total = 0;
    char val[128];
    int chunked, sent_continue = 0, open_body = 0;
    long long clen = 0;
    char *req;

    while ((hend = c->len ? find_crlf2(c->buf, c->len) : NULL) == NULL) {
        if (read_more(c) <= 0)
            return NULL;
    }
    hlen = (size_t)(hend - c->buf) + 4;
    chunked = header_value(c->buf, hlen, "Transfer-Encoding", val, sizeof(val)) &&
              contains_token(val, "chunked");
    if (!chunked && header_value(c->buf, hlen, "Content-Length", val, sizeof(val))) {
        char *endp;

        errno = 0;
        clen = strtoll(val, &endp, 10);
        if (errno != 0 || endp == val || *endp != '\0' || clen < 0)
            return NULL;
        /* A body that never ends (the agent's one watch stream declares
         * 10^15 bytes): the request is its headers and its first line. */
        open_body = clen > (long long)REQ_MAX;
    }
    for (;;) {
        if (open_body) {
            const char *nl = memchr(c->buf + hlen, '\n', c->len - hlen);
            if (nl) {
                total = (size_t)(nl - c->buf) + 1;
                break;
            }
            if (c->len - hlen > REQ_MAX)
                return NULL;
        } else if (chunked) {
            long blen = chunked_length(c->buf + hlen, c->len - hlen);

            if (blen < 0)
                return NULL;
            if (blen > 0) {
                total = hlen + (size_t)blen;
                break;
            }
        } else if (c->len >= hlen + (size_t)clen) {
            total = hlen + (size_t)clen;
            break;
        }
        /* curl waits up to a second for this before sending a big body. */
        if (!sent_continue && header_value(c->buf, hlen, "Expect", val, sizeof(val)) &&
            contains_token(val, "100-continue")) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";

            sent_continue = 1;
            if (write_all(c, cont, sizeof(cont) - 1) < 0)
                return NULL;
        }
        if (read_more(c) <= 0)
            return NULL;
    }
    req = malloc(total + 1);
    if (req == NULL)
        return NULL;
    memcpy(req, c->buf, total);
    req[total] = '\0';
    memmove(c->buf, c->buf + total, c->len - total);
    c->len -= total;
    return req;
}

/* Records a request; returns its index, or -1 (and frees req) on failure. */
static long record_request(struct responder *r, char *req)
{
    long idx = -1;

    pthread_mutex_lock(&r->mu);
    if (r->nreq == r->capreq) {
        size_t ncap = r->capreq ? r->capreq * 2 : 16;
        char **nr = realloc(r->reqs, ncap * sizeof(*nr));

        if (nr != NULL) {
            r->reqs = nr;
            r->capreq = ncap;
        }
    }
    if (r->nreq < r->capreq) {
        idx = (long)r->nreq;
        r->reqs[r->nreq++] = req;
        pthread_cond_broadcast(&r->cond);
    } else {
        free(req);
    }
    pthread_mutex_unlock(&r->mu);
    return idx;
}

/*
 * A reply whose body can only end at close, or which says so, is followed by
 * a close; otherwise the client may reuse the connection.
 */
static int reply_closes(const char *raw)
{
    const char *hend = strstr(raw, "\r\n\r\n");
    size_t hlen = hend != NULL ? (size_t)(hend - raw) + 2 : strlen(raw);
    char val[128];

    if (header_value(raw, hlen, "Connection", val, sizeof(val)) && contains_token(val, "close"))
        return 1;
    return !header_value(raw, hlen, "Content-Length", val, sizeof(val)) &&
           !header_value(raw, hlen, "Transfer-Encoding", val, sizeof(val));
}

/*
 * Closes after our FIN has been read by the peer: closing with unread
 * request bytes in the socket would send a RST that may destroy the reply
 * before the client reads it.
 */
static void graceful_close(struct conn *c)
{
    long long deadline = now_ms() + LINGER_MS;
    char sink[4096];

    shutdown(c->fd, SHUT_WR);
    for (;;) {
        long long left = deadline - now_ms();

        if (left <= 0 || wait_fd(c->r, c->fd, POLLIN, (int)left) != 1)
            break;
        if (recv(c->fd, sink, sizeof(sink), MSG_DONTWAIT) == 0)
            break;
    }
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    struct responder *r = c->r;
    int keep = 1;

    while (keep) {
        char *req = read_request(c);
        const char *reply;
        long idx;

        if (req == NULL)
            break;
        idx = record_request(r, req);
        if (idx < 0)
            break;
        reply = r->replies[(size_t)idx < r->n ? (size_t)idx : r->n - 1];
        if (strcmp(reply, "@CLOSE") == 0) {
            graceful_close(c);
            break;
        }
        if (strcmp(reply, "@RESET") == 0) {
            /* A zero linger makes close() send a RST instead of a FIN. */
            struct linger lg = {.l_onoff = 1, .l_linger = 0};

            setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            break;
        }
        if (strcmp(reply, "@HANG") == 0) {
            wait_fd(r, -1, 0, -1);
            break;
        }
        if (strncmp(reply, "@SLOW:", 6) == 0) {
            char *endp;
            long ms = strtol(reply + 6, &endp, 10);

            /* responder_start() validated the form already. */
            if (wait_fd(r, -1, 0, (int)ms) != 0)
                break;
            reply = endp + 1;
        }
        if (write_all(c, reply, strlen(reply)) < 0)
            break;
        if (reply_closes(reply)) {
            graceful_close(c);
            keep = 0;
        }
    }
    close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    return NULL;
}

static void *accept_main(void *arg)
{
    struct responder *r = arg;

    for (;;) {
        struct conn *c;
        int fd;

        if (wait_fd(r, r->lfd, POLLIN, -1) != 1)
            break;
        fd = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->r = r;
        c->fd = fd;
        pthread_mutex_lock(&r->mu);
        if (pthread_create(&c->tid, NULL, conn_main, c) != 0) {
            pthread_mutex_unlock(&r->mu);
            close(fd);
            free(c);
            continue;
        }
        c->next = r->conns;
        r->conns = c;
        pthread_mutex_unlock(&r->mu);
    }
    return NULL;
}

static int valid_reply(const char *s)
{
    char *endp;
    long ms;

    if (s == NULL)
        return 0;
    if (strncmp(s, "@SLOW:", 6) != 0)
        return 1;
    errno = 0;
    ms = strtol(s + 6, &endp, 10);
    return errno == 0 && endp != s + 6 && *endp == ':' && ms >= 0 && ms <= 3600 * 1000;
}

struct responder *responder_start(const char *const *replies, size_t n)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t salen = sizeof(sa);
    pthread_condattr_t ca;
    struct responder *r;
    size_t i;

    if (replies == NULL || n == 0) {
        errno = EINVAL;
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (!valid_reply(replies[i])) {
            errno = EINVAL;
            return NULL;
        }
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->lfd = r->wake_fd = -1;
    pthread_mutex_init(&r->mu, NULL);
    /* Waits use the monotonic clock so a clock change cannot stretch them. */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cond, &ca);
    pthread_condattr_destroy(&ca);
    r->replies = calloc(n, sizeof(*r->replies));
    if (r->replies == NULL)
        goto fail;
    r->n = n;
    for (i = 0; i < n; i++) {
        r->replies[i] = strdup(replies[i]);
        if (r->replies[i] == NULL)
            goto fail;
    }
    r->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    r->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (r->wake_fd < 0 || r->lfd < 0)
        goto fail;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(r->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(r->lfd, 64) < 0 ||
        getsockname(r->lfd, (struct sockaddr *)&sa, &salen) < 0)
        goto fail;
    r->port = ntohs(sa.sin_port);
    snprintf(r->url, sizeof(r->url), "http://127.0.0.1:%d", r->port);
    if (pthread_create(&r->acceptor, NULL, accept_main, r) != 0)
        goto fail;
    r->acceptor_started = 1;
    return r;
fail:
    i = (size_t)errno;
    responder_stop(r);
    errno = (int)i;
    return NULL;
}

int responder_port(const struct responder *r)
{
    return r != NULL ? r->port : -1;
}

char *responder_url(const struct responder *r)
{
    return r != NULL ? (char *)r->url : NULL;
}

/* The lock is not part of the observable state, so const callers may take it. */
static pthread_mutex_t *mu_of(const struct responder *r)
{
    return (pthread_mutex_t *)&r->mu;
}

int responder_requests(const struct responder *r)
{
    int n;

    if (r == NULL)
        return 0;
    pthread_mutex_lock(mu_of(r));
    n = (int)r->nreq;
    pthread_mutex_unlock(mu_of(r));
    return n;
}

const char *responder_request(const struct responder *r, int i)
{
    const char *s = NULL;

    if (r == NULL || i < 0)
        return NULL;
    pthread_mutex_lock(mu_of(r));
    if ((size_t)i < r->nreq)
        s = r->reqs[i];
    pthread_mutex_unlock(mu_of(r));
    return s;
}

const char *responder_last_request(const struct responder *r)
{
    const char *s = NULL;

    if (r == NULL)
        return NULL;
    pthread_mutex_lock(mu_of(r));
    if (r->nreq > 0)
        s = r->reqs[r->nreq - 1];
    pthread_mutex_unlock(mu_of(r));
    return s;
}

int responder_wait_requests(const struct responder *r, int count, int timeout_ms)
{
    struct timespec ts;
    int rc = 0;

    if (r == NULL)
        return -EINVAL;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(mu_of(r));
    while (r->nreq < (size_t)count && rc == 0)
        rc = pthread_cond_timedwait((pthread_cond_t *)&r->cond, mu_of(r), &ts);
    rc = r->nreq >= (size_t)count ? 0 : -ETIMEDOUT;
    pthread_mutex_unlock(mu_of(r));
    return rc;
}

void responder_stop(struct responder *r)
{
    uint64_t one = 1;
    struct conn *c;
    size_t i;

    if (r == NULL)
        return;
    if (r->wake_fd >= 0 && write(r->wake_fd, &one, sizeof(one)) < 0) {
        /* The counter cannot overflow with one write; nothing to do. */
    }
    if (r->acceptor_started)
        pthread_join(r->acceptor, NULL);
    /* The acceptor is gone, so the list no longer changes. */
    while ((c = r->conns) != NULL) {
        r->conns = c->next;
        pthread_join(c->tid, NULL);
        free(c);
    }
    if (r->lfd >= 0)
        close(r->lfd);
    if (r->wake_fd >= 0)
        close(r->wake_fd);
    for (i = 0; i < r->n && r->replies != NULL; i++)
        free(r->replies[i]);
    free(r->replies);
    for (i = 0; i < r->nreq; i++)
        free(r->reqs[i]);
    free(r->reqs);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->mu);
    free(r);
}
