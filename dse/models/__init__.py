"""Built-in networks, the user's own by `module:function`, checkpoints and BatchNorm folding.

`build_model("lenet5")`, `build_model("my_pkg.nets:small_cnn")` or `build_model("nets.py:small_cnn")`
(a file path, relative to `base_dir`). BatchNorm is not approximable: `fold_batchnorm` folds every
BatchNorm2d that directly follows a Conv2d into that convolution (weights and bias), as an accelerator
does, so that the approximate layers see the folded weights. `dse prepare` folds after float training,
before quantization, and checks that the folded network computes the same outputs.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dse.util import UNREADABLE_CHECKPOINT, UserError

if TYPE_CHECKING:
    from torch import nn

BUILTIN_MODELS = (
    "digits_cnn",
    "lenet5",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet20a",  # option A shortcuts (zero-padding identity): 19 convolutions + 1 linear layer
    "mobilenet_tiny",
)


def import_function(spec: str, what: str, base_dir: Path | None = None) -> Callable[..., Any]:
    """Resolve "package.module:function" (or "path/file.py:function") to the callable it names."""
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise UserError(f"{what}: expected a built-in name or 'module:function', got {spec!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            if not path.exists():
                raise UserError(f"{what}: file {path} not found")
            mod_id = f"_dse_hook_{abs(hash(str(path.resolve())))}"
            loader_spec = importlib.util.spec_from_file_location(mod_id, path)
            # a .py file always gets a spec with a SourceFileLoader
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_id] = module
            # the file's folder on sys.path while it runs, so that it imports its sibling modules
            folder = str(path.resolve().parent)
            sys.path.insert(0, folder)
            try:
                loader_spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(mod_id, None)
                raise
            finally:
                if folder in sys.path:
                    sys.path.remove(folder)
        else:
            if base_dir is not None and str(base_dir) not in sys.path:
                sys.path.insert(0, str(base_dir))
            module = importlib.import_module(module_name)
    except UserError:
        raise
    except Exception as e:  # user code: whatever its import raises is bad input (one line), never a fallback
        message = " ".join(str(e).split())  # one line
        raise UserError(f"{what}: cannot import {module_name!r} ({type(e).__name__}: {message})") from None
    func: object = getattr(module, func_name, None)
    if not callable(func):
        raise UserError(f"{what}: {module_name!r} has no function {func_name!r}")
    return func


def build_model(
    name_or_hook: str,
    *,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    base_dir: Path | None = None,
) -> nn.Module:
    """A fresh (untrained) network. input_shape = (C, H, W) of one sample; defaults per model."""
    from torch import nn

    from dse.models import nets

    n_cls = num_classes or 10
    if name_or_hook in BUILTIN_MODELS:
        c = input_shape[0] if input_shape else None
        side = input_shape[-1] if input_shape else None
        if name_or_hook == "digits_cnn":
            return nets.DigitsCNN(c or 1, n_cls, side or 8)
        if name_or_hook == "lenet5":
            return nets.LeNet5(c or 1, n_cls, side or 28)
        if name_or_hook == "mobilenet_tiny":
            return nets.MobileNetTiny(c or 3, n_cls)
        if name_or_hook == "resnet20a":
            return nets.CifarResNet(20, c or 3, n_cls, shortcut="A")
        return nets.CifarResNet(int(name_or_hook[len("resnet") :]), c or 3, n_cls)
    if ":" not in name_or_hook:
        raise UserError(
            f"model.name: unknown model {name_or_hook!r}; expected one of {', '.join(BUILTIN_MODELS)} "
            "or 'module:function'"
        )
    func = import_function(name_or_hook, "model.name", base_dir)
    try:
        model = func()
    except Exception as e:  # user code: whatever it raises is bad input (one line), never a fallback
        raise UserError(f"model.name: {name_or_hook} raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserError(
            f"model.name: {name_or_hook} returned {type(model).__name__}, expected a torch nn.Module"
        )
    return model


def check_forward(model: nn.Module, sample: Any, num_classes: int, name: str) -> None:
    """One forward of a few samples, before any training: a network whose layers do not fit the data
    (`mat1 and mat2 shapes cannot be multiplied`) is a UserError naming the layer, its weight and the
    shape it was given; an output that is not [batch, num_classes] is one too."""
    import torch

    names = {m: n for n, m in model.named_modules()}
    stack: list[tuple[str, nn.Module, list[tuple[int, ...]]]] = []

    def enter(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
        shapes = [tuple(x.shape) for x in inputs if isinstance(x, torch.Tensor)]
        stack.append((names.get(mod, "?"), mod, shapes))

    def leave(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        stack.pop()

    handles = [m.register_forward_pre_hook(enter) for m in model.modules()]
    handles += [m.register_forward_hook(leave) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        message = " ".join(str(e).split())
        where = ""
        if stack:
            layer, mod, shapes = stack[-1]
            weight = getattr(mod, "weight", None)
            wshape = f", weight {list(weight.shape)}" if isinstance(weight, torch.Tensor) else ""
            given = ", ".join(str(list(sh)) for sh in shapes)
            where = f" at layer {layer!r} ({type(mod).__name__}{wshape}) given input {given}"
        raise UserError(
            f"model.name: {name} does not fit the data (samples {list(sample.shape)}){where}: {message}"
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != num_classes:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(
            f"model.name: {name} returns {got} for samples {list(sample.shape)}; expected "
            f"[batch, {num_classes}] (one logit per class)"
        )


def checkpoint_state_dict(obj: object) -> dict[str, Any] | None:
    """The state_dict in a loaded checkpoint as people save it: a state_dict, or a dict holding one under
    'state_dict' / 'model' / 'model_state_dict' / 'net' (next to 'epoch', 'best_prec1', optimizer state …),
    with the 'module.' prefix of nn.DataParallel / DistributedDataParallel removed. None: no state_dict."""
    import torch

    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        return None
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        return None
    state: dict[str, Any] = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_checkpoint(model: nn.Module, path: Path, what: str = "model.checkpoint") -> None:
    """Load float weights into `model`: a state_dict, or a dict holding one (`checkpoint_state_dict`:
    'state_dict' / 'model' / …, DataParallel's 'module.' prefixes removed). UserError naming the first
    missing and unexpected keys when it does not fit."""
    import torch

    path = Path(path)
    if not path.exists():
        raise UserError(f"{what}: checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_CHECKPOINT + (pickle.UnpicklingError,) as e:
        # truncated, not a torch file, or objects beyond tensors and plain data (refused: never unpickled)
        raise UserError(f"{what}: {path} is not a readable torch checkpoint ({type(e).__name__})") from None
    state = checkpoint_state_dict(obj)
    if state is None:
        raise UserError(f"{what}: {path} holds no state_dict (a dict of tensors, or one under 'state_dict')")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing, first {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, first {unexpected[0]!r}")
        raise UserError(f"{what}: {path} does not fit the model (keys: {'; '.join(parts)})")
    for k, v in expected.items():
        got = state[k]
        if isinstance(got, torch.Tensor) and got.shape != v.shape:
            raise UserError(
                f"{what}: {path} does not fit the model ({k}: shape {list(got.shape)} in the checkpoint, "
                f"{list(v.shape)} in the model)"
            )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) or first[0]
        raise UserError(f"{what}: {path} does not fit the model ({detail})") from None


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- bn(conv(.)) with the BN's running statistics (exact in eval mode)."""
    import torch
    from torch import nn

    # track_running_stats (checked by the callers): the running_mean / running_var buffers exist
    assert bn.running_var is not None and bn.running_mean is not None
    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        scale = gamma / std
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(std)
        new_bias = (bias - bn.running_mean) * scale + beta
        conv.bias = nn.Parameter(new_bias.detach().clone())


def _foldable(conv: object, bn: object) -> bool:
    from torch import nn

    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.num_features == conv.out_channels
        and bn.track_running_stats
    )


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _fold_traced(model: nn.Module) -> list[str] | None:
    """Fold, through the traced graph (torch.fx), each BatchNorm2d whose input is the output of a Conv2d
    used by nothing else, where both modules are called once: BN wherever the model registers it.
    -> folded BN names (graph order); None when the model cannot be traced (nothing folded)."""
    from collections import Counter

    from torch import fx, nn

    try:
        graph = fx.Tracer().trace(model)
    except (fx.proxy.TraceError, TypeError, RuntimeError, NotImplementedError, AttributeError, ValueError):
        # untraceable user code (data-dependent control flow, unsupported calls)
        return None
    calls = Counter(str(node.target) for node in graph.nodes if node.op == "call_module")
    folded = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        bn_name, conv_name = str(node.target), str(src.target)
        if calls[bn_name] != 1 or calls[conv_name] != 1:
            continue
        bn, conv = model.get_submodule(bn_name), model.get_submodule(conv_name)
        if not _foldable(conv, bn):
            continue
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)  # _foldable
        _fold_into(conv, bn)
        _replace_module(model, bn_name, nn.Identity())
        folded.append(bn_name)
    return folded


def fold_batchnorm(model: nn.Module) -> list[str]:
    """Fold BatchNorm2d into the Conv2d it normalises, replacing the BN by nn.Identity; in place; returns
    the folded BN names. Through the traced graph (torch.fx): each BN whose input is a conv's output that
    nothing else reads, wherever the model registers it (before its conv, in another container). A model
    that cannot be traced (data-dependent control flow) folds each BN registered directly after a Conv2d
    in the same parent (and of its channel count) instead. Uses the BN's running statistics: the folded
    model equals the original in eval mode (`dse prepare` checks it). BNs not folded stay in float
    (`unfolded_batchnorm`)."""
    from torch import nn

    folded = _fold_traced(model)
    if folded is not None:
        return folded
    folded = []  # the model cannot be traced: fold by registration order
    for parent_name, parent in list(model.named_modules()):
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if not _foldable(conv, bn):
                continue
            assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)  # _foldable
            _fold_into(conv, bn)
            setattr(parent, bn_name, nn.Identity())
            folded.append(f"{parent_name}.{bn_name}" if parent_name else bn_name)
    return folded


def unfolded_batchnorm(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers still in `model` (they run in float, unapproximated)."""
    from torch import nn

    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
