/*
 * links.h: which repository holds which blob, manifest and tag, kept as Docker Registry
 * keeps it, so that the store is a registry root a stock `docker-registry serve` can
 * serve from (read the layout in Docker Distribution's registry/storage/paths.go):
 *
 *   <root>/docker/registry/v2/repositories/<name>/
 *       _layers/sha256/<hex>/link                  a blob (layer or config) is in <name>
 *       _manifests/revisions/sha256/<hex>/link     a manifest is in <name>
 *       _manifests/tags/<tag>/current/link         what <tag> pointed at when last asked
 *       _manifests/tags/<tag>/index/sha256/<hex>/link   every digest <tag> pointed at
 *
 * A link file holds the digest ("sha256:<hex>", no newline), the bytes themselves are
 * the blob's (store.h). The cache writes a link only when the origin has confirmed it: a
 * 2xx to a HEAD or GET of that blob or manifest under that name, or a tag's answer. A
 * link is written whole (store_file_replace_at) and never through a symbolic link; the
 * time a tag was last answered is the modification time of its current/link.
 *
 * What the policies see comes from here: a blob table's `repositories` (policy.h) is
 * every <name> with a _layers or a revisions link of that digest, from a links_index
 * built by one walk of repositories/ (expiry builds one per sweep, the disk budget one
 * per eviction run).
 *
 * Every function is blocking (*_sync): the thread pool or a command, never the loop.
 * Names and tags are checked against the registry grammar (registry.h) first: anything
 * else is -EINVAL, so no name can walk out of repositories/. Errors are -errno.
 */
#ifndef CC_LINKS_H
#define CC_LINKS_H

#include <stdbool.h>
#include <stddef.h>

#include "cache/store.h"

enum links_kind {
    LINKS_LAYER,    /* _layers/sha256/<hex>/link */
    LINKS_REVISION, /* _manifests/revisions/sha256/<hex>/link */
};

/* Writes the link of digest `hex` in repository `repo`, unless it is there already.
 * 0, -EINVAL (a name or digest the grammar refuses) or -errno. */
int links_write_sync(const struct store *st, enum links_kind kind, const char *repo,
                     const char *hex);

/* 0 when the link of `hex` in `repo` is there (a regular file), else -ENOENT or -errno. */
int links_exists_sync(const struct store *st, enum links_kind kind, const char *repo,
                      const char *hex);

/* Records that `tag` of `repo` points at manifest `hex` now: current/link is replaced (its
 * modification time is the time of this answer) and index/sha256/<hex>/link is added. */
int links_tag_write_sync(const struct store *st, const char *repo, const char *tag,
                         const char *hex);

/* What `tag` of `repo` pointed at when it was last recorded: its hex (65 bytes with the
 * NUL) and when, in seconds since the epoch. 0, -ENOENT, -EINVAL or -errno. */
int links_tag_read_sync(const struct store *st, const char *repo, const char *tag, char *hex,
                        double *recorded_at);

/* ---- every repository of every digest -------------------------------------------------- */

struct links_index;

/* At most this many links are indexed; a root with more gives each digest the names
 * found before the limit (the walk goes on no further). */
#define LINKS_INDEX_MAX (1u << 22)

/*
 * Walks repositories/ once and keeps, for every digest with a _layers or a revisions
 * link, the repositories that have it. 0 and the index in *out (an empty one when there is
 * no repositories/ yet), or -ENOMEM.
 */
int links_index_build_sync(const struct store *st, struct links_index **out);

/* The repositories of digest `hex`, in byte order, at most max of them: the names stay
 * valid until links_index_free. Returns how many were written to names. */
size_t links_index_find(const struct links_index *idx, const char *hex, const char **names,
                        size_t max);

/* How many links the index holds. */
size_t links_index_size(const struct links_index *idx);

/* NULL is a no-op. */
void links_index_free(struct links_index *idx);

#endif
