"""Self-adaptation (SPEC §4): two-pass inference over a set of SVF experts.

Pass 1 looks at the prompt and decides which weights answer it; pass 2 answers with them.

    strategy.py    Choice (what pass 1 decides) and the Strategy protocol
    labels.py      reading a domain label out of a classification
    prompt.py      prompt strategy: the model classifies the prompt itself
    classifier.py  classifier strategy: the same, with a trained dispatch expert merged in pass 1
    fewshot.py     few-shot strategy: α searched once per task by CEM (cem.py) on a few of its prompts
    router.py      router strategy (beyond the paper): nearest centroid on base hidden states, one prefill
    expert_set.py  the experts directory; cache.py: merged weights per expert (cheap switching)
    model.py       SelfAdaptiveModel: both passes, batched and grouped by expert
    evaluate.py    the two-pass system on a benchmark: accuracy, dispatch confusion, pass timings
    transfer.py    cross-model transfer and its shuffled-z control

Importing this package is cheap; the modules import torch and transformers.
"""

STRATEGIES = ("prompt", "classifier", "fewshot", "router")
