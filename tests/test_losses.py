"""NT-Xent against a float64 re-derivation, and HiCoLoss's terms and modes."""

import math

import pytest
import torch

from hico.losses import TERMS, HiCoLoss, nt_xent, nt_xent_pairs, soft_cross_entropy


def nt_xent_reference(z1, z2, t):
    """Direct loop over the 2N anchors in float64, as SimCLR's paper writes it."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        num = math.exp(float(z[i] @ z[pos]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


@pytest.mark.parametrize("n,d,t", [(1, 4, 0.5), (2, 3, 0.5), (5, 8, 0.1), (16, 32, 0.5), (7, 2, 2.0)])
def test_nt_xent_matches_float64_derivation(n, d, t):
    g = torch.Generator().manual_seed(n * 100 + d)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * 3
    z2 = torch.randn(n, d, generator=g, dtype=torch.float64)
    got = nt_xent(z1, z2, t)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(nt_xent_reference(z1, z2, t), rel=1e-10, abs=1e-12)
    # float32 inputs agree to float32 precision
    assert nt_xent(z1.float(), z2.float(), t).item() == pytest.approx(nt_xent_reference(z1, z2, t), rel=1e-4)


def test_nt_xent_batch_of_one_is_zero_and_scale_invariant():
    z1, z2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[-3.0, 0.5]])
    assert nt_xent(z1, z2).item() == pytest.approx(0.0, abs=1e-7)  # one candidate: the positive
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    assert nt_xent(a, b).item() == pytest.approx(nt_xent(10 * a, 0.1 * b).item(), rel=1e-5)


def test_nt_xent_identical_views_beat_random_views():
    a = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    b = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    assert nt_xent(a, a, 0.1).item() < nt_xent(a, b, 0.1).item()


def test_nt_xent_gradients_flow_to_both_views():
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(4, 3, requires_grad=True)
    nt_xent(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_nt_xent_rejects_bad_arguments():
    with pytest.raises(ValueError, match="one shape"):
        nt_xent(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(3, 4), torch.randn(3, 4), 0.0)


def test_nt_xent_pairs_equals_separate_losses_and_their_gradients():
    torch.manual_seed(3)
    g1, g2, m1, l2 = (torch.randn(6, 8, dtype=torch.float64, requires_grad=True) for _ in range(4))
    pairs = [(g1, g2), (g1, m1), (g2, l2), (m1, l2)]  # g1, g2, m1 and l2 each in two pairs
    fused = nt_xent_pairs(pairs, 0.3)
    separate = torch.stack([nt_xent(a, b, 0.3) for a, b in pairs])
    assert fused.shape == (4,) and torch.allclose(fused, separate, rtol=1e-12, atol=0)
    weights = torch.tensor([0.5, 1.0, 2.0, 0.25], dtype=torch.float64)
    grads = torch.autograd.grad((fused * weights).sum(), (g1, g2, m1, l2))
    expected = torch.autograd.grad((separate * weights).sum(), (g1, g2, m1, l2))
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-14)


def test_nt_xent_pairs_rejects_mismatched_pairs():
    a, b = torch.randn(4, 8), torch.randn(5, 8)
    with pytest.raises(ValueError, match=r"\(5, 8\) beside \(4, 8\)"):
        nt_xent_pairs([(a, a), (b, b)])
    with pytest.raises(ValueError, match="at least one pair"):
        nt_xent_pairs([])


def test_soft_cross_entropy_is_standard_label_smoothing_over_labelled_rows():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2, -1])
    alpha, k = 0.2, 3
    expected = 0.0
    for row, y in ((0, 0), (1, 2)):
        logp = torch.log_softmax(logits[row], 0)
        target = torch.full((k,), alpha / k, dtype=torch.float64)
        target[y] += 1 - alpha
        assert target.sum().item() == pytest.approx(1.0)
        expected += float(-(target * logp).sum())
    got = soft_cross_entropy(logits.float(), labels, alpha)
    assert got.item() == pytest.approx(expected / 2, rel=1e-5)
    none = soft_cross_entropy(logits.float(), torch.tensor([-1, -1, -1]), alpha)
    assert none.item() == 0.0


def _outputs(seed, n=6, d=8, k=3):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(n, d, generator=g) for name in ("local", "medium", "global")} | {
        "logits": torch.randn(n, k, generator=g)}


def test_hico_loss_total_is_the_weighted_sum_of_named_terms():
    o1, o2 = _outputs(1), _outputs(2)
    labels = torch.tensor([0, 1, 2, -1, 0, -1])
    loss = HiCoLoss("hico", temperature=0.5, peer_weight=0.5, cross_weight=0.5, sup_weight=0.2)
    total, terms = loss(o1, o2, labels)
    assert set(terms) == set(TERMS)
    nt = lambda a, b: nt_xent(a, b, 0.5).item()  # noqa: E731
    assert terms["peer_local"].item() == pytest.approx(nt(o1["local"], o2["local"]), rel=1e-6)
    assert terms["cross_global_medium"].item() == pytest.approx(
        nt(o1["global"], o1["medium"]) + nt(o2["global"], o2["medium"]), rel=1e-6)
    assert terms["cross_global_local"].item() == pytest.approx(
        nt(o1["global"], o1["local"]) + nt(o2["global"], o2["local"]), rel=1e-6)
    peer = sum(terms[f"peer_{n}"].item() for n in ("local", "medium", "global"))
    cross = terms["cross_global_medium"].item() + terms["cross_global_local"].item()
    sup = soft_cross_entropy(o1["logits"], labels).item() + soft_cross_entropy(o2["logits"], labels).item()
    assert terms["supervised"].item() == pytest.approx(sup, rel=1e-6)
    assert total.item() == pytest.approx(0.5 * peer + 0.5 * cross + 0.2 * sup, rel=1e-6)
    assert terms["total"].item() == pytest.approx(total.item())


def test_cross_view_pairing_pairs_global_with_the_other_view():
    o1, o2 = _outputs(3), _outputs(4)
    _, terms = HiCoLoss("hico", cross_pairing="cross_view")(o1, o2)
    expected = nt_xent(o1["global"], o2["medium"], 0.5) + nt_xent(o2["global"], o1["medium"], 0.5)
    assert terms["cross_global_medium"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_modes_use_only_their_terms():
    o1, o2 = _outputs(5), _outputs(6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    total, terms = HiCoLoss("simclr")(o1, o2, labels)
    assert total.item() == pytest.approx(nt_xent(o1["global"], o2["global"], 0.5).item(), rel=1e-6)
    assert terms["peer_local"].item() == 0 and terms["supervised"].item() == 0
    total, terms = HiCoLoss("peer")(o1, o2, labels)
    assert terms["cross_global_local"].item() == 0
    assert total.item() == pytest.approx(sum(terms[f"peer_{n}"].item() for n in ("local", "medium", "global")), rel=1e-6)
    total, terms = HiCoLoss("supervised")(o1, o2, labels)
    assert total.item() == pytest.approx(terms["supervised"].item()) and terms["contrastive"].item() == 0
    with pytest.raises(ValueError, match="mode"):
        HiCoLoss("byol")
