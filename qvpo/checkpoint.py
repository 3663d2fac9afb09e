"""Atomic, checksummed files for checkpoints.

Each file is MAGIC + payload length (8 bytes) + sha256(payload) + payload, where payload is `torch.save` output.
Writes go to a temporary file in the same directory, are fsynced, then renamed over
the target, so a crash or a full disk mid-write leaves the previous file intact.
Loads verify the checksum before unpickling with `weights_only=True`.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from qvpo.errors import UserError

MAGIC = b"QVPOCKPT1\n"
DIGEST_BYTES = 32
LENGTH_BYTES = 8


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save(obj: object, path: str | Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    header = MAGIC + len(payload).to_bytes(LENGTH_BYTES, "little") + hashlib.sha256(payload).digest()
    atomic_write_bytes(path, header + payload)


def load(path: str | Path) -> object:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"checkpoint file {path} is missing") from None
    except OSError as e:
        raise UserError(f"cannot read checkpoint file {path}: {e.strerror}") from None
    head = len(MAGIC) + LENGTH_BYTES + DIGEST_BYTES
    if not data.startswith(MAGIC):
        raise UserError(f"checkpoint file {path} is not a qvpo checkpoint")
    if len(data) < head:
        raise UserError(f"checkpoint file {path} is truncated ({len(data)} bytes)")
    length = int.from_bytes(data[len(MAGIC):len(MAGIC) + LENGTH_BYTES], "little")
    payload = data[head:]
    if len(payload) != length:
        raise UserError(f"checkpoint file {path} is truncated ({len(payload)} of {length} payload bytes)")
    if hashlib.sha256(payload).digest() != data[len(MAGIC) + LENGTH_BYTES:head]:
        raise UserError(f"checkpoint file {path} is corrupt (checksum mismatch)")
    return torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
