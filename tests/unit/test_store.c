/* Unit tests of store.c: layout, temporary files, commit, clean-up at start. */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "cache/store.h"

static const char hex[] = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

static char *make_root(void)
{
    static char tmpl[64];
    strcpy(tmpl, "/tmp/cc-store-XXXXXX");
    return mkdtemp(tmpl);
}

static void rm_rf(const char *path)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    CHECK(system(cmd) == 0);
}

static unsigned count_files(const char *dir)
{
    unsigned n = 0;
    DIR *d = opendir(dir);
    if (d == NULL) return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static void test_hex_valid(void)
{
    CHECK(store_hex_valid(hex));
    CHECK(!store_hex_valid(""));
    CHECK(!store_hex_valid("2cf24dba"));
    CHECK(!store_hex_valid("2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"));
    CHECK(!store_hex_valid("../4dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"));
    char longer[80];
    snprintf(longer, sizeof(longer), "%s0", hex);
    CHECK(!store_hex_valid(longer));
}

static void test_layout_and_commit(void)
{
    char *root = make_root();
    struct store *st = NULL;
    char err[256];
    unsigned removed = 99;
    CHECK_INT(store_open(root, &st, &removed, err, sizeof(err)), 0);
    CHECK_INT(removed, 0);
    char path[4096];
    CHECK_INT(store_blob_path(st, hex, path, sizeof(path)), 0);
    char expect[4096];
    snprintf(expect, sizeof(expect), "%s/docker/registry/v2/blobs/sha256/2c/%s/data", root, hex);
    CHECK_STR(path, expect);

    char tmp[4096];
    int fd = store_tmp_create_sync(st, hex, tmp, sizeof(tmp));
    CHECK(fd >= 0);
    CHECK_INT(write(fd, "hello", 5), 5);
    struct stat sb;
    CHECK(stat(path, &sb) != 0); /* nothing at the final path before the commit */
    CHECK_INT(store_commit_sync(st, fd, tmp, hex), 0);
    close(fd);
    CHECK_INT(stat(path, &sb), 0);
    CHECK_INT(sb.st_size, 5);
    CHECK(stat(tmp, &sb) != 0); /* the temporary name is gone */

    CHECK_INT(store_remove_sync(st, hex), 0);
    CHECK(stat(path, &sb) != 0);
    CHECK_INT(store_remove_sync(st, hex), -ENOENT);
    store_close(st);
    rm_rf(root);
}

static void test_leftovers_removed_at_open(void)
{
    char *root = make_root();
    struct store *st = NULL;
    char err[256];
    CHECK_INT(store_open(root, &st, NULL, err, sizeof(err)), 0);
    char tmp[4096];
    for (int i = 0; i < 3; i++) {
        int fd = store_tmp_create_sync(st, hex, tmp, sizeof(tmp));
        CHECK(fd >= 0);
        close(fd);
    }
    store_close(st);
    char tmpdir[4096];
    snprintf(tmpdir, sizeof(tmpdir), "%s/docker/registry/v2/_content-cache/tmp", root);
    CHECK_INT(count_files(tmpdir), 3);
    unsigned removed = 0;
    CHECK_INT(store_open(root, &st, &removed, err, sizeof(err)), 0);
    CHECK_INT(removed, 3);
    CHECK_INT(count_files(tmpdir), 0);
    store_close(st);
    rm_rf(root);
}

static void test_unusable_root(void)
{
    struct store *st = NULL;
    char err[256] = "";
    /* A regular file where a directory must be. */
    char *root = make_root();
    char file[4096];
    snprintf(file, sizeof(file), "%s/file", root);
    FILE *f = fopen(file, "w");
    CHECK(f != NULL);
    fclose(f);
    CHECK(store_open(file, &st, NULL, err, sizeof(err)) < 0);
    CHECK_CONTAINS(err, "storage root");
    rm_rf(root);
}

int main(void)
{
    RUN(test_hex_valid);
    RUN(test_layout_and_commit);
    RUN(test_leftovers_removed_at_open);
    RUN(test_unusable_root);
    return check_summary();
}
