/* prefix.c - the prefix cache (prefix.h): a radix tree of token runs with
 * their KV rows and state checkpoints, a byte budget with least-recently-used
 * eviction, and the disk tier (block files, a writer thread). */
#include "server/prefix.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define QUEUE_MAX 4 /* blocks waiting for the disk; more are dropped */

typedef struct node {
	struct node *parent;
	struct node **kids;
	int n_kids, cap_kids;
	int32_t *tok; /* [len] the run */
	size_t len;
	size_t start;   /* position of tok[0] */
	uint8_t *kv;    /* [len * kv_pos_bytes] */
	uint8_t *state; /* [state_bytes] after the run, or NULL */
	uint64_t used;  /* clock of the last lookup or insert through it */
	uint64_t keep;  /* == the cache's mark: on the path being inserted */
} node;

typedef struct job {
	char path[1024];
	uint8_t *buf;
	size_t len;
} job;

typedef struct dfile {
	char name[64];
	uint64_t bytes;
	int64_t mtime;
} dfile;

struct moe_prefix_cache {
	moe_prefix_opts o;
	node root;
	uint64_t clock, mark;
	size_t bytes, st_bytes, nodes, checkpoints;
	size_t hit_len; /* the last lookup's result */
	node *hit;      /* its node */
	/* disk tier */
	char dir[920]; /* o.dir/<identity>: "" without one */
	pthread_t writer;
	bool writer_on, stopping;
	pthread_mutex_t mu; /* the queue, the file list, the statistics */
	pthread_cond_t cv;
	job queue[QUEUE_MAX];
	int n_queue;
	dfile *files;
	size_t n_files, cap_files;
	uint64_t disk_total;
	moe_prefix_stats st; /* counters (under mu); sizes are filled in on read */
};

/* ---- hashing ------------------------------------------------------------------ */

typedef struct h128 {
	uint64_t a, b;
} h128;

static h128 h_start(void)
{
	return (h128){0xcbf29ce484222325ull, 0x84222325cbf29ce4ull};
}

static h128 h_bytes(h128 h, const void *p, size_t n)
{
	const uint8_t *s = p;
	for (size_t i = 0; i < n; i++) {
		h.a = (h.a ^ s[i]) * 0x100000001b3ull;
		h.b = (h.b ^ s[i]) * 0x9e3779b97f4a7c15ull;
		h.b ^= h.b >> 29;
	}
	return h;
}

static uint64_t fnv64(const void *p, size_t n)
{
	return h_bytes(h_start(), p, n).a;
}

/* ---- the tree --------------------------------------------------------------------- */

static size_t node_bytes(const moe_prefix_cache *c, const node *x)
{
	return x->len * c->o.kv_pos_bytes + (x->state != NULL ? c->o.state_bytes : 0);
}

static node *child_of(const node *x, int32_t t)
{
	for (int i = 0; i < x->n_kids; i++)
		if (x->kids[i]->tok[0] == t)
			return x->kids[i];
	return NULL;
}

static bool add_kid(node *p, node *k)
{
	if (p->n_kids == p->cap_kids) {
		const int cap = p->cap_kids ? 2 * p->cap_kids : 4;
		node **v = realloc(p->kids, (size_t)cap * sizeof *v);
		if (v == NULL)
			return false;
		p->kids = v;
		p->cap_kids = cap;
	}
	p->kids[p->n_kids++] = k;
	k->parent = p;
	return true;
}

static void drop_kid(node *p, const node *k)
{
	for (int i = 0; i < p->n_kids; i++)
		if (p->kids[i] == k) {
			p->kids[i] = p->kids[--p->n_kids];
			return;
		}
}

static void node_free(moe_prefix_cache *c, node *x)
{
	for (int i = 0; i < x->n_kids; i++)
		node_free(c, x->kids[i]);
	c->bytes -= node_bytes(c, x);
	if (x->state != NULL) {
		c->st_bytes -= c->o.state_bytes;
		c->checkpoints--;
	}
	c->nodes--;
	free(x->kids);
	free(x->tok);
	free(x->kv);
	free(x->state);
	free(x);
}

/* Splits x after its first m tokens (0 < m < len): x keeps the tail and a
 * new node, its parent now, holds the head (no state). */
static node *split(moe_prefix_cache *c, node *x, size_t m)
{
	const size_t kb = c->o.kv_pos_bytes;
	node *h = calloc(1, sizeof *h);
	int32_t *ht = h ? malloc(m * sizeof *ht) : NULL, *tt = malloc((x->len - m) * sizeof *tt);
	uint8_t *hk = h ? malloc(m * kb) : NULL, *tk = malloc((x->len - m) * kb);
	if (h == NULL || ht == NULL || tt == NULL || hk == NULL || tk == NULL) {
		free(h);
		free(ht);
		free(tt);
		free(hk);
		free(tk);
		return NULL;
	}
	memcpy(ht, x->tok, m * sizeof *ht);
	memcpy(tt, x->tok + m, (x->len - m) * sizeof *tt);
	memcpy(hk, x->kv, m * kb);
	memcpy(tk, x->kv + m * kb, (x->len - m) * kb);
	*h = (node){.tok = ht, .len = m, .start = x->start, .kv = hk, .used = x->used};
	node *p = x->parent;
	for (int i = 0; i < p->n_kids; i++)
		if (p->kids[i] == x)
			p->kids[i] = h;
	h->parent = p;
	h->kids = malloc(4 * sizeof *h->kids);
	if (h->kids == NULL) { /* undo: x stays whole */
		for (int i = 0; i < p->n_kids; i++)
			if (p->kids[i] == h)
				p->kids[i] = x;
		free(ht);
		free(tt);
		free(hk);
		free(tk);
		free(h);
		return NULL;
	}
	h->cap_kids = 4;
	h->kids[h->n_kids++] = x;
	x->parent = h;
	free(x->tok);
	free(x->kv);
	x->tok = tt;
	x->kv = tk;
	x->start += m;
	x->len -= m;
	c->nodes++;
	return h;
}

/* Drops least recently used leaves off the path being kept (nodes marked
 * keep) and checkpoints (states) but the one at its end, until the bytes fit
 * the budget.  A conversation is one path: its older checkpoints go, their
 * rows stay as long as the newest needs them. */
static void evict(moe_prefix_cache *c, const node *end)
{
	while (c->bytes > c->o.ram_bytes) {
		node *best = NULL;
		bool whole = false;
		/* depth-first over the tree: an explicit stack */
		node *stack[4096];
		int sp = 0;
		stack[sp++] = &c->root;
		while (sp > 0) {
			node *x = stack[--sp];
			for (int i = 0; i < x->n_kids && sp < 4096; i++)
				stack[sp++] = x->kids[i];
			if (x == &c->root || x == end)
				continue;
			const bool leaf = x->n_kids == 0 && x->keep != c->mark;
			const bool st = x->state != NULL && c->o.state_bytes > 0;
			if ((leaf || st) && (best == NULL || x->used < best->used)) {
				best = x;
				whole = leaf;
			}
		}
		if (best == NULL)
			return;
		pthread_mutex_lock(&c->mu);
		c->st.evictions++;
		pthread_mutex_unlock(&c->mu);
		if (whole) {
			drop_kid(best->parent, best);
			node_free(c, best);
		} else {
			free(best->state);
			best->state = NULL;
			c->bytes -= c->o.state_bytes;
			c->st_bytes -= c->o.state_bytes;
			c->checkpoints--;
		}
		c->hit = NULL; /* a hit may point into what went */
		c->hit_len = 0;
	}
}

/* How many of tokens[0..n) the tree holds rows for (a run may match in
 * part). */
static size_t held(const moe_prefix_cache *c, const int32_t *tokens, size_t n)
{
	const node *x = &c->root;
	size_t pos = 0;
	for (;;) {
		const node *k = pos < n ? child_of(x, tokens[pos]) : NULL;
		if (k == NULL)
			return pos;
		size_t m = 0;
		while (m < k->len && pos + m < n && k->tok[m] == tokens[pos + m])
			m++;
		pos += m;
		if (m < k->len)
			return pos;
		x = k;
	}
}

/* Walks tokens down the tree: the deepest node reached whose run matched
 * whole (and its end in *end). */
static node *walk(moe_prefix_cache *c, const int32_t *tokens, size_t n, size_t *end, bool touch)
{
	node *x = &c->root;
	size_t pos = 0;
	for (;;) {
		node *k = pos < n ? child_of(x, tokens[pos]) : NULL;
		if (k == NULL || k->len > n - pos || memcmp(k->tok, tokens + pos, k->len * 4) != 0)
			break;
		pos += k->len;
		x = k;
		if (touch)
			x->used = ++c->clock;
	}
	*end = pos;
	return x;
}

static moe_err do_insert(moe_prefix_cache *c, const int32_t *tokens, size_t n,
                         moe_prefix_kv_source source, void *ctx, const void *state)
{
	const size_t kb = c->o.kv_pos_bytes;
	if (n == 0 || n * kb + c->o.state_bytes > c->o.ram_bytes)
		return MOE_OK; /* nothing to keep, or more than the whole budget */
	c->mark++;
	node *x = &c->root;
	size_t pos = 0;
	while (pos < n) {
		node *k = child_of(x, tokens[pos]);
		if (k == NULL)
			break;
		size_t m = 0;
		while (m < k->len && pos + m < n && k->tok[m] == tokens[pos + m])
			m++;
		if (m < k->len && (k = split(c, k, m)) == NULL)
			return moe_fail(MOE_ERR_NOMEM, "prefix cache: a split");
		k->keep = c->mark;
		k->used = ++c->clock;
		x = k;
		pos += m;
	}
	if (pos < n) {
		node *y = calloc(1, sizeof *y);
		int32_t *t = y ? malloc((n - pos) * sizeof *t) : NULL;
		uint8_t *kv = t ? malloc((n - pos) * kb) : NULL;
		moe_err err = kv == NULL
		                  ? moe_fail(MOE_ERR_NOMEM, "prefix cache: %zu positions", n - pos)
		                  : source(ctx, (int64_t)pos, (int64_t)n, kv);
		if (err == MOE_OK && !add_kid(x, y))
			err = moe_fail(MOE_ERR_NOMEM, "prefix cache: a node");
		if (err != MOE_OK) {
			free(kv);
			free(t);
			free(y);
			return err;
		}
		memcpy(t, tokens + pos, (n - pos) * sizeof *t);
		y->tok = t;
		y->len = n - pos;
		y->start = pos;
		y->kv = kv;
		y->keep = c->mark;
		y->used = ++c->clock;
		c->bytes += y->len * kb;
		c->nodes++;
		x = y;
	}
	if (c->o.state_bytes > 0 || x->state == NULL) {
		uint8_t *s = x->state;
		if (s == NULL) {
			if ((s = malloc(c->o.state_bytes ? c->o.state_bytes : 1)) == NULL)
				return moe_fail(MOE_ERR_NOMEM, "prefix cache: a state");
			c->bytes += c->o.state_bytes;
			c->st_bytes += c->o.state_bytes;
			c->checkpoints++;
		}
		if (c->o.state_bytes > 0)
			memcpy(s, state, c->o.state_bytes);
		x->state = s;
	}
	evict(c, x);
	return MOE_OK;
}

/* ---- disk ----------------------------------------------------------------------------- */

/* A block file:
 *   "MOEPFX1\0", u32 version 1, u32 n (tokens of the block), u64 start,
 *   identity[32], key (h128 of tokens[0..start+n)), prev (h128 of
 *   tokens[0..start)), u64 kv_pos_bytes, u64 state_bytes,
 *   int32 tokens[n], KV rows [n * kv_pos_bytes], state [state_bytes],
 *   u64 FNV-1a of everything before it.  Little-endian, as the hosts are. */
enum { HEAD = 8 + 4 + 4 + 8 + 32 + 16 + 16 + 8 + 8 };

static void key_name(char *out, size_t size, h128 k)
{
	snprintf(out, size, "%016" PRIx64 "%016" PRIx64 ".moeblk", k.a, k.b);
}

static void file_path(char *out, size_t size, const moe_prefix_cache *c, h128 k)
{
	char name[64];
	key_name(name, sizeof name, k);
	snprintf(out, size, "%.900s/%.63s", c->dir, name);
}

static void files_add(moe_prefix_cache *c, const char *name, uint64_t bytes, int64_t mtime)
{
	if (c->n_files == c->cap_files) {
		const size_t cap = c->cap_files ? 2 * c->cap_files : 64;
		dfile *v = realloc(c->files, cap * sizeof *v);
		if (v == NULL)
			return;
		c->files = v;
		c->cap_files = cap;
	}
	dfile *f = &c->files[c->n_files++];
	snprintf(f->name, sizeof f->name, "%.63s", name);
	f->bytes = bytes;
	f->mtime = mtime;
	c->disk_total += bytes;
}

/* Under mu: removes the oldest files beyond the disk budget. */
static void files_trim(moe_prefix_cache *c)
{
	while (c->disk_total > c->o.disk_bytes && c->n_files > 0) {
		size_t old = 0;
		for (size_t i = 1; i < c->n_files; i++)
			if (c->files[i].mtime < c->files[old].mtime)
				old = i;
		char path[1100];
		snprintf(path, sizeof path, "%s/%s", c->dir, c->files[old].name);
		unlink(path);
		c->disk_total -= c->files[old].bytes;
		c->files[old] = c->files[--c->n_files];
	}
}

static void *writer_main(void *arg)
{
	moe_prefix_cache *c = arg;
	pthread_mutex_lock(&c->mu);
	for (;;) {
		while (c->n_queue == 0 && !c->stopping)
			pthread_cond_wait(&c->cv, &c->mu);
		if (c->n_queue == 0)
			break;
		job j = c->queue[0];
		memmove(c->queue, c->queue + 1, (size_t)(c->n_queue - 1) * sizeof *c->queue);
		c->n_queue--;
		pthread_mutex_unlock(&c->mu);
		char tmp[1100];
		snprintf(tmp, sizeof tmp, "%s.tmp", j.path);
		int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		bool ok = fd >= 0;
		for (size_t at = 0; ok && at < j.len;) {
			const ssize_t w = write(fd, j.buf + at, j.len - at);
			if (w < 0 && errno == EINTR)
				continue;
			ok = w > 0;
			at += ok ? (size_t)w : 0;
		}
		if (fd >= 0 && close(fd) != 0)
			ok = false;
		ok = ok && rename(tmp, j.path) == 0;
		if (!ok)
			unlink(tmp);
		pthread_mutex_lock(&c->mu);
		if (ok) {
			c->st.disk_writes++;
			const char *name = strrchr(j.path, '/');
			files_add(c, name != NULL ? name + 1 : j.path, j.len,
			          (int64_t)moe_now_ns());
			files_trim(c);
		}
		free(j.buf);
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

static void put64(uint8_t **p, uint64_t v)
{
	memcpy(*p, &v, 8);
	*p += 8;
}

/* Queues the block that ends at n (a checkpoint just inserted, node x). */
static void queue_block(moe_prefix_cache *c, const int32_t *tokens, size_t n)
{
	const size_t b = c->o.block, kb = c->o.kv_pos_bytes, sb = c->o.state_bytes;
	size_t end;
	node *x = walk(c, tokens, n, &end, false);
	if (end != n || x->state == NULL)
		return;
	const size_t len = HEAD + b * 4 + b * kb + sb + 8;
	uint8_t *buf = malloc(len), *p = buf;
	if (buf == NULL)
		return;
	const h128 key = h_bytes(h_start(), tokens, n * 4);
	const h128 prev = h_bytes(h_start(), tokens, (n - b) * 4);
	memcpy(p, "MOEPFX1", 8);
	p += 8;
	const uint32_t v = 1, nb = (uint32_t)b;
	memcpy(p, &v, 4);
	memcpy(p + 4, &nb, 4);
	p += 8;
	put64(&p, n - b);
	memcpy(p, c->o.identity, 32);
	p += 32;
	put64(&p, key.a);
	put64(&p, key.b);
	put64(&p, prev.a);
	put64(&p, prev.b);
	put64(&p, kb);
	put64(&p, sb);
	memcpy(p, tokens + n - b, b * 4);
	p += b * 4;
	/* the block's rows, from the nodes on the path (they may be split) */
	for (size_t pos = n; pos > n - b;) {
		const size_t lo = x->start > n - b ? x->start : n - b;
		memcpy(p + (lo - (n - b)) * kb, x->kv + (lo - x->start) * kb, (pos - lo) * kb);
		pos = lo;
		x = x->parent;
	}
	p += b * kb;
	if (sb > 0)
		memcpy(p, walk(c, tokens, n, &end, false)->state, sb);
	p += sb;
	put64(&p, fnv64(buf, (size_t)(p - buf)));
	pthread_mutex_lock(&c->mu);
	if (c->n_queue < QUEUE_MAX) {
		job *j = &c->queue[c->n_queue++];
		file_path(j->path, sizeof j->path, c, key);
		j->buf = buf;
		j->len = len;
		pthread_cond_signal(&c->cv);
		buf = NULL;
	}
	pthread_mutex_unlock(&c->mu);
	free(buf);
}

/* Reads and checks the block file of tokens[0..end) (end a multiple of the
 * block): its bytes in *out (malloc'd) when everything holds. */
static bool read_block(moe_prefix_cache *c, const int32_t *tokens, size_t end, uint8_t **out)
{
	const size_t b = c->o.block, kb = c->o.kv_pos_bytes, sb = c->o.state_bytes;
	const size_t len = HEAD + b * 4 + b * kb + sb + 8;
	const h128 key = h_bytes(h_start(), tokens, end * 4);
	const h128 prev = h_bytes(h_start(), tokens, (end - b) * 4);
	char path[1100];
	file_path(path, sizeof path, c, key);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false; /* not there: no block */
	struct stat st = {0};
	uint8_t *buf = NULL;
	bool ok = fstat(fd, &st) == 0 && (size_t)st.st_size == len && (buf = malloc(len)) != NULL;
	for (size_t at = 0; ok && at < len;) {
		const ssize_t r = read(fd, buf + at, len - at);
		if (r < 0 && errno == EINTR)
			continue;
		ok = r > 0;
		at += ok ? (size_t)r : 0;
	}
	close(fd);
	bool ours = false; /* the file says it is of this model */
	if (ok) {
		uint64_t u[7];
		uint32_t v[2];
		memcpy(v, buf + 8, 8);
		memcpy(u, buf + 16, 8);              /* start */
		memcpy(u + 1, buf + 24 + 32, 6 * 8); /* key, prev, kv, state */
		uint64_t sum;
		memcpy(&sum, buf + len - 8, 8);
		ours = memcmp(buf + 24, c->o.identity, 32) == 0;
		ok = memcmp(buf, "MOEPFX1", 8) == 0 && v[0] == 1 && v[1] == b && u[0] == end - b &&
		     ours && u[1] == key.a && u[2] == key.b && u[3] == prev.a && u[4] == prev.b &&
		     u[5] == kb && u[6] == sb && memcmp(buf + HEAD, tokens + end - b, b * 4) == 0 &&
		     fnv64(buf, len - 8) == sum;
	} else if (buf == NULL && st.st_size >= HEAD) {
		/* another size: whose is it? (a file of another model is only ignored) */
		uint8_t head[HEAD];
		int f2 = open(path, O_RDONLY | O_CLOEXEC);
		ours = f2 >= 0 && read(f2, head, HEAD) == HEAD &&
		       memcmp(head + 24, c->o.identity, 32) == 0;
		if (f2 >= 0)
			close(f2);
	}
	if (!ok) {
		pthread_mutex_lock(&c->mu);
		c->st.disk_rejects++;
		pthread_mutex_unlock(&c->mu);
		if (ours)
			unlink(path); /* ours, and broken */
		free(buf);
		return false;
	}
	*out = buf;
	return true;
}

typedef struct block_src {
	const uint8_t *kv; /* the block's rows */
	size_t start;      /* position of its first row */
	size_t kb;
	const moe_prefix_cache *c;
	const int32_t *tokens;
} block_src;

/* A source for do_insert: rows from the block file, earlier rows from the
 * tree (they are there: the chain is inserted in order). */
static moe_err from_block(void *ctx, int64_t p0, int64_t p1, void *kv)
{
	const block_src *s = ctx;
	if ((size_t)p0 < s->start)
		return moe_fail(MOE_ERR_STATE, "prefix cache: rows %" PRId64 " below the block",
		                p0);
	memcpy(kv, s->kv + ((size_t)p0 - s->start) * s->kb, (size_t)(p1 - p0) * s->kb);
	return MOE_OK;
}

/* Rebuilds from the disk tier the chain of blocks that memory lacks (rows or
 * the checkpoint at a block's end), up to max; returns the end of the last
 * block that has its checkpoint now (0: none). */
static size_t from_disk(moe_prefix_cache *c, const int32_t *tokens, size_t n, size_t max)
{
	const size_t b = c->o.block, kb = c->o.kv_pos_bytes;
	size_t got = 0;
	for (size_t end = b; end <= n && end <= max; end += b) {
		size_t at;
		const node *x = walk(c, tokens, end, &at, false);
		if (at == end && x->state != NULL) {
			got = end; /* in memory already, with its checkpoint */
			continue;
		}
		const size_t mem = held(c, tokens, end);
		uint8_t *buf;
		if (mem < end - b || !read_block(c, tokens, end, &buf))
			break;
		block_src s = {
		    .kv = buf + HEAD + b * 4, .start = end - b, .kb = kb, .c = c, .tokens = tokens};
		const moe_err err =
		    do_insert(c, tokens, end, from_block, &s, buf + HEAD + b * 4 + b * kb);
		free(buf);
		size_t now;
		const node *y = walk(c, tokens, end, &now, false);
		if (err != MOE_OK || now != end || y->state == NULL)
			break;
		pthread_mutex_lock(&c->mu);
		c->st.disk_hits++;
		pthread_mutex_unlock(&c->mu);
		got = end;
	}
	return got;
}

/* ---- the API ------------------------------------------------------------------------ */

/* Copies the tree's sizes into the statistics other threads read. */
static void publish(moe_prefix_cache *c)
{
	pthread_mutex_lock(&c->mu);
	c->st.bytes = c->bytes;
	c->st.state_bytes = c->st_bytes;
	c->st.nodes = c->nodes;
	c->st.checkpoints = c->checkpoints;
	pthread_mutex_unlock(&c->mu);
}

size_t moe_prefix_cache_lookup(moe_prefix_cache *c, const int32_t *tokens, size_t n, size_t max)
{
	c->hit = NULL;
	c->hit_len = 0;
	if (n > max)
		n = max;
	node *x = &c->root;
	size_t pos = 0, best = 0;
	node *bn = NULL;
	for (;;) {
		node *k = pos < n ? child_of(x, tokens[pos]) : NULL;
		if (k == NULL)
			break;
		if (k->len > n - pos || memcmp(k->tok, tokens + pos, k->len * 4) != 0) {
			/* without a recurrent state, KV rows alone restore any
			 * position: a hit may end inside a run */
			if (c->o.state_bytes == 0) {
				size_t m = 0;
				while (m < k->len && pos + m < n && k->tok[m] == tokens[pos + m])
					m++;
				k->used = ++c->clock;
				best = pos + m;
				bn = k;
			}
			break;
		}
		pos += k->len;
		x = k;
		x->used = ++c->clock;
		if (x->state != NULL || c->o.state_bytes == 0) {
			best = pos;
			bn = x;
		}
	}
	/* the disk holds checkpoints at multiples of the block only */
	if (c->dir[0] != '\0' && (best / c->o.block + 1) * c->o.block <= n) {
		const size_t d = from_disk(c, tokens, n, max);
		if (d > best) {
			size_t e;
			bn = walk(c, tokens, d, &e, true);
			best = d;
		}
	}
	pthread_mutex_lock(&c->mu);
	c->st.lookups++;
	if (best > 0) {
		c->st.hits++;
		c->st.tokens_reused += best;
	}
	pthread_mutex_unlock(&c->mu);
	c->hit = bn;
	c->hit_len = best;
	publish(c);
	return best;
}

moe_err moe_prefix_cache_read(moe_prefix_cache *c, size_t len, moe_prefix_kv_sink sink, void *ctx,
                              void *state)
{
	if (c->hit == NULL || len != c->hit_len || len == 0)
		return moe_fail(MOE_ERR_STATE, "prefix cache: %zu is not the last hit", len);
	/* the path from the root, in position order */
	node *path[1024];
	int n = 0;
	for (node *x = c->hit; x != &c->root; x = x->parent) {
		if (n == 1024)
			return moe_fail(MOE_ERR_STATE, "prefix cache: path deeper than 1024 nodes");
		path[n++] = x;
	}
	for (int i = n - 1; i >= 0; i--)
		if (!sink(ctx, (int64_t)path[i]->start,
		          (int64_t)(i > 0 ? path[i]->start + path[i]->len : len), path[i]->kv))
			return moe_fail(MOE_ERR_CANCELED, "prefix cache: the reader stopped");
	if (c->o.state_bytes > 0)
		memcpy(state, c->hit->state, c->o.state_bytes);
	return MOE_OK;
}

moe_err moe_prefix_cache_insert(moe_prefix_cache *c, const int32_t *tokens, size_t n,
                                moe_prefix_kv_source source, void *ctx, const void *state)
{
	c->hit = NULL; /* the tree changes */
	c->hit_len = 0;
	const moe_err err = do_insert(c, tokens, n, source, ctx, state);
	if (err == MOE_OK && c->dir[0] != '\0' && n % c->o.block == 0 && n > 0)
		queue_block(c, tokens, n);
	publish(c);
	return err;
}

moe_prefix_stats moe_prefix_cache_stats(moe_prefix_cache *c)
{
	pthread_mutex_lock(&c->mu);
	const moe_prefix_stats s = c->st;
	pthread_mutex_unlock(&c->mu);
	return s;
}

/* Makes dir (and its parents' last level) if missing. */
static moe_err make_dir(const char *d)
{
	if (mkdir(d, 0700) != 0 && errno != EEXIST)
		return moe_fail(MOE_ERR_IO, "prefix cache: mkdir %s: %s", d, strerror(errno));
	return MOE_OK;
}

moe_err moe_prefix_cache_create(moe_prefix_cache **out, const moe_prefix_opts *o)
{
	if (o->kv_pos_bytes == 0)
		return moe_fail(MOE_ERR_INVAL, "prefix cache: kv_pos_bytes 0");
	moe_prefix_cache *c = calloc(1, sizeof *c);
	if (c == NULL)
		return moe_fail(MOE_ERR_NOMEM, "prefix cache");
	c->o = *o;
	if (c->o.block == 0)
		c->o.block = 256;
	if (c->o.disk_bytes == 0)
		c->o.disk_bytes = 4 * (uint64_t)c->o.ram_bytes;
	c->o.dir = NULL;
	moe_err err = MOE_OK;
	if (pthread_mutex_init(&c->mu, NULL) != 0 || pthread_cond_init(&c->cv, NULL) != 0) {
		free(c);
		return moe_fail(MOE_ERR_SYS, "prefix cache: pthread");
	}
	if (o->dir != NULL) {
		char id[17];
		snprintf(id, sizeof id, "%016" PRIx64, fnv64(o->identity, 32));
		snprintf(c->dir, sizeof c->dir, "%s/%s", o->dir, id);
		if ((err = make_dir(o->dir)) != MOE_OK || (err = make_dir(c->dir)) != MOE_OK)
			goto out_free;
		DIR *d = opendir(c->dir);
		if (d == NULL) {
			err = moe_fail(MOE_ERR_IO, "prefix cache: %s: %s", c->dir, strerror(errno));
			goto out_free;
		}
		const struct dirent *e;
		while ((e = readdir(d)) != NULL) {
			const size_t l = strlen(e->d_name);
			char p[1400];
			struct stat st;
			snprintf(p, sizeof p, "%s/%s", c->dir, e->d_name);
			if (l > 7 && strcmp(e->d_name + l - 7, ".moeblk") == 0 && stat(p, &st) == 0)
				files_add(c, e->d_name, (uint64_t)st.st_size,
				          (int64_t)st.st_mtim.tv_sec * 1000000000 +
				              st.st_mtim.tv_nsec);
		}
		closedir(d);
		if (pthread_create(&c->writer, NULL, writer_main, c) != 0) {
			err = moe_fail(MOE_ERR_SYS, "prefix cache: the disk writer");
			goto out_free;
		}
		c->writer_on = true;
	}
	*out = c;
	return MOE_OK;

out_free:
	free(c->files);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	free(c);
	return err;
}

void moe_prefix_cache_destroy(moe_prefix_cache *c)
{
	if (c == NULL)
		return;
	if (c->writer_on) {
		pthread_mutex_lock(&c->mu);
		c->stopping = true;
		pthread_cond_signal(&c->cv);
		pthread_mutex_unlock(&c->mu);
		pthread_join(c->writer, NULL);
	}
	for (int i = 0; i < c->root.n_kids; i++)
		node_free(c, c->root.kids[i]);
	free(c->root.kids);
	free(c->files);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	free(c);
}
