"""The DeiT objective (Touvron et al. 2021; facebookresearch/deit `losses.py` semantics).

base = soft-target cross-entropy of the class head against the mixed, smoothed labels.
  none: base (a distilled model trains both heads on the labels, averaged)
  soft: (1−α)·base + α·τ²·KL(p_teacher^τ ‖ p_student^τ) on the distillation head
  hard: (1−α)·base + α·CE(distillation head, teacher argmax)
A model without a distillation token takes the teacher term on its single head.
The teacher arrives as a dense distribution at τ (soft) or top-1 labels (hard), whether
read from the store or computed online, so both paths share this code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deit_pipe.choices import DISTILL, KL_REDUCTIONS

# (α, τ) per distillation mode: Touvron et al. 2021, §5 and facebookresearch/deit defaults.
PAPER_ALPHA_TAU = {"none": (0.5, 1.0), "soft": (0.1, 3.0), "hard": (0.5, 1.0)}


def alpha_tau(distill: str, alpha: float | None, tau: float | None) -> tuple[float, float]:
    """α and τ as given, each unset one the paper's for the mode (`PAPER_ALPHA_TAU`)."""
    paper_alpha, paper_tau = PAPER_ALPHA_TAU[distill]
    return (paper_alpha if alpha is None else alpha, paper_tau if tau is None else tau)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def mixed_label_targets(
    labels: torch.Tensor,
    partner_labels: torch.Tensor,
    lam: torch.Tensor,
    num_classes: int,
    smoothing: float = 0.1,
) -> torch.Tensor:
    """timm's `mixup_target`, per view: λ·smooth(y) + (1−λ)·smooth(y_partner).

    Args:
        labels: [n] int64 class ids of the views' own samples.
        partner_labels: [n] those of the samples each view is mixed with.
        lam: [n] the share of the own sample (1 where a view is not mixed).
        num_classes: C.
        smoothing: label smoothing ε (each label: 1 − ε + ε/C, others ε/C).

    Returns:
        [n, C] float32 targets on the labels' device.
    """
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    shape, dev = (len(labels), num_classes), labels.device
    y1 = torch.full(shape, off, device=dev).scatter_(1, labels[:, None], on)
    y2 = torch.full(shape, off, device=dev).scatter_(1, partner_labels[:, None], on)
    return lam[:, None] * y1 + (1.0 - lam[:, None]) * y2


class DistillationLoss(nn.Module):
    """DeiT's objective over a batch: `loss, terms = criterion(outputs, label_targets,
    teacher_soft, teacher_hard)`, `outputs` the student's (class, distillation) logits or
    one tensor for a model without a distillation token.

    Args:
        distill: `none`, `soft` or `hard`.
        alpha: the teacher term's weight α.
        tau: the soft term's temperature τ (the teacher's distribution comes at τ).
        kl_reduction: `batchmean` (DeiT's: the KL summed over classes, averaged over views)
            or `numel` (averaged over every element).
        teacher_smoothing: label smoothing of the hard teacher term.
    """

    def __init__(
        self,
        distill: str = "none",
        alpha: float = 0.5,
        tau: float = 1.0,
        kl_reduction: str = "batchmean",
        teacher_smoothing: float = 0.0,
    ):
        super().__init__()
        if distill not in DISTILL:
            raise ValueError(f"distill must be one of {DISTILL}, got {distill!r}")
        if kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"kl_reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")
        self.distill, self.alpha, self.tau = distill, alpha, tau
        self.kl_reduction, self.teacher_smoothing = kl_reduction, teacher_smoothing

    def forward(
        self,
        outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        label_targets: torch.Tensor,
        teacher_soft: torch.Tensor | None = None,
        teacher_hard: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, its terms). `teacher_soft` is p_teacher at τ; `teacher_hard` its argmax."""
        cls, dist = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        base = soft_cross_entropy(cls, label_targets)
        if self.distill == "none":
            if dist is not cls:
                base = (base + soft_cross_entropy(dist, label_targets)) / 2
            return base, {"base": base.detach()}
        if self.distill == "soft":
            log_student = F.log_softmax(dist / self.tau, dim=-1)
            kl = torch.sum(torch.xlogy(teacher_soft, teacher_soft) - teacher_soft * log_student)
            denom = dist.numel() if self.kl_reduction == "numel" else dist.shape[0]
            teacher_term = kl * (self.tau**2) / denom
        else:
            teacher_term = F.cross_entropy(
                dist, teacher_hard, label_smoothing=self.teacher_smoothing
            )
        total = (1 - self.alpha) * base + self.alpha * teacher_term
        return total, {"base": base.detach(), "teacher": teacher_term.detach()}


def distillation_loss(
    distill: str = "hard",
    *,
    alpha: float | None = None,
    tau: float | None = None,
    kl_reduction: str = "batchmean",
    teacher_smoothing: float = 0.0,
) -> DistillationLoss:
    """The loss `deit-pipe train` trains with, α and τ defaulting by mode as in the paper.

    Args:
        distill: `none`, `soft` or `hard`.
        alpha: the teacher term's weight [default: 0.1 soft, 0.5 hard].
        tau: the temperature [default: 3 soft, 1 hard]; give a `ReplayLoader` the same τ.
        kl_reduction: `batchmean` or `numel` (soft).
        teacher_smoothing: label smoothing of the hard teacher term.

    Returns:
        A `DistillationLoss`: `criterion(outputs, label_targets, teacher_soft, teacher_hard)`
        gives (loss, {"base": …, "teacher": …}).
    """
    if distill not in PAPER_ALPHA_TAU:
        raise ValueError(f"distill must be one of {DISTILL}, got {distill!r}")
    alpha, tau = alpha_tau(distill, alpha, tau)
    return DistillationLoss(distill, alpha, tau, kl_reduction, teacher_smoothing)
