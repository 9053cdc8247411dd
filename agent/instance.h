/* A service instance, as the Go design stores it in etcd:
 *   <prefix>/<Name>/<Address> = {"Name":..,"Address":..,"Weight":N,"Group":..}
 * plus our optional "Metadata" object of strings. This file is the one
 * place that reads and writes that value, and the socket protocol's
 * lower-case rendering of it. */
#ifndef DA_INSTANCE_H
#define DA_INSTANCE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct instance_meta {
    char *key;
    char *value;
};

struct instance {
    char *name;
    char *address;
    int32_t weight;             /* as stored; see instance_weight() */
    char *group;                /* "" when none */
    struct instance_meta *meta; /* sorted by key */
    size_t n_meta;
};

/* Parses an etcd value. Returns 0, DA_EPROTO when it is not an object with
 * a string "Name" and "Address" (and, when present, an integer "Weight" in
 * int32 range, a string "Group", an object of strings "Metadata"), or
 * DA_ENOMEM. Unknown members are ignored, as Go's encoding/json does. */
int instance_from_value(const char *value, size_t len, struct instance *out);

/* The etcd value for inst (new string, free with free()), or NULL. */
char *instance_to_value(const struct instance *inst);

/* {"name","address","weight","group","metadata"} for the socket protocol
 * (new reference). */
json_t *instance_to_api(const struct instance *inst);

/* Parses the socket protocol's form (as instance_to_api writes it, with
 * "name" and "address" required) and checks it by the rules of validate.h,
 * the same as a configured instance's. Returns 0 or DA_EINVAL with a
 * reason in err. */
int instance_from_api(const json_t *o, struct instance *out, char *err, size_t errlen);

/* A weight of 0 or less, or none, counts as 1. */
static inline int32_t instance_weight(const struct instance *i)
{
    return i->weight > 0 ? i->weight : 1;
}

int instance_copy(struct instance *dst, const struct instance *src);
bool instance_equal(const struct instance *a, const struct instance *b);
void instance_clear(struct instance *i);

#endif
