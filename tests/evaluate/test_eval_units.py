"""Small pieces of eval: argument parsing, labels, deltas, the output cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vitqbench.app import parse_ood_args
from vitqbench.errors import VitqbenchError
from vitqbench.evaluate.cache import OutputCache, Outputs
from vitqbench.evaluate.run import _unique_labels
from vitqbench.evaluate.scoring import parse_score_specs
from vitqbench.results import IdMetrics, ModelInfo, OodResult, compute_deltas


def test_score_specs_parse_params_and_reject_bad_input():
    specs = parse_score_specs("msp, energy:temperature=2 ,knn:k=5")
    assert [s.label for s in specs] == ["msp", "energy:temperature=2", "knn:k=5"]
    assert specs[2].params == {"k": 5} and specs[2].create().k == 5
    for bad, message in [("nope", "unknown score"), ("knn:k", "KEY=VALUE"), ("msp,msp", "twice"), ("", "no scores")]:
        with pytest.raises(VitqbenchError, match=message):
            parse_score_specs(bad)


def test_ood_args():
    assert parse_ood_args(["a=photos", "b = noise:gaussian:n=5"]) == ({"a": "photos", "b": "noise:gaussian:n=5"}, {})
    specs, groups = parse_ood_args(["near:ssb=l.txt:n=5", "far:tex=dtd", "synthetic:z=noise:uniform"])
    assert specs == {"ssb": "l.txt:n=5", "tex": "dtd", "z": "noise:uniform"}
    assert groups == {"ssb": "near", "tex": "far", "z": "synthetic"}
    for bad in (["photos"], ["a=x", "a=y"], ["mean=x"], ["=x"], ["middle:a=x"], ["near:=x"], ["near:a:b=x"]):
        with pytest.raises(VitqbenchError):
            parse_ood_args(bad)


def test_labels_are_unique_and_readable():
    assert _unique_labels([Path("a/m.onnx"), Path("a/m.int8.onnx")]) == ["m", "m.int8"]
    assert _unique_labels([Path("x/m.onnx"), Path("y/m.onnx")]) == ["x/m", "y/m"]
    assert _unique_labels([Path("x/m.onnx"), Path("x/m.onnx")]) == ["x/m", "x/m#2"]
    assert _unique_labels([Path("m.onnx"), Path("m.onnx")]) == ["m", "m#2"]  # no stray "/m"


def _info(label: str, baseline: str) -> ModelInfo:
    return ModelInfo(label, f"{label}.onnx", "0" * 64, 1, "fp32", label, baseline, {})


def test_deltas_follow_each_models_own_baseline():
    models = [_info("a", "a"), _info("a8", "a"), _info("b", "b"), _info("b4", "b")]
    top1 = {"a": 0.8, "a8": 0.6, "b": 0.5, "b4": 0.0}
    ids = [IdMetrics(m, "id", 10, t, 1.0, 0.1) for m, t in top1.items()]
    oods = [
        OodResult(
            model=m,
            dataset="o",
            score="msp",
            n_id=10,
            n_ood=10,
            auroc=auroc,
            aupr_in=0.5,
            aupr_out=0.5,
            fpr95_id_positive=0.2,
            fpr95_ood_positive=0.3,
        )
        for m, auroc in [("a", 0.9), ("a8", 0.45)]
    ]
    deltas = {(d.model, d.metric, d.dataset): d for d in compute_deltas(models, ids, oods)}
    assert deltas[("a8", "top1", "id")].abs == pytest.approx(-0.2)
    assert deltas[("a8", "top1", "id")].rel == pytest.approx(-0.25)
    assert deltas[("a8", "auroc", "o")].rel == pytest.approx(-0.5)
    assert deltas[("b4", "top1", "id")].baseline == "b" and deltas[("b4", "top1", "id")].rel == -1.0
    assert ("b4", "auroc", "o") not in deltas  # its baseline has no such metric
    assert not any(d.model in {"a", "b"} for d in deltas.values())


def test_output_cache_merges_shards_in_dataset_order(tmp_path):
    cache = OutputCache(tmp_path)

    def part(idx):
        idx = np.asarray(idx)
        return Outputs(
            idx[:, None] * np.ones((1, 3), np.float32),
            np.zeros((len(idx), 2), np.float32),
            idx.astype(np.int64),
            np.asarray([f"p{i}" for i in idx]),
            idx.astype(np.int64),
        )

    cache.save_part("k", part([4, 5]))
    cache.save_part("k", part([0, 1, 2]))
    assert sorted(len(p) for p in cache.load_parts("k")) == [2, 3]
    out = cache.finish("k", cache.load_parts("k"), {3: "unreadable"})
    assert out.indices.tolist() == [0, 1, 2, 4, 5] and out.paths.tolist() == ["p0", "p1", "p2", "p4", "p5"]
    again = cache.get("k")
    assert again.logits[:, 0].tolist() == [0, 1, 2, 4, 5] and again.skipped == {3: "unreadable"}
    assert not cache.parts_dir("k").exists()
    cache.path("k").write_bytes(b"garbage")  # a damaged entry is dropped and recomputed, never trusted
    assert cache.get("k") is None and not cache.path("k").exists()


def test_fitted_score_state_is_keyed_by_provider_and_resolved_params(tmp_path):
    """State fitted on CPU outputs is not served to a CUDA run; an explicit default shares the state."""
    from vitqbench.evaluate.scoring import ScoreSpec
    from vitqbench.evaluate.state import fitted_score
    from vitqbench.results import DatasetInfo

    rng = np.random.default_rng(0)
    fit = Outputs(
        logits=rng.standard_normal((60, 3)).astype(np.float32),
        features=rng.standard_normal((60, 8)).astype(np.float32),
        labels=np.arange(60) % 3,
        paths=np.array([f"{i}.png" for i in range(60)]),
        indices=np.arange(60),
    )
    model = ModelInfo("m", "m.onnx", "ab" * 32, 1, "fp32", "m", None, {})
    data = DatasetInfo("fit", "fit", "digits:train", "k1", 60, 3, False)
    state_files = lambda: sorted(p.name for p in (tmp_path / "scores").glob("*.npz"))  # noqa: E731

    fitted_score(ScoreSpec("knn", {"k": 5}), model, data, fit, tmp_path, "cpu")
    assert len(state_files()) == 1
    default_k = fitted_score(ScoreSpec("knn", {}), model, data, fit, tmp_path, "cpu").k
    fitted_score(ScoreSpec("knn", {"k": default_k}), model, data, fit, tmp_path, "cpu")
    assert len(state_files()) == 2  # {} and k=<default> are one state
    fitted_score(ScoreSpec("knn", {"k": 5}), model, data, fit, tmp_path, "cuda")
    assert len(state_files()) == 3


def test_a_cell_is_locked_while_computed_and_a_finished_one_is_not_recomputed(tmp_path):
    import fcntl

    from vitqbench.evaluate.inference import run_cell

    cache = OutputCache(tmp_path)
    with cache.lock("k"), open(tmp_path / "outputs" / "k.lock", "a") as other:
        with pytest.raises(BlockingIOError):  # what a second process computing the same cell would wait on
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    done = Outputs(
        logits=np.zeros((3, 2), np.float32),
        features=np.zeros((3, 4), np.float32),
        labels=None,
        paths=np.array(["a", "b", "c"]),
        indices=np.arange(3),
    )
    done.save(cache.path("k"))  # finished by the other process while this one waited
    seen = []
    out, computed = run_cell(None, None, None, cache, "k", batch_size=2, image_cache_dir=None, on_batch=seen.append)
    assert computed == 0 and len(out) == 3 and seen == [3]


def test_dataset_class_count_is_the_classes_present():
    from vitqbench.data import load_dataset
    from vitqbench.evaluate.run import _classes_present

    subset = load_dataset("digits:test:0-5")
    assert _classes_present(subset, subset.class_names) == 6
    noise = load_dataset("noise:gaussian:n=3")
    assert _classes_present(noise, None) is None
