"""The engine's CPU kernels: one C++ extension (torch.ops.t2_cpu), built on first use, with four ops.

`decode_attention` appends the new key and value to the KV cache and attends over it in one pass per row and KV
head. Why: at decoding batch sizes the attention of one query position over a cache of a few hundred slots is a
pile of tiny products (per row and KV head, R query heads x t keys x D), and torch's kernels pay a per-product
overhead (MKL packs each small matrix; SDPA's flash kernel on CPU does the same in blocks) that made attention
~2.5-3x its memory traffic. Measured on the 2-core AMD EPYC (Zen 3, AVX2) here, one thread, SmolLM2-135M at
batch 64 (30 layers, 3 KV heads, 133 slots): SDPA ~80 ms per step vs ~40 ms for this kernel, against ~30 ms to
read the cache once (bench/README.md has the whole-step figures). The kernel reads each key and value row once,
streaming (the keys prefetched a few rows ahead, the values while the keys are read), and writes the new key
and value into slot t itself, where the cache line is about to be read anyway (a separate strided copy cost
~5 ms per step at batch 64). For every row b and KV head h, with the R query heads that share it (grouped
query attention, q laid out (n, Hkv, R, D) as fast_llama.py groups them):
    s_j = scale * <q_i, k_j> + mask_j,  p = softmax(s),  o_i = sum_j p_j v_j        (j = 0 .. t, slot t new)
the same as `F.scaled_dot_product_attention(q, k[:, :, :t+1], v[:, :, :t+1], attn_mask=mask, scale=scale)` up
to float rounding (a different summation order; the exponential is torch's own vectorised `exp_u20`, as in its
flash kernel). Given cos and sin, it first applies RoPE to q and the new key, with the same bits as
`fast_llama._rope` (four fewer ops per layer and step). A row's left padding (masked slots before its first
real one) is not read.

`argmax_rows` is greedy decoding's argmax over the logits (n, V): the same ids as `torch.argmax` (first
maximum; nan counts as the largest), ~7x faster at 64 x 49152 (one vectorised pass, then a search for where
the maximum first is).

`rms_norm` is HF's Llama RMSNorm with its bits: torch's own pow and mean (so its summation order), then one pass
for weight * (x * rsqrt(var + eps)) instead of five more ops (~0.7x F.rms_norm's time at decoding sizes).

`silu_mul` computes silu(gate) * up of the gated MLP from the fused gate|up product in one pass (torch: two
passes and a temporary; the kernel takes ~0.7x their time, Sleef's exp being most of both), bit for bit as
torch's silu and mul: the
same vectorised x / (1 + exp(-x)) (Sleef's exp, the one torch calls) on the same elements, the scalar formula
on each row's last n mod 16.

Tests compare the ops with SDPA, `_rope`, HF's RMSNorm, torch's silu * up and argmax on random shapes, and greedy
ids end to end.

Where they run: x86 CPUs with AVX2 (torch's `get_cpu_capability()` AVX2 or AVX512), fp32, Linux or macOS with a
C++ compiler and ninja (torch.utils.cpp_extension). The extension is compiled once per machine and version
(~15-60 s, cached under torch's extensions directory, `TORCH_EXTENSIONS_DIR`) the first time a fast-path runner
needs it; elsewhere, or if the build fails (the reason: `kernel_problem()`), or with `T2_CPU_KERNELS=0` in the
environment, the engine uses torch's ops (SDPA, F.rms_norm, silu and mul, argmax) as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading

import torch

log = logging.getLogger(__name__)

_NAME = "t2_cpu_kernels"
_SOURCE = r"""
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {
using Vec = at::vec::Vectorized<float>;
constexpr int64_t W = Vec::size();
constexpr int64_t AHEAD = 8;                     // rows prefetched ahead of the one being read
constexpr int64_t LINE = 64 / sizeof(float);    // floats per cache line

inline void prefetch_row(const float* row, int64_t D) {
  for (int64_t l = 0; l < D; l += LINE) __builtin_prefetch(row + l);  // never faults, even past the end
}

// RoPE as fast_llama._rope computes it, x * cos + roll(x, D/2) * sin_signed, each product and the sum rounded
// to fp32 as torch's three ops round them (the module is compiled with -ffp-contract=off): the same bits.
inline void rope(const float* x, const float* cos, const float* sin, int64_t D, float* out) {
  const int64_t half = D / 2;
  for (int64_t d = 0; d < half; ++d) out[d] = x[d] * cos[d] + x[d + half] * sin[d];
  for (int64_t d = half; d < D; ++d) out[d] = x[d] * cos[d] + x[d - half] * sin[d];
}

// s[i * ss + j] = scale * <q_i, k_j> + mask[j] for RB query heads (q_i at q + i * qs) and keys j < t. With
// `v`, value row j is prefetched too: the values pass then reads from cache while a second stream was in flight.
template <int RB>
void scores(const float* q, int64_t qs, int64_t D, const float* k, int64_t ks, int64_t t, const float* mask,
            float scale, float* s, int64_t ss, const float* v, int64_t vs) {
  const int64_t Dv = D - D % W;
  for (int64_t j = 0; j < t; ++j) {
    const float* kj = k + j * ks;
    prefetch_row(kj + AHEAD * ks, D);
    if (v) prefetch_row(v + j * vs, D);
    Vec acc[RB];
    for (int i = 0; i < RB; ++i) acc[i] = Vec(0.f);
    for (int64_t d = 0; d < Dv; d += W) {
      const Vec kv = Vec::loadu(kj + d);
      for (int i = 0; i < RB; ++i) acc[i] = at::vec::fmadd(Vec::loadu(q + i * qs + d), kv, acc[i]);
    }
    const float m = mask ? mask[j] : 0.f;
    for (int i = 0; i < RB; ++i) {
      float dot = acc[i].reduce_add();
      for (int64_t d = Dv; d < D; ++d) dot += q[i * qs + d] * kj[d];
      s[i * ss + j] = dot * scale + m;
    }
  }
}

// Each of the R rows of s (R, t): exp(s - max) in place; inv[r] = 1 / its sum.
void exp_rows(float* s, int64_t R, int64_t t, float* inv) {
  for (int64_t r = 0; r < R; ++r) {
    float* sr = s + r * t;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < t; ++j) mx = std::max(mx, sr[j]);
    const Vec vmx(mx);
    Vec vsum(0.f);
    int64_t j = 0;
    for (; j + W <= t; j += W) {
      const Vec e = (Vec::loadu(sr + j) - vmx).exp_u20();
      e.store(sr + j);
      vsum = vsum + e;
    }
    float sum = vsum.reduce_add();
    for (; j < t; ++j) {
      sr[j] = std::exp(sr[j] - mx);
      sum += sr[j];
    }
    inv[r] = 1.f / sum;
  }
}

// o_i[d0 .. d0 + DB W) = inv_i * sum_j p_i[j] v_j[d0 .. d0 + DB W) for RB query heads (p_i at p + i * t).
template <int RB, int DB>
void values_block(const float* p, int64_t t, const float* v, int64_t vs, int64_t D, int64_t d0, const float* inv,
                  float* o, int64_t os) {
  Vec acc[RB][DB];
  for (int i = 0; i < RB; ++i)
    for (int c = 0; c < DB; ++c) acc[i][c] = Vec(0.f);
  for (int64_t j = 0; j < t; ++j) {
    const float* vj = v + j * vs + d0;
    if (d0 == 0) prefetch_row(v + (j + AHEAD) * vs, D);
    for (int i = 0; i < RB; ++i) {
      const Vec pj(p[i * t + j]);
      for (int c = 0; c < DB; ++c) acc[i][c] = at::vec::fmadd(pj, Vec::loadu(vj + c * W), acc[i][c]);
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int c = 0; c < DB; ++c) (acc[i][c] * Vec(inv[i])).store(o + i * os + d0 + c * W);
}

template <int RB>
void values(const float* p, int64_t t, const float* v, int64_t vs, int64_t D, const float* inv, float* o,
            int64_t os) {
  int64_t d0 = 0;
  for (; d0 + 4 * W <= D; d0 += 4 * W) values_block<RB, 4>(p, t, v, vs, D, d0, inv, o, os);
  for (; d0 + W <= D; d0 += W) values_block<RB, 1>(p, t, v, vs, D, d0, inv, o, os);
  for (; d0 < D; ++d0)
    for (int i = 0; i < RB; ++i) {
      float sum = 0.f;
      for (int64_t j = 0; j < t; ++j) sum += p[i * t + j] * v[j * vs + d0];
      o[i * os + d0] = sum * inv[i];
    }
}

// Query heads per pass over the keys and values: 3 x 4 vector accumulators fit AVX2's 16 registers.
constexpr int64_t RB = 3;

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
                            at::Tensor& k_cache, at::Tensor& v_cache, int64_t t,
                            const std::optional<at::Tensor>& mask, double scale,
                            const std::optional<at::Tensor>& cos, const std::optional<at::Tensor>& sin) {
  TORCH_CHECK(q.dim() == 4 && k_new.dim() == 3 && v_new.dim() == 3 && k_cache.dim() == 4 && v_cache.dim() == 4,
              "decode_attention: q (n, Hkv, R, D), k_new / v_new (n, Hkv, D), caches (n, Hkv, L, D)");
  const int64_t n = q.size(0), H = q.size(1), R = q.size(2), D = q.size(3);
  for (const at::Tensor* x : std::initializer_list<const at::Tensor*>{&q, &k_new, &v_new, &k_cache, &v_cache}) {
    TORCH_CHECK(x->scalar_type() == at::kFloat && x->device().is_cpu(), "decode_attention: fp32 CPU tensors only");
    TORCH_CHECK(x->size(0) == n && x->size(1) == H && x->size(-1) == D && x->stride(-1) == 1,
                "decode_attention: mismatched shapes or a non-contiguous last dimension");
  }
  TORCH_CHECK(0 <= t && t < k_cache.size(2) && t < v_cache.size(2), "decode_attention: slot t outside the cache");
  const float* mp = nullptr;
  int64_t ms = 0;
  if (mask) {
    TORCH_CHECK(mask->scalar_type() == at::kFloat && mask->dim() == 2 && mask->size(0) == n &&
                mask->size(1) > t && mask->stride(1) == 1, "decode_attention: mask (n, > t) fp32");
    mp = mask->const_data_ptr<float>();
    ms = mask->stride(0);
  }
  TORCH_CHECK(cos.has_value() == sin.has_value(), "decode_attention: cos and sin together");
  const float* cp = nullptr;
  const float* sp = nullptr;
  if (cos) {
    for (const at::Tensor* x : std::initializer_list<const at::Tensor*>{&*cos, &*sin})
      TORCH_CHECK(x->scalar_type() == at::kFloat && x->dim() == 2 && x->size(0) == n && x->size(1) == D &&
                  x->stride(1) == 1 && D % 2 == 0, "decode_attention: cos / sin (n, D) fp32");
    cp = cos->const_data_ptr<float>();
    sp = sin->const_data_ptr<float>();
  }
  auto out = at::empty({n, H, R, D}, q.options());
  const float* qp = q.const_data_ptr<float>();
  const float* knp = k_new.const_data_ptr<float>();
  const float* vnp = v_new.const_data_ptr<float>();
  float* kp = k_cache.mutable_data_ptr<float>();
  float* vp = v_cache.mutable_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  const float sc = static_cast<float>(scale);
  const int64_t T = t + 1;  // slots attended: 0 .. t
  at::parallel_for(0, n * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s(R * T), inv(R), rotated(cp ? R * D : 0);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      float* kb = kp + b * k_cache.stride(0) + h * k_cache.stride(1);
      float* vb = vp + b * v_cache.stride(0) + h * v_cache.stride(1);
      const float* kn = knp + b * k_new.stride(0) + h * k_new.stride(1);
      const float* qb = qp + b * q.stride(0) + h * q.stride(1);
      int64_t qs = q.stride(2);
      if (cp) {  // rotate the new key into its slot and the queries into `rotated`
        rope(kn, cp + b * D, sp + b * D, D, kb + t * k_cache.stride(2));
        for (int64_t r = 0; r < R; ++r) rope(qb + r * qs, cp + b * D, sp + b * D, D, rotated.data() + r * D);
        qb = rotated.data();
        qs = D;
      } else {
        std::copy_n(kn, D, kb + t * k_cache.stride(2));
      }
      std::copy_n(vnp + b * v_new.stride(0) + h * v_new.stride(1), D, vb + t * v_cache.stride(2));
      // A row's left padding (the masked slots before its first unmasked one) is skipped, from a multiple of the
      // vector width on: those slots' weights are exp(-inf) = 0 exactly, the softmax's sums keep their lanes, so
      // the output has the same bits, for less of the cache read.
      const float* mb = mp ? mp + b * ms : nullptr;
      int64_t j0 = 0;
      while (mb && j0 < T && mb[j0] == -std::numeric_limits<float>::infinity()) ++j0;
      j0 = j0 == T ? 0 : j0 - j0 % W;  // every slot masked: let the softmax say so (nan), as SDPA's would
      const int64_t Tb = T - j0, ks = k_cache.stride(2), vs = v_cache.stride(2);
      const float* kj0 = kb + j0 * ks;
      const float* vj0 = vb + j0 * vs;
      const float* mj0 = mb ? mb + j0 : nullptr;
      for (int64_t r0 = 0; r0 < R; r0 += RB) {
        const float* qr = qb + r0 * qs;
        float* sr = s.data() + r0 * Tb;
        const float* vpf = r0 == 0 ? vj0 : nullptr;
        switch (std::min(RB, R - r0)) {
          case 3: scores<3>(qr, qs, D, kj0, ks, Tb, mj0, sc, sr, Tb, vpf, vs); break;
          case 2: scores<2>(qr, qs, D, kj0, ks, Tb, mj0, sc, sr, Tb, vpf, vs); break;
          default: scores<1>(qr, qs, D, kj0, ks, Tb, mj0, sc, sr, Tb, vpf, vs);
        }
      }
      exp_rows(s.data(), R, Tb, inv.data());
      for (int64_t r0 = 0; r0 < R; r0 += RB) {
        const float* pr = s.data() + r0 * Tb;
        float* o = op + (bh * R + r0) * D;
        switch (std::min(RB, R - r0)) {
          case 3: values<3>(pr, Tb, vj0, vs, D, inv.data() + r0, o, D); break;
          case 2: values<2>(pr, Tb, vj0, vs, D, inv.data() + r0, o, D); break;
          default: values<1>(pr, Tb, vj0, vs, D, inv.data() + r0, o, D);
        }
      }
    }
  });
  return out;
}

// silu(y[..., :I]) * y[..., I:2I] for y (..., >= 2I) contiguous, as torch's silu and mul compute it on those
// strided halves: per row, the first I - I % (2W) elements vectorised (x / (1 + exp(-x)) with Sleef's exp, as
// torch's AVX2 kernel), the rest with the scalar formula, which may round differently.
at::Tensor silu_mul(const at::Tensor& y, int64_t I) {
  TORCH_CHECK(y.scalar_type() == at::kFloat && y.device().is_cpu() && y.is_contiguous() && y.dim() >= 1 &&
              I > 0 && y.size(-1) >= 2 * I, "silu_mul: fp32 CPU contiguous (..., >= 2 size)");
  const int64_t ys = y.size(-1), rows = y.numel() / ys, Iv = I - I % (2 * W);
  std::vector<int64_t> sizes(y.sizes().begin(), y.sizes().end());
  sizes.back() = I;
  auto out = at::empty(sizes, y.options());
  const float* yp = y.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / I), [&](int64_t begin, int64_t end) {
    const Vec one(1.f);
    for (int64_t r = begin; r < end; ++r) {
      const float* g = yp + r * ys;
      const float* u = g + I;
      float* o = op + r * I;
      for (int64_t d = 0; d < Iv; d += W) {
        const Vec x = Vec::loadu(g + d);
        ((x / (one + x.neg().exp())) * Vec::loadu(u + d)).store(o + d);
      }
      for (int64_t d = Iv; d < I; ++d) o[d] = (g[d] / (1 + std::exp(-g[d]))) * u[d];
    }
  });
  return out;
}

// HF's Llama RMSNorm, weight * (x * rsqrt(mean(x^2) + eps)), over the last dimension of a contiguous x, with its
// bits: the mean is torch's own (pow and mean called here, so its summation order), the rest the same IEEE ops
// (rsqrt is 1 / sqrt in torch too, each rounded), in one pass instead of five ops.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu() && x.is_contiguous() && x.dim() >= 1 &&
              weight.scalar_type() == at::kFloat && weight.dim() == 1 && weight.is_contiguous() &&
              weight.size(0) == x.size(-1), "rms_norm: fp32 CPU, x contiguous (..., C), weight (C,)");
  const int64_t C = x.size(-1), rows = x.numel() / C, Cv = C - C % W;
  const at::Tensor var = x.pow(2).mean(-1, /*keepdim=*/true).contiguous();  // (..., 1)
  auto out = at::empty(x.sizes(), x.options());
  const float* xp = x.const_data_ptr<float>();
  const float* wp = weight.const_data_ptr<float>();
  const float* vp = var.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  const float e = static_cast<float>(eps);  // torch adds a Python float to an fp32 tensor in fp32
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float inv = 1.f / std::sqrt(vp[r] + e);
      const Vec vinv(inv);
      const float* xr = xp + r * C;
      float* o = op + r * C;
      for (int64_t d = 0; d < Cv; d += W) (Vec::loadu(wp + d) * (Vec::loadu(xr + d) * vinv)).store(o + d);
      for (int64_t d = Cv; d < C; ++d) o[d] = wp[d] * (xr[d] * inv);
    }
  });
  return out;
}

// torch.argmax(x, -1) for x (n, V): the first index of each row's maximum, or of its first nan (argmax treats nan
// as the largest value). One vectorised pass for the maximum, a second, usually short, for where it first is.
at::Tensor argmax_rows(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu() && x.dim() == 2 && x.size(1) > 0 &&
              x.stride(1) == 1, "argmax_rows: fp32 CPU (n, V), V > 0, rows contiguous");
  const int64_t n = x.size(0), V = x.size(1), xs = x.stride(0), Vv = V - V % W;
  auto out = at::empty({n}, x.options().dtype(at::kLong));
  const float* xp = x.const_data_ptr<float>();
  int64_t* op = out.mutable_data_ptr<int64_t>();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* p = xp + r * xs;
      Vec vmax(-std::numeric_limits<float>::infinity());
      for (int64_t j = 0; j < Vv; j += W) vmax = at::vec::maximum(vmax, Vec::loadu(p + j));  // nan propagates
      float lanes[W];
      vmax.store(lanes);
      float m = -std::numeric_limits<float>::infinity();
      bool nan = false;
      for (int64_t i = 0; i < W; ++i) nan |= std::isnan(lanes[i]), m = std::max(m, lanes[i]);
      for (int64_t j = Vv; j < V; ++j) nan |= std::isnan(p[j]), m = std::max(m, p[j]);
      int64_t at = 0;
      if (nan) {
        while (!std::isnan(p[at])) ++at;
      } else {
        const Vec vm(m);
        int64_t j = 0;
        for (; j < Vv; j += W) {
          const int differ = (Vec::loadu(p + j) == vm).zero_mask();  // bit set: lane differs from m
          if (differ != (1 << W) - 1) break;
        }
        at = j;
        while (p[at] != m) ++at;
      }
      op[r] = at;
    }
  });
  return out;
}
}  // namespace

TORCH_LIBRARY(t2_cpu, m) {
  m.def("decode_attention(Tensor q, Tensor k_new, Tensor v_new, Tensor(a!) k_cache, Tensor(b!) v_cache, int t, "
        "Tensor? mask, float scale, Tensor? cos=None, Tensor? sin=None) -> Tensor");
  m.def("silu_mul(Tensor gate_up, int size) -> Tensor");
  m.def("argmax_rows(Tensor x) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
}
TORCH_LIBRARY_IMPL(t2_cpu, CPU, m) {
  m.impl("decode_attention", decode_attention);
  m.impl("silu_mul", silu_mul);
  m.impl("argmax_rows", argmax_rows);
  m.impl("rms_norm", rms_norm);
}
"""

_FLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
_lock = threading.Lock()
_state: dict = {}  # "ops": the loaded ops, or "problem": why there are none


def _platform_problem() -> str | None:
    if os.environ.get("T2_CPU_KERNELS", "1") == "0":
        return "disabled by T2_CPU_KERNELS=0"
    if sys.platform not in ("linux", "darwin"):
        return f"the kernels are built with gcc/clang flags, not on {sys.platform}"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the kernels are written for x86 AVX2, not {platform.machine()}"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"this CPU lacks AVX2 (torch reports {capability})"
    return None


def _build():
    """Compile (or find compiled) and load the extension. Its build directory is named after a hash of the
    source, flags and torch version, so checkouts of different versions on one machine never rebuild over each
    other's library; the source is a file of our own there (`load_inline` would add torch/extension.h, tripling
    the build time)."""
    from torch.utils.cpp_extension import get_default_build_root, load

    digest = hashlib.sha256("\0".join([_SOURCE, *_FLAGS, torch.__version__]).encode()).hexdigest()[:12]
    name = f"{_NAME}_{digest}"
    build_dir = os.path.join(get_default_build_root(), name)
    os.makedirs(build_dir, exist_ok=True)
    src = os.path.join(build_dir, "kernels.cpp")
    if not os.path.exists(src):
        tmp = f"{src}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(_SOURCE)
        os.replace(tmp, src)  # atomic: another process may be building from it
    if not os.path.exists(os.path.join(build_dir, f"{name}.so")):
        log.warning("building the engine's CPU kernels (once per machine and version, ~15-60 s): %s", build_dir)
    load(name, sources=[src], extra_cflags=_FLAGS, build_directory=build_dir, is_python_module=False)
    return torch.ops.t2_cpu


def kernel_problem() -> str | None:
    """Why the kernels cannot run here (building them if that has not been tried yet), or None if they can."""
    cpu_kernels()
    return _state.get("problem")


def cpu_kernels():
    """The ops (`torch.ops.t2_cpu`), built and loaded on the first call (module doc); None where they cannot run
    (`kernel_problem()`). All take fp32 CPU tensors whose last dimension is contiguous.

    `decode_attention(q, k_new, v_new, k_cache, v_cache, t, mask, scale, cos=None, sin=None)`: q (n, Hkv, R, D),
    k_new / v_new (n, Hkv, D), caches (n, Hkv, L, D) with t < L, mask (n, > t) additive or None. Writes k_new /
    v_new into slot t of the caches and returns the attention output (n, Hkv, R, D) over slots 0 .. t. With cos
    and sin (n, D) (sin sign-folded, fast_llama._signed_sin), q and k_new are rotated first, bit for bit as
    `fast_llama._rope` rotates them.

    `silu_mul(gate_up, size)`: gate_up (..., >= 2 size) contiguous, gate first; returns silu(gate) * up
    (..., size), the same bits as `F.silu(gate_up[..., :size]) * gate_up[..., size : 2 * size]`.

    `argmax_rows(x)`: x (n, V), V > 0, rows contiguous; returns `x.argmax(-1)` (n,) int64.

    `rms_norm(x, weight, eps)`: x (..., C) contiguous, weight (C,); HF's Llama RMSNorm of x, with its bits."""
    if "ops" in _state or "problem" in _state:
        return _state.get("ops")
    with _lock:
        if "ops" in _state or "problem" in _state:
            return _state.get("ops")
        problem = _platform_problem()
        if problem is None:
            try:
                _state["ops"] = _build()
            except Exception as e:  # noqa: BLE001 - no compiler, no ninja, a failed build: torch's ops instead
                lines = str(e).strip().splitlines() or [""]
                first = next((ln for ln in lines if "error" in ln.lower()), lines[0])  # the compiler's, if any
                problem = f"building the kernels failed ({type(e).__name__}: {first.strip()[:300]})"
        if problem is not None:
            _state["problem"] = problem
            log.info("CPU kernels: torch's ops (%s)", problem)
        return _state.get("ops")
