"""Print six HumanEval completions of a checkpoint, to see what the failures look like (run on the H100 from the
repository root: python results/mini-dream/peek.py /tmp/mini-dream; the tasks in /tmp/tasks)."""
import gzip
import json
import sys

import torch

sys.path.insert(0, ".")
from model import load, load_tokenizer  # noqa: E402
from sample import generate, pad_left  # noqa: E402

m, tok = load(sys.argv[1], torch.bfloat16, "cuda"), load_tokenizer(sys.argv[1])
tasks = [json.loads(line) for line in gzip.open("/tmp/tasks/humaneval/HumanEval.jsonl.gz", "rt")]
tasks = [tasks[i] for i in (0, 2, 7, 12, 23, 35)]
ids, mask = pad_left([tok.encode(t["prompt"], add_special_tokens=False).ids for t in tasks], m.args.pad_id)
out = generate(m, ids.cuda(), mask.cuda(), 256, 256, 32, "entropy")
for t, row in zip(tasks, out[:, ids.shape[1]:].tolist(), strict=True):
    print("=====", t["task_id"], flush=True)
    print(t["prompt"][-150:] + "<<<|>>>" + tok.decode(row)[:700])
