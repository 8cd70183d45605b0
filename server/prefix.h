/*
 * prefix.h - private to server/: the prefix cache of `moemesh serve`.  It
 * keeps, for token sequences the server has run, the KV cache rows of their
 * positions and checkpoints of the recurrent (DeltaNet) state, so that a
 * request whose prompt extends a cached sequence starts at the longest
 * checkpoint and prefills only the rest.
 *
 * In memory: a radix tree over token ids.  A node holds a run of tokens, the
 * KV rows of their positions (kv_pos_bytes each, as moe_fwd_seq_kv_read
 * writes them: position-major, so runs concatenate), and optionally the
 * state after its last token (a checkpoint).  A lookup walks the request's
 * tokens and answers the deepest checkpoint on the path (for a model
 * without a recurrent state, state_bytes 0, the deepest position: KV rows
 * alone restore it, so a hit may end inside a run); a hit is read back run
 * by run.  The bytes of every node count against a budget; beyond it
 * the least recently used leaves (and checkpoints of inner nodes) go.
 *
 * On disk (optional): checkpoints at multiples of block tokens, one file per
 * block: the block's tokens, its KV rows and the state at its end, keyed by a
 * hash of every token up to its end and of the model's identity, so that a
 * chain of files rebuilds a prefix after a restart.  Every file is checked
 * on read (magic, version, identity, sizes, tokens, checksum); a file that
 * fails is ignored (and removed).  Files are written by a thread of the
 * cache's own from a bounded queue, so the scheduler never waits on the disk.
 *
 * Threads: one thread (the scheduler) calls everything but the statistics,
 * which any thread may read.
 */
#ifndef MOE_SERVER_PREFIX_H
#define MOE_SERVER_PREFIX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

typedef struct moe_prefix_cache moe_prefix_cache;

typedef struct moe_prefix_opts {
	size_t ram_bytes;     /* budget of the tree (KV rows and states); 0 = no cache */
	const char *dir;      /* disk tier, or NULL */
	uint64_t disk_bytes;  /* files kept in dir at most (0: 4 x ram_bytes); oldest go first */
	size_t kv_pos_bytes;  /* KV bytes of one position (moe_fwd_kv_pos_bytes) */
	size_t state_bytes;   /* bytes of one state (moe_fwd_state_size; may be 0) */
	uint32_t block;       /* disk checkpoints every block tokens (0: 256) */
	uint8_t identity[32]; /* the model and everything the bytes depend on (KV type...) */
} moe_prefix_opts;

/* Errors: MOE_ERR_INVAL (kv_pos_bytes 0), MOE_ERR_IO (dir cannot be made or
 * written), MOE_ERR_SYS (the writer thread), MOE_ERR_NOMEM. */
moe_err moe_prefix_cache_create(moe_prefix_cache **out, const moe_prefix_opts *o);

/* Flushes what the disk writer holds, stops it, frees everything; NULL is a
 * no-op. */
void moe_prefix_cache_destroy(moe_prefix_cache *c);

/* The longest prefix of tokens[0..n) no longer than max that the cache holds
 * with a checkpoint at its end: in memory, or rebuilt from the disk tier into
 * memory.  Returns its length (0: none); the hit is then readable with
 * moe_prefix_cache_read until the next call that changes the cache. */
size_t moe_prefix_cache_lookup(moe_prefix_cache *c, const int32_t *tokens, size_t n, size_t max);

/* Receives the KV rows of positions [p0, p1) (kv_pos_bytes each); returns
 * false to stop (the read then fails with MOE_ERR_CANCELED). */
typedef bool (*moe_prefix_kv_sink)(void *ctx, int64_t p0, int64_t p1, const void *kv);

/* Hands the hit of the last lookup (its length len) to sink run by run, in
 * position order, and copies the state at len into state (state_bytes).
 * Errors: MOE_ERR_STATE (len is not the last hit), MOE_ERR_CANCELED. */
moe_err moe_prefix_cache_read(moe_prefix_cache *c, size_t len, moe_prefix_kv_sink sink, void *ctx,
                              void *state);

/* Fills kv with the rows of positions [p0, p1) (kv_pos_bytes each). */
typedef moe_err (*moe_prefix_kv_source)(void *ctx, int64_t p0, int64_t p1, void *kv);

/* Adds the checkpoint after tokens[0..n): the state there (state_bytes) and
 * the KV rows of every position the tree does not hold yet on that path,
 * asked of source.  Evicts to stay within the budget (never the new
 * checkpoint's path); a sequence longer than the budget is not kept.  When n
 * is a multiple of the block and a disk tier is set, the block is queued for
 * the disk too.  Errors: those of source, MOE_ERR_NOMEM (the cache is as
 * before). */
moe_err moe_prefix_cache_insert(moe_prefix_cache *c, const int32_t *tokens, size_t n,
                                moe_prefix_kv_source source, void *ctx, const void *state);

typedef struct moe_prefix_stats {
	uint64_t lookups, hits;    /* lookups; those that found a prefix */
	uint64_t tokens_reused;    /* sum of the prefixes found */
	uint64_t disk_hits;        /* blocks read back from the disk tier */
	uint64_t disk_writes;      /* blocks written */
	uint64_t disk_rejects;     /* files that failed their checks (removed) */
	uint64_t evictions;        /* nodes or states dropped for the budget */
	size_t bytes;              /* held in memory: KV rows and states */
	size_t state_bytes;        /* of which checkpoints */
	size_t nodes, checkpoints; /* in the tree */
} moe_prefix_stats;

/* Safe from any thread. */
moe_prefix_stats moe_prefix_cache_stats(moe_prefix_cache *c);

#endif
