"""Where a training step's teacher targets come from: the store (offline), a live teacher
(online, for comparison) or nowhere (plain supervised training).

Offline, every replayed view's fingerprint is checked against the one stored for its slot.
"""

from __future__ import annotations

import numpy as np
import torch

from deit_pipe.data import EpochPlan, Split
from deit_pipe.errors import ReplayError
from deit_pipe.pipeline.tasks import teacher_logits
from deit_pipe.storage import EpochTargets, TargetStore
from deit_pipe.storage.format import library_versions

TeacherBatch = tuple[torch.Tensor | None, torch.Tensor | None]  # (soft at τ, hard)


class NoTeacher:
    def start_epoch(self, epoch: int, epochs: int, epoch_plan: EpochPlan) -> None:
        pass

    def targets(self, slots, fingerprints, images) -> TeacherBatch:
        return None, None


class StoredTeacher:
    """Targets read from an epoch slice of the store; the next slice loads in the background."""

    def __init__(
        self, store: TargetStore, tau: float, split: Split, spec: str, cycle_epochs: bool = False
    ):
        self.store, self.tau, self.split, self.spec = store, tau, split, spec
        self.cycle_epochs = cycle_epochs
        self.current: EpochTargets | None = None
        self.plan: EpochPlan | None = None

    def start_epoch(self, epoch: int, epochs: int, epoch_plan: EpochPlan) -> None:
        self.plan = epoch_plan
        stored = self.store.stored_epoch(epoch, self.cycle_epochs)
        assert epoch_plan.epoch == stored, "the plan must be the stored epoch's"
        nxt = None
        if epoch + 1 < epochs:
            nxt = self.store.stored_epoch(epoch + 1, self.cycle_epochs)
        self.current = self.store.epoch(stored, prefetch=nxt)

    def targets(self, slots, fingerprints, images) -> TeacherBatch:
        slots = np.asarray(slots)
        t = self.current.targets(slots, self.tau)
        bad = np.flatnonzero(t.fingerprint.numpy() != np.asarray(fingerprints))
        if len(bad):
            raise ReplayError(self._mismatch(int(slots[bad[0]]), len(bad)))
        return t.soft, t.hard

    def _mismatch(self, slot: int, count: int) -> str:
        sample = int(self.plan.sample[slot])
        paths = self.split.paths
        file = paths[sample] if paths is not None else f"sample {sample} of {self.spec}"
        stored = self.store.meta.get("versions", {})
        drift = {
            k: f"{stored.get(k)}→{v}" for k, v in library_versions().items() if stored.get(k) != v
        }
        return (
            f"replayed view differs from the stored one at slot {slot} of epoch "
            f"{self.plan.epoch} ({file}); {count} view(s) in this batch differ; library "
            f"versions {'changed: ' + str(drift) if drift else 'match the store'}"
        )


class OnlineTeacher:
    """The teacher run on the training views themselves, as the original DeiT does."""

    def __init__(self, model: torch.nn.Module, tau: float, device: torch.device):
        self.model, self.tau, self.device = model, tau, device

    def start_epoch(self, epoch: int, epochs: int, epoch_plan: EpochPlan) -> None:
        pass

    def targets(self, slots, fingerprints, images) -> TeacherBatch:
        logits = teacher_logits(self.model, images, self.device).double()
        soft = torch.softmax(logits / self.tau, dim=1).float()
        return soft, logits.argmax(dim=1)
