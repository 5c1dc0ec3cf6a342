"""What must hold across instances: feedback joins cards served elsewhere, a JWT is accepted once
across the whole deployment, analytics and metrics do not depend on which instance answers."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import threading
import uuid

import pytest

from .harness import CLI, OPS_HEADERS, client_session, hook_requests


@pytest.fixture(autouse=True)
def _all_up(cluster):
    cluster.ensure_up()


@pytest.fixture(scope="module")
def pool():
    return hook_requests(limit=6)


def _hook(session, base: str, pool, index: int = 0, headers: dict | None = None):
    service_id, template = pool[index % len(pool)]
    body = template.replace(b"HOOK_INSTANCE", str(uuid.uuid4()).encode())
    response = session.post(f"{base}/cds-services/{service_id}", data=body, timeout=(3, 30),
                            headers={"Content-Type": "application/json", **(headers or {})})
    return service_id, response


def _feedback_item(card: dict) -> dict:
    item = {"card": card["uuid"], "outcomeTimestamp": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")}
    if card.get("suggestions"):
        item.update(outcome="accepted", acceptedSuggestions=[{"id": card["suggestions"][0]["uuid"]}])
    else:
        item.update(outcome="overridden")
    return item


def test_nginx_serves_discovery_over_tls_without_server_versions(cluster):
    session = client_session(cluster.verify)
    response = session.get(cluster.url + "/cds-services", timeout=10)
    assert response.status_code == 200
    assert len(response.json()["services"]) == 3
    assert response.headers["Server"] == "nginx"  # server_tokens off: no version
    assert "Strict-Transport-Security" in response.headers
    assert response.headers["X-Request-ID"]  # nginx's id reached the service and came back
    assert session.get(cluster.url + "/metrics", timeout=10).status_code == 404  # per instance only


def test_feedback_sent_to_one_instance_for_a_card_served_by_another_joins(cluster, pool):
    session = client_session()
    a, b = cluster.instance("a"), cluster.instance("b")
    for served_by, answered_by in ((a, b), (b, a)):
        service_id, response = _hook(session, served_by.url, pool)
        assert response.status_code == 200
        card = response.json()["cards"][0]
        answer = session.post(f"{answered_by.url}/cds-services/{service_id}/feedback",
                              json={"feedback": [_feedback_item(card)]}, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["feedback"] == [{"card": card["uuid"], "knownCard": True}]


def test_a_token_replayed_on_another_instance_is_rejected(cluster, pool):
    session = client_session(cluster.verify)
    a, b = cluster.instance("a"), cluster.instance("b")
    service_id = pool[0][0]
    audience = f"{cluster.url}/cds-services/{service_id}"  # CDS_PUBLIC_BASE_URL + path, on every instance
    token = cluster.issuer.token(audience)
    auth = {"Authorization": f"Bearer {token}"}

    assert _hook(session, a.url, pool, headers=auth)[1].status_code == 200
    replay = _hook(session, b.url, pool, headers=auth)[1]
    assert replay.status_code == 401
    assert "already been used" in replay.json()["message"]
    assert _hook(session, cluster.url, pool, headers=auth)[1].status_code == 401  # and through nginx

    fresh = {"Authorization": f"Bearer {cluster.issuer.token(audience)}"}
    assert _hook(session, cluster.url, pool, headers=fresh)[1].status_code == 200


def test_the_same_token_raced_on_both_instances_is_accepted_exactly_once(cluster, pool):
    a, b = cluster.instance("a"), cluster.instance("b")
    service_id = pool[0][0]
    tokens = [cluster.issuer.token(f"{cluster.url}/cds-services/{service_id}") for _ in range(8)]
    statuses: dict[str, list[int]] = {t: [] for t in tokens}
    barrier = threading.Barrier(2 * len(tokens))
    lock = threading.Lock()

    def call(instance, token):
        session = client_session()
        barrier.wait(timeout=30)
        status = _hook(session, instance.url, pool, headers={"Authorization": f"Bearer {token}"})[1].status_code
        with lock:
            statuses[token].append(status)

    threads = [threading.Thread(target=call, args=(instance, token)) for token in tokens for instance in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(sorted(s) == [200, 401] for s in statuses.values()), statuses


def test_analytics_are_the_same_whichever_instance_answers(cluster, pool):
    session = client_session(cluster.verify)
    for index in range(6):  # through nginx: cards and feedback spread over both instances
        service_id, response = _hook(session, cluster.url, pool, index)
        cards = response.json()["cards"]
        session.post(f"{cluster.url}/cds-services/{service_id}/feedback",
                     json={"feedback": [_feedback_item(cards[0])]}, timeout=10).raise_for_status()
    today = dt.datetime.now(dt.UTC).date().isoformat()
    query = f"/console/api/analytics?since={today}"
    direct = client_session()
    reports = [direct.get(i.url + query, headers=OPS_HEADERS, timeout=30).json() for i in cluster.instances]
    reports.append(session.get(cluster.url + query, headers=OPS_HEADERS, timeout=30).json())
    assert reports[0]["databaseReady"] is True and reports[0]["totals"]["served"] >= 6, reports[0]
    assert reports[0]["totals"]["accepted"] + reports[0]["totals"]["overridden"] >= 6
    assert all(report == reports[0] for report in reports[1:])

    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    cli = subprocess.run([str(CLI), "report", "--since", today, "--json", "--database-url", cluster.database_url],
                         env=env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    from_cli = json.loads(cli.stdout)
    for key in ("totals", "topics", "weeks", "comments"):
        assert from_cli[key] == reports[0][key], key


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_of_an_instance_count_every_worker(cluster, pool):
    """prometheus-client multiprocess mode: /metrics on any worker reports the whole instance."""
    session = client_session()
    a = cluster.instance("a")
    service_id = pool[0][0]
    before = session.get(a.url + "/metrics", headers=OPS_HEADERS, timeout=10).text
    calls = 12  # a new connection per call: the two workers compete for them
    for index in range(calls):
        fresh = client_session()
        assert _hook(fresh, a.url, [pool[0]], index)[1].status_code == 200
        fresh.close()
    after = session.get(a.url + "/metrics", headers=OPS_HEADERS, timeout=10).text
    counted = _metric(after, "cds_request_duration_seconds_count", endpoint=service_id, status="200") - _metric(
        before, "cds_request_duration_seconds_count", endpoint=service_id, status="200")
    assert counted == calls
    for name in ("cds_cards_served_total", "cds_request_duration_seconds_bucket", "cds_feedback_total"):
        assert re.search(rf"^{name}\{{", after, re.M), name
    assert _metric(after, "cds_cards_served_total", service=service_id) > 0
