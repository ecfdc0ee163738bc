/*
 * check.h: the smallest test harness that does what we need.
 *
 * A test file defines functions `static void test_x(void)` and lists them in
 * main() with RUN(test_x). CHECK* macros record a failure with file and line and
 * go on; main returns check_summary(), which prints "N passed, N failed" and
 * returns non-zero when anything failed.
 */
#ifndef CC_CHECK_H
#define CC_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int check_failures;
static int check_tests_passed;
static int check_tests_failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

#define CHECK_INT(a, b)                                                                            \
    do {                                                                                           \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                            \
        if (check_a_ != check_b_) {                                                                \
            fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__, __LINE__, #a,    \
                    check_a_, #b, check_b_);                                                       \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *check_a_ = (a), *check_b_ = (b);                                               \
        if (check_a_ == NULL || check_b_ == NULL || strcmp(check_a_, check_b_) != 0) {             \
            fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a,      \
                    check_a_ ? check_a_ : "(null)", check_b_ ? check_b_ : "(null)");               \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

/* CHECK_CONTAINS(haystack, needle): haystack is a string that must contain needle. */
#define CHECK_CONTAINS(a, b)                                                                       \
    do {                                                                                           \
        const char *check_a_ = (a), *check_b_ = (b);                                               \
        if (check_a_ == NULL || strstr(check_a_, check_b_) == NULL) {                              \
            fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__,         \
                    check_a_ ? check_a_ : "(null)", check_b_);                                     \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

#define RUN(fn)                                                                                    \
    do {                                                                                           \
        int check_before_ = check_failures;                                                        \
        fn();                                                                                      \
        if (check_failures == check_before_) {                                                     \
            check_tests_passed++;                                                                  \
        } else {                                                                                   \
            check_tests_failed++;                                                                  \
            fprintf(stderr, "FAILED: %s\n", #fn);                                                  \
        }                                                                                          \
    } while (0)

static inline int check_summary(void)
{
    printf("%d passed, %d failed\n", check_tests_passed, check_tests_failed);
    return check_tests_failed ? 1 : 0;
}

#endif
