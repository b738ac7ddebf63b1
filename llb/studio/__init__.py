"""The app's logic without its UI: settings and limits, clip preparation, per-session projects (objects,
masks, clicks), running the engine with streamed progress, results, comparison and gate maps.

`app.py` only lays out Gradio components and maps their values to these calls.
"""
