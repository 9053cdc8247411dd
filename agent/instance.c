#include "instance.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "validate.h"

void instance_clear(struct instance *i)
{
    if (!i)
        return;
    free(i->name);
    free(i->address);
    free(i->group);
    for (size_t k = 0; k < i->n_meta; k++) {
        free(i->meta[k].key);
        free(i->meta[k].value);
    }
    free(i->meta);
    memset(i, 0, sizeof *i);
}

static int meta_cmp(const void *a, const void *b)
{
    return strcmp(((const struct instance_meta *)a)->key, ((const struct instance_meta *)b)->key);
}

/* Reads an object of string values into i->meta, sorted by key. Values
 * that are not strings make the whole object invalid. */
static int read_meta(const json_t *o, struct instance *i, char *err, size_t errlen)
{
    const char *k;
    json_t *v;
    size_t n = 0;

    if (!o || json_is_null(o))
        return 0;
    if (!json_is_object(o)) {
        snprintf(err, errlen, "metadata must be an object of strings");
        return DA_EPROTO;
    }
    if (!json_object_size(o))
        return 0;
    i->meta = calloc(json_object_size(o), sizeof *i->meta);
    if (!i->meta)
        return DA_ENOMEM;
    json_object_foreach((json_t *)o, k, v) {
        if (!json_is_string(v)) {
            snprintf(err, errlen, "metadata value of '%s' must be a string", k);
            return DA_EPROTO;
        }
        i->meta[n].key = strdup(k);
        i->meta[n].value = strdup(json_string_value(v));
        i->n_meta = ++n;
        if (!i->meta[n - 1].key || !i->meta[n - 1].value)
            return DA_ENOMEM;
    }
    qsort(i->meta, i->n_meta, sizeof *i->meta, meta_cmp);
    return 0;
}

static int read_fields(const json_t *o, const char *nname, const char *naddr, const char *nweight,
                       const char *ngroup, const char *nmeta, struct instance *i, char *err,
                       size_t errlen)
{
    const json_t *name = json_object_get(o, nname), *addr = json_object_get(o, naddr);
    const json_t *weight = json_object_get(o, nweight), *group = json_object_get(o, ngroup);
    int rc;

    memset(i, 0, sizeof *i);
    if (!json_is_string(name) || !json_is_string(addr)) {
        snprintf(err, errlen, "'%s' and '%s' must be strings", nname, naddr);
        return DA_EPROTO;
    }
    if (weight && !json_is_null(weight)) {
        json_int_t w;
        if (!json_is_integer(weight) || !validate_weight(w = json_integer_value(weight), NULL, 0)) {
            snprintf(err, errlen, "'%s' must be an integer in int32 range", nweight);
            return DA_EPROTO;
        }
        i->weight = (int32_t)w;
    }
    if (group && !json_is_null(group) && !json_is_string(group)) {
        snprintf(err, errlen, "'%s' must be a string", ngroup);
        return DA_EPROTO;
    }
    i->name = strdup(json_string_value(name));
    i->address = strdup(json_string_value(addr));
    i->group = strdup(json_is_string(group) ? json_string_value(group) : "");
    if (!i->name || !i->address || !i->group)
        rc = DA_ENOMEM;
    else
        rc = read_meta(json_object_get(o, nmeta), i, err, errlen);
    if (rc)
        instance_clear(i);
    return rc;
}

int instance_from_value(const char *value, size_t len, struct instance *out)
{
    json_t *o = json_loadb(value, len, 0, NULL);
    char err[128];
    int rc;

    if (!o)
        return DA_EPROTO;
    rc = json_is_object(o) ? read_fields(o, "Name", "Address", "Weight", "Group", "Metadata", out,
                                         err, sizeof err)
                           : DA_EPROTO;
    json_decref(o);
    return rc;
}

static json_t *meta_json(const struct instance *inst)
{
    json_t *m = json_object();

    for (size_t k = 0; m && k < inst->n_meta; k++)
        if (json_object_set_new(m, inst->meta[k].key, json_string(inst->meta[k].value))) {
            json_decref(m);
            return NULL;
        }
    return m;
}

char *instance_to_value(const struct instance *inst)
{
    json_t *o = json_object();
    char *s = NULL;

    /* Member order and names are the Go struct's, so that a value written
     * here reads the same as one written by the Go registry. */
    if (o && !json_object_set_new(o, "Name", json_string(inst->name)) &&
        !json_object_set_new(o, "Address", json_string(inst->address)) &&
        !json_object_set_new(o, "Weight", json_integer(inst->weight)) &&
        !json_object_set_new(o, "Group", json_string(inst->group ? inst->group : "")) &&
        (!inst->n_meta || !json_object_set_new(o, "Metadata", meta_json(inst))))
        s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

json_t *instance_to_api(const struct instance *inst)
{
    json_t *m = meta_json(inst);

    if (!m)
        return NULL;
    /* The effective weight, so that every client reads the same number. */
    return json_pack("{s:s, s:s, s:I, s:s, s:o}", "name", inst->name, "address", inst->address,
                     "weight", (json_int_t)instance_weight(inst), "group",
                     inst->group ? inst->group : "", "metadata", m);
}

/* The rules of validate.h, which a configured instance obeys too. */
static int check_api(const struct instance *i, char *err, size_t errlen)
{
    char why[128], a[VALIDATE_EXCERPT + 4];
    size_t total = 0;

    if (!validate_name(i->name, why, sizeof why)) {
        snprintf(err, errlen, "bad service name '%s': %s", validate_excerpt(i->name, a, sizeof a),
                 why);
        return DA_EINVAL;
    }
    if (!validate_address(i->address, why, sizeof why)) {
        snprintf(err, errlen, "bad address '%s': %s", validate_excerpt(i->address, a, sizeof a),
                 why);
        return DA_EINVAL;
    }
    if (!validate_group(i->group, why, sizeof why)) {
        snprintf(err, errlen, "bad group '%s': %s", validate_excerpt(i->group, a, sizeof a), why);
        return DA_EINVAL;
    }
    for (size_t k = 0; k < i->n_meta; k++) {
        const struct instance_meta *m = &i->meta[k];

        if (!validate_meta_key(m->key, why, sizeof why) ||
            !validate_meta_value(m->value, strlen(m->value), why, sizeof why)) {
            snprintf(err, errlen, "bad metadata '%s': %s", validate_excerpt(m->key, a, sizeof a),
                     why);
            return DA_EINVAL;
        }
        total += strlen(m->key) + strlen(m->value);
    }
    if (!validate_meta_size(total, why, sizeof why)) {
        snprintf(err, errlen, "%s", why);
        return DA_EINVAL;
    }
    return 0;
}

int instance_from_api(const json_t *o, struct instance *out, char *err, size_t errlen)
{
    int rc;

    if (!json_is_object(o)) {
        snprintf(err, errlen, "instance must be an object");
        return DA_EINVAL;
    }
    rc = read_fields(o, "name", "address", "weight", "group", "metadata", out, err, errlen);
    if (rc == DA_ENOMEM)
        return rc;
    if (rc)
        return DA_EINVAL;
    /* Like a configured instance: no weight means 1, written as 1, so
     * that Go readers see the same value either way. */
    if (!json_object_get(o, "weight"))
        out->weight = 1;
    rc = check_api(out, err, errlen);
    if (rc)
        instance_clear(out);
    return rc;
}

int instance_copy(struct instance *dst, const struct instance *src)
{
    memset(dst, 0, sizeof *dst);
    dst->weight = src->weight;
    dst->name = strdup(src->name);
    dst->address = strdup(src->address);
    dst->group = strdup(src->group ? src->group : "");
    if (!dst->name || !dst->address || !dst->group)
        goto nomem;
    if (src->n_meta) {
        dst->meta = calloc(src->n_meta, sizeof *dst->meta);
        if (!dst->meta)
            goto nomem;
        for (size_t k = 0; k < src->n_meta; k++) {
            dst->meta[k].key = strdup(src->meta[k].key);
            dst->meta[k].value = strdup(src->meta[k].value);
            dst->n_meta = k + 1;
            if (!dst->meta[k].key || !dst->meta[k].value)
                goto nomem;
        }
    }
    return 0;
nomem:
    instance_clear(dst);
    return DA_ENOMEM;
}

bool instance_equal(const struct instance *a, const struct instance *b)
{
    if (strcmp(a->name, b->name) || strcmp(a->address, b->address) || a->weight != b->weight ||
        strcmp(a->group, b->group) || a->n_meta != b->n_meta)
        return false;
    for (size_t k = 0; k < a->n_meta; k++)
        if (strcmp(a->meta[k].key, b->meta[k].key) || strcmp(a->meta[k].value, b->meta[k].value))
            return false;
    return true;
}
