"""The HTTP service shell that every route uses: the broker's state (`STATE`), problem+json answers and the one table
mapping errors to problem types (`problems`), the middlewares (request id, response signatures) and the OpenAPI
document. The application itself is assembled in `broker.app`.
"""
