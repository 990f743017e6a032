"""A resumed run's log.jsonl: the steps trained again after the checkpoint are listed once (end to end in
tests/test_training_distributed.py::test_resume_after_sigkill_is_exact, whose killed run trains steps again)."""

from __future__ import annotations

from pg_vla.training.trainer import _truncate_log


def test_truncate_log_keeps_records_up_to_the_step(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(
        '{"step": 0, "val_loss": 1.5}\n'
        '{"step": 1, "loss": 0.9}\n'
        '{"event": "note"}\n'
        '{"step": 2, "loss": 0.8}\n'
        '{"step": 3, "loss": 0.7}\n'
        '{"step": 4, "lo'
    )  # cut off by a crash
    _truncate_log(log, 2)
    assert log.read_text() == (
        '{"step": 0, "val_loss": 1.5}\n{"step": 1, "loss": 0.9}\n{"event": "note"}\n{"step": 2, "loss": 0.8}\n'
    )
    _truncate_log(log, 2)  # nothing to drop: unchanged
    assert log.read_text().count("\n") == 4
    _truncate_log(tmp_path / "missing.jsonl", 2)  # no log yet: nothing to do
    assert not (tmp_path / "missing.jsonl").exists()
