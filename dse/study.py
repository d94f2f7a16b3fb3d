"""The study config and the search space: validated TOML (pydantic), built-in ones found by name.

A study names the model, the data, the training budgets, the search space and the search settings.
`load_study("digits")` resolves a built-in study from the package data `dse.studies` (also after a
non-editable install); `load_study("my_study.toml")` reads a file, and relative paths in it (data path,
checkpoint, search-space file, `file.py:function` hooks) are relative to that file's folder. `to_toml`
writes a study back (the run directory's study.toml).

Over 400 lines on purpose: it is the whole schema of a study and a search space (every key, its default, its
check and its error message), read in one place and checked against docs/studies.md by a test.

Light on purpose (no torch): the CLI and the report import it. The run directory is `dse.rundir`, the
prepare stage `dse.prepare`, the commands' shared options `dse.cli.options`.
"""

from __future__ import annotations

import json
import sys
import typing
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from dse.util import UserError

if TYPE_CHECKING:
    from dse.multipliers import Library, Multiplier
    from dse.quant import QuantFormat

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found]

DEFAULT_STUDY = "digits"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field("digits_cnn", description="built-in model name or 'module:function'")
    checkpoint: str | None = Field(None, description="float weights to load instead of float training")


class DataConfig(_Section):
    name: str = Field(
        "digits",
        description="digits | npz | cifar10 | mnist_idx | fashion_mnist | 'module:function'. Sources with an "
        "official train/test division (CIFAR-10 batches, idx train + t10k files, an .npz with x_test/y_test) "
        "draw val and test from the official test split and train from the train split",
    )
    path: str = Field(
        "",
        description="file or directory of the data ('' for digits; for fashion_mnist '' means Debian's "
        "/usr/share/datasets/fashion-mnist); --data overrides it",
    )
    train_size: int | None = Field(
        None, ge=1, description="at most this many train images; None: all the rest"
    )
    val_size: int = Field(500, ge=1)
    test_size: int = Field(297, ge=0)
    seed: int = 0
    augment: Literal["none", "shift", "crop_flip"] | None = Field(
        None, description="train-batch augmentation; None: crop_flip for cifar10, none otherwise"
    )
    mean: list[float] | None = Field(
        None,
        description="per-channel input mean: the model sees (x - mean) / std of the [0, 1] images "
        "(give with std, one value per channel); None: no normalisation",
    )
    std: list[float] | None = Field(
        None, description="per-channel input std (each > 0), with mean; None: no normalisation"
    )


MAX_EPOCHS = 100_000  # more is a typo (9223372036854775807 was accepted and trained "forever")


class TrainConfig(_Section):
    epochs: int | None = Field(
        None,
        ge=0,
        le=MAX_EPOCHS,
        description="float training epochs; None: 10, or 0 with model.checkpoint (the checkpoint is used as "
        "it is; epochs > 0 fine-tunes it)",
    )
    qat_epochs: int = Field(2, ge=0, le=MAX_EPOCHS, description="quantization-aware training epochs")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    qat_lr: float | None = Field(None, gt=0, description="None: lr / 10")
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    per_channel: bool = True
    calibration_batches: int = Field(8, ge=1, description="train batches that calibrate the observers")
    eval_batch_size: int = Field(512, ge=1)


class AgnConfig(_Section):
    lambdas: list[float] = Field(
        default_factory=lambda: [0.5, 0.2, 0.05],
        min_length=1,
        description="AGN trade-offs, each > 0 (one tolerance per lambda; the search seeds on them)",
    )
    sigma_init: float = Field(0.1, gt=0)
    sigma_max: float = Field(0.5, gt=0)
    epochs: int = Field(3, ge=0, le=MAX_EPOCHS)
    lr: float = Field(1e-3, gt=0)

    @model_validator(mode="after")
    def _lambdas_positive(self) -> AgnConfig:
        bad = [x for x in self.lambdas if not (x > 0 and x < float("inf"))]
        if bad:
            raise ValueError(f"lambdas: expected finite numbers > 0, got {bad}")
        return self


class SearchConfig(_Section):
    budget: int = Field(
        200,
        ge=0,
        description="behavioural simulations, in full validation-split equivalents (a candidate rejected "
        "early after k of n images costs k/n); at least the number of seeds",
    )
    population: int = Field(24, ge=4, description="candidates simulated per batch (NSGA-II's batch)")
    seed: int = 0
    surrogate_generations: int = Field(
        200, ge=1, description="pymoo NSGA-II generations over the surrogate (cold start; warm: 1/8)"
    )
    calibration_images: int = Field(
        512, ge=16, description="training images the layer profiles behind the surrogate are taken on"
    )
    early_rejection_confidence: float = Field(
        0.95,
        gt=0,
        lt=1,
        description="a candidate stops after a slice of the validation split when its accuracy is, with "
        "this confidence, below the front at its energy",
    )
    explore_share: float = Field(
        0.25, ge=0, lt=1, description="share of each batch picked for expected improvement, not the front"
    )
    random_baseline: bool = True
    compensate_bias: bool | Literal["search"] = Field(
        False,
        description="bias compensation (the expected error per output channel on the calibration images "
        'subtracted through the bias; no hardware cost): false, true (every approximate layer), or "search" '
        "(the search decides per layer: each approximate multiplier is offered with and without it)",
    )
    weight_tuning: bool = Field(
        False,
        description="ALWANN weight tuning as extra choices: each approximate multiplier also with the layer's "
        "weights remapped to the codes whose approximate products err least (same energy)",
    )

    @field_validator("compensate_bias", mode="before")
    @classmethod
    def _compensate_is_bool_or_search(cls, v: Any) -> Any:
        if not (isinstance(v, bool) or v == "search"):
            raise ValueError(f'expected true, false or "search", got {v!r}')
        return v

    @field_validator("weight_tuning", mode="before")
    @classmethod
    def _strict_bool(cls, v: Any) -> Any:
        if not isinstance(v, bool):
            raise ValueError(f"expected true or false, got {v!r}")
        return v


class Study(_Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}$",
        description="the run's name: the run directory runs/<name>; letters, digits and _ . + - (no path)",
    )
    search_space: str = Field("unsigned_sm", description="built-in search-space name or path to a TOML")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    agn: AgnConfig = Field(default_factory=AgnConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)

    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        """The TOML file this study was read from (None for one built in code)."""
        return self._source

    @property
    def base_dir(self) -> Path | None:
        """Folder that relative paths and `file.py:function` hooks in the study are relative to."""
        return self._source.parent if self._source is not None else None

    def resolved(self, data_path: str | Path | None = None) -> Study:
        """A copy with every relative path made absolute (and data.path replaced by `data_path` when
        given): what the run directory stores, so that later commands need only the run directory."""
        d = self.model_dump()
        base = self.base_dir

        def absolute(p: str) -> str:
            q = Path(p).expanduser()
            if not q.is_absolute() and base is not None:
                q = base / q
            return str(q.resolve())

        def absolute_hook(spec: str) -> str:
            mod, sep, func = spec.rpartition(":")
            return f"{absolute(mod)}:{func}" if sep and mod.endswith(".py") else spec

        if data_path not in (None, ""):
            d["data"]["path"] = str(Path(data_path).expanduser().resolve())
        elif d["data"]["path"]:
            d["data"]["path"] = absolute(d["data"]["path"])
        if d["model"]["checkpoint"]:
            d["model"]["checkpoint"] = absolute(d["model"]["checkpoint"])
        d["model"]["name"] = absolute_hook(d["model"]["name"])
        d["data"]["name"] = absolute_hook(d["data"]["name"])
        if _looks_like_path(d["search_space"]):
            d["search_space"] = absolute(d["search_space"])
        out = Study.model_validate(d)
        out._source = self._source
        return out

    def to_toml(self) -> str:
        return to_toml(self.model_dump(exclude_none=True))

    def load_search_space(self) -> SearchSpace:
        return load_search_space(self.search_space, self.base_dir)


class LayerRestriction(_Section):
    multipliers: list[str] = Field(min_length=1)


def energy_objective(m: Multiplier, energy: str, where: str = "search space") -> Multiplier:
    """`m` with the energy objective of a search space: unchanged for "gates"; for "synth" its
    energy_rel is the synthesized area (synth_area_rel), UserError for a design without a circuit."""
    if energy == "gates":
        return m
    if m.synth_area_rel is None:
        raise UserError(
            f'{where}: energy = "synth": {m.name} has no synthesized cost (closed-form family or imported '
            'table); choose multipliers with a circuit (exact, trunc, bam, optrunc, rec2x2) or energy = "gates"'
        )
    from dataclasses import replace

    method = "synth:yosys generic cells (dse.hardware.synth) / exact of the same format"
    return replace(m, energy_rel=m.synth_area_rel, energy_method=method)


class SearchSpace(_Section):
    """Operand format + the multipliers a search may use (fnmatch patterns over library names of that
    format) + optional per-layer restrictions `[layers.<name>] multipliers = [...]`."""

    name: str
    format: Literal["signed", "unsigned"]
    weight_scheme: Literal["symmetric", "sign-magnitude", "affine"]
    multipliers: list[str] = Field(min_length=1)
    layers: dict[str, LayerRestriction] = Field(default_factory=dict)
    # the energy objective: "gates" (energy_rel, the gate model) or "synth" (synth_area_rel, the yosys
    # synthesis of the circuit; only designs with a circuit)
    energy: Literal["gates", "synth"] = "gates"
    # user library directory the patterns also see (relative to the search-space file); None: --library,
    # else $DSE_LIBRARY, else the per-user data directory
    library: str | None = None

    @model_validator(mode="after")
    def _scheme_fits_format(self) -> SearchSpace:
        ok = {"signed": ("symmetric",), "unsigned": ("sign-magnitude", "affine")}[self.format]
        if self.weight_scheme not in ok:
            raise ValueError(
                f"weight_scheme {self.weight_scheme!r} does not go with format {self.format!r} "
                f"(expected {' or '.join(ok)})"
            )
        return self

    @property
    def signed(self) -> bool:
        return self.format == "signed"

    def quant_format(self, per_channel: bool = True) -> QuantFormat:
        from dse.quant import QuantFormat

        return QuantFormat(signed=self.signed, weight_scheme=self.weight_scheme, per_channel=per_channel)

    def load_library(self) -> Library:
        """The built-ins plus this space's user library directory (else --library / $DSE_LIBRARY / default)."""
        from dse.multipliers.library import load_library

        return load_library(self.library)

    def _select(self, library: Library, patterns: list[str], where: str) -> list[Multiplier]:
        chosen = library.select(patterns, self.signed, where=f"search space {self.name}: {where}")
        return [energy_objective(m, self.energy, f"search space {self.name}: {where}") for m in chosen]

    def resolve(self, library: Library) -> list[Multiplier]:
        """The allowed multipliers (library order), each pattern matching at least one -> list[Multiplier]."""
        return self._select(library, self.multipliers, "multipliers")

    def resolve_layers(self, library: Library, layer_names: list[str]) -> dict[str, list[Multiplier]]:
        """Allowed multipliers per layer: the space, or the layer's own restriction where given."""
        unknown = sorted(set(self.layers) - set(layer_names))
        if unknown:
            raise UserError(
                f"search space {self.name}: layers.{unknown[0]}: no such layer (layers: {', '.join(layer_names)})"
            )
        space = self.resolve(library)
        return {
            name: self._select(library, self.layers[name].multipliers, f"layers.{name}.multipliers")
            if name in self.layers
            else space
            for name in layer_names
        }


# ------------------------------------------------------------------------------------------ loading TOML


def _looks_like_path(s: str) -> bool:
    return s.endswith(".toml") or "/" in s or "\\" in s


def _builtin_names(package: str) -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(package).iterdir() if p.name.endswith(".toml"))


def builtin_studies() -> list[str]:
    return _builtin_names("dse.studies")


def builtin_search_spaces() -> list[str]:
    return _builtin_names("dse.search_spaces")


def _read_toml(
    name_or_path: str | Path, package: str, what: str, base_dir: Path | None
) -> tuple[dict[str, Any], str, Path | None]:
    """-> (dict, display name, source path or None)."""
    s = str(name_or_path)
    if not _looks_like_path(s):
        res = resources.files(package) / f"{s}.toml"
        if not res.is_file():
            raise UserError(
                f"{what} {s!r}: no such built-in {what} (built in: {', '.join(_builtin_names(package))}) "
                "and not a path to a .toml file"
            )
        text, display, source = res.read_text(encoding="utf-8"), f"{what} {s}", None
        try:
            source = Path(str(res))
        except TypeError:  # pragma: no cover - zip imports
            source = None
    else:
        path = Path(s).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise UserError(f"{path}: {what} file not found")
        try:
            text, display, source = path.read_text(encoding="utf-8"), str(path), path.resolve()
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: {what} file is not UTF-8 text (byte {e.start}: {e.reason})") from None
    try:
        return tomllib.loads(text), display, source
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{display}: not valid TOML ({e})") from None


def _field_model(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at loc[-1] (walking nested sections / dict entries)."""
    skip_dict_key = False
    for part in loc[:-1]:
        if skip_dict_key or isinstance(part, int):
            skip_dict_key = False
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        skip_dict_key = typing.get_origin(ann) is dict
        candidates = (ann, *typing.get_args(ann))
        nested = next(
            (
                a
                for a in candidates
                if isinstance(a, type) and not typing.get_args(a) and issubclass(a, BaseModel)
            ),
            None,
        )
        if nested is not None:
            cls = nested
    return cls


def _validation_message(display: str, cls: type[BaseModel], err: ValidationError) -> str:
    # a misspelt key shows as "unknown" and as "missing": the unknown one says more
    e = sorted(err.errors(), key=lambda x: x["type"] != "extra_forbidden")[0]
    loc = tuple(e["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        owner = _field_model(cls, loc)
        allowed = ", ".join(owner.model_fields) if owner is not None else "?"
        return f"{display}: {key}: unknown key (allowed: {allowed})"
    if e["type"] == "missing":
        return f"{display}: {key}: required key missing"
    got = e.get("input")
    got_txt = (
        f", got {json.dumps(got) if isinstance(got, (str, int, float, bool, list)) else type(got).__name__}"
    )
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
        got_txt = ""
    extra = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{display}: {key}: {msg[0].lower() + msg[1:]}{got_txt}{extra}"


def load_study(name_or_path: str | Path | None = None) -> Study:
    """A built-in study by name (`digits`, `mnist_lenet5`, `cifar10_resnet20`, …) or a study TOML file."""
    raw, display, source = _read_toml(name_or_path or DEFAULT_STUDY, "dse.studies", "study", None)
    try:
        study = Study.model_validate(raw)
    except ValidationError as e:
        raise UserError(_validation_message(display, Study, e)) from None
    study._source = source
    return study


def load_search_space(name_or_path: str | Path, base_dir: Path | None = None) -> SearchSpace:
    """A built-in search space by name (`unsigned_sm`, `unsigned_affine`, `signed`) or a TOML file."""
    raw, display, source = _read_toml(name_or_path, "dse.search_spaces", "search space", base_dir)
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as e:
        raise UserError(_validation_message(display, SearchSpace, e)) from None
    if space.library is not None:
        lib = Path(space.library).expanduser()
        if not lib.is_absolute() and source is not None:
            lib = source.parent / lib
        if lib.exists() and not lib.is_dir():
            raise UserError(f"{display}: library: {lib} is not a directory")
        space.library = str(lib.resolve())
    return space


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(d: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for config dicts (scalars, lists of scalars, nested tables)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict) and v is not None]
    if prefix and (lines or not d):
        lines.insert(0, f"\n[{prefix[:-1]}]")
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(to_toml(v, f"{prefix}{k}.").rstrip("\n"))
    return "\n".join(lines).lstrip("\n") + "\n" if not prefix else "\n".join(lines) + "\n"
