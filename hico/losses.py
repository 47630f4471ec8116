"""HiCo's losses: NT-Xent, soft-label cross-entropy, and their weighted sum over levels.

Notation (the HiCo paper's): l, m, g are the local, medium and global projections, 1 and 2 the views.
    peer  = NT(l1, l2) + NT(m1, m2) + NT(g1, g2)
    cross = NT(g1, m1) + NT(g2, m2) + NT(g1, l1) + NT(g2, l2)   (same_view pairing)
            NT(g1, m2) + NT(g2, m1) + NT(g1, l2) + NT(g2, l1)   (cross_view pairing)
    total = peer_weight * peer + cross_weight * cross + sup_weight * supervised
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hico.config import LEVELS, LOSS_MODES

MODES = LOSS_MODES
PAIRINGS = ("same_view", "cross_view")
TERMS = ("peer_local", "peer_medium", "peer_global", "cross_global_medium", "cross_global_local",
         "supervised", "contrastive", "total")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalized-temperature cross-entropy.

    Args:
        z1, z2: N x d embeddings of the two views; row i of z1 and row i of z2 are positives.
            They need not be normalised.
        temperature: divides the cosine similarities; above 0.

    Returns:
        Scalar: mean over the 2N anchors of the cross-entropy of each anchor's positive against
        the other 2N - 1 rows (the anchor itself excluded). Computed in float32 at least.
    """
    return nt_xent_pairs([(z1, z2)], temperature)[0]


def nt_xent_pairs(pairs: list[tuple[torch.Tensor, torch.Tensor]], temperature: float = 0.5) -> torch.Tensor:
    """`nt_xent` of several pairs at once: one batched similarity matrix, one masked cross-entropy.

    Args:
        pairs: P pairs (z1, z2), every tensor N x d with the same N and d.
        temperature: above 0.

    Returns:
        P losses, entry p equal to nt_xent(*pairs[p]). Each distinct tensor is normalised once
        (HiCo puts each view's global projection in three pairs), and the P x 2N x 2N
        similarities are one batched matrix product.
    """
    if not pairs:
        raise ValueError("nt_xent_pairs needs at least one pair")
    shape = pairs[0][0].shape
    for z1, z2 in pairs:
        if z1.ndim != 2 or z1.shape != z2.shape or z1.shape != shape:
            raise ValueError(f"nt_xent needs pairs of N x d tensors of one shape, got {tuple(z1.shape)} and "
                             f"{tuple(z2.shape)}" + (f" beside {tuple(shape)}" if len(pairs) > 1 else ""))
    if shape[0] < 1:
        raise ValueError("nt_xent needs at least one pair of rows")
    if temperature <= 0:
        raise ValueError(f"temperature must be above 0, got {temperature}")
    n = shape[0]
    unit: dict[int, torch.Tensor] = {}

    def normalised(z: torch.Tensor) -> torch.Tensor:
        if id(z) not in unit:
            unit[id(z)] = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1)
        return unit[id(z)]

    z = torch.stack([torch.cat([normalised(a), normalised(b)]) for a, b in pairs])  # P x 2N x d
    sim = torch.bmm(z, z.transpose(1, 2)) / temperature  # P x 2N x 2N
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=sim.device), float("-inf"))
    # made on the device: a copy from the host would make the host wait for the GPU every step
    target = ((torch.arange(2 * n, device=sim.device) + n) % (2 * n)).repeat(len(pairs))
    per_anchor = F.cross_entropy(sim.flatten(0, 1), target, reduction="none")
    return per_anchor.view(len(pairs), 2 * n).mean(dim=1)


def soft_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.2) -> torch.Tensor:
    """Label-smoothed cross-entropy over the labelled rows.

    Args:
        logits: N x K class scores.
        labels: N class indices; -1 marks an unlabelled row, which is skipped.
        smoothing: alpha; the true class gets 1 - alpha + alpha / K and every class alpha / K.

    Returns:
        Scalar mean over labelled rows; 0 (still attached to the graph) when none is labelled.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need N x K logits and N labels, got {tuple(logits.shape)} and {tuple(labels.shape)}")
    keep = labels >= 0
    # Boolean indexing would sync with the host; weighting keeps the step asynchronous.
    per_row = F.cross_entropy(logits.float(), labels.clamp(min=0), label_smoothing=smoothing, reduction="none")
    weight = keep.to(per_row.dtype)
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


class HiCoLoss(nn.Module):
    """Peer-level and cross-level NT-Xent plus the soft-label supervised term.

    forward(out1, out2, labels) takes the model outputs of the two views (dicts with
    `local`, `medium`, `global`: N x d, and `logits`: N x K when supervised) and N labels
    (-1 for unlabelled); returns (total, terms) where terms maps every name in TERMS to a
    detached scalar tensor (terms a mode does not use are 0).
    """

    def __init__(self, mode: str = "hico", temperature: float = 0.5, peer_weight: float = 0.5,
                 cross_weight: float = 0.5, sup_weight: float = 0.2, label_smoothing: float = 0.2,
                 cross_pairing: str = "same_view"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if cross_pairing not in PAIRINGS:
            raise ValueError(f"cross_pairing must be one of {', '.join(PAIRINGS)}, got {cross_pairing!r}")
        self.mode, self.t = mode, temperature
        self.peer_weight, self.cross_weight, self.sup_weight = peer_weight, cross_weight, sup_weight
        self.smoothing, self.pairing = label_smoothing, cross_pairing

    @classmethod
    def from_config(cls, cfg) -> "HiCoLoss":
        lo = cfg.loss
        return cls(lo.mode, lo.temperature, lo.peer_weight, lo.cross_weight, lo.sup_weight,
                   lo.label_smoothing, lo.cross_pairing)

    def forward(self, out1: dict, out2: dict, labels: torch.Tensor | None = None):
        zero = out1["global"].new_zeros((), dtype=torch.float32)
        terms = dict.fromkeys(TERMS, zero)
        pairs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        if self.mode in ("hico", "peer"):
            for name in LEVELS:
                pairs[f"peer_{name}"] = [(out1[name], out2[name])]
        elif self.mode == "simclr":
            pairs["peer_global"] = [(out1["global"], out2["global"])]
        if self.mode == "hico":
            # same_view pairs g1 with the levels of view 1; cross_view pairs it with view 2's.
            other1, other2 = (out1, out2) if self.pairing == "same_view" else (out2, out1)
            for name in ("medium", "local"):
                pairs[f"cross_global_{name}"] = [(out1["global"], other1[name]), (out2["global"], other2[name])]
        if pairs:  # every pairing in one batched similarity matrix
            losses = nt_xent_pairs([p for group in pairs.values() for p in group], self.t)
            start = 0
            for name, group in pairs.items():
                terms[name] = losses[start:start + len(group)].sum()
                start += len(group)
        peer = terms["peer_local"] + terms["peer_medium"] + terms["peer_global"]
        cross = terms["cross_global_medium"] + terms["cross_global_local"]
        if self.mode == "hico":
            contrastive = self.peer_weight * peer + self.cross_weight * cross
        else:
            contrastive = peer  # simclr and peer: the plain sum, as USCL and the ablations use it
        terms["contrastive"] = contrastive
        use_sup = self.mode in ("hico", "supervised") and labels is not None and "logits" in out1
        if use_sup:
            terms["supervised"] = (soft_cross_entropy(out1["logits"], labels, self.smoothing)
                                   + soft_cross_entropy(out2["logits"], labels, self.smoothing))
        if self.mode == "supervised":
            total = terms["supervised"]
        else:
            total = contrastive + (self.sup_weight * terms["supervised"] if use_sup else 0.0)
        terms["total"] = total
        return total, {k: v.detach() for k, v in terms.items()}


def probe_loss(out1: dict, out2: dict, labels: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of the per-level linear probes (`probe_local`, ... : N x K) on both views'
    labelled rows, summed over levels. The probes see detached features, so this trains them and
    never the encoder. Zero (attached to the probes' graph, so every parameter takes part in the
    backward, as DistributedDataParallel needs) when nothing is labelled; 0 without probes."""
    names = [k for k in out1 if k.startswith("probe_")]
    if not names:
        return out1["global"].new_zeros((), dtype=torch.float32)
    if labels is None:
        labels = torch.full((out1[names[0]].shape[0],), -1, dtype=torch.long, device=out1[names[0]].device)
    both = torch.cat([labels, labels])
    return sum(soft_cross_entropy(torch.cat([out1[k], out2[k]]), both, 0.0) for k in names)
