/* agentctl: inspects and drives a running discovery-agent through
 * libdiscovery.
 *
 *   agentctl [-s SOCKET] status [--json]
 *   agentctl [-s SOCKET] services [--json]
 *   agentctl [-s SOCKET] resolve NAME [--group G] [--prefer-zone] [--json]
 *   agentctl [-s SOCKET] watch NAME [--group G] [--json]
 *   agentctl [-s SOCKET] register NAME ADDRESS [--weight N] [--group G] [--meta K=V]...
 *   agentctl [-s SOCKET] deregister NAME ADDRESS
 *
 * Exit status: 0 done, 1 the agent refused or failed, 2 usage, 3 no agent at
 * the socket. Results go to stdout; what went wrong, and how to fix it, to
 * stderr. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <discovery/discovery.h>

#include "defaults.h"
#include "duration.h"

#define EXIT_DONE 0
#define EXIT_FAILED 1
#define EXIT_USAGE 2
#define EXIT_NOAGENT 3

/* ---- commands and their help -------------------------------------------- */

struct opts {
    const char *socket;
    int timeout_ms;
    bool json;
    bool prefer_zone; /* resolve --prefer-zone */
    const char *group;
    bool weight_set;
    int32_t weight;
    size_t n_meta;
    const char **meta_keys, **meta_values;
    char **meta_buf;
    const char *pos[3];
    size_t n_pos;
    const char *reason; /* maint --reason */
    const char *output; /* check --output */
};

struct command {
    const char *name;
    int n_pos;           /* positional arguments required */
    const char *options; /* accepted: "json,group,weight,meta" */
    int (*run)(struct opts *o);
    const char *usage;
    const char *help;
};

static int cmd_status(struct opts *o);
static int cmd_services(struct opts *o);
static int cmd_resolve(struct opts *o);
static int cmd_watch(struct opts *o);
static int cmd_register(struct opts *o);
static int cmd_deregister(struct opts *o);
static int cmd_checks(struct opts *o);
static int cmd_check(struct opts *o);
static int cmd_drain(struct opts *o);
static int cmd_undrain(struct opts *o);
static int cmd_maint(struct opts *o);
static int cmd_xds_bootstrap(struct opts *o);
static int cmd_xds(struct opts *o);

static const struct command commands[] = {
    {"status", 0, "json", cmd_status, "status [--json]",
     "Shows the agent's state: its etcd endpoint and leader, the session lease and\n"
     "the time it has left, the instances it registers and their state, the\n"
     "services it watches (revision, live or stale), its clients, and the etcd\n"
     "values it skipped because they are not instances.\n"
     "\n"
     "  --json   the agent's status object, on one line\n"},
    {"services", 0, "json", cmd_services, "services [--json]",
     "Lists every service name that has instances under the agent's prefix in etcd,\n"
     "with how many, whether this agent watches it and whether it registers some.\n"
     "\n"
     "  --json   "
     "{\"revision\":N,\"services\":[{\"name\",\"instances\",\"watched\",\"registered\"}]}\n"},
    {"resolve", 1, "json,group,prefer-zone", cmd_resolve,
     "resolve NAME [--group G] [--prefer-zone] [--json]",
     "Prints the instances of service NAME, sorted by address, with their zones.\n"
     "\n"
     "  --group G  only the instances of group G\n"
     "  --prefer-zone  the agent's zone policy (docs/traffic.md): the instances in\n"
     "             use with the weight each gets, those on standby with their\n"
     "             priority, the loads per rank and any protection hold\n"
     "  --json     one object: {\"service\",\"revision\",\"stale\",\"instances\":[{\"name\",\n"
     "             \"address\",\"weight\",\"group\",\"metadata\"}]}\n"},
    {"watch", 1, "json,group", cmd_watch, "watch NAME [--group G] [--json]",
     "Follows service NAME until interrupted (Ctrl-C), printing what changes with\n"
     "the revision and the local time:\n"
     "  + ADDRESS joined (weight W, group G)   - ADDRESS left\n"
     "  ~ ADDRESS weight 1 -> 5                 ! stale (etcd unreachable) / ! live\n"
     "The first list is printed as every instance joining. If the agent restarts,\n"
     "agentctl reconnects and goes on.\n"
     "\n"
     "  --group G  only the instances of group G\n"
     "  --json     one list object per line (as resolve --json), the first being the\n"
     "             current list\n"},
    {"register", 2, "group,weight,meta", cmd_register,
     "register NAME ADDRESS [--weight N] [--group G] [--meta K=V]...",
     "Registers an instance of service NAME at ADDRESS (host:port or [v6]:port) in\n"
     "etcd, under the agent's lease. It stays after agentctl exits, until\n"
     "'agentctl deregister NAME ADDRESS' or until the agent stops.\n"
     "\n"
     "  --weight N  share of the traffic, 1 to 2147483647 (default 1)\n"
     "  --group G   a label clients may select on\n"
     "  --meta K=V  a metadata value; repeat for more\n"},
    {"deregister", 2, "", cmd_deregister, "deregister NAME ADDRESS",
     "Removes an instance registered at run time (by agentctl register or by a\n"
     "program) from etcd. Instances of the agent's configuration are removed by\n"
     "editing it and reloading the agent (systemctl reload discovery-agent).\n"},
    {"checks", 0, "json", cmd_checks, "checks [--json]",
     "Shows the health of every instance the agent registers: its check type,\n"
     "healthy or not, passes or failures in a row, the last probe's output, when it\n"
     "last changed, and whether it is drained; and whether the host is in\n"
     "maintenance.\n"
     "\n"
     "  --json   {\"maint\":{\"on\",\"reason\"},\"instances\":[{\"name\",\"address\",\"healthy\",\n"
     "           "
     "\"drained\",\"check\":{\"type\",\"healthy\",\"passes\",\"failures\",\"output\",...}}]}\n"},
    {"check", 3, "output", cmd_check, "check pass|fail NAME ADDRESS [--output TEXT]",
     "Reports the result of a ttl check for an instance: 'pass' must come at least\n"
     "once per ttl, or the instance leaves etcd after 'fall' missed reports.\n"
     "\n"
     "  --output TEXT  why it fails (shown by agentctl checks)\n"},
    {"drain", 2, "", cmd_drain, "drain NAME ADDRESS",
     "Takes an instance out of etcd, so clients move away from it, and keeps it out\n"
     "(across reloads) until 'agentctl undrain NAME ADDRESS'.\n"},
    {"undrain", 2, "", cmd_undrain, "undrain NAME ADDRESS",
     "Ends a drain: the instance is registered again once healthy.\n"},
    {"maint", 1, "reason", cmd_maint, "maint on|off [--reason TEXT]",
     "Maintenance: 'on' takes every instance of this host out of etcd until 'off'.\n"
     "\n"
     "  --reason TEXT  shown by agentctl status and checks\n"},
    {"xds-bootstrap", 0, "", cmd_xds_bootstrap, "xds-bootstrap",
     "Prints the xDS bootstrap JSON for gRPC applications on this host (also in\n"
     "the file beside the agent's xDS socket): with GRPC_XDS_BOOTSTRAP pointing at\n"
     "it, a channel to xds:///NAME resolves NAME through the agent.\n"},
    {"xds", 1, "", cmd_xds, "xds NAME",
     "Prints, as JSON, the xDS resources the agent would send for service NAME:\n"
     "listener, route configuration, clusters and load assignments, and the\n"
     "instances it leaves out with the reason.\n"},
};

#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: agentctl [-s SOCKET] [--timeout DURATION] COMMAND [ARGS]\n\n"
               "Inspects and drives the local discovery-agent.\n\n"
               "Commands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  agentctl %s\n", commands[i].usage);
    fprintf(f, "\n"
               "  -s, --socket SOCKET    the agent's socket (default: $DISCOVERY_SOCKET, else\n"
               "                         " DA_DEFAULT_SOCKET_PATH ")\n"
               "      --timeout DURATION how long to wait for the agent, e.g. 5s (default 30s)\n"
               "  -h, --help             this text; 'agentctl COMMAND --help' for a command\n"
               "  -V, --version          agentctl's version\n"
               "\n"
               "Exit status: 0 done, 1 the agent refused or failed, 2 usage, 3 no agent at\n"
               "the socket.\n");
}

static void command_help(const struct command *cmd)
{
    printf("usage: agentctl [-s SOCKET] %s\n\n%s", cmd->usage, cmd->help);
}

static int usage_error(const struct command *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int usage_error(const struct command *cmd, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "agentctl: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (cmd)
        fprintf(stderr, "\nusage: agentctl [-s SOCKET] %s\n(see 'agentctl %s --help')\n",
                cmd->usage, cmd->name);
    else
        fprintf(stderr, "\n(see 'agentctl --help')\n");
    return EXIT_USAGE;
}

/* ---- talking to the agent ----------------------------------------------- */

static const char *last_message(disc_client *c)
{
    const char *m = "";

    disc_client_last_error(c, NULL, &m);
    return m;
}

/* Opens the client, or says why not and returns the exit status. */
static int open_client(const struct opts *o, disc_client **out)
{
    int rc = disc_client_open(out, o->socket);
    const char *path = o->socket;

    if (!path) {
        path = getenv("DISCOVERY_SOCKET");
        if (!path || !*path)
            path = DA_DEFAULT_SOCKET_PATH;
    }
    if (rc == 0)
        return EXIT_DONE;
    switch (rc) {
    case DISC_EINVAL:
        fprintf(stderr, "agentctl: bad socket path '%s': it must be 1 to 107 bytes long\n", path);
        return EXIT_USAGE;
    case DISC_ENOAGENT:
        fprintf(stderr, "agentctl: no agent at %s: is discovery-agent running? (%s)\n", path,
                last_message(*out));
        *out = disc_client_close(*out);
        return EXIT_NOAGENT;
    case DISC_EACCES:
        fprintf(stderr,
                "agentctl: permission denied on %s: run as root or as a member of the "
                "socket's group (%s)\n",
                path, last_message(*out));
        *out = disc_client_close(*out);
        return EXIT_FAILED;
    default:
        fprintf(stderr, "agentctl: cannot reach the agent at %s: %s (%s)\n", path,
                disc_strerror(rc), *out ? last_message(*out) : "");
        *out = disc_client_close(*out);
        return EXIT_FAILED;
    }
}

/* Says why a call failed; returns the exit status. */
static int call_failed(disc_client *c, const struct opts *o, int rc)
{
    const char *code = "", *msg = "";

    disc_client_last_error(c, &code, &msg);
    switch (rc) {
    case DISC_EREFUSED:
        fprintf(stderr, "agentctl: the agent refused: %s (%s)\n", msg, code);
        return EXIT_FAILED;
    case DISC_ETIMEDOUT:
        fprintf(stderr,
                "agentctl: the agent did not answer within %d ms: is it stuck? See its log "
                "(journalctl -u discovery-agent), or wait longer with --timeout\n",
                o->timeout_ms);
        return EXIT_FAILED;
    case DISC_ENOAGENT:
        fprintf(stderr, "agentctl: no agent at %s: is discovery-agent running? (%s)\n",
                disc_client_path(c), msg);
        return EXIT_NOAGENT;
    case DISC_ECLOSED:
        fprintf(stderr,
                "agentctl: the agent closed the connection before answering: it may have "
                "stopped or restarted; try again (%s)\n",
                msg);
        return EXIT_FAILED;
    case DISC_EPROTO:
        fprintf(stderr,
                "agentctl: the agent sent a malformed reply: %s (are agentctl and the agent "
                "the same version?)\n",
                msg);
        return EXIT_FAILED;
    case DISC_EINVAL:
        fprintf(stderr, "agentctl: %s\n", msg);
        return EXIT_USAGE;
    default:
        fprintf(stderr, "agentctl: %s (%s)\n", disc_strerror(rc), msg);
        return EXIT_FAILED;
    }
}

/* Sends req (stolen) and parses the reply; returns an exit status. */
static int object_request(const struct opts *o, json_t *req, json_t **reply)
{
    disc_client *c;
    char *line, *text = NULL;
    json_error_t jerr;
    int rc, st;

    *reply = NULL;
    line = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (!line) {
        fprintf(stderr, "agentctl: out of memory\n");
        return EXIT_FAILED;
    }
    if ((st = open_client(o, &c)) != 0) {
        free(line);
        return st;
    }
    rc = disc_request_json(c, line, o->timeout_ms, &text);
    free(line);
    if (rc) {
        st = call_failed(c, o, rc);
        disc_client_close(c);
        return st;
    }
    disc_client_close(c);
    *reply = json_loads(text, 0, &jerr);
    free(text);
    if (!json_is_object(*reply)) {
        json_decref(*reply);
        *reply = NULL;
        fprintf(stderr, "agentctl: the agent's reply is not a JSON object\n");
        return EXIT_FAILED;
    }
    json_object_del(*reply, "id");
    json_object_del(*reply, "ok");
    return EXIT_DONE;
}

/* Sends {"op":op} and parses the reply; returns an exit status. */
static int simple_request(const struct opts *o, const char *op, json_t **reply)
{
    return object_request(o, json_pack("{s:s}", "op", op), reply);
}

static int print_json(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);

    if (!s) {
        fprintf(stderr, "agentctl: out of memory\n");
        return EXIT_FAILED;
    }
    printf("%s\n", s);
    free(s);
    fflush(stdout);
    return ferror(stdout) ? EXIT_FAILED : EXIT_DONE;
}

/* ---- aligned tables ------------------------------------------------------ */

struct table {
    size_t cols, rows, cap;
    char **cells; /* row-major; row 0 is the header */
};

static void table_row(struct table *t, ...)
{
    va_list ap;

    if ((t->rows + 1) * t->cols > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : t->cols * 8;
        char **p = realloc(t->cells, cap * sizeof *p);
        if (!p)
            return;
        t->cells = p;
        t->cap = cap;
    }
    va_start(ap, t);
    for (size_t i = 0; i < t->cols; i++) {
        const char *s = va_arg(ap, const char *);
        t->cells[t->rows * t->cols + i] = strdup(s ? s : "");
    }
    va_end(ap);
    t->rows++;
}

static void table_print(struct table *t, const char *indent)
{
    size_t w[16] = {0};

    for (size_t r = 0; r < t->rows; r++)
        for (size_t i = 0; i < t->cols && i < 16; i++) {
            const char *s = t->cells[r * t->cols + i];
            size_t n = s ? strlen(s) : 0;
            if (n > w[i])
                w[i] = n;
        }
    for (size_t r = 0; r < t->rows; r++) {
        size_t last = 0; /* cells after the last non-empty one are not padded out */
        for (size_t i = 0; i < t->cols; i++) {
            const char *s = t->cells[r * t->cols + i];
            if (s && *s)
                last = i;
        }
        fputs(indent, stdout);
        for (size_t i = 0; i <= last; i++) {
            const char *s = t->cells[r * t->cols + i];
            if (i == last)
                printf("%s\n", s ? s : "");
            else
                printf("%-*s  ", (int)w[i], s ? s : "");
        }
    }
}

static void table_free(struct table *t)
{
    for (size_t k = 0; k < t->rows * t->cols; k++)
        free(t->cells[k]);
    free(t->cells);
    t->cells = NULL;
    t->rows = t->cap = 0;
}

/* ---- formatting helpers -------------------------------------------------- */

static const char *str_or(json_t *o, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : dflt;
}

static long long int_of(json_t *o, const char *key)
{
    return (long long)json_integer_value(json_object_get(o, key));
}

/* "4.4s", "3m12s", "2h5m", "3d4h": for people, not for parsing. */
static void human_ms(long long ms, char *buf, size_t len)
{
    if (ms < 0)
        ms = 0;
    if (ms < 10000)
        snprintf(buf, len, "%lld.%llds", ms / 1000, (ms % 1000) / 100);
    else if (ms < 60000)
        snprintf(buf, len, "%llds", ms / 1000);
    else if (ms < 3600000)
        snprintf(buf, len, "%lldm%llds", ms / 60000, (ms / 1000) % 60);
    else if (ms < 86400000)
        snprintf(buf, len, "%lldh%lldm", ms / 3600000, (ms / 60000) % 60);
    else
        snprintf(buf, len, "%lldd%lldh", ms / 86400000, (ms / 3600000) % 24);
}

/* "k=v,k2=v2" of a JSON metadata object, or "-". */
static void meta_json_text(json_t *meta, char *buf, size_t len)
{
    const char *k;
    json_t *v;
    size_t used = 0;

    buf[0] = '\0';
    json_object_foreach(meta, k, v) {
        int n = snprintf(buf + used, len - used, "%s%s=%s", used ? "," : "", k,
                         json_string_value(v) ? json_string_value(v) : "?");
        if (n < 0 || (size_t)n >= len - used)
            break;
        used += (size_t)n;
    }
    if (!used)
        snprintf(buf, len, "-");
}

static void meta_text(const struct disc_instance *in, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t k = 0; k < in->n_meta; k++) {
        int n = snprintf(buf + used, len - used, "%s%s=%s", used ? "," : "", in->meta_keys[k],
                         in->meta_values[k]);
        if (n < 0 || (size_t)n >= len - used)
            break;
        used += (size_t)n;
    }
    if (!used)
        snprintf(buf, len, "-");
}

/* ---- status ------------------------------------------------------------- */

/* dns: the listeners, then the queries by rcode ("NOERROR 10, NXDOMAIN 2"). */
static void print_dns(json_t *d)
{
    const char *k;
    json_t *v, *l;
    size_t i;

    if (!json_is_true(json_object_get(d, "enabled"))) {
        if (d)
            printf("dns            off (dns.enabled: false)\n");
        return;
    }
    printf("dns            %s. on", str_or(d, "domain", "?"));
    json_array_foreach(json_object_get(d, "listen"), i, l)
        printf("%s %s", i ? "," : "", json_string_value(l));
    printf(" (udp, tcp), ttl %lld s\n", int_of(d, "ttl"));
    printf("dns queries    %lld (%lld udp, %lld tcp, %lld truncated, %lld waited for a list):",
           int_of(d, "queries"), int_of(d, "udp"), int_of(d, "tcp"), int_of(d, "truncated"),
           int_of(d, "waited"));
    i = 0;
    json_object_foreach(json_object_get(d, "rcodes"), k, v)
        printf("%s %s %lld", i++ ? "," : "", k, (long long)json_integer_value(v));
    printf("%s\n", i ? "" : " none yet");
    if (json_array_size(json_object_get(d, "recursors"))) {
        printf("dns forwarded  %lld to", int_of(d, "forwarded"));
        json_array_foreach(json_object_get(d, "recursors"), i, l)
            printf("%s %s", i ? "," : "", json_string_value(l));
        printf(" (%lld unanswered, %lld past the cap, %lld in flight)\n",
               int_of(d, "forward_failed"), int_of(d, "forward_busy"), int_of(d, "forwarding"));
    }
    json_t *nx = json_object_get(d, "last_nxdomain");
    if (nx)
        printf("dns last NXDOMAIN  %s: %s\n", str_or(nx, "name", "?"), str_or(nx, "reason", "?"));
}

static int cmd_status(struct opts *o)
{
    json_t *r, *etcd, *lease, *e;
    char a[32], b[32], c[32], meta[512];
    struct table t = {0};
    size_t i;
    int st = simple_request(o, "status", &r);

    if (st || o->json) {
        if (!st)
            st = print_json(r);
        json_decref(r);
        return st;
    }
    etcd = json_object_get(r, "etcd");
    lease = json_object_get(r, "lease");

    human_ms(int_of(r, "uptime_ms"), a, sizeof a);
    printf("agent          discovery-agent %s, pid %lld, up %s\n", str_or(r, "version", "?"),
           int_of(r, "pid"), a);
    printf("config         %s (prefix %s)\n", str_or(r, "config", "?"), str_or(r, "prefix", "?"));

    printf("etcd           %s, %s", str_or(etcd, "endpoint", "?"),
           json_is_true(json_object_get(etcd, "connected")) ? "connected" : "NOT CONNECTED");
    if (json_is_string(json_object_get(etcd, "leader")))
        printf(", leader %s (this member %s), etcd %s, revision %lld\n",
               str_or(etcd, "leader", "?"), str_or(etcd, "member", "?"),
               str_or(etcd, "version", "?"), int_of(etcd, "revision"));
    else
        printf(", no leader known\n");
    if (json_array_size(json_object_get(etcd, "endpoints")) > 1) {
        printf("               members:");
        json_array_foreach(json_object_get(etcd, "endpoints"), i, e)
            printf(" %s", json_string_value(e) ? json_string_value(e) : "?");
        printf("\n");
    }
    if (*str_or(etcd, "last_error", ""))
        printf("               last error: %s\n", str_or(etcd, "last_error", ""));

    if (json_is_string(json_object_get(lease, "id"))) {
        human_ms(int_of(lease, "remaining_ms"), a, sizeof a);
        human_ms(int_of(lease, "since_keepalive_ms"), b, sizeof b);
        printf("lease          %s, ttl %llds, %s remaining (renewed %s ago), granted %lld "
               "time(s)\n",
               str_or(lease, "id", "?"), int_of(lease, "ttl_s"), a, b, int_of(lease, "grants"));
    } else {
        printf("lease          none yet (ttl %llds): the agent cannot reach etcd, so its "
               "instances are not registered\n",
               int_of(lease, "ttl_s"));
    }
    printf("clients        %lld connected (this one included)\n", int_of(r, "clients"));
    printf("skipped        %lld etcd value(s) that are not instances%s\n", int_of(r, "skipped"),
           int_of(r, "skipped") ? " (see the services below)" : "");
    if (json_is_true(json_object_get(r, "stale")))
        printf("stale          some lists are stale: etcd has not confirmed them lately\n");
    json_t *maint = json_object_get(r, "maint");
    if (json_is_true(json_object_get(maint, "on")))
        printf("maintenance    ON%s%s: every instance is kept out of etcd\n",
               *str_or(maint, "reason", "") ? ": " : "", str_or(maint, "reason", ""));
    json_t *x = json_object_get(r, "xds");
    if (json_is_true(json_object_get(x, "enabled")))
        printf("xds            %s, %zu client(s), %lld NACK(s), gRPC %s\n", str_or(x, "path", "?"),
               json_array_size(json_object_get(x, "clients")), int_of(x, "nacks"),
               json_is_true(json_object_get(x, "grpc_running")) ? "running" : "stopped");
    print_dns(json_object_get(r, "dns"));

    printf("\nregistrations (%zu)\n", json_array_size(json_object_get(r, "registrations")));
    t.cols = 9;
    table_row(&t, "NAME", "ADDRESS", "WEIGHT", "GROUP", "OWNER", "STATE", "HEALTH", "METADATA",
              "ERROR");
    json_array_foreach(json_object_get(r, "registrations"), i, e) {
        json_t *ck = json_object_get(e, "check");
        const char *health = json_is_true(json_object_get(e, "drained"))   ? "drained"
                             : !ck                                         ? "-"
                             : json_is_true(json_object_get(e, "healthy")) ? "healthy"
                                                                           : "unhealthy";
        snprintf(a, sizeof a, "%lld", int_of(e, "weight"));
        meta_json_text(json_object_get(e, "metadata"), meta, sizeof meta);
        table_row(&t, str_or(e, "name", "?"), str_or(e, "address", "?"), a,
                  *str_or(e, "group", "") ? str_or(e, "group", "") : "-", str_or(e, "owner", "?"),
                  str_or(e, "state", "?"), health, meta, str_or(e, "error", ""));
    }
    if (t.rows > 1)
        table_print(&t, "  ");
    else
        printf("  (none)\n");
    table_free(&t);

    printf("\nwatched services (%zu)\n", json_array_size(json_object_get(r, "services")));
    t.cols = 6;
    table_row(&t, "SERVICE", "REVISION", "STATE", "INSTANCES", "SKIPPED", "WATCHERS");
    json_array_foreach(json_object_get(r, "services"), i, e) {
        const char *state = !json_is_true(json_object_get(e, "ready"))  ? "waiting for etcd"
                            : json_is_true(json_object_get(e, "stale")) ? "stale"
                                                                        : "live";
        snprintf(a, sizeof a, "%lld", int_of(e, "revision"));
        snprintf(b, sizeof b, "%lld", int_of(e, "instances"));
        snprintf(c, sizeof c, "%lld", int_of(e, "skipped"));
        snprintf(meta, sizeof meta, "%lld", int_of(e, "watchers"));
        table_row(&t, str_or(e, "service", "?"), a, state, b, c, meta);
    }
    if (t.rows > 1)
        table_print(&t, "  ");
    else
        printf("  (none)\n");
    table_free(&t);

    /* The traffic policy per service (docs/traffic.md). */
    printf("\ntraffic policy\n");
    t.cols = 6;
    table_row(&t, "SERVICE", "LOADS (zone/region/rest)", "PRIORITIES", "PROTECTION", "HOLDS",
              "OUTLIER DETECTION");
    json_array_foreach(json_object_get(r, "services"), i, e) {
        json_t *tr = json_object_get(e, "traffic"), *l, *p, *od;
        char loads[64], prios[32], prot[64], holds[32], ej[128];
        if (!tr)
            continue;
        l = json_object_get(tr, "loads");
        p = json_object_get(tr, "priorities");
        od = json_object_get(tr, "outlier_detection");
        snprintf(loads, sizeof loads, "%.0f%%/%.0f%%/%.0f%%",
                 100 * json_number_value(json_array_get(l, 0)),
                 100 * json_number_value(json_array_get(l, 1)),
                 100 * json_number_value(json_array_get(l, 2)));
        snprintf(prios, sizeof prios, "%lld/%lld/%lld",
                 (long long)json_integer_value(json_array_get(p, 0)),
                 (long long)json_integer_value(json_array_get(p, 1)),
                 (long long)json_integer_value(json_array_get(p, 2)));
        if (json_is_true(json_object_get(tr, "protected")))
            snprintf(prot, sizeof prot, "HELD (%lld kept)", int_of(tr, "held"));
        else
            snprintf(prot, sizeof prot, "-");
        snprintf(holds, sizeof holds, "%lld (%lld applied)", int_of(tr, "holds"),
                 int_of(tr, "holds_released"));
        if (json_is_object(od))
            snprintf(ej, sizeof ej, "every %llds, eject %llds..%llds, max %lld%%%s%s",
                     int_of(od, "interval_ms") / 1000, int_of(od, "base_ejection_time_ms") / 1000,
                     int_of(od, "max_ejection_time_ms") / 1000, int_of(od, "max_ejection_percent"),
                     json_object_get(od, "success_rate") ? ", success rate" : "",
                     json_object_get(od, "failure_percentage") ? ", failure %" : "");
        else
            snprintf(ej, sizeof ej, "none");
        table_row(&t, str_or(e, "service", "?"), loads, prios, prot, holds, ej);
    }
    if (t.rows > 1)
        table_print(&t, "  ");
    else
        printf("  (no watched service)\n");
    table_free(&t);
    json_decref(r);
    fflush(stdout);
    return ferror(stdout) ? EXIT_FAILED : EXIT_DONE;
}

/* ---- services ----------------------------------------------------------- */

static int cmd_services(struct opts *o)
{
    json_t *r, *e;
    struct table t = {.cols = 4};
    size_t i;
    char n[32];
    int st = simple_request(o, "services", &r);

    if (st || o->json) {
        if (!st)
            st = print_json(r);
        json_decref(r);
        return st;
    }
    table_row(&t, "NAME", "INSTANCES", "WATCHED", "REGISTERED");
    json_array_foreach(json_object_get(r, "services"), i, e) {
        snprintf(n, sizeof n, "%lld", int_of(e, "instances"));
        table_row(&t, str_or(e, "name", "?"), n,
                  json_is_true(json_object_get(e, "watched")) ? "yes" : "no",
                  json_is_true(json_object_get(e, "registered")) ? "yes" : "no");
    }
    table_print(&t, "");
    if (t.rows == 1)
        printf("(no services under the prefix at revision %lld)\n", int_of(r, "revision"));
    table_free(&t);
    json_decref(r);
    fflush(stdout);
    return ferror(stdout) ? EXIT_FAILED : EXIT_DONE;
}

/* ---- resolve ------------------------------------------------------------ */

/* The fixed --json shape of a list. New reference, or NULL. */
static json_t *list_json(const struct disc_list *l)
{
    json_t *o = json_object(), *arr = json_array();

    if (!o || !arr)
        goto fail;
    for (size_t i = 0; i < l->n; i++) {
        const struct disc_instance *in = &l->instances[i];
        json_t *meta = json_object(), *e;
        for (size_t k = 0; meta && k < in->n_meta; k++)
            json_object_set_new(meta, in->meta_keys[k], json_string(in->meta_values[k]));
        e = json_pack("{s:s, s:s, s:I, s:s, s:o*}", "name", in->name, "address", in->address,
                      "weight", (json_int_t)in->weight, "group", in->group, "metadata", meta);
        if (!e || json_array_append_new(arr, e))
            goto fail;
    }
    if (json_object_set_new(o, "service", json_string(l->service)) ||
        json_object_set_new(o, "revision", json_integer(l->revision)) ||
        json_object_set_new(o, "stale", json_boolean(l->stale)) ||
        json_object_set_new(o, "instances", arr))
        goto fail_o;
    return o;
fail:
    json_decref(arr);
fail_o:
    json_decref(o);
    return NULL;
}

static int print_list_json(const struct disc_list *l)
{
    json_t *o = list_json(l);
    int st;

    if (!o) {
        fprintf(stderr, "agentctl: out of memory\n");
        return EXIT_FAILED;
    }
    st = print_json(o);
    json_decref(o);
    return st;
}

static const char *meta_of(const struct disc_instance *in, const char *key)
{
    for (size_t k = 0; k < in->n_meta; k++)
        if (!strcmp(in->meta_keys[k], key))
            return in->meta_values[k];
    return NULL;
}

/* resolve --prefer-zone: the agent's choice, as the socket gives it. */
static int resolve_zoned(struct opts *o)
{
    json_t *req =
        json_pack("{s:s, s:s, s:b}", "op", "resolve", "service", o->pos[0], "prefer_zone", 1);
    json_t *r, *e, *zp;
    struct table t = {.cols = 6};
    char w[32], p[32];
    size_t i;
    int st;

    if (req && o->group)
        json_object_set_new(req, "group", json_string(o->group));
    if ((st = object_request(o, req, &r)) != EXIT_DONE)
        return st;
    if (o->json) {
        st = print_json(r);
        json_decref(r);
        return st;
    }
    zp = json_object_get(r, "zone_policy");
    printf("%s%s%s: %zu in use, %zu on standby, revision %lld%s\n", str_or(r, "service", "?"),
           o->group ? " group " : "", o->group ? o->group : "",
           json_array_size(json_object_get(r, "instances")),
           json_array_size(json_object_get(r, "standby")), int_of(r, "revision"),
           json_is_true(json_object_get(r, "stale")) ? ", STALE" : "");
    if (zp) {
        json_t *l = json_object_get(zp, "loads"), *n = json_object_get(zp, "instances"),
               *rc = json_object_get(zp, "recent");
        printf("loads          zone %.1f%%, region %.1f%%, rest %.1f%% (instances %lld/%lld, "
               "%lld/%lld, %lld/%lld of recent size)\n",
               100 * json_number_value(json_array_get(l, 0)),
               100 * json_number_value(json_array_get(l, 1)),
               100 * json_number_value(json_array_get(l, 2)),
               (long long)json_integer_value(json_array_get(n, 0)),
               (long long)json_integer_value(json_array_get(rc, 0)),
               (long long)json_integer_value(json_array_get(n, 1)),
               (long long)json_integer_value(json_array_get(rc, 1)),
               (long long)json_integer_value(json_array_get(n, 2)),
               (long long)json_integer_value(json_array_get(rc, 2)));
    }
    if (json_is_true(json_object_get(r, "protected")))
        printf("PROTECTED      a mass drop is held: %lld instance(s) etcd no longer has are still "
               "listed\n",
               int_of(zp, "held"));
    table_row(&t, "ADDRESS", "ZONE", "PRIORITY", "WEIGHT", "GROUP", "USE");
    for (int k = 0; k < 2; k++)
        json_array_foreach(json_object_get(r, k ? "standby" : "instances"), i, e) {
            snprintf(w, sizeof w, "%lld", int_of(e, "weight"));
            snprintf(p, sizeof p, "%lld", int_of(e, "priority"));
            table_row(&t, str_or(e, "address", "?"), str_or(e, "zone", "?"), p, w,
                      *str_or(e, "group", "") ? str_or(e, "group", "") : "-",
                      k ? "standby" : "in use");
        }
    if (t.rows > 1)
        table_print(&t, "");
    table_free(&t);
    json_decref(r);
    fflush(stdout);
    return ferror(stdout) ? EXIT_FAILED : EXIT_DONE;
}

static int cmd_resolve(struct opts *o)
{
    disc_client *c;
    struct disc_list *l;
    struct table t = {.cols = 5};
    char w[32], meta[1024];
    int rc, st;

    if (o->prefer_zone)
        return resolve_zoned(o);
    if ((st = open_client(o, &c)))
        return st;
    rc = disc_resolve(c, o->pos[0], o->group, o->timeout_ms, &l);
    if (rc) {
        st = call_failed(c, o, rc);
        disc_client_close(c);
        return st;
    }
    disc_client_close(c);
    if (o->json) {
        st = print_list_json(l);
        disc_list_free(l);
        return st;
    }
    printf("%s%s%s: %zu instance(s) at revision %" PRId64 "%s\n", l->service,
           o->group ? " group " : "", o->group ? o->group : "", l->n, l->revision,
           l->stale ? ", STALE: the agent could not confirm this list with etcd lately" : "");
    if (l->n) {
        table_row(&t, "ADDRESS", "ZONE", "WEIGHT", "GROUP", "METADATA");
        for (size_t i = 0; i < l->n; i++) {
            const struct disc_instance *in = &l->instances[i];
            const char *zone = meta_of(in, "zone");
            snprintf(w, sizeof w, "%" PRId32, in->weight);
            meta_text(in, meta, sizeof meta);
            table_row(&t, in->address, zone ? zone : "?", w, *in->group ? in->group : "-", meta);
        }
        table_print(&t, "");
        table_free(&t);
    }
    disc_list_free(l);
    fflush(stdout);
    return ferror(stdout) ? EXIT_FAILED : EXIT_DONE;
}

/* ---- watch -------------------------------------------------------------- */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

struct watch_state {
    const struct opts *o;
    disc_client *c;
    struct disc_list *prev; /* the last list shown */
    bool gone;              /* the agent went away since */
    int exit;               /* set to end the watch */
};

static void stamp(char *buf, size_t len)
{
    time_t now = time(NULL);
    struct tm tm;

    if (!localtime_r(&now, &tm) || !strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm))
        snprintf(buf, len, "?");
}

static void print_joined(const char *ts, int64_t rev, const struct disc_instance *in)
{
    printf("%s rev %" PRId64 " + %s joined (weight %" PRId32 "%s%s)\n", ts, rev, in->address,
           in->weight, *in->group ? ", group " : "", in->group);
}

static bool same_meta(const struct disc_instance *a, const struct disc_instance *b)
{
    if (a->n_meta != b->n_meta)
        return false;
    for (size_t k = 0; k < a->n_meta; k++)
        if (strcmp(a->meta_keys[k], b->meta_keys[k]) ||
            strcmp(a->meta_values[k], b->meta_values[k]))
            return false;
    return true;
}

/* Prints what changed from prev to l (both sorted by address). */
static void print_changes(const struct disc_list *prev, const struct disc_list *l)
{
    char ts[64], m1[512], m2[512];
    size_t i = 0, j = 0;
    int64_t rev = l->revision;

    stamp(ts, sizeof ts);
    if (!prev) {
        for (; j < l->n; j++)
            print_joined(ts, rev, &l->instances[j]);
        if (!l->n)
            printf("%s rev %" PRId64 " (no instances)\n", ts, rev);
        if (l->stale)
            printf("%s rev %" PRId64 " ! stale (etcd unreachable)\n", ts, rev);
        return;
    }
    while (i < prev->n || j < l->n) {
        const struct disc_instance *a = i < prev->n ? &prev->instances[i] : NULL;
        const struct disc_instance *b = j < l->n ? &l->instances[j] : NULL;
        int cmp = !a ? 1 : !b ? -1 : strcmp(a->address, b->address);

        if (cmp < 0) {
            printf("%s rev %" PRId64 " - %s left\n", ts, rev, a->address);
            i++;
        } else if (cmp > 0) {
            print_joined(ts, rev, b);
            j++;
        } else {
            if (a->weight != b->weight)
                printf("%s rev %" PRId64 " ~ %s weight %" PRId32 " -> %" PRId32 "\n", ts, rev,
                       b->address, a->weight, b->weight);
            if (strcmp(a->group, b->group))
                printf("%s rev %" PRId64 " ~ %s group %s -> %s\n", ts, rev, b->address,
                       *a->group ? a->group : "(none)", *b->group ? b->group : "(none)");
            if (!same_meta(a, b)) {
                meta_text(a, m1, sizeof m1);
                meta_text(b, m2, sizeof m2);
                printf("%s rev %" PRId64 " ~ %s metadata %s -> %s\n", ts, rev, b->address, m1, m2);
            }
            i++;
            j++;
        }
    }
    if (prev->stale != l->stale)
        printf("%s rev %" PRId64 " %s\n", ts, rev,
               l->stale ? "! stale (etcd unreachable)" : "! live");
}

static void on_watch(struct disc_watch *w, const struct disc_list *l, int err, void *arg)
{
    struct watch_state *s = arg;

    (void)w;
    if (err == DISC_ENOAGENT) {
        fprintf(stderr, "agentctl: the agent at %s went away (%s); reconnecting\n",
                disc_client_path(s->c), last_message(s->c));
        s->gone = true;
        return;
    }
    if (err == DISC_EUNAVAIL) {
        fprintf(stderr,
                "agentctl: the agent has no list of %s yet: etcd has not answered; "
                "waiting\n",
                s->o->pos[0]);
        return;
    }
    if (err) {
        const char *code = "", *msg = "";
        disc_client_last_error(s->c, &code, &msg);
        fprintf(stderr, "agentctl: the agent refused to watch %s: %s (%s)\n", s->o->pos[0], msg,
                code);
        s->exit = EXIT_FAILED;
        return;
    }
    if (s->gone) {
        fprintf(stderr, "agentctl: reconnected to the agent\n");
        s->gone = false;
    }
    if (s->o->json) {
        if (print_list_json(l) != EXIT_DONE)
            s->exit = EXIT_FAILED;
    } else {
        print_changes(s->prev, l);
        fflush(stdout);
        if (ferror(stdout))
            s->exit = EXIT_FAILED;
    }
    disc_list_free(s->prev);
    s->prev = disc_list_dup(l);
}

static int cmd_watch(struct opts *o)
{
    struct watch_state s = {.o = o, .exit = -1};
    struct sigaction sa;
    struct disc_watch *w;
    int rc, st = open_client(o, &s.c);

    if (st)
        return st;
    /* No SA_RESTART: the signal interrupts the wait, which returns
     * DISC_EINTR, and the loop ends with 0. */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    rc = disc_watch(s.c, o->pos[0], o->group, on_watch, &s, &w);
    if (rc) {
        st = call_failed(s.c, o, rc);
        disc_client_close(s.c);
        return st;
    }
    while (!interrupted && s.exit < 0) {
        /* A bounded wait, so that a signal landing just before the poll
         * starts ends the loop within a second anyway. */
        rc = disc_client_wait(s.c, 1000);
        if (rc == DISC_EPROTO) {
            fprintf(stderr, "agentctl: the agent sent a malformed line (%s); reconnecting\n",
                    last_message(s.c));
        } else if (rc == DISC_ESYSTEM) {
            fprintf(stderr, "agentctl: %s\n", last_message(s.c));
            s.exit = EXIT_FAILED;
        }
    }
    disc_unwatch(w);
    disc_client_close(s.c);
    disc_list_free(s.prev);
    return s.exit < 0 ? EXIT_DONE : s.exit;
}

/* ---- register and deregister --------------------------------------------- */

static int cmd_register(struct opts *o)
{
    struct disc_registration r = {
        .name = o->pos[0],
        .address = o->pos[1],
        .weight = o->weight_set ? o->weight : 1,
        .group = o->group,
        .n_meta = o->n_meta,
        .meta_keys = o->meta_keys,
        .meta_values = o->meta_values,
        .persist = true,
    };
    disc_client *c;
    int rc, st = open_client(o, &c);

    if (st)
        return st;
    rc = disc_register(c, &r, o->timeout_ms);
    if (rc == DISC_EINPROGRESS) {
        fprintf(stderr,
                "agentctl: the agent accepted %s %s, but etcd has not confirmed it yet; the "
                "agent keeps trying (see 'agentctl status'): %s\n",
                r.name, r.address, last_message(c));
        rc = 0;
    } else if (rc == 0) {
        printf("registered %s %s (weight %" PRId32 "%s%s); it stays until 'agentctl deregister "
               "%s %s' or the agent stops\n",
               r.name, r.address, r.weight, r.group ? ", group " : "", r.group ? r.group : "",
               r.name, r.address);
    }
    st = rc ? call_failed(c, o, rc) : EXIT_DONE;
    disc_client_close(c);
    return st;
}

static int cmd_deregister(struct opts *o)
{
    disc_client *c;
    int rc, st = open_client(o, &c);

    if (st)
        return st;
    rc = disc_deregister(c, o->pos[0], o->pos[1], o->timeout_ms);
    if (rc == 0)
        printf("deregistered %s %s\n", o->pos[0], o->pos[1]);
    st = rc ? call_failed(c, o, rc) : EXIT_DONE;
    disc_client_close(c);
    return st;
}

/* ---- health, drain, maintenance ------------------------------------------ */

static int cmd_checks(struct opts *o)
{
    json_t *r, *e;
    size_t i;
    int st = object_request(o, json_pack("{s:s}", "op", "checks"), &r);
    struct table t = {0};

    if (st)
        return st;
    if (o->json) {
        st = print_json(r);
        json_decref(r);
        return st;
    }
    json_t *maint = json_object_get(r, "maint");
    if (json_is_true(json_object_get(maint, "on")))
        printf("maintenance: on (%s)\n\n", str_or(maint, "reason", ""));
    table_row(&t, "NAME", "ADDRESS", "CHECK", "HEALTH", "STREAK", "CHANGED", "OUTPUT", NULL);
    json_array_foreach(json_object_get(r, "instances"), i, e) {
        json_t *ck = json_object_get(e, "check");
        char streak[32] = "-", changed[32] = "-";
        const char *health = json_is_true(json_object_get(e, "drained"))   ? "drained"
                             : json_is_true(json_object_get(e, "healthy")) ? "healthy"
                                                                           : "unhealthy";
        if (ck) {
            long long p = int_of(ck, "passes"), f = int_of(ck, "failures");
            snprintf(streak, sizeof streak, p ? "%lld pass" : "%lld fail", p ? p : f);
            if (int_of(ck, "changed_ms_ago") >= 0) {
                char ago[24];
                human_ms(int_of(ck, "changed_ms_ago"), ago, sizeof ago);
                snprintf(changed, sizeof changed, "%s ago", ago);
            }
        }
        table_row(&t, str_or(e, "name", "?"), str_or(e, "address", "?"),
                  ck ? str_or(ck, "type", "?") : "none", health, streak, changed,
                  ck ? str_or(ck, "output", "") : "", NULL);
    }
    table_print(&t, "");
    table_free(&t);
    json_decref(r);
    return EXIT_DONE;
}

static int cmd_check(struct opts *o)
{
    json_t *r, *req;
    int st;

    if (strcmp(o->pos[0], "pass") && strcmp(o->pos[0], "fail")) {
        fprintf(stderr, "agentctl: check takes pass or fail, not '%s'\n", o->pos[0]);
        return EXIT_USAGE;
    }
    req = json_pack("{s:s, s:s, s:s, s:s}", "op", "check", "status", o->pos[0], "name", o->pos[1],
                    "address", o->pos[2]);
    if (req && o->output)
        json_object_set_new(req, "output", json_string(o->output));
    st = object_request(o, req, &r);
    json_decref(r);
    return st;
}

static int drain_op(struct opts *o, const char *op, const char *done)
{
    json_t *r;
    int st = object_request(
        o, json_pack("{s:s, s:s, s:s}", "op", op, "name", o->pos[0], "address", o->pos[1]), &r);

    if (!st)
        printf("%s %s %s\n", done, o->pos[0], o->pos[1]);
    json_decref(r);
    return st;
}

static int cmd_drain(struct opts *o)
{
    return drain_op(o, "drain", "drained");
}

static int cmd_undrain(struct opts *o)
{
    return drain_op(o, "undrain", "undrained");
}

static int cmd_maint(struct opts *o)
{
    json_t *r, *req;
    int st;

    if (strcmp(o->pos[0], "on") && strcmp(o->pos[0], "off")) {
        fprintf(stderr, "agentctl: maint takes on or off, not '%s'\n", o->pos[0]);
        return EXIT_USAGE;
    }
    req = json_pack("{s:s, s:b}", "op", "maint", "on", !strcmp(o->pos[0], "on"));
    if (req && o->reason)
        json_object_set_new(req, "reason", json_string(o->reason));
    st = object_request(o, req, &r);
    if (!st)
        printf("maintenance %s\n", o->pos[0]);
    json_decref(r);
    return st;
}

/* ---- xDS ------------------------------------------------------------------ */

static int cmd_xds_bootstrap(struct opts *o)
{
    json_t *r;
    int st = object_request(o, json_pack("{s:s}", "op", "xds_bootstrap"), &r);
    char *text;

    if (st)
        return st;
    text = json_dumps(json_object_get(r, "bootstrap"), JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(r);
    if (!text) {
        fprintf(stderr, "agentctl: the agent's reply has no bootstrap\n");
        return EXIT_FAILED;
    }
    printf("%s\n", text);
    free(text);
    return EXIT_DONE;
}

static int cmd_xds(struct opts *o)
{
    json_t *r;
    int st = object_request(o, json_pack("{s:s, s:s}", "op", "xds", "service", o->pos[0]), &r);
    char *text;

    if (st)
        return st;
    text = json_dumps(r, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(r);
    if (!text)
        return EXIT_FAILED;
    printf("%s\n", text);
    free(text);
    return EXIT_DONE;
}

/* ---- command line -------------------------------------------------------- */

static bool accepts(const struct command *cmd, const char *opt)
{
    size_t n = strlen(opt);

    for (const char *p = cmd->options; (p = strstr(p, opt)) != NULL; p += n)
        if ((p == cmd->options || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

static int parse_meta(const struct command *cmd, struct opts *o, const char *kv)
{
    const char *eq = strchr(kv, '=');
    char *copy;
    const char **k, **v;
    char **b;

    if (!eq || eq == kv)
        return usage_error(cmd, "--meta takes KEY=VALUE, not '%s'", kv);
    copy = strdup(kv);
    k = realloc(o->meta_keys, (o->n_meta + 1) * sizeof *k);
    if (k)
        o->meta_keys = k;
    v = realloc(o->meta_values, (o->n_meta + 1) * sizeof *v);
    if (v)
        o->meta_values = v;
    b = realloc(o->meta_buf, (o->n_meta + 1) * sizeof *b);
    if (b)
        o->meta_buf = b;
    if (!copy || !k || !v || !b) {
        free(copy);
        fprintf(stderr, "agentctl: out of memory\n");
        return EXIT_FAILED;
    }
    copy[eq - kv] = '\0';
    for (size_t i = 0; i < o->n_meta; i++)
        if (!strcmp(o->meta_keys[i], copy)) {
            free(copy);
            return usage_error(cmd, "--meta %.*s is given twice", (int)(eq - kv), kv);
        }
    o->meta_buf[o->n_meta] = copy;
    o->meta_keys[o->n_meta] = copy;
    o->meta_values[o->n_meta] = copy + (eq - kv) + 1;
    o->n_meta++;
    return 0;
}

/* Reads a command's arguments: options may come before, between or after
 * the positional ones; "--" ends the options; "--opt=value" works too. */
static int parse_args(const struct command *cmd, struct opts *o, int argc, char **argv)
{
    bool options = true;

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = NULL, *eq;
        char name[32];
        int st;

        if (options && !strcmp(a, "--")) {
            options = false;
            continue;
        }
        if (!options || a[0] != '-' || !a[1]) {
            if (o->n_pos >= (size_t)cmd->n_pos)
                return usage_error(cmd, "unexpected argument '%s'", a);
            o->pos[o->n_pos++] = a;
            continue;
        }
        if (a[1] != '-')
            return usage_error(cmd, "unknown option '%s'", a);
        eq = strchr(a, '=');
        snprintf(name, sizeof name, "%.*s", (int)(eq ? (size_t)(eq - a - 2) : strlen(a + 2)),
                 a + 2);
        if (!accepts(cmd, name) || !*name)
            return usage_error(cmd, "unknown option '%s'", a);
        if (!strcmp(name, "json")) {
            if (eq)
                return usage_error(cmd, "--json takes no value");
            o->json = true;
            continue;
        }
        if (!strcmp(name, "prefer-zone")) {
            if (eq)
                return usage_error(cmd, "--prefer-zone takes no value");
            o->prefer_zone = true;
            continue;
        }
        if (eq) {
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            return usage_error(cmd, "--%s needs a value", name);
        }
        if (!strcmp(name, "group")) {
            o->group = val;
        } else if (!strcmp(name, "weight")) {
            char *end;
            long long w;
            errno = 0;
            w = strtoll(val, &end, 10);
            if (errno || end == val || *end || w < 1 || w > INT32_MAX)
                return usage_error(cmd,
                                   "--weight takes a whole number from 1 to %" PRId32 ", not '%s'",
                                   INT32_MAX, val);
            o->weight = (int32_t)w;
            o->weight_set = true;
        } else if (!strcmp(name, "meta")) {
            if ((st = parse_meta(cmd, o, val)) != 0)
                return st;
        } else if (!strcmp(name, "reason")) {
            o->reason = val;
        } else if (!strcmp(name, "output")) {
            o->output = val;
        }
    }
    if (o->n_pos < (size_t)cmd->n_pos)
        return usage_error(cmd, "%s needs %s", cmd->name,
                           !strcmp(cmd->name, "maint")   ? "on or off"
                           : !strcmp(cmd->name, "check") ? "pass or fail, a NAME and an ADDRESS"
                           : cmd->n_pos == 1             ? "a service NAME"
                                                         : "a service NAME and an ADDRESS");
    return 0;
}

static void opts_clear(struct opts *o)
{
    for (size_t i = 0; i < o->n_meta; i++)
        free(o->meta_buf[i]);
    free(o->meta_buf);
    free(o->meta_keys);
    free(o->meta_values);
}

int main(int argc, char **argv)
{
    struct opts o = {.timeout_ms = DA_DEFAULT_CTL_TIMEOUT_MS};
    const struct command *cmd = NULL;
    int i, st;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return EXIT_DONE;
        } else if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
            printf("agentctl %s\n", DISC_VERSION);
            return EXIT_DONE;
        } else if (!strcmp(a, "-s") || !strcmp(a, "--socket")) {
            if (++i >= argc)
                return usage_error(NULL, "%s needs the socket's path", a);
            o.socket = argv[i];
        } else if (!strncmp(a, "--socket=", 9)) {
            o.socket = a + 9;
        } else if (!strcmp(a, "--timeout") || !strncmp(a, "--timeout=", 10)) {
            const char *v = a[9] == '=' ? a + 10 : ++i < argc ? argv[i] : NULL;
            uint64_t ms;
            if (!v || duration_parse(v, &ms) != 0 || ms == 0 || ms > INT32_MAX)
                return usage_error(NULL, "--timeout takes a duration such as 500ms, 10s or 2m");
            o.timeout_ms = (int)ms;
        } else if (a[0] == '-') {
            return usage_error(NULL, "unknown option '%s'", a);
        } else {
            break;
        }
    }
    if (i >= argc)
        return usage_error(NULL, "a command is required: status, services, resolve, watch, "
                                 "register or deregister");
    if (!strcmp(argv[i], "help")) {
        for (size_t k = 0; i + 1 < argc && k < N_COMMANDS; k++)
            if (!strcmp(argv[i + 1], commands[k].name)) {
                command_help(&commands[k]);
                return EXIT_DONE;
            }
        usage(stdout);
        return EXIT_DONE;
    }
    for (size_t k = 0; k < N_COMMANDS; k++)
        if (!strcmp(argv[i], commands[k].name))
            cmd = &commands[k];
    if (!cmd)
        return usage_error(NULL, "unknown command '%s'", argv[i]);
    for (int k = i + 1; k < argc && strcmp(argv[k], "--"); k++)
        if (!strcmp(argv[k], "--help") || !strcmp(argv[k], "-h")) {
            command_help(cmd);
            return EXIT_DONE;
        }
    st = parse_args(cmd, &o, argc - i - 1, argv + i + 1);
    if (!st)
        st = cmd->run(&o);
    opts_clear(&o);
    return st;
}
