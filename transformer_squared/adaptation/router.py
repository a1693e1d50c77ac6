"""Router adaptation (beyond the paper): pass 1 is one prefill, no generation.

Each prompt's last user message is embedded as the mean over its tokens of one hidden layer of the *base* model;
the label is the nearest domain centroid by cosine similarity, or `others` when even the best similarity is
below a threshold. Centroids are fitted on prompts from the experts' *training* splits (the dispatch task's
`train` split, balanced per domain).

Choices made here (numbered, as departures from a plain nearest-centroid classifier):
1. Features are centred by the mean of the fitting prompts before cosine similarity: raw hidden states of an LM
   share a large common direction, which squeezes every cosine towards 1.
2. `layer="auto"` measures every layer: centroids from 75% of the fitting prompts, accuracy (then mean margin,
   true-centroid similarity minus the best other) on the held-out 25%; the best layer is then refitted on all.
   The per-layer accuracies are stored in router.json.
3. The `others` threshold is the `threshold_quantile` quantile of the fitting prompts' best similarity (default
   0.02: 2% of in-domain training prompts would fall back to the base model); 0 disables it.

Files: DIR/router.safetensors (centroids (D, H), mean (H,)) and DIR/router.json (domains, layer, threshold,
the model fingerprint, config, per-layer accuracies). A router fitted for another model's weights (transfer) is
saved as DIR/router-<fingerprint[:12]>.*, so the experts' own router is never overwritten.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from .._version import __version__
from ..errors import T2Error
from ..fileio import atomic_path, atomic_write_json
from ..paths import data_dir as resolve_data_dir
from .config import RouterConfig
from .dispatch import DispatchTask
from .labels import OTHERS
from .strategy import Choice, Conversation, user_text

ROUTER_FORMAT = 1


@torch.no_grad()
def embed(model, tokenizer, texts: Sequence[str], *, layers: Sequence[int] | None = None, max_tokens: int = 256,
          batch_size: int = 16) -> torch.Tensor:
    """Mean-pooled hidden states of `texts` (no chat template): (N, len(layers), H), fp32; all layers if None."""
    device = next(model.parameters()).device
    keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] or [tokenizer.eos_token_id]
               for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # batches of similar length: less padding
    out = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        T = max(len(encoded[i]) for i in rows)
        ids = torch.zeros(len(rows), T, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for b, i in enumerate(rows):  # right padding: positions 0.. for every row
            ids[b, :len(encoded[i])], mask[b, :len(encoded[i])] = torch.tensor(encoded[i]), 1
        kw = {"logits_to_keep": 1} if keep_logits else {}
        hs = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                   use_cache=False, **kw).hidden_states  # L+1 tensors (B, T, H)
        pick = range(len(hs)) if layers is None else layers
        m = mask.to(device)[:, :, None].float()  # (B, T, 1)
        pooled = torch.stack([(hs[l].float() * m).sum(1) / m.sum(1) for l in pick], 1).cpu()  # (B, layers, H)
        for b, i in enumerate(rows):
            out[i] = pooled[b]
    return torch.stack(out)  # (N, layers, H)


def _centroids(feats: torch.Tensor, labels: torch.Tensor, D: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred, normalised class centroids (D, H) and the centring mean (H,) of `feats` (N, H)."""
    mean = feats.mean(0)
    x = torch.nn.functional.normalize(feats - mean, dim=-1)
    cents = torch.stack([x[labels == d].mean(0) for d in range(D)])
    return torch.nn.functional.normalize(cents, dim=-1), mean


def _sims(feats: torch.Tensor, cents: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(feats - mean, dim=-1) @ cents.t()  # (N, D)


def _margin(sims: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    own = sims.gather(1, labels[:, None])[:, 0]
    other = sims.scatter(1, labels[:, None], float("-inf")).max(1).values if sims.shape[1] > 1 else own * 0
    return own - other  # (N,)


@dataclass
class Router:
    domains: list[str]
    centroids: torch.Tensor  # (D, H), unit norm
    mean: torch.Tensor  # (H,)
    layer: int
    threshold: float
    meta: dict = field(default_factory=dict)

    def similarities(self, feats: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of features (N, H) to each centroid: (N, D)."""
        return _sims(feats, self.centroids, self.mean)

    def predict(self, feats: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Labels (a domain or `others`) and similarities (N, D) for features (N, H)."""
        sims = self.similarities(feats)
        best, idx = sims.max(1)
        labels = [self.domains[i] if s >= self.threshold else OTHERS for s, i in zip(best.tolist(), idx.tolist())]
        return labels, sims

    # -- disk ----------------------------------------------------------------------------------------------
    def save(self, directory: str | Path, stem: str = "router") -> Path:
        directory = Path(directory)
        with atomic_path(directory / f"{stem}.safetensors") as tmp:
            save_file({"centroids": self.centroids.contiguous(), "mean": self.mean.contiguous()}, str(tmp))
        atomic_write_json(directory / f"{stem}.json", {
            "format": ROUTER_FORMAT, "library_version": __version__, "domains": self.domains, "layer": self.layer,
            "threshold": self.threshold, **self.meta})
        return directory / f"{stem}.json"

    @classmethod
    def load(cls, directory: str | Path, stem: str = "router") -> "Router":
        directory = Path(directory)
        meta_path, weights = directory / f"{stem}.json", directory / f"{stem}.safetensors"
        if not meta_path.is_file() or not weights.is_file():
            raise T2Error(f"{directory}: no fitted router ({stem}.json + {stem}.safetensors); "
                          f"fit one with `t2 adapt --router --experts {directory}`")
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(weights))
        except Exception as e:
            raise T2Error(f"{meta_path}: unreadable router ({str(e).splitlines()[0]}); refit it") from None
        if meta.get("format") != ROUTER_FORMAT:
            raise T2Error(f"{meta_path}: router format {meta.get('format')!r}, this library reads {ROUTER_FORMAT}")
        rest = {k: v for k, v in meta.items() if k not in ("domains", "layer", "threshold")}
        return cls(list(meta["domains"]), tensors["centroids"], tensors["mean"], int(meta["layer"]),
                   float(meta["threshold"]), rest)


def fit_router(model, tokenizer, texts: dict[str, list[str]], config: RouterConfig = RouterConfig()) -> Router:
    """Fit centroids on `texts` (domain -> prompts) with the model's current (base) weights."""
    t0 = time.perf_counter()
    domains = sorted(texts)
    if any(len(texts[d]) < 2 for d in domains):
        raise T2Error("the router needs at least 2 prompts per domain")
    flat = [t for d in domains for t in texts[d]]
    labels = torch.tensor([i for i, d in enumerate(domains) for _ in texts[d]])
    layers = None if config.layer == "auto" else [int(config.layer)]
    feats = embed(model, tokenizer, flat, layers=layers, max_tokens=config.max_tokens,
                  batch_size=config.batch_size)  # (N, L', H)
    gen = torch.Generator().manual_seed(config.seed)
    held = torch.zeros(len(flat), dtype=torch.bool)
    for d in range(len(domains)):  # stratified hold-out
        idx = (labels == d).nonzero()[:, 0]
        k = max(1, int(round(config.holdout * len(idx))))
        held[idx[torch.randperm(len(idx), generator=gen)[:k]]] = True
    candidates = list(range(feats.shape[1])) if layers is None else [0]
    report = {}
    for j in candidates:
        cents, mean = _centroids(feats[~held, j], labels[~held], len(domains))
        sims = _sims(feats[held, j], cents, mean)
        acc = float((sims.argmax(1) == labels[held]).float().mean())
        report[j if layers is None else layers[0]] = {"accuracy": acc,
                                                       "margin": float(_margin(sims, labels[held]).mean())}
    best = max(report, key=lambda l: (report[l]["accuracy"], report[l]["margin"]))
    col = candidates[list(report).index(best)]
    cents, mean = _centroids(feats[:, col], labels, len(domains))
    sims = _sims(feats[:, col], cents, mean)
    q = config.threshold_quantile
    threshold = float(torch.quantile(sims.max(1).values, q)) if q > 0 else float("-inf")
    meta = {"config": asdict(config), "layer_report": {str(k): v for k, v in report.items()},
            "holdout_accuracy": report[best]["accuracy"], "n_per_domain": {d: len(texts[d]) for d in domains},
            "fit_seconds": round(time.perf_counter() - t0, 3)}
    return Router(domains, cents, mean, int(best), threshold, meta)


def training_texts(tasks: dict[str, str], per_domain: int, seed: int, data_dir=None,
                   form: str = "mixed") -> dict[str, list[str]]:
    """domain -> `per_domain` prompts from its task's train split (via the dispatch task: balanced, seeded),
    written as `form` says (see dispatch.py)."""
    examples = DispatchTask(tasks, per_domain=per_domain, seed=seed, form=form).load("train", data_dir)
    out: dict[str, list[str]] = {d: [] for d in tasks}
    for ex in examples:
        out[ex.answer].append(ex.prompt)
    return out


def _stem(directory: Path, fingerprint: str) -> str:
    """Where this model's router lives: router.* unless that one was fitted for other weights."""
    meta = directory / "router.json"
    if meta.is_file():
        try:
            theirs = json.loads(meta.read_text()).get("fingerprint")
        except json.JSONDecodeError:
            theirs = None
        if theirs and theirs != fingerprint:
            return f"router-{fingerprint[:12]}"
    return "router"


def load_or_fit(runtime, config: RouterConfig | None = None, *, data_dir=None, refit: bool = False) -> Router:
    """The expert set's router for this model: loaded if fitted for these weights and domains, else fitted on the
    experts' training prompts (base weights) and saved beside the experts."""
    experts, am = runtime.experts, runtime.am
    directory = experts.directory
    stem = _stem(directory, am.fingerprint) if directory is not None else None
    if stem and not refit and (directory / f"{stem}.json").is_file():
        router = Router.load(directory, stem)
        if router.meta.get("fingerprint") == am.fingerprint and router.domains == experts.domains and (
                config is None or router.meta.get("config") == asdict(config)):
            return router
    config = config or RouterConfig()
    runtime.cache.activate(None)
    texts = training_texts({d: experts.tasks[d] for d in experts.domains}, config.per_domain, config.seed,
                           resolve_data_dir(data_dir), form=config.form)
    router = fit_router(am.model, am.tokenizer, texts, config)
    router.meta.update(fingerprint=am.fingerprint, base_model=am.base_identity(),
                       tasks={d: experts.tasks[d] for d in experts.domains})
    if stem:
        router.save(directory, stem)
    return router


class RouterStrategy:
    """Pass 1 = one prefill of the base model per prompt; nearest centroid (or others)."""

    name = "router"

    def __init__(self, runtime, router: Router):
        missing = set(runtime.experts.domains) - set(router.domains)
        if missing:  # extra router domains are fine: prompts routed there have no expert and go to the base
            raise T2Error(f"the router was fitted for domains {router.domains}, not for {sorted(missing)}; "
                          f"refit it (t2 adapt --router --experts DIR)")
        self.rt, self.router = runtime, router

    def choose(self, conversations: Sequence[Conversation]) -> list[Choice]:
        self.rt.cache.activate(None)
        feats = embed(self.rt.model, self.rt.tokenizer, [user_text(c) for c in conversations],
                      layers=[self.router.layer], max_tokens=self.router.meta.get("config", {}).get("max_tokens", 256),
                      batch_size=self.rt.engine.max_batch_size)[:, 0]  # (N, H)
        labels, sims = self.router.predict(feats)
        return [self.rt.experts.choice(lab, similarities=dict(zip(self.router.domains,
                                                                  [round(v, 4) for v in s.tolist()])))
                for lab, s in zip(labels, sims)]
