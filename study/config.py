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

Several base models: `models` instead of `model`, each with a name and its own reference (a sample of its pretraining
data). Domains then usually name a raw `source` (as in a prep YAML) rather than a prepared `path`: the study prepares
each source once per tokenizer (study/prep.py), under `prep.out`, keyed by the tokenizer's fingerprint.

    models:
      - {name: gpt2, path: openai-community/gpt2, reference: {name: owt, source: data/owt_sample/}}
      - {name: olmo-1b, path: allenai/OLMo-1B-hf, reference: {name: dolma, source: data/dolma_sample/}}
    prep: {seq_len: 1024}
    domains: [{name: culture, source: m2d2/Culture_and_the_arts.tar.gz}, {name: math, source: m2d2/math.tar.gz}]
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from data_prep.cli import PrepDefaults, SourceKeys
from data_prep.config import ConfigError, Section, read_yaml, validate
from trainer.config import (CheckpointCfg, DataOptions, DeepSpeedCfg, EvalCfg, LossCfg, MeterCfg, ModelCfg, OptimCfg,
                            RunCfg, TaskEvalCfg)

# what the study sets in each run, per domain: a value given under `train` would be overwritten, so it is an error
SET_BY_STUDY = {"run": ("out_dir", "name"), "eval": ("domains",)}


class TrainSections(Section):
    """The run-config sections shared by every run of the study. `model` is the study's, `tracking` the study's
    parent run, `data.streams` the run's domain."""
    data: DataOptions = Field(default_factory=DataOptions)
    optim: OptimCfg = Field(default_factory=OptimCfg)
    loss: LossCfg = Field(default_factory=LossCfg)
    run: RunCfg = Field(default_factory=RunCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)
    checkpoint: CheckpointCfg = Field(default_factory=CheckpointCfg)
    deepspeed: DeepSpeedCfg = Field(default_factory=DeepSpeedCfg)
    meter: MeterCfg = Field(default_factory=MeterCfg)
    task: TaskEvalCfg = Field(default_factory=TaskEvalCfg)  # task studies: task metrics and |Δw| at eval points

    @model_validator(mode="after")
    def _not_set_by_study(self) -> "TrainSections":
        for section, keys in SET_BY_STUDY.items():
            given = sorted(getattr(self, section).model_fields_set & set(keys))
            if given:
                raise ValueError(f"{section}.{given[0]} is set by the study for each domain")
        return self


class StudyDomain(SourceKeys):
    """A domain or reference: a prepared folder (`path`, made with the model's tokenizer) or a raw `source` that the
    study prepares for each model's tokenizer, read with the prep keys given beside it."""
    name: str
    path: str | None = None
    source: str | None = None

    @model_validator(mode="after")
    def _path_or_source(self) -> "StudyDomain":
        if (self.path is None) == (self.source is None):
            raise ValueError(f"domain '{self.name}': give either path (prepared) or source (raw), not both or neither")
        read_keys = sorted(k for k in self.model_fields_set if k in SourceKeys.model_fields)
        if self.path is not None and read_keys:
            raise ValueError(f"domain '{self.name}': {read_keys[0]} applies to a raw source, not a prepared path")
        return self


class StudyModel(ModelCfg):
    """One base model of a study: the model section of its runs, a name for its runs and report, its reference."""
    name: str = Field(pattern=r"^[\w.-]+$")
    reference: StudyDomain | None = None  # a sample of this model's pretraining data; default: the study's


class SimilarityCfg(Section):
    primary: Literal["unigram_jsd", "unigram_cosine", "emb_cosine", "emb_mmd", "emb_frechet"] = "unigram_jsd"
    chunks: int = Field(default=256, gt=1)
    chunk_tokens: int = Field(default=128, gt=1)
    seed: int = 0
    embedder: str | None = None  # a local sentence-encoder folder; default: the offline all-MiniLM-L6-v2


class VariantCfg(Section):
    """A remedy tried on every model and domain (`variants:` in the study file): its runs take the study's `train`
    with the keys given here over it, and optionally replay. The first variant is the baseline the report compares
    the others with (say `{name: plain}`)."""
    name: str = Field(pattern=r"^[\w.-]+$")
    train: TrainSections = Field(default_factory=TrainSections)  # only the keys given override the study's train
    # share of training samples drawn from the model's reference train split (a second stream, proportion `replay`);
    # Ibrahim et al. 2024 (arXiv 2403.08763): 1-5% for data like the pretraining data, 25% for shifted data
    replay: float = Field(default=0.0, ge=0, lt=1)


class StudyCfg(Section):
    name: str
    out_dir: str
    model: ModelCfg | None = None  # one base model, or
    models: list[StudyModel] | None = Field(default=None, min_length=1)  # several
    reference: StudyDomain | None = None  # for every model without its own
    domains: list[StudyDomain] = Field(min_length=2)
    prep: PrepDefaults = Field(default_factory=PrepDefaults)  # for the domains given as raw sources
    train: TrainSections = Field(default_factory=TrainSections)
    nproc: int = Field(default=1, gt=0)
    eval_reference: bool = True  # also evaluate the reference in every run
    eval_others: bool = True  # also evaluate the other study domains in every run (cross-domain curves)
    similarity: SimilarityCfg = Field(default_factory=SimilarityCfg)
    variants: list[VariantCfg] | None = Field(default=None, min_length=1)  # runs are then <domain>/<variant>

    @model_validator(mode="after")
    def _consistent(self) -> "StudyCfg":
        if (self.model is None) == (self.models is None):
            raise ValueError("give either model (one base model) or models (several), not both or neither")
        names = [d.name for d in self.domains]
        if len(set(names)) != len(names):
            raise ValueError("study domains need distinct names")
        for m in self.model_list:
            if m.reference is None:
                raise ValueError(f"model '{m.name}' has no reference: set reference for it or for the study")
            if m.reference.name in names:
                raise ValueError(f"reference '{m.reference.name}' has the name of a study domain")
        if len({m.name for m in self.model_list}) != len(self.model_list):
            raise ValueError("study models need distinct names")
        if self.variants and len({v.name for v in self.variants}) != len(self.variants):
            raise ValueError("study variants need distinct names")
        for key in ("tokenizer", "overwrite"):
            if key in self.prep.model_fields_set:
                raise ValueError(f"prep.{key} is set by the study (each model's tokenizer; a changed source re-prepares)")
        raw = [d.name for d in self.domains + [m.reference for m in self.model_list] if d.source is not None]
        if raw and self.prep.seq_len is None:
            raise ValueError(f"prep.seq_len is required: domain '{raw[0]}' is a raw source")
        return self

    @property
    def model_list(self) -> list[StudyModel]:
        """The base models; a single `model` is named after its folder and takes the study's reference."""
        if self.models is not None:
            return [m if m.reference else m.model_copy(update={"reference": self.reference}) for m in self.models]
        name = re.sub(r"[^\w.-]", "_", Path(self.model.path).name) or "model"
        return [StudyModel(name=name, reference=self.reference, **self.model.model_dump())]

    def run_key(self, model: str, domain: str, variant: str | None = None) -> str:
        """A run's name: the domain, model/domain in a study of several models, and /variant after it in a study
        of variants (folders, MLflow names, SLURM array tasks)."""
        return "/".join(([model] if self.models is not None else []) + [domain] + ([variant] if variant else []))

    @property
    def variant_names(self) -> list[str | None]:
        return [v.name for v in self.variants] if self.variants else [None]

    def variant(self, name: str | None) -> VariantCfg:
        return next((v for v in self.variants or [] if v.name == name), VariantCfg(name="plain"))

    @property
    def run_keys(self) -> list[str]:
        return [self.run_key(m.name, d.name, v) for m in self.model_list for d in self.domains
                for v in self.variant_names]

    def train_tree(self, variant: str | None) -> dict:
        """The run-config sections of a variant's runs: the study's `train`, the variant's keys over it."""
        return _merged(self.train.model_dump(mode="json", exclude_unset=True),
                       self.variant(variant).train.model_dump(mode="json", exclude_unset=True))

    @property
    def out(self) -> Path:
        return Path(self.out_dir).resolve()


def _merged(base: dict, over: dict) -> dict:
    """`over` on `base`, section by section (a list or a value replaces the base's)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_study(path: str | Path) -> StudyCfg:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    return validate(StudyCfg, read_yaml(path), "study")
