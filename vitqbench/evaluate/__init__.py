"""The model x dataset evaluation matrix: cached model outputs, OOD scores, metrics and deltas."""

from vitqbench.evaluate.cache import OutputCache, Outputs
from vitqbench.evaluate.results import EvalResults
from vitqbench.evaluate.run import EvalConfig, run_eval
from vitqbench.evaluate.summary import finish_run, parse_id_arg, parse_ood_args, print_summary

__all__ = [
    "EvalConfig",
    "EvalResults",
    "OutputCache",
    "Outputs",
    "finish_run",
    "parse_id_arg",
    "parse_ood_args",
    "print_summary",
    "run_eval",
]
