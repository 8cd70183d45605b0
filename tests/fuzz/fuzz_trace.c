/*
 * fuzz_trace.c - libFuzzer harness for the routing-trace reader
 * (model/trace.h): the input is a whole trace file whose checksums are
 * recomputed here first (else nearly every mutation would stop at them), so
 * the field checks behind them are what gets fuzzed.  Every step the reader
 * accepts is encoded again from what it returned and must equal the input's
 * bytes at its offset (the decode is exact); the end record must end the
 * input.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model/model.h"
#include "tests/fuzz/fuzz.h"
#include "tests/trace_bytes.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

/* Bytes of a step record as trace.h lays it out; 0 if absurd. */
static size_t step_bytes(uint32_t n_layer, uint32_t k, bool wts, uint64_t n_tok)
{
	if (n_layer > 4096 || k > 256 || n_tok > (1u << 24))
		return 0;
	const uint64_t cells = (uint64_t)n_layer * n_tok * k;
	return (size_t)(16 + 8 * n_tok + 2 * cells + (wts ? 4 * cells : 0) + 8);
}

/* Recomputes every checksum the input's layout reaches. */
static void seal(uint8_t *b, size_t n)
{
	if (n < 64)
		return;
	wr32(b + 60, fnv32(b, 60));
	const uint32_t flags = rd32(b + 12), n_layer = rd32(b + 16), k = rd32(b + 24);
	size_t off = 64;
	while (off + 16 <= n) {
		const uint32_t tag = rd32(b + off);
		size_t size =
		    tag == 0x444e4554u ? 32 : step_bytes(n_layer, k, flags & 1, rd32(b + off + 4));
		if (size < 16 || size > n - off)
			return;
		wr64(b + off + size - 8, fnv64(b + off, size - 8));
		off += size;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > (1u << 20))
		return 0;
	uint8_t *b = malloc(size + 1);
	if (b == NULL)
		return 0;
	memcpy(b, data, size);
	seal(b, size);
	const int fd = memfd_create("trace", MFD_CLOEXEC);
	if (fd < 0 || write(fd, b, size) != (ssize_t)size) {
		if (fd >= 0)
			close(fd);
		free(b);
		return 0;
	}
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	moe_trace_reader *r = NULL;
	if (moe_trace_reader_open(&r, path) == MOE_OK) {
		const moe_trace_info *h = moe_trace_reader_info(r);
		const bool wts = h->flags & MOE_TRACE_WEIGHTS;
		size_t off = 64;
		for (int i = 0; i < 100000; i++) {
			moe_trace_step s;
			bool done;
			uint64_t n_steps, dropped;
			if (moe_trace_reader_next(r, &s, &done, &n_steps, &dropped) != MOE_OK)
				break;
			if (done) {
				if (off + 32 != size)
					abort(); /* the end record ends the file */
				break;
			}
			const size_t sz = step_bytes(h->n_layer, h->k, wts, s.n_tok);
			if (sz == 0 || sz > size - off)
				abort();
			uint8_t *e = malloc(sz);
			if (e == NULL)
				break;
			wr32(e, 0x50455453u);
			wr32(e + 4, s.n_tok);
			wr64(e + 8, s.step);
			uint8_t *p = e + 16;
			for (uint32_t t = 0; t < s.n_tok; t++, p += 8) {
				wr32(p, s.seq[t]);
				wr32(p + 4, s.pos[t]);
			}
			const size_t cells = (size_t)h->n_layer * s.n_tok * h->k;
			for (size_t c = 0; c < cells; c++, p += 2) {
				p[0] = (uint8_t)s.ids[c];
				p[1] = (uint8_t)(s.ids[c] >> 8);
			}
			for (size_t c = 0; wts && c < cells; c++, p += 4) {
				uint32_t u;
				memcpy(&u, &s.weights[c], 4);
				wr32(p, u);
			}
			wr64(p, fnv64(e, sz - 8));
			if (memcmp(e, b + off, sz) != 0)
				abort(); /* the reader's decode is not the input */
			free(e);
			off += sz;
		}
	}
	moe_trace_reader_destroy(r);
	close(fd);
	free(b);
	return 0;
}
