/*
 * test_metrics.c: the Prometheus lines of base/metrics.h, and their sums over loops.
 */
#include <string.h>

#include "base/metrics.h"
#include "check.h"

/* Two loops' figures: shared series add up, a series one loop has joins its family,
 * a family only the other has comes at the end, HELP/TYPE lines are not repeated. */
static void test_sum_into(void)
{
    char buf[1024];
    struct textbuf total;
    textbuf_init(&total, buf, sizeof(buf));
    textbuf_puts(&total, "# HELP a_total As.\n# TYPE a_total counter\n"
                         "a_total{x=\"1\"} 5\n"
                         "b_seconds_sum 0.25\n"
                         "c 7\n");
    const char *more = "# HELP a_total As.\n# TYPE a_total counter\n"
                       "a_total{x=\"1\"} 2\n"
                       "a_total{x=\"2\"} 3\n"
                       "b_seconds_sum 0.5\n"
                       "# HELP d Ds.\n# TYPE d gauge\n"
                       "d 1\n";
    metrics_sum_into(&total, more, strlen(more));
    CHECK_STR(buf, "# HELP a_total As.\n# TYPE a_total counter\n"
                   "a_total{x=\"1\"} 7\n"
                   "a_total{x=\"2\"} 3\n"
                   "b_seconds_sum 0.75\n"
                   "c 7\n"
                   "# HELP d Ds.\n# TYPE d gauge\n"
                   "d 1\n");
    CHECK(!total.cut);
}

/* Big counters stay exact integers; nothing to add leaves the text as it was. */
static void test_sum_exact(void)
{
    char buf[256];
    struct textbuf total;
    textbuf_init(&total, buf, sizeof(buf));
    textbuf_puts(&total, "bytes_total 4000000000000\nother 1.5\n");
    metrics_sum_into(&total, "bytes_total 5000000000001\n", 26);
    CHECK_STR(buf, "bytes_total 9000000000001\nother 1.5\n");
    metrics_sum_into(&total, "", 0);
    CHECK_STR(buf, "bytes_total 9000000000001\nother 1.5\n");
}

/* A total that does not fit is cut, never written past its buffer. */
static void test_sum_cut(void)
{
    char buf[32];
    struct textbuf total;
    textbuf_init(&total, buf, sizeof(buf));
    textbuf_puts(&total, "a 1\n");
    const char *more = "b_with_a_long_name 1\nc_with_a_long_name 2\n";
    metrics_sum_into(&total, more, strlen(more));
    CHECK(total.cut);
    CHECK(total.len < sizeof(buf));
    CHECK(strncmp(buf, "a 1\nb_with_a_long_name 1\n", 25) == 0);
}

int main(void)
{
    RUN(test_sum_into);
    RUN(test_sum_exact);
    RUN(test_sum_cut);
    return check_summary();
}
