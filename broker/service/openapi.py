"""The OpenAPI 3.1 description of every route, problem types included (served at /openapi.json)."""

from __future__ import annotations

from functools import cache
from typing import Any

import schemas
from adapters.api_entreprise import MAX_CONTEXT, MAX_OBJECT
from adapters.subjects import RESERVED_KINDS
from broker.service.problems import PROBLEM_BASE, all_problem_types

_PIVOT = {
    "type": "object",
    "description": "FranceConnect pivot identity (claims of the same names).",
    "required": ["family_name", "given_name", "birthdate", "gender", "birthcountry"],
    "additionalProperties": False,
    "properties": {
        "family_name": {"type": "string", "pattern": "\\S", "description": "Nom de naissance (not blank)."},
        "given_name": {"type": "string", "pattern": "\\S", "description": "Prénoms, separated by spaces (not blank)."},
        "birthdate": {"type": "string", "pattern": "^[0-9]{4}-((0[1-9]|1[0-2])-([0-2][0-9]|3[01])|00-00)$",
                      "description": "YYYY-MM-DD, a calendar date; 00 for an unknown day, 00-00 for an unknown "
                                     "month and day."},
        "gender": {"type": "string", "enum": ["male", "female"]},
        "birthplace": {"type": "string", "pattern": "^([0-9][0-9AB][0-9]{3})?$",
                       "description": "INSEE COG commune code, required when born in France (99100); empty or "
                                      "absent when born abroad."},
        "birthcountry": {"type": "string", "pattern": "^99[0-9]{3}$", "description": "COG country, France 99100."},
        "preferred_name": {"type": "string", "description": "Nom d'usage (hint only)."},
        "given_name_array": {"type": "array", "items": {"type": "string", "minLength": 1},
                             "description": "FranceConnect v2's first names one by one (given_name's words, in "
                                            "order): a first name with a space in it stays one."},
    },
    # born in France: a commune; born abroad: none
    "if": {"properties": {"birthcountry": {"const": "99100"}}},
    "then": {"required": ["birthplace"], "properties": {"birthplace": {"minLength": 5}}},
    "else": {"properties": {"birthplace": {"maxLength": 0}}},
}

_EXCHANGE_REQUEST = {
    "type": "object",
    "required": ["dataset", "purpose", "recipient", "fields"],
    "description": "A dataset or version not in the catalogue is unknown-dataset (404); `subject` below says when "
                   "it may be absent.",
    "additionalProperties": False,
    "properties": {
        "dataset": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$", "examples": ["quotient_familial"]},
        "version": {"type": "integer", "minimum": 1, "maximum": 999,
                    "description": "Dataset version; latest when omitted."},
        "purpose": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,127}$",
                    "description": "One of the purposes of the consumer's habilitation."},
        "recipient": {"type": "string", "pattern": "^[0-9]{14}(/[A-Za-z0-9_.-]{1,64})?$",
                      "description": "SIRET of the consumer, or SIRET/sub-unit."},
        "fields": {"type": "array", "minItems": 1, "maxItems": 64, "uniqueItems": True,
                   "items": {"type": "string", "pattern": "^[a-z_][a-z0-9_]*(\\.[a-z_][a-z0-9_]*){0,7}$"},
                   "description": "Dotted paths into the dataset document."},
        "context": {"type": "string", "maxLength": MAX_CONTEXT, "examples": ["Marchés publics"],
                    "description": "Printable text: the framework of the call (a public tender, a grant...). "
                                   "Required by API "
                                   "Entreprise's datasets (provider-rejected-query without it); logged."},
        "object": {"type": "string", "maxLength": MAX_OBJECT, "examples": ["Marché 2026-127"],
                   "description": "Printable text: the procedure's reference, to trace the call back. Required by API "
                                  "Entreprise's datasets; logged."},
        "parameters": {"type": "object", "maxProperties": 16,
                       "description": "The dataset's parameters (a month, a fiscal year), as the catalogue lists them "
                                      "per version; checked against the schema's x-parameters "
                                      "(invalid-parameters) and logged."},
        "subject": {
            "oneOf": [
                {"type": "object", "required": ["pivot_identity"], "additionalProperties": False,
                 "properties": {"pivot_identity": _PIVOT}},
                {"type": "object", "required": ["identifier"], "additionalProperties": False,
                 "properties": {"identifier": {
                     "type": "object", "required": ["scheme", "value"], "additionalProperties": False,
                     # an INE is API Particulier's pattern: 11 letters and digits
                     "if": {"properties": {"scheme": {"const": "ine"}}},
                     "then": {"properties": {"value": {"pattern": "^[0-9A-Za-z]{11}$"}}},
                     "properties": {"scheme": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$",
                                               "not": {"enum": sorted(RESERVED_KINDS)},
                                               "description": "A provider's identifier scheme (ine, "
                                                              "france_travail, ...), never a subject kind of "
                                                              "its own."},
                                    "value": {"type": "string", "minLength": 1, "maxLength": 128,
                                              "pattern": "^[^\\u0000-\\u001f\\u007f]*$",
                                              "description": "Printable characters (Python's isprintable)."}}}}},
                {"type": "object", "required": ["siren"], "additionalProperties": False,
                 "properties": {"siren": {"type": "string", "pattern": "^[0-9]{9}$",
                                          "description": "A company; the Luhn check digit is verified."}}},
                {"type": "object", "required": ["siret"], "additionalProperties": False,
                 "properties": {"siret": {"type": "string", "pattern": "^[0-9]{14}$",
                                          "description": "An establishment; check digits verified (La Poste's "
                                                         "establishments: digit sum a multiple of 5)."}}},
                {"type": "object", "required": ["rna"], "additionalProperties": False,
                 "properties": {"rna": {"type": "string", "pattern": "^W[0-9][0-9AB][0-9]{7}$",
                                        "description": "An association in the RNA."}}},
                {"type": "object", "required": ["france_connect"], "additionalProperties": False,
                 "description": "FranceConnect mode, only with a consent's access token: the provider is asked "
                                "with the citizen's FranceConnect token sealed in the consent. Refused without "
                                "one (france-connect-needs-consent).",
                 "properties": {"france_connect": {"type": "object", "maxProperties": 0}}},
            ],
            "description": "Who the request is about: one member, named after the subject kind. The catalogue "
                           "lists the kinds each dataset accepts (`subjects`); another kind is refused "
                           "(subject-kind-not-accepted). With a consent's access token, omit it (the consent "
                           "names the citizen) or send {\"france_connect\": {}}.",
        },
    },
}

_EXCHANGE_RESPONSE = {
    "type": "object",
    "required": ["request_id", "log_entry_id", "dataset", "version", "fields_released", "data_sha256", "data"],
    "properties": {
        "request_id": {"type": "string"},
        "log_entry_id": {"type": "string", "format": "uuid"},
        "dataset": {"type": "string"},
        "version": {"type": "integer"},
        "fields_released": {"type": "array", "items": {"type": "string"}},
        "data_sha256": {"type": "string", "description": "SHA-256 (hex) of the RFC 8785 canonical JSON of `data` "
                                                         "(a v1 entry records it; a v2 entry records "
                                                         "`payload_commitment`, see `log.payload_salt`)."},
        "data": {"type": "object"},
        "log": {"$ref": "#/components/schemas/LogReceipt"},
    },
}

_B64_HASH = {"type": "string", "contentEncoding": "base64", "description": "32-byte SHA-256 hash, base64."}
_PROOF = {"type": "array", "items": _B64_HASH}
_LOG_RECEIPT = {
    "type": "object",
    "description": "The committed access-log entry and the log's signed promise to include it within the maximum "
                   "merge delay (docs/transparency-log.md says how to verify it).",
    "required": ["entry", "leaf_hash", "inclusion_promise"],
    "properties": {
        "entry": {"type": "object", "description": "The entry (v2: its public leaf, RFC 9162 leaf-hashed, is "
                                                   "`leaf_hash`; v1: its RFC 8785 JCS is)."},
        "leaf_hash": _B64_HASH,
        "payload_salt": {"type": "string", "contentEncoding": "base64",
                         "description": "The 32-byte salt of the entry's `payload_commitment`: HMAC-SHA-256 keyed by "
                                        "it over the JCS of `data`. Not in the leaf; keep it with the data."},
        "inclusion_promise": {"type": "string", "description": "C2SP signed note, dlnuf.org/inclusion-promise/v1: "
                                                              "format, origin, entry id, leaf hash, logged_at, "
                                                              "max merge delay (s)."},
    },
}
_JOURNAL_REQUEST = {
    "type": "object",
    "required": ["subject"],
    "additionalProperties": False,
    "properties": {
        "subject": _EXCHANGE_REQUEST["properties"]["subject"],  # type: ignore[index]
        "since": {"type": "string", "anyOf": [{"format": "date"}, {"format": "date-time"}],
                  "description": "YYYY-MM-DD or RFC 3339 date-time with offset (inclusive)."},
        "until": {"type": "string", "anyOf": [{"format": "date"}, {"format": "date-time"}],
                  "description": "YYYY-MM-DD or RFC 3339 date-time with offset (exclusive)."},
        "consumer": {"type": "string", "pattern": "^[0-9]{14}$"},
        "dataset": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
        "format": {"type": "string", "enum": ["json", "csv"], "default": "json"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 5000, "default": 500},
    },
}

_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "format": "uri", "enum": [p.uri for p in all_problem_types()]},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
    },
}

_BILINGUAL = {"type": "object", "properties": {"fr": {"type": ["string", "null"]}, "en": {"type": ["string", "null"]}}}

_CATALOGUE = {
    "type": "object",
    "required": ["registry_version", "datasets"],
    "properties": {
        "registry_version": {"type": "integer"},
        "datasets": {"type": "array", "items": {
            "type": "object",
            "required": ["dataset", "latest_version", "versions", "providers", "legal_bases"],
            "properties": {
                "dataset": {"type": "string", "examples": ["quotient_familial"]},
                "latest_version": {"type": "integer"},
                "versions": {"type": "array", "items": {
                    "type": "object",
                    "required": ["version", "schema", "$id", "title", "description", "fields"],
                    "properties": {
                        "version": {"type": "integer"},
                        "schema": {"type": "string", "description": "Path of the JSON Schema on this broker."},
                        "$id": {"type": "string", "format": "uri"},
                        "title": {"type": ["string", "null"]},
                        "description": _BILINGUAL,
                        "fields": {"type": "array", "items": {
                            "type": "object",
                            "required": ["path", "type", "required", "requestable", "description"],
                            "properties": {
                                "path": {"type": "string", "description": "Dotted path; `[]` marks array items."},
                                "type": {"type": "array", "items": {"type": "string"}},
                                "required": {"type": "boolean"},
                                "requestable": {"type": "boolean", "description": "Whether the path can be named "
                                                "in `fields` (members inside arrays cannot)."},
                                "description": _BILINGUAL,
                                "enum": {"type": "array"},
                            },
                        }},
                    },
                }},
                "providers": {"type": "array", "items": {"type": "object", "properties": {
                    "organisation": {"type": "object", "properties": {"siret": {"type": "string"},
                                                                      "name": {"type": ["string", "null"]}}},
                    "adapter": {"type": "string"},
                    "kind": {"type": "string"},
                }}},
                "legal_bases": {"type": "array", "description": "Distinct legal bases of the habilitations "
                                "for this dataset (no consumer is named).", "items": {
                                    "type": "object", "properties": {"type": {"type": "string"},
                                                                     "title": {"type": "string"},
                                                                     "url": {"type": "string"}}}},
            },
        }},
    },
}

_SIG_HEADERS = {
    "Signature-Input": {"schema": {"type": "string"}, "description": "RFC 9421, by the broker's key."},
    "Signature": {"schema": {"type": "string"}},
    "Content-Digest": {"schema": {"type": "string"}, "description": "RFC 9530 sha-256 of the body."},
}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "headers": _SIG_HEADERS,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


_RATE_LIMIT_HEADERS = {
    "RateLimit-Policy": {"description": "draft-ietf-httpapi-ratelimit-headers: the quotas this exchange counts "
                                        "against, e.g. `\"consumer\";q=1200;w=60, \"habilitation\";q=100;w=60`",
                         "schema": {"type": "string"}},
    "RateLimit": {"description": "what is left of each, and seconds to its reset: `\"consumer\";r=1100;t=30`",
                  "schema": {"type": "string"}},
}


def _quota_problem() -> dict[str, Any]:
    """429: a quota (with the RateLimit fields), or an address turned away after too many unauthenticated refusals;
    both say when to come back in Retry-After."""
    answer = _problem("quota-exceeded, or too-many-attempts (an address that caused too many refusals before any "
                      "signature verified)")
    answer["headers"] = {**answer.get("headers", {}), **_RATE_LIMIT_HEADERS,
                         "Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}
    return answer


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "headers": _SIG_HEADERS,
            "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _query(name: str, description: str, *, required: bool = True, minimum: int = 0) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": {"type": "integer", "minimum": minimum, "maximum": 2**63 - 1}}


_LOGGED_AT = {"name": "logged_at", "in": "query", "required": False,
              "description": "the entry's logged_at, verbatim as in its receipt or journal (compared to the "
                             "microsecond: a millisecond spelling such as JavaScript's toISOString() matches nothing, "
                             "404); needed when several entries share the id, queued or pruned ones included (400 "
                             "otherwise)",
              "schema": {"type": "string", "format": "date-time"}}


def _note(description: str) -> dict[str, Any]:
    return {"description": description, "headers": _SIG_HEADERS,
            "content": {"text/plain": {"schema": {"type": "string"}}}}


def _log_paths() -> dict[str, Any]:
    """The transparency log (broker/tlog/routes.py): public proofs and checkpoints, signed entries and journal."""
    signed: dict[str, Any] = {"security": [{"httpMessageSignature": []}]}
    refused = {"401": _problem("signature-rejected"), "403": _problem("not-authorized"),
               "429": _problem("too-many-attempts: an address that caused too many refusals before any signature "
                               "verified (Retry-After)")}
    return {
        "/v1/log": {"get": {
            "operationId": "logInfo", "summary": "The log's origin, note verifier key and maximum merge delay",
            "responses": {"200": _json("Log description", {"type": "object", "properties": {
                "origin": {"type": "string"}, "verifier_key": {"type": "string"},
                "max_merge_delay": {"type": "integer"}, "tree_size": {"type": "integer"},
                "inclusion_promise_format": {"type": "string"}, "tiles_prefix": {"type": "string"},
                "public_entries_from": {"type": "integer", "description": "first index entry bundles are served from"},
                "witnesses": {"type": "array", "items": {"type": "string"},
                              "description": "the witnesses' cosignature verifier keys (C2SP tlog-cosignature)"},
                "witness_quorum": {"type": "integer"}, "tlog_proof_format": {"type": "string"}}})}}},
        "/v1/log/checkpoint": {"get": {
            "operationId": "latestCheckpoint", "summary": "The latest signed checkpoint (C2SP tlog-checkpoint)",
            "responses": {"200": _note("Signed note"), "404": _problem("not-found")}}},
        "/v1/log/checkpoints": {"get": {
            "operationId": "listCheckpoints", "summary": "Every signed checkpoint from a size on, smallest first",
            "parameters": [_query("start", "smallest size", required=False),
                           _query("limit", "at most 1000", required=False, minimum=1)],
            "responses": {"200": _json("Checkpoints", {"type": "object", "properties": {"checkpoints": {
                "type": "array", "items": {"type": "object", "properties": {
                    "size": {"type": "integer"}, "note": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"}}}}}}),
                "400": _problem("invalid-request")}}},
        "/v1/log/checkpoints/{size}": {"get": {
            "operationId": "checkpointAt", "summary": "The signed checkpoint of one tree size",
            "parameters": [{"name": "size", "in": "path", "required": True,
                            "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}}],
            "responses": {"200": _note("Signed note"), "400": _problem("invalid-request"),
                          "404": _problem("not-found")}}},
        "/v1/log/proof/inclusion": {"get": {
            "operationId": "inclusionProof", "summary": "RFC 9162 inclusion proof of a leaf in a published tree",
            "parameters": [_query("index", "leaf index"), _query("tree_size", "tree size", minimum=1)],
            "responses": {"200": _json("Proof, bottom up", {"type": "object", "properties": {
                "index": {"type": "integer"}, "tree_size": {"type": "integer"}, "inclusion_proof": _PROOF}}),
                "400": _problem("invalid-request")}}},
        "/v1/log/proof/consistency": {"get": {
            "operationId": "consistencyProof", "summary": "RFC 9162 consistency proof between two published trees",
            "parameters": [_query("first", "older size", minimum=1), _query("second", "newer size", minimum=1)],
            "responses": {"200": _json("Proof", {"type": "object", "properties": {
                "first": {"type": "integer"}, "second": {"type": "integer"}, "consistency_proof": _PROOF}}),
                "400": _problem("invalid-request")}}},
        "/v1/log/entries": {"get": {
            "operationId": "logEntries", **signed,
            "summary": "Entries [start, end) with their stored leaf hashes, for auditors (DLNUF_LOG_AUDITORS)",
            "parameters": [_query("start", "first index"), _query("end", "index after the last (at most 1000)")],
            "responses": {"200": _json("Entries; a pruned entry has `entry` null and its tombstone in `pruned`"),
                          "400": _problem("invalid-request"), **refused}}},
        "/v1/log/entries/{entry_id}/proof": {"get": {
            "operationId": "entryProof", "summary": "An entry's inclusion proof, with the signed checkpoint",
            "parameters": [{"name": "entry_id", "in": "path", "required": True,
                            "schema": {"type": "string", "format": "uuid"}},
                           _query("tree_size", "default: the latest checkpoint's", required=False, minimum=1),
                           _LOGGED_AT],
            "responses": {"200": _json("Proof", {"type": "object", "properties": {
                "entry_id": {"type": "string"}, "index": {"type": "integer"}, "tree_size": {"type": "integer"},
                "leaf_hash": _B64_HASH, "inclusion_proof": _PROOF, "checkpoint": {"type": ["string", "null"]}}}),
                "400": _problem("invalid-request"),
                "404": _problem("not-found: unknown entry, or not integrated yet (retry after the merge delay)")}}},
        "/v1/log/entries/{entry_id}/tlog-proof": {"get": {
            "operationId": "entryTlogProof",
            "summary": "An entry's offline proof (C2SP tlog-proof@v1): index, inclusion proof, cosigned checkpoint",
            "description": "The checkpoint is the latest the witness quorum cosigned; for a v2 entry the `extra` "
                           "line is its public leaf. Verify with `python -m broker log verify-proof`.",
            "parameters": [{"name": "entry_id", "in": "path", "required": True,
                            "schema": {"type": "string", "format": "uuid"}},
                           _query("tree_size", "default: the latest witnessed checkpoint's", required=False,
                                  minimum=1), _LOGGED_AT],
            "responses": {"200": _note("The .tlog-proof file"), "400": _problem("invalid-request"),
                          "404": _problem("not-found: unknown entry, or not integrated yet")}}},
        "/v1/log/tile/{level}/{rest}": {"get": {
            "operationId": "logTile",
            "summary": "C2SP tlog-tiles: a hash tile (level 0-63) or an entry bundle (level `entries`), immutable",
            "description": "`rest` is the tile index in 3-digit path elements (`x001/234`), with `.p/<width>` for "
                           "a partial tile. Entry bundles hold the v2 public leaves, each prefixed by its length "
                           "(uint16); bundles holding a v1 leaf are not public (see `public_entries_from` at "
                           "`/v1/log`).",
            "parameters": [{"name": "level", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "rest", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The tile's bytes", "headers": _SIG_HEADERS,
                                  "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                      "format": "binary"}}}},
                          "404": _problem("not-found: not a canonical tile path, not in the published tree, or "
                                          "an entry bundle holding v1 entries")}}},
        "/v1/journal": {"post": {
            "operationId": "citizenJournal", **signed,
            "summary": "A citizen's entries with a proof each and the checkpoint, for DLNUF_JOURNAL_CLIENTS",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/JournalRequest"}}}},
            "responses": {
                "200": {"description": "JSON, or CSV with `format: csv`", "headers": _SIG_HEADERS, "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/csv": {"schema": {"type": "string"}}}},
                "400": _problem("invalid-request or invalid-subject"), **refused}}},
    }


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "headers": _SIG_HEADERS,
            "content": {"text/html": {"schema": {"type": "string"}}}}


def _redirect(description: str) -> dict[str, Any]:
    return {"description": description,
            "headers": {**_SIG_HEADERS, "Location": {"schema": {"type": "string"}, "description": "Where to go."}}}


def _citizen_login_paths() -> dict[str, Any]:
    """Citizen login (OpenID Connect, FranceConnect): browser routes, present when DLNUF_OIDC_* is configured.
    Refusals are French HTML pages that do not say which check failed."""
    query = {"in": "query", "required": False, "schema": {"type": "string"}}
    return {
        "/citizen/login": {"get": {
            "operationId": "citizenLogin", "tags": ["citizen login"],
            "summary": "Log a citizen in with FranceConnect, then come back to `next`",
            "parameters": [{"name": "next", **query, "description": "A local path (with its query) to come back "
                            "to, e.g. `/oauth/authorize?...` URL-encoded; anything else lands on `/citizen/`."}],
            "responses": {
                "302": _redirect("To the OP's authorization endpoint (state, nonce, PKCE S256, acr_values=eidas1), "
                                 "with a short-lived sealed login cookie; or straight to `next` when logged in."),
                "502": _html("The OP could not be reached."),
            },
        }},
        "/citizen/callback": {"get": {
            "operationId": "citizenCallback", "tags": ["citizen login"],
            "summary": "The OP's redirect back: checks the state, redeems the code, verifies the id_token",
            "parameters": [{"name": name, **query} for name in ("code", "state", "error", "error_description")],
            "responses": {
                "302": _redirect("Logged in: to `next`, with the `dlnuf_session` cookie (HttpOnly, SameSite=Lax, "
                                 "Secure over TLS)."),
                "400": _html("Cancelled, state not from this browser or expired, or code already used."),
                "502": _html("The OP failed, or its id_token or userinfo did not verify."),
            },
        }},
        "/citizen/logout": {"post": {
            "operationId": "citizenLogout", "tags": ["citizen login"],
            "summary": "End the citizen's session here and at the OP",
            "requestBody": {"required": False, "content": {"application/x-www-form-urlencoded": {"schema": {
                "type": "object", "properties": {"csrf": {"type": "string"}}}}}},
            "parameters": [{"name": "X-CSRF-Token", "in": "header", "required": False,
                            "schema": {"type": "string"}, "description": "Or the form field `csrf`."}],
            "responses": {
                "303": _redirect("To the OP's end_session_endpoint, which comes back to `/citizen/logged-out`."),
                "403": _html("The session's CSRF token is missing or wrong: nothing happened."),
            },
        }},
        "/citizen/logged-out": {"get": {
            "operationId": "citizenLoggedOut", "tags": ["citizen login"], "summary": "Where the OP logout returns",
            "parameters": [{"name": "state", **query}],
            "responses": {"200": _html("The citizen is logged out.")},
        }},
        "/citizen/jwks.json": {"get": {
            "operationId": "citizenRelyingPartyJwks", "tags": ["citizen login"],
            "summary": "The relying party's public keys, to register at the OP as jwks_uri",
            "description": "The key signing private_key_jwt assertions (DLNUF_OIDC_TOKEN_AUTH=private_key_jwt) and "
                           "the keys the OP encrypts id_tokens and userinfo to (DLNUF_OIDC_ENCRYPTION_ALGS, "
                           "FranceConnect+); an empty set when neither is configured.",
            "responses": {"200": _json("JWK Set, public members only")},
        }},
    }


def _portal_paths() -> dict[str, Any]:
    """"Mes données", the citizen portal (`broker.portal`): HTML pages, present with citizen login. Without a session
    every page redirects to the login and every POST answers 403 (a redirect would drop the form); every POST needs
    the session's CSRF token (form field `csrf`)."""
    login = _redirect("Not logged in: to the login, which comes back here.")
    query = {"in": "query", "required": False, "schema": {"type": "string"}}
    filters = [{"name": "du", **query, "description": "First day (YYYY-MM-DD, Paris time), included."},
               {"name": "au", **query, "description": "Last day (YYYY-MM-DD, Paris time), included."},
               {"name": "administration", **query, "description": "Consumer SIRET."},
               {"name": "donnees", **query, "description": "Dataset id."}]
    item = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}]
    form = {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
        "type": "object", "required": ["csrf"], "properties": {"csrf": {"type": "string"}}}}}}
    changed = {"303": _redirect("Done: back to the list, which says so."),
               "403": _html("Not logged in (the session ended: a page offers to log in again), or the session's "
                            "CSRF token is missing or wrong: nothing happened."),
               "404": _html("Unknown, or another citizen's.")}

    def page(operation: str, summary: str, **extra: Any) -> dict[str, Any]:
        responses = {"200": _html(summary), "302": login}
        if "parameters" in extra and any(p["in"] == "path" for p in extra["parameters"]):
            responses["404"] = _html("Unknown, or another citizen's (logged in or not, an id that is not a UUID).")
        return {"get": {"operationId": operation, "tags": ["citizen portal"], "summary": summary, **extra,
                        "responses": responses}}

    def export(operation: str, media: str) -> dict[str, Any]:
        return {"get": {"operationId": operation, "tags": ["citizen portal"], "parameters": filters,
                        "summary": f"The journal as a {media} download, with the same filters",
                        "responses": {"200": {"description": "An attachment.", "content": {media: {}}},
                                      "302": login}}}

    return {
        "/citizen/": {"get": {"operationId": "portalHome", "tags": ["citizen portal"],
                              "summary": "The portal's home: for a visitor, what it is and the FranceConnect button; "
                                         "for a citizen, who is logged in, until when, where to go",
                              "responses": {"200": _html("The login page, or the citizen's home.")}}},
        "/citizen/journal/verification": page("portalVerification", "What the in-browser verification of the "
                                              "journal proves and does not, in plain French, with the log's key"),
        "/citizen/journal": page("portalJournal", "Every access to the citizen's data, newest first, with the "
                                 "materials to verify each entry in the browser", parameters=filters),
        "/citizen/journal.csv": export("portalJournalCsv", "text/csv"),
        "/citizen/journal.json": export("portalJournalJson", "application/json"),
        "/citizen/consentements": page("portalConsents", "The citizen's consents by state"),
        "/citizen/consentements/{id}/retrait": {
            **page("portalRevokeConfirm", "Confirm the revocation of a consent", parameters=item),
            "post": {"operationId": "portalRevoke", "tags": ["citizen portal"], "summary": "Revoke a consent",
                     "parameters": item, "requestBody": form, "responses": changed}},
        "/citizen/consentements/{id}/recu": page("portalReceipt", "A consent's receipt as a page to read and print, "
                                                 "with the signed receipt to download or verify in the browser",
                                                 parameters=item),
        "/citizen/oppositions": {
            **page("portalObjections", "The proactive exchanges the citizen may object to, and their objections"),
            "post": {"operationId": "portalObject", "tags": ["citizen portal"],
                     "summary": "Object to a proactive exchange (consumer and dataset of a proactive habilitation)",
                     "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
                         "type": "object", "required": ["csrf", "consumer", "dataset"], "properties": {
                             "csrf": {"type": "string"}, "consumer": {"type": "string"},
                             "dataset": {"type": "string"}}}}}},
                     "responses": changed}},
        "/citizen/oppositions/{id}/retrait": {"post": {
            "operationId": "portalWithdrawObjection", "tags": ["citizen portal"], "summary": "Withdraw an objection",
            "parameters": item, "requestBody": form, "responses": changed}},
    }


def _notification_paths() -> dict[str, Any]:
    """Citizens' e-mail notifications (`broker.citizen.portal.notifications`), present with citizen login and an SMTP
    relay. The settings need the session (CSRF on the POST); the links in mails need only their signed token."""
    token = [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "The signed token of the link in the mail (one subscription, one action)."}]
    gone = _html("Unknown, forged, used or expired link: nothing happened.")
    return {
        "/citizen/notifications": {
            "get": {"operationId": "notificationSettings", "tags": ["citizen portal"],
                    "summary": "The citizen's choice of e-mails: each access, weekly, or never, and the address",
                    "responses": {"200": _html("The settings."), "302": _redirect("Not logged in: to the login.")}},
            "post": {"operationId": "chooseNotifications", "tags": ["citizen portal"],
                     "summary": "Record the choice; an address other than FranceConnect's gets a confirmation mail",
                     "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
                         "type": "object", "required": ["csrf", "mode"], "properties": {
                             "csrf": {"type": "string"}, "mode": {"enum": ["each", "weekly", "none"]},
                             "adresse": {"type": "string", "format": "email"}}}}}},
                     "responses": {"303": _redirect("Recorded: back to the settings, which say so."),
                                   "400": _html("The address or the choice is wrong: the form says what to fix."),
                                   "403": _html("Not logged in (the session ended), or the session's CSRF "
                                                "token is missing or wrong: nothing happened.")}}},
        "/citizen/notifications/confirmer/{token}": {
            "get": {"operationId": "confirmAddressPage", "tags": ["mail links"], "parameters": token,
                    "summary": "A button to confirm an address (a GET confirms nothing: link scanners fetch links)",
                    "responses": {"200": _html("The confirmation page."), "404": gone}},
            "post": {"operationId": "confirmAddress", "tags": ["mail links"], "parameters": token,
                     "summary": "Confirm the address, without logging in",
                     "responses": {"200": _html("Confirmed."), "404": gone}}},
        "/citizen/notifications/desabonnement/{token}": {
            "get": {"operationId": "unsubscribePage", "tags": ["mail links"], "parameters": token,
                    "summary": "A button to unsubscribe", "responses": {"200": _html("The page."), "404": gone}},
            "post": {"operationId": "unsubscribe", "tags": ["mail links"], "parameters": token,
                     "summary": "Unsubscribe without logging in (also RFC 8058 one-click, List-Unsubscribe=One-Click)",
                     "responses": {"200": _html("Unsubscribed: the address and the queued mails are deleted."),
                                   "404": gone}}},
    }


def _site_paths() -> dict[str, Any]:
    """The pages every French public service carries (`broker.citizen.site`): no session needed. A browser's 404 or
    405 anywhere is a French HTML page too (its `Accept` asks for text/html first); API clients get problems."""

    def page(operation: str, summary: str) -> dict[str, Any]:
        return {"get": {"operationId": operation, "tags": ["site"], "summary": summary,
                        "responses": {"200": _html(summary)}}}

    def icon(operation: str, *media: str) -> dict[str, Any]:
        return {"get": {"operationId": operation, "tags": ["site"], "summary": "The site's icon",
                        "responses": {"200": {"description": "The icon (the DSFR's when installed, else the "
                                                             "broker's own SVG, which browsers read there too).",
                                              "content": {m: {} for m in media}}}}}

    return {
        "/mentions-legales": page("legalNotice", "Mentions légales: who publishes and hosts the service"),
        "/donnees-personnelles": page("personalData", "Personal data: controller, purposes, retention, cookies, "
                                      "rights"),
        "/accessibilite": page("accessibilityStatement", "The accessibility statement (RGAA)"),
        "/favicon.svg": icon("faviconSvg", "image/svg+xml"),
        "/favicon.ico": icon("faviconIco", "image/x-icon", "image/svg+xml"),
    }


_CLIENT_AUTH = (
    "Client authentication: private_key_jwt only (RFC 7523), a JWT signed by one of the client's registry keys: "
    "`iss` and `sub` the client_id; `aud` the issuer identifier, this endpoint's URL or the token endpoint's "
    "(only the issuer, as a string, with DLNUF_CLIENT_ASSERTION_AUDIENCE=issuer, as FAPI 2.0 wants); "
    "`typ` absent, `JWT` or `client-authentication+jwt`; `alg` `Ed25519` or `EdDSA` (Ed25519 keys), `ES256` "
    "(P-256 keys); `kid` optional (without it, each of the client's live keys is tried); `exp` at most "
    "DLNUF_CLIENT_ASSERTION_MAX_LIFETIME seconds ahead (default 3600); `jti` never used before. A refused client "
    "gets 400 invalid_client (401 with a challenge only if it tried the Authorization header).")


def _consent_paths() -> dict[str, Any]:
    """The consent flow (OAuth 2.0 + PKCE + RFC 9396 + RFC 7523) and the citizen's JSON API, present with citizen
    login."""
    query = {"in": "query", "required": False, "schema": {"type": "string"}}
    oauth_error = {"description": "RFC 6749 error", "headers": _SIG_HEADERS, "content": {"application/json": {
        "schema": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "string"}, "error_description": {"type": "string"}}}}}}
    csrf = [{"name": "X-CSRF-Token", "in": "header", "required": True, "schema": {"type": "string"}}]
    oauth_401 = {**oauth_error, "description": "invalid_client, only when the client tried the Authorization "
                                                  "header: with a WWW-Authenticate challenge of its scheme"}

    def client_form(*names: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "required": ["client_assertion_type", "client_assertion"],
            "properties": {n: {"type": "string"} for n in (
                *names, "client_id", "client_assertion_type", "client_assertion")}}}}}

    citizen = {"401": _problem("citizen-login-required"), "404": _problem("not-found: not this citizen's")}
    consent_id = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}]
    return {
        "/oauth/authorize": {"get": {
            "operationId": "oauthAuthorize", "tags": ["consent"],
            "summary": "Start a consent: code flow, PKCE S256 only, authorization_details of type dlnuf_exchange",
            "description": "With the request's parameters, or with `client_id` and the `request_uri` a pushed "
                           "authorization request returned (RFC 9126; the only way when "
                           "`require_pushed_authorization_requests` is true in the metadata). Every redirect to the "
                           "client carries `iss` (RFC 9207).",
            "parameters": [{"name": n, **query} for n in (
                "response_type", "client_id", "redirect_uri", "state", "code_challenge", "code_challenge_method",
                "authorization_details", "request_uri")],
            "responses": {
                "302": _redirect("To the consent screen; or back to the client with an OAuth error "
                                 "(invalid_request, unsupported_response_type, invalid_authorization_details, "
                                 "request_not_supported)."),
                "400": _html("Unknown client, unregistered redirect URI, or a request_uri unknown, used, expired or "
                             "another client's: an error page, never a redirect."),
            }}},
        "/oauth/consent/{id}": {
            "get": {"operationId": "consentScreen", "tags": ["consent"],
                    "summary": "The consent screen: who, what, why, basis, duration, and a preview of the values",
                    "parameters": consent_id,
                    "responses": {"200": _html("The consent screen."), "302": _redirect("To the citizen login."),
                                  "404": _html("Unknown, expired or already decided.")}},
            "post": {"operationId": "consentDecision", "tags": ["consent"],
                     "summary": "The citizen's decision (accept with the fields kept ticked, or refuse)",
                     "parameters": consent_id,
                     "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
                         "schema": {"type": "object", "properties": {
                             "csrf": {"type": "string"}, "decision": {"enum": ["accept", "refuse"]},
                             "fields": {"type": "array", "items": {"type": "string"}}}}}}},
                     "responses": {"302": _redirect("Back to the client with `code` or `error=access_denied`."),
                                   "403": _html("Not logged in (the session ended), CSRF check failed, or another "
                                                "browser."),
                                   "404": _html("Expired or decided."),
                                   "409": _html("Already decided.")}}},
        "/oauth/token": {"post": {
            "operationId": "oauthToken", "tags": ["consent"],
            "summary": "Code or refresh token -> access token (RFC 9068) bound to the consent and the client's key",
            "description": _CLIENT_AUTH,
            "requestBody": client_form("grant_type", "code", "redirect_uri", "code_verifier", "refresh_token"),
            "responses": {"200": _json("access_token, token_type, expires_in, authorization_details, "
                                       "refresh_token (periodic consents)"),
                          "400": oauth_error, "401": oauth_401}}},
        "/oauth/par": {"post": {
            "operationId": "oauthPushedAuthorizationRequest", "tags": ["consent"],
            "summary": "RFC 9126: push an authorization request's parameters, get a request_uri for the browser",
            "description": "The body holds the parameters `/oauth/authorize` takes (checked the same way, at once) "
                           "and the client authentication. " + _CLIENT_AUTH,
            "requestBody": client_form("response_type", "redirect_uri", "state", "code_challenge",
                                       "code_challenge_method", "authorization_details"),
            "responses": {"201": _json("request_uri (urn:ietf:params:oauth:request_uri:…), expires_in (s): "
                                       "single use"),
                          "400": oauth_error, "401": oauth_401}}},
        "/.well-known/oauth-authorization-server": {"get": {
            "operationId": "oauthMetadata", "tags": ["consent"],
            "summary": "RFC 8414 authorization server metadata of the consent flow",
            "responses": {"200": _json("issuer, endpoints, require_pushed_authorization_requests, "
                                       "authorization_details_types_supported, code_challenge_methods_supported, "
                                       "token_endpoint_auth_methods_supported and signing algorithms, …")}}},
        "/.well-known/openid-configuration": {"get": {
            "operationId": "oauthMetadataOpenId", "tags": ["consent"],
            "summary": "The same RFC 8414 document, where OpenID-first clients look (the broker issues no id_token)",
            "responses": {"200": _json("As /.well-known/oauth-authorization-server")}}},
        "/citizen/api/consents": {"get": {
            "operationId": "myConsents", "tags": ["citizen"], "summary": "My consents, every state",
            "responses": {"200": _json("consents"), **citizen}}},
        "/citizen/api/consents/{id}": {"get": {
            "operationId": "myConsent", "tags": ["citizen"], "summary": "One consent with its events",
            "parameters": consent_id, "responses": {"200": _json("consent"), **citizen}}},
        "/citizen/api/consents/{id}/revoke": {"post": {
            "operationId": "revokeConsent", "tags": ["citizen"],
            "summary": "Revoke: effective for the next exchange, on every broker process",
            "parameters": consent_id + csrf,
            "responses": {"200": _json("revoked"), "409": _json("not active"), "403": _problem("csrf-failed"),
                          **citizen}}},
        "/citizen/api/consents/{id}/receipt": {"get": {
            "operationId": "consentReceipt", "tags": ["citizen"],
            "summary": "The signed consent receipt (JWS, verify with /.well-known/jwks.json)",
            "parameters": consent_id,
            "responses": {"200": {"description": "compact JWS", "headers": _SIG_HEADERS,
                                  "content": {"application/jwt": {"schema": {"type": "string"}}}}, **citizen}}},
        "/citizen/api/objections": {
            "get": {"operationId": "myObjections", "tags": ["citizen"],
                    "summary": "My objections, and the proactive exchanges I can object to",
                    "responses": {"200": _json("objections, proactive_exchanges"), **citizen}},
            "post": {"operationId": "object", "tags": ["citizen"], "summary": "Object (to a consumer, a dataset)",
                     "parameters": csrf,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "properties": {"consumer": {"type": "string"},
                                                          "dataset": {"type": "string"}}}}}},
                     "responses": {"201": _json("created"), "200": _json("already there"),
                                   "400": _problem("invalid-request"), "403": _problem("csrf-failed"),
                                   **citizen}}},
        "/citizen/api/objections/{id}": {"delete": {
            "operationId": "withdrawObjection", "tags": ["citizen"], "summary": "Withdraw an objection",
            "parameters": consent_id + csrf,
            "responses": {"200": _json("deleted"), "403": _problem("csrf-failed"), **citizen}}},
    }


@cache
def openapi_document() -> dict[str, Any]:
    problems = "\n".join(f"- `{p.uri}` ({p.status}): {p.description}" for p in all_problem_types())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DLNUF broker",
            "version": "0.1.0",
            "description": (
                "Dites-le-nous une fois: administrations exchange citizens' data through a broker that checks "
                "every request's RFC 9421 signature and habilitation, validates providers' answers, logs every "
                "attempt before releasing anything, and signs every response.\n\n"
                "Every request to `/v1/exchanges` must be signed (RFC 9421) with `created`, `keyid` and `nonce`, "
                "covering `@method`, `@target-uri` (or `@authority`, `@path`, `@query`) and `content-digest` "
                "(RFC 9530). Every response is signed by the broker's key (`/.well-known/jwks.json`), covering "
                "`@status`, `content-digest`, `content-type` and, for verified requests, the request's signature "
                "(`\"signature\";req`).\n\nProblem types (RFC 9457):\n" + problems
            ),
            "license": {"name": "EUPL-1.2", "identifier": "EUPL-1.2"},
        },
        "components": {
            "schemas": {"ExchangeRequest": _EXCHANGE_REQUEST, "ExchangeResponse": _EXCHANGE_RESPONSE,
                        "Problem": _PROBLEM, "Catalogue": _CATALOGUE, "LogReceipt": _LOG_RECEIPT,
                        "JournalRequest": _JOURNAL_REQUEST},
            "securitySchemes": {"httpMessageSignature": {
                "type": "apiKey", "in": "header", "name": "Signature",
                "description": "RFC 9421 HTTP Message Signature with Signature-Input; keys in the registry."}},
        },
        "paths": {
            "/v1/exchanges": {"post": {
                "operationId": "exchange",
                "summary": "Ask a provider's data about a citizen, through the broker",
                "security": [{"httpMessageSignature": []}],
                "parameters": [
                    {"name": "Signature-Input", "in": "header", "required": True, "schema": {"type": "string"}},
                    {"name": "Signature", "in": "header", "required": True, "schema": {"type": "string"}},
                    {"name": "Content-Digest", "in": "header", "required": True, "schema": {"type": "string"}},
                ],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ExchangeRequest"}}}},
                "responses": {
                    "200": {**_json("Released: the data, after its access-log entry was committed.",
                                    {"$ref": "#/components/schemas/ExchangeResponse"}),
                            "headers": {**_SIG_HEADERS, **_RATE_LIMIT_HEADERS}},
                    "400": _problem("invalid-request or invalid-subject"),
                    "401": _problem("signature-rejected (with `WWW-Authenticate: Signature` and RFC 9421 "
                                    "`Accept-Signature`) or invalid-token (with `WWW-Authenticate: Bearer "
                                    "error=\"invalid_token\"`, RFC 6750)"),
                    "403": _problem("not-authorized or legal-basis-refused"),
                    "404": _problem("unknown-dataset or subject-not-found"),
                    "409": _problem("identity-ambiguous"),
                    "413": _problem("body-too-large"),
                    "415": _problem("unsupported-media-type"),
                    "422": _problem("provider-rejected-query"),
                    "429": _quota_problem(),
                    "431": _problem("header-too-large"),
                    "502": _problem("provider-unavailable, provider-misconfigured, provider-answer-malformed or "
                                    "provider-answer-invalid"),
                    "503": _problem("log-unavailable or service-unavailable: nothing was released"),
                    "504": _problem("provider-timeout"),
                },
            }},
            "/healthz": {"get": {"operationId": "healthz", "summary": "Liveness",
                                 "responses": {"200": _json("Alive")}}},
            "/v1/catalogue": {"get": {
                "operationId": "catalogue",
                "summary": "Datasets, versions, fields, providers and the legal bases they can be requested under",
                "responses": {"200": _json("The catalogue (public, no consumer named).",
                                           {"$ref": "#/components/schemas/Catalogue"})},
            }},
            "/v1/schemas/{dataset}.v{version}.json": {"get": {
                "operationId": "datasetSchema",
                "summary": "A dataset version's JSON Schema (2020-12)",
                "parameters": [
                    {"name": "dataset", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"}},
                    {"name": "version", "in": "path", "required": True,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 999}},
                ],
                "responses": {
                    "200": {"description": "The schema file as published", "headers": _SIG_HEADERS,
                            "content": {"application/schema+json": {"schema": {"type": "object"}}}},
                    "404": _problem("unknown-dataset"),
                },
            }},
            "/readyz": {"get": {"operationId": "readyz",
                                "summary": "Readiness: database reachable; each provider's circuit breaker state, "
                                           "or why its adapter could not be built",
                                "responses": {"200": _json("Ready (`status` ready), or degraded: some providers "
                                                           "cannot serve (`checks.providers` names them)"),
                                              "503": _json("Not ready: the database is unreachable")}}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics (no personal data)",
                                 "responses": {"200": {"description": "Prometheus text format", "headers": _SIG_HEADERS,
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                      "responses": {"200": _json("OpenAPI 3.1")}}},
            "/.well-known/jwks.json": {"get": {
                "operationId": "jwks", "summary": "The broker's public keys (response signatures)",
                "responses": {"200": _json("JWK Set")}}},
            **_log_paths(),
            **_citizen_login_paths(),
            **_consent_paths(),
            **_portal_paths(),
            **_site_paths(),
            **_notification_paths(),
        },
        "x-problem-base": PROBLEM_BASE,
        "x-datasets": {k: list(v) for k, v in schemas.catalogue().items()},
    }
