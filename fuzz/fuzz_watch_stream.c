/* Fuzz target: a watch stream's bytes, cut into chunks at arbitrary
 * places, through the stream's line splitter (on_chunk, handle_line in
 * agent/etcd/etcd_watch_stream.c) to the watch the lines name
 * (etcd_watch.c), as libcurl would hand them over.
 *
 * Those are static, so this file includes both .c files (as the unit tests
 * do with the files they test) and drives a stream struct of its own with
 * one watch on it: no network, no HTTP request is ever sent. The etcd
 * client behind it is real: a compaction notice makes the watch ask it for
 * a range read, which is queued and cancelled when the watch stops at the
 * end of the input, before the loop could send it. The watch has id 0, so
 * every line without a watch_id (etcd leaves out a 0) is for it.
 *
 * Input: byte 0 picks the revision the watch resumes from, byte 1 seeds
 * how the rest is cut into chunks (0: one chunk), the rest is the stream.
 *
 * Besides memory errors, it checks what the watch promises its receiver:
 * events come only from revisions not yet delivered, in non-decreasing
 * order, and the line buffer never outgrows the client's cap. */
#include "etcd_watch.c"
#include "etcd_watch_stream.c"
#include "http.h"

#include "fuzz.h"

/* Small, so that the over-long line path is reached; real lines of a
 * watch can be large, but the code path is the same. */
#define FUZZ_MAX_LINE 8192

static uv_loop_t *loop;
static http_client *http;
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
    case ETCD_WATCH_DOWN:
        /* A cancel for this watch alone (not a compaction) reports it. */
        FUZZ_CHECK(!w->live && !w->on_stream);
        break;
    case ETCD_WATCH_SNAPSHOT:
        /* Only a range read reports this, and none runs here. */
        FUZZ_CHECK(!"snapshot reported from inside a stream");
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
    /* A real HTTP client, whose requests (range reads) are cancelled before
     * the loop ever runs them. */
    if (http_client_new(&http, loop) != 0 || etcd_client_new(&client, loop, http, &o) != 0)
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
    static const char key[] = "/micro/web/";
    struct etcd_wstream *ws;
    etcd_watch *wp;
    uint32_t seed;
    const char *p;
    size_t left;

    if (size < 2)
        return 0;
    /* The client is shared by every input: put back what a line may have
     * changed. */
    client->cur = 0;
    client->connected = false;
    if (!(ws = get(client)))
        abort();
    ws->endpoint = 0;
    if (etcd_watch_start(client, key, strlen(key), NULL, 0,
                         starts[data[0] % (sizeof starts / sizeof starts[0])], on_update, NULL,
                         &wp) != 0)
        abort();
    /* On the stream, created by a create_request etcd answered with id 0. */
    wp->need_snapshot = false;
    wp->on_stream = true;
    wp->id = 0;
#define w (*wp)

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
        int stop = on_chunk(NULL, chunk, take, ws);
        free(chunk);
        FUZZ_CHECK(ws->len <= client->max_reply);
        FUZZ_CHECK(ws->len <= ws->cap);
        if (stop)
            break; /* the transfer is aborted here */
        p += take;
        left -= take;
    }
    FUZZ_CHECK(!saw_up || w.live || !w.on_stream);
#undef w
    /* Stopping the last watch closes the stream state; the loop frees the
     * watch (and cancels what it asked for). */
    etcd_watch_close(wp);
    uv_run(loop, UV_RUN_NOWAIT);
    return 0;
}
