#!/usr/bin/env bash
# The runs behind table.md: three of each, one after another, on one machine.
# Usage: bash docs/results/fashion_mnist_tuning/run.sh OUT_FOLDER
set -euo pipefail
out=${1:?give an output folder}
mkdir -p "$out"
common="--dataset=fashion_mnist --epochs=15 --batch_size=1024 --delta=1e-5"
space="--l2_norm_clip=1 --learning_rate_range=0.1,2"
for seed in 0 1 2; do
  # The fixed tanh run: the paper's activation, learning rate 0.4 at clip 1
  # (its 4.0 at clip 0.1), the whole training set, epsilon 2.7.
  keras-tempered-dp train $common --activation=tanh --learning_rate=0.4 \
    --l2_norm_clip=1 --target_epsilon=2.7 --seed=$seed --verbose=0 \
    --output_dir="$out/tanh_$seed"
done
for run in 0 1 2; do
  # The private search: epsilon 2.7 for the whole search and its output.
  keras-tempered-dp tune --private $common $space --target_epsilon=2.7 \
    --trials_mean=5 --output_dir="$out/private_$run"
done
for seed in 0 1 2; do
  # The plain search: 5 trials, each at epsilon 2.7, ranked on unprotected
  # validation data.
  keras-tempered-dp tune $common $space --target_epsilon=2.7 \
    --max_trials=5 --seed=$seed --output_dir="$out/plain_$seed"
done
