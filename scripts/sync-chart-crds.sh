#!/usr/bin/env bash
# Copy the PythonJob/PythonJobType CRDs from crds/ (the source of truth) into the Helm chart.
# tests/unit/test_chart.py fails when the two differ. Usage: scripts/sync-chart-crds.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
src=crds
dst=charts/tako-vm/crds
check=false
[[ "${1:-}" == "--check" ]] && check=true

shopt -s nullglob
sources=("$src"/*.yaml)
if [[ ${#sources[@]} -eq 0 ]]; then
  echo "sync-chart-crds: no CRD files in $src/" >&2
  exit 1
fi

status=0
for file in "${sources[@]}"; do
  target="$dst/$(basename "$file")"
  if ! cmp -s "$file" "$target"; then
    if $check; then
      echo "sync-chart-crds: $target differs from $file" >&2
      status=1
    else
      cp "$file" "$target"
      echo "sync-chart-crds: updated $target"
    fi
  fi
done
# Remove chart copies of takovm.dev CRDs that no longer exist in crds/ (kopf's CRDs stay).
for target in "$dst"/*takovm.dev.yaml; do
  if [[ ! -e "$src/$(basename "$target")" ]]; then
    if $check; then
      echo "sync-chart-crds: $target has no source in $src/" >&2
      status=1
    else
      rm "$target"
      echo "sync-chart-crds: removed $target"
    fi
  fi
done
exit $status
