"""What operators watch: Prometheus metrics and structured logs. Imports no route, no pipeline.
"""
