"""
The house, measured: the project's import graph (imports inside functions included) checked against its layers,
and the longest files and functions, against the sizes DESIGN aims at. tests/test_house.py holds the graph to it.

    python tools/house.py        # layers and circles, then the longest files and functions

Layers, bottom to top. A module imports from its own layer or the ones below; sideways only where the layer allows it
(kernel files share kernels/shims.py; entry scripts call each other) or WAIVERS says why:
  bottom    cli.py (flags, one-line errors), quantizers/format.py (grids, packing), quantizers/hadamard.py,
            sandbox.py, stats.py (paired tests), data/prepare.py, data/corpus.py: they import nothing of the project
  kernels   kernels/*.py: Triton kernels and their twins
  layers    quantizers/core.py: the quantized layers and the one dispatch; quantizers/engines.py: other engines'
            checkpoint formats (GPTQ v1, compressed-tensors) on plain tensors
  model     model.py (it rebuilds quantized layers when it loads a quantized checkpoint)
  walker    quantizers/walk.py: the calibration walker and statistics
  methods   every quantizers/*.py that declares KIND
  scripts   everything else: sample, train, eval, calibrate, analyze, bench, tools/, results/, data/prepare_code
"""
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ["bottom", "kernels", "layers", "model", "walker", "methods", "scripts"]
FIXED = {"cli": "bottom", "quantizers.format": "bottom", "quantizers.hadamard": "bottom", "sandbox": "bottom",
         "stats": "bottom", "data.prepare": "bottom", "data.corpus": "bottom", "quantizers.core": "layers",
         "quantizers.engines": "layers", "model": "model", "quantizers.walk": "walker"}
SIDEWAYS = {"kernels", "scripts"}
WAIVERS = {("quantizers.dllmquant", "quantizers.gptq"): "CGQ is GPTQ on a token-weighted Hessian (the paper's Eq. 10)",
           ("quantizers.duquant", "quantizers.smoothquant"): "DuQuant's first step is SmoothQuant's smoothing"}
AIMS = {"model.py": 400, "sample.py": 250, "calibrate.py": 300, "eval.py": 400, "train.py": 300, "export.py": 250}


def modules():
    """{dotted name: path} of the project's Python files (tests excluded)."""
    found = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")) and d not in ("tests", "assets", "out"))
        for f in sorted(files):
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)
                found[rel[:-3].replace(os.sep, ".")] = rel
    return found


def imports(path, known):
    """The project modules a file imports, at top level or inside functions: {module: first line}."""
    tree, out = ast.parse(open(os.path.join(ROOT, path)).read()), {}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in known:
                out.setdefault(name, node.lineno)
    return out


def layer(name, path):
    if name in FIXED:
        return FIXED[name]
    if name.startswith("kernels."):
        return "kernels"
    if name.startswith("quantizers.") and "\nKIND = " in open(os.path.join(ROOT, path)).read():
        return "methods"
    return "scripts"


def graph():
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}, {n: layer(n, p) for n, p in known.items()}


def violations(edges, layers):
    """Imports that go up a layer, or sideways where the layer does not allow it (and no waiver says why)."""
    bad = []
    for a, targets in edges.items():
        for b, line in targets.items():
            la, lb = LAYERS.index(layers[a]), LAYERS.index(layers[b])
            if (lb > la or (lb == la and layers[a] not in SIDEWAYS)) and (a, b) not in WAIVERS and a != b:
                bad.append(f"{a} ({layers[a]}) imports {b} ({layers[b]}) at line {line}")
    return bad


def circles(edges):
    """Every import circle, as a list of modules (depth-first search)."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in edges.get(node, {}):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"
    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def longest(n=10):
    """The n longest files and the functions of more than 40 lines, with their line counts."""
    files, funcs = [], []
    for _name, path in modules().items():
        text = open(os.path.join(ROOT, path)).read()
        files.append((text.count("\n"), path))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 40:
                funcs.append((node.end_lineno - node.lineno + 1, f"{path}:{node.lineno} {node.name}"))
    return sorted(files, reverse=True)[:n], sorted(funcs, reverse=True)


def main():
    edges, layers = graph()
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports between them (inside functions too)")
    for name in sorted(edges, key=lambda m: (LAYERS.index(layers[m]), m)):
        print(f"  {layers[name]:8} {name:28} -> {', '.join(sorted(edges[name])) or '-'}")
    bad, loops = violations(edges, layers), circles(edges)
    print("\n".join(["against the layers:", *bad] if bad else ["every import goes down a layer (or sideways where "
                                                                  "allowed)"]))
    print("\n".join(["circles:", *map(" -> ".join, loops)] if loops else ["no circles"]))
    files, funcs = longest()
    print("\nlongest files:\n" + "\n".join(f"  {n:5d}  {p}" + (f"  (aim {AIMS[p]})" if p in AIMS else "")
                                           for n, p in files))
    print("functions over 40 lines:\n" + "\n".join(f"  {n:5d}  {f}" for n, f in funcs))
    return 1 if bad or loops else 0


if __name__ == "__main__":
    sys.exit(main())
