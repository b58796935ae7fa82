"""Several patients in one run (``agsevnet prepare COHORT`` and ``predict COHORT --prepare``): each patient's
folder in turn (:func:`agsevnet.prepare.inputs.patient_folders` finds them), a progress bar over the patients, one
line per patient, and a failure that does not stop the others (it is listed at the end and makes the command exit
non-zero). A patient done already is kept (prepare compares its inputs), so an interrupted run resumes by running
the same command again."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agsevnet.errors import AgsevnetError, ConfigError


@dataclass
class CohortResult:
    """What :func:`for_each_patient` did: patients done now, kept from an earlier run, and failed (with why)."""

    done: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def format(self, what: str) -> str:
        n = len(self.done) + len(self.kept) + len(self.failed)
        text = (f"{n} patient(s): {len(self.done)} {what}, {len(self.kept)} kept from an earlier run, "
                f"{len(self.failed)} failed")
        return text + "".join(f"\n  FAILED {name}: {why}" for name, why in self.failed)


def check_cohort_options(input_path: Path, patients: Sequence[Path], files: Mapping[str, Any],
                         case_id: str | None) -> None:
    """A ConfigError when options that name one patient's files (``--flair ... --case-id``) come with a cohort."""
    given = [f"--{m}" for m, v in files.items() if v is not None] + (["--case-id"] if case_id else [])
    if given:
        raise ConfigError(f"{input_path} holds {len(patients)} patients: {' '.join(given)} name one patient's "
                          "files; give that patient's folder instead")


def describe_cohort(input_path: Path, patients: Sequence[Path]) -> str:
    """``INPUT: N patients (a, b, c, d, e, ...)``: the line a cohort run starts with."""
    names = ", ".join(p.name for p in patients[:5]) + (", ..." if len(patients) > 5 else "")
    return f"{input_path}: {len(patients)} patients ({names})"


def for_each_patient(patients: Sequence[Path], work: Callable[[Path], tuple[str, bool]], *, desc: str,
                     progress: bool = True, echo: Callable[[str], None] | None = None) -> CohortResult:
    """Run ``work(folder) -> (line, kept)`` on every patient folder; an :class:`AgsevnetError` fails that patient
    only (any other exception is a bug and propagates)."""
    from agsevnet.progress import progress_bar

    result = CohortResult()
    with progress_bar(total=len(patients), desc=desc, unit="patient", disable=not progress) as bar:
        for folder in patients:
            try:
                line, kept = work(folder)
            except AgsevnetError as error:
                result.failed.append((folder.name, str(error)))
                line = f"{folder.name}: FAILED: {error}"
            else:
                (result.kept if kept else result.done).append(folder.name)
            if progress:
                bar.write(line)  # above the bar, on its stream
            elif echo is not None:
                echo(line)
            bar.update(1)
    return result
