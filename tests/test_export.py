"""Exporting experts: LoRA adapters that PEFT loads (exact at full rank, Eckart–Young optimal when truncated,
per-module ranks for --max-error) and merged model directories that AutoModelForCausalLM loads."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from tests.training.tinylm import tiny_tokenizer
from transformer_squared.adapted import AdaptedModel
from transformer_squared.errors import T2Error
from transformer_squared.experts import Expert
from transformer_squared.export import export_lora, export_merged
from transformer_squared.models import LoadedModel
from transformer_squared.testing import tiny_model

peft = pytest.importorskip("peft")


def tiny(arch: str) -> AdaptedModel:
    lm = LoadedModel(tiny_model(arch), None, f"tiny-{arch}", "local", "-")
    return AdaptedModel.prepare(lm, "mlp", cache=False, progress=False)


def random_expert(am: AdaptedModel, std: float = 0.1, seed: int = 1) -> Expert:
    return Expert.random(am.shapes(), std, seed, meta=am.expert_meta(name=f"random-{std}"))


def ids(n: int = 2, t: int = 12) -> torch.Tensor:
    return torch.randint(0, 128, (n, t), generator=torch.Generator().manual_seed(0))


def merged_logits(am: AdaptedModel, expert: Expert, x: torch.Tensor) -> torch.Tensor:
    with am.using(expert), torch.no_grad():
        return am.model(input_ids=x).logits


def peft_model(base, adapter_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's deprecation chatter about transformers internals
        return peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def peft_logits(arch: str, adapter_dir, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return peft_model(tiny_model(arch), adapter_dir)(input_ids=x).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_export_is_exact_at_full_rank_and_improves_with_rank(arch, tmp_path):
    am, x = tiny(arch), ids()
    expert = random_expert(am)
    ref = merged_logits(am, expert, x)
    full = max(m.rank for m in am.svf.layers.values())
    errors, reported = [], []
    for k in (1, 8, full):
        report = export_lora(am, expert, tmp_path / f"r{k}", rank=k)
        errors.append((peft_logits(arch, tmp_path / f"r{k}", x) - ref).abs().mean().item())
        reported.append(report["summary"]["rel_error_delta_mean"])
    assert (peft_logits(arch, tmp_path / f"r{full}", x) - ref).abs().max() <= 1e-4
    assert errors[0] > errors[1] > errors[2] and reported[0] > reported[1] > reported[2] == 0.0

    config = json.loads((tmp_path / "r8" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == 8
    assert config["target_modules"] == list(expert.z) and config["fan_in_fan_out"] == (arch == "gpt2")
    keys = set(load_file(str(tmp_path / "r8" / "adapter_model.safetensors")))
    assert keys == {f"base_model.model.{n}.lora_{ab}.weight" for n in expert.z for ab in "AB"}


def test_truncation_error_is_exact_and_optimal(tmp_path):
    """The reported error equals ‖ΔW − B A‖/‖ΔW‖ of the written factors, which equals the Eckart–Young
    optimum computed from ΔW's own singular values."""
    am = tiny("qwen2")
    expert = random_expert(am)
    report = export_lora(am, expert, tmp_path / "r5", rank=5)
    tensors = load_file(str(tmp_path / "r5" / "adapter_model.safetensors"))
    for name, layer in am.svf.layers.items():
        delta = layer.delta(expert.z[name]).double()  # (out, in)
        A = tensors[f"base_model.model.{name}.lora_A.weight"].double()  # (5, in)
        B = tensors[f"base_model.model.{name}.lora_B.weight"].double()  # (out, 5)
        actual = ((delta - B @ A).norm() / delta.norm()).item()
        s = torch.linalg.svdvals(delta)
        optimum = (s[5:].norm() / s.norm()).item()
        row = report["matrices"][name]
        assert row["rel_error_delta"] == pytest.approx(actual, abs=1e-5)
        assert row["rel_error_delta"] == pytest.approx(optimum, abs=1e-5)
        w_norm = layer.weight_matrix().double().norm().item()
        assert row["rel_error_weight"] == pytest.approx(actual * delta.norm().item() / w_norm, rel=1e-4)


@pytest.mark.parametrize("relative_to", ["delta", "weight"])
def test_max_error_picks_the_smallest_rank_per_matrix(relative_to, tmp_path):
    am, x = tiny("llama"), ids()
    expert = random_expert(am, std=0.3)
    ref = merged_logits(am, expert, x)
    eps = 0.3 if relative_to == "delta" else 0.05
    report = export_lora(am, expert, tmp_path / "e", max_error=eps, relative_to=relative_to)
    key = f"rel_error_{relative_to}"
    ranks = {n: r["rank"] for n, r in report["matrices"].items()}
    assert len(set(ranks.values())) > 1  # per-module ranks: rank_pattern/alpha_pattern in use
    for name, row in report["matrices"].items():
        assert row[key] <= eps
        smaller = export_lora(am, expert, tmp_path / "probe", rank=row["rank"] - 1)["matrices"][name]
        assert smaller[key] > eps  # one rank less would miss the target
    # PEFT reads the per-module ranks and alphas: merging the adapter gives exactly ΔW_K (scaling 1) per matrix
    pm = peft_model(tiny_model("llama"), tmp_path / "e")
    merged = pm.merge_and_unload()
    modules = dict(merged.named_modules())
    for name, layer in am.svf.layers.items():
        got = modules[name].weight.double() - layer.weight_matrix().double()
        err = ((layer.delta(expert.z[name]).double() - got).norm() / layer.delta(expert.z[name]).double().norm())
        assert err.item() == pytest.approx(report["matrices"][name]["rel_error_delta"], abs=1e-5)
    with torch.no_grad():
        assert (merged(input_ids=x).logits - ref).abs().max() < (am.model(input_ids=x).logits - ref).abs().max()


def test_unchanged_matrices_are_left_out_and_the_identity_is_refused(tmp_path):
    am, x = tiny("llama"), ids()
    expert = random_expert(am)
    untouched = next(iter(expert.z))
    expert.z[untouched] = torch.ones_like(expert.z[untouched])
    report = export_lora(am, expert, tmp_path / "full", rank=48)
    config = json.loads((tmp_path / "full" / "adapter_config.json").read_text())
    assert untouched not in config["target_modules"] and report["matrices"][untouched]["rank"] == 0
    assert (peft_logits("llama", tmp_path / "full", x) - merged_logits(am, expert, x)).abs().max() <= 1e-4
    with pytest.raises(T2Error, match="identity"):
        export_lora(am, am.identity_expert(), tmp_path / "none", rank=4)
    with pytest.raises(T2Error, match="exactly one"):
        export_lora(am, expert, tmp_path / "none", rank=4, max_error=0.1)
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merged_export_loads_and_matches_the_in_process_merge(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    am, x = tiny(arch), ids()
    expert, other = random_expert(am, seed=1), random_expert(am, seed=2)
    ref = merged_logits(am, expert, x)
    am.apply(other)  # the live model serves another expert meanwhile: the export must not care, nor disturb it
    with torch.no_grad():
        before = am.model(input_ids=x).logits
    if arch == "gpt2":  # or is being trained: a trainable z must not leak into the saved weights
        am.svf.train_mode()
        before = am.model(input_ids=x).logits.detach()
    am.model.config.quantization_config = {"quant_method": "gguf"}  # a leftover a GGUF load can leave
    record = export_merged(am, expert, tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(am.model(input_ids=x).logits, before)
        loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).eval()
        assert (loaded(input_ids=x).logits - ref).abs().max() <= 1e-6
    assert "quantization_config" not in json.loads((tmp_path / "m" / "config.json").read_text())
    assert set(load_file(str(tmp_path / "m" / "model.safetensors"))) == set(loaded.state_dict()) - {"lm_head.weight"}
    saved = json.loads((tmp_path / "m" / "t2-export.json").read_text())
    assert saved == json.loads(json.dumps(record)) and saved["expert"]["name"] == "random-0.1"
    assert saved["base_model"]["fingerprint"] == am.fingerprint


# -- the real embedded model ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2(embedded, tmp_path_factory):
    """SmolLM2-135M prepared for `mlp`, a random expert z = 1 + 0.1·N(0,1) saved to disk, a batch of token ids
    and the expert's reference logits, computed per-row (factored: no 90 dense ΔW to build on a slow CPU)."""
    am = AdaptedModel.prepare(embedded, "mlp", progress=False)
    try:
        expert = Expert.random(am.shapes(), 0.1, seed=0, meta=am.expert_meta(name="random-0.1"))
        path = expert.save(tmp_path_factory.mktemp("smollm2") / "random-0.1")
        x = embedded.tokenizer(["The capital of France is", "def fibonacci(n):"], return_tensors="pt",
                               padding=True)["input_ids"]  # (2, T); padding is ordinary tokens for both models
        am.svf.set_rows([expert.z] * x.shape[0])
        with torch.no_grad():
            ref = am.model(input_ids=x).logits
        am.svf.restore()
        yield am, path, x, ref
    finally:
        am.svf.detach()


@pytest.mark.slow
def test_lora_export_on_smollm2_converges_with_rank(smollm2, tmp_path):
    """PEFT logits approach the expert's logits as the rank grows (max abs diff and KL); reported errors fall."""
    from transformers import AutoModelForCausalLM

    am, path, x, ref = smollm2
    ranks = (8, 32, 128)
    reports = {k: export_lora(am, path, tmp_path / f"r{k}", rank=k,
                              dtype=torch.bfloat16 if k == 8 else torch.float32) for k in ranks}
    base = AutoModelForCausalLM.from_pretrained(am.lm.path).eval()
    pm = peft_model(base, tmp_path / "r8")
    for k in ranks[1:]:
        pm.load_adapter(str(tmp_path / f"r{k}"), adapter_name=f"r{k}")
    ref = ref.log_softmax(-1)
    stats = []
    for name in ("default", *(f"r{k}" for k in ranks[1:])):
        pm.set_adapter(name)
        with torch.no_grad():
            out = pm(input_ids=x).logits.log_softmax(-1)
        stats.append(((out - ref).abs().max().item(), (ref.exp() * (ref - out)).sum(-1).mean().item()))
    assert stats[0][0] > stats[1][0] > stats[2][0] and stats[0][1] > stats[1][1] > stats[2][1]
    assert stats[2][1] < 0.5 * stats[0][1]
    errs = [reports[k]["summary"]["rel_error_delta_mean"] for k in ranks]
    assert 1 > errs[0] > errs[1] > errs[2] > 0
    assert reports[32]["summary"]["lora_parameters"] == 90 * 32 * (576 + 1536)
    assert reports[32]["base_model"]["fingerprint"] == am.fingerprint


@pytest.mark.slow
def test_cli_export_lora_and_merged_on_smollm2(capsys, tmp_path, smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformer_squared.cli.main import main

    am, path, x, ref = smollm2
    assert main(["expert", "export", str(path), "--format", "lora", "--max-error", "0.9",
                 "--out", str(tmp_path / "lora")]) == 0
    out = capsys.readouterr().out
    assert "LoRA r = " in out and "max-lora-rank" in out
    report = json.loads((tmp_path / "lora" / "export_report.json").read_text())
    assert report["summary"]["rel_error_delta_max"] <= 0.9 and report["expert"]["path"] == str(path.resolve())
    assert f"--max-lora-rank {report['vllm_max_lora_rank']}" in out and report["vllm_max_lora_rank"] >= report["r"]

    assert main(["expert", "export", str(path), "--format", "merged", "--out", str(tmp_path / "m")]) == 0
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    text = "The capital of France is"
    assert tok(text)["input_ids"] == am.tokenizer(text)["input_ids"] and tok.chat_template == am.tokenizer.chat_template
    with torch.no_grad():  # dense W' vs the per-row factored reference: equal up to fp32 rounding (logits ~20)
        assert (loaded(input_ids=x).logits - ref).abs().max() <= 5e-4
    record = json.loads((tmp_path / "m" / "t2-export.json").read_text())
    assert record["expert"]["base_hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("argv, match", [
    (["--format", "lora"], "exactly one of --rank K or --max-error"),
    (["--format", "merged", "--rank", "4"], "a merged export is exact"),
])
def test_cli_export_user_errors_are_one_line(capsys, tmp_path, argv, match):
    from transformer_squared.cli.main import main

    am = tiny("llama")
    random_expert(am).save(tmp_path / "e")
    code = main(["expert", "export", str(tmp_path / "e"), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1


# The expert's metadata (expert.json) and the model's config.json, missing or damaged: `t2 expert export` ends in
# one line on stderr and exit status 2, before writing anything.
LATIN1 = '{"name": "caf\xe9"}'.encode("latin-1")
BAD_EXPERT = [
    (None, "not an expert (needs expert.safetensors and expert.json)"),
    (b'{"format_version": 1,', "expert.json: not valid JSON (Expecting property name"),
    (LATIN1, "expert.json:1: expert metadata is not UTF-8 text (byte 0xe9 at offset 13)"),
    (b"[]", "expert.json: expected a JSON object (expert metadata), got an array"),
]
BAD_CONFIG = [
    (None, "not a Hugging Face model directory (no config.json)"),
    (b'{"model_type": "llama",', "config.json: not valid JSON (Expecting property name"),
    (b"", "config.json: not valid JSON (Expecting value at column 1)"),
    (LATIN1, "config.json:1: model config is not UTF-8 text (byte 0xe9 at offset 13)"),
    (b"[1, 2]", "config.json: expected a JSON object (a model config), got an array"),
    (b'{"model_type": "no-such-architecture"}', "has model type `no-such-architecture` but Transformers does not"),
]


@pytest.mark.parametrize("broken, content, match", [("expert", c, m) for c, m in BAD_EXPERT]
                         + [("model", c, m) for c, m in BAD_CONFIG])
@pytest.mark.parametrize("fmt", [["--format", "merged"], ["--format", "lora", "--rank", "2"]], ids=["merged", "lora"])
def test_cli_export_with_a_damaged_config_is_one_line(capsys, tmp_path, fmt, broken, content, match):
    from transformer_squared.cli.main import main

    am = tiny("llama")
    random_expert(am).save(tmp_path / "e")
    model = tmp_path / "model"  # a config and a tokenizer: all a model directory needs to get this far
    tiny_tokenizer().save_pretrained(model)
    (model / "config.json").write_text(am.model.config.to_json_string())
    damaged = tmp_path / "e" / "expert.json" if broken == "expert" else model / "config.json"
    if content is None:
        damaged.unlink()
    else:
        damaged.write_bytes(content)
    code = main(["expert", "export", str(tmp_path / "e"), "--model", str(model), "--out", str(tmp_path / "o"), *fmt])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("t2 expert: error: ") and err.count("\n") == 1, err
    assert match in err, err
    assert not (tmp_path / "o").exists()
