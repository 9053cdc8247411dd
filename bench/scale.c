/* Parts 3 and 4: scale, rest and idle.
 *
 * etcd holds 1,000 services of 10 instances each (svc-0000 .. svc-0999,
 * written once by transactions). Each run starts a cold agent (empty cache
 * folder) and:
 *   1. watches all 1,000 services on one connection: time from the agent's
 *      spawn to the last list (floor: this benchmark reading the same 1,000
 *      ranges itself, one after another, on one keep-alive connection), and
 *      resident memory once the watch streams are up (floor: the same
 *      agent's memory before any watch, plus the bytes of the keys and
 *      values it holds);
 *   2. opens 10,000 socket clients, each watching one of svc-0000..0099
 *      (100 watchers per service), and times 1,000 puts to those services
 *      (each changes a weight, so each reaches 100 watchers): agent CPU per
 *      update delivered (floor: a process writing the same update line to
 *      100 unix sockets);
 *   3. leaves it at rest for the idle window: requests to etcd (from the
 *      agent's own etcd.requests, through the status op; floor: one
 *      keep-alive per third of the TTL), TCP connections to etcd (from
 *      /proc; floor: one), CPU (from the scheduler's per-thread counters)
 *      and memory.
 * Once, after the runs: memory against the number of watched instances,
 * 100 services at a time, for the plot.
 *
 * Budget: about 30 s a run with the default idle window of 13.3 s (four
 * keep-alive periods, so the count is exact), 5 runs. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "suite.h"

#define SERVICES 1000
#define INSTANCES 10
#define CLIENTS 10000
#define CLIENT_SERVICES 100
#define UPDATES 1000
#define TTL_S 10

static size_t data_bytes;    /* keys and values held for SERVICES services */
static long lines_got[RUNS]; /* update lines delivered, per run */

static void svc_name(int i, char *buf, size_t cap)
{
    snprintf(buf, cap, "svc-%04d", i);
}

static void inst_addr(int s, int k, char *buf, size_t cap)
{
    snprintf(buf, cap, "10.%d.%d.%d:8080", s / 250, s % 250, k + 1);
}

static int seed(struct bench *b)
{
    struct gw g;
    char keys[100][96], vals[100][256];
    const char *kp[100], *vp[100];
    int n = 0;

    if (gw_open(&g, b->url) < 0)
        return -1;
    data_bytes = 0;
    for (int s = 0; s < SERVICES; s++)
        for (int k = 0; k < INSTANCES; k++) {
            char name[32], addr[32];
            svc_name(s, name, sizeof name);
            inst_addr(s, k, addr, sizeof addr);
            snprintf(keys[n], sizeof keys[n], "/micro/%s/%s", name, addr);
            instance_value(vals[n], sizeof vals[n], name, addr, 1);
            data_bytes += strlen(keys[n]) + strlen(vals[n]);
            kp[n] = keys[n];
            vp[n] = vals[n];
            if (++n == 100) {
                if (gw_txn_puts(&g, kp, vp, (size_t)n) < 0) {
                    gw_close(&g);
                    return -1;
                }
                n = 0;
            }
        }
    gw_close(&g);
    return 0;
}

/* True when a watch reply or update line shows a fresh, ready list. */
static bool fresh_line(const char *line)
{
    return strstr(line, "\"stale\":false") && !strstr(line, "\"ready\":false");
}

/* Sends one watch per service in [from, to) on c and waits until every one
 * of them has a fresh list: from its reply or, when the reply came before
 * the list (after etcd.timeout on a loaded machine), from a later update
 * line. Returns how many became fresh within 60 s, or -1. */
static int watch_range(struct lc *c, int from, int to)
{
    size_t cap = (size_t)(to - from) * 80 + 1, len = 0;
    char *req = malloc(cap);
    bool *ok = calloc((size_t)(to - from), sizeof *ok);
    uint64_t deadline = now_ns() + 60000000000ull;
    int fresh = 0;

    if (!req || !ok) {
        free(req);
        free(ok);
        return -1;
    }
    for (int s = from; s < to; s++) {
        char name[32];
        svc_name(s, name, sizeof name);
        len += (size_t)snprintf(req + len, cap - len,
                                "{\"op\":\"watch\",\"id\":%d,\"service\":\"%s\"}\n", s, name);
    }
    if (lc_send(c, req, len) < 0)
        fresh = -1;
    free(req);
    while (fresh >= 0 && fresh < to - from && now_ns() < deadline) {
        char *line = lc_line(c, 1000, NULL);
        const char *sv;
        int s;
        if (!line)
            continue;
        /* "service":"svc-NNNN" names it, in replies and update lines alike. */
        if (!(sv = strstr(line, "\"service\":\"svc-")) ||
            (s = (int)strtol(sv + 15, NULL, 10)) < from || s >= to)
            continue;
        if (!strstr(line, "\"event\":") && !strstr(line, "\"ok\":true")) {
            fprintf(stderr, "bench: scale: watch refused: %.200s\n", line);
            continue;
        }
        if (!ok[s - from] && fresh_line(line)) {
            ok[s - from] = true;
            fresh++;
        }
    }
    free(ok);
    return fresh;
}

/* The agent's etcd.requests, from its status op. */
static long long etcd_requests(struct lc *c)
{
    char *line = lc_call(c, "{\"op\":\"status\",\"id\":\"s\"}\n", 10000, NULL);

    return line ? json_int_member(line, "requests", -1) : -1;
}

struct clients {
    struct lc *c;
    int n;
    int ep;
};

static void clients_close(struct clients *cl)
{
    for (int i = 0; i < cl->n; i++)
        lc_close(&cl->c[i]);
    free(cl->c);
    if (cl->ep >= 0)
        close(cl->ep);
    memset(cl, 0, sizeof *cl);
    cl->ep = -1;
}

/* Reads from every client until lines lines have come in all, or none for
 * quiet_ms (an agent that falls behind coalesces changes of a service into
 * fewer update lines), or timeout; returns the lines read. If sample is
 * set, the first line read is copied there (an update line, for the
 * floor). */
static long clients_read(struct clients *cl, long lines, int timeout_ms, int quiet_ms, char *sample,
                         size_t cap)
{
    struct epoll_event evs[512];
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u, last = now_ns();
    long got = 0;

    while (got < lines && now_ns() < deadline &&
           (now_ns() - last) / 1000000u < (uint64_t)quiet_ms) {
        int n = epoll_wait(cl->ep, evs, 512, 100);
        if (n > 0)
            last = now_ns();
        for (int i = 0; i < n; i++) {
            struct lc *c = evs[i].data.ptr;
            if (sample && !sample[0]) {
                size_t len;
                char *l = lc_line(c, 0, &len);
                if (l) {
                    snprintf(sample, cap, "%s\n", l);
                    got++;
                }
            }
            int k = lc_drain_count(c);
            if (k > 0)
                got += k;
        }
    }
    return got;
}

static int clients_open(struct clients *cl, const char *sock)
{
    struct epoll_event ev = {.events = EPOLLIN};

    cl->c = calloc(CLIENTS, sizeof *cl->c);
    cl->ep = epoll_create1(EPOLL_CLOEXEC);
    if (!cl->c || cl->ep < 0)
        return -1;
    for (cl->n = 0; cl->n < CLIENTS; cl->n++) {
        struct lc *c = &cl->c[cl->n];
        char req[128], name[32];
        svc_name(cl->n % CLIENT_SERVICES, name, sizeof name);
        snprintf(req, sizeof req, "{\"op\":\"watch\",\"id\":1,\"service\":\"%s\"}\n", name);
        if (lc_open(c, sock, true) < 0 || lc_send(c, req, strlen(req)) < 0) {
            fprintf(stderr, "bench: scale: client %d cannot connect: %s\n", cl->n, strerror(errno));
            return -1;
        }
        ev.data.ptr = c;
        epoll_ctl(cl->ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    return clients_read(cl, CLIENTS, 60000, 10000, NULL, 0) == CLIENTS ? 0 : -1;
}

/* The least time to learn the 1,000 lists: read them ourselves. */
static double warm_floor(struct bench *b)
{
    struct gw g;
    uint64_t t0;

    if (gw_open(&g, b->url) < 0)
        return -1;
    t0 = now_ns();
    for (int s = 0; s < SERVICES; s++) {
        char prefix[64], name[32];
        svc_name(s, name, sizeof name);
        snprintf(prefix, sizeof prefix, "/micro/%s/", name);
        if (gw_range_prefix(&g, prefix) != INSTANCES) {
            gw_close(&g);
            return -1;
        }
    }
    gw_close(&g);
    return (double)(now_ns() - t0) / 1e9;
}

struct scale_figs {
    struct fig *warm, *rss, *anon, *rss10k, *cpu_upd, *conns, *reqs, *idle_cpu, *idle_rss;
};

static int one_run(struct bench *b, int run, struct scale_figs *F)
{
    struct agentp a;
    struct lc ctl = {.fd = -1};
    struct clients cl = {.ep = -1};
    struct gw g = {.fd = -1};
    struct proc *perf = NULL;
    char name[32], sample[65536] = "";
    uint64_t t_spawn;
    pid_t pid;
    long base_kib, base_anon, kib, anon;
    int rc = -1, fresh;

    t_spawn = now_ns();
    if (agent_up(b, &a, "scale") < 0)
        return -1;
    pid = agent_pid(&a);
    base_kib = proc_rss_kib(pid);
    base_anon = proc_rss_anon_kib(pid);
    if (lc_open(&ctl, a.sock, true) < 0) {
        fprintf(stderr, "bench: scale: cannot connect to the agent\n");
        goto out;
    }

    /* 1. Warm from cold. */
    fresh = watch_range(&ctl, 0, SERVICES);
    double warm = (double)(now_ns() - t_spawn) / 1e9;
    if (fresh != SERVICES) {
        fprintf(stderr, "bench: scale: only %d of %d lists came fresh\n", fresh, SERVICES);
        goto out;
    }
    double wf = warm_floor(b);
    sleep_ms(1000); /* the watch streams come up after the snapshots */
    kib = proc_rss_kib(pid);
    anon = proc_rss_anon_kib(pid);
    runs_add(&F->warm->v, warm);
    runs_add(&F->warm->f, wf);
    runs_add(&F->rss->v, (double)kib / 1024);
    runs_add(&F->rss->f, (double)(base_kib + (long)(data_bytes / 1024)) / 1024);
    runs_add(&F->anon->v, (double)anon / 1024);
    runs_add(&F->anon->f, (double)(base_anon + (long)(data_bytes / 1024)) / 1024);
    printf("bench:   run %d: warm %.2f s (floor %.2f s), %.1f MB with 1,000 services "
           "(%.1f MB before; private %.1f MB, %.1f before), %d etcd connections, %d threads\n",
           run + 1, warm, wf, (double)kib / 1024, (double)base_kib / 1024, (double)anon / 1024,
           (double)base_anon / 1024, proc_tcp_conns_to(pid, b->etcd_port), proc_threads(pid));

    /* 2. 10,000 watching clients and 1,000 updates to their services. The
     * control connection lets go of those 100 services first, so that an
     * update reaches exactly 100 watchers. */
    for (int s = 0; s < CLIENT_SERVICES; s++) {
        char req[128];
        svc_name(s, name, sizeof name);
        snprintf(req, sizeof req, "{\"op\":\"unwatch\",\"id\":%d,\"service\":\"%s\"}\n", s, name);
        if (!lc_call(&ctl, req, 5000, NULL)) {
            fprintf(stderr, "bench: scale: unwatch %s: no reply\n", name);
            goto out;
        }
    }
    uint64_t t0 = now_ns();
    if (clients_open(&cl, a.sock) < 0) {
        fprintf(stderr, "bench: scale: the 10,000 clients did not all get their lists\n");
        goto out;
    }
    kib = proc_rss_kib(pid);
    runs_add(&F->rss10k->v, (double)kib / 1024);
    printf("bench:   run %d: 10,000 clients in %.2f s, %.1f MB\n", run + 1,
           (double)(now_ns() - t0) / 1e9, (double)kib / 1024);

    if (gw_open(&g, b->url) < 0) {
        fprintf(stderr, "bench: scale: cannot reach etcd\n");
        goto out;
    }
    perf = run == 0 ? perf_begin(b, pid, "scale-updates") : NULL;
    double cpu0 = proc_cpu_sched_s(pid);
    t0 = now_ns();
    for (int u = 0; u < UPDATES; u++) {
        char key[96], val[256], addr[32];
        int s = u % CLIENT_SERVICES, k = (u / CLIENT_SERVICES) % INSTANCES;
        svc_name(s, name, sizeof name);
        inst_addr(s, k, addr, sizeof addr);
        snprintf(key, sizeof key, "/micro/%s/%s", name, addr);
        instance_value(val, sizeof val, name, addr, 2 + run * UPDATES + u);
        if (gw_put(&g, key, val, NULL) < 0) {
            fprintf(stderr, "bench: scale: put %d failed\n", u);
            goto out;
        }
    }
    long want = (long)UPDATES * (CLIENTS / CLIENT_SERVICES);
    long got = clients_read(&cl, want, 60000, 3000, sample, sizeof sample);
    double cpu1 = proc_cpu_sched_s(pid);
    perf_end(perf);
    perf = NULL;
    lines_got[run] = got;
    double upd_ms = (cpu1 - cpu0) * 1e3 / ((double)got / (CLIENTS / CLIENT_SERVICES));
    double floor_ms = floor_fanout_cpu(sample, strlen(sample), CLIENTS / CLIENT_SERVICES, UPDATES) *
                      1e3 / UPDATES;
    runs_add(&F->cpu_upd->v, upd_ms);
    runs_add(&F->cpu_upd->f, floor_ms);
    printf("bench:   run %d: %d updates in %.2f s, %.3f ms of agent CPU each (floor %.3f ms), "
           "line %zu bytes\n",
           run + 1, UPDATES, (double)(now_ns() - t0) / 1e9, upd_ms, floor_ms, strlen(sample));
    if (run == 0)
        note(b, "Scale: an update line to a watcher of a 10-instance service is %zu bytes.",
             strlen(sample));

    /* 3. At rest. */
    sleep_ms(1000);
    long long r0 = etcd_requests(&ctl);
    double c0 = proc_cpu_sched_s(pid);
    uint64_t w0 = now_ns();
    perf = run == 0 ? perf_begin(b, pid, "idle") : NULL;
    /* The floor: a bare client's keep-alives at the agent's pace, in the
     * same window (cold, as the agent's are; see notes.md). */
    int paced_fd = -1;
    int ka_ms = (int)(TTL_S * 1000 / 3);
    pid_t paced = floor_paced_keepalive_start(b->url, (int)(b->idle_ms / ka_ms), ka_ms, &paced_fd);
    sleep_ms(b->idle_ms);
    perf_end(perf);
    perf = NULL;
    double c1 = proc_cpu_sched_s(pid);
    double w = (double)(now_ns() - w0) / 1e9;
    long long r1 = etcd_requests(&ctl);
    kib = proc_rss_kib(pid);
    int conns = proc_tcp_conns_to(pid, b->etcd_port);
    /* The second status asked etcd once itself. */
    double reqs = (double)(r1 - r0 - 1) / w;
    runs_add(&F->reqs->v, reqs);
    runs_add(&F->reqs->f, 3.0 / TTL_S);
    runs_add(&F->conns->v, conns);
    runs_add(&F->conns->f, 1);
    runs_add(&F->idle_cpu->v, (c1 - c0) * 1e3 / w);
    double paced_s = floor_paced_keepalive_end(paced, paced_fd);
    double hot_s = floor_keepalive_cpu(b->url, 200);
    runs_add(&F->idle_cpu->f, paced_s * 1e3 * 3.0 / TTL_S);
    if (run == 0)
        note(b,
             "Rest: a bare client's keep-alive costs %.0f us of CPU paced as the agent's (one "
             "per %.1f s, beside the agent's window: the floor) and %.0f us back to back "
             "(200 in a row: the floor before issue 18).",
             paced_s * 1e6, ka_ms / 1e3, hot_s * 1e6);
    runs_add(&F->idle_rss->v, (double)kib / 1024);
    printf("bench:   run %d: at rest %.1f s: %lld requests to etcd (%.2f/s), %d connections, "
           "%.3f ms CPU/s, %.1f MB\n",
           run + 1, w, r1 - r0 - 1, reqs, conns, (c1 - c0) * 1e3 / w, (double)kib / 1024);
    rc = 0;
out:
    perf_end(perf);
    gw_close(&g);
    clients_close(&cl);
    lc_close(&ctl);
    agent_down(&a);
    return rc;
}

/* Memory against watched instances, 100 services at a time. */
static void memory_curve(struct bench *b)
{
    struct agentp a;
    struct lc c;
    char path[700];
    FILE *f;

    snprintf(path, sizeof path, "%s/memory.dat", b->data);
    f = fopen(path, "w");
    if (!f || agent_up(b, &a, "memory") < 0) {
        if (f)
            fclose(f);
        return;
    }
    pid_t pid = agent_pid(&a);
    fprintf(f, "# instances  VmRSS_MB  floor_MB (VmRSS with none + key/value bytes)  RssAnon_MB\n");
    long base = proc_rss_kib(pid);
    fprintf(f, "0 %.2f %.2f %.2f\n", (double)base / 1024, (double)base / 1024,
            (double)proc_rss_anon_kib(pid) / 1024);
    if (lc_open(&c, a.sock, true) == 0) {
        for (int s = 0; s < SERVICES; s += 100) {
            if (watch_range(&c, s, s + 100) != 100)
                break;
            sleep_ms(300);
            int n = (s + 100) * INSTANCES;
            fprintf(f, "%d %.2f %.2f %.2f\n", n, (double)proc_rss_kib(pid) / 1024,
                    ((double)base + (double)data_bytes * n / (SERVICES * INSTANCES) / 1024) / 1024,
                    (double)proc_rss_anon_kib(pid) / 1024);
        }
        lc_close(&c);
    }
    fclose(f);
    agent_down(&a);
}

void bench_scale(struct bench *b)
{
    struct scale_figs F;
    char fw[160];

    printf("bench: scale\n");
    if (seed(b) < 0) {
        fprintf(stderr, "bench: scale: cannot write the 10,000 instances\n");
        return;
    }
    F.warm = fig_new(b, "scale", "Warm from cold: 1,000 services watched", "s", 2,
                     "1,000 range reads by the benchmark, one keep-alive connection");
    snprintf(fw, sizeof fw, "agent RSS before any watch + %zu KB of keys and values",
             data_bytes / 1024);
    F.rss =
        fig_new(b, "scale", "Resident memory (VmRSS), 1,000 x 10 instances watched", "MB", 1, fw);
    fig_goal(F.rss, GOAL_ABS_MAX, 20);
    snprintf(fw, sizeof fw, "agent RssAnon before any watch + %zu KB of keys and values",
             data_bytes / 1024);
    F.anon =
        fig_new(b, "scale", "of which private (RssAnon), not shared library pages", "MB", 1, fw);
    F.rss10k = fig_new(b, "scale", "Resident memory, plus 10,000 watching clients", "MB", 1, NULL);
    F.cpu_upd = fig_new(b, "scale", "Agent CPU per update delivered to 100 watchers", "ms", 3,
                        "one process writing the same line to 100 unix sockets");
    fig_goal(F.cpu_upd, GOAL_RATIO_MAX, 2.0); /* issue 18; issue 7 asked < 1 ms */
    F.conns = fig_new(b, "rest", "TCP connections to etcd at rest", "", 0, "one connection");
    F.reqs = fig_new(b, "rest", "Requests to etcd at rest", "/s", 3,
                     "one lease keep-alive per third of the TTL (10 s)");
    /* Four keep-alive periods per window: allow the one a window edge can
     * add, no more. */
    fig_goal(F.reqs, GOAL_RATIO_MAX, 1.25);
    F.idle_cpu = fig_new(b, "rest", "Agent CPU at rest", "ms/s", 3,
                         "the CPU of the keep-alives alone: a bare client's keep-alives, "
                         "one per third of the TTL as the agent's, in the same window");
    fig_goal(F.idle_cpu, GOAL_RATIO_MAX, 3.0); /* issue 18; issue 7 asked < 0.1 ms/s */
    F.idle_rss = fig_new(b, "rest", "Resident memory at rest (1,000 services, 10,000 clients)",
                         "MB", 1, NULL);

    for (int r = 0; r < b->scale_runs; r++)
        if (one_run(b, r, &F) < 0)
            fprintf(stderr, "bench: scale: run %d failed\n", r + 1);
    char got[200] = "";
    for (int r = 0, o = 0; r < b->scale_runs && o < (int)sizeof got; r++)
        o += snprintf(got + o, sizeof got - (size_t)o, "%s%ld", r ? ", " : "", lines_got[r]);
    note(b,
         "Scale: update lines delivered per run: %s, for %d changes x %d watchers: changes "
         "of a service that reach the agent together leave as one line (the cache notifies "
         "once per loop turn; the final lists are right), and CPU is counted per line "
         "delivered.",
         got, UPDATES, CLIENTS / CLIENT_SERVICES);
    note(b,
         "Rest and idle: each run watches the agent for %.1f s with nothing happening (four "
         "keep-alive periods), %d runs, %.0f s in all; CPU from /proc/PID/task/*/schedstat.",
         b->idle_ms / 1000.0, b->scale_runs, b->idle_ms / 1000.0 * b->scale_runs);
    memory_curve(b);
}
