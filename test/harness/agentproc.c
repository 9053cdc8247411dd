#include "agentproc.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#ifndef BUILD_DIR
#define BUILD_DIR "build"
#endif

int agentp_config(struct agentp *a, const char *dir, const char *endpoints, int ttl_s,
                  int timeout_ms, const char *extra_yaml)
{
    return agentp_config_idle(a, dir, endpoints, ttl_s, timeout_ms, "10m", extra_yaml);
}

/* Test agents answer no DNS unless the test gives a dns: section: they
 * would all want 127.0.0.1:8600 (and a developer's own agent holds it). */
const char *agentp_dns_off(const char *extra_yaml)
{
    if (extra_yaml && (!strncmp(extra_yaml, "dns:", 4) || strstr(extra_yaml, "\ndns:")))
        return "";
    return "dns:\n  enabled: false\n";
}

/* Likewise HTTP: they would all want 127.0.0.1:8608. */
const char *agentp_http_off(const char *extra_yaml)
{
    if (extra_yaml && (!strncmp(extra_yaml, "http:", 5) || strstr(extra_yaml, "\nhttp:")))
        return "";
    return "http:\n  enabled: false\n";
}

int agentp_config_idle(struct agentp *a, const char *dir, const char *endpoints, int ttl_s,
                       int timeout_ms, const char *idle, const char *extra_yaml)
{
    FILE *f;
    char eps[2048];
    size_t o = 0;

    struct proc *running = a->p; /* rewriting the config of a live agent */

    memset(a, 0, sizeof *a);
    a->p = running;
    snprintf(a->dir, sizeof a->dir, "%s", dir);
    snprintf(a->conf, sizeof a->conf, "%s/agent.yaml", dir);
    snprintf(a->sock, sizeof a->sock, "%s/agent.sock", dir);
    snprintf(a->log, sizeof a->log, "%s/agent.log", dir);
    snprintf(a->cache, sizeof a->cache, "%s/cache", dir);
    /* "a,b" -> "[a, b]" */
    for (const char *p = endpoints; *p && o + 3 < sizeof eps; p++) {
        if (*p == ',') {
            eps[o++] = ',';
            eps[o++] = ' ';
        } else {
            eps[o++] = *p;
        }
    }
    eps[o] = '\0';
    f = fopen(a->conf, "w");
    if (!f)
        return -errno;
    fprintf(f,
            "etcd:\n  endpoints: [%s]\n  timeout: %dms\n"
            "session:\n  ttl: %ds\n"
            "socket:\n  path: %s\n"
            "cache:\n  dir: %s\n  idle: %s\n"
            "log:\n  level: debug\n%s%s%s",
            eps, timeout_ms, ttl_s, a->sock, a->cache, idle, extra_yaml ? extra_yaml : "",
            agentp_dns_off(extra_yaml), agentp_http_off(extra_yaml));
    fclose(f);
    return 0;
}

int agentp_spawn(struct agentp *a)
{
    return agentp_spawn_env(a, NULL);
}

int agentp_spawn_env(struct agentp *a, const char *const env[])
{
    const char *argv[] = {BUILD_DIR "/discovery-agent", "-c", a->conf, NULL};
    char nofile[64];
    /* prlimit(1) execs the agent, so the pid is the agent's. */
    const char *limited[] = {"prlimit", nofile, BUILD_DIR "/discovery-agent", "-c", a->conf, NULL};

    snprintf(nofile, sizeof nofile, "--nofile=%ld:%ld", a->nofile, a->nofile);
    a->p = proc_spawn(a->nofile > 0 ? limited : argv, env, a->log);
    return a->p ? 0 : -1;
}

static void tail_log(const struct agentp *a)
{
    char cmd[700];

    snprintf(cmd, sizeof cmd, "tail -n 30 '%s' >&2", a->log);
    if (system(cmd) < 0)
        fprintf(stderr, "cannot show %s\n", a->log);
}

int agentp_start(struct agentp *a)
{
    if (agentp_spawn(a) < 0)
        return -1;
    for (int i = 0; i < 200; i++) {
        json_t *r = agent_call(a->sock, "{\"op\":\"ping\"}", 500);
        if (r) {
            json_decref(r);
            return 0;
        }
        if (!proc_alive(a->p))
            break;
        usleep(50000);
    }
    fprintf(stderr, "agent did not come up; its log:\n");
    tail_log(a);
    return -1;
}

int agentp_stop(struct agentp *a, int timeout_ms)
{
    int status;

    if (!a->p)
        return -ESRCH;
    proc_signal(a->p, SIGTERM);
    if (proc_wait(a->p, timeout_ms, &status) < 0)
        return -ETIMEDOUT;
    return status;
}

int agentp_free(struct agentp *a)
{
    static const char *const reports[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                                          "runtime error:", NULL};
    int found = 0;

    a->p = proc_free(a->p);
    /* The agent's own sanitizer reports go to its log, not to the test. */
    for (int i = 0; reports[i]; i++)
        if (agentp_log_has(a, reports[i])) {
            fprintf(stderr, "sanitizer report in %s:\n", a->log);
            tail_log(a);
            found++;
        }
    return found;
}

int agentp_log_has(const struct agentp *a, const char *text)
{
    FILE *f = fopen(a->log, "r");
    char line[4096];
    int found = 0;

    if (!f)
        return 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, text) != NULL;
    fclose(f);
    return found;
}

int sock_open(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int sock_send(int fd, const char *line)
{
    size_t len = strlen(line), off = 0;
    char *buf = malloc(len + 1);

    if (!buf)
        return -1;
    memcpy(buf, line, len);
    buf[len++] = '\n';
    while (off < len) {
        ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            free(buf);
            return -1;
        }
        off += (size_t)w;
    }
    free(buf);
    return 0;
}

/* Reads byte by byte: slow, but simple and never reads past a line. */
json_t *sock_recv(int fd, int timeout_ms)
{
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    long long deadline = now_ms() + timeout_ms;
    json_t *o = NULL;

    if (!buf)
        return NULL;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        long long left = deadline - now_ms();
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            break;
        char ch;
        ssize_t r = read(fd, &ch, 1);
        if (r <= 0)
            break;
        if (ch == '\n') {
            o = json_loadb(buf, len, 0, NULL);
            break;
        }
        if (len + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
        buf[len++] = ch;
    }
    free(buf);
    return o;
}

json_t *sock_call(int fd, const char *req, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;

    if (sock_send(fd, req) < 0)
        return NULL;
    for (;;) {
        long long left = deadline - now_ms();
        json_t *o = left > 0 ? sock_recv(fd, (int)left) : NULL;
        if (!o || !json_object_get(o, "event"))
            return o;
        json_decref(o);
    }
}

json_t *agent_call(const char *path, const char *req, int timeout_ms)
{
    int fd = sock_open(path);
    json_t *o;

    if (fd < 0)
        return NULL;
    o = sock_call(fd, req, timeout_ms);
    close(fd);
    return o;
}

const char *list_addresses(json_t *o, char *buf, size_t len)
{
    json_t *arr = json_object_get(o, "instances"), *e;
    size_t i, off = 0;

    buf[0] = '\0';
    json_array_foreach(arr, i, e) {
        const char *addr = json_string_value(json_object_get(e, "address"));
        off += (size_t)snprintf(buf + off, off < len ? len - off : 0, "%s%s", i ? "," : "",
                                addr ? addr : "?");
    }
    return buf;
}
