"""Training objectives of the sequence models: hidden states against output item embeddings.

Every loss takes hidden states ``h`` ``(N, d)`` at the training positions and
their target ids ``tgt`` ``(N,)`` (items ``1..V``; id 0 is padding and never a
target or a negative), and returns the mean over the ``N`` positions.

* :func:`cross_entropy`: full softmax over all ``V`` items through a fused,
  chunked kernel (logits, softmax and both gradients chunk by chunk: the
  ``(N, V)`` logit matrix never exists in full).
* :func:`sampled_softmax`: softmax over the target and ``k`` negatives shared
  by the batch, drawn uniformly or from given probabilities (then with the
  logQ correction, Yi et al. 2019); accidental hits are masked.
* :func:`bce`: the original SASRec objective, one uniform negative per position.
* :func:`gbce`: gSASRec's generalised BCE (Petrov & Macdonald, RecSys 2023).

The sampled losses read output embeddings through ``rows(ids) -> ids.shape + (d,)``
(a gather, so that row-sparse embedding gradients stay sparse).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Rows = Callable[[torch.Tensor], torch.Tensor]


class _FusedLinearCE(torch.autograd.Function):
    """Mean softmax cross-entropy of ``h @ W.T`` computed chunk by chunk.

    Forward computes the loss *and* both gradients per chunk of rows (the
    softmax of a chunk stays in cache and the full logit matrix is never
    stored); backward only scales them. ``W`` row 0 is padding and excluded.
    """

    @staticmethod
    def forward(ctx, h, W, targets, chunk: int, dtype: torch.dtype, masked, smoothing: float):  # type: ignore[override]
        with torch.autocast("cpu", enabled=False):
            N = h.shape[0]
            Wi = W[1:].detach().to(dtype)  # (V, d)
            V = Wi.shape[0]
            hd = h.detach().to(dtype)  # (N, d)
            tgt = (targets - 1)[:, None]  # (N, 1)
            if masked is not None:  # padding (0) points at the row's own target, which is restored below
                masked = torch.where(masked > 0, masked, targets[:, None]) - 1  # (N, L)
            gh = torch.empty(h.shape, dtype=torch.float32)
            gW = torch.zeros(Wi.shape, dtype=torch.float32)
            loss = torch.zeros((), dtype=torch.float64)
            w_mean = Wi.float().mean(0)  # (d,)
            for s in range(0, N, chunk):
                hc = hd[s : s + chunk]  # (n, d)
                tc = tgt[s : s + chunk]
                logits = hc @ Wi.T  # (n, V)
                if masked is not None:  # out of this row's softmax; its target always stays in
                    lt = logits.gather(1, tc)
                    logits.scatter_(1, masked[s : s + chunk], float("-inf"))
                    logits.scatter_(1, tc, lt)
                # one fused row-wise softmax in float32 rather than five separate passes; at two
                # threads the step time measured the same either way (benchmarks/RESULTS.md)
                p = torch.softmax(logits, dim=1, dtype=torch.float32)  # (n, V)
                pt = p.gather(1, tc)
                log_pt = pt.clamp_min(1e-30).log()  # (n, 1)
                if smoothing:  # the target is (1 - eps) one-hot + eps uniform over the V items
                    # mean_j log p_j = mean_j logit_j - logsumexp, with logsumexp = logit_t - log p_t and
                    # mean_j logit_j = h . mean_j W_j (no pass over the (n, V) logits)
                    lse = logits.gather(1, tc).float() - log_pt  # (n, 1)
                    mean_log_p = hc.float() @ w_mean[:, None] - lse  # (n, 1)
                    loss += float(-((1 - smoothing) * log_pt + smoothing * mean_log_p).sum())
                else:
                    loss += float(-log_pt.sum())
                p.scatter_add_(1, tc, torch.full_like(pt, -(1.0 - smoothing)))  # d loss / d logits
                g = p.to(dtype)
                gh[s : s + chunk] = (g @ Wi).float()  # (n, d)
                if dtype == torch.float32:
                    gW.addmm_(g.T, hc)  # (V, d)
                else:
                    gW.add_((g.T @ hc).float())
            if smoothing:  # the uniform part of d loss / d logits, -eps / V for every (row, item): rank one
                gh.sub_(smoothing * w_mean)
                gW.sub_(smoothing / V * hd.float().sum(0))
            inv = 1.0 / max(1, N)
            gh.mul_(inv)
            gW.mul_(inv)
            ctx.save_for_backward(gh, gW)
            ctx.w_shape = W.shape
            ctx.h_dtype, ctx.w_dtype = h.dtype, W.dtype
            return (loss * inv).to(torch.float32)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        gh, gW = ctx.saved_tensors
        gWfull = torch.zeros(ctx.w_shape, dtype=torch.float32)
        gWfull[1:] = gW
        return (gh * grad_out).to(ctx.h_dtype), (gWfull * grad_out).to(ctx.w_dtype), None, None, None, None, None


def fused_linear_cross_entropy(h: torch.Tensor, W: torch.Tensor, targets: torch.Tensor,
                               chunk: int = 256, dtype: torch.dtype = torch.float32,
                               masked: torch.Tensor | None = None, smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of the logits ``h @ W[1:].T`` against ``targets`` (ids 1..V).

    ``masked`` ``(N, L)``: item ids left out of row ``n``'s softmax (0 = none); a row's
    own target is never left out. ``smoothing``: label smoothing, the target
    distribution is ``(1 - smoothing)`` on the target plus ``smoothing`` spread evenly
    over all V items (as ``F.cross_entropy(label_smoothing=...)``).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing!r}")
    if smoothing and masked is not None:
        raise ValueError("label smoothing spreads weight over every item; it cannot be combined with "
                         "items left out of the softmax")
    return _FusedLinearCE.apply(h, W, targets, chunk, dtype, masked, float(smoothing))


def cross_entropy(h: torch.Tensor, W: torch.Tensor, tgt: torch.Tensor, chunk: int = 256,
                  masked: torch.Tensor | None = None, smoothing: float = 0.0) -> torch.Tensor:
    """Full-softmax CE of ``h`` (N, d) against all items of ``W`` (V + 1, d); bf16 matmuls under autocast.

    ``masked`` ``(N, L)``: ids left out of each row's softmax (0 = none), e.g. the
    items the user had already seen at that position, which ranking excludes anyway.
    """
    dtype = torch.bfloat16 if torch.is_autocast_enabled("cpu") else torch.float32
    return fused_linear_cross_entropy(h.float(), W, tgt, chunk, dtype, masked, smoothing)


def sampled_softmax(h: torch.Tensor, tgt: torch.Tensor, rows: Rows, n_items: int, k: int,
                    probs: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax CE over the target and ``k`` negatives shared by the batch.

    Negatives are uniform over ``1..n_items``, or drawn from ``probs``
    ``(n_items,)`` (item ``i`` at ``probs[i - 1]``) and then corrected by their
    log expected count (logQ); uniform sampling needs no correction (it shifts
    every logit by the same constant).
    """
    N = h.shape[0]
    pos = (h * rows(tgt)).sum(-1)  # (N,)
    if probs is None:
        neg_ids = torch.randint(1, n_items + 1, (k,))
    else:
        neg_ids = torch.multinomial(probs, k, replacement=True) + 1
    neg = h @ rows(neg_ids).T  # (N, k)
    if probs is not None:
        logq = torch.log(probs.float().clamp_min(1e-12) * k)  # (n_items,)
        pos, neg = pos - logq[tgt - 1], neg - logq[neg_ids - 1][None, :]
    neg = neg.masked_fill(neg_ids[None, :] == tgt[:, None], float("-inf"))  # accidental hits
    logits = torch.cat([pos[:, None], neg], dim=1).float()  # (N, 1 + k)
    return F.cross_entropy(logits, torch.zeros(N, dtype=torch.long))


def bce(h: torch.Tensor, tgt: torch.Tensor, rows: Rows, n_items: int) -> torch.Tensor:
    """Binary CE of the target against one uniform negative per position (the SASRec paper's loss)."""
    pos = (h * rows(tgt)).sum(-1)  # (N,)
    neg_ids = torch.randint(1, n_items + 1, (h.shape[0],))
    neg = (h * rows(neg_ids)).sum(-1)  # (N,)
    return -(F.logsigmoid(pos) + F.logsigmoid(-neg)).mean()


def gbce_beta(k: int, n_items: int, t: float) -> float:
    """gSASRec's ``beta = alpha (t (1 - 1/alpha) + 1/alpha)`` with ``alpha = k / (n_items - 1)``."""
    alpha = k / max(1, n_items - 1)
    return alpha * (t * (1 - 1 / alpha) + 1 / alpha)


def gbce(h: torch.Tensor, tgt: torch.Tensor, rows: Rows, n_items: int, k: int, t: float) -> torch.Tensor:
    """gSASRec's gBCE: ``k`` uniform negatives per position, positive probability raised to ``beta``.

    ``-(log sigmoid(s+)^beta + sum_j log(1 - sigmoid(s-_j))) / (k + 1)`` per
    position (the mean of the ``k + 1`` binary terms), ``beta`` from
    :func:`gbce_beta`.
    """
    pos = (h * rows(tgt)).sum(-1)  # (N,)
    neg_ids = torch.randint(1, n_items + 1, (h.shape[0], k))
    neg = torch.einsum("nd,nkd->nk", h, rows(neg_ids))  # (N, k)
    beta = gbce_beta(k, n_items, t)
    return -(beta * F.logsigmoid(pos) + F.logsigmoid(-neg).sum(-1)).mean() / (1 + k)
