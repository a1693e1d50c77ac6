"""A tiny random Llama with a real (word-level) tokenizer and chat template, and a tiny custom task.

Both fit `testing.tiny_model`'s 128-token vocabulary, so the whole training loop (chat prompts, generation,
scoring, SVD, checkpoints) runs in seconds without the embedded model.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<unk>"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
WORDS = ["system", "user", "assistant", "what", "is", "plus", "minus", "the", "answer", "yes", "no"]
TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
            "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + NUMBERS + WORDS
    words += [f"w{i}" for i in range(128 - len(words))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = TEMPLATE
    return fast


def tiny_lm(seed: int = 0):
    """A LoadedModel: tiny random Llama (2 layers, hidden 48) + the word-level tokenizer."""
    from transformer_squared.models import LoadedModel
    from transformer_squared.testing import tiny_model

    return LoadedModel(model=tiny_model("llama", seed=seed), tokenizer=tiny_tokenizer(), name="tiny-llama",
                       source="local", path="")


def write_task(directory: Path) -> Path:
    """A custom JSONL task ("what is a plus b" → the sum's word) with train / valid / test splits."""
    rows = []
    for a in range(5):
        for b in range(5):
            split = "train" if (a + b) % 3 else ("valid" if a % 2 else "test")
            rows.append({"id": f"{a}+{b}", "prompt": f"what is {NUMBERS[a]} plus {NUMBERS[b]}",
                         "answer": NUMBERS[(a + b) % 10], "solution": f"the answer is {NUMBERS[(a + b) % 10]}",
                         "split": split})
    path = Path(directory) / "sums.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_task(directory: Path):
    from transformer_squared.tasks import get_task

    return get_task("custom", path=write_task(directory), scorer="exact", system="", max_new_tokens=8)
