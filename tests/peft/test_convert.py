"""`t2 expert convert --to peft|t2` and the PEFT registration."""

import json

import peft
import pytest
import torch

import transformer_squared.peft as t2peft
from transformer_squared.cli.main import main
from transformer_squared.errors import T2Error
from transformer_squared.experts import Expert

SHAPES = {"model.layers.0.mlp.up_proj": [8, 4], "model.layers.0.mlp.down_proj": [4, 8]}
META = {"base_model": {"name": "tiny", "fingerprint": "abc", "architecture": "LlamaForCausalLM"},
        "targets": "mlp", "name": "e", "task": "gsm8k", "domain": "math", "metrics": {"test": {"accuracy": 0.5}}}


def test_cli_round_trip_is_lossless(tmp_path, capsys):
    Expert.random(SHAPES, 0.2, seed=1, meta=META).save(tmp_path / "e")
    assert main(["expert", "convert", str(tmp_path / "e"), "--to", "peft", "--out", str(tmp_path / "a")]) == 0
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "SVF" and cfg["target_modules"] == list(SHAPES)
    assert main(["expert", "convert", str(tmp_path / "a"), "--to", "t2", "--out", str(tmp_path / "e2")]) == 0
    a, b = Expert.load(tmp_path / "e"), Expert.load(tmp_path / "e2")
    assert list(a.z) == list(b.z) and all(torch.equal(a.z[n], b.z[n]) for n in a.z)
    assert a.meta == b.meta


@pytest.mark.parametrize("setup, match", [
    (lambda d: None, "not a PEFT adapter directory"),
    (lambda d: (d.mkdir(), (d / "adapter_config.json").write_text('{"peft_type": "LORA"}'),
                (d / "adapter_model.safetensors").write_bytes(b"")), "a LORA adapter, not an SVF one"),
])
def test_convert_errors_are_one_line(tmp_path, capsys, setup, match):
    setup(tmp_path / "a")
    assert main(["expert", "convert", str(tmp_path / "a"), "--to", "t2", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err and not (tmp_path / "e").exists()


def test_registration_is_idempotent_and_refuses_other_tables(monkeypatch):
    t2peft.register()
    assert peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING["SVF"] is t2peft.SVFModel
    assert isinstance(t2peft.SVFConfig(), peft.PeftConfig)
    monkeypatch.setattr(peft.mapping, "PEFT_TYPE_TO_TUNER_MAPPING", [])
    with pytest.raises(T2Error, match="lays out its method tables differently"):
        t2peft.register()
