"""Inter-task gradient calibration: task-gradient Gram matrix -> combination coefficients.

Every method here sees the tasks only through the T x T Gram matrix ``G[i, j] = <g_i, g_j>`` of
the task gradients ``g_t = dL_t/dz`` at the shared representation ``z``, and returns coefficients
``c`` (T,) such that the gradient sent into the trunk is ``sum_t c_t g_t``. Working on the Gram
keeps the methods cheap (T x T numbers, never a copy of a gradient) and makes data-parallel
training exact: the calibrator sums the per-rank Grams, so every rank derives the same
coefficients. All coefficient maps below are invariant to a common scale of the gradients, so
how the losses are normalised across ranks does not change them.

Two families differ in what they do to the task heads' own parameters:

* loss-weighting methods (``sum``, ``static``, ``uncertainty``; ``weights_losses = True``) are
  the gradient of the weighted loss ``sum_t c_t L_t``, so the calibrator scales head ``t``'s
  parameter gradients by ``c_t`` as well;
* gradient-manipulation methods (``imtl``, ``imtl_rescaled``, ``bounded``, ``pcgrad``, ``mgda``,
  ``cagrad``, ``aligned``) act
  where the tasks conflict, on the shared representation; each head's parameters serve one task
  and cannot conflict, so they receive the raw ``dL_t/dtheta_t``.

The small solvers run in float64 on the host: the Gram moves there (T^2 numbers, one
synchronisation per step); gradients never leave their device.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from fuller.config import INTER_METHODS

# A task whose gradient norm is below this fraction of the largest one counts as absent (IMTL).
_REL_ZERO = 1e-12
# Tikhonov term on the unit-diagonal cosine matrix solved by IMTL-G (see imtl_coefficients).
_IMTL_RIDGE = 1e-12
# Exact min-norm enumeration visits 2^T - 1 faces; beyond this it is the wrong tool.
_MGDA_MAX_TASKS = 12


def _as_gram(gram: Tensor) -> np.ndarray:
    """The Gram as a symmetric float64 numpy matrix, checked."""
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 1:
        raise ValueError(f"gram: expected a square (T, T) matrix with T >= 1, got {tuple(gram.shape)}")
    g = gram.detach().to("cpu", torch.float64).numpy()
    return 0.5 * (g + g.T)


def _out(c: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(c, dtype=np.float64))


def imtl_coefficients(gram: Tensor) -> Tensor:
    """IMTL-G (Liu et al., ICLR 2021): the aggregate has equal projections on every unit task gradient.

    With ``g = sum_t a_t g_t`` and unit vectors ``u_t = g_t/|g_t|`` the condition ``g.u_t = lam``
    for all t reads ``G a = lam n`` (n: the norms), i.e. ``a = lam G^-1 n``; with ``G = N C N``
    (C: cosines) that is ``a ∝ N^-1 C^-1 1``, normalised so that ``sum_t a_t = 1``. For two
    tasks ``a_1 = |g_2|/(|g_1| + |g_2|)``. The paper's form ``g_1 U^T (D U^T)^-1`` is the same
    solution.

    Degenerate Grams (documented fallbacks):

    * a task with a zero gradient (norm <= 1e-12 of the largest) has no direction to balance;
      it gets coefficient 0 and IMTL-G runs on the others (its term ``c_t g_t`` is 0 anyway);
      if every gradient is zero the coefficients are uniform, 1/T;
    * collinear or otherwise dependent gradients make C singular: C is solved as
      ``(C + 1e-12 I)^-1 1`` through its eigen-decomposition (eigenvalues clamped at 0), which
      changes a well-conditioned solution by a relative ~1e-12/lambda_min(C) and gives the
      continuous limit otherwise (same-direction pair: any mix, weights follow the norms like
      the general formula's limit; opposite pair: the aggregate is 0, as the limit of the
      closed form);
    * if ``sum_t a_t`` is not positive (possible for T >= 3 strongly conflicting tasks), scaling
      to a sum of 1 would turn the aggregate against every task; the coefficients are then
      normalised by ``sum_t |a_t|`` instead, which keeps a positive common projection.
    """
    g = _as_gram(gram)
    t = g.shape[0]
    norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
    live = norms > _REL_ZERO * norms.max()
    if not live.any():
        return _out(np.full(t, 1.0 / t))
    n = norms[live]
    cos = g[np.ix_(live, live)] / np.outer(n, n)
    lam, vec = np.linalg.eigh(cos)
    y = vec @ ((vec.T @ np.ones(len(n))) / (np.clip(lam, 0.0, None) + _IMTL_RIDGE))
    a = y / n
    total = a.sum()
    a = a / total if total > 1e-12 * np.abs(a).sum() else a / np.abs(a).sum()
    c = np.zeros(t)
    c[live] = a
    return _out(c)


def pcgrad_orders(seed: int, step: int, num_tasks: int) -> list[list[int]]:
    """The random task orders PCGrad uses at ``step``: one permutation per task, in task order.

    Drawn from ``numpy.random.default_rng([seed, step])``, so every rank (and the parameter-level
    reference) draws the same orders without communicating.
    """
    if seed < 0 or step < 0:
        raise ValueError(f"seed, step: expected non-negative integers, got {(seed, step)}")
    rng = np.random.default_rng([int(seed), int(step)])
    return [rng.permutation(num_tasks).tolist() for _ in range(num_tasks)]


def pcgrad_coefficients(gram: Tensor, orders: Sequence[Sequence[int]]) -> Tensor:
    """PCGrad (Yu et al., NeurIPS 2020) expressed on the Gram.

    Each task's gradient ``pc_i`` starts as ``g_i``; for every other task ``j`` in ``orders[i]``
    (the paper's ``B \\ g_i`` in random order) it is projected onto the normal plane of ``g_j``
    when they conflict: ``pc_i -= (pc_i.g_j / |g_j|^2) g_j`` if ``pc_i.g_j < 0``. Projections only
    subtract multiples of the ``g_j``, so ``pc_i = sum_k M[i, k] g_k`` and ``pc_i.g_j = (M G)[i, j]``;
    the aggregate ``sum_i pc_i`` has coefficients ``M.sum(0)``. Tasks with a zero gradient never
    conflict.
    """
    g = _as_gram(gram)
    t = g.shape[0]
    if len(orders) != t or any(sorted(o) != list(range(t)) for o in orders):
        raise ValueError(f"orders: expected {t} permutations of range({t}), got {[list(o) for o in orders]}")
    m = np.eye(t)
    for i in range(t):
        for j in orders[i]:
            if j == i or g[j, j] <= 0.0:
                continue
            dot = m[i] @ g[:, j]
            if dot < 0.0:
                m[i, j] -= dot / g[j, j]
    return _out(m.sum(0))


def mgda_coefficients(gram: Tensor) -> Tensor:
    """MGDA (Sener & Koltun 2018; MGDA-UB when applied at z): the min-norm point of the convex hull.

    Solves ``min_a a^T G a`` over the simplex exactly by visiting every face: on a face S the
    minimiser is the KKT point of ``[[G_SS, 1], [1^T, 0]] [a; mu] = [0; 1]`` and counts if
    ``a >= 0``. The global minimiser lies on some face whose KKT system is consistent (if the
    objective is flat along a feasible direction of a face, a smaller face holds an equally good
    point), so the best feasible KKT point over all faces is the exact answer; ties go to the
    smallest support. No gradient normalisation (the paper's "none" option); coefficients sum to 1.
    """
    g = _as_gram(gram)
    t = g.shape[0]
    if t > _MGDA_MAX_TASKS:
        raise ValueError(f"gram: expected at most {_MGDA_MAX_TASKS} tasks for exact MGDA, got {t}")
    scale = np.diag(g).max()
    if scale <= 0.0:
        return _out(np.full(t, 1.0 / t))
    g = g / scale
    best, best_val = None, np.inf
    for size in range(1, t + 1):
        for face in itertools.combinations(range(t), size):
            idx = list(face)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = g[np.ix_(idx, idx)]
            kkt[:size, size] = 1.0
            kkt[size, :size] = 1.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            x = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
            if np.abs(kkt @ x - rhs).max() > 1e-9 or x[:size].min() < -1e-12:
                continue
            a = np.clip(x[:size], 0.0, None)
            a /= a.sum()
            val = a @ g[np.ix_(idx, idx)] @ a
            if val < best_val - 1e-13:
                best, best_val = (idx, a), val
    c = np.zeros(t)
    c[best[0]] = best[1]
    return _out(c)


def _project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (sort-based, Held et al. / Duchi et al.)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.nonzero(u - css / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.clip(v - css[k] / (k + 1), 0.0, None)


def _cagrad_two(g: np.ndarray, phi: float) -> np.ndarray:
    """Exact minimiser of ``F(w) = w^T G b + phi |g_w|`` over ``w = (x, 1 - x)``, b = (1/2, 1/2).

    With ``g_w = a + x d`` (a = g_2, d = g_1 - g_2), ``F'(x) = kd + phi d.g_w/|g_w|`` where
    ``kd = g0.d``. Writing ``y = x + a.d/|d|^2`` and ``h^2 = |a|^2 - (a.d)^2/|d|^2`` (the part of
    a across d), ``d.g_w/|g_w| = |d|^2 y / sqrt(|d|^2 y^2 + h^2)``, so the stationary point is
    ``y = k h / sqrt(|d|^2 (|d|^2 - k^2))`` with ``k = -kd/phi`` when ``|k| < |d|``; otherwise F is
    monotone and the optimum is an end. F is convex, so clipping to [0, 1] is exact.
    """
    dd = g[0, 0] - 2.0 * g[0, 1] + g[1, 1]
    if dd <= 1e-15 * max(g[0, 0], g[1, 1]):
        return np.array([0.5, 0.5])
    ad = g[0, 1] - g[1, 1]
    kd = 0.5 * (g[0, 0] - g[1, 1])
    k = -kd / phi
    if k >= np.sqrt(dd):
        x = 1.0
    elif k <= -np.sqrt(dd):
        x = 0.0
    else:
        h = np.sqrt(max(g[1, 1] - ad * ad / dd, 0.0))
        x = float(np.clip(k * h / np.sqrt(dd * (dd - k * k)) - ad / dd, 0.0, 1.0))
    return np.array([x, 1.0 - x])


def _cagrad_many(g: np.ndarray, phi: float, iters: int = 5000, tol: float = 1e-14) -> np.ndarray:
    """Projected gradient with backtracking for ``min_w w^T G b + phi |g_w|`` on the simplex (T >= 3).

    F is convex; at ``g_w = 0`` it is not differentiable and the linear part's gradient is used.
    Stops when an accepted step moves w by less than ``tol`` (about 1e-10 in F in practice).
    """
    t = g.shape[0]
    gb = g @ np.full(t, 1.0 / t)

    def f(w: np.ndarray) -> float:
        return float(w @ gb + phi * np.sqrt(max(w @ g @ w, 0.0)))

    w = np.full(t, 1.0 / t)
    step = 1.0 / max(np.linalg.eigvalsh(g).max(), 1e-300)
    for _ in range(iters):
        norm = np.sqrt(max(w @ g @ w, 0.0))
        grad = gb + (phi * (g @ w) / norm if norm > 0.0 else 0.0)
        fw = f(w)
        while True:
            nxt = _project_simplex(w - step * grad)
            delta = nxt - w
            if f(nxt) <= fw + grad @ delta + delta @ delta / (2.0 * step) or step < 1e-30:
                break
            step *= 0.5
        w = nxt
        if np.abs(delta).max() < tol:
            break
        step *= 2.0
    return w


def cagrad_coefficients(gram: Tensor, c: float = 0.5, rescale: bool = True) -> Tensor:
    """CAGrad (Liu et al., NeurIPS 2021) on the Gram, as in the authors' code (``rescale=1``).

    ``g0 = mean_t g_t``; ``w`` minimises ``g_w.g0 + c |g0| |g_w|`` over the simplex (the dual of
    maximising the worst task improvement within the ball ``|d - g0| <= c |g0|``); the update is
    ``d = g0 + (c |g0| / |g_w|) g_w``, divided by ``1 + c^2`` when ``rescale``. Two tasks are solved
    in closed form, more by projected gradient. If ``g_w = 0`` (zero in the hull) the update is g0.
    """
    if c < 0:
        raise ValueError(f"c: expected a non-negative CAGrad radius, got {c}")
    g = _as_gram(gram)
    t = g.shape[0]
    b = np.full(t, 1.0 / t)
    g0_norm = np.sqrt(max(g.mean(), 0.0))
    coef = b.copy()
    if c > 0 and g0_norm > 0:
        phi = c * g0_norm
        w = _cagrad_two(g, phi) if t == 2 else (np.ones(1) if t == 1 else _cagrad_many(g, phi))
        gw_norm = np.sqrt(max(w @ g @ w, 0.0))
        if gw_norm > 1e-12 * g0_norm:
            coef = b + (phi / gw_norm) * w
    return _out(coef / (1.0 + c * c) if rescale else coef)


def aligned_coefficients(gram: Tensor) -> Tensor:
    """Aligned-MTL (Senushkin et al., CVPR 2023): align the task gradients into an orthogonal frame.

    ``G = V diag(lam) V^T``; ``B = sqrt(lam_min) V diag(lam)^-1/2 V^T`` makes the aligned gradients
    ``g'_t = sum_s B[s, t] g_s`` orthogonal with the common norm ``sigma_min`` (the Procrustes
    solution scaled by the smallest singular value), and the update is their sum, so the
    coefficients are ``B 1``. Eigenvalues below ``lam_max * T * eps32`` count as zero, as in the
    authors' code (the Gram of float32 gradients is not more accurate than that); if all do, every
    gradient is zero and the coefficients are 1.
    """
    g = _as_gram(gram)
    t = g.shape[0]
    lam, vec = np.linalg.eigh(g)
    keep = lam > lam.max() * t * np.finfo(np.float32).eps
    if lam.max() <= 0.0 or not keep.any():
        return _out(np.ones(t))
    lam, vec = lam[keep], vec[:, keep]
    b = np.sqrt(lam.min()) * (vec / np.sqrt(lam)) @ vec.T
    return _out(b.sum(axis=0))


def _rescaled_to_sum(g: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """``coef`` scaled so that the combined gradient has the norm of the plain sum's (unchanged if
    either is zero)."""
    ones = np.ones(g.shape[0])
    target, norm = np.sqrt(max(ones @ g @ ones, 0.0)), np.sqrt(max(coef @ g @ coef, 0.0))
    return coef * (target / norm) if norm > 0.0 and target > 0.0 else coef


def imtl_rescaled_coefficients(gram: Tensor) -> Tensor:
    """IMTL-G's direction with the naive sum's norm: ``c_imtl |sum_t g_t| / |sum_t c_t g_t|``.

    The control for the question whether IMTL-G acts through the direction or the magnitude of the
    trunk gradient: AdamW divides each parameter's step by a running RMS of its gradient, so a
    common scale that changes slowly is absorbed, and this run should match IMTL-G's.
    """
    g = _as_gram(gram)
    return _out(_rescaled_to_sum(g, imtl_coefficients(gram).numpy()))


def _kept_rate(cos: float, w: float) -> float:
    """cos(u_1 + w u_2, u_1) for unit vectors with cosine ``cos``: the fraction of task 1's steepest
    first-order rate that a unit step along the mix keeps."""
    return (1.0 + w * cos) / np.sqrt(max(1.0 + 2.0 * w * cos + w * w, 1e-300))


def bounded_coefficients(gram: Tensor, epsilon: float) -> Tensor:
    """An epsilon-constrained combination of two tasks: serve the weaker task as much as the dominant
    one can afford.

    With ``u_t = g_t/|g_t|`` and d the dominant task (the larger gradient, which the plain sum
    follows), the direction is ``u_d + w u_o`` with the largest ``w`` in [0, 1] for which a unit
    step keeps at least ``1 - epsilon`` of the dominant task's steepest rate,
    ``cos(u_d + w u_o, u_d) >= 1 - epsilon``. That cosine falls monotonically in w (its derivative
    is ``-w (1 - cos^2)/|.|^3``), so w is found by bisection; ``w = 1`` is IMTL-G's bisector, reached
    when the bound allows it, ``w = 0`` is the dominant task alone. The combination is scaled to the
    plain sum's norm. One task: coefficient 1; a zero gradient: the plain sum.
    """
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon: expected a fraction in (0, 1), got {epsilon}")
    g = _as_gram(gram)
    t = g.shape[0]
    if t == 1:
        return _out(np.ones(1))
    if t != 2:
        raise ValueError(f"gram: the bounded combination is defined for 2 tasks, got {t}")
    norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
    if norms.min() <= _REL_ZERO * norms.max():
        return _out(np.ones(2))
    dom = int(np.argmax(norms))
    other = 1 - dom
    cos = float(np.clip(g[0, 1] / (norms[0] * norms[1]), -1.0, 1.0))
    keep = 1.0 - epsilon
    if _kept_rate(cos, 1.0) >= keep:
        w = 1.0
    else:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if _kept_rate(cos, mid) >= keep else (lo, mid)
        w = lo
    coef = np.zeros(2)
    coef[dom], coef[other] = 1.0 / norms[dom], w / norms[other]
    return _out(_rescaled_to_sum(g, coef))


class InterMethod(nn.Module):
    """One inter-task calibration method: ``coefficients(gram, losses, step) -> c``.

    ``gram`` (T, T) and ``losses`` (T,) are whole-batch values in float64 on the host (all ranks
    see the same ones); ``c`` is (T,) float64 on the host. ``weights_losses`` says whether the
    method weights the losses (heads scaled by c) or manipulates gradients (heads raw); see the
    module docstring. ``accumulate_grads`` writes gradients of the method's own parameters.
    """

    weights_losses = False

    def coefficients(self, gram: Tensor, losses: Tensor, step: int) -> Tensor:
        raise NotImplementedError

    def accumulate_grads(self, losses: Tensor) -> None:
        """Add the gradients of the method's own parameters to their ``.grad`` (most have none)."""


class IMTL(InterMethod):
    """IMTL-G, the default (see :func:`imtl_coefficients`)."""

    def coefficients(self, gram: Tensor, losses: Tensor, step: int) -> Tensor:
        return imtl_coefficients(gram)


class Sum(InterMethod):
    """Plain sum of the task losses: every coefficient is 1 (the uncalibrated baseline)."""

    weights_losses = True

    def coefficients(self, gram: Tensor, losses: Tensor, step: int) -> Tensor:
        return torch.ones(gram.shape[0], dtype=torch.float64)


class Static(InterMethod):
    """Fixed loss weights (``train.inter_weights``), one per task."""

    weights_losses = True

    def __init__(self, weights: Sequence[float], num_tasks: int):
        super().__init__()
        if len(weights) != num_tasks or any(w < 0 for w in weights):
            raise ValueError(f"inter_weights: expected {num_tasks} non-negative weights, one per task, "
                             f"got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)

    def coefficients(self, gram: Tensor, losses: Tensor, step: int) -> Tensor:
        return torch.tensor(self.weights, dtype=torch.float64)


class PCGrad(InterMethod):
    """Representation-level PCGrad with orders seeded by (seed, step) (see :func:`pcgrad_coefficients`)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        if seed < 0:
            raise ValueError(f"seed: expected a non-negative integer (PCGrad draws its orders from it), got {seed}")
        self.seed = int(seed)

    def coefficients(self, gram: Tensor, losses: Tensor, step: int) -> Tensor:
        return pcgrad_coefficients(gram, pcgrad_orders(self.seed, step, gram.shape[0]))


class MGDA(InterMethod):
    """MGDA-UB: the min-norm combination of the representation gradients."""

    def coefficients(self, gram: Tensor, losses: Tensor, step: int) -> Tensor:
        return mgda_coefficients(gram)


class CAGrad(InterMethod):
    """CAGrad with radius ``c`` (default 0.5, the authors' choice) and their ``1/(1 + c^2)`` rescale."""

    def __init__(self, c: float = 0.5, rescale: bool = True):
        super().__init__()
        self.c, self.rescale = float(c), bool(rescale)

    def coefficients(self, gram: Tensor, losses: Tensor, step: int) -> Tensor:
        return cagrad_coefficients(gram, self.c, self.rescale)


class AlignedMTL(InterMethod):
    """Aligned-MTL with the smallest singular value as scale."""

    def coefficients(self, gram: Tensor, losses: Tensor, step: int) -> Tensor:
        return aligned_coefficients(gram)


class IMTLRescaled(InterMethod):
    """IMTL-G's direction at the plain sum's norm (see :func:`imtl_rescaled_coefficients`)."""

    def coefficients(self, gram: Tensor, losses: Tensor, step: int) -> Tensor:
        return imtl_rescaled_coefficients(gram)


class Bounded(InterMethod):
    """The epsilon-constrained combination (``train.inter_epsilon``; see :func:`bounded_coefficients`)."""

    def __init__(self, epsilon: float = 0.1):
        super().__init__()
        self.epsilon = float(epsilon)

    def coefficients(self, gram: Tensor, losses: Tensor, step: int) -> Tensor:
        return bounded_coefficients(gram, self.epsilon)


class Uncertainty(InterMethod):
    """Homoscedastic uncertainty weighting (Kendall et al., CVPR 2018).

    The objective is ``sum_t exp(-s_t) L_t + s_t`` with learnable log-variances ``s_t``
    (``log_vars``, initialised at 0): weights are ``exp(-s_t)`` and the gradient of ``s_t`` is
    ``1 - exp(-s_t) L_t``. ``log_vars`` is a parameter of this module (hence of the calibrator):
    the trainer must give it to the optimizer. Losses are the whole-batch values, so every rank
    writes the same ``s`` gradients.
    """

    weights_losses = True

    def __init__(self, num_tasks: int):
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))

    def coefficients(self, gram: Tensor, losses: Tensor, step: int) -> Tensor:
        return torch.exp(-self.log_vars.detach()).to("cpu", torch.float64)

    def accumulate_grads(self, losses: Tensor) -> None:
        s = self.log_vars
        objective = (torch.exp(-s) * losses.to(s.device, s.dtype) + s).sum()
        (grad,) = torch.autograd.grad(objective, [s])
        s.grad = grad if s.grad is None else s.grad + grad


def build_inter(name: str, num_tasks: int, weights: Sequence[float] = (), seed: int = 0,
                epsilon: float = 0.1) -> InterMethod:
    """The method named by ``train.inter``; ``weights`` serve ``static``, ``seed`` serves ``pcgrad``,
    ``epsilon`` serves ``bounded``."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks: expected at least one task, got {num_tasks}")
    makers = {
        "imtl": IMTL,
        "sum": Sum,
        "static": lambda: Static(weights, num_tasks),
        "pcgrad": lambda: PCGrad(seed),
        "mgda": MGDA,
        "cagrad": CAGrad,
        "aligned": AlignedMTL,
        "uncertainty": lambda: Uncertainty(num_tasks),
        "bounded": lambda: Bounded(epsilon),
        "imtl_rescaled": IMTLRescaled,
    }
    if name not in makers:
        raise ValueError(f"inter: expected one of {list(INTER_METHODS)}, got {name!r}")
    return makers[name]()
