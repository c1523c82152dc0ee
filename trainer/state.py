"""What a run has done so far: the typed state saved in every checkpoint (DeepSpeed's client state) and restored on
resume, and the mark a finished run leaves in its folder."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

FINISHED = "FINISHED"  # in the run folder, written once the run reached its last step; studies read it


@dataclass
class RunState:
    step: int = 0  # optimizer steps applied (skipped steps do not count)
    tokens_seen: int | None = 0  # training tokens consumed by applied steps, all ranks (None: unknown, e.g. HF dirs)
    skipped: int = 0  # steps whose update was skipped for a bad loss
    loss_ema: float | None = None  # running mean training loss, the reference for optim.spike_factor
    mlflow_run_id: str | None = None  # a resumed run logs into the same MLflow run
    baseline: dict[str, dict[str, float]] | None = None  # step-0 {"loss", "ppl"} per eval domain
    history: list[dict] = field(default_factory=list)  # every eval: step, tokens_seen, ppl and ppl_ratio per domain

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "RunState":
        """From a checkpoint's client state (which also holds other keys, e.g. the loader's)."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})
