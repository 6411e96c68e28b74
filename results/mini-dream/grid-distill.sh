# The device scripts of 2026-11-22's third session, in the order they ran on one H100 (paths as on the device:
# /tmp/qwen-ar from tools/gguf_to_dream.py, /tmp/tokens from data/prepare_code.py, /tmp/tasks the HumanEval data).

# ===== train.sh
# usage: bash .dev/sh/train.sh MINUTES [extra train.py flags]; adapts /tmp/qwen-ar into /tmp/mini-dream
mins=$1; shift
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
t0=$SECONDS
run() { timeout $((585 - (SECONDS - t0))) python3 train.py --init_from /tmp/qwen-ar --data /tmp/tokens --out /tmp/mini-dream --arith_frac 0 --seq_len 1024 --lr 5e-5 --warmup 50 --weight_decay 0 --prefix_frac 0.5 --eval_every 100000 --eval_batches 4 --compile --seed 0 "$@"; }
run --batch_size 16 --minutes $mins "$@" 2>&1 | tee $OUT/adapt.log
if [ ${PIPESTATUS[0]} -ne 0 ] && grep -q "OutOfMemory\|out of memory" $OUT/adapt.log; then
  left=$(python3 -c "print(round($mins - ($SECONDS - $t0) / 60 - 0.3, 1))")
  echo "=== OOM at batch 16: batch 12 for $left minutes"
  run --batch_size 12 --minutes $left "$@" 2>&1 | tee $OUT/adapt12.log
fi
echo "call took $((SECONDS - t0)) s"
nvidia-smi --query-gpu=memory.used --format=csv
ls -la /tmp/mini-dream

# ===== grid.sh
# usage: bash .dev/sh/grid.sh SECONDS; the float cell with HumanEval, then the NLL grid until SECONDS; $OUT/cells.tgz
export PYTHONUNBUFFERED=1
R="python3 results/run.py --models mini-dream --mini_dream /tmp/mini-dream --tasks_dir /tmp/tasks --scratch /tmp/cells"
timeout 200 $R --only float --jobs 1
cat results/mini-dream/float.json | head -8
timeout $(($1 - SECONDS)) $R --nll_only --jobs 3
pkill -f calibrate.py; pkill -f eval.py
tar czf $OUT/cells.tgz results/mini-dream/*.json

# ===== rest.sh
export PYTHONUNBUFFERED=1
R="python3 results/run.py --models mini-dream --mini_dream /tmp/mini-dream --tasks_dir /tmp/tasks --scratch /tmp/cells --nll_only"
timeout $1 $R --only w4-,w3-,w8a8-rtn,w4a4-rtn,w4a4-quarot-gptq,dllmquant --jobs 3
pkill -f calibrate.py; pkill -f eval.py
tar czf $OUT/cells.tgz results/mini-dream/*.json

# ===== run2.sh
# the second adaptation: its own float cell (HumanEval + NLL) and the cells model 1 did not reach
export PYTHONUNBUFFERED=1
mkdir -p /tmp/old && mv results/mini-dream/*.json /tmp/old/ && cp /tmp/old/summary.json results/mini-dream/
R="python3 results/run.py --models mini-dream --mini_dream /tmp/mini-dream --tasks_dir /tmp/tasks --scratch /tmp/cells"
timeout $1 $R --only float --jobs 1 &
timeout $1 $R --nll_only --only w2-quantdllm-clean --jobs 1 &
timeout $1 $R --nll_only --only w4-gptq,w3-rtn,w3-gptq,w8a8-rtn,w4a4-rtn,w4-rtn,w4a4-quarot-clean --jobs 3
wait
pkill -f calibrate.py; pkill -f eval.py
nvidia-smi --query-gpu=memory.used --format=csv
tar czf $OUT/cells.tgz results/mini-dream/*.json

# ===== he2.sh
export PYTHONUNBUFFERED=1
mkdir -p /tmp/old2 && mv results/mini-dream/*.json /tmp/old2/ && cp /tmp/old2/summary.json results/mini-dream/
timeout $1 python3 results/run.py --models mini-dream --mini_dream /tmp/mini-dream --tasks_dir /tmp/tasks --scratch /tmp/cells2 --only w2-quantdllm-clean,w4-rtn,w8a8-rtn,w4a4-quarot-clean --jobs 2
pkill -f calibrate.py; pkill -f eval.py
tar czf $OUT/cells.tgz results/mini-dream/*.json

# calls: train.sh 7.5 --distill 0.5 (run A); grid.sh 570; rest.sh 400; then a second machine: train.sh 7.5 --distill 0.5 (run B); run2.sh 560; he2.sh 520
