/* The report: the machine, the table with floors and ratios, the plots'
 * data, the facts of this run, and the analysis kept by hand in
 * bench/notes.md (what was changed, what falls short and why). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "suite.h"

static void first_match(const char *path, const char *key, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    char line[512];

    snprintf(out, cap, "unknown");
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, key, strlen(key)))
            continue;
        char *v = strchr(line, ':');
        if (!v)
            continue;
        v++;
        while (*v == ' ' || *v == '\t')
            v++;
        v[strcspn(v, "\n")] = '\0';
        snprintf(out, cap, "%s", v);
        break;
    }
    if (f)
        fclose(f);
}

static void command_line(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");

    snprintf(out, cap, "unknown");
    if (p && fgets(out, (int)cap, p))
        out[strcspn(out, "\n")] = '\0';
    if (p)
        pclose(p);
}

static void fmt(char *out, size_t cap, double x, int decimals)
{
    if (isnan(x)) {
        snprintf(out, cap, "—");
        return;
    }
    if (decimals == 0 && fabs(x) >= 10000) {
        /* 123456 -> 123,456 */
        char raw[64];
        int n = snprintf(raw, sizeof raw, "%.0f", x), o = 0, lead = (x < 0);
        char buf[80];
        for (int i = 0; i < n; i++) {
            buf[o++] = raw[i];
            int left = n - i - 1;
            if (i >= lead && left > 0 && left % 3 == 0)
                buf[o++] = ',';
        }
        buf[o] = '\0';
        snprintf(out, cap, "%s", buf);
        return;
    }
    snprintf(out, cap, "%.*f", decimals, x);
}

/* "median [min–max]" of r. */
static void spread(char *out, size_t cap, const struct runs *r, int decimals, const char *unit)
{
    char m[40], lo[40], hi[40];

    if (!r->n) {
        snprintf(out, cap, "—");
        return;
    }
    fmt(m, sizeof m, runs_median(r), decimals);
    fmt(lo, sizeof lo, runs_min(r), decimals);
    fmt(hi, sizeof hi, runs_max(r), decimals);
    if (r->n == 1)
        snprintf(out, cap, "%s %s", m, unit);
    else
        snprintf(out, cap, "%s %s [%s–%s]", m, unit, lo, hi);
}

/* The median of the per-run ratios, and their range. */
static bool ratio(const struct fig *f, struct runs *out)
{
    memset(out, 0, sizeof *out);
    if (!f->f.n || f->f.n != f->v.n)
        return false;
    for (int i = 0; i < f->v.n; i++)
        if (f->f.v[i] > 0)
            runs_add(out, f->v.v[i] / f->f.v[i]);
    return out->n > 0;
}

/* "met", "missed", or "" when the figure has no goal. */
static const char *verdict(const struct fig *f, char *goal, size_t cap)
{
    struct runs r;
    double m = runs_median(&f->v);

    goal[0] = '\0';
    switch (f->goal) {
    case GOAL_NONE:
        return "";
    case GOAL_RATIO_MAX:
        snprintf(goal, cap, "≤ %.3gx floor", f->goal_x);
        if (!ratio(f, &r))
            return "no data";
        return runs_median(&r) <= f->goal_x ? "met" : "**missed**";
    case GOAL_RATIO_MIN:
        snprintf(goal, cap, "≥ %.3gx peer", f->goal_x);
        if (!ratio(f, &r))
            return "no data";
        return runs_median(&r) >= f->goal_x ? "met" : "**missed**";
    case GOAL_ABS_MAX: {
        char x[40];
        fmt(x, sizeof x, f->goal_x, f->goal_x < 1 ? 1 : 0);
        snprintf(goal, cap, "< %s %s", x, f->unit);
        return isnan(m) ? "no data" : m < f->goal_x ? "met" : "**missed**";
    }
    case GOAL_ABS_MIN: {
        char x[40];
        fmt(x, sizeof x, f->goal_x, 0);
        snprintf(goal, cap, "> %s %s", x, f->unit);
        return isnan(m) ? "no data" : m > f->goal_x ? "met" : "**missed**";
    }
    }
    return "";
}

static void table(FILE *o, const struct bench *b)
{
    fprintf(o, "| Figure | Agent: median [min–max] | Floor: median [min–max] | Ratio | Goal | |\n");
    fprintf(o, "|---|---|---|---|---|---|\n");
    for (int i = 0; i < b->nfigs; i++) {
        const struct fig *f = &b->figs[i];
        char v[128], fl[128], rt[96], goal[64];
        struct runs r;
        const char *met = verdict(f, goal, sizeof goal);

        spread(v, sizeof v, &f->v, f->decimals, f->unit);
        spread(fl, sizeof fl, &f->f, f->decimals, f->unit);
        if (ratio(f, &r)) {
            char m[32], lo[32], hi[32];
            fmt(m, sizeof m, runs_median(&r), 2);
            fmt(lo, sizeof lo, runs_min(&r), 2);
            fmt(hi, sizeof hi, runs_max(&r), 2);
            snprintf(rt, sizeof rt, "%sx [%s–%s]", m, lo, hi);
        } else {
            snprintf(rt, sizeof rt, "—");
        }
        fprintf(o, "| %s | %s | %s | %s | %s | %s |\n", f->name, v, fl, rt, goal, met);
    }
}

static void floors(FILE *o, const struct bench *b)
{
    fprintf(o, "Floors, measured in the same runs by the same code:\n\n");
    for (int i = 0; i < b->nfigs; i++) {
        const struct fig *f = &b->figs[i];
        bool dup = false;
        if (!f->floor_what[0])
            continue;
        for (int k = 0; k < i; k++)
            dup |= !strcmp(b->figs[k].floor_what, f->floor_what);
        if (!dup && strcmp(f->floor_what, "the same"))
            fprintf(o, "- *%s*: %s.\n", f->name, f->floor_what);
    }
    fprintf(o, "\n");
}

static int write_quantiles(struct bench *b)
{
    char p[700];
    int rc = 0;

    snprintf(p, sizeof p, "%s/resolve-agent.dat", b->data);
    rc |= samples_write_quantiles(&b->resolve_agent, p);
    snprintf(p, sizeof p, "%s/resolve-floor.dat", b->data);
    rc |= samples_write_quantiles(&b->resolve_floor, p);
    snprintf(p, sizeof p, "%s/prop-agent.dat", b->data);
    rc |= samples_write_quantiles(&b->prop_agent, p);
    snprintf(p, sizeof p, "%s/prop-floor.dat", b->data);
    rc |= samples_write_quantiles(&b->prop_floor, p);
    snprintf(p, sizeof p, "%s/prop-grpc.dat", b->data);
    rc |= samples_write_quantiles(&b->prop_grpc, p);
    return rc;
}

int report_write(struct bench *b, const char *path, const char *notes_path)
{
    char cpu[256], mem[64], etcdv[128], load[128], date[64], cc[128];
    struct utsname u;
    time_t t = time(NULL);
    FILE *o, *n;

    write_quantiles(b);
    first_match("/proc/cpuinfo", "model name", cpu, sizeof cpu);
    first_match("/proc/meminfo", "MemTotal", mem, sizeof mem);
    command_line("etcd --version 2>/dev/null | head -n 1", etcdv, sizeof etcdv);
    command_line("cc --version 2>/dev/null | head -n 1", cc, sizeof cc);
    command_line("cat /proc/loadavg", load, sizeof load);
    uname(&u);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&t));

    /* The table on stdout first: it is what `make bench` shows. */
    printf("\n");
    table(stdout, b);
    printf("\n");
    for (int i = 0; i < b->nnotes; i++)
        printf("- %s\n", b->notes[i]);

    o = fopen(path, "w");
    if (!o) {
        perror(path);
        return -1;
    }
    fprintf(o, "# Benchmarks\n\n");
    fprintf(o,
            "Written by `make bench` (the suite in `bench/`, issue 7) on %s. The tables "
            "and plots are this run's; the analysis at the end is kept in "
            "`bench/notes.md` and copied in. Do not edit this file by hand.\n\n",
            date);
    fprintf(o, "## The machine\n\n");
    fprintf(o, "| | |\n|---|---|\n");
    fprintf(o, "| CPUs (nproc) | %ld |\n", sysconf(_SC_NPROCESSORS_ONLN));
    fprintf(o, "| CPU model | %s |\n", cpu);
    fprintf(o, "| Memory | %s |\n", mem);
    fprintf(o, "| Kernel | %s %s %s |\n", u.sysname, u.release, u.machine);
    fprintf(o, "| etcd | %s (one member, data on disk, started by the suite) |\n", etcdv);
    fprintf(o, "| Compiler | %s, `-O2 -g` |\n", cc);
    fprintf(o, "| Load average at the end | %s |\n\n", load);
    fprintf(o, "The benchmark, the agent and etcd share the two CPUs; other work on the "
               "machine (its load average is above) adds noise, which is why every figure "
               "is set beside a floor measured in the same run.\n\n");

    fprintf(o, "## Results\n\n");
    fprintf(o,
            "Each figure is the median over %d runs, with the range of the runs in "
            "brackets; the ratio is the median of the per-run ratios figure/floor. "
            "Latencies are measured with `clock_gettime(CLOCK_MONOTONIC)` in the "
            "benchmark process; CPU and memory come from `/proc/PID/stat`, "
            "`/proc/PID/task/*/schedstat` and `/proc/PID/status` (VmRSS).\n\n",
            RUNS);
    table(o, b);
    fprintf(o, "\n");
    floors(o, b);
    fprintf(o, "About this run:\n\n");
    for (int i = 0; i < b->nnotes; i++)
        fprintf(o, "- %s\n", b->notes[i]);
    fprintf(o, "\n## Plots\n\n");
    fprintf(o, "Latency by percentile (the x axis stretches the tail: 90, 99, 99.9, "
               "99.99), all runs pooled.\n\n");
    fprintf(o, "![Resolve round trip against the bare socket floor](resolve-latency.png)\n\n");
    fprintf(o, "![Propagation from the writer's put against a direct gateway watch, and to the "
               "first gRPC call served](propagation.png)\n\n");
    fprintf(o, "![Resident memory against watched instances](memory.png)\n\n");

    n = fopen(notes_path, "r");
    if (n) {
        char buf[8192];
        size_t k;
        while ((k = fread(buf, 1, sizeof buf, n)) > 0)
            fwrite(buf, 1, k, o);
        fclose(n);
    }
    fclose(o);
    printf("\nbench: wrote %s\n", path);
    return 0;
}
