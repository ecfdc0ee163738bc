/* Unit tests of links.c: the registry's repository links (layers, revisions, tags) in
 * Docker Registry's layout, names checked against the grammar, and the index of every
 * digest's repositories that the policies' blob tables read. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache/links.h"
#include "check.h"
#include "store_fixture.h"

static const char a[] = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
static const char b[] = "486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7";

static void read_file(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, len - 1, f) : 0;
    buf[n] = '\0';
    if (f) fclose(f);
}

static void test_layout_as_a_registry(void)
{
    char root[64], path[512], text[128];
    struct store *st = fixture_store_open(root, "links");
    CHECK_INT(links_write_sync(st, LINKS_LAYER, "library/debian", a), 0);
    CHECK_INT(links_write_sync(st, LINKS_LAYER, "library/debian", a), 0); /* again: no-op */
    CHECK_INT(links_write_sync(st, LINKS_REVISION, "team/app", b), 0);
    snprintf(path, sizeof(path),
             "%s/docker/registry/v2/repositories/library/debian/_layers/sha256/%s/link", root, a);
    read_file(path, text, sizeof(text));
    CHECK_STR(text + 0, "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    snprintf(path, sizeof(path),
             "%s/docker/registry/v2/repositories/team/app/_manifests/revisions/sha256/%s/link",
             root, b);
    read_file(path, text, sizeof(text));
    CHECK(strncmp(text, "sha256:486ea", 12) == 0);
    CHECK_INT(links_exists_sync(st, LINKS_LAYER, "library/debian", a), 0);
    CHECK_INT(links_exists_sync(st, LINKS_LAYER, "library/debian", b), -ENOENT);
    CHECK_INT(links_exists_sync(st, LINKS_REVISION, "library/debian", a), -ENOENT);
    store_close(st);
    fixture_rm_rf(root);
}

static void test_tags_with_their_time(void)
{
    char root[64], hex[65], path[512], text[128];
    double when = 0, before = (double)time(NULL) - 1;
    struct store *st = fixture_store_open(root, "links");
    CHECK_INT(links_tag_read_sync(st, "team/app", "v1", hex, &when), -ENOENT);
    CHECK_INT(links_tag_write_sync(st, "team/app", "v1", a), 0);
    CHECK_INT(links_tag_read_sync(st, "team/app", "v1", hex, &when), 0);
    CHECK_STR(hex, a);
    CHECK(when >= before && when <= (double)time(NULL) + 1);
    CHECK_INT(links_tag_write_sync(st, "team/app", "v1", b), 0); /* the tag moved */
    CHECK_INT(links_tag_read_sync(st, "team/app", "v1", hex, &when), 0);
    CHECK_STR(hex, b);
    /* Every digest it pointed at stays in its index, as a registry keeps it. */
    snprintf(path, sizeof(path),
             "%s/docker/registry/v2/repositories/team/app/_manifests/tags/v1/index/sha256/%s/link",
             root, a);
    read_file(path, text, sizeof(text));
    CHECK(strncmp(text, "sha256:2cf2", 11) == 0);
    store_close(st);
    fixture_rm_rf(root);
}

static void test_names_the_grammar_refuses(void)
{
    char root[64], hex[65];
    double when;
    struct store *st = fixture_store_open(root, "links");
    static const char *const bad[] = {"../x", "a/../b", "/abs", "UPPER", "a//b", "", "a/_layers"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        CHECK_INT(links_write_sync(st, LINKS_LAYER, bad[i], a), -EINVAL);
        CHECK_INT(links_tag_write_sync(st, bad[i], "v1", a), -EINVAL);
    }
    CHECK_INT(links_write_sync(st, LINKS_LAYER, "ok/name", "not-a-digest"), -EINVAL);
    CHECK_INT(links_tag_write_sync(st, "ok/name", "../v1", a), -EINVAL);
    CHECK_INT(links_tag_read_sync(st, "ok/name", ".x", hex, &when), -EINVAL);
    store_close(st);
    fixture_rm_rf(root);
}

static void test_index_of_repositories(void)
{
    char root[64];
    const char *names[8];
    struct links_index *idx = NULL;
    struct store *st = fixture_store_open(root, "links");
    CHECK_INT(links_index_build_sync(st, &idx), 0); /* no repositories/ yet */
    CHECK_INT(links_index_size(idx), 0);
    links_index_free(idx);
    CHECK_INT(links_write_sync(st, LINKS_LAYER, "team/web", a), 0);
    CHECK_INT(links_write_sync(st, LINKS_LAYER, "library/debian", a), 0);
    CHECK_INT(links_write_sync(st, LINKS_LAYER, "library", b),
              0); /* a repository and a namespace */
    CHECK_INT(links_write_sync(st, LINKS_REVISION, "library/debian", a), 0);
    CHECK_INT(links_index_build_sync(st, &idx), 0);
    CHECK_INT(links_index_find(idx, a, names, 8), 2); /* layer and revision count once */
    CHECK_STR(names[0], "library/debian");
    CHECK_STR(names[1], "team/web");
    CHECK_INT(links_index_find(idx, a, names, 1), 1);
    CHECK_INT(links_index_find(idx, b, names, 8), 1);
    CHECK_STR(names[0], "library");
    CHECK_INT(links_index_find(idx,
                               "0000000000000000000000000000000000000000000000000000000000000000",
                               names, 8),
              0);
    links_index_free(idx);
    store_close(st);
    fixture_rm_rf(root);
}

int main(void)
{
    RUN(test_layout_as_a_registry);
    RUN(test_tags_with_their_time);
    RUN(test_names_the_grammar_refuses);
    RUN(test_index_of_repositories);
    return check_summary();
}
