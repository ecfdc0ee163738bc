/*
 * warm.h: warming the store before anyone pulls (`content-cache warm`, POST /debug/warm).
 *
 * A warm takes image references and puts each image's manifests and blobs into the store
 * through the same modules a client's pull goes through, so that the first pull after it
 * is all hits:
 *
 *   - a reference is `name:tag`, `name@sha256:<hex>` or `<registry>/name:tag` (a first
 *     component with a '.' or a ':', or `localhost`, is a registry host, as Docker reads
 *     it; its upstreams entry is chosen as the `ns` parameter chooses one,
 *     upstreams_entry_for_registry); without a registry, the first entry serves;
 *   - the manifest is asked of the entry's upstreams in the order a pull would use
 *     (upstreams_select: the upstream caches of a chain, then the origin), checked
 *     against its digest and kept as the manifest cache keeps an answer (manifest_keep:
 *     the blob, its media type, its revision link, the _layers links of its blobs, the
 *     tag's link);
 *   - an index is walked to its platform manifests (only those of the chosen platforms,
 *     "os/arch" or "os/arch/variant"; none chosen: all), each kept the same way;
 *   - every config and layer blob is fetched by the fetch manager (fetch.h), exactly as a
 *     client's miss is: one fetch per blob (a fetch already running for it, a client's
 *     or another warm's, is followed, not repeated), verified, committed. At most `jobs`
 *     blobs are in flight at once, over all the references of a warm;
 *   - a blob already stored is only stat'ed: its last-pulled time (the data file's access
 *     time, expire.h) is not touched, as warming is not a pull. A blob the warm stores
 *     has the time it was stored as its last-pulled time until a client pulls it.
 *
 * Credentials: authorization(ud, registry) gives the Authorization value for a registry
 * (its host[:port] as the config's originhost writes it), or NULL. It goes with every
 * request for that entry's references, as a client's own goes with its pull. When the
 * registry answers 401 with a Bearer challenge, a Basic credential is taken to the realm
 * for a pull token of the repository, renewed before it expires (pull_auth.h), as Docker
 * clients do. Credentials are never logged nor put in a status.
 *
 * Errors are negative errno-style integers. A function that fails never calls a
 * callback, and no callback comes before warm_start returns: every one comes from the
 * loop. Everything runs on the loop's thread; the env's objects must outlive the warm.
 */
#ifndef CC_WARM_H
#define CC_WARM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/bytes.h"
#include "base/config.h"
#include "cache/fetch.h"
#include "cache/manifest.h"
#include "cache/store.h"
#include "registry/upstreams.h"

#define WARM_MAX_IMAGES 64
#define WARM_MAX_PLATFORMS 16
#define WARM_DEFAULT_JOBS 4
#define WARM_MAX_JOBS 64

/* What a warm runs with: the cache's own objects (a running cache's, or the command's). */
struct warm_env {
    uv_loop_t *loop;
    const struct config *cfg;
    struct store *store;
    struct fetch_manager *fetches;
    struct manifest_service *manifests;
    struct upstreams *upstreams;
    /* Whether a missing blob is to be stored, as for a client's miss: the disk budget's
     * room and the admit policy (blob.h's blob_admit_fn: digest "sha256:<hex>", the size
     * the manifest gives). NULL: every blob. A blob refused is not fetched (warming a blob
     * that would pass through unstored is no warming) and is counted as not admitted. */
    bool (*admit)(void *ud, const char *digest, int64_t size, const struct policy_request *req);
    void *admit_ud;
};

struct warm;

struct warm_opts {
    unsigned jobs;                /* blobs in flight at once; 0: WARM_DEFAULT_JOBS */
    const char *const *platforms; /* "linux/amd64", "linux/arm/v7"; copied */
    size_t n_platforms;           /* 0: every platform of an index */
    /* The Authorization value for `registry` (valid until the next call), or NULL. */
    const char *(*authorization)(void *ud, const char *registry);
    /* One reference has ended (warm_image says how). May be NULL. */
    void (*on_image_done)(void *ud, struct warm *w, size_t i);
    /* Every reference has ended, nothing of the warm is in flight. The warm may not be
     * freed from here (nor from on_image_done): later, from the loop or after it. */
    void (*on_done)(void *ud, struct warm *w);
    void *ud;
};

enum warm_image_state { WARM_QUEUED, WARM_RESOLVING, WARM_FETCHING, WARM_DONE, WARM_FAILED };

/* Where one reference stands. Counts cover every platform chosen; blobs_total is
 * blobs_done + blobs_refused once the reference is done. */
struct warm_image_status {
    const char *reference; /* as given */
    enum warm_image_state state;
    char error[512];               /* WARM_FAILED: why, a sentence naming the reference's part */
    char digest[72];               /* "sha256:<hex>" the reference resolved to, "" before */
    unsigned manifests;            /* manifests kept (an index and its platform manifests) */
    unsigned platforms;            /* platform manifests chosen (1 for an image manifest) */
    unsigned blobs_total;          /* config and layer blobs named */
    unsigned blobs_done;           /* of them, in the store now */
    unsigned blobs_fetched;        /* of those, fetched by this warm (or a fetch it followed) */
    unsigned blobs_present;        /* of those, stored already (skipped) */
    unsigned blobs_refused;        /* not stored: the admit policy or the disk budget said no */
    uint64_t bytes_total;          /* the sizes the manifests give */
    uint64_t bytes_done;           /* of blobs in the store now, and read so far of running ones */
    uint64_t bytes_fetched;        /* of the blobs fetched, and read so far of running ones */
    uint64_t started_ms, ended_ms; /* uv_now of the loop */
};

/* The state's name: "queued", "resolving", "fetching", "done", "failed". */
const char *warm_state_name(enum warm_image_state s);

/*
 * Checks a reference as warm_start would read it: 0, or -EINVAL with a sentence in why
 * (for a command line's usage errors before anything starts).
 */
int warm_reference_check(const char *ref, char *why, size_t why_len);

/*
 * Starts warming images[0..n) (each copied; at most WARM_MAX_IMAGES). Returns 0 and the
 * warm in *out, or -EINVAL (a reference that does not parse, a bad platform or count: why
 * says which), -ENOMEM. A reference to a registry no upstreams entry serves fails alone,
 * as a reference the registry refuses does. The caller owns the warm and frees it with
 * warm_free after on_done.
 */
int warm_start(const struct warm_env *env, const struct warm_opts *opts, const char *const *images,
               size_t n, struct warm **out, char *why, size_t why_len);

/*
 * Stops: nothing new starts, requests in flight are cancelled, the references not
 * finished fail with "interrupted". Work on the thread pool (a manifest being written, a
 * stat) ends by itself: on_done comes when it has. Fetches the warm started go on for
 * the clients that follow them; a fetch nobody follows runs to its end unless the owner
 * stops the fetch manager (fetch_manager_cancel_all, as a command does).
 */
void warm_cancel(struct warm *w);

size_t warm_image_count(const struct warm *w);
/* Where reference i stands now (bytes of running fetches included), copied into *out
 * (its reference string is the warm's, valid until warm_free). */
void warm_image(const struct warm *w, size_t i, struct warm_image_status *out);
/* True once on_done has been called. */
bool warm_finished(const struct warm *w);
/* How many references failed (after on_done: in all). */
size_t warm_failed_count(const struct warm *w);

/*
 * The warm as one JSON object, for a pipeline: {"state": "running"|"finished", "images":
 * [{"reference", "status", "digest", "error" (failed only), "platforms", "manifests",
 * "blobs", "blobs_done", "fetched", "already_stored", "not_admitted", "bytes", "bytes_done",
 * "bytes_fetched", "seconds"}], "failed": N}, and a newline. Credentials are not in it.
 */
void warm_status_json(const struct warm *w, struct textbuf *out);

/* Frees a warm whose on_done has come (never from inside a callback of the warm). */
void warm_free(struct warm *w);

#endif
