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
#define DA_DEFAULT_HTTP_MAX_CONNECTIONS 64u   /* per address */
#define DA_DEFAULT_HTTP_MAX_REQUEST 16384u    /* request line and headers */
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
