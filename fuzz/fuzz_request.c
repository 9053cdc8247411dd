/* Fuzz target: the socket protocol (proto/agent-protocol.md), one input
 * being the lines a client sends on one connection.
 *
 * A whole agent runs in this process, started once by agent_start() from a
 * small configuration in a folder under /tmp, so that the target follows
 * whatever parts the agent grows. Its etcd is http://127.0.0.1:1, where
 * nothing listens: every etcd request fails at once, so lists are stale
 * or missing and registrations stay pending, which is what the protocol
 * must handle without etcd. The agent's own socket server is replaced by
 * one whose callbacks wrap the protocol's, to learn the server_conn of a
 * real connected client.
 *
 * For each input: a client connects and says hello (a line this file keeps
 * to itself), each line of the input is passed to proto_on_line() as the
 * server would pass it, the loop runs, and everything the agent wrote back
 * is read and checked to be one JSON object per line. A last line without
 * '\n' is passed too, and the client then half-closes, to reach the
 * protocol's end-of-input path. The connection is then closed, which
 * cancels its watches, pending requests and registrations, and the
 * registrations made with "persist" are removed and maintenance mode is
 * turned off, so that inputs do not pile state on each other. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent.h"
#include "fuzz.h"

/* The fuzzer must not reach the network: a registration may carry a tcp,
 * http or gRPC health check against any address the input names, and host
 * names would be looked up in DNS. This connect() takes the place of the
 * C library's for the whole process (libuv, libcurl, gRPC and c-ares call
 * it), lets unix sockets and the fake etcd endpoint (127.0.0.1:1, where
 * nothing listens) through, and refuses everything else as if nothing
 * listened there either. */
int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
    bool allowed = sa && sa->sa_family == AF_UNIX;

    if (sa && sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        allowed = in->sin_addr.s_addr == htonl(INADDR_LOOPBACK) && in->sin_port == htons(1);
    }
    if (!allowed) {
        errno = ECONNREFUSED;
        return -1;
    }
    return (int)syscall(SYS_connect, fd, sa, len);
}

/* The C library's resolver connects with an internal call that the
 * connect() above does not see, and would send every host name an input
 * makes up to the DNS servers (and wait seconds for their answer). This
 * getaddrinfo(), which libuv, libcurl and gRPC call, takes only numeric
 * addresses: a name fails at once, as an unknown name would. */
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    typedef int gai_fn(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    static gai_fn *real;
    gai_fn *fn = __atomic_load_n(&real, __ATOMIC_ACQUIRE);
    struct addrinfo h = {0};

    if (!fn) {
        fn = (gai_fn *)dlsym(RTLD_NEXT, "getaddrinfo");
        FUZZ_CHECK(fn != NULL);
        __atomic_store_n(&real, fn, __ATOMIC_RELEASE);
    }
    if (hints)
        h = *hints;
    h.ai_flags |= AI_NUMERICHOST;
    return fn(node, service, &h, res);
}

#define HELLO "{\"op\":\"ping\",\"id\":\"fuzz-hello-7c1f\"}"

static uv_loop_t loop;
static struct agent A;
static char dir[64];
static char sock_path[128];
static char conf_path[128];

static server_conn *conn; /* the current client's connection, once known */
static bool conn_closed;  /* its on_close has run */
static int cfd = -1;      /* the client's end */

/* What the client has read and not yet split into lines. */
static char *rbuf;
static size_t rlen, rcap;

static void w_on_line(server *s, server_conn *c, char *line, size_t len, void *arg)
{
    if (len == strlen(HELLO) && !memcmp(line, HELLO, len)) {
        FUZZ_CHECK(conn == NULL);
        conn = c;
        return;
    }
    /* Only the hello travels over the socket. */
    FUZZ_CHECK(!"a line other than the hello came from the socket");
    proto_on_line(s, c, line, len, arg);
}

static void w_on_close(server *s, server_conn *c, void *arg)
{
    if (c == conn)
        conn_closed = true;
    proto_on_close(s, c, arg);
}

static void w_on_eof(server *s, server_conn *c, void *arg)
{
    proto_on_eof(s, c, arg);
}

static void cleanup(void)
{
    char p[192];

    unlink(sock_path);
    unlink(conf_path);
    snprintf(p, sizeof p, "%s/cache", dir);
    rmdir(p);
    rmdir(dir);
}

static void run_nowait(int times)
{
    for (int i = 0; i < times; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
}

/* Checks and drops every complete line read so far. */
static void check_lines(void)
{
    size_t start = 0;
    char *nl;

    while ((nl = memchr(rbuf + start, '\n', rlen - start))) {
        size_t n = (size_t)(nl - (rbuf + start));
        json_error_t jerr;
        json_t *o = json_loadb(rbuf + start, n, JSON_REJECT_DUPLICATES, &jerr);
        if (!o)
            fprintf(stderr, "agent wrote a line that is not JSON: %.*s\n", (int)n, rbuf + start);
        FUZZ_CHECK(o != NULL);
        FUZZ_CHECK(json_is_object(o));
        /* A reply has "ok"; an update line has "event". */
        FUZZ_CHECK(json_is_boolean(json_object_get(o, "ok")) ||
                   json_is_string(json_object_get(o, "event")));
        if (json_is_false(json_object_get(o, "ok"))) {
            json_t *e = json_object_get(o, "error");
            FUZZ_CHECK(json_is_string(json_object_get(e, "code")));
            FUZZ_CHECK(json_is_string(json_object_get(e, "message")));
        }
        json_decref(o);
        start += n + 1;
    }
    memmove(rbuf, rbuf + start, rlen - start);
    rlen -= start;
}

static void drain(void)
{
    for (;;) {
        if (rcap - rlen < 4096) {
            rcap = rcap ? rcap * 2 : 65536;
            rbuf = realloc(rbuf, rcap);
            FUZZ_CHECK(rbuf != NULL);
        }
        ssize_t n = read(cfd, rbuf + rlen, rcap - rlen);
        if (n > 0) {
            rlen += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        break; /* EAGAIN, EOF, or an error after the agent closed */
    }
    check_lines();
}

static void connect_client(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    const char hello[] = HELLO "\n";

    cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(cfd >= 0);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
    FUZZ_CHECK(connect(cfd, (struct sockaddr *)&sa, sizeof sa) == 0);
    FUZZ_CHECK(write(cfd, hello, sizeof hello - 1) == (ssize_t)(sizeof hello - 1));
    FUZZ_CHECK(fcntl(cfd, F_SETFL, O_NONBLOCK) == 0);
    conn = NULL;
    conn_closed = false;
    rlen = 0;
    /* Accept, then read the hello: a few loop turns. */
    for (int i = 0; i < 1000 && !conn; i++)
        uv_run(&loop, UV_RUN_ONCE);
    FUZZ_CHECK(conn != NULL);
}

struct reg_list {
    char **names, **addrs;
    size_t n, cap;
};

static void collect_runtime(const struct reg_info *ri, void *arg)
{
    struct reg_list *l = arg;

    if (ri->owner != REG_OWNER_RUNTIME)
        return;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->names = realloc(l->names, l->cap * sizeof *l->names);
        l->addrs = realloc(l->addrs, l->cap * sizeof *l->addrs);
        FUZZ_CHECK(l->names && l->addrs);
    }
    l->names[l->n] = strdup(ri->inst->name);
    l->addrs[l->n] = strdup(ri->inst->address);
    FUZZ_CHECK(l->names[l->n] && l->addrs[l->n]);
    l->n++;
}

/* "persist" registrations outlive their connection; remove them so that
 * the registry does not grow from input to input. */
static void remove_runtime(void)
{
    struct reg_list l = {0};

    registry_foreach(A.registry, collect_runtime, &l);
    for (size_t i = 0; i < l.n; i++) {
        registry_remove(A.registry, l.names[i], l.addrs[i], REG_OWNER_RUNTIME, 0, NULL, NULL);
        free(l.names[i]);
        free(l.addrs[i]);
    }
    free(l.names);
    free(l.addrs);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct server_options so = {0};
    struct server_callbacks cb = {w_on_line, w_on_close, w_on_eof};
    struct sigaction old_int, old_term, old_hup;
    struct config *cfg;
    char err[1024];
    FILE *f;

    (void)argc;
    (void)argv;
    /* The agent writes to sockets whose peer may be gone. */
    signal(SIGPIPE, SIG_IGN);
    snprintf(dir, sizeof dir, "/tmp/da-fuzz-request.XXXXXX");
    FUZZ_CHECK(mkdtemp(dir) != NULL);
    snprintf(sock_path, sizeof sock_path, "%s/agent.sock", dir);
    snprintf(conf_path, sizeof conf_path, "%s/agent.yaml", dir);
    atexit(cleanup);
    f = fopen(conf_path, "w");
    FUZZ_CHECK(f != NULL);
    /* A short etcd timeout makes pending requests time out while the input
     * runs; a short cache idle time drops the services each input made. */
    fprintf(f,
            "etcd:\n"
            "  endpoints: [http://127.0.0.1:1]\n"
            "  prefix: /micro\n"
            "  timeout: 1ms\n"
            "session:\n"
            "  ttl: 10s\n"
            "socket:\n"
            "  path: %s\n"
            "cache:\n"
            "  dir: %s/cache\n"
            "  idle: 1ms\n"
            "xds:\n"
            "  enabled: false\n"
            "dns:\n"
            "  enabled: false\n"
            "log:\n"
            "  level: error\n"
            "services:\n"
            "  - name: configured\n"
            "    address: 10.0.0.1:80\n",
            sock_path, dir);
    FUZZ_CHECK(fclose(f) == 0);
    if (config_load(conf_path, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_request: %s\n", err);
        abort();
    }

    FUZZ_CHECK(uv_loop_init(&loop) == 0);
    /* agent_start takes SIGINT, SIGTERM and SIGHUP for its graceful stop;
     * give them back to libFuzzer, which reports and exits on them. */
    sigaction(SIGINT, NULL, &old_int);
    sigaction(SIGTERM, NULL, &old_term);
    sigaction(SIGHUP, NULL, &old_hup);
    if (agent_start(&A, &loop, cfg, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_request: agent_start: %s\n", err);
        abort();
    }
    uv_signal_stop(&A.sig_term);
    uv_signal_stop(&A.sig_int);
    uv_signal_stop(&A.sig_hup);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGHUP, &old_hup, NULL);

    /* Swap the agent's server for one with the wrapping callbacks, on the
     * same path and with the same bounds. */
    server_close(A.server);
    A.server = NULL;
    run_nowait(2);
    so.path = sock_path;
    so.mode = 0600;
    so.too_long_reply = proto_too_long_reply;
    if (server_start(&A.server, &loop, &so, &cb, A.proto, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_request: server_start: %s\n", err);
        abort();
    }
    fuzz_quiet_log();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size;

    connect_client();
    while (p < end && !conn_closed) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        /* The server hands over a line NUL-terminated, in a buffer the
         * callee may modify; exactly that size here, for ASan. */
        char *line = malloc(len + 1);
        FUZZ_CHECK(line != NULL);
        memcpy(line, p, len);
        line[len] = '\0';
        if (len > 0) /* the server skips empty lines */
            proto_on_line(A.server, conn, line, len, A.proto);
        free(line);
        p += len + (nl ? 1 : 0);
        run_nowait(1);
        drain();
        if (!nl && !conn_closed)
            shutdown(cfd, SHUT_WR); /* the client is done: half-close */
    }
    run_nowait(4);
    drain();

    if (!conn_closed)
        server_conn_close(conn);
    for (int i = 0; i < 100 && !conn_closed; i++)
        run_nowait(1);
    /* server.h: on_close follows from the loop. */
    FUZZ_CHECK(conn_closed);
    conn = NULL;
    close(cfd);
    cfd = -1;
    remove_runtime();
    /* Maintenance mode is agent-wide and outlives the connection. */
    registry_maint(A.registry, false, NULL);
    run_nowait(1);
    return 0;
}
