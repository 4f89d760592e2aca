"""Pending budget work survives its process: a journal left by a killed process is taken over."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from app.budgets.journal import PendingJournal
from app.budgets.local_ledger import LocalLedger
from app.budgets.store import PendingSettle

ROOT = Path(__file__).resolve().parents[2]


def pending(n: int) -> PendingSettle:
    return PendingSettle(
        reservation_id=f"req_{n}:0",
        key_id="key-1",
        period_keys=("m", "d", "mo"),
        period_expiry=(1, 2, 3),
        amounts=(n, 1, 0, 0, 0, 0),
    )


def test_a_killed_process_journal_is_taken_over_once_and_removed(tmp_path: Path) -> None:
    # A real process journals three settles and an invalidation, then dies by SIGKILL.
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from app.budgets.journal import PendingJournal
        from app.budgets.local_ledger import LocalLedger
        from app.budgets.store import PendingSettle
        ledger = LocalLedger(PendingJournal(Path({str(tmp_path)!r})))
        for n in range(3):
            settle = PendingSettle(f"req_{{n}}:0", "key-1", ("m", "d", "mo"), (1, 2, 3), (n, 1, 0, 0, 0, 0))
            ledger.add_settle("team-1", settle)
        ledger.add_invalidation("team-2", "tw:limits:team-2")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == -9, done.stderr
    assert len(list(tmp_path.glob("pending-*.jsonl"))) == 1

    successor = LocalLedger(PendingJournal(tmp_path))
    batches = successor.take()
    settles = sorted((s.reservation_id, s.amounts[0]) for b in batches for s in b.settles)
    assert settles == [("req_0:0", 0), ("req_1:0", 1), ("req_2:0", 2)]
    assert any("tw:limits:team-2" in b.invalidate for b in batches)
    # The orphan is gone; its work now lives in the successor's own journal until Redis confirms it.
    files = list(tmp_path.glob("pending-*.jsonl"))
    assert files == [successor.journal.path]  # type: ignore[union-attr]
    assert len(files[0].read_bytes().splitlines()) == 4
    successor.confirm(batches)
    assert files[0].read_bytes() == b""


def test_a_live_process_journal_is_left_alone(tmp_path: Path) -> None:
    alive = LocalLedger(PendingJournal(tmp_path))
    alive.add_settle("team-1", pending(7))
    other = LocalLedger(PendingJournal(tmp_path))
    assert not other  # nothing taken: the owner holds its lock
    assert alive.pending_settles() == 1


def test_a_clean_close_with_work_left_hands_it_to_the_next_process(tmp_path: Path) -> None:
    first = LocalLedger(PendingJournal(tmp_path))
    first.add_settle("team-1", pending(3))
    first.journal.close()  # type: ignore[union-attr]
    second = LocalLedger(PendingJournal(tmp_path))
    assert second.pending_settles() == 1
    empty = LocalLedger(PendingJournal(tmp_path / "other"))
    empty.journal.close()  # type: ignore[union-attr]
    assert not list((tmp_path / "other").glob("pending-*.jsonl"))  # an empty journal leaves no file


def test_a_line_cut_by_the_kill_is_skipped_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "pending-1-dead.jsonl").write_bytes(b'{"team": "t", "settle": {"reservation_id": "r:0"')
    ledger = LocalLedger(PendingJournal(tmp_path))
    assert not ledger
