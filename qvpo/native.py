"""The CPU sampler's Mish kernels: C source (SOURCE, below) compiled at first use and called through ctypes.

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
    source = SOURCE.encode()
    key = hashlib.sha256(source + "\0".join([cc, version, *flags]).encode()).hexdigest()[:16]
    library = cache / f"qvpo-native-{key}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        partial, source_file = Path(tmp) / library.name, Path(tmp) / "qvpo_native.c"
        source_file.write_bytes(source)
        done = subprocess.run([cc, *flags, str(source_file), "-o", str(partial)], capture_output=True, text=True,
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


# The source lives in this module, so the code hash of the runs that execute it (qvpo.runlog) covers it.
SOURCE = r"""/* Mish-MLP kernels for the CPU sampler (compiled by qvpo/native.py at first use).

   mish(x) = x tanh(softplus(x)) = x m / (m + 2),  m = e^x (e^x + 2)
   since tanh(log u) = (u^2 - 1) / (u^2 + 1) with u = 1 + e^x. One exp per element and no cancellation
   (relative error about 3e-7, tested against torch's mish). Why a kernel: torch runs this as four
   passes over memory with a general-purpose exp, which took about a quarter of QVPO's update; one
   fused, vectorised pass takes about half as long, and the thin first and last layers ride along.
   With AVX2 and FMA (built with -mavx2 -mfma) the loops run 8 floats at a time in intrinsics (the
   compiler's own vectorisation of the scalar form ran 1.7x slower); the scalar form below does the same
   arithmetic for row tails and for other CPUs. Reductions keep a fixed order.
*/
#include <stdint.h>
#include <string.h>
#include <math.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define QVPO_AVX2 1
#endif

/* e^x, |relative error| < 1.5 ulp on [-80, 20] (Cephes expf: Cody-Waite reduction by ln 2 and a
   degree-6 polynomial). Inputs are clamped to [-80, 20]: beyond 20, m / (m + 2) is 1 in float32 and
   the clamp keeps m finite; below -80 mish(x) is below 2e-33 in magnitude either way, and the clamp keeps
   every intermediate a normal float (subnormal arithmetic is many times slower on x86). */
#define EXP_LO -80.0f
#define EXP_HI 20.0f
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f
#define LN2_LO -2.12194440e-4f
#define P0 1.9875691500e-4f
#define P1 1.3981999507e-3f
#define P2 8.3334519073e-3f
#define P3 4.1665795894e-2f
#define P4 1.6666665459e-1f
#define P5 5.0000001201e-1f

static inline float exp_clamped(float x) {
    x = fminf(fmaxf(x, EXP_LO), EXP_HI);
    float k = nearbyintf(x * LOG2E);
    float r = fmaf(-k, LN2_HI, x);
    r = fmaf(-k, LN2_LO, r);
    float p = fmaf(P0, r, P1);
    p = fmaf(p, r, P2);
    p = fmaf(p, r, P3);
    p = fmaf(p, r, P4);
    p = fmaf(p, r, P5);
    p = fmaf(p, r * r, r + 1.0f);
    int32_t bits = ((int32_t)k + 127) << 23; /* 2^k */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float mish1(float x) {
    float e = exp_clamped(x);
    float m = e * (e + 2.0f);
    return x * m / (m + 2.0f);
}

static inline float mish_slope1(float x) {
    float e = exp_clamped(x);
    float m = e * (e + 2.0f);
    float q = 1.0f / (m + 2.0f);
    return m * q + 4.0f * x * e * (1.0f + e) * q * q;
}

#ifdef QVPO_AVX2
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_LO)), _mm256_set1_ps(EXP_HI));
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_HI), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_LO), r);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(P0), r, _mm256_set1_ps(P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

static inline __m256 mish8(__m256 x) {
    __m256 e = exp8(x);
    __m256 m = _mm256_mul_ps(e, _mm256_add_ps(e, _mm256_set1_ps(2.0f)));
    return _mm256_div_ps(_mm256_mul_ps(x, m), _mm256_add_ps(m, _mm256_set1_ps(2.0f)));
}

static inline __m256 mish_slope8(__m256 x) {
    __m256 e = exp8(x);
    __m256 m = _mm256_mul_ps(e, _mm256_add_ps(e, _mm256_set1_ps(2.0f)));
    __m256 q = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(m, _mm256_set1_ps(2.0f)));
    __m256 t = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(4.0f), x), e),
                             _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    return _mm256_add_ps(_mm256_mul_ps(m, q), _mm256_mul_ps(_mm256_mul_ps(t, q), q));
}
#define VECTOR 8
#else
#define VECTOR 0
#endif

/* y[i] = mish(x[i]); y may be x. */
void mish(const float *x, float *y, long n) {
    long i = 0;
#ifdef QVPO_AVX2
    for (; i + VECTOR <= n; i += VECTOR) _mm256_storeu_ps(y + i, mish8(_mm256_loadu_ps(x + i)));
#endif
    for (; i < n; ++i) y[i] = mish1(x[i]);
}

/* dx[i] = g[i] mish'(x[i]), mish'(x) = m / (m + 2) + 4 x e (1 + e) / (m + 2)^2
   (= tanh(softplus(x)) + x sigmoid(x) sech^2(softplus(x)), with sech^2 = 4 (1 + e)^2 / (m + 2)^2). */
void mish_backward(const float *x, const float *g, float *dx, long n) {
    long i = 0;
#ifdef QVPO_AVX2
    for (; i + VECTOR <= n; i += VECTOR)
        _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(g + i), mish_slope8(_mm256_loadu_ps(x + i))));
#endif
    for (; i < n; ++i) dx[i] = g[i] * mish_slope1(x[i]);
}

/* The factored first layer: h[r, j] = base[r, j] + sum_a x[r, a] w[a, j] (summed in order a = 0, 1, ...),
   then its Mish if apply_mish; rows r < rows, j < hidden; base [rows, hidden], x [rows, in_dim],
   w [in_dim, hidden]. */
void first_layer(float *h, const float *base, const float *x, const float *w,
                 long rows, long hidden, long in_dim, int apply_mish) {
    for (long r = 0; r < rows; ++r) {
        float *hr = h + r * hidden;
        const float *br = base + r * hidden, *xr = x + r * in_dim;
        long j = 0;
#ifdef QVPO_AVX2
        for (; j + VECTOR <= hidden; j += VECTOR) {
            __m256 acc = _mm256_loadu_ps(br + j);
            for (long a = 0; a < in_dim; ++a)
                acc = _mm256_fmadd_ps(_mm256_set1_ps(xr[a]), _mm256_loadu_ps(w + a * hidden + j), acc);
            _mm256_storeu_ps(hr + j, apply_mish ? mish8(acc) : acc);
        }
#endif
        for (; j < hidden; ++j) {
            float acc = br[j];
            for (long a = 0; a < in_dim; ++a) acc = fmaf(xr[a], w[a * hidden + j], acc);
            hr[j] = apply_mish ? mish1(acc) : acc;
        }
    }
}

/* The last hidden layer's Mish and the narrow output layer, transposed:
   h[r, :] <- mish(h[r, :]); dst[o * dst_stride + r] = sum_j h[r, j] w[o, j]   (w [out_dim, hidden]).
   The sum runs in 32 interleaved partial sums (4 independent vector chains) added pairwise, then the tail:
   a fixed order. */
void mish_project(float *h, long rows, long hidden, const float *w, long out_dim, float *dst, long dst_stride) {
    for (long r = 0; r < rows; ++r) {
        float *hr = h + r * hidden;
        mish(hr, hr, hidden);
        for (long o = 0; o < out_dim; ++o) {
            const float *wo = w + o * hidden;
            float acc[32] = {0.0f};
            long j = 0;
#ifdef QVPO_AVX2
            __m256 v0 = _mm256_setzero_ps(), v1 = v0, v2 = v0, v3 = v0;
            for (; j + 32 <= hidden; j += 32) {
                v0 = _mm256_fmadd_ps(_mm256_loadu_ps(hr + j), _mm256_loadu_ps(wo + j), v0);
                v1 = _mm256_fmadd_ps(_mm256_loadu_ps(hr + j + 8), _mm256_loadu_ps(wo + j + 8), v1);
                v2 = _mm256_fmadd_ps(_mm256_loadu_ps(hr + j + 16), _mm256_loadu_ps(wo + j + 16), v2);
                v3 = _mm256_fmadd_ps(_mm256_loadu_ps(hr + j + 24), _mm256_loadu_ps(wo + j + 24), v3);
            }
            _mm256_storeu_ps(acc, v0);
            _mm256_storeu_ps(acc + 8, v1);
            _mm256_storeu_ps(acc + 16, v2);
            _mm256_storeu_ps(acc + 24, v3);
#else
            for (; j + 32 <= hidden; j += 32)
                for (int k = 0; k < 32; ++k) acc[k] = fmaf(hr[j + k], wo[j + k], acc[k]);
#endif
            /* the 32 partial sums, pairwise */
            for (int width = 16; width > 0; width /= 2)
                for (int k = 0; k < width; ++k) acc[k] += acc[k + width];
            float s = acc[0];
            for (; j < hidden; ++j) s = fmaf(hr[j], wo[j], s);
            dst[o * dst_stride + r] = s;
        }
    }
}
"""
