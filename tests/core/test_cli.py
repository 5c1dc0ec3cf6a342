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


def test_evaluate_gives_the_fixture_cards_on_stdout_only_and_creates_no_database(capsys, monkeypatch, tmp_path):
    """An evaluation is not analytics: no database anywhere, the answer alone on stdout."""
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDS_DATA_DIR", raising=False)
    monkeypatch.setenv("CDS_LOG_LEVEL", "DEBUG")  # even then: stdout stays the answer
    example = Path(__file__).resolve().parents[2] / "fixtures" / "requests"
    request_file = next(p for p in sorted(example.glob("patient-view-*-prefetch.json")) if "no-prefetch" not in p.name)
    assert cli.main(["evaluate", str(request_file)]) == 0
    captured = capsys.readouterr()
    answer = json.loads(captured.out)  # the whole of stdout is one JSON document
    assert answer["cards"], "the example request shows a card"
    assert "INFO" not in captured.err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_names_an_unknown_hook(capsys, tmp_path):
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps({**hook_request("patient-view"), "hook": "encounter-start"}))
    assert cli.main(["evaluate", str(request_file)]) == 1
    assert "encounter-start" in json.loads(capsys.readouterr().out)["message"]


def test_validate_without_fixtures_says_what_it_lacks(capsys, tmp_path):
    assert cli.main(["validate", str(tmp_path / "nowhere")]) == 2
    assert "no fixture manifest" in capsys.readouterr().err


def test_help_lists_every_subcommand(capsys):
    import pytest

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in ("serve", "migrate", "evaluate", "services", "validate", "sandbox", "fixtures", "report"):
        assert name in out
