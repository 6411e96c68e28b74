pkill -f eval.py; pkill -f calibrate.py; sleep 3; nvidia-smi --query-gpu=memory.used --format=csv
export PYTHONUNBUFFERED=1; mkdir -p $OUT/l /tmp/c
python3 eval.py --model /tmp/mini-dream --tasks humaneval,wiki_nll --data_dir /tmp/tasks --gen_length 256 --steps 256 --block_length 32 --batch_size 41 --allow_code_exec --workers 8 --out $OUT/l/float.json > $OUT/l/float.log 2>&1 &
cell() { n=$1; shift; timeout $((END - SECONDS)) python3 calibrate.py --model /tmp/mini-dream "$@" --device cuda --dtype float32 --nll_windows 0 --out /tmp/c/$n > $OUT/l/$n.log 2>&1 && timeout $((END - SECONDS)) python3 eval.py --model /tmp/c/$n --tasks wiki_nll --out $OUT/l/$n.json >> $OUT/l/$n.log 2>&1; echo "[$SECONDS s] $n $(grep 'wiki_nll nll' $OUT/l/$n.log)"; }
END=$((SECONDS + 470))
(cell w4-rtn --method rtn --wbits 4; cell w4-gptq --method gptq --wbits 4; cell w4-awq --method awq --wbits 4; cell w3-rtn --method rtn --wbits 3; cell w3-gptq --method gptq --wbits 3; cell w3-awq --method awq --wbits 3) &
(cell w8a8-rtn --method rtn --wbits 8 --abits 8 --group_size -1; cell w8a8-smoothquant --method smoothquant --bits 8; cell w8a8-quarot --method quarot --bits 8; cell w4a4-rtn --method rtn --wbits 4 --abits 4 --group_size -1; cell w4a4-smoothquant --method smoothquant --bits 4; cell w4a4-quarot --method quarot --bits 4) &
(cell w4a4-quarot-gptq --method quarot,gptq --bits 4; cell w2-gptq --method gptq --wbits 2; cell w2-quantdllm --method quantdllm --wbits 2; cell w4a4-duquant --method duquant --bits 4) &
wait
grep -h "pass@1\|wiki_nll nll" $OUT/l/float.log
cd $OUT && tar czf l.tgz l && rm -rf l
