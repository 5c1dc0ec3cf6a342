"""The red-flag catalogue (spec section 1) as data: id, category and where each flag is read from.

Labels live in cards/labels/red-flags.yaml (keyed by id); thresholds in data/thresholds.yaml. A flag's
sources are combined: any source that shows it wins; otherwise an explicit "no"; otherwise not
documented. ``special`` names a computed source in builder code (temperatures, medication courses, age)
that cannot be described as a plain value-set lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CodedSource:
    """Conditions/Observations coded in a value set."""

    valueset: str
    active_only: bool = True
    window: str | None = None  # threshold name of a "within the last N days" window
    require_date: bool = False  # undated data does not count inside a window


@dataclass(frozen=True)
class QuestionSource:
    """A boolean item of the back pain assessment Questionnaire (spec section 5)."""

    link_id: str
    window: str | None = None  # threshold name: answers older than N days do not count


@dataclass(frozen=True)
class RedFlagSpec:
    id: str
    category: str  # cauda-equina, neurological-deficit, malignancy, infection, fracture
    coded: CodedSource | None = None
    question: QuestionSource | None = None
    special: str | None = None  # fever / immunosuppression / long-term-steroids / age
    label_params: dict[str, str] = field(default_factory=dict)  # label placeholder -> threshold name


CATEGORY_ORDER = ("cauda-equina", "neurological-deficit", "malignancy", "infection", "fracture")

RED_FLAGS: tuple[RedFlagSpec, ...] = (
    RedFlagSpec("cauda-equina-syndrome", "cauda-equina", CodedSource("cauda-equina-syndrome")),
    RedFlagSpec("urinary-retention", "cauda-equina", CodedSource("urinary-retention")),
    RedFlagSpec(
        "incontinence",
        "cauda-equina",
        CodedSource("incontinence", window="new_incontinence_window_days", require_date=True),
    ),
    RedFlagSpec(
        "saddle-anaesthesia", "cauda-equina", CodedSource("saddle-anaesthesia"), QuestionSource("saddle-anaesthesia")
    ),
    RedFlagSpec(
        "bladder-or-bowel-dysfunction", "cauda-equina", question=QuestionSource("bladder-or-bowel-dysfunction")
    ),
    RedFlagSpec("neurological-deficit", "neurological-deficit", CodedSource("neurological-deficit")),
    RedFlagSpec(
        "progressive-leg-weakness", "neurological-deficit", question=QuestionSource("progressive-leg-weakness")
    ),
    RedFlagSpec(
        "history-of-cancer",
        "malignancy",
        CodedSource("malignancy", active_only=False),
        QuestionSource("history-of-cancer"),
    ),
    RedFlagSpec(
        "unexplained-weight-loss", "malignancy", CodedSource("weight-loss"), QuestionSource("unexplained-weight-loss")
    ),
    RedFlagSpec("fever", "infection", special="fever"),
    RedFlagSpec("iv-drug-use", "infection", CodedSource("iv-drug-use"), QuestionSource("iv-drug-use")),
    RedFlagSpec("immunosuppression", "infection", special="immunosuppression"),
    RedFlagSpec(
        "significant-trauma",
        "fracture",
        CodedSource("significant-trauma", active_only=False, window="trauma_window_days", require_date=True),
        QuestionSource("significant-trauma", window="trauma_window_days"),
        label_params={"days": "trauma_window_days"},
    ),
    RedFlagSpec("osteoporosis", "fracture", CodedSource("osteoporosis", active_only=False)),
    RedFlagSpec(
        "long-term-steroids", "fracture", special="long-term-steroids", label_params={"months": "steroid_min_months"}
    ),
    RedFlagSpec("age-70-or-over", "fracture", special="age", label_params={"age": "fracture_risk_age_years"}),
)
