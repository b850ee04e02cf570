/* The core's single-thread FP32 peak, for the benchmark's efficiency figure
 * (tests/bench.sh): twelve independent chains of 512-bit fused multiply-adds (256-bit
 * without AVX-512), enough to cover the FMA latency on two ports, timed over many short
 * runs and reported as the best, so that a busy machine's preemptions do not count.
 * No library measures this; it is the classic FMA-loop peak the issue asks for. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#endif

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    (void)argv;
    /* argc keeps the multiplier unknown to the compiler, so the loop is not folded. */
    vec a = SET1(argc * 1.0000001f), b = SET1(0.9999999f);
    vec c0 = SET1(0), c1 = SET1(1), c2 = SET1(2), c3 = SET1(3), c4 = SET1(4), c5 = SET1(5);
    vec c6 = SET1(6), c7 = SET1(7), c8 = SET1(8), c9 = SET1(9), c10 = SET1(10), c11 = SET1(11);
    const long iterations = 200000;
    double best = 1e30;
    for (int run = 0; run < 2000; run++) {
        double started = now();
        for (long i = 0; i < iterations; i++) {
#define STEP(c) c = FMA(c, a, b);
            STEP(c0) STEP(c1) STEP(c2) STEP(c3) STEP(c4) STEP(c5)
            STEP(c6) STEP(c7) STEP(c8) STEP(c9) STEP(c10) STEP(c11)
        }
        double elapsed = now() - started;
        if (elapsed < best) best = elapsed;
    }
    vec sum = ADD(ADD(ADD(c0, c1), ADD(c2, c3)), ADD(ADD(c4, c5), ADD(c6, c7)));
    sum = ADD(sum, ADD(ADD(c8, c9), ADD(c10, c11)));
    float lanes[LANES];
    STORE(lanes, sum);
    /* Printing a lane keeps the chains alive. */
    printf("{\"gflops\": %.2f, \"lanes\": %d, \"checksum\": %g}\n",
           iterations * 12.0 * LANES * 2 / best / 1e9, LANES, lanes[0]);
    return 0;
}
