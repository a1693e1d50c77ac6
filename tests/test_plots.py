"""plots.py: matplotlib is an optional extra; training without it still saves its expert and skips the plots."""

import sys
import warnings

import pytest

from transformer_squared import plots
from transformer_squared.experts import Expert
from transformer_squared.training import TrainConfig, train

from tests.training.conftest import one_thread  # noqa: F401 (autouse: training runs on one thread)
from tests.training.tinylm import tiny_lm, write_task


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "cache"))


def test_training_without_matplotlib_saves_the_expert_and_warns_once(tmp_path, monkeypatch):
    # None in sys.modules makes `import matplotlib` raise ImportError, as on an install without the extra.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    monkeypatch.setattr(plots, "_warned_unavailable", False)
    task = write_task(tmp_path)
    config = TrainConfig(out=str(tmp_path / "run"), task=f"custom:{task}", steps=2, batch_size=2, eval_every=2,
                         valid_limit=2, test_limit=2, max_new_tokens=4, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config, model=tiny_lm())
    expert = Expert.load(result.expert)
    assert expert.z and expert.meta["training"]["steps"] == 2
    assert not (result.out / "curves.png").exists() and not (result.expert / "z.png").exists()
    skipped = [w for w in caught if "skipping plots" in str(w.message)]
    assert len(skipped) == 1, [str(w.message) for w in caught]
    assert "transformer-squared[plots]" in str(skipped[0].message)


def test_a_plot_asked_for_directly_still_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(plots.PlotsUnavailable, match=r"pip install 'transformer-squared\[plots\]'"):
        plots.plot_curves({"loss": [(1, 0.5)]}, tmp_path / "c.png")
