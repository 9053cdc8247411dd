/* libdiscovery's socket client: the connection to the agent, line framing,
 * requests and their replies, watches, registrations, and reconnection.
 *
 * State. A client is connected (fd >= 0) or waiting to reconnect (fd -1,
 * retry_at says when). What the client wants from the agent lives outside
 * the connection: the registrations (regs) and the watches. On every new
 * connection both are sent again, so the agent converges on them whatever
 * happened to the previous one.
 *
 * Requests. Every request carries an integer id of ours. A request waiting
 * for its reply is a struct pending on c->pending: either a blocking call's
 * (on that call's stack; the call unlinks it) or a watch's (on the heap).
 * Replies are matched by id; an id we do not know (a reply to a call that
 * timed out, an unwatch, a registration sent again) is dropped.
 *
 * Callbacks. Lines are read whenever the library waits for anything, but a
 * watch's news is only queued there (c->ev_head); callbacks run from
 * dispatch(), which only disc_client_process() and disc_client_wait() call.
 * So a blocking call never runs a callback, order is kept, and a callback
 * may call back into the library: the queue is just longer when it returns.
 *
 * Lifetime. A callback may close the client. c->depth counts the library
 * calls on the stack that can run callbacks; disc_client_close() inside one
 * only marks the client closed, and the outermost of them frees it. */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "validate.h"

#define SUN_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path))

#define IN_INITIAL ((size_t)4096)
#define IN_MIN_FREE ((size_t)2048)
/* Room for the longest acceptable line, its '\n', and a read's worth more:
 * a full buffer with no '\n' in it is therefore always an over-long line. */
#define IN_LIMIT (DISC_MAX_REPLY_LINE + 1 + (size_t)4096)
/* Output is requests only (each at most DISC_MAX_REQUEST_LINE), queued
 * faster than a live agent reads them only when a program sends thousands
 * at once. */
#define OUT_LIMIT ((size_t)64 * 1024 * 1024)

#define BACKOFF_MIN_MS 50u
#define BACKOFF_MAX_MS 2000u

struct buf {
    char *data;
    size_t len, cap;
};

enum pending_kind { P_CALL, P_WATCH };

struct pending {
    uint64_t id;
    enum pending_kind kind;
    struct pending *next;
    /* P_CALL: filled when the reply comes or the connection goes. */
    bool want_list, want_text;
    bool done;
    int result;
    json_t *reply;
    struct disc__list *list;
    char *text;
    /* P_WATCH: NULL once the watch is gone (then the agent's watch is
     * ended as soon as its id is known). */
    struct disc_watch *w;
};

struct reg {
    struct reg *next;
    json_t *body; /* the register request without "id" */
};

struct disc_watch {
    disc_client *c;
    char *service, *group;
    bool prefer_zone; /* the agent's zone choice (docs/traffic.md) */
    disc_watch_cb cb;
    void *arg;
    uint64_t remote;     /* the agent's watch id on this connection; 0: none */
    struct pending *req; /* the watch request waiting for its reply */
    bool told_gone;      /* DISC_ENOAGENT queued since the last list */
    struct disc_watch *next;
};

struct event {
    struct event *next;
    struct disc_watch *w;
    int err;
    struct disc__list *list;
    char *code, *message; /* the agent's, with DISC_EREFUSED */
};

struct disc_client {
    char path[SUN_PATH_MAX];
    int fd;
    struct buf in, out;
    size_t scanned; /* in.data[0..scanned) holds no '\n' */
    uint64_t next_id;
    struct pending *pending;
    struct reg *regs;
    struct disc_watch *watches;
    struct event *ev_head, **ev_tail;

    uint64_t retry_at;   /* monotonic ms of the next reconnect attempt */
    unsigned backoff_ms; /* the delay after the next failed attempt */
    uint32_t rng;

    int depth;        /* library calls on the stack that run callbacks */
    bool dispatching; /* dispatch() is on the stack */
    bool closed;      /* disc_client_close() was called */
    int trouble;      /* what disc_client_process() reports */
    unsigned long callbacks_run;

    int last_err;
    char last_code[64];
    char last_msg[512];
};

/* ---- small things ------------------------------------------------------- */

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int fail(disc_client *c, int err, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Records the details of a failure and returns err. */
static int fail(disc_client *c, int err, const char *code, const char *fmt, ...)
{
    va_list ap;

    c->last_err = err;
    snprintf(c->last_code, sizeof c->last_code, "%s", code ? code : "");
    va_start(ap, fmt);
    vsnprintf(c->last_msg, sizeof c->last_msg, fmt, ap);
    va_end(ap);
    return err;
}

static int buf_append(struct buf *b, const char *data, size_t len, size_t limit)
{
    if (len > limit - b->len)
        return DISC_ENOMEM;
    if (b->cap - b->len < len) {
        size_t cap = b->cap ? b->cap : 1024;
        char *p;
        while (cap - b->len < len)
            cap *= 2;
        if (cap > limit)
            cap = limit;
        p = realloc(b->data, cap);
        if (!p)
            return DISC_ENOMEM;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

static void buf_clear(struct buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* ---- events ------------------------------------------------------------- */

static void event_free(struct event *e)
{
    disc_list_free(e->list ? &e->list->pub : NULL);
    free(e->code);
    free(e->message);
    free(e);
}

/* Queues news for w; list is stolen. */
static int event_push(disc_client *c, struct disc_watch *w, int err, struct disc__list *list,
                      const char *code, const char *message)
{
    struct event *e = calloc(1, sizeof *e);

    if (!e || (code && !(e->code = strdup(code))) || (message && !(e->message = strdup(message)))) {
        if (e)
            event_free(e);
        disc_list_free(list ? &list->pub : NULL);
        return DISC_ENOMEM;
    }
    e->w = w;
    e->err = err;
    e->list = list;
    *c->ev_tail = e;
    c->ev_tail = &e->next;
    w->told_gone = err == DISC_ENOAGENT;
    return 0;
}

/* Drops the queued news of w (NULL: of every watch). */
static void events_drop(disc_client *c, const struct disc_watch *w)
{
    struct event **pp = &c->ev_head;

    while (*pp) {
        struct event *e = *pp;
        if (!w || e->w == w) {
            *pp = e->next;
            event_free(e);
        } else {
            pp = &e->next;
        }
    }
    c->ev_tail = &c->ev_head;
    while (*c->ev_tail)
        c->ev_tail = &(*c->ev_tail)->next;
}

/* Runs the callbacks of the queued news, oldest first. Not re-entered: a
 * callback that calls disc_client_process() only makes the queue longer,
 * and this loop then delivers the rest in order. */
static void dispatch(disc_client *c)
{
    struct event *e;

    if (c->dispatching)
        return;
    c->dispatching = true;
    while (!c->closed && (e = c->ev_head) != NULL) {
        struct disc_watch *w = e->w;

        c->ev_head = e->next;
        if (!c->ev_head)
            c->ev_tail = &c->ev_head;
        if (e->err == DISC_EREFUSED)
            fail(c, DISC_EREFUSED, e->code, "%s", e->message ? e->message : "");
        c->callbacks_run++;
        /* w may be freed by its callback (disc_unwatch), so nothing of
         * it is used after the call. */
        w->cb(w, e->list ? &e->list->pub : NULL, e->err, w->arg);
        event_free(e);
    }
    c->dispatching = false;
}

/* ---- the connection ----------------------------------------------------- */

static void pending_unlink(disc_client *c, struct pending *p)
{
    for (struct pending **pp = &c->pending; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            p->next = NULL;
            return;
        }
}

/* Closes the socket after trouble (err: DISC_ENOAGENT, DISC_EPROTO). The
 * blocking call waiting, if any, gets err (DISC_ECLOSED for a plain loss);
 * every watcher is told once; the next attempt is due after the backoff. */
static void conn_lost(disc_client *c, int err)
{
    if (c->fd < 0)
        return;
    close(c->fd);
    c->fd = -1;
    buf_clear(&c->in);
    buf_clear(&c->out);
    c->scanned = 0;
    while (c->pending) {
        struct pending *p = c->pending;
        c->pending = p->next;
        p->next = NULL;
        if (p->kind == P_CALL) {
            p->done = true;
            p->result = err == DISC_EPROTO ? DISC_EPROTO : DISC_ECLOSED;
        } else {
            if (p->w)
                p->w->req = NULL;
            free(p);
        }
    }
    for (struct disc_watch *w = c->watches; w; w = w->next) {
        w->remote = 0;
        if (!w->told_gone)
            event_push(c, w, DISC_ENOAGENT, NULL, NULL, NULL);
    }
    c->trouble = err;
    /* The delay grows here too, not only on failed connects: an agent that
     * accepts and then sends garbage every time is not retried 20 times a
     * second. A good line resets it (read_input). */
    c->retry_at = now_ms() + c->backoff_ms;
    c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
}

/* Queues one request line: body (borrowed) with "id" added. */
static int send_request(disc_client *c, json_t *body, uint64_t id)
{
    char *text;
    size_t len;
    int rc;

    if (json_object_set_new(body, "id", json_integer((json_int_t)id)))
        return DISC_ENOMEM;
    text = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_object_del(body, "id");
    if (!text)
        return DISC_ENOMEM;
    len = strlen(text);
    if (len > DISC_MAX_REQUEST_LINE) {
        free(text);
        return fail(c, DISC_EINVAL, "", "request of %zu bytes: the agent takes at most %zu", len,
                    DISC_MAX_REQUEST_LINE);
    }
    text[len] = '\n'; /* replaces the NUL; appended with its length */
    rc = buf_append(&c->out, text, len + 1, OUT_LIMIT);
    free(text);
    return rc;
}

/* Writes what the socket takes now. */
static void flush(disc_client *c)
{
    size_t off = 0;

    while (c->fd >= 0 && off < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + off, c->out.len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            fail(c, DISC_ENOAGENT, "", "write to the agent: %s", strerror(errno));
            conn_lost(c, DISC_ENOAGENT);
            return;
        }
    }
    if (off) {
        memmove(c->out.data, c->out.data + off, c->out.len - off);
        c->out.len -= off;
    }
}

static int watch_send(disc_client *c, struct disc_watch *w)
{
    struct pending *p = calloc(1, sizeof *p);
    json_t *body = json_pack("{s:s, s:s}", "op", "watch", "service", w->service);
    int rc = DISC_ENOMEM;

    if (p && body && (!w->group || !json_object_set_new(body, "group", json_string(w->group))) &&
        (!w->prefer_zone || !json_object_set_new(body, "prefer_zone", json_true()))) {
        p->kind = P_WATCH;
        p->id = ++c->next_id;
        p->w = w;
        rc = send_request(c, body, p->id);
    }
    json_decref(body);
    if (rc) {
        free(p);
        return rc;
    }
    p->next = c->pending;
    c->pending = p;
    w->req = p;
    return 0;
}

/* A new connection: everything the client wants is sent again. Replies to
 * the registrations are not waited for (their ids are nobody's). */
static void conn_up(disc_client *c)
{
    for (struct reg *r = c->regs; r; r = r->next)
        send_request(c, r->body, ++c->next_id);
    for (struct disc_watch *w = c->watches; w; w = w->next)
        if (!w->req)
            watch_send(c, w);
    flush(c);
}

static int errno_code(int e)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR:
    case ECONNREFUSED:
    case EAGAIN: /* a unix socket's backlog is full: busy, try later */
        return DISC_ENOAGENT;
    case EACCES:
    case EPERM:
        return DISC_EACCES;
    case ENOMEM:
    case ENOBUFS:
        return DISC_ENOMEM;
    default:
        return DISC_ESYSTEM;
    }
}

/* One connection attempt. On failure the next one waits longer. */
static int conn_try(disc_client *c)
{
    struct sockaddr_un sa;
    int fd, e;

    if (c->fd >= 0)
        return 0;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, c->path, strlen(c->path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        e = errno;
        fail(c, errno_code(e), "", "socket: %s", strerror(e));
    } else if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        /* A unix socket connects at once or not at all: EINPROGRESS is not
         * a thing here, and EAGAIN means the backlog is full. */
        e = errno;
        close(fd);
        fd = -1;
        fail(c, errno_code(e), "", "connect: %s", strerror(e));
    }
    if (fd < 0) {
        unsigned jitter;
        c->rng ^= c->rng << 13;
        c->rng ^= c->rng >> 17;
        c->rng ^= c->rng << 5;
        /* Up to a quarter more, so that the clients of a restarted agent
         * do not all come back in the same millisecond. */
        jitter = c->rng % (c->backoff_ms / 4 + 1);
        c->retry_at = now_ms() + c->backoff_ms + jitter;
        c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
        return c->last_err;
    }
    c->fd = fd;
    conn_up(c);
    return c->fd >= 0 ? 0 : c->last_err;
}

/* ---- input -------------------------------------------------------------- */

/* A reply with "ok":false: the agent's code and message. */
static void agent_error(json_t *reply, const char **code, const char **message)
{
    json_t *err = json_object_get(reply, "error");
    const char *c = json_string_value(json_object_get(err, "code"));
    const char *m = json_string_value(json_object_get(err, "message"));

    *code = c ? c : "";
    *message = m ? m : "the agent refused without saying why";
}

static int on_watch_reply(disc_client *c, struct pending *p, json_t *root, bool ok)
{
    struct disc_watch *w = p->w;
    json_t *wid = json_object_get(root, "watch");
    struct disc__list *list;
    char why[256];
    int rc;

    free(p);
    if (w)
        w->req = NULL;
    if (!ok) {
        const char *code, *message;
        agent_error(root, &code, &message);
        return w ? event_push(c, w, DISC_EREFUSED, NULL, code, message) : 0;
    }
    if (!json_is_integer(wid) || json_integer_value(wid) <= 0)
        return fail(c, DISC_EPROTO, "", "a watch reply without a 'watch' id");
    if (!w) {
        /* Unwatched while the request was on its way: end it there too. */
        json_t *body = json_pack("{s:s, s:O}", "op", "unwatch", "watch", wid);
        if (body)
            send_request(c, body, ++c->next_id);
        json_decref(body);
        return 0;
    }
    w->remote = (uint64_t)json_integer_value(wid);
    rc = disc__list_from_json(root, &list, why, sizeof why);
    if (rc)
        return fail(c, rc, "", "watch reply: %s", why);
    /* Revision 0 is no etcd revision: the agent gave up waiting for etcd
     * and has no list. Handing it out would invent an empty list. */
    if (list->pub.revision <= 0) {
        disc_list_free(&list->pub);
        return event_push(c, w, DISC_EUNAVAIL, NULL, NULL, NULL);
    }
    return event_push(c, w, 0, list, NULL, NULL);
}

static int on_update(disc_client *c, json_t *root)
{
    json_t *ev = json_object_get(root, "event"), *wid = json_object_get(root, "watch");
    struct disc__list *list;
    struct disc_watch *w;
    char why[256];
    int rc;

    if (!json_is_string(ev))
        return fail(c, DISC_EPROTO, "", "'event' is not a string");
    if (strcmp(json_string_value(ev), "update") != 0)
        return 0; /* an event of a newer agent */
    if (!json_is_integer(wid))
        return fail(c, DISC_EPROTO, "", "an update without a 'watch' id");
    for (w = c->watches; w; w = w->next)
        if (w->remote && (json_int_t)w->remote == json_integer_value(wid))
            break;
    if (!w)
        return 0; /* unwatched */
    rc = disc__list_from_json(root, &list, why, sizeof why);
    if (rc)
        return fail(c, rc, "", "update: %s", why);
    if (list->pub.revision <= 0) {
        disc_list_free(&list->pub);
        return 0;
    }
    return event_push(c, w, 0, list, NULL, NULL);
}

static int on_line(disc_client *c, const char *line, size_t len)
{
    json_error_t jerr;
    json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr), *ok, *id;
    struct pending *p;
    int rc = 0;

    if (!root)
        return fail(c, DISC_EPROTO, "", "not JSON: %s (column %d)", jerr.text, jerr.column);
    if (!json_is_object(root)) {
        json_decref(root);
        return fail(c, DISC_EPROTO, "", "a line that is not a JSON object");
    }
    if (json_object_get(root, "event")) {
        rc = on_update(c, root);
        json_decref(root);
        return rc;
    }
    ok = json_object_get(root, "ok");
    id = json_object_get(root, "id");
    if (!json_is_boolean(ok)) {
        json_decref(root);
        return fail(c, DISC_EPROTO, "", "a reply without \"ok\": true or false");
    }
    /* A reply without an id of ours answers nobody: the agent could not
     * read a request (which the library always sends well formed). */
    for (p = c->pending; p && json_is_integer(id); p = p->next)
        if ((json_int_t)p->id == json_integer_value(id))
            break;
    if (!p || !json_is_integer(id)) {
        json_decref(root);
        return 0;
    }
    pending_unlink(c, p);
    if (p->kind == P_WATCH) {
        /* Any error here, out of memory included, loses news a watcher
         * must get: the caller drops the connection, and the reconnect
         * sends the watch again. */
        rc = on_watch_reply(c, p, root, json_is_true(ok));
        json_decref(root);
        return rc;
    }
    p->done = true;
    p->reply = root;
    if (json_is_true(ok) && p->want_list) {
        char why[256];
        rc = disc__list_from_json(root, &p->list, why, sizeof why);
        if (rc)
            fail(c, rc, "", "resolve reply: %s", why);
    }
    if (!rc && json_is_true(ok) && p->want_text && !(p->text = strndup(line, len)))
        rc = DISC_ENOMEM;
    p->result = rc;
    return rc == DISC_ENOMEM ? 0 : rc;
}

/* Reads what the socket has, hands every complete line to on_line(), and
 * drops the connection on trouble. */
static void read_input(disc_client *c)
{
    while (c->fd >= 0) {
        ssize_t n;
        size_t start = 0;
        char *nl;

        if (c->in.cap - c->in.len < IN_MIN_FREE && c->in.cap < IN_LIMIT) {
            size_t cap = c->in.cap ? c->in.cap * 2 : IN_INITIAL;
            char *p;
            if (cap > IN_LIMIT)
                cap = IN_LIMIT;
            p = realloc(c->in.data, cap);
            if (!p) {
                fail(c, DISC_ENOMEM, "", "no memory for the agent's reply");
                conn_lost(c, DISC_EPROTO);
                return;
            }
            c->in.data = p;
            c->in.cap = cap;
        }
        n = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            if (n == 0)
                fail(c, DISC_ENOAGENT, "", "the agent closed the connection");
            else
                fail(c, DISC_ENOAGENT, "", "read from the agent: %s", strerror(errno));
            conn_lost(c, DISC_ENOAGENT);
            return;
        }
        c->in.len += (size_t)n;
        while (c->fd >= 0 &&
               (nl = memchr(c->in.data + c->scanned, '\n', c->in.len - c->scanned)) != NULL) {
            size_t end = (size_t)(nl - c->in.data), len = end - start;
            int rc = 0;

            if (len > DISC_MAX_REPLY_LINE)
                rc = fail(c, DISC_EPROTO, "", "a line of %zu bytes from the agent (at most %zu)",
                          len, DISC_MAX_REPLY_LINE);
            else if (len > 0 && !(len == 1 && c->in.data[start] == '\r'))
                rc = on_line(c, c->in.data + start, len);
            if (rc) {
                conn_lost(c, DISC_EPROTO);
                return;
            }
            if (len > 0)
                c->backoff_ms = BACKOFF_MIN_MS; /* the connection works */
            start = end + 1;
            c->scanned = start;
        }
        if (c->fd < 0)
            return;
        if (c->in.len - start > DISC_MAX_REPLY_LINE) {
            fail(c, DISC_EPROTO, "", "a line over %zu bytes from the agent", DISC_MAX_REPLY_LINE);
            conn_lost(c, DISC_EPROTO);
            return;
        }
        memmove(c->in.data, c->in.data + start, c->in.len - start);
        c->in.len -= start;
        c->scanned = c->in.len;
        if (c->in.len == 0 && c->in.cap > IN_INITIAL) {
            /* A watcher idles for hours: keep no big buffer meanwhile. */
            buf_clear(&c->in);
        }
    }
}

/* ---- blocking calls ----------------------------------------------------- */

static int remaining_ms(uint64_t deadline, int timeout_ms)
{
    uint64_t now;

    if (timeout_ms < 0)
        return -1;
    now = now_ms();
    return now >= deadline ? 0 : (int)(deadline - now);
}

/* Connects now if disconnected (a call is a reason to try at once). */
static int ensure_connected(disc_client *c)
{
    if (c->closed)
        return fail(c, DISC_ECLOSED, "", "the client is closed");
    if (c->fd >= 0)
        return 0;
    return conn_try(c);
}

/* Sends body (borrowed) and waits for its reply in p. */
static int call(disc_client *c, json_t *body, int timeout_ms, struct pending *p)
{
    uint64_t deadline = now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    int rc = ensure_connected(c);

    if (rc)
        return rc;
    p->kind = P_CALL;
    p->id = ++c->next_id;
    rc = send_request(c, body, p->id);
    if (rc)
        return rc == DISC_ENOMEM ? fail(c, rc, "", "no memory for the request") : rc;
    p->next = c->pending;
    c->pending = p;
    flush(c);
    while (!p->done) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int left = remaining_ms(deadline, timeout_ms), n;

        if (c->out.len)
            pfd.events |= POLLOUT;
        n = poll(&pfd, 1, left);
        if (n < 0 && errno != EINTR) {
            pending_unlink(c, p);
            return fail(c, DISC_ESYSTEM, "", "poll: %s", strerror(errno));
        }
        if (n > 0 && (pfd.revents & POLLOUT))
            flush(c);
        if (n > 0 && c->fd >= 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR)))
            read_input(c);
        if (!p->done && remaining_ms(deadline, timeout_ms) == 0) {
            pending_unlink(c, p);
            return fail(c, DISC_ETIMEDOUT, "", "no reply from the agent within %d ms", timeout_ms);
        }
    }
    if (p->result == DISC_ECLOSED) {
        char why[sizeof c->last_msg];
        snprintf(why, sizeof why, "%s", c->last_msg);
        return fail(c, DISC_ECLOSED, "",
                    "the connection to the agent closed before it answered (%s); the library "
                    "reconnects",
                    why);
    }
    if (p->result == DISC_ENOMEM)
        return fail(c, DISC_ENOMEM, "", "no memory for the agent's reply");
    if (p->result)
        return p->result;
    if (!json_is_true(json_object_get(p->reply, "ok"))) {
        const char *code, *message;
        agent_error(p->reply, &code, &message);
        return fail(c, DISC_EREFUSED, code, "%s", message);
    }
    return 0;
}

static void pending_clear(struct pending *p)
{
    json_decref(p->reply);
    disc_list_free(p->list ? &p->list->pub : NULL);
    free(p->text);
}

/* ---- the client --------------------------------------------------------- */

int disc_client_open(disc_client **out, const char *socket_path)
{
    const char *path = socket_path;
    disc_client *c;

    if (!out)
        return DISC_EINVAL;
    *out = NULL;
    if (!path) {
        path = getenv("DISCOVERY_SOCKET");
        if (!path || !*path)
            path = DISC_DEFAULT_SOCKET;
    }
    if (!*path || strlen(path) >= SUN_PATH_MAX)
        return DISC_EINVAL;
    c = calloc(1, sizeof *c);
    if (!c)
        return DISC_ENOMEM;
    memcpy(c->path, path, strlen(path) + 1);
    c->fd = -1;
    c->ev_tail = &c->ev_head;
    c->backoff_ms = BACKOFF_MIN_MS;
    c->rng = (uint32_t)getpid() ^ (uint32_t)now_ms() ^ (uint32_t)(uintptr_t)c;
    if (!c->rng)
        c->rng = 1;
    *out = c;
    return conn_try(c);
}

static void client_free(disc_client *c)
{
    events_drop(c, NULL);
    while (c->watches) {
        struct disc_watch *w = c->watches;
        c->watches = w->next;
        free(w->service);
        free(w->group);
        free(w);
    }
    while (c->regs) {
        struct reg *r = c->regs;
        c->regs = r->next;
        json_decref(r->body);
        free(r);
    }
    free(c);
}

disc_client *disc_client_close(disc_client *c)
{
    if (!c || c->closed)
        return NULL;
    /* Pending blocking calls cannot be on the stack here except below a
     * callback, and they learn of the close from c->closed; heap ones go
     * with the connection. */
    conn_lost(c, DISC_ECLOSED);
    c->closed = true;
    events_drop(c, NULL);
    if (c->depth == 0)
        client_free(c);
    return NULL;
}

/* The end of every call that may run callbacks. */
static int leave(disc_client *c, int rc)
{
    if (--c->depth == 0 && c->closed) {
        client_free(c);
        return DISC_ECLOSED;
    }
    return c->closed ? DISC_ECLOSED : rc;
}

const char *disc_client_path(const disc_client *c)
{
    return c ? c->path : NULL;
}

int disc_client_last_error(const disc_client *c, const char **code, const char **message)
{
    if (code)
        *code = c ? c->last_code : "";
    if (message)
        *message = c ? c->last_msg : "";
    return c ? c->last_err : DISC_EINVAL;
}

/* ---- event loops -------------------------------------------------------- */

int disc_client_fd(const disc_client *c)
{
    return c ? c->fd : -1;
}

int disc_client_events(const disc_client *c)
{
    if (!c || c->fd < 0)
        return 0;
    return POLLIN | (c->out.len ? POLLOUT : 0);
}

int disc_client_timeout(const disc_client *c)
{
    uint64_t now;

    if (!c || c->closed)
        return -1;
    if (c->ev_head)
        return 0;
    if (c->fd >= 0)
        return -1;
    now = now_ms();
    return c->retry_at <= now                                 ? 0
           : c->retry_at - now > (uint64_t)BACKOFF_MAX_MS * 2 ? (int)BACKOFF_MAX_MS * 2
                                                              : (int)(c->retry_at - now);
}

int disc_client_process(disc_client *c)
{
    if (!c || c->closed)
        return DISC_EINVAL;
    c->depth++;
    c->trouble = 0;
    if (c->fd < 0 && now_ms() >= c->retry_at)
        conn_try(c);
    if (c->fd >= 0 && c->out.len)
        flush(c);
    if (c->fd >= 0)
        read_input(c);
    if (c->fd >= 0 && c->out.len)
        flush(c); /* what the replies read just now asked for (unwatch) */
    dispatch(c);
    return leave(c, c->trouble);
}

int disc_client_wait(disc_client *c, int timeout_ms)
{
    uint64_t deadline = now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);

    if (!c || c->closed)
        return DISC_EINVAL;
    for (;;) {
        unsigned long before = c->callbacks_run;
        int left = remaining_ms(deadline, timeout_ms), t = disc_client_timeout(c), rc, n;
        struct pollfd pfd = {.fd = c->fd, .events = (short)disc_client_events(c)};

        if (t >= 0 && (left < 0 || t < left))
            left = t;
        n = c->fd >= 0 ? poll(&pfd, 1, left) : poll(NULL, 0, left);
        if (n < 0 && errno == EINTR)
            return DISC_EINTR;
        if (n < 0)
            return fail(c, DISC_ESYSTEM, "", "poll: %s", strerror(errno));
        rc = disc_client_process(c);
        if (rc == DISC_ECLOSED)
            return rc; /* c may be freed */
        if (rc || c->callbacks_run != before || remaining_ms(deadline, timeout_ms) == 0)
            return rc;
    }
}

/* ---- resolve and raw requests ------------------------------------------- */

int disc_resolve(disc_client *c, const char *service, const char *group, int timeout_ms,
                 struct disc_list **out)
{
    struct pending p = {.want_list = true};
    json_t *body;
    int rc;

    if (out)
        *out = NULL;
    if (!c || !out)
        return DISC_EINVAL;
    if (!disc__valid_name(service))
        return fail(c, DISC_EINVAL, "", "bad service name '%.253s'", service ? service : "");
    body = json_pack("{s:s, s:s}", "op", "resolve", "service", service);
    if (!body || (group && json_object_set_new(body, "group", json_string(group)))) {
        json_decref(body);
        return fail(c, DISC_ENOMEM, "", "no memory for the request");
    }
    rc = call(c, body, timeout_ms, &p);
    json_decref(body);
    if (!rc) {
        *out = &p.list->pub;
        p.list = NULL;
    }
    pending_clear(&p);
    return rc;
}

int disc_request_json(disc_client *c, const char *json_line, int timeout_ms, char **reply_out)
{
    struct pending p = {.want_text = true};
    json_error_t jerr;
    json_t *body;
    const char *op;
    int rc;

    if (reply_out)
        *reply_out = NULL;
    if (!c || !json_line || !reply_out)
        return DISC_EINVAL;
    body = json_loads(json_line, JSON_REJECT_DUPLICATES, &jerr);
    if (!body)
        return fail(c, DISC_EINVAL, "", "the request is not JSON: %s", jerr.text);
    op = json_string_value(json_object_get(body, "op"));
    if (!json_is_object(body) || !op) {
        json_decref(body);
        return fail(c, DISC_EINVAL, "", "a request is a JSON object with an \"op\" string");
    }
    if (!strcmp(op, "watch") || !strcmp(op, "unwatch")) {
        json_decref(body);
        return fail(c, DISC_EINVAL, "", "use disc_watch() and disc_unwatch() to watch");
    }
    json_object_del(body, "id");
    rc = call(c, body, timeout_ms, &p);
    json_decref(body);
    if (!rc) {
        *reply_out = p.text;
        p.text = NULL;
    }
    pending_clear(&p);
    return rc;
}

/* ---- registrations ------------------------------------------------------ */

static struct reg **reg_find(disc_client *c, const char *name, const char *address)
{
    struct reg **pp;

    for (pp = &c->regs; *pp; pp = &(*pp)->next) {
        json_t *b = (*pp)->body;
        if (!strcmp(json_string_value(json_object_get(b, "name")), name) &&
            !strcmp(json_string_value(json_object_get(b, "address")), address))
            break;
    }
    return pp;
}

static void reg_drop(disc_client *c, const char *name, const char *address)
{
    struct reg **pp = reg_find(c, name, address), *r = *pp;

    if (r) {
        *pp = r->next;
        json_decref(r->body);
        free(r);
    }
}

static json_t *reg_body(disc_client *c, const struct disc_registration *r, int *rc)
{
    json_t *b, *meta = NULL;
    char why[128], shown[VALIDATE_EXCERPT + 4];

    *rc = DISC_EINVAL;
    /* The agent's rules (validate.h), so that a bad registration fails
     * here with the same reason the agent would give. */
    if (!validate_name(r->name, why, sizeof why)) {
        fail(c, DISC_EINVAL, "", "bad service name '%s': %s",
             validate_excerpt(r->name ? r->name : "", shown, sizeof shown), why);
        return NULL;
    }
    if (!validate_address(r->address, why, sizeof why)) {
        fail(c, DISC_EINVAL, "", "bad address '%s': %s",
             validate_excerpt(r->address ? r->address : "", shown, sizeof shown), why);
        return NULL;
    }
    if (r->n_meta && (!r->meta_keys || !r->meta_values)) {
        fail(c, DISC_EINVAL, "", "n_meta without meta_keys and meta_values");
        return NULL;
    }
    /* json_pack() and json_string() refuse text that is not UTF-8 (or
     * fail for want of memory, which the next step would meet anyway). */
    b = json_pack("{s:s, s:s, s:s, s:I}", "op", "register", "name", r->name, "address", r->address,
                  "weight", (json_int_t)r->weight);
    if (!b || (r->group && *r->group && json_object_set_new(b, "group", json_string(r->group)))) {
        json_decref(b);
        fail(c, DISC_EINVAL, "", "name, address and group must be UTF-8 text");
        return NULL;
    }
    *rc = DISC_ENOMEM;
    if (r->n_meta) {
        meta = json_object();
        if (!meta)
            goto nomem;
        for (size_t i = 0; i < r->n_meta; i++) {
            const char *k = r->meta_keys[i], *v = r->meta_values[i];
            if (!k || !*k || !v || json_object_get(meta, k)) {
                json_decref(meta);
                json_decref(b);
                *rc = DISC_EINVAL;
                fail(c, DISC_EINVAL, "", "metadata %zu: %s", i,
                     !k || !*k ? "empty key"
                     : !v      ? "NULL value"
                               : "the key is given twice");
                return NULL;
            }
            /* json_string() refuses text that is not UTF-8. */
            if (json_object_set_new(meta, k, json_string(v))) {
                json_decref(meta);
                json_decref(b);
                *rc = DISC_EINVAL;
                fail(c, DISC_EINVAL, "", "metadata '%.64s' is not UTF-8 text", k);
                return NULL;
            }
        }
        if (json_object_set_new(b, "metadata", meta))
            goto nomem;
    }
    if (json_object_set_new(b, "persist", json_boolean(r->persist)))
        goto nomem;
    *rc = 0;
    return b;
nomem:
    json_decref(b);
    fail(c, DISC_ENOMEM, "", "no memory for the registration");
    return NULL;
}

int disc_register(disc_client *c, const struct disc_registration *r, int timeout_ms)
{
    struct pending p = {0};
    struct reg *reg, **pp;
    json_t *body;
    int rc;

    if (!c || !r)
        return DISC_EINVAL;
    if (c->closed)
        return fail(c, DISC_ECLOSED, "", "the client is closed");
    body = reg_body(c, r, &rc);
    if (!body)
        return rc;
    reg = calloc(1, sizeof *reg);
    if (!reg) {
        json_decref(body);
        return fail(c, DISC_ENOMEM, "", "no memory for the registration");
    }
    /* Connected first, so that a reconnect made here sends the older
     * registrations and not this one twice. */
    rc = ensure_connected(c);
    pp = reg_find(c, r->name, r->address);
    if (*pp) {
        json_decref((*pp)->body);
        (*pp)->body = body;
        free(reg);
        reg = *pp;
    } else {
        reg->body = body;
        *pp = reg;
    }
    if (rc)
        return rc; /* remembered: sent when the agent answers */
    rc = call(c, reg->body, timeout_ms, &p);
    if (rc == DISC_EREFUSED || rc == DISC_EINVAL || rc == DISC_ENOMEM) {
        /* The failure may have come from another call's reconnect; look
         * the registration up again rather than trust reg. */
        reg_drop(c, r->name, r->address);
    } else if (!rc && !json_is_true(json_object_get(p.reply, "registered"))) {
        const char *m = json_string_value(json_object_get(p.reply, "message"));
        rc = fail(c, DISC_EINPROGRESS, "", "%s", m ? m : "not yet written to etcd");
    }
    pending_clear(&p);
    return rc;
}

int disc_deregister(disc_client *c, const char *name, const char *address, int timeout_ms)
{
    struct pending p = {0};
    json_t *body;
    int rc;

    if (!c || !name || !address)
        return c ? fail(c, DISC_EINVAL, "", "name and address are required") : DISC_EINVAL;
    reg_drop(c, name, address);
    body = json_pack("{s:s, s:s, s:s}", "op", "deregister", "name", name, "address", address);
    if (!body)
        return fail(c, DISC_ENOMEM, "", "no memory for the request");
    rc = call(c, body, timeout_ms, &p);
    json_decref(body);
    pending_clear(&p);
    return rc;
}

/* ---- watches ------------------------------------------------------------ */

int disc_watch(disc_client *c, const char *service, const char *group, disc_watch_cb cb, void *arg,
               struct disc_watch **out)
{
    return disc_watch_zone(c, service, group, false, cb, arg, out);
}

int disc_watch_zone(disc_client *c, const char *service, const char *group, bool prefer_zone,
                    disc_watch_cb cb, void *arg, struct disc_watch **out)
{
    struct disc_watch *w;

    if (out)
        *out = NULL;
    if (!c || !cb || !out)
        return DISC_EINVAL;
    if (c->closed)
        return fail(c, DISC_ECLOSED, "", "the client is closed");
    if (!disc__valid_name(service))
        return fail(c, DISC_EINVAL, "", "bad service name '%.253s'", service ? service : "");
    w = calloc(1, sizeof *w);
    if (!w || !(w->service = strdup(service)) || (group && !(w->group = strdup(group)))) {
        if (w)
            free(w->service);
        free(w);
        return fail(c, DISC_ENOMEM, "", "no memory for the watch");
    }
    w->c = c;
    w->cb = cb;
    w->arg = arg;
    w->prefer_zone = prefer_zone;
    if (c->fd >= 0 && watch_send(c, w) != 0) {
        free(w->service);
        free(w->group);
        free(w);
        return fail(c, DISC_ENOMEM, "", "no memory for the watch");
    }
    w->next = c->watches;
    c->watches = w;
    if (c->fd >= 0) {
        flush(c);
    } else if (conn_try(c) != 0) {
        /* conn_try() sent it if it connected; if not, say so once. */
        event_push(c, w, DISC_ENOAGENT, NULL, NULL, NULL);
    }
    *out = w;
    return 0;
}

void disc_unwatch(struct disc_watch *w)
{
    disc_client *c;

    if (!w)
        return;
    c = w->c;
    for (struct disc_watch **pp = &c->watches; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    events_drop(c, w);
    if (w->req)
        w->req->w = NULL; /* its reply ends the agent's watch */
    if (w->remote && c->fd >= 0) {
        json_t *body = json_pack("{s:s, s:I}", "op", "unwatch", "watch", (json_int_t)w->remote);
        if (body && !send_request(c, body, ++c->next_id))
            flush(c);
        json_decref(body);
    }
    free(w->service);
    free(w->group);
    free(w);
}

const char *disc_watch_service(const struct disc_watch *w)
{
    return w ? w->service : NULL;
}

const char *disc_watch_group(const struct disc_watch *w)
{
    return w ? w->group : NULL;
}
