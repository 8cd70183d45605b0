/*
 * trace.h - routing traces: for every step of the forward pass and every MoE
 * layer, the experts the router chose for each token and their weights,
 * written to a file while `run` or `serve` works (the writer wraps the expert
 * backend, so it sees exactly the ids the backend is given) and read back
 * with every field checked.  The format is versioned and documented here;
 * trace.c is its only writer and reader.
 *
 * File format, version 1: little-endian, no padding, a header then records.
 *
 *   header, 64 bytes
 *     0  u8[8]   magic "MOETRACE"
 *     8  u32     version, 1
 *    12  u32     flags: bit 0 set = weights recorded; the other bits are 0
 *    16  u32     n_layer: MoE layers traced (the trunk), 1..4096
 *    20  u32     n_expert: routed experts per layer, 1..65536 (ids fit a u16)
 *    24  u32     k: experts chosen per token, 1..min(n_expert, 256)
 *    28  u8[32]  model identity: SHA-256 of the GGUF bytes before the tensor
 *                data (proto.h's moe_model_identity, what workers check)
 *    60  u32     FNV-1a (32-bit) of bytes 0..59
 *
 *   step record: one per forward step (moe_fwd_step) that succeeded
 *     0  u32     tag "STEP"
 *     4  u32     n_tok: tokens the step ran, 1..2^24
 *     8  u64     step number: 0, 1, 2, ... in order; a gap is steps dropped
 *    16  n_tok x {u32 seq, u32 pos}: the token's sequence id and position, in
 *                batch order (a sequence's tokens have consecutive positions)
 *        u16     ids[n_layer][n_tok][k]: the chosen experts, best first,
 *                distinct within a token, each < n_expert
 *        f32     weights[n_layer][n_tok][k] (only with flags bit 0): the
 *                routing weights as renormalised, each in [0, 1], summing to
 *                1 within 1e-3 per token
 *        u64     sum64 of the record's bytes before it
 *
 *   end record: once, when the writer is closed
 *     0  u32     tag "TEND"
 *     4  u32     0
 *     8  u64     steps numbered (the last step number + 1, or 0)
 *    16  u64     steps dropped (not recorded because the writer fell behind)
 *    24  u64     FNV-1a (64-bit) of bytes 0..23
 *
 * A step is one moe_fwd_step call: a prompt in `run`, one scheduler step of
 * every active sequence in `serve` (prefill pieces, decode tokens, drafts
 * and tokens run again after a refused draft all count: they are what the
 * experts computed).  Prompt positions the prefix cache gave are not run,
 * so they are not in the trace.
 */
#ifndef MOE_TRACE_H
#define MOE_TRACE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/core.h"
#include "model/forward.h"

#define MOE_TRACE_VERSION     1
#define MOE_TRACE_WEIGHTS     1u /* flags bit 0 */
#define MOE_TRACE_HEADER_SIZE 64
#define MOE_TRACE_MAX_TOK     (1u << 24)
#define MOE_TRACE_MAX_LAYER   4096
#define MOE_TRACE_MAX_K       256

typedef struct moe_trace_info {
	uint32_t version; /* MOE_TRACE_VERSION (the writer sets it) */
	uint32_t flags;   /* MOE_TRACE_WEIGHTS or 0 */
	uint32_t n_layer, n_expert, k;
	uint8_t model_id[32];
} moe_trace_info;

/* ---- writer ---------------------------------------------------------------------- */

typedef struct moe_trace_writer moe_trace_writer;

/* Creates (or truncates) path, writes the header of info (n_layer, n_expert,
 * k, flags, model_id; version is set here) and starts the writer's thread.
 * Steps are kept in memory and handed to that thread in pieces of about
 * 1 MiB, or after a second (the first step at once), so the step path only
 * copies; while it is still writing, steps are
 * kept up to 64 MiB, and beyond that dropped (counted in the end record,
 * never waited for).  Errors: MOE_ERR_INVAL (info out of the ranges above),
 * MOE_ERR_IO (create or write the header: the detail names path and errno),
 * MOE_ERR_NOMEM, MOE_ERR_SYS (thread). */
moe_err moe_trace_writer_create(moe_trace_writer **out, const char *path,
                                const moe_trace_info *info);

/* The expert backend that records each layer's ids and weights into the
 * current step and then calls inner (copied by value); install it with
 * moe_fwd_set_experts (or moe_fwd_opts.experts).  Valid while w lives. */
moe_expert_backend moe_trace_writer_backend(moe_trace_writer *w, const moe_expert_backend *inner);

/* Around every moe_fwd_step on the context that uses the backend (on the
 * thread that runs the steps): begin takes the batch's tokens, with
 * slot_seq[slot] the sequence id of each of the context's n_slots slots
 * (NULL: the slot number; a token of another slot is not recorded); end
 * keeps the step if ok and every traced layer saw every token of it once,
 * else forgets it (a failed step is not numbered).  After a write error
 * they do nothing: tracing has stopped (the error was logged once). */
void moe_trace_writer_step_begin(moe_trace_writer *w, const moe_batch *b, const uint32_t *slot_seq,
                                 int n_slots);
void moe_trace_writer_step_end(moe_trace_writer *w, bool ok);

/* Steps recorded and dropped so far, and whether a write error stopped
 * tracing.  Any thread. */
void moe_trace_writer_counts(const moe_trace_writer *w, uint64_t *recorded, uint64_t *dropped,
                             bool *failed);

/* Writes what is kept and the end record, stops the thread and closes the
 * file.  Returns MOE_OK, or MOE_ERR_IO naming the file and the first write
 * (or close) error, which also stopped tracing when it happened.  Call once,
 * after the last step; destroy frees. */
moe_err moe_trace_writer_close(moe_trace_writer *w);

/* Closes w if moe_trace_writer_close was not called (its error is logged)
 * and frees it.  NULL is a no-op. */
void moe_trace_writer_destroy(moe_trace_writer *w);

/* ---- reader ---------------------------------------------------------------------- */

typedef struct moe_trace_reader moe_trace_reader;

/* Opens path and reads its header, checking every field (magic, version,
 * flags, ranges, checksum).  Errors: MOE_ERR_IO (open/read),
 * MOE_ERR_TRUNCATED, MOE_ERR_BAD_MAGIC, MOE_ERR_BAD_VERSION, MOE_ERR_FORMAT
 * (checksum), MOE_ERR_BAD_VALUE (a field out of range); the detail names the
 * file, the field, its value and what was wanted.  MOE_ERR_NOMEM. */
moe_err moe_trace_reader_open(moe_trace_reader **out, const char *path);

const moe_trace_info *moe_trace_reader_info(const moe_trace_reader *r);

typedef struct moe_trace_step {
	uint64_t step;
	uint32_t n_tok;
	const uint32_t *seq, *pos; /* [n_tok] */
	const uint16_t *ids;       /* [n_layer][n_tok][k] */
	const float *weights;      /* [n_layer][n_tok][k], or NULL when not recorded */
} moe_trace_step;

/* Reads the next record.  A step: *s filled (its arrays valid until the next
 * call), *done false.  The end record: *done true, *n_steps and *dropped set
 * from it (either may be NULL); nothing may follow it.  Every field is
 * checked as the header comment above says (step numbers increasing, the
 * end record's counts against the steps read, the checksum); a file that
 * ends before its end record is truncated.  Errors: MOE_ERR_TRUNCATED,
 * MOE_ERR_FORMAT (checksum, tag, bytes after the end), MOE_ERR_BAD_COUNT,
 * MOE_ERR_BAD_VALUE (the detail names the file, byte offset, step, layer,
 * token and field), MOE_ERR_IO, MOE_ERR_NOMEM, MOE_ERR_STATE (called after
 * the end). */
moe_err moe_trace_reader_next(moe_trace_reader *r, moe_trace_step *s, bool *done, uint64_t *n_steps,
                              uint64_t *dropped);

void moe_trace_reader_destroy(moe_trace_reader *r); /* NULL is a no-op */

#endif
