/* Fuzz target: a watch stream's bytes, cut into chunks at arbitrary
 * places, through the stream's line splitter (on_chunk) and line handler
 * (handle_line) of agent/etcd_watch.c, as libcurl would hand them over.
 *
 * Both are static, so this file includes etcd_watch.c (as the unit tests do
 * with the files they test) and drives a watch struct of its own: no
 * network, no HTTP request. The etcd client behind it is real but never
 * sends anything (handle_line only tells it about failures and tokens).
 *
 * Input: byte 0 picks the revision the watch resumes from, byte 1 seeds
 * how the rest is cut into chunks (0: one chunk), the rest is the stream.
 *
 * Besides memory errors, it checks what the watch promises its receiver:
 * events come only from revisions not yet delivered, in non-decreasing
 * order, and the line buffer never outgrows the client's cap. */
#include "../agent/etcd_watch.c"

#include "fuzz.h"

/* Small, so that the over-long line path is reached; real lines of a
 * watch can be large, but the code path is the same. */
#define FUZZ_MAX_LINE 8192

static uv_loop_t *loop;
static etcd_client *client;

/* What the receiver has seen during the current input. */
static int64_t delivered; /* highest revision delivered */
static bool saw_up;

static void on_update(etcd_watch *w, const struct etcd_watch_update *u, void *arg)
{
    (void)arg;
    switch (u->kind) {
    case ETCD_WATCH_EVENTS:
        FUZZ_CHECK(u->n_events > 0 && u->events);
        for (size_t i = 0; i < u->n_events; i++) {
            int64_t rev = u->events[i].kv.mod_revision;
            /* Nothing at or below what an earlier update delivered, and
             * nothing out of order inside this one. */
            FUZZ_CHECK(rev > 0);
            FUZZ_CHECK(i > 0 || rev > delivered);
            FUZZ_CHECK(i == 0 || rev >= u->events[i - 1].kv.mod_revision);
            FUZZ_CHECK(u->events[i].kv.key && u->events[i].kv.key_len > 0);
        }
        FUZZ_CHECK(u->revision == u->events[u->n_events - 1].kv.mod_revision);
        FUZZ_CHECK(u->revision + 1 == w->next_rev);
        delivered = u->revision;
        break;
    case ETCD_WATCH_UP:
        saw_up = true;
        FUZZ_CHECK(w->live);
        break;
    case ETCD_WATCH_SNAPSHOT:
    case ETCD_WATCH_DOWN:
        /* Only the range read and the end of a stream report these; a line
         * of the stream never does. */
        FUZZ_CHECK(!"snapshot or down reported from inside a stream");
        break;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char *const endpoints[] = {"http://127.0.0.1:1"};
    struct etcd_options o = {0};

    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    loop = uv_default_loop();
    o.endpoints = endpoints;
    o.n_endpoints = 1;
    o.max_reply = FUZZ_MAX_LINE;
    /* No HTTP client: nothing on this path may send a request, and a NULL
     * here makes any attempt to do so crash loudly. */
    if (etcd_client_new(&client, loop, NULL, &o) != 0)
        abort();
    return 0;
}

/* xorshift32: a cheap, seedable sequence for the cut points. */
static uint32_t next_rand(uint32_t *s)
{
    uint32_t x = *s;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int64_t starts[] = {1, 2, 5, 13, 100, 1000000, INT64_MAX / 2, 0};
    etcd_watch w;
    uint32_t seed;
    const char *p;
    size_t left;

    if (size < 2)
        return 0;
    memset(&w, 0, sizeof w);
    w.c = client;
    w.key = (char *)"/micro/web/";
    w.klen = strlen(w.key);
    w.cb = on_update;
    w.next_rev = starts[data[0] % (sizeof starts / sizeof starts[0])];
    w.endpoint = 0;
    /* The client is shared by every input: put back what a line may have
     * changed. */
    client->cur = 0;
    client->connected = false;

    delivered = w.next_rev - 1;
    saw_up = false;
    seed = data[1] ? 0x9e3779b9u * data[1] : 0;
    p = (const char *)data + 2;
    left = size - 2;
    while (left > 0) {
        size_t take = left;
        if (seed) {
            uint32_t r = next_rand(&seed);
            /* Mostly tiny chunks (a byte, a few), sometimes a large one. */
            take = (r & 3) ? 1 + (r >> 8) % 8 : 1 + (r >> 8) % 512;
            if (take > left)
                take = left;
        }
        /* libcurl's buffer: exactly the chunk, so ASan sees any read past
         * it. */
        char *chunk = malloc(take);
        if (!chunk)
            break;
        memcpy(chunk, p, take);
        int stop = on_chunk(NULL, chunk, take, &w);
        free(chunk);
        FUZZ_CHECK(w.len <= w.c->max_reply);
        FUZZ_CHECK(w.len <= w.cap);
        if (stop)
            break; /* the transfer is aborted here */
        p += take;
        left -= take;
    }
    FUZZ_CHECK(!saw_up || w.live);
    free(w.line);
    return 0;
}
