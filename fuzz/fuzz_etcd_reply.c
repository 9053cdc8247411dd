/* Fuzz target: etcd_parse_reply() on arbitrary bytes, as if they were the
 * body of an answer of etcd's JSON gateway (range, put, txn, lease calls,
 * maintenance status, errors). Besides memory errors and leaks, it checks
 * the parser's promises: a result is either complete and self-consistent
 * or nothing is kept, and every error code is one the header lists. */
#include <stdint.h>
#include <string.h>

#include "error.h"
#include "etcd_parse.h"
#include "fuzz.h"

/* Reads every byte the result claims to own, so that ASan sees a length
 * that overstates its buffer. */
static unsigned touch(const char *p, size_t n)
{
    unsigned sum = 0;

    for (size_t i = 0; i < n; i++)
        sum += (unsigned char)p[i];
    return sum;
}

static void check_kv(const struct etcd_kv *kv)
{
    /* A kv always has a key (etcd never sends an empty one) and a value
     * buffer, both NUL-terminated past their length. */
    FUZZ_CHECK(kv->key && kv->key_len > 0);
    FUZZ_CHECK(kv->value);
    FUZZ_CHECK(kv->key[kv->key_len] == '\0');
    FUZZ_CHECK(kv->value[kv->value_len] == '\0');
    (void)touch(kv->key, kv->key_len);
    (void)touch(kv->value, kv->value_len);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct etcd_result r;
    struct etcd_error e;
    int rc = etcd_parse_reply((const char *)data, size, &r, &e);

    if (rc == 0) {
        FUZZ_CHECK((r.n_kvs == 0) == (r.kvs == NULL));
        for (size_t i = 0; i < r.n_kvs; i++)
            check_kv(&r.kvs[i]);
        FUZZ_CHECK(memchr(r.version, '\0', sizeof r.version));
        if (r.token)
            (void)strlen(r.token);
        etcd_result_clear(&r);
        FUZZ_CHECK(r.kvs == NULL && r.token == NULL && r.n_kvs == 0);
        return 0;
    }
    /* On failure nothing is handed over: the result is empty. */
    FUZZ_CHECK(r.kvs == NULL && r.n_kvs == 0 && r.token == NULL);
    FUZZ_CHECK(memchr(e.message, '\0', sizeof e.message));
    switch (rc) {
    case DA_EETCD:
    case DA_EAUTH:
    case DA_ELEASE:
    case DA_ENOLEADER:
        /* An etcd error: its text and code must map to the same answer
         * when the client maps them again (etcd.c does, for logging). */
        FUZZ_CHECK(etcd_error_to_err(&e) == rc);
        break;
    case DA_EPROTO:
    case DA_ENOMEM:
        break;
    default:
        FUZZ_CHECK(!"etcd_parse_reply returned a code its header does not list");
    }
    return 0;
}
