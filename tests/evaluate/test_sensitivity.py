"""`vitqbench sensitivity`: budgets, the plan search, and a whole run on a small random ViT."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vitqbench.errors import VitqbenchError
from vitqbench.evaluate.sensitivity import Constraint, parse_budget, plan_search, rank_units
from vitqbench.metadata import read_metadata
from vitqbench.quant.mixed import MixedPlan, plan_from_metadata
from vitqbench.results import UnitSensitivity

SCORES = ["msp", "energy"]


def test_budget_parsing():
    assert parse_budget("top1>=-0.5, energy.aupr_out>=-1", SCORES) == [
        Constraint("top1", ">=", -0.5),
        Constraint("energy.aupr_out", ">=", -1.0),
    ]
    # A metric without a score binds every score of the run.
    assert [c.key for c in parse_budget("aupr_out>=-1.0", SCORES)] == ["msp.aupr_out", "energy.aupr_out"]
    assert parse_budget("fpr95<=2e0", ["msp"]) == [Constraint("msp.fpr95", "<=", 2.0)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("aupr>=-1", "unknown metric 'aupr'"),
        ("knn.aupr_out>=-1", "score 'knn' is not computed"),
        ("energy.top1>=-1", "takes no score"),
        ("top1>-1", "is not .SCORE"),
        ("", "empty"),
    ],
)
def test_bad_budgets_are_one_line(text, message):
    with pytest.raises(VitqbenchError, match=message):
        parse_budget(text, SCORES)


def _synthetic(rng):
    units = [f"u{i}" for i in range(8)]
    sizes = {u: {"fp32": 400, "w8a8": 100, "w4a4": 50} for u in units}
    deltas = {}
    for u in units:
        harm = rng.uniform(0, 2)
        deltas[(u, "w4a4")] = {"top1": -harm, "energy.aupr_out": -rng.uniform(0, 3)}
        deltas[(u, "w8a8")] = {"top1": -harm / 10, "energy.aupr_out": -rng.uniform(0, 0.3)}
    return units, sizes, deltas


@pytest.mark.parametrize("seed", range(5))
def test_the_search_respects_the_budget_on_synthetic_deltas(seed):
    units, sizes, deltas = _synthetic(np.random.default_rng(seed))
    budget = [Constraint("top1", ">=", -1.0), Constraint("energy.aupr_out", ">=", -2.0)]
    choice = plan_search(units, sizes, deltas, budget, ["w4a4", "w8a8", "fp32"])
    for c in budget:
        total = sum(0.0 if p == "fp32" else deltas[(u, p)][c.key] for u, p in choice.items())
        assert c.deficit(total) == 0
    size = sum(sizes[u][p] for u, p in choice.items())
    assert size <= sum(sizes[u]["w8a8"] for u in units)  # w8a8 everywhere meets it here; never larger
    # A looser budget never needs more bytes.
    loose = plan_search(units, sizes, deltas, [c.shifted(-5) for c in budget], ["w4a4", "w8a8", "fp32"])
    assert sum(sizes[u][p] for u, p in loose.items()) <= size
    anything = plan_search(units, sizes, deltas, [Constraint("top1", ">=", -100)], ["w4a4"])
    assert set(anything.values()) == {"w4a4"}


def test_a_budget_asking_for_gains_is_refused():
    units, sizes, deltas = _synthetic(np.random.default_rng(0))
    with pytest.raises(VitqbenchError, match="even with every unit in fp32"):
        plan_search(units, sizes, deltas, [Constraint("top1", ">=", 0.5)], ["w4a4", "fp32"])
    with pytest.raises(VitqbenchError, match="widest candidate"):
        plan_search(units, sizes, deltas, [Constraint("top1", ">=", -0.01)], ["w4a4", "w8a8"])


def test_weightless_units_start_at_the_fewest_bits():
    """An attention matmul has no weight bytes at any precision: ties go to the narrower precision."""
    sizes = {"qk": {"fp32": 0, "w8a8": 0, "w4a4": 0}}
    deltas = {("qk", "w4a4"): {"top1": -0.1}, ("qk", "w8a8"): {"top1": 0.0}}
    assert plan_search(["qk"], sizes, deltas, [Constraint("top1", ">=", -1)], ["fp32", "w8a8", "w4a4"]) == {
        "qk": "w4a4"
    }


def test_ranking_compares_id_and_ood_orders():
    rows = [
        UnitSensitivity("a", "w4a4", 1, {"logit_error": 3.0, "msp.aupr_out": -0.1}),
        UnitSensitivity("b", "w4a4", 1, {"logit_error": 2.0, "msp.aupr_out": -0.2}),
        UnitSensitivity("c", "w4a4", 1, {"logit_error": 1.0, "msp.aupr_out": -5.0}),
    ]
    (rank,) = rank_units(rows, ["msp"])
    assert rank["spearman"] == pytest.approx(-1.0)
    assert rank["most_id_harmful"][0] == "a" and rank["most_ood_harmful"][0] == "c"
    assert {"unit": "c", "id_rank": 3, "ood_rank": 1} in rank["rank_changes"]


def test_sensitivity_end_to_end_and_its_plan_applies(run_cli, tiny_onnx, tmp_path):
    out = tmp_path / "sens"
    common = ["--calib", "digits:train", "--calib-size", "16", "--id", "digits:test:n=120", "--threads", "1"]
    common += ["--ood", "near:shifted=digits:test:n=60:seed=3", "--ood", "noise=noise:uniform:n=40"]
    common += ["--fit", "digits:train:n=150", "--scores", "msp,energy,knn", "--cache-dir", tmp_path / "cache"]
    result = run_cli(
        "sensitivity", tiny_onnx, *common, "--scheme", "w4a4,w8a8", "--budget", "energy.aupr_out>=-50",
        "--no-progress", "-o", out,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    data = json.loads((out / "sensitivity.json").read_text())
    assert data["units"] == ["patch_embed", "blocks.0", "blocks.1", "head"]
    pairs = {(u, p) for u in data["units"] for p in ("w4a4", "w8a8")}
    assert {(r["unit"], r["precision"]) for r in data["rows"]} == pairs
    row = next(r for r in data["rows"] if r["unit"] == "blocks.0" and r["precision"] == "w4a4")
    assert row["deltas"]["logit_error"] > 0 and "knn.aupr_out@fp32-fit" in row["deltas"] and row["execution"]
    assert (out / "plots" / "sensitivity_w4a4.png").stat().st_size > 1000
    report = (out / "sensitivity.md").read_text()
    assert "## w4a4: per block" in report and "knn Δ AUPR-out (fp32 fit)" in report and "| emulated |" in report
    assert len((out / "sensitivity.csv").read_text().splitlines()) == 1 + 2 * (4 + 1)
    plan = MixedPlan.load(out / "plan.json")
    assert data["plan"]["met"] and plan.summary["rounds"][-1]["verified"]["energy.aupr_out"] >= -50
    # The plan applies with `quantize --plan` and reads back from the metadata.
    result = run_cli("quantize", tiny_onnx, "--plan", out / "plan.json", "-o", tmp_path / "m.onnx", *common[:4])
    assert result.code == 0, result.stderr
    assert plan_from_metadata(read_metadata(tmp_path / "m.onnx")).hash == plan.hash
    # A second run reuses every unit model and every cached output.
    before = {p: p.stat().st_mtime_ns for p in (out / "models").rglob("*.onnx")}
    result = run_cli("sensitivity", tiny_onnx, *common, "--scheme", "w4a4,w8a8", "--no-progress", "-o", out)
    assert result.code == 0, result.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "aupr>=-1"], "unknown metric"),
        (["--scheme", "w3a3"], "unknown unit scheme 'w3a3'"),
        (["--scheme", "fp32"], "quantizes nothing"),
        (["--granularity", "head"], "unknown --granularity"),
        (["--budget", "vim.aupr_out>=-1"], "score 'vim' is not computed"),
    ],
)
def test_bad_sensitivity_input_is_one_line_and_writes_nothing(run_cli, tiny_onnx, tmp_path, args, message):
    out = tmp_path / "sens"
    result = run_cli(
        "sensitivity", tiny_onnx, "--calib", "digits:train", "--id", "digits:test", "--ood", "n=noise:uniform:n=10",
        "--scores", "msp,energy", *args, "-o", out,
    )  # fmt: skip
    assert result.code != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
