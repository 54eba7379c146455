"""The policy JSON Schema (editors) and the policy loader (the authority) agree on a table of policies.

`gateway/policy.schema.json` is written by hand beside `gateway/policy/loader.py`; this table is what
keeps them together: for every structural question (keys, types, enums, required and exclusive keys,
the explicit nulls YAML allows) both must say yes or both no. What a JSON Schema cannot express
(the scope vocabulary, canonical paths, duplicate and ambiguous rules) is the loader's alone, listed
at the end so the boundary is explicit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.errors import LoadError
from gateway.policy.loader import RULE_KEYS, TOP_LEVEL_KEYS, parse_policy

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "gateway" / "policy.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
VOCABULARY = {"messages:send": "Send", "messages:read": "Read"}


def policy(*rules: object, **top: Any) -> dict[str, Any]:
    return {"scopes": VOCABULARY, **top, "rules": list(rules)}


DROP = object()  # rule(scope=DROP): no `scope` key at all (None writes `scope: null`)


def rule(**fields: Any) -> dict[str, Any]:
    merged = {"method": "GET", "path": "/x", "scope": "messages:read", **fields}
    return {key: value for key, value in merged.items() if value is not DROP}


def loader_accepts(document: object) -> bool:
    try:
        parse_policy(yaml.safe_dump(document, sort_keys=False), "p.yaml")
    except LoadError:
        return False
    return True


def schema_accepts(document: object) -> bool:
    return VALIDATOR.is_valid(document)


VALID = {
    "minimal": {"rules": []},
    "full top level": policy(
        rule(), upstream="smsgate", mount="/3rdparty/v1", version=1, **{"$schema": "./policy.schema.json"}
    ),
    "root mount": policy(rule(), mount="/"),
    "empty mount": policy(rule(), mount=""),
    "null optionals": policy(rule(), upstream=None, mount=None, version=None, **{"$schema": None}),
    "null scopes": {"scopes": None, "rules": [{"method": "GET", "path": "/x", "public": True}]},
    "methods list": policy(rule(method=DROP, methods=["PUT", "PATCH"])),
    "custom method": policy(rule(method="PROPFIND")),
    "any_of": policy(rule(scope=DROP, any_of=["messages:send", "messages:read"])),
    "all_of": policy(rule(scope=DROP, all_of=["messages:send", "messages:read"])),
    "exact": policy(rule(exact=True)),
    "exact false": policy(rule(exact=False)),
    "null exact and public": policy(rule(exact=None, public=None)),
    "public": policy({"method": "GET", "path": "/x", "public": True}),
    "public, exact false": policy({"method": "GET", "path": "/x", "public": True, "exact": False}),
    "public, null scope": policy({"method": "GET", "path": "/x", "public": True, "scope": None, "any_of": None}),
    "public false with scope": policy(rule(public=False)),
    "description": policy(rule(description="why")),
    "websocket": policy(rule(websocket=True)),
    "websocket false on POST": policy(rule(method="POST", websocket=False)),
    "null websocket": policy(rule(websocket=None)),
    "public websocket": policy({"method": "GET", "path": "/ws", "public": True, "websocket": True}),
    "websocket with methods [GET]": policy(rule(method=DROP, methods=["GET"], websocket=True)),
    "null description": policy(rule(description=None)),
    "parameters": policy(rule(path="/messages/{id}/state")),
    "trailing slash": policy(rule(path="/x/")),
    "null method beside methods": policy(rule(method=None, methods=["GET"])),
    "null methods beside method": policy(rule(methods=None)),
    "null scope beside any_of": policy(rule(scope=None, any_of=["messages:read"])),
    "limits": policy(
        rule(method="POST"),
        limits=[
            {"name": "a", "routes": ["POST /x"], "per": "client", "rate": "60/m", "burst": 5, "cost": "segments"},
            {"name": "b", "rate": "1/d"},
        ],
    ),
    "sms": policy(
        rule(method="POST"),
        sms={
            "send": [{"route": "POST /x", "recipients": ["to", "messages[].destination"], "text": "messages[].text"}],
            "destinations": {
                "countries": ["GB"],
                "deny_number_types": ["PREMIUM_RATE"],
                "max_recipients": 3,
                "prefix_velocity": {"limit": 2, "window": "1h"},
            },
        },
    ),
    "null limits and sms": policy(rule(), limits=None, sms=None),
}

INVALID = {
    "limit without rate": policy(rule(), limits=[{"name": "a"}]),
    "limit rate malformed": policy(rule(), limits=[{"name": "a", "rate": "60 per minute"}]),
    "limit per unknown": policy(rule(), limits=[{"name": "a", "rate": "1/s", "per": "ip"}]),
    "limit cost unknown": policy(rule(), limits=[{"name": "a", "rate": "1/s", "cost": "bytes"}]),
    "limit burst 0": policy(rule(), limits=[{"name": "a", "rate": "1/s", "burst": 0}]),
    "limit unknown key": policy(rule(), limits=[{"name": "a", "rate": "1/s", "window": 1}]),
    "sms unknown key": policy(rule(), sms={"quota": 1}),
    "send without recipients": policy(rule(method="POST"), sms={"send": [{"route": "POST /x"}]}),
    "country lowercase": policy(rule(), sms={"destinations": {"countries": ["gb"]}}),
    "number type unknown": policy(rule(), sms={"destinations": {"deny_number_types": ["PREMIUM"]}}),
    "velocity without window": policy(rule(), sms={"destinations": {"prefix_velocity": {"limit": 2}}}),
    "not a mapping": ["rules"],
    "no rules": {"scopes": VOCABULARY},
    "null rules": {"rules": None},
    "rules not a list": {"rules": {"a": 1}},
    "unknown top-level key": {"rules": [], "zz_unknown": 1},
    "version 2": {"rules": [], "version": 2},
    "version string": {"rules": [], "version": "1"},
    "version true": {"rules": [], "version": True},
    "$schema not a string": {"rules": [], "$schema": 1},
    "upstream not a string": {"rules": [], "upstream": 5},
    "blank upstream": {"rules": [], "upstream": "  "},
    "mount without slash": {"rules": [], "mount": "v1"},
    "mount with parameter": {"rules": [], "mount": "/v1/{x}"},
    "mount with query": {"rules": [], "mount": "/v1?x"},
    "mount not a string": {"rules": [], "mount": 1},
    "scopes a list": {"rules": [], "scopes": ["messages:send"]},
    "malformed scope name": {"rules": [], "scopes": {"Messages:Send": "x"}},
    "superuser declared": {"rules": [], "scopes": {"all:any": "x"}},
    "scope description not a string": {"rules": [], "scopes": {"messages:send": 1}},
    "null scope description": {"rules": [], "scopes": {"messages:send": None}},
    "rule not a mapping": policy("GET /x"),
    "unknown rule key": policy(rule(publik=True)),
    "no method": policy(rule(method=DROP)),
    "null method": policy(rule(method=None)),
    "null method and methods": policy(rule(method=None, methods=None)),
    "method and methods": policy(rule(methods=["GET"])),
    "lowercase method": policy(rule(method="get")),
    "method not a string": policy(rule(method=1)),
    "empty methods": policy(rule(method=DROP, methods=[])),
    "duplicate methods": policy(rule(method=DROP, methods=["GET", "GET"])),
    "methods not a list": policy(rule(method=DROP, methods="GET")),
    "no path": policy(rule(path=DROP)),
    "null path": policy(rule(path=None)),
    "relative path": policy(rule(path="x")),
    "path with //": policy(rule(path="/a//b")),
    "path with query": policy(rule(path="/a?b")),
    "path not a string": policy(rule(path=1)),
    "no scope": policy(rule(scope=DROP)),
    "public false without scope": policy(rule(scope=DROP, public=False)),
    "null scope": policy(rule(scope=None)),
    "only null scopes": policy(rule(scope=None, any_of=None, all_of=None)),
    "scope and any_of": policy(rule(any_of=["messages:send"])),
    "any_of and all_of": policy(rule(scope=DROP, any_of=["messages:send"], all_of=["messages:read"])),
    "malformed scope": policy(rule(scope="Messages:Read")),
    "superuser scope": policy(rule(scope="all:any")),
    "scope a list": policy(rule(scope=["messages:read"])),
    "empty any_of": policy(rule(scope=DROP, any_of=[])),
    "duplicate all_of": policy(rule(scope=DROP, all_of=["messages:read", "messages:read"])),
    "any_of a string": policy(rule(scope=DROP, any_of="messages:read")),
    "public with scope": policy(rule(public=True)),
    "public and exact": policy({"method": "GET", "path": "/x", "public": True, "exact": True}),
    "public not a boolean": policy({"method": "GET", "path": "/x", "public": "yes"}),
    "exact not a boolean": policy(rule(exact="yes")),
    "description not a string": policy(rule(description=1)),
    "websocket not a boolean": policy(rule(websocket="yes")),
    "websocket on POST": policy(rule(method="POST", websocket=True)),
    "websocket on GET and HEAD": policy(rule(method=DROP, methods=["GET", "HEAD"], websocket=True)),
}

# Checks a JSON Schema cannot make: the schema accepts these, the loader refuses them.
LOADER_ONLY = {
    "scope outside the vocabulary": policy(rule(scope="messages:delete")),
    "non-canonical path": policy(rule(path="/a/./b")),
    "non-canonical mount": policy(rule(), mount="/a/%7e"),
    "malformed parameter": policy(rule(path="/a/{x")),
    "duplicate parameter": policy(rule(path="/a/{x}/{x}")),
    "version 1.0": {"rules": [], "version": 1.0},  # JSON numbers do not tell 1.0 from 1
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_both_accept(name: str) -> None:
    document = VALID[name]
    assert (loader_accepts(document), schema_accepts(document)) == (True, True)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_both_refuse(name: str) -> None:
    document = INVALID[name]
    assert (loader_accepts(document), schema_accepts(document)) == (False, False)


@pytest.mark.parametrize("name", sorted(LOADER_ONLY))
def test_loader_only(name: str) -> None:
    document = LOADER_ONLY[name]
    assert (loader_accepts(document), schema_accepts(document)) == (False, True)


def test_keys_agree() -> None:
    """The schema's properties are the keys the loader reads, at the top level and in a rule."""
    assert set(SCHEMA["properties"]) == set(TOP_LEVEL_KEYS)
    assert set(SCHEMA["$defs"]["rule"]["properties"]) == set(RULE_KEYS)
    assert SCHEMA["additionalProperties"] is False
    assert SCHEMA["$defs"]["rule"]["additionalProperties"] is False
