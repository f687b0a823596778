"""The web app around hmt_core: extraction, sessions, the disk cache, the engine and the Gradio page.

The one place that switches telemetry off, before anything imports gradio or the hub client: every entry point
(app.py, the tests, scripts) imports this package first.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
