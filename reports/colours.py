"""One colour per method: the same in every figure of a report, and across reports.

The methods the harness knows (each memory kind, without and with the XML loss) have
fixed colours, matplotlib's tab10 in the papers' order, so ``axbn`` is the same purple in
every report. Any other compared value (a batch size, a method a foreign table names)
takes a colour from Dark2 by its place in the sorted list of such values the report
holds: distinct within the report, and the same again for the same values.
"""

from __future__ import annotations

from typing import Iterable

import matplotlib
from matplotlib.colors import to_hex

from harness.results.contract import MEMORY_KINDS, method_name
from harness.reports.tables import value_sort_key

KNOWN_METHODS: tuple[str, ...] = tuple(method_name(kind, xml) for xml in (False, True) for kind in MEMORY_KINDS)
# zip: a memory kind beyond tab10's ten colours falls to the other values' palette
METHOD_COLOURS: dict[str, str] = dict(zip(KNOWN_METHODS, map(to_hex, matplotlib.colormaps["tab10"].colors)))
OTHER_COLOURS: tuple[str, ...] = tuple(map(to_hex, matplotlib.colormaps["Dark2"].colors))


def method_colours(keys: Iterable[str]) -> dict[str, str]:
    """Method key (a compared value) -> hex colour, for every key a report draws."""
    keys = set(keys)
    others = sorted(keys - METHOD_COLOURS.keys(), key=value_sort_key)
    colours = {k: METHOD_COLOURS[k] for k in keys & METHOD_COLOURS.keys()}
    colours.update({k: OTHER_COLOURS[i % len(OTHER_COLOURS)] for i, k in enumerate(others)})
    return colours
