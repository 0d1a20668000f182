"""Network templates: the network that a recorded configuration (a checkpoint's meta.json, a converted pickle)
describes, built on the meta device (no memory), and what keeps given weights from fitting it. Records are
untrusted: bounded plain data, or a ValueError that names the problem."""
from typing import Any

import torch

from ambient.model.networks import EDMPrecond, build_network

# Bounds on recorded network arguments (checkpoints, converted pickles), far above any real network:
# they keep a forged record from describing a network whose construction alone runs for hours.
MAX_ARG_INT = 1 << 16       # every integer argument (resolution, channels, widths, label_dim) ...
MAX_ARG_INTS = {"num_blocks": 64}   # ... but these, which multiply the number of modules
MAX_ARG_LIST = 16           # every list argument (channel_mult, attn_resolutions, resample_filter)


def _check_arg(name: str, value: Any) -> None:
    """ValueError unless `value` is plain data within MAX_ARG_INT / MAX_ARG_LIST."""
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_ARG_LIST:
            raise ValueError(f"network argument {name} has {len(value)} entries (at most {MAX_ARG_LIST})")
        for v in value:
            _check_arg(name, v)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        pass
    elif isinstance(value, int):
        bound = MAX_ARG_INTS.get(name, MAX_ARG_INT)
        if abs(value) > bound:
            raise ValueError(f"network argument {name} = {value} is out of bounds (|value| <= {bound})")
    elif not isinstance(value, float):
        raise ValueError(f"network argument {name} is a {type(value).__name__}, not plain data")


def network_template(network: Any) -> EDMPrecond:
    """`build_network(**network)` on the meta device: the shapes and dtypes of its weights, no memory.

    For recorded (untrusted) arguments: ValueError, naming the problem, unless `network` is a dict of
    plain, bounded values that builds a network. Compare its state_dict with the weights actually present
    before building the real network.
    """
    if not isinstance(network, dict) or not all(isinstance(k, str) for k in network):
        raise ValueError(f"the network record must be a dict of arguments, got {type(network).__name__}")
    for name, value in network.items():
        _check_arg(name, value)
    try:
        with torch.device("meta"):
            return build_network(**network)
    except ValueError:
        raise
    except Exception as e:      # a wrong type or a missing argument surfaces as anything
        raise ValueError(f"no network can be built from {network}: {type(e).__name__}: {e}") from None


def state_mismatch(expected: dict[str, torch.Tensor], given: dict[str, Any]) -> str | None:
    """What keeps `given` from loading into a network with state_dict `expected` (keys, shapes, dtypes), or None."""
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    wrong = [f"{k} {tuple(given[k].shape)} {given[k].dtype} vs {tuple(v.shape)} {v.dtype}"
             for k, v in expected.items() if k in given
             and not (isinstance(given[k], torch.Tensor) and given[k].shape == v.shape and given[k].dtype == v.dtype)]
    parts = [f"{what} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
             for what, items in (("missing", missing), ("unexpected", unexpected),
                                 ("shape/dtype mismatch (given vs network)", wrong)) if items]
    return "; ".join(parts) or None


def checkpoint_template(meta: dict[str, Any]) -> EDMPrecond:
    """The network a checkpoint's meta.json records, on the meta device: what its content must fit."""
    if "network" not in meta:
        raise ValueError("meta.json records no network configuration")
    return network_template(meta["network"])
