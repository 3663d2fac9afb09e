"""qvpo.native's kernels compute what torch's plain operations compute, the sampler's thread handling restores
torch's setting, and without a compiler everything falls back to torch with one warning.

Tolerances: the kernels' Mish has a relative error below 5e-7 against float64 (one exp of 1.5 ulp and four
roundings); values far below float32's resolution (|mish(x)| < 2e-33 for x < -80) are compared absolutely.
Evaluations of the same float32 network in another order agree within 1e-5 on these sizes."""
import os
import shutil

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qvpo import native
from qvpo.fastpath import ChunkedMishMLP, chunk_threads, mish
from qvpo.runlog import training_sources

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler here")


@pytest.fixture
def kernels():
    k = native.kernels()
    assert k is not None, "a C compiler is on PATH, yet the native kernels did not build"
    return k


@pytest.fixture
def torch_only(monkeypatch):
    """The torch path, as on a machine without a compiler."""
    monkeypatch.setattr(native, "_LOADED", [None])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@needs_compiler
def test_mish_matches_torch_in_value_over_the_whole_range(kernels):
    # an odd length: the 8-wide loop and the scalar tail; the range crosses both clamps (-80 and 20)
    x = torch.cat([torch.linspace(-100.0, 100.0, 200_001), torch.randn(999, generator=gen(0)) * 4])
    ref = F.mish(x.double())
    out = kernels.mish(x, torch.empty_like(x))
    torch.testing.assert_close(out.double(), ref, rtol=5e-7, atol=2e-33)
    in_place = x.clone()
    kernels.mish(in_place, in_place)
    assert torch.equal(in_place, out)
    assert kernels.mish(torch.tensor([0.0]), torch.empty(1)).item() == 0.0


@needs_compiler
def test_mish_gradient_matches_torch_autograd(kernels):
    x = torch.cat([torch.linspace(-30.0, 30.0, 6001), torch.randn(1003, generator=gen(1)) * 3])
    g = torch.randn(x.shape, generator=gen(2))
    ours = x.clone().requires_grad_(True)
    mish(ours).backward(g)
    ref = x.double().requires_grad_(True)
    F.mish(ref).backward(g.double())
    torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-5, atol=1e-6)


@needs_compiler
@pytest.mark.parametrize("hidden", [13, 40, 256])   # tail only; one 8-wide block and a tail; blocks only
def test_first_layer_and_projection_match_torch(kernels, hidden):
    rows, in_dim, out_dim = 7, 3, 2
    base = torch.randn(rows, hidden, generator=gen(3))
    x = torch.randn(rows, in_dim, generator=gen(4))
    w = torch.randn(in_dim, hidden, generator=gen(5))
    pre = base + x @ w
    h = torch.empty(rows, hidden)
    kernels.first_layer(h, base, x, w, apply_mish=False)
    torch.testing.assert_close(h, pre, rtol=1e-6, atol=1e-6)
    kernels.first_layer(h, base, x, w, apply_mish=True)
    torch.testing.assert_close(h, F.mish(pre), rtol=1e-6, atol=1e-6)

    w_out = torch.randn(out_dim, hidden, generator=gen(6))
    dst = torch.full((out_dim, 3 * rows), float("nan"))          # rows land in columns rows..2*rows-1
    activated = pre.clone()
    kernels.mish_project(activated, w_out, dst[:, rows:2 * rows])
    torch.testing.assert_close(activated, F.mish(pre), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dst[:, rows:2 * rows], w_out @ F.mish(pre).t(), rtol=1e-5, atol=1e-5)
    assert dst[:, :rows].isnan().all() and dst[:, 2 * rows:].isnan().all()


@needs_compiler
def test_kernels_refuse_tensors_they_would_misread(kernels):
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.mish(x.t(), torch.empty(6, 4))
    with pytest.raises(ValueError, match="float32"):
        kernels.mish(x.double(), torch.empty(4, 6, dtype=torch.float64))


def chunked_outputs(B: int, K: int, workers: int) -> torch.Tensor:
    layers = [nn.Linear(24, 24), nn.Linear(24, 24), nn.Linear(24, 3)]
    torch.manual_seed(0)
    for layer in layers:
        nn.init.normal_(layer.weight, std=0.3)
        nn.init.normal_(layer.bias, std=0.3)
    w_x = torch.randn(24, 3, generator=gen(7))
    x, base = torch.randn(K * B, 3, generator=gen(8)), torch.randn(B, 24, generator=gen(9))
    with chunk_threads(torch.device("cpu"), K * B, chunk_rows=32) as threads:
        net = ChunkedMishMLP(w_x, layers, B, K, chunk_rows=32, workers=min(workers, threads))
        return net(x, base).clone()


@needs_compiler
@pytest.mark.parametrize("B, K", [(8, 10), (50, 3)])    # chunks of whole candidates (tiled states); within one
def test_chunked_mlp_with_kernels_equals_its_torch_path(kernels, monkeypatch, B, K):
    fast = chunked_outputs(B, K, workers=2)
    monkeypatch.setattr(native, "_LOADED", [None])
    plain = chunked_outputs(B, K, workers=1)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def test_chunk_threads_sets_one_thread_for_several_chunks_and_restores_it():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    cpu = torch.device("cpu")
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with chunk_threads(cpu, rows=33, chunk_rows=32) as workers:
                assert (workers, torch.get_num_threads()) == (2, 1)
                raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
        # one chunk (it runs on the calling thread with all threads), or no CPU sampler: nothing changes
        for device, rows in ((cpu, 32), (None, 1000)):
            with chunk_threads(device, rows=rows, chunk_rows=32) as workers:
                assert (workers, torch.get_num_threads()) == (1, 2)
    finally:
        torch.set_num_threads(before)


def test_without_a_compiler_the_kernels_fall_back_with_one_warning(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(native, "_LOADED", [])
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("QVPO_NATIVE_CACHE", str(tmp_path / "cache"))
    assert native.kernels() is None
    assert native.kernels() is None
    err = capsys.readouterr().err
    assert err.count("warning: the native Mish kernels are unavailable") == 1 and "no-such-cc" in err
    # and the sampler's network still evaluates (torch's passes)
    y = mish(torch.linspace(-5, 5, 11))
    torch.testing.assert_close(y, F.mish(torch.linspace(-5, 5, 11)), rtol=1e-6, atol=2e-6)


def test_qvpo_native_0_chooses_torch_without_a_warning(monkeypatch, capsys):
    monkeypatch.setattr(native, "_LOADED", [])
    monkeypatch.setenv("QVPO_NATIVE", "0")
    assert native.kernels() is None
    assert capsys.readouterr().err == ""


@needs_compiler
def test_a_build_is_cached_by_source_and_flags(tmp_path):
    first = native.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert native.build(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]      # no temporary left behind


def test_the_kernel_source_is_part_of_the_code_hash_of_the_runs_that_execute_it():
    names = {algo: {p.name for p in training_sources(algo)} for algo in ("qvpo", "dipo", "sac")}
    assert "native.py" in names["qvpo"] and "native.py" in names["dipo"] and "native.py" not in names["sac"]
