/* libcurl's multi interface driven by a libuv loop.
 *
 * curl tells us which sockets to watch (socket_cb) and when to call it back
 * (timer_cb); libuv tells us when a socket is ready (poll_cb) or the timer
 * fired (timeout_cb); both then run curl_multi_socket_action() and
 * dispatch(), which hands collected data and finished transfers to their
 * owners. Owners' callbacks therefore never run inside a libcurl callback. */
#include "http.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "error.h"
#include "fdlimit.h"

/* curl's receive buffer for streaming requests (see http_request). */
#define HTTP_STREAM_BUFFER 1024

/* Kept for the next request rather than freed: easy handles (curl_easy_init
 * builds several KiB in dozens of allocations; a reset one keeps them) and
 * poll handles of sockets curl stopped watching (an idle keep-alive
 * connection comes back under the same fd for the next request, which
 * then needs no uv_poll_init's ioctl and epoll_ctl calls). The lease's
 * keep-alive, the agent's only work at rest, then allocates little and
 * makes fewer system calls (issue 18: malloc was 15-28% of its cost). */
#define HTTP_SPARE_EASY 4
#define HTTP_SPARE_POLLS 8

struct http_sock {
    uv_poll_t poll; /* poll.data points back to this struct */
    curl_socket_t fd;
    http_client *c;
    bool parked; /* stopped, kept for fd's next use by curl */
    struct http_sock *prev, *next;
};

struct http_req {
    http_client *c;
    CURL *easy;
    struct curl_slist *headers;
    http_done_cb done;
    http_chunk_cb on_chunk;
    void *arg;

    char *data; /* buffered body, or the chunk not yet handed over */
    size_t len, cap, max;
    bool overflow;  /* the body passed max: the transfer is aborted */
    bool cancelled; /* http_cancel ran while a callback of ours was busy */
    bool queued;    /* on the client's pending-chunk queue */
    int busy;       /* a callback of this request is running */
    int keepalive_cnt;
    int sock_errno; /* why the last socket() for this request failed, or 0 */
    char errbuf[CURL_ERROR_SIZE];

    /* An open request body (http_req_send): bytes not yet taken by curl,
     * and whether curl's read callback is paused waiting for more. */
    char *out;
    size_t out_len, out_off, out_cap;
    bool open_body;
    bool send_paused;
    bool peer_gone; /* the server closed while the body was open */

    struct http_req *prev, *next;  /* every active request */
    struct http_req *pending_next; /* requests with chunk data to hand over */
};

struct http_client {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    struct http_req *reqs;
    struct http_req *pending_head, *pending_tail;
    struct http_sock *socks; /* watched and parked alike */
    size_t parked;
    CURL *spare[HTTP_SPARE_EASY]; /* reset easy handles, for the next requests */
    size_t n_spare;
    int dispatching;    /* dispatch() depth */
    bool peer_gone;     /* some request has peer_gone set */
    bool close_pending; /* http_client_close() ran inside dispatch() */
    bool closing;
};

static void do_close(http_client *c);

static void dispatch(http_client *c);

/* ---- buffers ---------------------------------------------------------- */

static int buf_append(struct http_req *r, const char *p, size_t n)
{
    if (n > r->max - r->len) {
        r->overflow = true;
        return -1;
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n + 1)
            cap *= 2;
        char *d = realloc(r->data, cap);
        if (!d)
            return -1;
        r->data = d;
        r->cap = cap;
    }
    memcpy(r->data + r->len, p, n);
    r->len += n;
    r->data[r->len] = '\0';
    return 0;
}

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct http_req *r = userdata;
    size_t n = size * nmemb;

    /* Returning less than n makes curl fail the transfer with
     * CURLE_WRITE_ERROR; done() then reports the reason. */
    if (buf_append(r, ptr, n) < 0)
        return 0;
    if (r->on_chunk && !r->queued && r->len > 0) {
        http_client *c = r->c;
        r->queued = true;
        r->pending_next = NULL;
        if (c->pending_tail)
            c->pending_tail->pending_next = r;
        else
            c->pending_head = r;
        c->pending_tail = r;
    }
    return n;
}

/* curl asks for more of an open request body. With nothing to send it
 * pauses the upload; http_req_send() resumes it. */
static size_t read_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
    struct http_req *r = userdata;
    size_t room = size * nitems, n = r->out_len - r->out_off;

    if (n == 0) {
        r->send_paused = true;
        return CURL_READFUNC_PAUSE;
    }
    if (n > room)
        n = room;
    memcpy(buf, r->out + r->out_off, n);
    r->out_off += n;
    if (r->out_off == r->out_len)
        r->out_off = r->out_len = 0;
    return n;
}

static int sockopt_cb(void *clientp, curl_socket_t fd, curlsocktype purpose)
{
    struct http_req *r = clientp;

    if (purpose == CURLSOCKTYPE_IPCXN && r->keepalive_cnt > 0) {
        int cnt = r->keepalive_cnt;
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    }
    return CURL_SOCKOPT_OK;
}

/* curl's own socket() call keeps no errno: out of descriptors, a connect
 * would be reported as "Couldn't connect to server". Opening the socket
 * here keeps the reason, and finish() names it. */
static curl_socket_t opensocket_cb(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    struct http_req *r = clientp;
    int fd;

    (void)purpose;
    fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    r->sock_errno = fd < 0 ? errno : 0;
    return fd < 0 ? CURL_SOCKET_BAD : fd;
}

/* ---- request lifetime ------------------------------------------------- */

static void unqueue(http_client *c, struct http_req *r)
{
    struct http_req **pp = &c->pending_head, *prev = NULL;

    if (!r->queued)
        return;
    while (*pp && *pp != r) {
        prev = *pp;
        pp = &(*pp)->pending_next;
    }
    if (*pp)
        *pp = r->pending_next;
    if (c->pending_tail == r)
        c->pending_tail = prev;
    r->queued = false;
}

/* Takes the request out of curl and our lists and frees it. */
static void req_free(struct http_req *r)
{
    http_client *c = r->c;

    unqueue(c, r);
    if (r->prev)
        r->prev->next = r->next;
    else
        c->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    if (r->easy) {
        curl_multi_remove_handle(c->multi, r->easy);
        if (!c->closing && c->n_spare < HTTP_SPARE_EASY) {
            curl_easy_reset(r->easy);
            c->spare[c->n_spare++] = r->easy;
        } else {
            curl_easy_cleanup(r->easy);
        }
    }
    curl_slist_free_all(r->headers);
    free(r->data);
    free(r->out);
    free(r);
}

static int curl_to_err(struct http_req *r, CURLcode rc)
{
    switch (rc) {
    case CURLE_OK:
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        return DA_ETIMEDOUT;
    case CURLE_WRITE_ERROR:
        return r->overflow ? DA_EMSGSIZE : DA_ENOMEM;
    case CURLE_OUT_OF_MEMORY:
        return DA_ENOMEM;
    case CURLE_FILESIZE_EXCEEDED:
        return DA_EMSGSIZE;
    default:
        return DA_ETRANSPORT;
    }
}

static void finish(struct http_req *r, int err)
{
    long status = 0;

    if (err && (r->sock_errno == EMFILE || r->sock_errno == ENFILE))
        snprintf(r->errbuf, sizeof r->errbuf,
                 "out of file descriptors (%s): cannot open a connection (RLIMIT_NOFILE %ld)",
                 strerror(r->sock_errno), fdlimit_get());
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(r->c->multi, r->easy);
    r->busy++;
    if (r->done) {
        if (r->on_chunk)
            r->done(r, err, status, NULL, 0, r->arg);
        else
            r->done(r, err, status, err ? NULL : (r->data ? r->data : ""), err ? 0 : r->len,
                    r->arg);
    }
    r->busy--;
    req_free(r);
}

/* A chunk was handed over. A stream (a watch) may then be silent for
 * hours, so it keeps no buffer in between: 4 KiB per watch otherwise. */
static void release_chunk(struct http_req *r)
{
    r->len = 0;
    free(r->data);
    r->data = NULL;
    r->cap = 0;
}

/* Hands pending chunks to their owners, then finished transfers. Every
 * callback may start or cancel requests, so each step re-reads the queues
 * rather than holding pointers across a callback. */
static void dispatch_once(http_client *c);

static void dispatch(http_client *c)
{
    c->dispatching++;
    dispatch_once(c);
    /* A callback closed the client: finish that now that no request of
     * ours is on the stack. */
    if (--c->dispatching == 0 && c->close_pending)
        do_close(c);
}

static void dispatch_once(http_client *c)
{
    CURLMsg *msg;
    int left;

    while (c->pending_head && !c->close_pending) {
        struct http_req *r = c->pending_head;
        c->pending_head = r->pending_next;
        if (!c->pending_head)
            c->pending_tail = NULL;
        r->queued = false;

        r->busy++;
        int stop = r->on_chunk(r, r->data, r->len, r->arg);
        r->busy--;
        release_chunk(r);
        if (r->cancelled) {
            req_free(r);
        } else if (stop) {
            r->on_chunk = NULL; /* no chunks after the owner said stop */
            finish(r, DA_ECANCELED);
        }
    }

    while (!c->close_pending && (msg = curl_multi_info_read(c->multi, &left))) {
        struct http_req *r = NULL;
        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        CURLcode rc = msg->data.result;
        /* A chunk that arrived with the end of the transfer goes first. */
        if (r->on_chunk && r->len > 0 && rc == CURLE_OK) {
            unqueue(c, r);
            r->busy++;
            int stop = r->on_chunk(r, r->data, r->len, r->arg);
            r->busy--;
            r->len = 0;
            if (r->cancelled) {
                req_free(r);
                continue;
            }
            if (stop)
                rc = CURLE_WRITE_ERROR;
        }
        finish(r, rc == CURLE_WRITE_ERROR && !r->overflow && r->on_chunk ? DA_ECANCELED
                                                                         : curl_to_err(r, rc));
    }

    while (c->peer_gone && !c->close_pending) {
        struct http_req *r;
        c->peer_gone = false;
        for (r = c->reqs; r && !(r->peer_gone && !r->cancelled && !r->busy); r = r->next)
            ;
        if (!r)
            break;
        c->peer_gone = true; /* look again after this one */
        snprintf(r->errbuf, sizeof r->errbuf, "the server closed the connection");
        r->peer_gone = false;
        finish(r, DA_ETRANSPORT);
    }
}

/* ---- libuv side ------------------------------------------------------- */

static void sock_closed(uv_handle_t *h)
{
    free(h->data);
}

static void sock_close(struct http_sock *s)
{
    http_client *c = s->c;

    if (uv_is_closing((uv_handle_t *)&s->poll))
        return;
    if (s->parked)
        c->parked--;
    if (s->prev)
        s->prev->next = s->next;
    else
        c->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    uv_close((uv_handle_t *)&s->poll, sock_closed);
}

static void poll_cb(uv_poll_t *p, int status, int events)
{
    struct http_sock *s = p->data;
    http_client *c = s->c;
    int flags = 0, running;

    /* A poll error (the peer reset, say) is reported to curl as an error
     * on the socket, so the transfer fails now instead of timing out. */
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    curl_multi_socket_action(c->multi, s->fd, flags, &running);
    dispatch(c);
}

static void timeout_cb(uv_timer_t *t)
{
    http_client *c = t->data;
    int running;

    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    dispatch(c);
}

/* ---- libcurl side ----------------------------------------------------- */

/* A request whose body is open ends only when both directions have: curl
 * stops reading at the server's close but then waits, forever, for the
 * rest of a paused body. It tells us by no longer asking for the socket;
 * if the socket then reads as closed, the request is over (dispatch
 * finishes it). */
static void note_peer_gone(http_client *c, CURL *easy, curl_socket_t fd)
{
    struct http_req *r = NULL;
    char b;
    ssize_t n;

    if (!easy || curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r) != CURLE_OK || !r ||
        !r->open_body || r->peer_gone)
        return;
    n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        r->peer_gone = true;
        c->peer_gone = true;
    }
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    http_client *c = userp;
    struct http_sock *s = socketp;
    int events = 0;

    if (what == CURL_POLL_REMOVE) {
        note_peer_gone(c, easy, fd);
        if (s) {
            curl_multi_assign(c->multi, fd, NULL);
            uv_poll_stop(&s->poll);
            if (c->parked < HTTP_SPARE_POLLS && !c->closing) {
                s->parked = true;
                c->parked++;
            } else {
                sock_close(s);
            }
        }
        return 0;
    }
    if (!s) {
        /* A parked handle of this fd: the same connection back from
         * curl's pool, or a new socket that got the number (a stopped
         * uv_poll_t holds nothing in epoll, so either way starting it
         * adds the fd afresh). */
        for (s = c->socks; s && !(s->parked && s->fd == fd); s = s->next)
            ;
        if (s) {
            s->parked = false;
            c->parked--;
            curl_multi_assign(c->multi, fd, s);
        }
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return -1;
        s->fd = fd;
        s->c = c;
        if (uv_poll_init_socket(c->loop, &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        s->next = c->socks;
        if (c->socks)
            c->socks->prev = s;
        c->socks = s;
        curl_multi_assign(c->multi, fd, s);
    }
    /* CURL_POLL_INOUT is IN | OUT, so both bits are tested. */
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&s->poll, events, poll_cb);
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    http_client *c = userp;

    (void)multi;
    if (c->closing)
        return 0;
    /* curl must not be re-entered from here; a zero timeout is honoured on
     * the next loop iteration by the timer. */
    if (timeout_ms < 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, timeout_cb, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- public ----------------------------------------------------------- */

static void global_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

int http_client_new(http_client **out, uv_loop_t *loop)
{
    static uv_once_t once = UV_ONCE_INIT;
    http_client *c;

    /* curl_global_init is not thread-safe: it runs once per process. */
    uv_once(&once, global_init);
    c = calloc(1, sizeof *c);
    if (!c)
        return DA_ENOMEM;
    c->loop = loop;
    c->multi = curl_multi_init();
    if (!c->multi) {
        free(c);
        return DA_ENOMEM;
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    *out = c;
    return 0;
}

int http_request(http_client *c, const struct http_req_opts *o, http_done_cb done, void *arg,
                 http_req **out)
{
    struct http_req *r;
    CURL *e;

    if (c->closing || !o->url || !o->max_body)
        return DA_EINVAL;
    r = calloc(1, sizeof *r);
    if (!r)
        return DA_ENOMEM;
    e = r->easy = c->n_spare ? c->spare[--c->n_spare] : curl_easy_init();
    if (!e)
        goto nomem;
    r->c = c;
    r->done = done;
    r->on_chunk = o->on_chunk;
    r->arg = arg;
    r->max = o->max_body;
    r->keepalive_cnt = o->keepalive_cnt;

    /* curl would send "Expect: 100-continue" for larger bodies and wait for
     * an answer etcd never sends; an empty Expect header turns that off. */
    r->headers = curl_slist_append(NULL, "Expect:");
    if (!r->headers)
        goto nomem;
    for (const char *const *h = o->headers; h && *h; h++) {
        struct curl_slist *l = curl_slist_append(r->headers, *h);
        if (!l)
            goto nomem;
        r->headers = l;
    }

    curl_easy_setopt(e, CURLOPT_URL, o->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, opensocket_cb);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, r);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    r->open_body = o->open_body;
    if (o->open_body) {
        /* A body that never ends: its length is declared far beyond what
         * will ever be sent (see http.h), and curl reads it from read_cb. */
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)HTTP_OPEN_BODY_LENGTH);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, read_cb);
        curl_easy_setopt(e, CURLOPT_READDATA, r);
        /* curl's smallest upload buffer (64 KiB by default). */
        curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);
        if (o->body && http_req_send(r, o->body, o->body_len) < 0)
            goto nomem;
    } else if (o->body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)o->body_len);
        if (curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, o->body) != CURLE_OK)
            goto nomem;
    }
    if (!o->on_chunk)
        /* A Content-Length over the cap fails at once, before any body. */
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_body);
    if (o->timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms);
    if (o->connect_timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
    if (o->on_chunk)
        /* curl's receive buffer, 16 KiB per handle by default, lives as long
         * as the handle: for a watch, as long as the agent, and it takes at
         * least a resident page of its own. At curl's minimum (1 KiB) the
         * buffers of many watches share pages. Watch events are small; a
         * larger one just takes more reads. */
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)HTTP_STREAM_BUFFER);
    if (o->keepalive_idle_s > 0) {
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, (long)o->keepalive_idle_s);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL,
                         (long)(o->keepalive_intvl_s > 0 ? o->keepalive_intvl_s : 1));
        curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION, sockopt_cb);
        curl_easy_setopt(e, CURLOPT_SOCKOPTDATA, r);
        /* A keep-alive connection is only reused by requests with the same
         * options; a watch opens its own so that its probes stay its own. */
        curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    }
    if (o->tls) {
        if (o->tls->ca_file)
            curl_easy_setopt(e, CURLOPT_CAINFO, o->tls->ca_file);
        if (o->tls->cert_file)
            curl_easy_setopt(e, CURLOPT_SSLCERT, o->tls->cert_file);
        if (o->tls->key_file)
            curl_easy_setopt(e, CURLOPT_SSLKEY, o->tls->key_file);
    }

    r->next = c->reqs;
    if (c->reqs)
        c->reqs->prev = r;
    c->reqs = r;
    if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
        r->easy = NULL;
        curl_easy_cleanup(e);
        req_free(r);
        return DA_ENOMEM;
    }
    if (out)
        *out = r;
    return 0;

nomem:
    if (r->easy)
        curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    free(r->out);
    free(r);
    return DA_ENOMEM;
}

int http_req_send(http_req *r, const char *data, size_t len)
{
    if (r->cancelled)
        return DA_EINVAL;
    if (r->out_off > 0) {
        memmove(r->out, r->out + r->out_off, r->out_len - r->out_off);
        r->out_len -= r->out_off;
        r->out_off = 0;
    }
    if (r->out_len + len > r->out_cap) {
        size_t cap = r->out_cap ? r->out_cap : 1024;
        while (cap < r->out_len + len)
            cap *= 2;
        char *p = realloc(r->out, cap);
        if (!p)
            return DA_ENOMEM;
        r->out = p;
        r->out_cap = cap;
    }
    memcpy(r->out + r->out_len, data, len);
    r->out_len += len;
    if (r->send_paused) {
        /* Unpausing only marks the transfer due; curl then asks for a
         * timeout of 0 and the loop's next turn sends the bytes. */
        r->send_paused = false;
        curl_easy_pause(r->easy, CURLPAUSE_CONT);
    }
    return 0;
}

void http_cancel(http_req *r)
{
    if (!r || r->cancelled)
        return;
    r->done = NULL;
    if (r->busy) {
        /* The callback running now belongs to this request: it is freed
         * when that callback returns. */
        r->cancelled = true;
        return;
    }
    req_free(r);
}

const char *http_req_errtext(const http_req *r)
{
    return r->errbuf;
}

static void timer_closed(uv_handle_t *h)
{
    free(h->data);
}

void http_client_close(http_client *c)
{
    if (!c || c->closing || c->close_pending)
        return;
    if (c->dispatching) {
        c->close_pending = true;
        return;
    }
    do_close(c);
}

static void do_close(http_client *c)
{
    c->close_pending = false;
    c->closing = true;
    /* Order matters: transfers first, then the multi handle (which closes
     * its cached connections), then whatever sockets curl did not hand
     * back, then the timer, whose close callback frees the client. */
    while (c->reqs) {
        c->reqs->done = NULL;
        c->reqs->busy = 0;
        req_free(c->reqs);
    }
    while (c->n_spare)
        curl_easy_cleanup(c->spare[--c->n_spare]);
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    while (c->socks)
        sock_close(c->socks);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, timer_closed);
}
