"""
The command-line conventions of every entry script (sample.py, calibrate.py, eval.py, train.py, analyze.py) and of
the methods' own flags: a dataclass of settings becomes --flags of the same names, and bad input is one line.

    @dataclass
    class Args:
        steps: int = opt(128, "denoising steps")     # -> --steps 128, its help, its default shown in --help
    run_cli(lambda: main(parse(Args, doc=__doc__)))  # InputError -> "error: ..." on stderr, exit status 2
"""
import argparse
import ctypes
import os
import shutil
import sys
import types
from dataclasses import field, fields

ROOT = os.path.dirname(os.path.abspath(__file__))


class InRepo(str):
    """A default path inside the repository: the value is absolute, so a script finds it from any folder, and
    --help shows it relative to the repository. A path given on the command line is the user's, relative to the
    working folder as usual."""

    def __new__(cls, relative):
        path = super().__new__(cls, os.path.join(ROOT, relative))
        path.relative = relative
        return path


class InputError(ValueError):
    """Bad input from the user (a file, a config key, a flag). Entry scripts print it as one line."""


def opt(default, help, group=None):
    """A dataclass field that becomes the flag --<name>: its default, its help, and the --help section it is listed
    under (a method's name for the flags a method owns)."""
    return field(default=default, metadata={"help": help, "group": group})


def parse(cls, argv=None, doc=None):
    """Each dataclass field becomes --name with the same type and default (a bool: --name / --no-name); `help` comes
    from field metadata."""
    p = argparse.ArgumentParser(description=doc, formatter_class=_HelpFormatter)
    sections = {}
    for f in fields(cls):
        group = f.metadata.get("group")
        where = p if group is None else sections.setdefault(group, p.add_argument_group(group))
        kind = {"action": argparse.BooleanOptionalAction} if f.type is bool else {"type": _flag_type(f.type)}
        where.add_argument(f"--{f.name}", default=f.default, help=f.metadata.get("help", ""), **kind)
    return cls(**vars(p.parse_args(argv)))


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the docstring's layout and show every flag's default (a path in the repository as such)."""

    def _get_help_string(self, action):
        if isinstance(action.default, InRepo):
            return f"{action.help} (default: {action.default.relative}, in the repository)"
        return super()._get_help_string(action)


def _flag_type(kind):
    if isinstance(kind, types.UnionType):  # `int | None`: the word none gives None
        inner = next(k for k in kind.__args__ if k is not type(None))
        return lambda s: None if s.lower() == "none" else inner(s)
    return kind


def resolve_device(device, flag="--device"):
    """auto -> cuda when there is a GPU, else cpu; a CUDA device without CUDA is one line."""
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"{flag} {device}: no CUDA device is available here (use cpu or auto)")
    try:
        torch.device(device)
    except RuntimeError:
        raise InputError(f"{flag} {device!r} is not a device torch knows (cpu, cuda, cuda:1, ...)") from None
    return device


def check_output_file(path, flag):
    """Refuse now, before any work, an output file that could not be written (its folder is made if missing)."""
    if not path.strip():
        raise InputError(f"{flag}: the path is empty")
    if os.path.isdir(path):
        raise InputError(f"{flag} {path}: is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot make its folder ({e.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write in {parent}")


def write_text(path, text):
    """Write a text file under a temporary name, then rename it into place: never half-written, mode 0644."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.chmod(path + ".tmp", 0o644)
    os.replace(path + ".tmp", path)


def publish(partial, out):
    """Put the complete folder `partial` at `out`. When out exists the two are exchanged in one atomic step
    (renameat2 RENAME_EXCHANGE), so out is a whole checkpoint at every instant, old or new, and the old one, now at
    `partial`, is removed. Where the file system cannot exchange, out is missing for the moment between two renames,
    and the log says so."""
    if not os.path.lexists(out):
        os.rename(partial, out)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    exchange = getattr(libc, "renameat2", None)
    if exchange is not None and exchange(-100, partial.encode(), -100, out.encode(), 2) == 0:  # AT_FDCWD, EXCHANGE
        shutil.rmtree(partial)
        return
    print(f"{out}: this file system cannot exchange two folders atomically; replacing it by two renames",
          file=sys.stderr)
    os.rename(out, partial + ".old")
    os.rename(partial, out)
    shutil.rmtree(partial + ".old")


def run_cli(main):
    """Run an entry script's main(); bad input prints one line `error: ...` and exits with status 2."""
    try:
        main()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
