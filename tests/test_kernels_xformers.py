"""The xformers attention backend: against the float64 reference where xformers runs, refused with the reason where not.

Where the installed xformers cannot run (on a CPU always: its memory-efficient attention has CUDA operators only),
the comparisons are skipped with `kernels.attention_unavailable`'s reason, and the backend's own logic (layout,
the checks behind the reason, the trainer's refusal) is tested against stand-in xformers modules.
"""
import json
import math
import sys
import types

import pytest
import torch

import kernels
import train
from ambient.model.networks import UNetBlock
from kernels import attention_xformers
from kernels.testing import DEVICE, relative_error

REASON = kernels.attention_unavailable("xformers", DEVICE)
RUNS = pytest.mark.skipif(REASON is not None, reason=f"xformers does not run here: {REASON}")
# Relative, against float64. fp32: xformers may take TF32 paths on a GPU (about 3e-4), not checked here on one yet.
TOL = {torch.float32: 1e-3, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _reference(q, k, v, grad_out, scale):
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = kernels.attention_ref(*leaves, scale=scale)
    out.backward(grad_out.double())
    return out.detach(), [t.grad for t in leaves]


def _check_against_reference(batch, heads, n, d, dtype, backend="xformers"):
    q, k, v = (torch.randn(batch, heads, n, d, device=DEVICE).to(dtype).requires_grad_() for _ in range(3))
    grad_out = torch.randn(batch, heads, n, d, device=DEVICE).to(dtype)
    out = kernels.attention(q, k, v, scale=0.3, backend=backend)
    out.backward(grad_out)
    ref_out, ref_grads = _reference(q, k, v, grad_out, 0.3)
    assert out.shape == q.shape and out.dtype == dtype
    assert relative_error(out, ref_out) < TOL[dtype]
    for t, ref in zip((q, k, v), ref_grads):
        assert relative_error(t.grad, ref) < TOL[dtype]


# Non-powers of two in N and D; D = 256 is the DDPM++ / NCSN++ head.
CASES = [(2, 1, 100, 64, torch.bfloat16), (1, 2, 257, 32, torch.float16), (1, 1, 64, 256, torch.bfloat16),
         (2, 3, 100, 48, torch.float32)]


@RUNS
@pytest.mark.parametrize("batch,heads,n,d,dtype", CASES)
def test_forward_backward_against_float64(batch, heads, n, d, dtype):
    _check_against_reference(batch, heads, n, d, dtype)


def _unet_attention(backend: str, dtype: torch.dtype, device: torch.device = DEVICE
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A UNet attention layer (2 heads of 48 channels at 10x10) forward and backward: output and d/d qkv."""
    torch.manual_seed(3)
    block = UNetBlock(96, 96, emb_channels=8, attention=True, num_heads=2, attn_backend=backend)
    qkv = torch.randn(2, 3 * 96, 10, 10, device=device).to(dtype).requires_grad_()
    out = block._attend(qkv)
    out.backward(torch.randn(out.shape, device=device).to(dtype))
    return out.detach(), qkv.grad


@RUNS
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unet_layout_matches_the_torch_backend(dtype):
    """q, k, v as the network hands them over (strided along D): the same as the reference backend."""
    out, grad = _unet_attention("xformers", dtype)
    ref_out, ref_grad = _unet_attention("torch", torch.float64)
    assert relative_error(out, ref_out) < TOL[dtype] and relative_error(grad, ref_grad) < TOL[dtype]


def test_refused_with_the_reason_where_it_cannot_run():
    if REASON is None:
        pytest.skip("xformers runs here")
    q = torch.randn(1, 1, 16, 32, device=DEVICE)
    with pytest.raises(RuntimeError, match="attention backend 'xformers' is unavailable") as raised:
        kernels.attention(q, q, q, backend="xformers")
    assert REASON in str(raised.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA works here")
def test_a_cuda_device_without_a_driver_is_a_reason_not_an_error():
    """What bench/gpu_check.sh's probe asks on any machine: CUDA that cannot start is named, not raised."""
    reason = kernels.attention_unavailable("xformers", "cuda")
    assert isinstance(reason, str) and reason


def test_the_trainer_refuses_it_before_making_the_run_directory(tmp_path, capsys):
    if REASON is None:
        pytest.skip("xformers runs here")
    run = tmp_path / "run"
    assert train.main(["--data", "digits", "--model-channels", "8", "--batch", "16", "--kimg", "0.016", "--no-progress",
                       "--kernels", "xformers", "--run-dir", str(run)] + (["--device", "cpu"] if DEVICE.type == "cpu"
                                                                           else [])) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --kernels xformers: ") and REASON in err and "Traceback" not in err
    assert not run.exists()


def test_xformers_means_auto_for_the_ops_xformers_lacks():
    y = torch.randn(2, 1, 4, 4, device=DEVICE)
    sigma, sigma_n = torch.tensor([0.5, 1.0], device=DEVICE), torch.tensor([0.2, 0.0], device=DEVICE)
    eps = torch.randn_like(y)
    assert torch.equal(kernels.noise_injection(y, sigma, sigma_n, seed=0, eps=eps, backend="xformers"),
                       kernels.noise_injection(y, sigma, sigma_n, seed=0, eps=eps, backend="auto"))
    assert kernels.attention_unavailable("torch", DEVICE) is None
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.attention_unavailable("flash", DEVICE)


# --- the checks behind the reason, against stand-in xformers modules ------------------------------------------------

def _reference_bmhk(q, k, v, scale):
    """memory_efficient_attention's contract: (B, N, H, D) inputs, unit stride along D, (B, N, H, D) output."""
    assert all(t.stride(-1) == 1 for t in (q, k, v)), "xformers needs D contiguous"
    return kernels.attention_ref(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale).transpose(1, 2)


def _no_cuda_operator(q, k, v, scale):
    raise NotImplementedError("No operator found for `memory_efficient_attention_forward` with inputs:\n"
                              "     query       : shape=(2, 100, 2, 64) (torch.float32)\n"
                              "`cutlassF-pt` is not supported because:\n    device=cpu (supported: {'cuda'})\n"
                              "`fa2F@2.5.7-pt` is not supported because:\n    device=cpu (supported: {'cuda'})\n"
                              "    dtype=torch.float32 (supported: {torch.bfloat16, torch.float16})")


@pytest.fixture
def fake_xformers(tmp_path, monkeypatch):
    """Install stand-in `xformers` / `xformers.ops` modules (version, torch requirement, build info, the op)."""
    package = types.ModuleType("xformers")
    package.__file__ = str(tmp_path / "__init__.py")
    package._has_cpp_library = False
    (tmp_path / "cpp_lib.json").write_text(json.dumps({"version": {"torch": "2.10.0+cu128"}}))
    ops = types.ModuleType("xformers.ops")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setattr(attention_xformers, "_distribution", lambda: ("0.0.99", ["torch>=2.4", "numpy"]))
    attention_xformers.unavailable.cache_clear()
    yield ops, monkeypatch
    attention_xformers.unavailable.cache_clear()


def test_a_working_xformers_is_used_in_the_unet_layout(fake_xformers):
    ops, _ = fake_xformers
    ops.memory_efficient_attention = lambda q, k, v, scale: _reference_bmhk(q, k, v, scale)
    cpu = torch.device("cpu")
    assert attention_xformers.unavailable(cpu) is None
    out, grad = _unet_attention("xformers", torch.float32, cpu)
    ref_out, ref_grad = _unet_attention("torch", torch.float64, cpu)
    assert relative_error(out, ref_out) < 1e-5 and relative_error(grad, ref_grad) < 1e-5
    q, k, v = (torch.randn(1, 2, 9, 8) for _ in range(3))
    assert relative_error(attention_xformers.attention_xformers(q, k, v), kernels.attention_ref(q, k, v)) < 1e-6
    assert relative_error(attention_xformers.attention_xformers(q, k, v, scale=0.1),
                          kernels.attention_ref(q, k, v, scale=0.1)) < 1e-6


@pytest.mark.parametrize("op, message", [
    (_no_cuda_operator, "xformers 0.0.99 (built for torch 2.10.0+cu128, its C++/CUDA extension does not load here) "
                        "cannot run memory_efficient_attention on cpu with torch {torch}: "
                        "device=cpu (supported: {{'cuda'}})"),
    (lambda q, k, v, scale: 0 * (q + k + v), "float32 output is off the reference by 1 (relative)"),
    (lambda q, k, v, scale: 1.0001 * _reference_bmhk(q, k, v, scale), None),
    (lambda q, k, v, scale: 1.1 * _reference_bmhk(q, k, v, scale), "float32 output is off the reference by 0.1"),
])
def test_the_probe_names_why_it_cannot_run(fake_xformers, op, message):
    ops, _ = fake_xformers
    ops.memory_efficient_attention = op
    reason = attention_xformers.unavailable(torch.device("cpu"))
    assert reason == message if message is None else message.format(torch=torch.__version__) in reason


def test_a_torch_it_does_not_declare_support_for_is_named(fake_xformers):
    ops, monkeypatch = fake_xformers
    ops.memory_efficient_attention = lambda q, k, v, scale: _reference_bmhk(q, k, v, scale)
    monkeypatch.setattr(attention_xformers, "_distribution", lambda: ("0.0.99", ["torch>=99.1", "numpy"]))
    assert attention_xformers.unavailable(torch.device("cpu")) == \
        f"xformers 0.0.99 requires torch>=99.1, this is torch {torch.__version__}"


def test_not_installed_is_named(monkeypatch):
    monkeypatch.setattr(attention_xformers, "_distribution", lambda: None)
    attention_xformers.unavailable.cache_clear()
    try:
        assert attention_xformers.unavailable(torch.device("cpu")).startswith("xformers is not installed")
    finally:
        attention_xformers.unavailable.cache_clear()


def test_default_scale_is_one_over_sqrt_d(fake_xformers):
    ops, _ = fake_xformers
    seen = []
    ops.memory_efficient_attention = lambda q, k, v, scale: seen.append(scale) or _reference_bmhk(q, k, v, scale)
    q = torch.randn(1, 1, 5, 36)
    attention_xformers._memory_efficient(q, q, q, None)
    assert seen == [1 / math.sqrt(36)]
