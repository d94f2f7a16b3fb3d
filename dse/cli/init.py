"""`dse init`: write a commented study file to start from (your model, your data, your checkpoint).

The template is generated from the study's own validated model (`dse.study.Study`), so it lists every
key with its real default and description; only the example's own values (model hook, checkpoint, data
file) are filled in.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import click

from dse.util import UserError

# the example's values: a user's model hook, checkpoint and .npz data next to the study file
EXAMPLE: dict[str, dict[str, Any]] = {
    "": {"name": "my_study", "search_space": "unsigned_sm"},
    "model": {"name": "my_model.py:build_model", "checkpoint": "my_model.pt"},
    "data": {"name": "npz", "path": "my_data.npz"},
}

HEADER = """\
# A dse study: your trained model, your data, your multipliers. Run it with
#   dse search {path}
# Every key is listed with its default; delete what you do not change. Relative paths (model file,
# checkpoint, data, search-space file) are relative to this file's folder. Unknown keys are errors.
# The full description (hook signatures, the .npz layout, splits, negative inputs): docs/studies.md.
#
# model.name = "my_model.py:build_model": a function with no arguments returning a torch nn.Module
#   (untrained or not; model.checkpoint then loads its float weights: a state_dict, or a dict holding one
#   under "state_dict" / "model"; loaded with weights_only=True).
# data.name = "npz": my_data.npz holds x (uint8 [N,H,W] or [N,H,W,C] or [N,C,H,W], scaled to [0, 1] by
#   /255; float kept as it is) and y (int labels [N]); with x_test / y_test too, validation and test are
#   drawn from that official test split and training from x, y only.
# search_space: a built-in (unsigned_sm, unsigned_affine, signed) or your own TOML file, e.g.
#   name = "mine"; format = "unsigned"; weight_scheme = "sign-magnitude"
#   multipliers = ["exact_u8", "my_mul_*"]   # fnmatch patterns over library names
#   library = "mylib"                         # the user library those came from (dse multipliers import)
"""


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(type(v).__name__)


def _section_lines(cls: Any, example: dict[str, Any]) -> list[str]:
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    lines = []
    for key, field in cls.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            continue  # a nested section: written as its own table
        if field.default_factory is not None:
            default = field.default_factory()
        else:
            default = None if field.default is PydanticUndefined else field.default
        if field.description:
            lines += textwrap.wrap(field.description, 108, initial_indent="# ", subsequent_indent="#   ")
        if key in example:
            lines.append(f"{key} = {_toml(example[key])}")
        elif default is None:
            lines.append(f"# {key} = …   (unset by default)")
        else:
            lines.append(f"{key} = {_toml(default)}")
    return lines


def study_template(path_shown: str = "my_study.toml") -> str:
    """The commented study TOML `dse init` writes (valid as it is: `dse.study.load_study` reads it)."""
    from pydantic import BaseModel

    from dse.study import Study

    out = [HEADER.format(path=path_shown)]
    out += _section_lines(Study, EXAMPLE[""])
    for key, field in Study.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += ["", f"[{key}]", *_section_lines(ann, EXAMPLE.get(key, {}))]
    return "\n".join(out) + "\n"


@click.command("init")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False), default="my_study.toml")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
def init(path: Path, force: bool) -> None:
    """Write a commented study file to start from: your model (a `file.py:function` hook), your
    checkpoint, your data (.npz), every key with its default. Edit it, then `dse search PATH`.

    \b
    Examples:
      dse init my_study.toml
      dse search my_study.toml --device cuda
    """
    from dse.util import atomic_write_text

    if path.exists() and not force:
        raise UserError(f"{path}: already exists; pass --force to overwrite it")
    atomic_write_text(path, study_template(path.name))
    click.echo(f"wrote {path}: edit its [model] and [data], then: dse search {path}")
