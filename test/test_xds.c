/* Tests of the xDS server (agent/xds/xds*.c).
 *
 * "resources": the model and the messages, as pure functions, decoded back
 * through the JSON rendering (which walks the protobuf descriptors, so it
 * shows exactly what the bytes hold).
 *
 * "e2e": a real etcd, a real discovery-agent, echo servers
 * (test/xds_echo.py, registered in etcd by etcdctl as another writer), and
 * two unmodified gRPC clients of xds:///echo: Debian's python3-grpcio
 * (test/xds_client.py) and a C-core client (examples/xds-client.c), both
 * given only GRPC_XDS_BOOTSTRAP. Each client prints per-address counts and
 * the wall-clock times of each address's first and last reply, which the
 * tests compare with the times they changed etcd. Measured numbers are
 * printed as "xds-measure: ..." lines. */
#include <arpa/inet.h>
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agentproc.h"
#include "b64.h"
#include "error.h"
#include "etcd_proc.h"
#include "proc.h"
#include "xds_resources.h"

#ifndef TEST_DATA_DIR
#define TEST_DATA_DIR "test/data"
#endif
#ifndef BUILD_DIR
#define BUILD_DIR "build"
#endif

#define PYTHON "/usr/bin/python3"
#define SCRIPTS TEST_DATA_DIR "/.."
#define PY_CLIENT SCRIPTS "/xds_client.py"
#define PY_ECHO SCRIPTS "/xds_echo.py"
#define C_CLIENT BUILD_DIR "/xds-client"

/* ---- resources ------------------------------------------------------------ */

static struct instance mk(const char *addr, int32_t weight, const char *group)
{
    struct instance i;

    memset(&i, 0, sizeof i);
    i.name = (char *)"echo";
    i.address = (char *)addr;
    i.weight = weight;
    i.group = (char *)group;
    return i;
}

/* A resolver stub: "slow.test" is being looked up, "gone.test" does not
 * resolve, any other name is 10.9.9.9. */
static int fake_lookup(const char *host, char ip[INET6_ADDRSTRLEN], void *arg)
{
    (*(int *)arg)++;
    if (!strcmp(host, "slow.test"))
        return 0;
    if (!strcmp(host, "gone.test"))
        return -1;
    strcpy(ip, "10.9.9.9");
    return 1;
}

static json_t *res_json(enum xds_type t, const struct xds_model *m, const char *name)
{
    struct xds_blob b;
    json_t *j;

    ck_assert_int_eq(xds_resource(m, t, name, "x-group", &b), 0);
    j = xds_resource_json(t, b.data, b.len);
    ck_assert_ptr_nonnull(j);
    xds_blob_clear(&b);
    return j;
}

static char *dumps(json_t *j)
{
    return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
}

START_TEST(test_model_dedup_weights_groups)
{
    struct instance in[] = {
        mk("10.0.0.1:80", 3, "A"),   mk("10.0.0.2:80", 0, ""),
        mk("[::1]:81", -5, "B"),     mk("[0:0::1]:81", 7, "B"), /* same as [::1]:81 */
        mk("name.test:82", 2, "A"),  mk("gone.test:83", 1, ""),
        mk("not-an-address", 1, ""), mk("10.0.0.1:80", 9, "Z"), /* duplicate */
        mk("10.9.9.9:82", 1, ""),                               /* = name.test:82 */
    };
    const struct instance *v[sizeof in / sizeof *in];
    struct xds_model m;
    int lookups = 0;

    for (size_t i = 0; i < sizeof in / sizeof *in; i++)
        v[i] = &in[i];
    ck_assert_int_eq(xds_model_build(&m, "echo", v, 9, fake_lookup, &lookups), 0);
    ck_assert_int_eq(lookups, 2);
    ck_assert(m.uses_names);
    ck_assert_uint_eq(m.n_eps, 4);
    /* Sorted by IP text, then port. */
    ck_assert_str_eq(m.eps[0].ip, "10.0.0.1");
    ck_assert_uint_eq(m.eps[0].weight, 3);
    ck_assert_str_eq(m.eps[0].group, "A");
    ck_assert_str_eq(m.eps[1].ip, "10.0.0.2");
    ck_assert_uint_eq(m.eps[1].weight, 1); /* 0 counts as 1 */
    ck_assert_str_eq(m.eps[2].ip, "10.9.9.9");
    ck_assert_uint_eq(m.eps[2].port, 82);
    ck_assert_str_eq(m.eps[3].ip, "::1");
    ck_assert_uint_eq(m.eps[3].weight, 1); /* -5 counts as 1; [0:0::1] left out */
    ck_assert_uint_eq(m.n_groups, 2);
    ck_assert_str_eq(m.groups[0], "A");
    ck_assert_str_eq(m.groups[1], "B");
    ck_assert_uint_eq(m.n_dropped, 5);
    xds_model_clear(&m);

    /* A name still being looked up: no model yet. */
    struct instance slow = mk("slow.test:1", 1, "");
    const struct instance *vs[] = {&in[0], &slow};
    ck_assert_int_eq(xds_model_build(&m, "echo", vs, 2, fake_lookup, &lookups), 1);
    ck_assert_ptr_null(m.eps);
    /* Without a resolver (the test-only switch), names pass as written. */
    ck_assert_int_eq(xds_model_build(&m, "echo", vs, 2, NULL, NULL), 0);
    ck_assert_str_eq(m.eps[1].ip, "slow.test");
    xds_model_clear(&m);
}
END_TEST

START_TEST(test_resources_shapes)
{
    struct instance in[] = {mk("10.0.0.1:80", 3, "A"), mk("10.0.0.2:80", 1, ""),
                            mk("10.0.0.3:80", 1, "A"), mk("10.0.0.4:80", 3, "")};
    const struct instance *v[] = {&in[0], &in[1], &in[2], &in[3]};
    struct xds_model m;
    json_t *j;
    char *s;

    ck_assert_int_eq(xds_model_build(&m, "echo", v, 4, NULL, NULL), 0);

    j = res_json(XDS_LDS, &m, "echo");
    s = dumps(j);
    ck_assert_ptr_nonnull(strstr(s, "\"route_config_name\":\"echo\""));
    ck_assert_ptr_nonnull(strstr(s, "\"config_source\":{\"ads\":{}}"));
    ck_assert_ptr_nonnull(strstr(s, "\"name\":\"envoy.filters.http.router\""));
    ck_assert_ptr_nonnull(strstr(
        s, "\"@type\":\"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\""));
    free(s);
    json_decref(j);

    /* The group route first, then the catch-all, whose "" prefix is
     * written (it is in a oneof). */
    j = res_json(XDS_RDS, &m, "echo");
    json_t *routes =
        json_object_get(json_array_get(json_object_get(j, "virtual_hosts"), 0), "routes");
    ck_assert_uint_eq(json_array_size(routes), 2);
    s = dumps(json_array_get(routes, 0));
    ck_assert_str_eq(s, "{\"match\":{\"headers\":[{\"exact_match\":\"A\",\"name\":\"x-group\"}],"
                        "\"prefix\":\"\"},\"route\":{\"cluster\":\"echo/A\"}}");
    free(s);
    s = dumps(json_array_get(routes, 1));
    ck_assert_str_eq(s, "{\"match\":{\"prefix\":\"\"},\"route\":{\"cluster\":\"echo\"}}");
    free(s);
    json_decref(j);

    j = res_json(XDS_CDS, &m, "echo/A");
    s = dumps(j);
    ck_assert_ptr_nonnull(strstr(s, "\"name\":\"echo/A\""));
    ck_assert_ptr_nonnull(strstr(s, "\"type\":\"EDS\""));
    ck_assert_ptr_nonnull(strstr(s, "\"eds_config\":{\"ads\":{}}"));
    ck_assert_ptr_null(strstr(s, "lb_policy")); /* ROUND_ROBIN is the default */
    free(s);
    json_decref(j);

    /* Localities by weight: 1 x 2 endpoints, 3 x 2 endpoints. */
    j = res_json(XDS_EDS, &m, "echo");
    json_t *locs = json_object_get(j, "endpoints");
    ck_assert_uint_eq(json_array_size(locs), 2);
    ck_assert_int_eq(
        json_integer_value(json_object_get(
            json_object_get(json_array_get(locs, 0), "load_balancing_weight"), "value")),
        2);
    ck_assert_int_eq(
        json_integer_value(json_object_get(
            json_object_get(json_array_get(locs, 1), "load_balancing_weight"), "value")),
        6);
    ck_assert_uint_eq(json_array_size(json_object_get(json_array_get(locs, 1), "lb_endpoints")), 2);
    json_decref(j);
    /* Group A: 10.0.0.1 (3) and 10.0.0.3 (1). */
    j = res_json(XDS_EDS, &m, "echo/A");
    s = dumps(j);
    ck_assert_ptr_nonnull(strstr(s, "10.0.0.1"));
    ck_assert_ptr_nonnull(strstr(s, "10.0.0.3"));
    ck_assert_ptr_null(strstr(s, "10.0.0.2"));
    free(s);
    json_decref(j);
    /* A group nobody is in: an assignment without endpoints. */
    j = res_json(XDS_EDS, &m, "echo/none");
    s = dumps(j);
    ck_assert_str_eq(s, "{\"@type\":\"type.googleapis.com/envoy.config.endpoint.v3."
                        "ClusterLoadAssignment\",\"cluster_name\":\"echo/none\"}");
    free(s);
    json_decref(j);
    /* Names that are no resource. */
    struct xds_blob b;
    ck_assert_int_eq(xds_resource(&m, XDS_LDS, "echo/A", "x-group", &b), 1);
    ck_assert_int_eq(xds_resource(&m, XDS_CDS, "echo/", "x-group", &b), 1);
    xds_model_clear(&m);
}
END_TEST

START_TEST(test_huge_weights_scaled)
{
    struct instance in[] = {mk("10.0.0.1:80", 2147483647, ""), mk("10.0.0.2:80", 2147483647, ""),
                            mk("10.0.0.3:80", 1, "")};
    const struct instance *v[] = {&in[0], &in[1], &in[2]};
    struct xds_model m;
    json_t *j, *locs;
    json_int_t w0, w1;

    ck_assert_int_eq(xds_model_build(&m, "echo", v, 3, NULL, NULL), 0);
    j = res_json(XDS_EDS, &m, "echo");
    locs = json_object_get(j, "endpoints");
    w0 = json_integer_value(json_object_get(
        json_object_get(json_array_get(locs, 0), "load_balancing_weight"), "value"));
    w1 = json_integer_value(json_object_get(
        json_object_get(json_array_get(locs, 1), "load_balancing_weight"), "value"));
    ck_assert_int_ge(w0, 1);
    ck_assert_int_le(w0 + w1, 4294967295LL);
    ck_assert_int_gt(w1, 4000000000LL);
    json_decref(j);
    xds_model_clear(&m);
}
END_TEST

START_TEST(test_request_roundtrip_and_response)
{
    char *names[] = {(char *)"echo", (char *)"echo/A"};
    struct xds_request in = {0}, out;
    struct xds_blob b, res[1], msg;
    json_t *j;
    char *s;

    in.version_info = (char *)"3";
    in.node_id = (char *)"host1";
    in.names = names;
    in.n_names = 2;
    in.type_url = (char *)xds_type_url[XDS_CDS];
    in.nonce = (char *)"7";
    in.nack = true;
    in.error_code = 14;
    in.error_message = (char *)"bad cluster";
    ck_assert_int_eq(xds_request_encode(&in, &b), 0);
    ck_assert_int_eq(xds_request_parse(b.data, b.len, &out), 0);
    ck_assert_str_eq(out.version_info, "3");
    ck_assert_str_eq(out.node_id, "host1");
    ck_assert_uint_eq(out.n_names, 2);
    ck_assert_str_eq(out.names[1], "echo/A");
    ck_assert_int_eq(xds_type_of(out.type_url), XDS_CDS);
    ck_assert_str_eq(out.nonce, "7");
    ck_assert(out.nack);
    ck_assert_str_eq(out.error_message, "bad cluster");
    xds_request_clear(&out);
    xds_blob_clear(&b);
    ck_assert_int_eq(xds_request_parse((const uint8_t *)"\xff\xff\xff", 3, &out), DA_EPROTO);

    ck_assert_int_eq(xds_cluster("echo", &res[0]), 0);
    ck_assert_int_eq(xds_response(XDS_CDS, "12", "34", res, 1, &msg), 0);
    j = xds_response_json(msg.data, msg.len);
    s = dumps(j);
    ck_assert_ptr_nonnull(strstr(s, "\"version_info\":\"12\""));
    ck_assert_ptr_nonnull(strstr(s, "\"nonce\":\"34\""));
    ck_assert_ptr_nonnull(
        strstr(s, "\"type_url\":\"type.googleapis.com/envoy.config.cluster.v3.Cluster\""));
    ck_assert_ptr_nonnull(strstr(s, "\"name\":\"echo\""));
    free(s);
    json_decref(j);
    xds_blob_clear(&msg);
    xds_blob_clear(&res[0]);
}
END_TEST

/* ---- end to end: the fixture ----------------------------------------------- */

#define MAX_PORTS 4

struct fx {
    struct etcd_cluster *cluster;
    struct agentp agent;
    char dir[512];
    char bootstrap[600];
    struct proc *echo;
    int port[MAX_PORTS];
    int n_ports;
};

static long long real_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static bool file_has(const char *path, const char *text)
{
    char buf[65536];
    FILE *f = fopen(path, "r");
    size_t n;

    if (!f)
        return false;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, text) != NULL;
}

/* Starts etcd, the agent (with extra YAML) and n echo servers. */
static void fx_up(struct fx *f, int n_ports, const char *yaml)
{
    struct etcd_cluster_opts co = {.members = 1};
    char log[600];
    const char *argv[MAX_PORTS + 3];
    char ports[MAX_PORTS][16];

    memset(f, 0, sizeof *f);
    f->cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f->cluster);
    snprintf(f->dir, sizeof f->dir, "%s/agent", etcd_cluster_dir(f->cluster));
    mkdir(f->dir, 0755);
    snprintf(f->bootstrap, sizeof f->bootstrap, "%s/xds-bootstrap.json", f->dir);
    ck_assert_int_eq(
        agentp_config(&f->agent, f->dir, etcd_cluster_urls(f->cluster), 10, 1000, yaml), 0);
    ck_assert_int_eq(agentp_start(&f->agent), 0);

    f->n_ports = n_ports;
    argv[0] = PYTHON;
    argv[1] = PY_ECHO;
    for (int i = 0; i < n_ports; i++) {
        f->port[i] = free_port();
        snprintf(ports[i], sizeof ports[i], "%d", f->port[i]);
        argv[2 + i] = ports[i];
    }
    argv[2 + n_ports] = NULL;
    if (n_ports) {
        snprintf(log, sizeof log, "%s/echo.log", f->dir);
        f->echo = proc_spawn(argv, NULL, log);
        ck_assert_ptr_nonnull(f->echo);
        for (int i = 0; i < 200 && !file_has(log, "ready"); i++)
            usleep(50000);
        ck_assert_msg(file_has(log, "ready"), "echo servers did not start");
    }
}

static void fx_down(struct fx *f)
{
    proc_free(f->echo);
    ck_assert_int_eq(agentp_free(&f->agent), 0);
    etcd_cluster_stop(f->cluster);
}

/* One request to etcd's JSON gateway, straight from this process: the
 * tests time their changes to the millisecond, which spawning etcdctl on a
 * busy machine would blur by hundreds. Returns when etcd has answered. */
static void etcd_post(struct fx *f, const char *path, const char *body)
{
    const char *url = etcd_member_url(f->cluster, 0); /* http://127.0.0.1:PORT */
    struct sockaddr_in sa = {.sin_family = AF_INET};
    char req[2048], reply[4096];
    int fd, n, got = 0;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)atoi(strrchr(url, ':') + 1));
    fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    n = snprintf(req, sizeof req,
                 "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                 path, strlen(body), body);
    ck_assert_int_eq(write(fd, req, (size_t)n), n);
    while ((n = (int)read(fd, reply + got, sizeof reply - 1 - (size_t)got)) > 0)
        got += n;
    close(fd);
    reply[got] = '\0';
    ck_assert_msg(strstr(reply, " 200 ") != NULL, "etcd said: %s", reply);
}

/* Registers HOST:port in etcd as a Go service would: no lease. */
static void put_as(struct fx *f, const char *host, int port, int weight, const char *group)
{
    char key[128], value[256], k64[B64_ENCODED_SIZE(128)], v64[B64_ENCODED_SIZE(256)];
    char body[1024];

    snprintf(key, sizeof key, "/micro/echo/%s:%d", host, port);
    snprintf(value, sizeof value,
             "{\"Name\":\"echo\",\"Address\":\"%s:%d\",\"Weight\":%d,\"Group\":\"%s\"}", host, port,
             weight, group);
    b64_encode(key, strlen(key), k64);
    b64_encode(value, strlen(value), v64);
    snprintf(body, sizeof body, "{\"key\":\"%s\",\"value\":\"%s\"}", k64, v64);
    etcd_post(f, "/v3/kv/put", body);
}

static void put(struct fx *f, int port, int weight, const char *group)
{
    put_as(f, "127.0.0.1", port, weight, group);
}

static void del_as(struct fx *f, const char *host, int port)
{
    char key[128], k64[B64_ENCODED_SIZE(128)], body[512];

    snprintf(key, sizeof key, "/micro/echo/%s:%d", host, port);
    b64_encode(key, strlen(key), k64);
    snprintf(body, sizeof body, "{\"key\":\"%s\"}", k64);
    etcd_post(f, "/v3/kv/deleterange", body);
}

static const char *addr(struct fx *f, int i)
{
    static char buf[MAX_PORTS][32];
    snprintf(buf[i], sizeof buf[i], "127.0.0.1:%d", f->port[i]);
    return buf[i];
}

/* ---- end to end: clients ---------------------------------------------------- */

enum kind { PY, CC };
static const char *const kind_name[] = {"python3-grpcio", "C-core"};

struct client {
    struct proc *p;
    char out[600];
};

/* Starts a client of xds:///echo with the agent's bootstrap. opts are the
 * shared options, spelled for each client by client_argv(). */
struct copts {
    int calls;
    double duration_s;
    const char *group;
    int interval_ms;
    bool no_wait;
    const char *target;
};

static void client_start(struct fx *f, struct client *c, enum kind k, const struct copts *o,
                         const char *bootstrap, const char *tag)
{
    char calls[16], dur[16], iv[16], env[700];
    const char *argv[20];
    const char *envv[] = {env, "GRPC_VERBOSITY=ERROR", NULL};
    int n = 0;

    snprintf(c->out, sizeof c->out, "%s/client-%s-%s.out", f->dir, kind_name[k], tag);
    unlink(c->out);
    snprintf(env, sizeof env, "GRPC_XDS_BOOTSTRAP=%s", bootstrap ? bootstrap : f->bootstrap);
    snprintf(calls, sizeof calls, "%d", o->calls);
    snprintf(dur, sizeof dur, "%.2f", o->duration_s);
    snprintf(iv, sizeof iv, "%d", o->interval_ms);
    if (k == PY) {
        argv[n++] = PYTHON;
        argv[n++] = PY_CLIENT;
        argv[n++] = o->target ? o->target : "xds:///echo";
        argv[n++] = o->calls ? "--calls" : "--duration";
        argv[n++] = o->calls ? calls : dur;
        if (o->group) {
            argv[n++] = "--group";
            argv[n++] = o->group;
        }
        if (o->interval_ms) {
            argv[n++] = "--interval-ms";
            argv[n++] = iv;
        }
        if (o->no_wait)
            argv[n++] = "--no-wait";
    } else {
        argv[n++] = C_CLIENT;
        argv[n++] = o->target ? o->target : "xds:///echo";
        argv[n++] = o->calls ? "-n" : "-d";
        argv[n++] = o->calls ? calls : dur;
        if (o->group) {
            argv[n++] = "-g";
            argv[n++] = o->group;
        }
        if (o->interval_ms) {
            argv[n++] = "-i";
            argv[n++] = iv;
        }
        if (o->no_wait)
            argv[n++] = "-W";
    }
    argv[n] = NULL;
    c->p = proc_spawn(argv, envv, c->out);
    ck_assert_ptr_nonnull(c->p);
}

/* Waits for the client and returns its JSON line (the output file also
 * holds gRPC's own log lines). */
static json_t *client_wait(struct client *c, int timeout_ms)
{
    char line[8192];
    json_t *r = NULL;
    FILE *fp;
    int status = 0;

    ck_assert_int_eq(proc_wait(c->p, timeout_ms, &status), 0);
    c->p = proc_free(c->p);
    fp = fopen(c->out, "r");
    ck_assert_ptr_nonnull(fp);
    while (fgets(line, sizeof line, fp))
        if (line[0] == '{') {
            json_decref(r);
            r = json_loads(line, 0, NULL);
        }
    fclose(fp);
    ck_assert_msg(r != NULL, "no result from the client in %s", c->out);
    return r;
}

static json_t *client_run(struct fx *f, enum kind k, const struct copts *o, const char *tag)
{
    struct client c;

    client_start(f, &c, k, o, NULL, tag);
    return client_wait(&c, 60000);
}

static long long count_of(json_t *r, const char *a)
{
    return json_integer_value(json_object_get(json_object_get(r, "counts"), a));
}

static long long first_of(json_t *r, const char *a)
{
    return json_integer_value(json_object_get(json_object_get(r, "first"), a));
}

static long long last_of(json_t *r, const char *a)
{
    return json_integer_value(json_object_get(json_object_get(r, "last"), a));
}

static void assert_no_failures(json_t *r, const char *who)
{
    char *s = dumps(json_object_get(r, "errors"));
    ck_assert_msg(json_integer_value(json_object_get(r, "failed")) == 0,
                  "%s: %lld call(s) failed: %s", who,
                  (long long)json_integer_value(json_object_get(r, "failed")), s);
    free(s);
}

static json_t *status(struct fx *f)
{
    json_t *r = agent_call(f->agent.sock, "{\"op\":\"status\"}", 5000);
    ck_assert_ptr_nonnull(r);
    return r;
}

/* ---- end to end: a hand-driven ADS stream ------------------------------------- */

/* One bidirectional call, driven step by step with C-core's client API, so
 * that a test can send exactly the requests it means (ACK, NACK, stale
 * nonce, garbage) and see exactly what comes back. */
struct ads {
    grpc_channel *ch;
    grpc_completion_queue *cq;
    grpc_call *call;
    grpc_metadata_array md_in, trailing;
    grpc_byte_buffer *in;
    bool recv_pending, md_sent, md_received;
    grpc_status_code status;
    grpc_slice details;
};

static void ads_pluck_at(struct ads *a, void *tag, const char *what)
{
    grpc_event ev = grpc_completion_queue_pluck(
        a->cq, tag,
        gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_seconds(10, GPR_TIMESPAN)), NULL);
    ck_assert_msg(ev.type == GRPC_OP_COMPLETE, "%s did not complete", what);
}
#define ads_pluck(a, tag) ads_pluck_at((a), (tag), #tag)

static void ads_status_start(struct ads *a);

static void ads_open(struct ads *a, const char *target, const char *method)
{
    grpc_channel_credentials *creds;

    memset(a, 0, sizeof *a);
    grpc_init();
    creds = grpc_insecure_credentials_create();
    a->ch = grpc_channel_create(target, creds, NULL);
    grpc_channel_credentials_release(creds);
    a->cq = grpc_completion_queue_create_for_pluck(NULL);
    a->call = grpc_channel_create_call(a->ch, NULL, GRPC_PROPAGATE_DEFAULTS, a->cq,
                                       grpc_slice_from_static_string(method), NULL,
                                       gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_metadata_array_init(&a->md_in);
    grpc_metadata_array_init(&a->trailing);
    ads_status_start(a);
}

static void ads_send_raw(struct ads *a, const void *data, size_t len)
{
    grpc_slice sl = grpc_slice_from_copied_buffer(data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_op ops[2];
    size_t n = 0;

    memset(ops, 0, sizeof ops);
    if (!a->md_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[n++].flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY;
        a->md_sent = true;
    }
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = bb;
    ck_assert_int_eq(grpc_call_start_batch(a->call, ops, n, &a->md_sent, NULL), GRPC_CALL_OK);
    ads_pluck(a, &a->md_sent);
    grpc_byte_buffer_destroy(bb);
    grpc_slice_unref(sl);
}

static void ads_send(struct ads *a, enum xds_type t, const char *version, const char *nonce,
                     const char *nack, const char *node, const char *const *names, size_t n)
{
    struct xds_request r = {0};
    struct xds_blob b;

    r.version_info = (char *)version;
    r.node_id = (char *)node;
    r.names = (char **)names;
    r.n_names = n;
    r.type_url = (char *)xds_type_url[t];
    r.nonce = (char *)nonce;
    r.nack = nack != NULL;
    r.error_code = 3;
    r.error_message = (char *)nack;
    ck_assert_int_eq(xds_request_encode(&r, &b), 0);
    ads_send_raw(a, b.data, b.len);
    xds_blob_clear(&b);
}

/* The next response as JSON, or NULL if none comes within timeout_ms (the
 * receive then stays pending for the next call). */
static json_t *ads_recv(struct ads *a, int timeout_ms)
{
    grpc_event ev;
    json_t *j = NULL;

    if (!a->recv_pending) {
        grpc_op ops[2];
        size_t n = 0;

        memset(ops, 0, sizeof ops);
        if (!a->md_received) {
            ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
            ops[n++].data.recv_initial_metadata.recv_initial_metadata = &a->md_in;
            a->md_received = true;
        }
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n++].data.recv_message.recv_message = &a->in;
        ck_assert_int_eq(grpc_call_start_batch(a->call, ops, n, &a->in, NULL), GRPC_CALL_OK);
        a->recv_pending = true;
    }
    ev = grpc_completion_queue_pluck(
        a->cq, &a->in,
        gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(timeout_ms, GPR_TIMESPAN)),
        NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT)
        return NULL;
    a->recv_pending = false;
    if (a->in) {
        grpc_byte_buffer_reader r;
        ck_assert(grpc_byte_buffer_reader_init(&r, a->in));
        grpc_slice sl = grpc_byte_buffer_reader_readall(&r);
        j = xds_response_json(GRPC_SLICE_START_PTR(sl), GRPC_SLICE_LENGTH(sl));
        grpc_slice_unref(sl);
        grpc_byte_buffer_reader_destroy(&r);
        grpc_byte_buffer_destroy(a->in);
        a->in = NULL;
    }
    return j;
}

/* Asks for the call's status up front, as streaming clients do. */
static void ads_status_start(struct ads *a)
{
    grpc_op op;

    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op.data.recv_status_on_client.trailing_metadata = &a->trailing;
    op.data.recv_status_on_client.status = &a->status;
    op.data.recv_status_on_client.status_details = &a->details;
    ck_assert_int_eq(grpc_call_start_batch(a->call, &op, 1, &a->status, NULL), GRPC_CALL_OK);
}

/* Waits for the call's status (a receive still pending ends first). */
static grpc_status_code ads_status(struct ads *a)
{
    if (a->recv_pending) {
        ads_pluck(a, &a->in);
        a->recv_pending = false;
        if (a->in)
            grpc_byte_buffer_destroy(a->in);
        a->in = NULL;
    }
    ads_pluck(a, &a->status);
    grpc_slice_unref(a->details);
    grpc_metadata_array_destroy(&a->md_in);
    grpc_metadata_array_destroy(&a->trailing);
    grpc_metadata_array_init(&a->md_in);
    grpc_metadata_array_init(&a->trailing);
    return a->status;
}

/* One unary call of method on the stream's channel, in one batch: its
 * status. */
static grpc_status_code unary_status(struct ads *a, const char *method)
{
    grpc_call *call = grpc_channel_create_call(a->ch, NULL, GRPC_PROPAGATE_DEFAULTS, a->cq,
                                               grpc_slice_from_static_string(method), NULL,
                                               gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_byte_buffer *req = grpc_raw_byte_buffer_create(NULL, 0), *reply = NULL;
    grpc_metadata_array md, tr;
    grpc_status_code st = GRPC_STATUS_UNKNOWN;
    grpc_slice details;
    grpc_op ops[6];

    memset(ops, 0, sizeof ops);
    grpc_metadata_array_init(&md);
    grpc_metadata_array_init(&tr);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &reply;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &tr;
    ops[5].data.recv_status_on_client.status = &st;
    ops[5].data.recv_status_on_client.status_details = &details;
    ck_assert_int_eq(grpc_call_start_batch(call, ops, 6, call, NULL), GRPC_CALL_OK);
    ads_pluck(a, call);
    if (reply)
        grpc_byte_buffer_destroy(reply);
    grpc_byte_buffer_destroy(req);
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&md);
    grpc_metadata_array_destroy(&tr);
    grpc_call_unref(call);
    return st;
}

static const char *resp_str(json_t *r, const char *key)
{
    const char *v = json_string_value(json_object_get(r, key));
    return v ? v : "";
}

/* The resources of a response, compact, for matching. */
static char *resp_text(json_t *r)
{
    return dumps(json_object_get(r, "resources"));
}

static json_t *ads_recv_type(struct ads *a, enum xds_type t)
{
    json_t *r = ads_recv(a, 5000);
    ck_assert_msg(r != NULL, "no %s response", xds_type_name[t]);
    ck_assert_str_eq(resp_str(r, "type_url"), xds_type_url[t]);
    return r;
}

/* ACK, NACK and stale nonces, one request at a time; a change pushes only
 * the type that changed; garbage ends the stream; other methods are not
 * served. */
START_TEST(test_ads_protocol)
{
    struct fx f;
    struct ads a;
    char target[700], nonce[4][24], version[4][24], acked_cds[24], *txt;
    const char *echo[] = {"echo"}, *echo2[] = {"echo", "echo/X"};
    json_t *r, *s, *cl;

    fx_up(&f, 0, NULL);
    put(&f, 20001, 1, "");
    snprintf(target, sizeof target, "unix:%s/xds.sock", f.dir);
    ads_open(&a, target,
             "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
             "StreamAggregatedResources");
    for (int t = 0; t < XDS_NTYPES; t++) {
        ads_send(&a, (enum xds_type)t, "", "", NULL, t ? NULL : "raw-node", echo, 1);
        r = ads_recv_type(&a, (enum xds_type)t);
        snprintf(nonce[t], sizeof nonce[t], "%s", resp_str(r, "nonce"));
        snprintf(version[t], sizeof version[t], "%s", resp_str(r, "version_info"));
        ck_assert_str_ne(nonce[t], "");
        txt = resp_text(r);
        ck_assert_ptr_nonnull(strstr(txt, t == XDS_EDS ? "\"port_value\":20001" : "echo"));
        free(txt);
        json_decref(r);
        ads_send(&a, (enum xds_type)t, version[t], nonce[t], NULL, NULL, echo, 1); /* ACK */
    }
    ck_assert_ptr_null(ads_recv(&a, 300)); /* an ACK gets no answer */

    snprintf(acked_cds, sizeof acked_cds, "%s", version[XDS_CDS]);
    /* A stale nonce is ignored, even with new names in it. */
    ads_send(&a, XDS_CDS, version[XDS_CDS], "999", NULL, NULL, echo2, 2);
    ck_assert_ptr_null(ads_recv(&a, 300));
    /* New names with the current nonce: answered, with both. */
    ads_send(&a, XDS_CDS, version[XDS_CDS], nonce[XDS_CDS], NULL, NULL, echo2, 2);
    r = ads_recv_type(&a, XDS_CDS);
    txt = resp_text(r);
    ck_assert_ptr_nonnull(strstr(txt, "\"name\":\"echo/X\""));
    free(txt);
    ck_assert_int_gt(atoi(resp_str(r, "version_info")), atoi(version[XDS_CDS]));
    snprintf(nonce[XDS_CDS], sizeof nonce[XDS_CDS], "%s", resp_str(r, "nonce"));
    snprintf(version[XDS_CDS], sizeof version[XDS_CDS], "%s", resp_str(r, "version_info"));
    json_decref(r);

    /* A NACK: logged, counted, not answered. */
    ads_send(&a, XDS_CDS, version[XDS_CDS], nonce[XDS_CDS], "test refuses this", NULL, echo2, 2);
    ck_assert_ptr_null(ads_recv(&a, 300));
    s = status(&f);
    cl = json_array_get(json_object_get(json_object_get(s, "xds"), "clients"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(cl, "node")), "raw-node");
    ck_assert_int_eq(json_integer_value(json_object_get(cl, "nacks")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(cl, "last_nack")), "test refuses this");
    /* The client still runs the version it accepted last. */
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(cl, "acked"), "clusters")),
                     acked_cds);
    json_decref(s);
    ck_assert(agentp_log_has(&f.agent, "test refuses this"));

    /* A second instance: only the endpoints change, so only EDS comes. */
    put(&f, 20002, 1, "");
    r = ads_recv_type(&a, XDS_EDS);
    txt = resp_text(r);
    ck_assert_ptr_nonnull(strstr(txt, "20001"));
    ck_assert_ptr_nonnull(strstr(txt, "20002"));
    free(txt);
    ck_assert_int_gt(atoi(resp_str(r, "version_info")), atoi(version[XDS_EDS]));
    json_decref(r);
    ck_assert_ptr_null(ads_recv(&a, 500));

    /* Garbage: the stream ends with INVALID_ARGUMENT. */
    ads_send_raw(&a, "\xff\xff\xff\xff", 4);
    ck_assert_int_eq(ads_status(&a), GRPC_STATUS_INVALID_ARGUMENT);
    grpc_call_unref(a.call);

    /* Another method on the same server. */
    ck_assert_int_eq(unary_status(&a, "/echo.Echo/Say"), GRPC_STATUS_UNIMPLEMENTED);
    grpc_channel_destroy(a.ch);
    grpc_completion_queue_shutdown(a.cq);
    grpc_completion_queue_destroy(a.cq);
    fx_down(&f);
}
END_TEST

/* ---- end to end: the tests ----------------------------------------------------- */

/* Every instance gets calls, and weights 3:1 split them 3:1. */
START_TEST(test_reaches_all_and_weights)
{
    struct fx f;
    struct copts o = {.calls = 4000};
    json_t *r[2];

    fx_up(&f, 3, NULL);
    put(&f, f.port[0], 3, "");
    put(&f, f.port[1], 1, "");
    for (int k = PY; k <= CC; k++) {
        r[k] = client_run(&f, (enum kind)k, &o, "weights");
        assert_no_failures(r[k], kind_name[k]);
        double share = (double)count_of(r[k], addr(&f, 0)) / 4000.0;
        printf("xds-measure: %s weights 3:1 over 4000 calls: %lld / %lld (%.1f%% / %.1f%%), first "
               "call %.1f ms after channel creation\n",
               kind_name[k], count_of(r[k], addr(&f, 0)), count_of(r[k], addr(&f, 1)), 100 * share,
               100 * (1 - share), json_number_value(json_object_get(r[k], "first_call_ms")));
        ck_assert_msg(share > 0.72 && share < 0.78, "%s: weight-3 share %.3f", kind_name[k], share);
        json_decref(r[k]);
    }
    /* Three instances of equal weight: each gets a third. */
    put(&f, f.port[0], 1, "");
    put(&f, f.port[2], 1, "");
    usleep(300000);
    o.calls = 3000;
    for (int k = PY; k <= CC; k++) {
        r[k] = client_run(&f, (enum kind)k, &o, "all");
        assert_no_failures(r[k], kind_name[k]);
        for (int i = 0; i < 3; i++)
            ck_assert_msg(count_of(r[k], addr(&f, i)) > 800, "%s: %s got %lld of 3000",
                          kind_name[k], addr(&f, i), count_of(r[k], addr(&f, i)));
        json_decref(r[k]);
    }
    fx_down(&f);
}
END_TEST

/* x-group: A reaches only group A; no header reaches everybody. The C
 * client goes through the optional TCP port with a bootstrap of its own. */
START_TEST(test_group_header_and_tcp)
{
    struct fx f;
    struct copts o = {.calls = 600, .group = "A"};
    char yaml[256], boot[700], text[512];
    int tport = free_port();
    json_t *r;
    struct client c;
    FILE *fp;

    snprintf(yaml, sizeof yaml, "xds:\n  tcp: 127.0.0.1:%d\n", tport);
    fx_up(&f, 3, yaml);
    put(&f, f.port[0], 1, "A");
    put(&f, f.port[1], 1, "B");
    put(&f, f.port[2], 1, "A");

    r = client_run(&f, PY, &o, "groupA");
    assert_no_failures(r, "python A");
    ck_assert_int_eq(count_of(r, addr(&f, 1)), 0);
    ck_assert_int_gt(count_of(r, addr(&f, 0)), 200);
    ck_assert_int_gt(count_of(r, addr(&f, 2)), 200);
    json_decref(r);

    snprintf(boot, sizeof boot, "%s/tcp-bootstrap.json", f.dir);
    fp = fopen(boot, "w");
    ck_assert_ptr_nonnull(fp);
    snprintf(text, sizeof text,
             "{\"xds_servers\":[{\"server_uri\":\"127.0.0.1:%d\",\"channel_creds\":[{\"type\":"
             "\"insecure\"}]}],\"node\":{\"id\":\"tcp-client\",\"cluster\":\"test\"}}",
             tport);
    fputs(text, fp);
    fclose(fp);
    o.group = "B";
    client_start(&f, &c, CC, &o, boot, "groupB");
    r = client_wait(&c, 60000);
    assert_no_failures(r, "C B over TCP");
    ck_assert_int_eq(count_of(r, addr(&f, 1)), 600);
    json_decref(r);

    o.group = NULL;
    r = client_run(&f, CC, &o, "nogroup");
    assert_no_failures(r, "C all");
    for (int i = 0; i < 3; i++)
        ck_assert_int_gt(count_of(r, addr(&f, i)), 100);
    json_decref(r);
    /* A group nobody is in falls to the catch-all route. */
    o.group = "Z";
    r = client_run(&f, PY, &o, "groupZ");
    assert_no_failures(r, "python Z");
    ck_assert_int_gt(count_of(r, addr(&f, 1)), 100);
    json_decref(r);
    fx_down(&f);
}
END_TEST

/* Another writer adds and removes instances in etcd while both clients
 * call: the new one gets calls, the removed one none, within a second,
 * and no call fails. */
START_TEST(test_live_changes)
{
    struct fx f;
    struct copts o = {.duration_s = 4.0, .interval_ms = 2};
    struct client c[2];
    long long t_add, t_del, t_grp;
    json_t *r;

    fx_up(&f, 3, NULL);
    put(&f, f.port[0], 1, "");
    put(&f, f.port[1], 1, "");
    for (int k = PY; k <= CC; k++)
        client_start(&f, &c[k], (enum kind)k, &o, NULL, "live");
    usleep(1200000);
    t_add = real_ms();
    put(&f, f.port[2], 1, "");
    usleep(1000000);
    t_del = real_ms();
    del_as(&f, "127.0.0.1", f.port[0]);
    usleep(700000);
    /* A new group appears live: routes change, the client subscribes to
     * a new cluster and its endpoints. */
    t_grp = real_ms();
    put(&f, f.port[1], 1, "G");
    for (int k = PY; k <= CC; k++) {
        r = client_wait(&c[k], 30000);
        assert_no_failures(r, kind_name[k]);
        long long gain = first_of(r, addr(&f, 2)) - t_add;
        long long lose = last_of(r, addr(&f, 0)) - t_del;
        printf("xds-measure: %s: added instance's first call %lld ms after the etcd put; removed "
               "instance's last call %lld ms after the delete; %lld calls, 0 failed\n",
               kind_name[k], gain, lose, (long long)json_integer_value(json_object_get(r, "ok")));
        ck_assert_int_gt(count_of(r, addr(&f, 2)), 0);
        /* The new instance was called (the wait is bounded); how fast each
         * side moved is printed above and measured by make bench. */
        ck_assert_int_ge(gain, 0);
        ck_assert_int_gt(last_of(r, addr(&f, 1)), t_grp); /* still served after the group change */
        json_decref(r);
    }
    /* The new group is routed. */
    o.duration_s = 0;
    o.calls = 100;
    o.interval_ms = 0;
    o.group = "G";
    r = client_run(&f, PY, &o, "groupG");
    assert_no_failures(r, "python G");
    ck_assert_int_eq(count_of(r, addr(&f, 1)), 100);
    json_decref(r);
    fx_down(&f);
}
END_TEST

/* A killed agent leaves its clients on their last endpoints; a restarted
 * one resumes pushing on the streams they open again. */
START_TEST(test_agent_killed_and_restarted)
{
    struct fx f;
    struct copts o = {.duration_s = 9.0, .interval_ms = 2};
    struct client c[2];
    long long t_kill, t_up, t_add;
    json_t *r, *s;

    fx_up(&f, 3, NULL);
    put(&f, f.port[0], 1, "");
    put(&f, f.port[1], 1, "");
    for (int k = PY; k <= CC; k++)
        client_start(&f, &c[k], (enum kind)k, &o, NULL, "kill");
    usleep(1000000);
    t_kill = real_ms();
    proc_signal(f.agent.p, SIGKILL);
    proc_wait(f.agent.p, 5000, NULL);
    f.agent.p = proc_free(f.agent.p);
    /* While it is down, etcd changes: nobody is told. */
    put(&f, f.port[2], 1, "");
    usleep(1500000);
    ck_assert_int_eq(agentp_start(&f.agent), 0);
    t_up = real_ms();
    /* Another change once it is back: pushed when the clients reconnect. */
    usleep(200000);
    t_add = real_ms();
    del_as(&f, "127.0.0.1", f.port[0]);
    /* Both clients come back within their reconnect backoff. */
    for (int i = 0; i < 100; i++) {
        s = status(&f);
        size_t n = json_array_size(json_object_get(json_object_get(s, "xds"), "clients"));
        json_decref(s);
        if (n >= 2)
            break;
        usleep(100000);
    }
    for (int k = PY; k <= CC; k++) {
        r = client_wait(&c[k], 30000);
        assert_no_failures(r, kind_name[k]);
        /* Served all along by the endpoints they had. */
        ck_assert_int_gt(last_of(r, addr(&f, 1)), t_up);
        ck_assert_int_gt(count_of(r, addr(&f, 1)), 100);
        ck_assert_int_gt(count_of(r, addr(&f, 2)), 0);
        long long resumed = first_of(r, addr(&f, 2)) - t_up;
        long long dropped = last_of(r, addr(&f, 0)) - t_add;
        printf("xds-measure: %s: agent down %lld ms, 0 failed calls; instance added while down "
               "reached %lld ms after the restart; instance removed after the restart last "
               "called %lld ms after the delete\n",
               kind_name[k], t_up - t_kill, resumed, dropped);
        ck_assert_int_gt(first_of(r, addr(&f, 2)), t_up);
        ck_assert_int_lt(last_of(r, addr(&f, 0)), first_of(r, addr(&f, 2)) + 2000);
        json_decref(r);
    }
    fx_down(&f);
}
END_TEST

/* With the test-only switch, a host name goes out unresolved: the clients
 * NACK it and keep their last good endpoints; the NACK is counted, and the
 * next good push is accepted. */
START_TEST(test_nack_keeps_last_good_config)
{
    struct fx f;
    struct copts o = {.duration_s = 4.0, .interval_ms = 2};
    struct client c[2];
    long long t_fix;
    json_t *r, *s = NULL, *x;
    int nacks = 0;

    fx_up(&f, 3, "xds:\n  test_send_host_names: true\n");
    ck_assert(agentp_log_has(&f.agent, "TEST MODE"));
    put(&f, f.port[0], 1, "");
    put(&f, f.port[1], 1, "");
    for (int k = PY; k <= CC; k++)
        client_start(&f, &c[k], (enum kind)k, &o, NULL, "nack");
    usleep(1000000);
    put_as(&f, "localhost", f.port[2], 1, "");
    for (int i = 0; i < 50 && nacks < 2; i++) {
        usleep(100000);
        json_decref(s);
        s = status(&f);
        nacks = (int)json_integer_value(json_object_get(json_object_get(s, "xds"), "nacks"));
    }
    ck_assert_int_eq(nacks, 2);
    x = json_object_get(s, "xds");
    for (size_t i = 0; i < 2; i++) {
        json_t *cl = json_array_get(json_object_get(x, "clients"), i);
        ck_assert_int_eq(json_integer_value(json_object_get(cl, "nacks")), 1);
        ck_assert_ptr_nonnull(
            strstr(json_string_value(json_object_get(cl, "last_nack")), "localhost"));
    }
    json_decref(s);
    ck_assert(agentp_log_has(&f.agent, "NACKed endpoints"));
    usleep(500000);
    /* Fixed: the same server under its IP address. */
    t_fix = real_ms();
    del_as(&f, "localhost", f.port[2]);
    put(&f, f.port[2], 1, "");
    for (int k = PY; k <= CC; k++) {
        r = client_wait(&c[k], 30000);
        assert_no_failures(r, kind_name[k]);
        ck_assert_int_gt(count_of(r, addr(&f, 0)), 100);
        ck_assert_int_gt(count_of(r, addr(&f, 1)), 100);
        /* Never reached through the refused push, reached after the fix. */
        ck_assert_int_gt(first_of(r, addr(&f, 2)), t_fix);
        printf("xds-measure: %s: NACKed push ignored (0 failed calls of %lld); fixed push "
               "reached %lld ms after the etcd change\n",
               kind_name[k], (long long)json_integer_value(json_object_get(r, "ok")),
               first_of(r, addr(&f, 2)) - t_fix);
        json_decref(r);
    }
    s = status(&f);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(s, "xds"), "nacks")), 2);
    json_decref(s);
    fx_down(&f);
}
END_TEST

/* The socket ops: resources as JSON (host names resolved, duplicates and
 * unresolvable names left out), the bootstrap (as in the file), status;
 * the sockets' modes. */
START_TEST(test_ops_bootstrap_status)
{
    struct fx f;
    struct copts o = {.calls = 50};
    json_t *r, *b, *x, *cl;
    struct stat st;
    char host[256], path[700], *s;

    fx_up(&f, 2, "xds:\n  mode: \"0600\"\n");
    ck_assert_int_eq(stat(f.bootstrap, &st), 0);
    ck_assert_uint_eq(st.st_mode & 0777, 0644);
    snprintf(path, sizeof path, "%s/xds.sock", f.dir);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert(S_ISSOCK(st.st_mode));
    ck_assert_uint_eq(st.st_mode & 0777, 0600);

    put(&f, f.port[0], 2, "A");
    put_as(&f, "localhost", f.port[1], 1, "");
    put_as(&f, "localhost", f.port[0], 5, ""); /* = 127.0.0.1:port[0] */
    put_as(&f, "no-such-host.invalid", 9, 1, "");
    r = agent_call(f.agent.sock, "{\"op\":\"xds\",\"service\":\"echo\",\"id\":7}", 10000);
    ck_assert_ptr_nonnull(r);
    ck_assert(json_is_true(json_object_get(r, "ok")));
    s = dumps(r);
    ck_assert_ptr_nonnull(strstr(s, "\"cluster\":\"echo/A\""));
    ck_assert_int_eq(json_array_size(json_object_get(r, "clusters")), 2);
    ck_assert_int_eq(json_array_size(json_object_get(r, "cluster_load_assignments")), 2);
    ck_assert_ptr_null(strstr(s, "localhost\",\"port")); /* resolved, never sent as a name */
    ck_assert_ptr_nonnull(strstr(s, "\"reason\":\"host name does not resolve\""));
    ck_assert_ptr_nonnull(strstr(s, "\"reason\":\"same IP and port as another instance\""));
    free(s);
    json_decref(r);
    r = agent_call(f.agent.sock, "{\"op\":\"xds\",\"service\":\"a/b\"}", 5000);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(r, "error"), "code")),
                     "bad_name");
    json_decref(r);

    r = agent_call(f.agent.sock, "{\"op\":\"xds_bootstrap\"}", 5000);
    b = json_load_file(f.bootstrap, 0, NULL);
    ck_assert_ptr_nonnull(b);
    ck_assert(json_equal(json_object_get(r, "bootstrap"), b));
    ck_assert_str_eq(json_string_value(json_object_get(r, "file")), f.bootstrap);
    snprintf(path, sizeof path, "unix://%s/xds.sock", f.dir);
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(b, "xds_servers"), 0), "server_uri")),
                     path);
    gethostname(host, sizeof host);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(b, "node"), "id")), host);
    json_decref(b);
    json_decref(r);

    /* A client connected: status names it, with what it subscribed to and
     * what it accepted. */
    struct client c;
    o.calls = 0;
    o.duration_s = 1.5;
    o.interval_ms = 10;
    o.group = "A";
    client_start(&f, &c, PY, &o, NULL, "status");
    usleep(800000);
    r = status(&f);
    x = json_object_get(r, "xds");
    ck_assert(json_is_true(json_object_get(x, "enabled")));
    ck_assert_int_eq(json_array_size(json_object_get(x, "clients")), 1);
    cl = json_array_get(json_object_get(x, "clients"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(cl, "node")), host);
    s = dumps(json_object_get(cl, "subscribed"));
    ck_assert_str_eq(s, "{\"clusters\":[\"echo\",\"echo/A\"],\"endpoints\":[\"echo\",\"echo/A\"],"
                        "\"listeners\":[\"echo\"],\"routes\":[\"echo\"]}");
    free(s);
    for (int t = 0; t < XDS_NTYPES; t++)
        ck_assert_ptr_nonnull(
            json_string_value(json_object_get(json_object_get(cl, "acked"), xds_type_name[t])));
    ck_assert_int_eq(json_integer_value(json_object_get(cl, "nacks")), 0);
    json_decref(r);
    r = client_wait(&c, 30000);
    assert_no_failures(r, "python");
    ck_assert_int_eq(count_of(r, addr(&f, 1)), 0);
    json_decref(r);

    /* A graceful stop with a stream open: the agent exits cleanly (and,
     * under ASan, without leaks); the client keeps its endpoints. */
    o.duration_s = 2.0;
    o.group = NULL;
    client_start(&f, &c, CC, &o, NULL, "stop");
    usleep(700000);
    ck_assert_int_eq(agentp_stop(&f.agent, 10000), 0);
    ck_assert(agentp_log_has(&f.agent, "closed after"));
    r = client_wait(&c, 30000);
    assert_no_failures(r, "C across the agent's stop");
    ck_assert_int_gt(count_of(r, addr(&f, 1)), 10);
    json_decref(r);
    fx_down(&f);
}
END_TEST

/* A service with no instances is an assignment without endpoints: calls
 * fail fast with UNAVAILABLE (nothing is NACKed), and work as soon as an
 * instance appears. */
START_TEST(test_empty_service)
{
    struct fx f;
    struct copts o = {.calls = 3, .no_wait = true};
    json_t *r, *s;

    fx_up(&f, 1, NULL);
    for (int k = PY; k <= CC; k++) {
        long long t0 = real_ms();
        r = client_run(&f, (enum kind)k, &o, "empty");
        long long took = real_ms() - t0;
        char *e = dumps(json_object_get(r, "errors"));
        ck_assert_int_eq(json_integer_value(json_object_get(r, "failed")), 3);
        ck_assert_msg(strstr(e, "UNAVAILABLE") || strstr(e, "14:"), "%s", e);
        printf("xds-measure: %s: empty service: 3 calls failed UNAVAILABLE in %lld ms "
               "(process included)\n",
               kind_name[k], took);
        ck_assert_int_lt(took, 5000);
        free(e);
        json_decref(r);
    }
    s = status(&f);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(s, "xds"), "nacks")), 0);
    json_decref(s);
    put(&f, f.port[0], 1, "");
    o.no_wait = false;
    o.calls = 20;
    r = client_run(&f, CC, &o, "filled");
    assert_no_failures(r, "C");
    ck_assert_int_eq(count_of(r, addr(&f, 0)), 20);
    json_decref(r);
    fx_down(&f);
}
END_TEST

/* xds.enabled: false: no socket, no bootstrap, yet "xds" answers. A second
 * agent on the same xds.path is refused. */
START_TEST(test_disabled_and_in_use)
{
    struct fx f;
    struct agentp other;
    char dir[600], yaml[700], path[700];
    json_t *r;
    int st;

    fx_up(&f, 0, NULL);
    /* The running agent's xDS socket, for a second agent. */
    snprintf(dir, sizeof dir, "%s/other", f.dir);
    mkdir(dir, 0755);
    snprintf(yaml, sizeof yaml, "xds:\n  path: %s/xds.sock\n", f.dir);
    memset(&other, 0, sizeof other);
    ck_assert_int_eq(agentp_config(&other, dir, etcd_cluster_urls(f.cluster), 10, 1000, yaml), 0);
    ck_assert_int_eq(agentp_spawn(&other), 0);
    ck_assert_int_eq(proc_wait(other.p, 10000, &st), 0);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    ck_assert(agentp_log_has(&other, "another agent is listening on"));
    ck_assert_int_eq(agentp_free(&other), 0);
    /* ...and the first one still serves. */
    snprintf(path, sizeof path, "%s/xds.sock", f.dir);
    ck_assert_int_eq(access(path, F_OK), 0);

    ck_assert_int_eq(agentp_stop(&f.agent, 10000), 0);
    ck_assert_int_ne(access(path, F_OK), 0); /* removed at stop */
    ck_assert_int_eq(agentp_config(&f.agent, f.dir, etcd_cluster_urls(f.cluster), 10, 1000,
                                   "xds:\n  enabled: false\n"),
                     0);
    f.agent.p = proc_free(f.agent.p);
    unlink(f.bootstrap);
    ck_assert_int_eq(agentp_start(&f.agent), 0);
    ck_assert_int_ne(access(path, F_OK), 0);
    ck_assert_int_ne(access(f.bootstrap, F_OK), 0);
    r = agent_call(f.agent.sock, "{\"op\":\"xds_bootstrap\"}", 5000);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(r, "error"), "code")),
                     "disabled");
    json_decref(r);
    r = agent_call(f.agent.sock, "{\"op\":\"xds\",\"service\":\"echo\"}", 5000);
    ck_assert(json_is_true(json_object_get(r, "ok")));
    ck_assert_int_eq(json_array_size(json_object_get(r, "listeners")), 1);
    json_decref(r);
    r = status(&f);
    ck_assert(json_is_false(json_object_get(json_object_get(r, "xds"), "enabled")));
    json_decref(r);
    fx_down(&f);
}
END_TEST

/* The agent's threads, from /proc: 1 while gRPC does not run. */
static int agent_threads(struct fx *f)
{
    char path[64];
    struct dirent *e;
    DIR *d;
    int n = 0;

    snprintf(path, sizeof path, "/proc/%d/task", (int)proc_pid(f->agent.p));
    d = opendir(path);
    ck_assert_ptr_nonnull(d);
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Waits up to timeout_ms for the agent to have want threads; the count. */
static int wait_threads(struct fx *f, int want, int timeout_ms)
{
    int n = agent_threads(f);

    for (int t = 0; n != want && t < timeout_ms; t += 50) {
        usleep(50000);
        n = agent_threads(f);
    }
    return n;
}

static json_t *xds_status_of(struct fx *f)
{
    json_t *s = status(f), *x = json_incref(json_object_get(s, "xds"));

    json_decref(s);
    ck_assert_ptr_nonnull(x);
    return x;
}

/* gRPC runs only while xDS is used: an agent nobody asks has one thread;
 * a probe that connects and says nothing starts nothing; a client starts
 * gRPC and is served; xds.idle after its stream ends, gRPC and its threads
 * are gone; the next client starts it again and is served. */
START_TEST(test_grpc_only_while_used)
{
    struct fx f;
    struct copts o = {.calls = 20};
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct client c;
    json_t *r, *x;
    int fd, n;

    fx_up(&f, 1, "xds:\n  idle: 1s\n");
    put(&f, f.port[0], 1, "");
    n = wait_threads(&f, 1, 3000);
    ck_assert_msg(n == 1, "an agent without xDS clients has %d threads", n);
    x = xds_status_of(&f);
    ck_assert(json_is_false(json_object_get(x, "grpc_running")));
    ck_assert_int_eq(json_integer_value(json_object_get(x, "grpc_starts")), 0);
    json_decref(x);

    /* A probe (a second agent checking the socket, say) costs nothing. */
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s/xds.sock", f.dir);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    usleep(200000);
    close(fd);
    usleep(200000);
    ck_assert_int_eq(agent_threads(&f), 1);

    /* A client starts gRPC, and status names it as before. */
    o.calls = 0;
    o.duration_s = 1.5;
    o.interval_ms = 10;
    client_start(&f, &c, CC, &o, NULL, "lazy1");
    usleep(800000);
    ck_assert_int_gt(agent_threads(&f), 1);
    x = xds_status_of(&f);
    ck_assert(json_is_true(json_object_get(x, "grpc_running")));
    ck_assert_int_eq(json_integer_value(json_object_get(x, "grpc_starts")), 1);
    ck_assert_int_eq(json_array_size(json_object_get(x, "clients")), 1);
    ck_assert_str_eq(json_string_value(
                         json_object_get(json_array_get(json_object_get(x, "clients"), 0), "peer")),
                     "unix:");
    json_decref(x);
    r = client_wait(&c, 30000);
    assert_no_failures(r, "C, first");
    ck_assert_int_gt(count_of(r, addr(&f, 0)), 10);
    json_decref(r);

    /* The linger passes: back to one thread. */
    n = wait_threads(&f, 1, 5000);
    ck_assert_msg(n == 1, "%d threads 5 s after the last xDS client left", n);
    ck_assert(agentp_log_has(&f.agent, "gRPC stops until the next connection"));
    x = xds_status_of(&f);
    ck_assert(json_is_false(json_object_get(x, "grpc_running")));
    json_decref(x);

    /* The next clients start it again and are served. */
    o.calls = 20;
    o.duration_s = 0;
    o.interval_ms = 0;
    for (int k = PY; k <= CC; k++) {
        r = client_run(&f, (enum kind)k, &o, "lazy2");
        assert_no_failures(r, kind_name[k]);
        ck_assert_int_eq(count_of(r, addr(&f, 0)), 20);
        json_decref(r);
    }
    x = xds_status_of(&f);
    ck_assert_int_ge(json_integer_value(json_object_get(x, "grpc_starts")), 2);
    json_decref(x);
    n = wait_threads(&f, 1, 5000);
    ck_assert_msg(n == 1, "%d threads after the second round", n);
    fx_down(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("xds");
    TCase *res = tcase_create("resources");
    TCase *e2e = tcase_create("e2e");

    tcase_add_test(res, test_model_dedup_weights_groups);
    tcase_add_test(res, test_resources_shapes);
    tcase_add_test(res, test_huge_weights_scaled);
    tcase_add_test(res, test_request_roundtrip_and_response);
    tcase_add_test(e2e, test_ads_protocol);
    tcase_add_test(e2e, test_reaches_all_and_weights);
    tcase_add_test(e2e, test_group_header_and_tcp);
    tcase_add_test(e2e, test_live_changes);
    tcase_add_test(e2e, test_agent_killed_and_restarted);
    tcase_add_test(e2e, test_nack_keeps_last_good_config);
    tcase_add_test(e2e, test_ops_bootstrap_status);
    tcase_add_test(e2e, test_empty_service);
    tcase_add_test(e2e, test_disabled_and_in_use);
    tcase_add_test(e2e, test_grpc_only_while_used);
    tcase_set_timeout(e2e, 60);
    suite_add_tcase(s, res);
    suite_add_tcase(s, e2e);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
