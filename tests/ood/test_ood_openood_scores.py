"""The scores added for OpenOOD parity, each against a restatement of OpenOOD's postprocessor
(``openood/postprocessors/*.py``, ``openood/networks/{ash,scale}_net.py``) on fixed float32 arrays,
against the paper where OpenOOD deviates, and on ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import entropy
from sklearn.covariance import EmpiricalCovariance
from sklearn.metrics import pairwise_distances_argmin_min

from vitqbench.errors import VitqbenchError
from vitqbench.ood import ScoreInputs, create_score

RTOL = 1e-5  # the target for float32 inputs


def arrays(seed=0, n=300, dim=24, classes=6, relu=False):
    """Fixed float32 fit and test sets: features, labels, logits from a linear head."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(classes, dim))
    weight = (centers + rng.normal(size=(classes, dim))).astype(np.float32)  # mostly right: SHE has patterns
    bias = rng.normal(size=classes).astype(np.float32)

    def sample(m, shift=0.0):
        labels = rng.integers(0, classes, m)
        features = centers[labels] + rng.normal(size=(m, dim)) + shift
        features = np.maximum(features, 0) if relu else features
        features = features.astype(np.float32)
        return ScoreInputs(logits=features @ weight.T + bias, features=features, labels=labels, head=(weight, bias))

    return sample(n), sample(n // 2, shift=0.7)


def score(name, fit, test, **params):
    return create_score(name, **params).fit(fit).score(test)


def test_rmds_matches_openood():
    fit, test = arrays(1)
    feats, labels = fit.features.astype(np.float64), fit.labels
    means = np.stack([feats[labels == c].mean(0) for c in range(6)])
    precision = EmpiricalCovariance(assume_centered=False).fit(feats - means[labels]).precision_
    whole_mean = feats.mean(0)
    whole_precision = EmpiricalCovariance(assume_centered=False).fit(feats - whole_mean).precision_
    t = test.features.astype(np.float64)
    background = -np.einsum("nd,de,ne->n", t - whole_mean, whole_precision, t - whole_mean)
    class_scores = np.stack([-np.einsum("nd,de,ne->n", t - m, precision, t - m) - background for m in means], 1)
    np.testing.assert_allclose(score("rmds", fit, test), class_scores.max(1), rtol=RTOL)


def test_klm_matches_openood_including_a_class_never_predicted():
    fit, test = arrays(2)
    logits = fit.logits.copy()
    logits[:, 5] -= 100.0  # class 5 is never predicted on the fit set: its template is one-hot
    fit = ScoreInputs(logits=logits)
    probs, preds = softmax(logits.astype(np.float64), axis=1), logits.argmax(1)
    templates = np.stack([probs[preds == c].mean(0) if (preds == c).any() else np.eye(6)[c] for c in range(6)])
    want = -pairwise_distances_argmin_min(softmax(test.logits.astype(np.float64), 1), templates, metric=entropy)[1]
    np.testing.assert_allclose(score("klm", fit, test), want, rtol=RTOL)
    assert not (preds == 5).any() and np.isfinite(want).all()


def test_klm_of_a_sample_matching_a_template_is_zero():
    fit = ScoreInputs(logits=np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]))
    got = create_score("klm").fit(fit).score(fit)
    np.testing.assert_allclose(got, [0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("p", [90, 50])
def test_dice_matches_openood(p):
    fit, test = arrays(3)
    weight, bias = fit.head
    mean_act = fit.features.mean(0)
    contrib = mean_act[None, :] * weight
    masked = weight * (contrib > np.percentile(contrib, p))
    vote = test.features[:, None, :].astype(np.float64) * masked
    want = logsumexp(vote.sum(2) + bias, axis=1)
    np.testing.assert_allclose(score("dice", fit, test, p=p), want, rtol=RTOL)


def test_dice_drops_contributions_tied_with_the_threshold():
    head = (np.array([[1.0, 1.0, 2.0, 3.0]]), np.zeros(1))
    fit = ScoreInputs(features=np.ones((2, 4)), head=head)  # contributions 1, 1, 2, 3
    dice = create_score("dice", p=25).fit(fit)  # 25th percentile = 1: both tied weights go
    np.testing.assert_array_equal(dice.weight_, [[0.0, 0.0, 2.0, 3.0]])


@pytest.mark.parametrize("metric", ["inner_product", "euclidean", "cosine"])
def test_she_matches_openood(metric):
    fit, test = arrays(4)
    preds = fit.logits.argmax(1)
    patterns = np.stack([fit.features[(fit.labels == c) & (preds == c)].mean(0) for c in range(6)])
    assert np.isfinite(patterns).all()
    target = torch.from_numpy(patterns[test.logits.argmax(1)].astype(np.float64))
    feature = torch.from_numpy(test.features.astype(np.float64))
    if metric == "inner_product":
        want = torch.sum(feature * target, dim=1)
    elif metric == "euclidean":
        want = -torch.sqrt(torch.sum((feature - target) ** 2, dim=1))
    else:
        want = torch.cosine_similarity(feature, target, dim=1)
    np.testing.assert_allclose(score("she", fit, test, metric=metric), want.numpy(), rtol=RTOL)


def test_she_ties_in_the_prediction_take_the_lower_class_and_patternless_classes_score_nan():
    features = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    logits = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    fit = ScoreInputs(logits=logits, features=features, labels=np.array([0, 1, 0]))  # class 2's one sample is wrong
    she = create_score("she").fit(fit)
    test = ScoreInputs(logits=np.array([[2.0, 2.0, 0.0], [0.0, 0.0, 1.0]]), features=np.array([[3.0, 4.0], [1.0, 1.0]]))
    got = she.score(test)
    assert got[0] == 3.0  # tie between classes 0 and 1: class 0's pattern (1, 0)
    assert np.isnan(got[1])


def openood_nnguide(fit_features, fit_logits, test_features, test_logits, k):
    normalizer = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True) + 1e-10  # noqa: E731 - OpenOOD's, verbatim precedence
    bank = normalizer(fit_features) * logsumexp(fit_logits, axis=-1)[:, None]
    inner = normalizer(test_features) @ bank.T  # faiss IndexFlatIP: the k largest inner products
    conf = -np.sort(-inner, axis=1)[:, :k].mean(1)
    return conf * logsumexp(test_logits, axis=-1)


def test_nnguide_matches_openood_on_its_bank():
    fit, test = arrays(5)
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    want = openood_nnguide(f64(fit.features), f64(fit.logits), f64(test.features), f64(test.logits), 10)
    np.testing.assert_allclose(score("nnguide", fit, test, K=10, alpha=1.0), want, rtol=RTOL)
    # alpha < 1: the bank is a fixed random subset of the fit set, drawn with seed 0
    rows = np.sort(np.random.default_rng(0).choice(len(fit.features), 150, replace=False))
    want = openood_nnguide(f64(fit.features[rows]), f64(fit.logits[rows]), f64(test.features), f64(test.logits), 10)
    np.testing.assert_allclose(score("nnguide", fit, test, K=10, alpha=0.5), want, rtol=RTOL)


def test_nnguide_counts_tied_neighbours_once_each_and_needs_k_bank_rows():
    features = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    logits = np.zeros((3, 2))  # energy log 2 everywhere
    nng = create_score("nnguide", K=2, alpha=1.0).fit(ScoreInputs(logits=logits, features=features))
    got = nng.score(ScoreInputs(logits=np.zeros((1, 2)), features=np.array([[1.0, 0.0]])))
    np.testing.assert_allclose(got, [np.log(2) * np.log(2)], rtol=1e-6)  # both tied neighbours, similarity 1
    with pytest.raises(VitqbenchError, match="keeps 1 of 3 fit samples, fewer than K=2"):
        create_score("nnguide", K=2, alpha=0.2).fit(ScoreInputs(logits=logits, features=features))


def openood_fdbd(fit, test, distance_as_normalizer):
    w, _ = fit.head
    train_mean = fit.features.astype(np.float64).mean(0)
    classes = w.shape[0]
    denominator = np.zeros((classes, classes))
    for p in range(classes):
        d = np.linalg.norm(w - w[p, :], axis=1)
        d[p] = 1
        denominator[p, :] = d
    output, feature = test.logits.astype(np.float64), test.features.astype(np.float64)
    values, nn_idx = output.max(1), output.argmax(1)
    logits_sub = np.abs(output - values[:, None])
    center = train_mean if distance_as_normalizer else 0.0
    return np.sum(logits_sub / denominator[nn_idx], axis=1) / np.linalg.norm(feature - center, axis=1)


@pytest.mark.parametrize("normalizer", [True, False])
def test_fdbd_matches_openood_and_is_the_papers_average_times_c_minus_1(normalizer):
    fit, test = arrays(6)
    got = score("fdbd", fit, test, distance_as_normalizer=normalizer)
    np.testing.assert_allclose(got, openood_fdbd(fit, test, normalizer), rtol=RTOL)
    # The paper: the mean over the C - 1 other classes of each decision boundary's distance.
    w, b = (a.astype(np.float64) for a in fit.head)
    z = test.features.astype(np.float64)
    pred = test.logits.argmax(1)
    distances = [
        [abs((w[p] - w[c]) @ zi + b[p] - b[c]) / np.linalg.norm(w[p] - w[c]) for c in range(6) if c != p]
        for zi, p in zip(z, pred, strict=True)
    ]
    center = fit.features.astype(np.float64).mean(0) if normalizer else 0.0
    paper = np.mean(distances, axis=1) / np.linalg.norm(z - center, axis=1)
    np.testing.assert_allclose(got / (6 - 1), paper, rtol=1e-4)  # logits are float32: the boundaries are not


def torch_ash(x, percentile, variant):
    """OpenOOD's openood/networks/{ash,scale}_net.py shaping, on [N, D] as [N, D, 1, 1]."""
    x = torch.from_numpy(x.astype(np.float64)).clone().view(len(x), -1, 1, 1)
    original = x.clone()
    b, c, h, w = x.shape
    s1 = x.sum(dim=[1, 2, 3])
    n = x.shape[1:].numel()
    k = n - int(np.round(n * percentile / 100.0))
    t = x.view((b, c * h * w))
    v, i = torch.topk(t, k, dim=1)
    if variant == "ash_b":
        t.zero_().scatter_(dim=1, index=i, src=(s1 / k).unsqueeze(dim=1).expand(v.shape))
        return x.view(b, -1).numpy()
    t.zero_().scatter_(dim=1, index=i, src=v)
    if variant == "ash_p":
        return x.view(b, -1).numpy()
    s2 = x.sum(dim=[1, 2, 3])
    scale = torch.exp((s1 / s2)[:, None, None, None])
    return ((x if variant == "ash_s" else original) * scale).view(b, -1).numpy()


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("ash", {}),
        ("ash", {"variant": "ash_p", "percentile": 65}),
        ("ash", {"variant": "ash_s", "percentile": 80}),
        ("scale", {}),
        ("scale", {"percentile": 95}),
    ],
)
def test_ash_and_scale_match_openood(name, params):
    _, test = arrays(7, relu=True)  # the papers shape post-ReLU activations
    weight, bias = test.head
    default_percentile, default_variant = (90, "ash_b") if name == "ash" else (85, "scale")
    shaped = torch_ash(
        test.features, params.get("percentile", default_percentile), params.get("variant", default_variant)
    )
    want = logsumexp(shaped @ weight.astype(np.float64).T + bias, axis=1)
    np.testing.assert_allclose(create_score(name, **params).score(test), want, rtol=RTOL)


def test_ash_keeps_the_lower_feature_index_on_a_tie_at_the_cut():
    features = np.array([[3.0, 1.0, 1.0, 0.0]])  # 50 %: keep 2 of 4; the second place is tied
    head = (np.eye(4), np.zeros(4))
    got = create_score("ash", variant="ash_p", percentile=50).score(ScoreInputs(features=features, head=head))
    np.testing.assert_allclose(got, logsumexp([3.0, 1.0, 0.0, 0.0]))
    with pytest.raises(VitqbenchError, match="keeps no feature"):
        create_score("scale", percentile=99.9).score(ScoreInputs(features=features, head=head))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: create_score("ash", variant="ash_rand"), "ash variant must be one of ash_b, ash_p, ash_s"),
        (lambda: create_score("she", metric="l1"), "she metric"),
        (lambda: create_score("fdbd", distance_as_normalizer="yes"), "true or false"),
        (lambda: create_score("nnguide", alpha=0), "nnguide alpha must be > 0"),
        (lambda: create_score("ash").score(ScoreInputs(features=np.ones((2, 3)))), "classifier head"),
        (lambda: create_score("rmds").fit(ScoreInputs(features=np.ones((5, 3)))), "needs class labels"),
        (lambda: create_score("she").fit(ScoreInputs(logits=np.ones((5, 2)), features=np.ones((5, 3)))), "labels"),
        (lambda: create_score("fdbd").fit(ScoreInputs(features=np.ones((5, 3)))), "classifier head"),
    ],
)
def test_missing_inputs_are_one_clear_line(call, message):
    with pytest.raises(VitqbenchError, match=message):
        call()
