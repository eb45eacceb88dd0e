"""Assemble the report: run directory -> sections of figures -> one self-contained HTML file
(plotly.js embedded, so it opens offline), and optionally one PNG per figure through kaleido."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from nas_kd.report import data as d
from nas_kd.report import figures as f
from nas_kd.report.run import ReportError, RunData, load_run, param_importances
from nas_kd.results import write_atomic

PLOT_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "toImageButtonOptions": {"format": "png", "width": 1280, "scale": 1},
}
PNG_WIDTH = 1280
GAIN_TOLERANCE = 0.25


@dataclass
class Section:
    key: str
    title: str
    intro: str
    figures: list[tuple[str, go.Figure]] = field(default_factory=list)
    html: str = ""


def write_report(run_dir: str | Path, out: str | Path | None = None, png_dir: str | Path | None = None) -> Path:
    """Build the report of ``run_dir`` into ``out`` (default ``run_dir/report.html``) and return its path.

    With ``png_dir``, also one PNG per figure (kaleido, which needs Chrome or Chromium). Raises
    ReportError, with a one-line message, for a missing or invalid run directory and for ``png_dir``
    without a browser; the browser is checked first, so a failing call writes nothing.
    """
    if png_dir is not None:
        _check_png_support()
    run = load_run(run_dir)
    sections = build_sections(run)
    target = Path(out) if out is not None else run.path / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, render(run, sections))
    if png_dir is not None:
        export_png(sections, Path(png_dir))
    return target


# ---------------------------------------------------------------- sections


def build_sections(run: RunData) -> list[Section]:
    trials, category, size = run.trials, run.category, run.size
    colors = f.distiller_colors(list(trials["distiller"]))
    size_name = d.SIZE_NAMES[size]
    objectives = ", ".join(
        f"{o} ({'↑' if direction == 'maximize' else '↓'})"
        for o, direction in zip(run.objectives, run.directions, strict=True)
    )
    importances, importance_note = param_importances(run)
    comparison = d.distiller_comparison(trials, size, run.knowledge_defaults)
    return [
        Section(
            "pareto",
            "Pareto front",
            f"Objectives: {objectives}. Each point is a trial; the red points and step line are the "
            "non-dominated COMPLETE trials on the validation split. Test accuracy is shown for reporting and "
            "is never used to select. Teachers and assistants are stars, their accuracy a reference line.",
            [("pareto", f.pareto_figure(trials, category, d.hover_text(trials), run.objectives, run.teachers))],
        ),
        _capacity_section(run, colors),
        Section(
            "distillers",
            "Distiller comparison",
            f"Validation accuracy of each distiller (scheme and knowledge type) within buckets of {size_name}, "
            "so that distillers are compared on students of similar size. Each dot is a COMPLETE trial.",
            [("distillers", f.distiller_figure(comparison, size))],
        ),
        Section(
            "hypervolume",
            "Hypervolume",
            "The volume the front dominates (up to the reference point) after each finished trial: flat "
            "stretches are trials that did not improve the front. Compute is student training epochs and wall time.",
            [("hypervolume", f.hypervolume_figure(run.hypervolume, run.pareto.get("reference_point")))],
        ),
        Section(
            "space",
            "Search space",
            "Where the sampler went and what mattered. Drag along an axis to filter trials. "
            "Importances are Optuna's fANOVA on the run's Optuna study, one bar per objective.",
            [
                ("space", f.parallel_figure(d.parallel_dimensions(trials, size))),
                ("importances", f.importance_figure(d.importance_frame(importances), importance_note)),
            ],
        ),
        Section(
            "curves",
            "Learning curves",
            "Validation accuracy after each epoch. Trials stopped early by the scheduler end in a cross, "
            "running ones in a circle at their latest epoch.",
            [("curves", f.curves_figure(d.learning_curves(run.curves, trials, category)))],
        ),
        Section(
            "fidelity",
            "Proxy fidelity",
            "Whether the search budget was enough: the rank correlation (Kendall tau) between the validation "
            "accuracy of COMPLETE trials after each epoch and after the last one. A scheduler that stops trials "
            "at an epoch where tau is low discards students on noise.",
            [("fidelity", f.epoch_fidelity_figure(d.epoch_fidelity(run.curves, trials)))],
        ),
        _final_section(run),
        Section(
            "members",
            "Pareto members",
            "Every member of the front, smallest first, with the command that loads its saved student "
            "(a folder with model.safetensors and model.json: weights without pickle, so it can be copied "
            "anywhere as the exported model).",
            html=pareto_table_html(d.pareto_table(trials, category, size, run.student_paths), size),
        ),
    ]


def _capacity_section(run: RunData, colors: dict[str, str]) -> Section:
    teacher = d.primary_teacher(run.teachers)
    teacher_params = float(teacher["params"]) if teacher is not None else float("nan")
    distillers = set(run.trials.loc[run.trials["status"] == "COMPLETE", "distiller"])
    gap = d.capacity_gap(run.trials.iloc[:0], 1.0, 0.0)  # empty, with the right columns
    if teacher is None:
        gap_note = "No teacher in teachers.json: nothing to compare against."
    elif not (np.isfinite(teacher_params) and np.isfinite(teacher["val_accuracy"])):
        gap_note = "The teacher's params or accuracy are not recorded."
    else:
        gap = d.capacity_gap(run.trials, teacher_params, float(teacher["val_accuracy"]))
        gap_note = "No COMPLETE trials yet."
    ratio_params = teacher_params if np.isfinite(teacher_params) else None
    gain = d.distillation_gain(run.trials, ratio_params, GAIN_TOLERANCE)
    if "ce" not in distillers:
        gain_note = "No ce arm in this study:<br>add ce to the distiller choices to measure the gain."
    elif distillers == {"ce"}:
        gain_note = "Only ce trials: no distilled student to compare."
    else:
        gain_note = f"No ce trial with the same architecture<br>or params within ±{GAIN_TOLERANCE:.0%} yet."
    teacher_text = (
        f"Teacher: {teacher['name']} ({teacher['arch_summary']}, {d.human(teacher_params)} params, "
        f"{d.percent_text(teacher['val_accuracy'])} val). "
        if teacher is not None
        else ""
    )
    return Section(
        "capacity",
        "Capacity gap",
        f"{teacher_text}Left: how many accuracy points each student trails the teacher, against its size "
        "relative to the teacher. Right: what distillation adds over plain cross-entropy (ce) for the same "
        f"architecture (filled) or one of similar size (±{GAIN_TOLERANCE:.0%} params, open): above zero, "
        "distillation helped.",
        [("capacity", f.capacity_figure(gap, gain, gap_note, gain_note, colors))],
    )


def _final_section(run: RunData) -> Section:
    arms = d.final_arms(run.final)
    intro = (
        "nas-kd finalize retrains the front's students at the full budget over seeds no search trial used, "
        "with the recipe the search chose (searched) and any tournament recipes. "
    )
    figures = [("final", f.final_figure(arms, d.fidelity(arms)))]
    if run.final.empty:
        intro += f"Not run yet: nas-kd finalize {run.path} (--seeds 3 --distillers ce,offline-dkd,...)."
        return Section("final", "Final training", intro, figures)
    jobs = run.final["status"].value_counts().to_dict()
    intro += (
        f"Jobs: {', '.join(f'{n} {s.lower()}' for s, n in jobs.items())}. Members are ranked by validation "
        "accuracy; test accuracy is reported, never used to choose."
    )
    return Section("final", "Final training", intro, figures, html=final_table_html(arms))


# ---------------------------------------------------------------- HTML


def final_table_html(arms: pd.DataFrame) -> str:
    header = [
        "member", "architecture", "recipe", "params", "seeds", "final val (%)", "final test (%)", "search val (%)",
        "search test (%)",
    ]  # fmt: skip
    rows = []
    for _, r in arms.iterrows():
        mark = " ★" if r["front"] else ""
        cells = [
            html.escape(str(r["member"])) + mark,
            html.escape(str(r["arch_summary"])),
            html.escape(str(r["arm"])) + (" (best)" if r["best"] else ""),
            _fmt(float(r["params"]), ",.0f"),
            str(int(r["seeds"])),
            _mean_sd(r["val_mean"], r["val_sd"]),
            _mean_sd(r["test_mean"], r["test_sd"]),
            _fmt(float(r["search_val_accuracy"]), ".2f"),
            _fmt(float(r["search_test_accuracy"]), ".2f"),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return (
        '<p class="note">★: on the final front (each member’s best recipe by validation mean, against params).</p>'
        f'<div class="table-wrap"><table id="final-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _mean_sd(mean: float, sd: float) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.2f}" + ("" if not np.isfinite(sd) else f" ± {sd:.2f}")


def pareto_table_html(table: pd.DataFrame, size: str) -> str:
    if table.empty:
        return '<p class="empty">No Pareto members yet: the front needs COMPLETE trials.</p>'
    quantized = bool(table["bits"].astype(bool).any())  # a bits column only when the run has quantized students
    header = [
        "trial", "architecture", *(["bits"] if quantized else []), "distiller", "val acc (%)", "test acc (%)",
        "params", "FLOPs", "size (bytes)", "latency (ms)", "epochs", "load the student",
    ]  # fmt: skip
    rows = []
    for _, r in table.iterrows():
        cells = [
            html.escape(str(r["trial_id"])),
            html.escape(r["arch_summary"]),
            *([html.escape(r["bits"])] if quantized else []),
            html.escape(r["distiller"]),
            _fmt(r["val_accuracy"], ".2f"),
            _fmt(r["test_accuracy"], ".2f"),
            _fmt(r["params"], ",.0f"),
            d.human(r["flops"]),
            d.human(r["model_bytes"]),
            _fmt(r["latency_ms"], ".3g"),
            _fmt(r["epochs"], ".0f"),
            _load_cell(r["student_path"]),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return (
        f'<p class="note">Sorted by {html.escape(d.SIZE_LABELS[size])}.</p>'
        f'<div class="table-wrap"><table id="pareto-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _fmt(value: float, spec: str) -> str:
    return "–" if not np.isfinite(value) else format(value, spec)


def _load_cell(path: str) -> str:
    if not path:
        return '<span class="muted">not saved yet (students are saved when the study finishes)</span>'
    folder = Path(path)
    export = f"nas-kd export {folder.parent.parent} {folder.name} --out {folder.name}-student"
    code = f"<code>nas_kd.load_student({html.escape(json.dumps(path))})</code><br><code>{html.escape(export)}</code>"
    return code if folder.exists() else f'{code} <span class="muted">(folder not found)</span>'


def _summary(run: RunData) -> str:
    counts = run.trials["status"].value_counts()
    status = ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) or "none yet"
    requested = run.info.get("trials_requested")
    members = int((run.category == d.PARETO).sum())
    facts = [
        ("state", run.state),
        ("trials", f"{len(run.trials)}" + (f" of {requested} requested" if requested else "") + f" ({status})"),
        ("Pareto members", str(members)),
        ("objectives", ", ".join(f"{o} ({dr})" for o, dr in zip(run.objectives, run.directions, strict=True))),
        ("classes", _classes(run.info.get("classes"))),
        ("scheduler", str(run.info.get("scheduler") or "–")),
        ("Optuna study", f"{run.info.get('study_name', '–')} in optuna.db (optuna-dashboard opens it)"),
        ("started / updated", f"{run.info.get('started', '–')} / {run.info.get('updated', '–')}"),
        ("search wall time", _duration(run.info.get("wall_seconds"))),
        ("run directory", str(run.path.resolve())),
    ]
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts)
    banner = ""
    if run.state == "running":
        banner = (
            '<p class="banner">Still running: this is a snapshot as of the last update. '
            f"Rebuild it with <code>nas-kd report {html.escape(str(run.path))}</code>.</p>"
        )
    elif run.state == "interrupted":
        banner = (
            '<p class="banner">Interrupted: unfinished trials are shown as running / unfinished. '
            "Continue with <code>nas-kd search STUDY.yaml --resume</code>.</p>"
        )
    notes = "".join(f'<p class="note">Data: {html.escape(str(n))}.</p>' for n in run.info.get("data_notes") or [])
    return f"{banner}<dl class='facts'>{items}</dl>{notes}"


def _classes(names: object, shown: int = 12) -> str:
    if not isinstance(names, list) or not names:
        return "–"
    more = f", … ({len(names) - shown} more)" if len(names) > shown else ""
    return f"{len(names)}: " + ", ".join(str(n) for n in names[:shown]) + more


def _duration(seconds: object) -> str:
    try:
        value = float(seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    divisor, unit = d.time_unit(value)
    return f"{value / divisor:.1f} {unit}"


def render(run: RunData, sections: list[Section]) -> str:
    nav = " · ".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    body = []
    for s in sections:
        parts = [f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2><p class="intro">{html.escape(s.intro)}</p>']
        for key, figure in s.figures:
            height = int(figure.layout.height or 450)
            parts.append(
                pio.to_html(
                    figure, full_html=False, include_plotlyjs=False, div_id=f"fig-{key}", config=PLOT_CONFIG,
                    default_width="100%", default_height=f"{height}px",
                )
            )  # fmt: skip
        parts.append(s.html + "</section>")
        body.append("".join(parts))
    generated = datetime.now().isoformat(timespec="seconds")
    return TEMPLATE.format(
        title=html.escape(f"nas-kd report: {run.name}"),
        name=html.escape(run.name),
        plotlyjs=get_plotlyjs(),
        summary=_summary(run),
        nav=nav,
        body="\n".join(body),
        generated=generated,
    )


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<script type="text/javascript">window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script>
<script type="text/javascript">{plotlyjs}</script>
<style>
body {{ font-family: system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0; color: #222; }}
main {{ max-width: 1240px; margin: 0 auto; padding: 12px 20px 40px; }}
h1 {{ font-size: 24px; margin: 12px 0 4px; }}
h2 {{ font-size: 20px; margin: 32px 0 4px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }}
nav {{ margin: 8px 0 12px; font-size: 14px; }}
.intro, .note {{ color: #444; font-size: 14px; max-width: 1100px; }}
.facts {{ display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 14px; margin: 8px 0; }}
.facts dt {{ color: #666; }} .facts dd {{ margin: 0; }}
.banner {{ background: #fff4e5; border: 1px solid #f5c27a; padding: 8px 12px; border-radius: 4px; }}
.table-wrap {{ overflow-x: auto; }}
table {{ border-collapse: collapse; font-size: 13px; width: 100%; }}
th, td {{ border-bottom: 1px solid #e3e3e3; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f6f6f6; position: sticky; top: 0; }}
td:nth-child(n+4):nth-child(-n+10) {{ text-align: right; white-space: nowrap; }}
code {{ font-size: 12px; background: #f3f3f3; padding: 1px 4px; border-radius: 3px; word-break: break-all; }}
.muted, .empty {{ color: #777; }}
footer {{ color: #888; font-size: 12px; margin-top: 32px; }}
</style></head>
<body><main>
<h1>nas-kd report: {name}</h1>
{summary}
<nav>{nav}</nav>
{body}
<footer>Generated {generated} by nas-kd from the run directory alone.</footer>
</main></body></html>
"""


# ---------------------------------------------------------------- PNG export


def find_browser() -> str | None:
    """The Chrome/Chromium kaleido would use (BROWSER_PATH, PATH, usual install places), or None."""
    from choreographer.browsers.chromium import Chromium

    return Chromium.find_browser(skip_local=False)


def _check_png_support() -> None:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise ReportError("--png needs kaleido: pip install 'nas-kd[images]'") from None
    if not find_browser():
        raise ReportError(
            "--png needs Chrome or Chromium for kaleido and none was found: install one "
            "(Debian/Ubuntu: apt-get install chromium) or point BROWSER_PATH at it"
        )


def export_png(sections: list[Section], png_dir: Path) -> list[Path]:
    """One PNG per figure, 1280 px wide, rendered by a single kaleido browser session."""
    from choreographer.errors import ChromeNotFoundError

    png_dir.mkdir(parents=True, exist_ok=True)
    figures = [(key, fig) for s in sections for key, fig in s.figures]
    paths = [png_dir / f"{i:02d}-{key}.png" for i, (key, _) in enumerate(figures, start=1)]
    try:
        pio.write_images(
            [fig for _, fig in figures],
            paths,
            width=PNG_WIDTH,
            height=[int(fig.layout.height or 450) for _, fig in figures],
        )
    except ChromeNotFoundError:
        raise ReportError("--png: kaleido could not start Chrome/Chromium (Debian: apt-get install chromium)") from None
    return paths
