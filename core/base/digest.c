/*
 * digest.c: sha256 over one compression function with two implementations.
 *
 * Both implementations keep the state as H0..H7 and take whole 64-byte blocks, so
 * update() can hand them the caller's memory directly and buffer only a partial block
 * at the start or the end of a call.
 */
#include "base/digest.h"

#include <stdatomic.h>
#include <string.h>

#include <mbedtls/sha256.h>

#if defined(__x86_64__) || defined(__i386__)
#define DIGEST_HAVE_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

static const uint32_t sha256_initial_state[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

/* The portable path: mbedTLS's block function, run on a context that borrows our state. */
static void sha256_blocks_mbedtls(uint32_t state[8], const unsigned char *data, size_t nblocks)
{
    mbedtls_sha256_context mctx;

    mbedtls_sha256_init(&mctx);
    memcpy(mctx.state, state, sizeof mctx.state);
    for (; nblocks > 0; nblocks--, data += 64)
        (void)mbedtls_internal_sha256_process(&mctx, data);
    memcpy(state, mctx.state, sizeof mctx.state);
    mbedtls_sha256_free(&mctx);
}

#ifdef DIGEST_HAVE_X86

#define SHA_TARGET __attribute__((target("sha,sse4.1")))

static const uint32_t sha256_k[64] __attribute__((aligned(16))) = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

/* Four rounds: w holds message words i..i+3, state is kept as ABEF and CDGH. */
static inline SHA_TARGET void sha_ni_rounds4(__m128i *abef, __m128i *cdgh, __m128i w, int i)
{
    __m128i wk = _mm_add_epi32(w, _mm_load_si128((const __m128i *)&sha256_k[i]));
    *cdgh = _mm_sha256rnds2_epu32(*cdgh, *abef, wk);
    *abef = _mm_sha256rnds2_epu32(*abef, *cdgh, _mm_shuffle_epi32(wk, 0x0e));
}

/* The message schedule: words j..j+3 from the four vectors before them (w4 = j-4 ...). */
static inline SHA_TARGET __m128i sha_ni_schedule(__m128i w4, __m128i w3, __m128i w2, __m128i w1)
{
    __m128i t = _mm_add_epi32(_mm_sha256msg1_epu32(w4, w3), _mm_alignr_epi8(w1, w2, 4));
    return _mm_sha256msg2_epu32(t, w1);
}

static SHA_TARGET void sha256_blocks_sha_ni(uint32_t state[8], const unsigned char *data,
                                            size_t nblocks)
{
    /* Big-endian words from the input bytes. */
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i dcba = _mm_loadu_si128((const __m128i *)&state[0]);
    __m128i hgfe = _mm_loadu_si128((const __m128i *)&state[4]);

    /* H0..H7 -> the ABEF/CDGH layout that sha256rnds2 works on. */
    __m128i cdab = _mm_shuffle_epi32(dcba, 0xb1);
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1b);
    __m128i abef = _mm_alignr_epi8(cdab, efgh, 8);
    __m128i cdgh = _mm_blend_epi16(efgh, cdab, 0xf0);

    for (; nblocks > 0; nblocks--, data += 64) {
        __m128i abef_saved = abef, cdgh_saved = cdgh;
        __m128i w0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 0)), bswap);
        __m128i w1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16)), bswap);
        __m128i w2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 32)), bswap);
        __m128i w3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 48)), bswap);

        sha_ni_rounds4(&abef, &cdgh, w0, 0);
        sha_ni_rounds4(&abef, &cdgh, w1, 4);
        sha_ni_rounds4(&abef, &cdgh, w2, 8);
        sha_ni_rounds4(&abef, &cdgh, w3, 12);
        for (int i = 16; i < 64; i += 16) {
            w0 = sha_ni_schedule(w0, w1, w2, w3);
            sha_ni_rounds4(&abef, &cdgh, w0, i);
            w1 = sha_ni_schedule(w1, w2, w3, w0);
            sha_ni_rounds4(&abef, &cdgh, w1, i + 4);
            w2 = sha_ni_schedule(w2, w3, w0, w1);
            sha_ni_rounds4(&abef, &cdgh, w2, i + 8);
            w3 = sha_ni_schedule(w3, w0, w1, w2);
            sha_ni_rounds4(&abef, &cdgh, w3, i + 12);
        }
        abef = _mm_add_epi32(abef, abef_saved);
        cdgh = _mm_add_epi32(cdgh, cdgh_saved);
    }

    /* ABEF/CDGH -> H0..H7. */
    __m128i feba = _mm_shuffle_epi32(abef, 0x1b);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xb1);
    dcba = _mm_blend_epi16(feba, dchg, 0xf0);
    hgfe = _mm_alignr_epi8(dchg, feba, 8);
    _mm_storeu_si128((__m128i *)&state[0], dcba);
    _mm_storeu_si128((__m128i *)&state[4], hgfe);
}

/* SHA extensions: CPUID leaf 7 EBX bit 29; the code also needs SSSE3 and SSE4.1. */
static bool cpu_has_sha_ni(void)
{
    unsigned int eax, ebx, ecx, edx;

    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
    if (!(ecx & (1u << 9)) || !(ecx & (1u << 19))) return false;
    if (__get_cpuid_max(0, NULL) < 7) return false;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    return (ebx & (1u << 29)) != 0;
}

#else

static bool cpu_has_sha_ni(void)
{
    return false;
}

#endif

/* 0: not probed yet, 1: no SHA-NI, 2: SHA-NI. Racing first callers store the same value. */
static atomic_int hw_probe;
static atomic_bool hw_allowed = true;

bool digest_sha256_hw_available(void)
{
    int probe = atomic_load_explicit(&hw_probe, memory_order_relaxed);

    if (probe == 0) {
        probe = cpu_has_sha_ni() ? 2 : 1;
        atomic_store_explicit(&hw_probe, probe, memory_order_relaxed);
    }
    return probe == 2;
}

static bool use_hw_now(void)
{
    return atomic_load_explicit(&hw_allowed, memory_order_relaxed) && digest_sha256_hw_available();
}

void digest_sha256_use_hw(bool allow)
{
    atomic_store_explicit(&hw_allowed, allow, memory_order_relaxed);
}

const char *digest_sha256_impl(void)
{
    return use_hw_now() ? "sha-ni" : "mbedtls";
}

static void sha256_blocks(struct digest_sha256 *ctx, const unsigned char *data, size_t nblocks)
{
#ifdef DIGEST_HAVE_X86
    if (ctx->hw) {
        sha256_blocks_sha_ni(ctx->state, data, nblocks);
        return;
    }
#endif
    sha256_blocks_mbedtls(ctx->state, data, nblocks);
}

void digest_sha256_init(struct digest_sha256 *ctx)
{
    memcpy(ctx->state, sha256_initial_state, sizeof ctx->state);
    ctx->total_len = 0;
    ctx->block_len = 0;
    ctx->hw = use_hw_now();
}

void digest_sha256_update(struct digest_sha256 *ctx, const void *data, size_t len)
{
    const unsigned char *p = data;

    if (len == 0) return;
    ctx->total_len += len;

    if (ctx->block_len > 0) {
        size_t take = 64 - ctx->block_len;
        if (take > len) take = len;
        memcpy(ctx->block + ctx->block_len, p, take);
        ctx->block_len += take;
        p += take;
        len -= take;
        if (ctx->block_len < 64) return;
        sha256_blocks(ctx, ctx->block, 1);
        ctx->block_len = 0;
    }

    if (len >= 64) {
        size_t nblocks = len / 64;
        sha256_blocks(ctx, p, nblocks);
        p += nblocks * 64;
        len -= nblocks * 64;
    }

    memcpy(ctx->block, p, len);
    ctx->block_len = len;
}

static void store_be32(unsigned char *out, uint32_t v)
{
    out[0] = (unsigned char)(v >> 24);
    out[1] = (unsigned char)(v >> 16);
    out[2] = (unsigned char)(v >> 8);
    out[3] = (unsigned char)v;
}

void digest_sha256_final(struct digest_sha256 *ctx, unsigned char out[DIGEST_SHA256_LEN])
{
    uint64_t bits = ctx->total_len * 8;
    size_t n = ctx->block_len;

    ctx->block[n++] = 0x80;
    if (n > 56) {
        memset(ctx->block + n, 0, 64 - n);
        sha256_blocks(ctx, ctx->block, 1);
        n = 0;
    }
    memset(ctx->block + n, 0, 56 - n);
    store_be32(ctx->block + 56, (uint32_t)(bits >> 32));
    store_be32(ctx->block + 60, (uint32_t)bits);
    sha256_blocks(ctx, ctx->block, 1);

    for (int i = 0; i < 8; i++)
        store_be32(out + 4 * i, ctx->state[i]);
    memset(ctx->block, 0, sizeof ctx->block);
    ctx->block_len = 0;
}

void digest_hex(const unsigned char bin[DIGEST_SHA256_LEN], char out[DIGEST_SHA256_HEX_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";

    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[bin[i] >> 4];
        out[2 * i + 1] = hex[bin[i] & 0x0f];
    }
    out[64] = '\0';
}
