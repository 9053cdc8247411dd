/* The YAML tree: libyaml's event API turned into a small tree of nodes
 * that remember their line and column (config_internal.h says why). */
#include "config_internal.h"

#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "error.h"

/* Our schema is four levels deep; anything much deeper is a mistake or an
 * attack, and a cap keeps the node stack a fixed array. */
#define MAX_DEPTH 32

void config__tree_free(struct tree *t)
{
    struct node *n = t->all;

    while (n) {
        struct node *next = n->next_alloc;
        free(n->text);
        free(n->items);
        free(n);
        n = next;
    }
    t->all = NULL;
    t->root = NULL;
}

static int add_item(struct node *parent, struct node *child)
{
    if (parent->n_items == parent->cap_items) {
        size_t nc = parent->cap_items == 0 ? 8 : parent->cap_items * 2;
        struct node **ni = realloc(parent->items, nc * sizeof(*ni));

        if (!ni)
            return DA_ENOMEM;
        parent->items = ni;
        parent->cap_items = nc;
    }
    parent->items[parent->n_items++] = child;
    return 0;
}

static int syntax_error(struct loader *ld, const yaml_parser_t *p, const char *buf, size_t len)
{
    const char *problem = p->problem ? p->problem : "unknown problem";

    if (p->error == YAML_MEMORY_ERROR)
        return config__fail_oom(ld);
    if (p->error == YAML_READER_ERROR) {
        /* The reader reports a byte offset, not a mark; count lines and
         * characters up to it ourselves. */
        int line = 1, column = 1;

        for (size_t i = 0; i < p->problem_offset && i < len; i++) {
            if (buf[i] == '\n') {
                line++;
                column = 1;
            } else if (((unsigned char)buf[i] & 0xC0) != 0x80) {
                column++;
            }
        }
        if (p->problem_value != -1)
            return config__fail_at(ld, ld->file, line, column, DA_EINVAL,
                                   "%s (#x%X): the file must be UTF-8 text without "
                                   "control characters",
                                   problem, (unsigned)p->problem_value);
        return config__fail_at(ld, ld->file, line, column, DA_EINVAL,
                               "%s: the file must be UTF-8 text", problem);
    }
    if (p->context)
        return config__fail_at(ld, ld->file, (int)p->problem_mark.line + 1,
                               (int)p->problem_mark.column + 1, DA_EINVAL,
                               "YAML syntax error: %s (%s at %d:%d)", problem, p->context,
                               (int)p->context_mark.line + 1, (int)p->context_mark.column + 1);
    return config__fail_at(ld, ld->file, (int)p->problem_mark.line + 1,
                           (int)p->problem_mark.column + 1, DA_EINVAL, "YAML syntax error: %s",
                           problem);
}

/* Handles one event: a new node joins its parent (or becomes the root) and
 * collections are pushed and popped. */
static int tree_event(struct loader *ld, struct tree *t, const yaml_event_t *ev,
                      struct node **stack, int *depth, int *docs)
{
    struct shown a;
    const yaml_char_t *anchor = NULL, *tag = NULL;
    struct node *n;
    int line = (int)ev->start_mark.line + 1;
    int column = (int)ev->start_mark.column + 1;

    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (++*docs > 1)
            return config__fail_at(ld, ld->file, line, column, DA_EINVAL,
                                   "a second YAML document starts here: a "
                                   "configuration file holds one; move it to a "
                                   "file of its own");
        return 0;
    case YAML_ALIAS_EVENT:
        return config__fail_at(ld, ld->file, line, column, DA_EINVAL,
                               "aliases ('*%s') are not supported: write the value "
                               "out in full",
                               config__show(&a, (const char *)ev->data.alias.anchor));
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        --*depth;
        return 0;
    case YAML_SCALAR_EVENT:
        anchor = ev->data.scalar.anchor;
        tag = ev->data.scalar.tag;
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor = ev->data.sequence_start.anchor;
        tag = ev->data.sequence_start.tag;
        break;
    case YAML_MAPPING_START_EVENT:
        anchor = ev->data.mapping_start.anchor;
        tag = ev->data.mapping_start.tag;
        break;
    default:
        return 0;
    }

    if (anchor)
        return config__fail_at(ld, ld->file, line, column, DA_EINVAL,
                               "anchors ('&%s') and aliases are not supported: "
                               "write each value out in full",
                               config__show(&a, (const char *)anchor));
    if (tag)
        return config__fail_at(ld, ld->file, line, column, DA_EINVAL,
                               "tags ('%s') are not supported: remove the tag, and "
                               "quote the value if it must be text",
                               config__show(&a, (const char *)tag));
    if (ev->type == YAML_SCALAR_EVENT &&
        memchr(ev->data.scalar.value, '\0', ev->data.scalar.length))
        return config__fail_at(ld, ld->file, line, column, DA_EINVAL,
                               "a value holds a NUL character (\\0): remove it");
    if (ev->type != YAML_SCALAR_EVENT && *depth >= MAX_DEPTH)
        return config__fail_at(ld, ld->file, line, column, DA_EINVAL,
                               "values are nested more than %d levels deep: the "
                               "configuration needs at most four",
                               MAX_DEPTH);

    n = calloc(1, sizeof(*n));
    if (!n)
        return config__fail_oom(ld);
    n->next_alloc = t->all;
    t->all = n;
    n->line = line;
    n->column = column;
    if (ev->type == YAML_SCALAR_EVENT) {
        n->kind = NODE_SCALAR;
        n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        n->text = strndup((const char *)ev->data.scalar.value, ev->data.scalar.length);
        if (!n->text)
            return config__fail_oom(ld);
    } else {
        n->kind = ev->type == YAML_MAPPING_START_EVENT ? NODE_MAP : NODE_SEQ;
    }
    if (*depth == 0)
        t->root = n;
    else if (add_item(stack[*depth - 1], n) < 0)
        return config__fail_oom(ld);
    if (n->kind != NODE_SCALAR)
        stack[(*depth)++] = n;
    return 0;
}

int config__build_tree(struct loader *ld, const char *buf, size_t len, struct tree *t)
{
    struct node *stack[MAX_DEPTH];
    yaml_parser_t p;
    int depth = 0, docs = 0, r = 0;
    bool done = false;

    if (!yaml_parser_initialize(&p))
        return config__fail_oom(ld);
    yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
    while (!done && r == 0) {
        yaml_event_t ev;

        if (!yaml_parser_parse(&p, &ev)) {
            r = syntax_error(ld, &p, buf, len);
            break;
        }
        done = ev.type == YAML_STREAM_END_EVENT;
        r = tree_event(ld, t, &ev, stack, &depth, &docs);
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    return r;
}
