"""Reporting: results tables (``results``), figures (``plots``, ``compare``, ``scaling``), the one figure writer
(``figures``), PNG export (``png_export``) and the HTML report (``report``)."""
