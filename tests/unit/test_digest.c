/*
 * test_digest.c: sha256 against the NIST vectors and against mbedTLS, on every path this
 * CPU can run (SHA-NI when it has the extensions, the mbedTLS block function always).
 */
#include "check.h"
#include "base/digest.h"

#include <stdbool.h>
#include <stdlib.h>

#include <mbedtls/sha256.h>

/* The paths to run: the portable one, and SHA-NI when the CPU has it. */
static bool paths[2];

static void use_path(int i)
{
    digest_sha256_use_hw(i == 1);
}

static const char *path_name(int i)
{
    return i == 1 ? "sha-ni" : "mbedtls";
}

static void sha256_hex_oneshot(const void *data, size_t len, char hex[65])
{
    struct digest_sha256 ctx;
    unsigned char bin[32];

    digest_sha256_init(&ctx);
    digest_sha256_update(&ctx, data, len);
    digest_sha256_final(&ctx, bin);
    digest_hex(bin, hex);
}

static void reference_hex(const void *data, size_t len, char hex[65])
{
    unsigned char bin[32];

    CHECK_INT(mbedtls_sha256_ret(data, len, bin, 0), 0);
    digest_hex(bin, hex);
}

/* xorshift64*: deterministic, so a failure can be replayed from the printed seed. */
static uint64_t rng_state;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dULL;
}

static void fill_random(unsigned char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)(rng_next() >> 56);
}

static void test_impl_selection(void)
{
    digest_sha256_use_hw(true);
    if (digest_sha256_hw_available())
        CHECK_STR(digest_sha256_impl(), "sha-ni");
    else
        CHECK_STR(digest_sha256_impl(), "mbedtls");
    digest_sha256_use_hw(false);
    CHECK_STR(digest_sha256_impl(), "mbedtls");
    digest_sha256_use_hw(true);
}

static void test_hex(void)
{
    unsigned char bin[32];
    char hex[65];

    for (int i = 0; i < 32; i++)
        bin[i] = (unsigned char)(i * 8 + 7);
    digest_hex(bin, hex);
    CHECK_STR(hex, "070f171f272f373f474f575f676f777f878f979fa7afb7bfc7cfd7dfe7eff7ff");
    CHECK_INT(strlen(hex), 64);
}

static void test_nist_vectors(void)
{
    static const struct {
        const char *msg;
        const char *hex;
    } vectors[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmn"
         "opqrlmnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
    };
    char hex[65];

    for (int p = 0; p < 2; p++) {
        if (!paths[p]) continue;
        use_path(p);
        for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
            sha256_hex_oneshot(vectors[i].msg, strlen(vectors[i].msg), hex);
            CHECK_STR(hex, vectors[i].hex);
        }
    }
    digest_sha256_use_hw(true);
}

static void test_million_a(void)
{
    static const char expected[] =
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    size_t len = 1000000;
    char *msg = malloc(len);
    char hex[65];

    CHECK(msg != NULL);
    if (msg == NULL) return;
    memset(msg, 'a', len);
    for (int p = 0; p < 2; p++) {
        if (!paths[p]) continue;
        use_path(p);
        sha256_hex_oneshot(msg, len, hex);
        CHECK_STR(hex, expected);

        /* The same in 1000 updates of 1000 bytes: blocks cross the update boundaries. */
        struct digest_sha256 ctx;
        unsigned char bin[32];
        digest_sha256_init(&ctx);
        for (size_t off = 0; off < len; off += 1000)
            digest_sha256_update(&ctx, msg + off, 1000);
        digest_sha256_final(&ctx, bin);
        digest_hex(bin, hex);
        CHECK_STR(hex, expected);
    }
    digest_sha256_use_hw(true);
    free(msg);
}

/* Every length from 0 to 1100 (all padding cases), at an odd address, against mbedTLS. */
static void test_every_length(void)
{
    size_t max = 1100;
    unsigned char *buf = malloc(max + 1);
    char want[65], got[65];

    CHECK(buf != NULL);
    if (buf == NULL) return;
    fill_random(buf, max + 1);
    for (int p = 0; p < 2; p++) {
        if (!paths[p]) continue;
        use_path(p);
        for (size_t len = 0; len <= max; len++) {
            reference_hex(buf + 1, len, want);
            sha256_hex_oneshot(buf + 1, len, got);
            if (strcmp(want, got) != 0) {
                fprintf(stderr, "%s: length %zu differs\n", path_name(p), len);
                CHECK_STR(got, want);
                break;
            }
        }
    }
    digest_sha256_use_hw(true);
    free(buf);
}

/*
 * A 1 MiB buffer fed in 2000 pieces at random split points (many tiny pieces, some
 * empty, some long), several times per path, against a one-shot reference digest.
 */
static void test_random_splits(void)
{
    size_t len = 1 << 20;
    int rounds = 4, pieces = 2000;
    unsigned char *buf = malloc(len);
    size_t *cuts = malloc((size_t)(pieces + 1) * sizeof *cuts);
    char want[65], got[65];

    CHECK(buf != NULL && cuts != NULL);
    if (buf == NULL || cuts == NULL) {
        free(buf);
        free(cuts);
        return;
    }
    fill_random(buf, len);
    reference_hex(buf, len, want);

    for (int round = 0; round < rounds; round++) {
        /* Sorted random cut points; half the rounds favor short pieces near block size. */
        for (int i = 0; i < pieces; i++)
            cuts[i] = (size_t)(rng_next() % (len + 1));
        if (round % 2 == 1)
            for (int i = 0; i < pieces; i++)
                cuts[i] = (size_t)(rng_next() % 200) + (size_t)i * (len / (size_t)pieces);
        cuts[pieces] = len;
        for (int i = 1; i < pieces; i++) {
            size_t v = cuts[i];
            int j = i;
            for (; j > 0 && cuts[j - 1] > v; j--)
                cuts[j] = cuts[j - 1];
            cuts[j] = v;
        }

        for (int p = 0; p < 2; p++) {
            if (!paths[p]) continue;
            use_path(p);
            struct digest_sha256 ctx;
            unsigned char bin[32];
            size_t at = 0;
            digest_sha256_init(&ctx);
            for (int i = 0; i <= pieces; i++) {
                digest_sha256_update(&ctx, buf + at, cuts[i] - at);
                at = cuts[i];
            }
            digest_sha256_final(&ctx, bin);
            digest_hex(bin, got);
            if (strcmp(got, want) != 0)
                fprintf(stderr, "%s: round %d differs\n", path_name(p), round);
            CHECK_STR(got, want);
        }
    }
    digest_sha256_use_hw(true);
    free(cuts);
    free(buf);
}

/* Random messages of random lengths, each in random pieces, both paths in lockstep. */
static void test_random_messages(void)
{
    size_t max = 5000;
    unsigned char *buf = malloc(max);
    char want[65], got[65];

    CHECK(buf != NULL);
    if (buf == NULL) return;
    for (int iter = 0; iter < 300; iter++) {
        size_t len = (size_t)(rng_next() % max);
        fill_random(buf, len);
        reference_hex(buf, len, want);
        for (int p = 0; p < 2; p++) {
            if (!paths[p]) continue;
            use_path(p);
            struct digest_sha256 ctx;
            unsigned char bin[32];
            size_t at = 0;
            digest_sha256_init(&ctx);
            while (at < len) {
                size_t n = (size_t)(rng_next() % 300);
                if (n > len - at) n = len - at;
                digest_sha256_update(&ctx, buf + at, n);
                at += n;
            }
            digest_sha256_final(&ctx, bin);
            digest_hex(bin, got);
            CHECK_STR(got, want);
        }
    }
    digest_sha256_use_hw(true);
    free(buf);
}

/* A context keeps its path when the selection changes under it, and can be reused. */
static void test_context_keeps_path(void)
{
    struct digest_sha256 ctx;
    unsigned char bin[32];
    char hex[65];

    digest_sha256_use_hw(true);
    digest_sha256_init(&ctx);
    digest_sha256_update(&ctx, "a", 1);
    digest_sha256_use_hw(false);
    digest_sha256_update(&ctx, "bc", 2);
    digest_sha256_final(&ctx, bin);
    digest_hex(bin, hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

    digest_sha256_init(&ctx);
    CHECK(!ctx.hw);
    digest_sha256_final(&ctx, bin);
    digest_hex(bin, hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    digest_sha256_use_hw(true);
}

int main(void)
{
    const char *seed_env = getenv("CC_TEST_SEED");
    uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0) : 0x5eed5eed12345678ULL;

    rng_state = seed ? seed : 1;
    paths[0] = true;
    paths[1] = digest_sha256_hw_available();
    printf("test_digest: seed 0x%016" PRIx64 ", paths: mbedtls%s (default: %s)\n", seed,
           paths[1] ? " sha-ni" : " (no SHA-NI on this CPU)", digest_sha256_impl());

    RUN(test_impl_selection);
    RUN(test_hex);
    RUN(test_nist_vectors);
    RUN(test_million_a);
    RUN(test_every_length);
    RUN(test_random_splits);
    RUN(test_random_messages);
    RUN(test_context_keeps_path);
    return check_summary();
}
