"""What each scheme does beyond the shared conformance suite: settings, helpers, teacher signals."""

from __future__ import annotations

import math
import threading
import types
import typing
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import torch
from torch import nn

from nas_kd.arch import build_model, count_params
from nas_kd.distill import DISTILLERS, DistillerConfigError, make_settings, parse_distiller_space
from nas_kd.distill.assistant import Assistant, AssistantSettings, assistant_params, ladder_rung
from nas_kd.distill.base import DistillContext, Teacher
from nas_kd.distill.helpers import params_of, resize_to_params
from nas_kd.distill.multi_teacher import confidence_weights
from nas_kd.testing.pytest_distillers import STUDENTS, Environment, roundtrip

SCALARS = (int, float, bool, str)


@pytest.mark.parametrize("name", list(DISTILLERS))
def test_settings_are_flat_described_scalars_with_defaults(name: str) -> None:
    # Flat scalars are what the study grammar can search (choices, ranges), and what trials.csv records.
    for field, info in DISTILLERS[name].Settings.model_fields.items():
        annotation = info.annotation
        if typing.get_origin(annotation) in (types.UnionType, typing.Union):  # optional: unset = published
            annotation, none = typing.get_args(annotation)
            assert none is type(None) and info.default is None, field
        assert annotation in SCALARS or typing.get_origin(annotation) is typing.Literal, field
        assert not info.is_required(), field
        assert info.description, field


def test_schemes_and_their_settings_are_searchable_from_the_study() -> None:
    space = parse_distiller_space(
        {
            "choices": [
                "ce",
                {
                    "name": "offline",
                    "feature": {"choices": ["fitnet", "at"]},
                    "feature_weight": {"low": 0.1, "high": 10.0},
                },
                {"name": "online", "peers": {"low": 1, "high": 3}},
                {"name": "self", "born_again": {"choices": [False, True]}},
                {"name": "assistant", "assistants": {"low": 1, "high": 2}},
                {"name": "multi_teacher", "combine": {"choices": ["mean", "confidence", "random"]}},
            ]
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        name, settings = space.suggest(trial)
        make_settings(name, settings)  # every draw is valid
        assert trial.params["distiller"] == name
        assert {f"{name}.{key}" for key in settings} <= set(trial.params)
        if name == "offline":
            assert settings["feature"] in ("fitnet", "at") and 0.1 <= settings["feature_weight"] <= 10
        seen.add(name)
    assert seen == set(space.names)


@pytest.mark.parametrize(
    ("block", "where"),
    [
        ({"name": "offline", "feature": "hints"}, ".feature"),
        ({"name": "online", "peer": "not json"}, ".peer"),
        ({"name": "multi_teacher", "combine": {"choices": ["mean", "vote"]}}, ".combine"),
        ({"name": "assistant", "assistants": 0}, ".assistants"),
    ],
)
def test_bad_settings_name_their_field(block: dict[str, Any], where: str) -> None:
    with pytest.raises(DistillerConfigError) as error:
        parse_distiller_space(block)
    assert error.value.where == where


def test_assistants_step_geometrically_from_teacher_to_student() -> None:
    assert assistant_params(1_000_000, 10_000, 1) == pytest.approx([100_000])
    assert assistant_params(1_000_000, 1_000, 2) == pytest.approx([100_000, 10_000])


@pytest.mark.parametrize("family", list(STUDENTS))
def test_assistant_architecture_keeps_family_and_depths_at_the_target_size(family: str) -> None:
    student = STUDENTS[family]
    target = 20 * count_params(build_model(student, (1, 8, 8), 10))
    arch = resize_to_params(student, target, (1, 8, 8), 10)
    assert arch["family"] == family
    assert [s["depth"] for s in arch["stages"]] == [s["depth"] for s in student["stages"]]
    assert all(s["channels"] % 8 == 0 for s in arch["stages"])
    assert math.log(count_params(build_model(arch, (1, 8, 8), 10)) / target) == pytest.approx(0, abs=0.35)


def assistants_asked_for(student: dict[str, Any], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The assistant architectures the assistant distiller asks its helper trainer for, for ``student``
    against a 200k-param teacher on 8x8 digits (the helper hands back its teacher: nothing is trained)."""
    asked: list[dict[str, Any]] = []
    teacher = Teacher(nn.Linear(200_000, 1))
    data = SimpleNamespace(input_shape=(1, 8, 8), num_classes=10)
    context = DistillContext(data, [teacher], student_arch=student,  # type: ignore[arg-type]
                             train_helper=lambda arch, role, source: asked.append(arch) or source)  # fmt: skip
    Assistant.source(SimpleNamespace(settings=AssistantSettings(**settings)), context)  # type: ignore[arg-type]
    return asked


def test_students_on_one_ladder_rung_share_their_assistants() -> None:
    wide = {"family": "cnn", "stem": 16, "stages": [{"channels": 24, "depth": 1}, {"channels": 32, "depth": 1}]}
    deep = {
        "family": "cnn",
        "stem": 8,
        "stages": [{"channels": 8, "depth": 3, "kernel": 5}, {"channels": 24, "depth": 2}],
    }
    sizes = [params_of(arch, (1, 8, 8), 10) for arch in (wide, deep)]
    assert sizes[0] != sizes[1] and ladder_rung(sizes[0], 2) == ladder_rung(sizes[1], 2)
    for assistants in (1, 2):
        shared = [assistants_asked_for(arch, {"assistants": assistants}) for arch in (wide, deep)]
        assert len(shared[0]) == assistants and shared[0] == shared[1]
        assert shared[0][0]["family"] == "cnn" and len(shared[0][0]["stages"]) == 2
        own = [assistants_asked_for(arch, {"assistants": assistants, "ladder": 0}) for arch in (wide, deep)]
        assert own[0] != own[1]
        assert [s["depth"] for s in own[1][0]["stages"]] == [3, 2]  # ladder 0: the student's own shape, widened
    # another rung, family or stage count is another chain
    small = {"family": "cnn", "stem": 8, "stages": [{"channels": 8, "depth": 1}, {"channels": 8, "depth": 1}]}
    resnet = {**wide, "family": "resnet"}
    three = {**wide, "stages": wide["stages"] + [{"channels": 32, "depth": 1}]}
    firsts = [assistants_asked_for(arch, {})[0] for arch in (wide, small, resnet, three)]
    assert all(a != b for i, a in enumerate(firsts) for b in firsts[i + 1 :])


def test_ladder_rungs_are_log_spaced() -> None:
    assert ladder_rung(10_000, 2) == pytest.approx(10_000)
    assert ladder_rung(25_000, 2) == pytest.approx(10**4.5)
    assert ladder_rung(17_000, 2) == pytest.approx(10**4.0)  # log10 4.23 rounds to 4.0
    assert ladder_rung(17_000, 4) == pytest.approx(10**4.25)


def test_an_assistant_is_trained_once_when_trials_ask_together(
    env: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nas_kd.teachers

    calls = []
    train_plain = nas_kd.teachers.train_plain
    monkeypatch.setattr(nas_kd.teachers, "train_plain", lambda *a, **k: calls.append(1) or train_plain(*a, **k))
    settings = {"assistants": 1, "temperature": 2.0}  # the student's settings do not change the assistant
    trainers: list[Any] = [None, None]

    def build(i: int) -> None:
        trainers[i] = env.trainer("assistant", settings if i else {}, "cnn")

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    a, b = (t.distiller.teacher for t in trainers)
    assert torch.equal(a.train_logits, b.train_logits)
    teacher_params, student_params = (
        count_params(env.teachers[0].load("cpu")),
        count_params(trainers[0].distiller.student),
    )
    assert student_params < count_params(a.model) < teacher_params


def test_born_again_teacher_is_the_students_architecture_trained(env: Environment) -> None:
    trainer = env.trainer("self", {"born_again": True}, "resnet")
    teacher = trainer.distiller.born_again_teacher
    assert teacher.model.state_dict().keys() == trainer.distiller.student.state_dict().keys()
    assert teacher.val_accuracy > 0.2  # trained, not a fresh copy


def test_self_distillation_adds_one_head_per_shallower_stage(env: Environment) -> None:
    distiller = env.trainer("self", {}, "mobilenet").distiller
    assert len(distiller.heads) == len(STUDENTS["mobilenet"]["stages"]) - 1
    _, terms = distiller.forward_train(*env.batch())
    assert set(terms) == {"ce", "heads_ce", "heads_kl", "heads_hint"}


def test_online_peers_are_independent_networks(env: Environment) -> None:
    distiller = env.trainer("online", {"peers": 2}, "cnn").distiller
    student, peers = distiller.student, list(distiller.peers)
    assert len(peers) == 2
    for peer in peers:
        assert peer.state_dict().keys() == student.state_dict().keys()
        assert not torch.equal(peer.head.weight, student.head.weight)  # initialised afresh
    teacher_peer = env.trainer("online", {"peer": "teacher"}, "cnn").distiller.peers[0]
    assert len(teacher_peer.stages) == 4  # the study teacher's architecture


def test_confidence_weights_are_ca_mkds() -> None:
    # Three teachers, label 0: A is sure and wrong (CE ~20), B and C right. CA-MKD: w = (1 - softmax(CE)) / (K - 1).
    logits = [torch.tensor([[0.0, 20.0]]), torch.tensor([[5.0, 0.0]]), torch.tensor([[4.0, 0.0]])]
    ce = [math.log(1 + math.exp(float(t[0, 1] - t[0, 0]))) for t in logits]
    softmax = [math.exp(c) / sum(math.exp(d) for d in ce) for c in ce]
    weights = confidence_weights(logits, torch.tensor([0]))
    assert weights[:, 0].tolist() == pytest.approx([(1 - p) / 2 for p in softmax], rel=1e-5, abs=1e-7)
    assert weights[:, 0].tolist() == pytest.approx([0.0, 0.5, 0.5], abs=1e-6)
    # Two teachers: (1 - softmax(CE)) equals softmax(-CE).
    two = confidence_weights(logits[1:], torch.tensor([0]))[:, 0]
    assert two.tolist() == pytest.approx(torch.softmax(-torch.tensor(ce[1:]), 0).tolist(), rel=1e-5)


def test_random_combination_draws_every_teacher_reproducibly(env: Environment) -> None:
    def draws(distiller: Any, steps: int) -> list[str]:
        return [distiller.step_teachers()[0].name for _ in range(steps)]

    first = env.trainer("multi_teacher", {"combine": "random"}, "cnn", seed=0).distiller
    sequence = draws(first, 12)
    assert set(sequence) == {t.info["name"] for t in env.teachers}
    again = env.trainer("multi_teacher", {"combine": "random"}, "cnn", seed=0).distiller
    again.load_state_dict(roundtrip(first.state_dict()))  # as a resumed run: the stream goes on
    assert draws(again, 12) == draws(env.trainer("multi_teacher", {"combine": "random"}, "cnn").distiller, 24)[12:]
    assert draws(env.trainer("multi_teacher", {"combine": "random"}, "cnn", seed=1).distiller, 12) != sequence


@pytest.mark.parametrize(("settings", "live"), [({}, False), ({"feature": "at"}, True), ({"relation": "rkd"}, True)])
def test_the_teacher_runs_only_when_cached_logits_do_not_suffice(
    env: Environment, settings: dict[str, Any], live: bool
) -> None:
    distiller = env.trainer("offline", settings, "cnn").distiller
    calls = []
    distiller.teacher.model.stem.register_forward_hook(lambda *args: calls.append(1))
    distiller.forward_train(*env.batch())
    assert bool(calls) == live


def test_the_trainer_tells_distillers_the_epoch_and_a_resumed_run_keeps_the_schedule(env: Environment) -> None:
    settings = {"response": "dkd", "dkd_warmup": 4}
    trainer = env.trainer("offline", settings, "cnn")
    dkd = trainer.distiller.knowledge.terms["response"]
    trainer.run_epoch()
    assert (trainer.distiller.epoch, dkd.ramp) == (0, 0.25)
    trainer.run_epoch()
    assert (trainer.distiller.epoch, dkd.ramp) == (1, 0.5)
    resumed = env.trainer("offline", settings, "cnn")
    resumed.load_state_dict(roundtrip(trainer.state_dict()))
    assert resumed.distiller.knowledge.terms["response"].ramp == 0.5  # restored with the state
    assert resumed.run_epoch().losses == trainer.run_epoch().losses  # the trainer's epoch drives the next
    assert resumed.distiller.knowledge.terms["response"].ramp == 0.75
