/*
 * image_manifest.h: what an image manifest or an index names, read from its JSON (the
 * OCI image manifest and index, Docker's schema 2 manifest and manifest list): an
 * image's config and layers, an index's platform manifests, each a descriptor with its
 * digest, its size and (in an index) its platform.
 *
 * The body is only read; the walk allocates the JSON reader's tokens for its own use and
 * frees them before it returns. The manifest cache uses it to know what a manifest
 * vouches for (manifest.h), a warm to know what to fetch (warm.h).
 */
#ifndef CC_IMAGE_MANIFEST_H
#define CC_IMAGE_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

enum image_manifest_kind {
    IMAGE_MANIFEST_IMAGE = 1, /* it has a config or layers */
    IMAGE_MANIFEST_INDEX = 2, /* it has manifests (an index, a manifest list) */
    IMAGE_MANIFEST_OTHER = 3, /* a JSON object with neither (schema 1, an artifact...) */
};

enum image_ref_kind { IMAGE_REF_CONFIG, IMAGE_REF_LAYER, IMAGE_REF_MANIFEST };

/* One descriptor, as the walk gives it; the strings are valid during the call only. */
struct image_ref {
    enum image_ref_kind kind;
    size_t index;         /* its place in its list (0 for the config) */
    const char *hex;      /* the sha256 digest: 64 lowercase hex digits */
    uint64_t size;        /* as the descriptor says (0 when it says none) */
    const char *platform; /* an index's entry: "os/arch" or "os/arch/variant", "" when it
                             names none; "" for a config or layer */
};

/* Called for each descriptor; returns 0 to go on, anything else to stop the walk. */
typedef int (*image_ref_fn)(void *ud, const struct image_ref *ref);

/*
 * Calls fn for each descriptor body[0..len) names, in document order: the config, then
 * the layers, then an index's manifests. A descriptor that is not an object with a
 * sha256 digest is not given: *skipped (may be NULL) counts them. Returns the kind, or
 * -EINVAL for a body that is not a JSON object, -ENOMEM.
 */
int image_manifest_walk(const char *body, size_t len, image_ref_fn fn, void *ud, size_t *skipped);

#endif
