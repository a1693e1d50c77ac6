"""Data order, SFT targets and rollout batches on the tiny model."""

import torch

from transformer_squared.generation import Engine, SamplingParams
from transformer_squared.training.distributed import Dist
from transformer_squared.training.rollout import DataOrder, rollouts, sft_pair

from .tinylm import tiny_lm, tiny_task


def test_data_order_is_a_seeded_permutation_per_epoch_and_resumes():
    order = DataOrder(5, seed=1)
    first, second = order.next(5), order.next(5)
    assert sorted(first) == sorted(second) == list(range(5)) and first != second
    a = DataOrder(5, seed=1)
    a.next(3)
    b = DataOrder(5, seed=1)
    b.load_state_dict(a.state_dict())
    assert a.next(4) == b.next(4)


def test_sft_target_is_the_reference_reply_closed_by_the_template(tmp_path):
    lm, task = tiny_lm(), tiny_task(tmp_path)
    example = task.load("train")[0]
    prompt, target = sft_pair(lm.tokenizer, task, example)
    assert lm.tokenizer.decode(prompt).endswith("assistant")
    assert target[-1] == lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert lm.tokenizer.decode(target[:-1]) == example.solution


class Merged:
    """A stand-in policy: the tiny model as it is."""

    def __init__(self):
        self.calls = 0

    def generating(self):
        self.calls += 1
        return torch.no_grad()


def test_rollouts_group_samples_by_prompt_with_leave_one_out_advantages(tmp_path):
    lm, task = tiny_lm(), tiny_task(tmp_path)
    examples = task.load("train")
    policy = Merged()
    gen = rollouts(policy, Engine(lm.model, lm.tokenizer), lm.tokenizer, task, examples, DataOrder(len(examples), 0),
                   batch_size=3, samples_per_prompt=2, params=SamplingParams(max_new_tokens=5, temperature=1.0),
                   wrong_reward=-0.5, seed=0, start_step=0, d=Dist())
    batch = next(gen)
    assert batch.size == 6 and policy.calls == 1
    assert [e.id for e in batch.examples[::2]] == [e.id for e in batch.examples[1::2]]
    assert all(1 <= len(c) <= 5 for c in batch.completions)
    assert set(batch.rewards.tolist()) <= {1.0, -0.5}
    pairs = batch.rewards.view(3, 2)
    torch.testing.assert_close(batch.advantages.view(3, 2), pairs - pairs.flip(1))
    again = next(rollouts(policy, Engine(lm.model, lm.tokenizer), lm.tokenizer, task, examples,
                          DataOrder(len(examples), 0), batch_size=3, samples_per_prompt=2,
                          params=SamplingParams(max_new_tokens=5, temperature=1.0), wrong_reward=-0.5, seed=0,
                          start_step=0, d=Dist()))
    assert again.completions == batch.completions, "sampling is seeded per (seed, step, rank)"
    assert next(gen).completions != batch.completions


def test_rollouts_without_a_baseline_keep_the_raw_reward_and_record_the_answers(tmp_path):
    lm, task = tiny_lm(), tiny_task(tmp_path)
    examples = task.load("train")
    batch = next(rollouts(Merged(), Engine(lm.model, lm.tokenizer), lm.tokenizer, task, examples,
                          DataOrder(len(examples), 0), batch_size=3, samples_per_prompt=2,
                          params=SamplingParams(max_new_tokens=5, temperature=1.0), wrong_reward=-0.5, seed=0,
                          start_step=0, d=Dist(), baseline="none"))
    torch.testing.assert_close(batch.advantages, batch.rewards)
    assert len(batch.answers) == batch.size and all(isinstance(a, str) for a in batch.answers)
