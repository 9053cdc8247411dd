/* bench: the benchmark suite (issue 7), run by `make bench`.
 *
 *     bench [--out docs/benchmarks.md] [--data DIR] [--notes bench/notes.md]
 *
 * Starts one etcd member and the agents it needs, runs every part RUNS
 * times with its floor beside it, writes the plot data into DIR and the
 * report into --out, and prints the table. Environment:
 *   BENCH_ONLY=resolve,propagation,grpc,scale,dns   run only these parts
 *   BENCH_AGENT=PATH  another discovery-agent binary (a candidate fix, say)
 *   BENCH_AGENT_YAML=TEXT  appended to every agent's configuration (say,
 *                     "xds:\n  enabled: false\n"); the report says so
 *   BENCH_PERF=DIR    perf record (cpu-clock, call graphs) the agent during
 *                     each part's measured window, into DIR/PART.data
 *   BENCH_IDLE_MS=N   milliseconds of each at-rest window (default 13334)
 *   BENCH_SCALE_RUNS=N  runs of the scale part (default RUNS)
 * It must stay under ten minutes on 2 cores: each part's file says what it
 * spends. */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "suite.h"

/* ---- figures and notes ---------------------------------------------------- */

struct fig *fig_new(struct bench *b, const char *part, const char *name, const char *unit,
                    int decimals, const char *floor_what)
{
    struct fig *f;

    if (b->nfigs >= MAX_FIGS)
        return &b->figs[MAX_FIGS - 1]; /* never reached: the suite has fewer */
    f = &b->figs[b->nfigs++];
    memset(f, 0, sizeof *f);
    snprintf(f->part, sizeof f->part, "%s", part);
    snprintf(f->name, sizeof f->name, "%s", name);
    snprintf(f->unit, sizeof f->unit, "%s", unit);
    snprintf(f->floor_what, sizeof f->floor_what, "%s", floor_what ? floor_what : "");
    f->decimals = decimals;
    return f;
}

void fig_goal(struct fig *f, enum goal_kind kind, double x)
{
    f->goal = kind;
    f->goal_x = x;
}

void note(struct bench *b, const char *fmt, ...)
{
    va_list ap;

    if (b->nnotes >= MAX_NOTES)
        return;
    va_start(ap, fmt);
    vsnprintf(b->notes[b->nnotes++], sizeof b->notes[0], fmt, ap);
    va_end(ap);
}

bool part_wanted(const struct bench *b, const char *part)
{
    return !b->only || strstr(b->only, part) != NULL;
}

/* ---- agents ----------------------------------------------------------------- */

int agent_up(struct bench *b, struct agentp *a, const char *name)
{
    char yaml[2048];

    memset(a, 0, sizeof *a);
    snprintf(a->dir, sizeof a->dir, "%s/%s", b->dir, name);
    rm_rf(a->dir);
    if (mkdir_p(a->dir, 0755) < 0)
        return -1;
    snprintf(a->conf, sizeof a->conf, "%s/agent.yaml", a->dir);
    snprintf(a->sock, sizeof a->sock, "%s/agent.sock", a->dir);
    snprintf(a->log, sizeof a->log, "%s/agent.log", a->dir);
    snprintf(a->cache, sizeof a->cache, "%s/cache", a->dir);
    /* The shipped defaults (conf/agent.yaml) but for the paths: in
     * particular log level info, ttl 10 s, timeout 5 s, xDS on. */
    snprintf(yaml, sizeof yaml,
             "etcd:\n  endpoints: [%s]\n  timeout: 5s\n"
             "session:\n  ttl: 10s\n"
             "socket:\n  path: %s\n"
             "cache:\n  dir: %s\n  idle: 10m\n"
             "log:\n  level: info\n%s%s%s",
             b->url, a->sock, a->cache, b->agent_yaml ? b->agent_yaml : "",
             agentp_dns_off(b->agent_yaml), agentp_http_off(b->agent_yaml));
    if (write_file(a->conf, yaml) < 0)
        return -1;
    const char *argv[] = {b->agent_bin, "-c", a->conf, NULL};
    a->p = proc_spawn(argv, NULL, a->log);
    if (!a->p)
        return -1;
    if (wait_agent(a->sock, 15000) < 0) {
        fprintf(stderr, "bench: agent %s did not come up; see %s\n", name, a->log);
        return -1;
    }
    return 0;
}

void agent_down(struct agentp *a)
{
    /* SIGTERM, so that a profiler wrapping the agent (BENCH_AGENT) writes
     * its data; the agent holds no registrations, so it stops at once. */
    if (a->p) {
        proc_stop(a->p, SIGTERM, 5000);
        a->p = proc_free(a->p);
    }
}

pid_t agent_pid(const struct agentp *a)
{
    return a->p ? proc_pid(a->p) : -1;
}

struct proc *perf_begin(struct bench *b, pid_t pid, const char *part)
{
    char out[700], pidbuf[16];
    struct proc *p;

    if (!b->perf_dir || pid <= 0)
        return NULL;
    mkdir_p(b->perf_dir, 0755);
    snprintf(out, sizeof out, "%s/%s.data", b->perf_dir, part);
    snprintf(pidbuf, sizeof pidbuf, "%d", (int)pid);
    const char *argv[] = {"perf",         "record",      "-q", "-e",   "cpu-clock", "-F", "1999",
                          "--call-graph", "dwarf,16384", "-p", pidbuf, "-o",        out,  NULL};
    p = proc_spawn(argv, NULL, NULL);
    if (p)
        sleep_ms(300); /* perf attaches */
    return p;
}

void perf_end(struct proc *perf)
{
    if (perf) {
        proc_signal(perf, SIGINT);
        proc_wait(perf, 20000, NULL);
        proc_free(perf);
    }
}

void instance_value(char *out, size_t cap, const char *name, const char *address, int weight)
{
    snprintf(out, cap,
             "{\"Name\":\"%s\",\"Address\":\"%s\",\"Weight\":%d,\"Group\":\"\","
             "\"Metadata\":{\"version\":\"1.0.0\"}}",
             name, address, weight);
}

/* ---- main ------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    static struct bench b;
    const char *out = "docs/benchmarks.md", *notes = "bench/notes.md";
    struct etcd_cluster_opts eo = {.members = 1};
    char tmpl[] = "/tmp/bench-XXXXXX";
    const char *e;
    int rc;

    snprintf(b.data, sizeof b.data, "build/bench");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else if (!strcmp(argv[i], "--data") && i + 1 < argc)
            snprintf(b.data, sizeof b.data, "%s", argv[++i]);
        else if (!strcmp(argv[i], "--notes") && i + 1 < argc)
            notes = argv[++i];
        else {
            fprintf(stderr, "usage: bench [--out FILE] [--data DIR] [--notes FILE]\n");
            return 2;
        }
    }
    b.only = getenv("BENCH_ONLY");
    b.agent_bin = (e = getenv("BENCH_AGENT")) && *e ? e : BUILD_DIR "/discovery-agent";
    b.agent_yaml = getenv("BENCH_AGENT_YAML");
    b.perf_dir = getenv("BENCH_PERF");
    /* Four keep-alive periods of the 10 s TTL: the count of requests in the
     * window is then exact. */
    b.idle_ms = (e = getenv("BENCH_IDLE_MS")) ? (int)strtol(e, NULL, 10) : 13334;
    b.scale_runs = (e = getenv("BENCH_SCALE_RUNS")) ? (int)strtol(e, NULL, 10) : RUNS;
    if (b.scale_runs < 1 || b.scale_runs > RUNS)
        b.scale_runs = RUNS;
    if (b.idle_ms < 1000)
        b.idle_ms = 13334;
    b.started = now_ns();
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* 10,000 client sockets here, and etcd inherits the limit too. */
    if (raise_nofile() < 12000)
        fprintf(stderr, "bench: RLIMIT_NOFILE is low; the 10,000-client part will fail\n");
    if (mkdir_p(b.data, 0755) < 0 || !mkdtemp(tmpl)) {
        fprintf(stderr, "bench: cannot create folders: %s\n", strerror(errno));
        return 1;
    }
    snprintf(b.dir, sizeof b.dir, "%s", tmpl);

    b.etcd = etcd_cluster_start(&eo);
    if (!b.etcd) {
        fprintf(stderr, "bench: etcd did not start\n");
        return 1;
    }
    b.url = etcd_member_url(b.etcd, 0);
    b.etcd_port = (int)strtol(strrchr(b.url, ':') + 1, NULL, 10);
    printf("bench: etcd at %s, scratch in %s\n", b.url, b.dir);
    if (getenv("BENCH_AGENT"))
        note(&b, "Agent binary: %s (BENCH_AGENT).", b.agent_bin);
    if (b.agent_yaml)
        note(&b, "Agent configuration had this added (BENCH_AGENT_YAML): `%s`.", b.agent_yaml);

    if (part_wanted(&b, "resolve"))
        bench_resolve(&b);
    if (part_wanted(&b, "propagation"))
        bench_propagation(&b);
    if (part_wanted(&b, "grpc"))
        bench_grpc(&b);
    if (part_wanted(&b, "scale"))
        bench_scale(&b);
    if (part_wanted(&b, "dns"))
        bench_dns(&b);

    note(&b, "The whole suite took %.0f s.", (double)(now_ns() - b.started) / 1e9);
    rc = report_write(&b, out, notes);
    etcd_cluster_stop(b.etcd);
    rm_rf(b.dir);
    return rc < 0 ? 1 : 0;
}
