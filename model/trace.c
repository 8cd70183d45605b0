/*
 * trace.c - routing traces (trace.h): the file format's one writer (an
 * expert-backend wrapper that copies each layer's ids and weights into the
 * step's record, and a thread that writes the kept records in large pieces)
 * and its one reader, which checks every field.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/trace.h"

#define TAG_STEP   0x50455453u /* "STEP" little-endian */
#define TAG_END    0x444e4554u /* "TEND" */
#define FLUSH_AT   ((size_t)1 << 20)
#define KEEP_LIMIT ((size_t)64 << 20)
#define END_SIZE   32

static const uint8_t magic[8] = {'M', 'O', 'E', 'T', 'R', 'A', 'C', 'E'};

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "trace.c stores the file's little-endian ids and weights as they lie in memory");

/* ---- little-endian fields and checksums ---------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++)
		v |= (uint32_t)p[i] << (8 * i);
	return v;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static uint32_t fnv32(const uint8_t *p, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

/* The records' checksum: FNV-1a's step over 64-bit little-endian words (the
 * last one padded with zeros), 8 bytes a multiply: a step record of 256
 * tokens of the 80B model is 740 KB, which byte-wise FNV takes a millisecond
 * over.  Each step is a bijection of the state, so any one changed word
 * changes the sum. */
static uint64_t sum64(const uint8_t *p, size_t n)
{
	uint64_t h = 14695981039346656037ull;
	for (; n >= 8; p += 8, n -= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		h = (h ^ w) * 1099511628211ull;
	}
	if (n > 0) {
		uint8_t t[8] = {0};
		memcpy(t, p, n);
		uint64_t w;
		memcpy(&w, t, 8);
		h = (h ^ w) * 1099511628211ull;
	}
	return h;
}

/* Bytes of a step record of n_tok tokens. */
static size_t step_size(const moe_trace_info *h, uint32_t n_tok)
{
	const size_t cells = (size_t)h->n_layer * n_tok * h->k;
	return 16 + 8 * (size_t)n_tok + 2 * cells +
	       ((h->flags & MOE_TRACE_WEIGHTS) ? 4 * cells : 0) + 8;
}

static moe_err check_info(const moe_trace_info *h)
{
	if (h->n_layer < 1 || h->n_layer > MOE_TRACE_MAX_LAYER)
		return moe_fail(MOE_ERR_BAD_VALUE, "trace: n_layer %u not in [1, %d]", h->n_layer,
		                MOE_TRACE_MAX_LAYER);
	if (h->n_expert < 1 || h->n_expert > 65536)
		return moe_fail(MOE_ERR_BAD_VALUE, "trace: n_expert %u not in [1, 65536]",
		                h->n_expert);
	if (h->k < 1 || h->k > h->n_expert || h->k > MOE_TRACE_MAX_K)
		return moe_fail(MOE_ERR_BAD_VALUE, "trace: k %u not in [1, min(n_expert %u, %d)]",
		                h->k, h->n_expert, MOE_TRACE_MAX_K);
	if ((h->flags & ~MOE_TRACE_WEIGHTS) != 0)
		return moe_fail(MOE_ERR_BAD_VALUE, "trace: flags 0x%x: only bit 0 is defined",
		                h->flags);
	return MOE_OK;
}

/* ---- writer -------------------------------------------------------------------- */

typedef struct buf {
	uint8_t *p;
	size_t len, cap;
} buf;

struct moe_trace_writer {
	moe_trace_info h;
	char *path;
	int fd;
	moe_expert_backend inner;

	/* the step thread's */
	buf cur;           /* records kept, not yet handed over */
	size_t rec;        /* offset of the open record in cur */
	uint32_t rec_ntok; /* its tokens; 0: no record open */
	bool dropping;     /* the open step is dropped (no room) */
	bool bad;          /* the open step saw a layer it cannot place */
	uint32_t *done;    /* [n_layer] tokens recorded per layer in the open step */
	uint64_t next_step;
	double handed_at; /* when records were last handed over (0: never) */

	/* shared, under mu */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t thread;
	bool thread_started, busy, quit, closed;
	buf out; /* the piece the thread writes */
	char err[256];

	_Atomic uint64_t recorded, dropped;
	_Atomic bool failed;
};

static bool write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		const ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			if (w == 0)
				errno = EIO;
			return false;
		}
		p += w;
		n -= (size_t)w;
	}
	return true;
}

/* Under mu: records the first error and stops tracing. */
static void fail_locked(moe_trace_writer *w, const char *what, int e)
{
	if (atomic_load(&w->failed))
		return;
	snprintf(w->err, sizeof w->err, "trace %s: %s: %s", w->path, what, strerror(e));
	atomic_store(&w->failed, true);
	moe_log(MOE_LOG_ERROR, "%s; tracing stopped", w->err);
}

static void *writer_main(void *arg)
{
	moe_trace_writer *w = arg;
	pthread_mutex_lock(&w->mu);
	for (;;) {
		while (!w->busy && !w->quit)
			pthread_cond_wait(&w->cv, &w->mu);
		if (!w->busy)
			break;
		pthread_mutex_unlock(&w->mu);
		const bool ok = atomic_load(&w->failed) || write_all(w->fd, w->out.p, w->out.len);
		const int e = errno;
		pthread_mutex_lock(&w->mu);
		if (!ok)
			fail_locked(w, "write", e);
		w->out.len = 0;
		w->busy = false;
		pthread_cond_broadcast(&w->cv);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

/* Hands cur to the thread if it is idle (wait: until it is); true if it did. */
static bool hand_over(moe_trace_writer *w, bool wait)
{
	bool handed = false;
	pthread_mutex_lock(&w->mu);
	while (wait && w->busy)
		pthread_cond_wait(&w->cv, &w->mu);
	if (!w->busy && w->cur.len > 0) {
		const buf t = w->out;
		w->out = w->cur;
		w->cur = t;
		w->cur.len = 0;
		w->busy = true;
		handed = true;
		pthread_cond_broadcast(&w->cv);
	}
	pthread_mutex_unlock(&w->mu);
	return handed;
}

static bool reserve(buf *b, size_t more)
{
	if (b->len + more <= b->cap)
		return true;
	size_t cap = b->cap ? b->cap : FLUSH_AT * 2;
	while (cap < b->len + more)
		cap *= 2;
	uint8_t *p = realloc(b->p, cap);
	if (p == NULL)
		return false;
	b->p = p;
	b->cap = cap;
	return true;
}

moe_err moe_trace_writer_create(moe_trace_writer **out, const char *path,
                                const moe_trace_info *info)
{
	*out = NULL;
	moe_trace_info h = *info;
	h.version = MOE_TRACE_VERSION;
	moe_err err = check_info(&h);
	if (err != MOE_OK)
		return moe_fail(MOE_ERR_INVAL, "%s", moe_err_detail());
	moe_trace_writer *w = calloc(1, sizeof *w);
	if (w == NULL)
		return moe_fail(MOE_ERR_NOMEM, "trace: writer");
	w->h = h;
	w->fd = -1;
	w->path = strdup(path);
	w->done = calloc(h.n_layer, sizeof *w->done);
	if (w->path == NULL || w->done == NULL) {
		err = moe_fail(MOE_ERR_NOMEM, "trace: writer");
		goto out_free;
	}
	w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (w->fd < 0) {
		err = moe_fail(MOE_ERR_IO, "trace: cannot create %s: %s", path, strerror(errno));
		goto out_free;
	}
	uint8_t hd[MOE_TRACE_HEADER_SIZE];
	memcpy(hd, magic, 8);
	put32(hd + 8, h.version);
	put32(hd + 12, h.flags);
	put32(hd + 16, h.n_layer);
	put32(hd + 20, h.n_expert);
	put32(hd + 24, h.k);
	memcpy(hd + 28, h.model_id, 32);
	put32(hd + 60, fnv32(hd, 60));
	if (!write_all(w->fd, hd, sizeof hd)) {
		err = moe_fail(MOE_ERR_IO, "trace: write %s: %s", path, strerror(errno));
		goto out_close;
	}
	if (pthread_mutex_init(&w->mu, NULL) != 0) {
		err = moe_fail(MOE_ERR_SYS, "trace: pthread_mutex_init");
		goto out_close;
	}
	if (pthread_cond_init(&w->cv, NULL) != 0) {
		err = moe_fail(MOE_ERR_SYS, "trace: pthread_cond_init");
		goto out_mutex;
	}
	const int rc = pthread_create(&w->thread, NULL, writer_main, w);
	if (rc != 0) {
		err = moe_fail(MOE_ERR_SYS, "trace: pthread_create: %s", strerror(rc));
		goto out_cond;
	}
	w->thread_started = true;
	*out = w;
	return MOE_OK;

out_cond:
	pthread_cond_destroy(&w->cv);
out_mutex:
	pthread_mutex_destroy(&w->mu);
out_close:
	close(w->fd);
out_free:
	free(w->done);
	free(w->path);
	free(w);
	return err;
}

static moe_err rec_start(void *ctx, int il, int64_t n_tok, const float *x, const int32_t *ids,
                         const float *weights, int n_used)
{
	moe_trace_writer *w = ctx;
	if (w->rec_ntok > 0 && !w->dropping && !w->bad) {
		const uint32_t nt = w->rec_ntok, k = w->h.k;
		if (il < 0 || (uint32_t)il >= w->h.n_layer || (uint32_t)n_used != k || n_tok < 0 ||
		    (uint64_t)w->done[il] + (uint64_t)n_tok > nt) {
			w->bad = true;
		} else {
			uint8_t *base = w->cur.p + w->rec + 16 + 8 * (size_t)nt;
			const size_t cells = (size_t)w->h.n_layer * nt * k;
			const size_t at = ((size_t)il * nt + w->done[il]) * k;
			const size_t n = (size_t)n_tok * k;
			/* the file's little-endian fields as plain stores (the hosts are
			 * little-endian: x86, aarch64), which the compiler vectorises */
			uint32_t over = 0;
			uint16_t *dst = (uint16_t *)(void *)(base + 2 * at);
			for (size_t i = 0; i < n; i++) {
				over |= (uint32_t)ids[i] >= w->h.n_expert; /* a negative id too */
				dst[i] = (uint16_t)ids[i];
			}
			if (over)
				w->bad = true;
			if (w->h.flags & MOE_TRACE_WEIGHTS)
				memcpy(base + 2 * cells + 4 * at, weights, 4 * n);
			w->done[il] += (uint32_t)n_tok;
		}
	}
	return w->inner.start(w->inner.ctx, il, n_tok, x, ids, weights, n_used);
}

static moe_err rec_finish(void *ctx, moe_fix_t *acc)
{
	moe_trace_writer *w = ctx;
	return w->inner.finish(w->inner.ctx, acc);
}

moe_expert_backend moe_trace_writer_backend(moe_trace_writer *w, const moe_expert_backend *inner)
{
	w->inner = *inner;
	return (moe_expert_backend){.ctx = w, .start = rec_start, .finish = rec_finish};
}

void moe_trace_writer_step_begin(moe_trace_writer *w, const moe_batch *b, const uint32_t *slot_seq,
                                 int n_slots)
{
	w->rec_ntok = 0;
	w->dropping = w->bad = false;
	if (atomic_load(&w->failed) || b->n_tok < 1 || b->n_tok > (int64_t)MOE_TRACE_MAX_TOK)
		return;
	const uint32_t nt = (uint32_t)b->n_tok;
	const size_t size = step_size(&w->h, nt);
	if (w->cur.len + size > KEEP_LIMIT && w->cur.len > 0)
		hand_over(w, false);
	if ((w->cur.len + size > KEEP_LIMIT && w->cur.len > 0) || !reserve(&w->cur, size)) {
		w->rec_ntok = nt;
		w->dropping = true; /* the thread is behind (or no memory): never wait */
		return;
	}
	w->rec = w->cur.len;
	w->rec_ntok = nt;
	memset(w->done, 0, w->h.n_layer * sizeof *w->done);
	uint8_t *p = w->cur.p + w->rec;
	put32(p, TAG_STEP);
	put32(p + 4, nt);
	for (uint32_t t = 0; t < nt; t++) {
		const int32_t s = b->slot[t];
		if (s < 0 || s >= n_slots) {
			w->bad = true; /* moe_fwd_step refuses it too */
			return;
		}
		put32(p + 16 + 8 * (size_t)t, slot_seq != NULL ? slot_seq[s] : (uint32_t)s);
		put32(p + 20 + 8 * (size_t)t, (uint32_t)b->pos[t]);
	}
}

void moe_trace_writer_step_end(moe_trace_writer *w, bool ok)
{
	const uint32_t nt = w->rec_ntok;
	w->rec_ntok = 0;
	if (nt == 0 || !ok || atomic_load(&w->failed))
		return;
	if (w->dropping) {
		w->next_step++;
		atomic_fetch_add(&w->dropped, 1);
		return;
	}
	for (uint32_t il = 0; il < w->h.n_layer && !w->bad; il++)
		w->bad = w->done[il] != nt;
	if (w->bad) {
		moe_log(MOE_LOG_WARN,
		        "trace %s: a step's layers did not see each of its %u tokens once; "
		        "step not recorded",
		        w->path, nt);
		return;
	}
	const size_t size = step_size(&w->h, nt);
	uint8_t *p = w->cur.p + w->rec;
	put64(p + 8, w->next_step++);
	put64(p + size - 8, sum64(p, size - 8));
	w->cur.len = w->rec + size;
	atomic_fetch_add(&w->recorded, 1);
	/* large pieces, and at least once a second so that the file follows the
	 * server (the first step goes at once) */
	const double now = moe_now_s();
	if ((w->cur.len >= FLUSH_AT || now - w->handed_at >= 1.0) && hand_over(w, false))
		w->handed_at = now;
}

void moe_trace_writer_counts(const moe_trace_writer *w, uint64_t *recorded, uint64_t *dropped,
                             bool *failed)
{
	*recorded = atomic_load(&w->recorded);
	*dropped = atomic_load(&w->dropped);
	*failed = atomic_load(&w->failed);
}

moe_err moe_trace_writer_close(moe_trace_writer *w)
{
	if (w->closed)
		return moe_fail(MOE_ERR_STATE, "trace %s: closed twice", w->path);
	w->closed = true;
	uint8_t end[END_SIZE];
	put32(end, TAG_END);
	put32(end + 4, 0);
	put64(end + 8, w->next_step);
	put64(end + 16, atomic_load(&w->dropped));
	put64(end + 24, sum64(end, 24));
	if (reserve(&w->cur, END_SIZE)) {
		memcpy(w->cur.p + w->cur.len, end, END_SIZE);
		w->cur.len += END_SIZE;
	} else {
		pthread_mutex_lock(&w->mu);
		fail_locked(w, "the end record", ENOMEM);
		pthread_mutex_unlock(&w->mu);
	}
	hand_over(w, true);
	pthread_mutex_lock(&w->mu);
	w->quit = true;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->thread, NULL);
	w->thread_started = false;
	if (close(w->fd) != 0) {
		pthread_mutex_lock(&w->mu);
		fail_locked(w, "close", errno);
		pthread_mutex_unlock(&w->mu);
	}
	w->fd = -1;
	if (atomic_load(&w->failed))
		return moe_fail(MOE_ERR_IO, "%s", w->err);
	return MOE_OK;
}

void moe_trace_writer_destroy(moe_trace_writer *w)
{
	if (w == NULL)
		return;
	if (!w->closed && moe_trace_writer_close(w) != MOE_OK)
		moe_log(MOE_LOG_ERROR, "%s", moe_err_detail());
	pthread_cond_destroy(&w->cv);
	pthread_mutex_destroy(&w->mu);
	free(w->cur.p);
	free(w->out.p);
	free(w->done);
	free(w->path);
	free(w);
}

/* ---- reader -------------------------------------------------------------------- */

struct moe_trace_reader {
	FILE *f;
	char *path;
	moe_trace_info h;
	uint64_t off;       /* file offset of the next record */
	uint64_t n_read;    /* step records read */
	uint64_t last_step; /* number of the last one */
	bool ended;
	uint8_t *rec; /* the current record */
	size_t rec_cap;
	uint32_t *seq, *pos; /* [n_tok] decoded */
	uint16_t *ids;
	float *wts;
	uint64_t *order; /* [n_tok] scratch: (sequence << 32 | token index), sorted */
	uint64_t size;   /* of the file */
	size_t tok_cap, cell_cap;
};

/* Reads exactly n bytes; 1 at a clean end of file (nothing read), 0 ok, -1 cut
 * short or an error (errno set, 0 for a short read). */
static int read_exact(FILE *f, uint8_t *p, size_t n)
{
	const size_t got = fread(p, 1, n, f);
	if (got == n)
		return 0;
	if (ferror(f))
		return -1;
	errno = 0;
	return got == 0 ? 1 : -1;
}

moe_err moe_trace_reader_open(moe_trace_reader **out, const char *path)
{
	*out = NULL;
	moe_err err;
	moe_trace_reader *r = calloc(1, sizeof *r);
	if (r == NULL || (r->path = strdup(path)) == NULL) {
		free(r);
		return moe_fail(MOE_ERR_NOMEM, "trace: reader");
	}
	r->f = fopen(path, "rb");
	if (r->f == NULL) {
		err = moe_fail(MOE_ERR_IO, "trace: cannot open %s: %s", path, strerror(errno));
		goto out_free;
	}
	struct stat st;
	if (fstat(fileno(r->f), &st) != 0) {
		err = moe_fail(MOE_ERR_IO, "trace %s: stat: %s", path, strerror(errno));
		goto out_close;
	}
	r->size = (uint64_t)st.st_size;
	uint8_t hd[MOE_TRACE_HEADER_SIZE];
	const int rr = read_exact(r->f, hd, sizeof hd);
	if (rr != 0) {
		err = rr < 0 && errno != 0
		          ? moe_fail(MOE_ERR_IO, "trace %s: read: %s", path, strerror(errno))
		          : moe_fail(MOE_ERR_TRUNCATED,
		                     "trace %s: shorter than its %d-byte header: truncated", path,
		                     MOE_TRACE_HEADER_SIZE);
		goto out_close;
	}
	if (memcmp(hd, magic, 8) != 0) {
		err = moe_fail(MOE_ERR_BAD_MAGIC,
		               "trace %s: no MOETRACE magic: not a routing trace", path);
		goto out_close;
	}
	r->h.version = get32(hd + 8);
	if (r->h.version != MOE_TRACE_VERSION) {
		err = moe_fail(MOE_ERR_BAD_VERSION, "trace %s: version %u, this program reads %d",
		               path, r->h.version, MOE_TRACE_VERSION);
		goto out_close;
	}
	if (get32(hd + 60) != fnv32(hd, 60)) {
		err = moe_fail(MOE_ERR_FORMAT, "trace %s: header checksum does not match: corrupt",
		               path);
		goto out_close;
	}
	r->h.flags = get32(hd + 12);
	r->h.n_layer = get32(hd + 16);
	r->h.n_expert = get32(hd + 20);
	r->h.k = get32(hd + 24);
	memcpy(r->h.model_id, hd + 28, 32);
	if ((err = check_info(&r->h)) != MOE_OK) {
		err = moe_fail(err, "%s (in the header of %s)", moe_err_detail(), path);
		goto out_close;
	}
	r->off = MOE_TRACE_HEADER_SIZE;
	*out = r;
	return MOE_OK;

out_close:
	fclose(r->f);
out_free:
	free(r->path);
	free(r);
	return err;
}

const moe_trace_info *moe_trace_reader_info(const moe_trace_reader *r)
{
	return &r->h;
}

static moe_err grow(moe_trace_reader *r, uint32_t nt, size_t size)
{
	if (size > r->rec_cap) {
		uint8_t *p = realloc(r->rec, size);
		if (p == NULL)
			return moe_fail(MOE_ERR_NOMEM, "trace: a record of %zu bytes", size);
		r->rec = p;
		r->rec_cap = size;
	}
	if (nt > r->tok_cap) {
		uint32_t *s = realloc(r->seq, nt * sizeof *s);
		if (s != NULL)
			r->seq = s;
		uint32_t *p = realloc(r->pos, nt * sizeof *p);
		if (p != NULL)
			r->pos = p;
		uint64_t *o = realloc(r->order, nt * sizeof *o);
		if (o != NULL)
			r->order = o;
		if (s == NULL || p == NULL || o == NULL)
			return moe_fail(MOE_ERR_NOMEM, "trace: %u tokens", nt);
		r->tok_cap = nt;
	}
	const size_t cells = (size_t)r->h.n_layer * nt * r->h.k;
	if (cells > r->cell_cap) {
		uint16_t *i = realloc(r->ids, cells * sizeof *i);
		if (i != NULL)
			r->ids = i;
		float *w = realloc(r->wts, cells * sizeof *w);
		if (w != NULL)
			r->wts = w;
		if (i == NULL || w == NULL)
			return moe_fail(MOE_ERR_NOMEM, "trace: %zu routing cells", cells);
		r->cell_cap = cells;
	}
	return MOE_OK;
}

static int by_key(const void *a, const void *b)
{
	const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Checks a decoded step's tokens, ids and weights. */
static moe_err check_step(moe_trace_reader *r, uint32_t nt, uint64_t step, uint64_t at)
{
	const moe_trace_info *h = &r->h;
	for (uint32_t t = 0; t < nt; t++) {
		if (r->pos[t] > INT32_MAX)
			return moe_fail(MOE_ERR_BAD_VALUE,
			                "trace %s: offset %llu, step %llu, token %u: position %u "
			                "past %d",
			                r->path, (unsigned long long)at, (unsigned long long)step,
			                t, r->pos[t], INT32_MAX);
		r->order[t] = (uint64_t)r->seq[t] << 32 | t;
	}
	/* a sequence's tokens in a step continue one another (moe_batch) */
	qsort(r->order, nt, sizeof *r->order, by_key);
	for (uint32_t i = 1; i < nt; i++) {
		const uint32_t a = (uint32_t)r->order[i - 1], b = (uint32_t)r->order[i];
		if (r->seq[a] == r->seq[b] && r->pos[b] != r->pos[a] + 1)
			return moe_fail(
			    MOE_ERR_BAD_VALUE,
			    "trace %s: offset %llu, step %llu: sequence %u has token %u "
			    "at position %u after token %u at %u (not consecutive)",
			    r->path, (unsigned long long)at, (unsigned long long)step, r->seq[b], b,
			    r->pos[b], a, r->pos[a]);
	}
	for (uint32_t il = 0; il < h->n_layer; il++)
		for (uint32_t t = 0; t < nt; t++) {
			const size_t c = ((size_t)il * nt + t) * h->k;
			float sum = 0.0f;
			for (uint32_t j = 0; j < h->k; j++) {
				const uint16_t e = r->ids[c + j];
				if (e >= h->n_expert)
					return moe_fail(
					    MOE_ERR_BAD_VALUE,
					    "trace %s: offset %llu, step %llu, layer %u, "
					    "token %u, slot %u: expert %u, not < n_expert %u",
					    r->path, (unsigned long long)at,
					    (unsigned long long)step, il, t, j, e, h->n_expert);
				for (uint32_t i = 0; i < j; i++)
					if (r->ids[c + i] == e)
						return moe_fail(
						    MOE_ERR_BAD_VALUE,
						    "trace %s: offset %llu, step %llu, layer %u, "
						    "token "
						    "%u: expert %u chosen twice (slots %u and %u)",
						    r->path, (unsigned long long)at,
						    (unsigned long long)step, il, t, e, i, j);
				if (!(h->flags & MOE_TRACE_WEIGHTS))
					continue;
				const float w = r->wts[c + j];
				if (!(w >= 0.0f && w <= 1.0f))
					return moe_fail(
					    MOE_ERR_BAD_VALUE,
					    "trace %s: offset %llu, step %llu, layer %u, "
					    "token %u, slot %u: weight %g not in [0, 1]",
					    r->path, (unsigned long long)at,
					    (unsigned long long)step, il, t, j, (double)w);
				sum += w;
			}
			if ((h->flags & MOE_TRACE_WEIGHTS) && fabsf(sum - 1.0f) > 1e-3f)
				return moe_fail(
				    MOE_ERR_BAD_VALUE,
				    "trace %s: offset %llu, step %llu, layer %u, token %u: "
				    "weights sum to %g, not 1",
				    r->path, (unsigned long long)at, (unsigned long long)step, il,
				    t, (double)sum);
		}
	return MOE_OK;
}

static moe_err cut(const moe_trace_reader *r, const char *what)
{
	if (errno != 0)
		return moe_fail(MOE_ERR_IO, "trace %s: read at offset %llu: %s", r->path,
		                (unsigned long long)r->off, strerror(errno));
	return moe_fail(MOE_ERR_TRUNCATED,
	                "trace %s: ends inside %s at offset %llu after %llu steps: truncated",
	                r->path, what, (unsigned long long)r->off, (unsigned long long)r->n_read);
}

moe_err moe_trace_reader_next(moe_trace_reader *r, moe_trace_step *s, bool *done, uint64_t *n_steps,
                              uint64_t *dropped)
{
	*done = false;
	if (r->ended)
		return moe_fail(MOE_ERR_STATE, "trace %s: read past its end record", r->path);
	uint8_t head[16];
	const int rr = read_exact(r->f, head, sizeof head);
	if (rr == 1)
		return moe_fail(MOE_ERR_TRUNCATED,
		                "trace %s: ends at offset %llu after %llu steps without its end "
		                "record: truncated (the writer was not closed)",
		                r->path, (unsigned long long)r->off, (unsigned long long)r->n_read);
	if (rr < 0)
		return cut(r, "a record header");
	const uint32_t tag = get32(head), nt = get32(head + 4);
	const uint64_t num = get64(head + 8);
	const uint64_t at = r->off;
	if (tag == TAG_END) {
		uint8_t end[END_SIZE];
		memcpy(end, head, 16);
		if (read_exact(r->f, end + 16, END_SIZE - 16) != 0)
			return cut(r, "the end record");
		const uint64_t dr = get64(end + 16);
		if (get64(end + 24) != sum64(end, 24) || nt != 0)
			return moe_fail(
			    MOE_ERR_FORMAT,
			    "trace %s: end record at offset %llu: checksum does not match: "
			    "corrupt",
			    r->path, (unsigned long long)at);
		const uint64_t next = r->n_read > 0 ? r->last_step + 1 : 0;
		if (num < next || num - r->n_read != dr)
			return moe_fail(
			    MOE_ERR_BAD_COUNT,
			    "trace %s: end record says %llu steps, %llu dropped, but %llu "
			    "were read up to step number %llu",
			    r->path, (unsigned long long)num, (unsigned long long)dr,
			    (unsigned long long)r->n_read, (unsigned long long)next);
		uint8_t extra;
		if (fread(&extra, 1, 1, r->f) != 0)
			return moe_fail(MOE_ERR_FORMAT,
			                "trace %s: bytes after the end record at offset %llu",
			                r->path, (unsigned long long)(at + END_SIZE));
		r->off += END_SIZE;
		r->ended = true;
		*done = true;
		if (n_steps != NULL)
			*n_steps = num;
		if (dropped != NULL)
			*dropped = dr;
		return MOE_OK;
	}
	if (tag != TAG_STEP)
		return moe_fail(MOE_ERR_FORMAT,
		                "trace %s: offset %llu: record tag 0x%08x is neither STEP nor "
		                "TEND: corrupt",
		                r->path, (unsigned long long)at, tag);
	if (nt < 1 || nt > MOE_TRACE_MAX_TOK)
		return moe_fail(MOE_ERR_BAD_COUNT,
		                "trace %s: offset %llu: step of %u tokens, not in [1, %u]", r->path,
		                (unsigned long long)at, nt, MOE_TRACE_MAX_TOK);
	if (r->n_read > 0 && num <= r->last_step)
		return moe_fail(MOE_ERR_BAD_VALUE,
		                "trace %s: offset %llu: step number %llu after %llu (not "
		                "increasing)",
		                r->path, (unsigned long long)at, (unsigned long long)num,
		                (unsigned long long)r->last_step);
	const size_t size = step_size(&r->h, nt);
	if (size > r->size || at > r->size - size)
		return moe_fail(
		    MOE_ERR_TRUNCATED,
		    "trace %s: step %llu at offset %llu announces %u tokens (%zu bytes), "
		    "past the file's end at %llu: truncated",
		    r->path, (unsigned long long)num, (unsigned long long)at, nt, size,
		    (unsigned long long)r->size);
	moe_err err = grow(r, nt, size);
	if (err != MOE_OK)
		return err;
	memcpy(r->rec, head, 16);
	if (read_exact(r->f, r->rec + 16, size - 16) != 0)
		return cut(r, "a step record");
	if (get64(r->rec + size - 8) != sum64(r->rec, size - 8))
		return moe_fail(MOE_ERR_FORMAT,
		                "trace %s: step %llu at offset %llu: checksum does not match: "
		                "corrupt",
		                r->path, (unsigned long long)num, (unsigned long long)at);
	const size_t cells = (size_t)r->h.n_layer * nt * r->h.k;
	const uint8_t *p = r->rec + 16;
	for (uint32_t t = 0; t < nt; t++) {
		r->seq[t] = get32(p + 8 * (size_t)t);
		r->pos[t] = get32(p + 8 * (size_t)t + 4);
	}
	p += 8 * (size_t)nt;
	for (size_t c = 0; c < cells; c++)
		r->ids[c] = (uint16_t)(p[2 * c] | (p[2 * c + 1] << 8));
	p += 2 * cells;
	if (r->h.flags & MOE_TRACE_WEIGHTS)
		for (size_t c = 0; c < cells; c++) {
			const uint32_t u = get32(p + 4 * c);
			memcpy(&r->wts[c], &u, 4);
		}
	if ((err = check_step(r, nt, num, at)) != MOE_OK)
		return err;
	r->off += size;
	r->n_read++;
	r->last_step = num;
	*s = (moe_trace_step){.step = num,
	                      .n_tok = nt,
	                      .seq = r->seq,
	                      .pos = r->pos,
	                      .ids = r->ids,
	                      .weights = (r->h.flags & MOE_TRACE_WEIGHTS) ? r->wts : NULL};
	return MOE_OK;
}

void moe_trace_reader_destroy(moe_trace_reader *r)
{
	if (r == NULL)
		return;
	if (r->f != NULL)
		fclose(r->f);
	free(r->rec);
	free(r->seq);
	free(r->pos);
	free(r->order);
	free(r->ids);
	free(r->wts);
	free(r->path);
	free(r);
}
