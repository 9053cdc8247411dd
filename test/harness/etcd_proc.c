/*
 * etcd_proc: real etcd 3.4 members for integration tests.  See etcd_proc.h.
 *
 * Readiness and leadership are read from the members' own HTTP gateway
 * (/health and /v3/maintenance/status) with libcurl, which also speaks TLS
 * with a client certificate when the cluster uses it.  Both endpoints answer
 * without a token even when auth is enabled (checked on 3.4.23).
 */
#include "etcd_proc.h"
#include "proc.h"
#include "testutil.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define START_TIMEOUT_MS 15000
#define LEADER_TIMEOUT_MS 10000
#define STOP_GRACE_MS 10000
#define ETCDCTL_TIMEOUT_MS 20000
#define OPENSSL_TIMEOUT_MS 20000
/* Short probes, so that a dead or frozen member costs little per round. */
#define PROBE_TIMEOUT_MS 1000
#define LOG_TAIL_LINES 25
#define URL_MAX 64

extern char **environ;

struct member {
    char name[16];
    int client_port;
    int peer_port;
    char client_url[URL_MAX];
    char peer_url[URL_MAX];
    char data_dir[PATH_MAX];
    char log[PATH_MAX];
    struct proc *proc;
    int frozen;
};

struct etcd_cluster {
    struct etcd_cluster_opts opts;
    int n;
    struct member m[ETCD_MAX_MEMBERS];
    char dir[PATH_MAX];
    char urls[ETCD_MAX_MEMBERS * URL_MAX];
    char initial_cluster[ETCD_MAX_MEMBERS * (URL_MAX + 8)];
    char token[64];
    int generation;
    char ca[PATH_MAX];
    char client_cert[PATH_MAX];
    char client_key[PATH_MAX];
    char server_cert[PATH_MAX];
    char server_key[PATH_MAX];
    /* The janitor removes dir if we die without etcd_cluster_stop(). */
    pid_t janitor;
    int janitor_fd;
};

/* What one member says about itself; zero fields were absent. */
struct member_status {
    uint64_t id;
    uint64_t leader;
    uint64_t term;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_init_rc;

static int valid_index(const struct etcd_cluster *c, int i)
{
    return c != NULL && i >= 0 && i < c->n;
}

/* Live means running and not frozen: only live members can answer. */
static int member_live(struct etcd_cluster *c, int i)
{
    struct member *m = &c->m[i];

    return m->proc != NULL && proc_alive(m->proc) && !m->frozen;
}

static int live_count(struct etcd_cluster *c)
{
    int i, k = 0;

    for (i = 0; i < c->n; i++)
        k += member_live(c, i);
    return k;
}

/* Prints the last lines of a member's log: the reason etcd gave for dying. */
static void print_log_tail(const char *path, int lines)
{
    char buf[8192];
    FILE *f = fopen(path, "r");
    long size, from;
    size_t n, start;
    int seen = 0;

    if (f == NULL) {
        fprintf(stderr, "etcd_proc: cannot open %s: %s\n", path, strerror(errno));
        return;
    }
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    from = size > (long)sizeof(buf) - 1 ? size - (long)sizeof(buf) + 1 : 0;
    fseek(f, from, SEEK_SET);
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    start = n;
    while (start > 0) {
        if (buf[start - 1] == '\n' && start != n && ++seen > lines)
            break;
        start--;
    }
    fprintf(stderr, "---- last lines of %s ----\n%s%s---- end of %s ----\n", path, buf + start,
            (n > 0 && buf[n - 1] != '\n') ? "\n" : "", path);
}

static void print_all_logs(struct etcd_cluster *c)
{
    int i;

    for (i = 0; i < c->n; i++)
        print_log_tail(c->m[i].log, LOG_TAIL_LINES);
}

/* ---- HTTP probes ------------------------------------------------------ */

struct body {
    char *buf;
    size_t len, cap;
};

static size_t body_write(char *data, size_t size, size_t nmemb, void *arg)
{
    struct body *b = arg;
    size_t n = size * nmemb, take = n;

    /* The cap is the caller's buffer; the rest is dropped, not an error. */
    if (take > b->cap - 1 - b->len)
        take = b->cap - 1 - b->len;
    memcpy(b->buf + b->len, data, take);
    b->len += take;
    b->buf[b->len] = '\0';
    return n;
}

static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

/*
 * Sends one request to member i (a POST when post_body is set) and stores
 * the body in out.  Returns the HTTP status, or -1 if nothing answered.
 */
static long member_http(struct etcd_cluster *c, int i, const char *path, const char *post_body,
                        char *out, size_t outlen, int timeout_ms)
{
    struct body b = {out, 0, outlen};
    char url[URL_MAX + 64];
    long code = -1;
    CURL *h;

    out[0] = '\0';
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc < 0)
        return -1;
    h = curl_easy_init();
    if (h == NULL)
        return -1;
    snprintf(url, sizeof(url), "%s%s", c->m[i].client_url, path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    /* A proxy from the environment must never see loopback test traffic. */
    curl_easy_setopt(h, CURLOPT_PROXY, "");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, body_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    if (post_body != NULL)
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, post_body);
    if (c->opts.tls) {
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca);
        curl_easy_setopt(h, CURLOPT_SSLCERT, c->client_cert);
        curl_easy_setopt(h, CURLOPT_SSLKEY, c->client_key);
    }
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(h);
    return code;
}

/* Reads "key":"123" (the gateway writes uint64 as strings) from a body. */
static int json_u64(const char *body, const char *key, uint64_t *val)
{
    char pat[64];
    const char *p;
    char *end;
    unsigned long long v;

    snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    p = strstr(body, pat);
    if (p == NULL)
        return 0;
    p += strlen(pat);
    errno = 0;
    v = strtoull(p, &end, 10);
    if (errno != 0 || end == p || *end != '"')
        return 0;
    *val = v;
    return 1;
}

/* 0 and *st filled if member i answered its status, else -1. */
static int member_status(struct etcd_cluster *c, int i, struct member_status *st)
{
    char body[2048];

    memset(st, 0, sizeof(*st));
    if (member_http(c, i, "/v3/maintenance/status", "{}", body, sizeof(body), PROBE_TIMEOUT_MS) !=
        200)
        return -1;
    /* A missing leader means 0: the gateway omits zero values. */
    json_u64(body, "leader", &st->leader);
    json_u64(body, "raftTerm", &st->term);
    return json_u64(body, "member_id", &st->id) ? 0 : -1;
}

static int member_healthy(struct etcd_cluster *c, int i)
{
    char body[512];

    return member_http(c, i, "/health", NULL, body, sizeof(body), PROBE_TIMEOUT_MS) == 200 &&
           strstr(body, "\"health\":\"true\"") != NULL;
}

/*
 * One round of asking live members who leads.  Returns the index of the
 * live member that claims leadership with the highest term (a thawed old
 * leader may still believe it leads, at an older term), or -1.
 */
static int leader_once(struct etcd_cluster *c)
{
    uint64_t best_term = 0;
    int i, best = -1;

    for (i = 0; i < c->n; i++) {
        struct member_status st;

        if (!member_live(c, i) || member_status(c, i, &st) < 0)
            continue;
        if (st.leader != 0 && st.leader == st.id && (best < 0 || st.term > best_term)) {
            best = i;
            best_term = st.term;
        }
    }
    return best;
}

/*
 * One round of the health check: every live member answers /health with
 * true and reports the same leader, which is itself a live member.
 */
static int healthy_once(struct etcd_cluster *c)
{
    uint64_t leader = 0, ids[ETCD_MAX_MEMBERS] = {0};
    int i, nlive = 0, leader_live = 0;

    for (i = 0; i < c->n; i++) {
        struct member_status st;

        if (!member_live(c, i))
            continue;
        nlive++;
        if (member_status(c, i, &st) < 0 || st.leader == 0)
            return 0;
        if (leader != 0 && st.leader != leader)
            return 0;
        leader = st.leader;
        ids[i] = st.id;
        if (!member_healthy(c, i))
            return 0;
    }
    for (i = 0; i < c->n; i++)
        leader_live |= ids[i] != 0 && ids[i] == leader;
    return nlive > 0 && leader_live;
}

int etcd_cluster_wait_healthy(struct etcd_cluster *c, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;

    if (c == NULL)
        return -EINVAL;
    for (;;) {
        if (healthy_once(c))
            return 0;
        if (now_ms() >= deadline)
            return -ETIMEDOUT;
        sleep_ms(50);
    }
}

int etcd_cluster_leader(struct etcd_cluster *c)
{
    long long deadline = now_ms() + LEADER_TIMEOUT_MS;

    if (c == NULL)
        return -1;
    for (;;) {
        int l = leader_once(c);

        if (l >= 0)
            return l;
        if (now_ms() >= deadline)
            return -1;
        sleep_ms(50);
    }
}

/* ---- files ------------------------------------------------------------ */

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    int ok;

    if (f == NULL)
        return -errno;
    ok = fputs(text, f) >= 0;
    ok = (fclose(f) == 0) && ok;
    return ok ? 0 : -EIO;
}

/* snprintf into a fixed buffer that must not truncate. Not inlined: the
 * buffers and dir are fields of one struct, and once inlined GCC's
 * -Wrestrict (under -fsanitize) cannot tell that they do not overlap. */
__attribute__((noinline)) static int path_join(char *buf, size_t len, const char *dir,
                                               const char *name)
{
    int n = snprintf(buf, len, "%s/%s", dir, name);

    return (n < 0 || (size_t)n >= len) ? -ENAMETOOLONG : 0;
}

/* ---- ports ------------------------------------------------------------ */

/*
 * Picks count distinct free loopback ports.  All sockets stay bound until
 * every port is chosen, so the kernel cannot hand out one port twice.
 */
static int pick_ports(int *ports, int count)
{
    int fds[2 * ETCD_MAX_MEMBERS];
    int i, err = 0;

    for (i = 0; i < count; i++)
        fds[i] = -1;
    for (i = 0; i < count && err == 0; i++) {
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t len = sizeof(sa);

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
            getsockname(fds[i], (struct sockaddr *)&sa, &len) < 0)
            err = -errno;
        else
            ports[i] = ntohs(sa.sin_port);
    }
    for (i = 0; i < count; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return err;
}

/* ---- TLS material ----------------------------------------------------- */

/* openssl talks on stderr even on success: keep that in a log. */
static int run_openssl(struct etcd_cluster *c, const char *const argv[])
{
    char out[1024], log[PATH_MAX];
    int rc;

    if (path_join(log, sizeof(log), c->dir, "openssl.log") < 0)
        return -ENAMETOOLONG;
    rc = proc_run_full(out, sizeof(out), OPENSSL_TIMEOUT_MS, argv, NULL, log);
    if (rc != 0) {
        fprintf(stderr, "etcd_proc: openssl %s failed (%d) in %s\n", argv[1], rc, c->dir);
        print_log_tail(log, LOG_TAIL_LINES);
        return -EIO;
    }
    return 0;
}

/*
 * Writes an OpenSSL config with the subject CN and the extension section
 * "ext".  Our own config keeps the result independent of the system's
 * openssl.cnf defaults.
 */
static int write_cnf(const char *path, const char *cn, const char *ext)
{
    char text[1024];
    int n = snprintf(text, sizeof(text),
                     "[req]\ndistinguished_name = dn\nprompt = no\n"
                     "[dn]\nCN = %s\n[ext]\n%s\n",
                     cn, ext);

    if (n < 0 || (size_t)n >= sizeof(text))
        return -ENAMETOOLONG;
    return write_file(path, text);
}

/* Makes a key and a certificate signed by the CA (ca_key NULL: self-signed). */
static int make_cert(struct etcd_cluster *c, const char *stem, const char *cn, const char *ext,
                     const char *ca_key, char *crt, char *key)
{
    char cnf[PATH_MAX], csr[PATH_MAX], file[64];
    int err;

    snprintf(file, sizeof(file), "%s.cnf", stem);
    if ((err = path_join(cnf, PATH_MAX, c->dir, file)) < 0)
        return err;
    snprintf(file, sizeof(file), "%s.csr", stem);
    if ((err = path_join(csr, PATH_MAX, c->dir, file)) < 0)
        return err;
    snprintf(file, sizeof(file), "%s.crt", stem);
    if ((err = path_join(crt, PATH_MAX, c->dir, file)) < 0)
        return err;
    snprintf(file, sizeof(file), "%s.key", stem);
    if ((err = path_join(key, PATH_MAX, c->dir, file)) < 0)
        return err;
    if ((err = write_cnf(cnf, cn, ext)) < 0)
        return err;
    /* P-256 keys are generated in milliseconds, unlike RSA. */
    if (ca_key == NULL) {
        const char *const argv[] = {
            "openssl",
            "req",
            "-x509",
            "-config",
            cnf,
            "-extensions",
            "ext",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key,
            "-out",
            crt,
            "-days",
            "3650",
            NULL,
        };
        return run_openssl(c, argv);
    } else {
        const char *const req[] = {
            "openssl", "req",      "-new",
            "-config", cnf,        "-newkey",
            "ec",      "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes",  "-keyout",  key,
            "-out",    csr,        NULL,
        };
        const char *const sign[] = {
            "openssl", "x509",        "-req",   "-in",  csr,
            "-CA",     c->ca,         "-CAkey", ca_key, "-CAcreateserial",
            "-out",    crt,           "-days",  "3650", "-extfile",
            cnf,       "-extensions", "ext",    NULL,
        };

        if ((err = run_openssl(c, req)) < 0)
            return err;
        return run_openssl(c, sign);
    }
}

static int make_tls(struct etcd_cluster *c)
{
    char ca_key[PATH_MAX];
    int err;

    err = make_cert(c, "ca", "etcd-test-ca",
                    "basicConstraints = critical,CA:TRUE\n"
                    "keyUsage = critical,keyCertSign,cRLSign\n"
                    "subjectKeyIdentifier = hash",
                    NULL, c->ca, ca_key);
    if (err == 0)
        /* Go ignores the CN: the SAN is what makes 127.0.0.1 valid. */
        err = make_cert(c, "server", "127.0.0.1",
                        "basicConstraints = CA:FALSE\n"
                        "keyUsage = critical,digitalSignature,keyEncipherment\n"
                        "extendedKeyUsage = serverAuth,clientAuth\n"
                        "subjectAltName = IP:127.0.0.1,DNS:localhost",
                        ca_key, c->server_cert, c->server_key);
    if (err == 0)
        err = make_cert(c, "client", "client",
                        "basicConstraints = CA:FALSE\n"
                        "keyUsage = critical,digitalSignature,keyEncipherment\n"
                        "extendedKeyUsage = clientAuth",
                        ca_key, c->client_cert, c->client_key);
    return err;
}

/* ---- members ---------------------------------------------------------- */

/* Starts member i's process; state is "new" or "existing". */
static int spawn_member(struct etcd_cluster *c, int i, const char *state)
{
    struct member *m = &c->m[i];
    const char *argv[48];
    int k = 0;

    argv[k++] = "etcd";
    argv[k++] = "--name";
    argv[k++] = m->name;
    argv[k++] = "--data-dir";
    argv[k++] = m->data_dir;
    argv[k++] = "--listen-client-urls";
    argv[k++] = m->client_url;
    argv[k++] = "--advertise-client-urls";
    argv[k++] = m->client_url;
    argv[k++] = "--listen-peer-urls";
    argv[k++] = m->peer_url;
    argv[k++] = "--initial-advertise-peer-urls";
    argv[k++] = m->peer_url;
    argv[k++] = "--initial-cluster";
    argv[k++] = c->initial_cluster;
    argv[k++] = "--initial-cluster-state";
    argv[k++] = state;
    argv[k++] = "--initial-cluster-token";
    argv[k++] = c->token;
    /* Loopback round trips are microseconds: 50/500 ms elections are safe. */
    argv[k++] = "--heartbeat-interval";
    argv[k++] = "50";
    argv[k++] = "--election-timeout";
    argv[k++] = "500";
    argv[k++] = "--logger";
    argv[k++] = "zap";
    argv[k++] = "--log-level";
    argv[k++] = "warn";
    if (c->opts.tls) {
        argv[k++] = "--cert-file";
        argv[k++] = c->server_cert;
        argv[k++] = "--key-file";
        argv[k++] = c->server_key;
        argv[k++] = "--trusted-ca-file";
        argv[k++] = c->ca;
        argv[k++] = "--client-cert-auth";
    }
    argv[k] = NULL;
    m->frozen = 0;
    m->proc = proc_spawn(argv, NULL, m->log);
    if (m->proc == NULL) {
        int err = -errno;

        fprintf(stderr, "etcd_proc: cannot start etcd %s: %s\n", m->name, strerror(errno));
        return err;
    }
    return 0;
}

/* Explains a member that died on its own, e.g. from a bad flag. */
static int check_not_dead(struct etcd_cluster *c, int i)
{
    struct member *m = &c->m[i];
    int status = 0;

    if (m->proc == NULL || proc_alive(m->proc))
        return 0;
    proc_wait(m->proc, 0, &status);
    fprintf(stderr, "etcd_proc: etcd %s exited (wait status 0x%x) while starting\n", m->name,
            (unsigned)status);
    print_log_tail(m->log, LOG_TAIL_LINES);
    m->proc = proc_free(m->proc);
    return -ECHILD;
}

static int setup_auth(struct etcd_cluster *c)
{
    static const char *const steps[][5] = {
        {"user", "add", ETCD_ROOT_USER ":" ETCD_ROOT_PASSWORD, NULL},
        /* auth enable refuses a root user without the root role. */
        {"user", "grant-role", ETCD_ROOT_USER, "root", NULL},
        {"auth", "enable", NULL},
    };
    char out[512];
    size_t s;

    for (s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
        int rc = etcdctl_as(c, NULL, out, sizeof(out), steps[s]);

        if (rc != 0) {
            fprintf(stderr, "etcd_proc: etcdctl %s %s failed (%d): %s\n", steps[s][0], steps[s][1],
                    rc, out);
            return -EIO;
        }
    }
    return 0;
}

/*
 * A failed Check assertion ends a forked test with _exit(), and a Check
 * timeout SIGKILLs it, so neither teardown code nor atexit handlers run.
 * The members die with the test (PR_SET_PDEATHSIG), but the temp folder
 * would stay.  So a forked janitor holds the read end of a pipe: EOF (the
 * test process is gone, however) makes it remove the folder; a byte
 * (etcd_cluster_stop() did the work) makes it just exit.  It runs in its own
 * session because Check kills the test's whole process group.  Only
 * async-signal-safe calls are made after fork(): the test may have threads.
 */
static int start_janitor(struct etcd_cluster *c)
{
    const char *const argv[] = {"rm", "-rf", c->dir, NULL};
    int fds[2];
    pid_t pid;

    c->janitor = -1;
    c->janitor_fd = -1;
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    pid = fork();
    if (pid < 0) {
        int err = -errno;

        close(fds[0]);
        close(fds[1]);
        return err;
    }
    if (pid == 0) {
        struct timespec settle = {0, 300 * 1000000L};
        sigset_t none;
        ssize_t n;
        char b;

        setsid();
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (dup2(fds[0], 0) < 0)
            _exit(1);
        /* Our copy of the write end must go too, or EOF never comes. */
        close_range(3, ~0U, 0);
        do
            n = read(0, &b, 1);
        while (n < 0 && errno == EINTR);
        if (n == 1)
            _exit(0);
        /* Let the members, killed by the same death, finish dying. */
        nanosleep(&settle, NULL);
        execve("/bin/rm", (char *const *)argv, environ);
        _exit(127);
    }
    close(fds[0]);
    c->janitor = pid;
    c->janitor_fd = fds[1];
    return 0;
}

static void stop_janitor(struct etcd_cluster *c)
{
    if (c->janitor_fd >= 0) {
        if (write(c->janitor_fd, "k", 1) < 0) {
            /* It is gone already; closing below is all that is left. */
        }
        close(c->janitor_fd);
        c->janitor_fd = -1;
    }
    if (c->janitor > 0) {
        while (waitpid(c->janitor, NULL, 0) < 0 && errno == EINTR)
            ;
        c->janitor = -1;
    }
}

static int init_layout(struct etcd_cluster *c)
{
    const char *tmp = getenv("TMPDIR");
    size_t used = 0, used_ic = 0;
    int ports[2 * ETCD_MAX_MEMBERS];
    int i, err;

    if (tmp == NULL || tmp[0] == '\0')
        tmp = "/tmp";
    if (snprintf(c->dir, sizeof(c->dir), "%s/etcd-test-XXXXXX", tmp) >= (int)sizeof(c->dir))
        return -ENAMETOOLONG;
    if (mkdtemp(c->dir) == NULL) {
        err = -errno;
        fprintf(stderr, "etcd_proc: mkdtemp in %s: %s\n", tmp, strerror(errno));
        c->dir[0] = '\0';
        return err;
    }
    if ((err = pick_ports(ports, 2 * c->n)) < 0) {
        fprintf(stderr, "etcd_proc: cannot pick ports: %s\n", strerror(-err));
        return err;
    }
    snprintf(c->token, sizeof(c->token), "etcd-test-%ld-%d", (long)getpid(), c->generation);
    for (i = 0; i < c->n; i++) {
        struct member *m = &c->m[i];
        const char *scheme = c->opts.tls ? "https" : "http";
        char file[32];
        int n;

        snprintf(m->name, sizeof(m->name), "m%d", i);
        m->client_port = ports[2 * i];
        m->peer_port = ports[2 * i + 1];
        snprintf(m->client_url, sizeof(m->client_url), "%s://127.0.0.1:%d", scheme, m->client_port);
        snprintf(m->peer_url, sizeof(m->peer_url), "http://127.0.0.1:%d", m->peer_port);
        if ((err = path_join(m->data_dir, sizeof(m->data_dir), c->dir, m->name)) < 0)
            return err;
        snprintf(file, sizeof(file), "%s.log", m->name);
        if ((err = path_join(m->log, sizeof(m->log), c->dir, file)) < 0)
            return err;
        /* Both lists are sized for ETCD_MAX_MEMBERS entries of URL_MAX. */
        n = snprintf(c->urls + used, sizeof(c->urls) - used, "%s%s", i ? "," : "", m->client_url);
        used += (size_t)n;
        n = snprintf(c->initial_cluster + used_ic, sizeof(c->initial_cluster) - used_ic, "%s%s=%s",
                     i ? "," : "", m->name, m->peer_url);
        used_ic += (size_t)n;
    }
    return 0;
}

/* Waits for a started cluster (all members "new") to elect a leader. */
static int wait_started(struct etcd_cluster *c, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    int i;

    for (;;) {
        for (i = 0; i < c->n; i++)
            if (check_not_dead(c, i) < 0)
                return -ECHILD;
        if (healthy_once(c) && live_count(c) == c->n)
            return 0;
        if (now_ms() >= deadline) {
            fprintf(stderr, "etcd_proc: cluster in %s has no leader after %d ms\n", c->dir,
                    timeout_ms);
            print_all_logs(c);
            return -ETIMEDOUT;
        }
        sleep_ms(20);
    }
}

struct etcd_cluster *etcd_cluster_start(const struct etcd_cluster_opts *opts)
{
    struct etcd_cluster *c;
    int i, n = opts != NULL && opts->members > 0 ? opts->members : 1;

    if (n != 1 && n != 3 && n != 5) {
        fprintf(stderr, "etcd_proc: %d members: use 1, 3 or 5\n", n);
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    if (opts != NULL)
        c->opts = *opts;
    c->opts.members = n;
    c->n = n;
    c->janitor = -1;
    c->janitor_fd = -1;
    if (init_layout(c) < 0)
        goto fail;
    if (start_janitor(c) < 0)
        goto fail;
    if (c->opts.tls && make_tls(c) < 0)
        goto fail;
    /* Members of a new cluster wait for each other, so start all first. */
    for (i = 0; i < n; i++)
        if (spawn_member(c, i, "new") < 0)
            goto fail;
    if (wait_started(c, START_TIMEOUT_MS) < 0)
        goto fail;
    if (c->opts.auth && setup_auth(c) < 0)
        goto fail;
    return c;
fail:
    fprintf(stderr, "etcd_proc: cluster start failed%s%s\n", c->dir[0] ? " in " : "", c->dir);
    etcd_cluster_stop(c);
    return NULL;
}

int etcd_cluster_size(const struct etcd_cluster *c)
{
    return c != NULL ? c->n : 0;
}

const char *etcd_member_url(const struct etcd_cluster *c, int i)
{
    return valid_index(c, i) ? c->m[i].client_url : NULL;
}

const char *etcd_member_log(const struct etcd_cluster *c, int i)
{
    return valid_index(c, i) ? c->m[i].log : NULL;
}

const char *etcd_cluster_urls(const struct etcd_cluster *c)
{
    return c != NULL ? c->urls : NULL;
}

const char *etcd_cluster_dir(const struct etcd_cluster *c)
{
    return c != NULL ? c->dir : NULL;
}

const char *etcd_cluster_ca_file(const struct etcd_cluster *c)
{
    return c != NULL && c->opts.tls ? c->ca : NULL;
}

const char *etcd_cluster_client_cert(const struct etcd_cluster *c)
{
    return c != NULL && c->opts.tls ? c->client_cert : NULL;
}

const char *etcd_cluster_client_key(const struct etcd_cluster *c)
{
    return c != NULL && c->opts.tls ? c->client_key : NULL;
}

int etcd_member_pid(struct etcd_cluster *c, int i)
{
    return etcd_member_running(c, i) ? (int)proc_pid(c->m[i].proc) : -1;
}

int etcd_member_running(struct etcd_cluster *c, int i)
{
    return valid_index(c, i) && c->m[i].proc != NULL && proc_alive(c->m[i].proc);
}

int etcd_member_kill(struct etcd_cluster *c, int i)
{
    struct member *m;

    if (!valid_index(c, i))
        return -EINVAL;
    m = &c->m[i];
    if (m->proc == NULL)
        return -ESRCH;
    proc_stop(m->proc, SIGKILL, 0);
    m->proc = proc_free(m->proc);
    m->frozen = 0;
    return 0;
}

int etcd_member_stop(struct etcd_cluster *c, int i)
{
    struct member *m;
    int rc;

    if (!valid_index(c, i))
        return -EINVAL;
    m = &c->m[i];
    if (m->proc == NULL)
        return -ESRCH;
    rc = proc_stop(m->proc, SIGTERM, STOP_GRACE_MS);
    m->proc = proc_free(m->proc);
    m->frozen = 0;
    return rc < 0 ? rc : 0;
}

int etcd_member_start(struct etcd_cluster *c, int i)
{
    long long deadline = now_ms() + START_TIMEOUT_MS;
    char body[512];
    int err, answered = 0;

    if (!valid_index(c, i))
        return -EINVAL;
    if (c->m[i].proc != NULL) {
        if (proc_alive(c->m[i].proc))
            return -EBUSY;
        c->m[i].proc = proc_free(c->m[i].proc);
    }
    if ((err = spawn_member(c, i, "existing")) < 0)
        return err;
    /*
     * Without a quorum of live members there can be no leader, so a member
     * restarted alone is ready as soon as it answers at all.
     */
    for (;;) {
        struct member_status st;

        if (check_not_dead(c, i) < 0)
            return -ECHILD;
        if (!answered)
            answered = member_http(c, i, "/health", NULL, body, sizeof(body), PROBE_TIMEOUT_MS) > 0;
        if (answered) {
            if (live_count(c) <= c->n / 2)
                return 0;
            if (member_status(c, i, &st) == 0 && st.leader != 0 && member_healthy(c, i))
                return 0;
        }
        if (now_ms() >= deadline) {
            fprintf(stderr, "etcd_proc: restarted %s is not ready after %d ms\n", c->m[i].name,
                    START_TIMEOUT_MS);
            print_log_tail(c->m[i].log, LOG_TAIL_LINES);
            return -ETIMEDOUT;
        }
        sleep_ms(20);
    }
}

int etcd_member_freeze(struct etcd_cluster *c, int i)
{
    int err;

    if (!valid_index(c, i))
        return -EINVAL;
    if ((err = proc_signal(c->m[i].proc, SIGSTOP)) < 0)
        return err;
    /* Return only once it is really stopped, so tests need no sleeps. */
    if ((err = proc_wait_stopped(c->m[i].proc, 5000)) < 0)
        return err;
    c->m[i].frozen = 1;
    return 0;
}

int etcd_member_thaw(struct etcd_cluster *c, int i)
{
    int err;

    if (!valid_index(c, i))
        return -EINVAL;
    if ((err = proc_signal(c->m[i].proc, SIGCONT)) < 0)
        return err;
    c->m[i].frozen = 0;
    return 0;
}

int etcd_member_wipe(struct etcd_cluster *c, int i)
{
    int err;

    if (!valid_index(c, i) || c->n != 1)
        return -EINVAL;
    if (c->m[i].proc != NULL)
        etcd_member_kill(c, i);
    rm_rf(c->m[i].data_dir);
    /* A new token makes it a different cluster (new cluster and member ids). */
    c->generation++;
    snprintf(c->token, sizeof(c->token), "etcd-test-%ld-%d", (long)getpid(), c->generation);
    if ((err = spawn_member(c, i, "new")) < 0)
        return err;
    if ((err = wait_started(c, START_TIMEOUT_MS)) < 0)
        return err;
    if (c->opts.auth && (err = setup_auth(c)) < 0)
        return err;
    return 0;
}

int etcdctl_as(struct etcd_cluster *c, const char *user, char *out, size_t outlen,
               const char *const args[])
{
    static const char *const env[] = {"ETCDCTL_API=3", NULL};
    char endpoints[sizeof(c->urls) + 16], user_flag[128];
    char cacert[PATH_MAX + 16], cert[PATH_MAX + 16], key[PATH_MAX + 16];
    const char *argv[64];
    size_t used;
    int i, k = 0, any = 0;

    if (out != NULL && outlen > 0)
        out[0] = '\0';
    if (c == NULL || args == NULL)
        return -1;
    used = (size_t)snprintf(endpoints, sizeof(endpoints), "--endpoints=");
    /* Frozen members are left out: etcdctl would wait on them. */
    for (i = 0; i < c->n; i++) {
        if (!member_live(c, i))
            continue;
        used += (size_t)snprintf(endpoints + used, sizeof(endpoints) - used, "%s%s", any ? "," : "",
                                 c->m[i].client_url);
        any = 1;
    }
    if (!any)
        snprintf(endpoints, sizeof(endpoints), "--endpoints=%s", c->urls);
    argv[k++] = "etcdctl";
    argv[k++] = endpoints;
    if (user != NULL) {
        if (snprintf(user_flag, sizeof(user_flag), "--user=%s", user) >= (int)sizeof(user_flag))
            return -1;
        argv[k++] = user_flag;
    }
    if (c->opts.tls) {
        snprintf(cacert, sizeof(cacert), "--cacert=%s", c->ca);
        snprintf(cert, sizeof(cert), "--cert=%s", c->client_cert);
        snprintf(key, sizeof(key), "--key=%s", c->client_key);
        argv[k++] = cacert;
        argv[k++] = cert;
        argv[k++] = key;
    }
    for (i = 0; args[i] != NULL; i++) {
        if (k >= (int)(sizeof(argv) / sizeof(argv[0])) - 1)
            return -1;
        argv[k++] = args[i];
    }
    argv[k] = NULL;
    return proc_run_env(out, outlen, ETCDCTL_TIMEOUT_MS, argv, env);
}

int etcdctl(struct etcd_cluster *c, char *out, size_t outlen, const char *const args[])
{
    const char *user = c != NULL && c->opts.auth ? ETCD_ROOT_USER ":" ETCD_ROOT_PASSWORD : NULL;

    return etcdctl_as(c, user, out, outlen, args);
}

void etcd_cluster_stop(struct etcd_cluster *c)
{
    int i;

    if (c == NULL)
        return;
    for (i = 0; i < c->n; i++)
        c->m[i].proc = proc_free(c->m[i].proc);
    if (c->dir[0] != '\0') {
        const char *keep = getenv("ETCD_HARNESS_KEEP");

        if (keep != NULL && keep[0] != '\0' && strcmp(keep, "0") != 0)
            fprintf(stderr, "etcd_proc: keeping %s\n", c->dir);
        else
            rm_rf(c->dir);
    }
    stop_janitor(c);
    free(c);
}
