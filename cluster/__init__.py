"""The driver side of epiq: config, local services, scheduler, metrics, report and the ``epiq`` CLI."""
