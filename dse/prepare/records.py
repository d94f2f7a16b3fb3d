"""The prepare stage's result: what prepare/result.json holds and `dse prepare --json` prints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dse.nn import LayerInfo


@dataclass(frozen=True)
class PreparedFormat:
    """The operand format the run was quantized in (`format`: signed | unsigned)."""

    format: str
    weight_scheme: str
    per_channel: bool


@dataclass(frozen=True)
class PreparedLayer:
    """One approximable layer as prepare/result.json lists it; `macs` per sample. `act_rule`: how its
    input is encoded (dse.quant): "relu" (never negative, zero point 0), "shifted" (negative inputs under
    an unsigned format: a non-zero activation zero point, which the hardware must apply too), "symmetric"
    (signed), "" (unknown: a result written before this was recorded)."""

    name: str
    kind: str
    macs: int
    fan_in: int
    weight_shape: tuple[int, ...]
    act_rule: str = ""

    @property
    def shifted(self) -> bool:
        """True when the layer's input runs with a shifted (non-zero) zero point."""
        return self.act_rule == "shifted"

    @staticmethod
    def of(info: LayerInfo) -> PreparedLayer:
        if info.macs is None:
            raise ValueError(f"layer {info.name}: MACs unknown (the model has not run a forward)")
        return PreparedLayer(
            name=info.name,
            kind=info.kind,
            macs=int(info.macs),
            fan_in=int(info.fan_in),
            weight_shape=tuple(int(d) for d in info.weight_shape),
            act_rule=info.act_rule,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "macs": self.macs,
            "fan_in": self.fan_in,
            "weight_shape": list(self.weight_shape),
            "act_rule": self.act_rule,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> PreparedLayer:
        return PreparedLayer(
            name=d["name"],
            kind=d["kind"],
            macs=int(d["macs"]),
            fan_in=int(d["fan_in"]),
            weight_shape=tuple(int(x) for x in d["weight_shape"]),
            act_rule=str(d.get("act_rule", "")),
        )


@dataclass(frozen=True)
class PrepareResult:
    """What `dse prepare --json` prints and prepare/result.json holds (plus the stage's `inputs_sha256`).

    Accuracies are fractions on the validation split (`*_test_accuracy`: the test split): float network,
    exactly quantized (`quant`), and through the exact table (`lut`, equal to quant by construction).
    `splits`: images per split; `stages`: per stage whether it was trained / cached / computed;
    `seconds`: per stage and `total`, of this call. `float_batchnorm`: the BatchNorm layers that could not
    be folded into a convolution and run in float; `lut_exact_test_accuracy`: the exact table on test
    (None in results written before it was measured); `split`: "official" or "pool" (splits.json)."""

    study: str
    run_dir: str
    format: PreparedFormat
    float_accuracy: float
    quant_accuracy: float
    lut_exact_accuracy: float
    float_test_accuracy: float
    quant_test_accuracy: float
    splits: dict[str, int]
    folded_batchnorm: tuple[str, ...]
    layers: tuple[PreparedLayer, ...]
    total_macs: int
    device: str
    stages: dict[str, str]
    seconds: dict[str, float]
    lut_exact_test_accuracy: float | None = None
    float_batchnorm: tuple[str, ...] = ()
    split: str = "pool"

    def to_json(self) -> dict[str, Any]:
        """The JSON document, keys in the order result.json has always had."""
        return {
            "study": self.study,
            "run_dir": self.run_dir,
            "format": dataclasses.asdict(self.format),
            "float_accuracy": self.float_accuracy,
            "quant_accuracy": self.quant_accuracy,
            "lut_exact_accuracy": self.lut_exact_accuracy,
            "float_test_accuracy": self.float_test_accuracy,
            "quant_test_accuracy": self.quant_test_accuracy,
            "splits": dict(self.splits),
            "folded_batchnorm": list(self.folded_batchnorm),
            "layers": [layer.to_json() for layer in self.layers],
            "total_macs": self.total_macs,
            "device": self.device,
            "stages": dict(self.stages),
            "seconds": dict(self.seconds),
            "lut_exact_test_accuracy": self.lut_exact_test_accuracy,
            "float_batchnorm": list(self.float_batchnorm),
            "split": self.split,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> PrepareResult:
        """From the JSON document (a stored `inputs_sha256` is ignored)."""
        return PrepareResult(
            study=d["study"],
            run_dir=d["run_dir"],
            format=PreparedFormat(**d["format"]),
            float_accuracy=float(d["float_accuracy"]),
            quant_accuracy=float(d["quant_accuracy"]),
            lut_exact_accuracy=float(d["lut_exact_accuracy"]),
            float_test_accuracy=float(d["float_test_accuracy"]),
            quant_test_accuracy=float(d["quant_test_accuracy"]),
            splits={k: int(v) for k, v in d["splits"].items()},
            folded_batchnorm=tuple(d["folded_batchnorm"]),
            layers=tuple(PreparedLayer.from_json(x) for x in d["layers"]),
            total_macs=int(d["total_macs"]),
            device=d["device"],
            stages=dict(d["stages"]),
            seconds={k: float(v) for k, v in d["seconds"].items()},
            lut_exact_test_accuracy=(
                None if d.get("lut_exact_test_accuracy") is None else float(d["lut_exact_test_accuracy"])
            ),
            float_batchnorm=tuple(d.get("float_batchnorm", ())),
            split=str(d.get("split", "pool")),
        )
