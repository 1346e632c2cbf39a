"""Bokeh dashboard: live readings and the latest forecast per device, from Redis.

A directory-format Bokeh server app (``main.py``, ``theme.yaml``, ``templates/``),
served by ``pipeline dashboard`` or ``bokeh serve dashboard/``. The document is
built by ``dashboard.document.build_document`` so that tests can build it without
a server or a browser.
"""
