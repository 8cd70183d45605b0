/*
 * trace_bytes.h - the routing-trace format's little-endian fields and
 * checksums as model/trace.h documents them, written here independently of
 * model/trace.c so that test_trace.c and fuzz/fuzz_trace.c check the
 * writer and reader against the document, not against themselves.
 */
#ifndef MOE_TESTS_TRACE_BYTES_H
#define MOE_TESTS_TRACE_BYTES_H

#include <stddef.h>
#include <stdint.h>

static inline uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t rd64(const uint8_t *p)
{
	return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static inline void wr32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline void wr64(uint8_t *p, uint64_t v)
{
	wr32(p, (uint32_t)v);
	wr32(p + 4, (uint32_t)(v >> 32));
}

/* FNV-1a over bytes: the header checksum. */
static inline uint32_t fnv32(const uint8_t *p, size_t n)
{
	uint32_t h = 0x811c9dc5u;
	while (n--)
		h = (h ^ *p++) * 0x01000193u;
	return h;
}

/* sum64 as trace.h defines it: FNV-1a over little-endian 8-byte words, the
 * last one zero-padded. */
static inline uint64_t fnv64(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i += 8) {
		uint64_t w = 0;
		for (size_t j = 0; j < 8 && i + j < n; j++)
			w |= (uint64_t)p[i + j] << (8 * j);
		h = (h ^ w) * 0x100000001b3ull;
	}
	return h;
}

#endif
