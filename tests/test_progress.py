"""faces.progress: one line per epoch (and every few minutes within one) off a terminal."""

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


def _fit(callback: pl.Callback, epochs: int = 3) -> None:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, generator=g))
    trainer = pl.Trainer(
        max_epochs=epochs,
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


def test_one_line_per_epoch() -> None:
    lines: list[str] = []
    _fit(ProgressLines("fit", every_minutes=60, write=lines.append, clock=_Clock(0.5)))
    assert len(lines) == 3, lines
    assert all(LINE.match(line) for line in lines), lines
    assert lines[-1].startswith("[fit] epoch 3/3, step 12/12:") and lines[-1].endswith("ETA 0 s")
    assert "ETA 0 s" not in lines[0]


def test_lines_within_a_long_epoch() -> None:
    lines: list[str] = []
    _fit(ProgressLines("fit", every_minutes=1, write=lines.append, clock=_Clock(40)))
    within = [line for line in lines if not re.search(r"step (4|8|12)/12:", line)]
    assert within and all(LINE.match(line) for line in lines), lines


def test_eta_is_bounded_by_max_minutes() -> None:
    lines: list[str] = []
    cb = ProgressLines("fit", every_minutes=60, max_minutes=1, write=lines.append, clock=_Clock(1))
    _fit(cb, epochs=3)
    assert "ETA" in lines[0] and int(re.search(r"ETA (\d+) s", lines[0]).group(1)) < 60


def test_format_duration() -> None:
    assert format_duration(42.4) == "42 s"
    assert format_duration(192) == "3 min 12 s"
    assert format_duration(7500) == "2 h 05 min"
    assert format_duration(-3) == "0 s"


def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.every_minutes() == 5.0
    monkeypatch.setenv(progress.ENV, "0.5")
    assert progress.every_minutes() == 0.5
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv(progress.ENV, bad)
        with pytest.raises(progress.ProgressSettingError, match="FACEKD_PROGRESS_MINUTES"):
            progress.every_minutes()


def test_lines_only_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    assert progress.progress_callbacks("fit") == []
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    (cb,) = progress.progress_callbacks("fit", max_minutes=3)
    assert isinstance(cb, ProgressLines) and cb.max_s == 180
