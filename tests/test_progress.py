"""faces.progress: off a terminal, at most one line per interval and the stage's last line."""

from __future__ import annotations

import re

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from faces import progress
from faces.progress import ProgressLines, format_duration

LINE = re.compile(
    r"^\[fit\] epoch \d+/3, step \d+/12: \d+ images/s, loss \d+\.\d{4}, ETA \d+ (s|min \d+ s)$"
)


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x).squeeze(1), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(callback: pl.Callback, epochs: int = 3, max_steps: int = -1) -> None:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, generator=g))
    trainer = pl.Trainer(
        max_epochs=epochs,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        callbacks=[callback],
    )
    trainer.fit(_Tiny(), DataLoader(data, batch_size=8))


class _Clock:
    """Advances ``step`` seconds every time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_at_most_one_line_per_interval_and_the_last_line() -> None:
    # 12 steps in 3 epochs, the clock advancing 0.5 s per read: the whole fit is a few seconds,
    # so a 30 s interval leaves only the stage's last line, not one per epoch
    lines: list[str] = []
    _fit(ProgressLines("fit", every_seconds=30, write=lines.append, clock=_Clock(0.5)))
    assert len(lines) == 1, lines
    assert LINE.match(lines[0]), lines
    assert lines[0].startswith("[fit] epoch 3/3, step 12/12:") and lines[0].endswith("ETA 0 s")


def test_lines_follow_the_interval_not_the_epochs() -> None:
    lines: list[str] = []
    _fit(ProgressLines("fit", every_seconds=3, write=lines.append, clock=_Clock(1.0)))
    assert all(LINE.match(line) for line in lines), lines
    assert lines[-1].startswith("[fit] epoch 3/3, step 12/12:")
    assert 2 <= len(lines) < 12, lines  # more than the last line, fewer than one per step
    # lines inside epochs too (steps that are not the end of an epoch)
    assert any(not re.search(r"step (4|8|12)/12:", line) for line in lines), lines


def test_a_quick_stage_after_a_line_still_ends_with_its_last_line() -> None:
    lines: list[str] = []
    _fit(ProgressLines("fit", every_seconds=1, write=lines.append, clock=_Clock(0.3)), epochs=1)
    assert lines[-1].startswith("[fit] epoch 1/1, step 4/4:"), lines


def test_a_budget_of_steps_is_the_total_and_ends_the_count() -> None:
    # max_steps 6 of 1000 epochs of 4 steps: the lines count to 6 in 2 epochs, not 4000
    lines: list[str] = []
    _fit(ProgressLines("fit", every_seconds=30, write=lines.append, clock=_Clock(0.5)), 1000, 6)
    assert lines[-1].startswith("[fit] epoch 2/2, step 6/6:"), lines


def test_eta_is_bounded_by_max_minutes() -> None:
    lines: list[str] = []
    cb = ProgressLines("fit", every_seconds=2, max_minutes=1, write=lines.append, clock=_Clock(1))
    _fit(cb, epochs=3)
    assert "ETA" in lines[0] and int(re.search(r"ETA (\d+) s", lines[0]).group(1)) < 60


def test_format_duration() -> None:
    assert format_duration(42.4) == "42 s"
    assert format_duration(192) == "3 min 12 s"
    assert format_duration(7500) == "2 h 05 min"
    assert format_duration(-3) == "0 s"


def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.every_seconds() == 30.0
    monkeypatch.setenv(progress.ENV, "0.5")
    assert progress.every_seconds() == 0.5
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv(progress.ENV, bad)
        with pytest.raises(progress.ProgressSettingError, match="FACEKD_PROGRESS_SECONDS"):
            progress.every_seconds()


def test_lines_only_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    assert progress.progress_callbacks("fit") == []
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    (cb,) = progress.progress_callbacks("fit", max_minutes=3)
    assert isinstance(cb, ProgressLines) and cb.max_s == 180
