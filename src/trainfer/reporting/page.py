"""What every report page shares: its style sheet (inline, so the page loads nothing) and how a chart sits in it."""

from __future__ import annotations

import html

STYLE = """<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #212529; }
h1 { margin-bottom: .2rem; } .sub { color: #495057; margin-top: 0; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; }
th, td { border: 1px solid #dee2e6; padding: .45rem .6rem; vertical-align: top; text-align: left; }
thead th { background: #f1f3f5; } #ledger th { width: 16%; }
#ledger thead th:nth-child(2) { color: #d9480f; } #ledger thead th:nth-child(3) { color: #1971c2; }
.num { font-weight: 600; } figure.chart { margin: 1.5rem 0; } figure.chart svg { max-width: 100%; height: auto; }
figcaption { font-weight: 600; margin-bottom: .3rem; } code { font-size: 12px; word-break: break-all; }
pre { background: #f8f9fa; padding: .6rem; font-size: 12px; overflow-x: auto; }
.note { background: #fff9db; border-left: 4px solid #fab005; padding: .5rem .8rem; }
td.r { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
div.wide { overflow-x: auto; } div.wide table { width: auto; min-width: 100%; }
</style>"""


def figure(caption: str, svg: str, ident: str | None = None) -> str:
    """A chart with its caption; ``svg`` is matplotlib's inline SVG, put in as it is."""
    at = f' id="{html.escape(ident)}"' if ident else ""
    return f'<figure class="chart"{at}><figcaption>{html.escape(caption)}</figcaption>{svg}</figure>'
