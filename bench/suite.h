/* The suite: its shared state, its figures, and one entry point per part
 * (resolve.c, propagation.c, grpc_shim.c, scale.c), reported by report.c. */
#ifndef BENCH_SUITE_H
#define BENCH_SUITE_H

#include "bench.h"
#include "agentproc.h"
#include "etcd_proc.h"

#define MAX_FIGS 64
#define MAX_NOTES 32

enum goal_kind {
    GOAL_NONE,
    GOAL_RATIO_MAX, /* median ratio to the floor at most goal_x */
    GOAL_ABS_MAX,   /* median value at most goal_x */
    GOAL_ABS_MIN,   /* median value at least goal_x */
    GOAL_RATIO_MIN, /* median ratio to the floor (a peer's) at least goal_x */
};

/* One row of the table: a figure over RUNS runs, and its floor from the
 * same runs. */
struct fig {
    char part[32];
    char name[160];
    char unit[24];
    struct runs v; /* the agent's, one per run */
    struct runs f; /* the floor's, one per run; f.n == 0: none */
    char floor_what[200];
    enum goal_kind goal;
    double goal_x;
    int decimals;
};

struct bench {
    struct etcd_cluster *etcd;
    const char *url; /* etcd's client URL */
    int etcd_port;
    char dir[256];          /* scratch folder (agents' configs, sockets, caches) */
    char data[512];         /* where the plot data goes */
    const char *perf_dir;   /* BENCH_PERF: perf record the agent per part */
    const char *only;       /* BENCH_ONLY: run only the parts named */
    const char *agent_bin;  /* BENCH_AGENT, or build/discovery-agent */
    const char *agent_yaml; /* BENCH_AGENT_YAML: added to each agent's config */
    int scale_runs;
    int idle_ms;
    uint64_t started;

    struct fig figs[MAX_FIGS];
    int nfigs;
    char notes[MAX_NOTES][600]; /* facts the table cannot hold */
    int nnotes;
    /* Pooled samples for the plots. */
    struct samples resolve_agent, resolve_floor;
    struct samples prop_agent, prop_floor, prop_grpc;
};

struct fig *fig_new(struct bench *b, const char *part, const char *name, const char *unit,
                    int decimals, const char *floor_what);
void fig_goal(struct fig *f, enum goal_kind kind, double x);
void note(struct bench *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool part_wanted(const struct bench *b, const char *part);

/* An agent with the suite's configuration: etcd at b->url, ttl 10 s,
 * timeout 5 s, log level info, in b->dir/name. Waits until it answers. */
int agent_up(struct bench *b, struct agentp *a, const char *name);
void agent_down(struct agentp *a);
pid_t agent_pid(const struct agentp *a);

/* perf record -g on pid into b->perf_dir/part.data until perf_end(). */
struct proc *perf_begin(struct bench *b, pid_t pid, const char *part);
void perf_end(struct proc *perf); /* NULL-safe */

/* An instance value as agents write it. */
void instance_value(char *out, size_t cap, const char *name, const char *address, int weight);

void bench_resolve(struct bench *b);
void bench_propagation(struct bench *b);
void bench_grpc(struct bench *b);
void bench_scale(struct bench *b);
void bench_dns(struct bench *b);

/* Writes the Markdown report (machine, table, plots, notes/analysis from
 * bench/notes.md) to path, and prints the table on stdout. */
int report_write(struct bench *b, const char *path, const char *notes_path);

#endif
