"""Seeded byte mutations of a valid file, the same for the same (data, rng) on every machine.

Most mutations land near the start of the file (where the formats keep their headers,
tables and shapes); zip archives (.keras, .npz) also have one member's bytes mutated and are
re-zipped with correct checksums, so that the mutation reaches the parser behind the zip.
"""
from __future__ import annotations

import io
import random
import struct
import zipfile

_INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x20, 0x40)
_INTERESTING_INTS = (0, 1, 2, 3, 7, 8, 16, 255, 256, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                     2**40, 2**62, 2**63 - 1, 2**64 - 1)


def _position(rng: random.Random, size: int) -> int:
    if size == 0:
        return 0
    if rng.random() < 0.5:          # headers, tables and shapes are near the start
        return rng.randrange(min(size, 512))
    return rng.randrange(size)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One to three stacked mutations of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3))):
        choice = rng.randrange(7)
        size = len(buf)
        if size == 0:
            buf = bytearray(rng.randbytes(rng.randrange(1, 64)))
            continue
        pos = _position(rng, size)
        if choice == 0:                                 # flip 1-8 bits
            for _ in range(rng.randrange(1, 9)):
                p = _position(rng, size)
                buf[p] ^= 1 << rng.randrange(8)
        elif choice == 1:                               # interesting byte values
            for _ in range(rng.randrange(1, 5)):
                buf[_position(rng, size)] = rng.choice(_INTERESTING_BYTES)
        elif choice == 2:                               # an interesting integer, 2/4/8 bytes
            width = rng.choice((2, 4, 8))
            value = rng.choice(_INTERESTING_INTS) % (1 << (8 * width))
            packed = struct.pack({2: "<H", 4: "<I", 8: "<Q"}[width], value)
            if rng.random() < 0.3:
                packed = packed[::-1]                   # big-endian (protobuf varints aside)
            buf[pos:pos + width] = packed
        elif choice == 3:                               # truncate
            del buf[rng.randrange(size):]
        elif choice == 4:                               # delete a chunk
            del buf[pos:pos + rng.randrange(1, 65)]
        elif choice == 5:                               # duplicate a chunk elsewhere
            start = rng.randrange(size)
            chunk = buf[start:start + rng.randrange(1, 65)]
            buf[pos:pos] = chunk
        else:                                           # random bytes
            n = rng.randrange(1, 17)
            buf[pos:pos + n] = rng.randbytes(n)
    return bytes(buf)


def mutate_zip_member(data: bytes, rng: random.Random) -> bytes:
    """Mutate one member of a zip archive and re-zip it with correct CRCs (same compression)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [(info, archive.read(info.filename)) for info in archive.infolist()]
    index = rng.randrange(len(members))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for k, (info, content) in enumerate(members):
            if k == index:
                content = mutate_bytes(content, rng)
            archive.writestr(info, content, compress_type=info.compress_type)
    return out.getvalue()


def mutate(data: bytes, rng: random.Random, is_zip: bool) -> bytes:
    if is_zip and rng.random() < 0.6:
        return mutate_zip_member(data, rng)
    return mutate_bytes(data, rng)
