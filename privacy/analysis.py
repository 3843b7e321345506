"""One privacy analysis: both attacks on every model under one budget, judged the same way.

Template inversion (float and 1-bit sign templates) attacks every model; gradient leakage
attacks the models that are trained here (the float twin and the 1-bit student, same weights)
through their distillation loss: the cosine between the model's template and the teacher's,
whose targets the attacker is assumed to know (the usual threat model, labels known). The
judge (the teacher or a model named by the user) scores every reconstruction against *another*
image of the same person at its FAR threshold on the attacked set's impostor pairs.

Metrics are named ``<model>.<attack>.<metric>`` (the caller adds ``privacy.``); lower PSNR,
SSIM and acceptance mean less leakage.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faces.data import make_pairs
from faces.evaluate import EmbedFn, pair_embeddings, scores_of, torch_embed_fn
from faces.transforms import normalise
from faces.verification import verification_metrics
from privacy.gradients import GradientAttack, invert_gradients, observed_gradient
from privacy.inversion import (
    Decoder,
    InversionBudget,
    outputs_of,
    template_inversion,
    templates_of,
)
from privacy.judges import JudgeModel
from privacy.metrics import (
    acceptance_rate,
    binary_verification_metrics,
    impostor_scores,
    impostor_threshold,
    other_image_index,
    psnr,
    ssim,
    to_uint8,
)

__all__ = [
    "PrivacyBudget",
    "TargetSet",
    "Judge",
    "PrivacyReport",
    "attacked_rows",
    "make_judge",
    "analyse",
    "save_grid",
    "format_table",
]

PSNR_CAP = 100.0  # dB: identical images (infinite PSNR) count as this, so means stay finite
GRADIENT_MODELS = ("twin", "student")  # the models a distillation step trains
LOG = Callable[[str], None]


@dataclass(frozen=True)
class PrivacyBudget:
    """The one budget every model gets (attacks, faces, decoder size)."""

    attacks: tuple[str, ...] = ("inversion", "gradient")
    inversion: InversionBudget = field(default_factory=InversionBudget)
    decoder_width: int = 32
    sign_templates: bool = True
    gradient: GradientAttack = field(default_factory=lambda: GradientAttack(iterations=500))
    gradient_batch_sizes: tuple[int, ...] = (1, 4)
    gradient_faces: int = 4  # attacked faces per batch size (4 batches of 1, 1 batch of 4)
    attacked_people: int = 100
    verification_pairs: int = 3000
    far: float = 1e-3
    grid_faces: int = 8
    seed: int = 0


@dataclass
class TargetSet:
    """The attacked set: uint8 (N, 3, H, W) faces and an identity label per face."""

    images: torch.Tensor
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")


@dataclass
class Judge:
    """A judge model and its accept threshold at the budget's FAR."""

    model: JudgeModel
    threshold: float
    accept_genuine: float  # real other-image pairs of the attacked faces accepted

    def embed(self, images: torch.Tensor) -> np.ndarray:
        """Unit embeddings of uint8 (N, 3, H, W) faces, as the judge sees them."""
        return self.model.embed_faces(images)


@dataclass
class PrivacyReport:
    metrics: dict[str, float]
    grids: dict[str, Path]
    seconds: float


def attacked_rows(labels: np.ndarray, people: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One face of up to ``people`` people with two or more faces (seeded), and for each the
    row of another face of that person (the judge's reference)."""
    other = other_image_index(labels)
    firsts: dict[int, int] = {}
    for row in np.flatnonzero(other >= 0):
        firsts.setdefault(int(np.asarray(labels)[row]), int(row))
    if not firsts:
        raise ValueError("no person of the attacked set has two faces: nothing to judge against")
    rows = np.array(sorted(firsts.values()))
    rng = np.random.default_rng(seed)
    if len(rows) > people:
        rows = np.sort(rng.choice(rows, people, replace=False))
    return rows, other[rows]


def make_judge(
    model: JudgeModel | EmbedFn, targets: TargetSet, rows: np.ndarray, refs: np.ndarray, far: float
) -> Judge:
    """The judge's threshold at ``far`` on every impostor pair of the attacked set, and the
    share of real (face, other face) pairs of the attacked people it accepts. A bare
    EmbedFn judges as a facekd model does (image + mirror image)."""
    if not isinstance(model, JudgeModel):
        model = JudgeModel(model)
    emb = model.embed_faces(targets.images)
    threshold = impostor_threshold(impostor_scores(emb, targets.labels), far)
    return Judge(model, threshold, acceptance_rate(emb[rows], emb[refs], threshold))


def _image_metrics(
    recon: torch.Tensor, originals: torch.Tensor, references: torch.Tensor, judge: Judge
) -> dict[str, float]:
    """Mean PSNR and SSIM to the originals and the judge's acceptance, of the
    reconstructions saved as uint8 pixels (what an attacker would keep)."""
    pixels = to_uint8(recon, "normalised")
    rec_emb = judge.embed(pixels)
    ref_emb = judge.embed(references)
    return {
        "psnr": float(psnr(pixels, originals, "uint8").clamp(max=PSNR_CAP).mean()),
        "ssim": float(ssim(pixels, originals, "uint8").mean()),
        "accept": acceptance_rate(rec_emb, ref_emb, judge.threshold),
    }


def _template_accuracy(model: nn.Module, targets: TargetSet, pairs: np.ndarray) -> dict[str, float]:
    """Verification accuracy of the model's float templates (cosine) and of its 1-bit sign
    templates (Hamming) on the attacked set, image + flip as everywhere in facekd."""
    emb, where = pair_embeddings(torch_embed_fn(model), targets.images, pairs)
    return {
        "templates.acc": verification_metrics(scores_of(emb, where), pairs[:, 2])["acc"],
        "templates.sign_acc": binary_verification_metrics(emb, where, pairs[:, 2])["acc"],
    }


def _best_order(recon: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """Reconstructions of a batch reordered to their originals (the gradient of a batch does
    not say which image is which): the assignment with the least total squared error, over
    every order up to 7 images, greedy beyond."""
    if len(recon) == 1:
        return recon
    cost = torch.cdist(recon.flatten(1), normalise(originals).flatten(1)).pow(2).numpy()
    n = len(recon)
    if n <= 7:
        order = min(itertools.permutations(range(n)), key=lambda p: cost[list(p), range(n)].sum())
    else:
        order, free = [0] * n, set(range(n))
        for j in np.argsort(cost.min(0)):
            order[j] = min(free, key=lambda i: cost[i, j])
            free.remove(order[j])
    return recon[torch.tensor(order)]


def _mean_face(attacker: torch.Tensor, n: int) -> torch.Tensor:
    """The attacker's average face (uint8), ``n`` times: the guess that needs no template."""
    total = torch.zeros(attacker.shape[1:], dtype=torch.float64)
    for start in range(0, len(attacker), 1024):
        total += attacker[start : start + 1024].double().sum(0)
    mean = (total / len(attacker)).round().to(torch.uint8)
    return mean.expand(n, *mean.shape).contiguous()


def _cosine_to(targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The distillation loss of a batch whose teacher templates are ``targets``."""

    def loss(out: torch.Tensor) -> torch.Tensor:
        return (1 - (F.normalize(out.float(), dim=1) * targets).sum(1)).mean()

    return loss


def _gradient_attack(
    model: nn.Module,
    faces: torch.Tensor,
    teacher_templates: torch.Tensor,
    batch: int,
    attack: GradientAttack,
) -> tuple[torch.Tensor, float]:
    """Attack ``faces`` in batches of ``batch``; the recovered faces in the originals' order
    and the total wall time."""
    out, seconds = [], 0.0
    for start in range(0, len(faces) - batch + 1, batch):
        private = normalise(faces[start : start + batch])
        loss_fn = _cosine_to(teacher_templates[start : start + batch])
        observed = observed_gradient(model, loss_fn, private)
        result = invert_gradients(model, loss_fn, observed, private.shape, attack)
        out.append(_best_order(result.images, faces[start : start + batch]))
        seconds += result.seconds
    return torch.cat(out), seconds


def sanity_model(dim: int, size: int, seed: int) -> nn.Module:
    """A tiny float model (one linear layer on the pixels): its gradient holds a single input
    exactly, so the attack must recover a batch of one almost perfectly."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, dim)).eval()


def analyse(
    models: dict[str, nn.Module],
    judge_model: JudgeModel | EmbedFn,
    attacker: torch.Tensor,
    targets: TargetSet,
    budget: PrivacyBudget,
    out_dir: Path,
    log: LOG = print,
) -> PrivacyReport:
    """Run both attacks on ``models`` (keys ``teacher``, ``twin``, ``student``; any subset)
    with ``budget``; write grids (originals beside reconstructions) and ``privacy.json`` to
    ``out_dir``. ``attacker``: uint8 faces of people disjoint from ``targets``."""
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, refs = attacked_rows(targets.labels, budget.attacked_people, budget.seed)
    originals, references = targets.images[rows], targets.images[refs]
    judge = make_judge(judge_model, targets, rows, refs, budget.far)
    metrics: dict[str, float] = {
        "judge.threshold": judge.threshold,
        "judge.accept_genuine": judge.accept_genuine,
        "attacked.faces": float(len(rows)),
        "attacker.faces": float(len(attacker)),
    }
    log(
        f"privacy: {len(rows)} attacked people, {len(attacker)} attacker faces; judge threshold "
        f"{judge.threshold:.4f} at FAR {budget.far:g} accepts {judge.accept_genuine:.1%} of "
        "real pairs"
    )
    pairs = make_pairs(targets.labels, budget.verification_pairs, budget.seed)
    n_grid = min(budget.grid_faces, len(rows))
    inversion_grid = {"original": originals[:n_grid]}
    kinds = [("inversion", False)] + ([("inversion_sign", True)] if budget.sign_templates else [])
    if "inversion" not in budget.attacks:
        kinds = []
    if kinds and len(attacker):
        mean_face = _mean_face(attacker, len(originals))  # what no template at all gives
        found = _image_metrics(normalise(mean_face), originals, references, judge)
        metrics.update({f"baseline.mean_face.{k}": v for k, v in found.items()})
        log(_line("baseline", "mean attacker face", {**found, "seconds": 0.0}))
    for name, model in models.items():
        metrics.update(
            {f"{name}.{k}": v for k, v in _template_accuracy(model, targets, pairs).items()}
        )
        if kinds:  # the model is queried once; both template kinds come from its outputs
            queried = time.perf_counter()
            attacker_out, target_out = outputs_of(model, attacker), outputs_of(model, originals)
            query_seconds = time.perf_counter() - queried
        for attack, sign in kinds:
            inv = InversionBudget(**{**asdict(budget.inversion), "sign": sign})
            torch.manual_seed(budget.seed)
            decoder = Decoder(target_out.shape[1], originals.shape[-1], width=budget.decoder_width)
            result = template_inversion(
                model, decoder, attacker, originals, inv, attacker_out, target_out
            )
            found = _image_metrics(result.reconstructions, originals, references, judge)
            # each attack's wall time includes the queries it needs on its own
            found["seconds"] = query_seconds + result.train_seconds + result.attack_seconds
            metrics.update({f"{name}.{attack}.{k}": v for k, v in found.items()})
            inversion_grid[f"{name} {attack}"] = to_uint8(
                result.reconstructions[:n_grid], "normalised"
            )
            log(_line(name, attack, found))
    grids = {}
    if kinds:
        grids["inversion"] = save_grid(inversion_grid, out_dir / "privacy_inversion.png")

    attacked = originals[: budget.gradient_faces]
    attacked_refs = references[: budget.gradient_faces]
    gradient_grid = {"original": attacked}
    gradient = "gradient" in budget.attacks and budget.gradient_batch_sizes
    if gradient and "teacher" in models and any(m in models for m in GRADIENT_MODELS):
        teacher_templates = templates_of(models["teacher"], attacked)
        for name in (m for m in GRADIENT_MODELS if m in models):
            for batch in budget.gradient_batch_sizes:
                recon, seconds = _gradient_attack(
                    models[name], attacked, teacher_templates, batch, budget.gradient
                )
                n = len(recon)
                found = _image_metrics(recon, attacked[:n], attacked_refs[:n], judge)
                found["seconds"] = seconds
                metrics.update({f"{name}.gradient_b{batch}.{k}": v for k, v in found.items()})
                gradient_grid[f"{name} b{batch}"] = to_uint8(recon, "normalised")
                log(_line(name, f"gradient_b{batch}", found))
        sanity = sanity_model(teacher_templates.shape[1], attacked.shape[-1], budget.seed)
        recon, _ = _gradient_attack(sanity, attacked[:1], teacher_templates, 1, budget.gradient)
        metrics["sanity.gradient_b1.psnr"] = float(
            psnr(to_uint8(recon, "normalised"), attacked[:1], "uint8").clamp(max=PSNR_CAP).mean()
        )
        log(
            f"privacy: sanity (one linear layer, batch of 1): PSNR "
            f"{metrics['sanity.gradient_b1.psnr']:.1f} dB"
        )
        grids["gradient"] = save_grid(gradient_grid, out_dir / "privacy_gradient.png")
    seconds = time.perf_counter() - start
    metrics["seconds"] = seconds
    report = {
        "metrics": metrics,
        "budget": _budget_json(budget),
        "models": sorted(models),
        "grids": {k: p.name for k, p in grids.items()},
    }
    (out_dir / "privacy.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    return PrivacyReport(metrics, grids, seconds)


def _budget_json(budget: PrivacyBudget) -> dict[str, object]:
    out = asdict(budget)
    out["gradient_batch_sizes"] = list(budget.gradient_batch_sizes)
    return out


def _line(model: str, attack: str, found: dict[str, float]) -> str:
    return (
        f"privacy: {model} {attack}: PSNR {found['psnr']:.2f} dB, SSIM {found['ssim']:.3f}, "
        f"judge accepts {found['accept']:.1%} ({found['seconds']:.0f} s)"
    )


def save_grid(rows: dict[str, torch.Tensor], path: Path, label_width: int = 150) -> Path:
    """A PNG of uint8 (K, 3, H, W) image rows, each labelled on the left."""
    from PIL import Image, ImageDraw

    height, width = next(iter(rows.values())).shape[-2:]
    columns = max(len(r) for r in rows.values())
    canvas = Image.new("RGB", (label_width + columns * width, len(rows) * height), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows.items()):
        draw.text((4, r * height + height // 2 - 6), label, fill="black")
        for c, image in enumerate(images):
            tile = Image.fromarray(image.permute(1, 2, 0).numpy())
            canvas.paste(tile, (label_width + c * width, r * height))
    tmp = path.with_name(path.stem + ".tmp.png")
    canvas.save(tmp)
    tmp.replace(path)
    return path


MODEL_NAMES = {"teacher": "teacher (float)", "twin": "float twin", "student": "1-bit student"}
COLUMNS = [
    ("inversion", "template inversion"),
    ("inversion_sign", "inversion, sign templates"),
    ("gradient_b1", "gradients, batch 1"),
    ("gradient_b4", "gradients, batch 4"),
]


def format_table(metrics: dict[str, float], prefix: str = "") -> str:
    """A markdown table: a row per model, PSNR / SSIM / judge acceptance per attack, and the
    template accuracies."""

    def cell(model: str, attack: str) -> str:
        keys = [f"{prefix}{model}.{attack}.{m}" for m in ("psnr", "ssim", "accept")]
        if not all(k in metrics for k in keys):
            return "-"
        p, s, a = (metrics[k] for k in keys)
        return f"{p:.2f} / {s:.3f} / {a:.0%}"

    def value(key: str, spec: str) -> str:
        return format(metrics[key], spec) if key in metrics else "-"

    head = ["model"] + [title for _, title in COLUMNS] + ["acc", "sign acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, title in MODEL_NAMES.items():
        if not any(k.startswith(f"{prefix}{model}.") for k in metrics):
            continue
        cells = [cell(model, a) for a, _ in COLUMNS]
        cells += [
            value(f"{prefix}{model}.templates.acc", ".4f"),
            value(f"{prefix}{model}.templates.sign_acc", ".4f"),
        ]
        lines.append("| " + " | ".join([title, *cells]) + " |")
    if f"{prefix}baseline.mean_face.psnr" in metrics:  # the floor: no template at all
        cells = [cell("baseline", "mean_face")] + ["-"] * (len(head) - 2)
        lines.append("| " + " | ".join(["no template (mean face)", *cells]) + " |")
    return "\n".join(lines)
