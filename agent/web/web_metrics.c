/* /metrics: the Prometheus text format (version 0.0.4). Counters and
 * histograms come from struct metrics (metrics.h); gauges are read from
 * the parts at scrape time. Every name is under discovery_agent_, in base
 * units, with _total on counters; docs/operations.md lists them all.
 *
 * Labels are bounded. Fixed enums (op, result, state, type, rcode) but
 * one: the per-service gauges carry the service's name, and the services
 * are those this host's clients watch or asked about (the watch cache,
 * which drops a service nobody asked about for cache.idle), not every
 * service in etcd. No label names an instance, an address, a client or a
 * connection. */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "metrics.h"
#include "web_internal.h"

#define P "discovery_agent_"

static void head(struct web_buf *b, const char *name, const char *type, const char *help)
{
    web__buf_printf(b, "# HELP " P "%s %s\n# TYPE " P "%s %s\n", name, help, name, type);
}

static void value(struct web_buf *b, double v)
{
    /* %.17g keeps every integer a counter can reach below 2^53 exact. */
    if (v >= -9e15 && v <= 9e15 && v == (double)(int64_t)v)
        web__buf_printf(b, "%" PRId64 "\n", (int64_t)v);
    else
        web__buf_printf(b, "%.17g\n", v);
}

static void one(struct web_buf *b, const char *name, const char *type, const char *help, double v)
{
    head(b, name, type, help);
    web__buf_printf(b, P "%s ", name);
    value(b, v);
}

/* A label value as the format wants it: backslash, quote and newline
 * escaped. */
static void label_value(struct web_buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            web__buf_printf(b, "\\%c", *s);
        else if (*s == '\n')
            web__buf_add(b, "\\n", 2);
        else
            web__buf_add(b, s, 1);
    }
}

/* The series of one histogram; labels is "" or `op="range",`. */
static void histogram(struct web_buf *b, const char *name, const char *labels,
                      const struct metrics_histogram *h)
{
    uint64_t sum = 0;

    for (size_t i = 0; i < METRICS_N_BUCKETS; i++) {
        sum += h->le[i];
        web__buf_printf(b, P "%s_bucket{%sle=\"%g\"} %" PRIu64 "\n", name, labels,
                        metrics_buckets[i], sum);
    }
    web__buf_printf(b, P "%s_bucket{%sle=\"+Inf\"} %" PRIu64 "\n", name, labels, h->count);
    if (*labels) {
        /* Without the trailing comma for _sum and _count. */
        int n = (int)strlen(labels) - 1;
        web__buf_printf(b, P "%s_sum{%.*s} %.9g\n", name, n, labels, h->sum);
        web__buf_printf(b, P "%s_count{%.*s} %" PRIu64 "\n", name, n, labels, h->count);
    } else {
        web__buf_printf(b, P "%s_sum %.9g\n", name, h->sum);
        web__buf_printf(b, P "%s_count %" PRIu64 "\n", name, h->count);
    }
}

/* ---- from the parts --------------------------------------------------------- */

struct reg_counts {
    uint64_t state[4]; /* enum reg_state */
    uint64_t unhealthy, drained;
};

static void count_reg(const struct reg_info *ri, void *arg)
{
    struct reg_counts *rc = arg;

    if ((unsigned)ri->state < 4)
        rc->state[ri->state]++;
    rc->unhealthy += !ri->healthy;
    rc->drained += ri->drained;
}

struct cache_counts {
    struct web_buf *b;
    uint64_t now;
    uint64_t services, instances, stale, oldest_stale_ms, watchers, protected_;
    int pass; /* 0: totals; 1, 2, 3: the per-service series */
};

static void count_svc(service *svc, void *arg)
{
    struct cache_counts *cc = arg;
    size_t n;

    service_instances(svc, &n);
    if (cc->pass == 0) {
        cc->services++;
        cc->instances += n;
        cc->watchers += service_subscribers(svc);
        cc->protected_ += service_plan(svc)->protected_;
        if (service_stale(svc)) {
            uint64_t since = service_stale_since(svc);
            cc->stale++;
            if (since && cc->now - since > cc->oldest_stale_ms)
                cc->oldest_stale_ms = cc->now - since;
        }
        return;
    }
    web__buf_printf(cc->b, P "%s{service=\"",
                    cc->pass == 1   ? "service_instances"
                    : cc->pass == 2 ? "service_watchers"
                                    : "service_stale");
    label_value(cc->b, service_name(svc));
    web__buf_add(cc->b, "\"} ", 3);
    value(cc->b, cc->pass == 1   ? (double)n
                 : cc->pass == 2 ? (double)service_subscribers(svc)
                                 : (double)service_stale(svc));
}

static double json_num(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);

    return json_is_number(v) ? json_number_value(v) : 0;
}

/* ---- the exposition ----------------------------------------------------------- */

static void process_metrics(struct web_buf *b)
{
    struct metrics_process p;

    metrics_process(&p);
    if (p.cpu_seconds >= 0)
        one(b, "process_cpu_seconds_total", "counter",
            "User and system CPU time the agent has used, in seconds.", p.cpu_seconds);
    if (p.resident_bytes >= 0)
        one(b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
            p.resident_bytes);
    if (p.virtual_bytes >= 0)
        one(b, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
            p.virtual_bytes);
    if (p.open_fds >= 0)
        one(b, "process_open_fds", "gauge", "Open file descriptors.", p.open_fds);
    if (p.max_fds >= 0)
        one(b, "process_max_fds", "gauge", "The limit on open file descriptors (RLIMIT_NOFILE).",
            p.max_fds);
    if (p.start_time >= 0)
        one(b, "process_start_time_seconds", "gauge",
            "When the agent started, in seconds since the Unix epoch.", p.start_time);
}

static void etcd_metrics(web *w, struct web_buf *b)
{
    char labels[64];

    head(b, "etcd_requests_total", "counter",
         "Requests to etcd's JSON gateway by operation and result (ok, refused: etcd said no, "
         "unreachable: transport, timeout or no leader, error: an unusable reply); each try "
         "on each endpoint counts.");
    for (size_t op = 0; op < M_ETCD_N_OPS; op++)
        for (size_t r = 0; r < M_ETCD_N_RESULTS; r++)
            web__buf_printf(b, P "etcd_requests_total{op=\"%s\",result=\"%s\"} %" PRIu64 "\n",
                            metrics_etcd_op_name[op], metrics_etcd_result_name[r],
                            metrics.etcd_requests[op][r]);
    head(b, "etcd_request_duration_seconds", "histogram",
         "Time from sending a request to etcd to its reply or failure, by operation.");
    for (size_t op = 0; op < M_ETCD_N_OPS; op++) {
        snprintf(labels, sizeof labels, "op=\"%s\",", metrics_etcd_op_name[op]);
        histogram(b, "etcd_request_duration_seconds", labels, &metrics.etcd_latency[op]);
    }
    one(b, "etcd_endpoint_failovers_total", "counter",
        "Moves from a failing etcd endpoint to the next one.", (double)metrics.etcd_failovers);
    one(b, "etcd_connected", "gauge", "1 when the last request to etcd reached it, else 0.",
        etcd_client_connected(w->d.etcd));
    one(b, "etcd_watch_stream_connects_total", "counter",
        "Watch streams opened to etcd, the first and every reconnection.",
        (double)metrics.watch_stream_connects);
    one(b, "etcd_watch_events_total", "counter", "Events received on etcd watch streams.",
        (double)metrics.watch_events);
    one(b, "etcd_watch_compactions_total", "counter",
        "Watches resynced with a fresh read because etcd had compacted the revision they "
        "needed.",
        (double)metrics.watch_compactions);
}

static void session_metrics(web *w, struct web_buf *b)
{
    session *s = w->d.session;
    int64_t left = session_remaining_ms(s);

    one(b, "lease_held", "gauge", "1 while the agent holds an etcd session lease, else 0.",
        session_lease(s) != 0);
    one(b, "lease_ttl_seconds", "gauge", "The session lease's configured TTL (session.ttl).",
        (double)session_ttl(s));
    one(b, "lease_remaining_seconds", "gauge",
        "What etcd last said of the lease's time left, less the time since; 0 when it may "
        "have expired.",
        session_lease(s) && left > 0 ? (double)left / 1000 : 0);
    one(b, "lease_grants_total", "counter", "Session leases granted by etcd.",
        (double)metrics.lease_grants);
    one(b, "lease_losses_total", "counter",
        "Session leases etcd said were gone (expired or revoked) while the agent ran.",
        (double)metrics.lease_losses);
    head(b, "lease_keepalive_duration_seconds", "histogram",
         "Time from sending a lease keep-alive to etcd's successful answer.");
    histogram(b, "lease_keepalive_duration_seconds", "", &metrics.keepalive_latency);
}

static void registry_metrics(web *w, struct web_buf *b)
{
    static const char *const states[] = {"pending", "registered", "failing", "withheld"};
    struct reg_counts rc = {{0}, 0, 0};
    const char *reason;

    registry_foreach(w->d.registry, count_reg, &rc);
    head(b, "registrations", "gauge",
         "This host's registrations by state: pending (not yet written), registered (in "
         "etcd), failing (writes fail), withheld (kept out: unhealthy, drained or "
         "maintenance).");
    for (size_t i = 0; i < 4; i++)
        web__buf_printf(b, P "registrations{state=\"%s\"} %" PRIu64 "\n", states[i], rc.state[i]);
    one(b, "registrations_unhealthy", "gauge", "Registrations whose health check fails.",
        (double)rc.unhealthy);
    one(b, "registrations_drained", "gauge", "Registrations drained by an operator.",
        (double)rc.drained);
    one(b, "maintenance", "gauge", "1 while the host is in maintenance mode, else 0.",
        registry_in_maint(w->d.registry, &reason));
    one(b, "registration_heals_total", "counter",
        "Registrations written again because their key was deleted or overwritten by "
        "someone else.",
        (double)metrics.registration_heals);
    head(b, "check_runs_total", "counter", "Health check runs by result.");
    web__buf_printf(b, P "check_runs_total{result=\"pass\"} %" PRIu64 "\n",
                    metrics.check_results[M_CHECK_PASS]);
    web__buf_printf(b, P "check_runs_total{result=\"fail\"} %" PRIu64 "\n",
                    metrics.check_results[M_CHECK_FAIL]);
    head(b, "check_transitions_total", "counter",
         "Health state changes of checked registrations, by the state entered.");
    web__buf_printf(b, P "check_transitions_total{to=\"healthy\"} %" PRIu64 "\n",
                    metrics.check_transitions[M_CHECK_PASS]);
    web__buf_printf(b, P "check_transitions_total{to=\"unhealthy\"} %" PRIu64 "\n",
                    metrics.check_transitions[M_CHECK_FAIL]);
}

static void cache_metrics(web *w, struct web_buf *b)
{
    struct cache_counts cc = {.b = b, .now = uv_now(w->d.loop)};

    cache_foreach(w->d.cache, count_svc, &cc);
    one(b, "cache_services", "gauge", "Services in the watch cache.", (double)cc.services);
    one(b, "cache_instances", "gauge", "Instances in the watch cache, over every service.",
        (double)cc.instances);
    one(b, "cache_stale_services", "gauge",
        "Cached services whose list etcd has not confirmed live (etcd away, or read from "
        "disk).",
        (double)cc.stale);
    one(b, "cache_oldest_stale_age_seconds", "gauge",
        "How long the longest-stale service has been stale; 0 when none is.",
        (double)cc.oldest_stale_ms / 1000);
    one(b, "protected_services", "gauge",
        "Services whose mass drop is held by the traffic policy (they still serve removed "
        "instances).",
        (double)cc.protected_);
    one(b, "protection_holds_total", "counter", "Mass drops of a service held (docs/traffic.md).",
        (double)metrics.protection_holds);
    one(b, "protection_applied_total", "counter",
        "Held drops that persisted past the hold and were applied.",
        (double)metrics.protection_applied);
    one(b, "cache_skipped_values", "gauge",
        "Values under watched prefixes that are not service instances (skipped).",
        (double)cache_skipped_total(w->d.cache));
    static const char *const per[][2] = {
        {"service_instances", "Instances of each watched service."},
        {"service_watchers", "Subscribers (socket watchers, xDS streams, waiting requests) "
                             "of each watched service."},
        {"service_stale", "1 while a watched service's list is stale, else 0."},
    };
    for (int pass = 1; pass <= 3; pass++) {
        head(b, per[pass - 1][0], "gauge", per[pass - 1][1]);
        cc.pass = pass;
        cache_foreach(w->d.cache, count_svc, &cc);
    }
}

static void socket_metrics(web *w, struct web_buf *b)
{
    one(b, "socket_clients", "gauge", "Clients connected to the agent's unix socket.",
        w->d.server ? (double)server_clients(w->d.server) : 0);
    one(b, "socket_resolves_total", "counter", "Resolve requests answered on the socket.",
        (double)metrics.socket_resolves);
    one(b, "socket_watches_total", "counter", "Watches started on the socket.",
        (double)metrics.socket_watches);
    one(b, "socket_update_lines_total", "counter", "Update lines sent to socket watchers.",
        (double)metrics.socket_updates);
    one(b, "socket_clients_dropped_total", "counter",
        "Socket clients closed because they did not read their output.",
        (double)metrics.socket_dropped);
    head(b, "watch_delivery_delay_seconds", "histogram",
         "Time from a change's arrival in the cache to the return of the write to its last "
         "subscriber (socket watcher or xDS stream).");
    histogram(b, "watch_delivery_delay_seconds", "", &metrics.delivery_delay);
}

static void xds_metrics(web *w, struct web_buf *b)
{
    json_t *x = w->d.xds ? xds_status(w->d.xds) : NULL;

    one(b, "xds_streams", "gauge", "Open xDS (ADS) streams.",
        (double)json_array_size(json_object_get(x, "clients")));
    one(b, "xds_streams_total", "counter", "xDS (ADS) streams opened.",
        json_num(x, "streams_total"));
    one(b, "xds_pushes_total", "counter", "xDS responses pushed to clients.",
        json_num(x, "responses"));
    one(b, "xds_nacks_total", "counter", "xDS responses clients refused (NACKed).",
        json_num(x, "nacks"));
    json_decref(x);
}

/* From the DNS server's own counters (dns_status). Queries by type are
 * not counted there yet: metrics.dns_queries is the hook for it. */
static void dns_metrics(web *w, struct web_buf *b)
{
    json_t *d = dns_status(w->d.dns), *rc = json_object_get(d, "rcodes");
    const char *name;
    json_t *v;

    one(b, "dns_queries_total", "counter", "DNS queries received (UDP and TCP).",
        json_num(d, "queries"));
    head(b, "dns_responses_total", "counter", "DNS responses sent, by rcode.");
    json_object_foreach(rc, name, v) {
        web__buf_printf(b, P "dns_responses_total{rcode=\"");
        label_value(b, name);
        web__buf_add(b, "\"} ", 3);
        value(b, json_is_number(v) ? json_number_value(v) : 0);
    }
    one(b, "dns_truncated_total", "counter", "DNS responses truncated (TC) for UDP.",
        json_num(d, "truncated"));
    one(b, "dns_dropped_total", "counter", "DNS queries dropped unanswered (malformed).",
        json_num(d, "dropped"));
    one(b, "dns_forwarded_total", "counter",
        "DNS queries for names outside the domain sent to a recursor (dns.recursors).",
        json_num(d, "forwarded"));
    head(b, "dns_forward_failures_total", "counter",
         "Queries to forward answered SERVFAIL: no recursor answered, or too many in flight.");
    web__buf_printf(b, P "dns_forward_failures_total{reason=\"unanswered\"} ");
    value(b, json_num(d, "forward_failed"));
    web__buf_printf(b, P "dns_forward_failures_total{reason=\"busy\"} ");
    value(b, json_num(d, "forward_busy"));
    json_decref(d);
}

void web__metrics(web *w, struct web_buf *b)
{
    head(b, "build_info", "gauge", "Always 1; the agent's version is in the label.");
    web__buf_printf(b, P "build_info{version=\"");
    label_value(b, DA_VERSION);
    web__buf_add(b, "\"} 1\n", 5);
    process_metrics(b);
    etcd_metrics(w, b);
    session_metrics(w, b);
    registry_metrics(w, b);
    cache_metrics(w, b);
    socket_metrics(w, b);
    xds_metrics(w, b);
    dns_metrics(w, b);
}
