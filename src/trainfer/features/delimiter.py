"""How a CSV file is written, so a file saved with ';' (Excel in many locales), tabs or '|', and with
decimal commas, reads the same as one written with commas and points: in training and in
``trainfer predict`` alike."""

from __future__ import annotations

import csv
import itertools
import os
import re
from collections.abc import Collection
from typing import Any

_QUOTED = re.compile(r'"[^"]*"')
_POINT = re.compile(r"[-+]?\d*\.\d+([eE][-+]?\d+)?")
_COMMA = re.compile(r"[-+]?\d*,\d+([eE][-+]?\d+)?")


def sniff_delimiter(path: str | os.PathLike[str], lines: int = 50) -> str:
    """The delimiter of ``path``: one of , ; tab |; a comma when the header splits on none of them.

    Each candidate splits the header and the first ``lines`` data rows (quotes respected). The one that
    gives the same number of fields on most rows wins, then the one that gives the header most fields:
    a comma inside a column name ("price (EUR, net)") or decimal commas in the data ("2,5") do not
    outvote the ';' that separates every row. On a tie, ; tab | before the comma, since a comma that
    splits every row alike in a file of another delimiter is usually a decimal comma.
    """
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        head = [line.rstrip("\r\n") for line in itertools.islice(iter(lambda: fh.readline(1 << 20), ""), lines + 1)]
    if not head:
        return ","
    unquoted = _QUOTED.sub("", head[0])  # a delimiter only ever inside quotes is text, not the delimiter
    best, best_score = ",", (0, 1, 0)
    for rank, d in enumerate(";\t|,"):
        counts = [len(row) for row in csv.reader(head, delimiter=d)]
        if counts[0] < 2 or d not in unquoted:
            continue
        score = (sum(c == counts[0] for c in counts[1:]), counts[0], -rank)
        if score > best_score:
            best, best_score = d, score
    return best


def csv_format(path: str | os.PathLike[str], lines: int = 200) -> tuple[str, str]:
    """(sep, decimal) for pandas.read_csv: the delimiter, and a decimal comma when the file is not
    comma-separated and its first ``lines`` rows write numbers with decimal commas (1,5), never with points."""
    sep = sniff_delimiter(path)
    if sep == ",":
        return sep, "."
    comma = point = False
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        try:
            for row in itertools.islice(csv.reader(fh, delimiter=sep), 1, lines + 1):
                for cell in row:
                    cell = cell.strip()
                    comma = comma or bool(_COMMA.fullmatch(cell))
                    point = point or bool(_POINT.fullmatch(cell))
        except csv.Error:  # pandas will say what is wrong with the file
            return sep, "."
    return sep, "," if comma and not point else "."


def numbers_from_text(frame: Any, decimal: str = ".", only: Collection[str] | None = None) -> Any:
    """``frame`` with each text column that holds only numbers and missing values made numeric.

    pandas keeps a whole column as text when one cell is blank (" "), "-" aside, or when a decimal-comma
    file has such a cell (then every "1,71" stays text too): training would make that column a category
    and predict would refuse "1,71". A blank cell is missing wherever it comes from (``is_missing``), so
    the column is numbers with one missing value, the same in training and in predict. ``only``: the
    columns to look at (predict: the bundle's numeric ones, so no chunk pays for text it will not read).
    """
    import pandas as pd

    from trainfer.features.tabular import is_missing

    for name in frame.columns:
        col = frame[name]
        if (only is not None and str(name) not in only) or not (
                col.dtype == object or pd.api.types.is_string_dtype(col.dtype)):
            continue  # (pandas 3 reads text as its "str" dtype, older pandas as object)
        missing = col.map(is_missing).astype(bool)
        text = col[~missing].astype(str).str.strip()
        if decimal == ",":
            text = text.str.replace(",", ".", regex=False)
        if text.empty:
            continue
        numbers = pd.to_numeric(text, errors="coerce")
        if numbers.notna().all():
            out = pd.Series(float("nan"), index=col.index, dtype="float64")
            out[~missing] = numbers.astype("float64")
            frame[name] = out
    return frame
