"""PostgreSQL and files on disk: named `.sql` queries, numbered migrations, the pool, the embedded server, and secret
files created once. The bottom of the house: it imports nothing of the project.
"""
