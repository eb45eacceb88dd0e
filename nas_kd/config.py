"""The study file: YAML -> a typed, validated ``Study``.

Every problem is reported as one ``StudyError`` line naming the file, the field and what is allowed;
nothing is written while loading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nas_kd.arch.quant_spec import QuantError, check_quant
from nas_kd.data import DATASETS, USER_SOURCES
from nas_kd.distill import DistillerConfigError, parse_distiller_space
from nas_kd.plugins import PluginError, import_plugins, resolve_plugins
from nas_kd.space import SpaceError, load_space, load_space_spec

OBJECTIVES = ("params", "flops", "model_bytes", "latency_ms")
# Measured by training, maximised like val_accuracy: robust_accuracy needs the search.robust block.
ACCURACY_OBJECTIVES = ("robust_accuracy",)
Precision = Literal["auto", "fp32", "bf16"]  # train.precision


class StudyError(ValueError):
    """A study file is invalid. ``str()`` is the one-line message shown to the user."""

    def __init__(self, file: str | Path, field: str, message: str):
        self.file, self.field, self.message = str(file), field, message
        super().__init__(f"{file}: {field}: {message}" if field else f"{file}: {message}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    dataset: str = "digits"  # a built-in dataset, or folder | arrays | python (the user's own data)
    data_dir: str | None = None
    path: str | None = None  # folder: the ImageFolder root; arrays: the .npz file
    factory: str | None = None  # python: "package.module:function" returning the splits
    image_size: list[int] | None = None  # [H, W] the images are stored (and the student sees them) at
    channels: Literal[1, 3] | None = None  # default: what the files are
    max_device_bytes: int | None = Field(None, ge=1)  # default: no limit on CPU, half the memory of a GPU
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    split_seed: int = 0  # fixed apart from the study seed, so teachers and their cached logits are shared
    augment: bool = False

    @field_validator("dataset")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in DATASETS and value not in USER_SOURCES:
            known = ", ".join([*sorted(DATASETS), *USER_SOURCES])
            raise ValueError(f"unknown dataset {value!r}; one of {known}")
        return value

    @field_validator("image_size")
    @classmethod
    def _size(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 2 or min(value) < 1):
            raise ValueError("give [height, width], both at least 1")
        return value

    @model_validator(mode="after")
    def _source(self) -> DataConfig:
        needs = {"folder": "path", "arrays": "path", "python": "factory"}.get(self.dataset)
        for name in ("path", "factory"):
            given = getattr(self, name) is not None
            if given and name != needs:
                raise ValueError(f"{name} is for dataset {'python' if name == 'factory' else 'folder or arrays'}")
            if not given and name == needs:
                raise ValueError(f"dataset {self.dataset} needs {name}")
        return self

    def identity(self) -> dict[str, Any]:
        """What fixes the rows of the data (cache keys); unset options are left out, so built-in datasets keep
        the keys they had before the options existed."""
        keys = ("dataset", "val_fraction", "split_seed", "path", "factory", "image_size", "channels")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


MAX_EPOCHS = 10_000  # documented bounds: a typo (1e30) fails at validate time, not after hours of set-up
MAX_TRIALS = 1_000_000


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(128, ge=1, le=65_536)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # A cheap proxy for searches: each epoch trains on this many images, drawn afresh (seeded) from the
    # training split; validation and test stay whole. Unset: the whole training split.
    samples_per_epoch: int | None = Field(None, ge=1)
    # torch.compile the student: true, false, or auto (on only for runs long enough to repay the compile
    # time; see nas_kd.train.should_compile). A speed setting, not part of the recipe's identity.
    compile: bool | Literal["auto"] = "auto"
    # Training arithmetic: bf16 autocast or plain fp32. auto: bf16 on CUDA GPUs that support it, fp32 on CPU
    # (bf16 is an opt-in there: faster on CPUs with AVX512-BF16 or AMX, slower elsewhere). Accuracy is always
    # measured in fp32. Explicit values are part of the recipe's identity; auto is not (as before).
    precision: Precision = "auto"
    # Quantized students: train this many first epochs in full precision (quantizers off), then
    # quantization-aware for the rest (the warm-start recipe); unset or 0: quantized from the first step.
    quant_warmup_epochs: int | None = Field(None, ge=0)

    @field_validator("quant_warmup_epochs")
    @classmethod
    def _warmup_within_epochs(cls, value: int | None, info: ValidationInfo) -> int | None:
        epochs = info.data.get("epochs")
        if value and epochs is not None and value >= epochs:
            raise ValueError(f"{value} warm-up epochs leave no quantized epoch of train.epochs {epochs}")
        return value

    def identity(self) -> dict[str, Any]:
        """What fixes a model trained with this recipe (cache keys). Unset options are left out, so adding
        an option keeps the keys of models cached before it existed; speed settings are left out too."""
        auto = {"precision"} if self.precision == "auto" else set()
        return self.model_dump(exclude_none=True, exclude={"compile", *auto})


class ModelSource(Strict):
    """An architecture given inline (``arch``), by JSON file (``arch_file``) or as a torchvision model."""

    SOURCES: ClassVar[tuple[str, ...]] = ("arch", "arch_file", "torchvision")
    arch: dict[str, Any] | None = None
    arch_file: str | None = None
    torchvision: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in self.SOURCES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(self.SOURCES)} (got {given or 'none'})")
        return self

    def genome(self) -> dict[str, Any]:
        if self.torchvision is not None:
            return {"torchvision": self.torchvision}
        if self.arch_file is not None:
            return json.loads(Path(self.arch_file).read_text())
        assert self.arch is not None
        return self.arch


class TeacherInput(Strict):
    """The teacher's own view of each image: resized, channel-converted, normalised its own way."""

    image_size: list[int] | None = None  # [H, W]
    channels: Literal[1, 3] | None = None
    mean: list[float] | None = None  # the teacher's normalisation, in pixel/255 units (as torchvision's)
    std: list[float] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TeacherInput:
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError("image_size: give [height, width], both at least 1")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std) or (self.channels and len(self.mean) != self.channels):
                raise ValueError("mean and std need one value per channel")
            if min(self.std) <= 0:
                raise ValueError("std values must be positive")
        return self


class TeacherConfig(ModelSource):
    """A teacher nas-kd trains (arch, arch_file, torchvision without weights) or one the user brings: a
    torchvision / timm / Python model with ``weights``, or a folder nas-kd saved (``model_dir``)."""

    SOURCES: ClassVar[tuple[str, ...]] = ("arch", "arch_file", "torchvision", "timm", "python", "model_dir")
    timm: str | None = None
    python: str | None = None  # "package.module:factory", called with num_classes=<the data's classes>
    model_dir: str | None = None
    weights: str | None = None  # safetensors, or a .pt/.pth state dict (loaded with weights_only=True)
    feature_nodes: list[str] | None = None  # stage outputs for feature knowledge (default: found per family)
    input: TeacherInput | None = None
    train: TrainConfig | None = None  # defaults to the study's train block
    seed: int | None = None  # defaults to the study's seed
    # Keep the teacher's logits, stage features and embedding of every training image on disk (fp16, memory
    # mapped, made once per teacher), so that feature and relation knowledge on un-augmented data read them
    # instead of running the teacher on every batch. Its size (per image: the sum of the stage outputs, 2 bytes
    # each) is checked against the free disk at validate time.
    cache_features: bool = False

    @model_validator(mode="after")
    def _weights(self) -> TeacherConfig:
        if self.weights is not None and self.torchvision is None and self.timm is None and self.python is None:
            raise ValueError("weights go with torchvision, timm or python")
        if self.python is not None and ":" not in self.python:
            raise ValueError(f"python: write it as package.module:factory, got {self.python!r}")
        return self

    def genome(self) -> dict[str, Any]:
        """The architecture alone (no weights, no view of the data; ``teachers.teacher_genome`` adds the view):
        nas-kd's genome, a saved folder's, or ``{"wrap": {library: name}, "feature_nodes": ...}``."""
        if self.model_dir is not None:
            return json.loads((Path(self.model_dir) / "model.json").read_text())["arch"]
        library = next((k for k in ("timm", "python") if getattr(self, k) is not None), None)
        if library is None and self.torchvision is not None and self.weights is not None:
            library = "torchvision"  # exactly as torchvision builds it, so its weights fit
        if library is None:
            return super().genome()
        return {"wrap": {library: getattr(self, library)}, "feature_nodes": self.feature_nodes, "view": None}

    @property
    def pretrained(self) -> bool:
        """Given with weights (or a saved folder): evaluated once, never trained."""
        return self.weights is not None or self.model_dir is not None


class SchedulerConfig(Strict):
    name: Literal["fifo", "asha", "pareto_halving"] = "fifo"
    grace_epochs: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)


class RobustConfig(Strict):
    """The attack robust_accuracy is measured under: PGD on the validation split, in pixel units."""

    epsilon: float = Field(gt=0, le=1)
    steps: int = Field(10, ge=1)
    step_size: float | None = Field(None, gt=0, le=1)  # default 2.5 * epsilon / steps


class PrescreenConfig(Strict):
    """Score ``pool`` sampled candidates at initialisation with ``proxy`` on ``batch_size`` training images and
    train one of them per trial (``nas_kd.search.prescreen``). Off unless given."""

    proxy: Literal["naswot"] = "naswot"
    pool: int = Field(4, ge=2, le=64)
    batch_size: int = Field(128, ge=2, le=1024)


class SearchConfig(Strict):
    # A file, an inline mapping, or a list of either (one per family); run directories hold the inlined form.
    space: str | dict[str, Any] | list[str | dict[str, Any]] | None = None  # required by `nas-kd search`
    trials: int = Field(12, ge=1, le=MAX_TRIALS)
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    objectives: list[str] = Field(default_factory=lambda: ["val_accuracy", "params"])
    max_concurrent: int | None = Field(None, ge=1)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    constraints: dict[Literal["max_params", "max_flops", "max_model_bytes", "max_latency_ms"], PositiveFloat] = Field(
        default_factory=dict
    )
    # A trial checkpoints at most this often (and always at scheduler rungs and at its last epoch), so short
    # epochs do not pay for a checkpoint each; a killed driver loses at most this much of a trial's work.
    checkpoint_seconds: float = Field(30.0, ge=0)
    robust: RobustConfig | None = None
    prescreen: PrescreenConfig | None = None

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[str]) -> list[str]:
        if not value or value[0] != "val_accuracy":
            raise ValueError("the first objective must be val_accuracy")
        rest = value[1:]
        known = OBJECTIVES + ACCURACY_OBJECTIVES
        if not 1 <= len(rest) <= 2 or any(v not in known for v in rest) or len(set(rest)) != len(rest):
            raise ValueError(f"after val_accuracy give one or two distinct of {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _robust(self) -> SearchConfig:
        if "robust_accuracy" in self.objectives and self.robust is None:
            raise ValueError("the robust_accuracy objective needs search.robust: {epsilon: ..., steps: ...}")
        return self


class ResourcesConfig(Strict):
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class Study(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    runs_dir: str = "runs"
    # Imported before the rest is validated (see load_plugins); .py files are stored as absolute paths.
    plugins: list[str] = Field(default_factory=list)
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
        return [teacher for _, teacher in self.named_teachers()]

    def named_teachers(self) -> list[tuple[str, TeacherConfig]]:
        """Every teacher with its field in the study file (``teacher``, ``teachers.0``, ...)."""
        return ([("teacher", self.teacher)] if self.teacher else []) + [
            (f"teachers.{i}", teacher) for i, teacher in enumerate(self.teachers)
        ]

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
        if self.search.space is not None:
            data["search"]["space"] = load_space_spec(self.search.space)
        return data


def _field_name(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-"))


def _resolve(base: Path, value: str) -> str:
    """Paths in a study are relative to the study file's folder, never to the current directory: the same
    study then means the same files from wherever it is run."""
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _not_found(path: str, value: str) -> str:
    tried = (
        path if Path(value).expanduser().is_absolute() else f"{path} (relative paths are read from the study's folder)"
    )
    return f"file not found: {tried}"


def study_from_dict(raw: Any, source: str | Path = "<study>", base: Path | None = None) -> Study:
    """Validate plain data (as parsed from YAML) into a Study; raises StudyError."""
    base = base or Path.cwd()
    if not isinstance(raw, dict):
        raise StudyError(source, "", "a study file must be a mapping of fields (name, data, train, ...)")
    if "plugins" in raw:
        raw = {**raw, "plugins": load_plugins(raw["plugins"], source, base)}
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

    try:
        parse_distiller_space(study.distiller)
    except DistillerConfigError as error:
        raise StudyError(source, f"distiller{error.where}", str(error)) from None
    try:
        if study.search.space is not None:
            load_space(study.search.space)
    except SpaceError as error:
        raise StudyError(source, f"search.space{error.where}", str(error)) from None
    _check_quant(study, source)
    _check_feature_cache(study, source)
    return study


def _check_feature_cache(study: Study, source: str | Path) -> None:
    """Cached features are of the un-augmented images: with augmentation they would never be read."""
    if not study.data.augment:
        return
    for field, teacher in study.named_teachers():
        if teacher.cache_features:
            raise StudyError(source, f"{field}.cache_features", "features of augmented batches cannot be cached "
                             "(data.augment is on); turn one of them off")  # fmt: skip


def load_plugins(entries: Any, source: str | Path, base: Path) -> list[str]:
    """Import a study's plugins (so their distillers can be named in it); returns the entries resolved."""
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise StudyError(source, "plugins", "a list of module names (my_package.my_module) or .py files")
    resolved = resolve_plugins(entries, base)
    try:
        import_plugins(resolved)
    except PluginError as error:
        raise StudyError(source, f"plugins.{error.index}", str(error)) from None
    return resolved


def _check_quant(study: Study, source: str | Path) -> None:
    """A genome's ``quant`` block (bit widths, family) is checked here, before anything trains."""
    for field, model_source in [*study.named_teachers(), ("student", study.student)]:
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
            given = model_source.arch_file
            model_source.arch_file = _resolve(base, given)
            if not Path(model_source.arch_file).is_file():
                raise StudyError(source, f"{field}.arch_file", _not_found(model_source.arch_file, given))
            try:
                model_source.genome()
            except json.JSONDecodeError as error:
                raise StudyError(source, f"{field}.arch_file", f"not valid JSON ({error.msg})") from None
    for field, teacher in sources:
        if isinstance(teacher, TeacherConfig):
            _check_teacher_files(teacher, field, source, base)
    data = study.data
    if data.path is not None:
        data.path = _resolve(base, data.path)
        exists = Path(data.path).is_dir() if data.dataset == "folder" else Path(data.path).is_file()
        if not exists:
            raise StudyError(source, "data.path", f"{'folder' if data.dataset == 'folder' else 'file'} not found: "
                             f"{data.path}")  # fmt: skip
    if data.factory is not None and ":" not in data.factory:
        raise StudyError(source, "data.factory", f"write it as package.module:function, got {data.factory!r}")
    spaces = study.search.space
    if isinstance(spaces, (str, list)):
        items = [spaces] if isinstance(spaces, str) else spaces
        resolved = [_resolve(base, item) if isinstance(item, str) else item for item in items]
        for i, (path, given) in enumerate(zip(resolved, items, strict=True)):
            if isinstance(path, str) and not Path(path).is_file():
                where = "search.space" if isinstance(spaces, str) else f"search.space.{i}"
                raise StudyError(source, where, _not_found(path, given))
        study.search.space = resolved[0] if isinstance(spaces, str) else resolved
    # Absolute, so Ray workers with another working directory find the same teacher cache.
    study.runs_dir = str(Path(study.runs_dir).expanduser().resolve())
    if study.data.data_dir:
        study.data.data_dir = str(Path(study.data.data_dir).expanduser())


def _check_teacher_files(teacher: TeacherConfig, field: str, source: str | Path, base: Path) -> None:
    if teacher.weights is not None:
        teacher.weights = _resolve(base, teacher.weights)
        if not Path(teacher.weights).is_file():
            raise StudyError(source, f"{field}.weights", f"file not found: {teacher.weights}")
    if teacher.model_dir is not None:
        teacher.model_dir = _resolve(base, teacher.model_dir)
        if not (Path(teacher.model_dir) / "model.json").is_file():
            raise StudyError(source, f"{field}.model_dir", f"no saved model (model.json) in {teacher.model_dir}")


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
