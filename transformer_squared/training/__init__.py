"""Training experts: SVF (or the LoRA baseline) with REINFORCE or next-token prediction.

    from transformer_squared.training import TrainConfig, train
    result = train(TrainConfig(task="arc-easy", method="svf", objective="rl", steps=2, batch_size=2,
                               max_new_tokens=16, out="/tmp/x"))

Files: config.py (TrainConfig), rollout.py (data order, rollouts, SFT pairs), sequences.py (teacher-forced
passes), losses.py (pure objectives), policy.py (the trainable-policy interface, SVF), lora.py (PEFT LoRA),
evaluate.py, checkpoint.py, distributed.py, loop.py (the recipe).
"""

from .config import TrainConfig
from .loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
