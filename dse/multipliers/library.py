"""The multiplier library a command sees: the built-ins plus the user library directory.

The user library directory holds one pair of files per imported multiplier: `<name>.npz` (array `lut`,
int32 [256, 256], lut[activation_byte, weight_byte]) and `<name>.json` (metadata: name, signed, energy_rel,
energy_method, source, params, lut_sha256). It is chosen by `--library DIR`, else the environment variable
`DSE_LIBRARY`, else `$XDG_DATA_HOME/dse/multipliers` (default `~/.local/share/dse/multipliers`).
"""

from __future__ import annotations

import difflib
import fnmatch
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from dse.multipliers.builtin import builtin_multipliers
from dse.multipliers.core import Multiplier
from dse.util import UserError, atomic_write_bytes, atomic_write_json

LIBRARY_ENV = "DSE_LIBRARY"
# how to point a command at another user library (the end of a "matches no multiplier" error)
ELSEWHERE = (
    "; multipliers imported elsewhere: pass --library DIR or set DSE_LIBRARY=DIR "
    '(or library = "DIR" in the search space)'
)


def default_library_dir() -> Path:
    """`$DSE_LIBRARY`, else the per-user data directory."""
    env = os.environ.get(LIBRARY_ENV)
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "dse" / "multipliers"


def select(
    pool: Sequence[Multiplier],
    patterns: Iterable[str],
    *,
    where: str,
    nothing: str = "no multiplier in the library",
    hint: Callable[[str], str] = lambda pattern: "",
) -> list[Multiplier]:
    """The multipliers of `pool` whose names match any of the fnmatch patterns, in pool order, each once.

    Pool order (not pattern order) keeps a search genome's multiplier indices independent of how the
    patterns are written. A pattern that matches nothing is the UserError
    `f"{where}: {pattern!r} matches {nothing}{hint(pattern)}"` (a typo must not silently shrink a search
    space). A wildcard pattern leaves out dominated designs (`Multiplier.dominated`: they cost at least
    the exact multiplier); a pattern without wildcards is a name and selects its multiplier whatever it
    costs."""
    chosen: set[str] = set()
    for pattern in patterns:
        wildcard = any(c in pattern for c in "*?[")
        matched = [m for m in pool if fnmatch.fnmatchcase(m.name, pattern)]
        hits = [m.name for m in matched if not (wildcard and m.dominated)]
        if not hits:
            if matched:
                raise UserError(
                    f"{where}: {pattern!r} matches only dominated multipliers (they cost at least the exact "
                    f"one: {', '.join(m.name for m in matched[:3])}); name them to select them"
                )
            raise UserError(f"{where}: {pattern!r} matches {nothing}{hint(pattern)}")
        chosen.update(hits)
    return [m for m in pool if m.name in chosen]


class Library:
    """An ordered, name-unique collection of multipliers (built-ins first, then the user's, by name)."""

    def __init__(self, multipliers: Iterable[Multiplier], library_dir: Path | None = None) -> None:
        self._items: dict[str, Multiplier] = {}
        for m in multipliers:
            if m.name in self._items:
                raise UserError(f"multiplier library: the name {m.name!r} appears twice")
            self._items[m.name] = m
        self.library_dir = library_dir

    def get(self, name: str) -> Multiplier:
        """The multiplier called `name`; a UserError listing close names when there is none."""
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=5, cutoff=0.5)
            hint = (
                f"; did you mean {', '.join(close)}?" if close else "; `dse multipliers list` shows them all"
            )
            searched = f" (the built-ins + {self.library_dir})" if self.library_dir is not None else ""
            raise UserError(f"multiplier {name!r}: not in the library{searched}{hint}{ELSEWHERE}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def multipliers(self, signed: bool | None = None) -> list[Multiplier]:
        """All multipliers, or only the signed (True) / unsigned (False) ones, in library order."""
        return [m for m in self._items.values() if signed is None or m.signed == signed]

    def select(
        self, patterns: Iterable[str], signed: bool | None, *, where: str = "multipliers"
    ) -> list[Multiplier]:
        """`select` over the multipliers of one format (None: all), in library order.

        The error of a pattern that matches nothing names close names, and the multipliers of the other
        format that it does match."""
        pool = self.multipliers(signed)
        fmt = {None: "", True: "signed ", False: "unsigned "}[signed]
        other = [] if signed is None else self.multipliers(not signed)

        def hint(pattern: str) -> str:
            wrong = [m.name for m in other if fnmatch.fnmatchcase(m.name, pattern)]
            why = (
                f" ({', '.join(wrong[:3])} {'is' if len(wrong) == 1 else 'are'} not {fmt.strip()})"
                if wrong
                else ""
            )
            close = difflib.get_close_matches(pattern, [m.name for m in pool], n=5, cutoff=0.5)
            return (
                f"{why}{'; close names: ' + ', '.join(close) if close else ''}; see `dse multipliers list`"
                f"{ELSEWHERE}"
            )

        searched = f" (the built-ins + {self.library_dir})" if self.library_dir is not None else ""
        nothing = f"no {fmt}multiplier in the library{searched}"
        return select(pool, patterns, where=where, nothing=nothing, hint=hint)

    def __iter__(self) -> Iterator[Multiplier]:
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


def _read_user_multiplier(meta_path: Path) -> Multiplier:
    try:
        meta = json.loads(meta_path.read_text())
        lut_path = meta_path.with_suffix(".npz")
        with np.load(lut_path, allow_pickle=False) as z:
            lut = np.asarray(z["lut"])
        m = Multiplier(
            name=str(meta["name"]),
            signed=bool(meta["signed"]),
            lut=lut,
            energy_rel=float(meta["energy_rel"]),
            energy_method=str(meta["energy_method"]),
            source=str(meta.get("source", "imported")),
            params=dict(meta.get("params", {})),
        )
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise UserError(f"{meta_path}: not a readable library entry ({e}); remove it or re-import") from None
    if m.sha256 != meta.get("lut_sha256", m.sha256):
        raise UserError(f"{meta_path}: table does not match its recorded sha256; remove it or re-import")
    return m


def user_multipliers(library_dir: Path) -> list[Multiplier]:
    """The multipliers stored in a user library directory, sorted by name (none if it does not exist)."""
    library_dir = Path(library_dir)
    if not library_dir.exists():
        return []
    if not library_dir.is_dir():
        raise UserError(f"--library {library_dir}: expected a directory")
    return [_read_user_multiplier(p) for p in sorted(library_dir.glob("*.json"))]


def load_library(library_dir: Path | str | None = None) -> Library:
    """Built-ins plus the user library (`library_dir`, else `$DSE_LIBRARY`, else the per-user data dir)."""
    directory = Path(library_dir).expanduser() if library_dir is not None else default_library_dir()
    return Library([*builtin_multipliers(), *user_multipliers(directory)], library_dir=directory)


def save_user_multiplier(m: Multiplier, library_dir: Path, *, replace: bool = False) -> Path:
    """Write `m` into the user library (table first, then metadata; both atomic). Returns the JSON path."""
    library_dir = Path(library_dir)
    if m.name in {b.name for b in builtin_multipliers()}:
        raise UserError(f"--name {m.name}: a built-in multiplier has that name; choose another with --name")
    meta_path = library_dir / f"{m.name}.json"
    if meta_path.exists() and not replace:
        raise UserError(
            f"--name {m.name}: already in the library {library_dir}; pass --replace to overwrite it "
            "or --name to choose another name"
        )
    buf = io.BytesIO()
    np.savez(buf, lut=m.lut.astype(np.int32))
    meta = {
        "name": m.name,
        "signed": m.signed,
        "energy_rel": m.energy_rel,
        "energy_method": m.energy_method,
        "source": m.source,
        "params": m.params,
        "lut_sha256": m.sha256,
    }
    try:
        atomic_write_bytes(library_dir / f"{m.name}.npz", buf.getvalue())
        atomic_write_json(meta_path, meta)  # last: an entry without its JSON is invisible
    except OSError as e:
        raise UserError(f"--library {library_dir}: cannot write there ({e.strerror or e})") from None
    return meta_path
