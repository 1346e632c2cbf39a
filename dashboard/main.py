"""Entry point Bokeh runs for each new session of the directory app.

Bokeh executes this file as a module of a generated package (``bokeh_app_<id>``),
not as ``dashboard.main``, so the app's code is imported by its installed name.
"""

from bokeh.io import curdoc

from dashboard.document import build_document

build_document(curdoc())
