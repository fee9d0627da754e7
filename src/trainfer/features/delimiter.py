"""How a CSV file is written, so a file saved with ';' (Excel in many locales), tabs or '|', and with
decimal commas, reads the same as one written with commas and points: in training and in
``trainfer predict`` alike."""

from __future__ import annotations

import csv
import itertools
import os
import re

DELIMITERS = ",;\t|"
_POINT = re.compile(r"[-+]?\d*\.\d+([eE][-+]?\d+)?")
_COMMA = re.compile(r"[-+]?\d*,\d+([eE][-+]?\d+)?")


def sniff_delimiter(path: str | os.PathLike[str]) -> str:
    """The delimiter of ``path``'s header line: one of , ; tab |; a comma when the header has none of them.

    Only the header is read: its column names hold no numbers with decimal commas to mislead the guess.
    """
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        header = fh.readline(1 << 20).rstrip("\r\n")
    if not any(d in header for d in DELIMITERS):
        return ","  # one column: any delimiter reads it the same
    try:
        return csv.Sniffer().sniff(header, delimiters=DELIMITERS).delimiter
    except csv.Error:  # ambiguous to the sniffer: the most frequent candidate
        counts = {d: header.count(d) for d in DELIMITERS}
        return max(counts, key=counts.__getitem__)


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
