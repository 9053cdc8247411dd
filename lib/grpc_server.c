/* libdiscovery's gRPC server helper: the Go design's server wrapper in C.
 *
 * disc_server_start() binds the listening port, registers the bound address
 * through the agent on a connection of the helper's own, and starts the
 * server. The registration belongs to that connection, so the agent deletes
 * it from etcd as soon as the connection closes, even when the process dies
 * by SIGKILL.
 *
 * Threads. A disc_client is not thread-safe, and after disc_server_start()
 * returns only the helper's thread touches it: the thread keeps the client
 * processed (so that, when the agent restarts, the library reconnects and
 * sends the registration again), and it is also the thread that
 * deregisters when disc_server_shutdown() asks, through an eventfd and a
 * mutex-protected request. The thread polls the client's socket and the
 * eventfd itself rather than sitting in disc_client_wait(), which no other
 * thread could interrupt.
 *
 * Shutdown: deregister, drain, then shut down. disc_server_shutdown()
 * returns once the agent has confirmed the deregistration (or after
 * DEREGISTER_TIMEOUT_MS). The helper thread then waits DRAIN_MS before it
 * calls grpc_server_shutdown_and_notify(). The wait is needed: C-core 1.51
 * cancels (CANCELLED, which no client retries) every call that reaches a
 * server after its shutdown began, and clients keep sending calls until
 * the registry's change has reached them and their channels have swapped
 * (the shim: the agent's update, settle_ms of 50, a connect; about 70 ms on
 * loopback). Measured with examples/echo-server under an echo-client
 * (~20,000 calls/s, 8 in flight) while 6 servers were removed one after
 * the other: shutting down right after the deregistration cancelled 3 to
 * 16 calls per run; with the drain, none in 4 runs. The wait runs on the
 * helper thread so that a caller serving its completion queue from the
 * thread that called disc_server_shutdown() keeps serving meanwhile; its
 * tag arrives after the drain and the calls in flight.
 *
 * Order at start. The address is registered before grpc_server_start(): if
 * the agent refuses it the server is left unstarted, as the header
 * promises. grpc_server_add_http2_port() has already bound and listened on
 * the socket, so a client that connects in the short window before the
 * start waits in the listen backlog rather than being refused.
 *
 * A failed start after the port was added. C-core 1.51 aborts in
 * grpc_server_destroy() on a server that has a listener and was never shut
 * down (server.cc: "assertion failed: ShutdownCalled() ||
 * listeners_.empty()"), so the failure path shuts the server down itself,
 * on a completion queue of its own that it registers for the purpose (the
 * server holds a reference to every registered queue, so destroying ours
 * right after is safe). The caller then only destroys the server, as it
 * would after any failure. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "discovery/grpc.h"
#include "internal.h"
#include "validate.h"

/* The agent answers a registration once etcd has it, or after its own etcd
 * timeout (5 s by default) with "accepted, not yet written": wait a bit
 * longer than that. */
#define REGISTER_TIMEOUT_MS 15000
/* Shutdown is bounded: after this, the helper closes its connection, which
 * makes the agent drop the registration anyway. */
#define DEREGISTER_TIMEOUT_MS 5000
/* Between the deregistration and grpc_server_shutdown_and_notify(): the
 * time clients get to stop sending calls here (see the top of the file). */
#define DRAIN_MS 500

/* "[" + an IPv6 text + "]:" + a port, or a host name (253) + ":" + port. */
#define ADDRESS_MAX 300

struct disc_server {
    grpc_server *server; /* borrowed */
    char *name;
    char address[ADDRESS_MAX];

    /* Owned by the caller's thread until the helper thread starts, then by
     * the helper thread only. */
    disc_client *client;

    pthread_t thread;
    bool thread_started;
    int wake_fd; /* eventfd: the caller wakes the thread */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool sync_init;
    /* Under mu. */
    bool stop;        /* disc_server_free(): close and end */
    bool dereg_asked; /* disc_server_shutdown(): deregister, drain, shut down */
    bool dereg_done;
    bool shutdown_called; /* grpc_server_shutdown_and_notify() was called */
    int drain_ms;         /* wait between deregistering and shutting down */
    grpc_completion_queue *shutdown_cq;
    void *shutdown_tag;
};

/* ---- addresses ------------------------------------------------------------ */

static bool is_wildcard(const char *host)
{
    return !*host || !strcmp(host, "0.0.0.0") || !strcmp(host, "::");
}

/* The host clients are told: the listening host, or for a wildcard the
 * caller's advertise_host, else the loopback of the wildcard's family. */
static const char *advertised_host(const char *listen_host, const char *advertise_host)
{
    if (!is_wildcard(listen_host))
        return listen_host;
    if (advertise_host && *advertise_host)
        return advertise_host;
    return !strcmp(listen_host, "::") ? "::1" : "127.0.0.1";
}

/* host:port, with an IPv6 host in brackets (also when the caller already
 * wrote them). Returns 0, or DISC_EINVAL when it does not fit or is not an
 * address the agent would register (validate.h). */
static int format_address(char *out, size_t outlen, const char *host, int port)
{
    size_t n = strlen(host);
    int w;

    if (n >= 2 && host[0] == '[' && host[n - 1] == ']')
        w = snprintf(out, outlen, "%s:%d", host, port);
    else if (strchr(host, ':'))
        w = snprintf(out, outlen, "[%s]:%d", host, port);
    else
        w = snprintf(out, outlen, "%s:%d", host, port);
    return w < 0 || (size_t)w >= outlen || !validate_address(out, NULL, 0) ? DISC_EINVAL : 0;
}

/* ---- the helper thread ---------------------------------------------------- */

static void wake(disc_server *s)
{
    uint64_t one = 1;

    /* The eventfd's counter cannot overflow at this rate; a failed write
     * can only be EAGAIN at an overflow, which still leaves it readable. */
    while (write(s->wake_fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

static void drain_wake(disc_server *s)
{
    uint64_t v;

    while (read(s->wake_fd, &v, sizeof v) < 0 && errno == EINTR)
        ;
}

static struct timespec after_ms(int ms)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

/* The helper thread's part of disc_server_shutdown(). */
static void deregister_and_shut_down(disc_server *s)
{
    struct timespec drained;
    grpc_completion_queue *cq = NULL;
    void *tag = NULL;

    /* Deregister while the connection is still up, so that the key is
     * deleted now (and not only when the connection closes). Whatever the
     * answer, closing the connection next makes a live agent drop it
     * anyway, and with no agent there is nobody to tell. */
    (void)disc_deregister(s->client, s->name, s->address, DEREGISTER_TIMEOUT_MS);
    s->client = disc_client_close(s->client);
    pthread_mutex_lock(&s->mu);
    int drain_ms = s->drain_ms;
    pthread_mutex_unlock(&s->mu);
    drained = after_ms(drain_ms);
    pthread_mutex_lock(&s->mu);
    s->dereg_done = true;
    pthread_cond_broadcast(&s->cv);
    /* disc_server_free() (stop) cuts the drain short. */
    while (!s->stop && pthread_cond_timedwait(&s->cv, &s->mu, &drained) != ETIMEDOUT)
        ;
    if (!s->shutdown_called) {
        s->shutdown_called = true;
        cq = s->shutdown_cq;
        tag = s->shutdown_tag;
    }
    pthread_mutex_unlock(&s->mu);
    if (cq)
        grpc_server_shutdown_and_notify(s->server, cq, tag);
}

static void *helper_main(void *arg)
{
    disc_server *s = arg;

    for (;;) {
        struct pollfd pfd[2];
        nfds_t n = 1;
        bool stop, dereg;
        int t;

        pthread_mutex_lock(&s->mu);
        stop = s->stop;
        dereg = s->dereg_asked && !s->dereg_done;
        pthread_mutex_unlock(&s->mu);

        if (dereg) {
            deregister_and_shut_down(s);
            break;
        }
        if (stop)
            break;

        pfd[0].fd = s->wake_fd;
        pfd[0].events = POLLIN;
        pfd[0].revents = 0;
        if (disc_client_fd(s->client) >= 0) {
            pfd[1].fd = disc_client_fd(s->client);
            pfd[1].events = (short)disc_client_events(s->client);
            pfd[1].revents = 0;
            n = 2;
        }
        t = disc_client_timeout(s->client);
        if (poll(pfd, n, t) < 0 && errno != EINTR)
            usleep(10000); /* cannot happen with valid fds; do not spin */
        if (pfd[0].revents & POLLIN)
            drain_wake(s);
        /* Reconnects when due, and sends the registration again on a new
         * connection. Its trouble reports (the agent went away) need no
         * action here: the library recovers by itself. */
        (void)disc_client_process(s->client);
    }
    s->client = disc_client_close(s->client);
    return NULL;
}

/* Starts the helper thread with every signal blocked, so that the
 * program's signals are delivered to its own threads. */
static int helper_start(disc_server *s)
{
    sigset_t all, old;
    int rc;

    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&s->thread, NULL, helper_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc)
        return rc == EAGAIN ? DISC_ENOMEM : DISC_ESYSTEM;
    s->thread_started = true;
    return 0;
}

static int sync_init(disc_server *s)
{
    pthread_condattr_t ca;

    if (pthread_mutex_init(&s->mu, NULL))
        return DISC_ESYSTEM;
    if (pthread_condattr_init(&ca)) {
        pthread_mutex_destroy(&s->mu);
        return DISC_ESYSTEM;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (pthread_cond_init(&s->cv, &ca)) {
        pthread_condattr_destroy(&ca);
        pthread_mutex_destroy(&s->mu);
        return DISC_ESYSTEM;
    }
    pthread_condattr_destroy(&ca);
    s->sync_init = true;
    return 0;
}

/* Shuts down a server that has a listener but was never started (see the
 * top of the file), waiting for the shutdown to complete. */
static void shutdown_unstarted(grpc_server *server)
{
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    gpr_timespec deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(10000, GPR_TIMESPAN));
    char tag;
    grpc_event ev;

    if (!cq)
        return;
    grpc_server_register_completion_queue(server, cq, NULL);
    grpc_server_shutdown_and_notify(server, cq, &tag);
    do
        ev = grpc_completion_queue_next(cq, deadline, NULL);
    while (ev.type == GRPC_OP_COMPLETE && ev.tag != &tag);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
}

/* ---- the API -------------------------------------------------------------- */

int disc_server_start(grpc_server *server, const char *name, const char *listen_addr,
                      const struct disc_server_options *o, disc_server **out)
{
    static const struct disc_server_options defaults = {0};
    struct validate_hostport listen;
    grpc_server_credentials *creds;
    struct disc_registration reg;
    disc_server *s;
    int port = 0, rc;

    if (out)
        *out = NULL;
    if (!server || !listen_addr || !out || !disc__valid_name(name))
        return DISC_EINVAL;
    if (!o)
        o = &defaults;
    if (o->n_meta && (!o->meta_keys || !o->meta_values))
        return DISC_EINVAL;
    /* Only TCP addresses can be registered: not unix:, vsock: and such.
     * The agent's own parser, which also allows ":port" and port 0 here. */
    if (validate_hostport(listen_addr, strlen(listen_addr), VALIDATE_LISTEN, &listen, NULL, 0))
        return DISC_EINVAL;
    if (o->advertise_host && (strchr(o->advertise_host, '/') || strlen(o->advertise_host) > 253))
        return DISC_EINVAL;

    s = calloc(1, sizeof *s);
    if (!s)
        return DISC_ENOMEM;
    s->server = server;
    s->wake_fd = -1;
    s->drain_ms = o->drain_ms > 0 ? o->drain_ms : DRAIN_MS;
    s->name = strdup(name);
    if (!s->name) {
        rc = DISC_ENOMEM;
        goto fail;
    }
    rc = sync_init(s);
    if (rc)
        goto fail;
    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->wake_fd < 0) {
        rc = DISC_ESYSTEM;
        goto fail;
    }

    creds = grpc_insecure_server_credentials_create();
    if (!creds) {
        rc = DISC_ENOMEM;
        goto fail;
    }
    port = grpc_server_add_http2_port(server, listen_addr, creds);
    grpc_server_credentials_release(creds);
    if (port <= 0) {
        rc = DISC_ESYSTEM; /* in use, not resolvable, not permitted, ... */
        goto fail;
    }
    rc = format_address(s->address, sizeof s->address,
                        advertised_host(listen.host, o->advertise_host), port);
    if (rc)
        goto fail;

    /* disc_client_open() hands back a client that would connect later when
     * no agent answers; a server helper that cannot register now fails,
     * as the Go wrapper's Register error does. */
    rc = disc_client_open(&s->client, o->socket_path);
    if (rc)
        goto fail;
    memset(&reg, 0, sizeof reg);
    reg.name = s->name;
    reg.address = s->address;
    reg.weight = o->weight > 0 ? o->weight : 1;
    reg.group = o->group && *o->group ? o->group : NULL;
    reg.n_meta = o->n_meta;
    reg.meta_keys = o->meta_keys;
    reg.meta_values = o->meta_values;
    reg.persist = false; /* owned by the connection: gone when we are */
    rc = disc_register(s->client, &reg, REGISTER_TIMEOUT_MS);
    /* DISC_EINPROGRESS: the agent has it and keeps writing it to etcd. */
    if (rc && rc != DISC_EINPROGRESS)
        goto fail;

    rc = helper_start(s);
    if (rc)
        goto fail;
    grpc_server_start(server);
    *out = s;
    return 0;

fail:
    /* Closing the client drops a registration that got through. */
    disc_server_free(s);
    if (port > 0)
        shutdown_unstarted(server);
    return rc;
}

const char *disc_server_address(const disc_server *s)
{
    return s ? s->address : NULL;
}

void disc_server_shutdown(disc_server *s, grpc_completion_queue *cq, void *tag)
{
    /* The thread's own bound is DEREGISTER_TIMEOUT_MS; a second more
     * covers a reconnect attempt in front of it. */
    struct timespec until = after_ms(DEREGISTER_TIMEOUT_MS + 1000);
    bool first;

    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    first = !s->dereg_asked;
    if (first) {
        /* The helper thread deregisters, drains, and then shuts the
         * server down with this cq and tag. */
        s->dereg_asked = true;
        s->shutdown_cq = cq;
        s->shutdown_tag = tag;
        wake(s);
        while (!s->dereg_done && !s->stop &&
               pthread_cond_timedwait(&s->cv, &s->mu, &until) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&s->mu);
    /* A second call: C-core notifies every tag given to it, and shuts
     * down at once if the drain is still running. */
    if (!first)
        grpc_server_shutdown_and_notify(s->server, cq, tag);
}

void disc_server_drain(disc_server *s, int grace_ms, grpc_completion_queue *cq, void *tag)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    if (!s->dereg_asked)
        s->drain_ms = grace_ms < 0 ? 0 : grace_ms;
    pthread_mutex_unlock(&s->mu);
    disc_server_shutdown(s, cq, tag);
}

disc_server *disc_server_free(disc_server *s)
{
    if (!s)
        return NULL;
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        wake(s);
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    /* Set when the thread never started; the thread closes its own. */
    s->client = disc_client_close(s->client);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    if (s->sync_init) {
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
    }
    free(s->name);
    free(s);
    return NULL;
}
