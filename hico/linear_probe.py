"""The linear probe of the evaluation protocol, solved to its optimum.

The protocol (the linear evaluation USCL and HiCo publish, as scikit-learn's
`LogisticRegression(C=1)` defines it) fits, on standardised features x_i (d floats) with labels
y_i in K classes, multinomial logistic regression with an L2 penalty:

    minimise over W (d x K), b (K):   C * sum_i CE(softmax(W^T x_i + b), y_i)  +  1/2 ||W||^2

(b is not penalised). The problem is strictly convex, so it has one optimum, and the probe's
accuracy is its accuracy there. scikit-learn's L-BFGS stops at tol 1e-4 or 1,000 iterations, far
from that optimum on embeddings (predicted probabilities differed from the optimum's by up to 0.6),
and took about a minute for the Explore table on two cores.

How `fit_logistic` gets there quickly:
- Embeddings of one network are strongly correlated, so the problem is badly conditioned: the
  eigenvalues of X^T X span many orders of magnitude. With X^T X = Q diag(lambda) Q^T it
  optimises U in W = Q diag(s) U, s_j = (beta lambda_j + 1/C)^(-1/2): there the Hessian is close to
  the identity wherever the probabilities' curvature p (1 - p) is about beta.
- L-BFGS (memory 50) with an analytic gradient. Each step costs two n x d x K products, and those
  run in float32 (3x faster than float64 at d = 768): the gradient's float32 error is far below the
  stop test, and the logits are kept in float64 as a running sum of the steps' float32 increments,
  so the line search compares losses whose error shrinks with the step. The logits are recomputed
  exactly every REFRESH steps, and the stop test is always passed on an exact float64 gradient.
Measured on the demo model's embeddings (2,560 training frames, 8 classes, one core): 300 to 450
steps, 0.4 to 2.4 s for d = 256 to 768, against 450 to 750 float64 steps and 0.8 to 5.6 s with
memory 20, beta 0.005 and float64 products. Starting a fold from another fold's optimum saved only
5 to 10% of the steps (the tail, not the start, takes them), so folds start from zero.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import solve_triangular

# The typical curvature p (1 - p) of a fitted probe's probabilities. On the trained demo model's
# embeddings 0.001 took 10 to 20% fewer steps than 0.005 (and 0.1 about 4x more); on untrained
# ones 0.001 to 0.005 were the fastest.
BETA = 0.001
GTOL = 1e-7  # largest entry of the gradient of the mean objective, in the preconditioned basis
MEMORY = 50  # L-BFGS pairs kept: 50 took 25 to 35% fewer steps than 20
REFRESH = 25  # steps between exact float64 recomputations of the logits


def fit_logistic(x: np.ndarray, y: np.ndarray, classes: int, C: float = 1.0, gtol: float = GTOL,
                 max_iter: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """The optimum of L2-penalised multinomial logistic regression (see the module docstring).

    x: n x d features (standardise them first); y: n class indices in [0, classes), every class
    present; C: inverse penalty strength, as scikit-learn's. Returns (W: d x classes, b: classes),
    float64. Stops when the largest entry of the exact gradient of the mean objective in the
    preconditioned basis is below gtol (1e-7: probabilities within about 2e-3 of the exact optimum).
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
    problem = _Softmax((x @ q) * scale, y, classes, scale ** 2 / C)
    u, b = _lbfgs(problem, np.zeros((d, classes)), np.zeros(classes), gtol * n, max_iter)
    return (q * scale) @ u, b


class _Softmax:
    """The objective in the preconditioned basis: z (n x d), penalty (d) on U's rows, b free.

    Parameters travel as one vector theta = [U.ravel(), b] (d * K + K floats)."""

    def __init__(self, z: np.ndarray, y: np.ndarray, classes: int, penalty: np.ndarray):
        self.z, self.z32 = z, z.astype(np.float32)
        self.y, self.rows, self.classes = y, np.arange(len(y)), classes
        self.onehot = np.eye(classes)[y]
        self.penalty = penalty[:, None]

    def split(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return theta[:-self.classes].reshape(-1, self.classes), theta[-self.classes:]

    def logits(self, theta: np.ndarray, exact: bool) -> np.ndarray:
        """n x K logits of theta; float32 products unless exact (then the bias is added too)."""
        u, b = self.split(theta)
        if exact:
            return self.z @ u + b
        return (self.z32 @ u.astype(np.float32)).astype(np.float64) + b

    def value(self, logits: np.ndarray, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """(objective, residual softmax - onehot: n x K) at theta, whose logits are given."""
        u = self.split(theta)[0]
        top = logits.max(axis=1, keepdims=True)
        # e^-200 is 1e-87: as good as 0 here, and it keeps subnormal numbers (for which x86 is
        # tens of times slower) out of every step; a fitted probe is confident, so they would come.
        exp = np.exp(np.maximum(logits - top, -200.0))
        total = exp.sum(axis=1, keepdims=True)
        loss = (np.log(total) + top).sum() - logits[self.rows, self.y].sum() + 0.5 * float((self.penalty * u * u).sum())
        return float(loss), exp / total - self.onehot

    def gradient(self, residual: np.ndarray, theta: np.ndarray, exact: bool) -> np.ndarray:
        u = self.split(theta)[0]
        if exact:
            g = self.z.T @ residual
        else:
            g = (self.z32.T @ residual.astype(np.float32)).astype(np.float64)
        return np.concatenate([(g + self.penalty * u).ravel(), residual.sum(axis=0)])


def _lbfgs(problem: _Softmax, u: np.ndarray, b: np.ndarray, gtol: float, max_iter: int,
           ) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the problem with L-BFGS from (u, b) until the exact gradient's largest entry is
    below gtol (or max_iter steps). Steps are backtracked until the Armijo condition holds; the
    initial inverse Hessian is the identity (the preconditioned problem's Hessian is about that),
    later scaled as usual by s.y / y.y. Logits are updated by each step's float32 increment and
    recomputed exactly every REFRESH steps and before the stop test."""
    theta = np.concatenate([u.ravel(), b])
    logits = problem.logits(theta, exact=True)
    value, residual = problem.value(logits, theta)
    grad = problem.gradient(residual, theta, exact=True)
    exact = True
    memory = _Memory(len(theta))
    for step in range(1, max_iter + 1):
        if np.abs(grad).max() < gtol:
            if exact:
                break
            logits = problem.logits(theta, exact=True)  # confirm on the exact gradient
            value, residual = problem.value(logits, theta)
            grad, exact = problem.gradient(residual, theta, exact=True), True
            continue
        direction = -memory.apply(grad)
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction (rounding): restart from the gradient
            memory.clear()
            direction, slope = -grad, -float(grad @ grad)
        change = problem.logits(direction, exact=False)
        t = 1.0
        for _ in range(60):
            new_value, new_residual = problem.value(logits + t * change, theta + t * direction)
            if new_value <= value + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break  # no decrease left at this precision: as optimal as float64 allows
        new_theta = theta + t * direction
        exact = step % REFRESH == 0
        if exact:
            logits = problem.logits(new_theta, exact=True)
            new_value, new_residual = problem.value(logits, new_theta)
        else:
            logits = logits + t * change
        new_grad = problem.gradient(new_residual, new_theta, exact)
        memory.add(new_theta - theta, new_grad - grad)
        theta, value, grad = new_theta, new_value, new_grad
    return problem.split(theta)


class _Memory:
    """The L-BFGS inverse-Hessian approximation H from the last MEMORY steps s_i and gradient
    changes y_i, applied in the compact form of Byrd, Nocedal and Schnabel (1994):

        H g = gamma g + S p - gamma Y w,   w = R^-1 S^T g,   p = R^-T ((D + gamma Y^T Y) w - gamma Y^T g)

    with S, Y the pairs as columns (oldest first), R the upper triangle of S^T Y, D its diagonal and
    gamma = s.y / y.y of the newest pair: four MEMORY x size products per step instead of the
    two-loop recursion's 4 * MEMORY vector operations. Pairs live in a ring; the small products
    S^T Y and Y^T Y are updated as each pair arrives."""

    def __init__(self, size: int):
        self.s, self.y = np.zeros((MEMORY, size)), np.zeros((MEMORY, size))
        self.sy, self.yy = np.zeros((MEMORY, MEMORY)), np.zeros((MEMORY, MEMORY))
        self.count = 0  # pairs held
        self.next = 0  # ring slot the next pair goes to (the oldest pair's, once full)

    def clear(self) -> None:
        self.s[:], self.y[:], self.count, self.next = 0.0, 0.0, 0, 0

    def add(self, s: np.ndarray, y: np.ndarray) -> None:
        sy = float(s @ y)
        if not sy > 1e-12 * float(y @ y):
            return  # curvature not positive (rounding): keep the approximation positive definite
        k = self.next
        self.s[k], self.y[k] = s, y
        self.sy[k, :] = self.y @ s  # s_k . y_j
        self.sy[:, k] = self.s @ y  # s_i . y_k
        self.yy[k, :] = self.yy[:, k] = self.y @ y
        self.next, self.count = (k + 1) % MEMORY, min(self.count + 1, MEMORY)

    def apply(self, g: np.ndarray) -> np.ndarray:
        if self.count == 0:
            return g.copy()
        order = (self.next - self.count + np.arange(self.count)) % MEMORY  # oldest first
        newest = order[-1]
        gamma = self.sy[newest, newest] / self.yy[newest, newest]
        sy = self.sy[np.ix_(order, order)]
        r = np.triu(sy)
        sg, yg = (self.s @ g)[order], (self.y @ g)[order]
        w = solve_triangular(r, sg)
        p = solve_triangular(r, np.diag(sy) * w + gamma * (self.yy[np.ix_(order, order)] @ w - yg), trans="T")
        cs, cy = np.zeros(MEMORY), np.zeros(MEMORY)
        cs[order], cy[order] = p, -gamma * w
        return gamma * g + self.s.T @ cs + self.y.T @ cy


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
