"""sandbox.py: the task's reference solutions pass, broken ones fail, and hostile programs leave the host untouched."""
import os
import signal
import socket
import sys
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # also run as a script: python tests/test_sandbox.py HumanEval.jsonl.gz
import eval as E  # noqa: E402
import sandbox  # noqa: E402

ARGS = E.Args(data_dir=os.path.join(ROOT, "data", "tasks"))


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_stubs_fail():
    """The oracle of the code scorer (the full 164 are checked by `python tests/test_sandbox.py`)."""
    tasks = E.read_jsonl(os.path.join(ARGS.data_dir, "humaneval", "HumanEval.jsonl.gz"))
    programs = E.humaneval_programs(ARGS)
    assert all(sandbox.run(make(t["canonical_solution"])).passed for t, (_, make) in zip(tasks, programs, strict=True))
    assert not any(sandbox.run(make("    pass\n")).passed for _, make in programs)


def test_mbpp_reference_code_passes_and_wrong_code_fails():
    rows = {r["task_id"]: r for r in E.read_jsonl(os.path.join(ARGS.data_dir, "mbpp", "mbpp.jsonl"))}
    programs = E.mbpp_programs(ARGS)
    assert len(programs) == 20 and "[BEGIN]" in programs[0][0] and programs[0][0].count("[DONE]") == 3
    assert all(sandbox.run(make(rows[11 + i]["code"])).passed for i, (_, make) in enumerate(programs))
    assert not sandbox.run(programs[0][1]("def remove_Occ(s, ch):\n    return s\n")).passed


@pytest.fixture
def host(tmp_path):
    """A file and a folder outside the sandbox, and a listening socket: none may be touched."""
    (tmp_path / "keep.txt").write_text("precious")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inner.txt").write_text("precious")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    yield tmp_path, server.getsockname()[1]
    try:
        conn, _ = server.accept()
        conn.close()
        raise AssertionError("a sandboxed program opened a connection to the host")
    except TimeoutError:
        pass
    server.close()
    assert (tmp_path / "keep.txt").read_text() == "precious" and (tmp_path / "dir" / "inner.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "keep.txt"]


HOSTILE = {
    "fork bomb": "import os\nwhile True:\n    os.fork()",
    "infinite loop": "while True:\n    pass",
    "sleep": "import time\ntime.sleep(60)",
    "huge allocation": "x = bytearray(64 * 2**30)",
    "growing allocation": "x = []\nwhile True:\n    x.append(bytearray(2**24))",
    "thread bomb": "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()",
    "write outside": "open('{tmp}/evil.txt', 'w').write('x')",
    "append to host file": "open('{tmp}/keep.txt', 'a').write('x')",
    "delete outside": "import os\nos.remove('{tmp}/keep.txt')",
    "rmtree outside": "import shutil\nshutil.rmtree('{tmp}/dir')",
    "rename outside": "import os\nos.rename('{tmp}/keep.txt', '{tmp}/moved.txt')",
    "chmod outside": "import os\nos.chmod('{tmp}/keep.txt', 0)",
    "escape by chdir": "import os\nos.chdir('{tmp}')\nopen('evil.txt', 'w').write('x')",
    "escape by symlink": "import os\nos.symlink('{tmp}/keep.txt', 'link')\nopen('link', 'w').write('x')",
    "socket": "import socket\nsocket.create_connection(('127.0.0.1', {port})).send(b'x')",
    "raw socket module": "import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))",
    "subprocess": "import subprocess\nsubprocess.run(['rm', '-rf', '{tmp}'])",
    "os.system": "import os\nos.system('rm -rf {tmp}')",
    "ctypes": "import ctypes\nctypes.CDLL(None).system(b'rm -rf {tmp}')",
    "kill the parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    "raise own limits": "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
    "output flood": "while True:\n    print('x' * 10000)",
    "exit early with success": "import sys\nsys.exit(0)",
    "hard exit with success": "import os\nos._exit(0)",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_program_is_contained(name, host):
    tmp, port = host
    result = sandbox.run(HOSTILE[name].format(tmp=tmp, port=port), timeout=3, memory_mb=512)
    assert not result.passed


def test_environment_is_empty(monkeypatch):
    monkeypatch.setenv("DLLMQ_SECRET", "s3cr3t-token")
    result = sandbox.run("import os\nprint(dict(os.environ))\nassert set(os.environ) <= {'LC_CTYPE'}")
    assert result.passed and "s3cr3t" not in result.output  # LC_CTYPE is Python's own locale coercion (PEP 538)


def test_parallel_runs_keep_their_own_directories():
    code = "import os\nopen('f.txt', 'w').write(str(os.getpid()))\nassert len(os.listdir('.')) == 3\n"  # + program, out
    results = []
    threads = [threading.Thread(target=lambda: results.append(sandbox.run(code))) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(r.passed for r in results)


def test_no_sandboxed_process_outlives_its_run():
    sandbox.run("import time\ntime.sleep(30)", timeout=1)
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if "dllmq-sandbox-" in os.readlink(f"/proc/{pid}/cwd"):
                left.append(pid)
        except OSError:
            pass
    assert not left
    assert signal.getsignal(signal.SIGINT) is not None  # this process is still alive and well


if __name__ == "__main__":  # the full oracle: python tests/test_sandbox.py /path/to/HumanEval.jsonl.gz
    full = E.Args(data_dir=os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[1]))))
    tasks, programs = E.read_jsonl(sys.argv[1]), E.humaneval_programs(full)
    good = sum(sandbox.run(make(t["canonical_solution"])).passed for t, (_, make) in zip(tasks, programs, strict=True))
    bad = sum(sandbox.run(make("    pass\n")).passed for _, make in programs)
    print(f"HumanEval: {good}/{len(tasks)} canonical solutions pass, {bad}/{len(tasks)} `pass` stubs pass")
