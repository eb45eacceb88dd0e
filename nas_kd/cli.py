"""``nas-kd`` command line. Bad input: one line naming file and field, exit code 2, nothing written."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


class UsageError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _overrides(values: list[str] | None) -> dict[str, Any]:
    from nas_kd.config import parse_override

    out = {}
    for text in values or []:
        try:
            key, value = parse_override(text)
        except ValueError as error:
            raise UsageError(f"--set: {error}") from None
        out[key] = value
    return out


def _study(args: argparse.Namespace):
    from nas_kd.config import load_study

    return load_study(args.study, _overrides(getattr(args, "set", None)))


def _proven_data(study: Any, device: Any = None):
    """The study's data on ``device``, once the study is proven able to start (``nas_kd.preflight``)."""
    from nas_kd.pipeline import resolve_device, study_data
    from nas_kd.preflight import check_study

    data = study_data(study, resolve_device(device))
    check_study(study, data)
    for note in data.notes:
        print(f"note: {note}")
    return data


def _read_arch(path: str) -> dict[str, Any]:
    try:
        arch = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(arch, dict):
        raise UsageError(f"{path}: an architecture is a JSON object")
    return arch


def cmd_validate(args: argparse.Namespace) -> int:
    study = _study(args)
    _proven_data(study, "cpu")
    from nas_kd.distill import parse_distiller_space

    distillers = ", ".join(parse_distiller_space(study.distiller).names)
    print(f"{args.study}: ok (study {study.name}, dataset {study.data.dataset}, distiller {distillers})")
    return 0


def _accuracy(value: float | None) -> str:
    return "n/a (no test split)" if value is None else f"{value:.4f}"


def cmd_teacher(args: argparse.Namespace) -> int:
    from nas_kd.pipeline import ready_teachers

    study = _study(args)
    if not study.all_teachers():
        raise UsageError(f"{args.study}: teacher: the study has no teacher")
    data = _proven_data(study, args.device)
    for cached in ready_teachers(study, data):
        info = cached.info
        print(
            f"{info['name']}: {info['params']:,} params, val_accuracy {info['val_accuracy']:.4f}, "
            f"test_accuracy {_accuracy(info['test_accuracy'])} -> {cached.path}"
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import numpy as np

    from nas_kd.checkpoint import save_model_dir
    from nas_kd.distill import parse_distiller_space
    from nas_kd.pipeline import ready_teachers, resolve_device, train_student

    study = _study(args)
    if args.arch:
        arch = _read_arch(args.arch)
    elif study.student is not None:
        arch = study.student.genome()
    else:
        raise UsageError(f"{args.study}: student: give a student block in the study or --arch ARCH.json")
    space = parse_distiller_space(study.distiller)
    name, settings = space.choices[0].name, {}
    if args.distiller:
        name = args.distiller
    if name in space.names:
        choice = space.choices[space.names.index(name)]
        if any(p.searchable for p in choice.settings.values()):
            raise UsageError(f"{args.study}: distiller: settings are searchable; `train` needs fixed values")
        rng = np.random.default_rng(0)
        settings = {k: p.sample(rng) for k, p in choice.settings.items()}
    device = resolve_device(args.device)
    data = _proven_data(study, device)
    teachers = [c.as_teacher(device) for c in ready_teachers(study, data)]
    for t in teachers:
        print(f"{t.name}: {t.params:,} params, val_accuracy {t.val_accuracy:.4f}")

    def on_epoch(result: Any, trainer: Any) -> None:
        losses = " ".join(f"{k} {v:.3f}" for k, v in result.losses.items())
        print(
            f"  epoch {result.epoch}/{study.train.epochs} {losses} val_accuracy {result.val_accuracy:.4f} "
            f"({result.seconds:.2f}s, {result.images_per_second:,.0f} img/s)"
        )

    seed = study.seed if args.seed is None else args.seed
    result = train_student(study, data, teachers, arch, name, settings, seed, on_epoch)
    ratio = f" ({teachers[0].params / result.cost.params:.1f}x fewer than the teacher)" if teachers else ""
    print(
        f"student ({name}): val_accuracy {result.val_accuracy:.4f} test_accuracy {_accuracy(result.test_accuracy)} "
        f"params {result.cost.params:,}{ratio} flops {result.cost.flops:,} "
        f"seconds/epoch {result.seconds_per_epoch:.2f}"
    )
    if args.save:
        save_model_dir(
            args.save,
            result.student,
            arch,
            data.input_shape,
            data.num_classes,
            {
                "val_accuracy": result.val_accuracy,
                "test_accuracy": result.test_accuracy,
                "distiller": name,
                "settings": settings,
                **data.preprocessing(),
            },
        )
        print(f"saved to {args.save} (load with nas_kd.load_student)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from nas_kd.plugins import PluginError, import_plugins, resolve_plugins

    try:  # a study's plugins are loaded with the study; here they are named on the command line
        import_plugins(resolve_plugins(args.plugin or [], Path.cwd()))
    except PluginError as error:
        raise UsageError(f"--plugin: {error}") from None
    if args.what == "distillers":
        from nas_kd.distill import DISTILLERS

        for name, cls in DISTILLERS.items():
            print(f"{name}: {cls.summary}" + ("  [needs a teacher]" if cls.requires_teacher else ""))
            for field, info in cls.Settings.model_fields.items():
                print(f"    {field} = {info.default!r}  {info.description or ''}".rstrip())
    elif args.what == "datasets":
        from nas_kd.data import DATASETS

        for spec in DATASETS.values():
            c, h, w = spec.input_shape
            print(f"{spec.name}: {spec.num_classes} classes, {c}x{h}x{w}; {spec.how_to_get}")
    return 0


def _warn_public_dashboard(args: argparse.Namespace) -> None:
    if args.dashboard_host not in ("127.0.0.1", "localhost", "::1") and not args.no_dashboard:
        print(
            f"nas-kd: warning: the Ray dashboard will listen on {args.dashboard_host}; it can run jobs, so keep "
            "token auth on and expose it only on a trusted network",
            file=sys.stderr,
        )


def cmd_search(args: argparse.Namespace) -> int:
    from nas_kd.search.runner import run_study

    _warn_public_dashboard(args)
    run_study(
        args.study,
        resume=args.resume,
        fresh=args.fresh,
        address=args.address,
        runs_dir=args.runs_dir,
        dashboard=not args.no_dashboard,
        dashboard_host=args.dashboard_host,
        verbose=args.verbose,
        overrides=_overrides(args.set),
    )
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    from nas_kd.search.finalize import FinalizeOptions, finalize

    _warn_public_dashboard(args)
    members = tuple(m.strip() for m in (args.members or "").split(",") if m.strip())
    options = FinalizeOptions(
        top=args.top, members=members, epochs=args.epochs, seeds=args.seeds, distillers=args.distillers
    )
    finalize(
        args.run_dir,
        options,
        resume=args.resume,
        fresh=args.fresh,
        address=args.address,
        dashboard=not args.no_dashboard,
        dashboard_host=args.dashboard_host,
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nas_kd.report import write_report

    path = write_report(args.run_dir, out=args.out, png_dir=args.png)
    print(f"report: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from nas_kd.deploy import ExportError, export_student

    source = Path(args.run_dir) / "students" / args.trial_id
    if not (source / "model.json").is_file():
        raise UsageError(f"{args.run_dir}: no saved student for trial {args.trial_id} (only Pareto members are saved)")
    try:
        result = export_student(source, Path(args.out), torchscript=args.torchscript, onnx=args.onnx)
    except ExportError as error:
        raise UsageError(f"{args.out}: {error}") from None
    print(
        f"exported {args.trial_id} to {args.out} (load with nas_kd.load_student({str(args.out)!r}); "
        "preprocess=True takes raw images)"
    )
    print(f"  input: {result.input}")
    if result.onnx_max_abs_diff is not None:
        print(
            f"  model.onnx: input -> output 'logits' (N, classes), any batch size; onnxruntime vs PyTorch "
            f"max abs diff {result.onnx_max_abs_diff:.3g} (tolerance {result.onnx_tolerance:.3g})"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from nas_kd import bench

    return bench.main(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": cmd_validate,
    "teacher": cmd_teacher,
    "train": cmd_train,
    "list": cmd_list,
    "search": cmd_search,
    "finalize": cmd_finalize,
    "report": cmd_report,
    "export": cmd_export,
    "bench": cmd_bench,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nas-kd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_study(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("study", help="study file (YAML)")
        p.add_argument(
            "--set", action="append", metavar="KEY=VALUE", help="override a study field, e.g. train.epochs=3"
        )
        return p

    def with_ray(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", help="join an existing Ray cluster (e.g. auto) instead of starting one")
        p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
        p.add_argument("--dashboard-host", default="127.0.0.1", help="dashboard bind address (default 127.0.0.1)")

    with_study("validate", "check a study file without running it")
    p = with_study("teacher", "train (or load from the cache) the study's teacher(s)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p = with_study("train", "train one student with the study's distiller")
    p.add_argument("--arch", help="architecture JSON file (default: the study's student)")
    p.add_argument("--distiller", help="one of the study's distillers (default: the first)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("--save", help="folder to save the trained student to")
    p = with_study("search", "run a search study on Ray Tune (the main job)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of this study")
    p.add_argument("--fresh", action="store_true", help="delete an existing run directory of this study first")
    p.add_argument("--runs-dir", help="parent of the run directory (default: the study's runs_dir)")
    with_ray(p)
    p.add_argument("--verbose", action="store_true", help="one line per trial epoch (default: per finished trial)")
    p = sub.add_parser(
        "finalize", help="retrain a finished search's Pareto members (or top N) at a full budget over seeds"
    )
    p.add_argument("run_dir")
    p.add_argument("--top", type=int, help="the N COMPLETE trials best by validation accuracy (default: the front)")
    p.add_argument("--members", metavar="ID,ID", help="these trials (COMPLETE ones) instead of the front")
    p.add_argument("--epochs", type=int, help="epochs per student (default: the study's train.epochs)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per member and recipe (default 3)")
    p.add_argument(
        "--distillers",
        metavar="PRESETS",
        help="also train these recipes per member, e.g. ce,offline-dkd,assistant (nas_kd.distill.presets)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted finalize (RUN_DIR/final/plan.json)")
    p.add_argument("--fresh", action="store_true", help="delete an existing RUN_DIR/final first")
    with_ray(p)
    p = sub.add_parser("report", help="(re)build report.html from a run directory")
    p.add_argument("run_dir")
    p.add_argument("--out", help="HTML file (default RUN_DIR/report.html)")
    p.add_argument("--png", metavar="DIR", help="also write each figure as PNG (needs Chrome/Chromium)")
    p = sub.add_parser("export", help="copy a Pareto student out of a run directory")
    p.add_argument("run_dir")
    p.add_argument("trial_id")
    p.add_argument("--out", required=True, help="destination folder")
    p.add_argument("--torchscript", action="store_true", help="also write a traced TorchScript file")
    p.add_argument(
        "--onnx", action="store_true", help="also write model.onnx (int8 QCDQ if quantized), checked with onnxruntime"
    )
    p = sub.add_parser("list", help="list distillers or datasets")
    p.add_argument("what", choices=["distillers", "datasets"])
    p.add_argument("--plugin", action="append", metavar="MODULE", help="import a plugin first (module or .py file)")
    p = sub.add_parser("bench", help="benchmarks that print ratios against a baseline measured in the same run")
    p.add_argument(
        "what", choices=["trainer", "distillers", "search", "gap", "driver", "gpu", "quant", "quant-latency"]
    )
    p.add_argument("study", nargs="?", default=None, help="study file (default depends on the benchmark)")
    p.add_argument("--epochs", type=int, help="epochs per training run")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (trainer)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (distillers, search, gap)")
    p.add_argument("--budget", type=int, help="student-epoch budget per arm (search)")
    p.add_argument("--trials", type=int, help="synthetic trials (driver; default 10000)")
    p.add_argument(
        "--arms",
        help="comma-separated subset of arms (distillers, gap, search, trainer, quant; gpu: packed), e.g. ce,offline-response",
    )
    p.add_argument("--sizes", help="gap: student sizes in params instead of the ladder, e.g. 100k,316k")
    p.add_argument("--out", help="write the table as CSV/Markdown here too")
    p.add_argument(
        "--from-runs",
        nargs="+",
        metavar="CSV",
        help="distillers, search, gap: rebuild the table from --out CSVs, without training",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before any heavy import: --help answers at once
    from nas_kd.config import StudyError
    from nas_kd.data import DatasetNotFound

    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear live even when piped to a file
    user_errors: tuple[type[Exception], ...] = (StudyError, UsageError, DatasetNotFound)
    if args.command in ("search", "finalize"):
        from nas_kd.search.runner import SearchError

        user_errors += (SearchError,)
    if args.command in ("report", "search", "finalize"):
        from nas_kd.report import ReportError

        user_errors += (ReportError,)
    if args.command == "bench":
        from nas_kd.bench import BenchError

        user_errors += (BenchError,)
    try:
        return COMMANDS[args.command](args)
    except user_errors as error:
        print(f"nas-kd: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nas-kd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
