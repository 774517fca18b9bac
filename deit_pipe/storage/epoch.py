"""One epoch slice of a split's teacher targets, in memory, and the soft/hard targets built
from it (`EpochTargets`); `dense_soft` spreads the exact tail mass past the stored top-k."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from deit_pipe.errors import StoreMismatchError


@runtime_checkable
class StoredTargets(Protocol):
    """An epoch slice of stored teacher targets, of one teacher (`EpochTargets`) or of a
    weighted ensemble (`storage.ensemble.EnsembleTargets`): the same members, the same
    shapes, whichever a run reads."""

    epoch: int
    fingerprint: np.ndarray  # [V] uint64: each view's fingerprint, as the teacher saw it
    num_classes: int
    temperatures: tuple[float, ...]

    @property
    def top1(self) -> np.ndarray:
        """[V] int64: the teacher's (or the ensemble's) top-1 class per view."""
        ...

    def __len__(self) -> int: ...

    def soft_parts(
        self, slots: np.ndarray, tau: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """([n, K] probabilities of K listed classes, [n, K] their ids, [n] the rest of the
        mass): `dense_soft` makes the [n, C] distribution of them."""
        ...

    def soft(self, slots: np.ndarray, tau: float) -> torch.Tensor:
        """[n, C] float32: the teacher distribution at τ."""
        ...

    def hard(self, slots: np.ndarray) -> torch.Tensor:
        """[n] int64: the top-1 class of the views at `slots`."""
        ...


@dataclass
class EpochTargets:
    """One epoch slice of a split, in memory."""

    epoch: int
    values: np.ndarray | None  # [V, k] stored dtype, sorted descending (None: hard store)
    indices: np.ndarray  # [V, k] uint16|uint32
    lse: np.ndarray | None  # [V, T] float32 (None: hard store)
    fingerprint: np.ndarray  # [V] uint64
    temperatures: tuple[float, ...]
    num_classes: int

    def __len__(self) -> int:
        return len(self.fingerprint)

    def _tau_index(self, tau: float) -> int:
        for i, t in enumerate(self.temperatures):
            if abs(t - tau) < 1e-9:
                return i
        stored = ", ".join(f"{t:g}" for t in self.temperatures)
        raise StoreMismatchError(
            f"temperature τ={tau:g} is not stored (store has τ = {stored}); "
            "precompute with --temperatures including it"
        )

    def topk_probs(self, slots: np.ndarray, tau: float) -> np.ndarray:
        """p(c) = exp(z_c/τ − logsumexp(z/τ)) for the k stored classes, float64 [n, k]."""
        if self.values is None:
            raise StoreMismatchError(
                "this store holds the teacher's top-1 class only (precompute --targets hard): "
                "train with --distill hard or none, or precompute soft targets"
            )
        z = self.values[slots].astype(np.float64)
        lse = self.lse[slots, self._tau_index(tau)].astype(np.float64)
        return np.exp(z / tau - lse[:, None])

    def soft_parts(
        self, slots: np.ndarray, tau: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top-k probabilities, their class ids, tail mass): what `dense_soft` needs, k + k + 1
        numbers a view instead of C, so a trainer can build the dense targets on its device."""
        slots = np.asarray(slots)
        top = self.topk_probs(slots, tau)
        tail = np.clip(1.0 - top.sum(axis=1), 0.0, 1.0)
        return (
            torch.from_numpy(top.astype(np.float32)),
            torch.from_numpy(self.indices[slots].astype(np.int64)),
            torch.from_numpy(tail.astype(np.float32)),
        )

    def soft(self, slots: np.ndarray, tau: float) -> torch.Tensor:
        """Dense teacher distribution: exact on the top-k, the exact tail mass spread evenly."""
        return dense_soft(*self.soft_parts(slots, tau), self.num_classes)

    @property
    def top1(self) -> np.ndarray:
        return self.indices[:, 0].astype(np.int64)

    def hard(self, slots: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.indices[np.asarray(slots), 0].astype(np.int64))

    def topk_mass(self, tau: float = 1.0) -> np.ndarray:
        """Probability mass the stored top-k capture, per view."""
        return self.topk_probs(np.arange(len(self)), tau).sum(axis=1)


def dense_soft(
    top: torch.Tensor, indices: torch.Tensor, tail: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """[n, C] distribution from `EpochTargets.soft_parts`, on the inputs' device."""
    k = top.shape[1]
    fill = tail / max(num_classes - k, 1) if num_classes > k else torch.zeros_like(tail)
    dense = fill[:, None].expand(len(top), num_classes).contiguous()
    return dense.scatter_(1, indices, top)
