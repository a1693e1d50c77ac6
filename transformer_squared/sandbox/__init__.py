"""Run untrusted Python (LLM-generated solutions to MBPP, HumanEval, custom tasks) and judge it. Linux only.

Threat model: generated code that is careless, hostile by accident, or written (by a model under RL pressure) to
game its reward: an infinite loop, a fork bomb, a 20 GB list, `shutil.rmtree("/")`, a print loop,
`os.kill(os.getppid(), 9)`, and every way of faking a pass: printing a success marker, `os._exit(0)` before the
asserts, reading the harness's files, argv, environment or memory, patching `AssertionError`, `atexit`, signal
handlers. Each such program must end as a failed sample within its limits, and the host must carry on.

Verdicts (`run_check`, `host.CodeCheck`): the candidate's code and the tests never share a process.

    host ─┬─ sandbox A: serve.py   runs the candidate program as __main__, answers calls  ─┐ fd 3/4: JSON
          └─ sandbox B: judge.py   runs the trusted tests; candidate names are proxies    ─┘ lines, data only
                                   verdict ──fd 5──> host   (only the judge holds it)

The judge runs the asserts itself. A name the tests use that they do not define (the entry point, an MBPP
fixture such as `root`) is fetched from the candidate: data (numbers, strings, bytes, lists, tuples, dicts, sets,
a few stdlib containers, builtin types) comes by value, a stdlib module is imported by the judge, anything else
is a reference that can only be called (one request per call: arguments out, a result or an exception name back)
or passed back; it equals only itself, and its truth value is asked of the candidate and must come back a bool. Builtins stay the judge's own (a candidate's `len`
never reaches the tests) except the names a task binds explicitly (`aliases`: its entry point, which may be
called `sum`). The judge decodes answers with `wire.decode`, which builds plain data and nothing else, so no object,
method or code of the candidate ever runs where the tests are checked. There is no secret to steal: whatever
the candidate prints, exits with or tampers with in its own process, the only way to pass is to answer every
call so that the tests' own comparisons hold. A candidate that crashes, exits, hangs, prints junk on the channel
or answers with something that is not data fails. The cost: two sandboxes per check, started together (about as
long as one: 1.4-1.6 s per check on a 2-core box at load 13, the single-program design took 1.4-1.5 s), and
in-place mutation of arguments is not seen by the tests (arguments travel by value, as in a remote call).

One sandbox (`run_python` runs a plain program in one; a check uses two):

    host ── Popen(start_new_session) ──> bootstrap   `python -I -S bootstrap.py`, host's identity;
                                            │         unshare(pid, ipc, mnt, net [, user]); child subreaper
                                            └─ fork ─> init     pid 1 of the new pid namespace: reaps; when it
                                                        │        dies the kernel kills everything inside
                                                        └─ fork ─> program   setsid, mounts, rlimits, fresh uid,
                                                                   no_new_privs, seccomp, PDEATHSIG, then
                                                                   execve(sys.executable -I -B -X utf8 script)

The privileged steps run in the bootstrap, a fresh single-threaded process, so there is no `preexec_fn` (unsafe
with the threads of `run_many`). Setup failures and the exit status come back on a private status pipe, which the
program cannot write to; a failed setup is status "error", not a failed sample.

What each limit defends against:

* `timeout` (wall clock, interpreter start included; a check: both sandboxes together): the host drains the pipes
  against a deadline, then tells the bootstrap (SIGTERM) to SIGKILL init, which takes the whole pid namespace
  down: children, daemons, anything that setsid()'d away. If the bootstrap does not answer in 2 s its process
  group is SIGKILLed and PDEATHSIG carries the kill down. RLIMIT_CPU (timeout + 1 s of CPU) is a backstop.
* `memory_mb`: RLIMIT_AS per process, so a huge allocation raises MemoryError (status "memory").
* `max_processes`: RLIMIT_NPROC. The kernel does not apply it to root and counts *all* processes of a uid, so
  a root host runs the program as a fresh random uid in [1.9e9, 2.14e9) (above systemd's container range)
  that nothing else uses: the count is exact, and `kill(-1)` as that uid is a safe last-resort sweep. A non-root
  host enters a new user namespace, where the kernel (>= 5.14) counts per namespace, so it is exact as well.
  Threads count too: the environment pins OMP/OpenBLAS/MKL to one thread.
* `max_output_bytes`: stdout and stderr are drained all the time in 1 MiB reads (the program never blocks on
  a full pipe); the first `max_output_bytes` of each are kept, the rest is discarded (the last 4 KiB are also
  kept, to find a MemoryError).
* `max_file_bytes`: RLIMIT_FSIZE. The working directory is a fresh temp dir (HOME and TMPDIR too), deleted
  afterwards; /tmp, /var/tmp and /dev/shm are private tmpfs mounts of 4 x max_file_bytes that vanish with the
  run, and every other mount is remounted read-only in the program's mount namespace, so a write to a
  world-writable host directory (/run/lock, /var/crash, /dev/mqueue) fails and nothing outlives the run. If the
  interpreter lives where the fresh uid cannot go (pyenv under a 0700 /root), a tmpfs covers that directory and
  only the interpreter's own tree is bind-mounted back, at the same path.
* `network=False`: a new network namespace with only a loopback that is down: connect() fails.
* processes: the program has its own pid namespace with its own /proc (mounted with hidepid=2), so it sees only
  its own processes: not the host's process table, not other programs' command lines, not its judge. Its
  session and pid namespace also mean `kill(0)`, `killpg(0)`, `kill(-1)` and `kill(getppid())` reach only its
  own processes (its parent is init, pid 1, which ignores them).
* user namespaces: a seccomp filter (through the system's libseccomp) makes unshare()/clone() with CLONE_NEWUSER
  fail and clone3() report ENOSYS, so the program cannot become "root" of a namespace of its own.
* environment: PATH=/usr/local/bin:/usr/bin:/bin, HOME, TMPDIR, LANG, PYTHONDONTWRITEBYTECODE, thread pins;
  `python -I` (no PYTHON* variables, no user site, no script dir on sys.path) and `-B`.

Degradation (see `isolation_report()`, which checks the user-namespace block and /proc from inside): every
namespace is tried on its own, and whatever the OS refuses is skipped, with a warning logged once. Root inside a
rootless container (the fresh uid range is not mapped there) keeps its identity: it still gets the namespaces,
but the process limit is approximate (below). Without libseccomp the program can create user namespaces. A
normal user without user namespaces gets no namespaces at all: the process limit is "your current task count +
max_processes" (approximate), the network stays reachable, /tmp is shared, and `kill(-1)` or `kill(<your pid>)`
from the program reaches *your* processes, the host included; the program can write whatever you can. Daemons
still die with the run: the bootstrap is a child subreaper and kills every orphan before it exits. A verdict is
unforgeable as long as the candidate cannot reach its judge's process or files: so where the host is root (a
fresh uid each, separate pid and mount namespaces) or has user namespaces; where the program keeps your
identity (both degraded cases above) it could tamper with the judge as with anything else of yours.

What this does NOT defend against: it is not a security boundary like a VM, gVisor or a hardened container.
Kernel exploits, side channels, reading world-readable files (source trees, /etc, the task's data), CPU
starvation of the host (no cgroup quota), or total memory: RLIMIT_AS is per process, so a program may hold up
to max_processes x memory_mb. A test passes if the candidate's answers satisfy it, so tests that are weak
(or whose inputs a model has memorised) can still be passed by special-casing. For hostile workloads add a
disposable VM or container.
"""

from .host import (
    CodeCheck,
    IsolationReport,
    SandboxLimits,
    SandboxResult,
    isolation_report,
    run_check,
    run_checks,
    run_many,
    run_python,
)

__all__ = [
    "CodeCheck",
    "IsolationReport",
    "SandboxLimits",
    "SandboxResult",
    "isolation_report",
    "run_check",
    "run_checks",
    "run_many",
    "run_python",
]
