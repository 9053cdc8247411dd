/* A small blocking HTTP/1.1 client of etcd's JSON gateway, with a
 * non-blocking half for timing: the benchmark's "other writer" and its own
 * direct watch (the propagation floor). One keep-alive TCP connection per
 * struct gw; TCP_NODELAY, so a request leaves at once. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench.h"

#define GW_TIMEOUT_MS 10000
#define GW_MAX_REPLY ((size_t)64 * 1024 * 1024)

int gw_open(struct gw *g, const char *url)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    const char *colon = strrchr(url, ':');
    int one = 1;

    memset(g, 0, sizeof *g);
    g->fd = -1;
    if (strncmp(url, "http://127.0.0.1:", 17) || !colon)
        return -1;
    g->port = (int)strtol(colon + 1, NULL, 10);
    sa.sin_port = htons((uint16_t)g->port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    g->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (g->fd < 0)
        return -1;
    setsockopt(g->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(g->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(g->fd);
        g->fd = -1;
        return -1;
    }
    return 0;
}

void gw_close(struct gw *g)
{
    if (g->fd >= 0)
        close(g->fd);
    free(g->in);
    memset(g, 0, sizeof *g);
    g->fd = -1;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int gw_send(struct gw *g, const char *path, const char *body)
{
    size_t blen = strlen(body);
    size_t cap = blen + 256;
    char *req = malloc(cap);
    int n, rc;

    if (!req)
        return -1;
    n = snprintf(req, cap,
                 "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\n\r\n%s",
                 path, g->port, blen, body);
    rc = n > 0 && (size_t)n < cap ? send_all(g->fd, req, (size_t)n) : -1;
    free(req);
    return rc;
}

/* Appends what the socket holds now; 0 (maybe nothing), or -1 at EOF/error. */
static int read_some(struct gw *g, bool block)
{
    if (g->cap - g->len < 16384) {
        size_t cap = g->cap ? g->cap * 2 : 65536;
        char *p;
        if (cap > GW_MAX_REPLY)
            return -1;
        p = realloc(g->in, cap);
        if (!p)
            return -1;
        g->in = p;
        g->cap = cap;
    }
    ssize_t r = recv(g->fd, g->in + g->len, g->cap - g->len - 1, block ? 0 : MSG_DONTWAIT);
    if (r > 0) {
        g->len += (size_t)r;
        g->in[g->len] = '\0';
        return 0;
    }
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    return -1;
}

static void consume(struct gw *g, size_t n)
{
    memmove(g->in, g->in + n, g->len - n);
    g->len -= n;
    if (g->in)
        g->in[g->len] = '\0';
}

/* A complete reply at the front of g->in: 1 (body in *body, consumed), 0
 * not yet, -1 malformed. */
static int parse_reply(struct gw *g, char **body)
{
    char *hend, *p;
    size_t hlen;

    if (!g->len)
        return 0;
    hend = strstr(g->in, "\r\n\r\n");
    if (!hend)
        return 0;
    hlen = (size_t)(hend - g->in) + 4;
    if (strncmp(g->in, "HTTP/1.1 ", 9))
        return -1;
    /* Content-Length, or chunked. */
    for (p = g->in; p && p < hend; p = strstr(p, "\r\n")) {
        p += 2;
        if (!strncasecmp(p, "Content-Length:", 15)) {
            size_t cl = strtoul(p + 15, NULL, 10);
            if (g->len < hlen + cl)
                return 0;
            if (body) {
                *body = malloc(cl + 1);
                if (!*body)
                    return -1;
                memcpy(*body, g->in + hlen, cl);
                (*body)[cl] = '\0';
            }
            consume(g, hlen + cl);
            return 1;
        }
    }
    /* Chunked: walk the chunks; complete only once the last one is in. */
    size_t at = hlen, out = 0;
    char *b = NULL;
    for (;;) {
        char *eol = strstr(g->in + at, "\r\n");
        if (!eol)
            goto incomplete;
        size_t sz = strtoul(g->in + at, NULL, 16);
        size_t data = (size_t)(eol - g->in) + 2;
        if (g->len < data + sz + 2)
            goto incomplete;
        if (sz == 0) {
            if (body) {
                *body = b ? b : strdup("");
                b = NULL;
            }
            free(b);
            consume(g, data + 2);
            return 1;
        }
        if (body) {
            char *nb = realloc(b, out + sz + 1);
            if (!nb) {
                free(b);
                return -1;
            }
            b = nb;
            memcpy(b + out, g->in + data, sz);
            out += sz;
            b[out] = '\0';
        }
        at = data + sz + 2;
    }
incomplete:
    free(b);
    return 0;
}

int gw_poll_reply(struct gw *g, char **reply)
{
    int rc = parse_reply(g, reply);

    if (rc != 0)
        return rc;
    if (read_some(g, false) < 0)
        return -1;
    return parse_reply(g, reply);
}

int gw_post(struct gw *g, const char *path, const char *body, char **reply)
{
    uint64_t deadline = now_ns() + (uint64_t)GW_TIMEOUT_MS * 1000000u;
    char *r = NULL;
    int rc;

    if (gw_send(g, path, body) < 0)
        return -1;
    while ((rc = parse_reply(g, &r)) == 0) {
        struct pollfd p = {.fd = g->fd, .events = POLLIN};
        if (now_ns() > deadline || poll(&p, 1, 100) < 0 || (p.revents && read_some(g, false) < 0))
            return -1;
    }
    if (rc < 0)
        return -1;
    if (reply)
        *reply = r;
    else
        free(r);
    return 0;
}

int64_t gw_revision(const char *reply)
{
    const char *p = reply ? strstr(reply, "\"revision\":\"") : NULL;

    return p ? strtoll(p + 12, NULL, 10) : -1;
}

static char *kv_body(const char *key, const char *value)
{
    size_t kl = strlen(key), vl = value ? strlen(value) : 0;
    char *kb = malloc(4 * (kl + 2) / 3 + 4), *vb = malloc(4 * (vl + 2) / 3 + 4);
    size_t cap = 4 * (kl + vl) / 3 + 64;
    char *body = malloc(cap);

    if (!kb || !vb || !body) {
        free(kb);
        free(vb);
        free(body);
        return NULL;
    }
    b64_encode(key, kl, kb);
    if (value) {
        b64_encode(value, vl, vb);
        snprintf(body, cap, "{\"key\":\"%s\",\"value\":\"%s\"}", kb, vb);
    } else {
        snprintf(body, cap, "{\"key\":\"%s\"}", kb);
    }
    free(kb);
    free(vb);
    return body;
}

int gw_send_put(struct gw *g, const char *key, const char *value)
{
    char *body = kv_body(key, value);
    int rc = body ? gw_send(g, "/v3/kv/put", body) : -1;

    free(body);
    return rc;
}

int gw_send_delete(struct gw *g, const char *key)
{
    char *body = kv_body(key, NULL);
    int rc = body ? gw_send(g, "/v3/kv/deleterange", body) : -1;

    free(body);
    return rc;
}

static int post_rev(struct gw *g, const char *path, char *body, int64_t *revision)
{
    char *reply = NULL;
    int rc = body ? gw_post(g, path, body, &reply) : -1;

    if (rc == 0 && revision)
        *revision = gw_revision(reply);
    if (rc == 0 && reply && strstr(reply, "\"error\""))
        rc = -1;
    free(body);
    free(reply);
    return rc;
}

int gw_put(struct gw *g, const char *key, const char *value, int64_t *revision)
{
    return post_rev(g, "/v3/kv/put", kv_body(key, value), revision);
}

int gw_delete(struct gw *g, const char *key, int64_t *revision)
{
    return post_rev(g, "/v3/kv/deleterange", kv_body(key, NULL), revision);
}

int gw_txn_puts(struct gw *g, const char *const *keys, const char *const *values, size_t n)
{
    size_t cap = 64, len = 0;
    char *body = malloc(cap);

    if (!body)
        return -1;
    len = (size_t)snprintf(body, cap, "{\"success\":[");
    for (size_t i = 0; i < n; i++) {
        char *kv = kv_body(keys[i], values[i]);
        if (!kv) {
            free(body);
            return -1;
        }
        size_t need = len + strlen(kv) + 32;
        if (need > cap) {
            while (cap < need)
                cap *= 2;
            char *nb = realloc(body, cap);
            if (!nb) {
                free(kv);
                free(body);
                return -1;
            }
            body = nb;
        }
        len += (size_t)snprintf(body + len, cap - len, "%s{\"request_put\":%s}", i ? "," : "", kv);
        free(kv);
    }
    if (len + 3 > cap) {
        char *nb = realloc(body, len + 3);
        if (!nb) {
            free(body);
            return -1;
        }
        body = nb;
    }
    memcpy(body + len, "]}", 3);
    return post_rev(g, "/v3/kv/txn", body, NULL);
}

/* The end of the range of keys starting with prefix. */
static void prefix_end(const char *prefix, char *out, size_t cap)
{
    size_t n = strlen(prefix);

    snprintf(out, cap, "%s", prefix);
    if (n && n < cap)
        out[n - 1] = (char)(out[n - 1] + 1);
}

long gw_range_prefix(struct gw *g, const char *prefix)
{
    char end[512], kb[700], eb[700], body[1500], *reply = NULL;
    const char *c;
    long n = -1;

    prefix_end(prefix, end, sizeof end);
    b64_encode(prefix, strlen(prefix), kb);
    b64_encode(end, strlen(end), eb);
    snprintf(body, sizeof body, "{\"key\":\"%s\",\"range_end\":\"%s\"}", kb, eb);
    if (gw_post(g, "/v3/kv/range", body, &reply) < 0)
        return -1;
    c = strstr(reply, "\"count\":\"");
    n = c ? strtol(c + 9, NULL, 10) : 0; /* a zero count is omitted */
    free(reply);
    return n;
}

/* ---- watch streams ----------------------------------------------------------- */

/* Handles one dechunked JSON line. */
static int watch_line(const char *line, size_t len, int64_t *last_rev)
{
    (void)len;
    if (!strstr(line, "\"events\""))
        return 0;
    if (last_rev)
        *last_rev = gw_revision(line);
    return 1;
}

/* Runs the chunk parser over g.in; returns events completed. */
static int dechunk(struct gw_watch *w, int64_t *last_rev, bool *ended, bool *created)
{
    struct gw *g = &w->g;
    size_t at = 0;
    int events = 0;

    for (;;) {
        if (w->state == 0) { /* chunk size line */
            char *eol = memmem(g->in + at, g->len - at, "\r\n", 2);
            if (!eol)
                break;
            w->chunk_left = strtoul(g->in + at, NULL, 16);
            at = (size_t)(eol - g->in) + 2;
            if (w->chunk_left == 0) {
                *ended = true;
                break;
            }
            w->state = 1;
        } else if (w->state == 1) { /* chunk data */
            size_t take = g->len - at < w->chunk_left ? g->len - at : w->chunk_left;
            if (!take)
                break;
            for (size_t i = 0; i < take; i++) {
                char ch = g->in[at + i];
                if (w->llen + 2 > w->lcap) {
                    size_t cap = w->lcap ? w->lcap * 2 : 4096;
                    char *p = realloc(w->line, cap);
                    if (!p) {
                        *ended = true;
                        return events;
                    }
                    w->line = p;
                    w->lcap = cap;
                }
                if (ch == '\n') {
                    w->line[w->llen] = '\0';
                    if (strstr(w->line, "\"created\":true"))
                        *created = true;
                    events += watch_line(w->line, w->llen, last_rev);
                    w->llen = 0;
                } else {
                    w->line[w->llen++] = ch;
                }
            }
            at += take;
            w->chunk_left -= take;
            if (!w->chunk_left)
                w->state = 2;
        } else { /* the CRLF after the data */
            if (g->len - at < 2)
                break;
            at += 2;
            w->state = 0;
        }
    }
    consume(g, at);
    return events;
}

int gw_watch_open(struct gw_watch *w, const char *url, const char *prefix)
{
    char end[512], kb[700], eb[700], body[1500];
    uint64_t deadline = now_ns() + (uint64_t)GW_TIMEOUT_MS * 1000000u;
    bool ended = false, created = false, headers = false;

    memset(w, 0, sizeof *w);
    if (gw_open(&w->g, url) < 0)
        return -1;
    prefix_end(prefix, end, sizeof end);
    b64_encode(prefix, strlen(prefix), kb);
    b64_encode(end, strlen(end), eb);
    snprintf(body, sizeof body, "{\"create_request\":{\"key\":\"%s\",\"range_end\":\"%s\"}}", kb,
             eb);
    if (gw_send(&w->g, "/v3/watch", body) < 0)
        return -1;
    while (!created && !ended) {
        struct pollfd p = {.fd = w->g.fd, .events = POLLIN};
        if (now_ns() > deadline || poll(&p, 1, 100) < 0)
            return -1;
        if (p.revents && read_some(&w->g, false) < 0)
            return -1;
        if (!headers) {
            char *hend = w->g.in ? strstr(w->g.in, "\r\n\r\n") : NULL;
            if (!hend)
                continue;
            if (strncmp(w->g.in, "HTTP/1.1 200", 12))
                return -1;
            consume(&w->g, (size_t)(hend - w->g.in) + 4);
            headers = true;
        }
        dechunk(w, NULL, &ended, &created);
    }
    return created ? 0 : -1;
}

void gw_watch_close(struct gw_watch *w)
{
    gw_close(&w->g);
    free(w->line);
    memset(w, 0, sizeof *w);
    w->g.fd = -1;
}

int gw_watch_read(struct gw_watch *w, int64_t *last_rev)
{
    bool ended = false, created = false;
    int n;

    if (read_some(&w->g, false) < 0)
        return -1;
    n = dechunk(w, last_rev, &ended, &created);
    return ended && !n ? -1 : n;
}
