"""Every bad input a user can hand `t2` ends in one line on stderr and exit status 2, never a traceback.

Through the real entry point (`cli.main.main`, and the installed command in a subprocess where the process
matters): malformed expert files, data and prediction files in the wrong encoding, JSON nested too deeply, empty
predictions, an impossible `t2 train --out`, a full disk. No model is loaded: these must fail before that.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from transformer_squared.cli.main import main
from transformer_squared.experts import Expert

SHAPES = {"l.0.mlp.up": [8, 4], "l.0.mlp.down": [4, 8]}
META = {"base_model": {"name": "tiny", "fingerprint": "abc"}, "targets": "mlp", "name": "e"}


def one_line_error(capsys, argv, match: str) -> str:
    """Run `t2 argv`; assert exit status 2 and exactly one stderr line containing `match`; return that line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and match in err, err
    return err.strip()


@pytest.fixture
def expert_dir(tmp_path) -> Path:
    return Expert.random(SHAPES, 0.1, seed=0, meta=META).save(tmp_path / "e")


def _meta(d: Path, change) -> None:
    (d / "expert.json").write_text(json.dumps(change(json.loads((d / "expert.json").read_text()))))


# -- expert files --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage, match", [
    (lambda d: _meta(d, lambda m: [m]), "expected a JSON object (expert metadata), got an array"),
    (lambda d: _meta(d, lambda m: {**m, "shapes": [[8, 4], [4, 8]]}), "'shapes' must be a non-empty object"),
    (lambda d: _meta(d, lambda m: {**m, "base_model": "tiny"}), "'base_model' is a string, not an object"),
    (lambda d: _meta(d, lambda m: {k: v for k, v in m.items() if k != "base_model"}),
     "nothing ties this expert to a model"),
    (lambda d: (d / "expert.json").write_bytes((d / "expert.json").read_text().replace('"e"', '"é"')
                                               .encode("latin-1")), "is not UTF-8 text (byte 0xe9"),
    (lambda d: (d / "expert.json").write_text("[" * 100_000 + "]" * 100_000), "JSON nested too deeply"),
    (lambda d: (d / "expert.safetensors").write_bytes(b"\0" * (2 << 20)), "bytes, more than the"),
])
def test_bad_expert_files(capsys, expert_dir, damage, match):
    damage(expert_dir)
    line = one_line_error(capsys, ["expert", "show", expert_dir, "--png", "none"], match)
    assert line.startswith("t2 expert: error: ")


def test_absurd_z_is_refused(capsys, expert_dir):
    from safetensors.torch import save_file

    z = {n: torch.ones(min(s)) for n, s in SHAPES.items()}
    z["l.0.mlp.up"][2] = 3e7
    save_file(z, str(expert_dir / "expert.safetensors"))
    one_line_error(capsys, ["expert", "show", expert_dir, "--png", "none"], "|z| = 3e+07")


def test_an_out_that_cannot_be_written_is_one_line(capsys, expert_dir):
    one_line_error(capsys, ["expert", "mix", expert_dir, "--alpha", "1", "--out", "/proc/t2-no-such/m"],
                   "/proc/t2-no-such: No such file or directory; check the path")


def test_mix_with_absurd_alpha_writes_nothing(capsys, expert_dir, tmp_path):
    one_line_error(capsys, ["expert", "mix", expert_dir, "--alpha", "1e7", "--out", tmp_path / "m"],
                   "refusing to save expert")
    assert not (tmp_path / "m").exists()


# -- data and predictions ------------------------------------------------------------------------------------
@pytest.fixture
def task_file(tmp_path) -> Path:
    path = tmp_path / "task.jsonl"
    path.write_text('{"id": "q1", "prompt": "2+2?", "answer": 4}\n{"id": "q2", "prompt": "Café?", "answer": 9}\n',
                    encoding="utf-8")
    return path


def _score(task_file, preds, *extra):
    return ["score", "--task", f"custom:{task_file}", "--predictions", str(preds), *extra]


PREDS = '{"id": "q1", "output": "It is 4."}\n{"id": "q2", "output": "Déjà 6."}\n'


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-32"])
def test_predictions_that_declare_their_encoding_are_read(capsys, tmp_path, task_file, encoding):
    preds = tmp_path / "preds.jsonl"
    preds.write_bytes(PREDS.encode(encoding))  # each of these codecs writes a byte-order mark
    assert main(_score(task_file, preds, "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["n"], summary["correct"]) == (2, 1)


def test_latin1_predictions_and_data_are_one_line_errors(capsys, tmp_path, task_file):
    preds = tmp_path / "preds.jsonl"
    preds.write_bytes(PREDS.encode("latin-1"))
    one_line_error(capsys, _score(task_file, preds), f"{preds}:2: predictions file is not UTF-8 text (byte 0xe9")
    preds.write_text(PREDS)
    task_file.write_bytes(task_file.read_text().encode("cp1252"))
    one_line_error(capsys, _score(task_file, preds), f"{task_file}:2: data file is not UTF-8 text")


@pytest.mark.parametrize("content, match", [
    ("", "no predictions in the file"),
    ("\n  \n", "no predictions in the file"),
    ('{"id": "q1", "output": ' + "[" * 100_000 + "\n" + '{"id": "q2", "output": "x"}\n', ":1: JSON nested too deeply"),
])
def test_empty_or_too_deep_predictions(capsys, tmp_path, task_file, content, match):
    preds = tmp_path / "preds.jsonl"
    preds.write_text(content)
    one_line_error(capsys, _score(task_file, preds), match)


def test_deeply_nested_data_row(capsys, tmp_path, task_file):
    task_file.write_text('{"id": "q1", "prompt": "x", "answer": 1}\n{"prompt": ' + "[" * 100_000 + "}\n")
    preds = tmp_path / "preds.jsonl"
    preds.write_text(PREDS)
    one_line_error(capsys, _score(task_file, preds), f"{task_file}:2: JSON nested too deeply")


# -- t2 train --out ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("out", ["/dev/null/run", "/proc/t2-no-such/run", "/tmp/" + "x" * 300])
def test_train_refuses_an_impossible_out_at_once(capsys, monkeypatch, tmp_path, task_file, out):
    import transformer_squared.training.loop as loop

    monkeypatch.setattr(loop, "load_model", lambda *a, **k: pytest.fail("loaded the model before checking --out"))
    argv = ["train", "--task", f"custom:{task_file}", "--out", out, "--device", "cpu"]
    one_line_error(capsys, argv, "--out ")  # the first call also imports the command modules (torch included)
    start = time.perf_counter()
    one_line_error(capsys, argv, "--out ")
    assert time.perf_counter() - start < 1.0  # the check itself: before the task, the data and the model


def test_train_refuses_an_out_inside_a_file(capsys, tmp_path, task_file):
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, ["train", "--task", f"custom:{task_file}", "--out", tmp_path / "file" / "run"],
                   "cannot write there (Not a directory")
    one_line_error(capsys, ["train", "--task", f"custom:{task_file}", "--out", tmp_path / "file"],
                   "exists and is not a directory")


@pytest.mark.parametrize("argv", [
    ["eval", "--out", "/proc/t2-no-such/eval"],
    ["adapt", "--experts", "experts", "--out", "/proc/t2-no-such/adapted"],
])
def test_eval_and_adapt_check_out_before_loading(capsys, monkeypatch, task_file, argv):
    import transformer_squared.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded the model before checking --out"))
    one_line_error(capsys, [argv[0], "--task", f"custom:{task_file}", *argv[1:]], "cannot write there")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_train_refuses_a_read_only_out(capsys, tmp_path, task_file):
    (tmp_path / "ro").mkdir(mode=0o500)
    one_line_error(capsys, ["train", "--task", f"custom:{task_file}", "--out", tmp_path / "ro" / "run"],
                   "Permission denied")


@pytest.mark.slow  # the installed `t2` in a subprocess
def test_train_out_check_in_a_subprocess(tmp_path, task_file):
    """The installed command: one line, status 2, nothing left behind, and in well under a second."""
    t2 = Path(sys.executable).with_name("t2")
    cmd = [str(t2)] if t2.exists() else [sys.executable, "-m", "transformer_squared.cli.main"]
    proc = subprocess.run(cmd + ["train", "--task", f"custom:{task_file}", "--out", "/proc/t2-no-such/run"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("t2 train: error: --out /proc/t2-no-such/run: cannot write there")
    # What makes it fast, independent of this machine's load: neither torch nor transformers was imported
    # (torch alone takes 1-2 s on an idle CPU).
    probe = ("import sys; from transformer_squared.cli.main import main; "
             f"code = main(['train', '--task', 'custom:{task_file}', '--out', '/proc/t2-no-such/run']); "
             "print(code, sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.stdout.split("\n")[0] == "2 []", proc.stdout + proc.stderr


# -- a full disk -----------------------------------------------------------------------------------------------
def test_full_disk_is_one_line_and_keeps_the_previous_file(capsys, monkeypatch, expert_dir, tmp_path):
    out = tmp_path / "mixed"
    assert main(["expert", "mix", str(expert_dir), "--alpha", "1", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # every atomic write fsyncs before its rename
    one_line_error(capsys, ["expert", "mix", expert_dir, "--alpha", "0.5", "--out", out], "No space left on device")
    written = []
    monkeypatch.setattr(os, "fsync", lambda fd: written.append(os.readlink(f"/proc/self/fd/{fd}")) or full(fd))
    one_line_error(capsys, ["expert", "mix", expert_dir, "--alpha", "0.5", "--out", out], "No space left on device")
    assert written and "/.expert.safetensors." in written[0]  # the weights too go through an atomic write
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "mixed"]  # no temporary left behind


@pytest.mark.parametrize("content, match", [("{oops", "not valid JSON"), ("[1, 2]", "another configuration"),
                                            ("[" * 100_000, "nested too deeply")])
def test_a_damaged_cem_checkpoint_is_one_line(tmp_path, content, match):
    from transformer_squared.adaptation.cem import CEMConfig, cem
    from transformer_squared.errors import T2Error

    checkpoint = tmp_path / "run.cem.json"
    checkpoint.write_text(content)
    with pytest.raises(T2Error, match=match) as info:
        cem(lambda alphas: pytest.fail("searched despite the damaged checkpoint"), (3,), CEMConfig(population=4),
            checkpoint=checkpoint, resume=True)
    assert "\n" not in str(info.value)
