"""A sweep's TOML file, parsed and checked in full before anything runs.

Every key is known and every value has the right type (one line naming the key, its table and
what was expected); bench options are checked against the bench part's own settings.
"""

from __future__ import annotations

import sys
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from vitqbench.errors import VitqbenchError, check_seed
from vitqbench.files import safe_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FP32 = "fp32"
# Set by the sweep itself (--provider, --threads, --no-progress), not by its bench options.
BENCH_OPTIONS_FROM_RUN = {"target", "threads"}


@dataclass
class DataRef:
    """A DATA spec, optionally with the folder its image-list paths start at (OpenOOD's data_dir)."""

    spec: str
    root: str | None = None
    group: str | None = None  # OOD sets: near, far or synthetic (OpenOOD's grouping)


@dataclass
class SweepModel:
    name: str  # timm name with optional tag
    pretrained: bool = True
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    label: str | None = None

    @property
    def slug(self) -> str:
        return safe_name(self.label or self.name)


@dataclass
class SweepPrecision:
    name: str  # fp32, a scheme name (w8a8, w4a4, ...), or any label (w4-g128)
    scheme: str | None = None  # None: the exported model itself
    options: dict[str, Any] = field(default_factory=dict)  # the scheme config's fields


@dataclass
class SweepConfig:
    name: str
    models: list[SweepModel]
    precisions: list[SweepPrecision]
    id: DataRef
    ood: dict[str, DataRef]
    id_name: str | None = None
    fit: DataRef | None = None
    val_id: DataRef | None = None  # validation sets of tune = true
    val_ood: DataRef | None = None
    calib: DataRef | None = None
    calib_size: int = 256
    scores: list[str] | None = None
    batch_size: int = 64
    seed: int = 0
    bench: bool = False
    bench_options: dict[str, Any] = field(default_factory=dict)
    tune: bool = False
    attention: bool = False  # export every model with --attention and evaluate with --attention


# Each table's keys and the type of each value (checked with _check).
STUDY_KEYS = {"name": str, "scores": list[str] | str, "batch_size": int, "seed": int, "bench": bool,
              "bench_options": dict, "tune": bool, "attention": bool}  # fmt: skip
DATA_KEYS = {"id": "ref", "id_name": str, "fit": "ref", "val_id": "ref", "val_ood": "ref", "calib": "ref",
             "calib_size": int, "ood": dict}  # fmt: skip
POSITIVE = {"batch_size", "calib_size"}
SEEDS = {"seed"}


def preset_names() -> list[str]:
    folder = resources.files("vitqbench.evaluate") / "presets"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    if name not in preset_names():
        raise VitqbenchError(f"unknown preset {name!r}; choose from {', '.join(preset_names())}")
    return (resources.files("vitqbench.evaluate") / "presets" / f"{name}.toml").read_text()


def sweep_text(path: str | Path | None = None, preset: str | None = None) -> tuple[str, str]:
    """The study's TOML text and where it came from (a file or a shipped preset)."""
    if (path is None) == (preset is None):
        raise VitqbenchError("give a sweep CONFIG.toml or --preset NAME (one of them)")
    if preset is not None:
        return preset_text(preset), f"preset {preset}"
    path = Path(path)
    if not path.is_file():
        raise VitqbenchError(f"no such sweep file: {path}")
    try:
        return path.read_text(), str(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise VitqbenchError(f"cannot read sweep file {path}: {exc}") from exc


def load_sweep_config(path: str | Path | None = None, preset: str | None = None) -> SweepConfig:
    """Parse a sweep TOML file (or a shipped preset) into a checked SweepConfig."""
    text, origin = sweep_text(path, preset)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise VitqbenchError(f"{origin} is not valid TOML: {exc}") from exc
    return parse_sweep(doc, origin)


def parse_sweep(doc: dict[str, Any], origin: str = "sweep") -> SweepConfig:
    _only(doc, {"study", "models", "precisions", "data"}, origin)
    study = _table(doc, "study", origin)
    data = _table(doc, "data", origin)
    _keys(study, STUDY_KEYS, f"{origin} [study]")
    _keys(data, DATA_KEYS, f"{origin} [data]")
    if "id" not in data:
        raise VitqbenchError(f"{origin}: [data] needs id = DATA")
    models = [_model(m, origin) for m in _array(doc, "models", origin)]
    precisions = [_precision(p, origin) for p in _array(doc, "precisions", origin, [{"name": FP32}])]
    if not models:
        raise VitqbenchError(f"{origin}: no [[models]]")
    for what, names in (("model", [m.slug for m in models]), ("precision", [p.name for p in precisions])):
        if len(set(names)) != len(names):
            raise VitqbenchError(f"{origin}: a {what} is listed twice")
    if all(p.scheme is not None for p in precisions):  # every family's baseline, so deltas are vs fp32
        precisions.insert(0, SweepPrecision(FP32))
    scores = study.get("scores")
    return SweepConfig(
        name=study.get("name", "sweep"),
        models=models,
        precisions=precisions,
        id=_ref(data["id"], origin),
        id_name=data.get("id_name"),
        ood={str(k): _ref(v, origin) for k, v in data.get("ood", {}).items()},
        fit=_ref(data["fit"], origin) if "fit" in data else None,
        val_id=_ref(data["val_id"], origin) if "val_id" in data else None,
        val_ood=_ref(data["val_ood"], origin) if "val_ood" in data else None,
        calib=_ref(data["calib"], origin) if "calib" in data else None,
        calib_size=data.get("calib_size", 256),
        scores=[scores] if isinstance(scores, str) else scores,
        batch_size=study.get("batch_size", 64),
        seed=study.get("seed", 0),
        bench=study.get("bench", False),
        bench_options=check_bench_options(study.get("bench_options", {}), f"{origin} [study.bench_options]"),
        tune=study.get("tune", False),
        attention=study.get("attention", False),
    )


def check_bench_options(options: dict[str, Any], where: str) -> dict[str, Any]:
    """Bench options are BenchSettings fields: unknown keys and wrong types fail here, before any cell runs."""
    from vitqbench.bench import BenchSettings

    hints = typing.get_type_hints(BenchSettings)
    valid = {f.name: hints[f.name] for f in fields(BenchSettings) if f.name not in BENCH_OPTIONS_FROM_RUN}
    _keys(options, valid, where)
    try:
        BenchSettings(**options).resolved()  # values: positive counts, iters or seconds, ...
    except VitqbenchError as exc:
        raise VitqbenchError(f"{where}: {exc}") from exc
    return dict(options)


def _table(doc: dict[str, Any], key: str, origin: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise VitqbenchError(f"{origin}: {key} must be a table [{key}], got {_kind(value)}")
    return dict(value)


def _array(doc: dict[str, Any], key: str, origin: str, default: list | None = None) -> list[dict[str, Any]]:
    value = doc.get(key, default or [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise VitqbenchError(f"{origin}: {key} must be an array of tables [[{key}]], got {_kind(value)}")
    return value


def _only(table: dict[str, Any], allowed: set[str] | dict[str, Any], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise VitqbenchError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _keys(table: dict[str, Any], types_: dict[str, Any], where: str) -> None:
    """Known keys only, each value of its type (and counts positive, seeds non-negative)."""
    _only(table, types_, where)
    for key, value in table.items():
        expected = types_[key]
        if expected == "ref":
            continue  # checked by _ref
        if not _check(value, expected):
            raise VitqbenchError(f"{where}: {key} must be {_name(expected)}, got {_kind(value)} {value!r}")
        if key in POSITIVE and value < 1:
            raise VitqbenchError(f"{where}: {key} must be at least 1, got {value}")
        if key in SEEDS:
            check_seed(value, f"{where}: {key}")


def _check(value: Any, expected: Any) -> bool:
    """Whether a TOML value fits a type hint (bool is not an int here; an int is a float)."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_check(value, a) for a in args)
    if expected is type(None):
        return value is None
    if expected is typing.Any:
        return True
    if origin in (list, tuple, typing.get_origin(typing.Sequence[int])):
        return isinstance(value, list) and all(_check(v, args[0]) for v in value)
    if origin is dict or expected is dict:
        return isinstance(value, dict)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _name(expected: Any) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_name(a) for a in typing.get_args(expected) if a is not type(None))
    if typing.get_origin(expected) is dict:
        return "a table"
    if typing.get_origin(expected) is not None:
        inner = typing.get_args(expected)
        return "a list of " + _name(inner[0]).split(" ", 1)[-1] + "s" if inner else "a list"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table"}
    return names.get(expected, getattr(expected, "__name__", str(expected)))


def _kind(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)  # fmt: skip


def _ref(value: Any, origin: str) -> DataRef:
    from vitqbench.results import OOD_GROUPS

    if isinstance(value, str):
        return DataRef(value)
    keys_ok = isinstance(value, dict) and set(value) <= {"spec", "root", "group"}
    if keys_ok and isinstance(value.get("spec"), str) and isinstance(value.get("root", ""), str):
        group = value.get("group")
        if group is not None and group not in OOD_GROUPS:
            raise VitqbenchError(f"{origin}: group {group!r} is not one of {', '.join(OOD_GROUPS)}")
        return DataRef(value["spec"], value.get("root"), group)
    raise VitqbenchError(
        f"{origin}: a dataset is DATA or {{ spec = DATA, root = FOLDER, group = near|far|synthetic }}, got {value!r}"
    )


def _model(table: dict[str, Any], origin: str) -> SweepModel:
    hints = typing.get_type_hints(SweepModel)
    _keys(table, {f.name: hints[f.name] for f in fields(SweepModel)}, f"{origin} [[models]]")
    if "name" not in table:
        raise VitqbenchError(f"{origin}: every [[models]] needs name = TIMM_NAME")
    return SweepModel(**table)


def _precision(table: dict[str, Any], origin: str) -> SweepPrecision:
    from vitqbench.quant import BITS_ALIASES, create_scheme, scheme_names

    table = dict(table)
    name = table.pop("name", "")
    bits = table.pop("bits", None)
    scheme = table.pop("scheme", None)
    if not isinstance(name, str) or not name:
        raise VitqbenchError(f"{origin}: every [[precisions]] needs a name (a string)")
    if bits is not None:
        if isinstance(bits, bool) or bits not in BITS_ALIASES:
            raise VitqbenchError(f"{origin}: precision {name!r}: bits must be 8 or 4 (got {bits!r})")
        scheme = scheme or BITS_ALIASES[bits]
    if scheme is None and name != FP32:
        scheme = {"int8": "w8a8", "int4": "w4"}.get(name, name)
        if scheme not in scheme_names():
            raise VitqbenchError(
                f"{origin}: precision {name!r} needs scheme = {' | '.join(scheme_names())} (or bits = 8 or 4)"
            )
    if scheme is not None:
        if not isinstance(scheme, str):
            raise VitqbenchError(f"{origin}: precision {name!r}: scheme must be a string, got {_kind(scheme)}")
        try:
            create_scheme(scheme, **tuple_lists(table))  # unknown scheme or option: one line, before anything runs
        except VitqbenchError as exc:
            raise VitqbenchError(f"{origin}: precision {name!r}: {exc}") from None
    return SweepPrecision(name, scheme, table)


def tuple_lists(options: dict[str, Any]) -> dict[str, Any]:
    """TOML arrays as tuples, as the frozen scheme configs hold them."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
