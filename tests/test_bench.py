"""bench.py --calibrate on tiny shapes with the 8B models' vocabularies and special ids: the stand-in LLaDA tokenizer,
the random checkpoints in both real layouts, and the measured calibrate.py runs (the GPU numbers come from a GPU)."""
import dataclasses
import json
import types

import pytest
import torch
from tokenizers import Tokenizer

import bench as B
from model import ModelArgs, load, load_tokenizer

TINY_SHAPES = {  # the 8B models' vocabularies and special ids (bench.SHAPES) on 2 small blocks
    "llada-shaped": ModelArgs("llada", 64, 2, 4, 4, 128, 126464, 1e-5, 5e5, False, 256, 126336, 126080, 126081, 126081,
                              126348),
    "dream-shaped": ModelArgs("dream", 64, 2, 4, 2, 128, 152064, 1e-6, 1e6, True, 256, 151666, 151665, 151643, 151643,
                              151645)}


def test_the_llada_stand_in_tokenizer_has_llada_s_ids_and_encodes_any_text():
    with open(B.os.path.join(B.ROOT, "data", "qwen2.5", "tokenizer.json.gz"), "rb") as f:
        qwen = B.gzip.decompress(f.read()).decode()
    tok = Tokenizer.from_str(B.llada_tokenizer(qwen))
    assert {i: tok.token_to_id(s) for i, s in B.LLADA_SPECIALS.items()} == {i: i for i in B.LLADA_SPECIALS}
    text = "Q: 347+86= A: 433\ndef f(x):\n    return x  # café, 東京"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert max(ids) < min(B.LLADA_SPECIALS) and tok.decode(ids) == text
    assert len(json.loads(B.llada_tokenizer(qwen))["model"]["vocab"]) == min(B.LLADA_SPECIALS)


@pytest.mark.slow
def test_calibrate_bench_measures_each_cell_on_random_checkpoints_of_both_layouts(tmp_path, capsys):
    extra = ("--device", "cpu", "--nsamples", "4", "--seqlen", "32", "--nll_windows", "1")
    rows = B.calibrate_bench(TINY_SHAPES, ["rtn-w4", "quarot-w4a4"], str(tmp_path), extra)
    out = capsys.readouterr().out
    assert len(rows) == 4 and all(r["ok"] for r in rows), rows
    for r in rows:
        assert r["wall_s"] > 0 and r["block_s"] >= 0 and r["rss_gib"] > 0 and 0 < r["out_gib"] < 1  # blocks: 0.1 s
        assert r["gpu_gib"] is None  # calibrate.py prints torch's peak only on a GPU
        assert f"| {r['model']} | {r['cell']} | `{B.CALIBRATE[r['cell']]}` |" in out
    for name, args in TINY_SHAPES.items():  # the checkpoints load as the real layouts, with their special ids
        path = tmp_path / name
        m = load(str(path))
        assert m.args == args and load_tokenizer(str(path)).token_to_id("<|endoftext|>") in (126081, 151643)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(TINY_SHAPES)  # each cell's output removed


def test_a_cell_past_its_time_limit_is_stopped_and_reported_as_such(tmp_path, capsys):
    shapes = {"llada-shaped": TINY_SHAPES["llada-shaped"]}
    rows = B.calibrate_bench(shapes, ["rtn-w4"], str(tmp_path), ("--device", "cpu"), limit_s=0.5)
    assert [(r["ok"], r["stopped"], r["out_gib"]) for r in rows] == [(False, True, None)]  # python alone takes longer
    assert "| stopped after 0.5 s before its first block" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llada-shaped"]  # nothing half-written left


@pytest.mark.slow
def test_eval_bench_times_eval_s_scorers_on_random_models(capsys):
    """bench.py --eval on a tiny LLaDA shape on the CPU (eager only; compile and CUDA graphs are GPU modes): a row per
    format with eval.completions' own measurements, and FLOPs of at least the 512 full-canvas trunk forwards."""
    shapes = {"llada-shaped": dataclasses.replace(TINY_SHAPES["llada-shaped"], max_seq_len=1024)}  # 512 tokens fit
    rows = B.eval_bench(shapes, ("bf16", "W8A8-FP8"), prompts=1, mc_items=1, device="cpu")  # bf16 is slow on a CPU
    assert [(r["model"], r["format"], r["mode"]) for r in rows] == [
        (m, f, "eager") for m in shapes for f in ("bf16", "W8A8-FP8")]
    for r in rows:
        args = shapes[r["model"]]
        assert r["tokens_per_s"] == pytest.approx(512 / r["seconds"])
        assert r["tflops"] * r["seconds"] * 1e12 > 512 * args.flops(1, 512, 0) and r["mc_s"] > 0
    out = capsys.readouterr().out
    assert out.count("| eager |") == 2 and "MFU" in out


def test_device_memory_reads_its_own_process_and_falls_back_to_the_whole_gpu_marked(monkeypatch):
    """nvidia-smi's per-process list gives the cell's own memory; where the process is not listed (another PID
    namespace) the whole GPU's growth stands in and peak() says so."""
    answers = {"--query-compute-apps=pid,used_memory": ["17, 100", "42, 3072", ""], "--query-gpu=memory.used": ["500"]}
    monkeypatch.setattr(B.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(B.DeviceMemory, "query", staticmethod(lambda what: answers[what]))
    own = B.DeviceMemory(42, every=3600)  # the thread waits; the readings are taken here, so no timing is involved
    own.sample()
    assert own.read() == (3072.0, 500.0) and own.peak() == (3.0, False)
    other = B.DeviceMemory(7, every=3600)  # starts at 500 MiB on the whole GPU, then the GPU fills to 2548
    answers["--query-gpu=memory.used"] = ["2548"]
    other.sample()
    assert other.peak() == (2.0, True)


def test_the_log_reader_takes_calibrate_s_own_lines():
    """Lines as calibrate.py and quantizers/walk.py print them: the last block line gives the pace, the summary line
    torch's peaks (the held figure absent in logs from before it was printed)."""
    log = ("    block   1/28 | output error 0.0041 |    9.0 s | ETA  243.0 s\n"
           "    block   2/28 | output error 0.0032 |   17.6 s | ETA  228.8 s\n"
           "weights: 14525.6 MiB -> 3834.2 MiB; 265 s in all, peak GPU memory 19.8 GiB (the allocator held 25.9 GiB)\n")
    assert B.read_log(log) == {"blocks": (2, 28), "block_s": 8.8, "gpu_gib": 19.8, "held_gib": 25.9}
    older = B.read_log(log.replace(" (the allocator held 25.9 GiB)", ""))
    assert older["gpu_gib"] == 19.8 and older["held_gib"] is None
    assert B.read_log("") == {"blocks": None, "block_s": None, "gpu_gib": None, "held_gib": None}


def test_the_step_profile_sorts_real_kernel_names_and_sums_them_per_step():
    """Kernel names as CUDA traces print them (dllmq's Triton kernels, cuBLAS, flash attention, torch.compile's
    fusions, the sampler's reductions) fall in their categories, and the per-step sums add up to the wall."""
    names = {"_wa_gemm": "quantized GEMM", "_wq_gemm": "quantized GEMM", "_quant_rows": "activation quantizer",
             "_rotate_quant": "activation quantizer", "nvjet_tst_128x256_64x4_2x1_v_bz_coopB_TNT": "dense GEMM",
             "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "dense GEMM",
             "gemv2T_kernel_val<int, int, __nv_bfloat16, float, 128, 16, 4, 4, false>": "dense GEMM",
             "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64>>": "attention",
             "fmha_cutlassF_bf16_aligned_64x64_rf_sm80": "attention",
             "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0": "compiled fusions",
             "void at::native::reduce_kernel<512, 1, ReduceOp<float, ArgMaxOps<float>>>": "other",
             "void at::native::vectorized_elementwise_kernel<4, FillFunctor<bool>>": "other"}
    assert {n: B.kernel_category(n) for n in names} == names
    kernels = [("_wa_gemm", 3000.0), ("_quant_rows", 400.0), ("nvjet_x", 200.0), ("flash_fwd", 600.0),
               ("triton_poi_fused_1", 300.0), ("argmax", 100.0)] * 4
    r = B.step_breakdown(kernels, steps=2, wall_s=0.024, ops=["aten::item", "aten::_local_scalar_dense",
                                                               "aten::nonzero", "aten::index", "aten::nonzero"])
    assert r["quantized GEMM"] == pytest.approx(6.0) and r["activation quantizer"] == pytest.approx(0.8)
    assert r["busy"] == pytest.approx(9.2) and r["wall"] == pytest.approx(12.0) and r["idle"] == pytest.approx(2.8)
    assert r["syncs"] == 1.5  # .item() counted once (its _local_scalar_dense), each boolean index's nonzero


def test_the_step_profile_counts_gpu_work_but_not_annotations():
    """A profile's GPU rows: kernels and copies count; a user annotation (ProfilerStep#n, a compiled region) spans a
    whole step and would count the step twice; CPU operators are not GPU time."""
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    event = lambda name, t0, t1, dev, note=False: types.SimpleNamespace(  # noqa: E731
        name=name, device_type=dev, is_user_annotation=note,
        time_range=torch.autograd.profiler_util.Interval(t0, t1))
    events = [event("ProfilerStep#3", 0, 10000, cuda, True), event("_wa_gemm", 10, 60, cuda),
              event("Memcpy HtoD (Pageable -> Device)", 60, 62, cuda), event("aten::mm", 0, 70, cpu)]
    assert B.gpu_kernels(events) == [("_wa_gemm", 50), ("Memcpy HtoD (Pageable -> Device)", 2)]


@pytest.mark.slow
def test_the_step_profile_runs_a_generation_under_the_profiler(capsys):
    """bench.py --step_profile's own loop on a tiny LLaDA shape on the CPU (eager; no GPU kernels to time): a row per
    format, its step the generation's wall over its steps, and the host's syncs counted in the recorded window."""
    args = dataclasses.replace(TINY_SHAPES["llada-shaped"], max_seq_len=256)
    rows = B.profile_bench(("bf16", "W8A8-FP8"), gen_length=32, prompt=8, block=8, args=args, device="cpu")
    assert [(r["format"], r["mode"]) for r in rows] == [("bf16", "eager"), ("W8A8-FP8", "eager")]
    for r in rows:
        assert r["wall"] == pytest.approx(r["seconds"] * 1e3 / 32) and r["busy"] == 0
        assert r["syncs"] == 0  # the greedy sampler never makes the host wait for the device (sample.commit)
    assert capsys.readouterr().out.count("the profiler recorded no kernels") == 2
    with pytest.raises(ValueError, match="gen_length 16 < 2 x block 8"):  # too short for the recorded window
        B.profile_bench(("bf16",), gen_length=16, prompt=8, block=8, args=args, device="cpu")
