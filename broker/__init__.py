"""DLNUF broker: the HTTP service and the exchange pipeline."""
