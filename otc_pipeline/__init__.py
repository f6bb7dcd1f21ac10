"""otc-pipeline: keep the servicedesk database full, fresh and trustworthy."""

__version__ = "0.1.0"
