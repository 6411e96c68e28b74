"""
Run untrusted Python (a model's completion and the task's tests) without letting it touch the host. Used by
eval.py's code scorers, only behind --allow_code_exec.

Layers, outermost first:
  - a separate interpreter (`python -I`: no user site, no PYTHON* variables) that leads its own process group
    (setsid), so the whole group is killed at the timeout;
  - a throw-away working directory and an empty environment (nothing to read in os.environ);
  - resource limits: address space (memory), CPU seconds, size of any file written, open files, no core dumps;
  - stdout/stderr go to files in that directory (capped by the file-size limit), never into this process's memory;
  - inside the child, a PEP 578 audit hook that refuses what tests never need: creating processes (fork, exec,
    spawn, subprocess, os.system), sockets, loading native libraries (ctypes), signals, changing limits, changing
    directory, and writing, deleting, renaming or re-permissioning anything outside the working directory.
A program passes when it returns normally and the harness then prints a per-run nonce; exiting early with status 0
(sys.exit, os._exit) therefore fails. Threads have no audit event before Python 3.13: the memory limit bounds them.
This contains careless or runaway code, the failure modes of model completions; it is not a boundary against an
adversary who attacks the interpreter itself.
"""
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

HARNESS = r'''
import os, resource, sys
NONCE, memory, cpu, fsize = sys.stdin.readline().split()
ROOT = os.path.realpath(os.getcwd())
os.close(0)
for res, value in ((resource.RLIMIT_AS, int(memory)), (resource.RLIMIT_CPU, int(cpu)),
                   (resource.RLIMIT_FSIZE, int(fsize)), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(res, (value, value))  # hard limits too: after the audit hook nothing may raise them
DENY = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
        "socket.", "ctypes.", "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit", "os.chdir",
        "os.fchdir", "os.chroot", "os.setuid", "os.setgid")
PATHS = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime",
         "os.symlink", "os.link", "shutil.rmtree", "shutil.move", "shutil.copyfile", "os.replace")

def inside(path):
    if isinstance(path, int):
        return True
    p = os.path.realpath(os.fsdecode(path))
    return p == ROOT or p.startswith(ROOT + os.sep)

def guard(event, args):
    if event.startswith(DENY):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and args[0] is not None and not inside(args[0]):
        mode, flags = args[1] or "r", args[2] or 0
        if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            raise PermissionError(f"sandbox: writing {args[0]} is not allowed")
    if event in PATHS and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike, int))):
        raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")

sys.addaudithook(guard)
import runpy
try:
    runpy.run_path("program.py", run_name="__main__")
except SystemExit as e:
    print(f"sandbox: the program exited ({e.code}) before finishing", file=sys.stderr)
    raise
print(NONCE, flush=True)
'''


@dataclass
class Result:
    passed: bool
    status: str   # passed, failed, timeout
    output: str   # the first few KB of stdout and stderr, for diagnosis


def run(code, timeout=10.0, memory_mb=1024, file_mb=16):
    """Run the Python source `code` in the sandbox; pass = normal return within the limits."""
    nonce = secrets.token_hex(16)
    settings = f"{nonce} {memory_mb << 20} {int(timeout) + 1} {file_mb << 20}\n"
    with tempfile.TemporaryDirectory(prefix="dllmq-sandbox-") as tmp:
        with open(os.path.join(tmp, "program.py"), "w") as f:
            f.write(code)
        with open(os.path.join(tmp, "out.txt"), "wb") as out:
            proc = subprocess.Popen([sys.executable, "-I", "-c", HARNESS], cwd=tmp, env={}, stdin=subprocess.PIPE,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.communicate(settings.encode(), timeout=timeout)
                status = "done"
            except subprocess.TimeoutExpired:
                status = "timeout"
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the program and anything it left behind
                except ProcessLookupError:
                    pass
                proc.wait()
        with open(os.path.join(tmp, "out.txt"), "rb") as f:
            head = f.read(8192).decode(errors="replace")
            f.seek(max(0, os.fstat(f.fileno()).st_size - 256))
            tail = f.read().decode(errors="replace")
    passed = status == "done" and proc.returncode == 0 and tail.rstrip().endswith(nonce)
    return Result(passed, "passed" if passed else status if status == "timeout" else "failed",
                  head.replace(nonce, "").strip())
