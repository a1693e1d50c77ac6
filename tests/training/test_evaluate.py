"""Training's validation accuracy and `t2 eval` (evaluation.evaluate) are one path: same verdicts, same count."""

import json

import torch

from transformer_squared.evaluation import EvalConfig, evaluate
from transformer_squared.generation import Engine
from transformer_squared.tasks import get_task
from transformer_squared.training.distributed import Dist
from transformer_squared.training.evaluate import accuracy

from .tinylm import NUMBERS, tiny_lm

MAX_NEW = 4


class Merged:
    def generating(self):
        return torch.no_grad()


def test_validation_accuracy_equals_t2_eval_on_the_same_examples(tmp_path):
    lm = tiny_lm()
    prompts = [f"what is {a} plus {b}" for a in NUMBERS[:3] for b in NUMBERS[:3]]
    # Reference replies from the model's own generate() (an independent path); half of the rows get their
    # reply as the answer, so a prompt, decoding or scoring that differed between the two paths changes a count.
    replies = []
    for p in prompts:
        ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = lm.model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False,
                                    pad_token_id=lm.tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        new = new[:new.index(lm.tokenizer.eos_token_id)] if lm.tokenizer.eos_token_id in new else new
        replies.append(lm.tokenizer.decode(new).strip())  # as the engine decodes: special tokens but EOS kept
    rows = [{"id": str(i), "prompt": p, "answer": r if i % 2 == 0 else "yes no yes", "split": "valid"}
            for i, (p, r) in enumerate(zip(prompts, replies))]
    path = tmp_path / "echo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("custom", path=path, scorer="exact", system="", max_new_tokens=MAX_NEW)
    examples = task.load("valid")

    summary = accuracy(Merged(), Engine(lm.model, lm.tokenizer), lm.tokenizer, task, examples,
                       max_new_tokens=MAX_NEW, d=Dist())
    evaluated, records = evaluate(lm.model, lm.tokenizer, EvalConfig(task="echo", split="valid"), task=task,
                                  progress=False)
    expected = sum(1 for i, r in enumerate(replies) if i % 2 == 0 and r)  # a non-empty reply is its own answer
    assert expected >= 3, "too few scorable replies for the comparison to mean anything"
    assert summary["correct"] == evaluated["correct"] == expected
    assert [r["correct"] for r in records] == [i % 2 == 0 and bool(replies[i]) for i in range(len(rows))]
