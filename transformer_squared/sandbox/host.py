"""The host side of the sandbox: start sandboxed runs, enforce the wall clock, drain output, classify the result.

`run_python` runs one program in one sandbox; `run_check` runs a judged check in two (a candidate program and a
judge holding the tests, joined by a data-only channel); the package docstring has the design and the threat
model, `bootstrap.py` what happens inside a sandbox before the program starts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import selectors
import shutil
import signal
import site
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import T2Error
from .bootstrap import PRIVATE_TMP, proc_table

log = logging.getLogger("transformer_squared.sandbox")

_HERE = Path(__file__).resolve().parent
_UID_RANGE = (1_900_000_000, 2_140_000_000)
_TAIL = 4096
_CHUNK = 1 << 20
_KILL_GRACE = 2.0  # seconds the bootstrap gets to tear the namespace down after a timeout
_LINGER = 1.0  # seconds the candidate gets to exit by itself once the judge is done
_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory")
_VERDICT_BYTES = 1 << 20
# The channel, as the programs see it: candidate reads requests on 3 and answers on 4; the judge reads answers on
# 3, sends requests on 4 and writes its verdict on 5.
_FD_IN, _FD_OUT, _FD_VERDICT = 3, 4, 5


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed program (a judged check applies them to the candidate and to the judge)."""

    timeout: float = 10.0  # wall-clock seconds (a judged check: both processes together)
    memory_mb: int = 1024  # RLIMIT_AS per process
    max_processes: int = 16  # RLIMIT_NPROC (processes *and* threads of the program)
    max_output_bytes: int = 1_000_000  # captured per stream; the rest is read and discarded
    max_file_bytes: int = 10_000_000  # RLIMIT_FSIZE
    network: bool = False  # False: run in an empty network namespace where the OS allows it

    def __post_init__(self) -> None:
        checks = {
            "timeout": 0 < self.timeout < float("inf"),
            "memory_mb": self.memory_mb >= 32,
            "max_processes": self.max_processes >= 1,
            "max_output_bytes": self.max_output_bytes >= 0,
            "max_file_bytes": self.max_file_bytes >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise T2Error(f"SandboxLimits: invalid {', '.join(bad)} ({self}); use positive values, memory_mb >= 32")


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # run_python: exited 0 within the limits; run_check: the judge saw every test pass
    status: str  # "passed" | "failed" | "timeout" | "memory" | "killed" | "error" (the sandbox's or the tests' fault)
    returncode: int | None  # the program's (candidate's) exit code, or -signal; None for "timeout" and "error"
    stdout: str  # the program's (candidate's)
    stderr: str  # the program's (candidate's); a judged check adds the judge's finding as "[judge] ..."
    seconds: float


@dataclass(frozen=True)
class CodeCheck:
    """Untrusted code and the trusted tests that judge it (see the package docstring).

    solution:    the candidate program, run as `__main__` in its own sandbox (an MBPP task's setup code goes here,
                 after the solution, as the original evaluation ran it).
    tests:       run by the judge. A name they use that neither they, `judge_setup` nor the builtins define is
                 looked up in the candidate's globals: data comes across by value, anything else as a reference
                 the tests can only call or pass back; a standard-library module is imported by the judge.
    judge_setup: trusted code the judge runs first (HumanEval: the prompt, for its imports and helpers).
    aliases:     judge name -> candidate global, bound before the tests (HumanEval: {"candidate": entry point}).
    """

    solution: str
    tests: str
    judge_setup: str = ""
    aliases: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IsolationReport:
    """What the sandbox gets on this machine (probed once by running a small program)."""

    namespaces: tuple[str, ...]  # of "user", "pid", "net", "ipc", "mnt"
    dropped_privileges: bool  # True when the host is root and the program ran as a fresh uid
    network_isolated: bool
    exact_process_limit: bool
    own_proc: bool  # the program's /proc shows its own pid namespace (checked from inside)
    read_only_host: bool  # every mount but its private temp dirs and workdir is read-only for it
    user_namespaces_blocked: bool  # unshare(CLONE_NEWUSER) failed inside (checked from inside)


# --------------------------------------------------------------------------------------------- public API


def run_python(code: str, *, limits: SandboxLimits | None = None, stdin: str | None = None) -> SandboxResult:
    """Run `code` as a Python program in the sandbox and return how it ended; never raises for the program's sake.

    `passed` means it exited 0 within its limits: a program can always do that, so never use it as the verdict
    of tests that run inside the program; use `run_check`.
    """
    _need_linux()
    return _run_program(code, limits or SandboxLimits(), stdin)[0]


def run_check(check: CodeCheck, *, limits: SandboxLimits | None = None) -> SandboxResult:
    """Judge `check.solution` by `check.tests`, each in its own sandbox; `passed` only if every test passed."""
    _need_linux()
    return _run_check(check, limits or SandboxLimits())


def run_many(programs: Sequence[str], *, limits: SandboxLimits | None = None, workers: int = 2,
             progress: bool = False) -> list[SandboxResult]:
    """`run_python` over `programs`, `workers` at a time; results are in input order."""
    return _pool([functools.partial(run_python, p, limits=limits) for p in programs], workers, progress)


def run_checks(checks: Sequence[CodeCheck], *, limits: SandboxLimits | None = None, workers: int = 2,
               progress: bool = False) -> list[SandboxResult]:
    """`run_check` over `checks`, `workers` at a time (each uses two sandboxes); results are in input order."""
    return _pool([functools.partial(run_check, c, limits=limits) for c in checks], workers, progress)


def isolation_report() -> IsolationReport:
    """Probe (once per process) which isolation mechanisms work here; the program checks two of them itself."""
    probe = ("import ctypes, os\n"
             "print(ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0)\n"  # CLONE_NEWUSER
             "print(os.readlink('/proc/self') == str(os.getpid()))\n")
    with _REPORT_LOCK:
        if not _REPORT:
            result, status = _run_program(probe, SandboxLimits(timeout=30), None)
            spaces = tuple(status.get("namespaces", ()))
            made_userns, own_proc = (result.stdout.split() + ["?", "?"])[:2]
            isolation = status.get("isolation", {})
            _REPORT.append(IsolationReport(
                namespaces=spaces,
                dropped_privileges=_can_switch_uid() and result.passed,
                network_isolated="net" in spaces,
                exact_process_limit=_can_switch_uid() or "user" in spaces,
                own_proc=result.passed and own_proc == "True" and bool(isolation.get("own_proc")),
                read_only_host=result.passed and bool(isolation.get("read_only")),
                user_namespaces_blocked=result.passed and made_userns == "False",
            ))
        return _REPORT[0]


_REPORT: list[IsolationReport] = []
_REPORT_LOCK = threading.Lock()
_WARNED: set[str] = set()


def _need_linux() -> None:
    if not sys.platform.startswith("linux"):
        raise T2Error(f"the code sandbox needs Linux (this is {sys.platform}); run evaluations on a Linux machine")


def _pool(jobs: list[functools.partial], workers: int, progress: bool) -> list[SandboxResult]:
    results: dict[int, SandboxResult] = {}
    with (ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
          tqdm(total=len(jobs), desc="sandbox", disable=not progress) as bar):
        futures = {pool.submit(job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update(1)
    return [results[i] for i in range(len(jobs))]


# ------------------------------------------------------------------------------------------- one sandbox


class _Capture:
    """The first `cap` bytes of a stream, its last `_TAIL` bytes, and its length."""

    def __init__(self, cap: int):
        self.cap, self.head, self.tail, self.total = cap, bytearray(), b"", 0

    def feed(self, chunk: memoryview) -> None:
        room = self.cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
        self.tail = (self.tail + bytes(chunk[-_TAIL:]))[-_TAIL:]
        self.total += len(chunk)

    def text(self) -> str:
        return self.head.decode("utf-8", errors="replace")

    def tail_text(self) -> str:
        data = self.head if self.total <= self.cap else self.tail
        return bytes(data).decode("utf-8", errors="replace")


class _Box:
    """One sandbox: a fresh temp dir (and uid, when the host is root), then one bootstrap process tree."""

    def __init__(self, limits: SandboxLimits):
        self.limits = limits
        self.uid = _lease_uid() if _can_switch_uid() else None
        self.workdir = Path(tempfile.mkdtemp(prefix="t2-sandbox-"))
        self.proc: subprocess.Popen | None = None
        self.status_r: int | None = None
        self.out, self.err = _Capture(limits.max_output_bytes), _Capture(limits.max_output_bytes)
        self.status: dict = {}
        self.terminated_at: float | None = None  # when the host asked it to stop
        self._finished = False

    def write(self, files: Mapping[str, str]) -> None:
        """Put `files` (name -> text) in the workdir, owned by the program's uid."""
        for name, text in files.items():
            (self.workdir / name).write_text(text, encoding="utf-8")
        if self.uid is not None:
            for p in [self.workdir, *(self.workdir / name for name in files)]:
                os.chown(p, self.uid, self.uid)

    def start(self, argv: list[str], stdin: str | None = None, fds: Mapping[int, int] | None = None) -> None:
        """Start the bootstrap, which runs `python <argv>` in the workdir with `fds` at their numbers."""
        cfg = _config(self.workdir, self.uid, self.limits, argv)
        status_r, status_w = os.pipe()
        cfg["status_fd"], cfg["fds"] = status_w, {str(t): s for t, s in (fds or {}).items()}
        try:
            with contextlib.ExitStack() as stack:
                stdin_file: Any = subprocess.DEVNULL
                if stdin is not None:
                    stdin_file = stack.enter_context(tempfile.TemporaryFile())
                    stdin_file.write(stdin.encode("utf-8"))
                    stdin_file.seek(0)
                self.proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-B", str(_HERE / "bootstrap.py"), "--bootstrap", json.dumps(cfg)],
                    stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cfg["workdir"],
                    env=cfg["env"], start_new_session=True, pass_fds=(status_w, *(fds or {}).values()))
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        self.status_r = status_r

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, now: float) -> None:
        """Ask the bootstrap to SIGKILL the program's pid namespace and report back."""
        if self.alive() and self.terminated_at is None:
            self.terminated_at = now
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def kill_group(self) -> None:
        """SIGKILL the bootstrap's process group (init with it; PDEATHSIG carries it on) while it is unreaped."""
        if self.alive():  # not reaped yet, so its pid (= its group id) cannot have been reused
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def finish(self) -> None:
        """Reap the bootstrap (killing it if need be) and read what it reported (once)."""
        if self._finished:
            return
        self._finished = True
        if self.proc is not None:
            if self.proc.poll() is None:
                self.kill_group()
                self.proc.wait()
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        if self.status_r is not None:
            self.status = _merge_status(_read_available(self.status_r))
            os.close(self.status_r)
            self.status_r = None
        _warn_degraded(self.status, self.limits)

    def close(self) -> None:
        """Kill whatever is left of the run's uid, delete the workdir, free the uid."""
        try:
            if self.uid is not None and self.proc is not None:
                _sweep_uid(self.uid)
        finally:
            _rmtree(self.workdir)
            if self.uid is not None:
                _release_uid(self.uid)

    def outcome(self) -> tuple[str, int | None] | None:
        """("exit"|"signal", code) as the program ended, or None when the sandbox itself failed."""
        if self.status.get("error"):
            return None
        if "signal" in self.status:
            return "signal", int(self.status["signal"])
        if "exit" in self.status:
            return "exit", int(self.status["exit"])
        return None

    def setup_error(self) -> str:
        rc = self.proc.returncode if self.proc is not None else None
        return self.status.get("error") or f"the sandbox bootstrap ended with status {rc}"


@contextlib.contextmanager
def _box(limits: SandboxLimits) -> Iterator[_Box]:
    box = _Box(limits)
    try:
        yield box
    finally:
        try:
            box.finish()
        finally:
            box.close()


def _run_program(code: str, limits: SandboxLimits, stdin: str | None) -> tuple[SandboxResult, dict]:
    """One program in one sandbox; returns the result and the bootstrap's merged status lines."""
    start = time.monotonic()
    with _box(limits) as box:
        box.write({"main.py": code})
        try:
            box.start(["-I", "-B", "-X", "utf8", "main.py"], stdin)
        except OSError as e:
            return _error(f"could not start the sandbox: {e}", start), {}
        timed_out = _pump([box], {}, start + limits.timeout)
        box.finish()
        return _classify_program(box, timed_out, start), box.status


# -------------------------------------------------------------------------------------------- a judged check


@functools.cache
def _harness(name: str) -> str:
    return (_HERE / name).read_text(encoding="utf-8")


def _run_check(check: CodeCheck, limits: SandboxLimits) -> SandboxResult:
    start = time.monotonic()
    spec = {"setup": check.judge_setup, "tests": check.tests, "aliases": dict(check.aliases)}
    with _box(limits) as candidate, _box(limits) as judge:
        # The two boxes share nothing but the channel: separate uids, pid namespaces, private /tmp each (the
        # judge's workdir is not even visible to the candidate), so only data written on fd 4 reaches the judge.
        candidate.write({"main.py": check.solution, "serve.py": _harness("serve.py"), "wire.py": _harness("wire.py")})
        judge.write({"spec.json": json.dumps(spec), "judge.py": _harness("judge.py"), "wire.py": _harness("wire.py")})
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        verdict_r, verdict_w = os.pipe()
        # -S, with site-packages put on sys.path by the harness: no .pth processing (an editable install's import
        # hook alone costs ~0.1 s per interpreter start on a busy machine); installed packages still import.
        harness = ["-I", "-S", "-B", "-X", "utf8"]
        try:
            candidate.start([*harness, "serve.py", *_site_packages()], fds={_FD_IN: requests_r, _FD_OUT: replies_w})
            judge.start([*harness, "judge.py", *_site_packages()],
                        fds={_FD_IN: replies_r, _FD_OUT: requests_w, _FD_VERDICT: verdict_w})
        except OSError as e:
            os.close(verdict_r)
            return _error(f"could not start the sandbox: {e}", start)
        finally:
            for fd in (requests_r, requests_w, replies_r, replies_w, verdict_w):
                os.close(fd)
        verdict = _Capture(_VERDICT_BYTES)
        try:
            timed_out = _pump([candidate, judge], {verdict_r: verdict}, start + limits.timeout, done_when=judge)
        finally:
            os.close(verdict_r)
        candidate.finish()
        judge.finish()
        return _classify_check(candidate, judge, verdict, timed_out, start)


# ------------------------------------------------------------------------------------------------- pumping


def _pump(boxes: list[_Box], extra: dict[int, _Capture], deadline: float, done_when: _Box | None = None) -> bool:
    """Drain every box's stdout/stderr (and `extra` fds) until all are gone; stop them all on the deadline, and
    the others once `done_when` has ended (after `_LINGER`). Returns True when the deadline struck."""
    streams = dict(extra)
    for box in boxes:
        assert box.proc is not None and box.proc.stdout is not None and box.proc.stderr is not None
        streams[box.proc.stdout.fileno()] = box.out
        streams[box.proc.stderr.fileno()] = box.err
    buf = bytearray(_CHUNK)
    timed_out, give_up, linger_until = False, float("inf"), float("inf")
    with contextlib.ExitStack() as cleanup, selectors.DefaultSelector() as sel:
        for box in boxes:
            cleanup.callback(box.kill_group)  # also on Ctrl-C: never leave a program running
        for fd in streams:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() or any(box.alive() for box in boxes):
            now = time.monotonic()
            if not timed_out and now >= deadline:
                timed_out, give_up = True, now + 2 * _KILL_GRACE
                for box in boxes:
                    box.terminate(now)
            if done_when is not None and linger_until == float("inf") and not done_when.alive():
                linger_until = now + _LINGER
            if now >= linger_until:
                for box in boxes:
                    box.terminate(now)
            if now >= give_up:
                break
            for box in boxes:
                if box.terminated_at is not None and now >= box.terminated_at + _KILL_GRACE:
                    box.kill_group()
            wake = min(deadline if not timed_out else give_up, linger_until, now + 0.25)
            wait = max(0.0, wake - now)
            if not sel.get_map():
                time.sleep(min(wait, 0.05))
                continue
            for key, _ in sel.select(wait):
                n = os.readv(key.fd, [buf])
                if n:
                    streams[key.fd].feed(memoryview(buf)[:n])
                else:
                    sel.unregister(key.fd)
    return timed_out


def _read_available(fd: int) -> bytes:
    """What the bootstrap and init reported (all written before the bootstrap exited; never block on it)."""
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _merge_status(raw: bytes) -> dict:
    status: dict = {}
    for line in raw.decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            msg = json.loads(line)
            if isinstance(msg, dict):
                first_error = status.get("error")
                status.update(msg)
                status["error"] = first_error or msg.get("error")
    return status


# ------------------------------------------------------------------------------------------ classification


def _classify_program(box: _Box, timed_out: bool, start: float) -> SandboxResult:
    stdout, stderr = box.out.text(), box.err.text()
    seconds = time.monotonic() - start
    if timed_out:
        return SandboxResult(False, "timeout", None, stdout, stderr, seconds)
    outcome = box.outcome()
    if outcome is None:
        return SandboxResult(False, "error", None, stdout, f"{stderr}\n[sandbox] {box.setup_error()}".lstrip("\n"),
                             seconds)
    kind, code = outcome
    if kind == "signal":
        if code == signal.SIGXCPU:  # the RLIMIT_CPU backstop
            return SandboxResult(False, "timeout", None, stdout, stderr, seconds)
        return SandboxResult(False, "killed", -code, stdout, stderr, seconds)
    if code == 0:
        return SandboxResult(True, "passed", 0, stdout, stderr, seconds)
    memory = any(h in box.err.tail_text() for h in _MEMORY_HINTS)
    return SandboxResult(False, "memory" if memory else "failed", code, stdout, stderr, seconds)


def _classify_check(candidate: _Box, judge: _Box, verdict_capture: _Capture, timed_out: bool,
                    start: float) -> SandboxResult:
    """Only the judge's verdict can pass a check; the candidate's fate only names the way it failed."""
    stdout, stderr = candidate.out.text(), candidate.err.text()
    seconds = time.monotonic() - start

    def result(passed: bool, status: str, returncode: int | None, note: str) -> SandboxResult:
        return SandboxResult(passed, status, returncode, stdout, f"{stderr}\n{note}".lstrip("\n"), seconds)

    if timed_out:
        return result(False, "timeout", None, "[judge] the time limit was reached")
    for box, who in ((candidate, "candidate"), (judge, "judge")):
        # A candidate we stopped after the verdict (a thread kept it alive) has no exit status: that is no error.
        if box.status.get("error") or (box.outcome() is None and box.terminated_at is None):
            return result(False, "error", None, f"[sandbox] {who}: {box.setup_error()}")
    verdict = _parse_verdict(verdict_capture)
    judge_kind, judge_code = judge.outcome() or ("exit", None)
    if verdict is None or (judge_kind, judge_code) != ("exit", 0):
        tail = " | ".join(judge.err.tail_text().strip().splitlines()[-3:])
        return result(False, "error", None, f"[judge] ended without a verdict ({judge_kind} {judge_code}): {tail}")
    note = f"[judge] {verdict['detail']}"
    if verdict.get("error"):
        return result(False, "error", None, note)
    if verdict["passed"]:
        return result(True, "passed", 0, note)
    kind, code = candidate.outcome() or ("exit", None)
    if kind == "signal" and candidate.terminated_at is None:  # killed by its own hand, not by ours
        return result(False, "timeout" if code == signal.SIGXCPU else "killed", -code, note)
    returncode = code if kind == "exit" else None
    memory = verdict.get("candidate_error") == "MemoryError" or (
        returncode not in (0, None) and any(h in candidate.err.tail_text() for h in _MEMORY_HINTS))
    return result(False, "memory" if memory else "failed", returncode, note)


def _parse_verdict(capture: _Capture) -> dict | None:
    """The judge's one JSON line, or None (the judge died before writing it)."""
    if capture.total > capture.cap:
        return None
    try:
        verdict = json.loads(capture.text())
    except ValueError:
        return None
    if not isinstance(verdict, dict) or not isinstance(verdict.get("passed"), bool):
        return None
    verdict["detail"] = str(verdict.get("detail", ""))
    return verdict


def _error(message: str, start: float) -> SandboxResult:
    return SandboxResult(False, "error", None, "", f"[sandbox] {message}", time.monotonic() - start)


def _warn_degraded(status: dict, limits: SandboxLimits) -> None:
    """Log once per process what the OS refused."""
    spaces = status.get("namespaces")
    if spaces is None:
        return
    isolation = status.get("isolation", {})
    missing = {
        "pid": ("pid" not in spaces, "no pid namespace: the program can signal your other processes (kill(-1) "
                                     "included); run as root or enable user namespaces"),
        "net": ("net" not in spaces and not limits.network,
                "no network namespace: the program can use the network; run as root or enable user namespaces"),
        "proc": ("pid" in spaces and "mnt" in spaces and isolation and not isolation.get("own_proc"),
                 "could not mount a /proc of the program's own: it can read the host's process table"),
        "read_only": ("mnt" in spaces and isolation and not isolation.get("read_only"),
                      "could not make every mount read-only: the program may leave files in world-writable places"),
        "userns": (isolation and not isolation.get("userns_blocked"),
                   "no seccomp filter (is libseccomp2 installed?): the program can create user namespaces"),
        "identity": (not _can_switch_uid() and "user" not in spaces,
                     "the program keeps your identity (no fresh uid, no user namespace): it can reach files and "
                     "processes of yours, a judged check's judge included"),
    }
    for name, (degraded, warning) in missing.items():
        if degraded and name not in _WARNED:
            _WARNED.add(name)
            log.warning("sandbox: %s", warning)


# --------------------------------------------------------------------------------- configuration and uids


def _config(workdir: Path, uid: int | None, limits: SandboxLimits, argv: list[str]) -> dict:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    keep = [*_interpreter_paths(), str(workdir)]
    overlays = {d: [p for p in keep if _under(p, d)] for d in PRIVATE_TMP if os.path.isdir(d)}
    if uid is not None:
        for blocker, paths in _blocked_paths(keep).items():
            overlays[blocker] = overlays.get(blocker, []) + paths
    overlays = {target: _outermost(paths) for target, paths in overlays.items()}
    return {
        "host_pid": os.getpid(),
        "uid": uid,
        "workdir": str(workdir),
        "python": sys.executable,
        "argv": [sys.executable, *argv],
        "env": env,
        "limits": {
            "timeout": limits.timeout,
            "memory_mb": limits.memory_mb,
            "max_processes": limits.max_processes,
            "max_file_bytes": limits.max_file_bytes,
        },
        "network": limits.network,
        "overlays": overlays,
        "tmpfs_bytes": max(4 * limits.max_file_bytes, 1 << 20),
    }


@functools.cache
def _can_switch_uid() -> bool:
    """Root whose user namespace maps the whole fresh-uid range (not so for root in a rootless container)."""
    if os.geteuid() != 0:
        return False
    lo, hi = _UID_RANGE
    for name in ("uid_map", "gid_map"):
        try:
            rows = [tuple(map(int, line.split())) for line in Path(f"/proc/self/{name}").read_text().splitlines()]
        except (OSError, ValueError):
            return False
        if not any(inside <= lo and hi <= inside + count for inside, _, count in rows):
            return False
    return True


_UIDS: set[int] = set()
_UIDS_LOCK = threading.Lock()


def _lease_uid() -> int:
    rng = random.SystemRandom()
    with _UIDS_LOCK:
        busy = {uid for _, uid, _ in proc_table()} | _UIDS
        uid = rng.randrange(*_UID_RANGE)
        while uid in busy:
            uid = rng.randrange(*_UID_RANGE)
        _UIDS.add(uid)
        return uid


def _release_uid(uid: int) -> None:
    with _UIDS_LOCK:
        _UIDS.discard(uid)


def _sweep_uid(uid: int) -> None:
    """Last resort: SIGKILL every process of the run's uid (normally the pid namespace already did)."""
    for _ in range(20):
        if not any(u == uid for _, u, _ in proc_table()):
            return
        subprocess.run([sys.executable, "-I", "-S", "-B", str(_HERE / "bootstrap.py"), "--kill-uid", str(uid)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={},
                       check=False)
    log.warning("sandbox: processes of uid %d survived the sweep", uid)


@functools.cache
def _site_packages() -> tuple[str, ...]:
    return tuple(p for p in site.getsitepackages() if os.path.isdir(p))


@functools.cache
def _interpreter_paths() -> tuple[str, ...]:
    """Paths the dropped uid needs: the interpreter, its stdlib and site-packages."""
    paths = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, sysconfig.get_paths()["stdlib"]}
    paths.update(site.getsitepackages())
    exe = sys.executable
    for _ in range(40):  # every hop of the symlink chain venv/bin/python -> ... -> the real binary
        paths.add(os.path.dirname(os.path.abspath(exe)))
        if not os.path.islink(exe):
            break
        exe = os.path.join(os.path.dirname(exe), os.readlink(exe))
    return tuple(sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)}))


def _blocked_paths(paths: list[str]) -> dict[str, list[str]]:
    """{top directory a fresh uid cannot enter: [needed paths under it]} (e.g. {"/root": [".../pyenv/..."]})."""
    blocked: dict[str, list[str]] = {}
    for path in paths:
        parts = Path(path).parts
        for i in range(2, len(parts) + 1):
            ancestor = os.path.join(*parts[:i])
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                if ancestor != path:
                    blocked.setdefault(ancestor, []).append(path)
                break
    return blocked


def _outermost(paths: list[str]) -> list[str]:
    """Drop paths inside another one of `paths` (binding the outer one brings them along)."""
    return [p for p in sorted(set(paths)) if not any(q != p and _under(p, q) for q in paths)]


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _rmtree(path: Path) -> None:
    def unlock(func: Any, p: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=unlock)
    else:
        shutil.rmtree(path, onerror=unlock)
