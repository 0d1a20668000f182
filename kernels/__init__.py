"""Fused ops of the ambient trainer, each with a plain-PyTorch reference and a Triton kernel."""
from ._backend import BACKENDS, WEIGHTINGS, resolve_backend
from .attention import attention, attention_unavailable
from .attention_ref import attention_ref
from .loss import ambient_loss, ambient_loss_ref
from .noise import net_input_ref, noise_injection, noise_injection_net_input, noise_injection_ref

__all__ = ["BACKENDS", "WEIGHTINGS", "ambient_loss", "ambient_loss_ref", "attention", "attention_ref",
           "attention_unavailable", "net_input_ref", "noise_injection", "noise_injection_net_input",
           "noise_injection_ref", "resolve_backend"]
