import json

import pytest
import torch

from transformer_squared.errors import T2Error
from transformer_squared.experts import Expert, mix

SHAPES = {"l.0.mlp.up": [8, 4], "l.0.mlp.down": [4, 8], "l.1.mlp.up": [8, 4]}
META = {"base_model": {"name": "tiny", "fingerprint": "abc"}, "targets": "mlp", "name": "e"}


def test_round_trip_keeps_z_meta_and_order(tmp_path):
    e = Expert.random(SHAPES, 0.2, seed=1, meta={**META, "metrics": {"valid": 0.5}})
    e.save(tmp_path / "e")
    back = Expert.load(tmp_path / "e")
    assert list(back.z) == list(SHAPES)
    for n in SHAPES:
        assert torch.equal(back.z[n], e.z[n])
    assert back.meta["metrics"] == {"valid": 0.5}
    assert back.meta["format_version"] == 1 and back.meta["num_parameters"] == 12
    assert back.meta["library_version"]
    assert Expert.load(tmp_path / "e" / "expert.json").num_parameters == 12


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    Expert.identity(SHAPES, META).save(tmp_path / "e")
    Expert.random(SHAPES, 0.1, meta=META).save(tmp_path / "e")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    assert Expert.load(tmp_path / "e").stats()["max_abs_dev"] > 0


def test_refuses_non_finite(tmp_path):
    e = Expert.identity(SHAPES, META)
    e.z["l.0.mlp.up"][0] = float("nan")
    with pytest.raises(T2Error, match="finite"):
        e.save(tmp_path / "e")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "expert.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "expert.safetensors").unlink(), "not an expert"),
    (lambda d: (d / "expert.safetensors").write_bytes(b"garbage"), "unreadable"),
    (lambda d: (d / "expert.json").write_text(json.dumps({"format_version": 99})), "format version"),
])
def test_damaged_files_give_one_line_errors(tmp_path, damage, match):
    Expert.identity(SHAPES, META).save(tmp_path / "e")
    damage(tmp_path / "e")
    with pytest.raises(T2Error, match=match) as info:
        Expert.load(tmp_path / "e")
    assert "\n" not in str(info.value)


def test_compatibility_checks():
    e = Expert.identity(SHAPES, META)
    e.check_compatible(SHAPES, "abc")
    with pytest.raises(T2Error, match="differ"):
        e.check_compatible({**SHAPES, "l.1.mlp.down": [4, 8]}, "abc")
    with pytest.raises(T2Error, match="wrong model"):
        e.check_compatible({**SHAPES, "l.1.mlp.up": [8, 5]}, "abc")
    with pytest.raises(T2Error, match="--allow-transfer"):
        e.check_compatible(SHAPES, "other")
    e.check_compatible(SHAPES, "other", allow_transfer=True)


def test_mix_is_linear_in_effective_z():
    a, b = Expert.random(SHAPES, 0.3, seed=1, meta=META), Expert.random(SHAPES, 0.3, seed=2, meta=META)
    m = mix([a, b], [0.25, 0.75])
    for n in SHAPES:
        torch.testing.assert_close(m.z[n], 0.25 * a.z[n] + 0.75 * b.z[n])
    assert m.meta["alpha"] == [0.25, 0.75] and m.meta["base_model"] == META["base_model"]
    per = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])  # (K, M)
    m2 = mix([a, b], per)
    names = list(SHAPES)
    torch.testing.assert_close(m2.z[names[0]], a.z[names[0]])
    torch.testing.assert_close(m2.z[names[1]], b.z[names[1]])
    torch.testing.assert_close(m2.z[names[2]], 0.5 * (a.z[names[2]] + b.z[names[2]]))
    with pytest.raises(T2Error):
        mix([a, b], [1.0])
    with pytest.raises(T2Error, match="different matrices"):
        mix([a, Expert.identity({"x": [2, 2]}, META)], [0.5, 0.5])


def _saved(tmp_path) -> "Path":
    Expert.identity(SHAPES, META).save(tmp_path / "e")
    return tmp_path / "e"


def _rewrite_meta(d, change) -> None:
    meta = json.loads((d / "expert.json").read_text())
    (d / "expert.json").write_text(json.dumps(change(meta)))


@pytest.mark.parametrize("change, match", [
    (lambda m: [m], r"expected a JSON object \(expert metadata\), got an array"),
    (lambda m: {**m, "shapes": list(m["shapes"].values())}, "'shapes' must be a non-empty object"),
    (lambda m: {**m, "shapes": {}}, "'shapes' must be a non-empty object"),
    (lambda m: {**m, "shapes": {**m["shapes"], "l.0.mlp.up": [8, "4"]}},
     r"shapes\['l.0.mlp.up'\] must be \[out, in\]"),
    (lambda m: {**m, "base_model": "tiny"}, r"'base_model' is a string, not an object"),
    (lambda m: {**m, "base_model": {"name": "tiny"}}, "'base_model' has no 'fingerprint'.*nothing ties this expert"),
    (lambda m: {k: v for k, v in m.items() if k != "base_model"}, "'base_model' is missing.*nothing ties"),
    (lambda m: {**m, "name": ["x"]}, "'name' must be a string"),
    (lambda m: {**m, "training": "long"}, "'training' must be an object"),
])
def test_metadata_of_the_wrong_shape_is_refused_in_one_line(tmp_path, change, match):
    d = _saved(tmp_path)
    _rewrite_meta(d, change)
    with pytest.raises(T2Error, match=match) as info:
        Expert.load(d)
    assert "\n" not in str(info.value)


def test_metadata_that_is_not_utf8_or_nested_too_deep_is_one_line(tmp_path):
    d = _saved(tmp_path)
    (d / "expert.json").write_bytes('{"name": "café", "format_version": 1}'.encode("latin-1"))
    with pytest.raises(T2Error, match=r"expert.json:1: expert metadata is not UTF-8 text \(byte 0xe9"):
        Expert.load(d)
    (d / "expert.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(T2Error, match="nested too deeply"):
        Expert.load(d)


def test_utf16_metadata_with_a_bom_is_read(tmp_path):
    d = _saved(tmp_path)
    text = (d / "expert.json").read_text()
    (d / "expert.json").write_bytes(text.encode("utf-16"))  # declares itself with a byte-order mark
    assert Expert.load(d).meta["base_model"]["fingerprint"] == "abc"


@pytest.mark.parametrize("value, match", [(float("inf"), "not a finite"), (float("nan"), "not a finite"),
                                          (2e6, r"\|z\| = 2e\+06"), (-1e6, r"\|z\| = 1e\+06")])
def test_non_finite_or_absurd_z_is_refused_on_load_and_save(tmp_path, value, match):
    from safetensors.torch import save_file

    d = _saved(tmp_path)
    e = Expert.load(d)
    e.z["l.0.mlp.down"][1] = value
    save_file({n: t.contiguous() for n, t in e.z.items()}, str(d / "expert.safetensors"))
    with pytest.raises(T2Error, match=match):
        Expert.load(d)
    with pytest.raises(T2Error, match=match):
        e.save(tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_z_length_mismatch_names_both_lengths(tmp_path):
    from safetensors.torch import save_file

    d = _saved(tmp_path)
    z = {n: torch.ones(min(s)) for n, s in SHAPES.items()}
    z["l.1.mlp.up"] = torch.ones(3)
    save_file(z, str(d / "expert.safetensors"))
    with pytest.raises(T2Error, match=r"z for l.1.mlp.up has 3 values, its matrix of shape \[8, 4\] needs 4"):
        Expert.load(d)
    e = Expert(z, {**META, "shapes": {}})  # in memory: the model's shapes are what it is checked against
    with pytest.raises(T2Error, match=r"has 3 values of z for l.1.mlp.up, the model's matrix there is \[8, 4\] "
                                      r"and needs 4"):
        e.check_compatible(SHAPES, "abc")


def test_a_large_weights_file_is_refused_by_size_before_it_is_read(tmp_path, monkeypatch):
    import transformer_squared.experts as experts

    d = _saved(tmp_path)
    with open(d / "expert.safetensors", "ab") as f:
        f.truncate(experts.HEADER_SLACK_BYTES + 10_000)  # sparse: large on paper, cheap on disk
    monkeypatch.setattr(experts, "load_file", lambda *_: pytest.fail("read a file that is too large"))
    with pytest.raises(T2Error, match="more than the .* an expert of these 3 matrices can take"):
        Expert.load(d)
    _rewrite_meta(d, lambda m: {**m, "padding": "x" * experts.MAX_META_BYTES})
    with pytest.raises(T2Error, match="expert metadata is .* bytes, more than the"):
        Expert.load(d)


def test_weights_and_metadata_must_list_the_same_matrices(tmp_path):
    d = _saved(tmp_path)
    _rewrite_meta(d, lambda m: {**m, "shapes": {**m["shapes"], "l.1.mlp.down": [4, 8]}})
    with pytest.raises(T2Error, match="holds 3 matrices, expert.json lists 4"):
        Expert.load(d)
