"""Train an SVF expert with TRL's GRPOTrainer on any transformer-squared task, and write a t2 expert.

    python examples/trl_grpo_svf.py --task gsm8k --model smollm2-135m-instruct --steps 100 --out runs/grpo-gsm8k
    python examples/trl_grpo_svf.py --tiny --task custom:tasks.jsonl --steps 2 --out /tmp/grpo   # seconds, CPU
    t2 expert show runs/grpo-gsm8k/expert && t2 eval --task gsm8k --expert runs/grpo-gsm8k/expert

The SVF part is three lines: `import transformer_squared.peft` (registers the method with PEFT),
`peft_config=SVFConfig(targets=...)` for the trainer, and `peft_to_expert` on the saved adapter. Everything else
is TRL: the reward is the task's own (+1 correct, -1 wrong, SPEC §2), prompts are the task's chat messages.

Many GPUs (TRL's own launchers; the adapter is a PEFT one, so TRL's PEFT paths apply unchanged):
    accelerate launch --num_processes 8 examples/trl_grpo_svf.py --task gsm8k --model DIR ...
    accelerate launch --config_file <trl>/accelerate_configs/deepspeed_zero2.yaml examples/trl_grpo_svf.py ...
    ... --use-vllm --vllm-mode colocate                      # vLLM generates inside each training process
    trl vllm-serve --model DIR & ... --use-vllm --vllm-mode server   # vLLM on its own GPU(s)
With vLLM, TRL merges the adapter into the weights (SVFLayer.merge: fp32, exact unmerge) before each weight sync.
`--model` must then name a directory vLLM can load: `t2 models` lists the converted cache of an alias.

How this departs from `t2 train` (the paper's recipe): GRPO's group-normalised advantage and clipped ratio
instead of REINFORCE with raw ±1 rewards; sampled rollouts (temperature 1) instead of greedy; no validation-based
early stopping (the last step is kept); code tasks are not prefilled with "```python" (scorers accept either).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="gsm8k", help="a t2 task: gsm8k, arc-easy, mbpp, ..., custom:<file.jsonl>")
    p.add_argument("--split", default=None, help="default: train where the task has one, else its default split")
    p.add_argument("--limit", type=int, default=None, help="train on the first N examples")
    p.add_argument("--data-dir", default=None, help="benchmark data (default $T2_DATA_DIR, else the hub)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="t2 alias, .gguf, HF directory or hub id")
    p.add_argument("--tiny", action="store_true", help="the tiny random chat model (tests, CI)")
    p.add_argument("--targets", default="mlp", help="mlp | attn | all | patterns (as t2 --targets)")
    p.add_argument("--parametrization", default="direct", choices=("direct", "reference"))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8, help="completions per device per step")
    p.add_argument("--num-generations", type=int, default=4, help="completions per prompt (GRPO's group)")
    p.add_argument("--max-completion-length", type=int, default=None, help="default: the task's budget")
    p.add_argument("--lr", type=float, default=2e-3, help="the paper's SVF learning rate")
    p.add_argument("--max-grad-norm", type=float, default=1e-3, help="the paper's clip")
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient (paper default 0)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--use-vllm", action="store_true")
    p.add_argument("--vllm-mode", default="colocate", choices=("colocate", "server"))
    p.add_argument("--out", required=True, help="run directory: adapter/, expert/, log_history.json")
    return p.parse_args(argv)


def load_policy(args):
    """(model, tokenizer, base identity) for --model, or the tiny random chat model over SmolLM2's tokenizer."""
    if args.tiny:
        from transformers import AutoTokenizer

        from transformer_squared.models import resolve
        from transformer_squared.testing import tiny_chat_model

        tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct")[0])
        return tiny_chat_model(tokenizer), tokenizer, {"name": "tiny-chat", "source": "testing"}
    from transformer_squared.models import load_model

    lm = load_model(args.model)
    return lm.model, lm.tokenizer, lm.identity()


def task_reward_func(task, examples: dict):
    """TRL reward function: the task's reward (+1 / -1) of each completion against its example."""

    def task_reward(completions, example_id, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [task.reward(examples[i], t) for i, t in zip(example_id, texts)]

    return task_reward


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    import transformer_squared.peft as t2peft
    from transformer_squared.fileio import atomic_write_json
    from transformer_squared.paths import data_dir
    from transformer_squared.tasks import get_task

    task = get_task(args.task)
    split = args.split or ("train" if "train" in task.splits else task.default_split)
    examples = task.load(split, data_dir(args.data_dir))[: args.limit]
    by_id = {ex.id: ex for ex in examples}
    dataset = Dataset.from_list([{"prompt": task.messages(ex), "example_id": ex.id} for ex in examples])
    model, tokenizer, identity = load_policy(args)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    out = Path(args.out)
    config = GRPOConfig(
        output_dir=str(out / "trl"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        num_generations=args.num_generations, learning_rate=args.lr, max_grad_norm=args.max_grad_norm,
        beta=args.beta, temperature=args.temperature, seed=args.seed,
        max_completion_length=args.max_completion_length or task.max_new_tokens,
        use_vllm=args.use_vllm, vllm_mode=args.vllm_mode, use_cpu=not torch.cuda.is_available(),
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=args.tiny,
    )
    svf = t2peft.SVFConfig(targets=args.targets, parametrization=args.parametrization, seed=args.seed)
    trainer = GRPOTrainer(model=model, reward_funcs=task_reward_func(task, by_id), args=config,
                          train_dataset=dataset, processing_class=tokenizer, peft_config=svf)
    trainer.train()

    trainer.save_model(str(out / "adapter"))  # PeftModel.save_pretrained on the main process
    if trainer.accelerator.is_main_process:
        import trl

        atomic_write_json(out / "log_history.json", trainer.state.log_history)
        fingerprint = trainer.model.peft_config["default"].base_identity["fingerprint"]
        expert = t2peft.peft_to_expert(out / "adapter", out / "expert", model=trainer.model,
                                       meta={"name": out.name, "task": args.task, "domain": task.domain or None,
                                             "base_model": {**identity, "fingerprint": fingerprint},
                                             "training": {"via": f"trl {trl.__version__} GRPOTrainer",
                                                          "parametrization": args.parametrization,
                                                          "config": vars(args)}})
        print(f"wrote {out / 'expert'}: {len(expert.z)} matrices, {expert.num_parameters:,} parameters, "
              f"mean |z - 1| {expert.stats()['mean_abs_dev']:.3g} after {trainer.state.global_step} steps")
    return 0


def cli(argv=None) -> int:
    """main() with the t2 CLI's contract: a user error is one line on stderr and exit status 2."""
    from transformer_squared.errors import T2Error

    try:
        return main(argv)
    except T2Error as e:
        print(f"trl_grpo_svf: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
