"""The pipeline YAML schema: validated in full before any stage runs."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from faces.verification_sets import SetSpec


STAGE_ORDER = ("teacher", "twin", "distill", "export", "evaluate", "privacy")
# ``twin`` joins when distill.control or distill.init asks for it; ``privacy`` is optional: it
# trains attacks for minutes
DEFAULT_STAGES = ("teacher", "distill", "export", "evaluate")
StageName = Literal["teacher", "twin", "distill", "export", "evaluate", "privacy"]


class ConfigError(ValueError):
    """A pipeline file or override is invalid; the message names the file and key path."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class PipelineInfo(Section):
    name: str
    experiment: str = "facekd"
    output_dir: str | None = None
    seed: int = 0
    tags: dict[str, str] = {}  # extra tags of the MLflow parent run (e.g. facekd.ablation)


class SyntheticData(Section):
    identities: int = Field(48, ge=4)
    images_per_identity: int = Field(16, ge=2)
    seed: int = 0


class EvalSetConfig(Section):
    """One evaluation set of a ``data.eval`` list: ``path`` as ``data.eval`` takes it, its own
    ``name`` (metric keys ``verify.<name>.*``), ``pairs_file`` and ``pairs`` (folders)."""

    path: str
    name: str | None = None
    pairs_file: str | None = None
    pairs: int | None = Field(None, ge=20)


class DataConfig(Section):
    """``train``: ``synthetic``, an ImageFolder or a RecordIO folder (``train.rec``/``.idx``);
    ``eval``: null (held-out people of ``train``), an ImageFolder, an InsightFace ``.bin`` or an
    image folder with ``eval_pairs_file`` (LFW ``pairs.txt`` or a CSV/TSV ``path_a, path_b,
    same[, fold]`` file), or a list of such sets (paths or ``{path, name, pairs_file, pairs}``;
    every set is scored, ``verify.mean.acc`` averages them). ``threshold_from``: a set's name:
    ``verify.<set>.acc_at_far`` at the threshold that gives ``threshold_far`` there.
    ``extra_train``: more ImageFolders whose people join ``train`` (names prefixed by the
    folder). ``bad_images``: an unreadable or truncated training (or held-out) image stops the
    run (``fail``) or is left out, counted and listed (``skip``); separate evaluation sets
    always fail (fixed protocol)."""

    train: str = "synthetic"
    extra_train: list[str] = []
    eval: str | list[str | EvalSetConfig] | None = None
    eval_pairs_file: str | None = None
    eval_name: str | None = None
    threshold_from: str | None = None
    threshold_far: float = Field(1e-3, gt=0, lt=1)
    eval_fraction: float = Field(0.25, gt=0, lt=1)
    eval_pairs: int = Field(3000, ge=20)
    min_images_per_identity: int = Field(2, ge=1)
    bad_images: Literal["fail", "skip"] = "fail"
    # training images are read on demand (RecordIO index, folder listing) by loader workers;
    # ``auto`` decodes them into memory first when they fit in ``memory_budget_mb``
    cache_in_memory: Literal["auto"] | bool = "auto"
    memory_budget_mb: int = Field(1024, ge=0)
    num_workers: Literal["auto"] | int = "auto"  # auto: the CPUs available, less one
    augment_on: Literal["auto", "workers", "device"] = "auto"  # auto: device on a GPU
    # ``dali``: NVIDIA DALI reads a RecordIO set and decodes on the GPU (the ``gpu`` extra)
    loader: Literal["torch", "dali"] = "torch"

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, v: str | int) -> str | int:
        if isinstance(v, int) and v < 0:
            raise ValueError("num_workers must be >= 0 (0: load in the training process)")
        return v

    # folder listings (manifests) live in facekd's cache folder; ``beside``: in root/.facekd/
    manifest: Literal["cache", "beside"] = "cache"
    synthetic: SyntheticData = SyntheticData()

    @field_validator("eval", mode="before")
    @classmethod
    def _eval_entries(cls, v: Any) -> Any:
        """Errors of a ``data.eval`` list entry name the entry, not pydantic's union branches."""
        if not isinstance(v, list):
            return v
        out = []
        for i, entry in enumerate(v):
            if isinstance(entry, str | EvalSetConfig):
                out.append(entry)
                continue
            if not isinstance(entry, dict):
                raise ValueError(
                    f"entry {i}: expected a path or {{path, name, pairs_file, pairs}}, "
                    f"got {entry!r}"
                )
            try:
                out.append(EvalSetConfig.model_validate(entry))
            except ValidationError as err:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: "
                    + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
                    for e in err.errors()
                )
                raise ValueError(f"entry {i}: {problems}") from None
        return out


class MarginHeadConfig(Section):
    """A margin head; ``m1``/``m2``/``m3`` for ``combined``; ``sample_rate`` < 1: PartialFC."""

    name: Literal["arcface", "cosface", "combined"] = "arcface"
    s: float = 64.0
    m: float | None = None
    m1: float | None = None
    m2: float | None = None
    m3: float | None = None
    sample_rate: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _margins_fit_the_head(self) -> MarginHeadConfig:
        combined = (self.m1, self.m2, self.m3)
        if self.name == "combined" and self.m is not None:
            raise ValueError("the combined head takes m1, m2, m3, not m")
        if self.name != "combined" and any(v is not None for v in combined):
            raise ValueError(f"m1/m2/m3 belong to the combined head, not {self.name} (use m)")
        return self


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)  # stop after this many steps (schedules follow)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(5.0, gt=0)
    precision: str = "auto"
    eval_every: int = Field(1, ge=1)
    # also verify every this many steps: learning-curve points (and a sweep's pruning) inside
    # an epoch
    eval_every_steps: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    devices: int | str = 1  # Lightning: e.g. 4 GPUs, with strategy: ddp
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    # also on SIGTERM; a killed run continues after the last checkpointed step (0: epochs only)
    checkpoint_every_steps: int = Field(500, ge=0)


class TeacherTrainConfig(TrainConfig):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "poly"] = "cosine"
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(1.0, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    head: MarginHeadConfig = MarginHeadConfig()


class DistillTrainConfig(TrainConfig):
    """BNN training settings (``students.schedules``): Adam with linear decay by default;
    multi-stage binarization: ``float_epochs`` in full precision, then
    ``binary_activation_epochs`` with binary activations and float weights, then fully binary.
    The straight-through estimator and latent-weight clipping are student arguments
    (``distill.args: {ste: approx_sign, weight_clip: 1.25}``). ``labelled_share``: with
    unlabelled images in training, the share of labelled faces in every batch (default: their
    share of the data), for losses that need labels beside label-free ones."""

    lr: float = Field(2e-3, gt=0)
    labelled_share: float | None = Field(None, gt=0, lt=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_epochs: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    float_epochs: int = Field(0, ge=0)
    binary_activation_epochs: int = Field(0, ge=0)
    # speed (distill.acceleration; measured by benchmarks/train_speed.py): ``precision: auto``
    # is bf16-mixed on CPUs with native bf16; ``compile: auto`` compiles the student for
    # runs of 300 steps or more where a C++ compiler exists
    channels_last: bool = True
    compile: bool | Literal["auto"] = "auto"

    @model_validator(mode="after")
    def _binary_stage_left(self) -> DistillTrainConfig:
        if self.float_epochs + self.binary_activation_epochs >= self.epochs:
            raise ValueError(
                f"float_epochs ({self.float_epochs}) + binary_activation_epochs "
                f"({self.binary_activation_epochs}) leave no fully binary epoch of {self.epochs}"
            )
        return self


class TeacherConfig(Section):
    model: str = "vit_face_micro"
    args: dict[str, Any] = {}
    checkpoint: str | None = None
    train: TeacherTrainConfig = TeacherTrainConfig()


class DistillConfig(Section):
    """``losses``: registered losses with a weight (``{cosine: 1.0}``) or with a weight and
    hyper-parameters (``{margin_distillation: {weight: 1.0, s: 64, m_max: 0.5}}``); losses
    that use no teacher (``arcface``, ``cosface``) alone train the student without one.
    ``unlabelled``: image folders that only the label-free losses learn from."""

    student: str = "birealface"
    args: dict[str, Any] = {}
    losses: dict[str, float | dict[str, Any]] = {"cosine": 1.0}
    unlabelled: list[str] = []
    # ``cached``: the teacher's targets computed once into an fp16 memory map on disk;
    # ``online``: the teacher runs inside every training step
    teacher_targets: Literal["cached", "online"] = "cached"
    # ``twin``: the float twin (the student with ``binary: false``) trained in stage ``twin``
    # with the same recipe, data and budget; its accuracy is logged beside the student's and
    # ``distill.binarization_cost`` = twin minus student on every evaluation set
    control: Literal["twin"] | None = None
    # the 1-bit student's latent weights at the start: ``twin``, the distilled float twin's
    # (two-step training: Real-to-Binary, ReActNet); ``teacher``, the teacher's own weights
    # (a student built on the teacher's topology, e.g. mobilefacenet_1bit)
    init: Literal["twin", "teacher"] | None = None
    train: DistillTrainConfig = DistillTrainConfig()

    def uses_twin(self) -> bool:
        """Whether the ``twin`` stage must run before this student."""
        return "twin" in (self.control, self.init)

    @model_validator(mode="after")
    def _twin_of_a_binary_student(self) -> DistillConfig:
        if self.uses_twin() and self.args.get("binary", True) is False:
            key = "control" if self.control == "twin" else "init"
            raise ValueError(
                f"distill.{key}: twin needs a 1-bit student, but distill.args.binary is false "
                "(the student is already the float twin)"
            )
        return self

    @field_validator("losses")
    @classmethod
    def _known_losses(
        cls, v: dict[str, float | dict[str, Any]]
    ) -> dict[str, float | dict[str, Any]]:
        from distill.losses import DISTILL_LOSSES, create_loss, loss_spec

        for name, spec in v.items():
            if name not in DISTILL_LOSSES:
                raise ValueError(
                    f"unknown loss {name!r}; known: {', '.join(DISTILL_LOSSES.names())}"
                )
            create_loss(name, loss_spec(spec)[1])
        if not v:
            raise ValueError("at least one loss is needed")
        return v


class ExportConfig(Section):
    """``converter``: ONNX -> TensorFlow route, ``onnx2tf`` (NHWC) or ``onnx-tf`` (NCHW, with
    the binarizers moved inside its layout transposes, see ``export.onnx_tf``)."""

    converter: Literal["onnx2tf", "onnx-tf"] = "onnx2tf"
    allow_partial: bool = False
    probe_images: int = Field(32, ge=1)


class EvaluateConfig(Section):
    """Timing of the exported student (batch 1); ``teacher_tflite``: also the teacher as float
    and int8 TFLite (accuracy on every set, latency, size) as reference rows."""

    runs: int = Field(50, ge=1)
    warmup: int = Field(10, ge=0)
    threads: int = Field(1, ge=1)
    instances: int = Field(3, ge=1)
    teacher_tflite: bool = True


class InversionConfig(Section):
    """Template inversion: a decoder (``decoder_width`` channels) trained ``steps`` Adam steps
    on the attacker's faces; ``identity_weight`` adds the cosine between the model's template
    of a reconstruction and the original template to the pixel loss."""

    steps: int = Field(1500, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    decoder_width: int = Field(32, ge=4)
    identity_weight: float = Field(0.0, ge=0)
    sign_templates: bool = True  # also attack 1-bit (sign) templates


class GradientLeakageConfig(Section):
    """Inverting gradients (Geiping et al. 2020): ``iterations`` of signed Adam on dummy faces
    matching the cosine of the observed gradient, plus ``tv_weight`` total variation; the first
    ``faces`` attacked faces in batches of each of ``batch_sizes``."""

    iterations: int = Field(500, ge=0)
    lr: float = Field(0.1, gt=0)
    # chosen on attacker-side faces (UTKFace, 300 iterations, a distilled BiRealFace twin):
    # 1e-4 / 1e-2 / 1e-1 / 1 gave 8.4 / 9.1 / 11.2 / 10.9 dB (docs/privacy.md)
    tv_weight: float = Field(0.1, ge=0)
    batch_sizes: list[int] = [1, 4]
    faces: int = Field(4, ge=1)

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError("batch sizes must be positive integers (at least one)")
        return v


class PrivacyConfig(Section):
    """How much of a face leaks from the teacher, the float twin and the 1-bit student.

    ``attacker``: folders of faces of people disjoint from the attacked ones (any depth, no
    labels), at most ``attacker_images`` of them, evenly spaced; null: the training faces.
    ``targets``: an ImageFolder of the attacked people; null: the evaluation people (held-out
    people of ``data.train``, or ``data.eval`` when it is one ImageFolder). ``judge``: a facekd
    model artifact (``.pt``), a checkpoint of ``judge_model``, or ``dlib`` (an independent
    judge, ``privacy.judges``); null: the teacher."""

    attacks: list[Literal["inversion", "gradient"]] = ["inversion", "gradient"]
    attacker: list[str] = []
    attacker_images: int = Field(5000, ge=16)
    targets: str | None = None
    attacked_people: int = Field(100, ge=2)
    judge: str | None = None
    judge_model: str = "mobilefacenet"
    judge_args: dict[str, Any] = {}
    far: float = Field(1e-3, gt=0, lt=1)
    inversion: InversionConfig = InversionConfig()
    gradient: GradientLeakageConfig = GradientLeakageConfig()
    grid_faces: int = Field(8, ge=1)


class PipelineConfig(Section):
    pipeline: PipelineInfo
    stages: list[StageName] = list(DEFAULT_STAGES)
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    distill: DistillConfig = DistillConfig()
    export: ExportConfig = ExportConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    privacy: PrivacyConfig = PrivacyConfig()

    @model_validator(mode="after")
    def _stage_order(self) -> PipelineConfig:
        if self.distill.uses_twin() and "distill" in self.stages and "twin" not in self.stages:
            self.stages.insert(self.stages.index("distill"), "twin")  # distill.control/init
        order = [STAGE_ORDER.index(s) for s in self.stages]
        if order != sorted(order) or len(set(order)) != len(order):
            raise ValueError(f"stages must be distinct and in the order {list(STAGE_ORDER)}")
        if not self.stages:
            raise ValueError("no stages")
        return self

    def output_dir(self) -> Path:
        return Path(self.pipeline.output_dir or Path("runs") / self.pipeline.name)


def _format_errors(path: str | os.PathLike, err: ValidationError) -> str:
    lines = [f"{path}: invalid pipeline configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(
            f"  {loc}: {msg}"
            + (
                f" (got {e['input']!r})"
                if e["type"] != "extra_forbidden" and not isinstance(e.get("input"), dict)
                else ""
            )
        )
    return "\n".join(lines)


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a raw config dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY.PATH=VALUE")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment!r}: empty key in {key!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {value!r} is not valid YAML: {exc}") from None
    set_key(raw, key.strip(), parsed, f"--set {key}")


def set_key(raw: dict[str, Any], key: str, value: Any, where: str = "") -> None:
    """Set ``a.b.c`` in a raw config mapping to ``value`` (replacing, not merging)."""
    parts = key.split(".")
    where = where or key
    if not all(parts):
        raise ConfigError(f"{where}: empty key in {key!r}")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    """Read, override and validate a pipeline file; ConfigError names the file and key path."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"pipeline file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read pipeline file {path}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    if "variants" in raw:
        raise ConfigError(
            f"{path}: defines variants (an ablation): run it with `facekd ablate {path}`"
        )
    raw = copy.deepcopy(raw)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return validate_raw(raw, path)


def validate_raw(raw: dict[str, Any], source: str | os.PathLike) -> PipelineConfig:
    """Validate a raw (overridden) pipeline mapping; ConfigError names ``source`` and keys."""
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None
    _resolve_paths(config, Path(source))
    return config


def _resolve_paths(config: PipelineConfig, source: Path) -> None:
    """Check that the files and folders a config names exist (relative to the cwd)."""
    data = config.data
    train = data.train
    if train != "synthetic":
        if not Path(train).exists():
            raise ConfigError(f"{source}: data.train: folder {train} does not exist")
        if not Path(train).is_dir():
            raise ConfigError(
                f"{source}: data.train: {train} is not a folder (expected an ImageFolder or a "
                "RecordIO folder with train.rec and train.idx)"
            )
        if (Path(train) / "train.rec").is_file() and not (Path(train) / "train.idx").is_file():
            raise ConfigError(f"{source}: data.train: RecordIO folder {train} has no train.idx")
    for i, extra in enumerate(data.extra_train):
        if not Path(extra).is_dir():
            raise ConfigError(f"{source}: data.extra_train[{i}]: folder {extra} does not exist")
        if train == "synthetic" or (Path(train) / "train.rec").is_file():
            raise ConfigError(
                f"{source}: data.extra_train: extra ImageFolders are added to an ImageFolder "
                f"data.train, not to {train}"
            )
    check_eval_config(config, source)
    for i, folder in enumerate(config.distill.unlabelled):
        if not Path(folder).is_dir():
            raise ConfigError(f"{source}: distill.unlabelled[{i}]: folder {folder} does not exist")
    ckpt = config.teacher.checkpoint
    if ckpt and "teacher" in config.stages and not Path(ckpt).is_file():
        raise ConfigError(f"{source}: teacher.checkpoint: file {ckpt} does not exist")
    if "privacy" in config.stages:
        check_privacy(config.privacy, source)


def check_privacy(cfg: PrivacyConfig, source: str | os.PathLike) -> None:
    """The privacy section's folders and judge exist (ConfigError naming the key)."""
    for i, folder in enumerate(cfg.attacker):
        if not Path(folder).is_dir():
            raise ConfigError(f"{source}: privacy.attacker[{i}]: folder {folder} does not exist")
    if cfg.targets and not Path(cfg.targets).is_dir():
        raise ConfigError(f"{source}: privacy.targets: folder {cfg.targets} does not exist")
    from privacy.judges import DLIB as DLIB_JUDGE
    from privacy.judges import dlib_missing

    if cfg.judge == DLIB_JUDGE:
        if missing := dlib_missing():
            raise ConfigError(f"{source}: privacy.judge: {missing}")
    elif cfg.judge and not Path(cfg.judge).is_file():
        raise ConfigError(
            f"{source}: privacy.judge: file {cfg.judge} does not exist (or name {DLIB_JUDGE!r})"
        )


# The evaluation sets a config names (pipelines.evaluation.sets fingerprints them).
RESERVED_NAMES = ("mean",)  # verify.mean.acc averages the sets


def eval_specs(data: DataConfig) -> list[SetSpec]:
    """One :class:`SetSpec` per configured set; empty when people are held out of train."""
    # imported here: faces.verification_sets brings numpy and torch, which `facekd --help`
    # must not wait for
    from faces.verification_sets import SetSpec

    ev = data.eval
    if not ev or ev == data.train:
        return []
    if isinstance(ev, str):
        return [SetSpec(ev, data.eval_name, data.eval_pairs_file)]
    return [
        SetSpec(e) if isinstance(e, str) else SetSpec(e.path, e.name, e.pairs_file, e.pairs)
        for e in ev
    ]


def heldout_name(data: DataConfig) -> str:
    """The name of the held-out set: ``eval_name``, ``synthetic`` or ``<train>_heldout``."""
    if data.eval_name:
        return data.eval_name
    if data.train == "synthetic":
        return "synthetic"
    names = [Path(f).resolve().name for f in [data.train, *data.extra_train]]
    return "-".join(names) + "_heldout"  # MLflow metric names allow no "+"


def set_names(data: DataConfig) -> list[str]:
    """The names of the evaluation sets, in order (metric keys ``verify.<name>.*``)."""
    from faces.verification_sets import default_set_name

    specs = eval_specs(data)
    return [default_set_name(s) for s in specs] if specs else [heldout_name(data)]


def _check_one(spec: SetSpec, key: str, pairs_key: str, source: Path) -> None:
    """``key`` names the set's path in errors, ``pairs_key`` its pairs file."""
    ev = Path(spec.path)
    if not ev.exists():
        raise ConfigError(f"{source}: {key}: {spec.path} does not exist")
    if ev.is_file() and ev.suffix.lower() != ".bin":
        raise ConfigError(
            f"{source}: {key}: {spec.path} is a file but not an InsightFace .bin "
            "(expected an ImageFolder, a .bin or a folder with a pairs file)"
        )
    if spec.pairs_file is None:
        return
    if not ev.is_dir():
        raise ConfigError(
            f"{source}: {pairs_key}: needs {key} to be an image folder (got {spec.path!r})"
        )
    if not Path(spec.pairs_file).is_file():
        raise ConfigError(f"{source}: {pairs_key}: file {spec.pairs_file} does not exist")


def check_eval_config(config: PipelineConfig, source: Path) -> None:
    """Files and folders of ``data.eval`` exist, set names are distinct, ``threshold_from``
    names one of them; ConfigError names the file and key."""
    data = config.data
    if isinstance(data.eval, list):
        if not data.eval:
            raise ConfigError(f"{source}: data.eval: an empty list (null holds people out)")
        singles = {"eval_pairs_file": data.eval_pairs_file, "eval_name": data.eval_name}
        for key, value in singles.items():
            if value is not None:
                raise ConfigError(
                    f"{source}: data.{key}: with a list of evaluation sets, give each set its own "
                    f"({key.removeprefix('eval_')}: in the data.eval entry)"
                )
        for i, spec in enumerate(eval_specs(data)):
            entry = f"data.eval[{i}]"
            where = entry if isinstance(data.eval[i], str) else f"{entry}.path"
            _check_one(spec, where, f"{entry}.pairs_file", source)
    elif data.eval_pairs_file and not data.eval:
        raise ConfigError(
            f"{source}: data.eval_pairs_file: needs data.eval to be an image folder (got None)"
        )
    elif data.eval:
        from faces.verification_sets import SetSpec

        spec = SetSpec(data.eval, pairs_file=data.eval_pairs_file)
        _check_one(spec, "data.eval", "data.eval_pairs_file", source)
    given = [("data.eval_name", data.eval_name)]
    if isinstance(data.eval, list):
        given = [
            (f"data.eval[{i}].name", getattr(e, "name", None)) for i, e in enumerate(data.eval)
        ]
    for key, name in given:
        if name is not None and not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise ConfigError(
                f"{source}: {key}: {name!r} is not a valid set name (letters, digits, _ and -: "
                "it becomes part of metric keys)"
            )
    names = set_names(data)
    for name in names:
        if name in RESERVED_NAMES:
            raise ConfigError(
                f"{source}: data.eval: the set name {name!r} is reserved (verify.mean.acc "
                "averages the sets); give the set another name"
            )
        if names.count(name) > 1:
            raise ConfigError(
                f"{source}: data.eval: two sets are named {name!r}; give them distinct names "
                "({path: ..., name: ...})"
            )
    if data.threshold_from is not None and data.threshold_from not in names:
        raise ConfigError(
            f"{source}: data.threshold_from: {data.threshold_from!r} is not an evaluation set "
            f"(sets: {', '.join(names)})"
        )


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts/lists into ``a.b.c`` keys (MLflow params)."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = value
    return out
