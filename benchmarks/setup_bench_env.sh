#!/usr/bin/env bash
# Create the benchmark environment: a venv that sees the system site-packages
# (numpy, scipy, astropy, numba, specwidgets) plus the reference peer,
# specsuite 1.2.1, installed WITHOUT its dependencies (its package __init__
# imports jax and more, which the benchmarks never load: they import only
# specsuite.warping, see benchmarks/_common.py), and the three packages that
# specsuite.warping itself imports: matplotlib, joblib, tqdm.
#
# Usage: bash benchmarks/setup_bench_env.sh [VENV_DIR]
#   VENV_DIR defaults to benchmarks/.venv-bench. PYTHON picks the base
#   interpreter (default: python3), which must have specwidgets installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv-bench}"
python="${PYTHON:-python3}"

if ! "$python" -c "import specwidgets" 2>/dev/null; then
    echo "warning: $python cannot import specwidgets; install it first (pip install -e .)" >&2
fi

"$python" -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet --no-deps "specsuite==1.2.1"
"$venv/bin/python" -m pip install --quiet matplotlib joblib tqdm

# Smoke test: the warping module loads without running specsuite/__init__.
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$venv/bin/python" -c '
from _common import import_specsuite_warping, specsuite_version
import specwidgets
ss = import_specsuite_warping()
assert ss is not None, "specsuite.warping did not import"
print(f"bench env ready: specsuite {specsuite_version()}, specwidgets {specwidgets.__version__}")
'
echo "run the benchmarks with: $venv/bin/python $here/bench_sky.py"
