"""Batched decoding for the Llama family (Llama, Mistral, Qwen2) over the model's own modules.

What it keeps from the HF forward: the arithmetic. What it drops: building masks every step, growing a
`DynamicCache` by concatenation (which rewrites the whole cache each step), output dataclasses:

- a KV cache preallocated for the whole batch (prompt + max_new_tokens), written in place; dropping finished
  rows moves the live ones to the front in place; new rows join a running batch (`join`: their prompts are
  prefilled apart and end at the batch's current length, left-padded; each row keeps its own positions), and
  the cache is re-laid out (trimmed on the left, grown on the right) only when a join does not fit;
- RoPE cos/sin computed once per batch by the model's own `rotary_emb` and looked up per step;
- decode attention packs the query heads that share a KV head into one (B, n_kv, n_rep, D) block (as HF's
  SDPA path does), so K/V are never repeated, with a padding mask only while some live row is padded; on x86
  CPUs it is one C++ kernel (cpu_kernels.py) that rotates q and k, writes the new key and value into the cache
  and attends in one streaming pass over it (RoPE and SDPA elsewhere); the gated MLP's silu(gate) * up is one
  kernel there too (the same bits as torch's two ops);
- the LM head runs on the last position only;
- with `fuse_weights` (the engine sets it where it packs weights, packed.py), projections that read the same
  input run as one packed product: q|k|v, and gate|up of the gated MLP, and decoding rotates q and k in one
  op. Only where those layers are plain `nn.Linear` as the model stands (or SVF layers in base / merged mode,
  whose weight is the linear's): per-row SVF, LoRA and training-mode layers are called as modules. With a
  low `precision` (int8 / bf16, precision.py) the fused products run in it too, on any batch size;
- RoPE as one roll with a sign-folded sin, and the fp32 RMSNorm as one call (a CPU kernel where it runs): HF's
  bits;
- prefill with `split` (the engine asks for it where no layer keeps per-row state) runs rows in groups of
  similar length, each padded to its own longest prompt only.

Where the time goes (SmolLM2-135M, fp32, one thread of the 2-core AMD EPYC, CPU clock; bench/bench_roofline.py
measures it, bench/README.md has the figures): the products alone, with the fastest kernel torch has here and
nothing else, take ~0.045 s at batch 1 (weights streaming from memory), ~0.10 s at batch 16 and ~0.25 s at
batch 64: the floor of any fp32 engine. A step is ~1.2-1.3x that at batch 16 and 64: the rest is mostly
attention reading the KV cache (at batch 64 ~400 MB a step, ~30 ms at this core's ~14 GB/s), then small ops and
Python.

Embedding, rotary embedding and LM head are called as modules, the norms read their modules' weights, and
every projection that is not fused is called as a module (`q_proj(x)`, `mlp(x)`), never through its
`.weight`, so SVF-wrapped layers (including per-row z) behave exactly as in the HF forward. Greedy output
matches `model.generate` token for token up to float rounding (tests check it on tiny models and on SmolLM2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..svf import SVFLinear
from .cpu_kernels import cpu_kernels
from .packed import fusable, fused_linear

FAST_MODEL_TYPES = ("llama", "mistral", "qwen2")
# RoPE types whose cos/sin depend only on the position (not on the sequence length seen so far).
_STATIC_ROPE = ("default", "linear", "llama3", "yarn")
# MLPs computing down(act(gate(x)) * up(x)), whose gate and up may run as one product.
_GATED_MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP")
_RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")
_SILUS = ("SiLU", "SiLUActivation")  # activations that are F.silu (torch's, transformers')


def _plain_linear(m) -> nn.Linear | None:
    """The nn.Linear whose weight computes `m`'s output as the model stands, or None (any other layer)."""
    if type(m) is nn.Linear:
        return m
    if isinstance(m, SVFLinear) and m.mode.plain_linear and type(m.base) is nn.Linear:
        return m.base
    return None


def _length_groups(lengths: list[int], waste: float = 0.1) -> list[list[int]]:
    """Row indices grouped for prefill: by ascending length, each group grown while padding its rows to its
    longest one adds at most `waste` of its real tokens (equal lengths always share a group)."""
    groups: list[list[int]] = []
    real = 0
    for b in sorted(range(len(lengths)), key=lambda b: lengths[b]):
        n = lengths[b]
        if groups and n * (len(groups[-1]) + 1) <= (1 + waste) * (real + n):
            groups[-1].append(b)
            real += n
        else:
            groups.append([b])
            real = n
    return groups


def _fusable_group(modules, precision: str = "exact") -> list[nn.Linear] | None:
    linears = [_plain_linear(m) for m in modules]
    return linears if all(m is not None for m in linears) and fusable(linears, precision) else None


def fast_path_problem(model, max_len: int) -> str | None:
    """Why `LlamaRunner` cannot run `model` for sequences up to `max_len` tokens, or None if it can."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAST_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {FAST_MODEL_TYPES}"
    base = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if base is None or not all(hasattr(base, n) for n in needed) or not hasattr(model, "lm_head"):
        return "unexpected module layout"
    rope = (getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in _STATIC_ROPE:
        return f"rope type {rope_type!r} depends on the sequence length"
    window = getattr(config, "sliding_window", None)
    uses_window = model_type == "mistral" or getattr(config, "use_sliding_window", False)
    if window is not None and uses_window and max_len > window:
        return f"sequence length {max_len} exceeds the sliding window {window}"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    attn = base.layers[0].self_attn
    if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")):
        return "unexpected attention module"
    return None


def _signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated, for `_rope`."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE, x * cos + rotate_half(x) * sin, bit for bit as HF computes it: rotate_half(x) is
    cat(-x2, x1) and (-x2) * s == x2 * (-s) exactly, so one roll and a sign-folded sin (`_signed_sin`) do it in
    four ops instead of seven."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin


def _rms_norm(norm, x: torch.Tensor, ops=None) -> torch.Tensor:
    """`norm(x)` for the Llama-family RMSNorm in fp32, with HF's bits (weight * (x * rsqrt(mean(x^2) + eps))):
    with `ops`, the CPU kernel (cpu_kernels.py: torch's mean, then one pass), else one `F.rms_norm` call (torch's
    composite runs HF's ops), either way without the module call, its no-op casts and five Python-level ops; any
    other norm or dtype is called as a module."""
    if type(norm).__name__ in _RMS_NORMS and x.dtype == torch.float32 and norm.weight.dtype == torch.float32:
        if ops is not None and x.is_contiguous() and x.device.type == "cpu":
            return ops.rms_norm(x, norm.weight, norm.variance_epsilon)
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    return norm(x)


class LlamaRunner:
    """Prefill + step-by-step decode of one batch with a preallocated KV cache; rows can be dropped."""

    can_drop_rows = True
    can_join = True  # rows may join a running batch (`join`)

    def __init__(self, model, *, fuse_weights: bool = False, precision: str = "exact"):
        self.model = model
        config = model.config
        base = model.model
        self.embed, self.layers, self.norm = base.embed_tokens, base.layers, base.norm
        self.rotary, self.lm_head = base.rotary_emb, model.lm_head
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.n_rep = self.n_heads // self.n_kv
        self.fuse_weights = fuse_weights
        self.precision = precision  # the fused products' kernel (exact, int8, bf16: precision.py)
        self.kv = self.key_bias = self.cos = self.sin = None
        self.n, self.length, self.pos, self.padded = 0, 0, None, False
        self.prefilled = 0  # prompts run through the last prefill

    def _fused_qkv(self, attn, h: torch.Tensor) -> torch.Tensor | None:
        """q|k|v of `h` (..., C) as one packed product (..., (H + 2 Hkv) D), or None where the layers or the
        shape do not allow it."""
        if not self.fuse_weights:
            return None
        group = _fusable_group((attn.q_proj, attn.k_proj, attn.v_proj), self.precision)
        return fused_linear(attn, "qkv", group, h, self.precision) if group is not None else None

    def _qkv(self, attn, h: torch.Tensor):
        """The q, k and v projections of `h` (..., C): one packed product where the layers allow it."""
        y = self._fused_qkv(attn, h)
        if y is not None:
            return y.split([self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim], -1)
        return attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)

    def _mlp(self, mlp, h: torch.Tensor, ops=None) -> torch.Tensor:
        """The layer's MLP on `h`, with gate and up as one packed product where the layers allow it, and
        silu(gate) * up as one kernel with `ops` (cpu_kernels.py, the same bits)."""
        if self.fuse_weights and type(mlp).__name__ in _GATED_MLPS:
            group = _fusable_group((mlp.gate_proj, mlp.up_proj), self.precision)
            y = fused_linear(mlp, "gate_up", group, h, self.precision) if group is not None else None
            if y is not None:
                size = group[0].out_features
                if ops is not None and type(mlp.act_fn).__name__ in _SILUS and y.is_contiguous() \
                        and group[1].out_features == size:
                    return mlp.down_proj(ops.silu_mul(y, size))
                gate, up = y.split([m.out_features for m in group], dim=-1)
                return mlp.down_proj(mlp.act_fn(gate) * up)
        return mlp(h)

    @torch.no_grad()
    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, *,
              capacity: int | None = None, split: bool = False) -> torch.Tensor:
        """Prefill a left-padded batch (B, T) into an empty cache; returns the logits (B, V) for the first new
        token. `capacity`: rows to allocate the cache for (>= B). See `join`."""
        self.release()
        return self.join(input_ids, attention_mask, max_new_tokens, capacity=capacity, split=split)

    @torch.no_grad()
    def join(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, steps: int, *,
             capacity: int | None = None, split: bool = False, repeat: torch.Tensor | None = None) -> torch.Tensor:
        """Prefill new rows, left-padded prompts (G, T), and append them to the running batch (after its live
        rows); returns their logits (G, V) for the first new token (with `repeat`: (R, V), see below).

        Every row's real tokens are the last `pos[b]` slots before the shared length `t`, the slots before them
        masked. A newcomer is placed the same way: its prompt ends at `t`, so the running rows and the newcomers
        decode in one step from then on; each row's positions are its own (`pos`), so its arithmetic is the one
        it would have alone, whatever joined before it (up to float rounding). `steps`: the most decoding steps
        any row may still take; the cache is re-laid out (`_relayout`) when it lacks rows, slots before `t` for a
        longer prompt, or room for `steps`.

        `split` (only where no layer keeps per-row state): rows run in groups of similar length
        (`_length_groups`), each padded only to its own longest prompt. `repeat` (R,), non-decreasing with
        repeat[j] <= j: the batch grows by R rows, row j a copy of prompt repeat[j], so a repeated prompt is
        prefilled once."""
        G = input_ids.shape[0]
        mask = attention_mask.bool()
        lengths = mask.sum(-1)  # (G,)
        T = int(lengths.max())
        input_ids, mask = input_ids[:, input_ids.shape[1] - T :], mask[:, mask.shape[1] - T :]  # drop all-pad columns
        R = G if repeat is None else len(repeat)
        n = self.n
        span = max(T, int(self.pos.max()) if n else 0)  # slots before t that live rows or newcomers need
        if self.kv is None or n + R > self.kv.shape[2] or self.length < T or self.length + steps > self.kv.shape[4]:
            # Room beyond this join's needs only once rows are running: later joins then fit without a copy.
            self._relayout(max(n + R, capacity or 0), span, steps + (span if n else 0))
        t = self.length
        device = input_ids.device
        new = torch.arange(n, n + G, device=device)
        self.key_bias[n : n + G] = 0
        self.key_bias[n : n + G, 0, 0, : t - T] = float("-inf")
        self.key_bias[n : n + G, 0, 0, t - T : t].masked_fill_(~mask, float("-inf"))
        split = split and not any(isinstance(m, SVFLinear) and m.mode.has_row_state for m in self.model.modules())
        groups = _length_groups(lengths.tolist()) if split else [list(range(G))]
        logits: list[torch.Tensor | None] = [None] * G
        for rows in groups:
            index = torch.tensor(rows, device=device)
            Tg = int(lengths[index].max())
            if Tg < t:  # slots left of this group's window: never written, masked; zero so 0 * value stays 0
                self.kv[:, :, new[index], :, : t - Tg] = 0
            out = self._prefill(input_ids[index, T - Tg :], mask[index, T - Tg :], new[index], t - Tg)
            for j, b in enumerate(rows):
                logits[b] = out[j]
        self.pos = torch.cat([self.pos[:n], lengths]) if n else lengths.clone()
        self.n = n + G
        self.prefilled = G
        out = torch.stack(logits)  # (G, V)
        if repeat is not None:
            self._repeat_tail(n, repeat)
            out = out[repeat]
        self.padded = bool(torch.isinf(self.key_bias[: self.n, :, :, :t]).any())
        return out

    def _relayout(self, rows: int, span: int, room: int) -> None:
        """A new cache of `rows` rows and `span + room` slots; the live rows keep their last `span` slots, moved
        to the front, and the shared length becomes `span` (slots no live row needs are dropped)."""
        n, L = self.n, span + room
        dtype, device = self.embed.weight.dtype, self.embed.weight.device
        kv = torch.empty(len(self.layers), 2, rows, self.n_kv, L, self.head_dim, dtype=dtype, device=device)
        bias = torch.zeros(rows, 1, 1, L, dtype=dtype, device=device)  # additive key mask: -inf on unused slots
        if n:
            kept = min(self.length, span)
            src, dst = slice(self.length - kept, self.length), slice(span - kept, span)
            kv[:, :, :n, :, dst] = self.kv[:, :, :n, :, src]
            bias[:n, :, :, dst] = self.key_bias[:n, :, :, src]
            kv[:, :, :n, :, : span - kept] = 0  # masked; zero so 0 * value stays 0
            bias[:n, :, :, : span - kept] = float("-inf")
        self.kv, self.key_bias, self.length = kv, bias, span
        if self.cos is None or self.cos.shape[0] < L:  # positions never exceed slots: a row's tokens fit in L
            probe = torch.empty(1, 1, dtype=dtype, device=device)
            cos, sin = self.rotary(probe, torch.arange(L, device=device)[None])  # (1, L, D) each
            self.cos, self.sin = cos[0], _signed_sin(sin[0])  # (L, D); sin sign-folded for `_rope`

    def _prefill(self, input_ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, offset: int) -> torch.Tensor:
        """Run the prompts `input_ids` (G, Tg), left-padded per `mask` (bool), of batch rows `rows` through the
        layers, writing their K/V to cache slots offset .. offset+Tg; returns their last-position logits (G, V)."""
        G, T = input_ids.shape
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        x = self.embed(input_ids)  # (G, T, C)
        ops = self._ops(x)
        pos = (mask.long().cumsum(-1) - 1).masked_fill(~mask, 0)  # (G, T), as in `generate`
        padded = not bool(mask.all())
        if padded:
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            # Padding slots attend to themselves only, so their (unused) rows stay finite.
            prefill_mask = (causal & mask[:, None, :]) | torch.eye(T, dtype=torch.bool, device=x.device)
            prefill_mask = prefill_mask[:, None]  # (G, 1, T, T)
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # (G, 1, T, D)
        window = slice(offset, offset + T)
        first = int(rows[0])
        if torch.equal(rows, torch.arange(first, first + G, device=rows.device)):  # (the engine sorts prompts by
            rows = slice(first, first + G)  # length, so a group's rows are consecutive): a copy, not an index_put
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, _rms_norm(layer.input_layernorm, x, ops))
            q = q.reshape(G, T, H, D).transpose(1, 2)  # (G, H, T, D)
            k = k.reshape(G, T, Hkv, D).transpose(1, 2)  # (G, Hkv, T, D)
            v = v.reshape(G, T, Hkv, D).transpose(1, 2)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            self.kv[i, 0, rows, :, window] = k
            self.kv[i, 1, rows, :, window] = v
            if padded:
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=prefill_mask, scale=attn.scaling,
                                                   enable_gqa=self.n_rep > 1)
            else:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling,
                                                   enable_gqa=self.n_rep > 1)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(G, T, H * D))
            x = x + self._mlp(layer.mlp, _rms_norm(layer.post_attention_layernorm, x, ops), ops)
        return self.lm_head(_rms_norm(self.norm, x[:, -1:], ops))[:, 0]  # (G, V)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per live row (n,); returns the logits (n, V) for the next one."""
        n = tokens.shape[0]
        H, Hkv, D, R = self.n_heads, self.n_kv, self.head_dim, self.n_rep
        t = self.length
        x = self.embed(tokens[:, None])  # (n, 1, C)
        cos, sin = self.cos[self.pos], self.sin[self.pos]  # (n, D)
        cos3, sin3, cos4, sin4 = cos[:, None], sin[:, None], cos[:, None, None], sin[:, None, None]
        ops = self._ops(x)
        mask = self.key_bias[:n, 0, 0] if self.padded else None  # (n, L): additive, -inf on padding
        QK = (H + Hkv) * D
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = _rms_norm(layer.input_layernorm, x, ops)
            keys, values = self.kv[i, 0, :n], self.kv[i, 1, :n]  # (n, Hkv, L, D)
            y = self._fused_qkv(attn, h)
            # One query position: head h uses KV head h // R, so (n, H*D) -> (n, Hkv, R, D) groups them.
            if y is not None:  # q|k|v in one row
                qk = y[:, 0, :QK].view(n, H + Hkv, D)
                q, k, v = qk[:, :H].view(n, Hkv, R, D), qk[:, H:], y[:, 0, QK:].view(n, Hkv, D)
            else:
                q = attn.q_proj(h).view(n, Hkv, R, D)
                k, v = attn.k_proj(h).view(n, Hkv, D), attn.v_proj(h).view(n, Hkv, D)
            if ops is not None:  # rotates q and k, writes k and v into slot t, attends over slots 0..t
                o = ops.decode_attention(q, k, v, keys, values, t, mask, attn.scaling, cos, sin)  # (n, Hkv, R, D)
            else:
                if y is not None:  # q and k rotated together
                    qk = _rope(qk, cos3, sin3)  # (n, H + Hkv, D)
                    q, k = qk[:, :H].view(n, Hkv, R, D), qk[:, H:]
                else:
                    q, k = _rope(q, cos4, sin4), _rope(k, cos3, sin3)
                keys[:, :, t], values[:, :, t] = k, v
                bias = None if mask is None else mask[:, None, None, : t + 1]  # (n, 1, 1, t+1)
                o = F.scaled_dot_product_attention(q, keys[:, :, : t + 1], values[:, :, : t + 1], attn_mask=bias,
                                                   scale=attn.scaling)  # (n, Hkv, R, D)
            x = x + attn.o_proj(o.reshape(n, 1, H * D))
            x = x + self._mlp(layer.mlp, _rms_norm(layer.post_attention_layernorm, x, ops), ops)
        self.length = t + 1
        self.pos = self.pos + 1
        return self.lm_head(_rms_norm(self.norm, x, ops))[:, 0]  # (n, V)

    def _ops(self, x: torch.Tensor):
        """The CPU kernels (cpu_kernels.py) where they run for `x` and the cache, else None (torch's ops)."""
        if x.device.type != "cpu" or x.dtype != torch.float32 or self.kv.dtype != torch.float32:
            return None
        return cpu_kernels()

    def release(self) -> None:
        """Free the KV cache; the batch is empty afterwards."""
        self.kv = self.key_bias = self.cos = self.sin = None
        self.n, self.length, self.pos, self.padded = 0, 0, None, False

    def _repeat_tail(self, start: int, index: torch.Tensor) -> None:
        """Rows start.. become start + len(index) rows, row start+j a copy of row start+index[j] (non-decreasing,
        index[j] <= j), in place: one prefill serves repeated prompts."""
        t = self.length
        idx = index.tolist()
        for dst in reversed(range(len(idx))):  # dst >= src: a row is read before anything overwrites it
            src = idx[dst]
            if src != dst:
                self.kv[:, :, start + dst, :, :t] = self.kv[:, :, start + src, :, :t]
                self.key_bias[start + dst] = self.key_bias[start + src]
        self.pos = torch.cat([self.pos[:start], self.pos[start:][index]])
        self.n = start + len(idx)

    def keep(self, keep: torch.Tensor) -> None:
        """Keep only rows `keep` (ascending positions among the live rows), moving them to the front in place."""
        t = self.length
        for dst, src in enumerate(keep.tolist()):
            if src != dst:  # src >= dst, so no row is overwritten before it is read
                self.kv[:, :, dst, :, :t] = self.kv[:, :, src, :, :t]
                self.key_bias[dst] = self.key_bias[src]
        self.pos = self.pos[keep]
        self.n = len(keep)
        if self.padded:
            self.padded = bool(torch.isinf(self.key_bias[: self.n, :, :, :t]).any())
