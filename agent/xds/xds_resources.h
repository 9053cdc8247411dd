/* xds_resources: what the agent's xDS server says about one service, as
 * protobuf bytes (protobuf-c, from proto/xds/) and as JSON.
 *
 * Pure functions, no loop and no I/O: a service's instance list becomes a
 * model (endpoints as IP literals, de-duplicated, with their weights and
 * groups), and the model becomes the four resources a gRPC client needs
 * for xds:///NAME (see docs/xds.md for the mapping):
 *
 *   Listener NAME              -> HttpConnectionManager, routes by RDS
 *   RouteConfiguration NAME    -> header <group_header>: G => cluster NAME/G
 *                                 (one route per group), then "" => NAME
 *   Cluster NAME, NAME/G       -> EDS over ADS, ROUND_ROBIN
 *   ClusterLoadAssignment      -> one locality per weight, locality weight
 *                                 = weight x endpoints; with a zone
 *                                 (locality.zone), one per zone and weight,
 *                                 at the priority the policy gives its
 *                                 rank (policy.h, docs/traffic.md)
 *
 * Ownership: every out parameter is new and owned by the caller, freed
 * with the matching _clear/_free; every input is borrowed for the call. */
#ifndef DA_XDS_RESOURCES_H
#define DA_XDS_RESOURCES_H

#include <jansson.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "instance.h"
#include "policy.h"

/* The resource types of the ADS stream, in the order a client needs them. */
enum xds_type { XDS_LDS, XDS_RDS, XDS_CDS, XDS_EDS, XDS_NTYPES };

/* "type.googleapis.com/envoy.config.listener.v3.Listener" and so on. */
extern const char *const xds_type_url[XDS_NTYPES];
/* "listeners", "routes", "clusters", "endpoints": for status and logs. */
extern const char *const xds_type_name[XDS_NTYPES];
/* The type of a type URL, or -1. */
int xds_type_of(const char *type_url);

/* A byte string; data is malloc()ed (NULL when len is 0). */
struct xds_blob {
    uint8_t *data;
    size_t len;
};
void xds_blob_clear(struct xds_blob *b);
bool xds_blob_equal(const struct xds_blob *a, const struct xds_blob *b);

/* ---- the model ---------------------------------------------------------- */

/* A host name (at most 253 bytes) or an IP literal, with its NUL. */
#define XDS_HOST_MAX 256

struct xds_endpoint {
    char ip[XDS_HOST_MAX]; /* canonical IP literal, no brackets (a host
                                * name only under test_send_host_names) */
    uint16_t port;
    uint32_t weight;     /* >= 1 */
    char *group;         /* "" when none */
    size_t index;        /* the instance's index in the list built from */
    uint8_t rank;        /* policy rank (xds_model_set_policy) */
    char *zone, *region; /* its Metadata's, "" when none */
};

/* An instance that is not sent, and why. */
struct xds_dropped {
    char *address;
    const char *reason; /* static text */
};

struct xds_model {
    char *name;
    struct xds_endpoint *eps; /* sorted by (ip, port), unique */
    size_t n_eps;
    char **groups; /* distinct non-empty groups, sorted */
    size_t n_groups;
    struct xds_dropped *dropped;
    size_t n_dropped;
    bool uses_names; /* some address had a host name */
    /* The traffic policy (xds_model_set_policy): zoned, the service's
     * loads per rank; outlier.set when the cluster carries one. */
    bool zoned;
    double load[POLICY_RANKS];
    struct policy_outlier outlier;
};

/* Looks up a host name: 1 with ip filled in, 0 while it is being looked up
 * (the caller learns when it is done), -1 when it does not resolve. */
typedef int (*xds_lookup_fn)(const char *host, char ip[INET6_ADDRSTRLEN], void *arg);

/* Builds m from instances v (n of them, as the cache gives them). Host
 * names go through lookup; lookup NULL sends them as written (the test-only
 * switch xds.test_send_host_names, which clients NACK). Returns 0, 1 when
 * some lookup is still running (m is then cleared: try again later), or
 * DA_ENOMEM. */
int xds_model_build(struct xds_model *m, const char *name, const struct instance *const *v,
                    size_t n, xds_lookup_fn lookup, void *arg);
void xds_model_clear(struct xds_model *m);
/* Adds the traffic policy to m, built from the same v (n instances) and
 * plan = service_plan() of that list: each endpoint's rank, zone and
 * region, the loads, and the outlier detection od (NULL: none). 0 or
 * DA_ENOMEM. */
int xds_model_set_policy(struct xds_model *m, const struct instance *const *v, size_t n,
                         const struct policy_plan *plan, const struct policy_outlier *od);
/* Same endpoints, weights and groups (dropped instances are not compared). */
bool xds_model_equal(const struct xds_model *a, const struct xds_model *b);

/* ---- resources ---------------------------------------------------------- */

/* Each writes one resource's message (not wrapped in an Any) into out.
 * Return 0 or DA_ENOMEM. */
int xds_listener(const char *name, struct xds_blob *out);
int xds_route(const struct xds_model *m, const char *group_header, struct xds_blob *out);
int xds_cluster(const char *cluster, struct xds_blob *out);
/* The same with gRPC A50's outlier detection (od NULL or unset: none). */
int xds_cluster_with(const char *cluster, const struct policy_outlier *od, struct xds_blob *out);
/* The assignment of cluster "NAME" (every endpoint) or "NAME/G" (group G's
 * endpoints; none if G has none). */
int xds_assignment(const struct xds_model *m, const char *cluster, struct xds_blob *out);

/* The resource of type t called name, built from m (whose name is the
 * part of name before any '/'): 0, 1 when there is no such resource (a
 * listener or route name with a '/', an empty group), or DA_ENOMEM. */
int xds_resource(const struct xds_model *m, enum xds_type t, const char *name,
                 const char *group_header, struct xds_blob *out);

/* A DiscoveryResponse carrying resources res (n messages of type t, each
 * wrapped in an Any here). */
int xds_response(enum xds_type t, const char *version, const char *nonce,
                 const struct xds_blob *res, size_t n, struct xds_blob *out);

/* A DiscoveryRequest, decoded. Strings are new. */
struct xds_request {
    char *version_info;
    char *node_id, *node_cluster, *user_agent; /* NULL when no node */
    char **names;
    size_t n_names;
    char *type_url;
    char *nonce;
    bool nack;
    int error_code;
    char *error_message; /* NULL unless nack */
};
/* 0, DA_EPROTO (not a DiscoveryRequest) or DA_ENOMEM. */
int xds_request_parse(const uint8_t *data, size_t len, struct xds_request *out);
void xds_request_clear(struct xds_request *r);
/* Encodes a request (for tests and tools). */
int xds_request_encode(const struct xds_request *r, struct xds_blob *out);

/* ---- JSON --------------------------------------------------------------- */

/* A resource of type t as JSON, field by field as our .proto files name
 * them, with {"@type": URL, ...} for every Any (new reference; NULL if the
 * bytes do not decode). */
json_t *xds_resource_json(enum xds_type t, const uint8_t *data, size_t len);
/* A DiscoveryResponse as JSON, resources decoded (for tests and tools). */
json_t *xds_response_json(const uint8_t *data, size_t len);

#endif
