"""Runs several of the project's command lines in one Python process, so that torch is imported once instead of once
per command: reads a JSON list of argv lists (argv[0] a script path relative to the project) on stdin, runs each
script as __main__ with that argv, and prints a JSON list of [exit status, stderr]. An exception that escapes a
script counts as Python would count it: status 1, its traceback on stderr."""
import contextlib
import io
import json
import os
import runpy
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(argv):
    err, sys.argv = io.StringIO(), list(argv)
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(os.path.join(ROOT, argv[0]), run_name="__main__")
            status = 0
        except SystemExit as e:  # as the interpreter reads it: None is 0; sys.exit("text") prints the text, status 1
            status = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, int | None):
                print(e.code, file=sys.stderr)
        except Exception:
            traceback.print_exc()
            status = 1
    return status, err.getvalue()


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    os.chdir(ROOT)
    print(json.dumps([run(argv) for argv in json.load(sys.stdin)]))
