/* Fuzz target: instance_from_value() on arbitrary bytes, as if they were a
 * value under <prefix>/<name>/ written by some other writer, and the
 * round trips the agent relies on:
 *   - a parsed instance written back with instance_to_value() parses to an
 *     equal instance (the registry compares what it reads with what it
 *     wrote, and a difference would make it rewrite its key forever);
 *   - instance_copy() gives an equal instance;
 *   - the socket form (instance_to_api) read back with instance_from_api()
 *     gives the same instance with the effective weight, whenever the
 *     instance obeys the rules of validate.h, and an error otherwise. */
#include <jansson.h>
#include <stdint.h>
#include <string.h>

#include "error.h"
#include "fuzz.h"
#include "instance.h"
#include "validate.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    return 0;
}

static void check_shape(const struct instance *i)
{
    FUZZ_CHECK(i->name && i->address && i->group);
    FUZZ_CHECK(i->n_meta == 0 || i->meta);
    for (size_t k = 0; k < i->n_meta; k++) {
        FUZZ_CHECK(i->meta[k].key && i->meta[k].value);
        /* Sorted by key, as instance.h says; equal keys would make two
         * instances that mean the same compare unequal. */
        FUZZ_CHECK(k == 0 || strcmp(i->meta[k - 1].key, i->meta[k].key) < 0);
    }
}

/* Every rule a registration must obey, checked one by one. */
static bool obeys_rules(const struct instance *a)
{
    size_t total = 0;

    if (!validate_name(a->name, NULL, 0) || !validate_address(a->address, NULL, 0) ||
        !validate_group(a->group, NULL, 0))
        return false;
    for (size_t k = 0; k < a->n_meta; k++) {
        if (!validate_meta_key(a->meta[k].key, NULL, 0) ||
            !validate_meta_value(a->meta[k].value, strlen(a->meta[k].value), NULL, 0))
            return false;
        total += strlen(a->meta[k].key) + strlen(a->meta[k].value);
    }
    return validate_meta_size(total, NULL, 0);
}

static void api_round_trip(const struct instance *a)
{
    struct instance b;
    char err[256];
    json_t *o = instance_to_api(a);
    int rc;

    FUZZ_CHECK(o != NULL);
    rc = instance_from_api(o, &b, err, sizeof err);
    json_decref(o);
    if (!obeys_rules(a)) {
        /* The socket refuses what it could not register either. */
        FUZZ_CHECK(rc == DA_EINVAL);
        FUZZ_CHECK(memchr(err, '\0', sizeof err) && err[0]);
        return;
    }
    FUZZ_CHECK(rc == 0);
    check_shape(&b);
    FUZZ_CHECK(b.weight == instance_weight(a));
    b.weight = a->weight;
    FUZZ_CHECK(instance_equal(a, &b));
    instance_clear(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct instance a, b, c;
    char *value;
    int rc;

    rc = instance_from_value((const char *)data, size, &a);
    if (rc) {
        FUZZ_CHECK(rc == DA_EPROTO || rc == DA_ENOMEM);
        return 0;
    }
    check_shape(&a);
    FUZZ_CHECK(instance_weight(&a) >= 1);
    /* Any name and address, valid or not, must not crash the checks. */
    (void)validate_name(a.name, NULL, 0);
    (void)validate_address(a.address, NULL, 0);

    value = instance_to_value(&a);
    FUZZ_CHECK(value != NULL);
    rc = instance_from_value(value, strlen(value), &b);
    FUZZ_CHECK(rc == 0);
    check_shape(&b);
    FUZZ_CHECK(instance_equal(&a, &b));
    /* And it is a fixed point: writing it again gives the same bytes. */
    char *again = instance_to_value(&b);
    FUZZ_CHECK(again && !strcmp(value, again));
    free(again);
    free(value);
    instance_clear(&b);

    FUZZ_CHECK(instance_copy(&c, &a) == 0);
    FUZZ_CHECK(instance_equal(&a, &c));
    instance_clear(&c);

    api_round_trip(&a);
    instance_clear(&a);
    return 0;
}
