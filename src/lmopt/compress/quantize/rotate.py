"""Orthogonal rotations for 4-bit weights (QuaRot / SpinQuant style): the pure matrix math.

Multiplying a Linear's input side by an orthogonal Q (W -> W Q, inputs x -> x Q) changes nothing in
exact arithmetic but spreads each weight row's few large entries over all columns, so every
quantization group sees a flatter, Gaussian-like row and 4-bit rounding loses less. A Hadamard matrix
(entries +-1/sqrt(n)) spreads best: a single spike becomes n equal entries (max |x Q| = |x| / sqrt(n)).

Which matrix, for which size n:
- n = 2^k: Sylvester's Hadamard H_2 (x) H_2 (x) ... (every head_dim of 64 or 128).
- otherwise a true Hadamard when n is a Kronecker product of orders this module builds: powers of two
  and Paley's construction I, order q + 1 for a prime q = 3 mod 4 (12, 20, 24, 44, 48, 60, 72, ...).
  SmolLM2's 576 = 2^6 x 9 has no Sylvester matrix, but 576 = 4 x 12 x 12 does: H_4 (x) H_12 (x) H_12
  (Paley, q = 11), a +-1/24 matrix. It is the default rather than a 64 x 64 Hadamard (x) a 9 x 9
  orthogonal factor because no 9 x 9 Hadamard exists (orders are 1, 2 or multiples of 4): a 9 x 9
  orthogonal factor has entries well above 1/3, so through 64 x 9 a spike keeps 1.8x more of its
  height (largest entry per row 0.077 on average for the seeded random factor, against 1/24 = 0.042),
  and the result depends on the seed beyond its signs. Measured, both do equally well after GPTQ
  (SmolLM2-135M W4 g128, WikiText-2 4 x 1,024: 26.58 Hadamard, 26.54 Kronecker; fp32 23.24), so the
  choice rests on the flatness guarantee, not on a measured gain.
- no construction found (e.g. 2^k x 9 with k < 3): `kronecker` fallback, Sylvester(2^k) (x) a Haar-random
  orthogonal m x m from a fixed seed (QR of a seeded Gaussian matrix, like SpinQuant's random
  orthogonal baseline); orthogonal, but not flat.
Every matrix is then multiplied by a seeded random +-1 diagonal (QuaRot's randomized Hadamard), so
structure in the weights cannot line up with the fixed pattern of H. All in float64, then cast.

Conventions: a weight is (out N, in K); `rotate_input(W, Q) = W Q` (reads the rotated stream x Q),
`rotate_output(W, Q) = Q^T W` (writes the rotated stream); `*_heads` apply a head_dim rotation to each
head's block of rows (v_proj) or columns (o_proj).
"""

from __future__ import annotations

from functools import cache
from typing import Literal

import torch

Construction = Literal["auto", "hadamard", "kronecker"]


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def sylvester(n: int) -> torch.Tensor:
    """The +-1 Sylvester Hadamard of order n = 2^k, float64."""
    if not is_power_of_two(n):
        raise ValueError(f"Sylvester's construction needs a power of two, not {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q ** 0.5) + 1))


def paley(q: int) -> torch.Tensor:
    """Paley's construction I: a +-1 Hadamard of order q + 1 for a prime q = 3 (mod 4), float64.

    With the quadratic character chi of GF(q), Jacobsthal's Q[i, j] = chi(j - i) is skew-symmetric;
    S = [[0, 1^T], [-1, Q]] is skew with S S^T = q I, so H = I + S has H H^T = (q + 1) I."""
    if not (_is_prime(q) and q % 4 == 3):
        raise ValueError(f"Paley's construction I needs a prime q = 3 (mod 4), not {q}")
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if x in squares else -1.0 for x in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    jacobsthal = chi[(idx[None, :] - idx[:, None]) % q]  # (q, q)
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, jacobsthal
    return torch.eye(q + 1, dtype=torch.float64) + s


@cache
def _hadamard_plan(n: int) -> tuple[int, ...] | None:
    """Orders whose Kronecker product is an n x n Hadamard (each a power of two or a Paley order)."""
    if is_power_of_two(n):
        return (n,)
    if _is_prime(n - 1) and (n - 1) % 4 == 3:
        return (n,)
    for d in range(4, n // 4 + 1, 4):  # every Hadamard order above 2 is a multiple of 4
        if n % d == 0 and (is_power_of_two(d) or (_is_prime(d - 1) and (d - 1) % 4 == 3)):
            rest = _hadamard_plan(n // d)
            if rest is not None:
                return (d, *rest)
    return None


def hadamard(n: int) -> torch.Tensor | None:
    """A +-1 Hadamard matrix of order n built from Sylvester and Paley factors, or None if none is found."""
    plan = _hadamard_plan(n)
    if plan is None:
        return None
    h = torch.ones(1, 1, dtype=torch.float64)
    for order in plan:
        h = torch.kron(h, sylvester(order) if is_power_of_two(order) else paley(order - 1))
    return h


def random_orthogonal(n: int, seed: int) -> torch.Tensor:
    """A Haar-random n x n orthogonal matrix from a fixed seed (QR of a Gaussian, signs of R fixed)."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r)).unsqueeze(0)).contiguous()


def kronecker(n: int, seed: int) -> torch.Tensor:
    """Sylvester(2^k) (x) random_orthogonal(m) for n = 2^k m, m odd, scaled to be orthogonal."""
    power = n & -n  # the largest power of two dividing n
    return torch.kron(sylvester(power) / power ** 0.5, random_orthogonal(n // power, seed))


def random_signs(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=gen).to(torch.float64) * 2 - 1


def rotation(n: int, seed: int = 0, construction: Construction = "auto") -> torch.Tensor:
    """An n x n orthogonal float64 matrix diag(signs) M: M a normalized Hadamard (`auto` when one is
    found, `hadamard` or an error) or the `kronecker` fallback (see the module docstring)."""
    h = hadamard(n) if construction != "kronecker" else None
    if h is None and construction == "hadamard":
        raise ValueError(f"no Hadamard construction of order {n} here; use construction='kronecker'")
    m = h / n ** 0.5 if h is not None else kronecker(n, seed)
    return random_signs(n, seed).unsqueeze(1) * m


def describe(n: int, construction: Construction = "auto") -> str:
    """How `rotation(n, construction=...)` is built, for reports and model cards."""
    plan = _hadamard_plan(n) if construction != "kronecker" else None
    if plan is not None:
        parts = [f"Sylvester {o}" if is_power_of_two(o) else f"Paley {o}" for o in plan]
        return f"Hadamard {n} = {' x '.join(parts)}, random signs"
    power = n & -n
    odd = f" x random orthogonal {n // power}" if n // power > 1 else ""
    return f"Sylvester {power}{odd}, random signs"


def rotate_input(weight: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """W Q: the Linear reads the rotated stream x Q and computes the same x W^T. weight (N, K), q (K, K)."""
    return weight @ q


def rotate_output(weight: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Q^T W: the Linear writes y Q instead of y. weight (N, K), q (N, N); a bias b becomes b Q."""
    return q.t() @ weight


def rotate_heads_output(weight: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Each head's block of d rows R^T W_h (v_proj: head outputs become v_h R). weight (heads * d, K)."""
    d = r.shape[0]
    return torch.einsum("ji,hjk->hik", r, weight.reshape(-1, d, weight.shape[1])).reshape(weight.shape)


def rotate_heads_input(weight: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Each head's block of d columns W_h R (o_proj reads v_h R). weight (N, heads * d)."""
    d = r.shape[0]
    return (weight.reshape(weight.shape[0], -1, d) @ r).reshape(weight.shape)
