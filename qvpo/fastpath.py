"""The sampler's CPU fast path: what makes QVPO's candidate sampling fast on a CPU, apart from the math.

qvpo.diffusion reads as the math (schedule, noise net, ancestral step, sampler); the sampler's and the
candidate scoring's hidden layers run here:
- ChunkedMishMLP: the hidden Linear + Mish layers over cache-sized chunks of rows, on worker threads when
  torch has several (chunk_threads switches torch to one thread for the whole call: OpenMP's spinning
  idle team kept a worker off its core between batches of chunks);
- mish: Mish as one pass of qvpo.native's C kernels on float32 CPU tensors, else mish_'s torch passes
  (a GPU, torch.compile, a CPU where the kernels do not build).
`on_fast_path(device)` chooses it: on a CPU. On a GPU the agents run the plain networks instead, except QVPO
with compile=true, whose compiled chunk network runs these classes as plain batched products (one chunk,
no workers).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from qvpo import native


def mish_(h: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """In-place Mish in torch operations, using `tmp` (same shape) as scratch; tmp ends as 1 + e^x + e^2x / 2.
    The sampler's Mish under torch.compile (on a GPU: compile=true) and on CPUs where qvpo.native's kernels do not build.

    mish(x) = x tanh(log(1 + e^x)) = x - x / (1 + e^x + e^2x / 2)   (tanh(log u) = (u^2-1)/(u^2+1), u = 1 + e^x).
    Why: ATen's CPU mish measured ~4x slower than these 4 passes (exp, addcmul, add, addcdiv),
    which run in cache because the sampler chunks rows. e^x = inf for x > 88 still gives x.
    Absolute error vs F.mish < 2e-6 (cancellation for very negative x, where mish ~ 0).
    """
    torch.exp(h, out=tmp).addcmul_(tmp, tmp, value=0.5).add_(1.0)
    return h.addcdiv_(h, tmp, value=-1.0)


class _Mish(torch.autograd.Function):
    """Mish with a cheaper forward and backward than ATen's CPU mish and mish_backward (which took about half
    the diffusion loss's time): on float32 CPU tensors the native kernels (qvpo.native), else mish_'s passes with
    the derivative mish'(x) = 1 - r + x sigmoid(x) r (2 - r), r = 1 / (1 + e^x + e^2x / 2)
    (= tanh(softplus(x)) + x sigmoid(x) sech^2(softplus(x)))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        kernels = native.kernels() if x.device.type == "cpu" and x.dtype == torch.float32 else None
        ctx.kernels = kernels
        if kernels is not None:
            x = x.contiguous()
            ctx.save_for_backward(x)
            return kernels.mish(x, torch.empty_like(x))
        w = torch.empty_like(x)
        y = mish_(x.clone(), w)
        ctx.save_for_backward(x, w)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if ctx.kernels is not None:
            (x,) = ctx.saved_tensors
            return ctx.kernels.mish_backward(x, grad.contiguous())
        x, w = ctx.saved_tensors
        r = w.reciprocal()
        slope = torch.sigmoid(x).mul_(x).mul_(r).mul_(torch.rsub(r, 2.0)).add_(1.0).sub_(r)
        return slope.mul_(grad)


def mish(x: torch.Tensor) -> torch.Tensor:
    """Differentiable Mish, equal to F.mish within 2e-6 (value) and its gradient within 1e-5 (tested)."""
    return _Mish.apply(x)


def on_fast_path(device: torch.device) -> bool:
    """Whether the diffusion algorithms' networks run here factored and chunked (the sampler, the noise-prediction
    loss, the critics' scores of candidates): on a CPU. On CUDA they run as the plain batched networks, in the
    authors' order, which are also the fast path's reference in the tests."""
    return device.type == "cpu"


CPU_CHUNK_ROWS = 512
"""Rows per chunk of the chunked MLP on the CPU, each chunk on one core: its three [512, 256] float32 buffers
(1.5 MB) stay in the core's L2 (measured best of 256-2048)."""

_WORKER_POOLS: dict[int, ThreadPoolExecutor] = {}


def _worker_pool(n: int) -> ThreadPoolExecutor:
    if n not in _WORKER_POOLS:
        _WORKER_POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="qvpo-chunks")
    return _WORKER_POOLS[n]


@contextlib.contextmanager
def chunk_threads(device: torch.device | None, rows: int = 0, chunk_rows: int | None = None) -> Iterator[int]:
    """For a ChunkedMishMLP on the CPU over `rows` rows in more than one chunk, with more than one torch thread:
    torch set to one thread for the block, yielding the count it had (the number of chunk workers). Otherwise
    (a GPU, device None, one chunk, one thread) it yields 1 and changes nothing: one chunk runs on the calling
    thread with all of torch's threads.

    Why a whole sampling call and not just each batch of chunks: after every parallel op OpenMP's idle team
    threads spin for a while, and one spinning between two batches of chunks kept a worker off its core
    (a 256 x 4 sampling call ran 2x slower)."""
    threads = torch.get_num_threads()
    one_chunk = rows <= (CPU_CHUNK_ROWS if chunk_rows is None else chunk_rows)
    if device is None or device.type != "cpu" or threads == 1 or one_chunk:
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def chunk_network(x: torch.Tensor, base: torch.Tensor, w_xT: torch.Tensor,
                  hidden: list[tuple[torch.Tensor, torch.Tensor]], w_last: torch.Tensor,
                  b_last: torch.Tensor) -> torch.Tensor:
    """One chunk of a factored Linear-Mish MLP, out of place: h = mish(base + x W_x^T), then mish(h W^T + b) per
    hidden (W^T, b) in the dtype of W (cast back to float32), then the outputs transposed, W_last h^T + b_last
    [out, rows]. ChunkedMishMLP's torch arithmetic without its buffers: what `compile=True` hands to torch.compile
    (which fuses mish_'s passes itself)."""
    h = torch.addmm(base, x, w_xT)
    h = mish_(h, torch.empty_like(h))
    for w, b in hidden:
        h = torch.addmm(b, h.to(w.dtype), w).float()
        h = mish_(h, torch.empty_like(h))
    return torch.addmm(b_last[:, None], w_last, h.t())


class ChunkedMishMLP:
    """No-grad evaluation of a Linear-Mish MLP on N = K*B candidate-major rows whose first layer is factored.

    Row k*B + b (candidate k of state b) has the first pre-activation base[b] + x[k*B + b] W_x^T, where base [B, H]
    holds what depends on the state (and step) only, computed once per state instead of per candidate: addmm
    broadcasts it over candidates through its bias argument, so states are never copied K times. The layers run
    in chunks of `chunk_rows` rows so that the hidden activations stay in cache across Mish's elementwise passes;
    buffers are preallocated (a fresh 16 MB tensor per op costs page faults). The narrow last layer is computed
    transposed, W_last h^T into an [out, N] buffer (3x faster than h W_last^T on the CPU for 3 outputs).
    On the CPU the elementwise work runs in qvpo.native's kernels: each Mish in one pass, the thin first layer
    fused with its Mish, the last Mish with the output layer (torch's mish_ passes where no compiler is found).
    With `workers` > 1 on the CPU (inside chunk_threads, which yields the count), that many worker threads each
    run every workers-th chunk on one core (torch at one thread; kernels release the GIL): no thread barrier per
    op, of which a call has thousands, and which stall whenever the OS deschedules one thread of a busy machine;
    each chunk's result is the same for any number of workers.
    dtype (e.g. bfloat16) is that of the wide hidden-to-hidden products only; the thin first and last layers and
    Mish stay float32 (Mish's rewrite cancels badly in bf16, and ATen's bf16 elementwise ops are slower).
    chunk_rows defaults to CPU_CHUNK_ROWS on the CPU, all rows on a GPU. `network` (e.g.
    torch.compile(chunk_network)) replaces the eager in-place evaluation of a chunk.
    """

    def __init__(self, w_x: torch.Tensor, layers: list[nn.Linear], B: int, K: int, chunk_rows: int | None = None,
                 dtype: torch.dtype = torch.float32, network=None, workers: int = 1):
        dev = w_x.device
        H = w_x.shape[0]
        if chunk_rows is None:  # chunking only pays for CPU caches
            chunk_rows = CPU_CHUNK_ROWS if dev.type == "cpu" else K * B
        self.w_xT = w_x.t().contiguous()                                      # [X, H]
        self.hidden = [(lin.weight.t().to(dtype), lin.bias.to(dtype)) for lin in layers[:-1]]
        self.w_last, self.b_last = layers[-1].weight, layers[-1].bias         # [out, H], [out]
        self.B = B
        R = max(1, chunk_rows)
        if B >= R:   # chunks within one candidate: bias rows = a slice of the B state rows
            self.tiles = 1
            self.chunks = [(k * B + j, j, min(R, B - j)) for k in range(K) for j in range(0, B, R)]
        else:        # a chunk holds g whole candidates: the B state rows tiled g times (g*B rows, small)
            self.tiles = min(K, R // B)
            self.chunks = [(k * B, 0, min(self.tiles, K - k) * B) for k in range(0, K, self.tiles)]
        rows = max(n for _, _, n in self.chunks)
        self.base = torch.empty(self.tiles * B, H, device=dev) if self.tiles > 1 else None
        self.out = torch.empty(self.w_last.shape[0], K * B, device=dev)     # transposed outputs
        if network is not None:
            self.network = network
            self.run_chunks = self._run_network
            return
        self.run_chunks = self._run_eager
        self.kernels = native.kernels() if dev.type == "cpu" else None
        self.workers = min(workers, len(self.chunks)) if dev.type == "cpu" else 1
        low = dtype != torch.float32   # products in `dtype` need their inputs and outputs in it
        self.buffers = [(*(torch.empty(rows, H, device=dev) for _ in range(3)),
                         *((torch.empty(rows, H, device=dev, dtype=dtype) for _ in range(2)) if low else (None, None)))
                        for _ in range(self.workers)]

    def __call__(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """x [K*B, X], base [B, H] -> the MLP's outputs [K*B, out] (a view of a buffer the next call reuses)."""
        if self.base is not None:
            base = self.base.view(self.tiles, self.B, -1).copy_(base).flatten(0, 1)
        self.run_chunks(x, base)
        return self.out.t()

    def _run_eager(self, x: torch.Tensor, base: torch.Tensor) -> None:
        if self.workers == 1:
            self._run_chunks(self.chunks, self.buffers[0], x, base)
        else:
            pool = _worker_pool(self.workers)
            done = [pool.submit(self._run_chunks, self.chunks[i::self.workers], self.buffers[i], x, base)
                    for i in range(self.workers)]
            for future in done:
                future.result()
        self.out.add_(self.b_last[:, None])

    @torch.no_grad()  # grad mode is per thread
    def _run_chunks(self, chunks: list[tuple[int, int, int]], buffers: tuple, x: torch.Tensor,
                    base: torch.Tensor) -> None:
        h_a, h_b, tmp_rows, low_in, low_out = buffers
        kernels, last = self.kernels, len(self.hidden) - 1
        for r0, b0, n in chunks:
            h, h_next, tmp = h_a[:n], h_b[:n], tmp_rows[:n]
            out = self.out[:, r0:r0 + n]
            if kernels is None:
                mish_(torch.addmm(base[b0:b0 + n], x[r0:r0 + n], self.w_xT, out=h), tmp)
            else:  # the last Mish is applied by mish_project
                kernels.first_layer(h, base[b0:b0 + n], x[r0:r0 + n], self.w_xT, apply_mish=last >= 0)
            for i, (w, b) in enumerate(self.hidden):
                if low_in is None:
                    torch.addmm(b, h, w, out=h_next)
                else:
                    h_next.copy_(torch.addmm(b, low_in[:n].copy_(h), w, out=low_out[:n]))
                if kernels is None:
                    mish_(h_next, tmp)
                elif i < last:
                    kernels.mish(h_next, h_next)
                h, h_next = h_next, h
            if kernels is None:
                torch.mm(self.w_last, h.t(), out=out)
            else:
                kernels.mish_project(h, self.w_last, out)

    def _run_network(self, x: torch.Tensor, base: torch.Tensor) -> None:
        for r0, b0, n in self.chunks:
            self.out[:, r0:r0 + n].copy_(
                self.network(x[r0:r0 + n], base[b0:b0 + n], self.w_xT, self.hidden, self.w_last, self.b_last))


def mish_mlp_linears(net: nn.Sequential) -> list[nn.Linear]:
    """The Linear layers of a Sequential (Linear, Mish, ..., Linear), or a TypeError for any other layout."""
    layers = list(net)
    linears, activations = layers[0::2], layers[1::2]
    if not (len(layers) % 2 == 1 and all(isinstance(m, nn.Linear) for m in linears)
            and all(isinstance(m, nn.Mish) for m in activations)):
        raise TypeError(f"expected a Sequential of Linear layers with Mish between them, got {net}")
    return linears
