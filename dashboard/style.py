"""CSS for the HTML the dashboard's Divs hold.

Bokeh renders each widget in its own shadow root, so the page template's styles
do not reach into a Div: the rules are attached to each Div that needs them.
"""

FIGURES_CSS = """
table.figures { border-collapse: collapse; margin: 4px 0 8px; font-size: 12px; }
table.figures th, table.figures td { padding: 2px 8px; text-align: right; }
table.figures th:first-child, table.figures td:first-child { text-align: left; }
table.figures tr:nth-child(even) { background: #f4f4f8; }
ul.failures { margin: 4px 0; padding-left: 18px; font-size: 12px; max-width: 400px; }
.outage { color: #b22222; font-weight: bold; }
.ok { color: #2a7a2a; }
"""
