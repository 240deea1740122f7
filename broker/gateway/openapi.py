"""The OpenAPI 3.1 description of the gateway's routes and its own problem types (served at /openapi.json)."""

from __future__ import annotations

from functools import cache
from typing import Any

from broker.gateway.problems import PROBLEM_BASE, all_problem_types


def _exchange_request(siret: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Exactly the body of the broker's `POST /v1/exchanges` (`ExchangeRequest` in the broker's "
                       "/openapi.json): the gateway forwards it byte for byte. Without `subject` when an access "
                       "token stands for the citizen's consent.",
        "required": ["dataset", "purpose", "recipient", "fields"],
        "properties": {
            "dataset": {"type": "string", "examples": ["quotient_familial"]},
            "version": {"type": "integer", "minimum": 1},
            "purpose": {"type": "string"},
            "recipient": {"type": "string", "pattern": f"^{siret}(/[A-Za-z0-9_.-]{{1,64}})?$",
                          "description": "This gateway's SIRET, or SIRET/sub-unit: any other is refused "
                                         "(consumer-mismatch)."},
            "fields": {"type": "array", "items": {"type": "string"}},
            "subject": {"type": "object"},
        },
    }


_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status"],
    "description": "The gateway's own problems; the broker's pass through unchanged (their `type` is under "
                   "https://dlnuf.org/problems/, without `gateway/`).",
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}

_RECORD = {"DLNUF-Gateway-Record": {"schema": {"type": "string", "format": "uuid"},
                                    "description": "The id of this call in the gateway's record."}}
_VERIFIED = {
    **_RECORD,
    "DLNUF-Response-Signature": {"schema": {"type": "string", "enum": ["bound", "unbound"]},
                                 "description": "bound: the broker signed this answer for this very request; "
                                                "unbound: a refusal the broker signed before it could verify the "
                                                "request (e.g. an unknown key)."},
    "DLNUF-Inclusion-Promise": {"schema": {"type": "string", "enum": ["verified"]},
                                "description": "On a release: the transparency log promised to include its entry, "
                                               "which records exactly the payload received."},
    "DLNUF-Log-Entry-Id": {"schema": {"type": "string", "format": "uuid"}},
    "DLNUF-Broker-Request-Id": {"schema": {"type": "string"}},
}
_SECRET = {"name": "DLNUF-Gateway-Secret", "in": "header", "required": False, "schema": {"type": "string"},
           "description": "The client secret, when the gateway is configured with one."}


def _problems(*codes: str) -> dict[str, Any]:
    return {code: {"description": "A problem of the gateway's (or the broker's, passed through)", "headers": _RECORD,
                   "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            for code in codes}


def _form(description: str) -> dict[str, Any]:
    return {"required": True, "description": description, "content": {"application/x-www-form-urlencoded": {
        "schema": {"type": "object", "additionalProperties": {"type": "string"}}}}}


def _oauth(summary: str, description: str, form: str) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "description": description, "parameters": [_SECRET], "requestBody": _form(form),
        "responses": {
            "200": {"description": "The broker's answer, unchanged", "headers": _RECORD,
                    "content": {"application/json": {"schema": {"type": "object"}}}},
            "201": {"description": "The broker's answer to a pushed authorization request, unchanged",
                    "headers": _RECORD, "content": {"application/json": {"schema": {"type": "object"}}}},
            "400": {"description": "The broker's RFC 6749 error (or the gateway's problem)",
                    "content": {"application/json": {"schema": {"type": "object"}},
                                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}},
            **_problems("401", "403", "404", "415", "502", "503", "504"),
        }}}


@cache
def openapi_document(siret: str = "[0-9]{14}") -> dict[str, Any]:
    """The document, its exchange body naming `siret`, the organisation this gateway signs for."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "DLNUF consumer gateway", "version": "1",
                 "description": "A form service's way to the DLNUF broker in plain HTTP: the gateway signs with the "
                                "organisation's key, verifies the broker's answers and the transparency log's "
                                "promises, and keeps a record. See docs/gateway.md."},
        "paths": {
            "/v1/exchanges": {"post": {
                "summary": "An exchange, signed and verified by the gateway",
                "description": "The broker's answer is passed on unchanged once verified: a release only if "
                               "signed by the broker for this request and promised by the log; a refusal if "
                               "signed by the broker. Otherwise the gateway's problem, and no data.",
                "parameters": [
                    _SECRET,
                    {"name": "Authorization", "in": "header", "required": False, "schema": {"type": "string"},
                     "description": "Bearer <access token> from the consent flow (bound to the gateway's key)."},
                    {"name": "DLNUF-Consumer", "in": "header", "required": False,
                     "schema": {"type": "string", "pattern": "^[0-9]{14}$"},
                     "description": "The SIRET the caller means to act for: refused unless the gateway's."},
                ],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ExchangeRequest"}}}},
                "responses": {
                    "200": {"description": "The broker's release, verified", "headers": _VERIFIED,
                            "content": {"application/json": {"schema": {"type": "object"}}}},
                    **_problems("400", "401", "403", "404", "409", "413", "415", "422", "429", "502", "503",
                                "504"),
                },
            }},
            "/oauth/token": _oauth(
                "The consent flow's token request, with the gateway's client authentication",
                "RFC 6749 authorization_code (with code_verifier and redirect_uri) or refresh_token, without "
                "client authentication: the gateway adds private_key_jwt (RFC 7523) for its organisation.",
                "grant_type, code, code_verifier, redirect_uri; or grant_type, refresh_token"),
            "/oauth/par": _oauth(
                "A pushed authorization request (RFC 9126), with the gateway's client authentication",
                "Offered when the broker's metadata names a pushed_authorization_request_endpoint; else 404 "
                "not-offered.",
                "the authorization request parameters"),
            "/healthz": {"get": {"summary": "Liveness (no caller check)",
                                 "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "The record's database and the broker", "parameters": [_SECRET],
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"},
                                              **_problems("401")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (dlnuf_gateway_*)", "parameters": [_SECRET],
                                 "responses": {"200": {"description": "text exposition format"},
                                               **_problems("401")}}},
            "/openapi.json": {"get": {"summary": "This document", "parameters": [_SECRET],
                                      "responses": {"200": {"description": "OpenAPI 3.1"}, **_problems("401")}}},
        },
        "components": {
            "schemas": {"ExchangeRequest": _exchange_request(siret), "Problem": _PROBLEM},
            "x-problem-types": {p.uri: {"status": p.status, "title": p.title, "description": p.description}
                                for p in all_problem_types()},
        },
        "x-problem-base": PROBLEM_BASE,
    }
