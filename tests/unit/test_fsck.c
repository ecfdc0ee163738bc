/*
 * Unit tests of fsck.c: a store in a temporary directory with good blobs, a corrupted one
 * (a byte flipped), a truncated one, stray entries and a leftover temporary file. A check
 * reports them all and changes nothing, access times included; a repair removes exactly
 * the bad blobs and the temporary file; a check after it finds only the strays. The files
 * of a fetch in progress (a fresh fetch lock) are not leftovers.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "base/digest.h"
#include "cache/fsck.h"
#include "cache/store.h"

#define N_GOOD 3
#define OLD_ATIME 1000000000 /* 2001: a pull long ago */

struct blob {
    char hex[65];
    char path[4096];
    size_t size;
};

struct fixture {
    char root[64];
    struct blob good[N_GOOD];
    struct blob corrupted, truncated;
    char tmp_file[4096];
    char stray_prefix[4096];    /* blobs/sha256/zz */
    char stray_in_prefix[4096]; /* blobs/sha256/<good prefix>/not-a-blob */
};

/* What the report callback was told. */
struct reports {
    int n;
    char lines[32][512];
};

static void collect(void *ud, const char *what, const char *problem)
{
    struct reports *r = ud;
    if (r->n < 32) snprintf(r->lines[r->n++], sizeof(r->lines[0]), "%s: %s", what, problem);
}

/* The report line about `what`, or NULL. */
static const char *report_for(const struct reports *r, const char *what)
{
    for (int i = 0; i < r->n; i++)
        if (strncmp(r->lines[i], what, strlen(what)) == 0) return r->lines[i];
    return NULL;
}

static void rm_rf(const char *path)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    CHECK(system(cmd) == 0);
}

static bool exists(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0;
}

static double atime_of(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0) return -1;
    return store_stat_atime(&sb);
}

/* Stores `len` bytes of a pattern (different per seed) as a blob. */
static void put_blob(struct store *st, unsigned seed, size_t len, struct blob *b)
{
    unsigned char *data = malloc(len);
    for (size_t i = 0; i < len; i++)
        data[i] = (unsigned char)(i * (seed * 2 + 1) + seed);
    struct digest_sha256 ctx;
    unsigned char bin[32];
    digest_sha256_init(&ctx);
    digest_sha256_update(&ctx, data, len);
    digest_sha256_final(&ctx, bin);
    digest_hex(bin, b->hex);
    char tmp[4096];
    int fd = store_tmp_create_sync(st, b->hex, tmp, sizeof(tmp));
    CHECK(fd >= 0);
    CHECK(write(fd, data, len) == (ssize_t)len);
    CHECK_INT(store_commit_sync(st, fd, tmp, b->hex), 0);
    close(fd);
    CHECK_INT(store_blob_path(st, b->hex, b->path, sizeof(b->path)), 0);
    b->size = len;
    free(data);
    /* A last pull long ago: fsck must not move it. */
    struct timespec times[2] = {{.tv_sec = OLD_ATIME}, {.tv_nsec = UTIME_OMIT}};
    CHECK_INT(utimensat(AT_FDCWD, b->path, times, 0), 0);
}

static void make_fixture(struct fixture *f)
{
    memset(f, 0, sizeof(*f));
    strcpy(f->root, "/tmp/cc-fsck-XXXXXX");
    CHECK(mkdtemp(f->root) != NULL);
    struct store *st = NULL;
    char err[256];
    CHECK_INT(store_open(f->root, &st, NULL, err, sizeof(err)), 0);
    for (unsigned i = 0; i < N_GOOD; i++)
        put_blob(st, i + 1, 1000 + 4096 * i, &f->good[i]);
    put_blob(st, 10, 5000, &f->corrupted);
    put_blob(st, 11, 3000, &f->truncated);

    int fd = open(f->corrupted.path, O_RDWR);
    CHECK(fd >= 0);
    unsigned char c;
    CHECK(pread(fd, &c, 1, 1234) == 1);
    c ^= 0x01;
    CHECK(pwrite(fd, &c, 1, 1234) == 1);
    close(fd);
    CHECK_INT(truncate(f->truncated.path, 1500), 0);
    struct timespec times[2] = {{.tv_sec = OLD_ATIME}, {.tv_nsec = UTIME_OMIT}};
    CHECK_INT(utimensat(AT_FDCWD, f->corrupted.path, times, 0), 0);
    CHECK_INT(utimensat(AT_FDCWD, f->truncated.path, times, 0), 0);

    /* A fetch that never finished. */
    fd = store_tmp_create_sync(st, f->good[0].hex, f->tmp_file, sizeof(f->tmp_file));
    CHECK(fd >= 0);
    CHECK(write(fd, "partial", 7) == 7);
    close(fd);

    snprintf(f->stray_prefix, sizeof(f->stray_prefix), "%s/docker/registry/v2/blobs/sha256/zz",
             f->root);
    CHECK_INT(mkdir(f->stray_prefix, 0755), 0);
    snprintf(f->stray_in_prefix, sizeof(f->stray_in_prefix),
             "%s/docker/registry/v2/blobs/sha256/%.2s/not-a-blob", f->root, f->good[1].hex);
    CHECK_INT(mkdir(f->stray_in_prefix, 0755), 0);
    store_close(st);
}

/* --- A listing of the tree: every entry, its type, size and times ----------------- */

static char *listing;
static size_t listing_len, listing_cap;

static int list_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    char line[4200];
    /* Directories' access times move when they are read: only files' are compared. */
    int n =
        snprintf(line, sizeof(line), "%s %o %lld %lld.%09ld %lld.%09ld\n", path,
                 (unsigned)sb->st_mode, (long long)sb->st_size, (long long)sb->st_mtim.tv_sec,
                 sb->st_mtim.tv_nsec, S_ISDIR(sb->st_mode) ? 0LL : (long long)sb->st_atim.tv_sec,
                 S_ISDIR(sb->st_mode) ? 0L : sb->st_atim.tv_nsec);
    if (listing_len + (size_t)n + 1 > listing_cap) {
        listing_cap = (listing_cap + (size_t)n + 1) * 2;
        listing = realloc(listing, listing_cap);
    }
    memcpy(listing + listing_len, line, (size_t)n + 1);
    listing_len += (size_t)n;
    return 0;
}

static int cmp_lines(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The sorted listing of root, as one string (the caller frees it). */
static char *tree_of(const char *root)
{
    listing = NULL;
    listing_len = listing_cap = 0;
    CHECK_INT(nftw(root, list_entry, 16, FTW_PHYS), 0);
    char *lines[256];
    size_t n = 0;
    for (char *p = strtok(listing, "\n"); p != NULL && n < 256; p = strtok(NULL, "\n"))
        lines[n++] = p;
    qsort(lines, n, sizeof(lines[0]), cmp_lines);
    size_t total = 1;
    for (size_t i = 0; i < n; i++)
        total += strlen(lines[i]) + 1;
    char *out = malloc(total);
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        strcat(out, lines[i]);
        strcat(out, "\n");
    }
    free(listing);
    return out;
}

/* --- Tests ------------------------------------------------------------------------ */

static void test_check_reports_and_changes_nothing(void)
{
    struct fixture f;
    make_fixture(&f);
    char *before = tree_of(f.root);
    struct fsck_report r;
    struct reports rep = {0};
    CHECK_INT(fsck_run(f.root, false, &r, collect, &rep), 0);

    CHECK_INT(r.checked, N_GOOD + 2);
    CHECK_INT(r.ok, N_GOOD);
    CHECK_INT(r.bad, 2);
    CHECK_INT(r.stray, 2);
    CHECK_INT(r.temp, 1);
    CHECK_INT(r.removed, 0);
    uint64_t bytes = 1500 + f.corrupted.size;
    for (int i = 0; i < N_GOOD; i++)
        bytes += f.good[i].size;
    CHECK_INT(r.bytes, bytes);
    CHECK_INT(rep.n, 5);
    CHECK_CONTAINS(report_for(&rep, f.corrupted.hex), "digest mismatch");
    CHECK_CONTAINS(report_for(&rep, f.truncated.hex), "digest mismatch: the content (1500 bytes)");
    CHECK_CONTAINS(report_for(&rep, "docker/registry/v2/blobs/sha256/zz"), "stray entry");
    CHECK(report_for(&rep, "docker/registry/v2/_content-cache/tmp/") != NULL);
    for (int i = 0; i < N_GOOD; i++)
        CHECK(report_for(&rep, f.good[i].hex) == NULL);

    char *after = tree_of(f.root);
    CHECK_STR(after, before); /* nothing removed, written, or read with an access time */
    for (int i = 0; i < N_GOOD; i++)
        CHECK(atime_of(f.good[i].path) == OLD_ATIME);
    free(before);
    free(after);
    rm_rf(f.root);
}

static void test_repair_removes_exactly_the_bad(void)
{
    struct fixture f;
    make_fixture(&f);
    struct fsck_report r;
    struct reports rep = {0};
    CHECK_INT(fsck_run(f.root, true, &r, collect, &rep), 0);
    CHECK_INT(r.checked, N_GOOD + 2);
    CHECK_INT(r.ok, N_GOOD);
    CHECK_INT(r.bad, 2);
    CHECK_INT(r.temp, 1);
    CHECK_INT(r.removed, 3);
    CHECK_CONTAINS(report_for(&rep, f.corrupted.hex), "; removed");
    CHECK_CONTAINS(report_for(&rep, f.truncated.hex), "; removed");
    CHECK_CONTAINS(report_for(&rep, "docker/registry/v2/_content-cache/tmp/"), "; removed");
    CHECK_CONTAINS(report_for(&rep, "docker/registry/v2/blobs/sha256/zz"), "left in place");

    CHECK(!exists(f.corrupted.path));
    CHECK(!exists(f.truncated.path));
    CHECK(!exists(f.tmp_file));
    for (int i = 0; i < N_GOOD; i++) {
        CHECK(exists(f.good[i].path));
        CHECK(atime_of(f.good[i].path) == OLD_ATIME);
    }
    CHECK(exists(f.stray_prefix));
    CHECK(exists(f.stray_in_prefix));

    /* Again: only the strays are left to report. */
    memset(&rep, 0, sizeof(rep));
    CHECK_INT(fsck_run(f.root, false, &r, collect, &rep), 0);
    CHECK_INT(r.checked, N_GOOD);
    CHECK_INT(r.ok, N_GOOD);
    CHECK_INT(r.bad, 0);
    CHECK_INT(r.temp, 0);
    CHECK_INT(r.stray, 2);
    CHECK_INT(rep.n, 2);
    rm_rf(f.root);
}

/* A data file that is a directory or a symbolic link, and a blob directory without one. */
static void test_not_regular_files(void)
{
    struct fixture f;
    make_fixture(&f);
    /* Replace the corrupted blob's data by a directory, the truncated one's by a link to a
     * good blob, and empty the first good blob's directory. */
    CHECK_INT(unlink(f.corrupted.path), 0);
    CHECK_INT(mkdir(f.corrupted.path, 0755), 0);
    CHECK_INT(unlink(f.truncated.path), 0);
    CHECK_INT(symlink(f.good[1].path, f.truncated.path), 0);
    CHECK_INT(unlink(f.good[0].path), 0);

    struct fsck_report r;
    struct reports rep = {0};
    CHECK_INT(fsck_run(f.root, false, &r, collect, &rep), 0);
    CHECK_INT(r.checked, N_GOOD + 2);
    CHECK_INT(r.ok, N_GOOD - 1);
    CHECK_INT(r.bad, 3);
    CHECK_CONTAINS(report_for(&rep, f.corrupted.hex), "the data file is a directory");
    CHECK_CONTAINS(report_for(&rep, f.truncated.hex), "the data file is a symbolic link");
    CHECK_CONTAINS(report_for(&rep, f.good[0].hex), "blob directory without a data file");

    memset(&rep, 0, sizeof(rep));
    CHECK_INT(fsck_run(f.root, true, &r, collect, &rep), 0);
    CHECK_INT(r.removed, 3); /* the link, the empty directory, the temporary file */
    CHECK_CONTAINS(report_for(&rep, f.corrupted.hex), "not removed");
    CHECK(exists(f.corrupted.path)); /* a directory named data is the operator's to look at */
    CHECK(!exists(f.truncated.path));
    CHECK(exists(f.good[1].path)); /* the link's target is untouched */
    char dir[4096];
    snprintf(dir, sizeof(dir), "%.*s", (int)(strlen(f.good[0].path) - 5), f.good[0].path);
    CHECK(!exists(dir));
    rm_rf(f.root);
}

/*
 * A fetch in progress (its temporary file claimed by a fresh lock, as a replica sharing the
 * root holds it) is not a leftover, and repair leaves it; a lock whose owner stopped
 * beating is a leftover, and so is the temporary file it names.
 */
static void test_fetch_in_progress_is_not_a_leftover(void)
{
    struct fixture f;
    make_fixture(&f);
    struct store *st = NULL;
    char err[256];
    CHECK_INT(store_open(f.root, &st, NULL, err, sizeof(err)), 0); /* removes f.tmp_file */
    const char *live_hex = f.good[2].hex, *dead_hex = f.corrupted.hex;
    char live_tmp[4096], dead_tmp[4096], dead_lock[4096];
    int fd = store_tmp_create_sync(st, live_hex, live_tmp, sizeof(live_tmp));
    CHECK(fd >= 0);
    close(fd);
    fd = store_tmp_create_sync(st, dead_hex, dead_tmp, sizeof(dead_tmp));
    CHECK(fd >= 0);
    close(fd);
    struct store_lock_info held;
    CHECK_INT(store_lock_acquire_sync(st, live_hex, live_tmp, 10, &held), 0);
    CHECK_INT(store_lock_acquire_sync(st, dead_hex, dead_tmp, 10, &held), 0);
    snprintf(dead_lock, sizeof(dead_lock), "%s/docker/registry/v2/_content-cache/fetching/%s",
             f.root, dead_hex);
    struct timespec old[2] = {{.tv_sec = OLD_ATIME}, {.tv_sec = OLD_ATIME}};
    CHECK_INT(utimensat(AT_FDCWD, dead_lock, old, 0), 0); /* its owner stopped beating */

    struct fsck_report r;
    struct reports rep = {0};
    CHECK_INT(fsck_run(f.root, false, &r, collect, &rep), 0);
    CHECK_INT(r.temp, 2); /* the dead fetch's lock and file */
    CHECK(report_for(&rep, "docker/registry/v2/_content-cache/fetching/") != NULL);
    CHECK_CONTAINS(report_for(&rep, "docker/registry/v2/_content-cache/fetching/"),
                   "stale fetch lock");
    CHECK(report_for(&rep, live_tmp + strlen(f.root) + 1) == NULL);
    CHECK(report_for(&rep, dead_tmp + strlen(f.root) + 1) != NULL);

    memset(&rep, 0, sizeof(rep));
    CHECK_INT(store_lock_touch_sync(st, live_hex), 0);
    CHECK_INT(fsck_run(f.root, true, &r, collect, &rep), 0);
    CHECK_INT(r.temp, 2);
    CHECK_INT(r.removed, 2 + 2); /* the dead fetch's lock and file, the two bad blobs */
    CHECK(exists(live_tmp));
    CHECK(!exists(dead_tmp));
    CHECK(!exists(dead_lock));
    CHECK_INT(store_lock_release_sync(st, live_hex), 0);
    store_close(st);
    rm_rf(f.root);
}

static void test_no_store(void)
{
    char root[64];
    strcpy(root, "/tmp/cc-fsck-XXXXXX");
    CHECK(mkdtemp(root) != NULL);
    struct fsck_report r;
    CHECK_INT(fsck_run(root, false, &r, NULL, NULL), -ENOENT);
    CHECK_INT(fsck_run(root, true, &r, NULL, NULL), -ENOENT);
    char path[128];
    snprintf(path, sizeof(path), "%s/docker", root);
    CHECK(!exists(path)); /* nothing created */
    rm_rf(root);
}

static void test_empty_store(void)
{
    char root[64];
    strcpy(root, "/tmp/cc-fsck-XXXXXX");
    CHECK(mkdtemp(root) != NULL);
    struct store *st = NULL;
    char err[256];
    CHECK_INT(store_open(root, &st, NULL, err, sizeof(err)), 0);
    store_close(st);
    struct fsck_report r;
    memset(&r, 0xff, sizeof(r));
    CHECK_INT(fsck_run(root, true, &r, NULL, NULL), 0);
    CHECK_INT(r.checked + r.ok + r.bad + r.stray + r.temp + r.removed + r.bytes, 0);
    rm_rf(root);
}

int main(void)
{
    RUN(test_check_reports_and_changes_nothing);
    RUN(test_repair_removes_exactly_the_bad);
    RUN(test_not_regular_files);
    RUN(test_fetch_in_progress_is_not_a_leftover);
    RUN(test_no_store);
    RUN(test_empty_store);
    return check_summary();
}
