#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Reference forward pass of llama and qwen2 GGUF models, in float64 NumPy.

The engine's answers are checked against this: it shares no code with the
engine (gguf_read.py parses and dequantizes the file itself) and favours
plain, readable math over speed.

    reference.py MODEL.gguf --tokens 1,2,3 [--last] [--decode N] [--out FILE]

Writes the logits of every prompt position (with --last: only the last),
one line per position, n_vocab floats in %.9g separated by spaces. With
--decode N it then decodes greedily (argmax, ties -> lowest id): the argmax
of the latest logits is fed back as the next token, N times, and the logits
after each fed token are written as one more line. The N fed tokens are
printed as "greedy: t0 t1 ...". Logits go to FILE, or to stdout when no
--out is given (the greedy line then goes to stderr).

The model, as llama.cpp runs it:
  x = token_embd[token]
  per layer: h = rmsnorm(x) * attn_norm
             q, k, v = h Wq (+bq), h Wk (+bk), h Wv (+bv)   (biases: qwen2)
             RoPE on q and k: llama rotates pairs (2i, 2i+1) of each head,
             qwen2 (NeoX) pairs (i, i + n_rot/2); theta_i = pos *
             freq_base^(-2i/n_rot); dimensions past n_rot are left alone
             query head h reads KV head h / (n_head / n_head_kv)
             x += softmax(q k^T / sqrt(head_dim), causal) v Wo
             h = rmsnorm(x) * ffn_norm
             x += (silu(h Wgate) * h Wup) Wdown
  logits = (rmsnorm(x) * output_norm) Woutput (token_embd when tied)
Weights are kept as float32 (what the file's types dequantize to) and every
product is computed in float64.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_read import GGUFFile  # noqa: E402


class Model:
    def __init__(self, path):
        f = GGUFFile(path)
        self.arch = arch = f.kv["general.architecture"]
        if arch not in ("llama", "qwen2"):
            raise SystemExit(f"{path}: architecture {arch!r} unsupported")
        kv = lambda key, default=None: f.kv.get(f"{arch}.{key}", default)  # noqa: E731
        self.n_embd = kv("embedding_length")
        self.n_layer = kv("block_count")
        self.n_head = kv("attention.head_count")
        self.n_head_kv = kv("attention.head_count_kv", self.n_head)
        self.head_dim = self.n_embd // self.n_head
        self.n_rot = kv("rope.dimension_count", self.head_dim)
        self.eps = kv("attention.layer_norm_rms_epsilon")
        self.freq_base = kv("rope.freq_base", 10000.0)
        self.neox = arch == "qwen2"
        self.w = {name: f.array(name) for name in f.tensors}
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]
        self.n_vocab = self.w["output.weight"].shape[0]
        self.reset()

    def reset(self):
        """Forget the context (the KV cache)."""
        self.pos = 0
        self.cache = [(np.zeros((0, self.n_head_kv, self.head_dim)),) * 2
                      for _ in range(self.n_layer)]

    def _rmsnorm(self, x, name):
        ms = np.mean(x * x, axis=-1, keepdims=True)
        return x / np.sqrt(ms + self.eps) * self.w[name]

    def _linear(self, x, name, bias=None):
        y = x @ self.w[name].T.astype(np.float64)
        if bias in self.w:
            y = y + self.w[bias]
        return y

    def _rope(self, x, pos):
        """x: (T, heads, head_dim), rotated in place by positions pos[T]."""
        half = self.n_rot // 2
        theta = self.freq_base ** (-2.0 * np.arange(half) / self.n_rot)
        ang = pos[:, None].astype(np.float64) * theta[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        if self.neox:
            a, b = x[..., :half].copy(), x[..., half:self.n_rot].copy()
            x[..., :half] = a * cos - b * sin
            x[..., half:self.n_rot] = a * sin + b * cos
        else:
            a, b = x[..., 0:self.n_rot:2].copy(), x[..., 1:self.n_rot:2].copy()
            x[..., 0:self.n_rot:2] = a * cos - b * sin
            x[..., 1:self.n_rot:2] = a * sin + b * cos
        return x

    def forward(self, tokens):
        """Feeds tokens after the context; returns their logits (T, n_vocab)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        T = len(tokens)
        pos = np.arange(self.pos, self.pos + T)
        x = self.w["token_embd.weight"][tokens].astype(np.float64)
        group = self.n_head // self.n_head_kv
        for il in range(self.n_layer):
            p = f"blk.{il}."
            h = self._rmsnorm(x, p + "attn_norm.weight")
            q = self._linear(h, p + "attn_q.weight", p + "attn_q.bias")
            k = self._linear(h, p + "attn_k.weight", p + "attn_k.bias")
            v = self._linear(h, p + "attn_v.weight", p + "attn_v.bias")
            q = self._rope(q.reshape(T, self.n_head, self.head_dim), pos)
            k = self._rope(k.reshape(T, self.n_head_kv, self.head_dim), pos)
            v = v.reshape(T, self.n_head_kv, self.head_dim)
            K = np.concatenate([self.cache[il][0], k])
            V = np.concatenate([self.cache[il][1], v])
            self.cache[il] = (K, V)
            K, V = np.repeat(K, group, axis=1), np.repeat(V, group, axis=1)
            s = np.einsum("thd,shd->hts", q, K) / np.sqrt(self.head_dim)
            s[:, np.arange(len(K))[None, :] > pos[:, None]] = -np.inf
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            o = np.einsum("hts,shd->thd", s, V).reshape(T, self.n_embd)
            x = x + self._linear(o, p + "attn_output.weight")
            h = self._rmsnorm(x, p + "ffn_norm.weight")
            g = self._linear(h, p + "ffn_gate.weight")
            u = self._linear(h, p + "ffn_up.weight")
            x = x + self._linear(g / (1.0 + np.exp(-g)) * u, p + "ffn_down.weight")
        self.pos += T
        return self._linear(self._rmsnorm(x, "output_norm.weight"), "output.weight")


def greedy(logits):
    """The argmax of a logits vector; ties go to the lowest id."""
    return int(np.argmax(logits))  # np.argmax returns the first maximum


def write_rows(out, rows):
    for r in rows:
        out.write(" ".join("%.9g" % v for v in r))
        out.write("\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True, help="prompt token ids, comma-separated")
    ap.add_argument("--last", action="store_true", help="write only the last prompt position")
    ap.add_argument("--decode", type=int, default=0, metavar="N", help="greedy decode N tokens")
    ap.add_argument("--out", help="logits file (default: stdout)")
    a = ap.parse_args(argv)
    tokens = [int(t) for t in a.tokens.split(",") if t.strip()]
    if not tokens:
        ap.error("--tokens: no tokens")
    m = Model(a.model)
    if max(tokens) >= m.n_vocab or min(tokens) < 0:
        ap.error(f"--tokens: ids must be in [0, {m.n_vocab})")
    out = open(a.out, "w") if a.out else sys.stdout
    logits = m.forward(tokens)
    write_rows(out, logits[-1:] if a.last else logits)
    fed = []
    last = logits[-1]
    for _ in range(a.decode):
        fed.append(greedy(last))
        last = m.forward([fed[-1]])[0]
        write_rows(out, [last])
    if a.out:
        out.close()
    if a.decode:
        print("greedy:", " ".join(map(str, fed)), file=sys.stdout if a.out else sys.stderr)


if __name__ == "__main__":
    main()
