"""Triton ambient loss (forward and d/d denoised) against the float64 reference through autograd."""
import pytest
import torch

import kernels
from kernels.loss_triton import loss_launch
from kernels.testing import DEVICE, Canary, relative_error

GPU_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 is checked on a GPU only")
DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=GPU_ONLY)]
# (shape, block): the small blocks split a sample into several chunks (partial sums, masked tail).
CASES = [((3, 1, 28, 28), None), ((5, 3, 17, 19), 256), ((4, 7), 16), ((2, 3, 40, 33), None)]


def _inputs(shape: tuple[int, ...], dtype: torch.dtype):
    """denoised, x_t, y in `dtype`; sigma, sigma_n with a clean sample and a clamped one (sigma == sigma_n)."""
    batch = shape[0]
    sigma_n = torch.rand(batch, device=DEVICE) * 0.5
    sigma = sigma_n + torch.rand(batch, device=DEVICE) * 2 + 0.01
    sigma_n[0] = 0.0
    sigma[-1] = sigma_n[-1]
    y = torch.randn(shape, device=DEVICE).to(dtype)
    x_t = kernels.noise_injection(y, sigma, sigma_n, seed=int(torch.randint(0, 2**31, ())), backend="torch")
    denoised = (y.float() + 0.3 * torch.randn(shape, device=DEVICE)).to(dtype)
    return denoised, x_t, y, sigma, sigma_n


def _reference(denoised, x_t, y, sigma, sigma_n, weighting, grad_weights=None):
    """float64 loss and its gradient with respect to denoised, by autograd through the reference."""
    d64 = denoised.detach().double().requires_grad_()
    loss = kernels.ambient_loss_ref(d64, x_t.double(), y.double(), sigma.double(), sigma_n.double(),
                                    weighting=weighting)
    weights = torch.ones_like(loss) if grad_weights is None else grad_weights.double()
    (loss * weights).sum().backward()
    return loss.detach(), d64.grad


@pytest.mark.parametrize("weighting", ["edm", "ambient"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,block", CASES)
def test_forward_and_stored_gradient(shape, block, dtype, weighting):
    denoised, x_t, y, sigma, sigma_n = _inputs(shape, dtype)
    grad = Canary(shape, torch.float32)
    loss, stored = loss_launch(denoised, x_t, y, sigma, sigma_n, weighting=weighting, grad_out=grad.view, block=block)
    ref_loss, ref_grad = _reference(denoised, x_t, y, sigma, sigma_n, weighting)
    assert loss.dtype == torch.float32 and loss.shape == (shape[0],) and grad.intact()
    # float32 math on exactly representable inputs: tight whatever the input dtype.
    assert relative_error(loss, ref_loss) < 1e-5
    assert relative_error(stored, ref_grad) < 1e-5
    assert loss[-1].item() == 0.0 and not stored[-1].any()  # clamped sample: exactly zero


@pytest.mark.parametrize("dtype", DTYPES)
def test_autograd_matches_reference(dtype):
    """Public op: loss.mean().backward() and a weighted per-sample backward give the reference gradient."""
    denoised, x_t, y, sigma, sigma_n = _inputs((5, 3, 17, 19), dtype)
    for weighting, grad_weights in (("edm", None), ("ambient", torch.randn(5, device=DEVICE))):
        leaf = denoised.clone().requires_grad_()
        loss = kernels.ambient_loss(leaf, x_t, y, sigma, sigma_n, weighting=weighting, backend="triton")
        if grad_weights is None:
            loss.mean().backward()
        else:
            (loss * grad_weights).sum().backward()
        ref_loss, ref_grad = _reference(denoised, x_t, y, sigma, sigma_n, weighting, grad_weights)
        if grad_weights is None:
            ref_grad = ref_grad / 5
        assert leaf.grad.dtype == dtype
        assert relative_error(loss, ref_loss) < 1e-5
        assert relative_error(leaf.grad, ref_grad) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_both_backends_agree_and_sigma_n_zero_is_edm():
    """With sigma_n = 0 both weightings are the EDM loss lambda(s) * ||D - y||^2."""
    denoised, x_t, y, sigma, _ = _inputs((3, 1, 28, 28), torch.float32)
    zeros = torch.zeros_like(sigma)
    edm = (sigma**2 + 0.25) / (sigma * 0.5) ** 2 * ((denoised - y) ** 2).flatten(1).sum(1)
    for weighting in ("edm", "ambient"):
        losses = [kernels.ambient_loss(denoised, x_t, y, sigma, zeros, weighting=weighting, backend=b)
                  for b in ("triton", "torch")]
        assert relative_error(losses[0], edm) < 1e-5 and relative_error(losses[0], losses[1]) < 1e-5


@pytest.mark.parametrize("weighting", ["edm", "ambient"])
def test_clamped_samples_zero_loss_zero_grad_no_nan(weighting):
    """sigma == sigma_n in float32 for every sample: loss and gradient exactly 0, never NaN."""
    y = torch.randn(4, 2, 9, 11, device=DEVICE)
    sigma = torch.tensor([0.2, 1e-3, 0.7, 3.0], device=DEVICE)
    x_t = kernels.noise_injection(y, sigma, sigma, seed=1, backend="triton")
    leaf = torch.randn_like(y).requires_grad_()
    loss = kernels.ambient_loss(leaf, x_t, y, sigma, sigma.clone(), weighting=weighting, backend="triton")
    loss.mean().backward()
    assert torch.equal(loss, torch.zeros_like(loss)) and torch.equal(leaf.grad, torch.zeros_like(y))


def test_no_grad_skips_the_gradient():
    denoised, x_t, y, sigma, sigma_n = _inputs((3, 5, 7), torch.float32)
    with torch.no_grad():
        loss = kernels.ambient_loss(denoised.clone().requires_grad_(), x_t, y, sigma, sigma_n, backend="triton")
    assert not loss.requires_grad
    assert relative_error(loss, _reference(denoised, x_t, y, sigma, sigma_n, "edm")[0]) < 1e-5
    assert loss_launch(denoised, x_t, y, sigma, sigma_n, compute_grad=False)[1] is None


def test_bad_inputs_raise():
    denoised, x_t, y, sigma, sigma_n = _inputs((3, 4), torch.float32)
    with pytest.raises(ValueError, match="weighting"):
        loss_launch(denoised, x_t, y, sigma, sigma_n, weighting="snr")
    with pytest.raises(ValueError, match="share"):
        loss_launch(denoised, x_t[:2], y, sigma, sigma_n)
    with pytest.raises(ValueError, match="differentiable only"):
        kernels.ambient_loss(denoised, x_t.requires_grad_(), y, sigma, sigma_n, backend="triton")
