/* The gateway writes int64 fields as JSON strings, base64 for bytes, and
 * leaves out every field whose value is zero (so a PUT event has no "type"
 * and a failed txn no "succeeded"). Absent therefore means zero here. */
#include "etcd_parse.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "b64.h"
#include "error.h"

/* Reads an int64 that may be written as a string or a number; absent is 0. */
static int get_i64(json_t *obj, const char *name, int64_t *out)
{
    json_t *v = json_object_get(obj, name);
    const char *s;
    char *end;
    long long n;

    *out = 0;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (!json_is_string(v))
        return DA_EPROTO;
    s = json_string_value(v);
    if (!*s)
        return DA_EPROTO;
    errno = 0;
    n = strtoll(s, &end, 10);
    if (errno || *end)
        return DA_EPROTO;
    *out = n;
    return 0;
}

/* Unsigned 64-bit ids (member, cluster, leader) exceed int64 range. */
static int get_u64(json_t *obj, const char *name, uint64_t *out)
{
    json_t *v = json_object_get(obj, name);
    const char *s;
    char *end;
    unsigned long long n;

    *out = 0;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_integer(v)) {
        *out = (uint64_t)json_integer_value(v);
        return 0;
    }
    if (!json_is_string(v))
        return DA_EPROTO;
    s = json_string_value(v);
    if (!*s || *s == '-')
        return DA_EPROTO;
    errno = 0;
    n = strtoull(s, &end, 10);
    if (errno || *end)
        return DA_EPROTO;
    *out = n;
    return 0;
}

static int get_bool(json_t *obj, const char *name, int *out)
{
    json_t *v = json_object_get(obj, name);

    *out = 0;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return DA_EPROTO;
    *out = json_is_true(v);
    return 0;
}

static int get_bytes(json_t *obj, const char *name, char **out, size_t *len)
{
    json_t *v = json_object_get(obj, name);
    int rc;

    *out = NULL;
    *len = 0;
    if (!v || json_is_null(v)) {
        *out = calloc(1, 1);
        return *out ? 0 : DA_ENOMEM;
    }
    if (!json_is_string(v))
        return DA_EPROTO;
    rc = b64_decode(json_string_value(v), json_string_length(v), out, len);
    return rc == -ENOMEM ? DA_ENOMEM : rc ? DA_EPROTO : 0;
}

void etcd_kv_clear(struct etcd_kv *kv)
{
    free(kv->key);
    free(kv->value);
    memset(kv, 0, sizeof *kv);
}

static int parse_kv(json_t *o, struct etcd_kv *kv)
{
    int rc;

    memset(kv, 0, sizeof *kv);
    if (!json_is_object(o))
        return DA_EPROTO;
    if ((rc = get_bytes(o, "key", &kv->key, &kv->key_len)) ||
        (rc = get_bytes(o, "value", &kv->value, &kv->value_len)) ||
        (rc = get_i64(o, "create_revision", &kv->create_revision)) ||
        (rc = get_i64(o, "mod_revision", &kv->mod_revision)) ||
        (rc = get_i64(o, "version", &kv->version)) || (rc = get_i64(o, "lease", &kv->lease))) {
        etcd_kv_clear(kv);
        return rc;
    }
    if (kv->key_len == 0) {
        etcd_kv_clear(kv);
        return DA_EPROTO;
    }
    return 0;
}

static int parse_kvs(json_t *arr, struct etcd_kv **out, size_t *n)
{
    size_t i, len;
    struct etcd_kv *kvs;
    int rc;

    *out = NULL;
    *n = 0;
    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr))
        return DA_EPROTO;
    len = json_array_size(arr);
    if (!len)
        return 0;
    kvs = calloc(len, sizeof *kvs);
    if (!kvs)
        return DA_ENOMEM;
    for (i = 0; i < len; i++) {
        if ((rc = parse_kv(json_array_get(arr, i), &kvs[i]))) {
            while (i--)
                etcd_kv_clear(&kvs[i]);
            free(kvs);
            return rc;
        }
    }
    *out = kvs;
    *n = len;
    return 0;
}

static int parse_header(json_t *o, struct etcd_result *r)
{
    json_t *h = json_object_get(o, "header");
    int rc;

    if (!h)
        return 0;
    if (!json_is_object(h))
        return DA_EPROTO;
    if ((rc = get_i64(h, "revision", &r->revision)) ||
        (rc = get_u64(h, "cluster_id", &r->cluster_id)) ||
        (rc = get_u64(h, "member_id", &r->member_id)) ||
        (rc = get_i64(h, "raft_term", &r->raft_term)))
        return rc;
    return 0;
}

void etcd_result_clear(struct etcd_result *r)
{
    for (size_t i = 0; i < r->n_kvs; i++)
        etcd_kv_clear(&r->kvs[i]);
    free(r->kvs);
    free(r->token);
    memset(r, 0, sizeof *r);
}

/* A txn's responses: the first response_range's kvs become r->kvs, so a
 * compare-and-put that reads on failure gets the current value back. */
static int parse_txn_responses(json_t *arr, struct etcd_result *r)
{
    size_t i;
    json_t *resp;

    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr))
        return DA_EPROTO;
    json_array_foreach(arr, i, resp) {
        json_t *range;
        if (!json_is_object(resp))
            return DA_EPROTO;
        range = json_object_get(resp, "response_range");
        if (range && !r->kvs) {
            if (!json_is_object(range))
                return DA_EPROTO;
            int rc = parse_kvs(json_object_get(range, "kvs"), &r->kvs, &r->n_kvs);
            if (rc)
                return rc;
        }
    }
    return 0;
}

static int parse_result(json_t *o, struct etcd_result *r)
{
    int rc, b;
    json_t *tok;

    if (!json_is_object(o))
        return DA_EPROTO;
    if ((rc = parse_header(o, r)))
        return rc;
    if ((rc = parse_kvs(json_object_get(o, "kvs"), &r->kvs, &r->n_kvs)))
        return rc;
    if (!r->kvs && (rc = parse_kvs(json_object_get(o, "prev_kvs"), &r->kvs, &r->n_kvs)))
        return rc;
    if ((rc = get_i64(o, "count", &r->count)) || (rc = get_i64(o, "ID", &r->lease_id)) ||
        (rc = get_u64(o, "leader", &r->leader)))
        return rc;
    /* A lease reply without TTL means the lease is gone (the gateway drops
     * zero fields). */
    if (json_object_get(o, "TTL")) {
        if ((rc = get_i64(o, "TTL", &r->ttl)))
            return rc;
    } else {
        r->ttl = -1;
    }
    if ((rc = get_bool(o, "more", &b)))
        return rc;
    r->more = b;
    if ((rc = get_bool(o, "succeeded", &b)))
        return rc;
    r->succeeded = b;
    if ((rc = parse_txn_responses(json_object_get(o, "responses"), r)))
        return rc;
    json_t *ver = json_object_get(o, "version");
    if (ver) {
        if (!json_is_string(ver))
            return DA_EPROTO;
        snprintf(r->version, sizeof r->version, "%s", json_string_value(ver));
    }
    tok = json_object_get(o, "token");
    if (tok) {
        if (!json_is_string(tok))
            return DA_EPROTO;
        r->token = strdup(json_string_value(tok));
        if (!r->token)
            return DA_ENOMEM;
    }
    return 0;
}

int etcd_error_to_err(const struct etcd_error *e)
{
    if (strstr(e->message, "no leader"))
        return DA_ENOLEADER;
    if (e->code == 16 || strstr(e->message, "invalid auth token") ||
        strstr(e->message, "authentication failed") || strstr(e->message, "user name is empty"))
        return DA_EAUTH;
    if (strstr(e->message, "requested lease not found"))
        return DA_ELEASE;
    if (e->code == 14)
        return DA_ENOLEADER;
    return DA_EETCD;
}

/* Unary errors are {"error":"text","message":"text","code":N}; stream
 * errors are {"error":{"grpc_code":N,"http_code":N,"message":"text",...}}. */
static int parse_error(json_t *root, struct etcd_error *e)
{
    json_t *err = json_object_get(root, "error");
    json_t *msg, *code;

    memset(e, 0, sizeof *e);
    if (json_is_object(err)) {
        msg = json_object_get(err, "message");
        code = json_object_get(err, "grpc_code");
    } else {
        msg = json_object_get(root, "message");
        if (!json_is_string(msg))
            msg = err;
        code = json_object_get(root, "code");
    }
    if (json_is_integer(code))
        e->code = (int)json_integer_value(code);
    snprintf(e->message, sizeof e->message, "%s",
             json_is_string(msg) ? json_string_value(msg) : "unknown etcd error");
    return etcd_error_to_err(e);
}

static json_t *load(const char *body, size_t len)
{
    /* JSON_DISABLE_EOF_CHECK is not set: trailing garbage is an error. */
    return json_loadb(body, len, 0, NULL);
}

int etcd_parse_reply(const char *body, size_t len, struct etcd_result *r, struct etcd_error *e)
{
    json_t *root, *res;
    int rc;

    memset(r, 0, sizeof *r);
    memset(e, 0, sizeof *e);
    root = load(body, len);
    if (!root)
        return DA_EPROTO;
    if (!json_is_object(root)) {
        rc = DA_EPROTO;
    } else if (json_object_get(root, "error")) {
        rc = parse_error(root, e);
    } else {
        res = json_object_get(root, "result");
        rc = parse_result(res ? res : root, r);
        if (rc)
            etcd_result_clear(r);
    }
    json_decref(root);
    return rc;
}

void etcd_watch_msg_clear(struct etcd_watch_msg *m)
{
    for (size_t i = 0; i < m->n_events; i++)
        etcd_kv_clear(&m->events[i].kv);
    free(m->events);
    memset(m, 0, sizeof *m);
}

static int parse_events(json_t *arr, struct etcd_watch_msg *m)
{
    size_t i, len;
    json_t *ev;

    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr))
        return DA_EPROTO;
    len = json_array_size(arr);
    if (!len)
        return 0;
    m->events = calloc(len, sizeof *m->events);
    if (!m->events)
        return DA_ENOMEM;
    json_array_foreach(arr, i, ev) {
        json_t *type;
        int rc;
        if (!json_is_object(ev))
            return DA_EPROTO;
        type = json_object_get(ev, "type");
        if (!type || json_is_null(type) ||
            (json_is_string(type) && !strcmp(json_string_value(type), "PUT")))
            m->events[i].type = ETCD_EVENT_PUT;
        else if (json_is_string(type) && !strcmp(json_string_value(type), "DELETE"))
            m->events[i].type = ETCD_EVENT_DELETE;
        else
            return DA_EPROTO;
        if ((rc = parse_kv(json_object_get(ev, "kv"), &m->events[i].kv)))
            return rc;
        m->n_events = i + 1;
        if (m->events[i].kv.mod_revision <= 0)
            return DA_EPROTO;
        /* Events come in revision order; one that goes back would move a
         * receiver's view (and the resume point) backwards. */
        if (i > 0 && m->events[i].kv.mod_revision < m->events[i - 1].kv.mod_revision)
            return DA_EPROTO;
    }
    return 0;
}

int etcd_parse_watch_line(const char *line, size_t len, struct etcd_watch_msg *m,
                          struct etcd_error *e)
{
    json_t *root, *res, *reason, *h;
    int rc = 0, b;

    memset(m, 0, sizeof *m);
    memset(e, 0, sizeof *e);
    root = load(line, len);
    if (!root)
        return DA_EPROTO;
    if (!json_is_object(root)) {
        rc = DA_EPROTO;
        goto out;
    }
    if (json_object_get(root, "error")) {
        rc = parse_error(root, e);
        goto out;
    }
    res = json_object_get(root, "result");
    if (!json_is_object(res)) {
        rc = DA_EPROTO;
        goto out;
    }
    h = json_object_get(res, "header");
    if (h && !json_is_object(h)) {
        rc = DA_EPROTO;
        goto out;
    }
    if (h && ((rc = get_i64(h, "revision", &m->revision)) ||
              (rc = get_u64(h, "cluster_id", &m->cluster_id))))
        goto out;
    if ((rc = get_i64(res, "watch_id", &m->watch_id)))
        goto out;
    if ((rc = get_bool(res, "created", &b)))
        goto out;
    m->created = b;
    if ((rc = get_bool(res, "canceled", &b)))
        goto out;
    m->canceled = b;
    if ((rc = get_i64(res, "compact_revision", &m->compact_revision)))
        goto out;
    reason = json_object_get(res, "cancel_reason");
    if (reason && json_is_string(reason))
        snprintf(m->cancel_reason, sizeof m->cancel_reason, "%s", json_string_value(reason));
    rc = parse_events(json_object_get(res, "events"), m);
out:
    if (rc)
        etcd_watch_msg_clear(m);
    json_decref(root);
    return rc;
}
