"""Tooling for informaticists and integration engineers, apart from the service itself.

Fixture loading, the sandbox FHIR server launchers, the validation report and the console. The
service (``cds_service.app`` and the hook engine) never imports from here, except the app factory,
which registers the console blueprint when the console is enabled. Everything here reaches hook
answers through ``cds_service.engine.HookEngine``, never through a Flask test client.
"""
