/*
 * test_image_manifest.c: the descriptors an image manifest or an index names.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "registry/image_manifest.h"

#define H1 "1111111111111111111111111111111111111111111111111111111111111111"
#define H2 "2222222222222222222222222222222222222222222222222222222222222222"
#define H3 "3333333333333333333333333333333333333333333333333333333333333333"

struct seen {
    char line[8][160];
    size_t n;
    size_t stop_after; /* 0: never */
};

static int note(void *ud, const struct image_ref *r)
{
    struct seen *s = ud;
    static const char *const kinds[] = {"config", "layer", "manifest"};
    if (s->n < 8)
        snprintf(s->line[s->n++], sizeof(s->line[0]), "%s %zu %.4s %llu %s", kinds[r->kind],
                 r->index, r->hex, (unsigned long long)r->size, r->platform);
    return s->stop_after != 0 && s->n == s->stop_after;
}

static int walk(const char *json, struct seen *s, size_t *skipped)
{
    memset(s->line, 0, sizeof(s->line));
    s->n = 0;
    return image_manifest_walk(json, strlen(json), note, s, skipped);
}

static void test_image(void)
{
    struct seen s = {0};
    size_t skipped = 9;
    const char *m = "{\"schemaVersion\":2,\"config\":{\"digest\":\"sha256:" H1 "\",\"size\":7},"
                    "\"layers\":[{\"digest\":\"sha256:" H2 "\",\"size\":100},"
                    "{\"digest\":\"sha256:" H3 "\"}]}";
    CHECK_INT(walk(m, &s, &skipped), IMAGE_MANIFEST_IMAGE);
    CHECK_INT(skipped, 0);
    CHECK_INT(s.n, 3);
    CHECK_STR(s.line[0], "config 0 1111 7 ");
    CHECK_STR(s.line[1], "layer 0 2222 100 ");
    CHECK_STR(s.line[2], "layer 1 3333 0 ");
}

static void test_index(void)
{
    struct seen s = {0};
    size_t skipped = 0;
    const char *m =
        "{\"manifests\":[{\"digest\":\"sha256:" H1 "\",\"size\":5,"
        "\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"}},"
        "{\"digest\":\"sha256:" H2 "\",\"platform\":{\"os\":\"linux\",\"architecture\":\"arm\","
        "\"variant\":\"v7\"}},{\"digest\":\"sha256:" H3 "\"}]}";
    CHECK_INT(walk(m, &s, &skipped), IMAGE_MANIFEST_INDEX);
    CHECK_INT(s.n, 3);
    CHECK_STR(s.line[0], "manifest 0 1111 5 linux/amd64");
    CHECK_STR(s.line[1], "manifest 1 2222 0 linux/arm/v7");
    CHECK_STR(s.line[2], "manifest 2 3333 0 ");
}

static void test_skipped_and_refused(void)
{
    struct seen s = {0};
    size_t skipped = 0;
    /* sha512, upper-case hex, no digest, not an object: skipped, not given. */
    const char *m = "{\"layers\":[{\"digest\":\"sha512:" H1 H1 "\"},"
                    "{\"digest\":\"sha256:ABCD" H1 "\"},{\"size\":3},\"x\","
                    "{\"digest\":\"sha256:" H2 "\"}]}";
    CHECK_INT(walk(m, &s, &skipped), IMAGE_MANIFEST_IMAGE);
    CHECK_INT(skipped, 4);
    CHECK_INT(s.n, 1);
    CHECK_STR(s.line[0], "layer 4 2222 0 ");
    CHECK_INT(walk("[1,2]", &s, NULL), -EINVAL);
    CHECK_INT(walk("{\"layers\":", &s, NULL), -EINVAL);
    CHECK_INT(walk("{\"schemaVersion\":1,\"fsLayers\":[]}", &s, NULL), IMAGE_MANIFEST_OTHER);
    CHECK_INT(s.n, 0);
}

static void test_stop(void)
{
    struct seen s = {.stop_after = 1};
    const char *m = "{\"layers\":[{\"digest\":\"sha256:" H1 "\"},{\"digest\":\"sha256:" H2 "\"}]}";
    CHECK_INT(walk(m, &s, NULL), IMAGE_MANIFEST_IMAGE);
    CHECK_INT(s.n, 1);
}

int main(void)
{
    RUN(test_image);
    RUN(test_index);
    RUN(test_skipped_and_refused);
    RUN(test_stop);
    return check_summary();
}
