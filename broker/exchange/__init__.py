"""The exchange pipeline, `POST /v1/exchanges`: verify, authorize, check the legal basis, call the adapter, validate,
log, answer (`pipeline.handle_exchange`, read top to bottom), with the habilitation checks (`authz`), the consent
gate and the catalogue routes.
"""
