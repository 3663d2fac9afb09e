"""qvpo/native.c compiled at first use and called through ctypes: the CPU sampler's Mish kernels.

Plain C with no Python or torch headers, so it builds in well under a second with any C compiler (`$CC`,
else `cc`); ctypes releases the GIL during each call, so the sampler's worker threads run kernels side by
side. The library is cached under $QVPO_NATIVE_CACHE (default ~/.cache/qvpo), named by a hash of the source,
compiler and flags; it is written to a temporary name and renamed, so concurrent jobs on a shared home
never load a half-written file. Flags: -mavx2 -mfma on CPUs torch reports as AVX2 or AVX512 (one build,
the same arithmetic on both), the compiler's default target otherwise.

Where no compiler works, `kernels()` says so once on stderr and returns None: the callers then use their
torch formulas (the same function within float rounding, slower). QVPO_NATIVE=0 chooses that path.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native.c")
BASE_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]

_LOADED: list = []   # [Kernels or None] once tried


def _flags() -> list[str]:
    capability = torch.backends.cpu.get_cpu_capability()
    return BASE_FLAGS + (["-mavx2", "-mfma"] if capability in ("AVX2", "AVX512") else [])


def _compiler() -> tuple[str, str]:
    """(path, first line of --version) of $CC or cc; RuntimeError if there is none."""
    name = os.environ.get("CC", "cc")
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"no C compiler: {name!r} is not on PATH (set CC)")
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    return path, version.splitlines()[0] if version else ""


def build(cache: Path) -> Path:
    """The compiled library in `cache`, compiling it if no build of this source, compiler and flags is there."""
    cc, version = _compiler()
    flags = _flags()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + "\0".join([cc, version, *flags]).encode()).hexdigest()[:16]
    library = cache / f"qvpo-native-{key}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        partial = Path(tmp) / library.name
        done = subprocess.run([cc, *flags, str(SOURCE), "-o", str(partial)], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed: {done.stderr.strip()[-500:]}")
        os.replace(partial, library)
    return library


class Kernels:
    """The library's functions on contiguous float32 CPU tensors (checked: a wrong layout would be read as garbage)."""

    def __init__(self, library: Path):
        lib = ctypes.CDLL(str(library))
        p, n = ctypes.c_void_p, ctypes.c_long
        signatures = {"mish": [p, p, n], "mish_backward": [p, p, p, n],
                      "first_layer": [p, p, p, p, n, n, n, ctypes.c_int], "mish_project": [p, n, n, p, n, p, n]}
        for name, argtypes in signatures.items():
            getattr(lib, name).argtypes = argtypes
            getattr(lib, name).restype = None
        self.lib = lib

    @staticmethod
    def _ptr(t: torch.Tensor) -> int:
        if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"native kernels take contiguous float32 CPU tensors, got {t.dtype} on {t.device}"
                             f"{'' if t.is_contiguous() else ', not contiguous'}")
        return t.data_ptr()

    def mish(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out = mish(x) (out may be x)."""
        assert out.shape == x.shape
        self.lib.mish(self._ptr(x), self._ptr(out), x.numel())
        return out

    def mish_backward(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """grad * mish'(x), a new tensor."""
        assert grad.shape == x.shape
        out = torch.empty_like(x)
        self.lib.mish_backward(self._ptr(x), self._ptr(grad), self._ptr(out), x.numel())
        return out

    def first_layer(self, h: torch.Tensor, base: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                    apply_mish: bool) -> None:
        """h = base + x @ w, then mish(h) if apply_mish: h, base [rows, H], x [rows, X], w [X, H]."""
        (rows, hidden), in_dim = h.shape, x.shape[1]
        assert base.shape == h.shape and x.shape[0] == rows and w.shape == (in_dim, hidden)
        self.lib.first_layer(self._ptr(h), self._ptr(base), self._ptr(x), self._ptr(w), rows, hidden, in_dim,
                             int(apply_mish))

    def mish_project(self, h: torch.Tensor, w: torch.Tensor, dst: torch.Tensor) -> None:
        """h <- mish(h) in place, then dst = w @ h^T: h [rows, H], w [out, H], dst [out, rows], a column slice
        of a row-major [out, N] buffer (rows contiguous, any row stride)."""
        rows, hidden = h.shape
        out_dim = w.shape[0]
        assert w.shape[1] == hidden and dst.shape == (out_dim, rows) and dst.stride(1) == 1
        if dst.dtype != torch.float32 or dst.device.type != "cpu":
            raise ValueError("mish_project writes a float32 CPU buffer")
        self.lib.mish_project(self._ptr(h), rows, hidden, self._ptr(w), out_dim, dst.data_ptr(), dst.stride(0))


def kernels() -> Kernels | None:
    """The compiled kernels, or None (QVPO_NATIVE=0, or no working compiler: said once on stderr)."""
    if not _LOADED:
        if os.environ.get("QVPO_NATIVE", "1") == "0":
            _LOADED.append(None)
        else:
            cache = Path(os.environ.get("QVPO_NATIVE_CACHE") or Path.home() / ".cache" / "qvpo")
            try:
                _LOADED.append(Kernels(build(cache)))
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                print(f"qvpo: warning: the native Mish kernels are unavailable ({e}); "
                      "using torch's operations (slower, equal within float rounding)", file=sys.stderr)
                _LOADED.append(None)
    return _LOADED[0]
