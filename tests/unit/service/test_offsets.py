"""Which offsets a checkpoint commits, for every client alike: processed positions or an
earlier snapshot of them, only for partitions still held, never behind the last commit,
unchanged ones again, and a round trip when there is nothing to commit."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from service.errors import GroupChangingError
from service.offsets import Offsets


class Commits(list[dict[int, int]]):
    def __init__(self) -> None:
        super().__init__()
        self.refuse = False

    def __call__(self, offsets: Mapping[int, int], timeout: float) -> None:
        if self.refuse:
            raise GroupChangingError("commit refused: RebalanceInProgressError")
        self.append(dict(offsets))


def _offsets() -> tuple[Offsets, Commits]:
    commits = Commits()
    return Offsets("readings", commits), commits


def test_commits_the_processed_positions_and_again_when_unchanged() -> None:
    offsets, commits = _offsets()
    offsets.processed({0: 5, 1: 9})
    assert offsets.pending_commit() == {0: 5, 1: 9}
    assert offsets.commit(1.0) == {0: 5, 1: 9}
    assert offsets.pending_commit() == {}
    assert offsets.commit(1.0) == {}  # nothing moved, committed again all the same
    assert commits == [{0: 5, 1: 9}, {0: 5, 1: 9}]


def test_nothing_processed_commits_nothing_but_still_asks_the_source() -> None:
    offsets, commits = _offsets()
    assert offsets.commit(1.0) == {}
    assert commits == [{}]


def test_earlier_positions_only_for_partitions_still_held_and_never_backwards() -> None:
    offsets, commits = _offsets()
    offsets.processed({0: 5, 1: 9})
    noted = offsets.positions()
    offsets.processed({0: 7})  # processed after the positions were noted
    assert offsets.commit(1.0, noted) == {0: 5, 1: 9}
    assert offsets.pending_commit() == {0: 7}  # what came after is still to commit
    assert offsets.revoked({1, 3}) == {1: 9}
    offsets.forget({1})
    offsets.commit(1.0, {0: 3, 1: 12})  # 1 is gone; 0 never goes back to 3
    assert commits[-1] == {0: 5}


def test_a_refused_commit_leaves_the_offsets_to_commit() -> None:
    offsets, commits = _offsets()
    offsets.processed({0: 5})
    commits.refuse = True
    with pytest.raises(GroupChangingError):
        offsets.commit(1.0)
    assert offsets.pending_commit() == {0: 5}
    commits.refuse = False
    offsets.commit(1.0)
    assert offsets.pending_commit() == {}
