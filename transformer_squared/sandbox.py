"""Run untrusted Python (LLM-generated solutions to MBPP, HumanEval, custom tasks) in a limited child process.

Threat model: code that is careless, or hostile by accident: an infinite loop, a fork bomb, a 20 GB list,
`shutil.rmtree("/")`, a print loop, `os.kill(os.getppid(), 9)`, `os._exit(0)` before the asserts. Each such
program must end as a failed sample within its limits, and the host must carry on. Linux only.

One run (`run_python`):

    host ── Popen(start_new_session) ──> bootstrap   this file as a script (`python -I -S`), host's identity;
                                            │         unshare(pid, ipc, mnt, net [, user]); child subreaper
                                            └─ fork ─> init     pid 1 of the new pid namespace: reaps; when it
                                                        │        dies the kernel kills everything inside
                                                        └─ fork ─> program   setsid, private /tmp, rlimits,
                                                                   fresh uid, no_new_privs, PDEATHSIG, then
                                                                   execve(sys.executable -I -B -X utf8 main.py)

The privileged steps run in the bootstrap, a fresh single-threaded process, so there is no `preexec_fn` (unsafe
with the threads of `run_many`). Setup failures and the exit status come back on a private status pipe, which the
program cannot write to; a failed setup is status "error", not a failed sample.

What each limit defends against:

* `timeout` (wall clock, interpreter start included): the host drains the pipes against a deadline, then tells
  the bootstrap (SIGTERM) to SIGKILL init, which takes the whole pid namespace down: children, daemons,
  anything that setsid()'d away. If the bootstrap does not answer in 2 s its process group is SIGKILLed and
  PDEATHSIG carries the kill down. RLIMIT_CPU (timeout + 1 s of CPU) is a backstop.
* `memory_mb`: RLIMIT_AS per process, so a huge allocation raises MemoryError (status "memory").
* `max_processes`: RLIMIT_NPROC. The kernel does not apply it to root and counts *all* processes of a uid, so
  a root host runs the program as a fresh random uid in [1.9e9, 2.14e9) (above systemd's container range)
  that nothing else uses: the count is exact, it can write only its temp dir and world-writable places, and
  `kill(-1)` as that uid is a safe last-resort sweep. A non-root host enters a new
  user namespace, where the kernel (>= 5.14) counts per namespace, so it is exact as well. Threads count too:
  the environment pins OMP/OpenBLAS/MKL to one thread.
* `max_output_bytes`: stdout and stderr are drained all the time in 1 MiB reads (the program never blocks on
  a full pipe); the first `max_output_bytes` of each are kept, the rest is discarded (the last 4 KiB are also
  kept, to find the success marker and a MemoryError).
* `max_file_bytes`: RLIMIT_FSIZE. The working directory is a fresh temp dir (HOME and TMPDIR too), deleted
  afterwards; /tmp, /var/tmp and /dev/shm are private tmpfs mounts of 4 x max_file_bytes that vanish with the
  run. If the interpreter lives where the fresh uid cannot go (pyenv under a 0700 /root), a tmpfs covers that
  directory and only the interpreter's own tree is bind-mounted back, at the same path.
* `network=False`: a new network namespace with only a loopback that is down: connect() fails.
* environment: PATH=/usr/local/bin:/usr/bin:/bin, HOME, TMPDIR, LANG, PYTHONDONTWRITEBYTECODE, thread pins;
  `python -I` (no PYTHON* variables, no user site, no script dir on sys.path) and `-B`.
* the host: the program has its own session and pid namespace, so `kill(0)`, `killpg(0)`, `kill(-1)` and
  `kill(getppid())` reach only the program's own processes (its parent is init, pid 1, which ignores them).

Degradation (see `isolation_report()`): every namespace is tried on its own, and whatever the OS refuses is
skipped. Root inside a rootless container (the fresh uid range is not mapped there) keeps its identity: it
still gets the namespaces, but the process limit is approximate (below) and the program can write whatever
that root can. A normal user without user namespaces gets no namespaces at all. Then the process limit is
"your current task count + max_processes" (approximate), the network stays reachable, /tmp is shared, and
`kill(-1)` or `kill(<your pid>)` from the program reaches *your* processes, the host included; a warning is
logged once.
Daemons still die with the run: the bootstrap is a child subreaper and kills every orphan before it exits.

What this does NOT defend against: it is not a security boundary like a VM, gVisor or a hardened container.
Kernel exploits, side channels, reading world-readable files (source trees, /etc, /proc), writing
world-writable files outside /tmp, CPU starvation of the host (no cgroup quota), or total memory: RLIMIT_AS is
per process, so a program may hold up to max_processes x memory_mb. Without root the program can write
anything you can write. For hostile workloads add a disposable VM or container.

Cost: two interpreter starts, about 0.25 s per run on a loaded 2-core box; `run_many` overlaps them.

Contract for callers: a program that calls `os._exit(0)` before its asserts exits with status 0. Pass
`success_marker` and print it as the very last line, after the tests: `passed` then also requires it (and
`os._exit` drops buffered output, so a marker printed earlier does not help it either).
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
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["IsolationReport", "SandboxLimits", "SandboxResult", "isolation_report", "run_many", "run_python"]

log = logging.getLogger(__name__)

_UID_RANGE = (1_900_000_000, 2_140_000_000)
_PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
_TAIL = 4096
_CHUNK = 1 << 20
_KILL_GRACE = 2.0  # seconds the bootstrap gets to tear the namespace down after a timeout
_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory")


@dataclass(frozen=True)
class SandboxLimits:
    timeout: float = 10.0  # wall-clock seconds
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
            from .errors import T2Error

            raise T2Error(f"SandboxLimits: invalid {', '.join(bad)} ({self}); use positive values, memory_mb >= 32")


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # exited 0, no timeout, no limit hit (and printed success_marker last, when one was asked for)
    status: str  # "passed" | "failed" (non-zero exit or missing marker) | "timeout" | "memory" | "killed" | "error"
    returncode: int | None  # exit code, or -signal; None for "timeout" and "error"
    stdout: str
    stderr: str
    seconds: float


@dataclass(frozen=True)
class IsolationReport:
    """What the sandbox gets on this machine (probed once by running a trivial program)."""

    namespaces: tuple[str, ...]  # of "user", "pid", "net", "ipc", "mnt"
    dropped_privileges: bool  # True when the host is root and the program ran as a fresh uid
    network_isolated: bool
    exact_process_limit: bool


# ----------------------------------------------------------------------------------------------- host side


def run_python(
    code: str,
    *,
    limits: SandboxLimits | None = None,
    stdin: str | None = None,
    success_marker: str | None = None,
) -> SandboxResult:
    """Run `code` as a Python program in the sandbox and return how it ended; never raises for the program's sake.

    `success_marker`: when given, `passed` also requires it as the last non-empty line of stdout.
    """
    if not sys.platform.startswith("linux"):
        from .errors import T2Error

        raise T2Error(f"the code sandbox needs Linux (this is {sys.platform}); run evaluations on a Linux machine")
    return _run(code, limits or SandboxLimits(), stdin, success_marker)[0]


def run_many(
    programs: Sequence[str],
    *,
    limits: SandboxLimits | None = None,
    workers: int = 2,
    progress: bool = False,
    success_marker: str | None = None,
) -> list[SandboxResult]:
    """Run `programs` with a thread pool of `workers` sandboxes at a time; results are in input order."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm.auto import tqdm

    limits = limits or SandboxLimits()
    results: dict[int, SandboxResult] = {}
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(programs), desc="sandbox", disable=not progress) as bar,
    ):
        futures = {
            pool.submit(run_python, p, limits=limits, success_marker=success_marker): i for i, p in enumerate(programs)
        }
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update(1)
    return [results[i] for i in range(len(programs))]


def isolation_report() -> IsolationReport:
    """Probe (once per process) which isolation mechanisms work here."""
    with _REPORT_LOCK:
        if not _REPORT:
            _, status = _run("pass", SandboxLimits(timeout=30), None, None)
            spaces = tuple(status.get("namespaces", ()))
            _REPORT.append(
                IsolationReport(
                    namespaces=spaces,
                    dropped_privileges=_can_switch_uid() and not status.get("error"),
                    network_isolated="net" in spaces,
                    exact_process_limit=_can_switch_uid() or "user" in spaces,
                )
            )
        return _REPORT[0]


_REPORT: list[IsolationReport] = []
_REPORT_LOCK = threading.Lock()
_WARNED: set[str] = set()


def _run(code: str, limits: SandboxLimits, stdin: str | None, marker: str | None) -> tuple[SandboxResult, dict]:
    """One sandboxed run; returns the result and the bootstrap's merged status lines."""
    start = time.monotonic()
    uid = _lease_uid() if _can_switch_uid() else None
    workdir = Path(tempfile.mkdtemp(prefix="t2-sandbox-"))
    try:
        (workdir / "main.py").write_text(code, encoding="utf-8")
        if uid is not None:
            for p in (workdir, workdir / "main.py"):
                os.chown(p, uid, uid)
        cfg = _config(workdir, uid, limits)
        try:
            proc, status_r = _spawn(cfg, stdin)
        except OSError as e:
            return _error(f"could not start the sandbox: {e}", start), {}
        with proc:
            try:
                out, err, timed_out = _pump(proc, limits, start + limits.timeout)
                status = _merge_status(_read_available(status_r))
            finally:
                os.close(status_r)
        if uid is not None:
            _sweep_uid(uid)
        _warn_degraded(status, limits)
        return _classify(out, err, timed_out, proc.returncode, status, marker, start), status
    finally:
        _rmtree(workdir)
        if uid is not None:
            _release_uid(uid)


def _config(workdir: Path, uid: int | None, limits: SandboxLimits) -> dict:
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
    overlays = {d: [p for p in keep if _under(p, d)] for d in _PRIVATE_TMP if os.path.isdir(d)}
    if uid is not None:
        for blocker, paths in _blocked_paths(keep).items():
            overlays[blocker] = overlays.get(blocker, []) + paths
    overlays = {target: _outermost(paths) for target, paths in overlays.items()}
    return {
        "host_pid": os.getpid(),
        "uid": uid,
        "workdir": str(workdir),
        "python": sys.executable,
        "argv": [sys.executable, "-I", "-B", "-X", "utf8", str(workdir / "main.py")],
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


def _spawn(cfg: dict, stdin: str | None) -> tuple[subprocess.Popen, int]:
    status_r, status_w = os.pipe()
    cfg["status_fd"] = status_w
    try:
        with contextlib.ExitStack() as stack:
            stdin_file: Any = subprocess.DEVNULL
            if stdin is not None:
                stdin_file = stack.enter_context(tempfile.TemporaryFile())
                stdin_file.write(stdin.encode("utf-8"))
                stdin_file.seek(0)
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), "--bootstrap", json.dumps(cfg)],
                stdin=stdin_file,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cfg["workdir"],
                env=cfg["env"],
                start_new_session=True,
                pass_fds=(status_w,),
            )
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    return proc, status_r


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


def _pump(proc: subprocess.Popen, limits: SandboxLimits, deadline: float) -> tuple[_Capture, _Capture, bool]:
    """Drain stdout/stderr until the process is gone; on the deadline, kill. Returns (out, err, timed_out)."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Capture(limits.max_output_bytes), _Capture(limits.max_output_bytes)
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    buf = bytearray(_CHUNK)
    timed_out, give_up = False, float("inf")
    with contextlib.ExitStack() as cleanup, selectors.DefaultSelector() as sel:
        cleanup.callback(_reap_bootstrap, proc)  # also on Ctrl-C: never leave the program running
        for fd in streams:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() or proc.poll() is None:
            now = time.monotonic()
            if not timed_out and now >= deadline:
                timed_out, give_up = True, now + 2 * _KILL_GRACE
                _terminate(proc)
            if now >= give_up:
                break
            if timed_out and now >= give_up - _KILL_GRACE:
                _kill_group(proc)
            wait = max(0.0, min(deadline if not timed_out else give_up, now + 0.25) - now)
            if not sel.get_map():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(wait)
                continue
            for key, _ in sel.select(wait):
                n = os.readv(key.fd, [buf])
                if n:
                    streams[key.fd].feed(memoryview(buf)[:n])
                else:
                    sel.unregister(key.fd)
    return out, err, timed_out


def _reap_bootstrap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        _kill_group(proc)
        proc.wait()


def _terminate(proc: subprocess.Popen) -> None:
    """Ask the bootstrap to SIGKILL the program's pid namespace and report back."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the bootstrap's process group (init with it; PDEATHSIG carries it on) while it is unreaped."""
    if proc.poll() is None:  # not reaped yet, so its pid (= its group id) cannot have been reused
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


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


def _classify(
    out: _Capture, err: _Capture, timed_out: bool, rc: int | None, status: dict, marker: str | None, start: float
) -> SandboxResult:
    stdout, stderr = out.text(), err.text()
    seconds = time.monotonic() - start
    if timed_out:
        return SandboxResult(False, "timeout", None, stdout, stderr, seconds)
    if status.get("error") or ("exit" not in status and "signal" not in status):
        why = status.get("error") or f"the sandbox bootstrap ended with status {rc}"
        return SandboxResult(False, "error", None, stdout, f"{stderr}\n[sandbox] {why}".lstrip("\n"), seconds)
    if "signal" in status:
        sig = int(status["signal"])
        if sig == signal.SIGXCPU:  # the RLIMIT_CPU backstop
            return SandboxResult(False, "timeout", None, stdout, stderr, seconds)
        return SandboxResult(False, "killed", -sig, stdout, stderr, seconds)
    code = int(status["exit"])
    if code == 0 and (marker is None or _last_line(out.tail_text()) == marker.strip()):
        return SandboxResult(True, "passed", 0, stdout, stderr, seconds)
    memory = code != 0 and any(h in err.tail_text() for h in _MEMORY_HINTS)
    return SandboxResult(False, "memory" if memory else "failed", code, stdout, stderr, seconds)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _error(message: str, start: float) -> SandboxResult:
    return SandboxResult(False, "error", None, "", f"[sandbox] {message}", time.monotonic() - start)


def _warn_degraded(status: dict, limits: SandboxLimits) -> None:
    """Log once per process what the OS refused (both only happen without root and without user namespaces)."""
    spaces = status.get("namespaces")
    if spaces is None:
        return
    missing = {
        "pid": "no pid namespace: the program can signal your other processes (kill(-1) included)",
        "net": "no network namespace: the program can use the network",
    }
    for name, warning in missing.items():
        if name not in spaces and name not in _WARNED and not (name == "net" and limits.network):
            _WARNED.add(name)
            log.warning("sandbox: %s; run as root or enable user namespaces", warning)


# uids: one fresh uid per run while the host is root


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
        busy = {uid for _, uid, _ in _proc_table()} | _UIDS
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
        if not any(u == uid for _, u, _ in _proc_table()):
            return
        subprocess.run(
            [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), "--kill-uid", str(uid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={},
            check=False,
        )
    log.warning("sandbox: processes of uid %d survived the sweep", uid)


# paths the dropped uid needs: the interpreter, its stdlib and site-packages


@functools.cache
def _interpreter_paths() -> tuple[str, ...]:
    import site
    import sysconfig

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


def _proc_table() -> list[tuple[int, int, int]]:
    """(pid, real uid, threads) of every process, from /proc/*/status."""
    rows = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
            rows.append((int(name), int(fields[b"Uid"].split()[0]), int(fields[b"Threads"])))
        except (OSError, KeyError, ValueError):
            continue
    return rows


# ------------------------------------------------------------------------------------ inside the sandbox
# From here on: code that runs in the bootstrap process (`python -I -S sandbox.py --bootstrap CONFIG`).
# It is single-threaded and imports only the standard library.

_CLONE = {"user": 0x10000000, "pid": 0x20000000, "net": 0x40000000, "ipc": 0x08000000, "mnt": 0x00020000}
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _report(fd: int, msg: dict) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(msg) + "\n").encode())  # < PIPE_BUF, so lines never interleave


def _bootstrap(cfg: dict) -> NoReturn:
    """The process the host started: enter namespaces, fork init (or the program), wait, report, clean up."""
    libc, fd = _libc(), cfg["status_fd"]
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    if os.getppid() != cfg["host_pid"]:
        os._exit(1)
    try:
        spaces = _unshare(libc, cfg)
    except OSError as e:
        _report(fd, {"error": f"sandbox setup failed: entering namespaces: {e}"})
        os._exit(1)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # after uid_map is written: no ptrace, /proc/<pid>/fd is root's
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come back to us when there is no pid namespace
    me = os.getpid()
    child = os.fork()
    if child == 0:
        _init(libc, cfg, spaces) if "pid" in spaces else _program(libc, cfg, spaces, parent=me)
    signal.signal(signal.SIGTERM, lambda *_: _kill_quietly(child))  # the host's "time is up"
    _report(fd, {"namespaces": spaces})
    _, wstatus = os.waitpid(child, 0)
    _reap_all()
    if "pid" not in spaces:
        _report(fd, _exit_info(wstatus))
    os._exit(0)


def _unshare(libc: Any, cfg: dict) -> list[str]:
    """Enter each namespace the OS allows and return their names. Without root a user namespace comes first
    (it grants the rights for the others); root inside a rootless container may manage without one."""
    got = []
    uid, gid = os.getuid(), os.getgid()  # before unshare: inside, unmapped ids read as 65534
    # Root without the fresh uid range (a rootless container) keeps its capabilities here and needs no user
    # namespace; mapping its uid 0 into one would need CAP_SETFCAP in the parent namespace anyway.
    if cfg["uid"] is None and os.geteuid() != 0 and libc.unshare(_CLONE["user"]) == 0:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        for name, ident in (("uid_map", uid), ("gid_map", gid)):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(f"{ident} {ident} 1")
        got.append("user")
    for name in ["pid", "ipc", "mnt"] + ([] if cfg["network"] else ["net"]):
        if libc.unshare(_CLONE[name]) == 0:
            got.append(name)
    return got


def _init(libc: Any, cfg: dict, spaces: list[str]) -> NoReturn:
    """Pid 1 of the new namespace: fork the program, reap everything, report its status; our exit kills the rest."""
    try:
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        program = os.fork()
        if program == 0:
            _program(libc, cfg, spaces, parent=1)
        while True:
            pid, wstatus = os.waitpid(-1, 0)
            if pid == program:
                break
        _report(cfg["status_fd"], _exit_info(wstatus))
    finally:
        os._exit(0)


def _program(libc: Any, cfg: dict, spaces: list[str], parent: int) -> NoReturn:
    """Set up the program's process, drop privileges and exec the interpreter; report any failure."""
    fd = cfg["status_fd"]
    try:
        os.setsid()
        if "mnt" in spaces:
            _mount_overlays(libc, cfg)
        os.chdir(cfg["workdir"])
        _set_rlimits(cfg, exact_nproc=cfg["uid"] is not None or "user" in spaces)
        if cfg["uid"] is not None:
            uid = cfg["uid"]
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")  # reset by setuid
        if os.getppid() != parent:
            os._exit(1)
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        os.set_inheritable(fd, False)
        os.execve(cfg["python"], cfg["argv"], cfg["env"])
    except BaseException as e:  # any failure here is the sandbox's, reported as "error"
        hint = ""
        if isinstance(e, PermissionError) and cfg["uid"] is not None:
            hint = " (the unprivileged uid cannot reach the interpreter; install Python in a world-readable place)"
        _report(fd, {"error": f"sandbox setup failed: {type(e).__name__}: {e}{hint}"})
    os._exit(125)


def _mount_overlays(libc: Any, cfg: dict) -> None:
    """Private tmpfs over /tmp, /var/tmp, /dev/shm and over dirs the dropped uid cannot enter, with the
    paths the program needs (its workdir, the interpreter) bind-mounted back in at the same place."""
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount(/, private)")  # never leak to host
    keep = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for paths in cfg["overlays"].values() for p in paths}
    try:
        for target in sorted(cfg["overlays"], key=len):
            private_tmp = target in _PRIVATE_TMP
            opts = f"mode={'1777' if private_tmp else '755'},size={cfg['tmpfs_bytes'] if private_tmp else 1 << 16}"
            os.makedirs(target, exist_ok=True)
            _check(
                libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts.encode()), f"mount {target}"
            )
            for path in cfg["overlays"][target]:
                os.makedirs(path, mode=0o755, exist_ok=True)
                src = f"/proc/self/fd/{keep[path]}".encode()
                _check(libc.mount(src, path.encode(), None, MS_BIND | MS_REC, None), f"bind {path}")
    finally:
        for fd in keep.values():
            os.close(fd)


def _set_rlimits(cfg: dict, exact_nproc: bool) -> None:
    import math
    import resource

    lim = cfg["limits"]
    nproc = lim["max_processes"]
    if not exact_nproc:  # RLIMIT_NPROC counts all our tasks: allow the ones that already exist
        me = os.getuid()
        nproc += sum(threads for _, uid, threads in _proc_table() if uid == me)
    wanted = {
        resource.RLIMIT_AS: lim["memory_mb"] << 20,
        resource.RLIMIT_NPROC: nproc,
        resource.RLIMIT_FSIZE: lim["max_file_bytes"],
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_CPU: math.ceil(lim["timeout"]) + 1,  # backstop should the host's clock kill fail
    }
    for which, value in wanted.items():
        _, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))


def _exit_info(wstatus: int) -> dict:
    if os.WIFSIGNALED(wstatus):
        return {"signal": os.WTERMSIG(wstatus)}
    return {"exit": os.waitstatus_to_exitcode(wstatus)}


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def _reap_all() -> None:
    """SIGKILL and reap every remaining child (orphans re-parent to us: we are a child subreaper)."""
    me = os.getpid()
    while True:
        for pid in _children_of(me):
            _kill_quietly(pid)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _children_of(parent: int) -> list[int]:
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{name}/stat", "rb") as f:
                if int(f.read().rsplit(b")", 1)[1].split()[1]) == parent:  # "pid (comm) state ppid ..."
                    kids.append(int(name))
    return kids


def _kill_uid(uid: int) -> NoReturn:
    """`--kill-uid`: become `uid` and kill(-1): every process of that uid, atomically w.r.t. fork."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    with contextlib.suppress(OSError):
        os.kill(-1, signal.SIGKILL)
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bootstrap"]:
        _bootstrap(json.loads(sys.argv[2]))
    elif sys.argv[1:2] == ["--kill-uid"]:
        _kill_uid(int(sys.argv[2]))
    sys.exit("usage: sandbox.py --bootstrap CONFIG_JSON | --kill-uid UID (internal; use run_python)")
