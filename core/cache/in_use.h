/*
 * in_use.h: the blobs being read now, for the whole process.
 *
 * A blob request that reads a stored blob (a hit, or a follower of a fetch once the
 * blob is committed) counts itself here while it reads, and lets go when it ends. The
 * disk budget's eviction and the blobttl's expiry, which run on loop 0 only, ask here
 * whether a blob is being read before they delete it; the readers may be on any loop
 * of the process (workers), so the answer is the process's, not one loop's. Nobody
 * waits on it: a question is a lookup, and a reader that comes right after the answer
 * still gets the blob whole (it holds an open descriptor), only the deletion was not
 * held back for it.
 *
 * Locking: one mutex per table guards every entry. Any thread may call any function;
 * the mutex is held only inside them (a lookup in one of 256 buckets), never across a
 * callback, and nothing else is shared. in_use_free is the owner's, once no thread uses
 * the table any more.
 *
 * Errors are negative errno values.
 */
#ifndef CC_IN_USE_H
#define CC_IN_USE_H

#include <stdbool.h>
#include <stddef.h>

struct in_use;

/* An empty table, or NULL when memory ran out. */
struct in_use *in_use_new(void);
void in_use_free(struct in_use *t);

/*
 * One more reader of blob `hex` (64 lowercase hex digits). Returns 0, or -ENOMEM (then
 * the blob is not counted: do not call in_use_remove for it).
 */
int in_use_add(struct in_use *t, const char *hex);
/* One reader fewer; the blob leaves the table with its last reader. */
void in_use_remove(struct in_use *t, const char *hex);
/* True while blob `hex` has a reader. */
bool in_use_has(struct in_use *t, const char *hex);
/* Blobs with a reader now. */
size_t in_use_count(struct in_use *t);

#endif
