/* cluster_impl.h - what link.c (links, placement) and dispatch.c
 * (the expert backend) share.  Not a public header. */
#ifndef MOE_CLUSTER_IMPL_H
#define MOE_CLUSTER_IMPL_H

#include <stdatomic.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "coordinator/coordinator.h"
#include "proto/proto.h"

typedef struct clink {
	char url[256];
	char name[64];
	bool local; /* experts computed in this process */
	bool alive;
	/* control (nng) */
	nng_socket ctl;
	bool ctl_open;
	atomic_int pipes; /* connected pipes (nng notify callback) */
	/* data (stream socket) */
	int dfd;
	moe_rx rx;
	pid_t pid; /* spawned worker, or 0 */
	uint64_t mem;
	uint8_t *held; /* [n_layer][n_expert] */
	/* the dispatch of the current layer */
	bool pending;
	int n_sent;
	int32_t *tok;      /* [max_tok] token index of each row sent */
	int32_t *ids;      /* [max_tok][n_used] expert ids for this link, -1 elsewhere */
	float *wts;        /* [max_tok][n_used] */
	struct iovec *iov; /* [max_tok] payload parts */
	uint64_t t_sent;
	/* stats */
	moe_cluster_link_stats st;
} clink;

struct moe_cluster {
	moe_cluster_opts o;
	const moe_model *m;
	const moe_hparams *hp;
	char model_path[1024];
	uint8_t id[MOE_ID_BYTES];
	uint8_t *secret;
	size_t secret_len;
	clink links[MOE_CLUSTER_MAX_LINKS];
	int n_links;
	moe_pool *pool;
	moe_expert_backend be;
	/* the current layer */
	uint64_t step;
	int il;
	int64_t n_tok;
	int n_used;
	const int32_t *ids; /* [n_tok][n_used] the router's choice */
	const float *wts;   /* [n_tok][n_used] */
	moe_type act_type;
	size_t act_row;
	uint8_t *xq; /* [max_tok][act_row], 64-aligned */
	size_t xq_cap;
	int8_t *todo; /* [max_tok][n_used] 1 = not yet computed */
	size_t todo_cap;
	int32_t *lids;  /* [max_tok][n_used] local ids */
	size_t max_tok; /* capacity of the per-link arrays */
	uint64_t rr;    /* rotates the choice among replicas */
	moe_err start_err;
	moe_cluster_counters cnt;
};

/* link.c */
moe_err moe_clu_assign(moe_cluster *c, clink *l);
moe_err moe_clu_repair(moe_cluster *c);
void moe_clu_mark_dead(moe_cluster *c, clink *l, const char *why);

/* dispatch.c */
moe_err moe_clu_backend_start(void *ctx, int il, int64_t n_tok, const float *x, const int32_t *ids,
                              const float *weights, int n_used);
moe_err moe_clu_backend_finish(void *ctx, moe_fix_t *acc);
void moe_clu_free_buffers(moe_cluster *c);

#endif
