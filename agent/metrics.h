/* The agent's counters and histograms, for /metrics (agent/web/).
 *
 * The parts count what happens to them here: one process-wide struct,
 * bumped on the loop thread and read by the exposition on the same thread,
 * so no lock and no atomics. Gauges (how many services, registrations,
 * clients there are now) are not kept here: the exposition asks the parts
 * at scrape time, so that a gauge can never drift from what it measures.
 *
 * Label values are fixed enums, never text from outside: the number of
 * series is known at build time (docs/operations.md lists them all). */
#ifndef DA_METRICS_H
#define DA_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* The upper bounds, in seconds, of every latency histogram's buckets: from
 * a loopback etcd's half millisecond to a request timeout's ten seconds. */
#define METRICS_N_BUCKETS 14
extern const double metrics_buckets[METRICS_N_BUCKETS];

struct metrics_histogram {
    uint64_t le[METRICS_N_BUCKETS]; /* per bucket, not cumulative */
    uint64_t count;
    double sum; /* seconds */
};

/* etcd requests by the gateway path they went to. */
enum metrics_etcd_op {
    M_ETCD_RANGE,
    M_ETCD_PUT,
    M_ETCD_DELETE,
    M_ETCD_TXN,
    M_ETCD_LEASE_GRANT,
    M_ETCD_LEASE_KEEPALIVE,
    M_ETCD_LEASE_REVOKE,
    M_ETCD_LEASE_TTL,
    M_ETCD_STATUS,
    M_ETCD_AUTH,
    M_ETCD_OTHER,
    M_ETCD_N_OPS
};

/* ok: a reply; refused: etcd answered no (a failed compare is still ok);
 * unreachable: transport error, timeout, or a member without a leader;
 * error: a reply that could not be used (too large, not etcd's). */
enum metrics_etcd_result {
    M_ETCD_OK,
    M_ETCD_REFUSED,
    M_ETCD_UNREACHABLE,
    M_ETCD_ERROR,
    M_ETCD_N_RESULTS
};

enum metrics_check { M_CHECK_PASS, M_CHECK_FAIL, M_CHECK_N };

/* DNS: a hook for the DNS server (agent/dns/), by query type and rcode. */
enum metrics_dns_type {
    M_DNS_A,
    M_DNS_AAAA,
    M_DNS_SRV,
    M_DNS_TXT,
    M_DNS_SOA,
    M_DNS_OTHER,
    M_DNS_N_TYPES
};
enum metrics_dns_rcode {
    M_DNS_NOERROR,
    M_DNS_NXDOMAIN,
    M_DNS_REFUSED,
    M_DNS_SERVFAIL,
    M_DNS_FORMERR,
    M_DNS_OTHER_RCODE,
    M_DNS_N_RCODES
};

struct metrics {
    uint64_t etcd_requests[M_ETCD_N_OPS][M_ETCD_N_RESULTS];
    struct metrics_histogram etcd_latency[M_ETCD_N_OPS];
    uint64_t etcd_failovers;        /* moves to another endpoint */
    uint64_t watch_stream_connects; /* watch streams opened, first or again */
    uint64_t watch_events;          /* events received on watch streams */
    uint64_t watch_compactions;     /* watches resynced after a compaction */
    uint64_t lease_grants;
    uint64_t lease_losses; /* etcd said the lease was gone */
    struct metrics_histogram keepalive_latency;
    uint64_t registration_heals; /* our key deleted or overwritten, written again */
    uint64_t check_results[M_CHECK_N];
    uint64_t check_transitions[M_CHECK_N]; /* to healthy (PASS), to unhealthy (FAIL) */
    uint64_t socket_resolves;
    uint64_t socket_watches;
    uint64_t socket_updates; /* update lines sent to watchers */
    uint64_t socket_dropped; /* clients closed for not reading */
    /* From a change's arrival in the cache to the return of the write of
     * its last subscriber (socket watcher, xDS stream). */
    struct metrics_histogram delivery_delay;
    uint64_t dns_queries[M_DNS_N_TYPES][M_DNS_N_RCODES];
    /* Mass drops held by the traffic policy's guard (docs/traffic.md), and
     * holds that ended by applying the drop. */
    uint64_t protection_holds;
    uint64_t protection_applied;
};

/* The one instance, zero at start. */
extern struct metrics metrics;

void metrics_observe(struct metrics_histogram *h, double seconds);

/* Counts one etcd request to path ("/v3/kv/range") that ended with err (0
 * or a DA_E* code) after the given time. */
void metrics_etcd_request(const char *path, int err, double seconds);

/* Seconds between two uv_hrtime() readings. */
double metrics_since(uint64_t start_ns, uint64_t end_ns);

extern const char *const metrics_etcd_op_name[M_ETCD_N_OPS];
extern const char *const metrics_etcd_result_name[M_ETCD_N_RESULTS];
extern const char *const metrics_dns_type_name[M_DNS_N_TYPES];
extern const char *const metrics_dns_rcode_name[M_DNS_N_RCODES];

/* What the process costs now, from /proc and getrusage(). Fields the
 * kernel would not tell are -1. */
struct metrics_process {
    double cpu_seconds; /* user + system */
    double resident_bytes;
    double virtual_bytes;
    double open_fds;
    double max_fds;
    double start_time; /* seconds since the epoch */
};
void metrics_process(struct metrics_process *p);

#endif
