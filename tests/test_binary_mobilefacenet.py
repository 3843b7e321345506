"""mobilefacenet_1bit: the teacher's topology with 1-bit pointwise convs, started from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from students import binary_mobilefacenet as mfn1
from students import create_student, init_from_teacher, list_students
from students.binary_mobilefacenet import BinaryMobileFaceNet, channel_shortcut
from students.layers import BinaryConv2d, ExplicitPadConv2d, RPReLU, binary_convs
from teachers import mobilefacenet as teacher_module
from teachers.mobilefacenet import MobileFaceNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CKPT = Path(__file__).resolve().parents[1].parent / "shared/weights/mobilefacenet_casia_068.ckpt"
#: a reduced setting (3 bottlenecks, 7 binary convs) for the quick LCE round trips
SMALL = ((2, 64, 1, 2), (4, 128, 1, 2), (2, 128, 1, 1))


def _randomise(model: nn.Module, seed: int = 0) -> None:
    """Non-default BN and PReLU values, so that a missed copy or a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)


def _teacher(seed: int = 0, **kwargs) -> MobileFaceNet:
    torch.manual_seed(seed)
    teacher = MobileFaceNet(**kwargs)
    _randomise(teacher, seed)
    return teacher.eval()


def test_shapes_layers_and_parameters() -> None:
    assert "mobilefacenet_1bit" in list_students()
    torch.manual_seed(0)
    student = create_student("mobilefacenet_1bit").train()
    assert isinstance(student, BinaryMobileFaceNet) and student.embedding_size == 128
    y = student(torch.randn(2, 3, 112, 112))
    assert y.shape == (2, 128) and torch.isfinite(y).all()
    y.pow(2).sum().backward()
    convs = [m for m in student.modules() if isinstance(m, BinaryConv2d)]
    # 15 bottlenecks x (expand, project) + conv2, every one 1x1 stride 1 with a latent gradient
    assert len(convs) == 31 and len(binary_convs(student)) == 31
    assert all(m.conv.kernel_size == (1, 1) and m.conv.stride == (1, 1) for m in convs)
    assert all(m.conv.weight.grad is not None for m in convs)
    # stem, depthwise convs and head stay float
    for name in ("conv1.conv", "dw_conv1.conv", "blocks.0.conv.3", "linear7.conv", "linear1.conv"):
        assert not isinstance(student.get_submodule(name), BinaryConv2d), name
    assert isinstance(student.conv1.conv, ExplicitPadConv2d)
    teacher = MobileFaceNet()
    assert sum(p.numel() for p in student.parameters()) == sum(
        p.numel() for p in teacher.parameters()
    )
    with torch.no_grad():  # 112x96 input passes through, like the teacher's
        small = create_student("mobilefacenet_1bit", embedding_size=64).eval()
        assert small(torch.randn(1, 3, 112, 96)).shape == (1, 64)
    with pytest.raises(ValueError, match="112"):
        student(torch.randn(1, 3, 96, 96))
    twin = create_student("mobilefacenet_1bit", binary=False)
    twin.load_state_dict(student.state_dict())  # the float twin has the same parameters


def test_the_restated_teacher_parts_agree_with_the_teacher() -> None:
    """students may not import teachers: the stage table and the crop are copies."""
    assert mfn1.MOBILEFACENET_SETTING == teacher_module.MOBILEFACENET_SETTING
    x = torch.randn(2, 3, 112, 112)
    assert torch.equal(mfn1.crop_input(x), MobileFaceNet.crop_input(x))
    x96 = torch.randn(1, 3, 112, 96)
    assert mfn1.crop_input(x96) is x96
    for bad in (torch.randn(1, 3, 112, 100), torch.randn(1, 1, 112, 112)):
        with pytest.raises(ValueError, match="112"):
            mfn1.crop_input(bad)


def test_default_weight_scale_is_the_mean_abs_of_each_output_channel() -> None:
    torch.manual_seed(0)
    conv = create_student("mobilefacenet_1bit").blocks[0].conv[0].conv
    w = conv.weight.detach()
    q = conv.quant_weight().value.detach()
    expected = torch.where(w >= 0, 1.0, -1.0) * w.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(q, expected, atol=1e-6)
    const = create_student("mobilefacenet_1bit", weight_scale="const")
    assert torch.equal(
        const.blocks[0].conv[0].conv.quant_weight().value.abs().unique(), torch.ones(1)
    )


def test_channel_shortcuts_identity_repeat_and_group_mean() -> None:
    x = torch.randn(2, 8, 3, 3)
    assert channel_shortcut(x, 8, 8) is x
    up = channel_shortcut(x, 8, 32)
    assert torch.equal(up, torch.cat([x] * 4, 1))
    assert torch.allclose(channel_shortcut(up, 32, 8), x)  # the mean of the groups undoes it
    h = torch.randn(2, 16, 3, 3)
    assert torch.allclose(channel_shortcut(h, 16, 8), (h[:, :8] + h[:, 8:]) / 2)
    with pytest.raises(ValueError, match="12"):
        channel_shortcut(x, 8, 12)


@pytest.mark.parametrize("size", [(112, 96), (56, 48), (7, 6), (9, 7)])
@pytest.mark.parametrize(("stride", "groups"), [(2, 1), (2, 8), (1, 8)])
def test_explicit_pad_conv_computes_what_the_torch_conv_does(size, stride, groups) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, stride, 1, groups=groups, bias=False)
    explicit = ExplicitPadConv2d(8, 8, 3, stride, 1, groups=groups, bias=False)
    explicit.load_state_dict(conv.state_dict())
    x = torch.randn(1, 8, *size)
    assert torch.allclose(explicit(x), conv(x), atol=1e-6)


def test_init_from_teacher_copies_every_teacher_tensor() -> None:
    teacher = _teacher()
    state = teacher.state_dict()
    for binary in (True, False):
        student = create_student("mobilefacenet_1bit", binary=binary, rsign=True, rprelu=True)
        copied = init_from_teacher(student, state)
        assert copied == list(state)  # every teacher key, in order
        mine = student.state_dict()
        for key, value in state.items():
            module, _, leaf = key.rpartition(".")
            is_binary = isinstance(student.get_submodule(module), BinaryConv2d)
            name = f"{module}.conv.{leaf}" if is_binary else key
            assert torch.equal(mine[name], value), key
        # a binarized conv's latent weight is the teacher's float weight
        assert torch.equal(student.conv2.conv.conv.weight, teacher.conv2.conv.weight)
        # the ReActNet tensors are the student's own and keep their neutral start
        rest = set(mine) - {n for n in mine if n in state or n.endswith(".conv.weight")}
        assert rest and all(n.rsplit(".", 1)[-1] in ("beta", "gamma", "zeta") for n in rest)
        assert all(not mine[n].any() for n in rest)
        assert any(isinstance(m, RPReLU) for m in student.modules())


def test_a_float_copy_of_the_teacher_reproduces_its_embeddings() -> None:
    """With no 1x1 conv binarized the student is the teacher, layer for layer (the explicit
    padding of the strided convs included), so init_from_teacher misses nothing. (The float
    twin of the 1-bit student differs by design: hardtanh before each binarized conv and the
    Bi-Real shortcuts.)"""
    teacher = _teacher()
    student = create_student("mobilefacenet_1bit", binary_pointwise=()).eval()
    assert set(student.state_dict()) == set(teacher.state_dict())
    init_from_teacher(student, teacher.state_dict())
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(student(x), teacher(x), atol=1e-5)
        twin = create_student("mobilefacenet_1bit", binary=False).eval()
        init_from_teacher(twin, teacher.state_dict())
        assert torch.isfinite(twin(x)).all()


def test_init_from_teacher_names_the_key_that_does_not_fit() -> None:
    student = create_student("mobilefacenet_1bit")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    wide = _teacher(embedding_size=256).state_dict()
    with pytest.raises(ValueError, match=r"'linear1\.conv\.weight'.*\(256, 512, 1, 1\)"):
        init_from_teacher(student, wide)
    with pytest.raises(ValueError, match="'head.weight'"):
        init_from_teacher(student, {**_teacher().state_dict(), "head.weight": torch.zeros(1)})
    after = student.state_dict()  # nothing was copied before the error
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="rsign"):  # no binary conv, no sign to shift
        create_student("mobilefacenet_1bit", binary_pointwise=(), rsign=True)
    create_student("mobilefacenet_1bit", binary_pointwise=("conv2",), rsign=True)
    create_student("mobilefacenet_1bit", binary=False, rsign=True)  # a twin keeps beta
    with pytest.raises(ValueError, match="depthwise"):
        create_student("mobilefacenet_1bit", binary_pointwise=("depthwise",))


@pytest.mark.shared
@pytest.mark.skipif(not CKPT.is_file(), reason="../shared is absent")
def test_the_pretrained_checkpoint_initialises_the_student() -> None:
    from teachers.checkpoint import read_state_dict

    state = read_state_dict(CKPT)
    student = create_student("mobilefacenet_1bit")
    assert len(init_from_teacher(student, state)) == len(state)


def _export(tmp_path: Path, setting=None, converter: str = "onnx2tf", **options):
    """Export the full student started from a (random) teacher, or a reduced ``setting``
    with random weights; RSign / RPReLU shifts away from 0, so that they matter."""
    from export.student_export import export_student

    args = {"setting": setting, "embedding_size": 32} if setting else {}
    torch.manual_seed(0)
    student = create_student("mobilefacenet_1bit", **args, **options).eval()
    if setting:
        _randomise(student)
    else:
        init_from_teacher(student, _teacher().state_dict())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if name.rsplit(".", 1)[-1] in ("beta", "gamma", "zeta"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.4 - 0.2)
    twin = create_student("mobilefacenet_1bit", binary=False, **args, **options).eval()
    twin.load_state_dict(student.state_dict())
    probe = torch.randn(6, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    return student, twin, probe, export_student(student, twin, probe, tmp_path, converter)


def _check_export(student, twin, probe, result) -> None:
    from export.runtime import TFLiteRunner
    from export.tflite import flatbuffer_macs, op_histogram

    fb = Path(result.lce_tflite).read_bytes()
    ops = op_histogram(fb)
    n = len(binary_convs(student))
    assert result.metrics["export.bconv_coverage"] == 1.0 and result.float_layers == []
    assert ops["LceBconv2d"] == n and "SELECT_V2" not in ops
    report = json.loads(Path(result.report).read_text())
    if report["converter"] == "onnx2tf":  # onnx-tf keeps NCHW transposes around float layers
        assert "TRANSPOSE" not in ops
    assert report["lowering"]["warnings"] == []  # no strided conv LCE would re-pad
    # 1-bit MACs: every binary 1x1 conv, in x out channels per output pixel
    expected = 0

    def count(module, inputs, output) -> None:
        nonlocal expected
        expected += output[0].numel() * module.conv.in_channels

    hooks = [
        m.register_forward_hook(count) for m in student.modules() if isinstance(m, BinaryConv2d)
    ]
    with torch.no_grad():
        student(probe[:1])
    for h in hooks:
        h.remove()
    assert flatbuffer_macs(fb)["binary_macs"] == expected == result.metrics["model.binary_macs"]
    with torch.no_grad():
        ref, ref_float = student(probe).numpy(), twin(probe).numpy()
    lce = TFLiteRunner(fb, binary=True).embed(probe.numpy())
    flt = TFLiteRunner(Path(result.float_tflite).read_bytes(), binary=False).embed(probe.numpy())
    np.testing.assert_allclose(lce, ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(flt, ref_float, rtol=1e-3, atol=1e-3)
    assert result.metrics["export.cosine_min"] > 0.9999
    assert np.abs(ref - ref_float).max() > 1e-2  # the binary model really binarizes


@pytest.mark.slow
def test_the_full_student_from_its_teacher_exports_every_binary_conv_to_lce(tmp_path) -> None:
    student, twin, probe, result = _export(tmp_path)
    assert len(binary_convs(student)) == 31
    _check_export(student, twin, probe, result)
    assert result.metrics["model.binary_macs"] == 176_160_768


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "converter"),
    [
        ({"rsign": True}, "onnx2tf"),
        ({"rprelu": True}, "onnx2tf"),
        ({"rsign": True, "rprelu": True}, "onnx-tf"),
    ],
)
def test_reactnet_variants_export_with_full_coverage_and_parity(
    tmp_path, options, converter
) -> None:
    from export.tflite import op_histogram

    student, twin, probe, result = _export(tmp_path, SMALL, converter, **options)
    assert isinstance(student, BinaryMobileFaceNet) and len(binary_convs(student)) == 7
    _check_export(student, twin, probe, result)
    if options.get("rsign"):  # each threshold stays a float Sub in front of its LceQuantize
        assert op_histogram(Path(result.lce_tflite).read_bytes())["SUB"] >= 7
