"""The quantization core (grid, packing, QLinear) and the methods: GPTQ beats RTN, AWQ's scaling is exact in float."""
import os

import pytest
import torch

import model as M
from quantizers import awq, gptq, rtn
from quantizers.core import QLinear, Rotation, apply_scale
from quantizers.format import dequantize, fake_quant, fit_grid, pack, quantize, quantize_tokens, unpack
from quantizers.walk import BlockInputs, input_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_every_code_in_every_slot(bits):
    n = 2 ** bits
    q = ((torch.arange(n)[:, None] + torch.arange(64)[None]) % n).to(torch.uint8)  # each slot sees every code
    assert torch.equal(unpack(pack(q, bits), bits, 64), q)
    ragged = torch.randint(0, n, (3, 592), dtype=torch.uint8)  # 592 = 18.5 chunks of 32: zero-padded
    words = pack(ragged, bits)
    assert words.dtype == torch.int32 and words.shape == (3, 19 * bits)
    assert torch.equal(unpack(words, bits, 592), ragged)


def test_4bit_layout_is_eight_codes_per_word_in_order():
    q = torch.tensor([list(range(1, 16)) + [15] * 17], dtype=torch.uint8)
    words = pack(q, 4)[0].tolist()
    assert words[0] == 0x87654321 - 2**32 and words[1] == 0xFFEDCBA9 - 2**32


def test_pair_order_puts_the_two_halves_of_a_chunk_in_one_byte():
    """W4A8's pair order, byte by byte against its definition (format.py): byte j of a chunk of L channels (256;
    the last, 600 - 512 = 88 rounded up to 96) holds its channel j in the low nibble and L / 2 + j in the high one;
    the padding is code 0, and the words are as many as plain order's."""
    K = 600
    q = torch.randint(0, 16, (3, K), dtype=torch.uint8)
    words = pack(q, 4, "pairs")
    assert words.shape == pack(q, 4).shape and torch.equal(unpack(words, 4, K, "pairs"), q)
    padded = torch.nn.functional.pad(q, (0, 8))
    b = words.view(torch.uint8)
    for byte in range(b.shape[1]):
        c, j = byte // 128, byte % 128
        half = 128 if c < 2 else 48
        assert torch.equal(b[:, byte] & 15, padded[:, 256 * c + j])
        assert torch.equal(b[:, byte] >> 4, padded[:, 256 * c + half + j])


def test_sign_order_stores_each_code_as_sign_and_magnitude():
    """W4A8-FP8's sign order, byte by byte against its definition (format.py): the pairs of W4A8, byte j holding
    |v| of its low channel in bits 0-2 and the sign in bit 7, |v| of its high channel in bits 4-6, and that channel's
    sign in bit 3 of the next byte of its word (byte 0 for byte 3), v = c - 8; the padding is v = 0. Rotating a word
    right by 4 gives the high channels' bytes as the low ones are (wa_gemm's w4f8). Code 0 (-8) has no place."""
    K = 600
    q = torch.randint(1, 16, (3, K), dtype=torch.uint8)
    words = pack(q, 4, "signs")
    assert words.shape == pack(q, 4).shape and torch.equal(unpack(words, 4, K, "signs"), q)
    v = torch.nn.functional.pad(q.long() - 8, (0, 8))
    b = words.view(torch.uint8).long()
    rotated = words.long() & 0xFFFFFFFF
    rotated = (rotated >> 4 | rotated << 28) & 0x87878787
    high_bytes = torch.stack([rotated >> 8 * i & 255 for i in range(4)], -1).view(3, -1)
    for byte in range(b.shape[1]):
        c, j = byte // 128, byte % 128
        half = 128 if c < 2 else 48
        low, high = v[:, 256 * c + j], v[:, 256 * c + half + j]
        assert torch.equal(b[:, byte] & 7, low.abs()) and torch.equal(b[:, byte] >> 7, (low < 0).long())
        nxt = byte - byte % 4 + (byte + 1) % 4
        assert torch.equal(b[:, byte] >> 4 & 7, high.abs()) and torch.equal(b[:, nxt] >> 3 & 1, (high < 0).long())
        h = high_bytes[:, byte]
        assert torch.equal(torch.where(h > 127, -(h & 7), h), high)
    q[1, 7] = 0
    with pytest.raises(ValueError, match="codes 1..15"):
        pack(q, 4, "signs")


def test_lowest_code_keeps_clipped_and_gptq_codes_in_the_sign_orders_grid():
    """lo = 1 (W4A8-FP8): a clipped symmetric grid, which reaches code 0 otherwise, and GPTQ, whose updates can
    reach it, stay in 1..15; the other codes are those of lo = 0."""
    W = torch.randn(16, 256)
    s, z = fit_grid(W, 4, -1, sym=True, clip=0.7)
    free, floor = quantize(W, s, z, 4), quantize(W, s, z, 4, lo=1)
    assert (free == 0).any() and floor.min() == 1 and torch.equal(floor, free.clamp(min=1))
    X = torch.randn(512, 256)
    assert gptq.gptq(W, X.T @ X, 4, -1, sym=True, clip=0.7, lo=1)[0].min() == 1
    assert gptq.gptq(W, X.T @ X, 4, -1, sym=True, clip=0.7)[0].min() == 0


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("group_size", [32, -1])
def test_grid_rounds_to_nearest_level(bits, sym, group_size):
    W = torch.randn(16, 128) * torch.rand(16, 1) * 3
    s, z = fit_grid(W, bits, group_size, sym)
    q = quantize(W, s, z, bits)
    assert q.max() <= 2 ** bits - 1
    err = (dequantize(q, s, z) - W).reshape(16, s.shape[1], -1).abs()
    assert (err <= s[..., None] / 2 * (1 + 1e-5)).all()  # no value is outside its group's range
    if sym:
        assert torch.equal(dequantize(torch.full_like(q, 2 ** (bits - 1)), s, z), torch.zeros_like(W))


def test_clip_shrinks_the_range_and_tokens_get_their_own_grid():
    W = torch.randn(4, 64)
    step = W.abs().amax(1) / 15  # the rounded zero point can move the clipped range by up to one step
    assert (fake_quant(W, 4, -1, clip=0.5).abs().amax(1) <= W.abs().amax(1) * 0.5 + step).all()
    x = torch.randn(2, 3, 64) * torch.tensor([1.0, 100.0, 0.01])[None, :, None]
    xq = quantize_tokens(x, 8)
    assert ((xq - x).abs().amax(-1) <= x.abs().amax(-1) / 127 / 2 * 1.001).all()  # per-token scale


def test_qlinear_forward_is_rotation_then_token_quantization_then_dequantized_matmul():
    W, x = torch.randn(48, 64), torch.randn(5, 64)
    R = torch.linalg.qr(torch.randn(64, 64))[0]
    q, s, z = rtn.rtn(W, 4, 32)
    rot = Rotation(1, 64, shared=True)
    rot.r1.copy_(R[None])
    m = QLinear.from_codes(q, s, z, torch.randn(48), rotation=rot, bits=4, group_size=32, act_bits=8)
    expect = quantize_tokens(x @ R, 8) @ dequantize(q, s, z).T + m.bias
    assert torch.allclose(m(x), expect, atol=1e-5)
    assert m.config()["bits"] == 4 and m.config()["bias"]


def calibration_inputs(name, n=16, T=128):
    """The real inputs of block 0's Linear `name` in the bundled tiny-llada, on held-out text."""
    from calibrate import Args, text_windows
    path = os.path.join(ROOT, "assets", "tiny-llada")
    m, tok = M.load(path), M.load_tokenizer(path)
    ids = text_windows(Args(nsamples=n, seqlen=T, calib_data=os.path.join(ROOT, "data", "wiki_heldout.txt.gz")),
                       m, tok)
    x, rope, _ = m.block_inputs(ids)
    keep = lambda acc, X, w: X if acc is None else torch.cat([acc, X])  # noqa: E731
    X = input_stats(m.blocks[0], BlockInputs(x, rope), [name], keep)[name]
    return m.blocks[0].get_submodule(name).weight.detach(), X


@pytest.mark.parametrize("name", ["attn.q_proj", "mlp.down_proj"])
@pytest.mark.parametrize("bits,act_order", [(4, False), (3, False), (3, True)])
def test_gptq_beats_rtn_on_the_same_layer_and_data(name, bits, act_order):
    W, X = calibration_inputs(name)
    H = X.T @ X / len(X)
    out = X @ W.T
    q, s, z, _ = gptq.gptq(W, H, bits, 128, act_order=act_order)
    err_gptq = (X @ dequantize(q, s, z).T - out).norm() / out.norm()
    err_rtn = (X @ dequantize(*rtn.rtn(W, bits, 128)).T - out).norm() / out.norm()
    assert err_gptq < 0.8 * err_rtn


def test_gptq_pins_dead_inputs_and_survives_a_singular_hessian():
    W, X = torch.randn(8, 64), torch.randn(32, 64)
    X[:, 5] = 0  # a dead input channel; 32 tokens < 64 channels: H is singular
    q, s, z, damp = gptq.gptq(W, X.T @ X, 4, 32, damp=0.0 + 1e-12)
    Wq = dequantize(q, s, z)
    assert damp > 1e-12 and Wq[:, 5].abs().max() <= s.max() and torch.isfinite(Wq).all()


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_awq_scaling_leaves_the_float64_block_unchanged(family):
    m = M.load(os.path.join(ROOT, "assets", f"tiny-{family}")).double()
    x, rope, _ = m.block_inputs(torch.randint(0, 4000, (4, 48)))
    inputs, block = BlockInputs(x, rope), m.blocks[3]
    before = inputs.run(block)
    scaled = 0
    for prev, names, judge in awq.SCALE_GROUPS:
        linears = [block.get_submodule(n) for n in names]
        if block.get_submodule(prev).weight.shape[0] != linears[0].weight.shape[1]:
            continue
        s = awq.search_scale(linears, awq.capture(block, inputs, names[0]), awq.judge_fn(block, judge, inputs), 4,
                             16, False)
        apply_scale(block, prev, names, s)
        scaled += not torch.allclose(s, torch.ones_like(s))
    assert scaled >= 2 and (inputs.run(block) - before).abs().max() <= 1e-10 * before.abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_codes_are_chosen_against_the_scales_as_stored(dtype):
    """A bf16 / fp16 layer stores its scales in that dtype: the grid rounds them first, so each code is the nearest
    level of the grid the checkpoint holds (GPTQ and RTN), not of an fp32 grid it never stores."""
    W = (torch.randn(32, 256) * 0.02).to(dtype)
    for sym in (False, True):
        s, z = fit_grid(W, 8, 128, sym)
        assert torch.equal(s, s.to(dtype).float())
        q, _, _ = rtn.rtn(W, 8, 128, sym)
        level = (q.float().reshape(32, 2, 128) - z[..., None]) * s[..., None]
        assert ((level - W.float().reshape(32, 2, 128)).abs() <= s[..., None] / 2 * (1 + 1e-6)).all()
        H = torch.eye(256) + 0.1
        qg, sg, _, _ = gptq.gptq(W, H, 8, 128, sym)
        assert torch.equal(sg, sg.to(dtype).float())


def test_float_statistics_walk_feeds_each_block_the_float_models_inputs():
    """walk_blocks(float_inputs=True) gives every block the float model's own inputs, however the blocks before
    were changed; the default gives it the changed blocks' outputs."""
    from quantizers.walk import Calib, walk_blocks
    m = M.load(os.path.join(ROOT, "assets", "tiny-llada"))
    tokens = torch.randint(0, 4000, (2, 24))
    with torch.no_grad():
        x, rope, _ = m.block_inputs(tokens)
        expect = []
        for block in m.blocks:
            expect.append(x)
            x = block(x, rope)
    for float_inputs in (True, False):
        mm = M.load(os.path.join(ROOT, "assets", "tiny-llada"))
        seen = []
        for _, block, inputs in walk_blocks(mm, Calib(tokens, torch.zeros_like(tokens, dtype=torch.bool)), "cpu",
                                            float_inputs, log=lambda _: None):
            seen.append(inputs.x.clone())
            block.mlp.down_proj.weight.data *= 1.5  # a change the next block's inputs show, unless float
        same = [torch.allclose(a, b, atol=1e-5) for a, b in zip(seen, expect, strict=True)]
        assert all(same) if float_inputs else same == [True] + [False] * (len(expect) - 1)


FUSE_SHAPES = {"llada": M.ModelArgs("llada", 256, 2, 4, 4, 512, 96, 1e-5, 5e5, False, 64, 95),
               "dream": M.ModelArgs("dream", 256, 2, 4, 2, 512, 96, 1e-6, 1e6, True, 64, 95)}  # GQA and biases


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("fmt", ["bf16", "W4A16 g128", "W8A8-FP8", "W4A8", "W4A4 + Hadamard"])
@torch.no_grad()
def test_fused_projections_give_the_unfused_logits(family, fmt):
    import bench
    from quantizers.core import fuse_projections
    torch.manual_seed(0)
    model = bench.random_model(FUSE_SHAPES[family], "cpu", torch.float32)
    for p in model.parameters():  # random_model's N(0, 0.02) weights give a flat output: widen them
        p.data *= 10 if p.dim() > 1 else 1
    if bench.FORMATS[fmt] is not None:
        bench.quantize_random(model, bench.FORMATS[fmt])
        model.float()  # the quantized layers' scales were made in bf16
    ids = torch.randint(0, 95, (2, 24))
    ref = model(ids)
    assert fuse_projections(model, dense=fmt == "bf16") == 4  # two groups in each of two blocks
    for b in model.blocks:
        assert b.attn.q_proj is None and b.mlp.gate_proj is None and b.attn.qkv_proj.out_features == b.attn.n_heads \
            * b.attn.head_dim + 2 * b.attn.n_kv_heads * b.attn.head_dim
    assert torch.allclose(model(ids), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="fused for inference"):
        M.save(model, "/nonexistent")


def test_projections_fuse_only_when_their_layers_agree():
    import bench
    from quantizers.core import QLinear, fuse_projections, swap
    torch.manual_seed(0)
    model = bench.random_model(FUSE_SHAPES["llada"], "cpu", torch.float32)
    assert fuse_projections(model) == 0  # plain Linears only with dense=True
    bench.quantize_random(model, bench.FORMATS["W8A8-FP8"])
    v = model.blocks[0].attn.v_proj  # an IA-AQ-style output quantizer on one v_proj: that block's q/k/v stay apart
    v.out_bits = 8
    up = model.blocks[1].mlp.up_proj  # another activation width on one up_proj: that gate/up stays apart
    swap(model.blocks[1], "mlp.up_proj", QLinear.from_codes(torch.zeros(up.out_features, up.in_features,
                                                                        dtype=torch.uint8), up.scales, up.zeros,
                                                            bits=8, fp8=True, act_bits=16, dtype=up.scales.dtype))
    assert fuse_projections(model) == 2
    assert model.blocks[0].attn.qkv_proj is None and model.blocks[0].mlp.gate_up_proj is not None
    assert model.blocks[1].attn.qkv_proj is not None and model.blocks[1].mlp.gate_up_proj is None


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["W4A16 g128", "W8A8-FP8", "W8A8-INT8", "W4A8"])
@torch.no_grad()
def test_fused_projections_on_the_triton_kernels(fmt):
    import bench
    from quantizers.core import fuse_projections
    torch.manual_seed(0)
    model = bench.random_model(FUSE_SHAPES["dream"], "cuda")
    for p in model.parameters():
        p.data *= 10 if p.dim() > 1 else 1
    bench.quantize_random(model, bench.FORMATS[fmt])
    ids = torch.randint(0, 95, (2, 320), device="cuda")
    ref = model(ids).float()
    assert fuse_projections(model) == 4
    out = model(ids).float()
    assert (out - ref).abs().max() <= 0.02 * ref.abs().max()  # bf16 activations: rounding order only
