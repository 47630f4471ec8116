"""What the operator lets clients of this server ask for: `python app.py --max-input-size 160
--max-batch-size 64 --max-train-minutes 120 --max-train-memory-gb 8 --datasets-quota-gb 20`.

Every run a client starts (the Train form, /start_training) is checked against these caps and
against the memory the machine has now (hico.memory): a run that will not fit is refused before it
starts, with the estimate in the sentence. Runs stop, with a checkpoint, after the minutes cap
(train.max_minutes; resuming gives another slot). The Train form says the caps under its fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from hico.config import MAX_BATCH, MAX_SIZE
from hico.errors import HiCoError


@dataclass(frozen=True)
class Caps:
    """The operator's caps; None leaves a value to the config's own bounds (and the machine)."""

    input_size: int | None = None  # largest data.size a client may ask for
    batch_size: int | None = None  # largest train.batch_size
    train_minutes: float | None = None  # every run stops after this long (train.max_minutes)
    train_memory_gb: float | None = None  # largest memory estimate of a run (hico.memory)
    datasets_gb: float | None = None  # $HICO_HOME/datasets may hold this much (uploads beyond are refused)

    def __post_init__(self) -> None:
        for name in ("input_size", "batch_size", "train_minutes", "train_memory_gb", "datasets_gb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise HiCoError(f"The cap --{name.replace('_', '-')} must be above 0, got {value}.")

    def check(self, values: dict) -> dict:
        """A copy of the nested config dict a client asked for, with train.max_minutes set to the
        minutes cap; HiCoError where it passes a cap."""
        values = {**values, "data": dict(values.get("data") or {}), "train": dict(values.get("train") or {})}
        data, train = values["data"], values["train"]
        if self.input_size and _number(data.get("size")) > self.input_size:
            raise HiCoError(f"The input size can be at most {self.input_size} px on this server, "
                            f"got {data.get('size')}.")
        if self.batch_size and _number(train.get("batch_size")) > self.batch_size:
            raise HiCoError(f"The batch size can be at most {self.batch_size} videos on this server, "
                            f"got {train.get('batch_size')}.")
        if self.train_minutes:
            train["max_minutes"] = float(self.train_minutes)
        return values

    @property
    def memory_bytes(self) -> float | None:
        return self.train_memory_gb * 1e9 if self.train_memory_gb else None

    def describe(self) -> str:
        """One line for the Train form: what a run may be here."""
        parts = [f"input size up to {self.input_size or MAX_SIZE} px",
                 f"batch size up to {self.batch_size or MAX_BATCH:,} videos"]
        if self.train_minutes:
            parts.append(f"each run stops after {self.train_minutes:g} min (resume it for more)")
        if self.train_memory_gb:
            parts.append(f"a run may take {self.train_memory_gb:g} GB of memory")
        else:
            parts.append("a run must fit the memory the machine has free")
        if self.datasets_gb:
            parts.append(f"datasets may take {self.datasets_gb:g} GB in all")
        return "Limits on this server: " + "; ".join(parts) + "."


def _number(value) -> float:
    """A value as a number to compare with a cap; what is not one is left to the config's check."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
