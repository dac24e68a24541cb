#!/usr/bin/env python3
"""Dumps what Corral's GGUF reader is compared on, using llama.cpp's own gguf-py reader.

Usage: gguf_dump.py GGUF_PY_DIR FILE...   -> one JSON object per file on stdout (a JSON list).
Per file: architecture, every scalar key with its value, every array key with its length,
the tensor count and the data offset.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])
from gguf import GGUFReader, GGUFValueType  # noqa: E402


def main() -> None:
    out = []
    for path in sys.argv[2:]:
        reader = GGUFReader(path)
        scalars, arrays = {}, {}
        for name, field in reader.fields.items():
            if name.startswith("GGUF."):
                continue
            kind = field.types[0]
            if kind == GGUFValueType.ARRAY:
                arrays[name] = len(field.data)
            elif kind == GGUFValueType.STRING:
                scalars[name] = bytes(field.parts[field.data[0]]).decode("utf-8")
            else:
                value = field.parts[field.data[0]][0].item()
                scalars[name] = bool(value) if kind == GGUFValueType.BOOL else value
        out.append({
            "path": path,
            "architecture": scalars.get("general.architecture"),
            "scalars": scalars,
            "arrays": arrays,
            "tensor_count": len(reader.tensors),
            "data_offset": reader.data_offset,
        })
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
