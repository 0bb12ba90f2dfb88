"""relay: an anonymizing SMTP relay daemon for marketplaces."""

__version__ = "0.1.0"
