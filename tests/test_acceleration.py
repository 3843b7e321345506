"""Faster CPU distillation: what ``auto`` picks on which machine, and that the fast paths
train the same student (channels-last layout, compiled step, a compiler that fails)."""

from __future__ import annotations

import pytest
import torch

import distill.acceleration as acc
from distill.module import Distiller
from pipelines.core.config import PipelineConfig
from pipelines.orchestration.stages import DistillStage, TwinStage
from students.registry import create_student


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path) -> None:
    assert acc.cpu_has_native_bf16(frozenset({"avx512f", "amx_bf16"}))
    assert acc.cpu_has_native_bf16(frozenset({"avx512_bf16"}))
    assert not acc.cpu_has_native_bf16(frozenset({"avx2", "avx512f"}))
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert acc.cpu_flags.__wrapped__(str(cpuinfo)) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert acc.cpu_flags.__wrapped__(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize(
    ("setting", "distillation", "cuda", "bf16", "expected"),
    [
        ("auto", True, True, False, "16-mixed"),
        ("auto", True, False, True, "bf16-mixed"),
        ("auto", True, False, False, "32-true"),  # emulated bf16 is slower than fp32
        ("auto", False, False, True, "32-true"),  # teachers keep fp32 on CPUs
        ("32-true", True, False, True, "32-true"),  # an explicit setting wins
    ],
)
def test_auto_precision(monkeypatch, setting, distillation, cuda, bf16, expected) -> None:
    monkeypatch.setattr(acc, "cpu_has_native_bf16", lambda flags=None: bf16)
    assert acc.resolve_precision(setting, distillation, cuda=cuda) == expected


def test_compile_auto_needs_a_long_run_and_a_compiler(monkeypatch) -> None:
    monkeypatch.setattr(acc, "compiler_available", lambda: True)
    assert not acc.resolve_compile("auto", acc.COMPILE_MIN_STEPS - 1, "birealface")
    assert acc.resolve_compile("auto", acc.COMPILE_MIN_STEPS, "birealface")
    assert not acc.resolve_compile("auto", 10**6, "quicknet_small")  # measured slower compiled
    assert acc.resolve_compile(True, 1, "quicknet_small")
    assert not acc.resolve_compile(False, 10**6, "birealface")
    monkeypatch.setattr(acc, "compiler_available", lambda: False)
    assert not acc.resolve_compile("auto", 10**6, "birealface")
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        assert not acc.resolve_compile(True, 10**6, "birealface")


def test_a_failed_compilation_trains_eager_and_says_why(monkeypatch) -> None:
    def broken(model):
        def call(x):
            raise RuntimeError("no backend for this op\nlong trace")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    model = torch.nn.Linear(4, 2)
    messages: list[str] = []
    forward = acc.CompiledForward(model, log=messages.append)
    x = torch.randn(3, 4)
    assert torch.equal(forward(x), model(x)) and forward.failed
    assert messages == [
        "note: torch.compile of the student failed (RuntimeError: no backend for this op); "
        "training eager"
    ]
    assert torch.equal(forward(x), model(x)) and len(messages) == 1  # said once


def _distiller(**kwargs) -> Distiller:
    torch.manual_seed(0)
    student = create_student("birealface", width=32, depths=[1, 1, 1], embedding_size=16)
    cached = torch.nn.functional.normalize(torch.randn(8, 2, 16), dim=-1)
    module = Distiller(student, None, {"cosine": 1.0}, cached=cached, augment=False, **kwargs)
    module.log = lambda *a, **k: None
    return module.train()


def _batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8, generator=g)
    return images, torch.arange(4), torch.full((4,), -1), torch.zeros(4, dtype=torch.bool)


def test_channels_last_gives_the_same_loss_and_hands_back_a_default_layout_student() -> None:
    plain, fast = _distiller(), _distiller(channels_last=True)
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # equal up to float32 summation order (which can flip a sign near zero in a 1-bit net)
    torch.testing.assert_close(
        fast.training_step(_batch(), 0), plain.training_step(_batch(), 0), atol=5e-3, rtol=5e-3
    )
    fast.on_train_end()
    assert all(p.is_contiguous() for p in fast.model.parameters())
    assert fast.model.state_dict().keys() == plain.model.state_dict().keys()


def test_speed_switches_stay_out_of_the_stage_fingerprint() -> None:
    def settings(train: dict) -> tuple[dict, dict]:
        cfg = PipelineConfig.model_validate(
            {"pipeline": {"name": "p"}, "distill": {"control": "twin", "train": train}}
        )
        return DistillStage().settings(cfg), TwinStage().settings(cfg)

    assert settings({"compile": False, "channels_last": False}) == settings({})
    assert settings({"compile": True}) == settings({"compile": "auto"})
    assert settings({"lr": 1e-3}) != settings({})  # what is learned still counts
    # a key added later is left out while unset: stages cached before it stay valid
    assert "eval_every_steps" not in settings({})[0]["train"]
    assert settings({"eval_every_steps": 5}) != settings({})


@pytest.mark.slow
@pytest.mark.skipif(not acc.compiler_available(), reason="torch.compile needs a C++ compiler")
def test_a_compiled_step_trains_like_the_eager_one() -> None:
    eager, compiled = _distiller(), _distiller(compile_student=True)
    assert "_student_step" not in dict(compiled.named_modules())  # not in the state dict
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    for module in (eager, compiled):
        opt = torch.optim.Adam(module.model.parameters(), 1e-3)
        losses = []
        for i in range(3):
            loss = module.training_step(_batch(), i)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        module.losses = losses
    assert not compiled._student_step.failed
    torch.testing.assert_close(compiled.losses, eager.losses, atol=2e-3, rtol=2e-3)
