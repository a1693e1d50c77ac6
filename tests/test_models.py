import pytest
import torch

from transformer_squared.errors import T2Error
from transformer_squared.models import load_model, resolve
from transformer_squared.testing import tiny_model


def test_local_directory_round_trip(tmp_path):
    from transformers import AutoTokenizer  # noqa: F401

    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path / "m")
    where, source = resolve(str(tmp_path / "m"))
    assert source == "local" and where == tmp_path / "m"


@pytest.mark.parametrize("spec, match", [
    ("/does/not/exist", "no such model directory"),
    ("./missing.gguf", "no such GGUF file"),
])
def test_bad_specs_give_clear_errors(spec, match):
    with pytest.raises(T2Error, match=match):
        load_model(spec)


def test_directory_without_config(tmp_path):
    with pytest.raises(T2Error, match="no config.json"):
        load_model(str(tmp_path))


def test_embedded_default_loads_from_gguf_and_generates(embedded):
    assert embedded.source == "alias" and embedded.model.config.model_type == "llama"
    tok = embedded.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = embedded.model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
    assert embedded.model.dtype == torch.float32
