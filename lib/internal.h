/* libdiscovery's names shared between its files (prefix disc__). Not
 * installed. */
#ifndef DISCOVERY_INTERNAL_H
#define DISCOVERY_INTERNAL_H

#include <jansson.h>
#include <stddef.h>

#include "discovery/discovery.h"

/* Shared between the library's files, never exported from the .so. */
#define DISC__HIDDEN __attribute__((visibility("hidden")))

/* A list as handed out: the public part first, so that a struct disc_list
 * pointer is also a struct disc__list pointer. The strings point into
 * root, which the list holds a reference to. */
struct disc__list {
    struct disc_list pub;
    json_t *root;
    struct disc_instance *inst;
    const char **meta; /* every instance's keys, then its values */
};

/* Reads {"service","revision","stale","instances":[...]} out of o (a reply
 * or an update line; other members are ignored). Takes a new reference to
 * o. Returns 0 with *out a new list, DISC_EPROTO with a reason in why, or
 * DISC_ENOMEM. */
DISC__HIDDEN int disc__list_from_json(json_t *o, struct disc__list **out, char *why, size_t whylen);

/* A service name as the agent takes it: validate_name() of validate.h, the
 * agent's own rule, compiled into the library. */
DISC__HIDDEN bool disc__valid_name(const char *s);

#endif
