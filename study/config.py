"""The study file, typed like a run config: every key is known, and a typo reads `study key 'train.optim.lrr':
unknown key`.

    name: my-study
    out_dir: studies/my-study
    model: {path: /models/base}            # the model section of a run config
    reference: {name: web, path: data/domains/web_sample}
    domains: [{name: legal, path: data/domains/legal}, {name: code, path: data/domains/code}]
    train: {optim: {lr: 1e-4}, run: {max_steps: 200}, eval: {interval: 50}}   # run-config sections, for every run
    nproc: 2
    similarity: {primary: unigram_jsd, chunks: 256}
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from data_prep.config import ConfigError, Section, read_yaml, validate
from trainer.config import (CheckpointCfg, DataOptions, DeepSpeedCfg, EvalCfg, EvalDomainCfg, MeterCfg, ModelCfg,
                            OptimCfg, RunCfg)

# what the study sets in each run, per domain: a value given under `train` would be overwritten, so it is an error
SET_BY_STUDY = {"run": ("out_dir", "name"), "eval": ("domains",)}


class TrainSections(Section):
    """The run-config sections shared by every run of the study. `model` is the study's, `tracking` the study's
    parent run, `data.streams` the run's domain."""
    data: DataOptions = Field(default_factory=DataOptions)
    optim: OptimCfg = Field(default_factory=OptimCfg)
    run: RunCfg = Field(default_factory=RunCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)
    checkpoint: CheckpointCfg = Field(default_factory=CheckpointCfg)
    deepspeed: DeepSpeedCfg = Field(default_factory=DeepSpeedCfg)
    meter: MeterCfg = Field(default_factory=MeterCfg)

    @model_validator(mode="after")
    def _not_set_by_study(self) -> "TrainSections":
        for section, keys in SET_BY_STUDY.items():
            given = sorted(getattr(self, section).model_fields_set & set(keys))
            if given:
                raise ValueError(f"{section}.{given[0]} is set by the study for each domain")
        return self


class SimilarityCfg(Section):
    primary: Literal["unigram_jsd", "unigram_cosine", "emb_cosine", "emb_mmd", "emb_frechet"] = "unigram_jsd"
    chunks: int = Field(default=256, gt=1)
    chunk_tokens: int = Field(default=128, gt=1)
    seed: int = 0
    embedder: str | None = None  # a local sentence-encoder folder; default: the offline all-MiniLM-L6-v2


class StudyCfg(Section):
    name: str
    out_dir: str
    model: ModelCfg
    reference: EvalDomainCfg
    domains: list[EvalDomainCfg] = Field(min_length=2)
    train: TrainSections = Field(default_factory=TrainSections)
    nproc: int = Field(default=1, gt=0)
    eval_reference: bool = True  # also evaluate the reference in every run
    eval_others: bool = True  # also evaluate the other study domains in every run (cross-domain curves)
    similarity: SimilarityCfg = Field(default_factory=SimilarityCfg)

    @model_validator(mode="after")
    def _distinct_names(self) -> "StudyCfg":
        names = [d.name for d in self.domains]
        if len(set(names)) != len(names) or self.reference.name in names:
            raise ValueError("study domains need distinct names, none equal to the reference's")
        return self

    @property
    def out(self) -> Path:
        return Path(self.out_dir).resolve()


def load_study(path: str | Path) -> StudyCfg:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    return validate(StudyCfg, read_yaml(path), "study")
