"""Inside the sandbox: the privileged setup between the host's `Popen` and the untrusted program's `execve`.

Run as a script, `python -I -S -B bootstrap.py --bootstrap CONFIG_JSON`, by `host.py`; single-threaded, standard
library only (the host imports `PRIVATE_TMP` and `proc_table` from here too).

    bootstrap   host's identity; unshare(pid, ipc, mnt, net [, user]); child subreaper
       └─ init     pid 1 of the new pid namespace: reaps; when it dies the kernel kills everything inside
            └─ program   setsid; mounts: private /tmp, /var/tmp, /dev/shm, every other mount read-only, a /proc of
                         its own pid namespace showing only its own uid; rlimits; fresh uid; no_new_privs;
                         seccomp: no new user namespaces; PDEATHSIG; the channel fds at 3, 4, 5; execve(python ...)

Setup failures and the exit status go to the host on a private status pipe (JSON lines) that the program
cannot write to: the pipe is close-on-exec and held at fd >= 64 until then.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from typing import Any, NoReturn

PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
_CLONE = {"user": 0x10000000, "pid": 0x20000000, "net": 0x40000000, "ipc": 0x08000000, "mnt": 0x00020000}
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_NOATIME, MS_NODIRATIME = 1, 2, 4, 8, 32, 1024, 2048
MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 4096, 16384, 1 << 18, 1 << 21
_KEEP_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
               "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}  # a bind remount must restate them
_HIGH_FD = 64  # where the bootstrap keeps its own fds, clear of the program's 0-5


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


def main(cfg: dict) -> NoReturn:
    """The process the host started: enter namespaces, fork init (or the program), wait, report, clean up."""
    libc = _libc()
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    if os.getppid() != cfg["host_pid"]:
        os._exit(1)
    _move_fds_high(cfg)
    fd = cfg["status_fd"]
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
    _close_channel(cfg)  # the program's end of the channel: EOF reaches the peer as soon as the program is gone
    signal.signal(signal.SIGTERM, lambda *_: _kill_quietly(child))  # the host's "time is up"
    _report(fd, {"namespaces": spaces})
    _, wstatus = os.waitpid(child, 0)
    _reap_all()
    if "pid" not in spaces:
        _report(fd, _exit_info(wstatus))
    os._exit(0)


def _move_fds_high(cfg: dict) -> None:
    """Keep the status pipe and the channel fds at >= 64, close-on-exec, so that placing the channel at 3-5 just
    before execve can never overwrite one of them."""
    import fcntl

    def move(fd: int) -> int:
        new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
        os.close(fd)
        return new

    cfg["status_fd"] = move(cfg["status_fd"])
    cfg["fds"] = {target: move(source) for target, source in cfg.get("fds", {}).items()}


def _close_channel(cfg: dict) -> None:
    for source in cfg["fds"].values():
        with contextlib.suppress(OSError):
            os.close(source)


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
        _close_channel(cfg)
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
        exact_nproc = cfg["uid"] is not None or "user" in spaces
        nproc = cfg["limits"]["max_processes"]
        if not exact_nproc:  # RLIMIT_NPROC counts all our tasks: allow the ones that already exist (read before
            me = os.getuid()  # /proc is replaced by one that shows only this pid namespace)
            nproc += sum(threads for _, uid, threads in proc_table() if uid == me)
        isolation: dict[str, bool] = {"read_only": False, "own_proc": False, "userns_blocked": False}
        if "mnt" in spaces:
            _mount_overlays(libc, cfg)
            isolation["read_only"] = _read_only_elsewhere(libc, cfg)
            isolation["own_proc"] = "pid" in spaces and _mount_proc(libc)
        os.chdir(cfg["workdir"])
        _set_rlimits(cfg["limits"], nproc)
        seccomp = _load_seccomp()  # before the uid changes: the library may sit where only root can read
        if cfg["uid"] is not None:
            uid = cfg["uid"]
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")  # reset by setuid
        if os.getppid() != parent:
            os._exit(1)
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        isolation["userns_blocked"] = seccomp is not None and _block_user_namespaces(seccomp)
        _report(fd, {"isolation": isolation})
        for target, source in cfg["fds"].items():
            os.dup2(source, int(target), inheritable=True)
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
            private_tmp = target in PRIVATE_TMP
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
    workdir = cfg["workdir"]
    if not any(workdir in paths for paths in cfg["overlays"].values()):  # make it a mount of its own, so that
        _check(libc.mount(workdir.encode(), workdir.encode(), None, MS_BIND, None), f"bind {workdir}")  # it stays rw


def _read_only_elsewhere(libc: Any, cfg: dict) -> bool:
    """Remount every mount of this (private) namespace read-only except the private temp dirs and the workdir:
    world-writable host places (/run/lock, /var/crash, a mqueue or cgroup mount) then refuse writes, so
    nothing the program writes outlives the run. True when every remount worked."""
    writable = {t for t in cfg["overlays"] if t in PRIVATE_TMP} | {cfg["workdir"]}
    ok = True
    for mount_point, options in _mounts():
        if mount_point in writable or mount_point == "/proc" or mount_point.startswith("/proc/"):
            continue  # /proc: replaced by the program's own right after
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | sum(f for name, f in _KEEP_FLAGS.items() if name in options)
        if libc.mount(None, mount_point.encode(), None, flags, None) != 0:
            ok = False
    return ok


def _mounts() -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of every mount in /proc/self/mountinfo."""
    rows = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])  # "\040" is a space
            rows.append((mount_point, set(fields[5].split(","))))
    return rows


def _mount_proc(libc: Any) -> bool:
    """A procfs of the program's own pid namespace over /proc (the host's stays hidden beneath it): the host's
    process table and command lines are out of sight. hidepid=2 hides even this namespace's processes of
    other uids (init, which runs as the host's uid)."""
    for options in (b"hidepid=2", None):
        if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, options) == 0:
            return True
    return False


def _set_rlimits(lim: dict, nproc: int) -> None:
    import math
    import resource

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


def _load_seccomp() -> Any:
    """libseccomp (the system's libseccomp.so.2), or None where it is not installed."""
    import ctypes

    try:
        return ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        return None


def _block_user_namespaces(lib: Any) -> bool:
    """A seccomp filter: unshare() and clone() with CLONE_NEWUSER fail with EPERM, clone3() with ENOSYS (its flags
    sit in memory a filter cannot read; glibc then falls back to clone()). A user namespace would give the
    program root's capabilities over namespaces of its own: new mounts, its own process-count accounting.

    libseccomp rather than a hand-written BPF program: it knows each architecture's syscall numbers and
    refuses the other ABIs of the machine (x32, i386 on x86_64) that a hand-written filter must remember."""
    import ctypes

    class ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                    ("datum_b", ctypes.c_uint64)]

    allow, masked_eq = 0x7FFF0000, 7  # SCMP_ACT_ALLOW, SCMP_CMP_MASKED_EQ

    def errno_action(err: int) -> int:  # SCMP_ACT_ERRNO(err)
        return 0x00050000 | (err & 0xFFFF)

    lib.seccomp_init.restype, lib.seccomp_init.argtypes = ctypes.c_void_p, [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(allow)
    if not ctx:
        return False
    try:
        newuser = ArgCmp(0, masked_eq, _CLONE["user"], _CLONE["user"])  # flags are argument 0 of both
        for name in (b"unshare", b"clone"):
            if lib.seccomp_rule_add_array(ctx, errno_action(1), lib.seccomp_syscall_resolve_name(name), 1,
                                          ctypes.byref(newuser)) != 0:
                return False
        clone3 = lib.seccomp_syscall_resolve_name(b"clone3")
        if clone3 >= 0 and lib.seccomp_rule_add_array(ctx, errno_action(38), clone3, 0, None) != 0:  # ENOSYS
            return False
        return lib.seccomp_load(ctx) == 0
    finally:
        lib.seccomp_release(ctx)


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


def proc_table() -> list[tuple[int, int, int]]:
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
        main(json.loads(sys.argv[2]))
    elif sys.argv[1:2] == ["--kill-uid"]:
        _kill_uid(int(sys.argv[2]))
    sys.exit("usage: bootstrap.py --bootstrap CONFIG_JSON | --kill-uid UID (internal; use run_python)")
