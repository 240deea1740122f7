"""The citizen side over HTTP: OpenID Connect login routes, the consent flow's authorization server (OAuth with
PKCE and rich authorization requests, the consent screen), the citizen JSON API and the "Mes données" portal.

These are routes: they sit above the exchange pipeline and the transparency log, and no domain package imports them.
"""
