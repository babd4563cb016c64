"""The site description's [grid] section: the under-frequency relay and settlement."""

from __future__ import annotations

import pytest

from thermogate.plc.errors import ConfigError
from thermogate.plc.site import demo_site, demo_site_text, parse_site_text


def without_grid() -> str:
    """The demo site with its own [grid] section taken out (it is the file's last)."""
    text = demo_site_text()
    return text[: text.index("\n[grid]\n")] + "\n"


def with_grid(body: str, *, hz: float | None = None) -> str:
    text = without_grid()
    if hz is not None:
        text = text.replace("frequency_hz = 50", f"frequency_hz = {hz:g}", 1)
    return text + "\n[grid]\n" + body


def test_relay_defaults_sit_relative_to_the_sites_nominal_frequency() -> None:
    g50 = parse_site_text(without_grid()).grid
    assert g50.relay is not None and g50.relay.nominal_hz == 50.0
    assert g50.relay.trip_hz == pytest.approx(49.7)
    assert not g50.under_frequency_armed  # arming is a choice the file makes
    demo = demo_site().grid
    assert demo.under_frequency_armed and demo.relay == g50.relay
    g60 = parse_site_text(with_grid("", hz=60)).grid
    assert g60.relay is not None and g60.relay.trip_hz == pytest.approx(59.7)
    assert g60.relay.recover_hz == pytest.approx(59.95)


def test_the_relay_sheds_every_mining_tank_unless_told_which() -> None:
    site = parse_site_text(without_grid())
    mining = tuple(t.name for t in site.tanks if t.workload_class == "mining")
    assert site.grid.under_frequency_shed == mining
    assert demo_site().grid.under_frequency_shed == mining[:8]  # the demo's Load Resource
    g = parse_site_text(
        with_grid(f'under_frequency_armed = true\nunder_frequency_shed = ["{mining[0]}"]')
    ).grid
    assert g.under_frequency_armed and g.under_frequency_shed == (mining[0],)


def test_a_tank_carrying_inference_cannot_be_designated() -> None:
    gpu = next(t for t in demo_site().tanks if t.workload_class != "mining")
    with pytest.raises(ConfigError, match=rf"under_frequency_shed.*{gpu.name} runs"):
        parse_site_text(with_grid(f'under_frequency_shed = ["{gpu.name}"]'))
    with pytest.raises(ConfigError, match="tank99 is not a tank"):
        parse_site_text(with_grid('under_frequency_shed = ["tank99"]'))


def test_an_empty_shed_list_is_refused_only_for_an_armed_relay() -> None:
    with pytest.raises(ConfigError, match="under_frequency_shed: armed with nothing to shed"):
        parse_site_text(with_grid("under_frequency_armed = true\nunder_frequency_shed = []"))
    # unarmed, nothing to shed is a choice (and a hall without mining has no other)
    site = parse_site_text(with_grid("under_frequency_armed = false\nunder_frequency_shed = []"))
    assert site.grid.under_frequency_shed == ()


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("under_frequency_trip_hz = 50.5", "under_frequency_trip_hz"),
        ("under_frequency_recover_hz = 49.6", "under_frequency_recover_hz"),
        ("under_frequency_delay_s = -1", "under_frequency_delay_s"),
        ("settlement_interval_s = 700", "settlement_interval_s"),
        ('baseline_like = "week"', "baseline_like"),
        ("under_frequncy_armed = true", "under_frequncy_armed"),
    ],
)
def test_a_bad_grid_setting_names_its_key(body: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_site_text(with_grid(body))
