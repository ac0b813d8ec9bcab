"""Progress as a callback: long loops report to a `Progress` they are handed; the caller decides
whether and where it shows. `SILENT` shows nothing; `RichProgress()` shows a transient bar per
task; `RichProgress(bar)` adds every task to one enclosing live display (an experiment's cells and,
nested inside, each cell's epochs)."""

from __future__ import annotations


class Task:
    """One reported loop: `update` as it goes, `close` when it ends (early stopping included)."""

    def update(self, description: str | None = None, advance: int = 0) -> None:
        pass

    def close(self) -> None:
        pass


class Progress:
    """Where a loop reports. The base class reports nowhere."""

    def start(self, description: str, total: int, completed: int = 0) -> Task:
        return Task()


SILENT = Progress()


def rich_bar(transient: bool = True):
    """The rich display every medtransfer bar uses (description, bar, count, time left)."""
    from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Display

    return Display(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeRemainingColumn(), transient=transient)


class _RichTask(Task):
    def __init__(self, display, task_id, own: bool):
        self.display, self.task_id, self.own = display, task_id, own

    def update(self, description: str | None = None, advance: int = 0) -> None:
        self.display.update(self.task_id, advance=advance, **({"description": description} if description else {}))

    def close(self) -> None:
        self.display.remove_task(self.task_id)
        if self.own:
            self.display.stop()


class RichProgress(Progress):
    """Rich bars on the terminal: in the enclosing `display` when given, else one transient display per task."""

    def __init__(self, display=None):
        self.display = display

    def start(self, description: str, total: int, completed: int = 0) -> Task:
        display, own = (self.display, False) if self.display is not None else (rich_bar(), True)
        if own:
            display.start()
        return _RichTask(display, display.add_task(description, total=total, completed=completed), own)


def as_progress(progress) -> Progress:
    """The API's `progress` argument: True (bars on the terminal), False (none) or a `Progress`."""
    if isinstance(progress, Progress):
        return progress
    return RichProgress() if progress else SILENT
