"""Low back pain CDS Hooks service."""
