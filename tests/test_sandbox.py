"""sandbox.py: reference solutions pass and wrong ones fail; no hostile program forges a pass, touches the host, keeps
a process alive, reaches the network or the scorer. Each hostile program below tries one way, and the check after
its run is exact: the host folder's names, contents, modes, times and extended attributes, the scorer's limits,
the processes and folders left, the listening socket."""
import os
import resource
import socket
import sys
import tempfile
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # also run as a script: python tests/test_sandbox.py TASKS
import eval as E  # noqa: E402
import sandbox  # noqa: E402

ARGS = E.Args(data_dir=os.path.join(ROOT, "data", "tasks"))
needs_jail = pytest.mark.skipif(sandbox.unavailable() is not None, reason=str(sandbox.unavailable()))


@needs_jail
def test_humaneval_canonical_solutions_pass_and_stubs_fail():
    """The oracle of the code scorer (the full sets: `python tests/test_sandbox.py TASKS`)."""
    tasks = E.read_jsonl(os.path.join(ARGS.data_dir, "humaneval", "HumanEval.jsonl.gz"))
    programs = E.humaneval_programs(ARGS)
    assert all(sandbox.run(*make(t["canonical_solution"])).passed
               for t, (_, _, make) in zip(tasks, programs, strict=True))
    assert not any(sandbox.run(*make("    pass\n")).passed for _, _, make in programs)


@needs_jail
def test_mbpp_reference_code_passes_and_wrong_code_fails():
    rows = {r["task_id"]: r for r in E.read_jsonl(os.path.join(ARGS.data_dir, "mbpp", "mbpp.jsonl"))}
    programs = E.mbpp_programs(ARGS)
    assert len(programs) == 20 and "[BEGIN]" in programs[0][1] and programs[0][1].count("[DONE]") == 3
    assert [i for i, _, _ in programs] == [f"mbpp/{11 + i}" for i in range(20)]
    assert all(sandbox.run(*make(rows[11 + i]["code"])).passed for i, (_, _, make) in enumerate(programs))
    assert not sandbox.run(*programs[0][2]("def remove_Occ(s, ch):\n    return s\n")).passed


@needs_jail
def test_values_cross_as_plain_copies():
    program = "import collections\ndef f(x):\n    x.append(1)\n    return x, collections.Counter('aab'), 2**80, " \
              "float('-inf'), {1: {2, 3}}, b'z', 1j, None, True\n"
    tests = "x = [0]\nassert f(x) == ([0, 1], {'a': 2, 'b': 1}, 2**80, float('-inf'), {1: {2, 3}}, b'z', 1j, None, " \
            "True)\nassert x == [0] and type(f(x)[1]) is dict and f(x)[-1] is True\n"
    assert sandbox.run(program, tests).passed
    raising = sandbox.run("def f():\n    raise KeyError('k')\n", "try:\n    f()\nexcept KeyError:\n    pass\n")
    assert raising.passed  # the judge re-raises a builtin exception by its name


@pytest.fixture
def host(tmp_path):
    """A folder and a listening socket outside the jail: after the run, nothing of them may have changed."""
    (tmp_path / "keep.txt").write_text("precious")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inner.txt").write_text("precious")
    os.setxattr(tmp_path / "keep.txt", "user.mark", b"1")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    before = snapshot(tmp_path), resource.getrlimit(resource.RLIMIT_NOFILE), leftovers()
    yield tmp_path, server.getsockname()[1]
    time.sleep(0.3)  # a process that escaped would write now
    try:
        server.accept()[0].close()
        raise AssertionError("a sandboxed program opened a connection to the host")
    except TimeoutError:
        pass
    server.close()
    assert (snapshot(tmp_path), resource.getrlimit(resource.RLIMIT_NOFILE), leftovers()) == before


def snapshot(folder):
    """Every path under folder with its content, mode, modification time and extended attributes."""
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            content = open(p, "rb").read() if os.path.isfile(p) else None
            out[p] = (content, st.st_mode, st.st_mtime_ns, sorted((a, os.getxattr(p, a)) for a in os.listxattr(p)))
    return out


def leftovers():
    """Sandbox folders in the temp folder, and processes that run sandbox.py's jail or judge."""
    folders = sorted(n for n in os.listdir(tempfile.gettempdir()) if n.startswith("dllmq-sandbox-"))
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if b"sandbox" in cmd and (b"\0jail\0" in cmd or b"\0judge\0" in cmd):
            procs.append(pid)
    return folders, procs


WRONG = "def f():\n    return 'wrong'\n"
FORGE = {  # a wrong answer, and a try at making the verdict say pass anyway
    "print the word": "print('PASS')\nimport sys\nsys.stderr.write('\\nPASS\\n')\n" + WRONG,
    "at exit": "import atexit\natexit.register(lambda: print('\\nPASS'))\n" + WRONG,
    "excepthook": "import sys\nsys.excepthook = lambda *a: print('\\nPASS')\n" + WRONG,
    "late thread": "import threading, time\nthreading.Thread(target=lambda: (time.sleep(0.2), print('\\nPASS')))"
                   ".start()\n" + WRONG,
    "walk the frames": "import sys, gc\nfor o in gc.get_objects():\n    pass\nf0 = sys._getframe()\n" + WRONG,
    "equal to anything": "class A:\n    def __eq__(self, o):\n        return True\ndef f():\n    return A()\n",
    "a str that equals anything": "class S(str):\n    def __eq__(self, o):\n        return True\ndef f():\n"
                                  "    return S('wrong')\n",
    "exit early": "import sys\nsys.exit(0)\n",
    "hard exit": "import os\nos._exit(0)\n",
    "read the tests": "def f():\n    open({data!r}).read()\n    return 'right'\n",  # right only if it could
    "read the judge": "import os\ndef f():\n    open(f'/proc/{{os.getppid()}}/cmdline').read()\n    return 'right'\n",
}  # (what the jail sends back is only ever a value: answering out of turn is returning a constant)


@needs_jail
@pytest.mark.parametrize("name", FORGE)
def test_a_wrong_program_cannot_forge_a_pass(name, host):
    data = os.path.join(ROOT, "data", "tasks", "humaneval", "HumanEval.jsonl.gz")
    result = sandbox.run(FORGE[name].format(data=data), "assert f() == 'right'\n", timeout=3)
    assert not result.passed and result.status == "failed", result.output


HOSTILE = {  # each tries to act outside; the host fixture checks nothing happened
    "write": "open('{tmp}/evil.txt', 'w').write('x')",
    "append": "open('{tmp}/keep.txt', 'a').write('x')",
    "truncate": "import os\nos.truncate('{tmp}/keep.txt', 0)",
    "create by dir_fd": "import os\nd = os.open('{tmp}', os.O_RDONLY)\nos.open('evil', os.O_CREAT | os.O_WRONLY, "
                        "dir_fd=d)",
    "unlink by dir_fd": "import os\nd = os.open('{tmp}', os.O_RDONLY)\nos.unlink('keep.txt', dir_fd=d)",
    "rename away by dir_fd": "import os\nd = os.open('{tmp}', os.O_RDONLY)\nos.rename('keep.txt', '/tmp/x', "
                             "src_dir_fd=d)",
    "hard link in": "import os\nos.link('{tmp}/keep.txt', 'mine')\nopen('mine', 'a').write('x')",
    "symlink out": "import os\nos.symlink('{tmp}/keep.txt', 'link')\nopen('link', 'w').write('x')",
    "delete": "import os\nos.remove('{tmp}/keep.txt')",
    "rmtree": "import shutil\nshutil.rmtree('{tmp}/dir')",
    "chdir out": "import os\nos.chdir('{tmp}')\nopen('evil.txt', 'w').write('x')",
    "chmod": "import os\nos.chmod('{tmp}/keep.txt', 0)",
    "fchmod by fd": "import os\nos.fchmod(os.open('{tmp}/keep.txt', os.O_RDONLY), 0)",
    "fchown by fd": "import os\nos.fchown(os.open('{tmp}/keep.txt', os.O_RDONLY), 1, 1)",
    "utime": "import os\nos.utime('{tmp}/keep.txt', (0, 0))",
    "setxattr": "import os\nos.setxattr('{tmp}/keep.txt', 'user.mark', b'2')",
    "removexattr": "import os\nos.removexattr('{tmp}/keep.txt', 'user.mark')",
    "mknod": "import os, stat\nos.mknod('{tmp}/node', stat.S_IFREG | 0o644)",
    "mkfifo": "import os\nos.mkfifo('{tmp}/fifo')",
    "sqlite": "import sqlite3\nsqlite3.connect('{tmp}/db.sqlite').execute('create table t(x int)')",
    "immutable flag": "import fcntl, os, struct\nfd = os.open('{tmp}/keep.txt', os.O_RDONLY)\n"
                      "fcntl.ioctl(fd, 0x40086602, struct.pack('i', 0x10))",
    "immutable program": "import fcntl, os, struct\nfd = os.open('program.py', os.O_RDONLY)\n"
                         "fcntl.ioctl(fd, 0x40086602, struct.pack('i', 0x10))",
    "fork": "import os\nos.fork()",
    "fork bomb": "import os\nwhile True:\n    os.fork()",
    "subprocess": "import subprocess\nsubprocess.run(['rm', '-rf', '{tmp}'])",
    "os.system": "import os\nassert os.system('rm -rf {tmp}') == 0",
    "fork_exec": "import _posixsubprocess, os\n_posixsubprocess.fork_exec(['/bin/sh', '-c', 'rm -rf {tmp}'], "
                 "[b'/bin/sh'], True, (), None, None, -1, -1, -1, -1, -1, -1, *os.pipe(), False, False, -1, "
                 "None, None, -1, -1, None, False)",  # (Python 3.11's 23 arguments)
    "multiprocessing spawn": "import multiprocessing as mp, shutil\np = mp.get_context('spawn').Process("
                             "target=shutil.rmtree, args=('{tmp}',))\np.start()\np.join()",
    "posix_spawn": "import os\nos.posix_spawn('/bin/rm', ['rm', '-rf', '{tmp}'], {{}})",
    "setsid child": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(0.2)\n"
                    "    open('{tmp}/late.txt', 'w').write('x')",
    "ctypes system": "import ctypes\nassert ctypes.CDLL(None).system(b'rm -rf {tmp}') == 0",
    "kill the scorer": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    "kill its group": "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
    "pidfd signal": "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)",
    "limit the scorer": "import os, resource\nresource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (3, 3))",
    "raise own limits": "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
    "ptrace": "import ctypes, os\nassert ctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0) == 0",
    "socket": "import socket\nsocket.create_connection(('127.0.0.1', {port})).send(b'x')",
    "raw socket": "import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))",
    "udp": "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {port}))",
    "fill the disk": "for i in range(20):\n    open(f'big{{i}}', 'wb').write(b'x' * (15 << 20))",
    "many files": "for i in range(100000):\n    open(f'f{{i}}', 'w').write('x' * 4096)",
    "infinite loop": "while True:\n    pass",
    "sleep": "import time\ntime.sleep(60)",
    "huge allocation": "x = bytearray(64 * 2**30)",
    "growing allocation": "x = []\nwhile True:\n    x.append(bytearray(2**24))",
    "thread bomb": "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()",
    "output flood": "while True:\n    print('x' * 10000)",
}


@needs_jail
@pytest.mark.slow
@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_program_is_contained(name, host):
    tmp, port = host
    program = HOSTILE[name].format(tmp=tmp, port=port) + "\ndef f():\n    return 'right'\n"
    result = sandbox.run(program, "assert f() == 'right'\n", timeout=2, memory_mb=512)
    assert not result.passed, result.output  # every attempt fails inside (raises): the program does not load


@needs_jail
def test_the_environment_is_empty(monkeypatch):
    monkeypatch.setenv("DLLMQ_SECRET", "s3cr3t-token")
    result = sandbox.run("import os\nENV = dict(os.environ)\n", "assert set(ENV) <= {'LC_CTYPE'}\n")
    assert result.passed and "s3cr3t" not in result.output  # LC_CTYPE is Python's own locale coercion (PEP 538)


@needs_jail
def test_parallel_runs_keep_their_own_folders():
    program = "import os\nopen('f.txt', 'w').write('x')\nN = len(os.listdir('.'))\n"  # program.py, f.txt
    results = []
    threads = [threading.Thread(target=lambda: results.append(sandbox.run(program, "assert N == 2\n")))
               for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(results) == 8 and all(r.passed for r in results)


def test_a_machine_without_the_walls_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(sandbox.platform, "machine", lambda: "aarch64")
    sandbox.unavailable.cache_clear()
    try:
        assert sandbox.unavailable() == "sandbox: needs Linux on x86_64 (its seccomp filter is written for it), " \
                                        "not linux aarch64"
        with pytest.raises(E.InputError, match="^sandbox: needs Linux on x86_64"):
            E.code_task("humaneval")(None, None, E.Args(allow_code_exec=True), "cpu")
    finally:
        monkeypatch.undo()
        sandbox.unavailable.cache_clear()


if __name__ == "__main__":  # the full oracle: python tests/test_sandbox.py TASKS (data/tasks' layout, full files)
    full = E.Args(data_dir=sys.argv[1])
    tasks, programs = E.read_jsonl(os.path.join(sys.argv[1], "humaneval", "HumanEval.jsonl.gz")), \
        E.humaneval_programs(full)
    good = sum(sandbox.run(*make(t["canonical_solution"])).passed for t, (_, _, make) in zip(tasks, programs,
                                                                                             strict=True))
    bad = sum(sandbox.run(*make("    pass\n")).passed for _, _, make in programs)
    print(f"HumanEval: {good}/{len(tasks)} canonical solutions pass, {bad}/{len(tasks)} `pass` stubs pass")
    rows = {r["task_id"]: r for r in E.read_jsonl(os.path.join(sys.argv[1], "mbpp", "mbpp.jsonl"))}
    ids, programs = [i for i in range(11, 511) if i in rows], E.mbpp_programs(full)
    good = [i for i, (_, _, make) in zip(ids, programs, strict=True) if sandbox.run(*make(rows[i]["code"])).passed]
    print(f"MBPP: {len(good)}/{len(ids)} reference solutions pass; not: {sorted(set(ids) - set(good))}")
