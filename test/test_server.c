/* Tests of the socket server's transport (agent/server.c): a real loop, a
 * real listener in a temporary folder, and real client sockets driven from
 * the same thread (non-blocking, pumped between loop turns). */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "error.h"
#include "looptest.h"
#include "testutil.h"

/* The server is compiled into this test with its allocations counted, so
 * that out-of-memory paths can be taken on purpose (the Nth allocation
 * fails, as in jansson's test_chaos.c). libagent.a's copy is then never
 * linked in. */
static long chaos_allow = -1; /* allocations to let through; -1: no failures */
static unsigned long chaos_failed;

static bool chaos_fail(void)
{
    if (chaos_allow < 0)
        return false;
    if (chaos_allow-- > 0)
        return false;
    chaos_allow = -1; /* fail once */
    chaos_failed++;
    return true;
}

static void *chaos_malloc(size_t n)
{
    return chaos_fail() ? NULL : malloc(n);
}

static void *chaos_calloc(size_t n, size_t m)
{
    return chaos_fail() ? NULL : calloc(n, m);
}

static void *chaos_realloc(void *p, size_t n)
{
    return chaos_fail() ? NULL : realloc(p, n);
}

static char *chaos_strdup(const char *str)
{
    return chaos_fail() ? NULL : strdup(str);
}

#define malloc chaos_malloc
#define calloc chaos_calloc
#define realloc chaos_realloc
#define strdup chaos_strdup
#include "server.c"
#undef malloc
#undef calloc
#undef realloc
#undef strdup

#define SUN_PATH_SIZE sizeof(((struct sockaddr_un *)0)->sun_path)
#define TOO_LONG_REPLY                                                                             \
    "{\"ok\":false,\"error\":{\"code\":\"too_long\",\"message\":\"line too long\"}}\n"

/* ---- fixture ----------------------------------------------------------- */

struct rec {
    uint64_t id;
    char *text;
    size_t len;
};

struct fx {
    uv_loop_t loop;
    char dir[64];
    char path[256];
    server *s;

    struct rec *lines;
    size_t n_lines, cap_lines;
    server_conn *last_conn;
    uint64_t last_id;

    size_t closes;
    uint64_t closed_ids[4096];
    bool closed_inside_on_line; /* on_close ran before on_line returned */
    bool in_on_line;
};

static struct fx F;

static void on_line(server *s, server_conn *c, char *line, size_t len, void *arg)
{
    struct fx *f = arg;
    struct rec *r;

    ck_assert_ptr_eq(f, &F);
    ck_assert_uint_eq(strlen(line), len); /* NUL-terminated at len, no NUL inside */
    ck_assert_uint_gt(len, 0);
    if (f->n_lines == f->cap_lines) {
        f->cap_lines = f->cap_lines ? 2 * f->cap_lines : 64;
        f->lines = realloc(f->lines, f->cap_lines * sizeof *f->lines);
        ck_assert_ptr_nonnull(f->lines);
    }
    r = &f->lines[f->n_lines++];
    r->id = server_conn_id(c);
    r->len = len;
    r->text = malloc(len + 1);
    memcpy(r->text, line, len + 1);
    f->last_conn = c;
    f->in_on_line = true;

    if (strcmp(line, "quit") == 0) {
        size_t before = f->closes;
        server_conn_close(c);
        server_conn_close(c);                             /* twice is harmless */
        ck_assert_int_eq(server_send(c, "late\n", 5), 0); /* discarded */
        ck_assert_uint_eq(f->closes, before);             /* on_close comes from the loop */
    } else if (strcmp(line, "shutdown") == 0) {
        server_close(s);
        f->s = NULL;
    } else if (strcmp(line, "big") == 0) {
        size_t n = 1 << 20;
        char *b = malloc(n);
        memset(b, 'B', n - 1);
        b[n - 1] = '\n';
        ck_assert_int_eq(server_send(c, b, n), 0);
        free(b);
    } else {
        /* Echo: the line and its '\n', as two sends. */
        ck_assert_int_eq(server_send(c, line, len), 0);
        ck_assert_int_eq(server_send(c, "\n", 1), 0);
    }
    f->in_on_line = false;
}

static void on_close(server *s, server_conn *c, void *arg)
{
    struct fx *f = arg;
    uint64_t id = server_conn_id(c);

    (void)s;
    ck_assert_ptr_eq(f, &F);
    for (size_t i = 0; i < f->closes && i < 4096; i++)
        ck_assert_msg(f->closed_ids[i] != id, "on_close twice for conn %llu",
                      (unsigned long long)id);
    if (f->closes < 4096)
        f->closed_ids[f->closes] = id;
    f->closes++;
    if (f->in_on_line)
        f->closed_inside_on_line = true;
    if (f->last_conn == c)
        f->last_conn = NULL;
}

static const struct server_callbacks CB = {.on_line = on_line, .on_close = on_close};

static void fx_setup(void)
{
    memset(&F, 0, sizeof F);
    ck_assert_int_eq(uv_loop_init(&F.loop), 0);
    snprintf(F.dir, sizeof F.dir, "/tmp/test_server.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(F.dir));
    snprintf(F.path, sizeof F.path, "%s/agent.sock", F.dir);
}

static void fx_teardown(void)
{
    server_close(F.s);
    F.s = NULL;
    ck_assert_int_eq(loop_finish(&F.loop), 0);
    for (size_t i = 0; i < F.n_lines; i++)
        free(F.lines[i].text);
    free(F.lines);
    rm_rf(F.dir);
}

static int start(struct server_options *o)
{
    char err[256];
    int r;

    if (!o->path)
        o->path = F.path;
    if (!o->too_long_reply)
        o->too_long_reply = TOO_LONG_REPLY;
    r = server_start(&F.s, &F.loop, o, &CB, &F, err, sizeof err);
    ck_assert_msg(r == 0, "server_start: %d %s", r, err);
    return r;
}

static void start_default(void)
{
    struct server_options o = {0};
    start(&o);
}

/* ---- clients ----------------------------------------------------------- */

struct cli {
    int fd;
    char *buf;
    size_t len, cap;
    bool eof;
    int err; /* errno of a failed read, e.g. ECONNRESET */
};

static void cli_open(struct cli *k, const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int tries = 0;

    memset(k, 0, sizeof *k);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    k->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(k->fd, 0);
    /* A full backlog refuses with EAGAIN: let the server accept, retry. */
    while (connect(k->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        ck_assert_msg(errno == EAGAIN && ++tries < 1000, "connect: %s", strerror(errno));
        loop_for(&F.loop, 2);
    }
}

static void cli_close(struct cli *k)
{
    if (k->fd >= 0)
        close(k->fd);
    k->fd = -1;
    free(k->buf);
    k->buf = NULL;
    k->len = k->cap = 0;
}

static void cli_send(struct cli *k, const char *data, size_t len)
{
    size_t off = 0;

    while (off < len) {
        ssize_t n = send(k->fd, data + off, len - off, MSG_NOSIGNAL);
        if (n < 0) {
            ck_assert_msg(errno == EAGAIN, "send: %s", strerror(errno));
            loop_for(&F.loop, 1);
            continue;
        }
        off += (size_t)n;
    }
}

static void cli_sends(struct cli *k, const char *s)
{
    cli_send(k, s, strlen(s));
}

/* Reads what is there; returns true when something happened. */
static bool cli_pump(struct cli *k)
{
    bool any = false;

    while (!k->eof) {
        if (k->cap - k->len < 4096) {
            k->cap = k->cap ? 2 * k->cap : 8192;
            k->buf = realloc(k->buf, k->cap + 1);
            ck_assert_ptr_nonnull(k->buf);
        }
        ssize_t n = recv(k->fd, k->buf + k->len, k->cap - k->len, MSG_DONTWAIT);
        if (n > 0) {
            k->len += (size_t)n;
            k->buf[k->len] = '\0';
            any = true;
        } else if (n == 0) {
            k->eof = true;
            any = true;
        } else if (errno == EAGAIN) {
            break;
        } else {
            k->err = errno;
            k->eof = true;
            any = true;
        }
    }
    return any;
}

static bool pred_eof(void *arg)
{
    struct cli *k = arg;
    cli_pump(k);
    return k->eof;
}

struct want {
    struct cli *k;
    const char *text;
};

static bool pred_has(void *arg)
{
    struct want *w = arg;
    cli_pump(w->k);
    return w->k->buf && strstr(w->k->buf, w->text) != NULL;
}

static bool wait_for(struct cli *k, const char *text, int ms)
{
    struct want w = {k, text};
    return loop_until_fn(&F.loop, pred_has, &w, ms);
}

static bool wait_eof(struct cli *k, int ms)
{
    return loop_until_fn(&F.loop, pred_eof, k, ms);
}

struct count_want {
    size_t *n;
    size_t want;
};

static bool pred_count(void *arg)
{
    struct count_want *w = arg;
    return *w->n >= w->want;
}

static bool wait_count(size_t *n, size_t want, int ms)
{
    struct count_want w = {n, want};
    return loop_until_fn(&F.loop, pred_count, &w, ms);
}

static void assert_line(size_t i, const char *text)
{
    ck_assert_uint_gt(F.n_lines, i);
    ck_assert_str_eq(F.lines[i].text, text);
}

/* ---- framing ----------------------------------------------------------- */

START_TEST(test_lines_split_and_joined)
{
    struct cli a, b;

    start_default();
    cli_open(&a, F.path);
    cli_open(&b, F.path);

    /* A line split across writes, with loop turns in between. */
    cli_sends(&a, "fir");
    loop_for(&F.loop, 20);
    ck_assert_uint_eq(F.n_lines, 0);
    cli_sends(&a, "st\nsecond\n\n\nthird\r\nfou");
    cli_sends(&b, "from b\n");
    loop_for(&F.loop, 20);
    cli_sends(&a, "r");
    loop_for(&F.loop, 10);
    cli_sends(&a, "th\n");
    ck_assert(wait_for(&a, "fourth\n", 2000));
    ck_assert(wait_for(&b, "from b\n", 2000));

    /* Empty lines skipped, '\r' kept, order kept. */
    ck_assert_str_eq(a.buf, "first\nsecond\nthird\r\nfourth\n");
    ck_assert_str_eq(b.buf, "from b\n");
    ck_assert_uint_eq(F.n_lines, 5);
    size_t ia = 0;
    const char *want_a[] = {"first", "second", "third\r", "fourth"};
    for (size_t i = 0; i < F.n_lines; i++) {
        if (strcmp(F.lines[i].text, "from b") == 0)
            continue;
        ck_assert_str_eq(F.lines[i].text, want_a[ia++]);
    }
    ck_assert_uint_eq(ia, 4);
    cli_close(&a);
    cli_close(&b);
    ck_assert(wait_count(&F.closes, 2, 2000));
}
END_TEST

START_TEST(test_many_lines_one_write)
{
    struct cli a;
    size_t n = 3000, cap = n * 16, off = 0;
    char *all = malloc(cap), *expect = malloc(cap);

    start_default();
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(all + off, cap - off, "line %zu\n", i);
    memcpy(expect, all, off + 1);
    cli_open(&a, F.path);
    cli_send(&a, all, off);
    ck_assert(wait_for(&a, "line 2999\n", 5000));
    ck_assert_uint_eq(F.n_lines, n);
    for (size_t i = 0; i < n; i++) {
        char want[32];
        snprintf(want, sizeof want, "line %zu", i);
        assert_line(i, want);
    }
    ck_assert_str_eq(a.buf, expect);
    free(all);
    free(expect);
    cli_close(&a);
}
END_TEST

/* ---- over-long lines --------------------------------------------------- */

START_TEST(test_too_long_line)
{
    struct cli a, b;
    size_t n = 70 * 1024;
    char *big = malloc(n + 64);

    start_default();
    memcpy(big, "before\n", 7);
    memset(big + 7, 'x', n);
    memcpy(big + 7 + n, "\nafter\n", 7);
    cli_open(&a, F.path);
    cli_send(&a, big, n + 14);
    ck_assert(wait_eof(&a, 3000));
    /* The reply, then a clean EOF (not ECONNRESET). */
    ck_assert_int_eq(a.err, 0);
    ck_assert_str_eq(a.buf, "before\n" TOO_LONG_REPLY);
    ck_assert_uint_eq(F.n_lines, 1);
    assert_line(0, "before");
    ck_assert(wait_count(&F.closes, 1, 2000));

    /* The same without a newline at all: refused once past max_line. */
    cli_open(&b, F.path);
    cli_send(&b, big + 7, n);
    ck_assert(wait_eof(&b, 3000));
    ck_assert_int_eq(b.err, 0);
    ck_assert_str_eq(b.buf, TOO_LONG_REPLY);
    ck_assert(wait_count(&F.closes, 2, 2000));
    ck_assert_uint_eq(F.n_lines, 1);
    free(big);
    cli_close(&a);
    cli_close(&b);
}
END_TEST

START_TEST(test_max_line_boundary)
{
    struct server_options o = {.max_line = 1000};
    struct cli a, b;
    char line[1100];

    start(&o);
    memset(line, 'y', sizeof line);
    line[1000] = '\n';
    cli_open(&a, F.path);
    cli_send(&a, line, 1001); /* exactly max_line: accepted */
    cli_sends(&a, "next\n");
    ck_assert(wait_for(&a, "next\n", 2000));
    ck_assert_uint_eq(a.len, 1001 + 5);
    ck_assert_uint_eq(F.lines[0].len, 1000);

    line[1000] = 'y';
    line[1001] = '\n';
    cli_open(&b, F.path);
    cli_send(&b, line, 1002); /* one byte more: refused */
    ck_assert(wait_eof(&b, 2000));
    ck_assert_str_eq(b.buf, TOO_LONG_REPLY);
    ck_assert_uint_eq(F.n_lines, 2);
    cli_close(&a);
    cli_close(&b);
}
END_TEST

/* ---- clients that stall ------------------------------------------------ */

START_TEST(test_partial_line_does_not_block)
{
    struct cli a, b;

    start_default();
    cli_open(&a, F.path);
    cli_sends(&a, "{\"op\":\"resol");
    loop_for(&F.loop, 20);
    cli_open(&b, F.path);
    cli_sends(&b, "hello\n");
    ck_assert(wait_for(&b, "hello\n", 1000));
    ck_assert_uint_eq(F.n_lines, 1);
    ck_assert_uint_eq(server_clients(F.s), 2);

    /* The partial line is not a line when a closes. */
    cli_close(&a);
    ck_assert(wait_count(&F.closes, 1, 2000));
    ck_assert_uint_eq(F.n_lines, 1);
    ck_assert_uint_eq(server_clients(F.s), 1);
    cli_close(&b);
}
END_TEST

START_TEST(test_slow_reader_dropped)
{
    struct cli a, b;
    server_conn *ca;
    size_t chunk = 64 * 1024, sent = 0, max_queued = 0;
    char *data = malloc(chunk);
    int r = 0;

    start_default(); /* max_output 8 MiB */
    memset(data, 'z', chunk);
    cli_open(&a, F.path);
    cli_sends(&a, "i will not read\n");
    ck_assert(wait_count(&F.n_lines, 1, 2000));
    ca = F.last_conn;
    ck_assert_ptr_nonnull(ca);
    cli_open(&b, F.path);
    cli_sends(&b, "b1\n");
    ck_assert(wait_for(&b, "b1\n", 2000));

    while (sent < 64u * 1024 * 1024) {
        r = server_send(ca, data, chunk);
        if (r != 0)
            break;
        sent += chunk;
        size_t q = server_conn_queued(ca);
        if (q > max_queued)
            max_queued = q;
    }
    ck_assert_int_eq(r, DA_EMSGSIZE);
    /* Dropped once the queue (not what the socket took) passed 8 MiB. */
    ck_assert_uint_ge(max_queued, 8u * 1024 * 1024 - chunk);
    ck_assert_uint_le(max_queued, 8u * 1024 * 1024);
    ck_assert_uint_ge(sent, 8u * 1024 * 1024 - chunk);
    ck_assert_uint_eq(F.closes, 0); /* on_close comes from the loop */

    /* The other client is served at once. */
    uint64_t t0 = uv_hrtime();
    cli_sends(&b, "b2\n");
    ck_assert(wait_for(&b, "b2\n", 1000));
    ck_assert_uint_lt((uv_hrtime() - t0) / 1000000, 500);
    ck_assert(wait_count(&F.closes, 1, 2000));
    ck_assert_uint_eq(F.closed_ids[0], 1);
    ck_assert_uint_eq(server_clients(F.s), 1);

    /* a finds what its socket held, then the end, far short of 8 MiB. */
    ck_assert(wait_eof(&a, 3000));
    ck_assert_uint_lt(a.len, 4u * 1024 * 1024);
    free(data);
    cli_close(&a);
    cli_close(&b);
}
END_TEST

/* server_sendv writes its buffers in order, and when the socket is full
 * mid-way it queues exactly the bytes not taken, whichever buffer the
 * kernel stopped in: the reader gets the same stream as one send each. */
START_TEST(test_sendv_partial_keeps_order)
{
    struct cli a;
    server_conn *ca;
    char head[32], body[1000];
    size_t total = 0, expect_cap = 2u * 1024 * 1024, max_queued = 0;
    char *expect = malloc(expect_cap);

    start_default();
    ck_assert_ptr_nonnull(expect);
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (char)('a' + i % 26);
    cli_open(&a, F.path);
    cli_sends(&a, "hello\n");
    ck_assert(wait_count(&F.n_lines, 1, 2000));
    ca = F.last_conn;
    ck_assert(wait_for(&a, "hello\n", 2000));
    a.len = 0;
    for (int i = 0; total + 2 * sizeof body < expect_cap; i++) {
        uv_buf_t b[3];
        int hl = snprintf(head, sizeof head, "{\"n\":%d,", i);
        b[0] = uv_buf_init(head, (unsigned)hl);
        b[1] = uv_buf_init(body, (unsigned)(sizeof body - (size_t)(i % 7)));
        b[2] = uv_buf_init((char *)"}\n", 2);
        for (int k = 0; k < 3; k++) {
            memcpy(expect + total, b[k].base, b[k].len);
            total += b[k].len;
        }
        ck_assert_int_eq(server_sendv(ca, b, 3), 0);
        size_t q = server_conn_queued(ca);
        if (q > max_queued)
            max_queued = q;
    }
    ck_assert_uint_gt(max_queued, 0); /* the socket did fill */
    while (a.len < total) {
        loop_for(&F.loop, 5);
        cli_pump(&a);
        ck_assert(!a.eof);
    }
    ck_assert_uint_eq(a.len, total);
    ck_assert(memcmp(a.buf, expect, total) == 0);
    free(expect);
    cli_close(&a);
}
END_TEST

/* ---- scale ------------------------------------------------------------- */

#define N_MANY 1000

struct many {
    struct cli *k;
    size_t n;
};

static bool pred_all_echoed(void *arg)
{
    struct many *m = arg;
    size_t done = 0;

    for (size_t i = 0; i < m->n; i++) {
        char want[32];
        cli_pump(&m->k[i]);
        snprintf(want, sizeof want, "client %zu\n", i);
        if (m->k[i].buf && strcmp(m->k[i].buf, want) == 0)
            done++;
    }
    return done == m->n;
}

START_TEST(test_thousand_clients)
{
    struct cli *k = calloc(N_MANY, sizeof *k);
    struct many m = {k, N_MANY};
    struct rlimit rl;

    /* Two descriptors a client (ours and the server's), and some spare. */
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < 2 * N_MANY + 64) {
        rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    ck_assert_uint_ge(rl.rlim_cur, 2 * N_MANY + 64);

    start_default();
    for (size_t i = 0; i < N_MANY; i++)
        cli_open(&k[i], F.path);
    for (size_t i = 0; i < N_MANY; i++) {
        char line[32];
        snprintf(line, sizeof line, "client %zu\n", i);
        cli_sends(&k[i], line);
    }
    ck_assert(loop_until_fn(&F.loop, pred_all_echoed, &m, 10000));
    ck_assert_uint_eq(server_clients(F.s), N_MANY);
    ck_assert_uint_eq(F.n_lines, N_MANY);

    /* Ids are unique and increasing in accept order. */
    for (size_t i = 0; i < F.n_lines; i++)
        ck_assert_uint_ge(F.lines[i].id, 1);
    for (size_t i = 0; i < N_MANY; i++)
        cli_close(&k[i]);
    ck_assert(wait_count(&F.closes, N_MANY, 10000));
    ck_assert_uint_eq(server_clients(F.s), 0);
    free(k);
}
END_TEST

START_TEST(test_max_clients)
{
    struct server_options o = {.max_clients = 2};
    struct cli a, b, c, d;

    start(&o);
    cli_open(&a, F.path);
    cli_open(&b, F.path);
    cli_sends(&a, "a\n");
    cli_sends(&b, "b\n");
    ck_assert(wait_for(&a, "a\n", 2000));
    ck_assert(wait_for(&b, "b\n", 2000));
    cli_open(&c, F.path);
    cli_sends(&c, "c\n");
    ck_assert(wait_eof(&c, 2000));
    ck_assert_uint_eq(c.len, 0);
    ck_assert_uint_eq(server_clients(F.s), 2);
    ck_assert_uint_eq(F.closes, 0); /* never announced, never closed */

    cli_close(&a);
    ck_assert(wait_count(&F.closes, 1, 2000));
    cli_open(&d, F.path);
    cli_sends(&d, "d\n");
    ck_assert(wait_for(&d, "d\n", 2000));
    cli_close(&b);
    cli_close(&c);
    cli_close(&d);
}
END_TEST

#define BUSY_REPLY "{\"ok\":false,\"error\":{\"code\":\"busy\",\"message\":\"busy\"}}\n"

/* The lowest descriptor free now (the next accept's number). */
static int next_fd(void)
{
    int fd = dup(0);

    ck_assert_int_ge(fd, 0);
    close(fd);
    return fd;
}

/* A connection that arrives on a descriptor within FDLIMIT_RESERVE of
 * RLIMIT_NOFILE gets busy_reply and is closed; others are served. */
START_TEST(test_fd_reserve_refused)
{
    struct server_options o = {.busy_reply = BUSY_REPLY};
    struct rlimit rl;
    struct cli a, b;

    start(&o);
    cli_open(&a, F.path);
    cli_sends(&a, "a\n");
    ck_assert(wait_for(&a, "a\n", 2000));
    /* The next accepted descriptor is one past b's: put the line there. */
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    rl.rlim_cur = (rlim_t)(next_fd() + 1 + FDLIMIT_RESERVE);
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    cli_open(&b, F.path);
    ck_assert(wait_eof(&b, 2000));
    ck_assert_str_eq(b.buf, BUSY_REPLY);
    ck_assert_uint_eq(server_clients(F.s), 1);
    ck_assert_uint_eq(F.closes, 0); /* never announced */
    cli_sends(&a, "still\n");
    ck_assert(wait_for(&a, "still\n", 2000));
    cli_close(&a);
    cli_close(&b);
}
END_TEST

/* Out of descriptors, accepting pauses instead of spinning (the loop
 * still runs its timers), and the waiting client is served once
 * descriptors are back. */
START_TEST(test_emfile_pauses_accept)
{
    struct rlimit rl, low;
    struct cli a;

    start_default();
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    cli_open(&a, F.path);
    low = rl;
    low.rlim_cur = (rlim_t)next_fd(); /* every new descriptor: EMFILE */
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
    cli_sends(&a, "waits\n");
    loop_for(&F.loop, 300);
    ck_assert_uint_eq(server_clients(F.s), 0);
    ck_assert(uv_is_active((uv_handle_t *)&F.s->retry));
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    ck_assert(wait_for(&a, "waits\n", 2000));
    cli_close(&a);
}
END_TEST

/* ---- closing ----------------------------------------------------------- */

START_TEST(test_close_from_on_line)
{
    struct cli a;

    start_default();
    cli_open(&a, F.path);
    cli_sends(&a, "one\nquit\ntwo\n");
    ck_assert(wait_eof(&a, 2000));
    ck_assert_int_eq(a.err, 0);
    ck_assert_str_eq(a.buf, "one\n");
    ck_assert_uint_eq(F.n_lines, 2); /* "two" was never delivered */
    assert_line(1, "quit");
    ck_assert(wait_count(&F.closes, 1, 2000));
    ck_assert(!F.closed_inside_on_line);
    loop_for(&F.loop, 20);
    ck_assert_uint_eq(F.closes, 1);
    cli_close(&a);
}
END_TEST

START_TEST(test_half_close_flushes)
{
    struct cli a;

    start_default();
    cli_open(&a, F.path);
    /* 1 MiB is more than the socket holds: most of it is queued when the
     * EOF arrives, and must still be delivered before the close. */
    cli_sends(&a, "big\n");
    ck_assert_int_eq(shutdown(a.fd, SHUT_WR), 0);
    ck_assert(wait_eof(&a, 5000));
    ck_assert_int_eq(a.err, 0);
    ck_assert_uint_eq(a.len, 1 << 20);
    ck_assert_int_eq(a.buf[a.len - 1], '\n');
    ck_assert(wait_count(&F.closes, 1, 2000));
    cli_close(&a);
}
END_TEST

START_TEST(test_server_close)
{
    struct cli k[3];
    struct stat st;

    start_default();
    for (int i = 0; i < 3; i++) {
        cli_open(&k[i], F.path);
        cli_sends(&k[i], "hi\n");
    }
    ck_assert(wait_count(&F.n_lines, 3, 2000));
    server_close(F.s);
    /* Every on_close ran before server_close returned. */
    ck_assert_uint_eq(F.closes, 3);
    server_close(F.s); /* harmless until the loop runs */
    server_close(NULL);
    F.s = NULL;
    ck_assert_int_eq(stat(F.path, &st), -1);
    ck_assert_int_eq(errno, ENOENT);
    for (int i = 0; i < 3; i++) {
        ck_assert(wait_eof(&k[i], 2000));
        ck_assert_str_eq(k[i].buf, "hi\n");
        cli_close(&k[i]);
    }
    ck_assert_uint_eq(F.closes, 3);
}
END_TEST

START_TEST(test_server_close_from_on_line)
{
    struct cli a, b;

    start_default();
    cli_open(&a, F.path);
    cli_open(&b, F.path);
    cli_sends(&b, "b\n");
    ck_assert(wait_for(&b, "b\n", 2000));
    cli_sends(&a, "shutdown\nafter\n");
    ck_assert(wait_eof(&a, 2000));
    ck_assert(wait_eof(&b, 2000));
    ck_assert_ptr_null(F.s);
    ck_assert_uint_eq(F.closes, 2);
    ck_assert(F.closed_inside_on_line);
    ck_assert_uint_eq(F.n_lines, 2);
    cli_close(&a);
    cli_close(&b);
}
END_TEST

START_TEST(test_send_to_vanished_peer)
{
    struct cli a;
    server_conn *ca;

    start_default();
    cli_open(&a, F.path);
    cli_sends(&a, "a\n");
    ck_assert(wait_count(&F.n_lines, 1, 2000));
    ca = F.last_conn;
    ck_assert(wait_for(&a, "a\n", 2000));
    cli_close(&a);
    /* The server has not seen the EOF yet; the write finds the peer gone. */
    ck_assert_int_eq(server_send(ca, "x\n", 2), -EPIPE);
    ck_assert_uint_eq(F.closes, 0);
    ck_assert(wait_count(&F.closes, 1, 2000));
    loop_for(&F.loop, 20);
    ck_assert_uint_eq(F.closes, 1);
    ck_assert_uint_eq(server_clients(F.s), 0);
}
END_TEST

/* ---- connection details ------------------------------------------------ */

START_TEST(test_peer_ids_data)
{
    struct cli a, b;
    pid_t pid;
    uid_t uid;
    gid_t gid;
    int tag;

    start_default();
    cli_open(&a, F.path);
    cli_sends(&a, "a\n");
    ck_assert(wait_count(&F.n_lines, 1, 2000));
    server_conn *ca = F.last_conn;
    cli_open(&b, F.path);
    cli_sends(&b, "b\n");
    ck_assert(wait_count(&F.n_lines, 2, 2000));
    server_conn *cb = F.last_conn;

    ck_assert_uint_eq(server_conn_id(ca), 1);
    ck_assert_uint_eq(server_conn_id(cb), 2);
    ck_assert_int_eq(server_conn_peer(ca, &pid, &uid, &gid), 0);
    ck_assert_int_eq(pid, getpid());
    ck_assert_int_eq(uid, getuid());
    ck_assert_int_eq(gid, getgid());
    ck_assert_int_eq(server_conn_peer(cb, NULL, NULL, NULL), 0);
    ck_assert_ptr_null(server_conn_data(ca));
    server_conn_set_data(ca, &tag);
    ck_assert_ptr_eq(server_conn_data(ca), &tag);
    ck_assert_ptr_null(server_conn_data(cb));
    ck_assert(wait_for(&b, "b\n", 2000));
    ck_assert_uint_eq(server_conn_queued(cb), 0);
    cli_close(&a);
    cli_close(&b);
}
END_TEST

/* ---- the socket file --------------------------------------------------- */

START_TEST(test_stale_socket_replaced)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct cli a;
    int fd;

    /* A socket file nobody listens on, as a crashed agent leaves it. */
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", F.path);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
    ck_assert_int_eq(access(F.path, F_OK), 0);

    start_default();
    cli_open(&a, F.path);
    cli_sends(&a, "alive\n");
    ck_assert(wait_for(&a, "alive\n", 2000));
    cli_close(&a);
}
END_TEST

START_TEST(test_regular_file_kept)
{
    struct server_options o = {.path = F.path};
    char err[256];
    server *s = NULL;
    FILE *fp = fopen(F.path, "w");

    ck_assert_ptr_nonnull(fp);
    fputs("precious\n", fp);
    fclose(fp);
    ck_assert_int_eq(server_start(&s, &F.loop, &o, &CB, &F, err, sizeof err), -EEXIST);
    ck_assert_ptr_null(s);
    ck_assert_ptr_nonnull(strstr(err, "not a socket"));
    ck_assert_int_eq(access(F.path, F_OK), 0);
}
END_TEST

START_TEST(test_live_listener_refused)
{
    struct server_options o = {.path = F.path};
    char err[256], want[320];
    server *s2 = NULL;
    struct cli a;

    start_default();
    ck_assert_int_eq(server_start(&s2, &F.loop, &o, &CB, &F, err, sizeof err), -EADDRINUSE);
    ck_assert_ptr_null(s2);
    snprintf(want, sizeof want, "another agent is listening on %s", F.path);
    ck_assert_str_eq(err, want);

    /* The first server is untouched. */
    cli_open(&a, F.path);
    cli_sends(&a, "still here\n");
    ck_assert(wait_for(&a, "still here\n", 2000));
    cli_close(&a);
}
END_TEST

START_TEST(test_mode_and_folders)
{
    struct server_options o = {.mode = 0600};
    char path[256], sub[256];
    struct stat st;

    umask(022);
    snprintf(sub, sizeof sub, "%s/run/agent", F.dir);
    snprintf(path, sizeof path, "%s/agent.sock", sub);
    o.path = path;
    start(&o);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert(S_ISSOCK(st.st_mode));
    ck_assert_uint_eq(st.st_mode & 07777, 0600);
    ck_assert_int_eq(stat(sub, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    ck_assert_uint_eq(st.st_mode & 07777, 0755);
    server_close(F.s);
    F.s = NULL;
    ck_assert_int_eq(access(path, F_OK), -1);

    /* The default mode. */
    struct server_options d = {0};
    start(&d);
    ck_assert_int_eq(stat(F.path, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0660);
}
END_TEST

START_TEST(test_path_too_long)
{
    struct server_options o = {0};
    char path[512], err[256];
    server *s = NULL;
    size_t dl = strlen(F.dir);

    /* sizeof(sun_path) bytes leave no room for the NUL: refused. */
    memset(path, 'p', sizeof path);
    memcpy(path, F.dir, dl);
    path[dl] = '/';
    path[SUN_PATH_SIZE] = '\0';
    o.path = path;
    ck_assert_int_eq(server_start(&s, &F.loop, &o, &CB, &F, err, sizeof err), -ENAMETOOLONG);
    ck_assert_ptr_null(s);
    ck_assert_ptr_nonnull(strstr(err, "longer than"));
    path[300] = '\0';
    memset(path + SUN_PATH_SIZE, 'p', 300 - SUN_PATH_SIZE);
    ck_assert_int_eq(server_start(&s, &F.loop, &o, &CB, &F, err, sizeof err), -ENAMETOOLONG);

    /* One byte less fits. */
    path[SUN_PATH_SIZE - 1] = '\0';
    start(&o);
    struct cli a;
    cli_open(&a, path);
    cli_sends(&a, "fits\n");
    ck_assert(wait_for(&a, "fits\n", 2000));
    cli_close(&a);
}
END_TEST

/* ---- out of memory ----------------------------------------------------- */

START_TEST(test_oom_accept_retried)
{
    struct cli a;

    start_default();
    chaos_allow = 0; /* the connection's calloc */
    cli_open(&a, F.path);
    cli_sends(&a, "later\n");
    loop_for(&F.loop, 30);
    ck_assert_uint_eq(chaos_failed, 1);
    ck_assert_uint_eq(F.n_lines, 0);
    /* The retry timer accepts it. */
    ck_assert(wait_for(&a, "later\n", 2000));
    cli_close(&a);
}
END_TEST

START_TEST(test_oom_read_buffer)
{
    struct cli a, b;

    start_default();
    cli_open(&a, F.path);
    cli_open(&b, F.path);
    loop_for(&F.loop, 20);
    ck_assert_uint_eq(server_clients(F.s), 2);
    chaos_allow = 0; /* a's read buffer */
    cli_sends(&a, "x\n");
    ck_assert(wait_eof(&a, 2000));
    ck_assert_uint_eq(chaos_failed, 1);
    ck_assert(wait_count(&F.closes, 1, 2000));
    cli_sends(&b, "y\n");
    ck_assert(wait_for(&b, "y\n", 2000));
    cli_close(&a);
    cli_close(&b);
}
END_TEST

START_TEST(test_oom_send_copy)
{
    struct cli a;
    server_conn *ca;
    size_t n = 1 << 20;
    char *big = calloc(1, n);

    start_default();
    cli_open(&a, F.path);
    cli_sends(&a, "a\n");
    ck_assert(wait_for(&a, "a\n", 2000));
    ca = F.last_conn;
    /* More than the socket takes, so the rest must be copied. */
    chaos_allow = 0;
    ck_assert_int_eq(server_send(ca, big, n), DA_ENOMEM);
    ck_assert_uint_eq(chaos_failed, 1);
    ck_assert_uint_eq(F.closes, 0);
    ck_assert(wait_count(&F.closes, 1, 2000));
    free(big);
    cli_close(&a);
}
END_TEST

START_TEST(test_oom_start)
{
    struct server_options o = {.path = F.path, .too_long_reply = TOO_LONG_REPLY};
    char err[256];
    int r = -1;

    /* Fail each allocation of server_start in turn: every failure is
     * clean (ASan and loop_finish see no leak), then it succeeds. */
    long n;
    for (n = 0; n < 20 && r != 0; n++) {
        server *s = NULL;
        chaos_failed = 0;
        chaos_allow = n;
        r = server_start(&s, &F.loop, &o, &CB, &F, err, sizeof err);
        chaos_allow = -1;
        if (r != 0) {
            ck_assert_int_eq(r, DA_ENOMEM);
            ck_assert_ptr_null(s);
            ck_assert_uint_eq(chaos_failed, 1);
            ck_assert_int_eq(access(F.path, F_OK), -1);
        } else {
            F.s = s;
        }
    }
    ck_assert_int_eq(r, 0);
    ck_assert_int_eq(n, 4); /* the server, the path, the reply, then success */
}
END_TEST

/* ---- runner ------------------------------------------------------------ */

static Suite *server_suite(void)
{
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("server");

    tcase_add_checked_fixture(tc, fx_setup, fx_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_lines_split_and_joined);
    tcase_add_test(tc, test_many_lines_one_write);
    tcase_add_test(tc, test_too_long_line);
    tcase_add_test(tc, test_max_line_boundary);
    tcase_add_test(tc, test_partial_line_does_not_block);
    tcase_add_test(tc, test_sendv_partial_keeps_order);
    tcase_add_test(tc, test_slow_reader_dropped);
    tcase_add_test(tc, test_thousand_clients);
    tcase_add_test(tc, test_max_clients);
    tcase_add_test(tc, test_fd_reserve_refused);
    tcase_add_test(tc, test_emfile_pauses_accept);
    tcase_add_test(tc, test_close_from_on_line);
    tcase_add_test(tc, test_half_close_flushes);
    tcase_add_test(tc, test_server_close);
    tcase_add_test(tc, test_server_close_from_on_line);
    tcase_add_test(tc, test_send_to_vanished_peer);
    tcase_add_test(tc, test_peer_ids_data);
    tcase_add_test(tc, test_stale_socket_replaced);
    tcase_add_test(tc, test_regular_file_kept);
    tcase_add_test(tc, test_live_listener_refused);
    tcase_add_test(tc, test_mode_and_folders);
    tcase_add_test(tc, test_path_too_long);
    tcase_add_test(tc, test_oom_accept_retried);
    tcase_add_test(tc, test_oom_read_buffer);
    tcase_add_test(tc, test_oom_send_copy);
    tcase_add_test(tc, test_oom_start);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(server_suite());
    int failed;

    /* The server writes with write(2); a vanished client must not kill us. */
    signal(SIGPIPE, SIG_IGN);
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
