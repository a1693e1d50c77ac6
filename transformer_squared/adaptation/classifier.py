"""Classification-expert adaptation (SPEC §4): the prompt strategy with a trained dispatch expert merged in pass 1.

The dispatch expert is an ordinary SVF expert trained with the RL recipe on `adaptation/dispatch.py` (prompts from
the experts' *training* splits, reward from the extracted label), saved as DIR/dispatch with meta role
"dispatch". Pass 1 merges it (a cached copy after the first time) and classifies with the prompt strategy's
prompt, its reply prefilled with "Classification: \\boxed{" as the dispatch task prefills it in training
(`--no-prefill` for an expert trained with `prefill=False`); the base weights are restored before pass 2.
"""

from __future__ import annotations

from ..errors import T2Error
from .prompt import PromptConfig, PromptStrategy


def no_dispatch_expert(directory) -> T2Error:
    where = directory or "the expert set"
    return T2Error(f"the classifier strategy needs a dispatch expert in {where}/dispatch: train one with "
                   f"`t2 train --task dispatch --experts {where} --out {where}/dispatch`")


class ClassifierStrategy(PromptStrategy):
    name = "classifier"
    default_prefill = True  # as the dispatch task trains it (adaptation/dispatch.py); --no-prefill if trained without

    def __init__(self, runtime, config: PromptConfig = PromptConfig()):
        if runtime.experts.dispatch is None:
            raise no_dispatch_expert(runtime.experts.directory)
        super().__init__(runtime, config, pass1_expert=runtime.experts.dispatch)
