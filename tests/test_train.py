"""train.py and data/prepare.py: the objective against its expectation, the arithmetic task, a short real run."""
import os
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model as M
import train as T
from data.prepare import ANSWER_WIDTH, arithmetic, is_heldout, write_arithmetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "assets", "tiny-llada")


class InputBlind(torch.nn.Module):
    """Logits that do not depend on the input, so E[loss] has a closed form: the mean CE over maskable positions
    (each position is masked with probability p and weighted by 1/p)."""
    def __init__(self, family, T_, V=11):
        super().__init__()
        self.args = M.ModelArgs(family, 8, 1, 1, 1, 8, V, 1e-5, 1e4, family == "dream", 64, mask_id=V - 1)
        self.logits = torch.randn(T_, V, generator=torch.Generator().manual_seed(0))

    def forward(self, x, attn_mask=None, select=None):
        logits = self.logits[None].expand(x.shape[0], -1, -1)
        return logits if select is None else logits[select]


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_diffusion_loss_is_unbiased_for_the_mean_cross_entropy(family):
    m, x = InputBlind(family, 12), torch.randint(0, 10, (1, 12))
    maskable = torch.ones(1, 12, dtype=torch.bool)
    maskable[0, 3:6] = False  # an SFT-style prompt: never masked, not counted
    ce = F.cross_entropy(m.logits, x[0], reduction="none")
    keep = maskable[0].clone()
    keep[0] &= family == "llada"  # Dream's position 0 is never masked
    expected = ce[keep].mean()
    gen = torch.Generator().manual_seed(1)
    draws = torch.cat([T.diffusion_loss(m, x.expand(4000, -1), 1e-3, gen, maskable.expand(4000, -1))
                       for _ in range(5)])
    assert abs(draws.mean() - expected) < 4 * draws.std() / len(draws) ** 0.5


def test_arithmetic_task_is_deterministic_correct_and_disjoint():
    train, held = arithmetic(3000, seed=0), arithmetic(500, seed=1, heldout=True)
    assert train == arithmetic(3000, seed=0) and len(set(train)) == 3000
    for (q, a), is_held in [(p, False) for p in train] + [(p, True) for p in held]:
        x, op, y = re.fullmatch(r"Q: (\d{1,3})([+-])(\d{1,3})= A: ", q).groups()
        assert int(a) == (int(x) + int(y) if op == "+" else int(x) - int(y)) >= 0
        assert is_heldout(int(x), op, int(y)) == is_held
    assert not {q for q, _ in train} & {q for q, _ in held}


def test_answer_fields_have_fixed_width_and_are_the_only_maskable_tokens(tmp_path):
    tok = M.load_tokenizer(TINY)
    eos = tok.token_to_id("<|endoftext|>")
    problems = [("Q: 7+5= A: ", "12"), ("Q: 999+999= A: ", "1998")]
    write_arithmetic(tok, problems, eos, str(tmp_path))
    ids, mask = np.fromfile(tmp_path / "arith.bin", np.uint16), np.fromfile(tmp_path / "arith_mask.bin", np.uint8)
    assert len(ids) == len(mask) and mask.sum() == 2 * ANSWER_WIDTH
    answers = ids[mask == 1].reshape(2, ANSWER_WIDTH)
    assert tok.decode(answers[0].tolist()) == "12\n" and answers[0, -1] == eos
    assert tok.decode(ids[mask == 0].tolist()) == "Q: 7+5= A: Q: 999+999= A: "


def toy_data(path):
    """A token folder like data/prepare.py's, from repetitive text and a few arithmetic problems."""
    tok = M.load_tokenizer(TINY)
    eos = tok.token_to_id("<|endoftext|>")
    os.makedirs(path / "llada")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TINY, name), path / "llada" / name)
    text = " ".join(["the cat sat on the mat and the dog sat on the log."] * 400)
    ids = np.array(tok.encode(text, add_special_tokens=False).ids + [eos], dtype=np.uint16)
    ids.tofile(path / "train.bin")
    ids[:600].tofile(path / "val.bin")
    write_arithmetic(tok, arithmetic(200, seed=0), eos, str(path))


def test_a_short_run_lowers_the_loss_and_saves_a_loadable_checkpoint(tmp_path):
    toy_data(tmp_path / "data")
    args = T.Args(family="llada", data=str(tmp_path / "data"), out=str(tmp_path / "out"), dim=64, n_layers=2,
                  n_heads=4, n_kv_heads=4, hidden_dim=192, seq_len=32, batch_size=16, steps=20, warmup=2, lr=3e-3,
                  eval_every=20, eval_batches=2, device="cpu", save_dtype="float32")
    history = T.train(args)
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 1.0
    m = M.load(str(tmp_path / "out"))
    assert m.args.mask_id == M.load_tokenizer(str(tmp_path / "out")).token_to_id("<|mdm_mask|>")
    assert M.special_ids(str(tmp_path / "out"), M.ModelArgs.from_config(m.args.to_config())) == m.args
    args.init_from, args.out, args.steps = str(tmp_path / "out"), str(tmp_path / "again"), 2
    args.block_frac, args.block_length = 0.25, 8  # sampler-shaped rows run in the loop
    again = T.train(args)  # continues from the saved weights: its step-0 loss is the first run's last
    assert again[0]["val_loss"] == pytest.approx(history[-1]["val_loss"], abs=1e-4)


def test_missing_token_files_give_one_clear_line(tmp_path):
    with pytest.raises(M.InputError, match="train.bin: not found"):
        T.train(T.Args(data=str(tmp_path), out=str(tmp_path / "out"), device="cpu"))


def test_select_gives_exactly_the_chosen_rows_of_the_full_logits():
    for path in (TINY, os.path.join(ROOT, "assets", "tiny-dream")):
        m = M.load(path)
        x = torch.randint(0, 4000, (2, 24))
        select = torch.rand(2, 24) < 0.4
        assert torch.equal(m(x, select=select), m(x)[select])


def test_prefix_rows_keep_a_clean_prompt_and_the_rest_are_fully_maskable():
    args = T.Args(batch_size=64, seq_len=40, prefix_frac=0.25, arith_frac=0.0)
    text = np.arange(5000, dtype=np.uint16)
    x, maskable, blank = T.next_batch(text, None, args, torch.Generator().manual_seed(0))
    assert not blank.any()
    cuts = (~maskable).sum(1)
    assert maskable[16:].all() and (cuts[:16] > 0).sum() >= 12 and len(set(cuts[:16].tolist())) > 5
    for row, cut in zip(maskable[:16], cuts[:16], strict=True):  # a prefix, never holes
        assert not row[:cut].any() and row[cut:].all()


def test_block_rows_score_one_block_after_a_clean_prefix_and_blank_everything_later():
    args = T.Args(batch_size=40, seq_len=48, prefix_frac=0.25, block_frac=0.5, block_length=8, arith_frac=0.0)
    text = np.arange(5000, dtype=np.uint16)
    x, maskable, blank = T.next_batch(text, None, args, torch.Generator().manual_seed(0))
    assert not blank[:10].any() and not blank[30:].any() and maskable[30:].all()
    starts = []
    for row, hide in zip(maskable[10:30], blank[10:30], strict=True):
        cut = int(row.float().argmax())
        assert 1 <= cut and row.sum() == 8 and row[cut:cut + 8].all()
        assert hide[cut + 8:].all() and hide.sum() == 48 - cut - 8
        starts.append(cut)
    assert len(set(starts)) > 10


def test_blank_positions_are_hidden_and_unscored():
    """The loss of a block row cannot depend on the tokens after the block: they are [MASK] in the input and never
    a target."""
    m = M.load(TINY)
    x = torch.randint(0, 4000, (3, 32))
    maskable = torch.zeros(3, 32, dtype=torch.bool)
    maskable[:, 10:18] = True
    blank = torch.zeros_like(maskable)
    blank[:, 18:] = True
    y = x.clone()
    y[:, 18:] = torch.randint(0, 4000, (3, 14))
    with torch.no_grad():
        a = T.diffusion_loss(m, x, generator=torch.Generator().manual_seed(1), maskable=maskable, blank=blank)
        b = T.diffusion_loss(m, y, generator=torch.Generator().manual_seed(1), maskable=maskable, blank=blank)
        c = T.diffusion_loss(m, y, generator=torch.Generator().manual_seed(1), maskable=maskable)
    assert torch.equal(a, b) and (a > 0).all() and not torch.equal(a, c)


def test_uint32_token_files_are_read_with_the_dtype_meta_json_names(tmp_path):
    ids = np.array([5, 70000, 151666, 3], dtype=np.uint32)
    ids.tofile(tmp_path / "train.bin")
    (tmp_path / "meta.json").write_text('{"dtype": "uint32"}')
    assert T.read_stream(T.Args(data=str(tmp_path)), "train").tolist() == ids.tolist()
    (tmp_path / "meta.json").unlink()
    assert len(T.read_stream(T.Args(data=str(tmp_path)), "train")) == 8  # no meta.json: uint16, as before


def test_minutes_resets_the_step_count_from_the_measured_step_time(tmp_path, capsys):
    toy_data(tmp_path / "data")
    args = T.Args(family="llada", data=str(tmp_path / "data"), out=str(tmp_path / "out"), dim=32, n_layers=1,
                  n_heads=2, n_kv_heads=2, hidden_dim=64, seq_len=16, batch_size=4, steps=10 ** 6, warmup=40,
                  minutes=0.02, eval_every=10 ** 6, eval_batches=1, device="cpu", arith_frac=0.0)
    with pytest.raises(M.InputError, match="--minutes needs --warmup >= 30"):
        T.train(T.Args(**{**vars(args), "warmup": 10}))
    history = T.train(args)
    said = re.search(r"--minutes 0.02: (\d+) steps", capsys.readouterr().out)
    assert said and 31 <= int(said.group(1)) < 10 ** 6 and history[-1]["step"] == args.steps == int(said.group(1))


def test_distillation_teacher_is_causal_and_the_student_stays_bidirectional():
    path = os.path.join(ROOT, "assets", "tiny-dream")
    teacher = T.build_teacher(T.Args(init_from=path, distill=0.5), "cpu")
    student = M.load(path)
    x = torch.randint(0, 4000, (1, 20))
    y = x.clone()
    y[0, 12] = (x[0, 12] + 7) % 4000
    with torch.no_grad():
        moved_t = (teacher(x) - teacher(y)).abs().amax(-1)[0]
        moved_s = (student(x) - student(y)).abs().amax(-1)[0]
    assert moved_t[:13].max() == 0 and (moved_t[13:] > 0).all()  # logit i (Dream: from row i-1) sees tokens < i
    assert (moved_s[:12] > 0).all()
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(M.InputError, match="--distill 0.5 needs --init_from"):
        T.build_teacher(T.Args(distill=0.5), "cpu")
    with pytest.raises(M.InputError, match="needs a Dream-layout"):
        T.build_teacher(T.Args(init_from=TINY, distill=0.5), "cpu")


def test_distillation_runs_in_the_training_loop(tmp_path):
    toy_data(tmp_path / "data")
    args = T.Args(init_from=os.path.join(ROOT, "assets", "tiny-dream"), data=str(tmp_path / "data"),
                  out=str(tmp_path / "out"), distill=0.5, seq_len=32, batch_size=4, steps=2, warmup=1, lr=1e-4,
                  eval_every=2, eval_batches=1, device="cpu", arith_frac=0.0)
    history = T.train(args)
    assert len(history) == 2 and M.load(str(tmp_path / "out")).args.family == "dream"


def test_distillation_mixes_the_teachers_distribution_into_the_target():
    """(1 - a) CE + a H(teacher, model) per masked token, / p, against a float64 computation by hand."""
    path = os.path.join(ROOT, "assets", "tiny-dream")
    teacher, student = T.build_teacher(T.Args(init_from=path, distill=0.3), "cpu"), M.load(path)
    x = torch.randint(0, 4000, (2, 24))
    with torch.no_grad():
        got = T.diffusion_loss(student, x, generator=torch.Generator().manual_seed(5), teacher=teacher, distill=0.3)
        plain = T.diffusion_loss(student, x, generator=torch.Generator().manual_seed(5))
        gen = torch.Generator().manual_seed(5)  # the draws diffusion_loss makes, in its order
        p = ((1 - 1e-3) * torch.rand(2, 1, generator=gen) + 1e-3).expand(2, 24)
        masked = torch.rand(2, 24, generator=gen) < p
        masked[:, 0] = False
        logp = student(torch.where(masked, student.args.mask_id, x)).double().log_softmax(-1)
        soft = teacher(x).double().softmax(-1)
        ce = -(0.7 * logp.gather(-1, x[..., None])[..., 0] + 0.3 * (soft * logp).sum(-1))
        want = (ce * masked / p).sum(1) / 23
    assert torch.allclose(got.double(), want, rtol=1e-4) and not torch.allclose(got, plain, rtol=1e-3)
