"""Several teachers of one store read as one: their weighted ensemble, exact on what is stored.

Each teacher's stored distribution at τ is exact on its top-k classes and spreads its tail
mass evenly over the other C − k. Their weighted mean is therefore exact too: a class in
the union U of the teachers' top-k sets gets Σ_t w_t p_t(c) (p_t(c) = the stored
probability, or teacher t's even tail share), and every class outside U the same value,
Σ_t w_t tail_t / (C − k). `soft_parts` hands the trainer U (padded to K = min(T·k, C)
listed classes with classes outside U at that value), their probabilities and the rest of
the mass, which `dense_soft` spreads evenly over the C − K unlisted classes: the same
distribution. The hard target is the argmax of the mean at τ = 1 (the teachers' own
predictions); for top-1-only stores, the weighted vote (ties: the lowest class id).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from deit_pipe.errors import StoreCorruptError, StoreMismatchError

_CHUNK = 8192  # views per step when deciding every view's hard target at load


def choose_teachers(text: str | None, names: list[str], url: str) -> dict[str, float]:
    """`None` (the store's first teacher), `A`, `A,B` (equal weights) or `A=0.7,B=0.3` as
    {name: weight}, the weights summing to 1; an unknown name is refused by name."""
    if not text:
        return {names[0]: 1.0}
    chosen: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition("=")
        if name not in names:
            raise StoreMismatchError(
                f"{url} holds no teacher {name!r} (it holds: {', '.join(names)})"
            )
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            w = -1.0
        if not (np.isfinite(w) and w > 0) or name in chosen:
            raise StoreMismatchError(
                f"--teacher-name {text!r}: give each teacher once, with a positive weight "
                "(A=0.7,B=0.3)"
            )
        chosen[name] = w
    total = sum(chosen.values())
    return {name: w / total for name, w in chosen.items()}


def teacher_choice(teachers: dict[str, float]) -> str:
    """The `--teacher-name` text that reads these teachers again (runs record it)."""
    if len(teachers) == 1:
        return next(iter(teachers))
    return ",".join(f"{name}={w:.6g}" for name, w in teachers.items())


@dataclass
class EnsembleTargets:
    """The weighted ensemble of several teachers' epoch slices (`EpochTargets`)."""

    members: list  # EpochTargets, one per teacher, same views
    weights: list[float]
    top1: np.ndarray = field(init=False)  # [V] int64: the ensemble's hard target

    @classmethod
    def of(cls, members: list, weights: list[float], url: str) -> EnsembleTargets:
        first = members[0].fingerprint
        for m in members[1:]:
            if not np.array_equal(m.fingerprint, first):
                raise StoreCorruptError(
                    f"{url}: the teachers of epoch {members[0].epoch} did not see the same "
                    "views (fingerprints differ); recompute the later teacher"
                )
        return cls(members, weights)

    def __post_init__(self) -> None:
        views = len(self.members[0].fingerprint)
        top1 = [
            self._hard(np.arange(lo, min(lo + _CHUNK, views))) for lo in range(0, views, _CHUNK)
        ]
        self.top1 = np.concatenate(top1 or [np.zeros(0, np.int64)]).astype(np.int64)

    epoch = property(lambda self: self.members[0].epoch)
    fingerprint = property(lambda self: self.members[0].fingerprint)
    num_classes = property(lambda self: self.members[0].num_classes)
    temperatures = property(lambda self: self.members[0].temperatures)

    def __len__(self) -> int:
        return len(self.fingerprint)

    def dense(self, slots: np.ndarray, tau: float) -> np.ndarray:
        """[n, C] float64: the weighted mean of the teachers' stored distributions at τ."""
        n, c = len(slots), self.num_classes
        out = np.zeros((n, c))
        for member, w in zip(self.members, self.weights, strict=True):
            top = member.topk_probs(slots, tau)
            k = top.shape[1]
            tail = np.clip(1.0 - top.sum(axis=1), 0.0, 1.0) / (c - k) if c > k else np.zeros(n)
            part = np.repeat(tail[:, None], c, axis=1)
            np.put_along_axis(part, member.indices[slots].astype(np.int64), top, axis=1)
            out += w * part
        return out

    def soft_parts(
        self, slots: np.ndarray, tau: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(probabilities of K listed classes, their ids, the rest of the mass) with every
        class of the teachers' top-k union listed: what `dense_soft` turns into the mean."""
        slots = np.asarray(slots)
        dense = self.dense(slots, tau)
        union = np.zeros(dense.shape, bool)
        for member in self.members:
            np.put_along_axis(union, member.indices[slots].astype(np.int64), True, axis=1)
        width = min(sum(m.indices.shape[1] for m in self.members), self.num_classes)
        listed = np.argsort(~union, axis=1, kind="stable")[:, :width]  # U first, then others
        top = np.take_along_axis(dense, listed, axis=1)
        tail = np.clip(1.0 - top.sum(axis=1), 0.0, 1.0)
        return (
            torch.from_numpy(top.astype(np.float32)),
            torch.from_numpy(listed.astype(np.int64)),
            torch.from_numpy(tail.astype(np.float32)),
        )

    def soft(self, slots: np.ndarray, tau: float) -> torch.Tensor:
        return torch.from_numpy(self.dense(np.asarray(slots), tau).astype(np.float32))

    def hard(self, slots: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.top1[np.asarray(slots)])

    def _hard(self, slots: np.ndarray) -> np.ndarray:
        if self.members[0].values is not None:
            return self.dense(slots, 1.0).argmax(axis=1)
        votes = np.zeros((len(slots), self.num_classes))
        for member, w in zip(self.members, self.weights, strict=True):
            votes[np.arange(len(slots)), member.indices[slots, 0].astype(np.int64)] += w
        return votes.argmax(axis=1)
