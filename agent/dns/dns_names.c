/* Names to what they stand for, and instance addresses to DNS targets.
 *
 * The mapping rule (docs/dns.md, "Names"): a service is asked for by its
 * name as one DNS label. DNS compares names without case, so a query is
 * read in lower case and finds the service whose name is written so; a
 * name that is not one label of a-z, 0-9, '-' and '_' (upper case, a dot,
 * other bytes, over 63 bytes) cannot be asked for, and such a query is
 * NXDOMAIN with the reason counted in status. Groups are compared without
 * case, since the Go design's groups ("A") are upper case. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "dns_internal.h"
#include "dns_rules.h"
#include "error.h"
#include "validate.h"

int dns_domain_parse(const char *domain, knot_dname_storage_t out, size_t *size, char *err,
                     size_t errlen)
{
    if (!domain || !*domain || !strcmp(domain, ".") ||
        !knot_dname_from_str(out, domain, KNOT_DNAME_MAXLEN)) {
        snprintf(err, errlen, "'%s' is not a domain name", domain ? domain : "");
        return DA_EINVAL;
    }
    knot_dname_to_lower(out);
    *size = knot_dname_size(out);
    /* Room for "_NAME._tcp.service." (and GROUP.NAME.service.) in front. */
    if (*size > KNOT_DNAME_MAXLEN - 2 * (DNS_LABEL_MAX + 1) - 9) {
        snprintf(err, errlen, "domain '%s' is too long: service names would not fit under it",
                 domain);
        return DA_EINVAL;
    }
    return 0;
}

bool dns_domain_valid(const char *domain, char *err, size_t errlen)
{
    knot_dname_storage_t d;
    size_t size;

    return dns_domain_parse(domain, d, &size, err, errlen) == 0;
}

bool dns_label_is_service(const uint8_t *label, size_t len)
{
    if (len < 1 || len > DNS_LABEL_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = label[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return false;
    }
    return true;
}

static void copy_label(char *dst, const uint8_t *label)
{
    memcpy(dst, label + 1, label[0]);
    dst[label[0]] = '\0';
}

static bool label_is(const uint8_t *label, const char *s)
{
    size_t n = strlen(s);
    return label[0] == n && !memcmp(label + 1, s, n);
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* HEX.addr: 8 hex digits for IPv4, 32 for IPv6 (Consul's form). */
static bool parse_addr(const uint8_t *label, struct dns_name *out)
{
    size_t n = label[0];

    if (n != 8 && n != 32)
        return false;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(label[1 + 2 * i]), lo = hexval(label[2 + 2 * i]);
        if (hi < 0 || lo < 0)
            return false;
        out->ip[i] = (uint8_t)(hi << 4 | lo);
    }
    out->family = n == 8 ? AF_INET : AF_INET6;
    return true;
}

static void none(struct dns_name *out, const char *reason)
{
    out->kind = DNS_NAME_NONE;
    out->reason = reason;
}

void dns_name_parse(const struct dns_zone *z, const knot_dname_t *qname, struct dns_name *out)
{
    const uint8_t *label[4];
    int depth = knot_dname_in_bailiwick(qname, z->domain);

    memset(out, 0, sizeof *out);
    if (depth < 0) {
        out->kind = DNS_NAME_OUTSIDE;
        return;
    }
    if (depth == 0) {
        out->kind = DNS_NAME_APEX;
        return;
    }
    if (depth > 4) {
        none(out, "too many labels");
        return;
    }
    label[0] = qname;
    for (int i = 1; i < depth; i++)
        label[i] = knot_wire_next_label(label[i - 1], NULL);
    const uint8_t *top = label[depth - 1];

    if (label_is(top, "addr")) {
        if (depth == 1)
            out->kind = DNS_NAME_EMPTY;
        else if (depth == 2 && parse_addr(label[0], out))
            out->kind = DNS_NAME_ADDR;
        else
            none(out, "not an address name (8 or 32 hex digits).addr");
        return;
    }
    if (!label_is(top, "service")) {
        none(out, "neither service nor addr under the domain");
        return;
    }
    switch (depth) {
    case 1:
        out->kind = DNS_NAME_EMPTY;
        return;
    case 2:
        if (!dns_label_is_service(label[0] + 1, label[0][0])) {
            none(out, "not a service name as DNS spells it (a-z, 0-9, '-', '_')");
            return;
        }
        copy_label(out->service, label[0]);
        out->kind = DNS_NAME_SERVICE;
        return;
    case 3:
        if (label_is(label[1], "_tcp") && label[0][0] > 1 && label[0][1] == '_') {
            /* _NAME._tcp: the service is NAME, without its underscore. */
            if (!dns_label_is_service(label[0] + 2, label[0][0] - 1u)) {
                none(out, "not a service name as DNS spells it (a-z, 0-9, '-', '_')");
                return;
            }
            memcpy(out->service, label[0] + 2, label[0][0] - 1u);
            out->service[label[0][0] - 1] = '\0';
            out->kind = DNS_NAME_SRV;
            return;
        }
        if (!dns_label_is_service(label[1] + 1, label[1][0])) {
            none(out, "not a service name as DNS spells it (a-z, 0-9, '-', '_')");
            return;
        }
        if (memchr(label[0] + 1, '\0', label[0][0])) {
            none(out, "a group with a NUL byte");
            return;
        }
        copy_label(out->group, label[0]);
        copy_label(out->service, label[1]);
        out->has_group = true;
        out->kind = DNS_NAME_SERVICE;
        return;
    default:
        none(out, "too many labels under service");
        return;
    }
}

size_t dns_name_addr(const struct dns_zone *z, const uint8_t *ip, size_t iplen,
                     knot_dname_storage_t out)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;

    if ((iplen != 4 && iplen != 16) || 1 + 2 * iplen + 6 + z->domain_size > KNOT_DNAME_MAXLEN)
        return 0;
    out[n++] = (uint8_t)(2 * iplen);
    for (size_t i = 0; i < iplen; i++) {
        out[n++] = (uint8_t)hex[ip[i] >> 4];
        out[n++] = (uint8_t)hex[ip[i] & 15];
    }
    out[n++] = 4;
    memcpy(out + n, "addr", 4);
    n += 4;
    memcpy(out + n, z->domain, z->domain_size);
    return n + z->domain_size;
}

bool dns_target_parse(const char *address, struct dns_target *out)
{
    struct validate_hostport hp;

    memset(out, 0, sizeof *out);
    if (validate_hostport(address, strlen(address), 0, &hp, NULL, 0) != VALIDATE_OK)
        return false;
    out->port = hp.port;
    if (hp.ipv6) {
        if (inet_pton(AF_INET6, hp.host, out->ip) != 1)
            return false;
        out->iplen = 16;
    } else if (inet_pton(AF_INET, hp.host, out->ip) == 1) {
        out->iplen = 4;
    } else {
        snprintf(out->host, sizeof out->host, "%s", hp.host);
    }
    return true;
}
