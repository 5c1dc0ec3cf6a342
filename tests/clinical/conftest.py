"""Shared fixtures for the clinical tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cds_service.clinical import evaluate
from cds_service.clinical.facts import PatientFacts, build_facts
from cds_service.clinical.knowledge import Knowledge
from cds_service.clinical.model import Decision, PatientRecord

from .builders import NOW, inp


@pytest.fixture(scope="session")
def knowledge() -> Knowledge:
    return Knowledge.load()


@pytest.fixture
def facts_of(knowledge: Knowledge) -> Callable[..., PatientFacts]:
    def build(rec: PatientRecord, now=NOW) -> PatientFacts:
        return build_facts(rec, knowledge, now)

    return build


@pytest.fixture
def run(knowledge: Knowledge) -> Callable[..., list[Decision]]:
    def call(hook: str, rec: PatientRecord, now=NOW) -> list[Decision]:
        return evaluate(inp(hook, rec, now), knowledge)

    return call


def topics(decisions: list[Decision]) -> list[str]:
    return [d.topic for d in decisions]
