"""The model x dataset evaluation matrix: cached model outputs, OOD scores, metrics and deltas."""

from vitqbench.evaluate.cache import OutputCache, Outputs
from vitqbench.evaluate.run import EvalConfig, run_eval
from vitqbench.results import EvalResults

__all__ = ["EvalConfig", "EvalResults", "OutputCache", "Outputs", "run_eval"]
