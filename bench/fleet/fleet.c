/* make bench-fleet (issue 14): a 3-member etcd cluster and FLEET real
 * discovery-agent processes on this machine, each with its own config and
 * socket, and one benchmark process holding a socket watcher on every agent
 * (epoll) and the reference watches on the members' gateways.
 *
 * The fleet registers 100 services of 10 instances (instance j on agent
 * j % N) and each agent watches 10 services drawn by a Zipf law (service 0
 * is watched by nearly every agent, most services by a few). The parts, in
 * order: fleet start, at rest, propagation (against direct gateway
 * watches), a member killed, the whole cluster down for 30 s, the cost on
 * etcd per agent against Go clientv3 processes (etcdctl), and the start, at
 * rest and propagation figures again with etcd serving TLS.
 *
 * Results go to DATA/fleet-N.dat as "key value" lines (bench/fleet/report
 * turns every such file into docs/scaling.md). Nothing here asserts: every
 * wait is bounded, and a bound reached is written down as such. Every
 * process it starts is stopped by pid, and dies with it (proc.h). */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "b64.h"
#include "bench.h"
#include "etcd_proc.h"
#include "mkdir_p.h"
#include "proc.h"

#define SERVICES 100
#define PER_SERVICE 10
#define INSTANCES (SERVICES * PER_SERVICE)
#define WATCHES 10 /* per agent */
#define TTL_S 10
#define CHANGES 100
#define DOWN_S 30
#define PROBE "10.250.0.1:9"

#ifndef BUILD_DIR
#define BUILD_DIR "build"
#endif

/* ---- state ---------------------------------------------------------------- */

struct wstate {
    int svc;
    long long rev;
    uint64_t hash; /* of "addr,addr,..." */
    int count;
    bool replied;
};

struct agent {
    struct proc *p;
    pid_t pid;
    char dir[256], sock[300];
    int fd; /* the benchmark's watcher connection; -1: not yet */
    char *buf;
    size_t len, cap;
    struct wstate w[WATCHES];
    int member;      /* from status; -1: unknown */
    long long lease; /* from status at rest */
    bool ok;         /* scratch for the recovery parts */
    double cpu0;
};

struct direct {
    struct gw_watch w;
    int64_t rev;
};

static struct {
    int n;
    bool tls;
    struct etcd_cluster *c;
    struct agent *a;
    int ep; /* epoll */
    char dir[256];
    FILE *out;
    char prefix[8];
    /* propagation: the change in flight */
    bool prop_on;
    uint64_t prop_t0;
    int prop_pending;
    struct samples *prop_agent; /* per delivery, ms */
    double *first_seen;         /* per agent, ms; <0: not yet */
    struct direct *d;
    int nd;
    double *dfirst;
    /* invariants */
    long long empty_lists, backwards, repeats;
} F;

static void out(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out(const char *key, const char *fmt, ...)
{
    va_list ap;
    char v[512];

    va_start(ap, fmt);
    vsnprintf(v, sizeof v, fmt, ap);
    va_end(ap);
    fprintf(F.out, "%s%s %s\n", F.prefix, key, v);
    fflush(F.out);
    fprintf(stderr, "fleet[%d%s]: %s%s %s\n", F.n, F.tls ? " tls" : "", F.prefix, key, v);
}

static double secs(uint64_t t0)
{
    return (double)(now_ns() - t0) / 1e9;
}

static uint64_t fnv(const char *p, size_t n, uint64_t h)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    return h;
}

/* ---- the plan: who registers and watches what ------------------------------ */

static uint64_t rng = 88172645463325252ull;

static uint64_t xr(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Zipf(1) over the services: weight 1/(k+1). */
static int zipf_draw(void)
{
    static double cdf[SERVICES];
    static bool init;
    double u;

    if (!init) {
        double s = 0;
        for (int k = 0; k < SERVICES; k++)
            cdf[k] = (s += 1.0 / (k + 1));
        for (int k = 0; k < SERVICES; k++)
            cdf[k] /= s;
        init = true;
    }
    u = (double)(xr() >> 11) / 9007199254740992.0;
    for (int k = 0; k < SERVICES; k++)
        if (u <= cdf[k])
            return k;
    return SERVICES - 1;
}

static void plan_watches(struct agent *a)
{
    for (int k = 0; k < WATCHES; k++) {
        int s;
        bool dup;
        do {
            s = zipf_draw();
            dup = false;
            for (int j = 0; j < k; j++)
                dup |= a->w[j].svc == s;
        } while (dup);
        a->w[k] = (struct wstate){.svc = s, .rev = -1};
    }
}

static void inst_addr(int j, char *buf, size_t len)
{
    snprintf(buf, len, "10.%d.%d.1:8080", 1 + j / 250, j % 250);
}

/* ---- etcd's request counter ------------------------------------------------ */

static size_t sink(char *p, size_t s, size_t n, void *arg)
{
    struct {
        char *b;
        size_t len, cap;
    } *o = arg;
    size_t k = s * n;

    if (o->len + k + 1 > o->cap) {
        o->cap = (o->len + k + 1) * 2;
        o->b = realloc(o->b, o->cap);
    }
    memcpy(o->b + o->len, p, k);
    o->len += k;
    o->b[o->len] = '\0';
    return k;
}

/* grpc_server_msg_received_total summed over methods on member i: every
 * request message, whether it came through the gateway (one stream per
 * keep-alive, one message on it) or from a Go client (one stream for all
 * its keep-alives, a message per keep-alive): the one count that is the
 * same for both. -1 if the member does not answer. */
#define METHODS 8
static const char *const method_names[METHODS] = {
    "LeaseGrant", "LeaseKeepAlive", "Put", "Range", "Watch", "Txn", "DeleteRange", "Status"};
static double by_method[METHODS];

static double member_requests(int i)
{
    struct {
        char *b;
        size_t len, cap;
    } o = {0};
    char url[256];
    CURL *h;
    double total = -1;

    if (!etcd_member_running(F.c, i))
        return -1;
    h = curl_easy_init();
    snprintf(url, sizeof url, "%s/metrics", etcd_member_url(F.c, i));
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &o);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 2000L);
    if (F.tls) {
        curl_easy_setopt(h, CURLOPT_CAINFO, etcd_cluster_ca_file(F.c));
        curl_easy_setopt(h, CURLOPT_SSLCERT, etcd_cluster_client_cert(F.c));
        curl_easy_setopt(h, CURLOPT_SSLKEY, etcd_cluster_client_key(F.c));
    }
    if (curl_easy_perform(h) == CURLE_OK && o.b) {
        total = 0;
        for (char *p = o.b; (p = strstr(p, "\ngrpc_server_msg_received_total{")); p++) {
            char *sp = strchr(p + 1, ' ');
            if (!sp)
                continue;
            double v = strtod(sp + 1, NULL);
            total += v;
            for (int k = 0; k < METHODS; k++) {
                char pat[64];
                snprintf(pat, sizeof pat, "grpc_method=\"%s\"", method_names[k]);
                char *m = strstr(p, pat);
                if (m && m < sp)
                    by_method[k] += v;
            }
        }
    }
    curl_easy_cleanup(h);
    free(o.b);
    return total;
}

static double cluster_requests(void)
{
    double t = 0;

    memset(by_method, 0, sizeof by_method);
    for (int i = 0; i < etcd_cluster_size(F.c); i++) {
        double r = member_requests(i);
        if (r > 0)
            t += r;
    }
    return t;
}

/* ---- the agents ------------------------------------------------------------ */

static int agent_spawn(int i)
{
    struct agent *a = &F.a[i];
    static char text[1 << 17]; /* 1,000 instances on one agent at most */
    char conf[320], cache[300], log[300], eps[1024], tls[1024] = "";
    size_t o = 0;

    snprintf(a->dir, sizeof a->dir, "%s/a%04d", F.dir, i);
    snprintf(a->sock, sizeof a->sock, "%s/s", a->dir);
    snprintf(conf, sizeof conf, "%s/agent.yaml", a->dir);
    snprintf(cache, sizeof cache, "%s/cache", a->dir);
    snprintf(log, sizeof log, "%s/agent.log", a->dir);
    if (mkdir_p(a->dir, 0755) < 0)
        return -1;
    snprintf(eps, sizeof eps, "%s", etcd_cluster_urls(F.c));
    if (F.tls)
        snprintf(tls, sizeof tls, "  tls:\n    ca_file: %s\n    cert_file: %s\n    key_file: %s\n",
                 etcd_cluster_ca_file(F.c), etcd_cluster_client_cert(F.c),
                 etcd_cluster_client_key(F.c));
    /* The shipped defaults (ttl 10 s, timeout 5 s) but for the paths, log
     * level warn (1,000 agents logging every registration at info would
     * measure the disk) and xDS off (a fleet host may or may not serve it;
     * it costs etcd nothing), and DNS and the HTTP listener off (every agent
     * would want the same ports). */
    o += (size_t)snprintf(text + o, sizeof text - o,
                          "etcd:\n  endpoints: [%s]\n  timeout: 5s\n%s"
                          "session:\n  ttl: %ds\n"
                          "socket:\n  path: %s\n"
                          "cache:\n  dir: %s\n"
                          "log:\n  level: warn\n"
                          "xds:\n  enabled: false\n"
                          "dns:\n  enabled: false\n"
                          "http:\n  enabled: false\n"
                          "services:\n",
                          eps, tls, TTL_S, a->sock, cache);
    for (int j = i; j < INSTANCES && o < sizeof text; j += F.n) {
        char addr[64];
        inst_addr(j, addr, sizeof addr);
        o += (size_t)snprintf(text + o, sizeof text - o, "  - name: svc-%03d\n    address: %s\n",
                              j / PER_SERVICE, addr);
    }
    if (o >= sizeof text || write_file(conf, text) < 0)
        return -1;
    const char *bin = getenv("FLEET_AGENT"); /* another agent binary, e.g. a candidate fix */
    const char *argv[] = {bin && *bin ? bin : BUILD_DIR "/discovery-agent", "-c", conf, NULL};
    a->p = proc_spawn(argv, NULL, log);
    a->pid = a->p ? proc_pid(a->p) : -1;
    a->fd = -1;
    a->member = -1;
    return a->p ? 0 : -1;
}

/* Connects the watcher of agent i (once its socket answers) and sends its
 * ten watches. 1 connected, 0 not yet. */
static int agent_connect(int i)
{
    struct agent *a = &F.a[i];
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    char req[WATCHES * 96];
    size_t o = 0;
    int fd;

    if (a->fd >= 0)
        return 1;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", a->sock);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return 0;
    }
    for (int k = 0; k < WATCHES; k++)
        o += (size_t)snprintf(req + o, sizeof req - o,
                              "{\"op\":\"watch\",\"id\":%d,\"service\":\"svc-%03d\"}\n", k + 1,
                              a->w[k].svc);
    if (send(fd, req, o, MSG_NOSIGNAL) != (ssize_t)o) {
        close(fd);
        return 0;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    a->fd = fd;
    a->cap = 65536;
    a->buf = malloc(a->cap);
    epoll_ctl(F.ep, EPOLL_CTL_ADD, fd, &ev);
    return 1;
}

/* One line of agent i: a watch reply or an update. Watch numbers are
 * given out in order on a connection, so watch N is our request N. */
static void agent_line(int i, char *line, size_t len)
{
    struct agent *a = &F.a[i];
    long long n = json_int_member(line, "watch", -1);
    struct wstate *w;
    uint64_t h = 0xcbf29ce484222325ull;
    int count = 0;

    line[len] = '\0';
    if (n < 1 || n > WATCHES)
        return;
    w = &a->w[n - 1];
    for (char *p = line; (p = strstr(p, "\"address\":\"")); count++) {
        p += 11;
        char *q = strchr(p, '"');
        if (!q)
            break;
        if (count)
            h = fnv(",", 1, h);
        h = fnv(p, (size_t)(q - p), h);
        p = q;
    }
    long long rev = json_int_member(line, "revision", -1);
    /* A line that only flips "stale" is news, not a repeat. */
    h = fnv(strstr(line, "\"stale\":true") ? "s" : "f", 1, h);
    if (!count)
        F.empty_lists++;
    if (rev < w->rev)
        F.backwards++;
    else if (w->replied && strstr(line, "\"event\"") && rev == w->rev && h == w->hash)
        F.repeats++;
    w->rev = rev;
    w->hash = h;
    w->count = count;
    w->replied = true;
    if (F.prop_on && w->svc == 0 && F.first_seen[i] < 0 && strstr(line, "\"event\"")) {
        F.first_seen[i] = (double)(now_ns() - F.prop_t0) / 1e6;
        samples_add(F.prop_agent, F.first_seen[i]);
        F.prop_pending--;
    }
}

static void agent_read(int i)
{
    struct agent *a = &F.a[i];

    for (;;) {
        if (a->cap - a->len < 16384) {
            a->cap *= 2;
            a->buf = realloc(a->buf, a->cap);
        }
        ssize_t r = read(a->fd, a->buf + a->len, a->cap - a->len - 1);
        if (r <= 0) {
            if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                epoll_ctl(F.ep, EPOLL_CTL_DEL, a->fd, NULL);
                close(a->fd);
                a->fd = -1; /* the agent went: counted by the caller's checks */
            }
            return;
        }
        size_t start = 0, old = a->len;
        a->len += (size_t)r;
        for (size_t k = old; k < a->len; k++)
            if (a->buf[k] == '\n') {
                agent_line(i, a->buf + start, k - start);
                start = k + 1;
            }
        memmove(a->buf, a->buf + start, a->len - start);
        a->len -= start;
    }
}

/* Reads everything for up to ms. */
static void pump(int ms)
{
    struct epoll_event ev[256];
    uint64_t end = now_ns() + (uint64_t)ms * 1000000u;

    for (;;) {
        int64_t left = (int64_t)(end - now_ns()) / 1000000;
        int n = epoll_wait(F.ep, ev, 256, left > 0 ? (int)left : 0);
        for (int k = 0; k < n; k++) {
            uint32_t u = ev[k].data.u32;
            if (u < (uint32_t)F.n) {
                agent_read((int)u);
            } else {
                struct direct *d = &F.d[u - (uint32_t)F.n];
                int64_t rev = d->rev;
                int got = gw_watch_read(&d->w, &rev);
                if (got > 0 && F.prop_on && F.dfirst[u - (uint32_t)F.n] < 0) {
                    F.dfirst[u - (uint32_t)F.n] = (double)(now_ns() - F.prop_t0) / 1e6;
                    F.prop_pending--;
                }
                if (got < 0)
                    epoll_ctl(F.ep, EPOLL_CTL_DEL, d->w.g.fd, NULL);
                d->rev = rev;
            }
        }
        if (now_ns() >= end || (F.prop_on && F.prop_pending <= 0))
            return;
    }
}

/* The status of agent i: member, lease, attached (connected, registered,
 * nothing stale). */
static bool agent_status(int i, int *member, long long *lease)
{
    struct lc c;
    size_t len;
    char *line;
    bool ok = false;

    *member = -1;
    *lease = 0;
    if (lc_open(&c, F.a[i].sock, false) < 0)
        return false;
    line = lc_call(&c, "{\"op\":\"status\"}\n", 5000, &len);
    if (line) {
        char *ep = strstr(line, "\"endpoint\":\"");
        for (int m = 0; ep && m < etcd_cluster_size(F.c); m++) {
            const char *u = etcd_member_url(F.c, m);
            if (!strncmp(ep + 12, u, strlen(u)) && ep[12 + strlen(u)] == '"')
                *member = m;
        }
        char *id = strstr(line, "\"lease\":{\"id\":\"");
        if (id)
            *lease = (long long)strtoull(id + 15, NULL, 16);
        ok = strstr(line, "\"connected\":true") && *lease && !strstr(line, "\"stale\":true") &&
             !strstr(line, "\"state\":\"pending\"") && !strstr(line, "\"state\":\"failing\"");
    }
    lc_close(&c);
    return ok;
}

/* ---- etcd's view, the judge --------------------------------------------- */

static uint64_t etcd_hash[SERVICES];
static int etcd_count[SERVICES];

static int etcd_lists(void)
{
    static char buf[1 << 20];
    const char *args[] = {"get", "--prefix", "--keys-only", "/micro/svc-", NULL};
    size_t off[SERVICES] = {0};
    int total = 0;

    if (etcdctl(F.c, buf, sizeof buf, args) != 0)
        return -1;
    for (int s = 0; s < SERVICES; s++) {
        etcd_hash[s] = 0xcbf29ce484222325ull;
        etcd_count[s] = 0;
    }
    for (char *save = NULL, *k = strtok_r(buf, "\n", &save); k; k = strtok_r(NULL, "\n", &save)) {
        int s;
        char *addr;
        if (sscanf(k, "/micro/svc-%3d/", &s) != 1 || s < 0 || s >= SERVICES)
            continue;
        addr = k + strlen("/micro/svc-000/");
        if (strcmp(addr, PROBE))
            total++; /* the agents' instances; the probe is the benchmark's */
        if (off[s])
            etcd_hash[s] = fnv(",", 1, etcd_hash[s]);
        etcd_hash[s] = fnv(addr, strlen(addr), etcd_hash[s]);
        off[s]++;
        etcd_count[s]++;
    }
    for (int s = 0; s < SERVICES; s++)
        etcd_hash[s] = fnv("f", 1, etcd_hash[s]);
    return total;
}

/* Watches whose last list differs from etcd's; pumps up to ms for them to
 * agree. */
static int lists_wrong(int ms)
{
    uint64_t end = now_ns() + (uint64_t)ms * 1000000u;
    int wrong;

    do {
        wrong = 0;
        for (int i = 0; i < F.n; i++)
            for (int k = 0; k < WATCHES; k++) {
                const struct wstate *w = &F.a[i].w[k];
                wrong += !w->replied || w->hash != etcd_hash[w->svc];
            }
        if (wrong)
            pump(100);
    } while (wrong && now_ns() < end);
    return wrong;
}

/* Pumps until every agent in the set (ok == false) is attached and not on
 * member `not`; returns the seconds taken, or -1 after limit_s. Samples
 * etcd's request rate every second into peak. */
static double wait_attached(int not, double limit_s, double *peak, double *mean)
{
    uint64_t t0 = now_ns(), last = now_ns();
    double r0 = cluster_requests(), rl = r0;
    int left;

    *peak = 0;
    do {
        left = 0;
        for (int i = 0; i < F.n; i++) {
            int m;
            long long lease;
            if (F.a[i].ok)
                continue;
            if (agent_status(i, &m, &lease) && m != not ) {
                F.a[i].ok = true;
                F.a[i].member = m;
                continue;
            }
            left++;
        }
        pump(200);
        if (now_ns() - last >= 1000000000ull) {
            double r = cluster_requests(), dt = (double)(now_ns() - last) / 1e9;
            if ((r - rl) / dt > *peak)
                *peak = (r - rl) / dt;
            rl = r;
            last = now_ns();
        }
    } while (left && secs(t0) < limit_s);
    for (int i = 0; left && i < F.n; i++)
        if (!F.a[i].ok) {
            struct lc c;
            size_t len;
            char *line = lc_open(&c, F.a[i].sock, false) == 0
                             ? lc_call(&c, "{\"op\":\"status\"}\n", 5000, &len)
                             : NULL;
            fprintf(stderr, "fleet: agent %d not attached: %.1500s\n", i, line ? line : "?");
            lc_close(&c);
            break;
        }
    if (mean)
        *mean = (cluster_requests() - r0) / secs(t0);
    return left ? -1 : secs(t0);
}

/* ---- parts ---------------------------------------------------------------- */

static double member_rss_mb(int m)
{
    pid_t pid = etcd_member_pid(F.c, m);
    return pid > 0 ? (double)proc_rss_kib(pid) / 1024.0 : -1;
}

static double member_cpu(int m)
{
    pid_t pid = etcd_member_pid(F.c, m);
    return pid > 0 ? proc_cpu_sched_s(pid) : -1;
}

static double base_rss[3];
static void methods_mark(void);
static void methods_out(const char *part, int agents);

static void part_start(void)
{
    uint64_t t0;
    double peak = 0, r0, rl, n_in = 0;
    uint64_t last;
    int spawned = 0, connected = 0, complete;

    for (int m = 0; m < 3; m++)
        base_rss[m] = member_rss_mb(m);
    methods_mark();
    t0 = now_ns();
    last = t0;
    r0 = rl = cluster_requests();
    /* Spawned in one go, as a fleet restarted by its orchestrator is:
     * agents come up while others are still starting. */
    for (int i = 0; i < F.n; i++)
        spawned += agent_spawn(i) == 0;
    out("spawn_s", "%.2f", secs(t0));
    do {
        complete = 0;
        for (int i = 0; i < F.n; i++) {
            if (F.a[i].fd < 0)
                connected += agent_connect(i);
            bool all = F.a[i].fd >= 0;
            for (int k = 0; all && k < WATCHES; k++)
                all = F.a[i].w[k].count == PER_SERVICE;
            complete += all;
        }
        pump(100);
        if (now_ns() - last >= 1000000000ull) {
            double r = cluster_requests(), dt = (double)(now_ns() - last) / 1e9;
            if ((r - rl) / dt > peak)
                peak = (r - rl) / dt;
            rl = r;
            last = now_ns();
        }
    } while (complete < F.n && secs(t0) < 240);
    double t = secs(t0);
    n_in = etcd_lists();
    out("start_s", "%.2f", complete < F.n ? -1.0 : t);
    out("start_complete_agents", "%d", complete);
    out("start_instances_in_etcd", "%.0f", n_in);
    out("start_rate_peak", "%.0f", peak);
    out("start_rate_mean", "%.0f", (cluster_requests() - r0) / secs(t0));
    methods_out("start", F.n);
    /* A watch reply before a service's first registration is rightly
     * empty: the invariants count from a complete fleet on. */
    F.empty_lists = F.backwards = F.repeats = 0;
}

static int log_count(const char *what)
{
    char cmd[600], line[64] = "0";
    FILE *p;

    snprintf(cmd, sizeof cmd, "cat %s/a*/agent.log 2>/dev/null | grep -c '%s'", F.dir, what);
    if ((p = popen(cmd, "r"))) {
        if (!fgets(line, sizeof line, p))
            strcpy(line, "0");
        pclose(p);
    }
    return atoi(line);
}

static double rest_rate;
static double mark[METHODS];

static void methods_mark(void)
{
    cluster_requests();
    memcpy(mark, by_method, sizeof mark);
}

/* Request messages by method since methods_mark(), per agent. */
static void methods_out(const char *part, int agents)
{
    char k[64], v[512];
    size_t o = 0;

    cluster_requests();
    for (int m = 0; m < METHODS; m++)
        o += (size_t)snprintf(v + o, sizeof v - o, "%s%s=%.1f", m ? " " : "", method_names[m],
                              (by_method[m] - mark[m]) / (agents ? agents : 1));
    snprintf(k, sizeof k, "%s_requests_per_agent", part);
    out(k, "%s", v);
}
static int per_member[3];

static void part_rest(void)
{
    double c0[3], c1[3], r0, r1, a0 = 0, a1 = 0, w = 4.0 * TTL_S / 3.0;
    uint64_t t0;

    pump(3000);
    for (int m = 0; m < 3; m++)
        c0[m] = member_cpu(m);
    for (int i = 0; i < F.n; i++)
        a0 += proc_cpu_sched_s(F.a[i].pid);
    r0 = cluster_requests();
    t0 = now_ns();
    pump((int)(w * 1000));
    r1 = cluster_requests();
    double dt = secs(t0);
    for (int m = 0; m < 3; m++)
        c1[m] = member_cpu(m);
    for (int i = 0; i < F.n; i++)
        a1 += proc_cpu_sched_s(F.a[i].pid);
    rest_rate = (r1 - r0) / dt;
    out("rest_rate", "%.1f", rest_rate);
    out("rest_floor", "%.1f", F.n * 3.0 / TTL_S);
    for (int m = 0; m < 3; m++) {
        char k[32];
        snprintf(k, sizeof k, "rest_m%d_cpu_pct", m);
        out(k, "%.2f", 100 * (c1[m] - c0[m]) / dt);
        snprintf(k, sizeof k, "rest_m%d_rss_mb", m);
        out(k, "%.1f", member_rss_mb(m));
        snprintf(k, sizeof k, "rest_m%d_rss_base_mb", m);
        out(k, "%.1f", base_rss[m]);
    }
    out("rest_agents_cpu_pct", "%.2f", 100 * (a1 - a0) / dt);
    long long rss = 0, anon = 0;
    for (int i = 0; i < F.n; i++) {
        rss += proc_rss_kib(F.a[i].pid);
        anon += proc_rss_anon_kib(F.a[i].pid);
    }
    out("rest_agent_rss_mb", "%.2f", (double)rss / F.n / 1024);
    out("rest_agent_anon_mb", "%.2f", (double)anon / F.n / 1024);
    memset(per_member, 0, sizeof per_member);
    int unknown = 0;
    for (int i = 0; i < F.n; i++) {
        if (!agent_status(i, &F.a[i].member, &F.a[i].lease) || F.a[i].member < 0) {
            unknown++;
            continue;
        }
        per_member[F.a[i].member]++;
    }
    out("spread", "%d %d %d", per_member[0], per_member[1], per_member[2]);
    int mx = 0;
    for (int m = 0; m < 3; m++)
        mx = per_member[m] > per_member[mx] ? m : mx;
    out("spread_max_dev_pct", "%.1f", 100.0 * (per_member[mx] - F.n / 3.0) / (F.n / 3.0));
    out("spread_unknown", "%d", unknown);
    out("start_warnings", "%d", log_count("<4>"));
}

/* A put through a member's TLS gateway, in a thread of its own so that the
 * epoll loop goes on timing the deliveries meanwhile. */
struct tls_put {
    pthread_t th;
    char url[256], body[1024];
};

static void *tls_put_main(void *arg)
{
    struct tls_put *t = arg;
    struct {
        char *b;
        size_t len, cap;
    } o = {0};
    CURL *h = curl_easy_init();
    struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");

    curl_easy_setopt(h, CURLOPT_URL, t->url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, t->body);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &o);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(h, CURLOPT_CAINFO, etcd_cluster_ca_file(F.c));
    curl_easy_setopt(h, CURLOPT_SSLCERT, etcd_cluster_client_cert(F.c));
    curl_easy_setopt(h, CURLOPT_SSLKEY, etcd_cluster_client_key(F.c));
    curl_easy_perform(h);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    free(o.b);
    return NULL;
}

/* One change of svc-000 (a probe instance's weight), timed from the send
 * of the put to each agent's first update line and each direct watch's
 * first event. */
static void part_propagation(void)
{
    struct samples agent = {0}, direct = {0}, whole = {0}, dwhole = {0};
    struct gw g;
    int watching = 0;

    F.nd = F.n;
    F.d = calloc((size_t)F.nd, sizeof *F.d);
    F.dfirst = calloc((size_t)F.nd, sizeof *F.dfirst);
    F.first_seen = calloc((size_t)F.n, sizeof *F.first_seen);
    F.prop_agent = &agent;
    if (!F.tls) {
        /* The reference: as many watches of the same prefix, held directly
         * on the members' gateways, spread as evenly. */
        for (int k = 0; k < F.nd; k++) {
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(F.n + k)};
            if (gw_watch_open(&F.d[k].w, etcd_member_url(F.c, k % 3), "/micro/svc-000/") < 0) {
                F.nd = k;
                break;
            }
            epoll_ctl(F.ep, EPOLL_CTL_ADD, F.d[k].w.g.fd, &ev);
        }
    } else {
        F.nd = 0; /* bench/gw.c speaks plain HTTP only: no reference under TLS */
    }
    out("prop_direct_watches", "%d", F.nd);
    for (int i = 0; i < F.n; i++)
        for (int k = 0; k < WATCHES; k++)
            watching += F.a[i].w[k].svc == 0;
    out("prop_agents_watching", "%d", watching);
    if (!F.tls && gw_open(&g, etcd_member_url(F.c, 0)) < 0)
        return;
    for (int c = 0; c < CHANGES; c++) {
        char val[256];
        for (int i = 0; i < F.n; i++)
            F.first_seen[i] = -1;
        for (int k = 0; k < F.nd; k++)
            F.dfirst[k] = -1;
        snprintf(val, sizeof val, "{\"Name\":\"svc-000\",\"Address\":\"" PROBE "\",\"Weight\":%d}",
                 c + 1);
        F.prop_pending = watching + F.nd;
        F.prop_on = true;
        F.prop_t0 = now_ns();
        char key[64];
        snprintf(key, sizeof key, "/micro/svc-000/%s", PROBE);
        struct tls_put tp;
        if (F.tls) {
            char kb[128], vb[512];
            b64_encode(key, strlen(key), kb);
            b64_encode(val, strlen(val), vb);
            snprintf(tp.url, sizeof tp.url, "%s/v3/kv/put", etcd_member_url(F.c, 0));
            snprintf(tp.body, sizeof tp.body, "{\"key\":\"%s\",\"value\":\"%s\"}", kb, vb);
            F.prop_t0 = now_ns();
            pthread_create(&tp.th, NULL, tls_put_main, &tp);
        } else {
            gw_send_put(&g, key, val);
        }
        uint64_t end = now_ns() + 5000000000ull;
        bool acked = F.tls; /* the thread waits for its own reply */
        while ((F.prop_pending > 0 || !acked) && now_ns() < end) {
            pump(20);
            if (!acked)
                acked = gw_poll_reply(&g, NULL) != 0;
        }
        F.prop_on = false;
        if (F.tls)
            pthread_join(tp.th, NULL);
        double mx = 0, dmx = 0;
        for (int i = 0; i < F.n; i++)
            mx = F.first_seen[i] > mx ? F.first_seen[i] : mx;
        for (int k = 0; k < F.nd; k++) {
            if (F.dfirst[k] >= 0)
                samples_add(&direct, F.dfirst[k]);
            dmx = F.dfirst[k] > dmx ? F.dfirst[k] : dmx;
        }
        samples_add(&whole, mx);
        if (F.nd)
            samples_add(&dwhole, dmx);
        if (F.prop_pending > 0)
            out("prop_undelivered", "change %d: %d", c, F.prop_pending);
        pump(20 + (int)(xr() % 30));
    }
    if (!F.tls)
        gw_close(&g);
    out("prop_agent_p50_ms", "%.2f", samples_pct(&agent, 50));
    out("prop_agent_p99_ms", "%.2f", samples_pct(&agent, 99));
    out("prop_agent_max_ms", "%.2f", samples_pct(&agent, 100));
    out("prop_agent_all_p50_ms", "%.2f", samples_pct(&whole, 50));
    out("prop_agent_all_p99_ms", "%.2f", samples_pct(&whole, 99));
    if (F.nd) {
        out("prop_direct_p50_ms", "%.2f", samples_pct(&direct, 50));
        out("prop_direct_p99_ms", "%.2f", samples_pct(&direct, 99));
        out("prop_direct_max_ms", "%.2f", samples_pct(&direct, 100));
        out("prop_direct_all_p99_ms", "%.2f", samples_pct(&dwhole, 99));
    }
    for (int k = 0; k < F.nd; k++) {
        epoll_ctl(F.ep, EPOLL_CTL_DEL, F.d[k].w.g.fd, NULL);
        gw_watch_close(&F.d[k].w);
    }
    F.nd = 0;
    samples_free(&agent);
    samples_free(&direct);
    samples_free(&whole);
    samples_free(&dwhole);
}

static int leases_changed(void)
{
    int changed = 0;

    for (int i = 0; i < F.n; i++) {
        int m;
        long long lease;
        agent_status(i, &m, &lease);
        changed += lease != F.a[i].lease;
    }
    return changed;
}

static void invariants(const char *part)
{
    char k[64];
    int in = etcd_lists();

    snprintf(k, sizeof k, "%s_instances_in_etcd", part);
    out(k, "%d", in);
    snprintf(k, sizeof k, "%s_lists_wrong", part);
    out(k, "%d", lists_wrong(20000));
    snprintf(k, sizeof k, "%s_empty_lists", part);
    out(k, "%lld", F.empty_lists);
    snprintf(k, sizeof k, "%s_backwards", part);
    out(k, "%lld", F.backwards);
    snprintf(k, sizeof k, "%s_repeats", part);
    out(k, "%lld", F.repeats);
    snprintf(k, sizeof k, "%s_leases_changed", part);
    out(k, "%d", leases_changed());
    int gone = 0;
    for (int i = 0; i < F.n; i++)
        gone += F.a[i].fd < 0;
    snprintf(k, sizeof k, "%s_watchers_closed", part);
    out(k, "%d", gone);
}

static void part_kill(void)
{
    int busiest = 0, moved = 0;
    double peak, mean;

    for (int m = 0; m < 3; m++)
        busiest = per_member[m] > per_member[busiest] ? m : busiest;
    for (int i = 0; i < F.n; i++) {
        F.a[i].ok = F.a[i].member != busiest;
        moved += !F.a[i].ok;
    }
    out("kill_member", "%d (%d agents)", busiest, moved);
    methods_mark();
    etcd_member_kill(F.c, busiest);
    double t = wait_attached(busiest, 120, &peak, &mean);
    methods_out("kill", moved);
    out("kill_reattach_s", "%.2f", t);
    out("kill_rate_peak", "%.0f", peak);
    out("kill_rate_peak_ratio", "%.2f", rest_rate > 0 ? peak / rest_rate : -1);
    invariants("kill");
    etcd_member_start(F.c, busiest);
    etcd_cluster_wait_healthy(F.c, 30000);
    pump(2000);
}

static void part_down(void)
{
    double peak, mean;
    uint64_t t0;

    for (int m = 0; m < 3; m++)
        etcd_member_kill(F.c, m);
    pump(DOWN_S * 1000);
    out("down_empty_lists_while_down", "%lld", F.empty_lists);
    for (int m = 0; m < 3; m++)
        etcd_member_start(F.c, m);
    etcd_cluster_wait_healthy(F.c, 30000);
    methods_mark();
    t0 = now_ns();
    for (int i = 0; i < F.n; i++)
        F.a[i].ok = false;
    double t = wait_attached(-1, 120, &peak, &mean);
    /* Whole: every agent attached and every registration in etcd. */
    int in;
    while ((in = etcd_lists()) < INSTANCES && secs(t0) < 120)
        pump(200);
    methods_out("down", F.n);
    out("down_whole_s", "%.2f", t < 0 ? -1.0 : secs(t0));
    out("down_attached_s", "%.2f", t);
    out("down_rate_peak", "%.0f", peak);
    out("down_rate_peak_ratio", "%.2f", rest_rate > 0 ? peak / rest_rate : -1);
    invariants("down");
}

static void fleet_stop(void)
{
    for (int i = 0; i < F.n; i++)
        if (F.a[i].p)
            proc_signal(F.a[i].p, SIGTERM);
    for (int i = 0; i < F.n; i++) {
        if (F.a[i].p)
            proc_wait(F.a[i].p, 10000, NULL);
        F.a[i].p = proc_free(F.a[i].p);
        if (F.a[i].fd >= 0)
            close(F.a[i].fd);
        free(F.a[i].buf);
    }
    close(F.ep);
}

/* Cost on etcd per attached client: member memory and CPU at rest over a
 * baseline, per client, for our agents (from part_rest's figures) and for
 * M Go clientv3 pairs (etcdctl lease keep-alive + etcdctl watch --prefix). */
static void part_go(int m_go)
{
    struct proc **p = calloc((size_t)m_go * 2, sizeof *p);
    double rss0[3], rss1[3], c0[3], c1[3], r0, r1;
    struct gw g;
    int started = 0;

    pump(2000);
    for (int m = 0; m < 3; m++)
        rss0[m] = member_rss_mb(m);
    if (gw_open(&g, etcd_member_url(F.c, 0)) < 0)
        return;
    for (int i = 0; i < m_go; i++) {
        char *reply = NULL, id[32] = "";
        if (gw_post(&g, "/v3/lease/grant", "{\"TTL\":\"10\"}", &reply) == 0 && reply) {
            char *q = strstr(reply, "\"ID\":\"");
            if (q)
                snprintf(id, sizeof id, "%llx", strtoull(q + 6, NULL, 10));
        }
        free(reply);
        char eps[1024];
        snprintf(eps, sizeof eps, "--endpoints=%s", etcd_cluster_urls(F.c));
        const char *ka[] = {"etcdctl", eps, "lease", "keep-alive", id, NULL};
        const char *wa[] = {"etcdctl", eps, "watch", "--prefix", "/micro/svc-000/", NULL};
        const char *env[] = {"ETCDCTL_API=3", NULL};
        p[2 * i] = proc_spawn(ka, env, NULL);
        p[2 * i + 1] = proc_spawn(wa, env, NULL);
        started += p[2 * i] && p[2 * i + 1];
    }
    gw_close(&g);
    pump(5000);
    for (int m = 0; m < 3; m++)
        c0[m] = member_cpu(m);
    r0 = cluster_requests();
    uint64_t t0 = now_ns();
    pump((int)(4000.0 * TTL_S / 3));
    double dt = secs(t0);
    r1 = cluster_requests();
    double cpu = 0, rss = 0, base = 0;
    for (int m = 0; m < 3; m++) {
        c1[m] = member_cpu(m);
        rss1[m] = member_rss_mb(m);
        cpu += c1[m] - c0[m];
        rss += rss1[m];
        base += rss0[m];
    }
    long long go_rss = 0;
    for (int i = 0; i < 2 * m_go; i++)
        if (p[i])
            go_rss += proc_rss_kib(proc_pid(p[i]));
    out("go_clients", "%d", started);
    out("go_member_rss_per_client_kb", "%.0f", 1024 * (rss - base) / (started ? started : 1));
    out("go_member_cpu_per_client_ms_s", "%.3f", 1000 * cpu / dt / (started ? started : 1));
    out("go_rate", "%.1f", (r1 - r0) / dt);
    out("go_process_rss_mb", "%.1f", (double)go_rss / 1024 / (started ? started : 1));
    for (int i = 0; i < 2 * m_go; i++)
        if (p[i])
            proc_signal(p[i], SIGTERM);
    for (int i = 0; i < 2 * m_go; i++) {
        if (p[i])
            proc_wait(p[i], 5000, NULL);
        p[i] = proc_free(p[i]);
    }
    free(p);
}

static void run(bool tls, const char *data)
{
    struct etcd_cluster_opts co = {.members = 3, .tls = tls};
    char path[600];

    F.tls = tls;
    snprintf(F.prefix, sizeof F.prefix, "%s", tls ? "tls_" : "");
    F.c = etcd_cluster_start(&co);
    if (!F.c) {
        out("error", "the cluster did not start");
        return;
    }
    snprintf(F.dir, sizeof F.dir, "%s/fleet", etcd_cluster_dir(F.c));
    F.a = calloc((size_t)F.n, sizeof *F.a);
    rng = 88172645463325252ull;
    for (int i = 0; i < F.n; i++)
        plan_watches(&F.a[i]);
    F.ep = epoll_create1(EPOLL_CLOEXEC);
    F.empty_lists = F.backwards = F.repeats = 0;
    uint64_t t0 = now_ns();
    part_start();
    part_rest();
    const char *quick = getenv("FLEET_QUICK"); /* only start, rest and the outage */
    if (!quick)
        part_propagation();
    if (quick && !tls) {
        part_down();
    } else if (!tls) {
        /* Cost per agent on etcd: members' memory over the baseline and
         * CPU at rest, per agent, beside the Go clients below. */
        double rss = 0, base = 0, cpu = 0;
        for (int m = 0; m < 3; m++) {
            rss += member_rss_mb(m);
            base += base_rss[m];
        }
        (void)cpu;
        out("agent_member_rss_per_agent_kb", "%.0f", 1024 * (rss - base) / F.n);
        part_kill();
        part_down();
    }
    fleet_stop();
    out("part_s", "%.1f", secs(t0));
    if (!tls && !getenv("FLEET_QUICK")) {
        int m_go = F.n < 200 ? F.n : 200;
        part_go(m_go);
    }
    snprintf(path, sizeof path, "%s", data);
    etcd_cluster_stop(F.c);
    F.c = NULL;
    free(F.a);
    F.a = NULL;
}

int main(int argc, char **argv)
{
    const char *data = argc > 1 ? argv[1] : "build/bench";
    const char *n = getenv("FLEET");
    const char *tls = getenv("FLEET_TLS");
    char path[600];
    uint64_t t0 = now_ns();

    F.n = n && atoi(n) > 0 ? atoi(n) : 1000;
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_ALL);
    mkdir_p(data, 0755);
    snprintf(path, sizeof path, "%s/fleet-%d.dat", data, F.n);
    F.out = fopen(path, "w");
    if (!F.out) {
        perror(path);
        return 1;
    }
    fprintf(F.out, "n %d\n", F.n);
    run(false, data);
    if (!tls || strcmp(tls, "0"))
        run(true, data);
    F.prefix[0] = '\0';
    out("total_s", "%.1f", secs(t0));
    fclose(F.out);
    return 0;
}
