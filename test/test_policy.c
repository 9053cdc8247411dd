/* Unit tests for agent/policy.c: ranking, the thinning rule, the guard,
 * per-instance weights. Pure functions: no loop, no etcd. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "defaults.h"
#include "policy.h"

static struct instance mk(const char *addr, const char *zone, const char *region, int weight)
{
    struct instance i = {0};
    struct instance_meta *m = calloc(2, sizeof *m);
    size_t k = 0;

    /* Sorted by key, as instance.c keeps metadata: region < zone. */
    if (region)
        m[k++] = (struct instance_meta){(char *)"region", (char *)region};
    if (zone)
        m[k++] = (struct instance_meta){(char *)"zone", (char *)zone};
    i.name = (char *)"echo";
    i.address = (char *)addr;
    i.group = (char *)"";
    i.weight = weight;
    i.meta = m;
    i.n_meta = k;
    return i;
}

static struct policy_config cfg(const char *zone, const char *region)
{
    struct policy_config p;

    policy_config_defaults(&p);
    p.zone = (char *)zone;
    p.region = (char *)region;
    return p;
}

START_TEST(ranks_by_zone_then_region)
{
    struct policy_config p = cfg("a", "r1");
    struct instance same = mk("10.0.0.1:1", "a", "r1", 1), region = mk("10.0.0.2:1", "b", "r1", 1),
                    far = mk("10.0.0.3:1", "c", "r2", 1), none = mk("10.0.0.4:1", NULL, NULL, 1),
                    zone_only = mk("10.0.0.5:1", "a", NULL, 1),
                    other_a = mk("10.0.0.6:1", "a", "r2", 1);

    ck_assert_int_eq(policy_rank(&p, &same), 0);
    ck_assert_int_eq(policy_rank(&p, &zone_only), 0);
    ck_assert_int_eq(policy_rank(&p, &region), 1);
    ck_assert_int_eq(policy_rank(&p, &far), 2);
    ck_assert_int_eq(policy_rank(&p, &none), 2);    /* the Go design's: unknown, last */
    ck_assert_int_eq(policy_rank(&p, &other_a), 2); /* zone "a" of another region */
    /* An agent without a zone ranks everything alike. */
    struct policy_config nz = cfg(NULL, NULL);
    ck_assert_int_eq(policy_rank(&nz, &far), 0);
    ck_assert_int_eq(policy_rank(NULL, &far), 0);
    free(same.meta);
    free(region.meta);
    free(far.meta);
    free(none.meta);
    free(zone_only.meta);
    free(other_a.meta);
}
END_TEST

static void loads(uint32_t c0, uint32_t r0, uint32_t c1, uint32_t r1, uint32_t c2, uint32_t r2,
                  double *l)
{
    uint32_t count[3] = {c0, c1, c2}, recent[3] = {r0, r1, r2};
    policy_loads(1.4, count, recent, l);
}

START_TEST(thinning_follows_envoy)
{
    double l[3];
    int prio[3];
    uint32_t count[3];

    /* Healthy zone: all of it. */
    loads(3, 3, 3, 3, 3, 3, l);
    ck_assert(l[0] == 1 && l[1] == 0 && l[2] == 0);
    /* 2 of 3: 1.4 x 2/3 = 0.933. */
    loads(2, 3, 3, 3, 3, 3, l);
    ck_assert(fabs(l[0] - 0.9333) < 1e-3 && fabs(l[1] - 0.0667) < 1e-3 && l[2] == 0);
    /* 1 of 3: 0.467, the rest to the region. */
    loads(1, 3, 3, 3, 3, 3, l);
    ck_assert(fabs(l[0] - 0.4667) < 1e-3 && fabs(l[1] - 0.5333) < 1e-3);
    /* None left: the region takes it all. */
    loads(0, 3, 3, 3, 3, 3, l);
    ck_assert(l[0] == 0 && l[1] == 1 && l[2] == 0);
    /* 5 of 7 = 1.4 x 5/7 = 1: still all of it (the factor's margin). */
    loads(5, 7, 3, 3, 0, 0, l);
    ck_assert(l[0] == 1);
    /* Zone and region thin, the rest full. */
    loads(1, 3, 1, 3, 3, 3, l);
    ck_assert(fabs(l[0] - 0.4667) < 1e-3 && fabs(l[1] - 0.4667) < 1e-3 &&
              fabs(l[2] - 0.0667) < 1e-3);
    /* Everything thin: normalized to the whole. */
    loads(1, 3, 0, 0, 0, 0, l);
    ck_assert(l[0] == 1);
    loads(1, 4, 1, 4, 0, 0, l); /* 0.35 + 0.35 -> 0.5 + 0.5 */
    ck_assert(fabs(l[0] - 0.5) < 1e-9 && fabs(l[1] - 0.5) < 1e-9);
    loads(0, 0, 0, 0, 0, 0, l);
    ck_assert(l[0] == 0 && l[1] == 0 && l[2] == 0);

    /* Priorities: loaded ranks at 0, then the others in order. */
    count[0] = 3, count[1] = 3, count[2] = 3;
    loads(3, 3, 3, 3, 3, 3, l);
    policy_priorities(count, l, prio);
    ck_assert(prio[0] == 0 && prio[1] == 1 && prio[2] == 2);
    loads(1, 3, 3, 3, 3, 3, l);
    policy_priorities(count, l, prio);
    ck_assert(prio[0] == 0 && prio[1] == 0 && prio[2] == 1);
    count[0] = 0;
    loads(0, 3, 3, 3, 3, 3, l);
    policy_priorities(count, l, prio);
    ck_assert(prio[0] == -1 && prio[1] == 0 && prio[2] == 1);
}
END_TEST

START_TEST(plan_remembers_recent_size)
{
    struct policy_config p = cfg("a", "r1");
    struct policy_state st = {0};
    struct policy_plan plan = {0};
    struct instance in[6] = {mk("10.0.0.1:1", "a", "r1", 1), mk("10.0.0.2:1", "a", "r1", 1),
                             mk("10.0.0.3:1", "a", "r1", 1), mk("10.0.1.1:1", "b", "r1", 1),
                             mk("10.0.1.2:1", "b", "r1", 1), mk("10.0.2.1:1", "c", "r2", 1)};
    const struct instance *v[6];
    uint32_t w[6];

    for (int i = 0; i < 6; i++)
        v[i] = &in[i];
    p.size_window_ms = 1000;
    ck_assert_int_eq(policy_plan_build(&p, &st, v, 6, 0, &plan), 0);
    ck_assert(plan.zoned && plan.count[0] == 3 && plan.recent[0] == 3 && plan.load[0] == 1);
    policy_weights(&plan, v, NULL, w);
    ck_assert(w[0] == 1 && w[1] == 1 && w[2] == 1 && w[3] == 0 && w[5] == 0);
    ck_assert(!policy_plan_decaying(&plan));

    /* Two of zone a leave: 1.4/3 stays, the region takes the rest. */
    ck_assert_int_eq(policy_plan_build(&p, &st, v + 2, 4, 100, &plan), 0);
    ck_assert(plan.count[0] == 1 && plan.recent[0] == 3);
    ck_assert(fabs(plan.load[0] - 0.4667) < 1e-3 && fabs(plan.load[1] - 0.5333) < 1e-3);
    ck_assert(plan.prio[0] == 0 && plan.prio[1] == 0 && plan.prio[2] == 1);
    ck_assert(policy_plan_decaying(&plan));
    policy_weights(&plan, v + 2, NULL, w);
    ck_assert_uint_eq(w[0], 467); /* 10.0.0.3: all of rank 0 */
    ck_assert_uint_eq(w[1], 267); /* half of 0.533 each */
    ck_assert_uint_eq(w[2], 267);
    ck_assert_uint_eq(w[3], 0); /* zone c: standby */

    /* Only the region's group: the subset gives the region everything. */
    bool sel[4] = {false, true, true, false};
    double l[3];
    int prio[3];
    policy_plan_subset(&plan, sel, l, prio);
    ck_assert(l[0] == 0 && l[1] == 1 && prio[1] == 0 && prio[0] == -1);

    /* Past the window, the smaller zone is the new normal. */
    ck_assert_int_eq(policy_plan_build(&p, &st, v + 2, 4, 1200, &plan), 0);
    ck_assert(plan.recent[0] == 1 && plan.load[0] == 1);

    /* Back to three: all of it again. */
    ck_assert_int_eq(policy_plan_build(&p, &st, v, 6, 1300, &plan), 0);
    ck_assert(plan.recent[0] == 3 && plan.load[0] == 1);
    policy_plan_clear(&plan);
    for (int i = 0; i < 6; i++)
        free(in[i].meta);
}
END_TEST

START_TEST(guard_holds_mass_drops)
{
    struct policy_protection p = {true, 0.5, 30000, 10000, 1};
    struct policy_guard g = {0};

    ck_assert_int_eq(policy_guard_check(&p, &g, 10, false, 0), POLICY_APPLY);
    /* A few go: applied at once. */
    ck_assert_int_eq(policy_guard_check(&p, &g, 9, false, 1000), POLICY_APPLY);
    ck_assert_int_eq(policy_guard_check(&p, &g, 7, false, 2000), POLICY_APPLY);
    /* Within the window, more than half of 10 gone: held. */
    ck_assert_int_eq(policy_guard_check(&p, &g, 4, false, 3000), POLICY_HOLD);
    ck_assert(g.held && g.holds == 1);
    ck_assert(!policy_guard_due(&p, &g, 20000));
    ck_assert(policy_guard_due(&p, &g, 33000));
    /* Past the hold but not confirmed: still held. */
    ck_assert_int_eq(policy_guard_check(&p, &g, 4, false, 34000), POLICY_HOLD);
    /* Confirmed by a fresh read: applied. */
    ck_assert_int_eq(policy_guard_check(&p, &g, 4, true, 34000), POLICY_APPLY);
    ck_assert(!g.held && g.released == 1 && g.base == 4);

    /* An empty list is a drop even from one instance... */
    struct policy_guard h = {0};
    ck_assert_int_eq(policy_guard_check(&p, &h, 1, false, 0), POLICY_APPLY);
    ck_assert_int_eq(policy_guard_check(&p, &h, 0, false, 10), POLICY_HOLD);
    /* ...and heals when the instances come back. */
    ck_assert_int_eq(policy_guard_check(&p, &h, 1, false, 20), POLICY_APPLY);
    ck_assert(!h.held);

    /* Removals spread beyond the window are separate drops. */
    struct policy_guard s = {0};
    ck_assert_int_eq(policy_guard_check(&p, &s, 4, false, 0), POLICY_APPLY);
    ck_assert_int_eq(policy_guard_check(&p, &s, 3, false, 11000), POLICY_APPLY);
    ck_assert_int_eq(policy_guard_check(&p, &s, 2, false, 22000), POLICY_APPLY);
    ck_assert_int_eq(policy_guard_check(&p, &s, 1, false, 33000), POLICY_APPLY);

    /* Disabled: everything applies. */
    struct policy_protection off = {false, 0.5, 30000, 10000, 1};

    /* Below min_instances: not guarded. */
    struct policy_protection small = {true, 0.5, 30000, 10000, 3};
    struct policy_guard m = {0};
    ck_assert_int_eq(policy_guard_check(&small, &m, 2, false, 0), POLICY_APPLY);
    ck_assert_int_eq(policy_guard_check(&small, &m, 0, false, 1), POLICY_APPLY);
    ck_assert_int_eq(policy_guard_check(&small, &m, 3, false, 2), POLICY_APPLY);
    ck_assert_int_eq(policy_guard_check(&small, &m, 0, false, 3), POLICY_HOLD);
    struct policy_guard d = {0};
    ck_assert_int_eq(policy_guard_check(&off, &d, 10, false, 0), POLICY_APPLY);
    ck_assert_int_eq(policy_guard_check(&off, &d, 0, false, 1), POLICY_APPLY);
}
END_TEST

START_TEST(settings_by_service)
{
    struct policy_config p = cfg("a", NULL);
    struct policy_service s[1] = {{.name = (char *)"pay"}};

    s[0].protection = (struct policy_protection){false, 0.2, 1000, 1000, 3};
    s[0].outlier.set = true;
    s[0].outlier.failure_percentage = true;
    policy_outlier_defaults(&s[0].outlier);
    p.services = s;
    p.n_services = 1;
    ck_assert(!policy_protection_of(&p, "pay")->enabled);
    ck_assert(policy_protection_of(&p, "echo")->enabled);
    ck_assert(policy_protection_of(NULL, "echo")->max_drop == DA_DEFAULT_PROTECTION_MAX_DROP);
    ck_assert_ptr_null(policy_outlier_of(&p, "echo"));
    const struct policy_outlier *o = policy_outlier_of(&p, "pay");
    ck_assert_ptr_nonnull(o);
    ck_assert_uint_eq(o->fp_threshold, 85);
    ck_assert_uint_eq(o->interval_ms, 10000);
    ck_assert(!o->success_rate);
    json_t *j = policy_outlier_json(o);
    ck_assert_ptr_nonnull(json_object_get(j, "failure_percentage"));
    ck_assert_ptr_null(json_object_get(j, "success_rate"));
    json_decref(j);
}
END_TEST

static Suite *policy_suite(void)
{
    Suite *s = suite_create("policy");
    TCase *tc = tcase_create("rules");

    tcase_add_test(tc, ranks_by_zone_then_region);
    tcase_add_test(tc, thinning_follows_envoy);
    tcase_add_test(tc, plan_remembers_recent_size);
    tcase_add_test(tc, guard_holds_mass_drops);
    tcase_add_test(tc, settings_by_service);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(policy_suite());
    int failed;

    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
