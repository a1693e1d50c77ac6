"""Training experts: SVF (or the LoRA baseline) with REINFORCE or next-token prediction.

    from transformer_squared.training import TrainConfig, train
    result = train(TrainConfig(task="arc-easy", method="svf", objective="rl", steps=2, batch_size=2,
                               max_new_tokens=16, out="/tmp/x"))

Files: config.py (TrainConfig), rollout.py (data order, rollouts, SFT pairs), sequences.py (teacher-forced
passes), losses.py (pure objectives), policy.py (the trainable-policy interface, SVF), lora.py (PEFT LoRA),
evaluate.py, checkpoint.py, distributed.py, loop.py (the recipe).
"""

from .config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str):
    # loop.py brings in torch and the whole training stack: imported when training is asked for, so that
    # `t2 train`'s argument checks (TrainConfig, a writable --out) answer before it loads.
    if name in ("TrainResult", "train"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
