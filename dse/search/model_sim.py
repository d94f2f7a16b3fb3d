"""`ModelSimulator`: the accuracy of an assignment by behavioural simulation of the prepared model.

Every approximate layer runs in `lut` mode through its assigned multiplier's table (layers assigned the
exact multiplier run in `quant` mode, which is bit-identical and faster). The split is evaluated in large
batches. Work shared between candidates is reused: each layer's output is cached under the assignment
*prefix* (the multipliers of every layer executed up to and including it), so a candidate that shares its
first k layers with one simulated just before recomputes only from layer k+1's kernels on; the search
evaluates each batch in lexicographic order so that such candidates meet. The cache is an LRU bounded
in bytes. Measured by replaying finished searches' complete candidates in their batches: mnist_lenet5
49 % hits, 27 s against 34 s without the cache; digits 40 % hits but 10.1 s against 6.5 s (the copies
cost more than its tiny layers); fashion_resnet20 0 hits in 5,120 lookups (one candidate's layer outputs,
~1.2 GB on 2,000 images, overflow the 512 MB, and its proposals share no prefix; no time difference
measurable against the run-to-run noise).

On CPU the split runs in batches of at most `CPU_BATCH` images: a ResNet-20 layer's activations for 2,048
28x28 images (100 MB per tensor) stream through memory on every elementwise pass, while 256 images stay in
the caches (fashion_resnet20 candidate on 2,000 validation images, one thread, loaded 2-core machine:
10.8 CPU-s at batch 2048, 6.6 at 256, 7.0 at 512, 7.2 at 128).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch

from dse.multipliers.core import Multiplier
from dse.nn import ApproxLayer, Mode
from dse.nn.compensation import split_variant
from dse.search.problem import SearchProblem
from dse.search.records import Genome

if TYPE_CHECKING:
    from dse.prepare import Prepared

# a layer output's cache key: (split, first row, end row of the batch), multipliers of the layers executed
# so far
CacheKey = tuple[tuple[str, int, int], tuple[str, ...]]
Forward = Callable[[torch.Tensor], torch.Tensor]

CPU_BATCH = 256  # images per forward on CPU (see the module docstring)


class _LRU:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.items: OrderedDict[CacheKey, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey) -> torch.Tensor | None:
        t = self.items.get(key)
        if t is None:
            self.misses += 1
            return None
        self.items.move_to_end(key)
        self.hits += 1
        return t

    def put(self, key: CacheKey, t: torch.Tensor) -> None:
        size = t.numel() * t.element_size()
        if size > self.max_bytes:
            return
        self.items[key] = t
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


class ModelSimulator:
    """accuracy(genome, split) of the prepared model with genome's multipliers, on "val" or "test"."""

    def __init__(
        self,
        prepared: Prepared,
        problem: SearchProblem,
        multipliers: Mapping[str, Multiplier],
        batch_size: int = 2048,
        cache_bytes: int = 512 * 2**20,
        prefix_cache: bool = True,
    ) -> None:
        from dse.nn import approx_layers
        from dse.train import dataset_tensors

        self.prepared = prepared
        self.problem = problem
        self.multipliers = dict(multipliers)
        self.model = prepared.model.eval()
        self.device = prepared.device
        self.batch_size = (
            batch_size if torch.device(self.device).type != "cpu" else min(batch_size, CPU_BATCH)
        )
        self.layers = approx_layers(self.model)
        self.data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for split in ("val", "test"):
            ds = prepared.splits[split]
            if ds is None or len(ds) == 0:
                continue
            x, y = dataset_tensors(ds)
            self.data[split] = (x.to(self.device), y.to(self.device))
        self.cache = _LRU(cache_bytes) if prefix_cache else None
        self._position = {name: i for i, name in enumerate(problem.layers)}
        self._genome: Genome | None = None
        self._chunk = ("", 0, 0)
        self._key_positions = self._execution_prefixes()
        if self._key_positions is None:
            self.cache = None
        self._install()

    @torch.no_grad()
    def _execution_prefixes(self) -> dict[int, tuple[int, ...]] | None:
        """For each layer (problem position), the problem positions of every layer executed up to it:
        its output depends on those multipliers only. None when a layer runs twice in one forward."""
        order: list[str] = []
        hooks = [
            layer.register_forward_hook(lambda m, i, o, _n=name: order.append(_n))
            for name, layer in self.layers.items()
            if name in self._position
        ]
        try:
            x = next(iter(self.data.values()))[0][:1]
            self.model(x)
        finally:
            for h in hooks:
                h.remove()
        if len(order) != len(set(order)):
            return None
        out = {}
        for i, name in enumerate(order):
            out[self._position[name]] = tuple(sorted(self._position[n] for n in order[: i + 1]))
        return out

    def _install(self) -> None:
        for name, layer in self.layers.items():
            if name not in self._position:
                continue
            original = layer.forward
            pos = self._position[name]

            def forward(
                x: torch.Tensor, _orig: Forward = original, _layer: ApproxLayer = layer, _pos: int = pos
            ) -> torch.Tensor:
                return self._layer_forward(_orig, _layer, _pos, x)

            layer.forward = forward  # type: ignore[method-assign]  # the instance's forward, wrapped

    def _layer_forward(
        self, original: Forward, layer: ApproxLayer, pos: int, x: torch.Tensor
    ) -> torch.Tensor:
        genome = self._genome
        if genome is None:  # a forward outside accuracy() (profiling, AGN): the layer as it is
            return original(x)
        name = genome[pos]
        key = None
        if self.cache is not None and self._key_positions is not None:
            key = (self._chunk, tuple(genome[p] for p in self._key_positions[pos]))
            hit = self.cache.get(key)
            if hit is not None:
                return hit.clone()  # later in-place ops must not touch the cached tensor
        mult = self.multipliers[name]
        exact = mult.is_exact
        target = None if exact else mult
        if target is not layer.multiplier:
            layer.multiplier = target
            layer.invalidate()
        layer.mode = Mode.QUANT if exact else Mode.LUT
        layer.remedy = split_variant(name)[1]  # "NAME+bc" / "NAME+wt": dse.nn.compensation
        y = original(x)
        if key is not None and self.cache is not None:
            self.cache.put(key, y.clone())
        return y

    def size(self, split: str = "val") -> int:
        """Number of images of a split."""
        if split not in self.data:
            raise ValueError(f"no {split} split")
        return int(len(self.data[split][1]))

    @torch.no_grad()
    def correct(self, genome: Genome, split: str = "val", start: int = 0, stop: int | None = None) -> int:
        """Number of images in rows [start, stop) of the split that the model with genome's multipliers
        classifies correctly (the search's early rejection simulates a first slice, then the rest)."""
        if split not in self.data:
            raise ValueError(f"no {split} split")
        x, y = self.data[split]
        stop = len(x) if stop is None else min(int(stop), len(x))
        self._genome = tuple(genome)
        correct = 0
        try:
            for i in range(start, stop, self.batch_size):
                j = min(i + self.batch_size, stop)
                self._chunk = (split, i, j)
                out = self.model(x[i:j])
                correct += int((out.argmax(dim=1) == y[i:j]).sum())
        finally:
            self._genome = None
            for layer in self.layers.values():  # leave the model as prepared: quant mode
                layer.mode = Mode.QUANT
                layer.remedy = None
        return correct

    def accuracy(self, genome: Genome, split: str = "val") -> float:
        return self.correct(genome, split) / max(1, self.size(split))
