"""timm model -> ONNX with `logits` and `features` outputs, self-describing metadata, verified."""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from vitqbench.errors import VitqbenchError, check_seed, first_line
from vitqbench.export import DEFAULT_OPSET, DEFAULT_TOLERANCE
from vitqbench.export.model import BuiltModel, build_model, data_config_for
from vitqbench.files import atomic_path, check_output_file
from vitqbench.metadata import (
    ATTN_CLS,
    ATTN_ENTROPY,
    ATTN_ROLLOUT,
    FEATURES,
    INPUT,
    LOGITS,
    HeadRef,
    ModelMetadata,
    set_metadata,
)
from vitqbench.runtime import create_session

ATTENTION_OUTPUTS = (ATTN_CLS, ATTN_ENTROPY, ATTN_ROLLOUT)


class LogitsAndFeatures(torch.nn.Module):
    """Expose the pre-logits embedding beside the logits, computing the trunk once."""

    def __init__(self, model: torch.nn.Module, linear_head: bool):
        super().__init__()
        self.model = model
        self.linear_head = linear_head

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.forward_features(pixel_values)
        features = self.model.forward_head(tokens, pre_logits=True)
        if self.linear_head:
            logits = self.model.get_classifier()(features)
        else:  # e.g. distilled DeiT: logits average two heads over two different tokens
            logits = self.model.forward_head(tokens)
        return logits, features


class _Capture(torch.nn.Module):
    """Stands in for an attention's dropout (identity at inference), keeping the probabilities it is given."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        self.seen.append(probs)
        return self.inner(probs)


class WithAttention(LogitsAndFeatures):
    """Logits and features, plus each block's attention summaries (timm's unfused attention path).

    ``attn_cls`` [B, depth, N]: the class token's attention over all tokens, mean over heads;
    ``attn_entropy`` [B, depth, heads]: each head's attention entropy (nats), mean over queries;
    ``attn_rollout`` [B, N]: the class token's attention rollout (Abnar & Zuidema 2020) through every
    block: per block ``A' = 0.5 mean_heads(A) + 0.5 I``, rows renormalized, multiplied from the last
    block down to the first, class-token row.
    """

    def __init__(self, model: torch.nn.Module, linear_head: bool):
        super().__init__(model, linear_head)
        blocks = getattr(model, "blocks", None)
        attns = [getattr(b, "attn", None) for b in blocks] if blocks is not None else []
        if not attns or not all(hasattr(a, "fused_attn") and hasattr(a, "attn_drop") for a in attns):
            raise VitqbenchError("--attention needs a ViT whose blocks use timm's Attention (blocks[i].attn)")
        self.captures = []
        for attn in attns:
            attn.fused_attn = False  # the fused kernel never materializes the probabilities
            attn.attn_drop = _Capture(attn.attn_drop)
            self.captures.append(attn.attn_drop)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for capture in self.captures:
            capture.seen.clear()
        logits, features = super().forward(pixel_values)
        probs = [capture.seen[-1] for capture in self.captures]  # [B, heads, N, N] each
        cls = torch.stack([p[:, :, 0, :].mean(dim=1) for p in probs], dim=1)
        entropy = torch.stack([-(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean(-1) for p in probs], dim=1)
        return logits, features, cls, entropy, rollout(probs)


def rollout(probs: list[torch.Tensor]) -> torch.Tensor:
    """[B, N]: the class-token row of ``A'_L ... A'_1`` for per-block probabilities [B, heads, N, N].

    Only that row is carried (a vector through elementwise products and sums, no MatMul), so a
    scheme that quantizes MatMul inputs leaves the rollout itself in float, as it does the other summaries.
    """
    eye = torch.eye(probs[0].shape[-1], dtype=probs[0].dtype)
    row = None
    for p in reversed(probs):
        a = 0.5 * p.mean(dim=1) + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        row = a[:, 0, :] if row is None else (row.unsqueeze(-1) * a).sum(1)
    return row


def attention_layout(net: torch.nn.Module) -> dict[str, Any]:
    """Which leading tokens are not patches and the grid the patches form (metadata ``attention``)."""
    grid = [int(v) for v in getattr(getattr(net, "patch_embed", None), "grid_size", ())]
    prefix = int(getattr(net, "num_prefix_tokens", 1))
    if len(grid) != 2:
        raise VitqbenchError("--attention needs a ViT with a 2-D patch grid (patch_embed.grid_size)")
    return {"prefix_tokens": prefix, "grid": grid}


@dataclass
class Verification:
    max_abs_logits: float
    max_abs_features: float
    top1_agreement: float
    batch_sizes: tuple[int, ...]
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_logits <= self.tolerance and self.max_abs_features <= self.tolerance


def _has_linear_head(model: torch.nn.Module, example: torch.Tensor) -> bool:
    """True when ``logits == head(features)`` exactly, so ViM/ReAct may use the head's weights."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, torch.nn.Linear):
        return False
    with torch.no_grad():
        tokens = model.forward_features(example)
        full = model.forward_head(tokens)
        via_head = head(model.forward_head(tokens, pre_logits=True))
    return isinstance(full, torch.Tensor) and torch.allclose(full, via_head, atol=1e-6, rtol=1e-5)


def _find_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> tuple[str, bool] | None:
    """The initializer holding ``value`` (by name first, then by content); second item: transposed."""
    for init in model.graph.initializer:
        if init.name == name:
            return init.name, False
    for init in model.graph.initializer:
        if tuple(init.dims) not in {value.shape, value.shape[::-1]}:
            continue
        array = numpy_helper.to_array(init)
        if array.shape == value.shape and np.array_equal(array, value):
            return init.name, False
        if array.ndim == 2 and array.shape == value.T.shape and np.array_equal(array, value.T):
            return init.name, True
    return None


def _head_ref(proto: onnx.ModelProto, head: torch.nn.Linear) -> HeadRef | None:
    weight = head.weight.detach().numpy()
    found = _find_initializer(proto, "model.head.weight", weight)
    if found is None:
        return None
    bias_name = None
    if head.bias is not None:
        bias = head.bias.detach().numpy()
        bias_found = _find_initializer(proto, "model.head.bias", bias)
        if bias_found is None and np.any(bias):
            return None
        # An all-zero bias (fresh init) is folded away by the exporter; read_head then uses zeros.
        bias_name = bias_found[0] if bias_found else None
    return HeadRef(weight=found[0], bias=bias_name, layout="in_out" if found[1] else "out_in")


def _to_onnx(wrapper: torch.nn.Module, example: torch.Tensor, opset: int, outputs: list[str]) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (example,),
            input_names=[INPUT],
            output_names=outputs,
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    for node in proto.graph.node:  # the exporter's per-node stack traces: local paths, ~1 KB per node
        del node.metadata_props[:]
    return proto


def _max_abs_diff(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |got - want|; inf when either side is not finite (NaN would otherwise compare as 0)."""
    if not (np.isfinite(got).all() and np.isfinite(want).all()):
        return float("inf")
    return float(np.abs(got - want).max())


def verify_onnx(
    path: Path, wrapper: torch.nn.Module, input_shape: tuple[int, ...], tolerance: float, seed: int = 0
) -> Verification:
    """Compare ONNX Runtime with PyTorch on random batches of 1 and 3 images (attention outputs count as features)."""
    session = create_session(path, threads=None)
    names = [o.name for o in session.get_outputs()]
    generator = torch.Generator().manual_seed(seed)
    worst_logits = worst_features = 0.0
    agree = total = 0
    for batch in (1, 3):
        x = torch.randn((batch, *input_shape), generator=generator)
        with torch.no_grad():
            ref = dict(zip(names, (t.numpy() for t in wrapper(x)), strict=True))
        got = dict(zip(names, session.run(names, {INPUT: x.numpy()}), strict=True))
        logits, ref_logits = got[LOGITS], ref[LOGITS]
        worst_logits = max(worst_logits, _max_abs_diff(logits, ref_logits))
        for name in names[1:]:
            worst_features = max(worst_features, _max_abs_diff(got[name], ref[name]))
        agree += int((logits.argmax(1) == ref_logits.argmax(1)).sum())
        total += batch
    return Verification(worst_logits, worst_features, agree / total, (1, 3), tolerance)


@dataclass
class ExportResult:
    path: Path
    metadata: ModelMetadata
    verification: Verification | None


def export_model(
    model: str,
    out: Path,
    *,
    pretrained: bool = True,
    checkpoint: Path | None = None,
    model_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    verify: bool = True,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    attention: bool = False,
) -> ExportResult:
    """Export ``model`` to ``out``; the file appears only if export (and verification) succeed."""
    out = check_output_file(out)
    if opset < 18:
        raise VitqbenchError(f"opset {opset} is too old: the exporter needs opset >= 18")
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise VitqbenchError(f"opset {opset} is newer than the installed onnx knows (<= {newest})")
    check_seed(seed)
    built: BuiltModel = build_model(
        model, pretrained=pretrained, checkpoint=checkpoint, model_kwargs=model_kwargs, seed=seed
    )
    net = built.model
    num_classes = int(getattr(net, "num_classes", 0) or 0)
    if num_classes <= 0:
        raise VitqbenchError(f"{built.timm_name} has no classifier head (num_classes={num_classes})")
    data_config = data_config_for(built, mean, std, interpolation, crop_pct)
    example = torch.randn((2, *data_config.input_size), generator=torch.Generator().manual_seed(seed))
    linear_head = _has_linear_head(net, example)
    wrapper = (WithAttention if attention else LogitsAndFeatures)(net, linear_head).eval()
    outputs = [LOGITS, FEATURES, *(ATTENTION_OUTPUTS if attention else [])]
    try:
        proto = _to_onnx(wrapper, example, opset, outputs)
    except VitqbenchError:
        raise
    except Exception as exc:
        raise VitqbenchError(f"ONNX export of {built.timm_name} failed: {first_line(exc)}") from exc
    with torch.no_grad():
        feature_dim = int(wrapper(example)[1].shape[1])  # what `features` holds (num_features can differ)
    meta = ModelMetadata(
        timm_name=built.timm_name,
        timm_tag=built.timm_tag,
        model_kwargs=built.model_kwargs,
        source=built.source,
        num_classes=num_classes,
        feature_dim=feature_dim,
        data_config=data_config,
        head=_head_ref(proto, net.get_classifier()) if linear_head else None,
        class_names=built.class_names,
        outputs={name: name for name in outputs},
        opset=opset,
        attention=attention_layout(net) if attention else None,
    )
    set_metadata(proto, meta)
    verification = None
    with atomic_path(out, suffix=".onnx") as tmp:
        onnx.save(proto, str(tmp))
        if verify:
            with torch.no_grad():
                verification = verify_onnx(tmp, wrapper, data_config.input_size, tolerance, seed)
            if not verification.passed:
                raise VitqbenchError(
                    f"verification failed: max |delta logits| {verification.max_abs_logits:.2e}, "
                    f"max |delta features| {verification.max_abs_features:.2e} > tolerance {tolerance:g}; "
                    f"nothing written (use --no-verify to keep it anyway)"
                )
    return ExportResult(out, meta, verification)
