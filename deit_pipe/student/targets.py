"""Where a training step's teacher targets come from: the store (offline), a live teacher
(online, for comparison) or nowhere (plain supervised training).

Offline, every replayed view's fingerprint is checked against the one stored for its slot,
before the step's update (the loop asks after its backward pass, so that on CUDA the
fingerprints of device-rendered views are hashed while the device computes).
Targets arrive on the training device: the store sends k + k + 1 numbers a view (top-k
probabilities, class ids, tail mass) and the dense distribution is built there, and only
when the loss needs it (hard distillation reads the top-1 class alone).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np
import torch

from deit_pipe.data import EpochPlan, Split, mismatches
from deit_pipe.errors import ReplayError
from deit_pipe.storage import StoredTargets, TargetStore, dense_soft
from deit_pipe.storage.format import version_drift
from deit_pipe.teacher import teacher_logits


class TeacherBatch(NamedTuple):
    soft: torch.Tensor | None  # [n, C] teacher distribution at τ
    hard: torch.Tensor | None  # [n] teacher top-1 class


class TeacherTargets(Protocol):
    """Where a step's teacher targets come from; the loop calls `start_epoch` before an
    epoch's first step, then for every batch `targets` and, before the optimizer steps,
    `check`."""

    def start_epoch(self, epoch: int, epochs: int, epoch_plan: EpochPlan) -> None: ...

    def targets(self, slots: np.ndarray, images: torch.Tensor) -> TeacherBatch:
        """Targets for the views at `slots` (the finished `images`, for a teacher that runs
        on them)."""
        ...

    def check(self, slots: np.ndarray, fingerprints: np.ndarray) -> None:
        """Raise `ReplayError` where a view at `slots`, as replayed (its `fingerprints`), is
        not the view its targets were made from."""
        ...


class NoTeacher:
    """Plain supervised training: no teacher term."""

    def start_epoch(self, epoch: int, epochs: int, epoch_plan: EpochPlan) -> None:
        pass

    def targets(self, slots: np.ndarray, images: torch.Tensor) -> TeacherBatch:
        return TeacherBatch(None, None)

    def check(self, slots: np.ndarray, fingerprints: np.ndarray) -> None:
        pass


class StoredTeacher:
    """Targets read from an epoch slice of the store; the next slice loads in the background."""

    def __init__(
        self,
        store: TargetStore,
        tau: float,
        split: Split,
        data: str,
        *,
        cycle_epochs: bool = False,
        soft: bool = True,
        device: torch.device = torch.device("cpu"),
    ):
        self.store, self.tau, self.split, self.data = store, tau, split, data
        self.cycle_epochs, self.want_soft, self.device = cycle_epochs, soft, device
        self.current: StoredTargets | None = None
        self.plan: EpochPlan | None = None

    def start_epoch(self, epoch: int, epochs: int, epoch_plan: EpochPlan) -> None:
        self.plan = epoch_plan
        stored = self.store.stored_epoch(epoch, self.cycle_epochs)
        if epoch_plan.epoch != stored:
            raise ReplayError(
                f"training epoch {epoch} replays the plan of epoch {epoch_plan.epoch}, but the "
                f"store serves it from epoch {stored}"
            )
        nxt = None
        if epoch + 1 < epochs:
            nxt = self.store.stored_epoch(epoch + 1, self.cycle_epochs)
        self.current = self.store.epoch(stored, prefetch=nxt)

    def targets(self, slots: np.ndarray, images: torch.Tensor) -> TeacherBatch:
        return stored_batch(self.current, np.asarray(slots), self.tau, self.want_soft, self.device)

    def check(self, slots: np.ndarray, fingerprints: np.ndarray) -> None:
        slots = np.asarray(slots)
        bad = mismatches(self.current.fingerprint, slots, np.asarray(fingerprints))
        if len(bad):
            raise ReplayError(self._mismatch(int(slots[bad[0]]), len(bad)))

    def _mismatch(self, slot: int, count: int) -> str:
        sample = int(self.plan.sample[slot])
        paths = self.split.paths
        file = paths[sample] if paths is not None else f"sample {sample} of {self.data}"
        drift = version_drift(self.store.meta.get("versions", {}))
        return (
            f"replayed view differs from the stored one at slot {slot} of epoch "
            f"{self.plan.epoch} ({file}); {count} view(s) in this batch differ; library "
            f"versions {'changed: ' + str(drift) if drift else 'match the store'}"
        )


def stored_batch(
    epoch: StoredTargets, slots: np.ndarray, tau: float, soft: bool, device: torch.device
) -> TeacherBatch:
    """A batch's targets from an epoch slice, as training reads them: the top-1 class, and
    with `soft` the dense distribution at τ, built on `device` from k + k + 1 numbers a view."""
    dense = None
    if soft:
        parts = (t.to(device, non_blocking=True) for t in epoch.soft_parts(slots, tau))
        dense = dense_soft(*parts, epoch.num_classes)
    return TeacherBatch(dense, epoch.hard(slots).to(device, non_blocking=True))


class OnlineTeacher:
    """The teacher run on the training views themselves, as the original DeiT does."""

    def __init__(self, model: torch.nn.Module, tau: float, device: torch.device):
        self.model, self.tau, self.device = model, tau, device

    def start_epoch(self, epoch: int, epochs: int, epoch_plan: EpochPlan) -> None:
        pass

    def targets(self, slots: np.ndarray, images: torch.Tensor) -> TeacherBatch:
        logits = teacher_logits(self.model, images, self.device).double()
        return TeacherBatch(torch.softmax(logits / self.tau, dim=1).float(), logits.argmax(dim=1))

    def check(self, slots: np.ndarray, fingerprints: np.ndarray) -> None:
        pass  # it sees the views themselves
