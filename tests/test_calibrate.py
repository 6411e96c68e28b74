"""calibrate.py: calibration data of each mode, quantized checkpoints that load back exactly, bad flags."""
import json
import os
import shutil
import subprocess
import sys
import time
import types

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import calibrate as C
import model as M
from calibrate import CHECKPOINT_FILES
from quantizers.core import QLinear
from quantizers.format import pack, unpack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {f: os.path.join(ROOT, "assets", f"tiny-{f}") for f in ("llada", "dream")}
FAST = dict(nsamples=8, seqlen=64, nll_windows=0, device="cpu")  # small enough for CI


def quantize(tmp_path, **kw):
    args = C.Args(**{**FAST, "out": str(tmp_path / "q"), **kw})
    return C.calibrate(args), args


@pytest.mark.slow
@pytest.mark.parametrize("family,method,group_size", [("llada", "gptq", 128), ("dream", "awq", 128),
                                                      ("llada", "awq,gptq", 64), ("dream", "gptq", 16)])
def test_saved_checkpoint_loads_back_with_identical_logits(tmp_path, family, method, group_size):
    m, args = quantize(tmp_path, model=TINY[family], method=method, wbits=3, group_size=group_size)
    again = M.load(args.out)
    assert sum(isinstance(x, QLinear) for x in again.modules()) == 7 * again.args.n_layers
    down = again.blocks[0].mlp.down_proj  # tiny-dream's 592 inputs: 128 does not divide it, so groups of 74
    assert down.scales.shape[1] == down.in_features // (74 if (family, group_size) == ("dream", 128) else group_size)
    ids = torch.randint(0, 4000, (2, 40))
    with torch.no_grad():
        assert torch.equal(again(ids), m(ids))
    with safe_open(os.path.join(args.out, "model.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["quant"])
        assert f.get_tensor(M.rename(M.name_map(again.args), "blocks.0.mlp.down_proj.qweight")).dtype == torch.int32
    assert meta["args"]["method"] == method and meta["layers"]["blocks.0.attn.q_proj"]["bits"] == 3
    assert os.path.isfile(os.path.join(args.out, "tokenizer.json")) and not os.path.exists(args.out + ".tmp")


def test_w4a8_checkpoint_stores_pair_order_and_one_in_plain_order_still_loads(tmp_path):
    """A W4A8 layer's codes are stored in the pair order its GEMM reads (format.pack), and its metadata says so. A
    checkpoint written before that order (plain codes, no "order" in the metadata) loads to the same model."""
    m, args = quantize(tmp_path, model=TINY["dream"], method="rtn", wbits=4, abits=8, group_size=-1)
    path = os.path.join(args.out, "model.safetensors")
    with safe_open(path, "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(metadata["quant"])
    assert {cfg["order"] for cfg in meta["layers"].values()} == {"pairs"}
    for name, cfg in meta["layers"].items():
        key = M.rename(M.name_map(m.args), name + ".qweight")
        tensors[key] = pack(unpack(tensors[key], 4, cfg["in_features"], "pairs"), 4)
        del cfg["order"]
    save_file(tensors, path, metadata={**metadata, "quant": json.dumps(meta)})
    old = M.load(args.out)
    assert {mod.order for mod in old.modules() if isinstance(mod, QLinear)} == {"pairs"}
    ids = torch.randint(0, 4000, (2, 40))
    with torch.no_grad():
        assert torch.equal(old(ids), m(ids))


def test_w4a8_fp8_checkpoint_stores_signs_and_loads_to_the_same_model(tmp_path):
    """--fp8 --wbits 4 --abits 8 --sym (W4A8-FP8) by GPTQ: every layer's codes in the sign order, 1..15 (the grid
    -7..7, format.py), e4m3 activations, and the saved checkpoint loads to the same model."""
    m, args = quantize(tmp_path, model=TINY["dream"], method="gptq", wbits=4, abits=8, fp8=True, sym=True)
    again = M.load(args.out)
    layers = [mod for mod in again.modules() if isinstance(mod, QLinear)]
    assert {(mod.order, mod.fp8, mod.bits, mod.act_bits, mod.scales.shape[1]) for mod in layers} == \
        {("signs", True, 4, 8, 1)}
    assert all(unpack(mod.qweight, 4, mod.in_features, "signs").min() >= 1 for mod in layers)
    ids = torch.randint(0, 4000, (2, 40))
    with torch.no_grad():
        assert torch.equal(again(ids), m(ids))


@pytest.mark.slow
def test_w8_g128_barely_moves_held_out_nll(tmp_path):
    """W8 round-to-nearest on the trained tiny model: held-out NLL within 1% (same masks before and after)."""
    m, args = quantize(tmp_path, model=TINY["llada"], method="rtn", wbits=8)
    from eval import Args as EvalArgs, wiki_nll
    tok, e = M.load_tokenizer(TINY["llada"]), EvalArgs(limit=24, mc=2)
    before, after = (wiki_nll(x, tok, e, "cpu")["nll"]["value"] for x in (M.load(TINY["llada"]), m))
    assert abs(after / before - 1) < 0.01 and before < 4.5


def test_wbits_16_leaves_the_model_as_it_was(tmp_path):
    _, args = quantize(tmp_path, model=TINY["dream"], method="gptq", wbits=16)
    ids = torch.randint(0, 4000, (1, 30))
    with torch.no_grad():
        assert torch.equal(M.load(args.out)(ids), M.load(TINY["dream"])(ids))


def calibration(mode, **kw):
    args = C.Args(**{**FAST, "nsamples": 40, "calib_mode": mode, **kw})
    C.resolve(args)
    m = M.load(TINY["llada"])
    return C.calibration(args, m, M.load_tokenizer(TINY["llada"])), m.args.mask_id


def test_clean_calibration_has_no_masks():
    calib, mask_id = calibration("clean")
    assert calib.tokens.shape == (40, 64) and not calib.masked.any() and not (calib.tokens == mask_id).any()


def test_masked_simulation_keeps_a_prefix_and_follows_the_visibility_grid():
    calib, mask_id = calibration("masked", seqlen=256)
    assert torch.equal(calib.masked, calib.tokens == mask_id)
    assert not calib.masked[:, :64].any()  # gamma = 0.25 of 256
    rest = calib.masked[:, 64:].float().mean(1)
    expected = 1 - (torch.arange(40) % 20) / 20  # t = 0 .. 19 of T = 20: masked share 1, 0.95, ..., 0.05
    sigma = (expected * (1 - expected) / 192).sqrt()
    assert ((rest - expected).abs() <= 4 * sigma + 1e-6).all()


def test_masked_simulation_at_every_timestep_repeats_each_window_over_the_grid():
    args = C.Args(**{**FAST, "nsamples": 2, "seqlen": 256, "calib_mode": "masked", "mcs_steps": 4,
                     "mcs_all_steps": True})
    C.resolve(args)
    m, tok = M.load(TINY["llada"]), M.load_tokenizer(TINY["llada"])
    calib, windows = C.calibration(args, m, tok), C.text_windows(args, m, tok)
    assert calib.tokens.shape == (8, 256)
    for i in range(8):  # canvas i is window i // 4 at timestep i % 4: visible share of the rest about t / 4
        shown = ~calib.masked[i]
        assert torch.equal(calib.tokens[i][shown], windows[i // 4][shown]) and shown[:64].all()
        assert abs(shown[64:].float().mean().item() - (i % 4) / 4) < 0.15


@pytest.fixture(scope="module")
def trajectory():
    """40 trajectory samples of tiny-llada and the windows they were cut from."""
    args = C.Args(**{**FAST, "nsamples": 40, "seqlen": 128, "calib_mode": "trajectory"})
    C.resolve(args)
    m, tok = M.load(TINY["llada"]), M.load_tokenizer(TINY["llada"])
    return C.calibration(args, m, tok), C.text_windows(args, m, tok), m.args.mask_id


@pytest.mark.slow
def test_trajectory_samples_are_distinct_texts_that_fill_the_mask_ratio_buckets(trajectory):
    calib, windows, mask_id = trajectory
    P = 128 - 64
    assert torch.equal(calib.tokens[:, :P], windows[:, :P])  # sample i continues window i's prompt: 40 distinct texts
    assert len({tuple(t) for t in calib.tokens.tolist()}) == 40
    ratio = (calib.tokens[:, P:] == mask_id).float().mean(1)
    counts = [((ratio >= lo) & (ratio < hi)).sum().item() for lo, hi, _ in C.BUCKETS]
    assert counts == [12, 8, 8, 12]  # 0.3 / 0.2 / 0.2 / 0.3 of 40
    conf = calib.confidence
    assert (conf[:, :P] == 1).all() and not torch.isnan(conf[~calib.masked]).any()
    assert (conf[:, P:][~calib.masked[:, P:]] > 0).all()  # a committed token keeps its commit confidence
    assert torch.isnan(conf[calib.masked]).any()  # positions in blocks the sampler had not reached


@pytest.mark.slow
def test_cgq_weighs_masked_tokens_1_and_visible_07_on_real_trajectories(trajectory):
    """DLLMQuant's class weights (masked 1, decoded 0.7) hold on average; confidence only orders the masked ones."""
    from quantizers.dllmquant import certainty_weights
    calib = trajectory[0]
    c, masked, conf = certainty_weights(calib, 0.7, 0.5), calib.masked, calib.confidence
    assert abs(c.mean().item() - 1) < 1e-5
    assert abs(c[masked].double().mean() / c[~masked].double().mean() - 1 / 0.7) < 1e-5
    assert torch.allclose(c[~masked], c[~masked][0].expand(int((~masked).sum())))
    unit = c[~masked][0] / 0.7  # the normalised weight 1
    known = masked & torch.isfinite(conf)
    assert torch.allclose(c[masked & ~known], unit)  # unreached: neutral
    k_conf, k_c = conf[known], c[known]
    order = torch.argsort(k_conf)
    assert (k_c[order].diff() >= -1e-6).all()  # more confident, heavier
    assert k_c.min() >= 0.5 * unit - 1e-6 and k_c.max() <= 1.5 * unit + 1e-6


BAD = [({"wbits": 1}, "--wbits 1 is out of range"), ({"bits": 9}, "--wbits 9 is out of range"),
       ({"method": "hqq"}, "--method 'hqq' is unknown"), ({"calib_mode": "noisy"}, "--calib_mode 'noisy'"),
       ({"group_size": -5}, "--group_size -5 must be positive or -1"),
       ({"abits": 3}, "--abits 3 is out of range"), ({"gpu_memory_gib": -1}, "--gpu_memory_gib -1 is out of range"),
       ({"gpu_memory_gib": 24, "device": "cpu"}, "--gpu_memory_gib 24: caps a CUDA device's memory, not cpu")]


@pytest.mark.parametrize("kw,message", BAD)
def test_bad_flags_give_one_clear_line(tmp_path, kw, message):
    with pytest.raises(M.InputError, match=message.replace("(", r"\(")):
        quantize(tmp_path, **kw)


def test_empty_calibration_file(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(M.InputError, match="no text in it"):
        quantize(tmp_path, calib_data=str(tmp_path / "empty.txt"))


@pytest.mark.slow
def test_cli_quantizes_the_bundled_model_and_sample_reads_it(tmp_path):
    out = str(tmp_path / "w4")
    r = subprocess.run([sys.executable, "calibrate.py", "--method", "rtn", "--nsamples", "4", "--seqlen", "32",
                        "--nll_windows", "4", "--out", out], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "held-out masked-diffusion NLL" in r.stdout and "block   8/8" in r.stdout
    r = subprocess.run([sys.executable, "sample.py", "--model", out, "--prompt", "Q: 12+5= A: ", "--gen_length", "6",
                        "--steps", "6", "--block_length", "6"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "17"


def refusal(tmp_path, setup, out):
    setup(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(M.InputError) as e:
        quantize(tmp_path, model=TINY["llada"], out=out.format(tmp=tmp_path, model=TINY["llada"]), method="rtn")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # refused before anything was written
    return str(e.value)


def a_checkpoint(tmp_path):
    shutil.copytree(TINY["dream"], tmp_path / "ckpt", ignore=shutil.ignore_patterns("README.md"))


OUT_REFUSALS = [  # (what is there, --out, the line)
    (lambda t: (t / "mine").mkdir() or (t / "mine" / "notes.txt").write_text("x"), "{tmp}/mine",
     "holds notes.txt, which calibrate.py did not write"),
    (a_checkpoint, "{tmp}/ckpt", "a checkpoint is already there; add --overwrite"),
    (lambda t: None, "{model}", "overlaps --model"), (lambda t: None, "{model}/q", "overlaps --model"),
    (lambda t: None, os.path.dirname(TINY["llada"]), "overlaps --model"),
    (lambda t: (t / "file").write_text("x"), "{tmp}/file", "exists and is not a folder"),
    (lambda t: (t / "q.partial").write_text("x"), "{tmp}/q", "q.partial exists and is not a folder"),
    (lambda t: None, "", "--out: the path is empty")]


@pytest.mark.parametrize("setup,out,message", OUT_REFUSALS)
def test_an_out_that_would_lose_data_is_refused_before_the_work(tmp_path, setup, out, message):
    assert message in refusal(tmp_path, setup, out)


def logits(path):
    with torch.no_grad():
        return M.load(path)(torch.arange(40)[None] + 100)


@pytest.mark.slow
def test_a_kill_at_every_step_leaves_out_a_whole_checkpoint(tmp_path, monkeypatch):
    """Killed while writing, before the swap or after it, --out holds the old or the new checkpoint, whole; the
    next run clears what was left (a raised exception leaves the files as a kill would)."""
    import cli
    old, args = quantize(tmp_path, model=TINY["llada"], method="rtn", wbits=8)
    new, _ = quantize(tmp_path / "n", model=TINY["llada"], method="rtn", wbits=4)
    want = {"old": logits(args.out), "new": new(torch.arange(40)[None] + 100).detach()}
    args.overwrite = True

    def killed(*a, **k):
        raise KeyboardInterrupt

    for step, target, name, expect in (("while writing", C, "save", "old"), ("before the swap", C, "publish", "old"),
                                       ("after the swap", cli, "shutil", "new")):
        with monkeypatch.context() as m:  # (after the swap: the removal of the old checkpoint is what dies)
            m.setattr(target, name, types.SimpleNamespace(rmtree=killed) if name == "shutil" else killed)
            with pytest.raises(KeyboardInterrupt):
                C.write(new, TINY["llada"], args)
        assert torch.equal(logits(args.out), want[expect]), step
        C.write(new, TINY["llada"], args)  # the next run: complete, and nothing left beside it
        assert torch.equal(logits(args.out), want["new"]) and not os.path.exists(args.out + ".partial")
        C.write(old, TINY["llada"], args)


@pytest.mark.slow
def test_a_real_kill_while_writing_leaves_the_old_checkpoint(tmp_path):
    out = str(tmp_path / "q")
    cmd = [sys.executable, "calibrate.py", "--method", "rtn", "--nsamples", "2", "--seqlen", "32", "--nll_windows",
           "0", "--out", out]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    subprocess.run(cmd[:-1] + [out + "-new", "--wbits", "3"], cwd=ROOT, check=True, capture_output=True)
    before, new = logits(out), logits(out + "-new")
    p = subprocess.Popen(cmd + ["--overwrite", "--wbits", "3"], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    while p.poll() is None and not os.path.exists(out + ".partial"):
        time.sleep(0.001)
    p.kill()
    assert p.wait() == -9  # killed while its new checkpoint was being written (or just swapped in)
    assert any(torch.equal(logits(out), w) for w in (before, new))


@pytest.mark.slow
def test_the_same_calibration_writes_the_same_bytes(tmp_path):
    """Two runs into different folders: identical files (sorted metadata, no paths in it), all mode 0644."""
    for name in ("a", "b"):
        quantize(tmp_path, model=TINY["dream"], method="gptq", wbits=3, out=str(tmp_path / name))
    files = sorted(os.listdir(tmp_path / "a"))
    assert files == sorted(CHECKPOINT_FILES) and files == sorted(os.listdir(tmp_path / "b"))
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
        assert os.stat(tmp_path / "a" / f).st_mode & 0o777 == 0o644, f
    meta = json.loads(safe_open(str(tmp_path / "a" / "model.safetensors"), "pt").metadata()["quant"])
    assert "out" not in meta["args"] and meta["args"]["model"] == "tiny-dream" and str(tmp_path) not in json.dumps(meta)


@pytest.mark.slow
def test_rotations_a_group_shares_are_stored_once_and_shared_again(tmp_path):
    """DuQuant's q/k/v (and gate/up) read one input and share one rotation: the checkpoint stores it once ("tied"
    metadata), loads it back as one tensor, and the logits are the calibrated model's."""
    m, args = quantize(tmp_path, method="duquant", bits=4, block_size=64, rotation_steps=8)
    assert m.blocks[0].attn.q_proj.rotation is m.blocks[0].attn.v_proj.rotation
    with safe_open(os.path.join(args.out, "model.safetensors"), "pt") as f:
        tied, keys = json.loads(f.metadata()["tied"]), set(f.keys())
    assert len(tied) == 3 * 3 * m.args.n_layers and not set(tied) & keys and set(tied.values()) <= keys
    again = M.load(args.out)
    b = again.blocks[0]
    assert b.attn.q_proj.rotation.r1 is b.attn.k_proj.rotation.r1 is b.attn.v_proj.rotation.r1
    assert b.mlp.gate_proj.rotation.r2 is b.mlp.up_proj.rotation.r2
    from quantizers.core import model_bytes
    assert model_bytes(again) == model_bytes(m)  # counted once in memory, as on disk
    ids = torch.randint(0, 4000, (2, 30))
    with torch.no_grad():
        assert torch.equal(again(ids), m(ids))
    M.save(again, str(tmp_path / "again"))  # and saved again: the same tensors, tied the same way
    with safe_open(str(tmp_path / "again" / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["tied"]) == tied


def test_send_home_returns_the_gpu_cache_only_after_a_cuda_device(monkeypatch):
    """The held-out NLL and trajectory sampling leave the GPU through send_home: the model is on its home device
    after it, and the CUDA cache is emptied when (and only when) the work ran on CUDA."""
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    net = torch.nn.Linear(4, 4)
    C.send_home(net, "cpu", "cpu")
    assert emptied == [] and net.weight.device.type == "cpu"
    C.send_home(net, "cpu", "cuda:0")
    assert emptied == [True] and net.weight.device.type == "cpu"


def test_cap_gpu_memory_gives_torch_an_index_and_a_fraction_of_the_card(monkeypatch):
    """--gpu_memory_gib with the default --device cuda: set_per_process_memory_fraction gets the current device's
    index (torch refuses a bare "cuda" there) and the cap as a fraction of that card, at most the whole card."""
    calls, card = [], types.SimpleNamespace(total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: card if isinstance(i, int) else 1 / 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, i: calls.append((f, i)))
    assert C.cap_gpu_memory(24, "cuda") == 2 and C.cap_gpu_memory(100, "cuda:1") == 1
    assert calls == [(0.3, 2), (1.0, 1)]
