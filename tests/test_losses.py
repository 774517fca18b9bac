import math

import pytest
import torch
import torch.nn.functional as F
from timm.data.mixup import mixup_target

from deit_pipe.student.losses import DistillationLoss, mixed_label_targets, soft_cross_entropy

CLS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
DIST = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]])
LABELS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.3, 0.7]])


def ce(logits, target):
    return sum(
        -sum(
            t * math.log(math.exp(z) / sum(math.exp(v) for v in row))
            for t, z in zip(trow, row, strict=True)
        )
        for row, trow in zip(logits.tolist(), target.tolist(), strict=True)
    ) / len(logits)


def test_none_trains_the_class_head_or_both_heads_on_labels():
    single, terms = DistillationLoss("none")(CLS, LABELS)
    assert single.item() == pytest.approx(ce(CLS, LABELS), rel=1e-6)
    both, _ = DistillationLoss("none")((CLS, DIST), LABELS)
    assert both.item() == pytest.approx((ce(CLS, LABELS) + ce(DIST, LABELS)) / 2, rel=1e-6)
    assert set(terms) == {"base"}


@pytest.mark.parametrize("reduction", ["batchmean", "numel"])
def test_soft_distillation_kl_by_hand(reduction):
    tau, alpha = 3.0, 0.1
    teacher_logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    p_t = torch.softmax(teacher_logits / tau, dim=1)
    loss, terms = DistillationLoss("soft", alpha, tau, reduction)((CLS, DIST), LABELS, p_t)
    kl = 0.0
    for s_row, t_row in zip(DIST.tolist(), p_t.tolist(), strict=True):
        z = sum(math.exp(v / tau) for v in s_row)
        kl += sum(
            t * (math.log(t) - math.log(math.exp(v / tau) / z))
            for v, t in zip(s_row, t_row, strict=True)
        )
    denom = 2 if reduction == "batchmean" else 6
    expected_kd = kl * tau * tau / denom
    assert terms["teacher"].item() == pytest.approx(expected_kd, rel=1e-5)
    assert loss.item() == pytest.approx(
        (1 - alpha) * ce(CLS, LABELS) + alpha * expected_kd, rel=1e-5
    )
    # The official repo's legacy scaling is exactly batchmean / num_classes.
    official = (
        F.kl_div(
            F.log_softmax(DIST / tau, 1),
            F.log_softmax(teacher_logits / tau, 1),
            reduction="sum",
            log_target=True,
        )
        * tau
        * tau
        / DIST.numel()
    )
    if reduction == "numel":
        assert terms["teacher"].item() == pytest.approx(official.item(), rel=1e-5)


def test_hard_distillation_with_and_without_teacher_smoothing():
    hard = torch.tensor([1, 2])
    loss, terms = DistillationLoss("hard", 0.5)((CLS, DIST), LABELS, teacher_hard=hard)
    onehot = F.one_hot(hard, 3).float()
    assert terms["teacher"].item() == pytest.approx(ce(DIST, onehot), rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * ce(CLS, LABELS) + 0.5 * ce(DIST, onehot), rel=1e-6)
    _, smoothed = DistillationLoss("hard", 0.5, teacher_smoothing=0.1)(
        (CLS, DIST), LABELS, teacher_hard=hard
    )
    target = onehot * 0.9 + 0.1 / 3
    assert smoothed["teacher"].item() == pytest.approx(ce(DIST, target), rel=1e-6)


def test_single_head_model_takes_the_teacher_term_itself():
    hard = torch.tensor([1, 2])
    _, terms = DistillationLoss("hard", 0.5)(CLS, LABELS, teacher_hard=hard)
    assert terms["teacher"].item() == pytest.approx(ce(CLS, F.one_hot(hard, 3).float()), rel=1e-6)


def test_mixed_label_targets_match_timm():
    labels, partner = torch.tensor([3, 7]), torch.tensor([7, 3])
    lam = torch.tensor([0.7, 0.7])
    ours = mixed_label_targets(labels, partner, lam, 10, smoothing=0.1)
    # timm pairs element i with element B-1-i; with B=2 that is exactly our pair.
    theirs = mixup_target(labels, 10, lam=0.7, smoothing=0.1)
    torch.testing.assert_close(ours, theirs)
    assert soft_cross_entropy(torch.zeros(2, 10), ours).item() == pytest.approx(math.log(10))
