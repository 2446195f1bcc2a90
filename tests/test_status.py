"""`glm-monitor status`: what it says and the Nagios exit codes a monitoring system acts on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from monitor.cli import main
from monitor.config import settings_from_dict
from monitor.events import ProbeResult, UsageEvent
from monitor.money import Cost
from monitor.outcomes import Outcome
from monitor.rollup import refresh_rollups
from monitor.status import State, build_report
from monitor.usage import Usage
from monitor.writer import write_events


def probes(now, provider, model, outcomes, ttft=300.0, minutes=50):
    step = timedelta(minutes=minutes) / len(outcomes)
    out = []
    for i, outcome in enumerate(outcomes):
        ok = outcome == Outcome.OK
        out.append(
            ProbeResult(
                ts=now - timedelta(minutes=minutes) + i * step,
                provider=provider,
                model=model,
                vantage="v",
                outcome=outcome,
                http_status=200 if ok else 429 if outcome.throttled else 500,
                error_code=None if ok else "1302" if outcome.throttled else "500",
                ttft_ms=ttft if ok else None,
                total_ms=ttft * 2 if ok else 50.0,
            )
        )
    return out


def spend(now, n, amount="0.5"):
    return [
        UsageEvent(
            ts=now - timedelta(hours=i),
            source="proxy",
            provider="zai",
            model="glm-4.7",
            vantage="v",
            outcome=Outcome.OK,
            app="bot",
            usage=Usage(input_tokens=1000, output_tokens=100),
            cost=Cost(Decimal(amount), "USD"),
            price_source="test",
        )
        for i in range(n)
    ]


NOW = datetime(2026, 11, 20, 12, 40, tzinfo=UTC)


def report(engine, events, settings=None):
    write_events(engine, events)
    refresh_rollups(engine, now=NOW)
    return build_report(engine, settings or settings_from_dict({}), now=NOW)


def test_no_data_is_unknown(engine):
    r = report(engine, [])
    assert r.state == State.UNKNOWN
    assert r.summary().startswith("GLM MONITOR UNKNOWN - no data yet")


def test_healthy_targets_are_ok_with_spend_and_forecast(engine):
    r = report(engine, probes(NOW, "zai", "glm-4.7", [Outcome.OK] * 10) + spend(NOW, 10))
    assert r.state == State.OK
    assert r.summary() == "GLM MONITOR OK - all targets healthy, no quota at risk"
    (t,) = r.targets
    assert (t.provider, t.model, t.status) == ("zai", "glm-4.7", "healthy")
    assert r.spend["USD"].month_to_date == Decimal("5.0")
    assert r.spend["JPY"].month_to_date == Decimal("750")  # default 150 JPY/USD
    assert r.spend["JPY"].forecast > r.spend["JPY"].month_to_date


def test_a_throttled_target_is_a_warning(engine):
    outcomes = [Outcome.OK] * 6 + [Outcome.CONCURRENCY_LIMITED] * 4
    r = report(engine, probes(NOW, "zai", "glm-4.7-flash", outcomes) + probes(NOW, "zai", "glm-4.7", [Outcome.OK] * 5))
    assert r.state == State.WARNING
    assert "zai/glm-4.7-flash throttled" in r.summary()


def test_a_down_target_is_critical(engine):
    r = report(engine, probes(NOW, "bigmodel", "glm-5", [Outcome.SERVER_ERROR] * 8 + [Outcome.OK]))
    assert r.state == State.CRITICAL
    assert "bigmodel/glm-5 down" in r.summary()


def test_a_slow_target_is_a_warning(engine):
    history = []
    for day in range(1, 7):
        history += probes(NOW - timedelta(days=day), "zai", "glm-4.7", [Outcome.OK] * 6, ttft=300.0)
    r = report(engine, history + probes(NOW, "zai", "glm-4.7", [Outcome.OK] * 6, ttft=900.0))
    assert r.state == State.WARNING
    assert "zai/glm-4.7 slow (median TTFT" in r.summary()


def test_a_budget_forecast_over_budget_is_a_warning_and_an_exhausted_quota_critical(engine):
    settings = settings_from_dict(
        {
            "plans": [
                {"kind": "monthly_budget", "name": "small", "amount": 1000, "currency": "JPY"},
                {"kind": "monthly_budget", "name": "tiny", "amount": 100, "currency": "JPY"},
            ]
        }
    )
    r = report(engine, probes(NOW, "zai", "glm-4.7", [Outcome.OK] * 5) + spend(NOW, 6), settings)
    # 6 x USD 0.5 = JPY 450 so far: under 1000 but forecast over it; over 100 already.
    texts = {f.state: f.text for f in r.findings}
    assert "quota tiny" in texts[State.CRITICAL] and "exhausted" in texts[State.CRITICAL]
    assert "spend forecast over budget small" in texts[State.WARNING]
    assert r.state == State.CRITICAL


def test_cli_exit_codes_and_json(tmp_path, database_url, engine, capsys):
    write_events(engine, probes(datetime.now(UTC), "zai", "glm-4.7", [Outcome.SERVER_ERROR] * 6))
    refresh_rollups(engine)
    assert main(["status", "--database-url", database_url]) == 2
    assert "GLM MONITOR CRITICAL - zai/glm-4.7 down" in capsys.readouterr().out
    assert main(["status", "--json", "--database-url", database_url]) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["state"] == "CRITICAL" and data["exit_code"] == 2
    assert data["targets"][0]["status"] == "down"


def test_cli_unreadable_config_or_database_is_unknown(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[prober]\ninterval = 'x'\n")
    assert main(["--config", str(bad), "status"]) == 3
    assert "GLM MONITOR UNKNOWN - config error" in capsys.readouterr().out
    assert main(["status", "--database-url", f"sqlite:///{tmp_path / 'blank.db'}"]) == 3
    assert "run `glm-monitor db upgrade`" in capsys.readouterr().out


def test_money_in_json_is_always_a_string_with_six_decimals(engine):
    import re

    from monitor.status import to_json

    settings = settings_from_dict(
        {"plans": [{"kind": "monthly_budget", "name": "small", "amount": 1000, "currency": "JPY"}]}
    )
    # 6 x USD 0.5 at 150 JPY/USD, and a forecast that divides by seven: digits without end unless fixed
    data = to_json(report(engine, probes(NOW, "zai", "glm-4.7", [Outcome.OK] * 5) + spend(NOW, 6), settings))
    amounts = [v for c in data["spend"].values() for k, v in c.items() if k in ("month_to_date", "forecast")]
    budget = next(q for q in data["quotas"] if q["plan"] == "small")
    amounts += [budget["used"], budget["limit"]]
    assert len(amounts) == 6
    assert all(isinstance(a, str) and re.fullmatch(r"\d+\.\d{6}", a) for a in amounts), amounts
    assert data["spend"]["JPY"]["month_to_date"] == "450.000000"
