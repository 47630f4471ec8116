"""The linear probe reaches the optimum of the protocol's objective, on easy and badly conditioned
problems, checked against scikit-learn run to a far tighter tolerance than its default."""

import warnings

import numpy as np
import pytest
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression

from hico import linear_probe
from hico.linear_probe import LinearProbe, fit_logistic


def objective(w, b, x, y, C=1.0):
    """C * sum of cross-entropies + 1/2 ||W||^2, as scikit-learn defines LogisticRegression's."""
    return C * -log_softmax(x @ w + b, axis=1)[np.arange(len(y)), y].sum() + 0.5 * (w ** 2).sum()


def correlated_problem(n=600, d=48, classes=5, rank=6, seed=0):
    """Features like one network's embeddings: a few strong directions shared by all, weak noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(size=(classes, rank))
    latent = centres[y] + 0.8 * rng.normal(size=(n, rank))
    x = latent @ rng.normal(size=(rank, d)) + 0.05 * rng.normal(size=(n, d))
    return (x - x.mean(0)) / x.std(0), y


@pytest.mark.parametrize("C", [1.0, 0.1])
def test_it_reaches_the_optimum_scikit_learn_reaches_with_a_tight_tolerance(C):
    x, y = correlated_problem()
    w, b = fit_logistic(x, y, 5, C=C)
    reference = LogisticRegression(C=C, tol=1e-12, max_iter=100_000, solver="newton-cg").fit(x, y)
    ours = objective(w, b, x, y, C)
    theirs = objective(reference.coef_.T, reference.intercept_, x, y, C)
    assert ours <= theirs + 1e-6 * abs(theirs)
    probs = np.exp(log_softmax(x @ w + b, axis=1))
    np.testing.assert_allclose(probs, reference.predict_proba(x), atol=2e-3)


def test_on_badly_conditioned_features_it_beats_scikit_learns_default_stop():
    """Near-separable classes in a few strong directions of many correlated features: scikit-learn's
    default (tol 1e-4, 100 iterations) stops well short; the probe gets to the optimum."""
    x, y = correlated_problem(n=1200, d=96, rank=4, seed=1)
    x = np.concatenate([x, 30 * x[:, :4] + np.random.default_rng(2).normal(size=(len(x), 4))], axis=1)
    x = (x - x.mean(0)) / x.std(0)
    w, b = fit_logistic(x, y, 5)
    reference = LogisticRegression(tol=1e-12, max_iter=100_000, solver="newton-cg").fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # that it did not converge: the point of the comparison
        default = LogisticRegression().fit(x, y)
    optimum = objective(reference.coef_.T, reference.intercept_, x, y)
    assert objective(w, b, x, y) <= optimum * (1 + 1e-7)
    assert objective(default.coef_.T, default.intercept_, x, y) > optimum * (1 + 2e-5)  # 6e-5 measured


def test_the_probe_standardises_and_keeps_label_order():
    x, y = correlated_problem(classes=3)
    labels = np.array(["c", "a", "b"])[y]
    probe = LinearProbe().fit(5.0 * x + 3.0, labels)
    assert list(probe.classes_) == ["a", "b", "c"]
    probs = probe.predict_proba(5.0 * x + 3.0)
    assert probs.shape == (len(x), 3) and np.allclose(probs.sum(1), 1.0)
    accuracy = (probe.classes_[probs.argmax(1)] == labels).mean()
    reference = LogisticRegression(tol=1e-12, max_iter=100_000, solver="newton-cg").fit(x, labels)
    assert accuracy == pytest.approx((reference.predict(x) == labels).mean())


def test_arguments_are_checked():
    x, y = correlated_problem(n=40, classes=4)
    with pytest.raises(ValueError, match="every class index"):
        fit_logistic(x, y, 5)
    with pytest.raises(ValueError, match="integer class indices"):
        fit_logistic(x, y.astype(float), 4)
    with pytest.raises(ValueError, match="n x d"):
        fit_logistic(x[0], y, 4)
    with pytest.raises(ValueError, match="C must be positive"):
        fit_logistic(x, y, 4, C=0)


def two_loop(g, pairs):
    """The textbook L-BFGS recursion (Nocedal and Wright, algorithm 7.4): the reference for the
    compact form the probe uses."""
    q, alphas = g.copy(), []
    for s, y in reversed(pairs):
        alpha = (s @ q) / (s @ y)
        q -= alpha * y
        alphas.append(alpha)
    s, y = pairs[-1]
    q *= (s @ y) / (y @ y)
    for (s, y), alpha in zip(pairs, reversed(alphas)):
        q += (alpha - (y @ q) / (s @ y)) * s
    return q


@pytest.mark.parametrize("pairs", [1, 7, linear_probe.MEMORY + 13])
def test_the_compact_inverse_hessian_equals_the_two_loop_recursion(pairs):
    """Pairs from a convex quadratic (y = A s); past MEMORY pairs the ring drops the oldest, as the
    recursion's window does."""
    rng = np.random.default_rng(pairs)
    size = 30
    a = rng.normal(size=(size, size))
    a = a @ a.T + 0.1 * np.eye(size)
    memory = linear_probe._Memory(size)
    kept = []
    for _ in range(pairs):
        s = rng.normal(size=size)
        memory.add(s, a @ s)
        kept = (kept + [(s, a @ s)])[-linear_probe.MEMORY:]
    g = rng.normal(size=size)
    np.testing.assert_allclose(memory.apply(g), two_loop(g, kept), rtol=1e-8, atol=1e-10)
    memory.clear()
    np.testing.assert_array_equal(memory.apply(g), g)

