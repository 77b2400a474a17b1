"""The driver of epiq, the only package that imports the components: config root and loader, local services,
wiring (``wiring.py``: components become Ray actors), the job, scheduler, metrics, report and the ``epiq`` CLI."""
