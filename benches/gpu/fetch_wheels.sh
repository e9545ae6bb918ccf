#!/usr/bin/env bash
# Download the wheels of benches/gpu/wheels.txt into .whl/ (ignored; carried to the GPU machine)
# for its Python 3.12 x86-64, and check each one's sha256.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
grep -v '^#' benches/gpu/wheels.txt | while read -r file bytes sha; do
  [ -n "$file" ] || continue
  if [ ! -f ".whl/$file" ]; then
    spec=$(echo "$file" | cut -d- -f1,2 | sed 's/-/==/')  # diffusers-0.42.1-... -> diffusers==0.42.1
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$spec"
  fi
  echo "$sha  .whl/$file" | sha256sum -c -
done
