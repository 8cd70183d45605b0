#!/usr/bin/env python3
"""train_kjv_qwen35moe.py - trains the demo model models/kjv-qwen35moe-*.gguf.

A tiny qwen35moe (Gated DeltaNet + gated full attention, MoE with a shared
expert, one MTP block trained on the next-next token) on the King James Bible,
with PyTorch on the CPU.  The math is moemesh's forward (model/deltanet.c,
model/attention.c, model/forward.c, model/mtp.c), which equals llama.cpp's.

Steps (each a subcommand; `all` runs them in order):
  corpus   `bible` (Debian bible-kjv-text) -> one verse per line, split into
           train.txt / val.txt exactly as ../shared/demo-models/README.md says,
           and tokenised with `moemesh tokenize` and the 4096-token BPE of
           models/kjv-qwen3next-Q4_K_M.gguf (the same tokenizer as the other
           demo models) -> train.u16 / val.u16
  train    trains for a wall-clock budget, checkpoints to WORK/ckpt.pt; the
           defaults are what made models/kjv-qwen35moe-*.gguf (run as
           `OMP_NUM_THREADS=1 nice -n 10 python3 ... train`; see models/README.md)
  export   writes each tensor as raw little-endian F32 in ggml order to
           WORK/weights/<gguf name>, for
           `moemesh make-model --arch qwen35moe --preset kjv --from-weights DIR
            --tokenizer-gguf models/kjv-qwen3next-Q4_K_M.gguf -o F32.gguf`
  random   exports untrained (seeded) weights, for checking the forward
  logits   prints this model's logits for a token list (JSON) to compare with
           `moemesh logits` on the exported file

Parameters are kept in the form the GGUF stores (norm multipliers, ssm_a = -A),
so export is a copy.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

# ---- hyper-parameters (moemesh's `--preset kjv` for qwen35moe must agree) ----
V = 4096  # vocabulary (the demo models' BPE)
E = 256  # hidden
N_LAYER = 4  # trunk; full attention every 4th (layer 3), the rest Gated DeltaNet
NK, NV, HK, HV = 2, 4, 64, 64  # DeltaNet key heads, value heads, head sizes
KCONV = 4
CONV_DIM = 2 * NK * HK + NV * HV
H, HKV, D = 8, 2, 32  # attention heads, KV heads, head dim
N_ROT = 8  # rotary dims (rope.dimension_count)
SECTIONS = (2, 1, 1, 0)  # rope.dimension_sections (text tokens: all rotate)
ROPE_BASE = 1e7
N_EXP, N_USED, F_EXP, F_SH = 16, 4, 128, 256
EPS = 1e-6
GDN_CHUNK = 64


def rmsnorm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def l2norm(x):
    return x / torch.clamp(x.norm(dim=-1, keepdim=True), min=EPS)


def rope_cos_sin(T, device=None):
    """IMROPE angles for text positions 0..T-1 (moe_rope_cache_imrope)."""
    theta_scale = ROPE_BASE ** (-2.0 / N_ROT)
    tot = sum(SECTIONS)
    rot = []
    for i in range(N_ROT // 2):
        s = i % tot
        rot.append((s % 3 == 0 and s < 3 * SECTIONS[0]) or (s % 3 == 1 and s < 3 * SECTIONS[1])
                   or (s % 3 == 2 and s < 3 * SECTIONS[2]))
    freqs = torch.tensor([theta_scale ** i for i in range(N_ROT // 2)], dtype=torch.float64)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * freqs[None, :]
    mask = torch.tensor(rot)[None, :]
    cos = torch.where(mask, torch.cos(ang), torch.ones_like(ang)).float()
    sin = torch.where(mask, torch.sin(ang), torch.zeros_like(ang)).float()
    return cos, sin  # [T, N_ROT/2]


def rope_neox(x, cos, sin):
    """x [..., T, heads, D]: pairs (i, i + N_ROT/2) of the first N_ROT dims."""
    half = N_ROT // 2
    x0, x1, rest = x[..., :half], x[..., half:N_ROT], x[..., N_ROT:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x0 * c - x1 * s, x0 * s + x1 * c, rest], dim=-1)


class P:
    """Parameter store: name (GGUF name) -> tensor in torch's [rows, cols] form."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)
        self.t = {}

    def normal(self, name, shape, std):
        self.t[name] = (torch.randn(*shape, generator=self.g) * std).requires_grad_()

    def ones(self, name, n):
        self.t[name] = torch.ones(n).requires_grad_()

    def value(self, name, v):
        self.t[name] = v.clone().float().requires_grad_()


def build_params(seed=1):
    p = P(seed)
    p.normal("token_embd.weight", (V, E), 1.0)
    for il in range(N_LAYER + 1):
        b = "blk.%d." % il
        mtp = il == N_LAYER
        full = mtp or (il + 1) % 4 == 0
        p.ones(b + "attn_norm.weight", E)
        p.ones(b + "post_attention_norm.weight", E)
        if full:
            p.normal(b + "attn_q.weight", (2 * H * D, E), E ** -0.5)
            p.normal(b + "attn_k.weight", (HKV * D, E), E ** -0.5)
            p.normal(b + "attn_v.weight", (HKV * D, E), E ** -0.5)
            p.normal(b + "attn_output.weight", (E, H * D), 0.5 * (H * D) ** -0.5)
            p.ones(b + "attn_q_norm.weight", D)
            p.ones(b + "attn_k_norm.weight", D)
        else:
            p.normal(b + "attn_qkv.weight", (CONV_DIM, E), E ** -0.5)
            p.normal(b + "attn_gate.weight", (NV * HV, E), E ** -0.5)
            p.value(b + "ssm_conv1d.weight",
                    (torch.rand(CONV_DIM, KCONV, generator=p.g) - 0.5) * (2 / math.sqrt(KCONV)))
            # dt bias so softplus(dt) starts in [1e-3, 0.1]; A in [1, 16] as in Mamba-2
            dt = torch.exp(torch.rand(NV, generator=p.g) * (math.log(0.1) - math.log(1e-3))
                           + math.log(1e-3))
            p.value(b + "ssm_dt.bias", dt + torch.log(-torch.expm1(-dt)))
            p.value(b + "ssm_a_log", torch.log(1 + 15 * torch.rand(NV, generator=p.g)))
            p.normal(b + "ssm_beta.weight", (NV, E), E ** -0.5)
            p.normal(b + "ssm_alpha.weight", (NV, E), E ** -0.5)
            p.ones(b + "ssm_norm.weight", HV)
            p.normal(b + "ssm_out.weight", (E, NV * HV), 0.5 * (NV * HV) ** -0.5)
        p.normal(b + "ffn_gate_inp.weight", (N_EXP, E), E ** -0.5)
        p.normal(b + "ffn_gate_exps.weight", (N_EXP, F_EXP, E), E ** -0.5)
        p.normal(b + "ffn_up_exps.weight", (N_EXP, F_EXP, E), E ** -0.5)
        p.normal(b + "ffn_down_exps.weight", (N_EXP, E, F_EXP), 0.5 * F_EXP ** -0.5)
        p.normal(b + "ffn_gate_inp_shexp.weight", (E,), E ** -0.5)
        p.normal(b + "ffn_gate_shexp.weight", (F_SH, E), E ** -0.5)
        p.normal(b + "ffn_up_shexp.weight", (F_SH, E), E ** -0.5)
        p.normal(b + "ffn_down_shexp.weight", (E, F_SH), 0.5 * F_SH ** -0.5)
        if mtp:
            p.normal(b + "nextn.eh_proj.weight", (E, 2 * E), (2 * E) ** -0.5)
            p.ones(b + "nextn.enorm.weight", E)
            p.ones(b + "nextn.hnorm.weight", E)
            p.ones(b + "nextn.shared_head_norm.weight", E)
    p.ones("output_norm.weight", E)
    p.normal("output.weight", (V, E), E ** -0.5)
    return p.t


# ---- the layers -----------------------------------------------------------------------

def attention(W, b, xn, cos, sin):
    B, T, _ = xn.shape
    qg = (xn @ W[b + "attn_q.weight"].t()).view(B, T, H, 2 * D)
    q, gate = qg[..., :D], qg[..., D:]
    k = (xn @ W[b + "attn_k.weight"].t()).view(B, T, HKV, D)
    v = (xn @ W[b + "attn_v.weight"].t()).view(B, T, HKV, D)
    q = rope_neox(rmsnorm(q, W[b + "attn_q_norm.weight"]), cos, sin)
    k = rope_neox(rmsnorm(k, W[b + "attn_k_norm.weight"]), cos, sin)
    grp = H // HKV  # query head h reads KV head h / grp
    k = k.repeat_interleave(grp, dim=2)
    v = v.repeat_interleave(grp, dim=2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    s = s.masked_fill(mask, float("-inf"))
    o = (torch.softmax(s, dim=-1) @ v).transpose(1, 2)  # [B, T, H, D]
    o = o * torch.sigmoid(gate)
    return o.reshape(B, T, H * D) @ W[b + "attn_output.weight"].t()


def gdn_chunked(q, k, v, beta, g):
    """Gated delta rule, chunked (model/gdn.c's math).  q, k: [B, NV, T, HK]
    (q already scaled), v: [B, NV, T, HV], beta, g: [B, NV, T]."""
    B_, NH, T, _ = q.shape
    S = q.new_zeros(B_, NH, HK, HV)
    outs = []
    for c0 in range(0, T, GDN_CHUNK):
        c1 = min(T, c0 + GDN_CHUNK)
        C = c1 - c0
        qc, kc, vc = q[:, :, c0:c1], k[:, :, c0:c1], v[:, :, c0:c1]
        bc, G = beta[:, :, c0:c1], torch.cumsum(g[:, :, c0:c1], dim=-1)
        diff = G[..., :, None] - G[..., None, :]  # G_t - G_i
        strict = torch.ones(C, C, dtype=torch.bool).tril(-1)
        incl = torch.ones(C, C, dtype=torch.bool).tril(0)
        dec_s = torch.exp(torch.where(strict, diff, torch.full_like(diff, -float("inf"))))
        dec_i = torch.exp(torch.where(incl, diff, torch.full_like(diff, -float("inf"))))
        eg = torch.exp(G)[..., None]
        kk = kc @ kc.transpose(-1, -2)
        A = bc[..., None] * dec_s * kk
        rhs = bc[..., None] * (vc - eg * (kc @ S))
        Dm = torch.linalg.solve_triangular(torch.eye(C) + A, rhs, upper=False,
                                           unitriangular=True)
        o = eg * (qc @ S) + (dec_i * (qc @ kc.transpose(-1, -2))) @ Dm
        outs.append(o)
        w = torch.exp(G[..., -1:] - G)[..., None]  # [B, NH, C, 1]
        S = torch.exp(G[..., -1])[..., None, None] * S + (kc * w).transpose(-1, -2) @ Dm
    return torch.cat(outs, dim=2)


def deltanet(W, b, xn):
    B, T, _ = xn.shape
    qkv = xn @ W[b + "attn_qkv.weight"].t()  # [B, T, CONV_DIM]
    z = (xn @ W[b + "attn_gate.weight"].t()).view(B, T, NV, HV)
    bl = xn @ W[b + "ssm_beta.weight"].t()
    al = xn @ W[b + "ssm_alpha.weight"].t()
    beta = torch.sigmoid(bl)
    ssm_a = -torch.exp(W[b + "ssm_a_log"])
    g = ssm_a * F.softplus(al + W[b + "ssm_dt.bias"])  # [B, T, NV]
    conv = F.conv1d(F.pad(qkv.transpose(1, 2), (KCONV - 1, 0)),
                    W[b + "ssm_conv1d.weight"][:, None, :], groups=CONV_DIM)
    qkv = F.silu(conv).transpose(1, 2)  # [B, T, CONV_DIM]
    q = l2norm(qkv[..., :NK * HK].reshape(B, T, NK, HK)) / math.sqrt(HK)
    k = l2norm(qkv[..., NK * HK:2 * NK * HK].reshape(B, T, NK, HK))
    v = qkv[..., 2 * NK * HK:].reshape(B, T, NV, HV)
    # value head j reads key head j mod NK (qwen35moe's tiled heads)
    idx = torch.tensor([j % NK for j in range(NV)])
    q, k = q[:, :, idx], k[:, :, idx]
    o = gdn_chunked(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                    beta.transpose(1, 2), g.transpose(1, 2)).transpose(1, 2)  # [B, T, NV, HV]
    o = rmsnorm(o, W[b + "ssm_norm.weight"]) * F.silu(z)
    return o.reshape(B, T, NV * HV) @ W[b + "ssm_out.weight"].t()


def moe(W, b, xn, stats):
    B, T, _ = xn.shape
    x = xn.reshape(B * T, E)
    probs = torch.softmax(x @ W[b + "ffn_gate_inp.weight"].t(), dim=-1)
    w, ids = torch.topk(probs, N_USED, dim=-1)
    w = w / w.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    flat_ids = ids.reshape(-1)
    flat_w = w.reshape(-1)
    tok = torch.arange(B * T).repeat_interleave(N_USED)
    # unbound once: indexing the [N_EXP, ...] tensors per expert would make
    # the backward pass add N_EXP full-size gradients per tensor
    gate, up, down = (W[b + "ffn_gate_exps.weight"].unbind(0),
                      W[b + "ffn_up_exps.weight"].unbind(0),
                      W[b + "ffn_down_exps.weight"].unbind(0))
    for e in range(N_EXP):
        sel = (flat_ids == e).nonzero(as_tuple=True)[0]
        if sel.numel() == 0:
            continue
        rows = tok[sel]
        xe = x[rows]
        ye = (F.silu(xe @ gate[e].t()) * (xe @ up[e].t())) @ down[e].t()
        out = out.index_add(0, rows, ye * flat_w[sel, None])
    sh = (F.silu(x @ W[b + "ffn_gate_shexp.weight"].t()) * (x @ W[b + "ffn_up_shexp.weight"].t())
          ) @ W[b + "ffn_down_shexp.weight"].t()
    out = out + torch.sigmoid(x @ W[b + "ffn_gate_inp_shexp.weight"])[:, None] * sh
    if stats is not None:  # Switch load balancing: N_EXP * sum_e frac_e * meanprob_e
        frac = torch.bincount(flat_ids, minlength=N_EXP).float() / flat_ids.numel()
        stats.append((N_EXP * (frac * probs.mean(0)).sum(), frac.detach()))
    return out.view(B, T, E)


def block(W, il, x, cos, sin, stats):
    b = "blk.%d." % il
    full = il == N_LAYER or (il + 1) % 4 == 0
    xn = rmsnorm(x, W[b + "attn_norm.weight"])
    x = x + (attention(W, b, xn, cos, sin) if full else deltanet(W, b, xn))
    xn = rmsnorm(x, W[b + "post_attention_norm.weight"])
    return x + moe(W, b, xn, stats)


def forward(W, tokens, stats=None, mtp=True):
    """tokens [B, T] -> (trunk logits [B, T, V], MTP logits [B, T, V] or None).
    MTP row p reads token p and the trunk's normed hidden at p - 1 (zeros at
    p = 0) and, like trunk row p, predicts token p + 1."""
    B, T = tokens.shape
    cos, sin = rope_cos_sin(T)
    emb = W["token_embd.weight"][tokens]
    x = emb
    for il in range(N_LAYER):
        x = block(W, il, x, cos, sin, stats)
    hn = rmsnorm(x, W["output_norm.weight"])
    logits = hn @ W["output.weight"].t()
    if not mtp:
        return logits, None
    b = "blk.%d." % N_LAYER
    hprev = torch.cat([torch.zeros_like(hn[:, :1]), hn[:, :-1]], dim=1)
    cat = torch.cat([rmsnorm(emb, W[b + "nextn.enorm.weight"]),
                     rmsnorm(hprev, W[b + "nextn.hnorm.weight"])], dim=-1)
    y = cat @ W[b + "nextn.eh_proj.weight"].t()
    y = block(W, N_LAYER, y, cos, sin, stats)
    mlog = rmsnorm(y, W[b + "nextn.shared_head_norm.weight"]) @ W["output.weight"].t()
    return logits, mlog


# ---- corpus -------------------------------------------------------------------------

def cmd_corpus(a):
    os.makedirs(a.work, exist_ok=True)
    raw = subprocess.run(["bible", "-l", "100000", "gen1:1-rev22:21"], check=True,
                         capture_output=True).stdout.decode("ascii")
    verses = []
    for line in raw.split("\n"):
        m = re.match(r"^\s+\d+ (.*)$", line)
        if m:
            verses.append(" ".join(m.group(1).split()))
    blocks = [verses[i:i + 100] for i in range(0, len(verses), 100)]
    val = [v for i, bl in enumerate(blocks) if i % 50 == 25 for v in bl]
    tr = [v for i, bl in enumerate(blocks) if i % 50 != 25 for v in bl]
    for name, vs in (("train", tr), ("val", val)):
        text = "".join(v + "\n" for v in vs)
        with open(os.path.join(a.work, name + ".txt"), "w") as f:
            f.write(text)
        ids = json.loads(subprocess.run([a.moemesh, "tokenize", "-m", a.tokenizer_gguf],
                                        input=(json.dumps(text) + "\n").encode(), check=True,
                                        capture_output=True).stdout)
        torch.tensor(ids, dtype=torch.int16).numpy().tofile(os.path.join(a.work, name + ".u16"))
        print("%s: %d verses, %d bytes, %d tokens" % (name, len(vs), len(text), len(ids)))


def load_tokens(path):
    import numpy as np
    return torch.from_numpy(np.fromfile(path, dtype=np.uint16).astype("int64"))


# ---- training -----------------------------------------------------------------------

def evaluate(W, val, T, n_win):
    with torch.no_grad():
        tl = ml = 0.0
        n = min(n_win, (len(val) - 1) // T)
        for i in range(n):
            w = val[i * T:i * T + T + 1][None]
            lg, mg = forward(W, w[:, :-1])
            tl += F.cross_entropy(lg[0], w[0, 1:]).item()
            # MTP: rows 1.. (row 0 has no trunk hidden before it)
            ml += F.cross_entropy(mg[0, 1:], w[0, 2:]).item()
        return tl / n, ml / n


def cmd_train(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train = load_tokens(os.path.join(a.work, "train.u16"))
    val = load_tokens(os.path.join(a.work, "val.u16"))
    W = build_params(a.seed)
    decay = [t for n, t in W.items() if t.dim() >= 2]
    no_decay = [t for n, t in W.items() if t.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    ckpt = os.path.join(a.work, "ckpt.pt")
    log = open(os.path.join(a.work, "train.log"), "a")
    t0 = time.time()
    step, ema, ema_m = 0, None, None
    next_eval = a.eval_every
    while True:
        el = time.time() - t0
        if el >= a.budget:
            break
        frac = el / a.budget
        lr = a.lr * min(1.0, (step + 1) / a.warmup)
        if step >= a.warmup:
            lr = a.lr_min + 0.5 * (a.lr - a.lr_min) * (1 + math.cos(math.pi * frac))
        for gr in opt.param_groups:
            gr["lr"] = lr
        starts = torch.randint(0, len(train) - a.seq - 1, (a.batch,))
        win = torch.stack([train[s:s + a.seq + 1] for s in starts.tolist()])
        stats = []
        lg, mg = forward(W, win[:, :-1], stats)
        loss_t = F.cross_entropy(lg.reshape(-1, V), win[:, 1:].reshape(-1))
        loss_m = F.cross_entropy(mg[:, 1:].reshape(-1, V), win[:, 2:].reshape(-1))
        lb = sum(s[0] for s in stats) / len(stats)
        loss = loss_t + a.mtp_weight * loss_m + 0.01 * lb
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(W.values()), 1.0)
        opt.step()
        step += 1
        ema = loss_t.item() if ema is None else 0.98 * ema + 0.02 * loss_t.item()
        ema_m = loss_m.item() if ema_m is None else 0.98 * ema_m + 0.02 * loss_m.item()
        if time.time() - t0 >= next_eval or step == 1:
            next_eval += a.eval_every
            vt, vm = evaluate(W, val, a.seq, a.val_windows)
            msg = ("step %d time %.0f lr %.2e train %.3f mtp %.3f val %.3f (ppl %.1f) "
                   "val_mtp %.3f" % (step, time.time() - t0, lr, ema, ema_m, vt, math.exp(vt), vm))
            print(msg, flush=True)
            log.write(msg + "\n")
            log.flush()
            torch.save({k: v.detach() for k, v in W.items()}, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)
    torch.save({k: v.detach() for k, v in W.items()}, ckpt + ".tmp")
    os.replace(ckpt + ".tmp", ckpt)
    vt, vm = evaluate(W, val, a.seq, 10 ** 9)
    fr = " ".join("%.3f" % f for f in stats[0][1].tolist())
    msg = ("final step %d time %.0f tokens %d train %.3f mtp %.3f val_all %.4f (ppl %.1f) "
           "val_mtp_all %.4f\nlayer0 expert shares %s" % (step, time.time() - t0,
                                                          step * a.batch * a.seq, ema, ema_m,
                                                          vt, math.exp(vt), vm, fr))
    print(msg, flush=True)
    log.write(msg + "\n")


# ---- export -------------------------------------------------------------------------

def write_weights(W, out):
    os.makedirs(out, exist_ok=True)
    for name, t in W.items():
        t = t.detach().float().contiguous()
        if name.endswith("ssm_a_log"):
            name, t = name[:-len("_log")], -torch.exp(t)
        t.numpy().astype("<f4").tofile(os.path.join(out, name))
    print("wrote %d tensors to %s" % (len(W), out))


def cmd_export(a):
    write_weights(torch.load(os.path.join(a.work, "ckpt.pt")), os.path.join(a.work, "weights"))


def cmd_random(a):
    write_weights(build_params(a.seed), os.path.join(a.work, "weights"))


def cmd_logits(a):
    W = torch.load(os.path.join(a.work, "ckpt.pt")) if a.ckpt else build_params(a.seed)
    toks = torch.tensor(json.loads(a.tokens))[None]
    with torch.no_grad():
        lg, mg = forward(W, toks)
    json.dump({"logits": lg[0].tolist(), "mtp": mg[0].tolist()}, sys.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=["corpus", "train", "export", "random", "logits", "all"])
    ap.add_argument("--work", default="kjv35-work")
    ap.add_argument("--moemesh", default="build/release/moemesh")
    ap.add_argument("--tokenizer-gguf", default="models/kjv-qwen3next-Q4_K_M.gguf")
    ap.add_argument("--budget", type=float, default=2400, help="training seconds")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (2 were slower than 1 on the loaded 2-core box)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-min", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--mtp-weight", type=float, default=0.3)
    ap.add_argument("--eval-every", type=float, default=300, help="seconds")
    ap.add_argument("--val-windows", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ckpt", action="store_true", help="logits: of the checkpoint")
    ap.add_argument("--tokens", default="[1147, 258, 2081]")
    a = ap.parse_args()
    if a.cmd in ("corpus", "all"):
        cmd_corpus(a)
    if a.cmd in ("train", "all"):
        cmd_train(a)
    if a.cmd in ("export", "all"):
        cmd_export(a)
    if a.cmd == "random":
        cmd_random(a)
    if a.cmd == "logits":
        cmd_logits(a)


if __name__ == "__main__":
    main()
