#!/usr/bin/env python3
"""Writes small valid images to corpus/image/ (standard library only): PNGs of every
colour type and depth the decoder meets, interlaced and not, and PGMs. JPEG has no
encoder in the standard library: add any .jpg files you have."""

import os
import struct
import zlib

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "image")


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(w, h, color, depth, interlace=0, palette=False):
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    row = (w * channels * depth + 7) // 8
    raw = b"".join(bytes([y % 5]) + bytes((x * 7 + y * 3) % 256 for x in range(row)) for y in range(h))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, interlace))
    if palette:
        out += chunk(b"PLTE", bytes(range(48)))
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


os.makedirs(OUT, exist_ok=True)
seeds = {
    "gray8.png": png(28, 28, 0, 8),
    "gray8-interlaced.png": png(9, 7, 0, 8, interlace=1),
    "gray1.png": png(17, 5, 0, 1),
    "gray16.png": png(6, 6, 0, 16),
    "rgb8.png": png(12, 10, 2, 8),
    "rgba8.png": png(5, 31, 6, 8),
    "rgba16.png": png(3, 3, 6, 16),
    "graya8.png": png(4, 4, 4, 8),
    "palette4.png": png(8, 8, 3, 4, palette=True),
    "p5.pgm": b"P5\n4 3\n255\n" + bytes(range(12)),
    "p5-16.pgm": b"P5 2 2 65535\n" + bytes(range(8)),
    "p2.pgm": b"P2\n# a comment\n3 2\n15\n0 1 2\n3 4 15\n",
}
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
