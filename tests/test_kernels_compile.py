"""The Triton ops under torch.compile (fullgraph) and torch.library.opcheck; the torch backend under autograd."""
import shutil

import pytest
import torch

import kernels
import kernels.attention_triton  # registers torch.ops.ambient.attention_*
import kernels.loss_triton  # registers torch.ops.ambient.ambient_loss
import kernels.noise_triton  # registers torch.ops.ambient.noise_injection
from kernels.testing import DEVICE, relative_error

ops = torch.ops.ambient


class TinyAmbientStep(torch.nn.Module):
    """Noise injection -> one self-attention layer -> ambient loss, all through the Triton backend."""

    def __init__(self, tokens: int, channels: int, heads: int, backend: str = "triton"):
        super().__init__()
        self.tokens, self.heads, self.backend = tokens, heads, backend
        self.qkv = torch.nn.Linear(channels, 3 * channels)
        self.proj = torch.nn.Linear(channels, channels)

    def forward(self, y: torch.Tensor, sigma: torch.Tensor, sigma_n: torch.Tensor) -> torch.Tensor:
        x_t, net_in = kernels.noise_injection_net_input(y, sigma, sigma_n, seed=7, offset=3, backend=self.backend)
        batch, channels = y.shape[0], y.shape[-1]
        tokens = net_in.reshape(batch, self.tokens, channels)
        q, k, v = self.qkv(tokens).reshape(batch, self.tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = kernels.attention(q, k, v, backend=self.backend).transpose(1, 2).reshape(tokens.shape)
        denoised = (x_t + self.proj(attended).reshape(y.shape)) / 2
        return kernels.ambient_loss(denoised, x_t, y, sigma, sigma_n, weighting="ambient", backend=self.backend)


def _inputs():
    y = torch.randn(3, 1, 20, 16, device=DEVICE)
    sigma_n = torch.tensor([0.0, 0.2, 0.2], device=DEVICE)
    sigma = torch.tensor([0.5, 1.3, 0.2], device=DEVICE)  # the last sample is clamped (sigma == sigma_n)
    return y, sigma, sigma_n


def _step(model, y, sigma, sigma_n):
    model.zero_grad()
    loss = model(y, sigma, sigma_n)
    loss.mean().backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


# Inductor on CPU compiles C++ (about 45 s here, cold cache): needs a compiler.
COMPILERS = ["aot_eager", pytest.param("inductor", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() or shutil.which("c++") or shutil.which("g++")), reason="no C++ compiler"))]


@pytest.mark.parametrize("compiler", COMPILERS)
def test_compile_fullgraph_matches_eager(compiler):
    torch._dynamo.reset()
    model = TinyAmbientStep(tokens=20, channels=16, heads=2).to(DEVICE)
    inputs = _inputs()
    eager_loss, eager_grads = _step(model, *inputs)
    compiled = torch.compile(model, backend=compiler, fullgraph=True)
    loss, grads = _step(compiled, *inputs)
    assert relative_error(loss, eager_loss) < 1e-6
    for got, ref in zip(grads, eager_grads):
        assert relative_error(got, ref) < 1e-5


def test_triton_and_torch_backends_agree_in_the_step():
    """The Triton step equals the same step through the reference attention and loss.

    The two backends draw different noise, so the reference ops get the Triton step's x_t.
    """
    model = TinyAmbientStep(tokens=20, channels=16, heads=2).to(DEVICE)
    y, sigma, sigma_n = _inputs()
    loss = model(y, sigma, sigma_n)
    x_t, net_in = kernels.noise_injection_net_input(y, sigma, sigma_n, seed=7, offset=3, backend="triton")
    tokens = net_in.reshape(3, 20, 16)
    q, k, v = model.qkv(tokens).reshape(3, 20, 3, 2, -1).permute(2, 0, 3, 1, 4)
    attended = kernels.attention_ref(q, k, v).transpose(1, 2).reshape(tokens.shape)
    denoised = (x_t + model.proj(attended).reshape(y.shape)) / 2
    ref = kernels.ambient_loss_ref(denoised, x_t, y, sigma, sigma_n, weighting="ambient")
    assert relative_error(loss, ref) < 1e-5


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert all(status == "SUCCESS" for status in result.values()), result


def test_opcheck_noise_injection():
    y = torch.randn(3, 2, 5, 7, device=DEVICE, requires_grad=True)
    eps = torch.randn(3, 2, 5, 7, device=DEVICE, requires_grad=True)
    sigma, sigma_n = torch.rand(3, device=DEVICE) + 0.3, torch.full((3,), 0.2, device=DEVICE)
    _opcheck(ops.noise_injection.default, (y, sigma, sigma_n, eps, 3, 5, 0.5, True))
    _opcheck(ops.noise_injection.default, (y, sigma, sigma_n, None, 2**40, 2**33, 0.5, False))


def test_opcheck_ambient_loss():
    denoised = torch.randn(3, 2, 5, 7, device=DEVICE, requires_grad=True)
    y = torch.randn(3, 2, 5, 7, device=DEVICE)
    sigma, sigma_n = torch.rand(3, device=DEVICE) + 0.3, torch.full((3,), 0.2, device=DEVICE)
    for weighting in ("edm", "ambient"):
        _opcheck(ops.ambient_loss.default, (denoised, y + 0.1, y, sigma, sigma_n, 0.5, weighting, True))
    _opcheck(ops.ambient_loss.default, (denoised.detach(), y + 0.1, y, sigma, sigma_n, 0.5, "edm", False))


def test_opcheck_attention():
    q, k, v = (torch.randn(1, 2, 20, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    _opcheck(ops.attention_fwd.default, (q, k, v, 0.25))
    o, lse = ops.attention_fwd(q, k, v, 0.25)
    _opcheck(ops.attention_bwd.default, (torch.randn_like(o), q.detach(), k.detach(), v.detach(), o.detach(),
                                         lse, 0.25))


def test_torch_backend_is_differentiable_by_plain_autograd():
    """The references stay plain PyTorch: gradcheck in float64 on small inputs."""
    q, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda *t: kernels.attention(*t, backend="torch"), (q, k, v))
    y, eps = (torch.randn(2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    sigma, sigma_n = torch.tensor([0.5, 1.0], dtype=torch.float64), torch.tensor([0.2, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, b: kernels.noise_injection(a, sigma, sigma_n, seed=0, eps=b, backend="torch"), (y, eps))
    denoised = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    for weighting in ("edm", "ambient"):
        assert torch.autograd.gradcheck(lambda d, w=weighting: kernels.ambient_loss(
            d, y.detach(), eps.detach(), sigma, sigma_n, weighting=w, backend="torch"), (denoised,))
