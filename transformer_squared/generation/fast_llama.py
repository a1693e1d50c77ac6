"""Batched decoding for the Llama family (Llama, Mistral, Qwen2) over the model's own modules.

What it keeps from the HF forward: the arithmetic. What it drops: building masks every step, growing a
`DynamicCache` by concatenation (which rewrites the whole cache each step), output dataclasses:

- a KV cache preallocated for the whole batch (prompt + max_new_tokens), written in place; dropping finished
  rows moves the live ones to the front in place;
- RoPE cos/sin computed once per batch by the model's own `rotary_emb` and looked up per step;
- decode attention packs the query heads that share a KV head into one (B, n_kv, n_rep, D) block (as HF's
  SDPA path does), so K/V are never repeated, with a padding mask only while some live row is padded;
- the LM head runs on the last position only.

Measured on SmolLM2-135M (1 thread, CPU time per step): batch 1 68 ms vs 69 ms for `model.generate`,
batch 16 155 vs 164 ms, batch 64 358 vs 380 ms (the HF forward loop): matmuls are ~80% of a step either way,
so per step this is only 5-10% faster. It has far fewer ops and parallel regions per step, which is what
matters on a busy machine, and it makes dropping rows cheap.

Every projection is called as a module (`q_proj(x)`, `mlp(x)`), never through its `.weight`, so SVF-wrapped
layers (including per-row z) behave exactly as in the HF forward; norms, rotary embedding, embedding and
LM head are called as modules too. Greedy output matches `model.generate` token for token up to float
rounding (tests check it on tiny models and on SmolLM2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FAST_MODEL_TYPES = ("llama", "mistral", "qwen2")
# RoPE types whose cos/sin depend only on the position (not on the sequence length seen so far).
_STATIC_ROPE = ("default", "linear", "llama3", "yarn")


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


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE, written as in HF so the rounding matches."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaRunner:
    """Prefill + step-by-step decode of one batch with a preallocated KV cache; rows can be dropped."""

    can_drop_rows = True

    def __init__(self, model):
        self.model = model
        config = model.config
        base = model.model
        self.embed, self.layers, self.norm = base.embed_tokens, base.layers, base.norm
        self.rotary, self.lm_head = base.rotary_emb, model.lm_head
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.n_rep = self.n_heads // self.n_kv

    @torch.no_grad()
    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, *,
              capacity: int | None = None) -> torch.Tensor:
        """Prefill a left-padded batch; returns the logits (B, V) for the first new token. `capacity`: rows to
        allocate the cache for (>= B), when `repeat` will grow the batch."""
        B, T = input_ids.shape
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        L = T + max_new_tokens
        x = self.embed(input_ids)  # (B, T, C)
        dtype, device = x.dtype, x.device
        capacity = max(B, capacity or B)
        self.kv = torch.empty(len(self.layers), 2, capacity, Hkv, L, D, dtype=dtype, device=device)
        cos, sin = self.rotary(x, torch.arange(L, device=device)[None])  # (1, L, D) each
        self.cos, self.sin = cos[0], sin[0]  # (L, D)
        mask = attention_mask.bool()  # (B, T)
        pos = (attention_mask.long().cumsum(-1) - 1).masked_fill(~mask, 0)  # (B, T), as in `generate`
        self.pos = pos[:, -1] + 1  # (B,) position of the next token
        self.length = T  # filled cache slots (shared by all rows: padding is on the left)
        self.padded = not bool(mask.all())
        # Additive key mask for decoding: -inf on padding slots. (B, 1, 1, L)
        self.key_bias = torch.zeros(capacity, 1, 1, L, dtype=dtype, device=device)
        self.key_bias[:B, 0, 0, :T].masked_fill_(~mask, float("-inf"))
        if self.padded:
            causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
            # Padding slots attend to themselves only, so their (unused) rows stay finite.
            prefill_mask = (causal & mask[:, None, :]) | torch.eye(T, dtype=torch.bool, device=device)
            prefill_mask = prefill_mask[:, None]  # (B, 1, T, T)
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # (B, 1, T, D)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
            k = attn.k_proj(h).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
            v = attn.v_proj(h).view(B, T, Hkv, D).transpose(1, 2)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            self.kv[i, 0, :B, :, :T] = k
            self.kv[i, 1, :B, :, :T] = v
            if self.padded:
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=prefill_mask, scale=attn.scaling,
                                                   enable_gqa=self.n_rep > 1)
            else:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling,
                                                   enable_gqa=self.n_rep > 1)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(B, T, H * D))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.lm_head(self.norm(x[:, -1:]))[:, 0]  # (B, V)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per live row (n,); returns the logits (n, V) for the next one."""
        n = tokens.shape[0]
        H, Hkv, D, R = self.n_heads, self.n_kv, self.head_dim, self.n_rep
        t = self.length
        x = self.embed(tokens[:, None])  # (n, 1, C)
        cos, sin = self.cos[self.pos][:, None, None], self.sin[self.pos][:, None, None]  # (n, 1, 1, D)
        bias = self.key_bias[:n, :, :, : t + 1] if self.padded else None  # (n, 1, 1, t+1)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            # One query position: head h uses KV head h // R, so (n, H*D) -> (n, Hkv, R, D) groups them.
            q = _rope(attn.q_proj(h).view(n, Hkv, R, D), cos, sin)
            k = _rope(attn.k_proj(h).view(n, Hkv, 1, D), cos, sin)
            keys, values = self.kv[i, 0, :n], self.kv[i, 1, :n]  # (n, Hkv, L, D)
            keys[:, :, t : t + 1] = k
            values[:, :, t : t + 1] = attn.v_proj(h).view(n, Hkv, 1, D)
            o = F.scaled_dot_product_attention(q, keys[:, :, : t + 1], values[:, :, : t + 1], attn_mask=bias,
                                               scale=attn.scaling)  # (n, Hkv, R, D)
            x = x + attn.o_proj(o.reshape(n, 1, H * D))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.length = t + 1
        self.pos = self.pos + 1
        return self.lm_head(self.norm(x))[:, 0]  # (n, V)

    def release(self) -> None:
        """Free the KV cache."""
        self.kv = self.key_bias = None

    def repeat(self, index: torch.Tensor) -> None:
        """Row j becomes a copy of row index[j] (non-decreasing, index[j] <= j, len(index) <= capacity), in place:
        one prefill serves repeated prompts."""
        t = self.length
        idx = index.tolist()
        for dst in reversed(range(len(idx))):  # dst >= src: a row is read before anything overwrites it
            src = idx[dst]
            if src != dst:
                self.kv[:, :, dst, :, :t] = self.kv[:, :, src, :, :t]
                self.key_bias[dst] = self.key_bias[src]
        self.pos = self.pos[index]

    def keep(self, keep: torch.Tensor) -> None:
        """Keep only rows `keep` (ascending positions among the live rows), moving them to the front in place."""
        t = self.length
        for dst, src in enumerate(keep.tolist()):
            if src != dst:  # src >= dst, so no row is overwritten before it is read
                self.kv[:, :, dst, :, :t] = self.kv[:, :, src, :, :t]
                self.key_bias[dst] = self.key_bias[src]
        self.pos = self.pos[keep]
        if self.padded:
            self.padded = bool(torch.isinf(self.key_bias[: len(keep)]).any())
