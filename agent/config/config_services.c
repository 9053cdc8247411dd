/* The services: entries (the instances this host serves): name, address,
 * weight, group, metadata and check, each refused by the rules of
 * validate.h and check_spec.h, the same rules the socket's register op
 * applies; and the checks made once every file is read (duplicates, exec
 * checks). */
#include "config_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "validate.h"

static int cmp_key_nodes(const void *a, const void *b)
{
    const struct node *x = *(const struct node *const *)a;
    const struct node *y = *(const struct node *const *)b;
    int r = strcmp(x->text, y->text);

    if (r != 0)
        return r;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return (x->column > y->column) - (x->column < y->column);
}

static int load_metadata(struct loader *ld, struct config_service *s, const struct node *val)
{
    struct shown a, b;
    const struct node **keys = NULL;
    const struct node *dup = NULL, *first = NULL;
    size_t n = val->n_items / 2, total = 0;
    char why[160];
    int r = config__want_map(ld, "metadata", val);

    if (r != 0 || n == 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < n; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];

        if (k->kind != NODE_SCALAR)
            return config__fail_node(ld, k,
                                     "metadata keys of service %s must be "
                                     "text, not %s",
                                     config__show(&a, s->name), config__kind_name(k));
        if (config__is_null(k) || k->text[0] == '\0')
            return config__fail_node(ld, k,
                                     "a metadata key of service %s is empty: "
                                     "give it a name",
                                     config__show(&a, s->name));
        if (v->kind != NODE_SCALAR)
            return config__fail_node(ld, v,
                                     "metadata '%s' of service %s must be a "
                                     "single value (text or a number), not %s",
                                     config__show(&a, k->text), config__show(&b, s->name),
                                     config__kind_name(v));
        if (config__is_null(v))
            return config__fail_node(ld, k,
                                     "metadata '%s' of service %s has no "
                                     "value: give one, or write \"\" for empty text",
                                     config__show(&a, k->text), config__show(&b, s->name));
        if (!validate_meta_key(k->text, why, sizeof(why)) ||
            !validate_meta_value(v->text, strlen(v->text), why, sizeof(why)))
            return config__fail_node(ld, k, "bad metadata '%s' of service %s: %s",
                                     config__show(&a, k->text), config__show(&b, s->name), why);
        total += strlen(k->text) + strlen(v->text);
    }
    if (!validate_meta_size(total, why, sizeof(why)))
        return config__fail_node(ld, val, "metadata of service %s is too large: %s",
                                 config__show(&a, s->name), why);
    /* Metadata may be long, so duplicates are found by sorting rather
     * than by comparing every pair; the one reported is the earliest
     * repeat in the file. */
    keys = malloc(n * sizeof(*keys));
    if (!keys)
        return config__fail_oom(ld);
    for (size_t i = 0; i < n; i++)
        keys[i] = val->items[2 * i];
    qsort(keys, n, sizeof(*keys), cmp_key_nodes);
    for (size_t i = 1; i < n; i++) {
        if (!strcmp(keys[i - 1]->text, keys[i]->text) &&
            (i < 2 || strcmp(keys[i - 2]->text, keys[i]->text)) &&
            (!dup || keys[i]->line < dup->line ||
             (keys[i]->line == dup->line && keys[i]->column < dup->column))) {
            dup = keys[i];
            first = keys[i - 1];
        }
    }
    free(keys);
    if (dup)
        return config__fail_node(ld, dup,
                                 "metadata key '%s' given twice for service "
                                 "%s (first at %d:%d): keep only one",
                                 config__show(&a, dup->text), config__show(&b, s->name),
                                 first->line, first->column);
    s->meta = calloc(n, sizeof(*s->meta));
    if (!s->meta)
        return config__fail_oom(ld);
    s->n_meta = n;
    for (size_t i = 0; i < n; i++) {
        s->meta[i].key = config__dup_str(ld, val->items[2 * i]->text);
        s->meta[i].value = config__dup_str(ld, val->items[2 * i + 1]->text);
        if (!s->meta[i].key || !s->meta[i].value)
            return DA_ENOMEM;
    }
    return 0;
}

static int parse_weight(const char *text, int32_t *weight)
{
    const char *p = text;
    char *end;
    long long v;

    if (*p == '+' || *p == '-')
        p++;
    if (*p < '0' || *p > '9')
        return -1;
    errno = 0;
    v = strtoll(text, &end, 10);
    if (*end != '\0')
        return -1;
    if (errno == ERANGE || !validate_weight(v, NULL, 0))
        return -2;
    *weight = (int32_t)v;
    return 0;
}

/* A service's check: mapping. This reads the YAML shapes (one value per
 * key, a list for command) and leaves every rule of the schema to
 * check_spec_build(), which the socket's JSON reader calls too. Exec being
 * allowed is checked once every file is read (checks.exec may come later
 * in the file). */
static int load_check(struct loader *ld, struct config_service *s, const struct node *map)
{
    size_t n_keys;
    const char *const *keys = check_spec_keys(&n_keys);
    const struct node *seen[CHECK_KEY_COUNT] = {NULL};
    const struct node *vals[CHECK_KEY_COUNT] = {NULL};
    const char *argv[CHECK_ARGV_MAX];
    struct check_input in = {.owner = NULL};
    struct check_error why;
    const struct node *at;
    char owner[96];
    struct shown a;
    const char *text;
    int r = config__want_map(ld, "check", map);

    if (r != 0)
        return r < 0 ? r : 0;
    s->check_line = map->line;
    s->check_column = map->column;
    for (size_t i = 0; i < map->n_items / 2; i++) {
        int k = config__section_key(ld, map, i, keys, n_keys, seen, "in a check");
        if (k < 0)
            return k;
        vals[k] = map->items[2 * i + 1];
    }
    for (size_t k = 0; k < n_keys; k++) {
        const struct node *v = vals[k];
        char what[32];

        if (!v)
            continue;
        if (k == CHECK_KEY_COMMAND) {
            if ((r = config__want_seq(ld, "check.command", v)) < 0)
                return r;
            in.has_command = true;
            in.n_command = r > 0 ? 0 : v->n_items;
            in.command = argv;
            /* A longer list is refused by check_spec_build() by its
             * length alone. */
            for (size_t i = 0; i < in.n_command && i < CHECK_ARGV_MAX; i++) {
                if ((r = config__want_text(ld, "each check.command item", v->items[i], v->items[i],
                                           &argv[i])) < 0)
                    return r;
            }
            continue;
        }
        snprintf(what, sizeof(what), "check.%s", keys[k]);
        if ((r = config__want_text(ld, what, seen[k], v, &text)) < 0)
            return r;
        in.value[k].text = text;
        in.value[k].quoted = !v->plain;
    }
    snprintf(owner, sizeof(owner), "service %s", config__show(&a, s->name));
    in.owner = owner;
    r = check_spec_build(&s->check, &in, true, &why);
    if (r == DA_ENOMEM)
        return config__fail_oom(ld);
    if (r < 0) {
        at = map;
        if (why.key == CHECK_KEY_COMMAND && why.item < vals[why.key]->n_items)
            at = vals[why.key]->items[why.item];
        else if (why.key < CHECK_KEY_COUNT)
            at = vals[why.key];
        return config__fail_node(ld, at, "%s", why.msg);
    }
    return 0;
}

/* Exec checks run commands as the agent: refused unless checks.exec. */
int config__check_exec_allowed(struct loader *ld)
{
    for (size_t i = 0; i < ld->cfg->n_services; i++) {
        const struct config_service *s = &ld->cfg->services[i];
        if (s->check.type == CHECK_EXEC && !ld->cfg->checks_exec)
            return config__fail_at(ld, s->file, s->check_line, s->check_column, DA_EINVAL,
                                   "service %s has an exec check, but exec "
                                   "checks are off: set 'checks: {exec: true}' in %s",
                                   s->name, ld->cfg->path);
    }
    return 0;
}

static const char *const service_keys[] = {"name",  "address",  "weight",
                                           "group", "metadata", "check"};
enum { SVC_NAME, SVC_ADDRESS, SVC_WEIGHT, SVC_GROUP, SVC_METADATA, SVC_CHECK };

static int load_service(struct loader *ld, const struct node *entry)
{
    const struct node *seen[ARRAY_SIZE(service_keys)] = {NULL};
    const struct node *vals[ARRAY_SIZE(service_keys)] = {NULL};
    struct config *c = ld->cfg;
    struct config_service *s;
    struct validate_hostport hp;
    struct shown a, b;
    const char *text;
    char why[160];
    int r;

    if (entry->kind != NODE_MAP)
        return config__fail_node(ld, entry,
                                 "each services entry must be a mapping "
                                 "with at least name: and address:, not %s",
                                 config__kind_name(entry));
    if (c->n_services == ld->cap_services) {
        size_t nc = ld->cap_services == 0 ? 8 : ld->cap_services * 2;
        struct config_service *ns = realloc(c->services, nc * sizeof(*ns));

        if (!ns)
            return config__fail_oom(ld);
        c->services = ns;
        ld->cap_services = nc;
    }
    /* The entry joins the config before it is filled in, so that
     * config_free() releases whatever part of it an error leaves. */
    s = &c->services[c->n_services++];
    memset(s, 0, sizeof(*s));
    s->weight = 1;
    s->line = entry->line;
    s->column = entry->column;
    if (!(s->file = config__dup_str(ld, ld->file)))
        return DA_ENOMEM;

    /* Keys are checked first and values afterwards in a fixed order, so
     * that every message about a value can name the service. */
    for (size_t i = 0; i < entry->n_items / 2; i++) {
        int k = config__section_key(ld, entry, i, service_keys, ARRAY_SIZE(service_keys), seen,
                                    "in a services entry");
        if (k < 0)
            return k;
        vals[k] = entry->items[2 * i + 1];
    }
    if (!vals[SVC_NAME])
        return config__fail_node(ld, entry,
                                 "services entry has no name: add "
                                 "'name: SERVICE'");
    r = config__want_nonempty(ld, "the service name", seen[SVC_NAME], vals[SVC_NAME], &text);
    if (r < 0)
        return r;
    if (!validate_name(text, why, sizeof(why)))
        return config__fail_node(ld, vals[SVC_NAME], "bad service name '%s': %s",
                                 config__show(&a, text), why);
    if (!(s->name = config__dup_str(ld, text)))
        return DA_ENOMEM;

    if (!vals[SVC_ADDRESS])
        return config__fail_node(ld, entry,
                                 "service %s has no address: add "
                                 "'address: HOST:PORT'",
                                 config__show(&a, s->name));
    r = config__want_nonempty(ld, "the service address", seen[SVC_ADDRESS], vals[SVC_ADDRESS],
                              &text);
    if (r < 0)
        return r;
    r = validate_hostport(text, strlen(text), 0, &hp, why, sizeof(why));
    if (r == VALIDATE_PORT_RANGE)
        return config__fail_node(ld, vals[SVC_ADDRESS],
                                 "port %s out of range in "
                                 "address of service %s: use 1..65535",
                                 config__show(&a, text + hp.port_at), config__show(&b, s->name));
    if (r != VALIDATE_OK)
        return config__fail_node(ld, vals[SVC_ADDRESS],
                                 "bad address '%s' for "
                                 "service %s: %s",
                                 config__show(&a, text), config__show(&b, s->name), why);
    if (!(s->address = config__dup_str(ld, text)))
        return DA_ENOMEM;

    if (vals[SVC_WEIGHT]) {
        const struct node *v = vals[SVC_WEIGHT];

        r = config__want_text(ld, "the service weight", seen[SVC_WEIGHT], v, &text);
        if (r < 0)
            return r;
        r = v->plain ? parse_weight(text, &s->weight) : -1;
        if (r == -2)
            return config__fail_node(ld, v,
                                     "weight %s of service %s is out of "
                                     "range: use at most 2147483647",
                                     config__show(&a, text), config__show(&b, s->name));
        if (r < 0)
            return config__fail_node(ld, v,
                                     "weight '%s' of service %s is not an "
                                     "integer: write a whole number without quotes, "
                                     "e.g. 10",
                                     config__show(&a, text), config__show(&b, s->name));
    }

    text = "";
    if (vals[SVC_GROUP]) {
        r = config__want_text(ld, "the service group", seen[SVC_GROUP], vals[SVC_GROUP], &text);
        if (r < 0)
            return r;
        if (!validate_group(text, why, sizeof(why)))
            return config__fail_node(ld, vals[SVC_GROUP],
                                     "bad group '%s' for "
                                     "service %s: %s",
                                     config__show(&a, text), config__show(&b, s->name), why);
    }
    if (!(s->group = config__dup_str(ld, text)))
        return DA_ENOMEM;

    if (vals[SVC_METADATA] && (r = load_metadata(ld, s, vals[SVC_METADATA])) < 0)
        return r;
    if (vals[SVC_CHECK])
        return load_check(ld, s, vals[SVC_CHECK]);
    return 0;
}

int config__load_services(struct loader *ld, const struct node *val)
{
    int r = config__want_seq(ld, "services", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items; i++) {
        r = load_service(ld, val->items[i]);
        if (r < 0)
            return r;
    }
    return 0;
}

static int cmp_services(const void *a, const void *b)
{
    const struct config_service *x = *(const struct config_service *const *)a;
    const struct config_service *y = *(const struct config_service *const *)b;
    int r = strcmp(x->name, y->name);

    if (r == 0)
        r = strcmp(x->address, y->address);
    if (r == 0)
        r = (x > y) - (x < y); /* file order: one array, main file first */
    return r;
}

/* Two entries with one name and address would be one etcd key, so the
 * second would silently replace the first. The one reported is the earliest
 * repeat, in the order the files were read. */
int config__check_duplicates(struct loader *ld)
{
    const struct config *c = ld->cfg;
    const struct config_service **v, *dup = NULL, *first = NULL;
    struct shown a, b;

    if (c->n_services < 2)
        return 0;
    v = malloc(c->n_services * sizeof(*v));
    if (!v)
        return config__fail_oom(ld);
    for (size_t i = 0; i < c->n_services; i++)
        v[i] = &c->services[i];
    qsort(v, c->n_services, sizeof(*v), cmp_services);
    for (size_t i = 1; i < c->n_services; i++) {
        if (!strcmp(v[i - 1]->name, v[i]->name) && !strcmp(v[i - 1]->address, v[i]->address) &&
            (i < 2 || strcmp(v[i - 2]->name, v[i]->name) ||
             strcmp(v[i - 2]->address, v[i]->address)) &&
            (!dup || v[i] < dup)) {
            dup = v[i];
            first = v[i - 1];
        }
    }
    free(v);
    if (!dup)
        return 0;
    return config__fail_at(ld, dup->file, dup->line, dup->column, DA_EINVAL,
                           "duplicate service instance %s %s (first at %s:%d:%d): "
                           "remove one of them",
                           config__show(&a, dup->name), config__show(&b, dup->address), first->file,
                           first->line, first->column);
}
