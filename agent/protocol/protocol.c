/* The socket protocol's front: the server's callbacks, the table of
 * operations and their dispatch, and who may use the operations that
 * change registrations. protocol_internal.h lists the files that do the
 * rest; proto/agent-protocol.md is the specification. */
#include <grp.h>
#include <jansson.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "protocol_internal.h"

const char proto_too_long_reply[] =
    "{\"ok\":false,\"error\":{\"code\":\"line_too_long\",\"message\":\"request line over 65536 "
    "bytes; the connection is closed\"}}\n";

const char proto_busy_reply[] =
    "{\"ok\":false,\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many "
    "connections: the agent's clients hold every file descriptor but those it keeps for etcd, "
    "health checks and files (or 16384 clients are connected); this connection is closed: "
    "close idle connections or raise the agent's LimitNOFILE\"}}\n";

/* Whether this connection's peer may change registrations: everyone,
 * unless socket.register_users/groups say who (SO_PEERCRED's uid and gid,
 * and the user's other groups). Decided once per connection. */
static bool may_change(struct conn_state *cs, json_t *id, const char *op)
{
    const struct proto_access *acc = &cs->p->d.access;
    pid_t pid;
    uid_t uid = (uid_t)-1;
    gid_t gid = (gid_t)-1;
    bool have_peer;

    if (!acc->limited)
        return true;
    /* Read every time, not only when the verdict is made: the refusal
     * names the peer, and a cached verdict must not name an unset uid. */
    have_peer = server_conn_peer(cs->c, &pid, &uid, &gid) == 0;
    if (cs->may_change == 0) {
        cs->may_change = -1;
        if (have_peer) {
            for (size_t i = 0; i < acc->n_uids; i++)
                if (acc->uids[i] == (unsigned)uid)
                    cs->may_change = 1;
            gid_t groups[256];
            int ng = 1;
            groups[0] = gid;
            struct passwd pw, *pp = NULL;
            char buf[4096];
            if (getpwuid_r(uid, &pw, buf, sizeof buf, &pp) == 0 && pp) {
                ng = (int)(sizeof groups / sizeof groups[0]);
                if (getgrouplist(pp->pw_name, gid, groups, &ng) < 0)
                    ng = 1;
            }
            for (int k = 0; k < ng && cs->may_change < 0; k++)
                for (size_t i = 0; i < acc->n_gids; i++)
                    if (acc->gids[i] == (unsigned)groups[k])
                        cs->may_change = 1;
        }
    }
    if (cs->may_change > 0)
        return true;
    if (have_peer)
        proto__send_error(cs, id, "forbidden",
                          "uid %ld may not use '%s': socket.register_users and register_groups in "
                          "the agent's configuration say who may; this connection may only read",
                          (long)uid, op);
    else
        proto__send_error(cs, id, "forbidden",
                          "a peer whose credentials the kernel did not give may not use '%s': "
                          "socket.register_users and register_groups in the agent's configuration "
                          "say who may; this connection may only read",
                          op);
    return false;
}

/* ---- dispatch ----------------------------------------------------------- */

static void op_ping(struct conn_state *cs, json_t *req, json_t *id)
{
    (void)req;
    proto__send_json(cs, proto__reply_new(id, true));
}

/* Every operation of the socket: its name, its handler, and whether it
 * changes registrations (then only a peer that may_change() may use it,
 * and it is refused before its members are read). The unknown_op error
 * lists these names in this order; proto/agent-protocol.md lists them
 * too. A new operation is one line here. */
static const struct op {
    const char *name;
    void (*handler)(struct conn_state *cs, json_t *req, json_t *id);
    bool write;
} ops[] = {
    {"resolve", proto__op_resolve, false},
    {"watch", proto__op_watch, false},
    {"unwatch", proto__op_unwatch, false},
    {"register", proto__op_register, true},
    {"deregister", proto__op_deregister, true},
    {"status", proto__op_status, false},
    {"services", proto__op_services, false},
    {"ping", op_ping, false},
    {"check", proto__op_check, true},
    {"checks", proto__op_checks, false},
    {"drain", proto__op_drain, true},
    {"undrain", proto__op_undrain, true},
    {"maint", proto__op_maint, true},
    {"xds", proto__op_xds, false},
    {"xds_bootstrap", proto__op_xds_bootstrap, false},
};

static void dispatch(struct conn_state *cs, json_t *req, json_t *id, const char *name)
{
    char known[512];
    size_t n = 0;

    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (!strcmp(name, ops[i].name)) {
            if (!ops[i].write || may_change(cs, id, name))
                ops[i].handler(cs, req, id);
            return;
        }
    known[0] = '\0';
    for (size_t i = 0; i < sizeof ops / sizeof ops[0] && n < sizeof known; i++)
        n += (size_t)snprintf(known + n, sizeof known - n, "%s%s", i ? ", " : "", ops[i].name);
    proto__send_error(cs, id, "unknown_op", "unknown op '%.64s': use %s", name, known);
}

static struct conn_state *state_of(proto *pr, server *s, server_conn *c)
{
    struct conn_state *cs = server_conn_data(c);

    if (cs)
        return cs;
    cs = calloc(1, sizeof *cs);
    if (!cs)
        return NULL;
    cs->p = pr;
    cs->s = s;
    cs->c = c;
    cs->id = server_conn_id(c);
    server_conn_set_data(c, cs);
    return cs;
}

void proto_on_line(server *s, server_conn *c, char *line, size_t len, void *arg)
{
    struct conn_state *cs = state_of(arg, s, c);
    json_error_t jerr;
    json_t *req, *id, *op;
    const char *name;

    if (!cs) {
        server_conn_close(c);
        return;
    }
    if (cs->dead)
        return;
    if (proto__fast_resolve(cs, line, len))
        return;
    /* Depth is bounded by jansson itself (2048 levels); duplicates are
     * refused so that a request means one thing. */
    req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!req) {
        proto__send_error(cs, NULL, "bad_json", "not JSON: %s at column %d", jerr.text,
                          jerr.column);
        return;
    }
    if (!json_is_object(req)) {
        proto__send_error(cs, NULL, "bad_request", "a request is a JSON object with an \"op\"");
        json_decref(req);
        return;
    }
    id = json_object_get(req, "id");
    if (id && !json_is_string(id) && !json_is_integer(id)) {
        proto__send_error(cs, NULL, "bad_request", "'id' must be a string or an integer");
        json_decref(req);
        return;
    }
    op = json_object_get(req, "op");
    name = json_is_string(op) ? json_string_value(op) : NULL;
    if (!name)
        proto__send_error(cs, id, "bad_request", "'op' (a string) is required");
    else
        dispatch(cs, req, id, name);
    json_decref(req);
}

void proto_on_eof(server *s, server_conn *c, void *arg)
{
    struct conn_state *cs = server_conn_data(c);

    (void)s;
    (void)arg;
    if (!cs) {
        server_conn_end(c);
        return;
    }
    cs->eof = true;
    proto__maybe_end(cs);
}

void proto_on_close(server *s, server_conn *c, void *arg)
{
    proto *pr = arg;
    struct conn_state *cs = server_conn_data(c);

    (void)s;
    if (!cs)
        return;
    cs->eof = false;
    while (cs->pending)
        proto__pending_end(cs->pending);
    proto__watches_free(cs);
    /* Registrations made by this connection leave with it. */
    cs->eof = false; /* nothing to end any more */
    registry_remove_owner(pr->d.registry, cs->id);
    free(cs);
}

int proto_new(proto **out, const struct proto_deps *d)
{
    proto *p = calloc(1, sizeof *p);

    *out = p;
    if (!p)
        return DA_ENOMEM;
    p->d = *d;
    return 0;
}

proto *proto_free(proto *p)
{
    free(p);
    return NULL;
}

void proto_set_checks_exec(proto *p, bool on)
{
    p->d.checks_exec = on;
}
