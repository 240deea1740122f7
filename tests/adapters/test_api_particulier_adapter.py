"""The API Particulier adapter against the sandbox (and a few tiny upstream stand-ins) over real HTTP."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import schemas
from adapters import registry
from adapters.api_particulier import (
    CNOUS,
    DSS,
    GIP_MDS,
    MESRI,
    SUPPORTED_DATASETS,
    ApiParticulierAdapter,
    CivilStyle,
    civil_status_params,
)
from adapters.base import (
    AdapterQuery,
    IdentityAmbiguous,
    ProviderAnswerMalformed,
    ProviderMisconfigured,
    ProviderRateLimited,
    ProviderRejectedQuery,
    ProviderTimeout,
    ProviderUnavailable,
    SubjectNotFound,
)
from adapters.identity import PivotIdentity
from adapters.sandbox import directory
from adapters.sandbox.api_particulier import create_app
from adapters.subjects import ProviderIdentifier, Subject
from schemas.validation import InvalidParameters, Validators

TOKEN = "adapter-test-token"
RECIPIENT = "13002526500013"
# v1 of each (statut_etudiant v1 keeps identite, which these tests check); Cnous /v4 with identite (v2)
ALL = {**{d: 1 for d in SUPPORTED_DATASETS}, "etudiant_boursier": 2}

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
MakeAdapter = Callable[..., ApiParticulierAdapter]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def sandbox_url(aiohttp_server: ServerFactory) -> str:
    # The slow citizen takes 2 s here; adapters in the timeout test give up after 0.2 s.
    server = await aiohttp_server(create_app(TOKEN, slow_delay=2.0))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def make_adapter(session: aiohttp.ClientSession, sandbox_url: str) -> MakeAdapter:
    def make(*, base_url: str = sandbox_url, token: str = TOKEN, timeout: float = 3.0) -> ApiParticulierAdapter:
        return ApiParticulierAdapter(name="api-particulier", datasets=ALL, session=session, base_url=base_url,
                                     token=token, timeout=timeout)

    return make


def pivot(citizen_id: str) -> Subject:
    return directory().citizen(citizen_id).pivot


def query(dataset: str, subject: Subject, recipient: str = RECIPIENT, **parameters: int | str) -> AdapterQuery:
    return AdapterQuery(dataset=dataset, version=ALL.get(dataset, 1), subject=subject, fields=frozenset(),
                        request_id="test", recipient=recipient, parameters=parameters)


def assert_valid(dataset: str, document: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schemas.load(dataset, ALL[dataset])).validate(document)


# ------------------------------------------------------------------------------ identity parameters


def _pivot(**kw: Any) -> PivotIdentity:
    base = {"family_name": "Rousseau", "given_name": "Jean-Baptiste Louis Marie", "birthdate": "1979-07-02",
            "gender": "male", "birthplace": "69383", "birthcountry": "99100"}
    return PivotIdentity(**{**base, **kw})


def test_given_name_becomes_repeated_prenoms() -> None:
    params = civil_status_params(_pivot(), DSS)
    assert [v for k, v in params if k == "prenoms[]"] == ["Jean-Baptiste", "Louis", "Marie"]
    assert params == [("nomNaissance", "Rousseau"), ("prenoms[]", "Jean-Baptiste"), ("prenoms[]", "Louis"),
                      ("prenoms[]", "Marie"), ("anneeDateNaissance", "1979"), ("moisDateNaissance", "7"),
                      ("jourDateNaissance", "2"), ("sexeEtatCivil", "M"), ("codeCogInseePaysNaissance", "99100"),
                      ("codeCogInseeCommuneNaissance", "69383")]


def test_at_most_what_the_endpoint_takes() -> None:
    many = _pivot(given_name="Jean Pierre Paul Jacques")
    assert len([k for k, _ in civil_status_params(many, DSS) if k == "prenoms[]"]) == 3
    assert [v for k, v in civil_status_params(many, MESRI) if k == "prenoms[]"] == ["Jean"]
    assert "codeCogInseePaysNaissance" not in dict(civil_status_params(many, CNOUS))


@pytest.mark.parametrize(("birthdate", "sent"), [
    ("1980-00-00", {"anneeDateNaissance": "1980"}),
    ("1980-04-00", {"anneeDateNaissance": "1980", "moisDateNaissance": "4"}),
    ("1980-04-09", {"anneeDateNaissance": "1980", "moisDateNaissance": "4", "jourDateNaissance": "9"}),
])
def test_unknown_day_or_month_is_omitted(birthdate: str, sent: dict[str, str]) -> None:
    params = dict(civil_status_params(_pivot(birthdate=birthdate), DSS))
    assert {k: v for k, v in params.items() if "DateNaissance" in k} == sent


def test_partial_birthdate_cannot_go_where_a_full_date_is_required() -> None:
    for style in (MESRI, CNOUS):
        with pytest.raises(ProviderRejectedQuery):
            civil_status_params(_pivot(birthdate="1980-04-00"), style)


def test_born_abroad_sends_the_country_and_no_commune() -> None:
    params = dict(civil_status_params(_pivot(birthplace="", birthcountry="99350", gender="female"), DSS))
    assert params["codeCogInseePaysNaissance"] == "99350"
    assert "codeCogInseeCommuneNaissance" not in params
    assert params["sexeEtatCivil"] == "F"


def test_a_first_name_with_a_space_in_it_stays_one_first_name() -> None:
    """FranceConnect's given_name_array says « Marie Davida » is one first name: never split into two."""
    marie = _pivot(given_name="Marie Davida Awa", given_name_array=("Marie Davida", "Awa"))
    assert [v for k, v in civil_status_params(marie, DSS) if k == "prenoms[]"] == ["Marie Davida", "Awa"]
    assert [v for k, v in civil_status_params(marie, MESRI) if k == "prenoms[]"] == ["Marie Davida"]
    # without the array, FranceConnect's space-separated claim is all there is
    assert [v for k, v in civil_status_params(_pivot(given_name="Marie Davida"), MESRI) if k == "prenoms[]"] == \
        ["Marie"]


async def test_a_student_with_a_multi_word_first_name_is_found(make_adapter: MakeAdapter) -> None:
    kone = pivot("kone-marie-davida")
    document = await make_adapter().fetch(query("statut_etudiant", kone))
    assert_valid("statut_etudiant", document)
    # what a split first name sent: « Marie » alone, which is nobody's first name at MESRI
    split = PivotIdentity.from_json({**kone.to_json(), "given_name_array": []})
    with pytest.raises(SubjectNotFound):
        await make_adapter().fetch(query("statut_etudiant", split))


@pytest.mark.parametrize("style", [MESRI, CNOUS])
def test_born_abroad_at_mesri_and_cnous_sends_the_country_code_as_the_commune(style: CivilStyle) -> None:
    """These endpoints take no birth country: upstream expects the 99xxx code in codeCogInseeCommuneNaissance."""
    params = dict(civil_status_params(_pivot(birthplace="", birthcountry="99350"), style))
    assert params["codeCogInseeCommuneNaissance"] == "99350"
    assert "codeCogInseePaysNaissance" not in params
    assert dict(civil_status_params(_pivot(), style))["codeCogInseeCommuneNaissance"] == "69383"


def test_usage_name_is_sent_only_where_taken_and_when_different() -> None:
    assert dict(civil_status_params(_pivot(preferred_name="Dubois"), DSS))["nomUsage"] == "Dubois"
    assert "nomUsage" not in dict(civil_status_params(_pivot(preferred_name="Dubois"), MESRI))
    assert "nomUsage" not in dict(civil_status_params(_pivot(preferred_name="ROUSSEAU"), DSS))


def test_service_civique_takes_names_and_the_full_birth_date_only() -> None:
    # GIP-MDS's /identite declares no sex and no birthplace: sending them would be data it does not need
    sent = civil_status_params(_pivot(preferred_name="Dubois"), GIP_MDS)
    assert {name for name, _ in sent} == {"nomNaissance", "prenoms[]", "anneeDateNaissance", "moisDateNaissance",
                                         "jourDateNaissance"}


# ------------------------------------------------------------------------------ every dataset, end to end

CASES = [
    ("quotient_familial", "rousseau-jean-baptiste", lambda d: d["quotient_familial"]["valeur"] == 1045
     and len(d["enfants"]) == 3),
    ("quotient_familial", "berger-camille", lambda d: d["allocataires"][1]["nom_usage"] == "ROUSSEAU"),
    ("quotient_familial", "el-amrani-fatima-zahra", lambda d: d["allocataires"][0]["date_naissance"] == "1962-00-00"),
    ("quotient_familial", "fournier-gerard", lambda d: d["quotient_familial"]["fournisseur"] == "MSA"),
    ("quotient_familial", "lefevre-d-arc-helene", lambda d: d["quotient_familial"]["mois_calcul"] == 1),
    ("quotient_familial", "santoni-paul-antoine", lambda d: d["quotient_familial"]["valeur"] == 760),
    ("statut_etudiant", "moreau-lea", lambda d: len(d["admissions"]) == 2),
    ("statut_etudiant", "ndiaye-noel", lambda d: d["identite"]["nom_naissance"] == "N'DIAYE"),
    ("statut_etudiant", "haddad-ines", lambda d: d["admissions"][1]["regime_formation"]["code"] == "RF4"),
    ("etudiant_boursier", "ndiaye-noel", lambda d: d["echelon_bourse"]["echelon"] == "5"),
    ("etudiant_boursier", "bouaziz-yanis", lambda d: d["echelon_bourse"]["echelon_bourse_regionale_provisoire"]),
    ("complementaire_sante_solidaire", "lambert-thierry", lambda d: d["avec_participation"] is True),
    ("complementaire_sante_solidaire", "de-la-tour-d-auvergne-anne-sophie",
     lambda d: d == {"est_beneficiaire": False, "avec_participation": None, "date_debut_droit": None}),
    ("revenu_solidarite_active", "dupont-marie-claire", lambda d: d["avec_majoration"] is True),
    ("revenu_solidarite_active", "el-amrani-fatima-zahra", lambda d: d["date_debut_droit"] == "2021-09-01"),
    ("prime_activite", "haddad-ines", lambda d: d["est_beneficiaire"] is True),
    ("prime_activite", "coeur-chloe", lambda d: d["est_beneficiaire"] is False),
    ("allocation_adulte_handicape", "fournier-gerard", lambda d: d["date_debut_droit"] == "2010-06-01"),
    ("allocation_adulte_handicape", "dupont-marie-claire", lambda d: d["est_beneficiaire"] is False),
    ("allocation_enfant_handicape", "berger-camille", lambda d: d["status"] == "allocataire"),
    ("allocation_soutien_familial", "dupont-marie-claire", lambda d: d["est_beneficiaire"] is True),
    ("participation_familiale_eaje", "dupont-marie-claire",
     lambda d: d["allocataires"][0]["code_cog_insee_commune_naissance"] == "75114"
     and d["parametres_calcul_participation_familiale"]["base_ressources_annuelles"]["valeur"] == 28450),
    ("participation_familiale_eaje", "rousseau-jean-baptiste",
     lambda d: d["parametres_calcul_participation_familiale"]["nombre_enfants_beneficiaire_aeeh"] == 1
     and all(p["code_cog_insee_commune_naissance"] is None for p in d["enfants"])),
    ("service_civique", "moreau-lea", lambda d: d["statut_actuel"]["date_fin_contrat"] == "2026-05-31"),
    ("service_civique", "garnier-lucas",
     lambda d: d["statut_passe"]["contrat_trouve"] and d["statut_actuel"]["organisme_accueil"]["siret"] is None),
    ("service_national", "bouaziz-yanis", lambda d: d["statut_service_national"] == "en_regle"),
    ("service_national", "garnier-lucas", lambda d: d["commentaires"].startswith("Journée")),
]


@pytest.mark.parametrize(("dataset", "citizen_id", "check"), CASES, ids=[f"{d}-{c}" for d, c, _ in CASES])
async def test_pivot_identity_lookups(make_adapter: MakeAdapter, dataset: str, citizen_id: str,
                                      check: Callable[[dict[str, Any]], bool]) -> None:
    document = await make_adapter().fetch(query(dataset, pivot(citizen_id)))
    assert_valid(dataset, document)
    assert check(document)


@pytest.mark.parametrize(("dataset", "scheme", "value", "check"), [
    ("statut_etudiant", "ine", "123456789AB", lambda d: d["identite"]["prenom"] == "LÉA"),
    ("etudiant_boursier", "ine", "0912345678K", lambda d: d["identite"]["nom_commune_naissance"] == "SENEGAL"),
    ("statut_demandeur_emploi", "france_travail", "thierry.lambert",
     lambda d: d["inscription"]["categorie"]["code"] == 1 and d["inscription"]["date_fin"] is None),
    ("statut_demandeur_emploi", "france_travail", "s.oconnor", lambda d: d["identite"]["nom_usage"] == "DUBOIS"),
    ("statut_demandeur_emploi", "france_travail", "ahmed.benali70",
     lambda d: d["identite"]["date_naissance"] == "1970-04-00"),
    ("indemnites_france_travail", "france_travail", "thierry.lambert",
     lambda d: [p["montant_aides"] for p in d["paiements"]] == [0, 200.0]),
    ("indemnites_france_travail", "france_travail", "s.oconnor",
     lambda d: d["identifiant"] == "s.oconnor" and d["paiements"][0]["montant_autres"] == 100.0),
    ("statut_sportif", "sdh", "100234567", lambda d: d["est_sportif_de_haut_niveau"]
     and d["informations_statuts_precedents"][0]["categorie"]["nom_categorie"] == "Relève"),
    ("statut_sportif", "sdh", "100876543", lambda d: not d["est_sportif_de_haut_niveau"]
     and d["a_ete_sportif_de_haut_niveau"] and d["informations_statuts_precedents"] == []),
])
async def test_identifier_lookups(make_adapter: MakeAdapter, dataset: str, scheme: str, value: str,
                                  check: Callable[[dict[str, Any]], bool]) -> None:
    document = await make_adapter().fetch(query(dataset, ProviderIdentifier(scheme, value)))
    assert_valid(dataset, document)
    assert check(document)


async def test_homonyms_with_all_first_names_are_told_apart(make_adapter: MakeAdapter) -> None:
    a = await make_adapter().fetch(query("quotient_familial", pivot("martin-jean-pierre")))
    b = await make_adapter().fetch(query("quotient_familial", pivot("martin-jean-paul")))
    assert a["allocataires"][0]["prenoms"] == "JEAN PIERRE"
    assert b["allocataires"][0]["prenoms"] == "JEAN PAUL"


# ------------------------------------------------------------------------------ every fault


async def test_quotient_familial_of_a_given_month(make_adapter: MakeAdapter) -> None:
    """`annee` and `mois` reach upstream; the sandbox keeps one month per household and says 404 for another."""
    current = await make_adapter().fetch(query("quotient_familial", pivot("dupont-marie-claire")))
    qf = current["quotient_familial"]
    same = await make_adapter().fetch(query("quotient_familial", pivot("dupont-marie-claire"),
                                            annee=qf["annee"], mois=qf["mois"]))
    assert same == current
    with pytest.raises(SubjectNotFound):
        await make_adapter().fetch(query("quotient_familial", pivot("dupont-marie-claire"),
                                         annee=qf["annee"] - 1, mois=qf["mois"]))


@pytest.mark.parametrize("perimeter", [{"code_etablissement": "0440012K"}, {"code_bcn_departement": "044"},
                                       {"code_bcn_region": "17", "degre_etablissement": "2D"}],
                         ids=["school", "departement", "region"])
async def test_scolarites_by_school_year_and_perimeter(make_adapter: MakeAdapter, perimeter: dict[str, str]) -> None:
    """The school year and the one perimeter reach MEN; a pupil is found within it and that year only."""
    document = await make_adapter().fetch(query("scolarites", pivot("rousseau-lena"), annee_scolaire="2026-2027",
                                                **perimeter))
    assert_valid("scolarites", document)
    assert document["echelon_bourse"] == 2 and document["etablissement"]["code_uai"] == "0440012K"
    with pytest.raises(SubjectNotFound):
        await make_adapter().fetch(query("scolarites", pivot("rousseau-lena"), annee_scolaire="2025-2026",
                                         **perimeter))
    with pytest.raises(SubjectNotFound):
        await make_adapter().fetch(query("scolarites", pivot("rousseau-lena"), annee_scolaire="2026",
                                         code_bcn_departement="075"))


async def test_scolarites_without_a_perimeter_is_refused_upstream(make_adapter: MakeAdapter) -> None:
    # the broker refuses it first (x-parameters' oneOf); upstream's own 422 is the second line
    with pytest.raises(ProviderRejectedQuery):
        await make_adapter().fetch(query("scolarites", pivot("rousseau-hugo"), annee_scolaire="2026-2027"))
    with pytest.raises(ProviderRejectedQuery):
        await make_adapter().fetch(query("scolarites", pivot("rousseau-hugo"), annee_scolaire="2026-2027",
                                         code_etablissement="0440021V", code_bcn_region="17"))
    document = await make_adapter().fetch(query("scolarites", pivot("rousseau-hugo"), annee_scolaire="2026",
                                                code_etablissement="0440021V"))
    assert document["est_boursier"] is False and document["echelon_bourse"] is None


@pytest.mark.parametrize("parameters", [
    {}, {"annee_scolaire": "2026-2027"},
    {"annee_scolaire": "2026-2027", "code_etablissement": "0440012K", "code_bcn_region": "17"},
    {"annee_scolaire": "26-27", "code_etablissement": "0440012K"},
    {"annee_scolaire": "2026", "code_etablissement": "044001"},
], ids=["no-year", "no-perimeter", "two-perimeters", "bad-year", "bad-uai"])
def test_scolarites_parameters_are_checked_by_the_broker(parameters: dict[str, str]) -> None:
    with pytest.raises(InvalidParameters):
        Validators().verify_parameters("scolarites", 1, parameters)
    Validators().verify_parameters("scolarites", 1, {"annee_scolaire": "2026", "code_bcn_departement": "044"})


async def test_not_found(make_adapter: MakeAdapter) -> None:
    for dataset in ("quotient_familial", "statut_etudiant", "etudiant_boursier", "complementaire_sante_solidaire",
                    "revenu_solidarite_active", "prime_activite"):
        with pytest.raises(SubjectNotFound):
            await make_adapter().fetch(query(dataset, pivot("roche-bernard")))
    with pytest.raises(SubjectNotFound):
        await make_adapter().fetch(query("statut_demandeur_emploi",
                                         ProviderIdentifier("france_travail", "personne")))


async def test_known_to_one_provider_not_another(make_adapter: MakeAdapter) -> None:
    assert_valid("statut_etudiant", await make_adapter().fetch(query("statut_etudiant", pivot("garnier-lucas"))))
    with pytest.raises(SubjectNotFound):
        await make_adapter().fetch(query("etudiant_boursier", pivot("garnier-lucas")))


async def test_usage_name_sent_as_family_name_is_not_found(make_adapter: MakeAdapter) -> None:
    camille = directory().citizen("berger-camille").pivot
    wrong = PivotIdentity(**{**camille.to_json(), "family_name": "Rousseau"})
    with pytest.raises(SubjectNotFound):
        await make_adapter().fetch(query("quotient_familial", wrong))


async def test_ambiguous_homonyms(make_adapter: MakeAdapter) -> None:
    jean = PivotIdentity(**{**directory().citizen("martin-jean-pierre").pivot.to_json(), "given_name": "Jean"})
    with pytest.raises(IdentityAmbiguous):
        await make_adapter().fetch(query("quotient_familial", jean))
    # The MESR takes a single first name, so the twins cannot be told apart there at all.
    with pytest.raises(IdentityAmbiguous):
        await make_adapter().fetch(query("statut_etudiant", pivot("martin-jean-pierre")))


async def test_503(make_adapter: MakeAdapter) -> None:
    with pytest.raises(ProviderUnavailable, match="503 35001"):
        await make_adapter().fetch(query("quotient_familial", pivot("panne-indisponible")))
    with pytest.raises(ProviderUnavailable):
        await make_adapter().fetch(query("etudiant_boursier",
                                         ProviderIdentifier("ine", "0000000503A")))


async def test_upstream_intermediary_timeout(make_adapter: MakeAdapter) -> None:
    with pytest.raises(ProviderTimeout, match="504 35002"):
        await make_adapter().fetch(query("quotient_familial", pivot("panne-delai-amont")))


async def test_timeout_shorter_than_the_slow_citizen(make_adapter: MakeAdapter) -> None:
    with pytest.raises(ProviderTimeout):
        await make_adapter(timeout=0.2).fetch(query("quotient_familial", pivot("panne-lenteur")))


async def test_connection_refused(make_adapter: MakeAdapter) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(ProviderUnavailable):
        await make_adapter(base_url=f"http://127.0.0.1:{closed_port}").fetch(
            query("quotient_familial", pivot("dupont-marie-claire")))


async def test_non_json(make_adapter: MakeAdapter) -> None:
    with pytest.raises(ProviderAnswerMalformed):
        await make_adapter().fetch(query("quotient_familial", pivot("panne-non-json")))


async def test_bad_token(make_adapter: MakeAdapter) -> None:
    with pytest.raises(ProviderUnavailable, match="401 00101"):
        await make_adapter(token="not-the-token").fetch(query("quotient_familial", pivot("dupont-marie-claire")))


@pytest.mark.parametrize("dataset", ["quotient_familial", "statut_etudiant", "etudiant_boursier",
                                     "complementaire_sante_solidaire", "revenu_solidarite_active", "prime_activite"])
async def test_schema_violation_is_passed_through_for_the_broker_to_reject(make_adapter: MakeAdapter,
                                                                           dataset: str) -> None:
    document = await make_adapter().fetch(query(dataset, pivot("panne-invalide")))
    with pytest.raises(jsonschema.ValidationError):
        assert_valid(dataset, document)


async def test_queries_that_cannot_be_expressed_are_refused_before_calling(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(base_url="http://127.0.0.1:9")  # nothing listens: a call would be ProviderUnavailable
    with pytest.raises(ProviderRejectedQuery, match="identifier"):
        await adapter.fetch(query("statut_demandeur_emploi", pivot("lambert-thierry")))
    with pytest.raises(ProviderRejectedQuery, match="full birth date"):
        await adapter.fetch(query("statut_etudiant", pivot("el-amrani-fatima-zahra")))
    with pytest.raises(ProviderRejectedQuery, match="recipient"):
        await adapter.fetch(query("quotient_familial", pivot("dupont-marie-claire"), recipient=""))
    with pytest.raises(ProviderRejectedQuery, match=r"cannot be looked up by .nir."):
        await adapter.fetch(query("statut_etudiant", ProviderIdentifier("nir", "1")))
    with pytest.raises(ProviderRejectedQuery, match="v2"):
        await adapter.fetch(AdapterQuery("quotient_familial", 2, pivot("dupont-marie-claire"), frozenset(), "t",
                                         recipient=RECIPIENT))


# ------------------------------------------------------------------------------ tiny upstream stand-ins


async def _upstream(aiohttp_server: ServerFactory, respond: Callable[[web.Request], web.StreamResponse],
                    seen: list[web.Request] | None = None) -> str:
    async def handler(request: web.Request) -> web.StreamResponse:
        if seen is not None:
            seen.append(request)
        return respond(request)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def test_request_carries_token_recipient_and_repeated_prenoms(aiohttp_server: ServerFactory,
                                                                    make_adapter: MakeAdapter) -> None:
    seen: list[web.Request] = []
    url = await _upstream(aiohttp_server, lambda r: web.json_response({"errors": []}, status=404), seen)
    with pytest.raises(SubjectNotFound):
        await make_adapter(base_url=url).fetch(query("quotient_familial", pivot("el-amrani-fatima-zahra")))
    (request,) = seen
    assert request.path == "/v3/dss/quotient_familial/identite"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.query["recipient"] == RECIPIENT
    assert request.query.getall("prenoms[]") == ["Fatima", "Zahra"]
    assert "moisDateNaissance" not in request.query and "jourDateNaissance" not in request.query
    assert "codeCogInseeCommuneNaissance" not in request.query


async def test_fields_upstream_adds_later_are_not_released(aiohttp_server: ServerFactory,
                                                           make_adapter: MakeAdapter) -> None:
    data = {"est_beneficiaire": True, "avec_majoration": False, "date_debut_droit": "2024-01-01",
            "montant": 607.75, "nir": "1 80 01 75 101 001 23"}
    url = await _upstream(aiohttp_server, lambda r: web.json_response({"data": data, "links": {}, "meta": {}}))
    document = await make_adapter(base_url=url).fetch(query("prime_activite", pivot("dupont-marie-claire")))
    assert document == {"est_beneficiaire": True, "avec_majoration": False, "date_debut_droit": "2024-01-01"}


@pytest.mark.parametrize(("status", "body", "error"), [
    (409, {"errors": [{"code": "00015", "title": "Conflit", "detail": "", "source": None, "meta": {}}]},
     ProviderUnavailable),
    (429, {"errors": [{"code": "00429", "title": "Trop de requêtes", "detail": ""}]}, ProviderRateLimited),
    (403, {"errors": [{"code": "00100", "title": "Privilèges insuffisants", "detail": ""}]}, ProviderUnavailable),
    (502, "<html>Bad gateway</html>", ProviderUnavailable),
    (504, {"errors": [{"code": "00501", "title": "Erreur réseau", "detail": ""}]}, ProviderTimeout),
    (504, "<html>Gateway Timeout</html>", ProviderTimeout),
    (422, {"errors": [{"code": "00366", "title": "Entité non traitable", "detail": ""}]}, ProviderRejectedQuery),
    (400, "bad request", ProviderRejectedQuery),
    (302, "", ProviderUnavailable),
    (200, {"errors": []}, ProviderAnswerMalformed),
    (200, {"data": ["not", "an", "object"]}, ProviderAnswerMalformed),
    (200, [1, 2, 3], ProviderAnswerMalformed),
])
async def test_upstream_statuses_map_to_adapter_errors(aiohttp_server: ServerFactory, make_adapter: MakeAdapter,
                                                       status: int, body: Any, error: type[Exception]) -> None:
    def respond(request: web.Request) -> web.StreamResponse:
        if isinstance(body, str):
            return web.Response(status=status, text=body, headers={"Location": "/elsewhere"})
        return web.json_response(body, status=status)

    url = await _upstream(aiohttp_server, respond)
    with pytest.raises(error):
        await make_adapter(base_url=url).fetch(query("quotient_familial", pivot("dupont-marie-claire")))


@pytest.mark.parametrize(("header", "wait"), [("30", 30.0), (None, None), ("soon", None), ("999999", 86400.0)])
async def test_a_429_passes_on_when_to_come_back(aiohttp_server: ServerFactory, make_adapter: MakeAdapter,
                                                 header: str | None, wait: float | None) -> None:
    def respond(request: web.Request) -> web.StreamResponse:
        body = {"errors": [{"code": "00429", "title": "Trop de requêtes", "detail": "", "meta": {}}]}
        return web.json_response(body, status=429, headers={"Retry-After": header} if header else {})

    url = await _upstream(aiohttp_server, respond)
    with pytest.raises(ProviderRateLimited) as info:
        await make_adapter(base_url=url).fetch(query("quotient_familial", pivot("dupont-marie-claire")))
    assert info.value.retry_after == wait


async def test_oversized_answer_is_malformed(aiohttp_server: ServerFactory, make_adapter: MakeAdapter) -> None:
    url = await _upstream(aiohttp_server, lambda r: web.Response(body=b" " * (2 << 20),
                                                                 content_type="application/json"))
    with pytest.raises(ProviderAnswerMalformed, match="larger"):
        await make_adapter(base_url=url).fetch(query("quotient_familial", pivot("dupont-marie-claire")))


# ------------------------------------------------------------------------------ registry


GOOD = {"base_url": "https://particulier.api.gouv.fr", "token_env": "DLNUF_AP_TOKEN", "timeout": 4,
        "datasets": ["quotient_familial", "statut_etudiant"]}


def test_good_options_pass() -> None:
    registry.check_options("api_particulier", GOOD)
    registry.check_options("api_particulier", {k: v for k, v in GOOD.items() if k != "timeout"})


@pytest.mark.parametrize(("kind", "change", "key"), [
    ("soap", {}, "kind"),
    ("api_particulier", {"token": "eyJ..."}, "token"),
    ("api_particulier", {"verify_tls": False}, "verify_tls"),
    ("api_particulier", {"base_url": None}, "base_url"),
    ("api_particulier", {"base_url": "particulier.api.gouv.fr"}, "base_url"),
    ("api_particulier", {"base_url": "https://user:pw@particulier.api.gouv.fr"}, "base_url"),
    ("api_particulier", {"token_env": None}, "token_env"),
    ("api_particulier", {"token_env": "lower-case"}, "token_env"),
    ("api_particulier", {"timeout": 0}, "timeout"),
    ("api_particulier", {"timeout": "5"}, "timeout"),
    ("api_particulier", {"timeout": 600}, "timeout"),
    ("api_particulier", {"datasets": []}, "datasets"),
    ("api_particulier", {"datasets": "quotient_familial"}, "datasets"),
    ("api_particulier", {"datasets": ["quotient_familial", "quotient_familial"]}, "datasets"),
    ("api_particulier", {"datasets": ["revenu_fiscal_reference"]}, "datasets"),
    ("api_particulier", {"datasets": ["nope"]}, "datasets"),
])
def test_bad_options_name_the_key(kind: str, change: dict[str, Any], key: str) -> None:
    options = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(registry.AdapterConfigError) as info:
        registry.check_options(kind, options)
    assert str(info.value).startswith(f"{key}:")
    assert isinstance(info.value, ValueError)


async def test_build_adapter_reads_the_token_from_the_environment(session: aiohttp.ClientSession,
                                                                  sandbox_url: str) -> None:
    options = {**GOOD, "base_url": sandbox_url, "datasets": ["quotient_familial"]}
    with pytest.raises(registry.AdapterConfigError, match=r"^token_env: .*DLNUF_AP_TOKEN"):
        registry.build_adapter("api_particulier", "ap", options, session, environ={})
    adapter = registry.build_adapter("api_particulier", "ap", options, session, environ={"DLNUF_AP_TOKEN": TOKEN})
    assert adapter.datasets == {"quotient_familial": schemas.latest("quotient_familial")}
    assert adapter.timeout == 4.0
    document = await adapter.fetch(query("quotient_familial", pivot("payet-maelys")))
    assert_valid("quotient_familial", document)
    assert len(document["enfants"]) == 2


@pytest.mark.parametrize("page", [
    lambda: web.Response(status=404, text="<html>Not Found</html>", content_type="text/html"),
    lambda: web.json_response({"message": "no route"}, status=404),
], ids=["html", "other-json"])
async def test_a_404_that_is_not_the_error_shape_is_a_misconfiguration(
        aiohttp_server: ServerFactory, make_adapter: MakeAdapter, page: Callable[[], web.Response]) -> None:
    # issue 13: a wrong base_url answering 404 was taken for "this person is unknown"
    url = await _upstream(aiohttp_server, lambda r: page())
    adapter = make_adapter(base_url=url)
    with pytest.raises(ProviderMisconfigured, match="not the provider's error shape"):
        await adapter.fetch(query("quotient_familial", pivot("el-amrani-fatima-zahra")))
