/* Fuzz target: etcd_parse_watch_line() on arbitrary bytes, as if they were
 * one line of a /v3/watch response stream ({"result":{...}} with events,
 * created/canceled flags and compaction, or {"error":{...}}). The line
 * splitter in front of it is fuzzed by fuzz_watch_stream.c. */
#include <stdint.h>
#include <string.h>

#include "error.h"
#include "etcd_parse.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct etcd_watch_msg m;
    struct etcd_error e;
    int rc = etcd_parse_watch_line((const char *)data, size, &m, &e);

    if (rc == 0) {
        FUZZ_CHECK((m.n_events == 0) == (m.events == NULL));
        FUZZ_CHECK(memchr(m.cancel_reason, '\0', sizeof m.cancel_reason));
        for (size_t i = 0; i < m.n_events; i++) {
            const struct etcd_event *ev = &m.events[i];
            FUZZ_CHECK(ev->type == ETCD_EVENT_PUT || ev->type == ETCD_EVENT_DELETE);
            /* The watch relies on these two to order and resume. */
            FUZZ_CHECK(ev->kv.key && ev->kv.key_len > 0 && ev->kv.value);
            FUZZ_CHECK(ev->kv.mod_revision > 0);
            /* etcd sends a response's events in revision order (a txn's
             * share one); the watch resumes from the last one's. */
            FUZZ_CHECK(i == 0 || ev->kv.mod_revision >= m.events[i - 1].kv.mod_revision);
            FUZZ_CHECK(ev->kv.key[ev->kv.key_len] == '\0');
            FUZZ_CHECK(ev->kv.value[ev->kv.value_len] == '\0');
        }
        etcd_watch_msg_clear(&m);
        FUZZ_CHECK(m.events == NULL && m.n_events == 0);
        return 0;
    }
    FUZZ_CHECK(m.events == NULL && m.n_events == 0);
    FUZZ_CHECK(memchr(e.message, '\0', sizeof e.message));
    switch (rc) {
    case DA_EETCD:
    case DA_EAUTH:
    case DA_ELEASE:
    case DA_ENOLEADER:
        FUZZ_CHECK(etcd_error_to_err(&e) == rc);
        break;
    case DA_EPROTO:
    case DA_ENOMEM:
        break;
    default:
        FUZZ_CHECK(!"etcd_parse_watch_line returned a code its header does not list");
    }
    return 0;
}
