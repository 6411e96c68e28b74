"""
The command-line conventions of every entry script (sample.py, calibrate.py, eval.py, train.py, analyze.py) and of
the methods' own flags: a dataclass of settings becomes --flags of the same names, and bad input is one line.

    @dataclass
    class Args:
        steps: int = opt(128, "denoising steps")     # -> --steps 128, its help, its default shown in --help
    run_cli(lambda: main(parse(Args, doc=__doc__)))  # InputError -> "error: ..." on stderr, exit status 2
"""
import argparse
import sys
import types
from dataclasses import field, fields


class InputError(ValueError):
    """Bad input from the user (a file, a config key, a flag). Entry scripts print it as one line."""


def opt(default, help, group=None):
    """A dataclass field that becomes the flag --<name>: its default, its help, and the --help section it is listed
    under (a method's name for the flags a method owns)."""
    return field(default=default, metadata={"help": help, "group": group})


def parse(cls, argv=None, doc=None):
    """Each dataclass field becomes --name with the same type and default; `help` comes from field metadata."""
    p = argparse.ArgumentParser(description=doc, formatter_class=_HelpFormatter)
    sections = {}
    for f in fields(cls):
        group = f.metadata.get("group")
        where = p if group is None else sections.setdefault(group, p.add_argument_group(group))
        extra = {"nargs": "?", "const": True} if f.type is bool else {}  # `--flag` alone means true
        where.add_argument(f"--{f.name}", type=_flag_type(f.type), default=f.default,
                           help=f.metadata.get("help", ""), **extra)
    return cls(**vars(p.parse_args(argv)))


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the docstring's layout and show every flag's default."""


def _flag_type(kind):
    if kind is bool:
        return lambda s: s.lower() in ("1", "true", "yes")
    if isinstance(kind, types.UnionType):  # `int | None`: the word none gives None
        inner = next(k for k in kind.__args__ if k is not type(None))
        return lambda s: None if s.lower() == "none" else inner(s)
    return kind


def run_cli(main):
    """Run an entry script's main(); bad input prints one line `error: ...` and exits with status 2."""
    try:
        main()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
