/*
 * image_manifest.c: the descriptors a manifest or an index names. See image_manifest.h.
 */
#include "registry/image_manifest.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/digest.h"
#include "base/json.h"
#include "registry/registry.h"

/* The object at obj as a descriptor: its sha256 digest's hex and its size. */
static bool descriptor(const struct json_doc *doc, size_t obj, char *hex, uint64_t *size)
{
    size_t d, s;
    char value[80];
    size_t vlen;
    int64_t n = 0;
    if (json_type_of(doc, obj) != JSON_OBJECT || json_object_get(doc, obj, "digest", &d) != 0 ||
        json_type_of(doc, d) != JSON_STRING ||
        json_string_decode(doc, d, value, sizeof(value), &vlen) != 0 ||
        !digest_ref_is_sha256(value, vlen) || !registry_digest_valid(value, vlen))
        return false;
    memcpy(hex, value + 7, 65);
    if (json_object_get(doc, obj, "size", &s) == 0) json_integer_int64(doc, s, &n);
    *size = n > 0 ? (uint64_t)n : 0;
    return true;
}

/* An index entry's platform, "os/arch[/variant]" ("" when it names none). */
static void platform_of(const struct json_doc *doc, size_t obj, char *out, size_t len)
{
    size_t p, v, n;
    char os[64] = "", arch[64] = "", variant[64] = "";
    out[0] = '\0';
    if (json_object_get(doc, obj, "platform", &p) != 0 || json_type_of(doc, p) != JSON_OBJECT)
        return;
    if (json_object_get(doc, p, "os", &v) == 0) json_string_decode(doc, v, os, sizeof(os), &n);
    if (json_object_get(doc, p, "architecture", &v) == 0)
        json_string_decode(doc, v, arch, sizeof(arch), &n);
    if (json_object_get(doc, p, "variant", &v) == 0)
        json_string_decode(doc, v, variant, sizeof(variant), &n);
    snprintf(out, len, "%s/%s%s%s", os, arch, variant[0] ? "/" : "", variant);
}

/* Gives the descriptor at obj to fn (or counts it skipped). Non-zero: fn said stop. */
static int give(const struct json_doc *doc, size_t obj, enum image_ref_kind kind, size_t index,
                image_ref_fn fn, void *ud, size_t *skipped)
{
    char hex[65], platform[200] = "";
    struct image_ref ref = {.kind = kind, .index = index, .hex = hex, .platform = platform};
    if (!descriptor(doc, obj, hex, &ref.size)) {
        (*skipped)++;
        return 0;
    }
    if (kind == IMAGE_REF_MANIFEST) platform_of(doc, obj, platform, sizeof(platform));
    return fn(ud, &ref);
}

int image_manifest_walk(const char *body, size_t len, image_ref_fn fn, void *ud, size_t *skipped)
{
    size_t skipped_here = 0, v;
    size_t cap = json_tokens_for(len);
    struct json_token *tok = malloc(cap * sizeof(*tok));
    struct json_doc doc;
    if (tok == NULL) return -ENOMEM;
    if (json_parse(body, len, tok, cap, &doc) != 0 || json_type_of(&doc, 0) != JSON_OBJECT) {
        free(tok);
        return -EINVAL;
    }
    int kind = IMAGE_MANIFEST_OTHER, stop = 0;
    if (json_object_get(&doc, 0, "config", &v) == 0) {
        kind = IMAGE_MANIFEST_IMAGE;
        stop = give(&doc, v, IMAGE_REF_CONFIG, 0, fn, ud, &skipped_here);
    }
    static const struct {
        const char *key;
        enum image_ref_kind kind;
        enum image_manifest_kind is;
    } lists[] = {{"layers", IMAGE_REF_LAYER, IMAGE_MANIFEST_IMAGE},
                 {"manifests", IMAGE_REF_MANIFEST, IMAGE_MANIFEST_INDEX}};
    for (size_t l = 0; l < 2 && stop == 0; l++) {
        if (json_object_get(&doc, 0, lists[l].key, &v) != 0 || json_type_of(&doc, v) != JSON_ARRAY)
            continue;
        if (kind == IMAGE_MANIFEST_OTHER) kind = lists[l].is;
        size_t i = v + 1;
        for (size_t k = 0; k < json_count(&doc, v) && stop == 0; k++) {
            stop = give(&doc, i, lists[l].kind, k, fn, ud, &skipped_here);
            i = json_skip(&doc, i);
        }
    }
    free(tok);
    if (skipped != NULL) *skipped = skipped_here;
    return kind;
}
