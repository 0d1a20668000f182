"""Helpers for testing the kernels: the device to test on, float64 relative errors, poisoned outputs."""
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (NaN in `out` gives NaN, which fails any `<` check)."""
    out, ref = out.detach().double(), ref.detach().double().to(out.device)
    return ((out - ref).norm() / ref.norm()).item()


class Canary:
    """A NaN-poisoned buffer: a contiguous view of `shape` with `pad` poisoned elements on either side.

    Pass `view` as a kernel's output: elements the kernel fails to write stay NaN, and a write out
    of bounds shows as a changed pad (the interpreter does not catch out-of-bounds stores).
    """

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = DEVICE,
                 pad: int = 1 << 16):
        numel = 1
        for size in shape:
            numel *= size
        self.pad = pad
        self.buffer = torch.full((numel + 2 * pad,), float("nan"), dtype=dtype, device=device)
        self.view = self.buffer[pad:pad + numel].view(shape)

    def intact(self) -> bool:
        """Whether both pads are still all NaN."""
        pads = torch.cat([self.buffer[:self.pad], self.buffer[self.buffer.numel() - self.pad:]])
        return bool(torch.isnan(pads).all())
