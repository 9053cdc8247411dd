/* Starting, reloading and stopping the daemon's parts in the right order.
 *
 * Start: HTTP client, etcd client, cache, session, health checks, registry,
 * xDS server, then the socket listens, then the xDS server does (so that a
 * second agent is told about the socket first), then the DNS server, then the configured
 * instances are added and the session asks for its lease. READY=1 once the
 * socket listens and every configured instance is written (or, if etcd
 * does not answer, after twice the request timeout, so that a host whose
 * etcd is down still gets its cached lists served).
 * Stop: close the socket, the xDS server and the DNS server first (their clients keep
 * their last lists, rather than see our own deregistrations), then delete
 * our keys and revoke the lease (bounded by a timer; a second signal stops
 * waiting), then free the rest from a fresh loop turn. */
#include "agent.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "listen_fds.h"
#include "log.h"
#include "notify.h"

static int meta_cmp(const void *a, const void *b)
{
    return strcmp(((const struct instance_meta *)a)->key, ((const struct instance_meta *)b)->key);
}

/* A configured service as an instance (borrowing the strings). */
static int instance_of(const struct config_service *s, struct instance *out,
                       struct instance_meta *meta)
{
    memset(out, 0, sizeof *out);
    out->name = s->name;
    out->address = s->address;
    out->weight = s->weight;
    out->group = s->group ? s->group : (char *)"";
    for (size_t k = 0; k < s->n_meta; k++) {
        meta[k].key = s->meta[k].key;
        meta[k].value = s->meta[k].value;
    }
    qsort(meta, s->n_meta, sizeof *meta, meta_cmp);
    out->meta = meta;
    out->n_meta = s->n_meta;
    return 0;
}

static void add_configured(struct agent *a, const struct config_service *s)
{
    struct instance inst;
    struct instance_meta *meta = calloc(s->n_meta ? s->n_meta : 1, sizeof *meta);
    char err[256];
    int rc;

    if (!meta) {
        log_error("agent: out of memory registering %s %s", s->name, s->address);
        return;
    }
    instance_of(s, &inst, meta);
    rc = registry_add(a->registry, &inst, REG_OWNER_CONFIG, 0, &s->check, NULL, NULL, err,
                      sizeof err);
    if (rc)
        log_error("agent: cannot register %s %s: %s", s->name, s->address, err);
    free(meta);
}

static void finish(struct agent *a);

/* The protocol sees the parts it answers from and a few configuration
 * values, not the agent (protocol.h). */
/* The socket systemd passed for one of our listeners (listen_fds.h), or 0
 * to make it ourselves. */
static int passed_socket(const char *name, const char *path)
{
    int fd = listen_fds_take(name, path);

    if (fd == -ENOTSOCK)
        log_warn("agent: the descriptor systemd passed for %s is not a listening unix stream "
                 "socket; making %s instead",
                 name, path);
    if (fd < 0)
        return 0;
    log_info("agent: %s: the socket systemd passed (socket activation)", path);
    return fd;
}

static int proto_start(struct agent *a)
{
    const struct config *cfg = a->cfg;
    struct proto_deps d = {
        .loop = a->loop,
        .cache = a->cache,
        .registry = a->registry,
        .etcd = a->etcd,
        .xds = a->xds,
        .prefix = cfg->prefix,
        .timeout_ms = cfg->timeout_ms,
        .checks_exec = cfg->checks_exec,
        .access = {cfg->register_limited, cfg->register_uids, cfg->n_register_uids,
                   cfg->register_gids, cfg->n_register_gids},
        .status = {a->session, cfg->path, (const char *const *)cfg->endpoints, cfg->n_endpoints,
                   a->started, a->dns, &cfg->traffic},
    };

    return proto_new(&a->proto, &d);
}

/* ---- readiness and watchdog --------------------------------------------- */

static void ready_check(uv_timer_t *t)
{
    struct agent *a = t->data;
    bool settled = registry_settled(a->registry);
    uint64_t waited = uv_now(a->loop) - a->started;

    if (a->ready || a->stopping) {
        uv_timer_stop(t);
        return;
    }
    if (!settled && waited < 2 * a->cfg->timeout_ms)
        return;
    a->ready = true;
    uv_timer_stop(t);
    if (settled) {
        notify_send("READY=1\nSTATUS=registered; serving on the socket");
        log_info("agent: ready: %zu instance(s) registered, socket %s", registry_count(a->registry),
                 a->cfg->socket_path);
    } else {
        notify_send("READY=1\nSTATUS=etcd not answering; serving cached lists");
        log_warn("agent: etcd has not answered for %llu ms; serving cached lists and retrying",
                 (unsigned long long)waited);
    }
}

static void watchdog_beat(uv_timer_t *t)
{
    (void)t;
    notify_send("WATCHDOG=1");
}

/* /readyz: ready with the session held and every configured instance
 * written; ready too once the agent has stopped waiting for an etcd that
 * does not answer (ready_check), because it then serves its cached lists
 * to local clients, which is what it is for: the body says which. */
static bool web_ready(void *arg, char *why, size_t len)
{
    struct agent *a = arg;

    if (a->stopping) {
        snprintf(why, len, "stopping");
        return false;
    }
    if (session_lease(a->session) && registry_settled(a->registry)) {
        snprintf(why, len, "session lease held; %zu instance(s) registered",
                 registry_count(a->registry));
        return true;
    }
    if (a->ready && !etcd_client_connected(a->etcd)) {
        snprintf(why, len, "serving cached lists; etcd unreachable (%s)",
                 etcd_client_last_error(a->etcd));
        return true;
    }
    snprintf(why, len, "%s",
             !session_lease(a->session) ? "waiting for the etcd session lease"
                                        : "writing the configured instances to etcd");
    return false;
}

static int web_start_agent(struct agent *a, char *err, size_t errlen)
{
    const struct config *cfg = a->cfg;
    struct web_options o = {
        .listen = (const char *const *)cfg->http_listen,
        .n_listen = cfg->n_http_listen,
        .max_connections = cfg->http_max_connections,
        .max_request_bytes = cfg->http_max_request_bytes,
        .timeout_s = (unsigned)(cfg->http_timeout_ms / 1000),
    };
    struct web_deps d = {
        .loop = a->loop,
        .cache = a->cache,
        .registry = a->registry,
        .session = a->session,
        .etcd = a->etcd,
        .xds = a->xds,
        .proto = a->proto,
        .server = a->server,
        .dns = a->dns,
        .ready = web_ready,
        .ready_arg = a,
    };

    if (!cfg->http_enabled)
        return 0;
    return web_start(&a->web, &o, &d, err, errlen);
}

/* ---- lease -------------------------------------------------------------- */

static void on_lease(session *s, int64_t lease, void *arg)
{
    struct agent *a = arg;

    (void)s;
    registry_set_lease(a->registry, lease);
}

/* ---- signals ------------------------------------------------------------ */

static void on_signal(uv_signal_t *h, int signum)
{
    struct agent *a = h->data;

    if (signum == SIGHUP) {
        agent_reload(a);
        return;
    }
    log_info("agent: %s received; deregistering and stopping", strsignal(signum));
    agent_stop(a);
}

/* ---- start -------------------------------------------------------------- */

int agent_start(struct agent *a, uv_loop_t *loop, struct config *cfg, char *err, size_t errlen)
{
    struct etcd_options eo = {0};
    struct cache_options co = {0};
    struct server_options so = {0};
    struct xds_options xo = {0};
    struct server_callbacks cb = {proto_on_line, proto_on_close, proto_on_eof};
    int rc;

    memset(a, 0, sizeof *a);
    a->loop = loop;
    a->cfg = cfg;
    a->started = uv_now(loop);
    log_level = cfg->log_level;
    log_json = cfg->log_format == 1;

    if ((rc = http_client_new(&a->http, loop)) < 0)
        goto fail;
    eo.endpoints = (const char *const *)cfg->endpoints;
    eo.n_endpoints = cfg->n_endpoints;
    eo.timeout_ms = (long)cfg->timeout_ms;
    eo.username = cfg->username;
    eo.password = cfg->password;
    eo.tls.ca_file = cfg->tls_ca_file;
    eo.tls.cert_file = cfg->tls_cert_file;
    eo.tls.key_file = cfg->tls_key_file;
    if ((rc = etcd_client_new(&a->etcd, loop, a->http, &eo)) < 0)
        goto fail;
    co.prefix = cfg->prefix;
    co.dir = cfg->cache_dir && *cfg->cache_dir ? cfg->cache_dir : NULL;
    co.idle_ms = cfg->cache_idle_ms;
    co.policy = &cfg->traffic;
    if ((rc = cache_new(&a->cache, loop, a->etcd, &co)) < 0)
        goto fail;
    if ((rc = session_new(&a->session, loop, a->etcd, (int64_t)(cfg->session_ttl_ms / 1000),
                          on_lease, a)) < 0)
        goto fail;
    if ((rc = check_ctx_new(&a->checks, loop, a->http, cfg->checks_exec)) < 0)
        goto fail;
    if ((rc = registry_new(&a->registry, loop, a->etcd, a->cache, a->session, cfg->prefix,
                           a->checks)) < 0)
        goto fail;
    registry_set_locality(a->registry, &cfg->traffic);

    xo.enabled = cfg->xds_enabled;
    xo.path = cfg->xds_path;
    xo.mode = cfg->xds_mode;
    xo.tcp = cfg->xds_tcp;
    xo.group_header = cfg->xds_group_header;
    xo.send_host_names = cfg->xds_test_host_names;
    xo.traffic = &cfg->traffic;
    xo.hold_ms = 2 * cfg->timeout_ms;
    xo.idle_ms = cfg->xds_idle_ms;
    if ((rc = listen_fds_init()) < 0)
        log_warn("agent: ignoring $LISTEN_FDS: %s", da_strerror(rc));
    xo.listen_fd = cfg->xds_enabled ? passed_socket("xds", cfg->xds_path) : 0;
    if ((rc = xds_new(&a->xds, loop, a->cache, &xo)) < 0)
        goto fail;
    if (cfg->dns_enabled) {
        struct dns_options dno = {0};
        dno.listen = (const char *const *)cfg->dns_listen;
        dno.n_listen = cfg->n_dns_listen;
        dno.domain = cfg->dns_domain;
        dno.ttl = cfg->dns_ttl;
        dno.max_answers = cfg->dns_max_answers;
        dno.recursors = (const char *const *)cfg->dns_recursors;
        dno.n_recursors = cfg->n_dns_recursors;
        if ((rc = dns_new(&a->dns, loop, a->cache, &dno, err, errlen)) < 0) {
            a->stopping = true;
            finish(a);
            return rc;
        }
    }
    if ((rc = proto_start(a)) < 0)
        goto fail;

    so.path = cfg->socket_path;
    so.mode = cfg->socket_mode;
    so.too_long_reply = proto_too_long_reply;
    so.busy_reply = proto_busy_reply;
    so.listen_fd = passed_socket("agent", cfg->socket_path);
    rc = server_start(&a->server, loop, &so, &cb, a->proto, err, errlen);
    if (rc < 0) {
        a->server = NULL;
        a->stopping = true;
        finish(a);
        return rc;
    }
    /* After the socket, so that a second agent is told about that first;
     * it also writes the bootstrap file beside xds.path. */
    rc = xds_start(a->xds, err, errlen);
    if (rc == 0 && a->dns)
        rc = dns_start(a->dns, err, errlen);
    if (rc < 0) {
        server_close(a->server);
        a->server = NULL;
        a->stopping = true;
        finish(a);
        return rc;
    }
    /* Last: an address that cannot be bound stops the start, naming it. */
    rc = web_start_agent(a, err, errlen);
    if (rc < 0) {
        server_close(a->server);
        a->server = NULL;
        a->stopping = true;
        finish(a);
        return rc;
    }

    if ((rc = listen_fds_close_rest()) > 0)
        log_warn("agent: closed %d socket(s) systemd passed that the configuration does not "
                 "use (their names or paths match neither socket.path nor xds.path)",
                 rc);

    for (size_t i = 0; i < cfg->n_services; i++)
        add_configured(a, &cfg->services[i]);

    uv_signal_init(loop, &a->sig_term);
    uv_signal_init(loop, &a->sig_int);
    uv_signal_init(loop, &a->sig_hup);
    a->sig_term.data = a->sig_int.data = a->sig_hup.data = a;
    uv_signal_start(&a->sig_term, on_signal, SIGTERM);
    uv_signal_start(&a->sig_int, on_signal, SIGINT);
    uv_signal_start(&a->sig_hup, on_signal, SIGHUP);

    uv_timer_init(loop, &a->ready_timer);
    uv_timer_init(loop, &a->watchdog);
    uv_timer_init(loop, &a->stop_timer);
    a->ready_timer.data = a->watchdog.data = a->stop_timer.data = a;
    uv_timer_start(&a->ready_timer, ready_check, 20, 20);
    uint64_t wd = notify_watchdog_ms();
    if (wd)
        uv_timer_start(&a->watchdog, watchdog_beat, wd / 2, wd / 2);

    log_info("agent: discovery-agent %s: etcd %s (prefix %s), socket %s, lease ttl %llu s",
             AGENT_VERSION, cfg->endpoints[0], cfg->prefix, cfg->socket_path,
             (unsigned long long)(cfg->session_ttl_ms / 1000));
    session_start(a->session);
    return 0;

fail:
    snprintf(err, errlen, "cannot start: %s", da_strerror(rc));
    a->stopping = true;
    finish(a);
    return rc;
}

/* ---- stop --------------------------------------------------------------- */

static void close_handle(uv_handle_t *h)
{
    if (h->loop && !uv_is_closing(h))
        uv_close(h, NULL);
}

/* Frees every part; the loop ends once their handles have closed. */
static void finish(struct agent *a)
{
    /* First: it reads every part below. */
    a->web = web_close(a->web);
    server_close(a->server);
    a->server = NULL;
    /* After the socket: its connections' on_close needs the protocol. */
    a->proto = proto_free(a->proto);
    /* After the socket (its requests may wait on xDS queries) and before
     * the cache (xDS holds cache subscriptions). */
    a->xds = xds_close(a->xds);
    a->dns = dns_close(a->dns); /* before the cache: it holds subscriptions */
    a->registry = registry_close(a->registry);
    if (a->checks)
        check_ctx_free(a->checks);
    a->checks = NULL;
    a->cache = cache_close(a->cache);
    a->session = session_close(a->session);
    a->etcd = etcd_client_free(a->etcd);
    if (a->http)
        http_client_close(a->http);
    a->http = NULL;
    close_handle((uv_handle_t *)&a->sig_term);
    close_handle((uv_handle_t *)&a->sig_int);
    close_handle((uv_handle_t *)&a->sig_hup);
    close_handle((uv_handle_t *)&a->ready_timer);
    close_handle((uv_handle_t *)&a->watchdog);
    close_handle((uv_handle_t *)&a->stop_timer);
}

static void finish_later(uv_timer_t *t)
{
    finish(t->data);
}

static void revoked(void *arg)
{
    struct agent *a = arg;

    log_info("agent: stopped");
    /* Called from inside an etcd callback: tear down from a fresh loop
     * turn, with no callback of the parts on the stack. */
    uv_timer_start(&a->stop_timer, finish_later, 0, 0);
}

static void deregistered(void *arg)
{
    struct agent *a = arg;

    session_stop(a->session, revoked, a);
}

static void stop_overdue(uv_timer_t *t)
{
    struct agent *a = t->data;

    log_warn("agent: etcd did not answer while stopping; the lease will expire by itself");
    finish(a);
}

void agent_stop(struct agent *a)
{
    if (a->stopping) {
        /* A second signal while stopping: give up waiting for etcd. */
        if (uv_is_active((uv_handle_t *)&a->stop_timer)) {
            uv_timer_stop(&a->stop_timer);
            finish(a);
        }
        return;
    }
    a->stopping = true;
    notify_send("STOPPING=1");
    /* It reads the socket server, which goes next. */
    a->web = web_close(a->web);
    /* Clients go first: a watcher must see the agent leave (and keep its
     * last list), not an empty list made of our own deregistrations. */
    server_close(a->server);
    a->server = NULL;
    /* Likewise xDS clients: with the server gone they keep their last
     * endpoints, rather than being pushed our deregistrations. */
    a->xds = xds_close(a->xds);
    /* And DNS: a query now would see our own instances leave. */
    a->dns = dns_close(a->dns);
    /* The deletes and the revoke are each one request, retried over the
     * endpoints; twice the timeout per step bounds the whole stop. */
    uv_timer_start(&a->stop_timer, stop_overdue, 4 * a->cfg->timeout_ms + 1000, 0);
    registry_stop(a->registry, deregistered, a);
}

/* ---- reload ------------------------------------------------------------- */

static bool same(const char *x, const char *y)
{
    return (!x && !y) || (x && y && !strcmp(x, y));
}

static void warn_unapplied(const struct config *old, const struct config *new)
{
    bool eps = old->n_endpoints != new->n_endpoints;

    for (size_t i = 0; !eps && i < old->n_endpoints; i++)
        eps = strcmp(old->endpoints[i], new->endpoints[i]) != 0;
    if (eps || !same(old->prefix, new->prefix) || old->timeout_ms != new->timeout_ms ||
        !same(old->username, new->username) || !same(old->password, new->password) ||
        !same(old->tls_ca_file, new->tls_ca_file) ||
        !same(old->tls_cert_file, new->tls_cert_file) ||
        !same(old->tls_key_file, new->tls_key_file) || old->session_ttl_ms != new->session_ttl_ms ||
        !same(old->socket_path, new->socket_path) || old->socket_mode != new->socket_mode ||
        !same(old->cache_dir, new->cache_dir) || old->cache_idle_ms != new->cache_idle_ms ||
        old->xds_enabled != new->xds_enabled || !same(old->xds_path, new->xds_path) ||
        old->xds_mode != new->xds_mode || !same(old->xds_tcp, new->xds_tcp) ||
        !same(old->xds_group_header, new->xds_group_header) ||
        old->xds_idle_ms != new->xds_idle_ms ||
        old->xds_test_host_names != new->xds_test_host_names ||
        old->dns_enabled != new->dns_enabled || !same(old->dns_domain, new->dns_domain) ||
        old->dns_ttl != new->dns_ttl || old->dns_max_answers != new->dns_max_answers ||
        old->n_dns_listen != new->n_dns_listen ||
        (old->n_dns_listen && strcmp(old->dns_listen[0], new->dns_listen[0])) ||
        old->n_dns_recursors != new->n_dns_recursors ||
        (old->n_dns_recursors && strcmp(old->dns_recursors[0], new->dns_recursors[0])) ||
        old->http_enabled != new->http_enabled || old->log_format != new->log_format)
        log_warn("agent: reload applies services and log.level only; restart the agent to "
                 "apply the other changes");
}

int agent_reload(struct agent *a)
{
    struct config *nc;
    char err[1024];
    int rc;

    if (a->stopping)
        return DA_ECANCELED;
    rc = config_load(a->cfg->path, &nc, err, sizeof err);
    if (rc) {
        log_error("agent: reload refused, keeping the running configuration: %s", err);
        return rc;
    }
    warn_unapplied(a->cfg, nc);
    /* Gone from the files: deregister. */
    for (size_t i = 0; i < a->cfg->n_services; i++) {
        const struct config_service *s = &a->cfg->services[i];
        if (!config_find_service(nc, s->name, s->address))
            registry_remove(a->registry, s->name, s->address, REG_OWNER_CONFIG, 0, NULL, NULL);
    }
    /* New or changed: (re)register; unchanged ones are left as they are. */
    for (size_t i = 0; i < nc->n_services; i++)
        add_configured(a, &nc->services[i]);

    /* Keep the running values of everything else: swap in the services. */
    struct config_service *sv = a->cfg->services;
    size_t n = a->cfg->n_services;
    a->cfg->services = nc->services;
    a->cfg->n_services = nc->n_services;
    nc->services = sv;
    nc->n_services = n;
    a->cfg->log_level = nc->log_level;
    log_level = nc->log_level;
    a->cfg->checks_exec = nc->checks_exec;
    check_ctx_set_exec_enabled(a->checks, nc->checks_exec);
    proto_set_checks_exec(a->proto, nc->checks_exec);
    config_free(nc);
    a->reloads++;
    log_info("agent: configuration reloaded: %zu configured instance(s)", a->cfg->n_services);
    return 0;
}
