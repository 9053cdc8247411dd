/* Every default of the daemon and agentctl, in one place: what the agent
 * does when the configuration does not say (conf/agent.yaml and
 * discovery-agent.yaml(5) document each), and the fixed paths of DESIGN.md.
 * Limits that are rules rather than defaults live with their rule
 * (validate.h, check_spec.h, config_internal.h).
 *
 * Two values are the socket protocol's and are shared with libdiscovery,
 * which cannot include agent headers: the default socket path and the
 * longest request line. Their home is the library's public header
 * (discovery.h: DISC_DEFAULT_SOCKET, DISC_MAX_REQUEST_LINE), which the
 * agent may include; they are named here so that the agent's code reads
 * them from this one header.
 *
 * The version's home is the file VERSION (the build passes it as
 * DA_VERSION). */
#ifndef DA_DEFAULTS_H
#define DA_DEFAULTS_H

#include <stdbool.h>

#include <discovery/discovery.h>

/* ---- files ------------------------------------------------------------------ */

/* The configuration, unless -c FILE (conf.d/ is looked for beside it). */
#define DA_DEFAULT_CONFIG "/etc/discovery-agent/agent.yaml"

/* ---- etcd: --------------------------------------------------------------- */

#define DA_DEFAULT_ETCD_ENDPOINT "http://127.0.0.1:2379"
#define DA_DEFAULT_ETCD_PREFIX "/micro"
#define DA_DEFAULT_ETCD_TIMEOUT_MS 5000u /* per request */

/* ---- session: -------------------------------------------------------------- */

#define DA_DEFAULT_SESSION_TTL_MS 10000u /* the lease's TTL */

/* ---- socket: ---------------------------------------------------------------- */

#define DA_DEFAULT_SOCKET_PATH DISC_DEFAULT_SOCKET
#define DA_DEFAULT_SOCKET_MODE 0660u
/* A request line longer than this gets an error and a close. */
#define DA_SOCKET_MAX_LINE DISC_MAX_REQUEST_LINE

/* ---- cache: ----------------------------------------------------------------- */

#define DA_DEFAULT_CACHE_DIR "/var/lib/discovery-agent"
/* An unwatched service's list is dropped after this long. */
#define DA_DEFAULT_CACHE_IDLE_MS (10u * 60u * 1000u)

/* ---- log: ------------------------------------------------------------------- */

/* info: the index in the loader's log levels (debug, info, warn, error). */
#define DA_DEFAULT_LOG_LEVEL 1

/* text: the index in the loader's log formats (text, json). */
#define DA_DEFAULT_LOG_FORMAT 0

/* ---- http: ------------------------------------------------------------------ */

#define DA_DEFAULT_HTTP_ENABLED true
/* Loopback only. Port 8608: beside the agent's DNS port (8600) and outside
 * 9100-9999, where Prometheus exporters take theirs (node 9100, CoreDNS
 * 9153, ...); Consul (8300-8302, 8500-8503, 8600), Nomad (4646-4648),
 * Vault (8200-8201) and Istio's agent (15000-15090) use none of it. */
#define DA_DEFAULT_HTTP_LISTEN "127.0.0.1:8608"
#define DA_DEFAULT_HTTP_MAX_CONNECTIONS 64u      /* per address */
#define DA_DEFAULT_HTTP_MAX_REQUEST 16384u       /* request line and headers */
#define DA_DEFAULT_HTTP_TIMEOUT_MS (10u * 1000u) /* an idle connection closes */

/* ---- xds: ------------------------------------------------------------------- */

#define DA_DEFAULT_XDS_ENABLED true
/* The xDS socket's name in the folder of socket.path, unless xds.path: with
 * the default socket.path, /run/discovery-agent/xds.sock. Its mode is
 * socket.mode's unless xds.mode. */
#define DA_DEFAULT_XDS_SOCKET_NAME "xds.sock"
#define DA_DEFAULT_XDS_GROUP_HEADER "x-group"
/* gRPC stops after this long without an ADS stream. */
#define DA_DEFAULT_XDS_IDLE_MS (60u * 1000u)

/* ---- locality: and traffic: (policy.h, docs/traffic.md) ------------------- */

/* Envoy's overprovisioning factor: a rank keeps all its traffic until
 * fewer than 1/1.4 (71%) of its recent size remain. */
#define DA_DEFAULT_TRAFFIC_OVERPROVISIONING 1.4
/* A rank's largest size is remembered this long: a zone scaled down for
 * good stops spilling traffic after it. */
#define DA_DEFAULT_TRAFFIC_SIZE_WINDOW_MS (10u * 60u * 1000u)
/* Protection: a change that removes more than half of a service's
 * instances within 10 s (one default lease TTL: leases cut off together
 * expire within it) is held for 30 s (three TTLs: a wiped etcd or a healed
 * partition has every live server registered again well within it). A
 * zone of three lost (a third) or a rolling restart applies at once. */
#define DA_DEFAULT_PROTECTION_ENABLED true
#define DA_DEFAULT_PROTECTION_MAX_DROP 0.5
#define DA_DEFAULT_PROTECTION_HOLD_MS 30000u
#define DA_DEFAULT_PROTECTION_WINDOW_MS 10000u
/* Services of one or two instances are not guarded: all of them leaving
 * is what a scale-down or redeploy of a small service looks like. */
#define DA_DEFAULT_PROTECTION_MIN_INSTANCES 3u
/* gRPC A50's defaults for an outlier_detection that leaves them out. */
#define DA_DEFAULT_OUTLIER_INTERVAL_MS 10000u
#define DA_DEFAULT_OUTLIER_BASE_EJECTION_MS 30000u
#define DA_DEFAULT_OUTLIER_MAX_EJECTION_MS 300000u
#define DA_DEFAULT_OUTLIER_MAX_EJECTION_PERCENT 10u
#define DA_DEFAULT_OUTLIER_SR_STDEV_FACTOR 1900u
#define DA_DEFAULT_OUTLIER_SR_ENFORCEMENT 100u
#define DA_DEFAULT_OUTLIER_SR_MINIMUM_HOSTS 5u
#define DA_DEFAULT_OUTLIER_SR_REQUEST_VOLUME 100u
#define DA_DEFAULT_OUTLIER_FP_THRESHOLD 85u
#define DA_DEFAULT_OUTLIER_FP_ENFORCEMENT 100u
#define DA_DEFAULT_OUTLIER_FP_MINIMUM_HOSTS 5u
#define DA_DEFAULT_OUTLIER_FP_REQUEST_VOLUME 50u

/* ---- checks: and a service's check: ------------------------------------------ */

#define DA_DEFAULT_CHECKS_EXEC false
#define DA_DEFAULT_CHECK_INTERVAL_MS 10000
/* 2 s, or half the interval when that is shorter (check_spec_normalize). */
#define DA_DEFAULT_CHECK_TIMEOUT_MS 2000
#define DA_DEFAULT_CHECK_RISE 2
#define DA_DEFAULT_CHECK_FALL 3

/* ---- agentctl --------------------------------------------------------------- */

/* How long agentctl waits for the agent's reply, unless --timeout. */
#define DA_DEFAULT_CTL_TIMEOUT_MS 30000

#endif
