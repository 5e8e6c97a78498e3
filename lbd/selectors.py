"""Kubernetes-style label selectors, as MetalLB uses them. Pure.

One type and one ``matches`` for every selector in the config: node selectors
(L2/BGP advertisements, BGP peers, route exports), pool selectors of
advertisements, and a pool's namespace and service selectors.

Semantics are Kubernetes' ``metav1.LabelSelector`` (apimachinery
``labels.Selector``), which MetalLB evaluates with ``Matches``:

* ``matchLabels`` pairs and ``matchExpressions`` requirements are ANDed;
  an empty selector matches everything;
* ``In``: the label is present and its value is listed; ``NotIn``: the label
  is absent or its value is not listed; ``Exists`` / ``DoesNotExist``: the
  key is present / absent (apimachinery ``Requirement.Matches``);
* a LIST of selectors (MetalLB's ``nodeSelectors``, ``ipAddressPoolSelectors``,
  ``serviceSelectors``...) matches when ANY selector matches; an empty list
  means "no restriction" (every node, every pool), as in MetalLB's
  ``selectedNodes``.

The TOML form (``lbd.config`` reads it with ``parse_selectors``) is a flat
table (shorthand for ``matchLabels``), or ``{ matchLabels = {...},
matchExpressions = [{ key, operator, values }] }``, or an array of those.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, Union

__all__ = [
    "OPERATORS",
    "LabelSelector",
    "Requirement",
    "Selectors",
    "matches",
    "normalize",
    "parse_selectors",
    "selects_pool",
]

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
STRUCTURED_KEYS = ("matchLabels", "matchExpressions")
EXPRESSION_KEYS = ("key", "operator", "values")

# Kubernetes qualified names (apimachinery validation.IsQualifiedName): an
# optional DNS-subdomain prefix and '/', then 1-63 alphanumerics, '-', '_', '.'.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY_RE = re.compile(rf"(?:(?={_PREFIX}/)(?=.{{1,253}}/){_PREFIX}/)?{_NAME}")
LABEL_VALUE_RE = re.compile(rf"(?:{_NAME})?")


@dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` entry."""

    key: str
    operator: str  # one of OPERATORS
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        return False  # unknown operators never match (the parser refuses them)

    def __str__(self) -> str:
        if self.operator in ("Exists", "DoesNotExist"):
            return ("!" if self.operator == "DoesNotExist" else "") + self.key
        op = "in" if self.operator == "In" else "notin"
        return f"{self.key} {op} ({','.join(self.values)})"


@dataclass(frozen=True)
class LabelSelector:
    """``matchLabels`` (sorted pairs) AND ``matchExpressions``; empty matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.match_expressions))

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels] + [str(r) for r in self.match_expressions]
        return ",".join(parts) or "(everything)"


Selectors = tuple[LabelSelector, ...]
SelectorLike = Union[Mapping[str, str], LabelSelector, Iterable[LabelSelector]]


def normalize(value: Any) -> Selectors:
    """Any accepted in-memory form -> a tuple of selectors.

    A plain mapping is the flat shorthand (``{"rack": "r1"}``); an empty one,
    like an empty tuple, means no restriction.
    """
    if isinstance(value, LabelSelector):
        return (value,)
    if isinstance(value, Mapping):
        if not value:
            return ()
        return (LabelSelector(match_labels=tuple(sorted((str(k), str(v)) for k, v in value.items()))),)
    if value is None:
        return ()
    out: list[LabelSelector] = []
    for item in value:
        out.extend(normalize(item) if not isinstance(item, Mapping) else
                   (normalize(item) or (LabelSelector(),)))
    return tuple(out)


def matches(selectors: SelectorLike, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` are selected: ANY selector matches; none given means everything."""
    sels = selectors if isinstance(selectors, tuple) and all(isinstance(s, LabelSelector) for s in selectors) \
        else normalize(selectors)
    return not sels or any(s.matches(labels) for s in sels)


def selects_pool(names: Sequence[str], pool_selectors: Selectors, pool: str, pool_labels: Mapping[str, str]) -> bool:
    """MetalLB's pool choice of an advertisement: named pools plus pools whose
    labels match a selector; neither given means every pool
    (``setL2AdvertisementsToPools``)."""
    if not names and not pool_selectors:
        return True
    return pool in names or any(s.matches(pool_labels) for s in pool_selectors)


# ---------------------------------------------------------------------------
# TOML reader (errors collected like lbd.config.read's readers)
# ---------------------------------------------------------------------------


def _q(value: object) -> str:
    from lbd.config.read import quote

    return quote(value)


def parse_selectors(errors: Any, where: str, value: Any, *, flat: bool = True) -> Selectors:
    """A table (one selector) or an array of tables (any of them) at ``where``.

    ``errors`` is an ``lbd.config.read.Errors``. With ``flat``, a table whose
    values are all strings is the shorthand for ``matchLabels`` (today's
    ``node_selector = { rack = "r1" }``), and an empty table selects everything.
    """
    from lbd.config.read import got

    if isinstance(value, dict):
        if flat and _is_flat(value):
            labels = _labels(errors, where, value)
            return (LabelSelector(tuple(sorted(labels.items()))),) if labels else ()
        selector = _structured(errors, where, value)
        return (selector,) if selector is not None else ()
    if not isinstance(value, list):
        errors.add(where, f"expected a selector table or an array of them, {got(value)}")
        return ()
    out: list[LabelSelector] = []
    seen: dict[LabelSelector, int] = {}
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            errors.add(at, f"expected a selector table, {got(item)}")
            continue
        if flat and _is_flat(item):
            selector: LabelSelector | None = LabelSelector(tuple(sorted(_labels(errors, at, item).items())))
        else:
            selector = _structured(errors, at, item)
        if selector is None:
            continue
        if selector in seen:  # MetalLB's validateLabelSelectorDuplicate
            errors.add(at, f"repeats {where.rsplit(': ', 1)[-1]}[{seen[selector]}]")
            continue
        seen[selector] = i
        out.append(selector)
    return tuple(out)


def _is_flat(table: dict) -> bool:
    """Flat shorthand (label = "value") when every value is a string."""
    return all(isinstance(v, str) for v in table.values())


def _labels(errors: Any, where: str, table: Any) -> dict[str, str]:
    from lbd.config.read import read_string_map

    return read_string_map(errors, where, table)


def _structured(errors: Any, where: str, table: dict) -> LabelSelector | None:
    from lbd.config.read import did_you_mean, got

    before = len(errors)
    for key in table:
        if key not in STRUCTURED_KEYS:
            hint = did_you_mean(str(key), STRUCTURED_KEYS) or (
                " (a selector has matchLabels and matchExpressions; in the flat form "
                "label = \"value\", every value is a string)")
            errors.add(where, f"unknown key {key!r}{hint}")
    labels = _labels(errors, f"{where}: matchLabels", table.get("matchLabels", {}))
    for k, v in labels.items():
        _check_key(errors, f"{where}: matchLabels: {k}", k)
        _check_value(errors, f"{where}: matchLabels: {k}", v)
    requirements: list[Requirement] = []
    raw = table.get("matchExpressions", [])
    if not isinstance(raw, list):
        errors.add(f"{where}: matchExpressions", f"expected an array of tables, {got(raw)}")
        raw = []
    for i, item in enumerate(raw):
        at = f"{where}: matchExpressions[{i}]"
        requirement = _requirement(errors, at, item)
        if requirement is None:
            continue
        if requirement in requirements:
            errors.add(at, f"repeats matchExpressions[{requirements.index(requirement)}]")
            continue
        requirements.append(requirement)
    if len(errors) > before:
        return None
    return LabelSelector(tuple(sorted(labels.items())), tuple(requirements))


def _requirement(errors: Any, where: str, item: Any) -> Requirement | None:
    from lbd.config.read import did_you_mean, got

    if not isinstance(item, dict):
        errors.add(where, f"expected a table {{ key, operator, values }}, {got(item)}")
        return None
    before = len(errors)
    for key in item:
        if key not in EXPRESSION_KEYS:
            errors.add(where, f"unknown key {key!r}{did_you_mean(str(key), EXPRESSION_KEYS)}")
    key = item.get("key")
    if key is None:
        errors.add(where, "missing required key 'key'")
    elif not isinstance(key, str):
        errors.add(f"{where}: key", f"expected a string, {got(key)}")
    else:
        _check_key(errors, f"{where}: key", key)
    operator = item.get("operator")
    if operator is None:
        errors.add(where, "missing required key 'operator' (In, NotIn, Exists or DoesNotExist)")
    elif not isinstance(operator, str):
        errors.add(f"{where}: operator", f"expected a string, {got(operator)}")
    elif operator not in OPERATORS:
        options = ", ".join(OPERATORS)
        hint = did_you_mean(operator, OPERATORS)
        for op in OPERATORS:  # "in", "notin", "exists": say the exact spelling
            if op.lower() == operator.lower():
                hint = f" (did you mean {op!r}?)"
        errors.add(f"{where}: operator", f"{_q(operator)} is not one of {options}{hint}")
    values: list[str] = []
    raw = item.get("values", [])
    if not isinstance(raw, list):
        errors.add(f"{where}: values", f"expected an array of strings, {got(raw)}")
        raw = []
    for j, v in enumerate(raw):
        at = f"{where}: values[{j}]"
        if not isinstance(v, str):
            errors.add(at, f"expected a string, {got(v)}")
        elif v in values:
            errors.add(at, f"{_q(v)} repeats values[{values.index(v)}]")
        else:
            _check_value(errors, at, v)
            values.append(v)
    # apimachinery: In/NotIn need at least one value; Exists/DoesNotExist none.
    if operator in ("In", "NotIn") and not raw:
        errors.add(where, f"operator {operator} needs a non-empty 'values'")
    if operator in ("Exists", "DoesNotExist") and raw:
        errors.add(f"{where}: values", f"must be empty (or absent) with operator {operator}")
    if len(errors) > before:
        return None
    return Requirement(key, operator, tuple(sorted(values)))  # type: ignore[arg-type]


def _check_key(errors: Any, where: str, key: str) -> None:
    if not LABEL_KEY_RE.fullmatch(key):
        errors.add(where, f"{_q(key)} is not a valid label key ([prefix/]name, the name 1-63 letters, digits, "
                          "'-', '_' or '.', starting and ending with a letter or digit)")


def _check_value(errors: Any, where: str, value: str) -> None:
    if not LABEL_VALUE_RE.fullmatch(value):
        errors.add(where, f"{_q(value)} is not a valid label value (at most 63 letters, digits, '-', '_' or '.', "
                          "starting and ending with a letter or digit)")
