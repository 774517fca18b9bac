"""What proves a teacher's arrays are its own and as written: the seal each teacher's split
group carries (salting its shard checksums), and a done shard whose bytes differ from its
checksum (`ShardProblem`)."""

from __future__ import annotations

from dataclasses import dataclass

from deit_pipe.errors import StoreCorruptError
from deit_pipe.place import storage_errors
from deit_pipe.storage.format import SEAL, seal_salt, teacher_seal


class TeacherSealError(StoreCorruptError):
    """A teacher's split group holds arrays sealed for another teacher (copied there)."""


def split_salt(group, spec, url: str, teacher: str, split: str) -> int:
    """The checksum salt of `teacher`'s `split` arrays, from the group's seal, which must be
    this teacher's as the metadata describes it; 0 for a group made before seals."""
    where = spec.prefix(teacher) + split
    with storage_errors(url, f"{where}/zarr.json"):
        seal = group[where].attrs.get(SEAL)
    if seal is None:  # made before seals: the teacher is unproved, as it always was
        return 0
    expected = teacher_seal(teacher, spec.teacher_info(teacher))
    if not isinstance(seal, dict) or seal != expected:
        held = seal.get("name") if isinstance(seal, dict) else seal
        whose = (
            f"another teacher named {held!r} (other provenance)"
            if held == teacher
            else f"teacher {held!r}"
        )
        raise TeacherSealError(
            f"{url}: {where} holds the arrays of {whose}, not of {teacher!r}: they were copied "
            f"there; put {teacher}'s own arrays back, or precompute the store again with "
            "--overwrite"
        )
    return seal_salt(seal)


@dataclass(frozen=True)
class ShardProblem:
    """A shard marked done whose array no longer matches its write-time checksum."""

    url: str
    split: str
    epoch: int
    shard: int
    array: str
    why: str

    def __str__(self) -> str:
        return (
            f"{self.url}: {self.split}/{self.array} epoch {self.epoch} shard {self.shard} is "
            f"not what was written ({self.why}); its values cannot be trusted: recompute it "
            "with the precompute command plus --repair"
        )
