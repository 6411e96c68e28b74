"""eval.py: answer extraction on gold data, the likelihood estimators against exact values and the reference,
and the interface (side-by-side models, JSON, determinism, clear errors)."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import eval as E
import model as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = os.path.join(ROOT, "data", "tasks")
TINY = {f: os.path.join(ROOT, "assets", f"tiny-{f}") for f in ("llada", "dream")}


def test_gsm8k_extraction_scores_gold_answers_and_rejects_shifted_ones():
    """The full test set (1,319) was also checked once: 100% strict and flexible on gold (see the closing note)."""
    rows = E.read_jsonl(os.path.join(TASKS, "gsm8k", "test.jsonl"))
    gold = [E.gsm8k_extract(r["answer"])[0] for r in rows]
    assert all(g is not None and g.lstrip("-").replace(".", "").isdigit() for g in gold)
    assert [E.gsm8k_extract(r["answer"]) for r in rows] == [(g, g) for g in gold]  # strict and flexible agree
    shifted = [E.gsm8k_extract(r["answer"]) for r in rows[1:] + rows[:1]]  # each item gets its neighbour's answer
    assert len(set(gold)) == len(gold) - 1  # the sample's answers differ from their neighbours' ...
    assert sum(s == g or f == g for (s, f), g in zip(shifted, gold, strict=True)) == 0  # ... so none may score
    assert E.gsm8k_extract("so 3 + 4 = 7.\nThe answer is $1,234.") == (None, "1234")
    assert E.gsm8k_extract("#### -12\nQuestion: 5") == ("-12", "5")


class InputBlind(torch.nn.Module):
    """Logits that ignore the input: the masked-diffusion likelihood then has the exact value sum_i log p_i."""
    def __init__(self, family, T, V=12):
        super().__init__()
        self.args = M.ModelArgs(family, 8, 1, 1, 1, 8, V, 1e-5, 1e4, family == "dream", 64, mask_id=V - 1,
                                eos_id=V - 2)
        self.logits = torch.randn(T, V, generator=torch.Generator().manual_seed(3)) * 2
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, x, attn_mask=None, select=None):
        out = self.logits[None, :x.shape[1]].expand(x.shape[0], -1, -1)
        return out if select is None else out[select]


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_likelihood_estimator_is_unbiased_and_exact_for_one_token(family):
    m = InputBlind(family, 16)
    prefix, target = [1, 2, 3, 4], [5, 6, 7, 8, 9, 0]
    logp = F.log_softmax(m.logits, -1)
    exact = sum(logp[len(prefix) + i, t] for i, t in enumerate(target)).item()
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([E.loglikelihood(m, prefix, target, E.Args(mc_num=64, batch_size=64), gen)
                          for _ in range(200)])
    assert abs(draws.mean().item() - exact) < 4 * draws.std().item() / 200 ** 0.5
    one = E.loglikelihood(m, prefix, [7], E.Args(mc_num=64), gen)
    assert one == pytest.approx(logp[len(prefix), 7].item(), abs=1e-6)  # one forward, no Monte Carlo


def test_llada_round_loss_matches_the_reference_on_its_stored_masks():
    m = M.load(os.path.join(ROOT, "tests", "fixtures", "llada-tiny"))
    with open(os.path.join(ROOT, "tests", "fixtures", "llada-tiny", "sampler_trace.json")) as f:
        entry = next(e for e in json.load(f)["likelihood"] if e["cfg_scale"] == 0)
    P, seq = len(entry["prompt"]), torch.tensor(entry["prompt"] + entry["answer"])
    for rd in entry["rounds"]:
        x = torch.tensor(rd["perturbed_seq"])
        masked = (x == m.args.mask_id)[:, P:]
        p = torch.tensor(rd["p_mask_per_row"])[:, None].expand_as(masked)
        with torch.no_grad():
            assert E.round_loss(m, seq, masked, p, P).item() == pytest.approx(rd["round_loss"], rel=1e-5)


def test_mask_draws_follow_each_reference():
    gen = torch.Generator().manual_seed(0)
    masked, p = E.llada_masks(8, 12, gen)  # stratified counts, spread over 1..12, p = count / L
    counts = masked.sum(1)
    assert torch.equal(p[:, 0], counts / 12) and counts.min() >= 1 and len(set(counts.tolist())) >= 6
    masked, p = E.dream_masks(4000, 10, gen)
    assert not masked[:, -1].any()  # the appended EOS is never masked
    t = (p[:, 0] - 1e-3) / (1 - 1e-3)
    gaps = (t[1:4] - t[:3]) % 1
    assert torch.allclose(gaps, torch.full((3,), 1 / 4000), atol=1e-6)  # stratified t = (u + i/b) mod 1
    assert abs(masked[:, :-1].float().mean().item() - p.mean().item()) < 0.01


@pytest.mark.slow
def test_models_side_by_side_json_and_determinism(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = E.Args(model=f"{TINY['llada']},{TINY['dream']}", tasks="arithmetic,wiki_nll,arc_easy", limit=4, mc_num=4,
                  mc=2, out=str(out), device="cpu")
    records = E.evaluate(args)
    table = capsys.readouterr().out
    assert "| task | metric | tiny-llada (reference) | tiny-dream |" in table and "| arc_easy | acc_norm |" in table
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(records)) and len(saved) == 2 * 4 + 2  # + arithmetic's path agreement
    assert {r["model_hash"] for r in saved} == {E.model_hash(TINY["llada"]), E.model_hash(TINY["dream"])}
    assert all({"task", "metric", "value", "stderr", "n", "settings"} <= r.keys() for r in saved)
    again = E.evaluate(E.Args(**{**args.__dict__, "out": ""}))
    assert [r["value"] for r in again] == [r["value"] for r in records]


BAD = [({"tasks": "mmlu"}, "unknown task 'mmlu'"), ({"tasks": "humaneval"}, "add --allow_code_exec"),
       ({"tasks": "gsm8k", "data_dir": "/nonexistent"}, "gsm8k/train.jsonl: not found"),
       ({"dtype": "int8"}, "--dtype 'int8' is unknown")]


@pytest.mark.parametrize("kw,message", BAD)
def test_bad_input_gives_one_clear_line(kw, message):
    with pytest.raises(M.InputError, match=message):
        E.evaluate(E.Args(**{"limit": 2, "device": "cpu", **kw}))


@pytest.mark.slow
def test_wiki_nll_scores_the_same_masks_at_every_batch_size():
    """The masks once followed --batch_size (one generator drawn batch by batch), so a score at batch 41 and one at
    the default 32 saw different masks. Now every batch size must give the value the default batch size gave
    before: that value is recomputed here the old way, batch by batch from one generator."""
    m, tok = M.load(TINY["dream"]), M.load_tokenizer(TINY["dream"])
    got = [E.wiki_nll(m, tok, E.Args(limit=37, mc=2, batch_size=b, seq_len=64), "cpu")["nll"]["value"]
           for b in (32, 5, 64)]
    windows = E.wiki_windows(tok, m, 64)[:37]
    gen, per_window = torch.Generator().manual_seed(E.Args().seed), torch.zeros(37)
    with torch.no_grad():
        for i in range(0, 37, 32):
            for _ in range(2):
                per_window[i:i + 32] += E.diffusion_loss(m, windows[i:i + 32], 1e-3, gen)
    assert got[0] == pytest.approx((per_window / 2).mean().item(), rel=1e-6)
    assert got[1] == pytest.approx(got[0], rel=1e-6) and got[2] == pytest.approx(got[0], rel=1e-6)


def test_completions_batched_by_length_come_back_in_prompt_order():
    """completions() batches prompts of similar length together (less padding); each text must still be the one
    its own prompt gets when generated alone (positions count real tokens, padding is masked as a key)."""
    m, tok = M.load(TINY["dream"]), M.load_tokenizer(TINY["dream"])
    prompts = ["Q: 12+7= A: ", "The", "Q: 3+45= A: and then some more words", "x = 1\n", "Q: 1+1= A: "]
    assert sorted(prompts, key=lambda p: len(tok.encode(p).ids)) != prompts  # the batches differ from the order
    args = E.Args(batch_size=2, gen_length=8, steps=8, block_length=8)
    with torch.no_grad():
        texts, paths, _ = E.completions(m, tok, prompts, "arithmetic", args, "cpu")
        alone = [E.completions(m, tok, [p], "arithmetic", args, "cpu") for p in prompts]
    assert texts == [t[0] for t, _, _ in alone] and paths == [p[0] for _, p, _ in alone] and len(set(texts)) > 1


class Counting(torch.nn.Module):
    """The model, noting the model FLOPs of every forward it is asked for, from what it is actually given: the
    canvas's shape and how many rows the head computes (all without select)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.args, self.flops = model, model.args, 0

    def forward(self, ids, attn_mask=None, select=None):
        rows = ids.numel() if select is None else int(torch.ones(ids.shape, dtype=torch.bool)[select].sum())
        self.flops += self.args.flops(*ids.shape, head_rows=rows)
        return self.model(ids, attn_mask, select=select)


@pytest.mark.parametrize("family,block", [("llada", 4), ("dream", 8)])
def test_generation_flops_count_every_forward_the_sampler_makes(family, block):
    """generation_flops (from the decoding paths) equals the sum over the forwards generate() really ran."""
    m, tok = M.load(TINY[family]), M.load_tokenizer(TINY[family])
    counting = Counting(m)
    args = E.Args(batch_size=3, gen_length=8, steps=8, block_length=block)
    prompts = ["Q: 12+7= A: ", "The", "Q: 3+45= A: and then some", "x = 1\n"]
    with torch.no_grad():
        texts, _, speed = E.completions(counting, tok, prompts, "arithmetic", args, "cpu")
        again, _, _ = E.completions(m, tok, prompts, "arithmetic", args, "cpu")
    assert texts == again
    assert speed["tflops"] * speed["seconds"] * 1e12 == pytest.approx(counting.flops, rel=1e-12)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_model_flops_are_two_per_weight_plus_attention(family):
    """ModelArgs.flops against the weights counted off a real model (Dream's has grouped K/V): 2 per block-Linear
    weight per token, 2 per head weight per head row, 4 L dim per token per layer for attention."""
    m = M.load(TINY[family])
    a, B, L = m.args, 3, 11
    linear = sum(p.numel() for n, p in m.named_parameters() if n.startswith("blocks.") and n.endswith("proj.weight"))
    head = a.dim * a.vocab_size
    assert a.flops(B, L) == 2 * B * L * linear + 2 * B * L * head + 4 * B * L * L * a.dim * a.n_layers
    assert a.flops(B, L, head_rows=5) == 2 * B * L * linear + 2 * 5 * head + 4 * B * L * L * a.dim * a.n_layers


@pytest.mark.parametrize("L,b", [(2, 4), (8, 16), (5, 30), (3, 2), (12, 8)])
def test_exact_counts_make_every_row_uniform_and_llada_rounding_does_not(L, b):
    """The estimate's expectation is the masked-diffusion bound only if, over the L equally likely starts k, each
    row's count takes every value 1..L once. Halves-up counts do; LLaDA's torch.round (halves to even) does not
    where i L / b has a half."""
    def uniform(exact):
        table = torch.stack([E.llada_counts(k, b, L, exact) for k in range(1, L + 1)])  # (k, row)
        return all(sorted(table[:, i].tolist()) == list(range(1, L + 1)) for i in range(b))
    assert uniform(True)
    halves = any((2 * i * L) % (2 * b) == b for i in range(b))
    assert uniform(False) == (not halves)
