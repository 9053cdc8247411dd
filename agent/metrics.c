/* The counters' one instance, the histogram arithmetic, the mapping of
 * etcd paths and errors to bounded label values, and the process's own
 * cost read from /proc. */
#include "metrics.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "error.h"

struct metrics metrics;

const double metrics_buckets[METRICS_N_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                   0.1,    0.25,  0.5,    1,     2.5,  5,     10};

const char *const metrics_etcd_op_name[M_ETCD_N_OPS] = {
    "range",        "put",       "delete", "txn",  "lease_grant", "lease_keepalive",
    "lease_revoke", "lease_ttl", "status", "auth", "other"};
const char *const metrics_etcd_result_name[M_ETCD_N_RESULTS] = {"ok", "refused", "unreachable",
                                                                "error"};
const char *const metrics_dns_type_name[M_DNS_N_TYPES] = {"A",   "AAAA", "SRV",
                                                          "TXT", "SOA",  "other"};
const char *const metrics_dns_rcode_name[M_DNS_N_RCODES] = {"NOERROR",  "NXDOMAIN", "REFUSED",
                                                            "SERVFAIL", "FORMERR",  "other"};

/* The gateway paths (etcd.c) to their operation, in the order of the enum. */
static const char *const etcd_paths[M_ETCD_OTHER] = {
    "/v3/kv/range",           "/v3/kv/put",           "/v3/kv/deleterange", "/v3/kv/txn",
    "/v3/lease/grant",        "/v3/lease/keepalive",  "/v3/lease/revoke",   "/v3/lease/timetolive",
    "/v3/maintenance/status", "/v3/auth/authenticate"};

void metrics_observe(struct metrics_histogram *h, double seconds)
{
    size_t i = 0;

    if (seconds < 0)
        seconds = 0;
    while (i < METRICS_N_BUCKETS && seconds > metrics_buckets[i])
        i++;
    if (i < METRICS_N_BUCKETS)
        h->le[i]++;
    h->count++;
    h->sum += seconds;
}

static enum metrics_etcd_result etcd_result(int err)
{
    switch (err) {
    case 0:
        return M_ETCD_OK;
    case DA_EETCD:
    case DA_EAUTH:
    case DA_ELEASE:
    case DA_ECOMPACTED:
        return M_ETCD_REFUSED;
    case DA_ETRANSPORT:
    case DA_ETIMEDOUT:
    case DA_ECONNREFUSED:
    case DA_ENOLEADER:
    case DA_EUNAVAIL:
        return M_ETCD_UNREACHABLE;
    default:
        return M_ETCD_ERROR;
    }
}

void metrics_etcd_request(const char *path, int err, double seconds)
{
    size_t op = 0;

    while (op < M_ETCD_OTHER && strcmp(path, etcd_paths[op]))
        op++;
    metrics.etcd_requests[op][etcd_result(err)]++;
    metrics_observe(&metrics.etcd_latency[op], seconds);
}

double metrics_since(uint64_t start_ns, uint64_t end_ns)
{
    return end_ns > start_ns ? (double)(end_ns - start_ns) / 1e9 : 0;
}

/* ---- the process ---------------------------------------------------------- */

static double count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    double n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

/* Field 22 of /proc/self/stat is the start time in clock ticks after boot;
 * the boot time is btime in /proc/stat. */
static double start_time(void)
{
    char buf[1024], *p;
    unsigned long long ticks = 0, btime = 0;
    long hz = sysconf(_SC_CLK_TCK);
    FILE *f = fopen("/proc/self/stat", "re");
    size_t n;

    if (!f)
        return -1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: skip past the last ')'. */
    if (!(p = strrchr(buf, ')')))
        return -1;
    p += 2; /* field 3, the state */
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    if (!p || sscanf(p, "%llu", &ticks) != 1 || hz <= 0)
        return -1;
    if (!(f = fopen("/proc/stat", "re")))
        return -1;
    while (fgets(buf, sizeof buf, f))
        if (sscanf(buf, "btime %llu", &btime) == 1)
            break;
    fclose(f);
    return btime ? (double)btime + (double)ticks / (double)hz : -1;
}

void metrics_process(struct metrics_process *p)
{
    struct rusage ru;
    struct rlimit rl;
    unsigned long long vpages = 0, rpages = 0;
    long page = sysconf(_SC_PAGESIZE);
    FILE *f;

    p->cpu_seconds = -1;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        p->cpu_seconds = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    p->resident_bytes = p->virtual_bytes = -1;
    if ((f = fopen("/proc/self/statm", "re"))) {
        if (fscanf(f, "%llu %llu", &vpages, &rpages) == 2 && page > 0) {
            p->virtual_bytes = (double)vpages * (double)page;
            p->resident_bytes = (double)rpages * (double)page;
        }
        fclose(f);
    }
    p->open_fds = count_fds();
    p->max_fds = -1;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        p->max_fds = (double)rl.rlim_cur;
    p->start_time = start_time();
}
