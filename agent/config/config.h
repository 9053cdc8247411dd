/* The agent's configuration: /etc/discovery-agent/agent.yaml and the YAML
 * files of the conf.d folder beside it, loaded into one struct config. See
 * conf/agent.yaml for every key with its meaning and default. */
#ifndef AGENT_CONFIG_H
#define AGENT_CONFIG_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "check_spec.h"
#include "policy.h"

/* A config file larger than this is refused rather than parsed. */
#define CONFIG_FILE_MAX (1024 * 1024)

/* Recommended size of the err buffer given to config_load(). */
#define CONFIG_ERR_MAX 1024

/* One metadata entry of a service; both strings owned by the config. */
struct config_meta {
    char *key;
    char *value;
};

/* A service instance this host serves. Every string is owned by the
 * config and is non-NULL. */
struct config_service {
    char *name;               /* non-empty; no '/', whitespace or control bytes */
    char *address;            /* host:port as written: IPv4, [IPv6] or a host name */
    int32_t weight;           /* as written, default 1; readers treat <= 0 as 1 */
    char *group;              /* default "" */
    struct config_meta *meta; /* in file order; keys are unique */
    size_t n_meta;
    char *file;       /* the file and 1-based position of the entry, */
    int line, column; /* for messages */
    /* check: how the agent decides the instance is healthy; type
     * CHECK_NONE (registered as soon as possible) when there is none.
     * Owned; defaults applied and validated at load. */
    struct check_spec check;
    int check_line, check_column;
};

/* The whole configuration. Every string is owned by the config; the ones
 * marked "NULL if unset" are optional, all others are always set. Relative
 * paths are kept as written and so are relative to the agent's working
 * directory. */
struct config {
    char *path;              /* the main file as given to config_load() */
    char **endpoints;        /* etcd.endpoints, at least one; http:// or */
    size_t n_endpoints;      /* https://, no trailing '/' */
    char *prefix;            /* etcd.prefix: a '/' first, none last */
    uint64_t timeout_ms;     /* etcd.timeout, per request; 1ms..1h */
    char *username;          /* etcd.username, NULL if unset */
    char *password_file;     /* etcd.password_file, NULL if unset */
    char *password;          /* that file's content less one trailing
                                 * newline; NULL if unset; wiped on free */
    char *tls_ca_file;       /* etcd.tls.ca_file, NULL if unset */
    char *tls_cert_file;     /* etcd.tls.cert_file, NULL if unset */
    char *tls_key_file;      /* etcd.tls.key_file, NULL if unset */
    uint64_t session_ttl_ms; /* session.ttl: whole seconds, >= 2s */
    char *socket_path;       /* socket.path; fits in sun_path */
    unsigned socket_mode;    /* socket.mode, <= 0777 */
    char *cache_dir;         /* cache.dir */
    uint64_t cache_idle_ms;  /* cache.idle: drop an unwatched service's
                                 * cache entry after this long; > 0 */
    int log_level;           /* log.level: 0 debug, 1 info, 2 warn,
                                 * 3 error; the logger owns the names */
    int log_format;          /* log.format: 0 text, 1 json; the logger
                                 * owns the names */
    /* http: the operators' listener (/metrics, /healthz, /readyz, the
     * status page); docs/operations.md. */
    bool http_enabled;             /* http.enabled, default true */
    char **http_listen;            /* http.listen: IP:port, at least one; */
    size_t n_http_listen;          /* default 127.0.0.1:8608 */
    unsigned http_max_connections; /* http.max_connections, per address */
    size_t http_max_request_bytes; /* http.max_request_bytes: request line
                                 * and headers */
    uint64_t http_timeout_ms;      /* http.timeout: idle connections close;
                                 * whole seconds */
    /* xds: the xDS (ADS) server for gRPC clients; see docs/xds.md. */
    bool xds_enabled;         /* xds.enabled, default true */
    char *xds_path;           /* xds.path; default xds.sock in the folder
                                 * of socket.path; fits in sun_path */
    unsigned xds_mode;        /* xds.mode, <= 0777; default socket.mode */
    char *xds_tcp;            /* xds.tcp: loopback host:port; NULL if
                                 * unset */
    char *xds_group_header;   /* xds.group_header: lower-case header
                                 * name, default "x-group" */
    uint64_t xds_idle_ms;     /* xds.idle: gRPC stops after this long
                                 * without an ADS stream; > 0, default 60s */
    bool xds_test_host_names; /* xds.test_send_host_names: TEST ONLY,
                                 * default false: endpoint host names are sent
                                 * unresolved, which clients NACK */
    /* dns: the DNS server; see docs/dns.md and dns_rules.h for defaults. */
    bool dns_enabled;  /* dns.enabled, default true */
    char **dns_listen; /* dns.listen: IP:port each (UDP and TCP),
                                 * 1..16, no repeats; default [127.0.0.1:8600] */
    size_t n_dns_listen;
    char *dns_domain;       /* dns.domain, default "disc" */
    uint32_t dns_ttl;       /* dns.ttl in whole seconds, <= 1 day;
                                 * default 0 */
    size_t dns_max_answers; /* dns.max_answers, 1..1000, default 16 */
    /* locality: (zone, region) and traffic: the traffic policy, as
     * policy.h defines it; docs/traffic.md. Owned. */
    struct policy_config traffic;
    char **dns_recursors; /* dns.recursors: IP[:port] each (port 53 if
                                 * none), 0..3, none a dns.listen address;
                                 * default none: outside names are REFUSED */
    size_t n_dns_recursors;
    struct config_service *services; /* main file's, then conf.d's */
    size_t n_services;
    bool checks_exec; /* checks.exec: allow exec checks; false */
    /* socket.register_users / register_groups: when either is given, only
     * peers with one of these uids, or in one of these groups, may change
     * registrations (register, deregister, drain, maint, check reports);
     * everyone who can connect may read. Resolved to ids at load. */
    bool register_limited;
    unsigned *register_uids, *register_gids;
    size_t n_register_uids, n_register_gids;
};

/* Loads path, then every conf.d/[!.]*.yaml in the folder that holds path,
 * in strcmp() order of their names; a missing conf.d is fine. Files in
 * conf.d may set only a top-level "services" sequence, which is appended to
 * the main file's. An empty file means all defaults.
 *
 * On success returns 0 and stores a new config in *out, which the caller
 * frees with config_free(). On failure stores NULL in *out, writes one
 * message "FILE:LINE:COLUMN: what is wrong" (or "FILE: reason" when the
 * file itself cannot be read) into err, truncated to errlen, and returns
 * DA_EINVAL for bad content, DA_EFBIG for a file over CONFIG_FILE_MAX,
 * DA_ENOMEM, or the negative errno of a main or conf.d file that cannot be
 * read (error.h). It never prints and never exits. path is borrowed; err may be NULL if errlen
 * is 0. */
int config_load(const char *path, struct config **out, char *err, size_t errlen);

/* Frees c and everything it owns, wiping the password first. Accepts NULL
 * and a half-built config; returns NULL so that "c = config_free(c)" works. */
struct config *config_free(struct config *c);

/* Returns the service entry with this name and address, borrowed from c,
 * or NULL if there is none. */
const struct config_service *config_find_service(const struct config *c, const char *name,
                                                 const char *address);

#endif
