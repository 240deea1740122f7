"""The consumer side: the Python SDK a consumer administration uses to sign exchanges and verify the broker's answers.
"""
