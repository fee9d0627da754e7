"""The field delimiter of a CSV file, so a file written with ';' (Excel in many locales), tabs or '|'
reads the same as one written with commas: in training and in ``trainfer predict`` alike."""

from __future__ import annotations

import csv
import os

DELIMITERS = ",;\t|"


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
