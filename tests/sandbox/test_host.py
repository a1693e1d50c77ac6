"""Every hostile program ends as a failed sample within its limit, the host carries on, and the program sees and
changes nothing of the host: not its process table, not its files, not a user namespace of its own.

Timing asserts are generous (the CI box is shared and loaded): they check "bounded", not "fast".
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from transformer_squared.errors import T2Error
from transformer_squared.sandbox import (
    CodeCheck,
    SandboxLimits,
    isolation_report,
    run_check,
    run_checks,
    run_many,
    run_python,
)

# Every test but one runs sandboxed programs (processes): `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow

SLACK = 6.0  # seconds on top of a timeout: bootstrap start, the kill, a loaded machine
QUICK = SandboxLimits(timeout=2.0)


def _processes_with(token: str) -> list[int]:
    """Pids whose command line mentions `token` (how a test recognises its own program's processes)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if token.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    pids.append(int(name))
            except OSError:
                continue
    return pids


def _tagged(body: str, token: str) -> str:
    """A program that re-executes itself as `python -c body token`, so each of its processes carries `token`."""
    return f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {body!r}, {token!r}])\n"


def test_correct_program_passes_and_reads_stdin():
    r = run_python("import sys\nx = sys.stdin.read()\nassert x == 'héllo'\nprint(x.upper())", stdin="héllo")
    assert (r.passed, r.status, r.returncode) == (True, "passed", 0), r.stderr
    assert r.stdout == "HÉLLO\n" and r.seconds > 0


def test_failing_assert_fails():
    r = run_python("def add(a, b):\n    return a - b\nassert add(2, 2) == 4\n")
    assert (r.passed, r.status, r.returncode) == (False, "failed", 1)
    assert "AssertionError" in r.stderr


def test_infinite_loop_times_out_within_the_limit():
    start = time.monotonic()
    r = run_python("while True:\n    pass\n", limits=SandboxLimits(timeout=1.5))
    elapsed = time.monotonic() - start
    assert (r.passed, r.status, r.returncode) == (False, "timeout", None)
    assert 1.5 <= elapsed < 1.5 + SLACK


def test_fork_bomb_fails_and_leaves_no_process_behind():
    token = f"t2-forkbomb-{uuid.uuid4().hex}"
    start = time.monotonic()
    r = run_python(_tagged("import os\nwhile True:\n    os.fork()\n", token), limits=QUICK)
    assert not r.passed and r.status in {"failed", "timeout", "killed"}
    assert time.monotonic() - start < QUICK.timeout + SLACK
    assert _processes_with(token) == []


def test_escaped_daemon_is_killed_when_the_program_ends():
    token = f"t2-daemon-{uuid.uuid4().hex}"
    daemon = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(300)\n"
    r = run_python(_tagged(daemon, token), limits=QUICK)
    assert r.passed, r.stderr
    assert _processes_with(token) == []


def test_huge_allocation_fails_with_memory():
    r = run_python("x = bytearray(20 * 1024**3)\nprint('allocated')\n", limits=SandboxLimits(memory_mb=256))
    assert (r.passed, r.status) == (False, "memory")
    assert "allocated" not in r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="as a normal user the program may write whatever that user may write")
def test_cannot_create_or_delete_files_outside_its_directory(tmp_path):
    tmp_path.chmod(0o755)  # readable by everyone; the sandbox's private /tmp and its uid keep it out
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    before = sorted(p.name for p in tmp_path.iterdir())
    program = f"""
import os, shutil
from pathlib import Path
d = Path({str(tmp_path)!r})
for attempt in (lambda: (d / "created.txt").write_text("x"), lambda: (d / "victim.txt").unlink(),
                lambda: (d / "victim.txt").write_text("overwritten"), lambda: shutil.rmtree(d)):
    try:
        attempt()
    except OSError:
        pass
Path("mine.txt").write_text("inside my own directory is fine")
assert Path("mine.txt").read_text().startswith("inside")
print(os.getcwd())
"""
    r = run_python(program, limits=QUICK)
    assert r.passed, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert victim.read_text() == "keep me"
    assert not Path(r.stdout.strip()).exists(), "the working directory is deleted afterwards"


@pytest.mark.skipif(os.geteuid() != 0, reason="privileges are dropped only when the host is root")
def test_cannot_write_root_owned_places_it_can_see():
    probe = Path(f"/t2-sandbox-probe-{uuid.uuid4().hex}")
    mtime = os.stat("/etc/passwd").st_mtime_ns
    program = f"import os\nopen({str(probe)!r}, 'w').close()\n"
    try:
        refused = ("PermissionError", "Read-only file system")  # the fresh uid, and the read-only mounts
        r = run_python(program, limits=QUICK)
        assert r.status == "failed" and any(why in r.stderr for why in refused)
        r = run_python("import os\nos.utime('/etc/passwd')\n", limits=QUICK)  # harmless even if it worked
        assert r.status == "failed" and any(why in r.stderr for why in refused)
        assert not probe.exists() and os.stat("/etc/passwd").st_mtime_ns == mtime
    finally:
        probe.unlink(missing_ok=True)


def test_no_connection_arrives_from_the_sandbox():
    if not isolation_report().network_isolated:
        pytest.skip("no network namespace on this machine (unprivileged, no user namespaces)")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n"
        r = run_python(program, limits=QUICK)
        assert not r.passed and r.status == "failed"
        with pytest.raises(socket.timeout):
            server.accept()


def test_os_exit_before_the_tests_is_not_a_pass():
    tests = "assert add(1, 1) == 3\n"  # no function can pass this: only a forged verdict could
    cheats = ["import os\nos._exit(0)\n", "import sys\nsys.exit(0)\n",
              "def add(a, b):\n    import os\n    os._exit(0)\n", "print('__T2_TESTS_PASSED__')\n"]
    results = run_checks([CodeCheck(solution=c, tests=tests) for c in cheats], limits=QUICK)
    assert [(r.passed, r.status) for r in results] == [(False, "failed")] * len(cheats)
    honest = run_check(CodeCheck(solution="def add(a, b):\n    return a + b\n", tests="assert add(1, 1) == 2\n"))
    assert honest.passed, honest.stderr


@pytest.mark.parametrize(
    "attack",
    [
        "os.kill(os.getppid(), signal.SIGKILL)",
        "os.killpg(0, signal.SIGKILL)",
        "os.kill(0, signal.SIGKILL)",
        "os.kill(-1, signal.SIGKILL)",
    ],
)
def test_signalling_its_parent_cannot_hurt_the_host(attack):
    if attack.startswith("os.kill(-1") and os.geteuid() != 0 and "pid" not in isolation_report().namespaces:
        pytest.skip("kill(-1) reaches all of your processes without a pid namespace or root")
    # A bystander in the host's process group, of the host's user: what a signal that escaped would hit first.
    bystander = subprocess.Popen(["sleep", "60"])
    handler = signal.getsignal(signal.SIGTERM)
    try:
        r = run_python(f"import os, signal\n{attack}\nimport time\ntime.sleep(0.2)\nraise SystemExit(3)\n",
                       limits=QUICK)
        assert not r.passed and r.status in {"failed", "killed"}
        assert bystander.poll() is None, f"the host's process was killed ({bystander.returncode})"
        assert signal.getsignal(signal.SIGTERM) == handler
    finally:
        bystander.kill()
        bystander.wait()


def test_gigabytes_of_output_are_capped_and_do_not_hang():
    limits = SandboxLimits(timeout=2.0, max_output_bytes=10_000)
    flood = (
        "import sys\nchunk = 'x' * (1 << 20)\nwhile True:\n    sys.stdout.write(chunk)\n    sys.stderr.write(chunk)\n"
    )
    start = time.monotonic()
    r = run_python(flood, limits=limits)
    assert time.monotonic() - start < limits.timeout + SLACK
    assert r.status == "timeout" and len(r.stdout) == len(r.stderr) == 10_000
    finite = (
        "import sys\nchunk = 'y' * (1 << 20)\nfor _ in range(256):\n    sys.stdout.write(chunk)\n"
        "print()\nprint('DONE')\n"
    )
    r = run_python(finite, limits=SandboxLimits(timeout=30, max_output_bytes=10_000))
    assert r.passed, r.stderr  # a program that writes past the cap is not held up by it
    assert r.stdout == "y" * 10_000


def test_environment_is_minimal(monkeypatch):
    monkeypatch.setenv("T2_TEST_SECRET", "hunter2")
    r = run_python("import os, json\nprint(json.dumps(dict(os.environ)))\nprint(os.getcwd())\n")
    assert r.passed, r.stderr
    env_line, cwd = r.stdout.splitlines()
    assert "hunter2" not in r.stdout and "T2_TEST_SECRET" not in env_line
    import json

    env = json.loads(env_line)
    assert env["HOME"] == cwd and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"


def test_run_many_returns_results_in_input_order():
    programs = [
        "print(0)",
        "raise SystemExit(5)",
        "print(2)",
        "while True: pass",
        "print(4)",
        "x = bytearray(20 * 1024**3)",
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        "print(7)",
    ]
    results = run_many(programs, limits=SandboxLimits(timeout=2.0, memory_mb=256), workers=2)
    statuses = [r.status for r in results]
    assert statuses == ["passed", "failed", "passed", "timeout", "passed", "memory", "killed", "passed"]
    assert [r.stdout.strip() for r in results if r.status == "passed" and r.stdout.strip()] == ["0", "2", "4", "7"]
    assert results[1].returncode == 5


@pytest.mark.skipif(os.geteuid() != 0, reason="privileges are dropped only when the host is root")
def test_root_host_runs_the_program_as_an_unprivileged_fresh_uid():
    r = run_python("import os\nprint(os.getuid(), os.getgid(), os.getgroups())\n")
    uid, gid, groups = r.stdout.split(maxsplit=2)
    assert int(uid) >= 1_000_000 and int(gid) == int(uid) and groups.strip() == "[]"
    assert isolation_report().dropped_privileges


def test_program_killed_by_a_signal_is_killed():
    r = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", limits=QUICK)
    assert (r.passed, r.status, r.returncode) == (False, "killed", -signal.SIGKILL)


def test_invalid_limits_are_a_user_error():
    with pytest.raises(T2Error, match="timeout"):
        SandboxLimits(timeout=0)


def _isolated(feature: str) -> None:
    if not getattr(isolation_report(), feature):
        pytest.skip(f"this machine does not give the sandbox {feature} (see isolation_report())")


def test_the_host_process_table_is_out_of_sight():
    _isolated("own_proc")
    token = f"t2-host-secret-{uuid.uuid4().hex}"
    import subprocess
    import sys

    host_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", token])
    try:
        program = f"""
import os
pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
seen = []
for pid in pids:
    try:
        seen.append(open(f"/proc/{{pid}}/cmdline", "rb").read())
    except OSError:
        pass
print(len(pids), {token!r}.encode() in b"".join(seen), {host_process.pid} in pids and {host_process.pid} != os.getpid(),
      os.getpid(), os.path.exists("/proc/1/cmdline"))
"""
        r = run_python(program, limits=QUICK)
        assert r.passed, r.stderr
        count, token_seen, host_pid_seen, own_pid, init_visible = r.stdout.split()
        assert (token_seen, host_pid_seen) == ("False", "False")
        assert int(count) <= 2 and int(own_pid) <= 3  # itself only: init (pid 1) runs as root, hidden by hidepid
        assert init_visible == ("False" if isolation_report().dropped_privileges else "True")
    finally:
        host_process.kill()
        host_process.wait()


def test_cannot_create_user_namespaces():
    _isolated("user_namespaces_blocked")
    program = """
import ctypes, os, shutil, subprocess
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17
print("unshare", libc.unshare(CLONE_NEWUSER), ctypes.get_errno())
pid = libc.syscall(56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)  # raw clone(2) on x86_64; other arches: ENOSYS
if pid == 0:
    os._exit(0)
print("clone", pid if pid < 0 else "child", ctypes.get_errno())
if pid > 0:
    os.waitpid(pid, 0)
if shutil.which("unshare"):
    print("unshare-tool", subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode)
print("fork-still-works", subprocess.run(["true"]).returncode)
"""
    r = run_python(program, limits=QUICK)
    assert r.passed, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert lines["unshare"] == "-1 1"  # EPERM
    assert lines["clone"].startswith("-1")
    assert lines.get("unshare-tool", "1") != "0"
    assert lines["fork-still-works"] == "0"


@pytest.mark.skipif(os.geteuid() != 0, reason="as a normal user the program may write whatever that user may write")
def test_nothing_written_outlives_the_run():
    _isolated("read_only_host")
    name = f"t2-sandbox-probe-{uuid.uuid4().hex}"
    places = [d for d in ("/run/lock", "/var/lock", "/var/tmp", "/tmp", "/dev/shm", "/dev/mqueue", "/var/crash")
              if os.path.isdir(d)]
    program = f"""
import os
written = []
for d in {places!r}:
    try:
        with open(os.path.join(d, {name!r}), "w") as f:
            f.write("persist?")
        written.append(d)
    except OSError:
        pass
print(" ".join(written))
"""
    try:
        r = run_python(program, limits=QUICK)
        assert r.passed, r.stderr
        assert set(r.stdout.split()) <= {"/tmp", "/var/tmp", "/dev/shm"}  # its private tmpfs mounts only
        assert [d for d in places if os.path.exists(os.path.join(d, name))] == []
    finally:
        for d in places:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(d, name))


def test_isolation_report_on_a_root_host():
    if os.geteuid() != 0:
        pytest.skip("the full isolation needs root (or user namespaces and libseccomp)")
    report = isolation_report()
    assert {"pid", "mnt", "ipc", "net"} <= set(report.namespaces)
    assert report.own_proc and report.read_only_host and report.network_isolated
