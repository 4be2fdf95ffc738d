/*
 * test_rng.h - the deterministic random numbers the unit tests share (xorshift64*): the same
 * sequence on every machine, so a failure reproduces. One generator state per test file.
 */
#ifndef SHADOW_TEST_RNG_H
#define SHADOW_TEST_RNG_H

#include <stdint.h>
#include <string.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static inline uint64_t rnd(void)
{
	uint64_t x = rng_state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545f4914f6cdd1dull;
}

/* Uniform in [lo, hi). */
static inline float rnd_uniform(float lo, float hi)
{
	return lo + (hi - lo) * (float)((rnd() >> 40) * 0x1p-24);
}

/* Roughly normal (sum of 4 uniforms), mean 0, std 1. */
static inline float rnd_normal(void)
{
	float s = 0;

	for (int i = 0; i < 4; i++)
		s += rnd_uniform(-1.0f, 1.0f);
	return s * 0.8660254f; /* sqrt(3 / 4) */
}

/* The float with these bits. */
static inline float f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

#endif /* SHADOW_TEST_RNG_H */
