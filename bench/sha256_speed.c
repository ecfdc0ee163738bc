/*
 * sha256_speed.c: how fast core/base/digest.c hashes a buffer in memory, on each of its paths.
 *
 * Built by bench/run.sh straight from the sources, without CMake:
 *   gcc -O2 -I core bench/sha256_speed.c core/base/digest.c -lmbedcrypto -o sha256_speed
 * Usage: sha256_speed [MiB]   (default 1024: 1 GiB)
 *
 * It fills a buffer with a fixed pattern, checks both paths against the FIPS 180-2 test
 * vector "abc" and against each other on the buffer, then times each path over the whole
 * buffer (fed in 1 MiB updates, as the fetch path feeds what arrives). The lines it prints
 * are key=value, one per path, read by bench/bench.py:
 *   sha256 path=mbedtls requested=portable gbps=0.452 seconds=2.376 bytes=1073741824
 *   sha256 path=sha-ni requested=default gbps=1.981 seconds=0.542 bytes=1073741824
 *   sha256 hw_available=yes default_path=sha-ni digest=...
 * `path` is digest_sha256_impl() at the moment the context was initialized: the path
 * that actually ran. Exits 1 when a digest is wrong.
 */
#include "base/digest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHUNK ((size_t)1 << 20)

static double now_seconds(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void hash_buffer(const unsigned char *buf, size_t len, unsigned char out[32])
{
    struct digest_sha256 ctx;

    digest_sha256_init(&ctx);
    for (size_t off = 0; off < len; off += CHUNK)
        digest_sha256_update(&ctx, buf + off, len - off < CHUNK ? len - off : CHUNK);
    digest_sha256_final(&ctx, out);
}

/* The "abc" vector on the current path; returns 0 when it matches. */
static int check_vector(void)
{
    static const char want[] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    struct digest_sha256 ctx;
    unsigned char bin[32];
    char hex[65];

    digest_sha256_init(&ctx);
    digest_sha256_update(&ctx, "abc", 3);
    digest_sha256_final(&ctx, bin);
    digest_hex(bin, hex);
    return strcmp(hex, want) == 0 ? 0 : -1;
}

/* Times one path; prints its line; returns 0, or -1 when the "abc" vector fails. */
static int run_path(bool allow_hw, const unsigned char *buf, size_t len, unsigned char out[32])
{
    digest_sha256_use_hw(allow_hw);
    const char *path = digest_sha256_impl();
    if (check_vector() != 0) {
        fprintf(stderr, "sha256_speed: path %s gives a wrong digest of \"abc\"\n", path);
        return -1;
    }
    double start = now_seconds();
    hash_buffer(buf, len, out);
    double seconds = now_seconds() - start;
    printf("sha256 path=%s requested=%s gbps=%.3f seconds=%.3f bytes=%zu\n", path,
           allow_hw ? "default" : "portable", (double)len / seconds / 1e9, seconds, len);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
    if (mib == 0) {
        fprintf(stderr, "usage: sha256_speed [MiB]\n");
        return 2;
    }
    size_t len = mib << 20;
    unsigned char *buf = malloc(len);
    if (buf == NULL) {
        fprintf(stderr, "sha256_speed: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    /* A fixed, not trivially compressible pattern; touching every page also faults the
     * buffer in before any timing starts. */
    unsigned int x = 2463534242u;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (unsigned char)x;
    }

    unsigned char portable[32], hw[32];
    if (run_path(false, buf, len, portable) != 0) return 1;
    if (run_path(true, buf, len, hw) != 0) return 1;

    char hex[65];
    digest_hex(hw, hex);
    digest_sha256_use_hw(true);
    printf("sha256 hw_available=%s default_path=%s digest=%s\n",
           digest_sha256_hw_available() ? "yes" : "no", digest_sha256_impl(), hex);
    if (memcmp(portable, hw, 32) != 0) {
        fprintf(stderr, "sha256_speed: the two paths disagree on the buffer's digest\n");
        return 1;
    }
    free(buf);
    return 0;
}
