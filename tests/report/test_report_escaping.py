"""The report escapes every name it shows: a layer or multiplier name is text, never markup (plotly renders
its labels as HTML-like markup; its tag whitelist must not be what keeps a name inert)."""

from __future__ import annotations

from dse.report.figures import _hover, esc
from dse.report.points import PagePoint
from dse.search.records import Origin, SearchPoint

EVIL_LAYER = '<b>conv</b><img src=x onerror="alert(1)">'
EVIL_MULT = "<a href='javascript:alert(2)'>m</a>"


def _point(assignment: dict[str, str], label: str = "search") -> PagePoint:
    sp = SearchPoint(
        trial=3,
        energy_rel=0.5,
        accuracy=0.9,
        test_accuracy=0.89,
        assignment=assignment,
        predicted_accuracy=None,
        origin=Origin("<i>origin</i>"),
    )
    return PagePoint(sp, "search", False, label)


def test_hover_escapes_a_name_that_starts_with_b():
    text = _hover(_point({EVIL_LAYER: EVIL_MULT, "fc": "exact_u8"}, label="<i>group</i>"), 0.95)
    assert "<img" not in text and "<a " not in text and "<i>" not in text
    assert esc(EVIL_LAYER) in text and esc(EVIL_MULT) in text and "&lt;i&gt;" in text
    # only dse's own markup remains: the bold head and the line breaks
    assert text.startswith("<b>trial 3</b>") and text.count("<b>") == 1 and text.count("<br>") == 4
    assert "fc: exact_u8" in text


def test_esc_quotes_and_angle_brackets():
    assert esc("a<b>&\"'") == "a&lt;b&gt;&amp;&quot;&#x27;"
