import os

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


@pytest.mark.parametrize("config, match", [
    (b"{oops", r"config.json: not valid JSON \(Expecting property name .* at column 2\); fix it"),
    (b"[1, 2]", r"config.json: expected a JSON object \(a model config\), got an array"),
    ('{"model_type": "caf\xe9"}'.encode("latin-1"), r"config.json:1: model config is not UTF-8 text \(byte 0xe9"),
    (None, r"could not load model .*: Couldn't instantiate the backend tokenizer"),  # a config, no tokenizer
])
def test_damaged_model_directory_is_a_one_line_error(tmp_path, config, match):
    tiny_model("llama").config.save_pretrained(tmp_path)
    if config is not None:
        (tmp_path / "config.json").write_bytes(config)
    with pytest.raises(T2Error, match=match) as e:
        load_model(str(tmp_path))
    assert "\n" not in str(e.value)


def test_embedded_default_loads_from_gguf_and_generates(embedded):
    assert embedded.source == "alias" and embedded.model.config.model_type == "llama"
    tok = embedded.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = embedded.model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
    assert embedded.model.dtype == torch.float32


def test_device_defaults_to_cpu_and_follows_t2_device(monkeypatch):
    from transformer_squared.models import resolve_device

    monkeypatch.delenv("T2_DEVICE", raising=False)
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setenv("T2_DEVICE", "auto")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit device wins over the environment


@pytest.mark.parametrize("spec, match", [
    ("gpu0", "not a device"),
    pytest.param("cuda", "CUDA is not available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_devices_give_clear_errors(spec, match):
    from transformer_squared.models import resolve_device

    with pytest.raises(T2Error, match=match):
        resolve_device(spec)


@pytest.mark.parametrize("device, match", [
    ("gpu0", "not a device"),
    pytest.param("cuda:0", "CUDA is not available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_cli_device_errors_are_one_line_before_loading(capsys, monkeypatch, device, match):
    from transformer_squared.cli.main import main

    monkeypatch.delenv("T2_DEVICE", raising=False)
    # a model that does not exist: the device is checked first, so the error names the device
    code = main(["generate", "--model", "/does/not/exist", "--device", device, "hi"])
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1


def test_cli_device_reaches_the_loaded_model(capsys, monkeypatch, tiny_model_dir):
    from transformer_squared.cli.main import main

    monkeypatch.setenv("T2_DEVICE", "cuda:7")  # would fail if --device did not replace it
    code = main(["generate", "--model", str(tiny_model_dir), "--device", "cpu", "--max-new-tokens", "2", "hi"])
    assert code == 0, capsys.readouterr().err
    assert os.environ["T2_DEVICE"] == "cpu"
