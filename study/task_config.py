"""The task study file (`kind: tasks`): one fine-tuning run per task and FTICL setting, then the generalization
matrix (base and every run × every task's test sets, in-domain, out-of-domain and cross-task, at k shots).

    kind: tasks
    name: ft-generalization
    out_dir: studies/ft
    model: {path: /models/Llama-2-7b-hf}
    prep: {max_len: 1024}                    # the tasks' shared preparation defaults
    tasks:                                   # TaskCfg entries (docs/PREP.md), raw sources
      - {name: xsum, source: hf://EdinburghNLP/xsum, kind: generation, template: "...{input}...", max_train: 4000}
    ood:                                     # out-of-domain test sets, prepared with their task's template
      - {name: peerread, of: xsum, source: data/peerread/}
    fticl: [2]                               # FTICL runs with k demonstrations (plain fine-tuning always runs)
    train: {optim: {lr: 2.0e-5, schedule: linear}, run: {epochs: 2}, data: {micro_batch: 2}}
    matrix: {shots: [0, 1, 2, 4], max_examples: 1000}
    nproc: 8
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from data_prep.config import Section
from data_prep.tasks import TaskCfg
from study.config import TrainSections
from trainer.config import ModelCfg

class TaskPrep(Section):
    """What every task shares unless it says otherwise (any TaskCfg key but the per-task ones)."""
    out: str | None = None  # default: <out_dir>/tasks
    max_len: int = Field(default=1024, gt=8)
    demo_mode: Literal["first", "sample"] = "first"
    seed: int = 0
    val: float = Field(default=0.05, ge=0, lt=1)
    test: float = Field(default=0.1, ge=0, lt=1)


class OodSet(Section):
    name: str = Field(pattern=r"^[\w.-]+$")
    of: str  # the task it tests out of domain
    source: str  # read like the task's source, with its template and label words
    revision: str | None = None


class MatrixOptions(Section):
    shots: list[int] = Field(default_factory=lambda: [0])
    max_examples: int | None = Field(default=200, gt=0)
    max_new_tokens: int = Field(default=60, gt=0)
    micro_batch: int = Field(default=8, gt=0)
    zero3: bool = False


class TaskStudyCfg(Section):
    kind: Literal["tasks"]
    name: str
    out_dir: str
    model: ModelCfg
    prep: TaskPrep = Field(default_factory=TaskPrep)
    tasks: list[TaskCfg] = Field(min_length=1)
    ood: list[OodSet] = Field(default_factory=list)
    fticl: list[int] = Field(default_factory=list)  # k of each FTICL run (k demonstrations in every training prompt)
    train: TrainSections = Field(default_factory=TrainSections)
    matrix: MatrixOptions = Field(default_factory=MatrixOptions)
    nproc: int = Field(default=1, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> "TaskStudyCfg":
        names = [t.name for t in self.tasks] + [o.name for o in self.ood]
        if len(set(names)) != len(names):
            raise ValueError("tasks and ood sets need distinct names")
        for t in self.tasks:
            if t.demos:
                raise ValueError(f"task '{t.name}': demos are set by the study (fticl: [k, ...]), not per task")
        for o in self.ood:
            if o.of not in {t.name for t in self.tasks}:
                raise ValueError(f"ood set '{o.name}': no task named '{o.of}'")
        if any(k <= 0 for k in self.fticl):
            raise ValueError("fticl: each k must be > 0 (plain fine-tuning always runs)")
        return self

    @property
    def out(self) -> Path:
        return Path(self.out_dir).resolve()

    @property
    def prep_out(self) -> Path:
        return Path(self.prep.out).resolve() if self.prep.out else self.out / "tasks"

    def variants(self) -> list[tuple[str, TaskCfg, int]]:
        """(run key, the task as prepared for it, k): plain fine-tuning per task, then one per FTICL k."""
        out = []
        for t in self.tasks:
            task = self.task_cfg(t)
            out.append((t.name, task, 0))
            out += [(f"{t.name}-fticl{k}", task.model_copy(update={"name": f"{t.name}-fticl{k}", "demos": k}), k)
                    for k in self.fticl]
        return out

    def task_cfg(self, t: TaskCfg) -> TaskCfg:
        """A task with the study's preparation defaults where it set none of its own."""
        return t.model_copy(update={k: v for k, v in self.prep.model_dump(exclude={"out"}).items()
                                    if k not in t.model_fields_set})

    def ood_cfg(self, o: OodSet) -> TaskCfg:
        task = self.task_cfg(next(t for t in self.tasks if t.name == o.of))
        return task.model_copy(update={"name": o.name, "source": o.source, "revision": o.revision, "max_train": None})

    @property
    def run_keys(self) -> list[str]:
        return [key for key, _, _ in self.variants()]
