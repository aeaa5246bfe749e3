"""Checkpoints the lab saved itself: distilled students (each run's latest complete step) and merged fine-tunes.

The model picker offers the students, the registry offers both as bases for GGUF variants, and the training
runs write them; reading them needs no training code, so it lives here, below every technique.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.paths import data_dir


def students_dir() -> Path:
    return data_dir() / "students"


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in Path(run_dir).glob("step-*") if (p / "lab_student.json").is_file())
    return done[-1] if done else None


@dataclass(frozen=True)
class SavedStudent:
    path: Path
    facts: dict

    @property
    def label(self) -> str:
        f = self.facts
        state = "" if f.get("complete") else f" (stopped at step {f.get('step')} of {f.get('steps')})"
        return f"Student {f.get('student_layers')}/{f.get('teacher_layers')} layers of {f.get('teacher')}, {f.get('run')}{state}"


def student_key(layers: int, run: str) -> str:
    """The technique key a distilled student is stored under (and offered by, in the arena)."""
    return f"distilled-{layers}L-{run[-15:]}"


def student_label(layers: int, run: str) -> str:
    return f"Distilled student, {layers} layer{'s' if layers != 1 else ''} ({run[-15:]})"


def saved_students() -> list[SavedStudent]:
    """Every run's latest complete checkpoint, newest first (for the model picker and the draft picker)."""
    out = []
    root = students_dir()
    for run in sorted(root.glob("*"), reverse=True) if root.is_dir() else []:
        if run.name.startswith(".") or not run.is_dir():
            continue
        ckpt = latest_checkpoint(run)
        if ckpt is not None:
            try:
                out.append(SavedStudent(ckpt, json.loads((ckpt / "lab_student.json").read_text())))
            except (OSError, json.JSONDecodeError):
                continue  # unreadable facts: not ours to show
    return out


# ---------------------------------------------------------------- merged fine-tunes


def adapters_dir() -> Path:
    return data_dir() / "adapters"


def merged_dir() -> Path:
    return data_dir() / "merged"  # whole fine-tuned checkpoints, apart from the small adapters


@dataclass(frozen=True)
class SavedMerged:
    path: Path
    facts: dict  # lab_run.json: model, task, settings, technique_key, label


def saved_merged() -> list[SavedMerged]:
    """Every merged fine-tuned checkpoint, newest first (a GGUF file can be exported from each)."""
    root = merged_dir()
    out = []
    for folder in sorted(root.glob("[!.]*"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []:
        try:
            facts = json.loads((folder / "lab_run.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if facts.get("merged") and (folder / "config.json").is_file():
            out.append(SavedMerged(folder, facts))
    return out


def saved_checkpoints(model_key: str | None = None) -> dict[str, tuple[str, Path]]:
    """key -> (label, folder) of every finished student and merged fine-tune the lab saved (of one base model)."""
    found = {student_key(s.facts["student_layers"], s.facts["run"]): (student_label(s.facts["student_layers"], s.facts["run"]), s.path)
             for s in saved_students() if s.facts.get("complete") and model_key in (None, s.facts.get("teacher"))}
    for merged in saved_merged():
        if model_key in (None, merged.facts.get("model")):
            found.setdefault(merged.facts["technique_key"], (merged.facts["label"], merged.path))
    return found
