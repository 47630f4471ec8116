"""The linear probe reaches the optimum of the protocol's objective, on easy and badly conditioned
problems, checked against scikit-learn run to a far tighter tolerance than its default; its
Newton solver's Hessian product and preconditioner are what they say."""

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


def small_problem(n=200, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)) * np.linspace(3, 0.5, d)
    y = np.arange(n) % classes
    problem = linear_probe._Softmax(z, np.eye(d), y, classes, rng.uniform(0.5, 2.0, d))  # basis I: z = x
    u, b = 0.3 * rng.normal(size=(d, classes)), rng.normal(size=classes)
    _, probs = problem.value(z @ u + b, u)
    return problem, u, b, probs, rng


def test_the_hessian_product_is_the_gradients_derivative():
    problem, u, b, probs, rng = small_problem(d=40)
    v, c = rng.normal(size=u.shape), rng.normal(size=b.shape)
    hu, hb = problem.hessian_product(probs, v, c)
    eps = 1e-5
    ends = []
    for sign in (1, -1):
        uu, bb = u + sign * eps * v, b + sign * eps * c
        _, p = problem.value(problem.exact_logits(uu, bb), uu)
        ends.append(problem.gradient(p, uu, exact=True))
    np.testing.assert_allclose(hu, (ends[0][0] - ends[1][0]) / (2 * eps), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(hb, (ends[0][1] - ends[1][1]) / (2 * eps), rtol=1e-4, atol=1e-4)


def test_with_few_directions_the_preconditioner_is_the_exact_inverse_hessian():
    """Up to TOP directions the preconditioner holds the whole Hessian: M^-1 H v = v for every v
    whose bias part sums to 0 over classes (the all-classes shift of b is flat, so only a ridge
    holds it)."""
    problem, u, _, probs, rng = small_problem(d=6)
    assert problem.x.shape[1] <= linear_probe.TOP
    solve = problem.preconditioner(probs)
    v, c = rng.normal(size=u.shape), rng.normal(size=3)
    c -= c.mean()
    change = problem.x @ v + c  # H (v, c) in float64, written out: each row's diag(p) - p p^T
    curved = probs * change - probs * (probs * change).sum(axis=1, keepdims=True)
    back_v, back_c = solve(problem.x.T @ curved + problem.penalty * v, curved.sum(axis=0))
    np.testing.assert_allclose(back_v, v, rtol=1e-6, atol=1e-7)  # the ridge: 2e-7 on the diagonal
    np.testing.assert_allclose(back_c, c, rtol=1e-6, atol=1e-7)
