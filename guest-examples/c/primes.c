/*
 * primes.c: the `primes` task function in C, built with clang and wasi-libc for wasm32-wasi.
 * Input "LO HI" on stdin; output the number of primes p with LO <= p < HI, in decimal, on stdout.
 * Same algorithm as guest-examples/primes, so both give the same answer for the same input.
 *
 *   clang --target=wasm32-wasi -O2 -o primes-c.wasm primes.c
 */
#include <inttypes.h>
#include <stdio.h>

static int is_prime(uint64_t n) {
    if (n < 4) return n >= 2;
    if (n % 2 == 0) return 0;
    for (uint64_t d = 3; d * d <= n; d += 2) {
        if (n % d == 0) return 0;
    }
    return 1;
}

static uint64_t count_primes(uint64_t lo, uint64_t hi) {
    uint64_t count = 0;
    for (uint64_t n = lo < 2 ? 2 : lo; n < hi; n++) count += is_prime(n);
    return count;
}

int main(void) {
    uint64_t lo, hi;
    if (scanf("%" SCNu64 " %" SCNu64, &lo, &hi) != 2 || lo > hi) {
        fprintf(stderr, "expected `LO HI` with LO <= HI\n");
        return 2;
    }
    printf("%" PRIu64, count_primes(lo, hi));
    return 0;
}
