/*
 * fsck.h: checks the blobs on disk against their digests (`content-cache fsck`).
 *
 * fsck walks <root>/docker/registry/v2/blobs/sha256 (the layout of store.h), hashes every
 * blob's data file and compares the result with the blob's name. It reads with O_NOATIME,
 * because a data file's access time is the blob's last-pulled time (expire.h) and a check
 * is not a pull. The kernel permits O_NOATIME to the file's owner and to root; run as
 * another user, fsck reads without it, and the file system may then move the access time
 * forward (under relatime, at most once a day), which only delays that blob's expiry:
 * run fsck as the server's user or as root.
 *
 * Problems reported, each once, to the report callback:
 *   - a blob whose content does not hash to its name ("digest mismatch ..."),
 *   - a data file that cannot be read ("unreadable: ...", an I/O error or a permission),
 *   - a data file that is not a regular file (a directory, a symbolic link, ...), or a
 *     blob directory without a data file,
 *   - a stray entry: a name in the blob tree that is not a blob's (wrong prefix, not 64
 *     lowercase hex digits, another file beside "data"),
 *   - a leftover of a fetch that is over: a temporary file in
 *     <root>/docker/registry/v2/_content-cache/tmp that no fresh fetch lock claims, or a
 *     stale lock in <root>/docker/registry/v2/_content-cache/fetching (store.h). The files
 *     of fetches in progress, here or in a replica sharing the root, are not problems.
 *
 * Without repair nothing is changed: no file is written, removed or created, and the
 * store's directories are not created when they are missing. With repair the bad blobs
 * are removed (store_remove_sync; an empty blob directory is removed too), and so are the
 * leftovers (by store_open, whose rules keep the files of fetches in progress); stray
 * entries are reported and left for the operator, and so is a blob that could not be read
 * for lack of permission or of resources (that is not the blob's fault). Repair may run
 * while servers use the store: a blob being served when it is removed is served whole,
 * and the next request fetches it again.
 *
 * Synchronous and blocking: a command, never the server's loop.
 */
#ifndef CC_FSCK_H
#define CC_FSCK_H

#include <stdbool.h>
#include <stdint.h>

struct fsck_report {
    uint64_t checked; /* blobs looked at (directories with a blob's name) */
    uint64_t ok;      /* blobs whose content matches their name */
    uint64_t bad;     /* blobs with a problem: mismatch, unreadable, not a regular file */
    uint64_t stray;   /* entries in the blob tree that are not blobs (or cannot be listed) */
    uint64_t temp;    /* leftovers of fetches: temporary files and stale fetch locks */
    uint64_t removed; /* blobs and leftovers removed (repair only) */
    uint64_t bytes;   /* bytes read and hashed */
};

/*
 * Called once per problem, in the order found. `what` is the blob's 64 hex digits, or,
 * for an entry that is not a blob (stray entries, leftovers), its path relative to
 * the storage root. `problem` is a sentence that ends with what repair did ("; removed",
 * "; not removed: <reason>") when it ran. Both strings are valid during the call only.
 */
typedef void (*fsck_report_fn)(void *ud, const char *what, const char *problem);

/*
 * Checks (and, with repair, repairs) the store at storage_root. Fills *out (zeroed
 * first) and calls report (may be NULL) for every problem. Returns 0 when the walk ran
 * to the end, whatever it found; -ENOENT when storage_root holds no store (no blob
 * directory); another -errno when the walk could not run (after a report that names
 * the path at fault).
 */
int fsck_run(const char *storage_root, bool repair, struct fsck_report *out, fsck_report_fn report,
             void *ud);

#endif
