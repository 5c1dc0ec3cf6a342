"""The command line runs requests through the same code path as HTTP."""

from __future__ import annotations

import json

from hookreq import empty_prefetch, hook_request

from cds_service import cli
from cds_service.registry import ORDER_KEYS


def test_services_prints_discovery(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))
    assert cli.main(["services"]) == 0
    ids = {s["id"] for s in json.loads(capsys.readouterr().out)["services"]}
    assert ids == {"lbp-patient-view", "lbp-imaging-order-select", "lbp-imaging-order-sign"}


def test_evaluate_prints_the_response(capsys, monkeypatch, tmp_path, app):
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))
    templates = app.extensions["cds"].services["lbp-imaging-order-sign"].prefetch
    assert set(templates) == set(ORDER_KEYS)
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(hook_request("order-sign", prefetch=empty_prefetch(templates))))
    assert cli.main(["evaluate", str(request_file)]) == 0
    assert "cards" in json.loads(capsys.readouterr().out)


def test_evaluate_reports_412_with_exit_code(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(hook_request("patient-view")))
    assert cli.main(["evaluate", str(request_file)]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "prefetch-unavailable"


def test_bad_configuration_exits_2(capsys, monkeypatch):
    monkeypatch.setenv("CDS_PORT", "eighty")
    assert cli.main(["serve"]) == 2
    assert "CDS_PORT" in capsys.readouterr().err
