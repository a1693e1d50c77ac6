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
