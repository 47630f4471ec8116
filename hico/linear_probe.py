"""The linear probe of the evaluation protocol, solved to its optimum.

The protocol (the linear evaluation USCL and HiCo publish, as scikit-learn's
`LogisticRegression(C=1)` defines it) fits, on standardised features x_i (d floats) with labels
y_i in K classes, multinomial logistic regression with an L2 penalty:

    minimise over W (d x K), b (K):   C * sum_i CE(softmax(W^T x_i + b), y_i)  +  1/2 ||W||^2

(b is not penalised). The problem is strictly convex, so it has one optimum, and the probe's
accuracy is its accuracy there. scikit-learn's L-BFGS stops at tol 1e-4 or 1,000 iterations, far
from that optimum on embeddings (predicted probabilities differed from the optimum's by up to 0.6),
and took about a minute for the Explore table on two cores.

Embeddings of one network are strongly correlated, so the problem is badly conditioned: the
eigenvalues of X^T X span many orders of magnitude, and plain L-BFGS needs thousands of steps.
`fit_logistic` runs L-BFGS in a basis that undoes most of it. With X^T X = Q diag(lambda) Q^T it
optimises U in W = Q diag(s) U, s_j = (beta lambda_j + 1/C)^(-1/2): there the Hessian is close to
the identity wherever the probabilities' curvature p (1 - p) is about beta. A short L-BFGS with an
analytic gradient (numpy, float64) then reaches the optimum in about 200 to 300 evaluations on an
untrained network's embeddings, and 700 to 1,000 on a trained model's whose variance sits in a
few directions (measured on the demo set, 2,560 training frames, d 256 to 768, 8 classes).
"""

from __future__ import annotations

import numpy as np

# The typical curvature p (1 - p) of a fitted probe's probabilities. On untrained embeddings
# 0.001 to 0.005 converged in the fewest evaluations (170 to 350); on the trained demo model's,
# 0.0005 to 0.005 took 700 to 1,000 and 0.1 took 3,450.
BETA = 0.005
GTOL = 1e-7  # largest entry of the gradient of the mean objective, in the preconditioned basis


def fit_logistic(x: np.ndarray, y: np.ndarray, classes: int, C: float = 1.0, gtol: float = GTOL,
                 max_iter: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """The optimum of L2-penalised multinomial logistic regression (see the module docstring).

    x: n x d features (standardise them first); y: n class indices in [0, classes), every class
    present; C: inverse penalty strength, as scikit-learn's. Returns (W: d x classes, b: classes),
    float64. Stops when the largest gradient entry of the mean objective in the preconditioned
    basis is below gtol (1e-7: probabilities within about 1e-3 of the exact optimum).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"x must be an n x d matrix with n >= 1, got shape {x.shape}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be {len(x)} integer class indices, got {y.dtype} of shape {y.shape}")
    if classes < 2 or y.min() < 0 or y.max() >= classes or len(np.unique(y)) != classes:
        raise ValueError(f"y must hold every class index 0..{classes - 1} (classes={classes}), "
                         f"got {np.unique(y).tolist()}")
    if not C > 0:
        raise ValueError(f"C must be positive, got {C}")
    n, d = x.shape
    lam, q = np.linalg.eigh(x.T @ x)
    scale = 1.0 / np.sqrt(np.clip(lam, 0.0, None) * BETA + 1.0 / C)
    z = (x @ q) * scale  # the features in the preconditioned basis
    penalty = (scale ** 2 / C)[:, None]  # 1/2 ||W||^2 = 1/2 sum_j s_j^2 ||u_j||^2
    onehot = np.eye(classes)[y]
    rows = np.arange(n)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        u, b = theta[:-classes].reshape(d, classes), theta[-classes:]
        logits = z @ u + b
        logits -= logits.max(axis=1, keepdims=True)
        # e^-200 is 1e-87: as good as 0 here, and it keeps subnormal numbers (for which x86 is
        # tens of times slower) out of every step; a fitted probe is confident, so they would come.
        exp = np.exp(np.maximum(logits, -200.0))
        total = exp.sum(axis=1, keepdims=True)
        loss = np.log(total).sum() - logits[rows, y].sum() + 0.5 * float((penalty * u * u).sum())
        residual = exp / total - onehot
        return loss, np.concatenate([(z.T @ residual + penalty * u).ravel(), residual.sum(axis=0)])

    theta = lbfgs(objective, np.zeros(d * classes + classes), gtol * n, max_iter)
    u, b = theta[:-classes].reshape(d, classes), theta[-classes:]
    return (q * scale) @ u, b


def lbfgs(objective, x0: np.ndarray, gtol: float, max_iter: int, memory: int = 20) -> np.ndarray:
    """Minimise a smooth convex function with L-BFGS from x0: `objective(x) -> (value, gradient)`.

    Stops when the largest gradient entry is below gtol. The initial inverse Hessian is the
    identity (the preconditioned problem's Hessian is about the identity), later scaled as usual by
    s.y / y.y; steps are backtracked until the Armijo condition holds. A few lines of numpy instead
    of scipy's L-BFGS-B, whose per-iteration cost was as large as the objective's here.
    """
    x = x0.astype(np.float64)
    value, grad = objective(x)
    steps: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(max_iter):
        if np.abs(grad).max() < gtol:
            break
        direction = -_two_loop(grad, steps)
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction (rounding): restart from the gradient
            steps.clear()
            direction, slope = -grad, -float(grad @ grad)
        t = 1.0
        for _ in range(60):
            new_x = x + t * direction
            new_value, new_grad = objective(new_x)
            if new_value <= value + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break  # no decrease left at this precision: as optimal as float64 allows
        s, y = new_x - x, new_grad - grad
        sy = float(s @ y)
        if sy > 1e-12 * float(y @ y):
            steps.append((s, y, 1.0 / sy))
            if len(steps) > memory:
                steps.pop(0)
        x, value, grad = new_x, new_value, new_grad
    return x


def _two_loop(grad: np.ndarray, steps) -> np.ndarray:
    """The L-BFGS inverse-Hessian approximation applied to grad (Nocedal and Wright, algorithm 7.4)."""
    q = grad.copy()
    alphas = []
    for s, y, rho in reversed(steps):
        alpha = rho * float(s @ q)
        q -= alpha * y
        alphas.append(alpha)
    if steps:
        s, y, _ = steps[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y, rho), alpha in zip(steps, reversed(alphas)):
        q += (alpha - rho * float(y @ q)) * s
    return q


class LinearProbe:
    """Standardise, then `fit_logistic`: the protocol's probe, with scikit-learn's fit/predict_proba
    shape (classes_ are the labels seen in training, sorted)."""

    def __init__(self, C: float = 1.0):
        self.C = C

    def fit(self, x: np.ndarray, labels: np.ndarray) -> "LinearProbe":
        x = np.asarray(x, dtype=np.float64)
        self.mean_ = x.mean(axis=0)
        std = x.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        self.classes_, y = np.unique(np.asarray(labels), return_inverse=True)
        self.coef_, self.intercept_ = fit_logistic((x - self.mean_) / self.scale_, y, len(self.classes_), self.C)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """n x classes probabilities, columns in the order of classes_."""
        logits = ((np.asarray(x, dtype=np.float64) - self.mean_) / self.scale_) @ self.coef_ + self.intercept_
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)
