"""The diagnosis suite: planted failures × wiring levels, judged by the server's incidents.

Every case in ``tests.diagnosis.cases`` is a small seeded training run with one bug (or
none), written as a researcher would write it. Each runs at three wiring levels (``minimal``,
``everything``, ``attach``; see ``cases.probe``) against one real server, and the test reads
back, from the REST API after ``close()``:

* that the planted failure really began at the declared onset (checked by the case itself,
  with plain torch, independently of trainvitals) and that the run reached the server;
* ``GET /api/runs/{id}/incidents``: exactly one incident per planted cause (none on the
  healthy controls, none where the level cannot observe the cause at all), its onset within
  one step of the true one, on the rank where it started, a headline that states what that
  level can know about the cause (``EXPECT``), and at least one piece of evidence.

The true onset is where the failure itself begins: the first non-finite value, the step the
guard first zeroes, the spiked step, the first exploded gradient, step 0 for a module that is
dead from the start. Early warnings before it (a pre-activation whose exp headroom shrinks,
for instance: the headroom trend alert of ``conf_exp`` and ``fp16_head`` starts at step 0)
are evidence of the same incident, not its onset.

``EXPECT`` is the suite's one table: per case and level, what the level can observe of the
cause and the facts its headline must therefore name. It was written from what each level
records (README, and the data each level sends), not from any inference rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.diagnosis.cases import CASES, LEVELS, Case, Truth, run_case, source_line
from trainvitals.server import ServerThread, Settings

TOKEN = "diagnosis-ingest-token"
ONSET_SLACK = 1  # steps an incident's onset may be off the true onset


@dataclass(frozen=True)
class Num:
    """A headline fact that is a number: some number in the headline is within ``rel`` of it
    (so "×300", "300x", "3e+02" and "lr 15" style spellings all count)."""

    value: float
    rel: float = 0.05

    def found_in(self, text: str) -> bool:
        for match in re.finditer(r"[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?", text):
            try:
                x = float(match.group().replace(",", ""))
            except ValueError:
                continue
            if math.isclose(x, self.value, rel_tol=self.rel):
                return True
        return False

    def __str__(self) -> str:
        return f"the number {self.value:g}"


Fact = str | Num | tuple["Fact", ...]  # a regex, a number, or any one of several


@dataclass(frozen=True)
class Expect:
    """What one level can observe of a case's cause, and what its headline must name."""

    knows: str
    headline: tuple[Fact, ...] = ()
    observable: bool = True  # False: the level records nothing of the cause


def holds(fact: Fact, text: str) -> bool:
    if isinstance(fact, tuple):
        return any(holds(f, text) for f in fact)
    if isinstance(fact, Num):
        return fact.found_in(text)
    return re.search(fact, text, re.IGNORECASE) is not None


# Facts, as case-insensitive regexes with the spellings a plain-words headline may use.
EXP = r"\bexp\b"
OVERFLOW = r"overflow|exp\b|headroom|\+?inf"
NAN = r"\bnan\b|non-?finite|not finite"
FLOAT16 = r"float16|\bfp16\b|\bhalf\b"
GRAD = r"grad"
SPIKE = r"spike|jump|surge|outlier|leap|rose|×\s*\d|\d\s*×|\d\s*x\b|times"
BATCH = r"batch|sample|input|data"
LR = r"\blr\b|learning[ -]rate"
GUARD = r"clip|guard"
ZEROED = r"zero|×\s*0|\*\s*0\.?0?\b|\b0\.0\b"
STALL = (r"stall|stuck|not learning|no learning|nothing (is )?learn",
         r"gradients? (norm )?(is |was |are |were )?(exactly )?(0|zero)\b",
         r"zero gradients?")
EXPLODED = (r"grad\w*[^.;]*(explod|spike|jump|surge|rose|×\s*\d|\d\s*×|times)",
            r"(explod|spike|jump|surge)\w*[^.;]*grad")
DEAD = r"dead|no gradient|without (a )?gradient|gradients? (is |are )?(missing|none)|detach"
NOT_MOVING = (r"optimi[sz]er", r"never (moved|moves|updated|changed)", r"not (moving|updated)",
              r"did not move|does not move|no update|frozen",
              r"updates? (is |was |are |were )?(exactly )?(0|zero)\b")
RANK1 = r"rank\s*1\b"
INPUT = r"input|batch|data|sample"


def _src(case: str, needle: str) -> str:
    """``file.py:line`` (or ``file.py line N``) of the case script's faulty op."""
    found = next(c for c in CASES if c.name == case)
    return rf"{re.escape(found.file)}(:|,? line ){source_line(found, needle)}\b"


def _at(case: str, needle: str) -> str:
    found = next(c for c in CASES if c.name == case)
    return f"{found.file}:{source_line(found, needle)}"


UNOBSERVABLE = Expect("nothing of the cause: the logged tensors and losses look like an "
                      "ordinary run, and per-module gradients and updates are not recorded",
                      observable=False)
HEALTHY = {level: Expect("a healthy run: nothing to report", observable=False)
           for level in LEVELS}

EXPECT: dict[str, dict[str, Expect]] = {
    "conf_exp": {
        "minimal": Expect("conf_raw (feeds_exp, float32) passes exp's margin 88.72 and conf "
                          "holds +Inf; loss NaN", ("conf_raw", OVERFLOW)),
        "everything": Expect("the op and line: exp at conf_exp.py in ConfHead.forward "
                             "(the trainer aborts, so the trace re-runs on finite weights)",
                             (EXP, _src("conf_exp", "torch.exp("))),
        "attach": Expect("the module whose output went non-finite first: model.conf_head",
                         (r"conf_head",)),
    },
    "norm_sqrt": {
        "minimal": Expect("the logged model output depth turned NaN; loss NaN",
                          (r"\bdepth\b", NAN)),
        "everything": Expect("the op and line: sqrt at norm_sqrt.py in FastInstanceNorm",
                             (r"\bsqrt\b", _src("norm_sqrt", "torch.sqrt("))),
        "attach": Expect("the module whose output went NaN first: model.norm "
                         "(FastInstanceNorm)", (r"model\.norm\b|FastInstanceNorm",)),
    },
    "point_sqrt": {
        "minimal": Expect("the pre-clip gradient norm is NaN while the loss and the logged "
                          "points are finite", (GRAD, NAN)),
        "everything": Expect("backward origin: the first parameter with a non-finite "
                             "gradient, in model.point_head (no op: the forward was finite)",
                             (GRAD, r"point_head")),
        "attach": Expect("as everything: the first non-finite gradient, model.point_head",
                         (GRAD, r"point_head")),
    },
    "masked_mean": {
        "minimal": Expect("the loss component depth_l1 is NaN while the logged depth is "
                          "finite", (r"depth_l1", NAN)),
        "everything": Expect("denominator valid_pixels: a sample with 0 valid pixels",
                             (r"valid[_ ]pixel",)),
        "attach": Expect("the raw loss is NaN while the model's outputs are finite",
                         (r"\bloss\b", NAN)),
    },
    "fp16_head": {
        "minimal": Expect("depth_raw is float16 (feeds_exp, margin 11.09) and passes it; "
                          "depth +Inf", (r"depth_raw", FLOAT16)),
        "everything": Expect("exp at fp16_head.py in DepthHead.forward, and float16 from "
                             "the logged tensors", (EXP, _src("fp16_head", "torch.exp("),
                                                    FLOAT16)),
        "attach": Expect("the module whose output went non-finite first: model.depth_head "
                         "(no dtype is recorded)", (r"depth_head",)),
    },
    "bad_batch": {
        "minimal": Expect("a one-step loss jump (×40) with the lr unchanged, back the next "
                          "step: a bad batch", (r"\bloss\b", SPIKE, BATCH)),
        "everything": Expect("as minimal", (r"\bloss\b", SPIKE, BATCH)),
        "attach": Expect("raw loss jump for one step, lr unchanged", (r"\bloss\b", SPIKE,
                                                                     BATCH)),
    },
    "lr_spike": {
        "minimal": Expect("lr 15 at one step, ×300 the steps around it",
                          (LR, (Num(300), Num(15)))),
        "everything": Expect("as minimal (lr/group0 too)", (LR, (Num(300), Num(15)))),
        "attach": Expect("the optimizer's lr, 15 at one step", (LR, (Num(300), Num(15)))),
    },
    "guard_stall": {
        "minimal": Expect("clip events: raw loss ~40 > clip_loss 10, zeroed, every step",
                          (GUARD, ZEROED, Num(10))),
        "everything": Expect("as minimal, plus every gradient exactly 0",
                             (GUARD, ZEROED, Num(10))),
        "attach": Expect("no guard visible: raw loss ~40 while the gradients are exactly 0 "
                         "every step", (STALL,)),
    },
    "clip_hides": {
        "minimal": Expect("the pre-clip gradient norm jumps ×10⁴ as loss/smooth appears; "
                          "the clip itself is not recorded", (EXPLODED, r"smooth")),
        "everything": Expect("as minimal", (EXPLODED, r"smooth")),
        "attach": Expect("pre-clip norm ×10⁴ against an applied norm of 1: clipped; no "
                         "components", (EXPLODED, r"clip")),
    },
    "detached_head": {
        "minimal": UNOBSERVABLE,
        "everything": Expect("dead_grads/depth_head: no gradient reaches depth_head from "
                             "step 0", (r"depth_head", DEAD)),
        "attach": Expect("as everything (attach watches the optimizer)",
                         (r"depth_head", DEAD)),
    },
    "optimizer_omits": {
        "minimal": UNOBSERVABLE,
        "everything": Expect("update/normal_head is 0 while it has gradients: the optimizer "
                             "does not hold it", (r"normal_head", NOT_MOVING)),
        "attach": Expect("as everything", (r"normal_head", NOT_MOVING)),
    },
    "ddp_nan": {
        "minimal": Expect("rank 1's loss and depth turn NaN at the step; rank 0 only sees "
                          "NaN gradients", (RANK1,)),
        "everything": Expect("rank 1's model was given a non-finite input", (RANK1, INPUT)),
        "attach": Expect("as everything (watch without the op tracer)", (RANK1, INPUT)),
    },
    "healthy_plain": HEALTHY,
    "healthy_noisy": HEALTHY,
}

# Per observable cell: a headline that states what the level knows (it must pass), and one
# that states only a symptom the level also sees (it must not). They keep the table honest:
# every demand can be met, and none is met by a generic "loss is NaN".
EXAMPLES: dict[tuple[str, str], tuple[str, str]] = {
    ("conf_exp", "minimal"): (
        "exp overflow at step 21: conf_raw (float32) reached 96.4, past exp's limit 88.7; "
        "conf is +Inf", "Non-finite value at step 21: loss is NaN."),
    ("conf_exp", "everything"): (
        f"Inf first produced by model.conf_head (ConfHead) at step 21: exp at "
        f"{_at('conf_exp', 'torch.exp(')} in forward",
        "Inf first produced by model.conf_head (ConfHead) at step 21."),
    ("conf_exp", "attach"): ("Inf first produced by model.conf_head (ConfHead) at step 21",
                             "Non-finite value at step 21: loss is NaN."),
    ("norm_sqrt", "minimal"): ("The model's depth output turned NaN at step 30 (256 of 256)",
                               "Non-finite value at step 30: loss/rel_err is NaN."),
    ("norm_sqrt", "everything"): (
        "NaN first produced by model.norm (FastInstanceNorm) at step 30: sqrt at "
        f"{_at('norm_sqrt', 'torch.sqrt(')} in forward",
        "NaN first produced by model.norm at step 30."),
    ("norm_sqrt", "attach"): ("NaN first produced by model.norm (FastInstanceNorm) at step 30",
                              "Non-finite value at step 30: loss is NaN."),
    ("point_sqrt", "minimal"): ("Gradient norm NaN at step 21 while the loss (27.4) was finite",
                                "Non-finite value at step 22: loss is NaN."),
    ("point_sqrt", "everything"): (
        "NaN first appeared in the backward pass at step 21; first non-finite gradient: "
        "model.point_head.weight", "Non-finite value at step 21: grad_norm is NaN."),
    ("point_sqrt", "attach"): (
        "NaN in the gradients at step 21, first in model.point_head.weight; the forward was "
        "finite", "Non-finite value at step 21: grad_norm is NaN."),
    ("masked_mean", "minimal"): (
        "Loss component depth_l1 is NaN at step 27 while the logged depth was finite",
        "Non-finite value at step 27: loss is NaN."),
    ("masked_mean", "everything"): (
        "At step 27 one sample had no valid pixel (valid_pixels = 0): its mean is 0/0 = NaN",
        "NaN first appeared in the backward pass at step 27; first non-finite gradient: "
        "model.depth_head.weight."),
    ("masked_mean", "attach"): (
        "The loss became NaN at step 27 while the model's outputs were finite",
        "NaN first appeared in the backward pass at step 27; first non-finite gradient: "
        "model.depth_head.weight."),
    ("fp16_head", "minimal"): (
        "exp overflowed float16 at step 19: depth_raw (float16) reached 12.3 > 11.09",
        "Non-finite tensor at step 19: depth (float16) has 8 +Inf of 256 elements."),
    ("fp16_head", "everything"): (
        f"Inf first produced by model.depth_head at step 19: exp at "
        f"{_at('fp16_head', 'torch.exp(')} on a float16 depth_raw",
        "Inf first produced by model.depth_head (DepthHead) at step 19: exp at "
        f"{_at('fp16_head', 'torch.exp(')} in forward."),
    ("fp16_head", "attach"): ("Inf first produced by model.depth_head (DepthHead) at step 19",
                              "Non-finite value at step 19: loss is +Inf."),
    ("bad_batch", "minimal"): (
        "Loss spiked ×42 at step 32 for one step, learning rate unchanged: one bad batch",
        "Loss spike at step 32: raw loss 965 is 85.8 robust deviations above the median."),
    ("bad_batch", "everything"): (
        "One-step loss jump (965 vs 23) at step 32 with a steady lr: a bad input sample?",
        "Loss spike at step 32: raw loss 965 is 85.8 robust deviations above the median."),
    ("bad_batch", "attach"): (
        "Loss spiked ×42 at step 32 and was back the next step: a bad batch",
        "Loss spike at step 32: raw loss 965 is 85.8 robust deviations above the median."),
    ("lr_spike", "minimal"): ("Learning rate jumped ×300 to 15 at step 30 for one step",
                              "Loss spike at step 31: raw loss 15.4 is 40 deviations up."),
    ("lr_spike", "everything"): ("lr 15 at step 30 (300 times the steps around it)",
                                 "Loss spike at step 31: raw loss 15.4 is 40 deviations up."),
    ("lr_spike", "attach"): ("Learning rate spiked to 15.0 at step 30; loss ×50 after",
                             "Loss spike at step 31: raw loss 15.4 is 40 deviations up."),
    ("guard_stall", "minimal"): (
        "Loss guard zeroed the loss on every step since step 25: raw loss 43 > clip 10",
        "Loss spike at step 25: raw loss 43 is 13 robust deviations above the median."),
    ("guard_stall", "everything"): (
        "The ×0 guard clipped every loss since step 25 (raw 43 > 10): nothing learns",
        "No learning since step 25: every trainable gradient was exactly 0."),
    ("guard_stall", "attach"): (
        "Silent stall since step 25: gradients are exactly 0 while the raw loss is 43",
        "Loss spike at step 25: raw loss 43 is 13 robust deviations above the median."),
    ("clip_hides", "minimal"): (
        "Gradient norm exploded ×20,000 at step 30 as loss/smooth appeared (2,337)",
        "Loss spike at step 30: raw loss 2337 is 2,070 robust deviations above the median."),
    ("clip_hides", "everything"): (
        "The smooth term arrived at step 30 and the pre-clip gradient norm jumped to 6,702",
        "Loss spike at step 30: raw loss 2337 is 2,070 robust deviations above the median."),
    ("clip_hides", "attach"): (
        "Gradient norm exploded ×20,000 at step 30 (6,702 before clipping to 1.0)",
        "Loss spike at step 30: raw loss 2337 is 2,070 robust deviations above the median."),
    ("detached_head", "everything"): (
        "model.depth_head gets no gradient since step 0 (2 of 2 parameters dead)",
        "The loss component points has not improved since step 0."),
    ("detached_head", "attach"): (
        "depth_head is dead: its gradients are missing on every step since step 0",
        "The loss component points has not improved since step 0."),
    ("optimizer_omits", "everything"): (
        "model.normal_head has gradients but never moved since step 0: not in the optimizer",
        "The update of the encoder is small since step 0."),
    ("optimizer_omits", "attach"): (
        "normal_head's update is exactly 0 on every step since step 0 although it has "
        "gradients", "normal loss 1.5 at step 0."),
    ("ddp_nan", "minimal"): (
        "NaN started on rank 1 at step 17 (loss, depth) and reached rank 0 through the "
        "all-reduce", "Non-finite value at step 17: grad_norm is NaN."),
    ("ddp_nan", "everything"): (
        "NaN came in with rank 1's input batch at step 17 and spread to rank 0",
        "NaN first produced by model.module.encoder.conv1 (Conv2d) at step 18."),
    ("ddp_nan", "attach"): (
        "Rank 1 was given a non-finite input at step 17; rank 0 got NaN gradients",
        "Rank 0: NaN first produced by model.module.encoder.conv1 (Conv2d) at step 18."),
}


PARAMS = [pytest.param(case, level, id=f"{case.name}-{level}",
                       marks=[pytest.mark.slow] if case.world_size > 1 else [])
          for case in CASES for level in LEVELS]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    srv = ServerThread(Settings(port=0, data_dir=tmp_path_factory.mktemp("diagnosis-data"),
                                ingest_token=TOKEN, log_alerts=False)).start()
    yield srv
    srv.stop()


def test_every_case_and_level_has_an_expectation() -> None:
    assert sorted(EXPECT) == sorted(c.name for c in CASES)
    for case in CASES:
        assert sorted(EXPECT[case.name]) == sorted(LEVELS), case.name
        for level, expect in EXPECT[case.name].items():
            assert expect.observable == bool(expect.headline), (case.name, level)
            assert not (case.healthy and expect.observable), (case.name, level)


def test_a_headline_fact_must_really_be_there() -> None:
    assert holds(Num(300), "lr ×300 at step 30") and holds(Num(15), "lr rose to 15.0")
    assert not holds(Num(300), "lr 3.1 at step 300.5e1")
    assert holds((LR, "nothing"), "Learning rate spiked") and not holds(LR, "slr")
    assert holds(STALL, "Gradients were exactly 0 for 12 steps")
    assert not holds(EXPLODED, "loss spiked; grad norm steady")


def _example_incident(case: Case, headline: str, onset: int) -> dict[str, Any]:
    evidence = {"rank": case.rank, "rule": "nonfinite", "series": "loss",
                "severity": "critical", "first_step": onset, "message": headline}
    return {"id": 1, "run": case.name, "kind": "example", "severity": "critical",
            "state": "open", "onset_step": onset, "rank": case.rank, "headline": headline,
            "remedy": "fix it", "evidence": [evidence], "evidence_count": 1,
            "ranks": list(range(case.world_size))}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_incident_checks_accept_a_precise_incident_and_reject_others(case: Case) -> None:
    """The checks can pass (a good incident passes) and can fail (each flaw fails)."""
    for level in LEVELS:
        expect = EXPECT[case.name][level]
        if not expect.observable:
            check_incidents(case, level, [])
            with pytest.raises(AssertionError):
                check_incidents(case, level, [_example_incident(case, "loss flat", 0)])
            continue
        assert case.onset is not None
        good, symptom = EXAMPLES[(case.name, level)]
        check_incidents(case, level, [_example_incident(case, good, case.onset)])
        check_incidents(case, level, [_example_incident(case, good, case.onset + 1)])
        for flawed in ([_example_incident(case, symptom, case.onset)],
                       [_example_incident(case, good, case.onset + 2)],
                       [_example_incident(case, good, case.onset)] * 2, []):
            with pytest.raises(AssertionError):
                check_incidents(case, level, flawed)


def test_a_planted_failure_that_moves_fails_the_suite(tmp_path: Path) -> None:
    """A case whose failure does not begin where declared is caught by the case's own check."""
    case = next(c for c in CASES if c.name == "masked_mean")
    truths = run_case(case, "off", "moved", server=None, token=None, scratch=tmp_path)
    check_the_failure_happened(case, truths)
    assert case.onset is not None
    with pytest.raises(AssertionError, match="declared to begin at step 30 but began at 27"):
        check_the_failure_happened(replace(case, onset=30), truths)
    with pytest.raises(AssertionError, match="went wrong at step 27"):
        check_the_failure_happened(replace(case, onset=None, causes=0), truths)


def run_on(server: ServerThread, case: Case, level: str, scratch: Path
           ) -> tuple[list[Truth], str]:
    run = f"{case.name}-{level}"
    return run_case(case, level, run, server=server.ws_url, token=TOKEN, scratch=scratch), run


@pytest.mark.parametrize(("case", "level"), PARAMS)
def test_diagnosis(server: ServerThread, case: Case, level: str, tmp_path: Path) -> None:
    truths, run = run_on(server, case, level, tmp_path)
    check_the_failure_happened(case, truths)
    api = f"{server.http_url}/api"
    stored = check_the_run_reached_the_server(api, case, run, truths)
    response = httpx.get(f"{api}/runs/{stored['id']}/incidents")
    assert response.status_code == 200, (
        f"GET /api/runs/{{id}}/incidents answered {response.status_code}: the incident API "
        "is missing")
    incidents: list[dict[str, Any]] = response.json()["incidents"]
    by_name = httpx.get(f"{api}/incidents", params={"run": run})
    assert by_name.status_code == 200 and by_name.json()["incidents"] == incidents
    check_incidents(case, level, incidents)


def check_the_failure_happened(case: Case, truths: list[Truth]) -> None:
    """The case's own plain-torch check: its failure began where it says (or never did)."""
    assert len(truths) == case.world_size
    truth = truths[case.rank]
    where = f"{case.name}: planted failure ({case.bug})"
    if case.healthy:
        assert truth.onset is None, f"{where} went wrong at step {truth.onset}: {truth.what}"
        assert truth.facts["last_loss"] < truth.facts["first_loss"], f"{where} did not learn"
        return
    onset = case.onset
    assert onset is not None and truth.onset == onset, (
        f"{where} was declared to begin at step {onset} but began at "
        f"{truth.onset} ({truth.what or 'its check never held'})")
    facts = truth.facts
    if case.name == "bad_batch":  # one step: the loss is back to its old level soon after
        assert max(facts["loss_after"]) < 30, f"{where} did not recover: {facts['loss_after']}"
    if case.name == "lr_spike":
        lr = facts["lr"]
        assert lr[onset] == pytest.approx(300 * lr[onset - 1])
        assert lr[onset + 1] == lr[onset - 1], f"{where}: the spike lasts >1 step"
        assert facts["loss"][onset + 1] > 10 * facts["loss"][onset]
    if case.name == "guard_stall":
        assert facts["zeroed_steps"] == truth.steps - onset, f"{where}: not every step"
    if case.name == "detached_head":
        assert facts["depth_head_moved"] is False
    if case.name == "point_sqrt":  # the forward stays finite at the onset: only gradients
        assert facts["loss_finite"][onset] and not facts["loss_finite"][onset + 1]
    if case.name == "ddp_nan":
        assert truths[0].onset == onset + 1, "rank 0's own loss turns NaN a step later"
        assert truths[0].facts["first_bad_grad"] == onset, "rank 0's gradients: same step"


def check_the_run_reached_the_server(api: str, case: Case, run: str,
                                     truths: list[Truth]) -> dict[str, Any]:
    (stored,) = [r for r in httpx.get(f"{api}/runs").json()["runs"] if r["name"] == run]
    status = truths[case.rank].status
    assert stored["status"] == status, (run, stored)
    assert stored["ranks"] == list(range(case.world_size)), stored
    last = max(t.steps for t in truths) - 1
    loss = httpx.get(f"{api}/runs/{stored['id']}/series", params={"name": "loss"}).json()
    for series in loss["series"]:
        assert series["steps"][-1] == last, (run, series["rank"], series["steps"][-3:])
        if case.onset is not None:
            assert case.onset in series["steps"], (run, series["rank"])
    assert sorted(s["rank"] for s in loss["series"]) == list(range(case.world_size))
    return stored  # type: ignore[no-any-return]


def check_incidents(case: Case, level: str, incidents: list[dict[str, Any]]) -> None:
    expect = EXPECT[case.name][level]
    shown = "\n".join(f"  {i.get('onset_step')} r{i.get('rank')} {i.get('kind')}: "
                      f"{i.get('headline')}" for i in incidents)
    if not expect.observable:
        assert incidents == [], (
            f"{case.name}/{level}: expected no incident ({expect.knows}), got:\n{shown}")
        return
    assert len(incidents) == case.causes, (
        f"{case.name}/{level}: expected {case.causes} incident, got {len(incidents)}:\n{shown}")
    (incident,) = incidents
    for key in ("id", "run", "kind", "severity", "state", "onset_step", "rank", "headline",
                "remedy", "evidence", "evidence_count", "ranks"):
        assert key in incident, f"incident lacks {key!r}: {incident}"
    assert incident["severity"] in ("warning", "critical")
    assert incident["state"] in ("open", "escalated", "resolved")
    assert case.onset is not None
    # An incident may open earlier, as a warning that the failure is coming (an overflow
    # risk), and escalate when it happens: then the escalation is the failure's onset.
    warned_first = incident.get("escalated_step") is not None and \
        incident["onset_step"] < case.onset
    onset = incident["escalated_step"] if warned_first else incident["onset_step"]
    assert abs(onset - case.onset) <= ONSET_SLACK, (
        f"{case.name}/{level}: incident onset {incident['onset_step']} (escalated at "
        f"{incident.get('escalated_step')}), true onset {case.onset}:\n{shown}")
    assert incident["rank"] == case.rank, incident
    if case.world_size > 1:
        assert set(incident["ranks"]) == set(range(case.world_size)), incident["ranks"]
    headline = incident["headline"]
    assert isinstance(headline, str) and re.search(r"\d", headline), headline
    missing = [f for f in expect.headline if not holds(f, headline)]
    assert not missing, (
        f"{case.name}/{level}: the headline {headline!r} does not name {missing} "
        f"(this level knows: {expect.knows})")
    assert isinstance(incident["remedy"], str) and incident["remedy"].strip()
    assert incident["evidence_count"] >= 1 and incident["evidence"], incident
    for item in incident["evidence"]:
        assert {"rank", "rule", "series", "severity", "first_step", "message"} <= set(item)
