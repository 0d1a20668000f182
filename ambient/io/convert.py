"""Import EDM's (and the ambient-diffusion paper's) released network pickles without running their code.

    python -m ambient.convert network-snapshot.pkl converted/      # then: python sample.py --ckpt converted/

NVIDIA's pickles hold a dict {"ema": <EDMPrecond>, "loss_fn": ..., "augment_pipe": ...,
"dataset_kwargs": ...}. Their networks are `torch_utils.persistence` classes: each object is
stored as `_reconstruct_persistent_obj(meta)` with meta = {type, version, module_src (the whole
Python module), class_name, state (the object's __dict__)}, and a normal `pickle.load` would
exec module_src. Here a restricted unpickler resolves only an allow-list of globals (tensor
rebuilding with bounds checks, plain containers); persistent objects and torch.nn containers
become inert `PickledObject`s holding their state, so nothing from the file ever runs. Any
other global raises `UnsafePickleError` naming it. numpy objects are refused too: a crafted
numpy dtype makes `numpy.core.multiarray.scalar` read raw bytes as object pointers (a crash or
worse), and EDM's pickles hold none. The network is then rebuilt from the
recorded constructor arguments as our `ambient.networks.EDMPrecond` (same arguments, same
state_dict keys) and its weights are loaded strictly.
"""
import argparse
import collections
import hashlib
import inspect
import io
import pickle
import sys
import warnings
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from ambient.common import cli
from ambient.model.networks import PRESETS, EDMPrecond, SongUNet, build_network

from .checkpoint import CheckpointError, save_checkpoint
from .templates import network_template, state_mismatch

EDM_DEFAULT_MODEL_TYPE = "DhariwalUNet"   # what EDM's EDMPrecond builds when model_type is not given


class ConversionError(ValueError):
    """A pickle that cannot be turned into one of our networks (wrong content, unsupported model, bad weights)."""


class UnsafePickleError(ConversionError):
    """A pickle that references a global outside the allow-list, i.e. one that could run code when loaded."""


@dataclass
class PickledObject:
    """An object of the pickle kept as inert data: its class name and its pickled state (a __dict__)."""

    class_name: str
    state: dict[str, Any] = field(default_factory=dict)

    def __setstate__(self, state: Any) -> None:
        """What unpickling hands over (pickle's BUILD) becomes `state`; no other attribute can be set."""
        if not isinstance(state, dict):
            raise ConversionError(f"unexpected pickled state for {self.class_name}: {type(state).__name__}")
        self.state = state


def _persistent_object(meta: Any) -> PickledObject:
    """Stand-in for `torch_utils.persistence._reconstruct_persistent_obj`: keeps the state, never runs module_src."""
    if not (isinstance(meta, dict) and meta.get("type") == "class" and isinstance(meta.get("class_name"), str)
            and isinstance(meta.get("state"), dict)):
        raise ConversionError("malformed torch_utils.persistence record (expected type 'class', a class_name "
                              "and a state dict)")
    return PickledObject(meta["class_name"], meta["state"])


def _plain_class(qualname: str) -> type:
    """A stand-in class for a torch.nn container: unpickling fills its `state` instead of building a module."""

    def __new__(cls: type, *args: Any) -> PickledObject:
        obj = object.__new__(cls)
        PickledObject.__init__(obj, qualname)
        return obj

    return type(qualname, (PickledObject,), {"__new__": __new__})


class _EasyDict(dict):
    """dnnlib's EasyDict (a dict with attribute access) read back as a plain dict."""


def _span(offset: int, size: tuple, stride: tuple) -> int:
    """Elements of storage a strided view needs: one past the last element it reaches (0 when empty)."""
    return offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1 if all(size) else 0


def _no_state(what: str, *extras: Any) -> None:
    """Refuse hooks, metadata or attribute state riding on a tensor: only our inert objects receive state."""
    if any(extras):
        raise UnsafePickleError(f"a {what} in the pickle carries hooks, metadata or state; refusing to apply them")


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> torch.Tensor:
    """Stand-in for torch's _rebuild_parameter(_with_state): the (already checked) tensor itself, no state set."""
    if not isinstance(data, torch.Tensor):
        raise ConversionError(f"a parameter in the pickle wraps a {type(data).__name__}, not a tensor")
    _no_state("parameter", backward_hooks, state)
    return data


# (module, name) -> what the unpickler hands out; RestrictedUnpickler adds its storage and tensor
# rebuilders. Nothing outside these is ever imported or called.
ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    **{("torch.nn.modules.container", name): _plain_class(f"torch.nn.{name}")
       for name in ("ModuleDict", "ModuleList", "Sequential")},
}
MAX_DEPTH = 100              # nesting of containers and objects (EDM's networks: about 20)
MAX_NODES = 1_000_000        # objects reached, counting each path to a shared one (EDM's: tens of thousands)


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler that resolves only ALLOWED_GLOBALS (anything else: UnsafePickleError), lets only
    PickledObjects receive state (pickle's BUILD), and records every storage it loads with its size,
    so `check_loaded` can hold every tensor to the storage as it was loaded.

    The pure-Python unpickler, because the C one cannot refuse BUILD (which reaches
    `Tensor.__setstate__`, i.e. `set_`, growing a storage over uninitialised memory).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.storages: dict[int, int] = {}      # data_ptr -> bytes, of every storage as loaded

    def find_class(self, module: str, name: str) -> Any:
        # Protocols 0-2 write Python 2 names (__builtin__.set); the result still has to pass the allow-list.
        module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
        own = {("torch.storage", "_load_from_bytes"): self._storage_from_bytes,
               ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor}
        found = own.get((module, name)) or ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise UnsafePickleError(f"the pickle references the global {module}.{name}, which is not plain data "
                                    f"(tensors, containers, EDM persistent objects); refusing to load it because "
                                    f"that could run code")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise ConversionError("the pickle uses persistent ids (a torch.save file?); expected an EDM network pickle")

    def _load_build(self) -> None:
        target = self.stack[-2]                      # BUILD: the state on top, the object below it
        if not isinstance(target, PickledObject):
            raise UnsafePickleError(f"the pickle sets the state of a {type(target).__name__}; only the "
                                    f"state of plain module records may be set (a tensor's would bypass its checks)")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build

    def _storage_from_bytes(self, data: Any) -> Any:
        """Stand-in for `torch.storage._load_from_bytes` (which calls torch.load with weights_only=False)."""
        if not isinstance(data, bytes):
            raise ConversionError(f"a tensor storage in the pickle is a {type(data).__name__}, not bytes")
        _check_storage_sizes(data)
        try:
            storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafePickleError(f"a tensor storage in the pickle holds more than plain data ({e})") from None
        except Exception as e:
            raise ConversionError(f"a tensor storage in the pickle cannot be read ({type(e).__name__}: {e})") from None
        if not isinstance(storage, torch.TypedStorage):
            raise ConversionError(f"a tensor storage in the pickle decodes to {type(storage).__name__}, not a storage")
        self.storages[storage.data_ptr()] = storage.nbytes()
        return storage

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                        backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
        """torch._utils._rebuild_tensor_v2 for a storage this unpickler loaded, refusing views outside it.

        (torch would silently grow the storage, filling the weights with uninitialised memory.)
        """
        if not isinstance(storage, torch.TypedStorage) or self.storages.get(storage.data_ptr()) != storage.nbytes():
            raise ConversionError(f"a tensor in the pickle is built on a {type(storage).__name__}, not on a "
                                  f"storage of the pickle")
        ints = [offset, *size, *stride] if isinstance(size, tuple) and isinstance(stride, tuple) else [None]
        if not all(type(v) is int and v >= 0 for v in ints) or len(size) != len(stride):
            raise ConversionError(f"a tensor in the pickle has an invalid layout (offset {offset}, size {size}, "
                                  f"stride {stride})")
        if _span(offset, size, stride) > storage.size():
            raise ConversionError(f"a tensor in the pickle (offset {offset}, size {size}, stride {stride}) "
                                  f"reaches beyond its storage of {storage.size()} elements")
        _no_state("tensor", backward_hooks, metadata)
        return torch._utils._rebuild_tensor(storage, offset, size, stride)

    def check_loaded(self, root: Any) -> None:
        """Bound the depth and size of what was loaded (self-references included) and hold every tensor in it
        to the storage it was built on, as that storage was loaded."""
        stack, seen = [(root, 0)], 0
        while stack:
            node, depth = stack.pop()
            seen += 1
            if depth > MAX_DEPTH or seen > MAX_NODES:
                raise ConversionError(f"the pickle's objects are nested more than {MAX_DEPTH} deep or number more "
                                      f"than {MAX_NODES} (or refer to themselves); not an EDM network pickle")
            if isinstance(node, torch.Tensor):
                self._check_tensor(node)
            elif isinstance(node, PickledObject):
                stack.append((node.state, depth + 1))
            elif isinstance(node, dict):
                stack.extend((x, depth + 1) for item in node.items() for x in item)
            elif isinstance(node, (list, tuple, set, frozenset)):
                stack.extend((x, depth + 1) for x in node)

    def _check_tensor(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        loaded = self.storages.get(storage.data_ptr())
        span = _span(t.storage_offset(), tuple(t.shape), t.stride()) * t.element_size()
        if loaded is None or storage.nbytes() != loaded or span > loaded:
            raise UnsafePickleError(f"a tensor in the pickle ({tuple(t.shape)} {t.dtype}) does not lie within a "
                                    f"storage of the pickle as it was loaded; refusing it")


def _check_storage_sizes(data: bytes) -> None:
    """Refuse a torch.save'd storage whose recorded size is more than its bytes hold (before torch allocates it)."""
    class Scan(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> str:
            return f"{module}.{name}"               # names only: nothing is imported or called

        def persistent_load(self, pid: Any) -> Any:
            sizes.append(pid)
            return None

    sizes: list[Any] = []
    try:
        scan = Scan(io.BytesIO(data))
        for _ in range(4):                          # magic number, protocol, sys info, the object
            scan.load()
    except Exception:
        return                                       # torch.load reports a malformed file itself
    for pid in sizes:
        numel = pid[4] if isinstance(pid, tuple) and len(pid) > 4 else None
        if type(numel) is not int or not 0 <= numel <= len(data):
            raise ConversionError(f"a tensor storage in the pickle records {numel!r} elements in {len(data)} bytes")


def safe_load_pickle(path: str | Path, data: bytes | None = None) -> Any:
    """The content of a pickle file (or of its bytes `data`) with persistent objects as PickledObject;
    runs no code from the file, and every tensor in it lies within a storage of the file."""
    try:
        if data is None:
            data = Path(path).read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # torch's TypedStorage deprecation notices
            unpickler = RestrictedUnpickler(io.BytesIO(data))   # in memory: no read beyond the file's bytes
            root = unpickler.load()
            unpickler.check_loaded(root)
            return root
    except ConversionError:
        raise
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:                            # truncated or otherwise malformed pickle; too deep; too big
        raise ConversionError(f"{path} is not a readable pickle ({type(e).__name__}: {e})") from None


def _plain(value: Any, where: str) -> Any:
    """A constructor argument as JSON-ready Python data (tuples -> lists)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise ConversionError(f"constructor argument {where} is a {type(value).__name__}, not plain data")


def _module_tensors(node: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Collect the persistent parameters and buffers of a pickled module tree under dotted names."""
    if not isinstance(node, PickledObject):
        raise ConversionError(f"submodule {prefix.rstrip('.') or '(root)'} is a {type(node).__name__}, not a module")
    def entries(key: str, kind: type | tuple[type, ...]) -> Any:
        """node.state[key] if it is a `kind` (dicts: with str keys); absent or None: empty."""
        value = node.state.get(key)
        if value is None:
            return {} if kind is dict else ()
        if not isinstance(value, kind) or isinstance(value, dict) and not all(isinstance(k, str) for k in value):
            raise ConversionError(f"submodule {prefix.rstrip('.') or '(root)'} records {key} as a "
                                  f"{type(value).__name__}")
        return value

    skip = entries("_non_persistent_buffers_set", (set, frozenset, list, tuple))
    for kind in ("_parameters", "_buffers"):
        for name, tensor in entries(kind, dict).items():
            if tensor is None or name in skip:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise ConversionError(f"{prefix}{name} is a {type(tensor).__name__}, not a tensor")
            out[prefix + name] = tensor.detach()
    for name, child in entries("_modules", dict).items():
        if child is not None:
            _module_tensors(child, f"{prefix}{name}.", out)


def _network_kwargs(args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """EDM constructor arguments -> the `network` record of our checkpoints (`build_network` keywords)."""
    try:
        bound = inspect.signature(EDMPrecond).bind(*args, **kwargs)
    except TypeError as e:
        raise ConversionError(f"the network's recorded constructor arguments do not fit EDMPrecond: {e}") from None
    explicit = {k: v for k, v in bound.arguments.items() if k != "model_kwargs"}
    explicit.update(bound.arguments.get("model_kwargs", {}))
    model_type = explicit.setdefault("model_type", EDM_DEFAULT_MODEL_TYPE)
    if model_type != "SongUNet":
        raise ConversionError(f"model_type {model_type!r} is not supported; only SongUNet networks "
                              f"(EDM's DDPM++ and NCSN++) can be converted")
    preset = "ncsnpp" if explicit.get("embedding_type") == "fourier" else "ddpmpp"
    song_defaults = {k: p.default for k, p in inspect.signature(SongUNet).parameters.items()
                     if p.default is not p.empty}
    for key in PRESETS[preset]:                # every preset value is overridden: EDM's defaults apply
        explicit.setdefault(key, song_defaults.get(key))
    return {"preset": preset, **_plain(explicit, "init_kwargs")}


def convert_edm_pickle(path: str | Path) -> tuple[EDMPrecond, dict[str, Any]]:
    """Our EDMPrecond (eval mode, CPU) with the EMA weights of an EDM network pickle, and a summary of it.

    The recorded constructor arguments are bounded, and the network they describe (built on the meta
    device) must fit the weights present before the real one is built. info: "network" (the
    build_network keywords, as checkpoints record them), "class_name", "source", "source_sha256",
    "num_parameters", "pickle_keys".
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {e.strerror or e}") from None
    data = safe_load_pickle(path, raw)
    if isinstance(data, dict) and "ema" in data:
        root = data["ema"]
    else:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ConversionError(f"{path} is not an EDM network pickle: expected a dict with an 'ema' network, got {keys}")
    if not isinstance(root, PickledObject) or root.class_name != "EDMPrecond":
        name = root.class_name if isinstance(root, PickledObject) else type(root).__name__
        raise ConversionError(f"the pickle's 'ema' network is a {name}; only EDMPrecond networks can be converted")
    init_args, init_kwargs = root.state.get("_init_args") or (), root.state.get("_init_kwargs")
    if not isinstance(init_kwargs, dict) or not isinstance(init_args, (list, tuple)):
        raise ConversionError("the pickled EDMPrecond does not record its constructor arguments "
                              "(_init_args / _init_kwargs)")
    network = _network_kwargs(list(init_args), dict(init_kwargs))
    try:
        template = network_template(network)
    except ValueError as e:
        raise ConversionError(f"the pickle's network arguments do not describe a network: {e}") from None
    tensors: dict[str, torch.Tensor] = {}
    _module_tensors(root, "", tensors)
    problem = state_mismatch(template.state_dict(), tensors)
    if problem:
        raise ConversionError(f"the pickled weights do not fit the network their own arguments describe: {problem}")
    net = build_network(**network)            # its weights are all there: the memory is the file's own
    net.load_state_dict(tensors, strict=True)
    info = {"network": network, "class_name": root.class_name, "source": str(path),
            "source_sha256": hashlib.sha256(raw).hexdigest(),
            "num_parameters": sum(p.numel() for p in net.parameters()), "pickle_keys": sorted(map(str, data))}
    return net.eval().requires_grad_(False), info


def write_converted(net: EDMPrecond, info: dict[str, Any], dest: str | Path) -> Path:
    """Save a converted network as a checkpoint (net = ema, no optimizer state) in a new or empty `dest`."""
    dest = cli.check_destination(dest, option="destination")
    weights = net.state_dict()
    meta = {"network": info["network"], "kimg": None,
            "converted_from": {k: info[k] for k in ("source", "source_sha256", "class_name", "pickle_keys")}}
    state = {"optimizer": {}, "step": 0, "bad_steps": 0, "batch": None}
    return save_checkpoint(dest, 0, weights, weights, state, meta, keep=1)


def main(argv: list[str] | None = None) -> int:
    """CLI: convert SRC.pkl into a checkpoint in DEST_DIR; 0 on success, 1 with one `error:` line otherwise."""
    p = argparse.ArgumentParser(prog="python -m ambient.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="EDM network pickle (network-snapshot-*.pkl)")
    p.add_argument("dest", help="new or empty directory for the converted checkpoint")
    a = p.parse_args(argv)
    try:
        cli.check_destination(a.dest, option="destination")    # before the slow part; write_converted checks again
        net, info = convert_edm_pickle(a.src)
        where = write_converted(net, info, a.dest)
    except (ConversionError, CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = info["network"]
    print(f"converted {info['class_name']} ({info['num_parameters'] / 1e6:.2f}M parameters, "
          f"{n['img_resolution']}x{n['img_resolution']}x{n['img_channels']}, label_dim {n.get('label_dim', 0)}) "
          f"into {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
