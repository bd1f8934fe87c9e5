"""Scores: hand-checked values, OpenOOD re-statements, invariances, state round trips, errors."""

from __future__ import annotations

import dataclasses
import tracemalloc
import warnings

import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from sklearn.covariance import EmpiricalCovariance

from vitqbench.errors import VitqbenchError
from vitqbench.ood import SCORES, ScoreInputs, base, create_score, default_score_names, load_score

LOGITS = np.array([[0.0, np.log(3.0)], [1.0, 1.0]])


def make_features(seed=0, n=400, dim=16, classes=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centers = rng.normal(scale=3, size=(classes, dim))
    features = centers[labels] + rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) * 0.5
    head = (rng.normal(size=(classes, dim)), rng.normal(size=classes))
    return features, labels, head


SMALL_FIT = {"nnguide": {"K": 5, "alpha": 0.5}}  # OpenOOD's alpha=0.01 keeps 4 of these 400 samples


def fitted(name, seed=0, **params):
    features, labels, head = make_features(seed)
    return create_score(name, **(params or SMALL_FIT.get(name, {}))).fit(
        ScoreInputs(features=features, labels=labels, logits=features @ head[0].T + head[1], head=head)
    )


def test_msp_maxlogit_energy_entropy_hand_checked():
    np.testing.assert_allclose(create_score("msp").score(ScoreInputs(logits=LOGITS)), [0.75, 0.5])
    np.testing.assert_allclose(create_score("maxlogit").score(ScoreInputs(logits=LOGITS)), [np.log(3.0), 1.0])
    np.testing.assert_allclose(
        create_score("energy").score(ScoreInputs(logits=LOGITS)), [np.log(4.0), 1.0 + np.log(2.0)]
    )
    np.testing.assert_allclose(
        create_score("energy", temperature=2.0).score(ScoreInputs(logits=LOGITS)), 2.0 * logsumexp(LOGITS / 2.0, axis=1)
    )
    expected_entropy = [0.25 * np.log(0.25) + 0.75 * np.log(0.75), np.log(0.5)]
    np.testing.assert_allclose(create_score("entropy").score(ScoreInputs(logits=LOGITS)), expected_entropy)


def test_gen_hand_checked_and_top_m():
    # p = (1/4, 3/4): -(sum p^g (1-p)^g) = -2 (3/16)^g for both classes
    np.testing.assert_allclose(
        create_score("gen", gamma=0.5).score(ScoreInputs(logits=LOGITS[:1])), [-2 * (3 / 16) ** 0.5]
    )
    logits = np.log(np.array([[0.1, 0.2, 0.7]]))
    top2 = -(0.2**0.1 * 0.8**0.1 + 0.7**0.1 * 0.3**0.1)
    np.testing.assert_allclose(create_score("gen", M=2).score(ScoreInputs(logits=logits)), [top2])


def test_logit_scores_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32)
    for name in ("msp", "energy", "entropy", "gen", "tempscale"):
        score = create_score(name, **({"temperature": 1.0} if name == "tempscale" else {}))
        assert np.isfinite(score.score(ScoreInputs(logits=logits))).all(), name


def test_tempscale_at_one_is_msp_and_temperature_is_monotone_in_confidence():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4, size=(50, 7))
    np.testing.assert_allclose(
        create_score("tempscale", temperature=1.0).score(ScoreInputs(logits=logits)),
        create_score("msp").score(ScoreInputs(logits=logits)),
        rtol=1e-12,
    )
    hot = create_score("tempscale", temperature=5.0).score(ScoreInputs(logits=logits))
    assert (hot <= create_score("msp").score(ScoreInputs(logits=logits)) + 1e-12).all()
    assert not create_score("tempscale", temperature=2.0).needs_fit


def test_tempscale_fit_recovers_the_temperature_of_the_labels():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3, size=(20000, 5))
    probs = softmax(logits / 2.0, axis=1)
    labels = (rng.random((20000, 1)) > probs.cumsum(1)).sum(1)
    score = create_score("tempscale").fit(ScoreInputs(labels=labels, logits=logits))
    assert float(score.temperature_) == pytest.approx(2.0, rel=0.05)
    np.testing.assert_allclose(
        score.score(ScoreInputs(logits=logits)), softmax(logits / score.temperature_, axis=1).max(1)
    )


def openood_mahalanobis(train, labels, test):
    means = [train[labels == c].mean(0) for c in np.unique(labels)]
    centered = np.concatenate([train[labels == c] - m for c, m in zip(np.unique(labels), means, strict=True)])
    precision = EmpiricalCovariance(assume_centered=False).fit(centered).precision_
    per_class = [-np.einsum("nd,de,ne->n", test - m, precision, test - m) for m in means]
    return np.max(per_class, axis=0)


def test_mahalanobis_matches_openood(monkeypatch):
    monkeypatch.setattr(base, "CHUNK_BYTES", 8 * 16 * 7)  # 7-row chunks
    features, labels, _ = make_features(2)
    test = make_features(3)[0]
    score = create_score("mahalanobis").fit(ScoreInputs(features=features, labels=labels))
    np.testing.assert_allclose(
        score.score(ScoreInputs(features=test)), openood_mahalanobis(features, labels, test), rtol=1e-9
    )


def test_mahalanobis_matches_openood_on_layernormed_float32_features():
    """LayerNorm puts features in a hyperplane: the covariance has a ~0 eigenvalue that scikit-learn's
    pinvh drops; keeping it lets float32 noise dominate the distances."""
    features, labels, _ = make_features(6, dim=32)
    test = make_features(7, dim=32)[0]

    def layer_norm(x):  # in float32, as the model computes it: the hyperplane is exact only to rounding
        x = x.astype(np.float32)
        centered = x - x.mean(1, keepdims=True)
        return centered / centered.std(1, keepdims=True)

    features, test = layer_norm(features), layer_norm(test)
    score = create_score("mahalanobis").fit(ScoreInputs(features=features, labels=labels))
    want = openood_mahalanobis(features.astype(np.float64), labels, test.astype(np.float64))
    np.testing.assert_allclose(score.score(ScoreInputs(features=test)), want, rtol=1e-6)


def test_knn_matches_brute_force_and_k():
    features, _, _ = make_features(4)
    test = make_features(5)[0]
    norm = lambda x: x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-10)  # noqa: E731
    squared = ((norm(test)[:, None, :] - norm(features)[None, :, :]) ** 2).sum(-1)
    for k in (1, 7):
        expected = -np.sort(squared, axis=1)[:, k - 1]
        np.testing.assert_allclose(
            create_score("knn", k=k).fit(ScoreInputs(features=features)).score(ScoreInputs(features=test)),
            expected,
            atol=2e-6,
        )


def test_knn_chunks_give_the_same_answer(monkeypatch):
    features, _, _ = make_features(4)
    test = make_features(5)[0]
    whole = create_score("knn", k=3).fit(ScoreInputs(features=features)).score(ScoreInputs(features=test))
    monkeypatch.setattr(base, "CHUNK_BYTES", 4 * len(features) * 3)  # 3-row chunks
    # float32 GEMMs of different row counts may take different BLAS kernels: equal to float32 rounding
    np.testing.assert_allclose(
        create_score("knn", k=3).fit(ScoreInputs(features=features)).score(ScoreInputs(features=test)), whole, rtol=2e-6
    )


def test_knn_is_scale_invariant():
    features, _, _ = make_features(4)
    test = make_features(5)[0]
    score = create_score("knn").fit(ScoreInputs(features=features))
    np.testing.assert_allclose(
        score.score(ScoreInputs(features=test * 7.0)), score.score(ScoreInputs(features=test)), atol=1e-6
    )


def openood_vim(train, test, weight, bias, dim):
    u = -np.matmul(np.linalg.pinv(weight), bias)
    ec = EmpiricalCovariance(assume_centered=True).fit(train - u)
    eig_vals, eigen_vectors = np.linalg.eig(ec.covariance_)
    ns = np.ascontiguousarray((eigen_vectors.T[np.argsort(eig_vals * -1)[dim:]]).T)
    alpha = (train @ weight.T + bias).max(axis=-1).mean() / np.linalg.norm((train - u) @ ns, axis=-1).mean()
    return -np.linalg.norm((test - u) @ ns, axis=-1) * alpha + logsumexp(test @ weight.T + bias, axis=-1)


def test_vim_matches_openood_and_default_dim():
    features, labels, head = make_features(6)
    test = make_features(7)[0]
    for dim, expected_dim in ((5, 5), (None, 8)):  # 16-d features: the paper's rule halves them
        score = create_score("vim", dim=dim).fit(ScoreInputs(features=features, head=head))
        assert score.residual_basis_.shape == (16, 16 - expected_dim)
        np.testing.assert_allclose(
            score.score(ScoreInputs(features=test)), openood_vim(features, test, *head, expected_dim), rtol=1e-9
        )


def test_react_matches_openood_and_100th_percentile_is_energy():
    features, _, (weight, bias) = make_features(8)
    test = make_features(9)[0] * 2
    score = create_score("react").fit(ScoreInputs(features=features, head=(weight, bias)))
    threshold = np.percentile(features.flatten(), 90)
    expected = logsumexp(test.clip(max=threshold) @ weight.T + bias, axis=1)
    np.testing.assert_allclose(score.score(ScoreInputs(features=test)), expected, rtol=1e-12)
    train_max = create_score("react", percentile=100).fit(ScoreInputs(features=features, head=(weight, bias)))
    inside = features[:50]  # nothing above the fit maximum: clipping changes nothing
    np.testing.assert_allclose(
        train_max.score(ScoreInputs(features=inside)),
        create_score("energy").score(ScoreInputs(logits=inside @ weight.T + bias)),
    )
    assert not np.allclose(score.score(ScoreInputs(features=inside)), train_max.score(ScoreInputs(features=inside)))


@pytest.mark.parametrize("name", [n for n in SCORES if SCORES[n].state])
def test_fitted_state_round_trips_through_npz(tmp_path, name):
    score = fitted(name)
    features, _, head = make_features(10)
    logits = features @ head[0].T + head[1]
    score.save(tmp_path / "state.npz")
    again = load_score(tmp_path / "state.npz")
    assert type(again) is type(score) and again.params() == score.params()
    np.testing.assert_array_equal(
        again.score(ScoreInputs(logits=logits, features=features)),
        score.score(ScoreInputs(logits=logits, features=features)),
    )


def test_default_score_names_and_registry():
    opt_in = {"klm", "rmds", "nnguide", "she", "dice", "ash", "scale", "fdbd", "attn_entropy", "rollout"}  # named only
    assert set(default_score_names()) == set(SCORES) - opt_in
    without_fit = default_score_names(with_fit=False)
    assert {"msp", "maxlogit", "energy", "entropy", "gen"} == set(without_fit)
    assert [n for n in default_score_names() if "features" in SCORES[n].reads] == [
        "mahalanobis",
        "knn",
        "vim",
        "react",
    ]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: create_score("nope"), "unknown score 'nope'"),
        (lambda: create_score("knn", kk=3), "bad parameters"),
        (lambda: create_score("knn", k=0), "knn k must be >= 1"),
        (lambda: create_score("knn", k=2.5), "must be an integer"),
        (lambda: create_score("energy", temperature=0), "must be > 0"),
        (lambda: create_score("react", percentile=101), "<= 100"),
        (lambda: create_score("knn").score(ScoreInputs(features=np.ones((3, 4)))), "needs a fit"),
        (lambda: create_score("msp").score(ScoreInputs(features=np.ones((3, 4)))), "logits for 'msp' are required"),
        (lambda: create_score("msp").score(ScoreInputs(logits=np.ones((0, 4)))), "non-empty"),
        (lambda: create_score("vim").fit(ScoreInputs(features=np.ones((5, 4)))), "needs the model's classifier head"),
        (
            lambda: create_score("vim").fit(ScoreInputs(features=np.ones((5, 4)), head=(np.ones((3, 5)), np.ones(3)))),
            r"\[classes, 4\]",
        ),
        (
            lambda: create_score("react").fit(
                ScoreInputs(features=np.ones((5, 4)), head=(np.ones((3, 4)), np.ones(2)))
            ),
            "bias",
        ),
        (
            lambda: create_score("vim", dim=4).fit(ScoreInputs(features=np.ones((5, 4)), head=(np.ones((3, 4)), None))),
            "vim dim",
        ),
        (lambda: create_score("mahalanobis").fit(ScoreInputs(features=np.ones((5, 4)))), "needs class labels"),
        (
            lambda: create_score("mahalanobis").fit(ScoreInputs(features=np.ones((5, 4)), labels=np.arange(4))),
            "must be 5 integers",
        ),
        (lambda: create_score("knn").fit(ScoreInputs(features=np.ones((5, 4)))), "at least 50 fit samples"),
        (lambda: create_score("knn", k=1).fit(ScoreInputs(features=np.ones((0, 4)))), "non-empty"),
        (lambda: create_score("knn", k=1).fit(ScoreInputs(features=np.full((2, 4), np.nan))), "8 non-finite"),
        (lambda: fitted("knn").score(ScoreInputs(features=np.ones((2, 5)))), "fitted on 16-d features, got 5-d"),
        (
            lambda: create_score("tempscale").fit(ScoreInputs(labels=np.array([0, 3]), logits=np.ones((2, 3)))),
            "reach 3",
        ),
        (lambda: create_score("msp").state_dict(), None),
    ],
)
def test_errors_are_one_clear_line(call, message):
    if message is None:  # a score without state saves its parameters only
        assert "__score__" in call()
        return
    with pytest.raises(VitqbenchError, match=message):
        call()


def test_unfitted_state_cannot_be_saved_and_bad_files_are_refused(tmp_path):
    with pytest.raises(VitqbenchError, match="not fitted"):
        create_score("knn").save(tmp_path / "x.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(VitqbenchError, match="cannot read"):
        load_score(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", a=np.ones(2))
    with pytest.raises(VitqbenchError, match="not a vitqbench score state"):
        load_score(tmp_path / "other.npz")


@pytest.mark.parametrize("name", ["knn", "mahalanobis"])
def test_distance_scores_never_hold_a_queries_by_fit_matrix(monkeypatch, name):
    monkeypatch.setattr(base, "CHUNK_BYTES", 1 << 20)
    rng = np.random.default_rng(11)
    n_fit, n_query, classes = 8000, 1000, 2000
    fit = rng.normal(size=(n_fit, 8)).astype(np.float32)
    score = create_score(name, **({"k": 5} if name == "knn" else {})).fit(
        ScoreInputs(features=fit, labels=np.arange(n_fit) % classes)
    )
    queries = rng.normal(size=(n_query, 8)).astype(np.float32)
    tracemalloc.start()
    score.score(ScoreInputs(features=queries))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # A full distance matrix would be n_query x n_fit x 4 = 32 MB (knn), n_query x classes x 8 = 16 MB.
    assert peak < 6 * (1 << 20), peak


def attention_arrays(seed: int, n: int, depth: int = 3, heads: int = 2, patches: int = 16):
    rng = np.random.default_rng(seed)
    entropy = rng.uniform(0.5, 2.5, (n, depth, heads))
    return {"attn_entropy": entropy, "attn_rollout": rng.dirichlet(np.ones(patches), n)}


def bundle(seed=10):
    features, labels, head = make_features(seed)
    return ScoreInputs(
        logits=features @ head[0].T + head[1], features=features, labels=labels, head=head,
        **attention_arrays(seed, len(features)),
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(SCORES))
def test_nonfinite_inputs_score_nan_and_leave_the_other_rows_alone(name):
    score = fitted(name)
    clean = bundle()
    logits, features = clean.logits.copy(), clean.features.copy()
    entropy, rollout = clean.attn_entropy.copy(), clean.attn_rollout.copy()
    read = score.reads
    for row, value in ((3, np.nan), (5, np.inf), (8, -np.inf)):
        if "logits" in read:
            logits[row, row % 4] = value
        if "features" in read:
            features[row, row] = value
        if "attn_entropy" in read:
            entropy[row, -1, row % 2] = value
        if "attn_rollout" in read:
            rollout[row, row] = value
    broken = dataclasses.replace(clean, logits=logits, features=features, attn_entropy=entropy, attn_rollout=rollout)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow/invalid warnings from the broken rows
        got, want = score.score(broken), score.score(clean)
    bad = [3, 5, 8]
    assert np.isnan(got[bad]).all()
    keep = np.setdiff1d(np.arange(len(got)), bad)
    np.testing.assert_allclose(got[keep], want[keep], rtol=1e-6)
    if "features" not in read:  # a broken input the score does not read changes nothing
        features[:] = np.nan
        np.testing.assert_array_equal(score.score(dataclasses.replace(clean, features=features)), want)


def test_fitted_state_carries_the_scores_own_version(tmp_path, monkeypatch):
    fitted("knn").save(tmp_path / "state.npz")
    monkeypatch.setattr(SCORES["knn"], "version", SCORES["knn"].version + 1)
    with pytest.raises(VitqbenchError, match="version"):
        load_score(tmp_path / "state.npz")


def test_attention_scores_hand_checked_and_higher_is_more_focused():
    entropy = np.array([[[3.0, 1.0], [2.0, 0.5]], [[0.1, 0.1], [1.0, 3.0]]])  # [N=2, depth=2, heads=2]
    np.testing.assert_allclose(create_score("attn_entropy").score(ScoreInputs(attn_entropy=entropy)), [-1.25, -2.0])
    first = create_score("attn_entropy", block=0).score(ScoreInputs(attn_entropy=entropy))
    np.testing.assert_allclose(first, [-2.0, -0.1])
    rollout = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    got = create_score("rollout").score(ScoreInputs(attn_rollout=rollout * 3))  # rows are renormalized
    np.testing.assert_allclose(got, [0.0, 1.0, 0.5], atol=1e-12)


def test_attention_scores_follow_the_fit_score_contract():
    x = bundle()
    for name in ("attn_entropy", "rollout"):
        score = create_score(name)
        assert not score.needs_fit and not score.needs_head and not score.needs_labels
        assert score.fit(x) is score  # nothing to learn: fit is a no-op, as for MSP
        got = score.score(x)
        assert got.shape == (len(x.features),) and got.dtype == np.float64 and np.isfinite(got).all()
        with pytest.raises(VitqbenchError, match=r"lacks: export it with `vitqbench export --attention`"):
            score.score(ScoreInputs(logits=x.logits, features=x.features))
    with pytest.raises(VitqbenchError, match="outside this model's 3 blocks"):
        create_score("attn_entropy", block=3).score(x)
    with pytest.raises(VitqbenchError, match="must be a non-empty numeric 3-D array"):
        create_score("attn_entropy").score(ScoreInputs(attn_entropy=np.ones((4, 3))))
