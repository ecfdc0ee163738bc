/*
 * fuzz_range.c: bytes as a Range header value through blob_parse_range, against blobs
 * of a few sizes (empty, one byte, small, large, the largest).
 *
 * Checked: only the three documented results; a partial range lies inside the blob and
 * is not empty; the output is untouched when the range is not honoured; nothing is read
 * past the value (an exact-size heap copy).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/blob.h"
#include "harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint64_t sizes[] = {
        0, 1, 2, 100, 1u << 20, (uint64_t)1 << 40, UINT64_MAX - 1, UINT64_MAX};
    char *value = malloc(size ? size : 1);
    if (value == NULL) return 0;
    memcpy(value, data, size);
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        uint64_t start = 0x5a5a5a5a, end = 0xa5a5a5a5;
        enum blob_range_result r = blob_parse_range(value, size, sizes[i], &start, &end);
        HARNESS_REQUIRE(r == RANGE_NONE || r == RANGE_PARTIAL || r == RANGE_UNSATISFIABLE,
                        "a documented result");
        if (r == RANGE_PARTIAL)
            HARNESS_REQUIRE(start < end && end <= sizes[i], "a partial range lies in the blob");
        else
            HARNESS_REQUIRE(start == 0x5a5a5a5a && end == 0xa5a5a5a5, "no output unless partial");
    }
    free(value);
    return 0;
}
