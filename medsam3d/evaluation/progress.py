"""A live display of ``evaluate`` on a terminal: structures done / total, the case, structure, method and click."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .evaluate import Progress as Silent


class LiveProgress(Silent):
    """``with LiveProgress(console) as progress: evaluate(..., progress=progress, log=progress.log)``.

    The total grows case by case (a case's structures are known once its labels are read)."""

    def __init__(self, console: Console) -> None:
        self.n_cases, self.cases_seen, self.total, self.case_id = 0, 0, 0, ""
        self.display = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("structures"), TimeElapsedColumn(), console=console, transient=True)
        self.task = self.display.add_task("reading", total=None)

    def __enter__(self) -> "LiveProgress":
        self.display.start()
        return self

    def __exit__(self, *exc) -> None:
        self.display.stop()

    def log(self, message: str) -> None:
        self.display.console.print(message, highlight=False, markup=False)

    def begin(self, n_cases: int) -> None:
        self.n_cases = n_cases

    def case(self, case_id: str, n_targets: int) -> None:
        self.cases_seen += 1
        self.case_id = case_id
        self.total += n_targets
        self.display.update(self.task, total=self.total, description=f"case {self.cases_seen}/{self.n_cases}")

    def step(self, structure: str, method: str, click: int, clicks: int) -> None:
        self.display.update(self.task, description=f"case {self.cases_seen}/{self.n_cases} {self.case_id} "
                                                   f"{structure} · {method} · click {click}/{clicks}")

    def structure_done(self) -> None:
        self.display.advance(self.task)
