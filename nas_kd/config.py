"""The study file: YAML -> a typed, validated ``Study``.

Every problem is reported as one ``StudyError`` line naming the file, the field and what is allowed;
nothing is written while loading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nas_kd.data import DATASETS

OBJECTIVES = ("params", "flops", "model_bytes", "latency_ms")


class StudyError(ValueError):
    """A study file is invalid. ``str()`` is the one-line message shown to the user."""

    def __init__(self, file: str | Path, field: str, message: str):
        self.file, self.field, self.message = str(file), field, message
        super().__init__(f"{file}: {field}: {message}" if field else f"{file}: {message}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    dataset: str = "digits"
    data_dir: str | None = None
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    split_seed: int = 0  # fixed apart from the study seed, so teachers and their cached logits are shared
    augment: bool = False

    @field_validator("dataset")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in DATASETS:
            raise ValueError(f"unknown dataset {value!r}; one of {', '.join(sorted(DATASETS))}")
        return value


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # A cheap proxy for searches: each epoch trains on this many images, drawn afresh (seeded) from the
    # training split; validation and test stay whole. Unset: the whole training split.
    samples_per_epoch: int | None = Field(None, ge=1)

    def identity(self) -> dict[str, Any]:
        """What fixes a model trained with this recipe (cache keys). Unset options are left out, so adding
        an option keeps the keys of models cached before it existed."""
        return self.model_dump(exclude_none=True)


class ModelSource(Strict):
    """An architecture given inline (``arch``), by JSON file (``arch_file``) or as a torchvision model."""

    arch: dict[str, Any] | None = None
    arch_file: str | None = None
    torchvision: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in ("arch", "arch_file", "torchvision") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of arch, arch_file, torchvision (got {given or 'none'})")
        return self

    def genome(self) -> dict[str, Any]:
        if self.torchvision is not None:
            return {"torchvision": self.torchvision}
        if self.arch_file is not None:
            return json.loads(Path(self.arch_file).read_text())
        assert self.arch is not None
        return self.arch


class TeacherConfig(ModelSource):
    train: TrainConfig | None = None  # defaults to the study's train block
    seed: int | None = None  # defaults to the study's seed


class SchedulerConfig(Strict):
    name: Literal["fifo", "asha", "pareto_halving"] = "fifo"
    grace_epochs: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)


class SearchConfig(Strict):
    # A file, an inline mapping, or a list of either (one per family); run directories hold the inlined form.
    space: str | dict[str, Any] | list[str | dict[str, Any]] = "search_spaces/resnet.yaml"
    trials: int = Field(12, ge=1)
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    objectives: list[str] = Field(default_factory=lambda: ["val_accuracy", "params"])
    max_concurrent: int | None = Field(None, ge=1)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    constraints: dict[Literal["max_params", "max_flops", "max_model_bytes", "max_latency_ms"], float] = Field(
        default_factory=dict
    )

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[str]) -> list[str]:
        if not value or value[0] != "val_accuracy":
            raise ValueError("the first objective must be val_accuracy")
        rest = value[1:]
        if not 1 <= len(rest) <= 2 or any(v not in OBJECTIVES for v in rest) or len(set(rest)) != len(rest):
            raise ValueError(f"after val_accuracy give one or two distinct of {', '.join(OBJECTIVES)}")
        return value


class ResourcesConfig(Strict):
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class Study(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    runs_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    teacher: TeacherConfig | None = None
    teachers: list[TeacherConfig] = Field(default_factory=list)
    student: ModelSource | None = None
    distiller: str | dict[str, Any] = "ce"
    search: SearchConfig = Field(default_factory=SearchConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    path: str | None = Field(None, exclude=True)  # where it was loaded from

    def all_teachers(self) -> list[TeacherConfig]:
        return ([self.teacher] if self.teacher else []) + list(self.teachers)

    def teacher_train(self, teacher: TeacherConfig) -> TrainConfig:
        return teacher.train or self.train

    def teacher_seed(self, teacher: TeacherConfig) -> int:
        return self.seed if teacher.seed is None else teacher.seed

    def resolved(self) -> dict[str, Any]:
        """The study as plain data with files inlined: what ``study.yaml`` in a run directory holds."""
        data = self.model_dump(mode="json")
        dumped_teachers = ([data["teacher"]] if self.teacher else []) + data["teachers"]
        for source, dumped in zip(self.all_teachers(), dumped_teachers, strict=True):
            if source.arch_file:
                dumped.update(arch=source.genome(), arch_file=None)
        if self.student and self.student.arch_file:
            data["student"].update(arch=self.student.genome(), arch_file=None)
        from nas_kd.space import load_space_spec

        data["search"]["space"] = load_space_spec(self.search.space)
        return data


def _field_name(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-"))


def _resolve(base: Path, value: str) -> str:
    """Paths in a study are relative to the study file's folder, else to the current directory."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    for candidate in (base / path, Path.cwd() / path):
        if candidate.exists():
            return str(candidate.resolve())
    return str(base / path)


def study_from_dict(raw: Any, source: str | Path = "<study>", base: Path | None = None) -> Study:
    """Validate plain data (as parsed from YAML) into a Study; raises StudyError."""
    base = base or Path.cwd()
    if not isinstance(raw, dict):
        raise StudyError(source, "", "a study file must be a mapping of fields (name, data, train, ...)")
    try:
        study = Study.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown field"
        elif first["type"] == "missing":
            message = "required field is missing"
        raise StudyError(source, _field_name(first["loc"]), message) from None
    study.path = str(source)
    _check_files(study, source, base)
    from nas_kd.distill import DistillerConfigError, parse_distiller_space
    from nas_kd.space import SpaceError, load_space

    try:
        parse_distiller_space(study.distiller)
    except DistillerConfigError as error:
        raise StudyError(source, f"distiller{error.where}", str(error)) from None
    try:
        load_space(study.search.space)
    except SpaceError as error:
        raise StudyError(source, f"search.space{error.where}", str(error)) from None
    _check_quant(study, source)
    return study


def _check_quant(study: Study, source: str | Path) -> None:
    """A genome's ``quant`` block (bit widths, family) is checked here, before anything trains."""
    from nas_kd.arch.quant_spec import QuantError, check_quant

    sources = [("teacher", study.teacher), *((f"teachers.{i}", t) for i, t in enumerate(study.teachers))]
    for field, model_source in [*sources, ("student", study.student)]:
        if model_source is None or model_source.torchvision is not None:
            continue
        arch = model_source.genome()
        if "quant" in arch:
            try:
                check_quant(arch)
            except QuantError as error:
                prefix = f"{field}.arch" if model_source.arch is not None else f"{field}.arch_file"
                raise StudyError(source, f"{prefix}{error.where}", str(error)) from None


def _check_files(study: Study, source: str | Path, base: Path) -> None:
    sources: list[tuple[str, ModelSource]] = []
    if study.teacher:
        sources.append(("teacher", study.teacher))
    sources += [(f"teachers.{i}", t) for i, t in enumerate(study.teachers)]
    if study.student:
        sources.append(("student", study.student))
    for field, model_source in sources:
        if model_source.arch_file is not None:
            model_source.arch_file = _resolve(base, model_source.arch_file)
            if not Path(model_source.arch_file).is_file():
                raise StudyError(source, f"{field}.arch_file", f"file not found: {model_source.arch_file}")
            try:
                model_source.genome()
            except json.JSONDecodeError as error:
                raise StudyError(source, f"{field}.arch_file", f"not valid JSON ({error.msg})") from None
    spaces = study.search.space
    if isinstance(spaces, (str, list)):
        items = [spaces] if isinstance(spaces, str) else spaces
        resolved = [_resolve(base, item) if isinstance(item, str) else item for item in items]
        for i, path in enumerate(resolved):
            if isinstance(path, str) and not Path(path).is_file():
                where = "search.space" if isinstance(spaces, str) else f"search.space.{i}"
                raise StudyError(source, where, f"file not found: {path}")
        study.search.space = resolved[0] if isinstance(spaces, str) else resolved
    # Absolute, so Ray workers with another working directory find the same teacher cache.
    study.runs_dir = str(Path(study.runs_dir).expanduser().resolve())
    if study.data.data_dir:
        study.data.data_dir = str(Path(study.data.data_dir).expanduser())


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> Study:
    """Read, override (dotted keys, e.g. ``{"train.epochs": 2}``) and validate a study file."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(path, "", "file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        raise StudyError(path, "", f"not valid YAML ({where}: {getattr(error, 'problem', error)})") from None
    if isinstance(raw, dict):
        apply_overrides(raw, overrides or {})
    return study_from_dict(raw, path, path.parent.resolve())


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``train.epochs=3`` -> ("train.epochs", 3); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"an override is KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)
