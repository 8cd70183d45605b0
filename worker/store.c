/*
 * store.c - the expert store: a worker's slice of the routed experts, read
 * out of the stacked *_exps tensors of a GGUF file with io_uring.
 *
 * Every maximal run of consecutive held experts of one tensor becomes one
 * buffer, read with O_DIRECT: the run's file range is widened to 4 KiB
 * boundaries, the buffer gets that widened size, and the experts' pointers
 * land inside it, so nothing is copied after the read. Reads of chunk_bytes
 * each are kept `depth` in flight. The buffers are registered with the ring
 * (READ_FIXED) when the kernel and RLIMIT_MEMLOCK allow; a file system that
 * refuses O_DIRECT gets buffered reads instead.
 *
 * What a store holds changes by slices: a load (moe_store_load_*) reads the
 * experts a new table adds into runs of its own, on any thread, while the
 * store goes on being read; its commit adds them; moe_expert_store_keep
 * drops the experts a table no longer names, giving back at once the pages
 * that hold nothing else and a run's mapping when its last expert goes.
 * Experts that stay are never moved or copied.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "worker/worker.h"

#define DIRECT_ALIGN 4096u

typedef struct store_mat {
	moe_type type;
	int64_t n_cols; /* input length (ne0) */
	int64_t n_rows; /* output length (ne1) */
	size_t expert_bytes;
	uint64_t file_off;   /* expert 0's first byte in its file */
	int split;           /* file of a split model (0 otherwise) */
	const void **expert; /* [n_expert], NULL = not held */
	int32_t *run_of;     /* [n_expert] the run holding it (valid where held) */
} store_mat;

typedef struct store_run {
	uint8_t *buf; /* [len], an anonymous mapping of map_len bytes */
	size_t map_len;
	size_t len;        /* multiple of DIRECT_ALIGN */
	uint64_t file_off; /* multiple of DIRECT_ALIGN */
	int split;         /* file of a split model (0 otherwise) */
	int mat;           /* layer * 3 + which */
	int e0, e1;        /* its experts */
	size_t skip;       /* expert e0's offset in buf */
	int n_live;        /* its experts still held */
} store_run;

struct moe_expert_store {
	int n_layer, n_expert;
	char *path;
	const moe_gguf *g;
	store_mat *mats; /* [n_layer][3] */
	store_run *runs;
	size_t n_runs;
	moe_store_stats st;
	bool lanes; /* Q2_K / Q3_K experts repacked after their read */
};

/* Experts being read into buffers of their own (moe_store_load_*). */
struct moe_store_load {
	const moe_expert_store *s;
	store_run *runs;
	size_t n_runs;
	uint64_t bytes, experts; /* expert bytes and (layer, expert) pairs it adds */
	moe_store_stats st;      /* bytes_read, seconds, direct, registered */
};

static const char *const which_name[3] = {"gate", "up", "down"};

static void runs_unmap(store_run *runs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (runs[i].buf != NULL)
			munmap(runs[i].buf, runs[i].map_len);
}

void moe_expert_store_destroy(moe_expert_store *s)
{
	if (s == NULL)
		return;
	runs_unmap(s->runs, s->n_runs);
	for (int i = 0; s->mats && i < s->n_layer * 3; i++) {
		free(s->mats[i].expert);
		free(s->mats[i].run_of);
	}
	free(s->runs);
	free(s->mats);
	free(s->path);
	free(s);
}

const void *moe_expert_store_get(const moe_expert_store *s, int layer, int which, int expert)
{
	if (s == NULL || layer < 0 || layer >= s->n_layer || which < 0 || which > 2 || expert < 0 ||
	    expert >= s->n_expert)
		return NULL;
	return s->mats[layer * 3 + which].expert[expert];
}

bool moe_expert_store_shape(const moe_expert_store *s, int layer, int which, moe_type *type,
                            int64_t *n_cols, int64_t *n_rows)
{
	if (s == NULL || layer < 0 || layer >= s->n_layer || which < 0 || which > 2)
		return false;
	const store_mat *m = &s->mats[layer * 3 + which];
	*type = m->type;
	*n_cols = m->n_cols;
	*n_rows = m->n_rows;
	return true;
}

moe_err moe_expert_store_set_lanes(moe_expert_store *s, bool on)
{
	if (s->st.experts_held != 0)
		return moe_fail(MOE_ERR_INVAL, "expert store: lanes set while holding %llu experts",
		                (unsigned long long)s->st.experts_held);
	s->lanes = on;
	return MOE_OK;
}

bool moe_expert_store_lanes(const moe_expert_store *s, int layer, int which)
{
	if (s == NULL || !s->lanes || layer < 0 || layer >= s->n_layer || which < 0 || which > 2)
		return false;
	const store_mat *m = &s->mats[layer * 3 + which];
	return moe_repack_row_size(m->type, m->n_cols) != 0;
}

/* The store's lanes: every Q2_K / Q3_K expert of ld's runs repacked in place
 * (the same size, moe_repack_rows). */
static void repack_runs(moe_store_load *ld)
{
	for (size_t i = 0; i < ld->n_runs; i++) {
		const store_run *r = &ld->runs[i];
		const store_mat *m = &ld->s->mats[r->mat];
		if (moe_repack_row_size(m->type, m->n_cols) == 0)
			continue;
		for (int e = r->e0; e < r->e1; e++) {
			uint8_t *p = r->buf + r->skip + (size_t)(e - r->e0) * m->expert_bytes;
			/* cannot fail: a checked shape of a type with a lanes layout */
			(void)moe_repack_rows(p, p, m->type, m->n_rows, m->n_cols);
		}
	}
}

moe_store_stats moe_expert_store_stats(const moe_expert_store *s)
{
	return s->st;
}

/* A run's buffer: an anonymous mapping (page-aligned, as O_DIRECT needs),
 * asked to be backed by transparent huge pages: faulting in and pinning
 * gigabytes of 4 KiB pages, not the disk, was what limited the load (cold
 * 3.9 GB of experts: 0.99 GB/s before). Returns NULL on failure. */
static uint8_t *run_alloc(size_t *map_len, size_t len)
{
	const size_t huge = 2u << 20;
	size_t n = len >= huge ? (len + huge - 1) / huge * huge : len;
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	if (n >= huge)
		(void)madvise(p, n, MADV_HUGEPAGE);
	*map_len = n;
	return p;
}

/* The tensor table: type, shape and file place of every layer's three
 * stacked expert tensors; empty expert tables. */
static moe_err read_table(moe_expert_store *s, const moe_gguf *g)
{
	for (int l = 0; l < s->n_layer; l++) {
		for (int w = 0; w < 3; w++) {
			char name[64];
			store_mat *m = &s->mats[l * 3 + w];
			const moe_gguf_tensor *t;

			snprintf(name, sizeof(name), "blk.%d.ffn_%s_exps.weight", l, which_name[w]);
			t = moe_gguf_find_tensor(g, name);
			if (t == NULL)
				return moe_fail(MOE_ERR_NOT_FOUND, "tensor %s is not in the file",
				                name);
			if (t->n_dims != 3 || t->ne[2] != s->n_expert)
				return moe_fail(
				    MOE_ERR_BAD_SHAPE,
				    "tensor %s has %u dims [%lld, %lld, %lld], expected "
				    "[*, *, %d]",
				    name, t->n_dims, (long long)t->ne[0], (long long)t->ne[1],
				    (long long)t->ne[2], s->n_expert);
			const moe_gguf *file = moe_gguf_split(g, (int)t->split);
			if (file == NULL)
				return moe_fail(MOE_ERR_INVAL, "tensor %s: split %u of %d", name,
				                t->split + 1, moe_gguf_n_splits(g));
			m->type = t->type;
			m->n_cols = t->ne[0];
			m->n_rows = t->ne[1];
			m->expert_bytes = moe_row_size(t->type, t->ne[0]) * (size_t)t->ne[1];
			m->file_off = moe_gguf_data_offset(file) + t->offset;
			m->split = (int)t->split;
			m->expert = calloc((size_t)s->n_expert, sizeof(void *));
			m->run_of = calloc((size_t)s->n_expert, sizeof(int32_t));
			if (m->expert == NULL || m->run_of == NULL)
				return moe_fail(MOE_ERR_NOMEM, "expert table");
		}
	}
	return MOE_OK;
}

/* Plans ld's runs: every maximal run of experts that held names and the
 * store lacks, per tensor; allocates their buffers. */
static moe_err plan(moe_store_load *ld, const uint8_t *held)
{
	const moe_expert_store *s = ld->s;
	size_t max_runs = (size_t)s->n_layer * 3 * (size_t)(s->n_expert / 2 + 1);
	ld->runs = calloc(max_runs, sizeof(*ld->runs));
	if (ld->runs == NULL)
		return moe_fail(MOE_ERR_NOMEM, "expert store runs");
	for (int l = 0; l < s->n_layer; l++) {
		for (int w = 0; w < 3; w++) {
			const store_mat *m = &s->mats[l * 3 + w];
			const uint8_t *h = held + (size_t)l * (size_t)s->n_expert;
			for (int e0 = 0; e0 < s->n_expert;) {
				int e1;
				if (!h[e0] || m->expert[e0] != NULL) {
					e0++;
					continue;
				}
				for (e1 = e0; e1 < s->n_expert && h[e1] && m->expert[e1] == NULL;)
					e1++;
				uint64_t a = m->file_off + (uint64_t)e0 * m->expert_bytes;
				uint64_t b = a + (uint64_t)(e1 - e0) * m->expert_bytes;
				uint64_t a_al = a / DIRECT_ALIGN * DIRECT_ALIGN;
				uint64_t b_al =
				    (b + DIRECT_ALIGN - 1) / DIRECT_ALIGN * DIRECT_ALIGN;
				store_run *r = &ld->runs[ld->n_runs++];
				r->file_off = a_al;
				r->len = (size_t)(b_al - a_al);
				r->split = m->split;
				r->mat = l * 3 + w;
				r->e0 = e0;
				r->e1 = e1;
				r->skip = (size_t)(a - a_al);
				r->n_live = e1 - e0;
				r->buf = run_alloc(&r->map_len, r->len);
				if (r->buf == NULL)
					return moe_fail(MOE_ERR_NOMEM,
					                "%zu bytes for experts %d..%d of "
					                "blk.%d.ffn_%s_exps",
					                r->len, e0, e1 - 1, l, which_name[w]);
				ld->bytes += (uint64_t)(e1 - e0) * m->expert_bytes;
				if (w == 0)
					ld->experts += (uint64_t)(e1 - e0);
				e0 = e1;
			}
		}
	}
	return MOE_OK;
}

typedef struct chunk {
	size_t run;
	size_t off; /* within the run */
	size_t len;
} chunk;

/* Reads every run through the ring. Returns MOE_ERR_UNSUPPORTED if the first
 * O_DIRECT read is refused (the caller retries buffered). */
static moe_err read_all(moe_store_load *s, const int *fds, const uint64_t *file_sizes, bool direct,
                        const moe_store_opts *o)
{
	unsigned depth = o && o->depth ? o->depth : 16;
	size_t chunk_bytes = o && o->chunk_bytes ? o->chunk_bytes : (1u << 20);
	struct io_uring ring;
	struct iovec *iov = NULL;
	chunk *inflight = NULL;
	size_t next_run = 0, next_off = 0, n_inflight = 0;
	uint64_t done = 0, total = 0;
	bool registered = false;
	moe_err err = MOE_OK;
	int rc;

	chunk_bytes = (chunk_bytes + DIRECT_ALIGN - 1) / DIRECT_ALIGN * DIRECT_ALIGN;
	for (size_t i = 0; i < s->n_runs; i++)
		total += s->runs[i].len;
	rc = io_uring_queue_init(depth, &ring, 0);
	if (rc < 0)
		return moe_fail(MOE_ERR_SYS, "io_uring_queue_init: %s", strerror(-rc));
	inflight = calloc(depth, sizeof(*inflight));
	if (inflight == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "io_uring slots");
		goto out_ring;
	}
	/* Register the run buffers (at most UIO_MAXIOV, each < 1 GiB). */
	if (s->n_runs > 0 && s->n_runs <= 1024) {
		bool fits = true;
		iov = calloc(s->n_runs, sizeof(*iov));
		for (size_t i = 0; iov && i < s->n_runs; i++) {
			iov[i].iov_base = s->runs[i].buf;
			iov[i].iov_len = s->runs[i].len;
			fits = fits && s->runs[i].len < (1u << 30);
		}
		if (iov && fits && io_uring_register_buffers(&ring, iov, (unsigned)s->n_runs) == 0)
			registered = true;
	}
	s->st.registered = registered;

	for (;;) {
		/* fill the ring */
		while (n_inflight < depth && next_run < s->n_runs) {
			store_run *r = &s->runs[next_run];
			size_t len =
			    r->len - next_off < chunk_bytes ? r->len - next_off : chunk_bytes;
			struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
			unsigned slot;

			if (sqe == NULL)
				break;
			for (slot = 0; inflight[slot].len != 0; slot++)
				;
			inflight[slot] = (chunk){next_run, next_off, len};
			if (registered)
				io_uring_prep_read_fixed(sqe, fds[r->split], r->buf + next_off,
				                         (unsigned)len, r->file_off + next_off,
				                         (int)next_run);
			else
				io_uring_prep_read(sqe, fds[r->split], r->buf + next_off,
				                   (unsigned)len, r->file_off + next_off);
			io_uring_sqe_set_data64(sqe, slot);
			n_inflight++;
			next_off += len;
			if (next_off == r->len) {
				next_run++;
				next_off = 0;
			}
		}
		if (n_inflight == 0)
			break;
		if (o && o->stop && o->stop(o->progress_ctx)) {
			err = moe_fail(MOE_ERR_CLOSED, "expert load stopped");
			goto out_drain;
		}
		rc = io_uring_submit_and_wait(&ring, 1);
		if (rc < 0 && rc != -EINTR) {
			err = moe_fail(MOE_ERR_SYS, "io_uring_submit: %s", strerror(-rc));
			goto out_drain;
		}
		struct io_uring_cqe *cqe;
		while (io_uring_peek_cqe(&ring, &cqe) == 0) {
			unsigned slot = (unsigned)io_uring_cqe_get_data64(cqe);
			int res = cqe->res;
			chunk c = inflight[slot];
			store_run *r = &s->runs[c.run];

			io_uring_cqe_seen(&ring, cqe);
			inflight[slot].len = 0;
			n_inflight--;
			if (res == -EINVAL && direct && done == 0) {
				err = moe_fail(MOE_ERR_UNSUPPORTED, "O_DIRECT read refused");
				goto out_drain;
			}
			if (res < 0) {
				err = moe_fail(MOE_ERR_IO, "read of %zu bytes at %llu: %s", c.len,
				               (unsigned long long)(r->file_off + c.off),
				               strerror(-res));
				goto out_drain;
			}
			/* A short read that stops before the end of file is finished with
			 * plain preads; one that reaches it is the run's 4 KiB slack. */
			for (uint64_t end = r->file_off + c.off + (uint64_t)res;
			     res >= 0 && (size_t)res < c.len && end < file_sizes[r->split];
			     end = r->file_off + c.off + (uint64_t)res) {
				ssize_t n = pread(fds[r->split], r->buf + c.off + res,
				                  c.len - (size_t)res, (off_t)end);
				if (n <= 0) {
					err = moe_fail(MOE_ERR_IO, "short read at %llu: %s",
					               (unsigned long long)end,
					               n < 0 ? strerror(errno) : "end of file");
					goto out_drain;
				}
				res += (int)n;
			}
			done += c.len;
			if (o && o->progress)
				o->progress(o->progress_ctx, done, total);
		}
	}
	s->st.bytes_read = done;
	goto out_unregister;

out_drain:
	while (n_inflight > 0) {
		struct io_uring_cqe *cqe;
		if (io_uring_wait_cqe(&ring, &cqe) != 0)
			break;
		io_uring_cqe_seen(&ring, cqe);
		n_inflight--;
	}
out_unregister:
	if (registered)
		io_uring_unregister_buffers(&ring);
	free(iov);
	free(inflight);
out_ring:
	io_uring_queue_exit(&ring);
	return err;
}

/* Closes fds[0..n) that are open and marks them closed. */
static void close_all(int *fds, int n)
{
	for (int i = 0; i < n; i++) {
		if (fds[i] >= 0)
			close(fds[i]);
		fds[i] = -1;
	}
}

/* Opens every file of the model (path for the first, the reader's own paths
 * for the other splits) and checks each is the size the reader saw. */
static moe_err open_all(int *fds, uint64_t *sizes, const char *path, const moe_gguf *g, bool direct)
{
	for (int i = 0; i < moe_gguf_n_splits(g); i++) {
		const moe_gguf *f = moe_gguf_split(g, i);
		const char *p = i == 0 ? path : moe_gguf_path(f);
		struct stat sb;
		if (p == NULL)
			return moe_fail(MOE_ERR_INVAL, "expert store: split %d has no path", i + 1);
		fds[i] = open(p, O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
		if (fds[i] < 0)
			return moe_fail(errno == EINVAL && direct ? MOE_ERR_UNSUPPORTED
			                                          : MOE_ERR_IO,
			                "open %s: %s", p, strerror(errno));
		if (fstat(fds[i], &sb) != 0)
			return moe_fail(MOE_ERR_IO, "stat %s: %s", p, strerror(errno));
		if ((uint64_t)sb.st_size != moe_gguf_file_size(f))
			return moe_fail(MOE_ERR_MISMATCH, "%s is %lld bytes, the opened GGUF %zu",
			                p, (long long)sb.st_size, moe_gguf_file_size(f));
		sizes[i] = (uint64_t)sb.st_size;
	}
	return MOE_OK;
}

moe_err moe_expert_store_create(moe_expert_store **out, const char *path, const moe_gguf *g,
                                int n_layer, int n_expert)
{
	moe_err err;
	if (n_layer <= 0 || n_expert <= 0 || path == NULL || g == NULL)
		return moe_fail(MOE_ERR_INVAL, "expert store: %d layers, %d experts", n_layer,
		                n_expert);
	moe_expert_store *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return moe_fail(MOE_ERR_NOMEM, "expert store");
	s->n_layer = n_layer;
	s->n_expert = n_expert;
	s->g = g;
	s->path = strdup(path);
	s->mats = calloc((size_t)n_layer * 3, sizeof(*s->mats));
	if (s->mats == NULL || s->path == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "expert store tables");
		goto out_destroy;
	}
	if ((err = read_table(s, g)) != MOE_OK)
		goto out_destroy;
	*out = s;
	return MOE_OK;

out_destroy:
	moe_expert_store_destroy(s);
	return err;
}

void moe_store_load_destroy(moe_store_load *ld)
{
	if (ld == NULL)
		return;
	runs_unmap(ld->runs, ld->n_runs);
	free(ld->runs);
	free(ld);
}

moe_err moe_store_load_prepare(moe_store_load **out, const moe_expert_store *s, const uint8_t *held)
{
	if (s == NULL || held == NULL)
		return moe_fail(MOE_ERR_INVAL, "expert load: no store or table");
	moe_store_load *ld = calloc(1, sizeof(*ld));
	if (ld == NULL)
		return moe_fail(MOE_ERR_NOMEM, "expert load");
	ld->s = s;
	moe_err err = plan(ld, held);
	if (err != MOE_OK) {
		moe_store_load_destroy(ld);
		return err;
	}
	*out = ld;
	return MOE_OK;
}

uint64_t moe_store_load_bytes(const moe_store_load *ld)
{
	return ld->bytes;
}

moe_err moe_store_load_read(moe_store_load *ld, const moe_store_opts *opts)
{
	const moe_expert_store *s = ld->s;
	double t0 = moe_now_s();
	bool direct = !(opts && opts->no_direct);
	const int n_files = moe_gguf_n_splits(s->g);
	int *fds = malloc((size_t)n_files * sizeof(*fds));
	uint64_t *sizes = calloc((size_t)n_files, sizeof(*sizes));
	moe_err err = MOE_OK;

	if (fds == NULL || sizes == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "expert store tables");
		goto out_free;
	}
	for (int i = 0; i < n_files; i++)
		fds[i] = -1;
	while (ld->n_runs > 0) {
		err = open_all(fds, sizes, s->path, s->g, direct);
		if (err == MOE_OK)
			err = read_all(ld, fds, sizes, direct, opts);
		close_all(fds, n_files);
		if (err == MOE_ERR_UNSUPPORTED && direct) {
			direct = false; /* the file system refuses O_DIRECT: buffered reads */
			continue;
		}
		break;
	}
	if (err == MOE_OK && s->lanes)
		repack_runs(ld);
	ld->st.direct = direct;
	ld->st.seconds = moe_now_s() - t0;
out_free:
	free(fds);
	free(sizes);
	return err;
}

moe_err moe_store_load_commit(moe_expert_store *s, moe_store_load *ld)
{
	store_run *runs = realloc(s->runs, (s->n_runs + ld->n_runs + 1) * sizeof(*runs));
	if (runs == NULL)
		return moe_fail(MOE_ERR_NOMEM, "expert store: %zu runs", s->n_runs + ld->n_runs);
	s->runs = runs;
	for (size_t i = 0; i < ld->n_runs; i++) {
		store_run *r = &ld->runs[i];
		store_mat *m = &s->mats[r->mat];
		for (int e = r->e0; e < r->e1; e++) {
			m->expert[e] = r->buf + r->skip + (size_t)(e - r->e0) * m->expert_bytes;
			m->run_of[e] = (int32_t)s->n_runs;
		}
		s->runs[s->n_runs++] = *r;
	}
	s->st.bytes_held += ld->bytes;
	s->st.experts_held += ld->experts;
	s->st.bytes_read = ld->st.bytes_read;
	s->st.seconds = ld->st.seconds;
	s->st.direct = ld->st.direct;
	s->st.registered = ld->st.registered;
	ld->n_runs = 0; /* the buffers are the store's now */
	moe_store_load_destroy(ld);
	return MOE_OK;
}

void moe_expert_store_keep(moe_expert_store *s, const uint8_t *held, uint64_t *bytes_dropped,
                           uint64_t *experts_dropped)
{
	const size_t page = (size_t)sysconf(_SC_PAGESIZE);
	uint64_t bytes = 0, experts = 0;
	for (int l = 0; l < s->n_layer; l++) {
		for (int w = 0; w < 3; w++) {
			store_mat *m = &s->mats[l * 3 + w];
			for (int e = 0; e < s->n_expert; e++) {
				if (m->expert[e] == NULL ||
				    held[(size_t)l * (size_t)s->n_expert + e])
					continue;
				store_run *r = &s->runs[m->run_of[e]];
				/* the pages that hold nothing but this expert go back now */
				const uintptr_t a = (uintptr_t)m->expert[e];
				const uintptr_t a_pg = (a + page - 1) / page * page;
				const uintptr_t b_pg = (a + m->expert_bytes) / page * page;
				if (b_pg > a_pg)
					(void)madvise((void *)a_pg, b_pg - a_pg, MADV_DONTNEED);
				m->expert[e] = NULL;
				bytes += m->expert_bytes;
				experts += w == 0;
				if (--r->n_live == 0) {
					munmap(r->buf, r->map_len);
					r->buf = NULL;
				}
			}
		}
	}
	/* compact the runs: those with no expert left are gone */
	size_t k = 0;
	for (size_t i = 0; i < s->n_runs; i++) {
		if (s->runs[i].buf == NULL)
			continue;
		store_run *r = &s->runs[i];
		store_mat *m = &s->mats[r->mat];
		for (int e = r->e0; e < r->e1; e++)
			if (m->expert[e] != NULL)
				m->run_of[e] = (int32_t)k;
		s->runs[k++] = *r;
	}
	s->n_runs = k;
	s->st.bytes_held -= bytes;
	s->st.experts_held -= experts;
	if (bytes_dropped)
		*bytes_dropped = bytes;
	if (experts_dropped)
		*experts_dropped = experts;
}

moe_err moe_expert_store_load(moe_expert_store **out, const char *path, const moe_gguf *g,
                              int n_layer, int n_expert, const uint8_t *held,
                              const moe_store_opts *opts)
{
	moe_expert_store *s = NULL;
	moe_store_load *ld = NULL;
	moe_err err;
	if (held == NULL)
		return moe_fail(MOE_ERR_INVAL, "expert store: no held table");
	if ((err = moe_expert_store_create(&s, path, g, n_layer, n_expert)) != MOE_OK)
		return err;
	if ((err = moe_store_load_prepare(&ld, s, held)) != MOE_OK ||
	    (err = moe_store_load_read(ld, opts)) != MOE_OK ||
	    (err = moe_store_load_commit(s, ld)) != MOE_OK)
		goto out_destroy;
	*out = s;
	return MOE_OK;

out_destroy:
	moe_store_load_destroy(ld);
	moe_expert_store_destroy(s);
	return err;
}
