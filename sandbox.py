"""
Run a model's program against a task's tests so that the program can neither forge the verdict nor touch the host.
Used by eval.py's code scorers, only behind --allow_code_exec.

Two processes per item, started by the scorer:
  the jail   runs the model's program (HumanEval: prompt + completion; MBPP: the completion) and then only answers
             calls, "call f with these arguments" -> the return value or the exception's type and message;
  the judge  runs the task's tests (trusted: they come from the data set) with every function the program defined
             replaced by a proxy that makes the call in the jail. Arguments and results cross a pipe as plain values
             (None, bool, int, float, complex, str, bytes, and lists, tuples, sets, frozensets and dicts of them;
             a subclass as its base type's content), rebuilt fresh on the judge's side, so an object whose __eq__
             always says True cannot cross. The verdict
             is the judge's (the tests ran to their end) and no line of the program ever runs in its process.
The jail's walls are the kernel's (Linux), all in place before the program's first line:
  namespaces   mount (the work folder a tmpfs capped in size and in files, one per 16 KB of the cap: total disk
               bounded, nothing reaches the host's disk or is left behind; some kernels, the CI machine's
               among them, let files of a page or two past the size cap, so the file cap bounds those), network (no
               network, loopback included), IPC, UTS; user too when not run as root;
  credentials  every capability dropped (started as root, the jail keeps uid 0, which owns Python's installation
               there, and no capability: the two layers below hold it, not file permissions);
  Landlock     reads only under Python's installation and the system's library folders, creates, changes, renames,
               links, truncates and removes only in the work folder; no TCP (ABI 4); no signal or abstract socket
               out of the jail (ABI 6);
  seccomp      no new process (fork, exec, clone but for threads), no signal to any process, no ptrace or access to
               another's memory, no limit of another process, no socket, no mount or namespace, no change of modes,
               owners, times or extended attributes, no ioctl but a terminal's queries, no SysV IPC, memfd, io_uring,
               bpf, keyrings, handle-based opens or change of credentials;
  limits       address space, CPU seconds, file size, open files, no core dumps.
Not guaranteed: the program may read what is world-readable under those read roots and spend its CPU and memory
limits; a kernel bug is out of scope. unavailable() names what a machine lacks (Linux on x86_64, seccomp, Landlock
ABI >= 3, root or unprivileged user namespaces) and eval.py then refuses --allow_code_exec with it.
"""
import builtins
import ctypes
import errno
import functools
import json
import os
import platform
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
BOOT = ("import sys; sys.path.insert(0, sys.argv[2]); import sandbox; "
        "getattr(sandbox, sys.argv[1] + '_main')(*sys.argv[3:])")  # python -I -c BOOT role folder args
MAX_MESSAGE, MAX_DEPTH = 16 << 20, 100


@dataclass
class Result:
    passed: bool
    status: str   # passed, failed, timeout
    output: str   # the first few KB of the program's output and the judge's reason, for diagnosis


# ------------------------------------------------------------------------------------------------- the scorer
def run(program, tests, timeout=10.0, memory_mb=1024, file_mb=16, disk_mb=64):
    """Load `program` in a jail, run `tests` in a judge against it; pass = the tests ran to their end in time."""
    missing = unavailable()
    if missing:
        raise RuntimeError(missing)
    limits = [str(memory_mb << 20), str(int(timeout) + 1), str(file_mb << 20), str(disk_mb << 20)]
    with tempfile.TemporaryDirectory(prefix="dllmq-sandbox-") as tmp:
        work = os.path.join(tmp, "work")  # empty on the host: the jail mounts its own tmpfs over it
        os.mkdir(work, 0o755)
        calls, answers = os.pipe(), os.pipe()  # judge -> jail, jail -> judge
        with open(os.path.join(tmp, "out.txt"), "wb+") as out:
            jail = subprocess.Popen([sys.executable, "-I", "-c", BOOT, "jail", HERE, work, str(calls[0]),
                                     str(answers[1]), *limits], stdin=subprocess.PIPE, stdout=out,
                                    stderr=subprocess.STDOUT, env={}, pass_fds=(calls[0], answers[1]),
                                    start_new_session=True)
            judge = subprocess.Popen([sys.executable, "-I", "-c", BOOT, "judge", HERE, str(answers[0]),
                                      str(calls[1])], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env={}, pass_fds=(answers[0], calls[1]),
                                     start_new_session=True)
            for fd in (*calls, *answers):
                os.close(fd)
            verdict, status = _wait(jail, judge, program, tests, timeout)
            out.seek(0)
            head = out.read(8192).decode(errors="replace")
    passed = status == "done" and verdict.rstrip().endswith("\nPASS")
    return Result(passed, "passed" if passed else "timeout" if status == "timeout" else "failed",
                  (head.strip() + "\n" + verdict.strip()).strip())


def _wait(jail, judge, program, tests, timeout):
    """Feed both processes, wait for the judge's verdict, and kill both whatever happened."""
    deadline = time.monotonic() + timeout
    try:
        try:
            jail.stdin.write(program.encode())
            jail.stdin.close()
        except BrokenPipeError:
            pass  # the jail died before reading its program: the judge will say so
        out, _ = judge.communicate(tests.encode(), timeout=max(0.1, deadline - time.monotonic()))
        return "\n" + out.decode(errors="replace")[-4096:], "done"
    except subprocess.TimeoutExpired:
        return "\nthe tests did not finish within the time limit", "timeout"
    finally:
        for p in (jail, judge):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.kill()
            p.wait()


@functools.cache
def unavailable():
    """None when this machine can run the jail, else one line saying what it lacks (checked once: a probe jail)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"sandbox: needs Linux on x86_64 (its seccomp filter is written for it), not {sys.platform} " \
               f"{platform.machine()}"
    try:
        abi = _syscall(SYS["landlock_create_ruleset"], None, 0, 1)
    except OSError as e:
        return f"sandbox: needs Landlock (enabled in the kernel and its lsm= list): {e.strerror}"
    if abi < 3:
        return f"sandbox: needs Landlock ABI 3 or later (truncation rights), this kernel has ABI {abi}"
    with tempfile.TemporaryDirectory(prefix="dllmq-probe-") as tmp:
        work = os.path.join(tmp, "work")
        os.mkdir(work)
        r = subprocess.run([sys.executable, "-I", "-c", BOOT, "jail", HERE, work, "-1", "-1", str(512 << 20), "5",
                            str(1 << 20), str(1 << 20)], input=b"x = 1\n", capture_output=True, env={}, timeout=30)
    if r.returncode != 0 or b"jail ready" not in r.stdout:
        lines = (r.stdout + r.stderr).decode(errors="replace").strip().splitlines() or ["no output"]
        return f"sandbox: the jail cannot be set up here ({lines[-1]}); it needs root or unprivileged user " \
               "namespaces, seccomp and Landlock"
    return None


# ---------------------------------------------------------------------------------------------- plain values
def encode(v, depth=0):
    """A plain value as JSON-able data. A subclass of a plain type (a Counter, a namedtuple) crosses as the base
    type's own content, read with the base type's methods, so no override can change what the judge sees; anything
    else (an object, a function) raises TypeError."""
    if depth > MAX_DEPTH:
        raise TypeError("nested too deep")
    if v is None or type(v) is bool:
        return v
    for base, tag, read in PLAIN:
        if isinstance(v, base):
            return read(v, depth) if tag is None else {tag: read(v, depth)}
    raise TypeError(f"a {type(v).__name__} is not a plain value")


PLAIN = [  # (type, tag, its content as JSON-able data); str and list are JSON's own
    (str, None, lambda v, d: str.__str__(v)), (int, "i", lambda v, d: int.__repr__(v)),
    (float, "f", lambda v, d: float.__repr__(v)),
    (complex, "c", lambda v, d: [float.__repr__(complex.real.__get__(v)), float.__repr__(complex.imag.__get__(v))]),
    (bytes, "b", lambda v, d: bytes.hex(v)), (list, None, lambda v, d: [encode(x, d + 1) for x in list.__iter__(v)]),
    (tuple, "t", lambda v, d: [encode(x, d + 1) for x in tuple.__iter__(v)]),
    (frozenset, "z", lambda v, d: [encode(x, d + 1) for x in frozenset.__iter__(v)]),
    (set, "s", lambda v, d: [encode(x, d + 1) for x in set.__iter__(v)]),
    (dict, "d", lambda v, d: [[encode(k, d + 1), encode(x, d + 1)] for k, x in dict.items(v)])]


def decode(d):
    if d is None or isinstance(d, (bool, str)):
        return d
    if isinstance(d, list):
        return [decode(x) for x in d]
    (tag, x), = d.items()
    if tag in "tsz":
        return {"t": tuple, "s": set, "z": frozenset}[tag](decode(e) for e in x)
    return {"i": int, "f": float, "b": bytes.fromhex, "c": lambda c: complex(float(c[0]), float(c[1])),
            "d": lambda kv: {decode(k): decode(v) for k, v in kv}}[tag](x)


def send(fd, message):
    data = json.dumps(message).encode()
    data = struct.pack("<I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def receive(fd):
    size = struct.unpack("<I", _read(fd, 4))[0]
    if size > MAX_MESSAGE:
        raise EOFError(f"a message of {size} bytes")
    return json.loads(_read(fd, size))


def _read(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("the jail closed its end")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


# -------------------------------------------------------------------------------------------------- the judge
def judge_main(answers, calls):
    """The tests (stdin) with a proxy for every function the jail's program defined; prints PASS or why not."""
    answers, calls, tests = int(answers), int(calls), sys.stdin.read()
    try:
        hello = receive(answers)
    except (EOFError, ValueError, struct.error) as e:
        print(f"FAIL: the program did not load ({e})")
        return
    if "error" in hello:
        print(f"FAIL: the program raised {hello['error']}")
        return
    env = {"__name__": "__main__", **{name: decode(v) for name, v in hello["values"]}}
    env.update({name: _proxy(name, answers, calls) for name in hello["functions"]})
    try:
        exec(compile(tests, "tests.py", "exec"), env)
    except BaseException as e:  # noqa: B036 (whatever stops the tests, they did not pass)
        print(f"FAIL: {type(e).__name__}: {str(e)[:500]}")
        return
    print("PASS")


def _proxy(name, answers, calls):
    def call(*args, **kwargs):
        send(calls, {"call": name, "args": encode(list(args)), "kwargs": encode(kwargs)})
        reply = receive(answers)
        if "ok" in reply:
            return decode(reply["ok"])
        kind, message = reply["raise"]
        builtin = getattr(builtins, kind, None)
        cls = builtin if isinstance(builtin, type) and issubclass(builtin, Exception) else RuntimeError
        raise cls(message)
    call.__name__ = name
    return call


# --------------------------------------------------------------------------------------------------- the jail
def jail_main(work, calls, answers, memory, cpu, fsize, disk):
    """Wall the process in (module docstring), load the program (stdin), then answer calls until the judge hangs
    up. With calls = -1 (the probe of unavailable()) it prints "jail ready" once walled in and stops."""
    source = sys.stdin.read()
    root = os.geteuid() == 0
    _enclose(work, int(disk), root)
    with open("program.py", "w") as f:  # for tracebacks; the tmpfs is the jail's alone
        f.write(source)
    _drop_capabilities()
    for res, value in ((resource.RLIMIT_AS, int(memory)), (resource.RLIMIT_CPU, int(cpu)),
                       (resource.RLIMIT_FSIZE, int(fsize)), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))  # the hard limit too: nothing may raise it again
    _landlock(work)
    _seccomp()
    calls, answers = int(calls), int(answers)
    if calls < 0:  # the probe of unavailable(): walled in, nothing to run
        print("jail ready", flush=True)
        os._exit(0)
    env = {"__name__": "__main__", "__file__": "program.py"}
    try:
        exec(compile(source, "program.py", "exec"), env)
    except BaseException as e:  # noqa: B036 (a program that does not load has no functions to test)
        _answer(answers, {"error": f"{type(e).__name__}: {str(e)[:300]}"})
        os._exit(0)
    functions = [n for n, v in env.items() if callable(v) and not n.startswith("__")]
    _answer(answers, {"functions": functions, "values": _plain_globals(env)})
    while True:
        try:
            request = receive(calls)
        except (EOFError, OSError, ValueError, struct.error):
            os._exit(0)
        try:
            result = env[request["call"]](*decode(request["args"]), **decode(request["kwargs"]))
            reply = {"ok": encode(result)}
        except BaseException as e:  # noqa: B036 (the judge re-raises it by name)
            reply = {"raise": [type(e).__name__, str(e)[:1000]]}
        _answer(answers, reply)


def _answer(fd, message):
    try:
        send(fd, message)
    except (OSError, TypeError, ValueError):
        os._exit(1)


def _plain_globals(env):
    """The program's module-level plain values (the tests may read a constant it defines)."""
    out = []
    for name, value in env.items():
        if not name.startswith("__") and not callable(value):
            try:
                out.append([name, encode(value)])
            except TypeError:
                pass  # a module, an object: not a value the tests can read
    return out


# ------------------------------------------------------------------------------------- the kernel's walls (x86_64)
SYS = {"landlock_create_ruleset": 444, "landlock_add_rule": 445, "landlock_restrict_self": 446, "seccomp": 317,
       "capset": 126, "unshare": 272, "clone": 56, "clone3": 435, "prlimit64": 302, "ioctl": 16}
DENIED = {  # syscall numbers refused with EPERM (the module docstring says why)
    "processes": (57, 58, 59, 322), "signals": (62, 200, 234, 129, 297, 424, 434, 438),
    "other processes": (101, 310, 311, 312), "sockets": (41, 53),
    "mounts and namespaces": (272, 308, 165, 166, 155, 161, 428, 429, 430, 431, 432, 433, 442),
    "modes, owners, times": (90, 91, 268, 452, 92, 93, 94, 260, 132, 235, 261, 280),
    "extended attributes": (188, 189, 190, 197, 198, 199, 463, 466), "devices": (133, 259),
    "handles": (303, 304), "kernel": (321, 298, 250, 248, 249, 323, 425, 426, 427, 246, 320, 175, 313, 176, 169, 167,
                                       168, 163, 179, 443, 103, 300, 164, 227, 159, 305),
    "credentials": (105, 106, 113, 114, 117, 119, 122, 123, 116, 126, 135),
    "shared memory": (319, 447, 29, 30, 31, 64, 65, 66, 67, 68, 69, 70, 71, 220)}
IOCTLS = (0x5401, 0x5413, 0x541B, 0x5421, 0x5450, 0x5451)  # TCGETS, TIOCGWINSZ, FIONREAD, FIONBIO, FIONCLEX, FIOCLEX
CLONE = {"NS": 0x20000, "UTS": 0x4000000, "IPC": 0x8000000, "USER": 0x10000000, "NET": 0x40000000, "THREAD": 0x10000}


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _syscall(nr, *args):
    r = _libc().syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _check(r, what):
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _enclose(work, disk, root):
    """New namespaces, the work folder a private tmpfs of `disk` bytes and disk / 16 KB files, and the process
    inside it."""
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE["NS"] | CLONE["NET"] | CLONE["IPC"] | CLONE["UTS"] | (0 if root else CLONE["USER"])
    _check(_libc().unshare(flags), "unshare")
    if not root:  # map this user to root of the new user namespace, which owns the new mount namespace
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    libc = _libc()
    _check(libc.mount(None, b"/", None, ctypes.c_ulong(16384 | 262144), None), "mount --make-rprivate /")
    options = f"size={disk},nr_inodes={max(disk >> 14, 64)},mode=0700".encode()
    _check(libc.mount(b"tmpfs", work.encode(), b"tmpfs", ctypes.c_ulong(2 | 4), options), "mount tmpfs")
    os.chdir(work)


def _drop_capabilities():
    header = struct.pack("<Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = ctypes.create_string_buffer(24)  # two zeroed {effective, permitted, inheritable}
    _syscall(SYS["capset"], ctypes.c_char_p(header), data)


def _landlock(work):
    """Read-only roots for Python and the system's libraries, everything in the work folder, nothing else."""
    abi = _syscall(SYS["landlock_create_ruleset"], None, 0, 1)
    fs = (1 << (13 if abi < 2 else 14 if abi < 3 else 15 if abi < 5 else 16)) - 1
    attr = struct.pack("<QQQ", fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)[:8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = _syscall(SYS["landlock_create_ruleset"], ctypes.c_char_p(attr), len(attr), 0)
    read = 1 | 4 | 8  # EXECUTE, READ_FILE, READ_DIR
    roots = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, "/usr", "/lib", "/lib64"}
    rules = [(p, read) for p in sorted(roots)] + [(work, fs), ("/dev/null", 2 | 4 | (1 << 14))]
    for path, allowed in rules:
        if not os.path.exists(path):
            continue
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            _syscall(SYS["landlock_add_rule"], ruleset, 1, ctypes.c_char_p(struct.pack("<Qi", allowed, fd)), 0)
        finally:
            os.close(fd)
    _check(_libc().prctl(38, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           "no_new_privs")
    _syscall(SYS["landlock_restrict_self"], ruleset, 0)
    os.close(ruleset)


def seccomp_program():
    """The BPF filter as (code, jt, jf, k) instructions: x86_64 only, then EPERM for DENIED, ENOSYS for clone3
    (glibc then makes threads with clone), clone only for threads, prlimit64 only on this process, ioctl only for
    IOCTLS; everything else allowed."""
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill, deny = 0x7FFF0000, 0x80000000, 0x00050000 | errno.EPERM
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, 0xC000003E), (ret, 0, 0, kill),  # arch: AUDIT_ARCH_X86_64, else kill
            (ld, 0, 0, 0), (jge, 0, 1, 0x40000000), (ret, 0, 0, kill)]  # x32 numbers: kill
    for nr in sorted({n for group in DENIED.values() for n in group}):
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, deny)]
    prog += [(jeq, 0, 1, SYS["clone3"]), (ret, 0, 0, 0x00050000 | errno.ENOSYS)]
    prog += [(jeq, 0, 4, SYS["clone"]), (ld, 0, 0, 16), (jset, 0, 1, CLONE["THREAD"]), (ret, 0, 0, allow),
             (ret, 0, 0, deny)]
    prog += [(jeq, 0, 6, SYS["prlimit64"]), (ld, 0, 0, 16), (jeq, 0, 3, 0), (ld, 0, 0, 20), (jeq, 0, 1, 0),
             (ret, 0, 0, allow), (ret, 0, 0, deny)]
    prog += [(jeq, 0, len(IOCTLS) + 3, SYS["ioctl"]), (ld, 0, 0, 24)]
    prog += [(jeq, len(IOCTLS) - i, 0, cmd) for i, cmd in enumerate(IOCTLS)] + [(ret, 0, 0, deny), (ret, 0, 0, allow)]
    return prog + [(ret, 0, 0, allow)]


def _seccomp():
    prog = seccomp_program()
    filters = ctypes.create_string_buffer(b"".join(struct.pack("<HBBI", *ins) for ins in prog))
    fprog = struct.pack("<HxxxxxxQ", len(prog), ctypes.addressof(filters))
    _syscall(SYS["seccomp"], 1, 1, ctypes.c_char_p(fprog))  # SECCOMP_SET_MODE_FILTER, FILTER_FLAG_TSYNC
