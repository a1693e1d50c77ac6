"""Cross-model transfer (SPEC §4): apply experts trained on one model to another with identical matrix shapes.

Loading with `allow_transfer=True` (CLI `--allow-transfer`) skips only the weight-fingerprint check; matrix names
and shapes must still match (`Expert.check_compatible` refuses otherwise, in one line). The paper's control is
the same z with its entries shuffled within each matrix: same values per matrix, no alignment with the target
model's singular directions. `shuffle_expert` builds it; `t2 eval --shuffle-expert-seed S` applies it to
`--expert` or to every domain expert of `--experts` (not to the dispatch expert, which only routes).
"""

from __future__ import annotations

import torch

from ..experts import Expert
from .expert_set import ExpertSet


def shuffle_expert(expert: Expert, seed: int) -> Expert:
    """The same z with its entries permuted within each matrix (one seeded permutation per matrix)."""
    gen = torch.Generator().manual_seed(int(seed))
    z = {}
    for name, t in expert.z.items():
        perm = torch.randperm(t.numel(), generator=gen)
        z[name] = t.detach().flatten()[perm].reshape(t.shape).clone()
    meta = {**expert.meta, "name": f"{expert.name}-shuffled{seed}",
            "shuffled": {"from": expert.name, "seed": int(seed), "within": "matrix"}}
    return Expert(z, meta)


def shuffle_expert_set(experts: ExpertSet, seed: int) -> ExpertSet:
    """Every domain expert shuffled (seeds seed, seed+1, ... in domain order); names and routing unchanged."""
    shuffled = {d: shuffle_expert(experts.experts[d], seed + i) for i, d in enumerate(experts.domains)}
    return ExpertSet(experts.directory, shuffled, dict(experts.names), experts.dispatch, dict(experts.tasks),
                     dict(experts.descriptions))
