"""Build a timm model from a name, a tag, a checkpoint or a seed, and describe its preprocessing."""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import pickle
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_model_data_config
from timm.models import get_pretrained_cfg, is_model, split_model_name_tag

from vitqbench.errors import VitqbenchError, first_line
from vitqbench.files import sha256_file
from vitqbench.metadata import DataConfig, numbers_field

CHECKPOINT_METADATA_KEY = "vitqbench.checkpoint"


@dataclass
class BuiltModel:
    model: torch.nn.Module
    timm_name: str
    timm_tag: str | None
    model_kwargs: dict[str, Any]
    source: dict[str, Any]
    class_names: list[str] | None = None
    data_config_overrides: dict[str, Any] | None = None


def check_model_name(name: str) -> tuple[str, str | None]:
    """Split ``arch.tag`` and make sure timm knows the architecture, suggesting close names if not."""
    arch, tag = split_model_name_tag(name)
    if not is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise VitqbenchError(f"unknown timm model {arch!r}{hint}")
    if tag and name not in timm.list_pretrained(name):
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        hint = f"; known tags: {', '.join(tags)}" if tags else "; it has no pretrained tags"
        raise VitqbenchError(f"unknown pretrained tag {tag!r} for {arch}{hint}")
    return arch, tag or None


HUB_PROBE_SECONDS = 3.0  # how long the one reachability check of the weights' host may take


class WeightsUnavailable(VitqbenchError):
    """Pretrained weights that cannot be had: offline (and not cached) or not published."""


@functools.cache
def hub_reachable() -> bool:
    """Whether the Hugging Face Hub can be reached, checked once per process in a few seconds.

    False under ``HF_HUB_OFFLINE=1``. Without this check an offline download retries for minutes."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if urllib.request.getproxies().get("https"):  # direct connections may be blocked: leave it to the hub
        return True
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    result: list[bool] = []

    def probe() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection((host, 443), timeout=HUB_PROBE_SECONDS).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS)
    return bool(result and result[0])


@contextlib.contextmanager
def _hub_access(model: str) -> Iterator[None]:
    """Quiet hub logging (the failure is reported once, by us) and, without network, the hub's offline
    mode: cached weights still load, missing ones fail at once instead of after minutes of retries."""
    from huggingface_hub import constants

    logger = logging.getLogger("huggingface_hub")
    level, offline = logger.level, constants.HF_HUB_OFFLINE
    logger.setLevel(logging.CRITICAL)
    try:
        if not hub_reachable():
            cfg = get_pretrained_cfg(model)
            url = getattr(cfg, "url", None)
            if cfg is not None and not getattr(cfg, "hf_hub_id", None) and url:  # torch.hub download
                if not (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file():
                    raise WeightsUnavailable(_unavailable(model, "no network"))
            constants.HF_HUB_OFFLINE = True
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline
        logger.setLevel(level)


def _unavailable(model: str, reason: str) -> str:
    return (
        f"cannot load pretrained weights for {model} (offline or not published: {reason}); "
        "use --checkpoint PATH for local weights or --no-pretrained"
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely: safetensors, or torch.load with ``weights_only=True``."""
    if not path.is_file():
        raise VitqbenchError(f"no such checkpoint: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message opens with how to load the file unsafely; the reason is in the lines after that
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        reason = " ".join(line.split("use case: ")[-1] for line in lines if not line.startswith("Check the doc"))
        raise VitqbenchError(
            f"cannot read checkpoint {path} with weights_only=True ({reason or first_line(exc)}); vitqbench never "
            "runs a checkpoint's code: save a plain state dict or safetensors"
        ) from exc
    except Exception as exc:
        kind = "safetensors" if path.suffix == ".safetensors" else "torch.save (weights only)"
        raise VitqbenchError(
            f"cannot read checkpoint {path} as {kind}: {type(exc).__name__}: {first_line(exc)[:200]}"
        ) from exc
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VitqbenchError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def apply_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], origin: Path) -> None:
    """Load ``state`` strictly, naming the first mismatching keys when it does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:3])}")
    if wrong_shape:
        problems.append(f"shape mismatch {', '.join(wrong_shape[:3])} (checkpoint vs model)")
    if problems:
        raise VitqbenchError(f"checkpoint {origin} does not match the architecture: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def read_checkpoint_description(path: Path) -> dict[str, Any] | None:
    """The description that `vitqbench train` stores in a safetensors checkpoint's header, if any."""
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:
        raise VitqbenchError(f"cannot read checkpoint {path}: {first_line(exc)[:200]}") from exc
    text = header.get(CHECKPOINT_METADATA_KEY)
    if not text:
        return None
    try:
        return check_checkpoint_description(json.loads(text))
    except (json.JSONDecodeError, VitqbenchError) as exc:
        raise VitqbenchError(f"checkpoint {path}: bad description header: {exc}") from None


def check_checkpoint_description(description: Any) -> dict[str, Any]:
    """The header's fields that export reads, each of the right type (the data config is checked whole
    by ``DataConfig`` once merged with timm's)."""
    if not isinstance(description, dict):
        raise VitqbenchError(f"a JSON {type(description).__name__}, not an object")
    if not isinstance(description.get("timm_name"), str) or not description["timm_name"]:
        raise VitqbenchError("field timm_name must be a model name")
    for name, kind, what in (("model_kwargs", dict, "an object"), ("data_config", dict, "an object")):
        if not isinstance(description.get(name, {}), kind):
            raise VitqbenchError(f"field {name} must be {what}, got {type(description[name]).__name__}")
    names = description.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise VitqbenchError("field class_names must be a list of strings")
    return description


def training_record(train: dict[str, Any]) -> dict[str, Any]:
    """What the metadata keeps of a `vitqbench train` checkpoint's training settings (the study's axes).

    A checkpoint from before ``--augment`` trained with the random shifts that are now ``shift``."""
    record = {k: train[k] for k in ("data", "epochs", "seed", "val_accuracy") if k in train}
    augment = train.get("augment", "shift")
    record["augment"] = augment if isinstance(augment, str) else str(augment)
    return record


def _imagenet_synsets(net: Any) -> list[str] | None:
    """timm's synset names (``n01440764``...) for an ImageNet head, so eval can check class folders."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(net)
    return list(ImageNetInfo(subset).label_names()) if subset else None


def build_model(
    model: str,
    *,
    pretrained: bool = True,
    checkpoint: Path | None = None,
    model_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
) -> BuiltModel:
    """Create the timm model described by the arguments, in eval mode.

    ``model`` is a timm name (``arch`` or ``arch.tag``) or the path of a vitqbench training
    checkpoint, which describes its own architecture.
    """
    kwargs = dict(model_kwargs or {})
    class_names = None
    overrides = None
    path = Path(model)
    if path.suffix == ".onnx":
        raise VitqbenchError(f"{path} is an ONNX file; export takes a timm name or a `vitqbench train` checkpoint")
    description = read_checkpoint_description(path) if path.suffix == ".safetensors" else None
    if path.suffix in {".safetensors", ".pth", ".pt"} and description is None:
        if path.is_file():
            raise VitqbenchError(
                f"{path} is not a vitqbench training checkpoint; pass a timm name and --checkpoint {path}"
            )
        raise VitqbenchError(f"no such checkpoint: {path}")
    if description is None and checkpoint is not None and Path(checkpoint).suffix == ".safetensors":
        # a `vitqbench train` checkpoint given as --checkpoint (a sweep's [[models]] checkpoint = ...)
        # describes its architecture and preprocessing as when passed in place of the name
        description = read_checkpoint_description(Path(checkpoint))
        if description is not None and description["timm_name"] != check_model_name(model)[0]:
            raise VitqbenchError(
                f"checkpoint {checkpoint} was trained as {description['timm_name']}, not {check_model_name(model)[0]}"
            )
    if description is not None:
        checkpoint = checkpoint if checkpoint is not None else path
        model = description["timm_name"]
        kwargs = {**description.get("model_kwargs", {}), **kwargs}
        class_names = description.get("class_names")
        overrides = description.get("data_config")
    arch, tag = check_model_name(model)
    use_pretrained = pretrained and checkpoint is None
    torch.manual_seed(seed)
    try:
        with _hub_access(model) if use_pretrained else contextlib.nullcontext():
            net = timm.create_model(model, pretrained=use_pretrained, **kwargs)
    except TypeError as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise VitqbenchError(f"bad model option for {arch} ({given}): {first_line(exc)}") from exc
    except WeightsUnavailable:
        raise
    except Exception as exc:
        if not use_pretrained:
            raise VitqbenchError(f"cannot build {arch} with {kwargs}: {first_line(exc)}") from exc
        reason = "no network" if not hub_reachable() else type(exc).__name__
        raise WeightsUnavailable(_unavailable(model, reason)) from exc
    if checkpoint is not None:
        apply_state_dict(net, load_state_dict(Path(checkpoint)), Path(checkpoint))
        source = {"kind": "checkpoint", "path": str(checkpoint), "sha256": sha256_file(checkpoint)}
        if description is not None and isinstance(description.get("train"), dict):
            source["train"] = training_record(description["train"])
    elif use_pretrained:
        source = {"kind": "pretrained", "tag": net.pretrained_cfg.get("tag"), "seed": None}
        tag = tag or net.pretrained_cfg.get("tag")
        class_names = _imagenet_synsets(net)
    else:
        source = {"kind": "random", "seed": seed}
    return BuiltModel(net.eval(), arch, tag, kwargs, source, class_names, overrides)


def _per_channel(values: tuple[float, ...] | list[float], channels: int, what: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:
        # A 3-channel ImageNet default on a 1-channel model: the mean over channels keeps its scale.
        return (sum(values) / len(values),)
    raise VitqbenchError(f"{what} has {len(values)} values but the model takes {channels} channels")


def data_config_for(
    built: BuiltModel,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> DataConfig:
    """timm's eval data config, with the input size read off the model itself (not its pretrained_cfg)."""
    config = dict(resolve_model_data_config(built.model))
    config.update(built.data_config_overrides or {})
    embed = getattr(built.model, "patch_embed", None)
    channels = int(getattr(getattr(embed, "proj", None), "in_channels", config["input_size"][0]))
    img_size = getattr(embed, "img_size", None) or config["input_size"][1:]
    config["input_size"] = (channels, int(img_size[0]), int(img_size[1]))
    if mean is not None:
        config["mean"] = mean
    if std is not None:
        config["std"] = std
    if interpolation is not None:
        config["interpolation"] = interpolation
    if crop_pct is not None:
        config["crop_pct"] = crop_pct
    config["mean"] = _per_channel(numbers_field(config, "mean"), channels, "mean")
    config["std"] = _per_channel(numbers_field(config, "std"), channels, "std")
    return DataConfig.from_dict(config)  # checks every value, as when the file is read back
