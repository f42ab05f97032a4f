"""Threshold parsing, config validation and the number formats of alert messages."""

from __future__ import annotations

import math

import pytest

from trainvitals.server.alerts import AlertConfig, Threshold, text


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("tensor/depth_raw/max>15", Threshold("tensor/depth_raw/max", ">", 15.0, "warning")),
        ("loss>=1e3:critical", Threshold("loss", ">=", 1000.0, "critical")),
        ("  grad_norm <  0.5 : warning ", Threshold("grad_norm", "<", 0.5, "warning")),
        ("tensor/depth/headroom<=-2", Threshold("tensor/depth/headroom", "<=", -2.0, "warning")),
        ("scalar/a<b>3", Threshold("scalar/a<b", ">", 3.0, "warning")),  # the last operator splits
        ("loss/normal l1>inf", Threshold("loss/normal l1", ">", math.inf, "warning")),
    ],
)
def test_threshold_parse(source: str, expected: Threshold) -> None:
    assert Threshold.parse(source) == expected


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("loss", "expected <series><op><value>"),
        (">15", "expected <series><op><value>"),
        ("loss>", "is no number"),
        ("loss>ten", "'ten' is no number"),
        ("loss==3", "expected <series><op><value>"),
        ("loss>3:fatal", "severity must be warning or critical"),
        ("loss>nan", "must not be NaN"),
    ],
)
def test_threshold_parse_rejects_bad_text(source: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Threshold.parse(source)


def test_threshold_holds_and_round_trips() -> None:
    limit = Threshold.parse("loss>=2:critical")
    assert [limit.holds(x) for x in (1.9, 2.0, 3.0, math.nan)] == [False, True, True, False]
    assert str(limit) == "loss>=2:critical"
    assert str(Threshold("x", "<", 0.1 + 0.2)) == "x<0.30000000000000004"
    assert Threshold.parse(str(limit)) == limit


def test_threshold_constructor_validates() -> None:
    with pytest.raises(ValueError, match="operator"):
        Threshold("loss", "!=", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        Threshold("", ">", 1.0)


def test_config_validates_spike_history_and_freezes_thresholds() -> None:
    with pytest.raises(ValueError, match="spike_min_history"):
        AlertConfig(spike_window=10, spike_min_history=11)
    with pytest.raises(ValueError, match="spike_threshold"):
        AlertConfig(spike_threshold=0.0)
    config = AlertConfig(thresholds=[Threshold.parse("loss>1")])  # type: ignore[arg-type]
    assert config.thresholds == (Threshold("loss", ">", 1.0),)


def test_number_formats() -> None:
    assert [text.value(x) for x in (3.2e4, 10.0, 0.000123456, math.nan, math.inf, -math.inf)] == [
        "3.2e+04", "10", "0.000123", "NaN", "+Inf", "-Inf"]
    assert (text.step(1204), text.step(12), text.count(65536)) == ("1,204", "12", "65,536")
    assert [text.percent(r) for r in (0.0, 0.004, 0.37, 1.0)] == ["0%", "<1%", "37%", "100%"]
