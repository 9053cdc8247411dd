/* Instance lists: the agent's JSON form read into struct disc_list.
 *
 * A list keeps a reference to the JSON it was read from and points into its
 * strings, so reading one costs two allocations whatever its size. Every
 * member is checked: a list the agent sent is trusted for nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct disc_list *disc_list_free(struct disc_list *list)
{
    struct disc__list *l = (struct disc__list *)list;

    if (!l)
        return NULL;
    json_decref(l->root);
    free(l->inst);
    free(l->meta);
    free(l);
    return NULL;
}

struct disc_list *disc_list_dup(const struct disc_list *list)
{
    const struct disc__list *l = (const struct disc__list *)list;
    struct disc__list *copy = NULL;
    json_t *root;
    char why[8];

    if (!l)
        return NULL;
    /* A deep copy, so that the copy shares no reference count with the
     * library's and may be handed to another thread. */
    root = json_deep_copy(l->root);
    if (!root)
        return NULL;
    if (disc__list_from_json(root, &copy, why, sizeof why) != 0)
        copy = NULL;
    json_decref(root);
    return copy ? &copy->pub : NULL;
}

struct pair {
    const char *key, *value;
};

static int pair_cmp(const void *x, const void *y)
{
    return strcmp(((const struct pair *)x)->key, ((const struct pair *)y)->key);
}

static int inst_cmp(const void *x, const void *y)
{
    return strcmp(((const struct disc_instance *)x)->address,
                  ((const struct disc_instance *)y)->address);
}

/* Fills one instance from e; its metadata goes to keys[0..] and
 * values[0..] (room counted by the caller). */
static int read_instance(json_t *e, size_t i, struct disc_instance *d, const char **keys,
                         const char **values, char *why, size_t whylen)
{
    json_t *name = json_object_get(e, "name"), *addr = json_object_get(e, "address");
    json_t *weight = json_object_get(e, "weight"), *group = json_object_get(e, "group");
    json_t *meta = json_object_get(e, "metadata"), *v;
    struct pair *pairs = NULL;
    const char *k;
    size_t n = 0;

    if (!json_is_string(name) || !json_is_string(addr)) {
        snprintf(why, whylen, "instance %zu: 'name' and 'address' must be strings", i);
        return DISC_EPROTO;
    }
    d->name = json_string_value(name);
    d->address = json_string_value(addr);
    d->weight = 0;
    if (weight && !json_is_null(weight)) {
        json_int_t w = json_is_integer(weight) ? json_integer_value(weight) : 0;
        if (!json_is_integer(weight) || w < INT32_MIN || w > INT32_MAX) {
            snprintf(why, whylen, "instance %zu: 'weight' must be an int32", i);
            return DISC_EPROTO;
        }
        d->weight = (int32_t)w;
    }
    if (group && !json_is_null(group) && !json_is_string(group)) {
        snprintf(why, whylen, "instance %zu: 'group' must be a string", i);
        return DISC_EPROTO;
    }
    d->group = json_is_string(group) ? json_string_value(group) : "";
    d->n_meta = 0;
    d->meta_keys = keys;
    d->meta_values = values;
    if (!json_is_object(meta) || !json_object_size(meta))
        return 0;
    pairs = calloc(json_object_size(meta), sizeof *pairs);
    if (!pairs)
        return DISC_ENOMEM;
    json_object_foreach(meta, k, v) {
        pairs[n].key = k;
        pairs[n++].value = json_string_value(v);
    }
    qsort(pairs, n, sizeof *pairs, pair_cmp);
    for (size_t j = 0; j < n; j++) {
        keys[j] = pairs[j].key;
        values[j] = pairs[j].value;
    }
    free(pairs);
    d->n_meta = n;
    return 0;
}

int disc__list_from_json(json_t *o, struct disc__list **out, char *why, size_t whylen)
{
    json_t *service = json_object_get(o, "service"), *rev = json_object_get(o, "revision");
    json_t *stale = json_object_get(o, "stale"), *arr = json_object_get(o, "instances"), *e, *v;
    struct disc__list *l;
    size_t i, n_meta = 0, used = 0;
    const char *k;
    int rc;

    *out = NULL;
    if (!json_is_string(service) || !json_is_integer(rev) || !json_is_boolean(stale) ||
        !json_is_array(arr)) {
        snprintf(why, whylen,
                 "a list needs 'service' (string), 'revision' (integer), 'stale' (boolean) and "
                 "'instances' (array)");
        return DISC_EPROTO;
    }
    /* Count the metadata first, checking that it is an object of strings,
     * so that one array holds every key and value. */
    json_array_foreach(arr, i, e) {
        json_t *meta;
        if (!json_is_object(e)) {
            snprintf(why, whylen, "instance %zu is not an object", i);
            return DISC_EPROTO;
        }
        meta = json_object_get(e, "metadata");
        if (!meta || json_is_null(meta))
            continue;
        if (!json_is_object(meta)) {
            snprintf(why, whylen, "instance %zu: 'metadata' must be an object", i);
            return DISC_EPROTO;
        }
        json_object_foreach(meta, k, v) {
            if (!json_is_string(v)) {
                snprintf(why, whylen, "instance %zu: metadata '%.64s' is not a string", i, k);
                return DISC_EPROTO;
            }
            n_meta++;
        }
    }
    l = calloc(1, sizeof *l);
    if (!l)
        return DISC_ENOMEM;
    l->root = json_incref(o);
    l->inst = calloc(json_array_size(arr) ? json_array_size(arr) : 1, sizeof *l->inst);
    l->meta = calloc(n_meta ? 2 * n_meta : 1, sizeof *l->meta);
    if (!l->inst || !l->meta) {
        disc_list_free(&l->pub);
        return DISC_ENOMEM;
    }
    json_array_foreach(arr, i, e) {
        rc = read_instance(e, i, &l->inst[i], l->meta + used, l->meta + n_meta + used, why, whylen);
        if (rc) {
            disc_list_free(&l->pub);
            return rc;
        }
        used += l->inst[i].n_meta;
    }
    l->pub.service = json_string_value(service);
    l->pub.revision = json_integer_value(rev);
    l->pub.stale = json_is_true(stale);
    l->pub.n = json_array_size(arr);
    l->pub.instances = l->inst;
    /* The agent sends them sorted already; the header promises it, so make
     * sure rather than trust. */
    qsort(l->inst, l->pub.n, sizeof *l->inst, inst_cmp);
    *out = l;
    return 0;
}
