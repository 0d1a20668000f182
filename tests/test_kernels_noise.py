"""Triton noise injection against its reference, and the statistics of its in-kernel Philox noise."""
import pytest
import torch
from scipy import stats

import kernels
from kernels.noise_triton import noise_launch
from kernels.testing import DEVICE, Canary, relative_error

GPU_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 is checked on a GPU only")
DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=GPU_ONLY)]
SHAPES = [(3, 1, 28, 28), (5, 3, 17, 19), (2, 7)]


def _levels(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (sigma, sigma_n) with a clean sample (sigma_n = 0) and a clamped one (sigma == sigma_n)."""
    sigma_n = torch.rand(batch) * 0.5
    sigma = sigma_n + torch.rand(batch) * 2
    sigma_n[0] = 0.0
    sigma[-1] = sigma_n[-1]
    return sigma.to(DEVICE), sigma_n.to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_given_eps_matches_reference_exactly(shape, dtype):
    y = torch.randn(shape, device=DEVICE).to(dtype)
    eps = torch.randn(shape, device=DEVICE)
    sigma, sigma_n = _levels(shape[0])
    out = Canary(shape, dtype)
    x_t, net_in = noise_launch(y, sigma, sigma_n, seed=0, eps=eps, out=out.view)
    assert x_t.data_ptr() == out.view.data_ptr() and net_in is None and out.intact()
    assert torch.equal(x_t, kernels.noise_injection_ref(y, sigma, sigma_n, eps))
    assert torch.equal(x_t[-1], y[-1])  # sigma == sigma_n: no noise added, no NaN


def test_eps_in_another_dtype_and_public_wrapper():
    y = torch.randn(5, 3, 17, 19, device=DEVICE)
    eps = torch.randn_like(y).half()
    sigma, sigma_n = _levels(5)
    expected = kernels.noise_injection_ref(y, sigma, sigma_n, eps)
    for backend in ("triton", "torch"):
        assert torch.equal(kernels.noise_injection(y, sigma, sigma_n, seed=1, eps=eps, backend=backend), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_net_input(dtype):
    shape = (5, 3, 17, 19)
    y = torch.randn(shape, device=DEVICE).to(dtype)
    eps = torch.randn(shape, device=DEVICE)
    sigma, sigma_n = _levels(5)
    out, net_in = Canary(shape, dtype), Canary(shape, dtype)
    x_t, c_in_x = noise_launch(y, sigma, sigma_n, seed=0, eps=eps, sigma_data=0.5, out=out.view, net_in=net_in.view)
    assert out.intact() and net_in.intact()
    assert torch.equal(x_t, kernels.noise_injection_ref(y, sigma, sigma_n, eps))
    x_t64 = kernels.noise_injection_ref(y.double(), sigma.double(), sigma_n.double(), eps.double())
    ref = kernels.net_input_ref(x_t64, sigma.double(), 0.5)
    assert relative_error(c_in_x, ref) < (1e-6 if dtype == torch.float32 else 1e-2)
    for backend in ("triton", "torch"):
        pair = kernels.noise_injection_net_input(y, sigma, sigma_n, seed=3, eps=eps, sigma_data=0.5, backend=backend)
        assert torch.equal(pair[0], x_t) and relative_error(pair[1], ref) < (1e-6 if dtype == torch.float32 else 1e-2)


def _philox_noise(numel: int, seed: int, offset: int = 0, block: int | None = None) -> torch.Tensor:
    """The kernel's eps itself: x_t with y = 0, sigma = 1, sigma_n = 0, as a flat float32 vector."""
    y = torch.zeros(1, numel, device=DEVICE)
    one = torch.ones(1, device=DEVICE)
    return noise_launch(y, one, torch.zeros_like(one), seed=seed, offset=offset, block=block)[0].flatten()


def test_philox_determinism_seeds_and_offsets():
    seed = int(torch.randint(0, 2**62, ()).item())
    a, b = _philox_noise(3001, seed), _philox_noise(3001, seed)
    assert torch.equal(a, b)
    assert (a != _philox_noise(3001, seed + 1)).float().mean() > 0.99
    assert (a != _philox_noise(3001, seed, offset=1)).float().mean() > 0.99
    for k in (1, 1000):
        assert torch.equal(_philox_noise(3001, seed, offset=k), _philox_noise(3001 + k, seed)[k:])
    # The counter is 64-bit: crossing 2^32 continues the stream, and offset 2^32 is not offset 0.
    across = _philox_noise(64, seed, offset=2**32 - 32)
    high = _philox_noise(32, seed, offset=2**32)
    assert torch.equal(across[32:], high) and not torch.equal(high, a[:32])


def test_offset_shift_in_a_batch():
    """offset = k gives the offset-0 noise shifted by k elements of the flat (B, ...) view."""
    seed, k = int(torch.randint(0, 2**31, ()).item()), 37
    y = torch.zeros(3, 5, 11, device=DEVICE)
    sigma, sigma_n = torch.full((3,), 1.5, device=DEVICE), torch.zeros(3, device=DEVICE)
    base = noise_launch(torch.zeros(3 * 55 + k, device=DEVICE)[None], sigma[:1], sigma_n[:1], seed=seed)[0].flatten()
    shifted = noise_launch(y, sigma, sigma_n, seed=seed, offset=k)[0].flatten()
    assert torch.equal(shifted, base[k:])


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (5, 3, 17, 19)])
def test_block_size_invariance(shape):
    y = torch.randn(shape, device=DEVICE)
    sigma, sigma_n = _levels(shape[0])
    results = [noise_launch(y, sigma, sigma_n, seed=11, offset=5, block=block)[0] for block in (128, 1024, 4096)]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_noise_statistics():
    """eps is standard normal (mean, variance, Kolmogorov-Smirnov) and streams of two seeds are uncorrelated."""
    n = 60000
    eps = _philox_noise(n, seed=1234, offset=99).double().cpu()
    assert abs(eps.mean().item()) < 5 / n**0.5
    assert abs(eps.var().item() - 1) < 5 * (2 / n) ** 0.5
    assert stats.kstest(eps.numpy(), "norm").pvalue > 1e-4
    other = _philox_noise(n, seed=1235, offset=99).double().cpu()
    assert abs(torch.corrcoef(torch.stack([eps, other]))[0, 1].item()) < 5 / n**0.5
    assert abs(torch.corrcoef(torch.stack([eps[1:], eps[:-1]]))[0, 1].item()) < 5 / n**0.5


def test_per_sample_std():
    """x_t - y has std sqrt(s^2 - sigma_n^2) per sample, drawn in-kernel through the public wrapper."""
    y = torch.randn(4, 3, 50, 50, device=DEVICE)
    sigma = torch.tensor([0.3, 1.0, 2.0, 0.2], device=DEVICE)
    sigma_n = torch.tensor([0.0, 0.6, 0.2, 0.2], device=DEVICE)
    x_t = kernels.noise_injection(y, sigma, sigma_n, seed=5, backend="triton")
    std = (x_t - y).flatten(1).std(1)
    expected = (sigma.double()**2 - sigma_n.double()**2).clamp(min=0).sqrt()
    assert torch.allclose(std[:3].double(), expected[:3], rtol=0.05) and torch.equal(x_t[3], y[3])


def test_clamped_sigma_gives_no_nan_in_float32():
    """s == sigma_n (and s a hair below it) gives x_t == y: the variance gap is clamped at 0."""
    y = torch.randn(3, 40, device=DEVICE)
    sigma_n = torch.tensor([0.2, 0.7, 1e-3], device=DEVICE)
    sigma = torch.stack([sigma_n[0], torch.nextafter(sigma_n[1], torch.zeros(())), sigma_n[2]])
    x_t = kernels.noise_injection(y, sigma, sigma_n, seed=2, backend="triton")
    assert torch.equal(x_t, y)


def test_gradients_through_y_and_eps():
    y = torch.randn(3, 2, 9, 5, device=DEVICE)
    eps = torch.randn_like(y)
    sigma, sigma_n = _levels(3)
    w_x, w_in = torch.randn_like(y), torch.randn_like(y)
    grads = {}
    for backend in ("triton", "torch"):
        leaves = [t.clone().double().requires_grad_() if backend == "torch" else t.clone().requires_grad_()
                  for t in (y, eps)]
        dtype_sigma = torch.float64 if backend == "torch" else torch.float32
        x_t, net_in = kernels.noise_injection_net_input(
            *leaves[:1], sigma.to(dtype_sigma), sigma_n.to(dtype_sigma), seed=0, eps=leaves[1], backend=backend)
        plain = kernels.noise_injection(leaves[0], sigma.to(dtype_sigma), sigma_n.to(dtype_sigma), seed=0,
                                        eps=leaves[1], backend=backend)
        ((x_t * w_x.to(x_t.dtype)).sum() + (net_in * w_in.to(x_t.dtype)).sum() + (plain * w_x.to(x_t.dtype)).sum()
         ).backward()
        grads[backend] = [t.grad for t in leaves]
    for got, ref in zip(grads["triton"], grads["torch"]):
        assert relative_error(got, ref) < 1e-6


def test_bad_inputs_raise():
    y = torch.randn(3, 4, device=DEVICE)
    sigma = torch.ones(3, device=DEVICE)
    with pytest.raises(ValueError, match="one value per sample"):
        noise_launch(y, sigma[:2], sigma, seed=0)
    with pytest.raises(ValueError, match="seed"):
        noise_launch(y, sigma, sigma, seed=-1)
    with pytest.raises(ValueError, match="not differentiable in sigma"):
        kernels.noise_injection(y, sigma.clone().requires_grad_(), sigma, seed=0, backend="triton")
