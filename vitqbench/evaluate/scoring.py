"""OOD scores for one model: parse ``--scores`` specs, fit (or load cached fitted state), score."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vitqbench.errors import VitqbenchError


@dataclass(frozen=True)
class ScoreSpec:
    """A score name and its parameters, e.g. ``knn:k=50`` -> ``ScoreSpec("knn", {"k": 50})``."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return ":".join([self.name, *(f"{k}={v}" for k, v in sorted(self.params.items()))])

    @property
    def tunable(self) -> bool:
        """Whether --tune has something to search: a grid parameter the spec does not fix."""
        from vitqbench.ood import SCORES

        return bool(set(SCORES[self.name].grid) - set(self.params))

    def create(self) -> Any:
        from vitqbench.ood import create_score

        return create_score(self.name, **self.params)

    def __hash__(self) -> int:
        return hash(self.label)


def parse_score_specs(text: str | list[str]) -> list[ScoreSpec]:
    """``"msp,energy,knn:k=50"`` (or a list of such items) to specs; unknown names fail here."""
    items = text.split(",") if isinstance(text, str) else [t for part in text for t in part.split(",")]
    specs = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, *pairs = item.split(":")
        params = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise VitqbenchError(f"bad score parameter {pair!r} in {item!r}; write NAME:KEY=VALUE")
            params[key.strip()] = _literal(value.strip())
        spec = ScoreSpec(name.strip(), params)
        spec.create()  # unknown names and bad parameters fail here, before any model runs
        if spec.label in {s.label for s in specs}:
            raise VitqbenchError(f"score {spec.label!r} is listed twice")
        specs.append(spec)
    if not specs:
        raise VitqbenchError("no scores given")
    return specs


def default_score_specs(with_fit: bool) -> list[ScoreSpec]:
    """Every registered score with default parameters; those needing a fit set only if one is given."""
    from vitqbench.ood import default_score_names

    return [ScoreSpec(name) for name in default_score_names(with_fit)]


def _literal(text: str) -> Any:
    lowered = text.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
