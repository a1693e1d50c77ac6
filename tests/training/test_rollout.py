"""Data order, SFT targets and rollout batches on the tiny model."""

import pytest
import torch

from transformer_squared.generation import Engine, SamplingParams
from transformer_squared.tasks import get_task
from transformer_squared.training.distributed import Dist
from transformer_squared.training.losses import sampling_logprobs
from transformer_squared.training.rollout import DataOrder, rollouts, sft_pair, sft_reply
from transformer_squared.training.sequences import completion_logits, pack, pad_completions

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


@pytest.mark.parametrize("name", ["mbpp", "humaneval"])
def test_a_reference_reply_that_starts_with_the_response_prefix_is_not_prefixed_again(name, shared_data):
    # The code tasks' references are whole fenced replies and their prefix is the fence's opening: the target
    # must hold one "```python", as the prefilled prompt at evaluation continues after one.
    task = get_task(name)
    example = task.load("test", shared_data)[0]
    prefix = task.response_prefix(example)
    assert prefix and example.solution.startswith(prefix)
    assert sft_reply(task, example) == example.solution and sft_reply(task, example).count("```python") == 1


def test_a_reference_reply_without_the_prefix_gets_it(tmp_path):
    task = tiny_task(tmp_path)
    example = task.load("train")[0]
    task.response_prefix = lambda ex: "Answer: "  # a task whose references are the text after its prefix
    assert sft_reply(task, example) == "Answer: " + example.solution


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


@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9)])
def test_rollout_logprobs_are_those_the_loss_computes_for_the_same_weights(temperature, top_p):
    # What the importance ratio rests on: the engine's log-prob of a sampled token (SamplingParams.logprobs) is
    # the training forward's sampling_logprobs of it when both use the same weights, so exact weights give w = 1.
    lm = tiny_lm()
    prompts = [[1, 7, 8, 9], [1, 7, 10], [1, 7, 8, 9], [1, 7, 10]]
    params = SamplingParams(max_new_tokens=6, temperature=temperature, top_p=top_p, seed=3, logprobs=True)
    outs = Engine(lm.model, lm.tokenizer).generate(prompts, params)
    assert all(len(o.token_logprobs) == len(o.token_ids) for o in outs)
    packed = pack(prompts, [o.token_ids for o in outs], 0, range(4))
    with torch.no_grad():
        train = sampling_logprobs(completion_logits(lm.model, packed), packed.tokens, temperature, top_p)  # (4, T)
    rollout = pad_completions([o.token_logprobs for o in outs], range(4), packed.tokens.shape[1])
    torch.testing.assert_close(rollout * packed.mask, train * packed.mask, atol=1e-4, rtol=0)


def test_low_precision_rollouts_carry_their_logprobs_and_exact_ones_none(tmp_path):
    lm, task = tiny_lm(), tiny_task(tmp_path)
    examples = task.load("train")

    def batch(precision):
        return next(rollouts(Merged(), Engine(lm.model, lm.tokenizer, precision=precision), lm.tokenizer, task,
                             examples, DataOrder(len(examples), 0), batch_size=3, samples_per_prompt=2,
                             params=SamplingParams(max_new_tokens=5, temperature=1.0), wrong_reward=-1.0, seed=0,
                             start_step=0, d=Dist()))

    assert batch("exact").rollout_logprobs is None
    low = batch("int8")
    assert [len(x) for x in low.rollout_logprobs] == [len(c) for c in low.completions]
    assert all(v <= 0 and v == v for x in low.rollout_logprobs for v in x)  # log-probs, no nan
