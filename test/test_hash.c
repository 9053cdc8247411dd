/* Unit tests for agent/hash.h: the one string hash. Its values name the
 * files of cache.dir (cache_disk.c), so they are pinned here: a change
 * would orphan every list an operator's agent has saved. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>

#include "cache_disk.h"
#include "hash.h"

START_TEST(test_values_are_pinned)
{
    ck_assert_uint_eq(hash_fnv1a(""), HASH_FNV1A_BASIS);
    ck_assert_uint_eq(hash_fnv1a("a"), 0x44bd8ad473cd9906ull);
    ck_assert_uint_eq(hash_fnv1a("user-server"), 0xbd725be869e0472cull);
}
END_TEST

START_TEST(test_step_builds_the_string_hash)
{
    const char *s = "user-server";
    uint64_t h = HASH_FNV1A_BASIS;

    for (const char *p = s; *p; p++)
        h = hash_fnv1a_step(h, (unsigned char)*p);
    ck_assert_uint_eq(h, hash_fnv1a(s));
    /* Bytes above 0x7f count as unsigned, whatever the sign of char. */
    ck_assert_uint_eq(hash_fnv1a("\xff"), hash_fnv1a_step(HASH_FNV1A_BASIS, 0xff));
}
END_TEST

START_TEST(test_cache_files_are_named_by_it)
{
    ck_assert_uint_eq(cache_disk_hash("user-server"), hash_fnv1a("user-server"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("hash");
    TCase *tc = tcase_create("fnv1a");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_values_are_pinned);
    tcase_add_test(tc, test_step_builds_the_string_hash);
    tcase_add_test(tc, test_cache_files_are_named_by_it);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
