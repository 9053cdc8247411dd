/* The gRPC channel shim: registry:///NAME as a series of address-list
 * channels, swapped make-before-break as the registry changes.
 *
 * Design, following what was measured on gRPC C-core 1.51
 * (docs/grpc-core-facts.md):
 * - A channel's addresses are fixed, so every list change builds a new
 *   channel ("ipv4:a,a,b" or "ipv6:[..],[::ffff:a.b.c.d]" when families
 *   mix, round_robin, weights by repetition after dividing by their gcd).
 * - The same channel args on every channel, so unchanged backends keep
 *   their connections across a swap.
 * - The new channel connects first and is swapped in when READY (or after
 *   connect_timeout_ms). The poller learns READY from a connectivity watch
 *   on its own queue and swaps at once, so no thread polls the state.
 * - A change is built at once; only the changes that follow it within
 *   settle_ms wait, and leave together (bursts become one channel, and the
 *   first change of a quiet service pays no delay).
 * - A replaced channel is destroyed only after retire_ms and never while it
 *   is CONNECTING (destroying a channel mid-connect leaks sockets).
 * - Somebody must poll: a thread of ours sits in
 *   grpc_completion_queue_next so that connections progress.
 * - Every address is validated before it enters a target: one bad entry
 *   would fail the whole channel.
 * - An empty list from etcd makes a lame channel (calls fail at once with
 *   UNAVAILABLE); the agent going away changes nothing.
 *
 * Threads: the caller's (create_call, info, wait), the follower (owns the
 * disc_client, builds channels, swaps on a connect timeout, reaps) and the
 * poller (drives C-core, swaps a new channel in when it reports READY). mu guards each
 * route's channel fields and the route list. */
#include <arpa/inet.h>
#include <discovery/discovery.h>
#include <discovery/grpc.h>
#include <errno.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <jansson.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define SERVICE_CONFIG "{\"loadBalancingConfig\":[{\"round_robin\":{}}]}"

struct retired {
    grpc_channel *ch;
    int64_t since;
    struct retired *next;
};

struct route {
    char *group; /* NULL: every instance */
    /* Follower only. */
    struct disc_watch *watch;
    bool watch_started;
    struct disc_list *list;
    int64_t dirty_at; /* rebuild due then; 0: nothing to do */
    int64_t lost_at;  /* when the agent last went away; 0: never */
    /* Under mu. */
    grpc_channel *current;
    char *target;
    int64_t revision;
    bool stale;
    int instances, addresses;
    grpc_channel *next; /* connecting, to replace current */
    char *next_target;
    int64_t next_revision;
    bool next_stale;
    int next_instances, next_addresses;
    int64_t next_deadline;
    uint64_t next_gen; /* bumped per next channel; names its connectivity watch */
    int64_t built_at;  /* follower: when the last channel was built; 0: never */
    struct retired *retired;
    uint64_t swaps;
    struct route *link;
};

struct host_cache {
    char *host;
    char **addrs; /* IP literals, sorted */
    int n;
    struct host_cache *link;
};

struct disc_channel {
    char *service;
    char *group;
    bool prefer_zone; /* "?zone=local": the agent's zone policy */
    disc_client *client;
    struct disc_channel_options o;
    grpc_channel_args args;
    grpc_arg *arg_vec;
    char **arg_strings;
    size_t n_arg_strings;
    grpc_channel_credentials *creds;

    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct route *routes;
    bool stop;
    pthread_t follower, poller;
    bool follower_started, poller_started;
    grpc_completion_queue *cq;

    struct host_cache *hosts; /* follower only */
    int64_t hosts_refresh_at;
    bool uses_hosts;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- growable string ---------------------------------------------------- */

struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void sb_add(struct sbuf *b, const char *s)
{
    size_t n = strlen(s);

    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n + 1);
    b->len += n;
}

/* ---- addresses ---------------------------------------------------------- */

struct entry {
    char ip[INET6_ADDRSTRLEN];
    bool v6;
    unsigned port;
    unsigned long weight;
};

static const struct host_cache *resolve_host(disc_channel *ch, const char *host)
{
    struct host_cache *h;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res, *ai;

    for (h = ch->hosts; h; h = h->link)
        if (!strcmp(h->host, host))
            return h;
    h = calloc(1, sizeof *h);
    if (!h || !(h->host = strdup(host))) {
        free(h);
        return NULL;
    }
    /* The follower thread may block here; callers never wait on it. */
    if (getaddrinfo(host, NULL, &hints, &res) == 0) {
        for (ai = res; ai; ai = ai->ai_next) {
            char ip[INET6_ADDRSTRLEN];
            const void *src = ai->ai_family == AF_INET
                                  ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                                  : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
            if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
                !inet_ntop(ai->ai_family, src, ip, sizeof ip))
                continue;
            bool dup = false;
            for (int i = 0; i < h->n; i++)
                dup |= !strcmp(h->addrs[i], ip);
            char **a = dup ? NULL : realloc(h->addrs, (size_t)(h->n + 1) * sizeof *a);
            if (!a)
                continue;
            h->addrs = a;
            if ((a[h->n] = strdup(ip)))
                h->n++;
        }
        freeaddrinfo(res);
    }
    h->link = ch->hosts;
    ch->hosts = h;
    return h;
}

static void hosts_clear(disc_channel *ch)
{
    while (ch->hosts) {
        struct host_cache *h = ch->hosts;
        ch->hosts = h->link;
        for (int i = 0; i < h->n; i++)
            free(h->addrs[i]);
        free(h->addrs);
        free(h->host);
        free(h);
    }
}

static int add_entry(struct entry **v, size_t *n, const char *ip, bool v6, unsigned port,
                     unsigned long w)
{
    for (size_t i = 0; i < *n; i++)
        if ((*v)[i].port == port && !strcmp((*v)[i].ip, ip)) {
            (*v)[i].weight += w; /* two names for one backend */
            return 0;
        }
    struct entry *nv = realloc(*v, (*n + 1) * sizeof *nv);
    if (!nv)
        return -1;
    *v = nv;
    snprintf(nv[*n].ip, sizeof nv[*n].ip, "%s", ip);
    nv[*n].v6 = v6;
    nv[*n].port = port;
    nv[*n].weight = w;
    (*n)++;
    return 0;
}

/* Splits host:port / [v6]:port; every entry is checked here, because one
 * bad entry would make C-core refuse the whole target. */
static int add_instance(disc_channel *ch, const struct disc_instance *in, struct entry **v,
                        size_t *n)
{
    char host[256];
    const char *colon, *a = in->address;
    char *end;
    unsigned long w = in->weight > 0 ? (unsigned long)in->weight : 1;
    long port;
    unsigned char buf[sizeof(struct in6_addr)];

    if (a[0] == '[') {
        const char *close = strchr(a, ']');
        if (!close || close[1] != ':' || (size_t)(close - a - 1) >= sizeof host)
            return -1;
        memcpy(host, a + 1, (size_t)(close - a - 1));
        host[close - a - 1] = '\0';
        colon = close + 1;
    } else {
        colon = strrchr(a, ':');
        if (!colon || (size_t)(colon - a) >= sizeof host || colon == a)
            return -1;
        memcpy(host, a, (size_t)(colon - a));
        host[colon - a] = '\0';
    }
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (errno || *end || port < 1 || port > 65535 || end == colon + 1)
        return -1;
    if (inet_pton(AF_INET6, host, buf) == 1)
        return add_entry(v, n, host, true, (unsigned)port, w);
    if (a[0] == '[')
        return -1;
    if (inet_pton(AF_INET, host, buf) == 1)
        return add_entry(v, n, host, false, (unsigned)port, w);
    ch->uses_hosts = true;
    const struct host_cache *h = resolve_host(ch, host);
    if (!h || !h->n)
        return -1;
    for (int i = 0; i < h->n; i++)
        add_entry(v, n, h->addrs[i], strchr(h->addrs[i], ':') != NULL, (unsigned)port, w);
    return 0;
}

static unsigned long gcd(unsigned long a, unsigned long b)
{
    while (b) {
        unsigned long t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static int by_ip(const void *x, const void *y)
{
    const struct entry *a = x, *b = y;
    int r = strcmp(a->ip, b->ip);
    return r ? r : (int)a->port - (int)b->port;
}

/* The target for list: "" when nothing usable is in it. *n_addrs is the
 * number of entries after weighting. NULL when out of memory. */
static char *build_target(disc_channel *ch, const struct disc_list *list, int *n_addrs)
{
    struct entry *v = NULL;
    size_t n = 0;
    unsigned long g = 0, sum = 0, cap = (unsigned long)ch->o.max_addresses;
    bool any_v6 = false;
    struct sbuf b = {0};
    char item[INET6_ADDRSTRLEN + 32];

    for (size_t i = 0; i < list->n; i++)
        add_instance(ch, &list->instances[i], &v, &n);
    *n_addrs = 0;
    if (!n) {
        free(v);
        return strdup("");
    }
    qsort(v, n, sizeof *v, by_ip);
    for (size_t i = 0; i < n; i++) {
        g = gcd(g, v[i].weight);
        any_v6 |= v[i].v6;
    }
    for (size_t i = 0; i < n; i++) {
        v[i].weight /= g;
        sum += v[i].weight;
    }
    if (sum > cap) {
        /* Too long a list: scale down, keeping every backend at least once. */
        unsigned long scaled = 0;
        for (size_t i = 0; i < n; i++) {
            v[i].weight = (v[i].weight * cap + sum / 2) / sum;
            if (!v[i].weight)
                v[i].weight = 1;
            scaled += v[i].weight;
        }
        sum = scaled;
    }
    sb_add(&b, any_v6 ? "ipv6:" : "ipv4:");
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        if (v[i].v6)
            snprintf(item, sizeof item, "[%s]:%u", v[i].ip, v[i].port);
        else if (any_v6)
            snprintf(item, sizeof item, "[::ffff:%s]:%u", v[i].ip, v[i].port);
        else
            snprintf(item, sizeof item, "%s:%u", v[i].ip, v[i].port);
        for (unsigned long k = 0; k < v[i].weight; k++) {
            if (!first)
                sb_add(&b, ",");
            sb_add(&b, item);
            first = false;
        }
    }
    free(v);
    *n_addrs = (int)sum;
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ---- channels (caller holds mu) ----------------------------------------- */

static grpc_channel *make_channel(disc_channel *ch, const char *target, const char *group)
{
    char msg[300];

    if (*target)
        return grpc_channel_create(target, ch->creds, &ch->args);
    snprintf(msg, sizeof msg, "no instances of %s%s%s are registered", ch->service,
             group ? " in group " : "", group ? group : "");
    return grpc_lame_client_channel_create(NULL, GRPC_STATUS_UNAVAILABLE, msg);
}

static void retire(struct route *r, grpc_channel *c, int64_t now)
{
    struct retired *x;

    if (!c)
        return;
    x = malloc(sizeof *x);
    if (!x) {
        grpc_channel_destroy(c); /* better a leak-free early destroy than a leak */
        return;
    }
    x->ch = c;
    x->since = now;
    x->next = r->retired;
    r->retired = x;
}

static void swap_in(disc_channel *ch, struct route *r, int64_t now)
{
    retire(r, r->current, now);
    r->current = r->next;
    free(r->target);
    r->target = r->next_target;
    r->revision = r->next_revision;
    r->stale = r->next_stale;
    r->instances = r->next_instances;
    r->addresses = r->next_addresses;
    r->next = NULL;
    r->next_target = NULL;
    r->swaps++;
    pthread_cond_broadcast(&ch->cond);
}

static void reap(disc_channel *ch, struct route *r, int64_t now, bool all)
{
    for (struct retired **pp = &r->retired; *pp;) {
        struct retired *x = *pp;
        bool due =
            all || (now - x->since >= ch->o.retire_ms &&
                    grpc_channel_check_connectivity_state(x->ch, 0) != GRPC_CHANNEL_CONNECTING);
        if (due) {
            *pp = x->next;
            grpc_channel_destroy(x->ch);
            free(x);
        } else {
            pp = &x->next;
        }
    }
}

/* ---- the follower thread ------------------------------------------------- */

static void on_list(struct disc_watch *w, const struct disc_list *list, int err, void *arg)
{
    struct route *r = arg;
    struct disc_list *copy;

    (void)w;
    /* The agent going away, or having no list yet, changes nothing: an
     * empty list must come from etcd itself. */
    if (err == DISC_ENOAGENT)
        r->lost_at = now_ms();
    if (err || !list)
        return;
    copy = disc_list_dup(list);
    if (!copy)
        return;
    disc_list_free(r->list);
    r->list = copy;
    if (!r->dirty_at)
        r->dirty_at = now_ms();
}

/* Follower: when r's pending change may be built. The first change after
 * a quiet settle_ms is built at once; one that follows a build closer than
 * that waits for the rest of the burst. */
static int64_t due_at(const disc_channel *ch, const struct route *r)
{
    int64_t after_last = r->built_at ? r->built_at + ch->o.settle_ms : 0;

    return r->dirty_at > after_last ? r->dirty_at : after_last;
}

/* Under mu: the poller is told (ev_tag) when next's state changes, so that
 * READY swaps it in at once. The tag is the route and the channel's
 * generation, packed in a small heap block the poller frees. */
struct next_watch {
    struct route *r;
    uint64_t gen;
};

static void watch_next(disc_channel *ch, struct route *r, grpc_connectivity_state from)
{
    struct next_watch *w = malloc(sizeof *w);
    gpr_timespec deadline;

    if (!w)
        return; /* the follower's connect timeout still swaps it in */
    w->r = r;
    w->gen = r->next_gen;
    deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                            gpr_time_from_millis(r->next_deadline - now_ms() + 1, GPR_TIMESPAN));
    grpc_channel_watch_connectivity_state(r->next, from, deadline, ch->cq, w);
}

/* Follower: a rebuild is due for r. */
static void rebuild(disc_channel *ch, struct route *r, int64_t now)
{
    int addrs;
    char *target;

    /* Right after the agent came back, an empty list may only mean that our
     * servers have not re-registered through it yet (their registrations
     * left with the old agent): keep the channel we have for a while. */
    if (r->list->n == 0 && r->lost_at && now - r->lost_at < ch->o.reconnect_grace_ms && r->target &&
        *r->target) {
        r->dirty_at = r->lost_at + ch->o.reconnect_grace_ms - ch->o.settle_ms;
        return;
    }
    target = build_target(ch, r->list, &addrs);

    if (!target) {
        r->dirty_at = now + 100; /* out of memory: try again soon */
        return;
    }
    r->dirty_at = 0;
    r->built_at = now;
    pthread_mutex_lock(&ch->mu);
    const char *aim = r->next_target ? r->next_target : r->target;
    if (aim && !strcmp(aim, target) && r->current) {
        /* Same addresses: keep the channel, note the newer revision. */
        if (r->next_target) {
            r->next_revision = r->list->revision;
            r->next_stale = r->list->stale;
        } else {
            r->revision = r->list->revision;
            r->stale = r->list->stale;
            r->instances = (int)r->list->n;
            pthread_cond_broadcast(&ch->cond);
        }
        pthread_mutex_unlock(&ch->mu);
        free(target);
        return;
    }
    grpc_channel *c = make_channel(ch, target, r->group);
    if (r->next) {
        /* A newer list came while the last one connected: that channel is
         * still connecting, so it is retired, not destroyed. */
        retire(r, r->next, now);
        free(r->next_target);
    }
    r->next = c;
    r->next_target = target;
    r->next_revision = r->list->revision;
    r->next_stale = r->list->stale;
    r->next_instances = (int)r->list->n;
    r->next_addresses = addrs;
    r->next_deadline = now + ch->o.connect_timeout_ms;
    r->next_gen++;
    if (!*target || !r->current) {
        /* Nothing to wait for: a lame channel, or the very first one
         * (callers are waiting, and calls queue while it connects). */
        if (*target)
            grpc_channel_check_connectivity_state(c, 1);
        swap_in(ch, r, now);
    } else {
        grpc_connectivity_state s = grpc_channel_check_connectivity_state(c, 1);
        if (s == GRPC_CHANNEL_READY)
            swap_in(ch, r, now); /* its backends' connections were reused */
        else
            watch_next(ch, r, s);
    }
    pthread_mutex_unlock(&ch->mu);
}

/* Follower, holding mu: swaps in a connected channel, reaps old ones. */
static void advance(disc_channel *ch, struct route *r, int64_t now)
{
    if (r->next) {
        grpc_connectivity_state s = grpc_channel_check_connectivity_state(r->next, 1);
        if (s == GRPC_CHANNEL_READY || now >= r->next_deadline)
            swap_in(ch, r, now);
    }
    reap(ch, r, now, false);
}

static void *follow(void *arg)
{
    disc_channel *ch = arg;

    for (;;) {
        struct route *r;
        int64_t now;

        pthread_mutex_lock(&ch->mu);
        if (ch->stop) {
            pthread_mutex_unlock(&ch->mu);
            break;
        }
        for (r = ch->routes; r && !ch->o.use_xds; r = r->link) {
            if (r->watch_started)
                continue;
            r->watch_started = true;
            pthread_mutex_unlock(&ch->mu);
            /* The client is used by this thread only. */
            disc_watch_zone(ch->client, ch->service, r->group, ch->prefer_zone, on_list, r,
                            &r->watch);
            pthread_mutex_lock(&ch->mu);
        }
        pthread_mutex_unlock(&ch->mu);

        /* The follower wakes for the agent's lines, for a rebuild held
         * back by settle_ms, and every 20 ms to reap retired channels and
         * to catch a connect timeout (the poller swaps on READY itself). */
        int wait_ms = 20;
        now = now_ms();
        for (r = ch->routes; r; r = r->link)
            if (r->list && r->dirty_at) {
                int64_t in = due_at(ch, r) - now;
                if (in < wait_ms)
                    wait_ms = in < 0 ? 0 : (int)in;
            }
        disc_client_wait(ch->client, wait_ms);

        now = now_ms();
        if (ch->uses_hosts && now >= ch->hosts_refresh_at) {
            /* Host names in the lists: resolve them afresh. */
            hosts_clear(ch);
            ch->hosts_refresh_at = now + ch->o.resolve_refresh_ms;
            for (r = ch->routes; r; r = r->link)
                if (r->list && !r->dirty_at)
                    r->dirty_at = now;
        }
        for (r = ch->routes; r; r = r->link)
            if (r->list && r->dirty_at && now >= due_at(ch, r))
                rebuild(ch, r, now);
        pthread_mutex_lock(&ch->mu);
        for (r = ch->routes; r; r = r->link)
            advance(ch, r, now);
        pthread_mutex_unlock(&ch->mu);
    }
    return NULL;
}

/* Poller: the connectivity watch on a route's next channel fired (a state
 * change, or its deadline). The route outlives the poller; a channel that
 * is no longer next (its generation passed) is left alone. */
static void next_changed(disc_channel *ch, struct next_watch *w)
{
    struct route *r = w->r;
    uint64_t gen = w->gen;

    free(w);
    pthread_mutex_lock(&ch->mu);
    if (!ch->stop && r->next && r->next_gen == gen) {
        grpc_connectivity_state s = grpc_channel_check_connectivity_state(r->next, 0);
        int64_t now = now_ms();
        if (s == GRPC_CHANNEL_READY || now >= r->next_deadline)
            swap_in(ch, r, now);
        else
            watch_next(ch, r, s);
    }
    pthread_mutex_unlock(&ch->mu);
}

/* The poller: connections progress only while some thread is inside
 * grpc_completion_queue_next. */
static void *poll_core(void *arg)
{
    disc_channel *ch = arg;

    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(ch->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE && ev.tag)
            next_changed(ch, ev.tag);
    }
    return NULL;
}

/* ---- routes ------------------------------------------------------------- */

static bool same_group(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

/* Caller holds mu. */
static struct route *route_get(disc_channel *ch, const char *group)
{
    struct route *r;

    if (group && !*group)
        group = NULL;
    for (r = ch->routes; r; r = r->link)
        if (same_group(r->group, group))
            return r;
    r = calloc(1, sizeof *r);
    if (!r || (group && !(r->group = strdup(group)))) {
        free(r);
        return NULL;
    }
    r->revision = -1;
    r->link = ch->routes;
    ch->routes = r;
    return r;
}

static void timeout_at(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

grpc_call *disc_channel_create_call(disc_channel *ch, const char *group, grpc_call *parent,
                                    uint32_t propagation_mask, grpc_completion_queue *cq,
                                    grpc_slice method, const grpc_slice *host,
                                    gpr_timespec deadline)
{
    struct route *r;
    struct timespec until;
    grpc_call *call = NULL;

    pthread_mutex_lock(&ch->mu);
    /* xDS mode has one channel; groups travel as the x-group header. */
    r = route_get(ch, ch->o.use_xds ? ch->group : group ? group : ch->group);
    if (!r) {
        pthread_mutex_unlock(&ch->mu);
        return NULL;
    }
    timeout_at(&until, ch->o.first_list_timeout_ms);
    while (!r->current && !ch->stop)
        if (pthread_cond_timedwait(&ch->cond, &ch->mu, &until) == ETIMEDOUT)
            break;
    if (!r->current) {
        /* No list came in time: a lame channel fails this call (and the
         * next ones) fast, until the list arrives and replaces it. */
        char msg[300];
        snprintf(msg, sizeof msg, "no list for %s from the agent yet", ch->service);
        r->current = grpc_lame_client_channel_create(NULL, GRPC_STATUS_UNAVAILABLE, msg);
        free(r->target);
        r->target = strdup("");
    }
    /* Under mu, so the channel cannot be retired and destroyed meanwhile;
     * once made, the call keeps what it needs alive by itself. */
    if (r->current)
        call = grpc_channel_create_call(r->current, parent, propagation_mask, cq, method, host,
                                        deadline, NULL);
    pthread_mutex_unlock(&ch->mu);
    return call;
}

int disc_channel_wait(disc_channel *ch, const char *group, int64_t min_revision, int timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    struct route *r;
    int rc = DISC_ETIMEDOUT;

    pthread_mutex_lock(&ch->mu);
    r = route_get(ch, group ? group : ch->group);
    while (r && !ch->stop) {
        if (r->current && !r->next && r->revision >= min_revision &&
            (!r->target || !*r->target ||
             grpc_channel_check_connectivity_state(r->current, 1) == GRPC_CHANNEL_READY)) {
            rc = 0;
            break;
        }
        int64_t left = end - now_ms();
        if (left <= 0)
            break;
        struct timespec until;
        timeout_at(&until, left < 20 ? (int)left : 20);
        pthread_cond_timedwait(&ch->cond, &ch->mu, &until);
    }
    pthread_mutex_unlock(&ch->mu);
    return rc;
}

int disc_channel_info(disc_channel *ch, const char *group, struct disc_channel_info *info)
{
    struct route *r;

    memset(info, 0, sizeof *info);
    pthread_mutex_lock(&ch->mu);
    for (r = ch->routes; r; r = r->link)
        if (same_group(r->group, group && *group ? group : ch->group))
            break;
    if (r) {
        info->revision = r->revision;
        info->stale = r->stale;
        info->instances = r->instances;
        info->addresses = r->addresses;
        info->swaps = r->swaps;
        for (struct retired *x = r->retired; x; x = x->next)
            info->retired++;
        snprintf(info->target, sizeof info->target, "%s", r->target ? r->target : "");
    }
    pthread_mutex_unlock(&ch->mu);
    return r ? 0 : DISC_EINVAL;
}

/* ---- create and destroy ------------------------------------------------- */

/* "registry:///NAME", with "?group=G", "?zone=local" or both joined by
 * '&' (zone=local: the agent's zone policy, docs/traffic.md). */
static int parse_target(const char *target, char **service, char **group, bool *zone)
{
    static const char scheme[] = "registry:///";
    const char *name, *q, *g = NULL;
    size_t glen = 0;

    *service = *group = NULL;
    *zone = false;
    if (strncmp(target, scheme, sizeof scheme - 1))
        return DISC_EINVAL;
    name = target + sizeof scheme - 1;
    q = strchr(name, '?');
    size_t len = q ? (size_t)(q - name) : strlen(name);
    if (!len || memchr(name, '/', len))
        return DISC_EINVAL;
    for (const char *p = q; p && *p;) {
        const char *end = strchr(p + 1, '&');
        size_t plen = end ? (size_t)(end - p - 1) : strlen(p + 1);
        if (plen >= 6 && !strncmp(p + 1, "group=", 6) && !g) {
            g = p + 7;
            glen = plen - 6;
        } else if (plen == 10 && !strncmp(p + 1, "zone=local", 10) && !*zone) {
            *zone = true;
        } else {
            return DISC_EINVAL;
        }
        p = end;
    }
    if (!(*service = strndup(name, len)))
        return DISC_ENOMEM;
    if (glen && !(*group = strndup(g, glen))) {
        free(*service);
        return DISC_ENOMEM;
    }
    return 0;
}

static int copy_args(disc_channel *ch, const grpc_channel_args *user)
{
    size_t n = 1 + (user ? user->num_args : 0);

    ch->arg_vec = calloc(n, sizeof *ch->arg_vec);
    ch->arg_strings = calloc(2 * n, sizeof *ch->arg_strings);
    if (!ch->arg_vec || !ch->arg_strings)
        return DISC_ENOMEM;
    ch->arg_vec[0].type = GRPC_ARG_STRING;
    ch->arg_vec[0].key = (char *)GRPC_ARG_SERVICE_CONFIG;
    ch->arg_vec[0].value.string = (char *)SERVICE_CONFIG;
    for (size_t i = 0; user && i < user->num_args; i++) {
        grpc_arg *a = &ch->arg_vec[i + 1];
        *a = user->args[i];
        if (!strcmp(a->key, GRPC_ARG_SERVICE_CONFIG) || !strcmp(a->key, GRPC_ARG_LB_POLICY_NAME))
            return DISC_EINVAL;
        if (!(a->key = strdup(a->key)))
            return DISC_ENOMEM;
        ch->arg_strings[ch->n_arg_strings++] = a->key;
        if (a->type == GRPC_ARG_STRING) {
            if (!(a->value.string = strdup(a->value.string)))
                return DISC_ENOMEM;
            ch->arg_strings[ch->n_arg_strings++] = a->value.string;
        }
    }
    ch->args.num_args = n;
    ch->args.args = ch->arg_vec;
    return 0;
}

static void defaults(struct disc_channel_options *o)
{
    if (o->max_addresses <= 0)
        o->max_addresses = 256;
    if (o->settle_ms <= 0)
        o->settle_ms = 10;
    if (o->connect_timeout_ms <= 0)
        o->connect_timeout_ms = 2000;
    if (o->retire_ms <= 0)
        o->retire_ms = 10000;
    if (o->resolve_refresh_ms <= 0)
        o->resolve_refresh_ms = 30000;
    if (o->first_list_timeout_ms <= 0)
        o->first_list_timeout_ms = 5000;
    if (o->reconnect_grace_ms <= 0)
        o->reconnect_grace_ms = 3000;
}

static void channel_free(disc_channel *ch)
{
    for (size_t i = 0; i < ch->n_arg_strings; i++)
        free(ch->arg_strings[i]);
    free(ch->arg_strings);
    free(ch->arg_vec);
    while (ch->routes) {
        struct route *r = ch->routes;
        ch->routes = r->link;
        reap(ch, r, 0, true);
        if (r->next)
            grpc_channel_destroy(r->next);
        if (r->current)
            grpc_channel_destroy(r->current);
        free(r->target);
        free(r->next_target);
        disc_list_free(r->list);
        free(r->group);
        free(r);
    }
    hosts_clear(ch);
    if (ch->creds)
        grpc_channel_credentials_release(ch->creds);
    pthread_mutex_destroy(&ch->mu);
    pthread_cond_destroy(&ch->cond);
    free(ch->service);
    free(ch->group);
    free(ch);
}

/* xDS mode: the agent's bootstrap in the environment (unless the program
 * chose one), and one channel to xds:///NAME that C-core keeps current. */
static int xds_channel(disc_channel *ch, struct route *r)
{
    char target[300];

    if (!getenv("GRPC_XDS_BOOTSTRAP") && !getenv("GRPC_XDS_BOOTSTRAP_CONFIG")) {
        char *reply = NULL;
        int rc = disc_request_json(ch->client, "{\"op\":\"xds_bootstrap\"}", 5000, &reply);
        if (rc)
            return rc;
        json_t *o = json_loads(reply, 0, NULL);
        char *boot = json_dumps(json_object_get(o, "bootstrap"), JSON_COMPACT);
        json_decref(o);
        free(reply);
        if (!boot)
            return DISC_EPROTO;
        /* Read by C-core when its xDS client starts (the first xds:
         * channel), so setting it now is in time. */
        setenv("GRPC_XDS_BOOTSTRAP_CONFIG", boot, 0);
        free(boot);
    }
    snprintf(target, sizeof target, "xds:///%s", ch->service);
    /* No service config of ours: the xDS server gives the LB policy. */
    grpc_channel_args none = {0, NULL};
    pthread_mutex_lock(&ch->mu);
    r->current = grpc_channel_create(target, ch->creds, ch->args.num_args > 1 ? &ch->args : &none);
    r->target = strdup(target);
    r->revision = 0;
    pthread_mutex_unlock(&ch->mu);
    return r->current ? 0 : DISC_ENOMEM;
}

int disc_channel_create(const char *target, const struct disc_channel_options *o,
                        disc_channel **out)
{
    disc_channel *ch;
    int rc;

    *out = NULL;
    if (!target)
        return DISC_EINVAL;
    ch = calloc(1, sizeof *ch);
    if (!ch)
        return DISC_ENOMEM;
    pthread_mutex_init(&ch->mu, NULL);
    pthread_cond_init(&ch->cond, NULL);
    if (o)
        ch->o = *o;
    defaults(&ch->o);
    if ((rc = parse_target(target, &ch->service, &ch->group, &ch->prefer_zone)) ||
        (rc = copy_args(ch, o ? o->args : NULL)))
        goto fail;
    ch->o.socket_path = NULL; /* not kept: the client has its own copy */
    rc = disc_client_open(&ch->client, o ? o->socket_path : NULL);
    if (rc)
        goto fail;
    grpc_init();
    ch->creds = grpc_insecure_credentials_create();
    ch->cq = grpc_completion_queue_create_for_next(NULL);
    pthread_mutex_lock(&ch->mu);
    struct route *r = route_get(ch, ch->group);
    pthread_mutex_unlock(&ch->mu);
    if (!r || !ch->creds || !ch->cq) {
        rc = DISC_ENOMEM;
        goto fail_grpc;
    }
    if (ch->o.use_xds && (rc = xds_channel(ch, r)) != 0)
        goto fail_grpc;
    if (pthread_create(&ch->poller, NULL, poll_core, ch)) {
        rc = DISC_ESYSTEM;
        goto fail_grpc;
    }
    ch->poller_started = true;
    if (pthread_create(&ch->follower, NULL, follow, ch)) {
        rc = DISC_ESYSTEM;
        goto fail_grpc;
    }
    ch->follower_started = true;
    *out = ch;
    return 0;

fail_grpc:
    disc_channel_destroy(ch);
    return rc;
fail:
    disc_client_close(ch->client);
    channel_free(ch);
    return rc;
}

void disc_channel_destroy(disc_channel *ch)
{
    if (!ch)
        return;
    pthread_mutex_lock(&ch->mu);
    ch->stop = true;
    pthread_cond_broadcast(&ch->cond);
    pthread_mutex_unlock(&ch->mu);
    if (ch->follower_started)
        pthread_join(ch->follower, NULL);
    ch->client = disc_client_close(ch->client);
    /* Channels first, while the poller still drives their closing (and
     * completes their connectivity watches); under mu, which the poller
     * takes to look at a route. */
    pthread_mutex_lock(&ch->mu);
    for (struct route *r = ch->routes; r; r = r->link) {
        reap(ch, r, 0, true);
        if (r->next)
            grpc_channel_destroy(r->next);
        if (r->current)
            grpc_channel_destroy(r->current);
        r->next = r->current = NULL;
    }
    pthread_mutex_unlock(&ch->mu);
    if (ch->cq) {
        grpc_completion_queue_shutdown(ch->cq);
        if (ch->poller_started)
            pthread_join(ch->poller, NULL);
        else
            while (
                grpc_completion_queue_next(ch->cq, gpr_inf_past(GPR_CLOCK_MONOTONIC), NULL).type !=
                GRPC_QUEUE_SHUTDOWN)
                ;
        grpc_completion_queue_destroy(ch->cq);
    }
    channel_free(ch);
    grpc_shutdown();
}
