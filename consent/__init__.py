"""Consent, legal bases and objections."""
