/* agentproc: a real discovery-agent process for integration tests, with its
 * config, socket and cache in a folder of the test's, and a small blocking
 * client of its socket (one JSON line out, lines back, with timeouts). */
#ifndef HARNESS_AGENTPROC_H
#define HARNESS_AGENTPROC_H

#include <jansson.h>
#include <stddef.h>

#include "proc.h"

struct agentp {
    struct proc *p;
    char dir[512];
    char conf[600];
    char sock[600];
    char log[600];
    char cache[600];
    long nofile; /* > 0: the agent starts with RLIMIT_NOFILE (soft and hard) at this,
                  * through prlimit(1); set it after agentp_config() */
};

/* Writes DIR/agent.yaml: etcd endpoints (comma-separated), ttl in seconds,
 * timeout in ms, then extra YAML appended as is (a "services:" block, say).
 * dir must exist. 0 or -errno. */
int agentp_config(struct agentp *a, const char *dir, const char *endpoints, int ttl_s,
                  int timeout_ms, const char *extra_yaml);

/* "dns:\n  enabled: false\n" unless extra_yaml has a top-level dns:
 * section (then ""): what agentp_config() appends, for tests and
 * benchmarks that write their own agent configs. */
const char *agentp_dns_off(const char *extra_yaml);
/* The same for http: ("http:\n  enabled: false\n" or ""). */
const char *agentp_http_off(const char *extra_yaml);

/* The same with cache.idle set (a duration such as "1s"). */
int agentp_config_idle(struct agentp *a, const char *dir, const char *endpoints, int ttl_s,
                       int timeout_ms, const char *idle, const char *extra_yaml);

/* Starts build/discovery-agent on a->conf and waits (up to 10 s) until its
 * socket answers a ping. 0, or -1 with the log's tail on stderr. */
int agentp_start(struct agentp *a);
/* Starts without waiting for the socket (for agents expected to fail). */
int agentp_spawn(struct agentp *a);
/* With environment additions ("NAME=value", NULL-terminated). */
int agentp_spawn_env(struct agentp *a, const char *const env[]);
/* SIGTERM and wait up to timeout_ms; returns the raw wait status or -errno. */
int agentp_stop(struct agentp *a, int timeout_ms);
/* SIGKILL if alive; returns how many kinds of sanitizer report (ASan,
 * LSan, UBSan) the agent's log holds, so that tests can assert 0. */
int agentp_free(struct agentp *a);
/* 1 if the log contains text. */
int agentp_log_has(const struct agentp *a, const char *text);

/* Socket client: connect to path, -1 on failure. */
int sock_open(const char *path);
int sock_send(int fd, const char *line); /* appends '\n'; 0 or -1 */
/* Reads one line (without '\n') within timeout_ms: parsed JSON, or NULL. */
json_t *sock_recv(int fd, int timeout_ms);
/* Sends req and returns the first line that is not an update line. */
json_t *sock_call(int fd, const char *req, int timeout_ms);
/* One-shot: open, call, close. */
json_t *agent_call(const char *path, const char *req, int timeout_ms);

/* From a resolve/update object: "addr1,addr2,..." of its instances in order
 * (into buf), or "" for none. */
const char *list_addresses(json_t *o, char *buf, size_t len);

#endif
