/* Unit tests of blob.c's pure part: Range interpretation. */
#include "cache/blob.h"
#include "check.h"

static enum blob_range_result range(const char *v, uint64_t size, uint64_t *a, uint64_t *b)
{
    *a = *b = 12345;
    return blob_parse_range(v, strlen(v), size, a, b);
}

static void test_closed_range(void)
{
    uint64_t a, b;
    CHECK_INT(range("bytes=0-99", 1000, &a, &b), RANGE_PARTIAL);
    CHECK_INT(a, 0);
    CHECK_INT(b, 100);
    CHECK_INT(range("bytes=10-10", 1000, &a, &b), RANGE_PARTIAL);
    CHECK_INT(a, 10);
    CHECK_INT(b, 11);
    /* An end past the size is cut to the size. */
    CHECK_INT(range("bytes=900-5000", 1000, &a, &b), RANGE_PARTIAL);
    CHECK_INT(a, 900);
    CHECK_INT(b, 1000);
    CHECK_INT(range("  bytes=1-2  ", 1000, &a, &b), RANGE_PARTIAL);
    CHECK_INT(a, 1);
    CHECK_INT(b, 3);
}

static void test_open_and_suffix(void)
{
    uint64_t a, b;
    CHECK_INT(range("bytes=500-", 1000, &a, &b), RANGE_PARTIAL);
    CHECK_INT(a, 500);
    CHECK_INT(b, 1000);
    CHECK_INT(range("bytes=-100", 1000, &a, &b), RANGE_PARTIAL);
    CHECK_INT(a, 900);
    CHECK_INT(b, 1000);
    CHECK_INT(range("bytes=-5000", 1000, &a, &b), RANGE_PARTIAL);
    CHECK_INT(a, 0);
    CHECK_INT(b, 1000);
    CHECK_INT(range("bytes=999-", 1000, &a, &b), RANGE_PARTIAL);
    CHECK_INT(a, 999);
    CHECK_INT(b, 1000);
}

static void test_unsatisfiable(void)
{
    uint64_t a, b;
    CHECK_INT(range("bytes=1000-", 1000, &a, &b), RANGE_UNSATISFIABLE);
    CHECK_INT(range("bytes=1000-2000", 1000, &a, &b), RANGE_UNSATISFIABLE);
    CHECK_INT(range("bytes=-0", 1000, &a, &b), RANGE_UNSATISFIABLE);
    CHECK_INT(range("bytes=0-", 0, &a, &b), RANGE_UNSATISFIABLE);
}

static void test_ignored(void)
{
    uint64_t a, b;
    /* What is not honoured is ignored: the whole blob goes out. */
    CHECK_INT(range("bytes=0-1,5-6", 1000, &a, &b), RANGE_NONE);
    CHECK_INT(range("items=0-1", 1000, &a, &b), RANGE_NONE);
    CHECK_INT(range("bytes=5-1", 1000, &a, &b), RANGE_NONE);
    CHECK_INT(range("bytes=a-b", 1000, &a, &b), RANGE_NONE);
    CHECK_INT(range("bytes=-", 1000, &a, &b), RANGE_NONE);
    CHECK_INT(range("bytes=", 1000, &a, &b), RANGE_NONE);
    CHECK_INT(range("bytes=1", 1000, &a, &b), RANGE_NONE);
    CHECK_INT(range("bytes=+1-2", 1000, &a, &b), RANGE_NONE);
    CHECK_INT(range("bytes=99999999999999999999-", 1000, &a, &b), RANGE_NONE);
    CHECK_INT(range("", 1000, &a, &b), RANGE_NONE);
}

int main(void)
{
    RUN(test_closed_range);
    RUN(test_open_and_suffix);
    RUN(test_unsatisfiable);
    RUN(test_ignored);
    return check_summary();
}
