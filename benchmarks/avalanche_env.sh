#!/bin/bash
# A separate virtual environment with Avalanche (avalanche-lib) on the CPU build of torch, for
# `benchmarks/e2e.py --avalanche-python VENV/bin/python`. Never used by the tests or CI.
#
# Avalanche needs torchvision, and torchvision's PyPI wheel is built against the CUDA build of
# torch: installed with its dependencies it pulls a multi-GB CUDA torch. Here torch is the CPU
# build, and torchvision and avalanche-lib are installed without dependencies (then theirs,
# torch excepted). torchvision's compiled operators (nms, roi_align, ...) cannot load without
# CUDA torch, and its fake-kernel registrations for them then fail at import; the script empties
# that one file (torchvision/_meta_registrations.py). Nothing that e2e.py times uses those
# operators (an MLP, tensors, Avalanche's EWC strategy).
#
# Usage: bash benchmarks/avalanche_env.sh [VENV]   (default: .venv-avalanche)
set -euo pipefail
venv="${1:-.venv-avalanche}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q "torch==2.13.0"
"$venv/bin/pip" install -q --no-deps "torchvision==0.28.0" "avalanche-lib==0.6.0"
"$venv/bin/pip" install -q typing-extensions psutil gputil scikit-learn matplotlib numpy pillow \
    pytorchcv wandb "tensorboard>=1.15" tqdm torchmetrics gdown qpsolvers dill packaging
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo '"""Emptied by benchmarks/avalanche_env.sh: the compiled ops these describe need CUDA torch."""' \
    > "$site/torchvision/_meta_registrations.py"
"$venv/bin/python" -c "import avalanche.training, torch; print('avalanche ready, torch', torch.__version__)"
