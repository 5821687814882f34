#!/usr/bin/env python3
"""Writes a parity golden's `image_u8` tensor as raw bytes and its metadata as key=value lines, for the C# tests.

Usage: golden_to_raw.py GOLDEN.safetensors OUT_DIR   ->  OUT_DIR/<name>.image_u8, OUT_DIR/<name>.meta
Reads the safetensors layout directly (8-byte little-endian header length, JSON header, data); stdlib only.
"""
import json
import os
import struct
import sys


def main(path, out_dir):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        info = header["image_u8"]
        if info["dtype"] != "U8":
            raise SystemExit("image_u8 is %s, expected U8" % info["dtype"])
        start, end = info["data_offsets"]
        f.seek(base + start)
        data = f.read(end - start)
    expected = 1
    for d in info["shape"]:
        expected *= d
    if len(data) != expected:
        raise SystemExit("image_u8: %d bytes for shape %s" % (len(data), info["shape"]))
    name = os.path.basename(path).rsplit(".", 1)[0]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, name + ".image_u8"), "wb") as f:
        f.write(data)
    with open(os.path.join(out_dir, name + ".meta"), "w", encoding="utf-8") as f:
        for k, v in sorted(header.get("__metadata__", {}).items()):
            f.write("%s=%s\n" % (k, v))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
