/* The xDS resources of a service: model, protobuf encoding, JSON.
 * See xds_resources.h for the contract and docs/xds.md for the mapping;
 * docs/xds-facts.md records what gRPC 1.51's client accepts, which
 * is why some choices below look arbitrary (comments say which fact). */
#include "xds_resources.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "any.pb-c.h"
#include "cluster.pb-c.h"
#include "core.pb-c.h"
#include "discovery.pb-c.h"
#include "endpoint.pb-c.h"
#include "http_connection_manager.pb-c.h"
#include "listener.pb-c.h"
#include "route.pb-c.h"
#include "router.pb-c.h"
#include "status.pb-c.h"

#include "error.h"
#include "validate.h"

/* The generated names spell out the whole package; these are the ones
 * used here. */
typedef Google__Protobuf__Any Any;
typedef Google__Protobuf__UInt32Value UInt32Value;
typedef Envoy__Config__Core__V3__AggregatedConfigSource AdsSource;
typedef Envoy__Config__Core__V3__ConfigSource ConfigSource;
typedef Envoy__Config__Core__V3__Locality Locality;
typedef Envoy__Config__Core__V3__SocketAddress SocketAddress;
typedef Envoy__Config__Core__V3__Address Address;
typedef Envoy__Config__Listener__V3__Listener Listener;
typedef Envoy__Config__Listener__V3__ApiListener ApiListener;
typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager Hcm;
typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__Rds Rds;
typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpFilter HttpFilter;
typedef Envoy__Extensions__Filters__Http__Router__V3__Router Router;
typedef Envoy__Config__Route__V3__RouteConfiguration RouteConfiguration;
typedef Envoy__Config__Route__V3__VirtualHost VirtualHost;
typedef Envoy__Config__Route__V3__Route Route;
typedef Envoy__Config__Route__V3__RouteMatch RouteMatch;
typedef Envoy__Config__Route__V3__HeaderMatcher HeaderMatcher;
typedef Envoy__Config__Route__V3__RouteAction RouteAction;
typedef Envoy__Config__Cluster__V3__Cluster Cluster;
typedef Envoy__Config__Cluster__V3__Cluster__EdsClusterConfig EdsClusterConfig;
typedef Envoy__Config__Cluster__V3__OutlierDetection OutlierDetection;
typedef Google__Protobuf__Duration Duration;
typedef Envoy__Config__Endpoint__V3__ClusterLoadAssignment Assignment;
typedef Envoy__Config__Endpoint__V3__LocalityLbEndpoints LocalityLbEndpoints;
typedef Envoy__Config__Endpoint__V3__LbEndpoint LbEndpoint;
typedef Envoy__Config__Endpoint__V3__Endpoint Endpoint;
typedef Envoy__Service__Discovery__V3__DiscoveryRequest DiscoveryRequest;
typedef Envoy__Service__Discovery__V3__DiscoveryResponse DiscoveryResponse;

#define URL_PREFIX "type.googleapis.com/"
#define HCM_URL                                                                                    \
    URL_PREFIX "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
#define ROUTER_URL URL_PREFIX "envoy.extensions.filters.http.router.v3.Router"
#define ROUTER_FILTER "envoy.filters.http.router"

/* v3 URLs only: a v2 URL is silently ignored by the client. */
const char *const xds_type_url[XDS_NTYPES] = {
    URL_PREFIX "envoy.config.listener.v3.Listener",
    URL_PREFIX "envoy.config.route.v3.RouteConfiguration",
    URL_PREFIX "envoy.config.cluster.v3.Cluster",
    URL_PREFIX "envoy.config.endpoint.v3.ClusterLoadAssignment",
};

const char *const xds_type_name[XDS_NTYPES] = {"listeners", "routes", "clusters", "endpoints"};

static const ProtobufCMessageDescriptor *const type_desc[XDS_NTYPES] = {
    &envoy__config__listener__v3__listener__descriptor,
    &envoy__config__route__v3__route_configuration__descriptor,
    &envoy__config__cluster__v3__cluster__descriptor,
    &envoy__config__endpoint__v3__cluster_load_assignment__descriptor,
};

int xds_type_of(const char *type_url)
{
    for (int t = 0; t < XDS_NTYPES; t++)
        if (type_url && !strcmp(type_url, xds_type_url[t]))
            return t;
    return -1;
}

void xds_blob_clear(struct xds_blob *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

bool xds_blob_equal(const struct xds_blob *a, const struct xds_blob *b)
{
    return a->len == b->len && (!a->len || !memcmp(a->data, b->data, a->len));
}

static int pack(const ProtobufCMessage *m, struct xds_blob *out)
{
    size_t n = protobuf_c_message_get_packed_size(m);

    out->data = NULL;
    out->len = 0;
    if (!n)
        return 0;
    out->data = malloc(n);
    if (!out->data)
        return DA_ENOMEM;
    out->len = protobuf_c_message_pack(m, out->data);
    return 0;
}

/* ---- the model ---------------------------------------------------------- */

/* An IP literal in its canonical text ("::1" for "0:0::1"), so that two
 * spellings of one address are seen as duplicates. 1, or 0 if not one. */
static int canonical_ip(const char *host, char *out, size_t outlen)
{
    unsigned char a[sizeof(struct in6_addr)];

    if (inet_pton(AF_INET, host, a) == 1)
        return inet_ntop(AF_INET, a, out, (socklen_t)outlen) != NULL;
    if (inet_pton(AF_INET6, host, a) == 1)
        return inet_ntop(AF_INET6, a, out, (socklen_t)outlen) != NULL;
    return 0;
}

struct cand {
    struct xds_endpoint ep;
    const char *address;
    size_t index;
};

static int cand_cmp(const void *x, const void *y)
{
    const struct cand *a = x, *b = y;
    int r = strcmp(a->ep.ip, b->ep.ip);

    if (!r)
        r = (a->ep.port > b->ep.port) - (a->ep.port < b->ep.port);
    if (!r)
        r = (a->index > b->index) - (a->index < b->index);
    return r;
}

static int str_cmp(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

static int add_dropped(struct xds_model *m, const char *address, const char *reason)
{
    struct xds_dropped *d = &m->dropped[m->n_dropped];

    if (!(d->address = strdup(address)))
        return DA_ENOMEM;
    d->reason = reason;
    m->n_dropped++;
    return 0;
}

int xds_model_build(struct xds_model *m, const char *name, const struct instance *const *v,
                    size_t n, xds_lookup_fn lookup, void *arg)
{
    struct cand *c = calloc(n ? n : 1, sizeof *c);
    size_t k = 0;
    bool waiting = false;
    int rc = DA_ENOMEM;

    memset(m, 0, sizeof *m);
    m->name = strdup(name);
    m->eps = calloc(n ? n : 1, sizeof *m->eps);
    m->groups = calloc(n ? n : 1, sizeof *m->groups);
    m->dropped = calloc(n ? n : 1, sizeof *m->dropped);
    if (!c || !m->name || !m->eps || !m->groups || !m->dropped)
        goto fail;

    for (size_t i = 0; i < n; i++) {
        struct validate_hostport hp;
        const char *host = hp.host;
        struct cand *x = &c[k];

        /* The agent's one address rule: what it would refuse to register
         * (a port with a leading zero, say) is not served either. */
        if (validate_hostport(v[i]->address, strlen(v[i]->address), 0, &hp, NULL, 0)) {
            if (add_dropped(m, v[i]->address, "not host:port"))
                goto fail;
            continue;
        }
        x->ep.port = hp.port;
        if (!canonical_ip(host, x->ep.ip, sizeof x->ep.ip)) {
            m->uses_names = true;
            if (!lookup) {
                snprintf(x->ep.ip, sizeof x->ep.ip, "%s", host);
            } else {
                int r = lookup(host, x->ep.ip, arg);
                if (r == 0) {
                    waiting = true; /* go on, so that every lookup starts now */
                    continue;
                }
                if (r < 0) {
                    if (add_dropped(m, v[i]->address, "host name does not resolve"))
                        goto fail;
                    continue;
                }
            }
        }
        x->ep.weight = (uint32_t)instance_weight(v[i]);
        x->ep.index = i;
        x->ep.group = v[i]->group ? v[i]->group : (char *)"";
        x->address = v[i]->address;
        x->index = i;
        k++;
    }
    if (waiting) {
        free(c);
        xds_model_clear(m);
        return 1;
    }
    /* Duplicate addresses are NACKed: the first instance in the cache's
     * (address) order keeps the endpoint. */
    qsort(c, k, sizeof *c, cand_cmp);
    for (size_t i = 0; i < k; i++) {
        struct xds_endpoint *e;

        if (m->n_eps && !strcmp(m->eps[m->n_eps - 1].ip, c[i].ep.ip) &&
            m->eps[m->n_eps - 1].port == c[i].ep.port) {
            if (add_dropped(m, c[i].address, "same IP and port as another instance"))
                goto fail;
            continue;
        }
        e = &m->eps[m->n_eps];
        *e = c[i].ep;
        if (!(e->group = strdup(c[i].ep.group)))
            goto fail;
        m->n_eps++;
        if (*e->group) {
            bool seen = false;
            for (size_t g = 0; g < m->n_groups && !seen; g++)
                seen = !strcmp(m->groups[g], e->group);
            if (!seen && !(m->groups[m->n_groups++] = strdup(e->group)))
                goto fail;
        }
    }
    qsort(m->groups, m->n_groups, sizeof *m->groups, str_cmp);
    free(c);
    return 0;
fail:
    free(c);
    xds_model_clear(m);
    return rc;
}

void xds_model_clear(struct xds_model *m)
{
    free(m->name);
    for (size_t i = 0; m->eps && i < m->n_eps; i++) {
        free(m->eps[i].group);
        free(m->eps[i].zone);
        free(m->eps[i].region);
    }
    free(m->eps);
    for (size_t i = 0; m->groups && i < m->n_groups; i++)
        free(m->groups[i]);
    free(m->groups);
    for (size_t i = 0; m->dropped && i < m->n_dropped; i++)
        free(m->dropped[i].address);
    free(m->dropped);
    memset(m, 0, sizeof *m);
}

static bool str_same(const char *a, const char *b)
{
    return !strcmp(a ? a : "", b ? b : "");
}

int xds_model_set_policy(struct xds_model *m, const struct instance *const *v, size_t n,
                         const struct policy_plan *plan, const struct policy_outlier *od)
{
    memset(&m->outlier, 0, sizeof m->outlier);
    if (od && od->set)
        m->outlier = *od;
    m->zoned = plan && plan->zoned && plan->n == n;
    if (!m->zoned)
        return 0;
    memcpy(m->load, plan->load, sizeof m->load);
    for (size_t i = 0; i < m->n_eps; i++) {
        struct xds_endpoint *e = &m->eps[i];
        const char *zone, *region;

        if (e->index >= n)
            continue;
        zone = policy_meta(v[e->index], POLICY_META_ZONE);
        region = policy_meta(v[e->index], POLICY_META_REGION);
        e->rank = plan->rank[e->index];
        if (!(e->zone = strdup(zone ? zone : "")) || !(e->region = strdup(region ? region : "")))
            return DA_ENOMEM;
    }
    return 0;
}

bool xds_model_equal(const struct xds_model *a, const struct xds_model *b)
{
    if (a->n_eps != b->n_eps || a->n_groups != b->n_groups || a->zoned != b->zoned ||
        memcmp(&a->outlier, &b->outlier, sizeof a->outlier) ||
        (a->zoned && memcmp(a->load, b->load, sizeof a->load)))
        return false;
    for (size_t i = 0; i < a->n_eps; i++) {
        const struct xds_endpoint *x = &a->eps[i], *y = &b->eps[i];
        if (strcmp(x->ip, y->ip) || x->port != y->port || x->weight != y->weight ||
            strcmp(x->group, y->group) || x->rank != y->rank || !str_same(x->zone, y->zone) ||
            !str_same(x->region, y->region))
            return false;
    }
    for (size_t i = 0; i < a->n_groups; i++)
        if (strcmp(a->groups[i], b->groups[i]))
            return false;
    return true;
}

/* ---- resources ---------------------------------------------------------- */

int xds_listener(const char *name, struct xds_blob *out)
{
    Router router = ENVOY__EXTENSIONS__FILTERS__HTTP__ROUTER__V3__ROUTER__INIT;
    Any router_any = GOOGLE__PROTOBUF__ANY__INIT;
    HttpFilter filter =
        ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_FILTER__INIT;
    HttpFilter *filters[1] = {&filter};
    AdsSource ads = ENVOY__CONFIG__CORE__V3__AGGREGATED_CONFIG_SOURCE__INIT;
    ConfigSource cs = ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__INIT;
    Rds rds = ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__RDS__INIT;
    Hcm hcm =
        ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__INIT;
    Any hcm_any = GOOGLE__PROTOBUF__ANY__INIT;
    ApiListener al = ENVOY__CONFIG__LISTENER__V3__API_LISTENER__INIT;
    Listener l = ENVOY__CONFIG__LISTENER__V3__LISTENER__INIT;
    struct xds_blob rb = {0}, hb = {0};
    int rc;

    /* The router filter is required, and last; its config is empty. */
    if ((rc = pack(&router.base, &rb)))
        return rc;
    router_any.type_url = (char *)ROUTER_URL;
    router_any.value.len = rb.len;
    router_any.value.data = rb.data;
    filter.name = (char *)ROUTER_FILTER;
    filter.config_type_case =
        ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_FILTER__CONFIG_TYPE_TYPED_CONFIG;
    filter.typed_config = &router_any;
    cs.config_source_specifier_case =
        ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_ADS;
    cs.ads = &ads;
    rds.config_source = &cs;
    rds.route_config_name = (char *)name;
    hcm.route_specifier_case =
        ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_RDS;
    hcm.rds = &rds;
    hcm.n_http_filters = 1;
    hcm.http_filters = filters;
    rc = pack(&hcm.base, &hb);
    if (!rc) {
        hcm_any.type_url = (char *)HCM_URL;
        hcm_any.value.len = hb.len;
        hcm_any.value.data = hb.data;
        al.api_listener = &hcm_any;
        l.name = (char *)name;
        l.api_listener = &al;
        rc = pack(&l.base, out);
    }
    xds_blob_clear(&rb);
    xds_blob_clear(&hb);
    return rc;
}

int xds_route(const struct xds_model *m, const char *group_header, struct xds_blob *out)
{
    size_t n = m->n_groups + 1;
    Route *routes = calloc(n, sizeof *routes);
    Route **rp = calloc(n, sizeof *rp);
    RouteMatch *matches = calloc(n, sizeof *matches);
    RouteAction *actions = calloc(n, sizeof *actions);
    HeaderMatcher *hm = calloc(n, sizeof *hm);
    HeaderMatcher **hmp = calloc(n, sizeof *hmp);
    char **clusters = calloc(n, sizeof *clusters);
    char *domains[1] = {(char *)"*"};
    VirtualHost vh = ENVOY__CONFIG__ROUTE__V3__VIRTUAL_HOST__INIT;
    VirtualHost *vhp[1] = {&vh};
    RouteConfiguration rc = ENVOY__CONFIG__ROUTE__V3__ROUTE_CONFIGURATION__INIT;
    int err = DA_ENOMEM;

    if (!routes || !rp || !matches || !actions || !hm || !hmp || !clusters)
        goto out;
    /* First match wins: the group routes, then everything else. */
    for (size_t i = 0; i < n; i++) {
        bool group = i < m->n_groups;
        size_t len = strlen(m->name) + (group ? strlen(m->groups[i]) + 1 : 0) + 1;

        if (!(clusters[i] = malloc(len)))
            goto out;
        if (group)
            snprintf(clusters[i], len, "%s/%s", m->name, m->groups[i]);
        else
            snprintf(clusters[i], len, "%s", m->name);
        envoy__config__route__v3__route__init(&routes[i]);
        envoy__config__route__v3__route_match__init(&matches[i]);
        envoy__config__route__v3__route_action__init(&actions[i]);
        /* prefix sits in a oneof, so "" is written (protobuf-c writes a
         * oneof member whenever its case is set): it matches every path. */
        matches[i].path_specifier_case =
            ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PREFIX;
        matches[i].prefix = (char *)"";
        if (group) {
            envoy__config__route__v3__header_matcher__init(&hm[i]);
            hm[i].name = (char *)group_header;
            hm[i].header_match_specifier_case =
                ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_EXACT_MATCH;
            hm[i].exact_match = m->groups[i];
            hmp[i] = &hm[i];
            matches[i].n_headers = 1;
            matches[i].headers = &hmp[i];
        }
        actions[i].cluster_specifier_case =
            ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_SPECIFIER_CLUSTER;
        actions[i].cluster = clusters[i];
        routes[i].match = &matches[i];
        routes[i].action_case = ENVOY__CONFIG__ROUTE__V3__ROUTE__ACTION_ROUTE;
        routes[i].route = &actions[i];
        rp[i] = &routes[i];
    }
    vh.name = m->name;
    vh.n_domains = 1;
    vh.domains = domains;
    vh.n_routes = n;
    vh.routes = rp;
    rc.name = m->name;
    rc.n_virtual_hosts = 1;
    rc.virtual_hosts = vhp;
    err = pack(&rc.base, out);
out:
    for (size_t i = 0; clusters && i < n; i++)
        free(clusters[i]);
    free(clusters);
    free(hmp);
    free(hm);
    free(actions);
    free(matches);
    free(rp);
    free(routes);
    return err;
}

static void duration(Duration *d, uint64_t ms)
{
    google__protobuf__duration__init(d);
    d->seconds = (int64_t)(ms / 1000);
    d->nanos = (int32_t)(ms % 1000) * 1000000;
}

static UInt32Value *u32(UInt32Value *w, uint32_t v)
{
    google__protobuf__uint32_value__init(w);
    w->value = v;
    return w;
}

int xds_cluster(const char *cluster, struct xds_blob *out)
{
    return xds_cluster_with(cluster, NULL, out);
}

/* gRPC A50 reads the OutlierDetection of a cluster: success-rate ejection
 * when enforcing_success_rate is not 0 (unset counts as 100), failure
 * percentage when enforcing_failure_percentage is set above 0. So each
 * kind the service does not ask for is switched off explicitly. */
int xds_cluster_with(const char *cluster, const struct policy_outlier *od, struct xds_blob *out)
{
    OutlierDetection o = ENVOY__CONFIG__CLUSTER__V3__OUTLIER_DETECTION__INIT;
    Duration interval, base, max;
    UInt32Value w[10];
    AdsSource ads = ENVOY__CONFIG__CORE__V3__AGGREGATED_CONFIG_SOURCE__INIT;
    ConfigSource cs = ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__INIT;
    EdsClusterConfig eds = ENVOY__CONFIG__CLUSTER__V3__CLUSTER__EDS_CLUSTER_CONFIG__INIT;
    Cluster c = ENVOY__CONFIG__CLUSTER__V3__CLUSTER__INIT;

    cs.config_source_specifier_case =
        ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_ADS;
    cs.ads = &ads;
    eds.eds_config = &cs; /* service_name "": the assignment is named as the cluster */
    c.name = (char *)cluster;
    c.cluster_discovery_type_case =
        ENVOY__CONFIG__CLUSTER__V3__CLUSTER__CLUSTER_DISCOVERY_TYPE_TYPE;
    c.type = ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__EDS;
    c.eds_cluster_config = &eds;
    c.lb_policy = ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__ROUND_ROBIN;
    if (od && od->set) {
        duration(&interval, od->interval_ms);
        duration(&base, od->base_ejection_ms);
        duration(&max, od->max_ejection_ms);
        o.interval = &interval;
        o.base_ejection_time = &base;
        o.max_ejection_time = &max;
        o.max_ejection_percent = u32(&w[0], od->max_ejection_percent);
        o.enforcing_success_rate = u32(&w[1], od->success_rate ? od->sr_enforcement : 0);
        if (od->success_rate) {
            o.success_rate_minimum_hosts = u32(&w[2], od->sr_minimum_hosts);
            o.success_rate_request_volume = u32(&w[3], od->sr_request_volume);
            o.success_rate_stdev_factor = u32(&w[4], od->sr_stdev_factor);
        }
        if (od->failure_percentage) {
            o.failure_percentage_threshold = u32(&w[5], od->fp_threshold);
            o.enforcing_failure_percentage = u32(&w[6], od->fp_enforcement);
            o.failure_percentage_minimum_hosts = u32(&w[7], od->fp_minimum_hosts);
            o.failure_percentage_request_volume = u32(&w[8], od->fp_request_volume);
        }
        c.outlier_detection = &o;
    }
    return pack(&c.base, out);
}

static int by_weight(const void *x, const void *y)
{
    const struct xds_endpoint *a = *(const struct xds_endpoint *const *)x;
    const struct xds_endpoint *b = *(const struct xds_endpoint *const *)y;
    int r = (a->weight > b->weight) - (a->weight < b->weight);

    if (!r)
        r = strcmp(a->ip, b->ip);
    if (!r)
        r = (a->port > b->port) - (a->port < b->port);
    return r;
}

/* Localities by zone (docs/traffic.md): one per (rank, region, zone,
 * weight), at the priority the policy gives its rank. While one rank
 * takes all traffic, each rank is a priority of its own and gRPC's
 * priority policy fails over when a zone has no ready endpoint; while
 * traffic spills (the local zone thinned), the loaded ranks share
 * priority 0 with locality weights in proportion to their loads, since
 * gRPC does no overprovisioning of its own. */
static int by_locality(const void *x, const void *y)
{
    const struct xds_endpoint *a = *(const struct xds_endpoint *const *)x;
    const struct xds_endpoint *b = *(const struct xds_endpoint *const *)y;
    int r = (a->rank > b->rank) - (a->rank < b->rank);

    if (!r)
        r = strcmp(a->region ? a->region : "", b->region ? b->region : "");
    if (!r)
        r = strcmp(a->zone ? a->zone : "", b->zone ? b->zone : "");
    return r ? r : by_weight(x, y);
}

/* One endpoint of an EDS locality: e's IP and port, in the four messages
 * the caller owns (arrays of the assignment, so nothing is allocated). */
static LbEndpoint *endpoint_fill(LbEndpoint *lbe, Endpoint *ep, Address *addr, SocketAddress *sa,
                                 const struct xds_endpoint *e)
{
    envoy__config__endpoint__v3__lb_endpoint__init(lbe);
    envoy__config__endpoint__v3__endpoint__init(ep);
    envoy__config__core__v3__address__init(addr);
    envoy__config__core__v3__socket_address__init(sa);
    sa->address = (char *)e->ip;
    sa->port_specifier_case = ENVOY__CONFIG__CORE__V3__SOCKET_ADDRESS__PORT_SPECIFIER_PORT_VALUE;
    sa->port_value = e->port;
    addr->address_case = ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS;
    addr->socket_address = sa;
    ep->address = addr;
    lbe->host_identifier_case = ENVOY__CONFIG__ENDPOINT__V3__LB_ENDPOINT__HOST_IDENTIFIER_ENDPOINT;
    lbe->endpoint = ep;
    return lbe;
}

static bool same_locality(const struct xds_endpoint *a, const struct xds_endpoint *b)
{
    return a->rank == b->rank && a->weight == b->weight && str_same(a->region, b->region) &&
           str_same(a->zone, b->zone);
}

static int assignment_zoned(const struct xds_model *m, const char *cluster, const char *group,
                            struct xds_blob *out)
{
    size_t n = m->n_eps, k = 0, nl = 0;
    const struct xds_endpoint **sel = calloc(n ? n : 1, sizeof *sel);
    LbEndpoint *lbe = calloc(n ? n : 1, sizeof *lbe);
    LbEndpoint **lbep = calloc(n ? n : 1, sizeof *lbep);
    Endpoint *eps = calloc(n ? n : 1, sizeof *eps);
    Address *addrs = calloc(n ? n : 1, sizeof *addrs);
    SocketAddress *sa = calloc(n ? n : 1, sizeof *sa);
    LocalityLbEndpoints *loc = calloc(n ? n : 1, sizeof *loc);
    LocalityLbEndpoints **locp = calloc(n ? n : 1, sizeof *locp);
    Locality *lty = calloc(n ? n : 1, sizeof *lty);
    UInt32Value *lw = calloc(n ? n : 1, sizeof *lw);
    char(*sub)[32] = calloc(n ? n : 1, sizeof *sub);
    uint64_t *raw = calloc(n ? n : 1, sizeof *raw);
    uint8_t *lrank = calloc(n ? n : 1, 1), *ranks = calloc(n ? n : 1, 1);
    Assignment cla = ENVOY__CONFIG__ENDPOINT__V3__CLUSTER_LOAD_ASSIGNMENT__INIT;
    struct policy_plan plan = {0};
    double load[POLICY_RANKS], rank_raw[POLICY_RANKS] = {0};
    int prio[POLICY_RANKS], at0 = 0;
    int rc = DA_ENOMEM;

    if (!sel || !lbe || !lbep || !eps || !addrs || !sa || !loc || !locp || !lty || !lw || !sub ||
        !raw || !lrank || !ranks)
        goto out;
    for (size_t i = 0; i < n; i++)
        if (!group || !strcmp(m->eps[i].group, group))
            sel[k++] = &m->eps[i];
    qsort(sel, k, sizeof *sel, by_locality);
    /* The service's loads, applied to this cluster's endpoints (a group
     * may lack a rank: its share goes to the others). */
    for (size_t i = 0; i < k; i++)
        ranks[i] = sel[i]->rank;
    plan.n = k;
    plan.rank = ranks;
    memcpy(plan.load, m->load, sizeof plan.load);
    policy_plan_subset(&plan, NULL, load, prio);
    for (int r = 0; r < POLICY_RANKS; r++)
        at0 += prio[r] == 0;
    for (size_t i = 0; i < k; i++) {
        const struct xds_endpoint *e = sel[i];

        if (!i || !same_locality(sel[i - 1], e)) {
            LocalityLbEndpoints *l = &loc[nl];

            envoy__config__endpoint__v3__locality_lb_endpoints__init(l);
            envoy__config__core__v3__locality__init(&lty[nl]);
            google__protobuf__uint32_value__init(&lw[nl]);
            snprintf(sub[nl], sizeof sub[nl], "weight-%u", (unsigned)e->weight);
            lty[nl].region = e->region ? e->region : (char *)"";
            lty[nl].zone = e->zone ? e->zone : (char *)"";
            lty[nl].sub_zone = sub[nl];
            l->locality = &lty[nl];
            l->load_balancing_weight = &lw[nl];
            l->lb_endpoints = &lbep[i];
            l->priority = prio[e->rank] > 0 ? (uint32_t)prio[e->rank] : 0;
            lrank[nl] = e->rank;
            locp[nl++] = l;
        }
        lbep[i] = endpoint_fill(&lbe[i], &eps[i], &addrs[i], &sa[i], e);
        loc[nl - 1].n_lb_endpoints++;
        raw[nl - 1] += e->weight;
        rank_raw[e->rank] += e->weight;
    }
    for (size_t i = 0; i < nl; i++) {
        double w = (double)raw[i];
        /* Ranks sharing priority 0: a million split by load, then within
         * the rank by weight x endpoints. Elsewhere the plain weights,
         * capped so that a priority's sum fits a uint32. */
        if (at0 > 1 && prio[lrank[i]] == 0)
            w = 1e6 * load[lrank[i]] * raw[i] / rank_raw[lrank[i]];
        else if (rank_raw[lrank[i]] > 1e6)
            w = 1e6 * raw[i] / rank_raw[lrank[i]];
        lw[i].value = w >= 1 ? (uint32_t)(w + 0.5) : 1;
    }
    cla.cluster_name = (char *)cluster;
    cla.n_endpoints = nl;
    cla.endpoints = locp;
    rc = pack(&cla.base, out);
out:
    free(ranks);
    free(lrank);
    free(raw);
    free(sub);
    free(lw);
    free(lty);
    free(locp);
    free(loc);
    free(sa);
    free(addrs);
    free(eps);
    free(lbep);
    free(lbe);
    free(sel);
    return rc;
}

int xds_assignment(const struct xds_model *m, const char *cluster, struct xds_blob *out)
{
    const char *slash = strchr(cluster, '/');
    const char *group = slash ? slash + 1 : NULL;
    size_t n = m->n_eps, k = 0, nl = 0;
    const struct xds_endpoint **sel = calloc(n ? n : 1, sizeof *sel);
    LbEndpoint *lbe = calloc(n ? n : 1, sizeof *lbe);
    LbEndpoint **lbep = calloc(n ? n : 1, sizeof *lbep);
    Endpoint *eps = calloc(n ? n : 1, sizeof *eps);
    Address *addrs = calloc(n ? n : 1, sizeof *addrs);
    SocketAddress *sa = calloc(n ? n : 1, sizeof *sa);
    LocalityLbEndpoints *loc = calloc(n ? n : 1, sizeof *loc);
    LocalityLbEndpoints **locp = calloc(n ? n : 1, sizeof *locp);
    Locality *lty = calloc(n ? n : 1, sizeof *lty);
    UInt32Value *lw = calloc(n ? n : 1, sizeof *lw);
    char(*zone)[32] = calloc(n ? n : 1, sizeof *zone);
    uint64_t *raw = calloc(n ? n : 1, sizeof *raw);
    Assignment cla = ENVOY__CONFIG__ENDPOINT__V3__CLUSTER_LOAD_ASSIGNMENT__INIT;
    uint64_t total = 0;
    int rc = DA_ENOMEM;

    if (m->zoned) {
        rc = assignment_zoned(m, cluster, group, out);
        goto out;
    }
    if (!sel || !lbe || !lbep || !eps || !addrs || !sa || !loc || !locp || !lty || !lw || !zone ||
        !raw)
        goto out;
    for (size_t i = 0; i < n; i++)
        if (!group || !strcmp(m->eps[i].group, group))
            sel[k++] = &m->eps[i];
    /* Per-endpoint weights are ignored under ROUND_ROBIN, locality weights
     * are not: instances of equal weight share a locality whose weight is
     * that weight times their number. */
    qsort(sel, k, sizeof *sel, by_weight);
    for (size_t i = 0; i < k; i++) {
        const struct xds_endpoint *e = sel[i];

        if (!i || sel[i - 1]->weight != e->weight) {
            LocalityLbEndpoints *l = &loc[nl];

            envoy__config__endpoint__v3__locality_lb_endpoints__init(l);
            envoy__config__core__v3__locality__init(&lty[nl]);
            google__protobuf__uint32_value__init(&lw[nl]);
            /* Localities are told apart by name: one per weight. */
            snprintf(zone[nl], sizeof zone[nl], "weight-%u", (unsigned)e->weight);
            lty[nl].sub_zone = zone[nl];
            l->locality = &lty[nl];             /* required, even empty */
            l->load_balancing_weight = &lw[nl]; /* without it, dropped */
            l->lb_endpoints = &lbep[i];
            locp[nl++] = l;
        }
        lbep[i] = endpoint_fill(&lbe[i], &eps[i], &addrs[i], &sa[i], e);
        loc[nl - 1].n_lb_endpoints++;
        raw[nl - 1] += e->weight;
        total += e->weight;
    }
    /* The weights must fit in a uint32 (and their sum too): scale them
     * down, keeping every locality at 1 or more. */
    for (size_t i = 0; i < nl; i++) {
        uint64_t w = raw[i];
        if (total > UINT32_MAX)
            w = (uint64_t)((long double)raw[i] * ((long double)(UINT32_MAX - nl) / total));
        lw[i].value = w ? (uint32_t)w : 1;
    }
    cla.cluster_name = (char *)cluster;
    cla.n_endpoints = nl;
    cla.endpoints = locp;
    rc = pack(&cla.base, out);
out:
    free(raw);
    free(zone);
    free(lw);
    free(lty);
    free(locp);
    free(loc);
    free(sa);
    free(addrs);
    free(eps);
    free(lbep);
    free(lbe);
    free(sel);
    return rc;
}

int xds_resource(const struct xds_model *m, enum xds_type t, const char *name,
                 const char *group_header, struct xds_blob *out)
{
    const char *slash = strchr(name, '/');

    out->data = NULL;
    out->len = 0;
    switch (t) {
    case XDS_LDS:
        return slash ? 1 : xds_listener(name, out);
    case XDS_RDS:
        return slash ? 1 : xds_route(m, group_header, out);
    case XDS_CDS:
        return slash && !slash[1] ? 1 : xds_cluster_with(name, &m->outlier, out);
    case XDS_EDS:
        return slash && !slash[1] ? 1 : xds_assignment(m, name, out);
    default:
        return 1;
    }
}

int xds_response(enum xds_type t, const char *version, const char *nonce,
                 const struct xds_blob *res, size_t n, struct xds_blob *out)
{
    DiscoveryResponse r = ENVOY__SERVICE__DISCOVERY__V3__DISCOVERY_RESPONSE__INIT;
    Any *anys = calloc(n ? n : 1, sizeof *anys);
    Any **ap = calloc(n ? n : 1, sizeof *ap);
    int rc = DA_ENOMEM;

    if (anys && ap) {
        for (size_t i = 0; i < n; i++) {
            google__protobuf__any__init(&anys[i]);
            anys[i].type_url = (char *)xds_type_url[t];
            anys[i].value.len = res[i].len;
            anys[i].value.data = res[i].data;
            ap[i] = &anys[i];
        }
        r.version_info = (char *)version;
        r.n_resources = n;
        r.resources = ap;
        r.type_url = (char *)xds_type_url[t];
        r.nonce = (char *)nonce;
        rc = pack(&r.base, out);
    }
    free(ap);
    free(anys);
    return rc;
}

/* ---- requests ----------------------------------------------------------- */

static int dup_or_null(const char *s, char **out)
{
    *out = NULL;
    if (!s)
        return 0;
    *out = strdup(s);
    return *out ? 0 : DA_ENOMEM;
}

int xds_request_parse(const uint8_t *data, size_t len, struct xds_request *out)
{
    DiscoveryRequest *r = envoy__service__discovery__v3__discovery_request__unpack(NULL, len, data);
    int rc = 0;

    memset(out, 0, sizeof *out);
    if (!r)
        return DA_EPROTO;
    rc |= dup_or_null(r->version_info, &out->version_info);
    rc |= dup_or_null(r->type_url, &out->type_url);
    rc |= dup_or_null(r->response_nonce, &out->nonce);
    if (r->node) {
        rc |= dup_or_null(r->node->id, &out->node_id);
        rc |= dup_or_null(r->node->cluster, &out->node_cluster);
        rc |= dup_or_null(r->node->user_agent_name, &out->user_agent);
    }
    if (r->error_detail) {
        out->nack = true;
        out->error_code = r->error_detail->code;
        rc |= dup_or_null(r->error_detail->message ? r->error_detail->message : "",
                          &out->error_message);
    }
    if (r->n_resource_names) {
        out->names = calloc(r->n_resource_names, sizeof *out->names);
        if (!out->names)
            rc = DA_ENOMEM;
        for (size_t i = 0; out->names && i < r->n_resource_names; i++) {
            rc |= dup_or_null(r->resource_names[i], &out->names[i]);
            out->n_names++;
        }
    }
    envoy__service__discovery__v3__discovery_request__free_unpacked(r, NULL);
    if (rc) {
        xds_request_clear(out);
        return DA_ENOMEM;
    }
    return 0;
}

void xds_request_clear(struct xds_request *r)
{
    free(r->version_info);
    free(r->node_id);
    free(r->node_cluster);
    free(r->user_agent);
    for (size_t i = 0; r->names && i < r->n_names; i++)
        free(r->names[i]);
    free(r->names);
    free(r->type_url);
    free(r->nonce);
    free(r->error_message);
    memset(r, 0, sizeof *r);
}

int xds_request_encode(const struct xds_request *r, struct xds_blob *out)
{
    DiscoveryRequest q = ENVOY__SERVICE__DISCOVERY__V3__DISCOVERY_REQUEST__INIT;
    Envoy__Config__Core__V3__Node node = ENVOY__CONFIG__CORE__V3__NODE__INIT;
    Google__Rpc__Status st = GOOGLE__RPC__STATUS__INIT;

    q.version_info = r->version_info ? r->version_info : (char *)"";
    if (r->node_id) {
        node.id = r->node_id;
        node.cluster = r->node_cluster ? r->node_cluster : (char *)"";
        q.node = &node;
    }
    q.n_resource_names = r->n_names;
    q.resource_names = r->names;
    q.type_url = r->type_url ? r->type_url : (char *)"";
    q.response_nonce = r->nonce ? r->nonce : (char *)"";
    if (r->nack) {
        st.code = r->error_code;
        st.message = r->error_message ? r->error_message : (char *)"";
        q.error_detail = &st;
    }
    return pack(&q.base, out);
}

/* ---- JSON --------------------------------------------------------------- */

/* Every message that may sit in an Any we write or read. */
static const ProtobufCMessageDescriptor *any_desc(const char *url)
{
    static const ProtobufCMessageDescriptor *const known[] = {
        &envoy__config__listener__v3__listener__descriptor,
        &envoy__config__route__v3__route_configuration__descriptor,
        &envoy__config__cluster__v3__cluster__descriptor,
        &envoy__config__endpoint__v3__cluster_load_assignment__descriptor,
        &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor,
        &envoy__extensions__filters__http__router__v3__router__descriptor,
    };
    size_t plen = strlen(URL_PREFIX);

    if (!url || strncmp(url, URL_PREFIX, plen))
        return NULL;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (!strcmp(url + plen, known[i]->name))
            return known[i];
    return NULL;
}

static json_t *message_json(const ProtobufCMessage *m);

static json_t *any_json(const Any *a)
{
    const ProtobufCMessageDescriptor *d = any_desc(a->type_url);
    ProtobufCMessage *inner;
    json_t *o;

    if (!d || !(inner = protobuf_c_message_unpack(d, NULL, a->value.len, a->value.data))) {
        o = json_object();
        json_object_set_new(o, "@type", json_string(a->type_url ? a->type_url : ""));
        json_object_set_new(o, "value_bytes", json_integer((json_int_t)a->value.len));
        return o;
    }
    o = message_json(inner);
    protobuf_c_message_free_unpacked(inner, NULL);
    if (!o)
        return NULL;
    /* "@type" first, as the proto3 JSON mapping writes an Any. */
    json_t *w = json_pack("{s:s}", "@type", a->type_url);
    json_object_update(w, o);
    json_decref(o);
    return w;
}

static json_t *value_json(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return json_integer(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return json_integer(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return json_integer(*(const int64_t *)p);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return json_integer((json_int_t) * (const uint64_t *)p);
    case PROTOBUF_C_TYPE_FLOAT:
        return json_real(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return json_real(*(const double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        return json_boolean(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumValue *ev =
            protobuf_c_enum_descriptor_get_value(f->descriptor, *(const int *)p);
        return ev ? json_string(ev->name) : json_integer(*(const int *)p);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        json_t *j = json_string(s ? s : "");
        return j ? j : json_string("(not UTF-8)");
    }
    case PROTOBUF_C_TYPE_BYTES:
        return json_integer((json_int_t)((const ProtobufCBinaryData *)p)->len);
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
        if (!sub)
            return json_null();
        if (sub->descriptor == &google__protobuf__any__descriptor)
            return any_json((const Any *)sub);
        return message_json(sub);
    }
    }
    return json_null();
}

static size_t elem_size(const ProtobufCFieldDescriptor *f)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    default:
        return 4;
    }
}

/* Is a singular proto3 field at its default (and so not shown)? */
static bool is_default(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return !s || !*s;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(void *const *)p == NULL;
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len == 0;
    case PROTOBUF_C_TYPE_BOOL:
        return !*(const protobuf_c_boolean *)p;
    default: {
        static const uint8_t zero[8];
        return !memcmp(p, zero, elem_size(f));
    }
    }
}

/* Walks m by its descriptor, so that the JSON shows exactly what the bytes
 * hold: oneof members when their case is set (even at "", as a route's
 * prefix), other fields when not at their default. */
static json_t *message_json(const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    json_t *o = json_object();

    for (unsigned i = 0; o && i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *base = (const char *)m;
        const void *p = base + f->offset;
        json_t *v;

        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            const char *arr = *(const char *const *)p;
            if (!n)
                continue;
            v = json_array();
            for (size_t k = 0; v && k < n; k++)
                json_array_append_new(v, value_json(f, arr + k * elem_size(f)));
        } else if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            if (*(const uint32_t *)(base + f->quantifier_offset) != f->id)
                continue;
            v = value_json(f, p);
        } else {
            if (is_default(f, p))
                continue;
            v = value_json(f, p);
        }
        json_object_set_new(o, f->name, v);
    }
    return o;
}

json_t *xds_resource_json(enum xds_type t, const uint8_t *data, size_t len)
{
    ProtobufCMessage *m;
    json_t *o, *w;

    if ((unsigned)t >= XDS_NTYPES ||
        !(m = protobuf_c_message_unpack(type_desc[t], NULL, len, data)))
        return NULL;
    o = message_json(m);
    protobuf_c_message_free_unpacked(m, NULL);
    if (!o)
        return NULL;
    w = json_pack("{s:s}", "@type", xds_type_url[t]);
    json_object_update(w, o);
    json_decref(o);
    return w;
}

json_t *xds_response_json(const uint8_t *data, size_t len)
{
    DiscoveryResponse *r =
        envoy__service__discovery__v3__discovery_response__unpack(NULL, len, data);
    json_t *o;

    if (!r)
        return NULL;
    o = message_json(&r->base);
    envoy__service__discovery__v3__discovery_response__free_unpacked(r, NULL);
    return o;
}
