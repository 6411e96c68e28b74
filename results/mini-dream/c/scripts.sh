# The device scripts of 2026-11-22's fourth session (run C), in the order they ran on H100s (paths as on the device:
# /tmp/qwen-ar from tools/gguf_to_dream.py, /tmp/tokens from data/prepare_code.py, /tmp/tasks the HumanEval and GSM8K data).
# Calls: setup.sh and convert.sh as in grid-distill.sh; conv2.sh; train_c.sh; fp_c.sh 330; back.sh 0..21 (the model, 85 chunks,
# back to the CPU machine); bg.sh (lost with the machine); then on fresh machines: m2setup.sh, put.sh x 20, join.sh;
# diag2.sh, nllcmp.sh, layercmp.py; bg2.sh 880 2 w4-rtn,w4-gptq,w3-gptq,w8a8-rtn,w4a4-quarot-clean,w4a4-quarot-gptq-clean; wait.sh 280 x 3.

# diag.py, nllcmp.sh and layercmp.py ran against the working tree of the day, where simulate() (renamed cache_weights())
# also sent W8A8 / W4A4 layers through the torch twin, with a torch.compile'd rounding; --fake_quant was its flag. That
# variant was dropped (README, mini-Dream): the numbers these scripts printed are quoted there as the reason.
# ===== conv2.sh
# the last GGUF part, then assemble and convert (as convert.sh)
cp .dev/p/part7 /tmp/g/ && bash .dev/sh/convert.sh 2>&1 | tail -5
sha256sum /tmp/qwen.gguf

# ===== train_c.sh
# run C: the README's adaptation command, --steps 2323 (run A's count), into /tmp/mini-dream
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
t0=$SECONDS
timeout 585 python3 train.py --init_from /tmp/qwen-ar --data /tmp/tokens --out /tmp/mini-dream --arith_frac 0 \
    --batch_size 16 --seq_len 1024 --lr 5e-5 --warmup 50 --weight_decay 0 --prefix_frac 0.5 --distill 0.5 \
    --steps 2323 --eval_every 100000 --eval_batches 4 --compile --seed 0 2>&1 | tee $OUT/adapt-c.log | tail -30
echo "call took $((SECONDS - t0)) s"
ls -la /tmp/mini-dream && sha256sum /tmp/mini-dream/model.safetensors

# ===== fp_c.sh
# run C's float cell (HumanEval + wiki NLL on the shared masks), then GSM8K on the first 100 test problems
export PYTHONUNBUFFERED=1
python3 results/run.py --models mini-dream --mini_dream /tmp/mini-dream --tasks_dir /tmp/tasks --scratch /tmp/cells --run c --only float --jobs 1
cat results/mini-dream/c/float.json | head -12
timeout $(($1 - SECONDS)) python3 eval.py --model /tmp/mini-dream --tasks gsm8k --data_dir /tmp/tasks --limit 100 --batch_size 50 --out $OUT/gsm8k-float.json 2>&1 | grep -v "samples/s"
tar czf $OUT/cells.tgz results/mini-dream/c
cp /tmp/meta.tgz /tmp/sum.txt $OUT/ 2>/dev/null; true

# ===== back.sh
# usage: bash .dev/sh/back.sh K: chunks 8K..8K+7 of /tmp/mini-dream/model.safetensors (14.9 MB each) into $OUT
mkdir -p /tmp/split
if [ ! -f /tmp/split/done ]; then
  (cd /tmp/split && split -b 14900000 -d -a 3 /tmp/mini-dream/model.safetensors c. && touch done)
  ls /tmp/split | grep -c '^c\.'
fi
ls /tmp/split | grep '^c\.' | sed -n "$((4 * $1 + 1)),$((4 * $1 + 4))p" | while read f; do cp /tmp/split/$f $OUT/; done
[ "$1" = 0 ] && (cd /tmp/mini-dream && tar czf /tmp/meta.tgz --exclude model.safetensors . && sha256sum model.safetensors > /tmp/sum.txt)
ls $OUT

# ===== bg2.sh
# usage: bash .dev/sh/bg.sh SECONDS JOBS ONLY: run C's cells in the background from a copy of the tree (/tmp/repo2)
rm -rf /tmp/repo2 && mkdir -p /tmp/repo2 && cp -r $(ls -A | grep -v '^\.dev$') /tmp/repo2/
cd /tmp/repo2 && PYTHONUNBUFFERED=1 setsid nohup timeout $1 python3 results/run.py --models mini-dream --mini_dream /tmp/mini-dream \
    --tasks_dir /tmp/tasks --scratch /tmp/cells --run c --cache_weights --jobs $2 --only $3 > /tmp/grid2.log 2>&1 < /dev/null &
sleep 2; pgrep -f results/run.py

# ===== peekbg2.sh
# progress of the background grid, and its finished cells as $OUT/cells.tgz
cat /tmp/grid2.log; pgrep -f "results/run.py" | head -3; ls /tmp/repo2/results/mini-dream/c/
cd /tmp/repo2 && tar czf $OUT/cells.tgz results/mini-dream/c

# ===== wait.sh
# usage: bash .dev/sh/wait.sh SECONDS: wait (keeping the machine busy) while the background grid runs, then peek
end=$((SECONDS + $1)); n0=$(ls /tmp/repo/results/mini-dream/c/ | wc -l)
while [ $SECONDS -lt $end ] && pgrep -f results/run.py > /dev/null; do sleep 5; done
bash .dev/sh/peekbg2.sh

# ===== m2setup.sh
set -e
nvidia-smi --query-gpu=name,memory.used --format=csv
mkdir -p /tmp/mini-dream /tmp/cc && tar xzf .dev/c/meta.tgz -C /tmp/mini-dream && rm -rf /tmp/tasks && cp -r .dev/tasks /tmp/tasks
cp .dev/c/c.* /tmp/cc/ && ls /tmp/mini-dream /tmp/cc | tr '\n' ' '

# ===== put.sh
mkdir -p /tmp/cc && cp .dev/c/c.* /tmp/cc/ && ls /tmp/cc | wc -l

# ===== join.sh
set -e
cp .dev/c/c.* /tmp/cc/ 2>/dev/null || true
ls /tmp/cc | wc -l
cat $(ls /tmp/cc/c.* | sort) > /tmp/mini-dream/model.safetensors && rm -rf /tmp/cc
sha256sum /tmp/mini-dream/model.safetensors

# ===== diag2.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=.
python3 calibrate.py --model /tmp/mini-dream --method quarot --bits 4 --device cuda --dtype bfloat16 --nll_windows 0 --out /tmp/diag/w4a4 2>&1 | tail -1
python3 calibrate.py --model /tmp/mini-dream --method rtn --wbits 8 --abits 8 --group_size -1 --device cuda --dtype bfloat16 --nll_windows 0 --out /tmp/diag/w8a8 2>&1 | tail -1
python3 .dev/sh/diag.py /tmp/diag/w4a4 /tmp/diag/w8a8
python3 -m pytest -q -m gpu tests/test_wa_kernels.py -k simulated 2>&1 | tail -2

# ===== diag.py
# times one forward (41 x 400 tokens) of mini-Dream in bf16: float, a quantized checkpoint through the kernels and
# through simulate() (compiled activation rounding); compares the two quantized paths' logits
import sys, time, torch
import model as M
from quantizers.core import simulate
torch.manual_seed(0)
ids = torch.randint(0, 150000, (41, 400), device="cuda")
sel = torch.rand(41, 400, device="cuda") < 0.1
def bench(m, name, n=5):
    with torch.no_grad():
        out = m(ids, select=sel); m(ids, select=sel)
        torch.cuda.synchronize(); t = time.time()
        for _ in range(n): m(ids, select=sel)
        torch.cuda.synchronize()
    print(f"{name}: {(time.time() - t) / n * 1e3:.1f} ms per forward", flush=True)
    return out.float()
fp = M.load("/tmp/mini-dream", torch.bfloat16, "cuda"); bench(fp, "float"); del fp
for path in sys.argv[1:]:
    q = M.load(path, torch.bfloat16, "cuda"); a = bench(q, f"{path} kernels", 3)
    simulate(q); b = bench(q, f"{path} simulate")
    print(f"  max |diff| / max |logit| {((a - b).abs().max() / a.abs().max()).item():.4f}, "
          f"top-1 agreement {(a.argmax(-1) == b.argmax(-1)).float().mean().item():.4f}", flush=True)
    del q

# ===== nllcmp.sh
export PYTHONUNBUFFERED=1
for c in w4a4 w8a8; do for f in "" "--fake_quant"; do
  python3 eval.py --model /tmp/diag/$c --tasks wiki_nll $f 2>&1 | grep "wiki_nll nll"; done; done
bash .dev/sh/peekbg.sh | tail -3

# ===== layercmp.py
import sys, torch
sys.path.insert(0, "tests")
import test_wa_kernels as T
from kernels import act_quant, wa_gemm
from quantizers.core import simulate
torch.manual_seed(0)
for fmt in ("fp8", "int8", "int4"):
    for rep in range(3):
        lin = T.layer(512, 1024, fmt, False, torch.bfloat16).to("cuda")
        x = torch.randn(300, 1024, device="cuda", dtype=torch.bfloat16)
        xq, sx = act_quant.reference(x, fmt, 1.0)
        ref = wa_gemm.reference(xq, sx, wa_gemm.weight_operand(lin, fmt), lin.scales.double(), lin.zeros, fmt, 1024, lin.bias, torch.float64)
        err = lambda y: ((y.double() - ref).abs().max() / ref.abs().max()).item()
        k = err(lin(x)); eager = err(lin.dequantized_forward(x)); simulate(lin); s = err(lin(x))
        print(f"{fmt}: kernel {k:.4f} eager twin {eager:.4f} simulated {s:.4f}", flush=True)

# ===== 2026-11-22, fifth session: the rest of run C's grid, from the model kept on the CPU machine
# Machine 1: m2setup.sh; put.sh x 20; join.sh (sha256 094310b4... matched); then
#   bash .dev/sh/bg2.sh 1500 2 w8a8-rtn,w8a8-smoothquant-clean,w8a8-quarot-clean,w8a8-duquant-clean,w4a4-rtn,\
#     w4a4-smoothquant-clean,w4a4-duquant-clean,w4-awq,w3-rtn,w3-gptq,w3-awq,w2-quantdllm-clean,w2-quantdllm-masked,\
#     w4a4-quarot-dllmquant-trajectory
#   gwait.sh 240 (below: the GPU test of cache_weights, 1 passed); wait.sh x 5. Finished: both DuQuant cells, both
#   SmoothQuant cells, W8A8 QuaRot, both Quant-dLLM cells, W4 AWQ; the timeout stopped the DLLMQuant cell.
# Machine 2: m2setup.sh; put.sh x 20; join.sh (sha256 matched); then
#   bash .dev/sh/bg2.sh 1400 3 w4a4-quarot-dllmquant-trajectory,w3-awq,w3-gptq,w3-rtn,w8a8-rtn,w4a4-rtn
#   wait.sh x 3: all six finished.
# w4a4-quarot-masked was not run: QuaRot with RTN weights reads no calibration data (its clean cell is the same model).

# ===== gwait.sh
# usage: bash .dev/sh/gwait.sh SECONDS: the GPU test of cache_weights (from /tmp/repo2), then wait.sh
(cd /tmp/repo2 && timeout 120 python3 -m pytest -q -m gpu tests/test_wa_kernels.py -k cached 2>&1 | tail -3)
bash .dev/sh/wait.sh $1
