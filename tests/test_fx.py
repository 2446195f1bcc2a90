"""Dated exchange rates: defaults, manual entries, the ECB feed from a local server, conversions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from monitor import fx
from monitor.cli import main
from monitor.errors import FxError
from monitor.money import Cost

ECB_XML = (Path(__file__).parent / "fixtures" / "ecb_eurofxref_daily.xml").read_bytes()


@pytest.fixture
def feed_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving the saved ECB daily feed at /eurofxref-daily.xml."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/eurofxref-daily.xml":
                body, status, ctype = ECB_XML, 200, "text/xml"
            elif self.path == "/broken.xml":
                body, status, ctype = b"<html>maintenance</html", 200, "text/html"
            else:
                body, status, ctype = b"not found", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_defaults_apply_before_any_rate_is_stored(engine):
    book = fx.RateBook.load(engine)
    conv = book.convert(Cost(Decimal("0.722"), "USD"), "JPY", date(2026, 11, 1))
    assert conv.result == Cost(Decimal("108.300"), "JPY")
    assert conv.rate == Decimal(150)
    assert conv.rate_day is None
    assert "default" in conv.describe()
    cny = book.convert(Cost(Decimal("10"), "CNY"), "JPY", date(2026, 11, 1))
    assert cny.result.amount == Decimal("210")


def test_the_worked_price_in_yen(engine):
    """glm-4.7 on zai (1M input, 200k cached, 100k output) costs USD 0.722 = JPY 108.30 at 150 JPY/USD."""
    conv = fx.convert(Cost(Decimal("0.722"), "USD"), "JPY", date(2026, 11, 22), book=fx.RateBook.load(engine))
    assert conv.result.amount.quantize(Decimal("0.01")) == Decimal("108.30")


def test_a_day_uses_its_rate_or_the_latest_before_it(engine):
    fx.store_rates(engine, date(2026, 11, 1), {"USD": Decimal("151.2"), "CNY": Decimal("21.3")}, source="manual")
    fx.store_rates(engine, date(2026, 11, 10), {"USD": Decimal("155")}, source="manual")
    book = fx.RateBook.load(engine)
    usd = Cost(Decimal("2"), "USD")
    assert book.convert(usd, "JPY", date(2026, 10, 31)).rate == Decimal(150)  # before any stored rate
    on_first = book.convert(usd, "JPY", date(2026, 11, 1))
    assert on_first.result.amount == Decimal("302.4")
    assert on_first.rate_day == date(2026, 11, 1)
    later = book.convert(usd, "JPY", date(2026, 11, 9))
    assert later.rate == Decimal("151.2") and later.rate_day == date(2026, 11, 1)
    assert book.convert(usd, "JPY", date(2026, 11, 10)).rate == Decimal("155")
    # CNY had no rate on the 10th: the 1st's still holds.
    assert book.rate("CNY", date(2026, 11, 15)).rate == Decimal("21.3")
    assert "USDJPY 155 (2026-11-10, manual)" in book.convert(usd, "JPY", date(2026, 11, 30)).describe()


def test_cross_rates_go_through_yen_and_name_both_rates(engine):
    fx.store_rates(engine, date(2026, 11, 1), {"USD": Decimal("150"), "CNY": Decimal("20")}, source="manual")
    conv = fx.RateBook.load(engine).convert(Cost(Decimal("10"), "USD"), "CNY", date(2026, 11, 2))
    assert conv.result == Cost(Decimal("75"), "CNY")
    assert "USDJPY" in conv.describe() and "CNYJPY" in conv.describe()
    back = fx.RateBook.load(engine).convert(Cost(Decimal("1500"), "JPY"), "USD", date(2026, 11, 2))
    assert back.result.amount == Decimal("10")


def test_storing_a_day_again_replaces_its_rate(engine):
    fx.store_rates(engine, date(2026, 11, 1), {"USD": Decimal("151")}, source="manual")
    fx.store_rates(engine, date(2026, 11, 1), {"USD": Decimal("152")}, source="ecb")
    rate = fx.RateBook.load(engine).rate("USD", date(2026, 11, 1))
    assert (rate.rate, rate.source) == (Decimal("152"), "ecb")


def test_ecb_feed_is_fetched_from_a_local_server_and_stored(engine, feed_server):
    day, rates = fx.fetch_daily(engine, f"{feed_server}/eurofxref-daily.xml")
    assert day == date(2026, 11, 20)
    # JPY per USD = (JPY per EUR) / (USD per EUR)
    assert rates["USD"] == Decimal("158.86") / Decimal("1.0512")
    assert rates["CNY"] == Decimal("158.86") / Decimal("7.6143")
    stored = fx.RateBook.load(engine).rate("USD", date(2026, 11, 21))
    assert stored.day == date(2026, 11, 20) and stored.source == "ecb"
    assert stored.rate == (Decimal("158.86") / Decimal("1.0512")).quantize(Decimal("0.00000001"))


def test_ecb_feed_errors_are_clear(engine, feed_server):
    with pytest.raises(FxError, match="not valid XML"):
        fx.fetch_daily(engine, f"{feed_server}/broken.xml")
    with pytest.raises(FxError, match="could not fetch exchange rates"):
        fx.fetch_daily(engine, f"{feed_server}/missing.xml")
    with pytest.raises(FxError, match="lacks currencies CNY"):
        fx.parse_ecb_daily(ECB_XML.replace(b"currency='CNY'", b"currency='XXX'"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("USDJPY", "expected PAIR=RATE"),
        ("EURJPY=160", "expected PAIR=RATE"),
        ("USDJPY=abc", "not a number"),
        ("USDJPY=-1", "positive"),
    ],
)
def test_bad_pairs_say_what_is_expected(text, message):
    with pytest.raises(FxError, match=message):
        fx.parse_pair(text)


def test_cli_fx_set_show_and_fetch(database_url, feed_server, capsys):
    assert main(["fx", "--database-url", database_url, "set", "2026-11-01", "USDJPY=151.2", "CNYJPY=21.3"]) == 0
    assert "USDJPY=151.2" in capsys.readouterr().out
    assert main(["fx", "--database-url", database_url, "show", "--on", "2026-11-05"]) == 0
    out = capsys.readouterr().out
    assert "USDJPY 151.2 (2026-11-01, manual)" in out and "CNYJPY 21.3 (2026-11-01, manual)" in out
    assert main(["fx", "--database-url", database_url, "fetch", "--url", f"{feed_server}/eurofxref-daily.xml"]) == 0
    assert "2026-11-20" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["fx", "--database-url", database_url, "set", "2026-11-01", "USDJPY=x"])
    assert exit_info.value.code == 2
    assert "'x' is not a number" in capsys.readouterr().err
