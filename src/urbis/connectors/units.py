"""Units of measure: the symbols sources write, normalised to UN/CEFACT Recommendation 20 codes.

NGSI-LD carries units as `unitCode` (UN/CEFACT common codes), so a value in "°C" from one vendor
and in "CEL" from another end up comparable.
"""

from __future__ import annotations

import re

# Symbols and spellings seen in city data -> UN/CEFACT common code. Keys are matched after
# `_canonical` (case-folded, spaces removed), so list each spelling once in lower case.
_SYMBOLS: dict[str, str] = {
    # temperature
    "°c": "CEL",
    "ºc": "CEL",
    "c": "CEL",
    "celsius": "CEL",
    "degc": "CEL",
    "°f": "FAH",
    "fahrenheit": "FAH",
    "k": "KEL",
    "kelvin": "KEL",
    # ratios
    "%": "P1",
    "percent": "P1",
    "ppm": "59",
    "ppb": "61",
    # length, area, volume
    "mm": "MMT",
    "cm": "CMT",
    "m": "MTR",
    "metre": "MTR",
    "meter": "MTR",
    "km": "KMT",
    "m2": "MTK",
    "m²": "MTK",
    "m3": "MTQ",
    "m³": "MTQ",
    "l": "LTR",
    "litre": "LTR",
    "liter": "LTR",
    # speed and flow
    "m/s": "MTS",
    "km/h": "KMH",
    "kmh": "KMH",
    "m3/s": "MQS",
    "m³/s": "MQS",
    "m3/h": "MQH",
    "m³/h": "MQH",
    "l/s": "G51",
    # mass and concentration
    "g": "GRM",
    "kg": "KGM",
    "t": "TNE",
    "ug/m3": "GQ",
    "µg/m3": "GQ",
    "μg/m3": "GQ",
    "µg/m³": "GQ",
    "μg/m³": "GQ",
    "ug/m³": "GQ",
    "mg/m3": "GP",
    "mg/m³": "GP",
    # light, sound, energy, pressure
    "lux": "LUX",
    "lx": "LUX",
    "db": "2N",
    "dba": "2N",
    "db(a)": "2N",
    "w": "WTT",
    "kw": "KWT",
    "kwh": "KWH",
    "wh": "WHR",
    "v": "VLT",
    "a": "AMP",
    "pa": "PAL",
    "hpa": "A97",
    "mbar": "MBR",
    "bar": "BAR",
    "w/m2": "D54",
    "w/m²": "D54",
    # time and counts
    "s": "SEC",
    "sec": "SEC",
    "min": "MIN",
    "h": "HUR",
    "hour": "HUR",
    "d": "DAY",
    "day": "DAY",
    "vehicles/h": "E50",
    "deg": "DD",
    "°": "DD",
}
_CODE = re.compile(r"^[A-Z0-9]{2,3}$")
KNOWN_CODES = frozenset(_SYMBOLS.values())


def _canonical(symbol: str) -> str:
    return symbol.strip().casefold().replace(" ", "")


def unit_code(unit: str) -> str:
    """The UN/CEFACT code for a unit symbol or code; ValueError names the fix when unknown.

    A string that is no known symbol but looks like a code (2 or 3 upper-case letters or digits)
    is kept as is, so any of the ~2,000 codes of Recommendation 20 can be written directly.
    """
    text = unit.strip()
    if text in KNOWN_CODES:
        return text
    code = _SYMBOLS.get(_canonical(text))
    if code is None and _CODE.match(text):
        return text
    if code is None:
        examples = ", ".join(f"{s!r} -> {c}" for s, c in list(_SYMBOLS.items())[:6])
        raise ValueError(
            f"unknown unit {unit!r}: write a UN/CEFACT code (e.g. CEL, MTR, P1) or a common "
            f"symbol ({examples}, ...)"
        )
    return code
