#!/usr/bin/env bash
# Type-check the packages that are strict so far (pyproject.toml [tool.mypy]).
# mypy cannot follow setuptools' package-dir mapping (the kernels/ folder is installed as dse.kernels), so
# it runs on a tree of symlinks laid out as the installed package is.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/dse"
for f in "$root"/dse/*; do ln -s "$f" "$tree/dse/"; done
ln -s "$root/kernels" "$tree/dse/kernels"
cd "$tree"
packages=(dse.kernels dse.multipliers dse.search dse.nn dse.quant dse.prepare dse.rundir dse.study dse.train dse.agn dse.simulation dse.util dse.cli.options dse.hwconfig dse.errors dse.retrain dse.energy dse.data dse.models dse.hardware)
args=()
for p in "${packages[@]}"; do args+=(-p "$p"); done
exec mypy --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache" "${args[@]}" "$@"
