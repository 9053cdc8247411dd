/* The local socket server: a uv_pipe_t listener, a uv_pipe_t per
 * connection, line framing and bounded output.
 *
 * Lifetimes. The server and every connection are freed only in uv close
 * callbacks. A connection is "listed" (on s->conns) from accept until its
 * on_close has run; "finishing" once it takes no more input or output (it
 * closes when its last write completes); "closing" once uv_close() has been
 * called on it. Its memory stays valid until its close callback, which libuv
 * runs after the callbacks of every write still pending on it, so a
 * callback of ours that closes a connection never frees what a caller up
 * the stack still uses. The server counts its open handles (listener,
 * retry timer, connections) and frees itself when the last one closes
 * after server_close().
 *
 * Accepting. The listener is a uv_poll_t on the listening socket and the
 * server calls accept4() itself, rather than uv_listen(): libuv's own
 * accept loop, once the process is out of descriptors and its spare one is
 * gone, calls back with EMFILE and tries again without end, never
 * returning to the loop. Here running out of descriptors (or memory) stops
 * the poll for ACCEPT_RETRY_MS and the connection waits in the backlog. A
 * connection past max_clients, or on a descriptor within the reserve kept
 * for the agent's own work (fdlimit.h), is refused with busy_reply.
 *
 * Input is read straight into the connection's line buffer, which grows
 * up to max_line + IN_SLACK: enough for any acceptable line and its '\n'
 * plus room for a useful read, so a full buffer without '\n' is always an
 * over-long line and never needs more memory. */
#include "server.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "defaults.h"
#include "error.h"
#include "fdlimit.h"
#include "log.h"
#include "metrics.h"
#include "unix_listen.h"

#define DEFAULT_MAX_LINE DA_SOCKET_MAX_LINE
#define DEFAULT_MAX_OUTPUT ((size_t)8 * 1024 * 1024)
#define DEFAULT_MAX_CLIENTS ((size_t)16384)
#define DEFAULT_MODE DA_DEFAULT_SOCKET_MODE

#define IN_INITIAL ((size_t)4096)  /* first size of a line buffer */
#define IN_MIN_FREE ((size_t)1024) /* grow before reading into less than this */
#define IN_SLACK ((size_t)4096)    /* room past max_line: '\n' and a read's worth */

/* The kernel caps this at net.core.somaxconn. A burst of clients connecting
 * at once (every process on the host after an agent restart) should wait in
 * the backlog rather than be refused. */
#define LISTEN_BACKLOG 4096

#define ACCEPT_RETRY_MS 100
#define ACCEPT_WARN_INTERVAL_MS 10000
/* Accepts per wake-up of the listener, so that a flood cannot hold the
 * loop. */
#define ACCEPT_BURST 64

/* When a connection is closed on purpose, the unread input still queued on
 * it is read and thrown away first, up to this much: Linux gives the peer of
 * a unix socket closed with unread data ECONNRESET instead of EOF, which
 * would hide the reply just sent (the too_long_reply above all). */
#define DRAIN_MAX ((size_t)256 * 1024)

struct server_conn {
    uv_pipe_t pipe; /* pipe.data points back here */
    server *s;
    struct server_conn *prev, *next; /* on s->conns while listed */
    uint64_t id;
    void *data;

    char *in; /* line buffer: a partial line, then the bytes just read */
    size_t in_len, in_cap;
    size_t scanned; /* bytes at the start of in known to hold no '\n' */

    size_t nwrites; /* uv_write requests not yet called back */

    pid_t pid;
    uid_t uid;
    gid_t gid;
    bool have_cred;
    bool listed;
    bool finishing;
    bool closing;
};

/* One queued write and its copy of the bytes. */
struct wreq {
    uv_write_t req; /* req.data points back here */
    server_conn *c;
    char data[];
};

struct server {
    uv_loop_t *loop;
    uv_poll_t listener; /* on fd; listener.data points back here */
    int fd;             /* the listening socket, closed by the listener's close */
    uv_timer_t retry;   /* listens again after a pause for lack of memory or fds */
    struct server_callbacks cb;
    void *arg;

    char *path;
    dev_t dev; /* the socket file we made, so that we unlink only ours */
    ino_t ino;
    char *too_long;
    size_t too_long_len;
    char *busy;
    size_t busy_len;
    size_t max_line, max_output, max_clients;

    server_conn *conns; /* listed connections */
    size_t nclients;    /* listed and not closing */
    size_t handles;     /* open uv handles, connections included */
    uint64_t next_id;
    uint64_t last_accept_warn;
    uint64_t last_refuse_warn;
    size_t refused; /* connections refused since the last warning */
    bool closing;
};

/* ---- lifetimes -------------------------------------------------------- */

static void server_unref(server *s)
{
    if (--s->handles == 0 && s->closing) {
        free(s->path);
        free(s->too_long);
        free(s->busy);
        free(s);
    }
}

static void handle_closed(uv_handle_t *h)
{
    server_unref(h->data);
}

/* A uv_poll_t leaves its descriptor open. */
static void listener_closed(uv_handle_t *h)
{
    server *s = h->data;

    close(s->fd);
    server_unref(s);
}

static void unlist(server_conn *c)
{
    server *s = c->s;

    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->listed = false;
}

static void conn_closed(uv_handle_t *h)
{
    server_conn *c = h->data;
    server *s = c->s;

    if (c->listed) {
        unlist(c);
        if (s->cb.on_close)
            s->cb.on_close(s, c, s->arg);
    }
    free(c->in);
    free(c);
    server_unref(s);
}

static void drain_fd(int fd)
{
    char scratch[16384];
    size_t total = 0;
    ssize_t n;

    while (total < DRAIN_MAX && (n = recv(fd, scratch, sizeof scratch, MSG_DONTWAIT)) > 0)
        total += (size_t)n;
}

static void drain_input(server_conn *c)
{
    uv_os_fd_t fd;

    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0)
        drain_fd(fd);
}

/* Starts closing c; on_close (if c is listed) follows from its close
 * callback. drain: the close is ours, not the peer's or the socket's
 * failure, so unread input is discarded first (see DRAIN_MAX). */
static void conn_close(server_conn *c, bool drain)
{
    if (c->closing)
        return;
    c->closing = true;
    c->finishing = true;
    if (c->listed)
        c->s->nclients--;
    if (drain)
        drain_input(c);
    uv_close((uv_handle_t *)&c->pipe, conn_closed);
}

/* Takes no more input or output and closes once pending writes are done. */
static void conn_finish(server_conn *c)
{
    if (c->closing)
        return;
    c->finishing = true;
    uv_read_stop((uv_stream_t *)&c->pipe);
    if (c->nwrites == 0)
        conn_close(c, true);
}

/* ---- output ----------------------------------------------------------- */

static void write_cb(uv_write_t *req, int status)
{
    struct wreq *w = req->data;
    server_conn *c = w->c;

    free(w);
    c->nwrites--;
    if (status < 0 && status != UV_ECANCELED)
        conn_close(c, false);
    else if (c->finishing && c->nwrites == 0)
        conn_close(c, true);
}

/* Writes what the socket takes now (one writev for all of bufs) and
 * queues one copy of the rest. On failure c is closed and the code
 * returned. */
static int conn_writev(server_conn *c, const uv_buf_t *bufs, unsigned nbufs)
{
    uv_stream_t *st = (uv_stream_t *)&c->pipe;
    size_t max = c->s->max_output;
    size_t off = 0, len = 0, queued;
    struct wreq *w;
    uv_buf_t b;
    int r;

    for (unsigned i = 0; i < nbufs; i++)
        len += bufs[i].len;
    if (len == 0)
        return 0;
    /* A single message past the bound could never be queued; also keeps
     * len within uv_buf_t's unsigned int. */
    if (len > max) {
        conn_close(c, true);
        return DA_EMSGSIZE;
    }
    /* uv_try_write refuses (UV_EAGAIN) while older bytes are queued, which
     * keeps the order; when the queue is empty it saves the copy. */
    r = uv_try_write(st, bufs, nbufs);
    if (r >= 0) {
        off = (size_t)r;
    } else if (r != UV_EAGAIN) {
        conn_close(c, false);
        return r;
    }
    if (off == len)
        return 0;

    queued = uv_stream_get_write_queue_size(st);
    if (len - off > max - (queued < max ? queued : max)) {
        metrics.socket_dropped++; /* it does not read what it is sent */
        conn_close(c, true);
        return DA_EMSGSIZE;
    }
    w = malloc(sizeof *w + (len - off));
    if (!w) {
        conn_close(c, true);
        return DA_ENOMEM;
    }
    /* The bytes not written yet, from wherever in bufs the kernel stopped. */
    size_t skip = off, at = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        size_t n = bufs[i].len;
        if (skip >= n) {
            skip -= n;
            continue;
        }
        memcpy(w->data + at, bufs[i].base + skip, n - skip);
        at += n - skip;
        skip = 0;
    }
    w->c = c;
    w->req.data = w;
    b = uv_buf_init(w->data, (unsigned int)(len - off));
    r = uv_write(&w->req, st, &b, 1, write_cb);
    if (r < 0) {
        free(w);
        conn_close(c, false);
        return r;
    }
    c->nwrites++;
    return 0;
}

static int conn_write(server_conn *c, const char *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned int)(len < UINT_MAX ? len : UINT_MAX));

    if (len > UINT_MAX) {
        conn_close(c, true);
        return DA_EMSGSIZE;
    }
    return conn_writev(c, &b, 1);
}

int server_send(server_conn *c, const char *data, size_t len)
{
    if (c->finishing)
        return 0;
    return conn_write(c, data, len);
}

int server_sendv(server_conn *c, const uv_buf_t *bufs, unsigned nbufs)
{
    if (c->finishing)
        return 0;
    return conn_writev(c, bufs, nbufs);
}

/* ---- input ------------------------------------------------------------ */

static void too_long(server_conn *c)
{
    server *s = c->s;

    uv_read_stop((uv_stream_t *)&c->pipe);
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = c->scanned = 0;
    c->finishing = true;
    if (s->too_long_len && conn_write(c, s->too_long, s->too_long_len) != 0)
        return;
    conn_finish(c);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    server_conn *c = h->data;
    size_t limit = c->s->max_line + IN_SLACK;

    (void)suggested;
    if (c->in_cap - c->in_len < IN_MIN_FREE && c->in_cap < limit) {
        size_t cap = c->in_cap ? c->in_cap * 2 : IN_INITIAL;
        char *p;

        if (cap > limit)
            cap = limit;
        p = realloc(c->in, cap);
        if (!p) {
            *buf = uv_buf_init(NULL, 0); /* read_cb gets UV_ENOBUFS */
            return;
        }
        c->in = p;
        c->in_cap = cap;
    }
    /* Never empty: the partial line left is at most max_line. */
    *buf = uv_buf_init(c->in + c->in_len, (unsigned int)(c->in_cap - c->in_len));
}

/* Hands every complete line to on_line, keeps the partial one. */
static void split_lines(server_conn *c)
{
    server *s = c->s;
    size_t start = 0, rest;
    char *nl;

    while ((nl = memchr(c->in + c->scanned, '\n', c->in_len - c->scanned)) != NULL) {
        size_t end = (size_t)(nl - c->in);
        size_t len = end - start;
        char *line = c->in + start;

        c->scanned = end + 1;
        start = end + 1;
        if (len > s->max_line) {
            too_long(c);
            return;
        }
        if (len == 0)
            continue;
        line[len] = '\0';
        s->cb.on_line(s, c, line, len, s->arg);
        /* Closed, dropped, or the server closed: c's memory is still
         * valid (freed from the loop), but its input is no longer read. */
        if (c->finishing)
            return;
    }
    rest = c->in_len - start;
    if (rest > s->max_line) {
        too_long(c);
        return;
    }
    if (rest == 0) {
        /* Most clients send a request and then sit watching for hours:
         * an idle connection keeps no buffer. */
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    } else if (start > 0) {
        memmove(c->in, c->in + start, rest);
    }
    c->in_len = c->scanned = rest;
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    server_conn *c = st->data;

    (void)buf;
    if (nread == 0 || c->finishing)
        return;
    if (nread == UV_EOF) {
        /* The peer will send no more, but may still read (a half-close).
         * With on_eof, the owner decides when to end (after answering what
         * it still owes); without, what is queued is flushed, then close. */
        if (c->s->cb.on_eof) {
            uv_read_stop(st);
            c->s->cb.on_eof(c->s, c, c->s->arg);
        } else {
            conn_finish(c);
        }
        return;
    }
    if (nread < 0) {
        conn_close(c, false);
        return;
    }
    c->in_len += (size_t)nread;
    split_lines(c);
}

/* ---- accepting -------------------------------------------------------- */

static void read_cred(server_conn *c)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    uv_os_fd_t fd;

    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0 &&
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && len == sizeof cred) {
        c->pid = cred.pid;
        c->uid = cred.uid;
        c->gid = cred.gid;
        c->have_cred = true;
    }
}

static void on_listen(uv_poll_t *h, int status, int events);

static void listen_resume(uv_timer_t *t)
{
    server *s = t->data;

    if (!s->closing)
        uv_poll_start(&s->listener, UV_READABLE, on_listen);
}

/* Out of memory or of descriptors: the waiting connection would wake the
 * loop again at once, so listening pauses and the connection waits in the
 * backlog until there is room. Not the clients' doing (they are refused
 * well before the limit), so worth the operator's attention, but at most
 * once per interval. */
static void listen_pause(server *s, int err)
{
    uint64_t now = uv_now(s->loop);

    if (s->last_accept_warn == 0 || now - s->last_accept_warn >= ACCEPT_WARN_INTERVAL_MS) {
        s->last_accept_warn = now ? now : 1;
        log_warn("socket %s: cannot accept connections: %s; trying again in %d ms", s->path,
                 err == UV_EMFILE || err == UV_ENFILE ? "out of file descriptors"
                                                      : uv_strerror(err),
                 ACCEPT_RETRY_MS);
    }
    uv_poll_stop(&s->listener);
    uv_timer_start(&s->retry, listen_resume, ACCEPT_RETRY_MS, 0);
}

/* Tells the client why and closes fd, which was never a connection of
 * ours (no callback sees it). The line fits in an empty socket buffer. */
static void refuse(server *s, int fd, bool no_fd)
{
    uint64_t now = uv_now(s->loop);

    if (s->busy_len) /* fails only if the client went away already */
        (void)send(fd, s->busy, s->busy_len, MSG_DONTWAIT | MSG_NOSIGNAL);
    drain_fd(fd);
    close(fd);
    s->refused++;
    if (s->last_refuse_warn != 0 && now - s->last_refuse_warn < ACCEPT_WARN_INTERVAL_MS)
        return;
    s->last_refuse_warn = now ? now : 1;
    if (no_fd)
        log_warn("socket %s: refused %zu connection(s): %zu clients hold every file descriptor "
                 "but the %d kept for etcd, health checks and files (RLIMIT_NOFILE %ld)",
                 s->path, s->refused, s->nclients, FDLIMIT_RESERVE, fdlimit_get());
    else
        log_warn("socket %s: refused %zu connection(s): %zu clients connected, the most allowed",
                 s->path, s->refused, s->nclients);
    s->refused = 0;
}

/* Makes c the connection on fd (which c then owns). */
static void conn_open(server *s, server_conn *c, int fd)
{
    c->s = s;
    uv_pipe_init(s->loop, &c->pipe, 0);
    c->pipe.data = c;
    s->handles++;
    if (uv_pipe_open(&c->pipe, fd) != 0) {
        close(fd);
        /* Unlisted: closed without a callback. */
        conn_close(c, false);
        return;
    }
    read_cred(c);
    c->id = ++s->next_id;
    c->listed = true;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nclients++;
    if (uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, read_cb) != 0)
        conn_close(c, false);
}

static void on_listen(uv_poll_t *h, int status, int events)
{
    server *s = h->data;

    (void)events;
    if (status < 0) {
        listen_pause(s, status);
        return;
    }
    for (int i = 0; i < ACCEPT_BURST && !s->closing; i++) {
        /* Memory first: a connection accepted without it would be lost. */
        server_conn *c = calloc(1, sizeof *c);
        int fd;

        if (!c) {
            listen_pause(s, UV_ENOMEM);
            return;
        }
        fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;

            free(c);
            if (e == EINTR || e == ECONNABORTED)
                continue;
            if (e != EAGAIN && e != EWOULDBLOCK)
                listen_pause(s, -e);
            return;
        }
        bool fd_ok = fdlimit_client_ok(fd);
        if (!fd_ok || s->nclients >= s->max_clients) {
            free(c);
            refuse(s, fd, !fd_ok);
            continue;
        }
        conn_open(s, c, fd);
    }
}

/* ---- start and close -------------------------------------------------- */

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

int server_start(server **out, uv_loop_t *loop, const struct server_options *o,
                 const struct server_callbacks *cb, void *arg, char *err, size_t errlen)
{
    struct unix_listener ul;
    server *s;
    int r;

    if (err && errlen > 0)
        err[0] = '\0';
    if (!out || !loop || !o || !cb || !cb->on_line || !o->path || !o->path[0]) {
        if (o && o->listen_fd > 0)
            close(o->listen_fd);
        return set_err(err, errlen, DA_EINVAL, "server_start: missing argument");
    }
    *out = NULL;

    s = calloc(1, sizeof *s);
    if (!s) {
        if (o->listen_fd > 0)
            close(o->listen_fd);
        return set_err(err, errlen, DA_ENOMEM, "out of memory");
    }
    s->loop = loop;
    s->cb = *cb;
    s->arg = arg;
    s->max_line = o->max_line ? o->max_line : DEFAULT_MAX_LINE;
    s->max_output = o->max_output ? o->max_output : DEFAULT_MAX_OUTPUT;
    if (s->max_output > UINT_MAX) /* one write's length is an unsigned int */
        s->max_output = UINT_MAX;
    s->max_clients = o->max_clients ? o->max_clients : DEFAULT_MAX_CLIENTS;
    s->path = strdup(o->path);
    if (o->too_long_reply) {
        s->too_long_len = strlen(o->too_long_reply);
        s->too_long = strdup(o->too_long_reply);
    }
    if (o->busy_reply) {
        s->busy_len = strlen(o->busy_reply);
        s->busy = strdup(o->busy_reply);
    }
    if (!s->path || (o->too_long_reply && !s->too_long) || (o->busy_reply && !s->busy)) {
        r = set_err(err, errlen, DA_ENOMEM, "out of memory");
        goto fail;
    }

    if (o->listen_fd > 0) {
        /* Socket activation: systemd made the socket and keeps it; dev and
         * ino stay 0, which no file has, so it is never unlinked here. */
        s->fd = o->listen_fd;
    } else {
        r = unix_listen_open(o->path, o->mode ? o->mode : DEFAULT_MODE, LISTEN_BACKLOG, &ul, err,
                             errlen);
        if (r != 0)
            goto fail;
        s->dev = ul.dev;
        s->ino = ul.ino;
        s->fd = ul.fd;
    }
    if ((r = uv_poll_init(loop, &s->listener, s->fd)) != 0) {
        set_err(err, errlen, r, "cannot use socket %s: %s", o->path, uv_strerror(r));
        unix_listen_unlink(s->path, s->dev, s->ino);
        close(s->fd);
        goto fail;
    }

    /* From here the handles exist, the listener owns fd, and a failure
     * closes them; the loop then frees s. */
    uv_timer_init(loop, &s->retry);
    s->listener.data = s;
    s->retry.data = s;
    s->handles = 2;
    r = uv_poll_start(&s->listener, UV_READABLE, on_listen);
    if (r != 0) {
        set_err(err, errlen, r, "cannot listen on %s: %s", o->path, uv_strerror(r));
        server_close(s);
        return r;
    }
    *out = s;
    return 0;

fail:
    if (o->listen_fd > 0 && s->fd != o->listen_fd)
        close(o->listen_fd); /* stolen, even on failure */
    free(s->path);
    free(s->too_long);
    free(s->busy);
    free(s);
    return r;
}

void server_close(server *s)
{
    if (!s || s->closing)
        return;
    s->closing = true;
    /* Unlink before the descriptor closes, so as never to remove a socket
     * that another agent binds in between. */
    unix_listen_unlink(s->path, s->dev, s->ino);
    uv_close((uv_handle_t *)&s->listener, listener_closed);
    uv_close((uv_handle_t *)&s->retry, handle_closed);
    /* Each turn takes the head, so on_close may close anything, this server
     * included. */
    while (s->conns) {
        server_conn *c = s->conns;

        conn_close(c, true);
        unlist(c);
        if (s->cb.on_close)
            s->cb.on_close(s, c, s->arg);
    }
}

/* ---- small accessors -------------------------------------------------- */

void server_conn_close(server_conn *c)
{
    conn_close(c, true);
}

void server_conn_end(server_conn *c)
{
    conn_finish(c);
}

void server_conn_set_data(server_conn *c, void *data)
{
    c->data = data;
}

void *server_conn_data(const server_conn *c)
{
    return c->data;
}

uint64_t server_conn_id(const server_conn *c)
{
    return c->id;
}

int server_conn_peer(const server_conn *c, pid_t *pid, uid_t *uid, gid_t *gid)
{
    if (!c->have_cred)
        return DA_ENOENT;
    if (pid)
        *pid = c->pid;
    if (uid)
        *uid = c->uid;
    if (gid)
        *gid = c->gid;
    return 0;
}

size_t server_conn_queued(const server_conn *c)
{
    return c->closing ? 0 : uv_stream_get_write_queue_size((const uv_stream_t *)&c->pipe);
}

size_t server_clients(const server *s)
{
    return s->nclients;
}
