"""
Hadamard matrices, built in code (never pasted), at the bottom of the project with quantizers/format.py: QuaRot's
rotations (quantizers/quarot.py) and the fused online rotation of the activation quantizer (kernels/act_quant.py)
both come from here.

A Hadamard matrix H of order n holds +-1 with H H^T = n I, so H / sqrt(n) is orthogonal. Orders built here:
  Sylvester   2^k: H_2k = [[H_k, H_k], [H_k, -H_k]];
  Paley I     m = q + 1, q a prime = 3 mod 4 (12 for LLaDA-8B's 12288 = 12 * 1024 and tiny-llada's 768);
  Paley II    m = 2(q + 1), q a prime = 1 mod 4 (28 for Dream-7B's 3584 = 28 * 128, 148 for its 18944 = 148 * 128
              and tiny-dream's 592 = 148 * 4), orders QuaRot's own code does not cover;
and the products H_m (x) H_2^k of either with Sylvester's (Paley, "On orthogonal matrices", 1933).
"""
import torch


def is_prime(n):
    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def jacobsthal(q):
    """Q_ij = chi(j - i), chi the quadratic character mod the prime q."""
    squares = {i * i % q for i in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if i in squares else -1.0 for i in range(1, q)], dtype=torch.float64)
    return chi[(torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q]


def paley(m):
    """A +-1 Hadamard matrix of order m from Paley's constructions, or None if neither applies."""
    if is_prime(m - 1) and (m - 1) % 4 == 3:  # Paley I: I + [[0, 1^T], [-1, Q]]
        q = m - 1
        S = torch.zeros(m, m, dtype=torch.float64)
        S[0, 1:], S[1:, 0], S[1:, 1:] = 1, -1, jacobsthal(q)
        return torch.eye(m, dtype=torch.float64) + S
    if m % 2 == 0 and is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:  # Paley II, from the conference matrix C:
        # C (x) [[1, 1], [1, -1]] + I (x) [[1, -1], [-1, -1]]
        q = m // 2 - 1
        C = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        C[0, 1:], C[1:, 0], C[1:, 1:] = 1, 1, jacobsthal(q)
        one, two = torch.tensor([[1.0, 1.0], [1.0, -1.0]]), torch.tensor([[1.0, -1.0], [-1.0, -1.0]])
        return torch.kron(C, one.double()) + torch.kron(torch.eye(q + 1, dtype=torch.float64), two.double())
    return None


def sylvester(n):
    """Sylvester's +-1 Hadamard matrix of order n, a power of two (float64)."""
    H = torch.ones(1, 1, dtype=torch.float64)
    while len(H) < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)])
    return H


def hadamard_factors(n):
    """(A, B) with A (m, m) and B (2^k, 2^k) +-1 Hadamard matrices, m * 2^k = n, the power of two as large as
    possible; None when no construction here covers n."""
    k = (n & -n).bit_length() - 1  # the largest power of two dividing n
    for j in range(k, -1, -1):
        m = n >> j
        A = torch.ones(1, 1, dtype=torch.float64) if m == 1 else paley(m)
        if A is not None:
            return A, sylvester(1 << j)
    return None


def orthogonal(n, gen):
    """A normalised Hadamard matrix of order n (dense, float64), or a random orthogonal one (from gen) when none
    can be built, said in the log."""
    factors = hadamard_factors(n)
    if factors is None:
        print(f"hadamard: no construction for {n}; using a random orthogonal matrix")
        return torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
    return torch.kron(*factors) / n ** 0.5
