"""« Inscription à la restauration scolaire »: a commune's démarche that pre-fills its form through DLNUF.

A separate aiohttp application acting as a consumer, through the SDK only (`broker.client.BrokerClient`): the
parent clicks « Remplir avec mes données », consents on the broker's screen, and comes back to a form pre-filled
with identity, address, children and quotient familial, with the price bracket computed from it. Without consent
the form stays empty and usable by hand.
"""
