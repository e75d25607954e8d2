#!/bin/bash
# The CUDA checks of issues 11 and 14 in one call, for a session that is lent a GPU machine which cannot
# reach ../shared or a package index (bench/RESULTS.md, "CUDA runs"). From the repository root:
#
#   OUT=/tmp/out bash bench/cuda_check.sh            # SCALE=0.05 PY=.venv/bin/python: a short dry run here
#
# Expects the real events' .npz files in .devdata/radar/ and, where the machine lacks them, wheels of
# zarr, numcodecs, donfig, google-crc32c, netCDF4 and cftime in .whl/ (both ignored by git: list them in
# .git/info/exclude and carry them). Every stage has a timeout so the whole call ends within ~560 s;
# $OUT gets the logs and, split into parts of at most 15 MB, the trained weights (without optimiser state).
set -u -o pipefail
export PYTHONUNBUFFERED=1
SCALE=${SCALE:-1}
PY=${PY:-python3}
OUT=${OUT:?set OUT to the folder for results}
R11=outputs/gpu_real
R14=outputs/gpu_pretrain
T0=$(date +%s)
stamp() { echo "=== $(( $(date +%s) - T0 )) s: $*"; }
n() { $PY -c "print(max(1, round($1 * $SCALE)))"; }
quiet() { tr '\r' '\n' | grep -v "%|" | grep -v "^\s*$" | grep -v "^\s*warnings.warn"; }

if [ -d .whl ] && ! $PY -c "import zarr, netCDF4" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site
fi
stamp setup
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -2
$PY -c "import torch, zarr, numba, numpy, config, model, training, pretrain, dataset, preproc, evaluate
print('torch', torch.__version__, 'numba', numba.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())" || exit 4

# ---- issue 11: events -> stores with motion (every core), then run 5's recipe
RECIPE="model.convlstm_unet.lagrangian=true model.convlstm_unet.upsample=bilinear model.convlstm_unet.smoothing=true training.loss.name=weighted_mse
 training.select_on=csi training.early_stop_patience=4 training.amp=false training.val_steps=$(n 20)"
for RUN in "cuda_a training.lr=0.0001 training.epochs=$(n 30)"; do
  set -- $RUN
  stamp "issue 11 run $1"
  OMP_NUM_THREADS=4 timeout 150 $PY bench/real_data.py --radar .devdata/radar --out $R11 --name $1 --split val \
    --stride 1000 --cpu_minutes 0 --steps_per_epoch $(n 25) --set $RECIPE "${@:2}" 2>&1 | quiet | tail -8
done

# ---- issue 14: pretraining at GPU scale, both masks (pretrain_compare's data and model), 2 min each
stamp "issue 14 data"
$PY -c "
import argparse, sys
sys.path.insert(0, 'bench')
import pretrain_compare
pretrain_compare.write_params('$R14', argparse.Namespace(steps_per_epoch=10, pretrain_base_lr=0.032, radar='.devdata/radar'))"
timeout 60 $PY preproc.py --config $R14/params.json 2>&1 | quiet | tail -1
for MODE in spatiotemporal spatial; do
  stamp "pretrain $MODE"
  timeout 120 $PY pretrain.py --config $R14/params.json --mask_mode $MODE --exp_name gpu_$MODE --bs 64 --ep $(n 12) \
    --steps_per_epoch $(n 60) --wp_ep 1 --val_steps 10 --num_workers 12 2>&1 | quiet | tail -10
done

# ---- training steps of the models on CUDA
stamp bench_model
timeout 50 $PY bench/bench_model.py --device cuda --config $R14/params.json --models smaat_unet,spark_unet \
  --modes fp32,bf16 --cells "" --batch-size 32 --steps 5 2>&1 | tail -7

# ---- bring back: weights only, logs, panels
stamp pack
$PY -c "
import glob, torch
for path in glob.glob('$R14/checkpoints/gpu_*/best.pt') + glob.glob('$R11/cuda_*/checkpoints/best.pt'):
    torch.save({'model': torch.load(path, map_location='cpu', weights_only=False)['model']},
               path.replace('best.pt', 'weights.pt'))"
tar cf $OUT/results.tar $(ls -d $R14/checkpoints/gpu_*/weights.pt $R14/gpu_* $R11/cuda_*/train_log.csv \
  $R11/cuda_*/checkpoints/weights.pt $R11/cuda_*/params.json $R14/params.json 2>/dev/null)
(cd $OUT && split -b 15M results.tar results.tar. && rm results.tar && ls -la)
for f in $R11/cuda_*/train_log.csv $R14/gpu_*/pretrain_log.csv; do echo "--- $f"; cat $f; done
stamp done
