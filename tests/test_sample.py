"""sample.py against the reference samplers' traces, the likelihood traces, and the math of each sampling rule."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import model as M
import sample as S

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {f: M.load(f"{FIX}/{f}-tiny") for f in ("llada", "dream")}
TRACES = {f: json.load(open(f"{FIX}/{f}-tiny/sampler_trace.json")) for f in ("llada", "dream")}
CASES = [(f, c["name"]) for f in TRACES for c in TRACES[f]["cases"]]


def trace_kwargs(family, case):
    p = case["params"]
    if family == "llada":
        return dict(gen_length=p["gen_length"], steps=p["steps"], block_length=p["block_length"],
                    alg=p["remasking"], temperature=p["temperature"], cfg_scale=p["cfg_scale"])
    g = case["effective_generation_config"]  # what the reference really used (implicit top_k=50, see README §7)
    return dict(gen_length=p["max_new_tokens"], steps=g["steps"], alg=g["alg"], temperature=g["temperature"],
                top_p=g["top_p"], top_k=g["top_k"], alg_temp=g["alg_temp"], eps=g["eps"])


@pytest.mark.parametrize("device", ["cpu", *(pytest.param(d, marks=pytest.mark.gpu) for d in ("cuda", "cuda graph"))])
@pytest.mark.parametrize("family,name", CASES)
def test_matches_reference_sampler_trace(family, name, device):
    """Output and whole step-by-step history identical; ranking confidences within 1e-5. "cuda graph": every
    forward replayed from a CUDA graph (sample.py --cuda_graph)."""
    case = next(c for c in TRACES[family]["cases"] if c["name"] == name)
    history, confidence = [], []
    graph, device = device.endswith("graph"), device.split()[0]
    m = MODELS[family].to(device)
    out = S.generate(S.Graphed(m) if graph else m, torch.tensor(case["prompt"], device=device),
                     **trace_kwargs(family, case),
                     on_step=lambda i, x, conf: (history.append(x.tolist()), confidence.append(conf.cpu())))
    MODELS[family].cpu()
    assert out.tolist() == case["output"]
    assert history == case["history"]
    for step, conf in zip(case["steps"], confidence, strict=True):
        for r, row in enumerate(step["rows"]):
            got = conf[r, row["positions"]]
            assert torch.allclose(got, torch.tensor(row["confidence"]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cfg", [0.0, 0.5])
def test_matches_reference_likelihood_rounds(cfg):
    """LLaDA's MC loss on the stored masked rounds: sum over masked CE / p_mask / batch, within 1e-5 relative."""
    m = MODELS["llada"]
    for entry in [e for e in TRACES["llada"]["likelihood"] if e["cfg_scale"] == cfg]:
        seq = torch.tensor(entry["prompt"] + entry["answer"])
        for rd in entry["rounds"]:
            x, p_mask = torch.tensor(rd["perturbed_seq"]), torch.tensor(rd["p_mask_per_row"])
            masked = x == m.args.mask_id
            with torch.no_grad():
                logits = S.cfg_logits(m, x, None, len(entry["prompt"]), cfg, masked)
            ce = F.cross_entropy(logits, seq.expand_as(x)[masked], reduction="none")
            loss = (ce / p_mask[:, None].expand_as(x)[masked]).sum() / x.shape[0]
            assert abs(loss.item() / rd["round_loss"] - 1) <= 1e-5


@pytest.mark.parametrize("family,alg", [("llada", "low_confidence"), ("dream", "entropy"), ("dream", "topk_margin")])
def test_padded_batch_equals_single_prompts(family, alg):
    m, kw = MODELS[family], dict(gen_length=16, steps=8, block_length=8, alg=alg)
    prompts = [torch.randint(0, 450, (n,)) for n in (4, 9)]
    ids, mask = S.pad_left([p.tolist() for p in prompts], m.args.pad_id)
    batch = S.generate(m, ids, mask, **kw)
    for r, p in enumerate(prompts):
        assert torch.equal(batch[r, -16:], S.generate(m, p[None], **kw)[0, -16:])


def commits_per_step(m, **kw):
    counts, prev = [], None

    def on_step(i, x, conf):
        nonlocal prev
        masked = (x == m.args.mask_id).sum(1)
        counts.append(((kw["gen_length"] if prev is None else prev) - masked).tolist())
        prev = masked
    out = S.generate(m, torch.randint(0, 450, (2, 5)), on_step=on_step, **kw)
    return out, counts


def test_llada_linear_schedule_and_random_remasking():
    """LLaDA: each block's masks split evenly over its steps, remainder first (n=8, S=3: 3, 3, 2)."""
    m = MODELS["llada"]
    out, counts = commits_per_step(m, gen_length=16, steps=6, block_length=8, alg="random",
                                   generator=torch.Generator().manual_seed(3))
    assert counts == [[3, 3], [3, 3], [2, 2]] * 2 and not (out == m.args.mask_id).any()
    run = lambda: S.generate(m, torch.tensor([[7, 8, 9]]), gen_length=16, steps=6, block_length=8,  # noqa
                             alg="random", temperature=0.8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(run(), run())


def test_dream_schedule_commits_int_n_times_one_minus_s_over_t():
    m = MODELS["dream"]
    _, counts = commits_per_step(m, gen_length=32, steps=16, alg="maskgit_plus")
    t, left, expect = torch.linspace(1, 1e-3, 17), 32, []
    for i in range(16):
        n = left if i == 15 else int(torch.tensor(float(left)) * (1 - t[i + 1] / t[i]))
        expect.append([n, n])
        left -= n
    assert counts == expect and expect[0] == [1, 1]  # 32 * (1 - t1/t0) = 1.998 -> 1, as in the trace


@pytest.mark.parametrize("alg,extra", [("origin", {}), ("entropy", {"alg_temp": 0.5}),
                                       ("maskgit_plus", {"temperature": 0.7, "top_p": 0.9, "top_k": 20})])
def test_stochastic_dream_paths_fill_every_mask_and_repeat_with_a_seed(alg, extra):
    m = MODELS["dream"]
    run = lambda: S.generate(m, torch.tensor([[3, 4, 5, 6]]), gen_length=24, steps=8, alg=alg, **extra,  # noqa
                             generator=torch.Generator().manual_seed(0))
    out = run()
    assert not (out == m.args.mask_id).any() and torch.equal(out, run())


def test_gumbel_max_samples_softmax_of_logits_over_temperature():
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]]).repeat(40000, 1)
    x0, conf = S.propose(logits, "low_confidence", 0.5, None, None, torch.Generator().manual_seed(0))
    freq = torch.bincount(x0, minlength=4) / len(x0)
    assert torch.allclose(freq, torch.softmax(logits[0] / 0.5, -1), atol=0.01)
    assert torch.allclose(conf, torch.softmax(logits, -1).gather(-1, x0[:, None])[:, 0])  # prob. at T=1


def test_top_p_and_top_k_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    kept = lambda **kw: (S.filter_logits(logits, 0.0, **kw) > -1e30)[0].nonzero()[:, 0].tolist()  # noqa
    assert kept(top_p=0.65, top_k=None) == [1, 3]          # 0.4 + 0.3 reaches 0.65
    assert kept(top_p=0.7, top_k=None) == [1, 3]           # exactly reached: the next token is not needed
    assert kept(top_p=0.71, top_k=None) == [1, 3, 4]
    assert kept(top_p=0.01, top_k=None) == [1]             # always at least one token
    assert kept(top_p=None, top_k=2) == [1, 3]
    assert kept(top_p=0.95, top_k=3) == [1, 3, 4]


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits at each position the test chooses (vocab 10, [MASK] 9, EOS 8, EoT 7)."""
    def __init__(self, probs):
        super().__init__()
        self.args = M.ModelArgs("llada", 8, 1, 1, 1, 8, 10, 1e-5, 1e4, False, 64, mask_id=9, eos_id=8, eot_id=7)
        self.logits = torch.log(torch.tensor(probs))

    def forward(self, x, attn_mask=None, select=None):
        out = self.logits[None, :x.shape[1]].expand(x.shape[0], -1, -1)
        return out if select is None else out[select]


def eos_test_model():
    probs = [[0.1] * 10 for _ in range(6)]  # positions 0-1 prompt; 2-3 predict EOS / EoT at 0.9, 4-5 token 1 at 0.6
    for pos, tok, p in [(2, 8, 0.9), (3, 7, 0.9), (4, 1, 0.6), (5, 1, 0.6)]:
        probs[pos] = [(1 - p) / 9] * 10
        probs[pos][tok] = p
    return FixedLogits(probs)


def commit_order(**kw):
    order = []
    S.generate(eos_test_model(), torch.tensor([[0, 0]]), gen_length=4, steps=4, **kw,
               on_step=lambda i, x, conf: order.extend(set(torch.nonzero(x[0] != 9)[:, 0].tolist()) - {0, 1}
                                                       - set(order)))
    return order


def test_eos_options_rank_end_tokens_last_and_forbid_eos():
    assert sorted(commit_order()[:2]) == [2, 3]  # most confident first: the EOS / EoT predictions
    assert sorted(commit_order(confidence_eos_eot_inf=True)[:2]) == [4, 5]  # now ranked last
    out = S.generate(eos_test_model(), torch.tensor([[0, 0]]), gen_length=4, steps=4, logits_eos_inf=True)
    assert 8 not in out[0].tolist() and out[0, 3] == 7  # EOS never predicted; EoT still is


def test_chat_templates_use_the_tokenizers_special_tokens(tmp_path):
    from test_model import write_tokenizer
    words = ["<unk>", "hi", "user", "assistant", "system", "You", "are", "a", "helpful", "assistant.", "\n"]
    special = ["<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im_start|>",
               "<|im_end|>"]
    tok = write_tokenizer(tmp_path, words, special, {})
    sid = {s: tok.token_to_id(s) for s in special}
    args = S.Args(prompt="  hi ", chat=True)
    llada = S.encode_prompts(args, "llada", tok, sid["<|startoftext|>"])[0]
    assert llada[:2] == [sid["<|startoftext|>"], sid["<|start_header_id|>"]] and sid["<|eot_id|>"] in llada
    dream = S.encode_prompts(args, "dream", tok, None)[0]
    assert dream[0] == sid["<|im_start|>"] and dream.count(sid["<|im_end|>"]) == 2
    assert S.render(tok, torch.tensor([1, 500, 1]), 500) == "hi_hi"


BAD = [
    (dict(gen_length=30, block_length=8), "--gen_length 30 must be a positive multiple of --block_length 8"),
    (dict(gen_length=32, block_length=8, steps=6), "--steps 6 must be a positive multiple of the number of blocks"),
    (dict(gen_length=250, block_length=250, steps=250), "exceeds the model's context of 256 tokens"),
    (dict(alg="greedy"), "--alg 'greedy' is unknown"),
    (dict(top_k=5), "--top_k applies to Dream's algorithms"),
]


@pytest.mark.parametrize("kwargs,message", BAD)
def test_bad_settings_give_one_clear_line(kwargs, message):
    with pytest.raises(M.InputError, match=message.replace("(", r"\(")):
        S.generate(MODELS["llada"], torch.tensor([[1, 2, 3, 4, 5, 6, 7]]), **{"gen_length": 32, **kwargs})


def test_prompt_with_the_mask_token_is_refused():
    with pytest.raises(M.InputError, match="contains the mask token id 500"):
        S.generate(MODELS["llada"], torch.tensor([[1, 500, 3]]), gen_length=8, steps=8)


@pytest.mark.gpu
@pytest.mark.parametrize("which,kw", [("llada", {"method": "quarot", "bits": 4}),
                                      ("dream", {"method": "rtn", "wbits": 8, "abits": 8, "fp8": True})])
def test_cuda_graph_replays_a_quantized_model_exactly(tmp_path, which, kw):
    """A quantized tiny model (its layers on the Triton kernels, blocks compiled) in bf16: a padded batch with
    classifier-free guidance (two graphs: the batch and its doubled copy) gives the same canvas and confidences at
    every step replayed from CUDA graphs as launched from Python."""
    import calibrate as C
    m = C.calibrate(C.Args(model=os.path.join(ROOT, "assets", f"tiny-{which}"), out=str(tmp_path / "q"), nsamples=4,
                           seqlen=32, nll_windows=0, device="cpu", **kw)).to("cuda", torch.bfloat16)
    for block in m.blocks:
        block.compile()
    ids, mask = S.pad_left([[5, 6, 7, 8, 9], [11, 12]], m.args.pad_id or 0)
    runs = []
    for model in (m, S.Graphed(m)):
        steps = []
        S.generate(model, ids.cuda(), mask.cuda(), gen_length=16, steps=8, block_length=8, cfg_scale=0.5,
                   alg="low_confidence" if which == "llada" else "entropy",
                   on_step=lambda i, x, conf: steps.append((x.clone(), conf.clone())))  # noqa: B023
        runs.append(steps)
    assert len(runs[1]) == 8
    for (x, conf), (gx, gconf) in zip(*runs, strict=True):
        assert torch.equal(x, gx) and torch.equal(conf, gconf)


@pytest.mark.slow
def test_cuda_graph_needs_a_gpu():
    r = subprocess.run([sys.executable, "sample.py", "--model", f"{FIX}/llada-tiny", "--prompt_ids", "1,2,3",
                        "--device", "cpu", "--cuda_graph"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].endswith("--cuda_graph needs a CUDA device, "
                                                                            "not --device cpu")


@pytest.mark.slow
def test_cli_prints_the_canvas_at_every_step():
    r = subprocess.run([sys.executable, "sample.py", "--model", f"{FIX}/llada-tiny", "--prompt_ids", "1,2,3",
                        "--gen_length", "8", "--steps", "4", "--block_length", "8", "--show_steps"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
    lines = r.stdout.strip().splitlines()
    assert [s.split("|")[0].split() for s in lines[:4]] == [["step", str(i)] for i in (1, 2, 3, 4)]
    assert lines[0].count("_") == 6 and "_" not in lines[4] and len(lines[4].split()) == 8
