"""TrainConfig: every knob of `t2 train`, typed, with its help text, its default and why, validated up front.

The CLI builds its options from these fields (the `help` metadata is the `--help` text), so the library and
the command line cannot drift apart. `None` defaults are resolved per method / per task by `resolved()`:

    method  lr     grad_clip  why
    svf     2e-3   1e-3       the paper's values for SVF-RL (SPEC §2)
    lora    5e-5   1.0        SPEC §2's LoRA baseline lr; a conventional clip (the paper's 1e-3 is for SVF)

Arithmetic of one optimizer step: batch_size prompts × samples_per_prompt rollouts = the sequences the loss
averages over (split evenly across data-parallel ranks); they run through forward/backward in micro-batches of
at most `micro_batch_tokens` padded tokens, and the gradients add up to exactly the full-batch gradient.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import T2Error
from ..models import DEFAULT_MODEL

METHODS = ("svf", "lora")
OBJECTIVES = ("rl", "sft")
SCHEDULES = ("cosine", "constant")
DTYPES = ("fp32", "bf16")
BASELINES = ("loo", "none")  # losses.advantages
ADVANTAGE_NORMS = ("none", "std")
ROLLOUT_PRECISIONS = ("auto", "exact", "fast", "int8", "bf16")  # generation/precision.py's, and auto
METHOD_DEFAULTS = {"svf": {"lr": 2e-3, "grad_clip": 1e-3}, "lora": {"lr": 5e-5, "grad_clip": 1.0}}
# Fields that do not change what is computed: a resumed run may differ from the original in these.
# micro_batch_tokens splits the same gradient sum differently (float rounding only): a run that needs less memory
# on the machine it resumes on may lower it.
RUNTIME_FIELDS = ("resume", "overwrite", "stop_after", "progress", "device", "threads", "micro_batch_tokens")
# Fields of RL rollouts only: not part of an SFT run's recipe (they change nothing there).
ROLLOUT_FIELDS = ("rollout_precision", "tis_cap")
# Fields added after runs were checkpointed, with the value that does what those runs did: a saved recipe that
# lacks one was made before the field existed (checkpoint.check_same_recipe reads it so).
INTRODUCED = {"baseline": "loo", "advantage_norm": "none", "rollout_precision": "exact", "tis_cap": 2.0}


def _f(default: Any, help: str, **kw) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """One expert-training run (see the module docstring for the per-method defaults)."""

    # -- what to train ---------------------------------------------------------------------------------------
    out: str = _f("", "output directory: expert/, checkpoint/, metrics.jsonl, curves.png", required=True)
    model: str = _f(DEFAULT_MODEL, "alias, .gguf file, local HF directory or hub id")
    task: str = _f("arc-easy", "task to train on (gsm8k, mbpp, arc-easy, ..., or custom:<file.jsonl>)")
    method: str = _f("svf", "svf: singular-value fine-tuning; lora: the PEFT LoRA baseline", choices=METHODS)
    objective: str = _f("rl", "rl: REINFORCE on the task's reward; sft: next-token prediction on "
                              "task.sft_target", choices=OBJECTIVES)
    data_dir: str | None = _f(None, "benchmark data directory (default $T2_DATA_DIR, else the hub)")
    experts: str | None = _f(None, "task dispatch: the expert set directory whose domains the dispatch "
                                   "expert learns to name (prompts come from those experts' train splits)")
    dispatch_form: str = _f("template", "task dispatch: prompts as the benchmarks write them (template), as users "
                                        "type them (plain), or a seeded mix (mixed)",
                            choices=("template", "plain", "mixed"))
    targets: str = _f("mlp", "svf: matrices to adapt (mlp = paper default, attn, all, or patterns)")
    parametrization: str = _f("direct", "svf: direct (z starts at 1) or reference (the paper code's "
                                        "sigmoid + nuclear-norm rescale)", choices=("direct", "reference"))
    lora_rank: int = _f(16, "lora: rank r (SPEC §2 baseline: 16)")
    lora_alpha: float = _f(32.0, "lora: alpha (scale = alpha / r; baseline: 32)")
    lora_dropout: float = _f(0.05, "lora: dropout on the adapter input (baseline: 0.05)")
    lora_targets: str = _f("q_proj,v_proj", "lora: comma-separated module names (baseline: q and v)")

    # -- optimisation ----------------------------------------------------------------------------------------
    steps: int = _f(100, "optimizer steps")
    batch_size: int = _f(16, "prompts per step, over all ranks (the paper used 256)")
    lr: float | None = _f(None, "learning rate (default: 2e-3 for svf, 5e-5 for lora)")
    schedule: str = _f("cosine", "lr schedule after warmup: cosine decay to 0 (paper) or constant (paper's "
                                 "code)", choices=SCHEDULES)
    warmup_steps: int = _f(0, "linear lr warmup steps")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay (0 = Adam); it pulls z towards 0, not 1")
    grad_clip: float | None = _f(None, "max global gradient norm (default: 1e-3 for svf as in the paper, "
                                       "1.0 for lora); 0 disables")
    micro_batch_tokens: int = _f(2048, "padded tokens per forward/backward pass (memory knob: the same "
                                       "gradient up to float rounding; may change when resuming)")
    seed: int = _f(0, "seed for data order, initialisation and sampling")

    # -- reinforcement learning --------------------------------------------------------------------------------
    samples_per_prompt: int = _f(1, "rollouts per prompt G (the prompt is prefilled once per group, so G costs "
                                    "far less than as many prompts); G = 1 is the paper's")
    baseline: str = _f("loo", "advantage of a rollout: loo = its reward minus the mean reward of the other "
                              "G - 1 samples of its prompt (RLOO; our addition, SPEC §2); none = the raw reward, "
                              "the paper's REINFORCE. The same with G = 1", choices=BASELINES)
    advantage_norm: str = _f("none", "std: divide each prompt's leave-one-out advantages by the standard "
                                     "deviation of its G rewards (GRPO's scaling: a prompt with one right sample "
                                     "in G weighs as much as one split half and half); none: unscaled",
                             choices=ADVANTAGE_NORMS)
    temperature: float = _f(0.0, "rollout temperature; 0 = greedy (the paper's code)")
    top_p: float = _f(1.0, "rollout nucleus sampling")
    max_new_tokens: int | None = _f(None, "generation budget for rollouts and evaluation (default: the "
                                          "task's, e.g. 512)")
    wrong_reward: float = _f(-1.0, "reward of a wrong answer (+1 for a right one; the VLM runs used -0.1)")
    kl_coef: float = _f(0.0, "λ of the KL(π_θ ‖ π_base) penalty (paper sweep: 0, 0.1, 0.2, 0.3)")
    rollout_precision: str = _f("auto", "what RL rollouts compute their linear layers in (generation/"
                                        "precision.py; validation and test stay exact): exact, int8, bf16, fast "
                                        "(the engine's fastest kernel here), or auto = fast on CPUs, where it was "
                                        "measured faster (SmolLM2-135M SVF rollouts, 8 prompts x 4 samples x 64 "
                                        "tokens, 1 thread, AMD EPYC: int8 1.4x faster per token, bench/"
                                        "bench_rollout_precision.py), exact on GPUs (not measured). Non-exact "
                                        "rollouts weigh each token's gradient by a truncated importance ratio "
                                        "(--tis-cap), so learning is unchanged",
                                choices=ROLLOUT_PRECISIONS)
    tis_cap: float = _f(2.0, "C of truncated importance sampling for non-exact rollouts: each token's policy "
                             "gradient is weighted by min(π_train(y_t) / π_rollout(y_t), C), the fp32 forward's "
                             "probability over the one the rollout sampled from (Yao et al. 2025: C = 2)")

    # -- evaluation --------------------------------------------------------------------------------------------
    train_split: str = _f("train", "split to train on")
    train_limit: int = _f(-1, "use only the first N training examples (-1: all)")
    valid_split: str = _f("valid", "split for validation and best-step selection")
    valid_limit: int = _f(200, "validate on a seeded subset of N examples (the whole split when smaller; "
                               "-1: all, 0: no validation, keep the last). 200 gives a ~3.5-point standard "
                               "error at 50%; 50 (the old default) gave 7, more than the effects measured")
    select_base: bool = _f(True, "validate the untrained policy too (step 0: the base model) and let it win the "
                                 "best-step selection, so a run never ships an expert worse than the base on "
                                 "validation (--no-select-base: choose among trained steps only, as the paper)")
    eval_every: int = _f(10, "validate (and keep the best) every K steps and at the last step; runs shorter "
                             "than K steps skip validation and test scoring")
    test_split: str = _f("test", "split the best expert is finally scored on")
    test_limit: int = _f(100, "score the best expert on N test examples, the seeded subset of `t2 eval --limit N` (-1: all, 0: skip)")
    eval_batch_size: int = _f(16, "prompts decoded together in rollouts and evaluation")

    # -- bookkeeping -------------------------------------------------------------------------------------------
    checkpoint_every: int | None = _f(None, "write OUT/checkpoint every K steps (default: eval_every); "
                                            "0 = never")
    resume: bool = _f(False, "continue the run in OUT from its checkpoint")
    overwrite: bool = _f(False, "replace an existing run in OUT")
    device: str = _f("auto", "cpu, cuda, cuda:N or auto (cuda when available); untested on GPU")
    dtype: str = _f("fp32", "model dtype; bf16 for GPUs (SVF factors and merges stay fp32)", choices=DTYPES)
    threads: int | None = _f(None, "CPU threads for torch (default: the idle cores by the 1-minute load "
                                   "average, at least 1, unless OMP_NUM_THREADS is set); on a busy CPU, threads "
                                   "that wait for each other at every op make training several times slower")
    progress: bool = _f(True, "show a progress bar")
    stop_after: int | None = _f(None, "stop after this step as if killed (testing resume)", cli=False)

    def __post_init__(self):
        self.validate()

    # -- checks ----------------------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Raise a one-line T2Error for any inconsistent value."""
        def bad(msg: str):
            raise T2Error(f"train: {msg}")

        for name in ("method", "objective", "schedule", "dtype", "parametrization", "baseline", "advantage_norm",
                     "rollout_precision"):
            allowed = next(f for f in fields(self) if f.name == name).metadata["choices"]
            if getattr(self, name) not in allowed:
                bad(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "samples_per_prompt", "eval_every", "eval_batch_size",
                     "micro_batch_tokens", "lora_rank"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("valid_limit", "test_limit", "train_limit"):
            if getattr(self, name) < -1:
                bad(f"--{name.replace('_', '-')} must be -1 (all), 0 or a positive number")
        if self.train_limit == 0:
            bad("--train-limit 0 leaves nothing to train on")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            bad(f"--lr must be positive, got {self.lr}")
        if self.grad_clip is not None and not self.grad_clip >= 0:
            bad(f"--grad-clip must be >= 0 (0 disables), got {self.grad_clip}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.kl_coef < 0:
            bad("--warmup-steps, --weight-decay and --kl-coef must be >= 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            bad("--temperature must be >= 0 and --top-p in (0, 1]")
        if self.samples_per_prompt > 1 and self.temperature == 0 and self.objective == "rl":
            bad("--samples-per-prompt > 1 needs --temperature > 0 (greedy rollouts of one prompt are identical: "
                "the leave-one-out advantage would be 0, and without a baseline G copies add nothing)")
        if self.advantage_norm != "none" and (self.baseline != "loo" or self.samples_per_prompt < 2):
            bad("--advantage-norm std scales each group's leave-one-out advantages: it needs --baseline loo and "
                "--samples-per-prompt > 1")
        if not (math.isfinite(self.tis_cap) and self.tis_cap >= 1):
            bad(f"--tis-cap must be a finite number >= 1 (an importance weight of 1 is no correction), got "
                f"{self.tis_cap}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            bad(f"--max-new-tokens must be positive, got {self.max_new_tokens}")
        if self.threads is not None and self.threads < 1:
            bad(f"--threads must be a positive integer, got {self.threads}")
        if self.checkpoint_every is not None and self.checkpoint_every < 0:
            bad("--checkpoint-every must be >= 0")
        if not 0 <= self.lora_dropout < 1 or self.lora_alpha <= 0:
            bad("--lora-dropout must be in [0, 1) and --lora-alpha positive")
        if not str(self.out).strip():
            bad("--out is required (the run's output directory)")
        if self.resume and self.overwrite:
            bad("--resume and --overwrite contradict each other; pick one")
        return self

    # -- resolution ------------------------------------------------------------------------------------------
    def resolved(self, task_max_new_tokens: int | None = None) -> "TrainConfig":
        """A copy with every `None` default replaced by its per-method / per-task value."""
        d = METHOD_DEFAULTS[self.method]
        return dataclasses.replace(
            self,
            lr=self.lr if self.lr is not None else d["lr"],
            grad_clip=self.grad_clip if self.grad_clip is not None else d["grad_clip"],
            max_new_tokens=self.max_new_tokens or task_max_new_tokens or 512,
            checkpoint_every=self.eval_every if self.checkpoint_every is None else self.checkpoint_every,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def recipe(self) -> dict[str, Any]:
        """The fields that determine the result (what a resumed run must share with the original)."""
        skip = RUNTIME_FIELDS + (ROLLOUT_FIELDS if self.objective != "rl" else ())
        return {k: v for k, v in self.to_dict().items() if k not in skip}
