/*
 * links.c: the registry's repository links in the store. See links.h.
 */
#include "cache/links.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "registry/registry.h"

#define REL_REPOSITORIES "docker/registry/v2/repositories"
#define REL_MAX 1024
/* A repository name has at most REGISTRY_NAME_MAX bytes, so at most 128 components. */
#define WALK_DEPTH_MAX 130

static bool hex_ok(const char *hex)
{
    return hex != NULL && store_hex_valid(hex);
}

static bool repo_ok(const char *repo)
{
    return repo != NULL && registry_name_valid(repo, strlen(repo));
}

/* "docker/registry/v2/repositories/<repo>/<sub>" into buf; false when it does not fit. */
static bool repo_path(char *buf, size_t len, const char *repo, const char *sub)
{
    int n = snprintf(buf, len, "%s/%s/%s", REL_REPOSITORIES, repo, sub);
    return n > 0 && (size_t)n < len;
}

static const char *kind_dir(enum links_kind kind)
{
    return kind == LINKS_LAYER ? "_layers/sha256" : "_manifests/revisions/sha256";
}

/* The content of a link to hex: "sha256:<hex>". */
static int link_text(const char *hex, char *buf, size_t len)
{
    return snprintf(buf, len, "sha256:%s", hex);
}

/* True when file "link" of dirfd is a regular file that names exactly `want`. */
static bool link_says(int dirfd, const char *want)
{
    struct stat sb;
    char buf[128];
    int fd = store_file_open_at(dirfd, "link", &sb);
    if (fd < 0) return false;
    ssize_t n = sb.st_size < (off_t)sizeof(buf) ? read(fd, buf, sizeof(buf)) : -1;
    close(fd);
    return n == (ssize_t)strlen(want) && memcmp(buf, want, (size_t)n) == 0;
}

int links_write_sync(const struct store *st, enum links_kind kind, const char *repo,
                     const char *hex)
{
    char rel[REL_MAX], sub[128], text[80];
    if (!repo_ok(repo) || !hex_ok(hex)) return -EINVAL;
    snprintf(sub, sizeof(sub), "%s/%s", kind_dir(kind), hex);
    if (!repo_path(rel, sizeof(rel), repo, sub)) return -ENAMETOOLONG;
    int dir = store_dir_open_sync(st, rel, true);
    if (dir < 0) return dir;
    int len = link_text(hex, text, sizeof(text));
    int rc =
        link_says(dir, text) ? 0 : store_file_replace_at(dir, "link", text, (size_t)len, false);
    close(dir);
    return rc;
}

int links_exists_sync(const struct store *st, enum links_kind kind, const char *repo,
                      const char *hex)
{
    char rel[REL_MAX], sub[128], text[80];
    if (!repo_ok(repo) || !hex_ok(hex)) return -EINVAL;
    snprintf(sub, sizeof(sub), "%s/%s", kind_dir(kind), hex);
    if (!repo_path(rel, sizeof(rel), repo, sub)) return -ENAMETOOLONG;
    int dir = store_dir_open_sync(st, rel, false);
    if (dir < 0) return dir;
    link_text(hex, text, sizeof(text));
    int rc = link_says(dir, text) ? 0 : -ENOENT;
    close(dir);
    return rc;
}

int links_tag_write_sync(const struct store *st, const char *repo, const char *tag, const char *hex)
{
    char rel[REL_MAX], sub[400], text[80];
    if (!repo_ok(repo) || tag == NULL || !registry_tag_valid(tag, strlen(tag)) || !hex_ok(hex))
        return -EINVAL;
    int len = link_text(hex, text, sizeof(text));
    snprintf(sub, sizeof(sub), "_manifests/tags/%s/index/sha256/%s", tag, hex);
    if (!repo_path(rel, sizeof(rel), repo, sub)) return -ENAMETOOLONG;
    int dir = store_dir_open_sync(st, rel, true);
    if (dir < 0) return dir;
    int rc =
        link_says(dir, text) ? 0 : store_file_replace_at(dir, "link", text, (size_t)len, false);
    close(dir);
    if (rc != 0) return rc;
    snprintf(sub, sizeof(sub), "_manifests/tags/%s/current", tag);
    if (!repo_path(rel, sizeof(rel), repo, sub)) return -ENAMETOOLONG;
    if ((dir = store_dir_open_sync(st, rel, true)) < 0) return dir;
    /* Replaced even when it says the same: its time is the time of the answer. */
    rc = store_file_replace_at(dir, "link", text, (size_t)len, false);
    close(dir);
    return rc;
}

int links_tag_read_sync(const struct store *st, const char *repo, const char *tag, char *hex,
                        double *recorded_at)
{
    char rel[REL_MAX], sub[400], buf[128];
    struct stat sb;
    if (!repo_ok(repo) || tag == NULL || !registry_tag_valid(tag, strlen(tag))) return -EINVAL;
    snprintf(sub, sizeof(sub), "_manifests/tags/%s/current", tag);
    if (!repo_path(rel, sizeof(rel), repo, sub)) return -ENAMETOOLONG;
    int dir = store_dir_open_sync(st, rel, false);
    if (dir < 0) return dir;
    int fd = store_file_open_at(dir, "link", &sb);
    close(dir);
    if (fd < 0) return fd;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n != 7 + 64 || memcmp(buf, "sha256:", 7) != 0) return -EINVAL;
    buf[n] = '\0';
    if (!store_hex_valid(buf + 7)) return -EINVAL;
    memcpy(hex, buf + 7, 65);
    *recorded_at = store_stat_mtime(&sb);
    return 0;
}

/* ---- the index ------------------------------------------------------------------------- */

struct link_entry {
    unsigned char digest[32];
    uint32_t repo;
};

struct links_index {
    struct link_entry *entries;
    size_t n, cap;
    char **repos;
    size_t n_repos, cap_repos;
    bool full;
};

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c - 'a' + 10;
}

static void hex_to_bin(const char *hex, unsigned char *out)
{
    for (int i = 0; i < 32; i++)
        out[i] = (unsigned char)(hexval(hex[2 * i]) << 4 | hexval(hex[2 * i + 1]));
}

static bool add_entry(struct links_index *idx, const char *hex, uint32_t repo)
{
    if (idx->n >= LINKS_INDEX_MAX) {
        idx->full = true;
        return true;
    }
    if (idx->n == idx->cap) {
        size_t cap = idx->cap ? idx->cap * 2 : 256;
        struct link_entry *e = realloc(idx->entries, cap * sizeof(*e));
        if (e == NULL) return false;
        idx->entries = e;
        idx->cap = cap;
    }
    hex_to_bin(hex, idx->entries[idx->n].digest);
    idx->entries[idx->n++].repo = repo;
    return true;
}

/* Adds every <hex> of directory `sub` (below a repository's fd) that holds a link. */
static bool add_links(struct links_index *idx, int repo_fd, const char *sub, uint32_t repo)
{
    int fd = openat(repo_fd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return true;
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
        return true;
    }
    bool ok = true;
    struct dirent *e;
    while (ok && (e = readdir(d)) != NULL) {
        char rel[80];
        struct stat sb;
        if (!store_hex_valid(e->d_name)) continue;
        snprintf(rel, sizeof(rel), "%s/link", e->d_name);
        if (fstatat(dirfd(d), rel, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode)) continue;
        ok = add_entry(idx, e->d_name, repo);
    }
    closedir(d);
    return ok;
}

/* The repository `name` (its directory is fd): its id, its name kept. */
static bool add_repo(struct links_index *idx, const char *name, uint32_t *id)
{
    if (idx->n_repos == idx->cap_repos) {
        size_t cap = idx->cap_repos ? idx->cap_repos * 2 : 64;
        char **r = realloc(idx->repos, cap * sizeof(*r));
        if (r == NULL) return false;
        idx->repos = r;
        idx->cap_repos = cap;
    }
    if ((idx->repos[idx->n_repos] = strdup(name)) == NULL) return false;
    *id = (uint32_t)idx->n_repos++;
    return true;
}

/* Walks directory fd, which is repository `name` ("" at the top) or a namespace above
 * some: its _layers and _manifests, then the directories below it. fd is closed. */
static bool walk(struct links_index *idx, int fd, char *name, size_t name_len, int depth)
{
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
        return true;
    }
    bool ok = true, is_repo = false;
    uint32_t id = 0;
    struct dirent *e;
    while (ok && !idx->full && (e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        if (strcmp(n, "_layers") == 0 || strcmp(n, "_manifests") == 0) {
            if (name_len == 0) continue; /* not a repository: repositories/ itself */
            if (!is_repo) {
                ok = add_repo(idx, name, &id);
                is_repo = ok;
            }
            if (ok)
                ok = add_links(idx, dirfd(d),
                               n[1] == 'l' ? "_layers/sha256" : "_manifests/revisions/sha256", id);
            continue;
        }
        /* A name component starts with [a-z0-9]: '.', '_' and the rest are not ours. */
        if (!((n[0] >= 'a' && n[0] <= 'z') || (n[0] >= '0' && n[0] <= '9'))) continue;
        size_t len = strlen(n);
        if (depth >= WALK_DEPTH_MAX || name_len + 1 + len > REGISTRY_NAME_MAX) continue;
        int sub = openat(dirfd(d), n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) continue;
        size_t at = name_len;
        if (at > 0) name[at++] = '/';
        memcpy(name + at, n, len + 1);
        ok = walk(idx, sub, name, at + len, depth + 1);
        name[name_len] = '\0';
    }
    closedir(d);
    return ok;
}

/* Entries by digest, then by the name of their repository. */
static int by_name(const void *a, const void *b, void *idx)
{
    const struct links_index *x = idx;
    const struct link_entry *p = a, *q = b;
    int c = memcmp(p->digest, q->digest, 32);
    return c != 0 ? c : strcmp(x->repos[p->repo], x->repos[q->repo]);
}

int links_index_build_sync(const struct store *st, struct links_index **out)
{
    struct links_index *idx = calloc(1, sizeof(*idx));
    *out = NULL;
    if (idx == NULL) return -ENOMEM;
    int fd = store_dir_open_sync(st, REL_REPOSITORIES, false);
    char name[REGISTRY_NAME_MAX + 2] = "";
    if (fd >= 0 && !walk(idx, fd, name, 0, 0)) {
        links_index_free(idx);
        return -ENOMEM;
    }
    if (idx->n > 1) qsort_r(idx->entries, idx->n, sizeof(*idx->entries), by_name, idx);
    *out = idx;
    return 0;
}

size_t links_index_find(const struct links_index *idx, const char *hex, const char **names,
                        size_t max)
{
    unsigned char want[32];
    if (idx == NULL || !store_hex_valid(hex)) return 0;
    hex_to_bin(hex, want);
    size_t lo = 0, hi = idx->n;
    while (lo < hi) { /* the first entry not below want */
        size_t mid = lo + (hi - lo) / 2;
        if (memcmp(idx->entries[mid].digest, want, 32) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t k = 0;
    for (size_t i = lo; i < idx->n && k < max && memcmp(idx->entries[i].digest, want, 32) == 0;
         i++) {
        const char *repo = idx->repos[idx->entries[i].repo];
        if (k == 0 || strcmp(names[k - 1], repo) != 0) names[k++] = repo; /* layer + revision */
    }
    return k;
}

size_t links_index_size(const struct links_index *idx)
{
    return idx ? idx->n : 0;
}

void links_index_free(struct links_index *idx)
{
    if (idx == NULL) return;
    for (size_t i = 0; i < idx->n_repos; i++)
        free(idx->repos[i]);
    free(idx->repos);
    free(idx->entries);
    free(idx);
}
