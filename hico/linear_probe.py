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
- Embeddings of one network are strongly correlated: on the demo model's, 50 to 140 of 256 to 768
  eigenvalues of X^T X are within 1e-4 of the largest. With X^T X = Q diag(lambda) Q^T it
  optimises U in W = Q diag(s) U, s_j = (beta lambda_j + 1/C)^(-1/2), which evens out the
  curvature of the weak directions; the strong ones (largest lambda first) are left to the
  preconditioner below.
- Newton's method with a backtracking line search. Each Newton system H dx = -g is solved by
  conjugate gradients, preconditioned by the exact Hessian on the TOP strongest directions and
  the bias (a (TOP + 1) K square matrix, factorised once per Newton step) and by the Hessian's
  diagonal on the other directions. The curvature that varies from sample to sample (confident
  frames add almost none, frames near a class boundary most) lives in those few strong
  directions, which is what made first-order methods slow. CG stops at Eisenstat and Walker's
  relative residual (loose while Newton's model of the objective is poor, tight once it converges
  fast), and never below what the stop test needs.
- Hessian-vector products (two n x d x K products each) run in float32; the stop test is passed
  on exact float64 logits and gradient.
Measured on all 25 fits of the Explore table (5 features x 5 folds, 2,560 training frames of 8
classes, d = 256 to 768, one core): on the demo model's embeddings 10 to 12 Newton steps and 48
to 98 CG steps per fit, 6.5 s in all (0.13 s at d = 256 to 0.68 s at d = 768) against 21.6 s for
the L-BFGS (memory 50) used before; on its untrained network's, 7.4 s against 10.8 s. Both stop
at the same test; against a solve to gtol 1e-12, probabilities were within 6e-4 (demo) and 1e-3
(untrained) of the optimum, L-BFGS's within 2e-3 and 2.5e-3.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve

BETA = 0.001  # the curvature p (1 - p) the weak directions are scaled for
GTOL = 1e-7  # largest entry of the gradient of the mean objective, in the preconditioned basis
TOP = 24  # strongest directions whose Hessian block the preconditioner holds exactly (16 to 32 measured best)
RIDGE = 1e-9  # per sample, added to the preconditioner's diagonal: the bias's all-classes shift is flat


def fit_logistic(x: np.ndarray, y: np.ndarray, classes: int, C: float = 1.0, gtol: float = GTOL,
                 max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The optimum of L2-penalised multinomial logistic regression (see the module docstring).

    x: n x d features (standardise them first); y: n class indices in [0, classes), every class
    present; C: inverse penalty strength, as scikit-learn's. Returns (W: d x classes, b: classes),
    float64. Stops when the largest entry of the exact gradient of the mean objective in the
    preconditioned basis is below gtol (1e-7: probabilities within about 1e-3 of the exact optimum),
    or after max_iter Newton steps.
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
    x32 = x.astype(np.float32)
    lam, q = np.linalg.eigh((x32.T @ x32).astype(np.float64))  # a basis only: float32 products do
    lam, q = lam[::-1], q[:, ::-1]  # strongest first
    scale = 1.0 / np.sqrt(np.clip(lam, 0.0, None) * BETA + 1.0 / C)
    problem = _Softmax(x, q * scale, y, classes, scale ** 2 / C)
    u, b = _newton(problem, gtol * len(x), max_iter)
    return problem.basis @ u, b


class _Softmax:
    """The objective in the preconditioned basis z = x basis (n x d, strongest direction first),
    basis = Q diag(s) with Q orthogonal, penalty_j = s_j^2 / C on U's rows, b free:
    f(U, b) = sum_i CE(z_i U + b, y_i) + 1/2 sum_j penalty_j |U_j|^2. The Newton steps use z in
    float32; exact values go through x and the basis in float64."""

    def __init__(self, x: np.ndarray, basis: np.ndarray, y: np.ndarray, classes: int, penalty: np.ndarray):
        self.x, self.basis = x, basis
        self.z32 = x.astype(np.float32) @ basis.astype(np.float32)
        self.y, self.rows, self.classes = y, np.arange(len(y)), classes
        self.onehot = np.eye(classes)[y]
        self.penalty = penalty[:, None]
        top = min(TOP, basis.shape[1])
        # the strongest directions with the bias as a column, in float64 for the preconditioner's block
        self.top = np.concatenate([self.z32[:, :top], np.ones((len(x), 1), np.float32)], axis=1).astype(np.float64)
        self.rest_squared = self.z32[:, top:] ** 2

    def exact_logits(self, u: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.x @ (self.basis @ u) + b

    def value(self, logits: np.ndarray, u: np.ndarray) -> tuple[float, np.ndarray]:
        """(objective, probabilities: n x K) at (u, b) whose logits are given."""
        top = logits.max(axis=1, keepdims=True)
        # e^-200 is 1e-87: as good as 0 here, and it keeps subnormal numbers (for which x86 is
        # tens of times slower) out of every step; a fitted probe is confident, so they would come.
        exp = np.exp(np.maximum(logits - top, -200.0))
        total = exp.sum(axis=1, keepdims=True)
        loss = (np.log(total) + top).sum() - logits[self.rows, self.y].sum() + 0.5 * float((self.penalty * u * u).sum())
        return float(loss), exp / total

    def gradient(self, probs: np.ndarray, u: np.ndarray, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        residual = probs - self.onehot
        if exact:
            g = self.basis.T @ (self.x.T @ residual)
        else:
            g = (self.z32.T @ residual.astype(np.float32)).astype(np.float64)
        return g + self.penalty * u, residual.sum(axis=0)

    def hessian_product(self, probs: np.ndarray, v: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """H (v, c) at probabilities probs: the softmax curvature diag(p) - p p^T of each row applied
        to the row's logit change z_i v + c, summed back through z, plus the penalty."""
        change = self.z32 @ v.astype(np.float32) + c.astype(np.float32)
        curved = probs * change - probs * (probs * change).sum(axis=1, keepdims=True)
        return ((self.z32.T @ curved.astype(np.float32)).astype(np.float64) + self.penalty * v,
                curved.sum(axis=0, dtype=np.float64))

    def preconditioner(self, probs: np.ndarray):
        """M^-1 as a function of (v, c): the exact Hessian on the TOP strongest directions and the
        bias, factorised, and the Hessian's diagonal on the other directions."""
        n, k = probs.shape
        top = self.top
        r = top.shape[1]
        spread = (top[:, :, None] * probs[:, None, :]).reshape(n, r * k)  # row i: z_i (x) p_i
        block = -(spread.T @ spread)
        weighted = (top.T @ spread).reshape(r, r, k)  # [a, b, j] = sum_i z_ia z_ib p_ij
        for j in range(k):  # on class j's diagonal block
            block[j::k, j::k] += weighted[:, :, j]
        block[np.diag_indices_from(block)] += np.repeat(np.append(self.penalty[:r - 1, 0], 0.0), k) + RIDGE * n
        factor = cho_factor(block)
        rest = (self.rest_squared.T @ (probs * (1 - probs)).astype(np.float32)).astype(np.float64)
        rest += self.penalty[r - 1:]

        def solve(v: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            head = cho_solve(factor, np.concatenate([v[:r - 1], c[None]]).ravel()).reshape(r, k)
            return np.concatenate([head[:r - 1], v[r - 1:] / rest]), head[r - 1]

        return solve


def _newton(problem: _Softmax, gtol: float, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the problem from zero until the exact gradient's largest entry is below gtol (or
    max_iter Newton steps): each step a preconditioned conjugate-gradient solve of H dx = -g to a
    relative residual eta (Eisenstat and Walker 1996, choice 2: 0.9 (|g_k| / |g_k-1|)^2, at most
    0.5: loose while Newton's model is poor, tight once it converges fast), then backtracking until
    the Armijo condition holds.
    Logits are updated by each step's float32 change and recomputed exactly for the stop test."""
    (n, d), k = problem.z32.shape, problem.classes
    u, b = np.zeros((d, k)), np.zeros(k)
    logits = np.zeros((n, k))
    value, probs = problem.value(logits, u)
    exact = True
    last_norm = last_eta = None
    for _ in range(max_iter + 1):
        gu, gb = problem.gradient(probs, u, exact)
        if max(np.abs(gu).max(), np.abs(gb).max()) < gtol:
            if exact:
                break
            logits = problem.exact_logits(u, b)  # confirm on the exact gradient
            value, probs = problem.value(logits, u)
            exact = True
            continue
        exact = False
        norm = float(np.sqrt((gu * gu).sum() + gb @ gb))
        eta = 0.5
        if last_norm is not None:  # Eisenstat and Walker's second choice, with their safeguard
            eta = min(0.5, 0.9 * (norm / last_norm) ** 2)
            if 0.9 * last_eta ** 2 > 0.1:
                eta = max(eta, 0.9 * last_eta ** 2)
        last_norm, last_eta = norm, eta
        # no more accurate than needed: a residual below gtol / 2 already passes the stop test
        du, db = _conjugate_gradients(problem, probs, gu, gb, max(eta * norm, 0.5 * gtol))
        change = (problem.z32 @ du.astype(np.float32)).astype(np.float64) + db
        slope = float((gu * du).sum() + gb @ db)
        t = 1.0
        for _ in range(60):
            new_value, new_probs = problem.value(logits + t * change, u + t * du)
            if new_value <= value + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break  # no decrease left at this precision: as optimal as float64 allows
        u, b, logits = u + t * du, b + t * db, logits + t * change
        value, probs = new_value, new_probs
    return u, b


def _conjugate_gradients(problem: _Softmax, probs: np.ndarray, gu: np.ndarray, gb: np.ndarray, target: float,
                         max_steps: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """An approximate Newton direction: H (du, db) = -(gu, gb) by preconditioned CG, until the
    residual's norm is below target."""
    solve = problem.preconditioner(probs)
    du, db = np.zeros_like(gu), np.zeros_like(gb)
    ru, rb = -gu, -gb
    su, sb = solve(ru, rb)
    pu, pb = su, sb
    rs = float((ru * su).sum() + rb @ sb)
    for _ in range(max_steps):
        hu, hb = problem.hessian_product(probs, pu, pb)
        alpha = rs / float((pu * hu).sum() + pb @ hb)
        du, db = du + alpha * pu, db + alpha * pb
        ru, rb = ru - alpha * hu, rb - alpha * hb
        if np.sqrt((ru * ru).sum() + rb @ rb) < target:
            break
        su, sb = solve(ru, rb)
        rs_new = float((ru * su).sum() + rb @ sb)
        pu, pb = su + (rs_new / rs) * pu, sb + (rs_new / rs) * pb
        rs = rs_new
    return du, db


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
