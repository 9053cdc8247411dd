/* The benchmark suite's shared pieces (issue 7): clocks, samples and their
 * statistics, the etcd gateway client, line clients of the agent's socket,
 * /proc readers, and the report.
 *
 * The suite drives real processes: one etcd member (test/harness/etcd_proc.h)
 * and discovery-agent processes (test/harness/agentproc.h), and measures
 * each figure beside its floor, measured in the same run by the same code
 * (bench/floor.c). Nothing here is a test: nothing asserts a time. */
#ifndef BENCH_H
#define BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "b64.h"
#include "mkdir_p.h"
#include "testutil.h"

#define RUNS 5 /* every figure is a median over this many runs */

/* ---- clocks and samples (util.c) ------------------------------------------ */

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t now_ns(void);
static inline double ns_to_us(uint64_t ns)
{
    return (double)ns / 1e3;
}
/* now_ms() and sleep_ms() are the tests' (test/harness/testutil.h). */

/* A growing array of doubles (latencies in microseconds, say). */
struct samples {
    double *v;
    size_t n, cap;
    bool sorted;
};
void samples_add(struct samples *s, double x);
/* The p-th percentile (0..100), nearest rank on the sorted samples; NAN
 * when empty. Sorts s in place. */
double samples_pct(struct samples *s, double p);
void samples_free(struct samples *s);
/* Appends every sample of src to dst. */
void samples_merge(struct samples *dst, const struct samples *src);

/* One figure over RUNS runs: the value of each run. */
struct runs {
    double v[RUNS];
    int n;
};
void runs_add(struct runs *r, double x);
double runs_median(const struct runs *r);
double runs_min(const struct runs *r);
double runs_max(const struct runs *r);

/* Writes "q value" rows of s for a latency-by-percentile plot: q runs from
 * 0 to 99.99 and the x axis of the plot is 1/(1-q), so the tail is as wide
 * as the body. Returns 0 or -errno. */
int samples_write_quantiles(struct samples *s, const char *path);

/* ---- small helpers (util.c) ----------------------------------------------- */

/* Base64 is the agent's b64_encode() (agent/etcd/b64.h). */
/* Raises RLIMIT_NOFILE's soft limit to the hard one; returns the new soft
 * limit. */
long raise_nofile(void);
/* Writes a whole file; 0 or -errno. */
int write_file(const char *path, const char *text);
/* mkdir -p is the agent's mkdir_p() (agent/mkdir_p.h), rm -rf the tests'
 * rm_rf(). */

/* ---- /proc (procstat.c) --------------------------------------------------- */

/* VmRSS in KiB, or -1: every resident page, shared library pages included. */
long proc_rss_kib(pid_t pid);
/* RssAnon in KiB, or -1: the process's own (anonymous) resident memory. */
long proc_rss_anon_kib(pid_t pid);
/* utime + stime in seconds, or -1. */
double proc_cpu_s(pid_t pid);
/* CPU time of every thread of pid from the scheduler, in seconds, with
 * nanosecond resolution (utime + stime tick at 10 ms); -1 on error. */
double proc_cpu_sched_s(pid_t pid);
/* TCP connections of pid whose peer is 127.0.0.1:port (ESTABLISHED). */
int proc_tcp_conns_to(pid_t pid, int port);
/* Threads of pid. */
int proc_threads(pid_t pid);

/* ---- etcd gateway client (gw.c) -------------------------------------------
 * A blocking HTTP/1.1 client over one keep-alive TCP connection, enough for
 * the gateway's JSON: replies with Content-Length or chunked bodies. The
 * non-blocking half (gw_send, gw_poll_reply) lets a poll loop note the
 * moment the reply is complete. */
struct gw {
    int fd;
    int port;
    char *in; /* bytes read and not yet consumed */
    size_t len, cap;
};

int gw_open(struct gw *g, const char *url); /* "http://127.0.0.1:PORT" */
void gw_close(struct gw *g);
/* POST path with body and waits for the reply's body (a new string, the
 * caller frees it). 0 or -1. */
int gw_post(struct gw *g, const char *path, const char *body, char **reply);
/* Sends the request only. */
int gw_send(struct gw *g, const char *path, const char *body);
/* Reads what the socket holds (non-blocking); 1 once a complete reply has
 * arrived (its body in *reply, if reply is not NULL), 0 if not yet, -1 on
 * error. */
int gw_poll_reply(struct gw *g, char **reply);

/* Key and value helpers: put, delete and range under the gateway's base64. */
int gw_put(struct gw *g, const char *key, const char *value, int64_t *revision);
int gw_delete(struct gw *g, const char *key, int64_t *revision);
/* Sends a put or delete without waiting (see gw_poll_reply). */
int gw_send_put(struct gw *g, const char *key, const char *value);
int gw_send_delete(struct gw *g, const char *key);
/* A transaction of n puts (keys[i] = values[i]), n <= 128. */
int gw_txn_puts(struct gw *g, const char *const *keys, const char *const *values, size_t n);
/* Range over a prefix; returns the number of keys, or -1. */
long gw_range_prefix(struct gw *g, const char *prefix);
/* The "revision" in a reply's header, or -1. */
int64_t gw_revision(const char *reply);

/* A watch stream held open on the gateway (POST /v3/watch). */
struct gw_watch {
    struct gw g;
    /* Dechunked JSON lines not yet complete. */
    char *line;
    size_t llen, lcap;
    int state; /* chunk parser state */
    size_t chunk_left;
};
/* Opens a watch on prefix and waits for "created". 0 or -1. */
int gw_watch_open(struct gw_watch *w, const char *url, const char *prefix);
void gw_watch_close(struct gw_watch *w);
/* Reads what the socket holds (non-blocking) and returns how many event
 * messages (lines with "events") were completed by it; *last_rev gets the
 * revision of the last one. -1 when the stream ended. */
int gw_watch_read(struct gw_watch *w, int64_t *last_rev);

/* ---- the agent's socket (lines.c) ----------------------------------------- */

/* A buffered line client of a unix stream socket. */
struct lc {
    int fd;
    char *buf;
    size_t len, cap, start;
};
int lc_open(struct lc *c, const char *path, bool nonblock); /* 0 or -1 */
void lc_close(struct lc *c);
int lc_send(struct lc *c, const char *data, size_t len); /* all of it; 0 or -1 */
/* The next complete line (without '\n', NUL-terminated, valid until the
 * next call), waiting up to timeout_ms (-1 forever); NULL on timeout, EOF
 * or error. */
char *lc_line(struct lc *c, int timeout_ms, size_t *len);
/* Reads what is there without blocking; returns the number of complete
 * lines consumed (the lines are discarded), -1 on EOF or error. */
int lc_drain_count(struct lc *c);
/* Sends req (with '\n') and returns the first reply line ("ok" present, no
 * "event"); NULL on timeout. */
char *lc_call(struct lc *c, const char *req, int timeout_ms, size_t *len);

/* Waits (polling every 5 ms, up to timeout_ms) until the socket at path
 * answers a ping; 0 or -1. */
int wait_agent(const char *path, int timeout_ms);

/* An integer member "name":N of a one-line JSON object, or def. Only for
 * the agent's replies, whose members we know. */
long long json_int_member(const char *line, const char *name, long long def);

/* ---- floors (floor.c) ------------------------------------------------------ */

/* A child process serving one unix socket at path: for every line it reads,
 * it writes reply (len bytes, ending in '\n'). Accepts any number of
 * connections, driven by epoll in one thread like the agent. Returns the
 * child's pid, or -1. */
pid_t floor_echo_start(const char *path, const char *reply, size_t len);
void floor_stop(pid_t pid);
/* CPU seconds a process spends writing line (len bytes) to each of
 * fanout sockets, count times, the other ends drained by another process:
 * the least an agent can spend delivering count updates to fanout
 * watchers. */
double floor_fanout_cpu(const char *line, size_t len, int fanout, int count);
/* CPU seconds a process spends on one lease keep-alive through etcd's
 * gateway (its own lease, count keep-alives on one keep-alive connection,
 * averaged): the least that staying registered costs. -1 on failure. */
double floor_keepalive_cpu(const char *url, int count);
/* The same paced as the agent paces them: a child process that makes
 * count keep-alives, one every interval_ms (the first after one interval),
 * each from an idle process, as the agent's are, so with cold caches and a
 * wake-up each; floor_paced_keepalive_end() waits for it and returns the
 * CPU seconds per keep-alive (-1 on failure). Run beside the agent's rest
 * window, it sees the same moments of the machine. */
pid_t floor_paced_keepalive_start(const char *url, int count, int interval_ms, int *rfd);
double floor_paced_keepalive_end(pid_t pid, int rfd);

#endif
