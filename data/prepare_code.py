"""
The adaptation corpus of mini-Dream-0.5B (tools/gguf_to_dream.py, then train.py --init_from): Python source code
from a CPython standard library plus the prose of the tiny models' corpus, tokenized with the Qwen2.5 / Dream tokenizer
in data/qwen2.5/.

    python data/prepare_code.py                        # this interpreter's standard library and data/corpus
    python data/prepare_code.py --stdlib /tmp/Lib --corpus /tmp/corpus --out /tmp/tokens

Sources: every *.py file under --stdlib (site-packages excluded; the PSF licence), and the corpus's wiki_train
(CC BY-SA), python_docs (PSF), austen and bible_web (public domain). HumanEval, MBPP and GSM8K text is never read.
A fixed 2% of the source files (by a hash of their path) is held out: heldout_code.bin is never trained on and is
what the converter's causal check and the validation loss read.
Writes to --out: train.bin, val.bin (1% of the training documents), heldout_code.bin, all uint32 token ids with
documents separated by <|endoftext|>, and meta.json (dtype, sources, token counts) which train.py reads.
"""
import argparse
import gzip
import json
import os
import random
import sys
import sysconfig
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "data", "qwen2.5")
PROSE = ["wiki_train", "python_docs", "austen", "bible_web"]
EOS = "<|endoftext|>"


def is_heldout_file(relpath):
    return zlib.crc32(relpath.encode()) % 50 == 0


def source_files(stdlib):
    """Sorted paths (relative to stdlib) of the *.py files of a standard library, site-packages left out."""
    out = []
    for d, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(x for x in dirs if x not in ("site-packages", "dist-packages", "__pycache__"))
        out += [os.path.relpath(os.path.join(d, f), stdlib) for f in sorted(files) if f.endswith(".py")]
    return out


def read_code(stdlib, heldout):
    """The text of each kept (or, heldout=True, each held-out) source file; undecodable files are skipped."""
    texts = []
    for rel in source_files(stdlib):
        if is_heldout_file(rel) != heldout:
            continue
        try:
            with open(os.path.join(stdlib, rel), encoding="utf-8") as f:
                texts.append(f.read())
        except (UnicodeDecodeError, OSError):
            pass
    return texts


def read_prose(corpus):
    """Documents of the prose sources (one per blank-line-separated block, as build_corpus.py writes them)."""
    docs = []
    for name in PROSE:
        path = os.path.join(corpus, f"{name}.txt.gz")
        if not os.path.isfile(path):
            sys.exit(f"error: --corpus: {path} not found (python data/corpus.py builds the corpus from public "
                     "packages)")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            docs += [d for d in f.read().split("\n\n") if d.strip()]
    return docs


def read_tokenizer(folder):
    """The tokenizers.Tokenizer of folder's tokenizer.json, or of tokenizer.json.gz (how data/qwen2.5 keeps it)."""
    from tokenizers import Tokenizer
    path = os.path.join(folder, "tokenizer.json")
    if os.path.isfile(path):
        return Tokenizer.from_file(path)
    if not os.path.isfile(path + ".gz"):
        sys.exit(f"{folder}: no tokenizer.json or tokenizer.json.gz (--tokenizer)")
    with gzip.open(path + ".gz", "rt", encoding="utf-8") as f:
        return Tokenizer.from_str(f.read())


def tokenize(tok, docs, eos_id):
    """One uint32 stream: each document's ids followed by <|endoftext|>."""
    ids = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids += enc.ids + [eos_id]
    return np.asarray(ids, dtype=np.uint32)


def write(path, arr):
    arr.tofile(path + ".tmp")
    os.replace(path + ".tmp", path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"],
                   help="standard library folder to read (default: this interpreter's)")
    p.add_argument("--corpus", default=os.path.join(ROOT, "data", "corpus"),
                   help="folder with the prose sources (*.txt.gz, as data/corpus.py writes them); '' = code "
                   "only (default: data/corpus, in the repository)")
    p.add_argument("--tokenizer", default=TOKENIZER,
                   help="folder with tokenizer.json(.gz) (default: data/qwen2.5, in the repository)")
    p.add_argument("--out", default=os.path.join(ROOT, "data", "tokens-qwen"),
                   help="output folder (default: data/tokens-qwen, in the repository)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split (default: 0)")
    a = p.parse_args()
    if not os.path.isdir(a.stdlib):
        sys.exit(f"{a.stdlib}: no such folder (--stdlib)")
    tok = read_tokenizer(a.tokenizer)
    eos_id = tok.token_to_id(EOS)
    code, heldout = read_code(a.stdlib, False), read_code(a.stdlib, True)
    prose = read_prose(a.corpus) if a.corpus else []
    docs = code + prose
    random.Random(a.seed).shuffle(docs)
    n_val = max(1, len(docs) // 100)
    os.makedirs(a.out, exist_ok=True)
    counts = {}
    for name, part in [("val", docs[:n_val]), ("train", docs[n_val:]), ("heldout_code", heldout)]:
        arr = tokenize(tok, part, eos_id)
        write(os.path.join(a.out, f"{name}.bin"), arr)
        counts[name] = {"documents": len(part), "tokens": int(len(arr))}
        print(f"{name:13s} {len(part):6,d} documents {len(arr):12,d} tokens", flush=True)
    meta = {"dtype": "uint32", "stdlib": os.path.abspath(a.stdlib), "python_files": len(code) + len(heldout),
            "heldout_files": len(heldout), "prose": PROSE if a.corpus else [], "counts": counts}
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {a.out}: {counts['train']['tokens']:,} training tokens "
          f"({sum(len(t) for t in code) / 1e6:.1f} MB of code, {len(prose):,} prose documents)")


if __name__ == "__main__":
    main()
