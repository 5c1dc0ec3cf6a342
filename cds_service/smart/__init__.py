"""The back pain assessment app: a SMART App Launch 2.0 app served by the service under /smart/
(clinical-rules.md section 9, docs/smart-app.md). The blueprint lives in blueprint.py; links.py is
what the card renderer imports, so this package's __init__ stays free of Flask wiring."""
