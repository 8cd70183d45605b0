// llama_mtp_logits.cpp - golden MTP (nextn) logits from llama.cpp, for
// tests/test_mtp.c.  Built like ../shared/tools/llama_logits.cpp (see
// tests/fixtures/README.md), plus -I src for llama-ext.h.
// usage: llama_mtp_logits MODEL.gguf TOKENS(comma) OUT.f32 [threads=1] [chain:K]
// The trunk runs the tokens in one llama_decode (f32 KV) and gives its
// post-norm hidden rows h_0..h_{n-1}; then the MTP context (an
// LLAMA_CONTEXT_TYPE_MTP context over the same model) runs token q at
// position q with h_{q-1} (zeros for q = 0), as common/speculative.cpp's
// draft-mtp catch-up does, and OUT gets its logits for every q: [n][n_vocab]
// f32, row q being the logits for position q + 1.
// chain:K then drafts K tokens as draft-mtp does: the trunk's greedy next token
// t at position n with h_{n-1}, then each draft at the next position with the
// MTP context's own h_nextn row of the pass before; prints the K ids.
#include "llama.h"
#include "llama-ext.h"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static std::vector<llama_token> parse(const char *s) {
    std::vector<llama_token> v; std::string t;
    for (const char *p = s;; ++p) {
        if (*p == ',' || *p == 0) { if (!t.empty()) v.push_back(atoi(t.c_str())); t.clear(); if (!*p) break; }
        else t += *p;
    }
    return v;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s MODEL TOKENS OUT [threads]\n", argv[0]); return 2; }
    int threads = argc > 4 ? atoi(argv[4]) : 1;
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.load_mtp = true;
    llama_model *m = llama_model_load_from_file(argv[1], mp);
    if (!m) { fprintf(stderr, "load failed\n"); return 1; }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 1024; cp.n_batch = 512; cp.n_ubatch = 512; cp.n_seq_max = 1;
    cp.n_threads = threads; cp.n_threads_batch = threads;
    cp.type_k = GGML_TYPE_F32; cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context *tgt = llama_init_from_model(m, cp);
    if (!tgt) { fprintf(stderr, "context failed\n"); return 1; }
    llama_set_embeddings_nextn(tgt, true, false);
    llama_context_params dp = cp;
    dp.ctx_type = LLAMA_CONTEXT_TYPE_MTP;
    dp.n_rs_seq = 0;
    dp.ctx_other = tgt;
    llama_context *dft = llama_init_from_model(m, dp);
    if (!dft) { fprintf(stderr, "MTP context failed\n"); return 1; }
    llama_set_embeddings_nextn(dft, true, true);
    const int V = llama_vocab_n_tokens(llama_model_get_vocab(m));
    const int E = llama_model_n_embd_out(m);
    std::vector<llama_token> toks = parse(argv[2]);
    const int n = (int)toks.size();

    llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = toks[i]; b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1;
    }
    b.n_tokens = n;
    if (llama_decode(tgt, b) != 0) { fprintf(stderr, "trunk decode failed\n"); return 1; }
    llama_batch_free(b);
    std::vector<float> h((size_t)n * E, 0.0f);
    for (int i = 0; i + 1 < n; i++)
        memcpy(&h[(size_t)(i + 1) * E], llama_get_embeddings_nextn_ith(tgt, i), sizeof(float) * E);

    llama_batch d = llama_batch_init(n, E, 1);
    d.token = (llama_token *)malloc(sizeof(llama_token) * n);
    for (int i = 0; i < n; i++) {
        d.token[i] = toks[i]; d.pos[i] = i; d.n_seq_id[i] = 1; d.seq_id[i][0] = 0; d.logits[i] = 1;
    }
    memcpy(d.embd, h.data(), sizeof(float) * h.size());
    d.n_tokens = n;
    if (llama_decode(dft, d) != 0) { fprintf(stderr, "MTP decode failed\n"); return 1; }

    FILE *f = fopen(argv[3], "wb");
    if (!f) return 1;
    for (int i = 0; i < n; i++) fwrite(llama_get_logits_ith(dft, i), 4, V, f);
    fclose(f);
    const int K = argc > 5 && !strncmp(argv[5], "chain:", 6) ? atoi(argv[5] + 6) : 0;
    if (K > 0) {
        auto argmax = [V](const float *l) { int b = 0; for (int i = 1; i < V; i++) if (l[i] > l[b]) b = i; return b; };
        int t = argmax(llama_get_logits_ith(tgt, n - 1));
        std::vector<float> hc(llama_get_embeddings_nextn_ith(tgt, n - 1), llama_get_embeddings_nextn_ith(tgt, n - 1) + E);
        llama_batch c = llama_batch_init(1, E, 1);
        c.token = (llama_token *)malloc(sizeof(llama_token));
        for (int i = 0; i < K; i++) {
            c.token[0] = t; c.pos[0] = n + i; c.n_seq_id[0] = 1; c.seq_id[0][0] = 0; c.logits[0] = 1;
            memcpy(c.embd, hc.data(), sizeof(float) * E);
            c.n_tokens = 1;
            if (llama_decode(dft, c) != 0) { fprintf(stderr, "MTP chain decode failed\n"); return 1; }
            t = argmax(llama_get_logits_ith(dft, 0));
            memcpy(hc.data(), llama_get_embeddings_nextn_ith(dft, 0), sizeof(float) * E);
            printf("%s%d", i ? "," : "", t);
        }
        printf("\n");
        free(c.token); c.token = nullptr;
        llama_batch_free(c);
    }
    free(d.token); d.token = nullptr;
    llama_batch_free(d);
    llama_free(dft); llama_free(tgt); llama_model_free(m);
    return 0;
}
