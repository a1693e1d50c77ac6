"""The thin CLI over the library, on the real embedded model (in-process, plus one real subprocess)."""

import json
import subprocess
import sys

import pytest
import torch

from transformer_squared.cli.main import COMMANDS, main
from transformer_squared.experts import Expert


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_counts_smollm2_mlp_parameters(capsys, embedded):
    code, out, _ = run(capsys, "info", "--json")
    info = json.loads(out)
    assert code == 0
    assert info["svf_parameters"] == 51_840  # 30 layers × 3 matrices × r = 576
    assert info["adapted_matrices"] == 90
    assert info["lora_qv_parameters"] == 30 * 16 * ((576 + 576) + (576 + 192))


def test_expert_init_show_mix(capsys, tmp_path, embedded):
    a, b, m = tmp_path / "a", tmp_path / "b", tmp_path / "m"
    assert run(capsys, "expert", "init", "--out", str(a))[0] == 0
    assert run(capsys, "expert", "init", "--out", str(b), "--noise", "0.1", "--seed", "1")[0] == 0
    assert run(capsys, "expert", "mix", str(a), str(b), "--alpha", "0.5,0.5", "--out", str(m))[0] == 0
    za, zb, zm = Expert.load(a), Expert.load(b), Expert.load(m)
    assert za.stats()["max_abs_dev"] == 0
    for n in za.z:
        torch.testing.assert_close(zm.z[n], 0.5 * (za.z[n] + zb.z[n]))
    code, out, _ = run(capsys, "expert", "show", str(m), "--json")
    shown = json.loads(out)
    assert code == 0 and shown["parameters"] == 51_840 and (m / "z.png").stat().st_size > 1000


def test_identity_expert_is_exactly_the_base_model(embedded):
    from transformer_squared.adapted import AdaptedModel

    ids = embedded.tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base = embedded.model(input_ids=ids).logits
    am = AdaptedModel.prepare(embedded, "mlp", progress=False)
    try:
        with am.using(am.identity_expert()), torch.no_grad():
            assert (embedded.model(input_ids=ids).logits - base).abs().max() <= 1e-5
        with am.using(Expert.random(am.shapes(), 0.2, meta=am.expert_meta())), torch.no_grad():
            assert (embedded.model(input_ids=ids).logits - base).abs().max() > 1e-2
        with torch.no_grad():  # restored, bit-exact
            assert torch.equal(embedded.model(input_ids=ids).logits, base)
    finally:
        am.svf.detach()


@pytest.mark.slow  # the subprocess loads the real embedded model (the default --model) before refusing the expert
def test_wrong_expert_for_model_is_one_clear_line(tmp_path):
    from transformer_squared.adapted import base_meta
    from transformer_squared.models import LoadedModel
    from transformer_squared.testing import tiny_model

    lm = LoadedModel(tiny_model("llama"), None, "tiny-llama", "local", "-")
    meta = base_meta(lm, "mlp")
    Expert.identity(meta["shapes"], {**meta, "name": "tiny"}).save(tmp_path / "tiny")
    proc = subprocess.run([sys.executable, "-m", "transformer_squared.cli.main", "generate", "--expert",
                           str(tmp_path / "tiny"), "--max-new-tokens", "4", "hello"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "t2 generate: error: expert 'tiny'" in lines[0], proc.stderr


@pytest.mark.parametrize("argv, match", [
    (["expert", "show", "/nonexistent"], "no such expert directory"),
    (["info", "--model", "{tiny}", "--targets", "nothing_here"], "matches no linear layer"),
    (["expert", "mix", "a", "--alpha", "x", "--out", "o"], "comma-separated numbers"),
])
def test_user_errors_exit_2_with_one_line(capsys, argv, match, tiny_model_dir):
    code, _, err = run(capsys, *(a.format(tiny=tiny_model_dir) for a in argv))
    assert code == 2 and match in err and err.count("\n") == 1


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_working_help(capsys, command):
    """`--help` formats every option's help text (argparse %-formats it: a bare "50%" once broke `t2 train`)."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and f"usage: t2 {command}" in capsys.readouterr().out
